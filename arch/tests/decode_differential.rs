//! The MMIO decoder checked against iced-x86 as an oracle. A guest chooses the
//! bytes Basalt decodes, so a disagreement is either a wrong emulation or an
//! instruction the CPU would fault on (#UD) being carried out anyway.
//!
//! Whenever Basalt accepts, iced must decode the same instruction: same length,
//! memory operand size, direction, register (AH..BH vs SPL..DIL) and immediate.
//! Whenever iced decodes one of the forms Basalt claims, Basalt must accept it;
//! anything else it may reject. `BASALT_DIFF_CASES` raises the number of cases.

use arch::decode::{decode, Access, CodeSize, MmioInstruction, Register};
use basalt_fuzz::Rng;
use iced_x86::{Code, Decoder, DecoderOptions, Instruction, Mnemonic, OpKind, Register as Reg};

const MODES: [(CodeSize, u32); 3] = [(CodeSize::Bits16, 16), (CodeSize::Bits32, 32), (CodeSize::Bits64, 64)];

const LEGACY_PREFIXES: [u8; 11] = [0x66, 0x67, 0xf0, 0xf2, 0xf3, 0x26, 0x2e, 0x36, 0x3e, 0x64, 0x65];

const CLAIMED_OPCODES: [&[u8]; 12] = [
    &[0x88],
    &[0x89],
    &[0x8a],
    &[0x8b],
    &[0xc6],
    &[0xc7],
    &[0xa0],
    &[0xa1],
    &[0xa2],
    &[0xa3],
    &[0x0f, 0xb6],
    &[0x0f, 0xb7],
];

/// Look-alikes (MOV Sreg, MOVSX, string moves, VEX/LES/LDS, POPCNT/JMPE, XCHG,
/// MOVSXD/ARPL) that a sloppy decoder might take for a claimed form.
const NEIGHBOURS: [&[u8]; 14] = [
    &[0x8c],
    &[0x8e],
    &[0x0f, 0xbe],
    &[0x0f, 0xbf],
    &[0x0f, 0xb8],
    &[0x0f, 0x38],
    &[0xa4],
    &[0xa5],
    &[0xc4],
    &[0xc5],
    &[0xc0],
    &[0x63],
    &[0x86],
    &[0x87],
];

/// The iced codes of the forms Basalt claims to emulate (with a memory operand).
const CLAIMED_CODES: [Code; 26] = [
    Code::Mov_rm8_r8,
    Code::Mov_rm16_r16,
    Code::Mov_rm32_r32,
    Code::Mov_rm64_r64,
    Code::Mov_r8_rm8,
    Code::Mov_r16_rm16,
    Code::Mov_r32_rm32,
    Code::Mov_r64_rm64,
    Code::Mov_AL_moffs8,
    Code::Mov_AX_moffs16,
    Code::Mov_EAX_moffs32,
    Code::Mov_RAX_moffs64,
    Code::Mov_moffs8_AL,
    Code::Mov_moffs16_AX,
    Code::Mov_moffs32_EAX,
    Code::Mov_moffs64_RAX,
    Code::Mov_rm8_imm8,
    Code::Mov_rm16_imm16,
    Code::Mov_rm32_imm32,
    Code::Mov_rm64_imm32,
    Code::Movzx_r16_rm8,
    Code::Movzx_r32_rm8,
    Code::Movzx_r64_rm8,
    Code::Movzx_r16_rm16,
    Code::Movzx_r32_rm16,
    Code::Movzx_r64_rm16,
];

/// Up to 16 bytes (one more than an instruction may have, so over-long
/// encodings are seen as such) around a claimed opcode, or now and then a
/// look-alike or nothing in particular.
fn encoding(rng: &mut Rng, bits: u32) -> ([u8; 16], usize) {
    let mut bytes = [0u8; 16];
    for b in bytes.iter_mut() {
        *b = rng.next_u64() as u8;
    }
    let rex = |rng: &mut Rng| 0x40 | rng.below(16) as u8;
    let mut n = 0;
    let prefixes = match rng.below(8) {
        0..=2 => 0,
        3..=5 => 1,
        6 => 2,
        _ => 3 + rng.below(6) as usize,
    };
    for _ in 0..prefixes {
        // A REX in the middle of the prefixes is one the CPU ignores.
        bytes[n] = if bits == 64 && rng.below(4) == 0 { rex(rng) } else { rng.pick(&LEGACY_PREFIXES) };
        n += 1;
    }
    if bits == 64 && rng.below(2) == 0 {
        bytes[n] = rex(rng);
        n += 1;
    }
    let opcode: &[u8] = match rng.below(16) {
        0 => &[],
        1 => rng.pick(&NEIGHBOURS),
        _ => rng.pick(&CLAIMED_OPCODES),
    };
    bytes[n..n + opcode.len()].copy_from_slice(opcode);
    n += opcode.len();
    // ModRM.reg must be 0 for C6/C7 to be a MOV: make that common, not 1 in 8.
    if matches!(opcode, [0xc6] | [0xc7]) && rng.below(2) == 0 {
        bytes[n] &= !0x38;
    }
    // Now and then the fetch is cut short.
    let len = if rng.below(8) == 0 { rng.below(17) as usize } else { 16 };
    (bytes, len)
}

/// Basalt's name for an iced general register, and the register's size.
fn basalt_register(r: Reg) -> (Register, usize) {
    let high_byte = matches!(r, Reg::AH | Reg::CH | Reg::DH | Reg::BH);
    let index = if high_byte { r.number() - Reg::AH.number() } else { r.full_register().number() - Reg::RAX.number() };
    (Register { index: index as u8, high_byte }, r.size())
}

fn compare(bytes: &[u8], mode: CodeSize, bits: u32) -> Result<(), String> {
    let mut decoder = Decoder::new(bits, bytes, DecoderOptions::NONE);
    let iced: Instruction = decoder.decode();
    let claimed = !iced.is_invalid()
        && CLAIMED_CODES.contains(&iced.code())
        && (0..iced.op_count()).any(|i| iced.op_kind(i) == OpKind::Memory);
    let ours = match decode(bytes, mode) {
        Ok(ours) => ours,
        Err(e) if claimed => {
            let kind = format!("{e:?}");
            let kind = kind.split(' ').next().unwrap_or_default();
            return Err(format!("Basalt rejects ({kind}) a form it claims"));
        }
        Err(_) => return Ok(()),
    };
    if iced.is_invalid() {
        return Err(format!("Basalt accepts what iced finds invalid ({:?})", decoder.last_error()));
    }
    if !matches!(iced.mnemonic(), Mnemonic::Mov | Mnemonic::Movzx) {
        return Err(format!("Basalt accepts iced's {:?} as a MOV", iced.code()));
    }
    let MmioInstruction { length, size, access } = ours;
    let wrong = |what: &str| Err(format!("{what} differs for {:?}", iced.code()));
    if length as usize != iced.len() {
        return wrong("length");
    }
    let memory_operand = (0..iced.op_count()).find(|&i| iced.op_kind(i) == OpKind::Memory);
    if size as usize != iced.memory_size().size() {
        return wrong("memory size");
    }
    // A read has memory as its source, operand 1; a write as its destination.
    let (memory_at, register) = match access {
        Access::Read { dest, width } => (1, Some((dest, width))),
        Access::WriteRegister { source } => (0, Some((source, size))),
        Access::WriteImmediate { value } => {
            if iced.immediate(1) != value {
                return wrong("immediate");
            }
            (0, None)
        }
    };
    if memory_operand != Some(memory_at) {
        return wrong("direction");
    }
    if let Some((register, width)) = register {
        let at = 1 - memory_at;
        if iced.op_kind(at) != OpKind::Register || basalt_register(iced.op_register(at)) != (register, width as usize) {
            return wrong("register");
        }
    }
    Ok(())
}

fn cases(default: u64) -> u64 {
    std::env::var("BASALT_DIFF_CASES").ok().and_then(|s| s.parse().ok()).unwrap_or(default)
}

#[test]
fn agrees_with_iced() {
    let total = cases(3_000_000);
    let mut rng = Rng::new(0x0ba5_a17d_ec0d_e000);
    // Each kind of disagreement once, with its first example, not a flood.
    let mut disagreements: std::collections::BTreeMap<String, (u64, String)> = Default::default();
    let mut accepted = 0;
    for case in 0..total {
        let (mode, bits) = MODES[(case % 3) as usize];
        let (bytes, len) = encoding(&mut rng, bits);
        accepted += decode(&bytes[..len], mode).is_ok() as u64;
        if let Err(what) = compare(&bytes[..len], mode, bits) {
            let iced = Decoder::new(bits, &bytes[..len], DecoderOptions::NONE).decode().code();
            let basalt = decode(&bytes[..len], mode);
            let example = format!("case {case}, {bits}-bit: {:02x?}: Basalt {basalt:?}, iced {iced:?}", &bytes[..len]);
            disagreements.entry(what).or_insert((0, example)).0 += 1;
        }
    }
    let report: Vec<String> =
        disagreements.iter().map(|(what, (count, example))| format!("{count} x {what}\n    e.g. {example}")).collect();
    assert!(report.is_empty(), "{} kinds of disagreement in {total} cases:\n{}", report.len(), report.join("\n"));
    // About half the cases are MOVs Basalt emulates; far fewer means the
    // generator no longer makes what it is meant to, and the test proves little.
    assert!(accepted * 3 >= total, "only {accepted} of {total} cases decoded");
}

/// Any bytes, cut at every length up to past the 15 an instruction may take:
/// no panic (overflow checks are on), and never a length beyond the bytes.
#[test]
fn random_bytes_never_panic() {
    let mut rng = Rng::new(0x5eed);
    let mut bytes = [0u8; 20];
    for _ in 0..cases(3_000_000) / 20 {
        for b in bytes.iter_mut() {
            *b = rng.next_u64() as u8;
        }
        for len in 0..=bytes.len() {
            for (mode, _) in MODES {
                if let Ok(d) = decode(&bytes[..len], mode) {
                    assert!(d.length as usize <= len.min(15));
                }
            }
        }
    }
}
