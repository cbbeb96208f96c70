//! Targets for pure CPU rules: the MMIO instruction decoder, the decoders of
//! intercepted instructions, and XCR0.

use crate::feature;
use arch::alu::{self, AluOp, BitOp, STATUS_FLAGS};
use arch::decode::{
    decode as decode_mmio, decode_cr_access, intercepted_length, merge_register, CodeSize, CrInstruction, DecodeError,
    MmioInstruction, MovCr, Operand, Operation, Register, StringOp,
};
use arch::xstate::{self, ComponentLayout};
use basalt_fuzz::Reader;

const MODES: [CodeSize; 3] = [CodeSize::Bits16, CodeSize::Bits32, CodeSize::Bits64];

/// Input: a mode byte, then the bytes fetched at the guest's RIP (any number:
/// the decoder must look at 15 at most).
pub fn decode(data: &[u8]) -> u64 {
    let mut r = Reader::new(data);
    let mode = r.pick(&MODES);
    let bytes = r.rest();
    let result = decode_mmio(bytes, mode);
    let mut signal = 0;
    feature(&mut signal, mode as u64);
    match result {
        Err(e) => feature(&mut signal, 0x100 | error_kind(e) as u64),
        Ok(i) => {
            check_instruction(&i, bytes, mode);
            let kind = match i.operation {
                Operation::Load { width, sign_extend, .. } => 0x200 | width as u64 | (sign_extend as u64) << 8,
                Operation::Store { source: Operand::Register(_) } => 0x300,
                Operation::Store { source: Operand::Immediate(_) } => 0x400,
                Operation::Alu { op, source } => 0x500 | op as u64 | (source.is_some() as u64) << 8,
                Operation::AluToRegister { op, .. } => 0x600 | op as u64,
                Operation::Xchg { .. } => 0x700,
                Operation::Cmpxchg { .. } => 0x800,
                Operation::BitTest { op, offset } => {
                    0x900 | op as u64 | (matches!(offset, Operand::Register(_)) as u64) << 8
                }
                Operation::Push => 0xa00,
                Operation::Pop => 0xb00,
                Operation::String { op, rep, address_bytes, .. } => {
                    0xc00 | op as u64 | (rep as u64) << 2 | (address_bytes as u64) << 4
                }
            };
            feature(&mut signal, kind | (i.size as u64) << 12);
            feature(&mut signal, 0x10000 | i.length as u64);
        }
    }
    // Merging a loaded value into a register, and the ALU, with the input's values.
    let mut tail = Reader::new(bytes);
    let (old, value) = (tail.u64(), tail.u64());
    let width = tail.pick(&[1u8, 2, 4, 8]);
    check_merge(old, value, width, tail.bool());
    check_alu(&mut tail);
    signal
}

const ALU_OPS: [AluOp; 13] = [
    AluOp::Add,
    AluOp::Or,
    AluOp::Adc,
    AluOp::Sbb,
    AluOp::And,
    AluOp::Sub,
    AluOp::Xor,
    AluOp::Cmp,
    AluOp::Test,
    AluOp::Not,
    AluOp::Neg,
    AluOp::Inc,
    AluOp::Dec,
];

/// The ALU's results stay within their operand size, only the status flags
/// change, and ZF, SF and PF say what the result is wherever the operation
/// defines them (NOT defines none of its own). The flags themselves are
/// checked against the host CPU in arch/tests/alu_differential.rs.
fn check_alu(r: &mut Reader) {
    let size = r.pick(&[1u8, 2, 4, 8]);
    let mask = match size {
        8 => u64::MAX,
        _ => (1 << (8 * size)) - 1,
    };
    let sign = 1u64 << (8 * size - 1);
    let (dest, source, rflags) = (r.u64(), r.u64(), r.u64());
    let op = r.pick(&ALU_OPS);
    let (result, after) = alu::alu(op, size, dest, source, rflags);
    assert_eq!(result & !mask, 0, "{op:?} result {result:#x} beyond {size} bytes");
    assert_eq!(after & !STATUS_FLAGS, rflags & !STATUS_FLAGS, "{op:?} changed more than the status flags");
    if op != AluOp::Not {
        assert_eq!(after & alu::ZF != 0, result == 0, "{op:?} ZF of {result:#x}");
        assert_eq!(after & alu::SF != 0, result & sign != 0, "{op:?} SF of {result:#x}");
        assert_eq!(after & alu::PF != 0, (result & 0xff).count_ones() % 2 == 0, "{op:?} PF of {result:#x}");
    }
    let bit_op = r.pick(&[BitOp::Bt, BitOp::Bts, BitOp::Btr, BitOp::Btc]);
    let bit_size = r.pick(&[2u8, 4, 8]);
    let (value, after) = alu::bit_test(bit_op, bit_size, dest, source, rflags);
    let bit = 1u64 << (source % (8 * bit_size as u64));
    assert_eq!(after & !alu::CF, rflags & !alu::CF, "{bit_op:?} changed more than CF");
    assert_eq!(after & alu::CF != 0, dest & bit != 0, "{bit_op:?} CF");
    let mask = match bit_size {
        8 => u64::MAX,
        _ => (1 << (8 * bit_size)) - 1,
    };
    let changed = value ^ (dest & mask);
    let expected = if bit_op == BitOp::Bt { 0 } else { bit };
    assert!(changed == 0 || changed == expected, "{bit_op:?} changed more than bit {source}: {dest:#x} -> {value:#x}");
}

fn error_kind(e: DecodeError) -> u8 {
    use DecodeError::*;
    match e {
        Truncated => 0,
        Unsupported { .. } => 1,
        NotMemory => 2,
        Invalid => 3,
    }
}

fn check_register(reg: Register, mode: CodeSize) {
    // Without REX (only in 64-bit mode) only the first eight exist, and
    // AH..BH are bits 15:8 of the first four.
    let limit = if mode == CodeSize::Bits64 { 16 } else { 8 };
    assert!(reg.index < limit, "register {reg:?} in {mode:?}");
    assert!(!reg.high_byte || reg.index < 4, "high byte of {reg:?}");
}

fn check_instruction(i: &MmioInstruction, bytes: &[u8], mode: CodeSize) {
    let length = i.length as usize;
    assert!((1..=15).contains(&length) && length <= bytes.len(), "length {length} of {} bytes", bytes.len());
    assert!(matches!(i.size, 1 | 2 | 4 | 8), "access size {}", i.size);
    assert!(i.size < 8 || mode == CodeSize::Bits64, "an 8-byte access outside 64-bit mode");
    // A register operand is used at the access size, so a high-byte one only for bytes.
    let at_size = |r: Register| {
        check_register(r, mode);
        assert!(!r.high_byte || i.size == 1, "a high-byte register used {} bytes wide", i.size);
    };
    // An immediate is at most 32 bits, sign-extended for 8-byte operands.
    let fits = |value: u64| match i.size {
        8 => value as i64 as i32 as i64 as u64 == value,
        size => value >> (8 * size) == 0,
    };
    match i.operation {
        Operation::Load { dest, width, .. } => {
            check_register(dest, mode);
            assert!(matches!(width, 1 | 2 | 4 | 8) && width >= i.size, "read of {} into {width} bytes", i.size);
            assert!(!dest.high_byte || width == 1, "a high-byte register written {width} bytes wide");
        }
        Operation::Store { source: Operand::Register(r) } => at_size(r),
        Operation::Store { source: Operand::Immediate(value) } => {
            assert!(fits(value), "immediate {value:#x} for a {}-byte store", i.size)
        }
        Operation::Alu { op, source } => {
            assert_eq!(source.is_some(), op.has_source(), "{op:?} with {source:?}");
            match source {
                Some(Operand::Register(r)) => at_size(r),
                Some(Operand::Immediate(value)) => assert!(fits(value), "immediate {value:#x} for {} bytes", i.size),
                None => {}
            }
        }
        Operation::AluToRegister { op, dest } => {
            at_size(dest);
            assert!(op.has_source() && op != AluOp::Test, "{op:?} into a register");
        }
        Operation::Xchg { register: r } | Operation::Cmpxchg { source: r } => at_size(r),
        Operation::BitTest { offset, .. } => {
            assert!(i.size >= 2, "a bit test of {} bytes", i.size);
            match offset {
                Operand::Register(r) => at_size(r),
                Operand::Immediate(value) => assert!(value < 0x100, "bit offset {value:#x}"),
            }
        }
        Operation::Push | Operation::Pop => {
            let sizes: &[u8] = if mode == CodeSize::Bits64 { &[2, 8] } else { &[2, 4] };
            assert!(sizes.contains(&i.size), "a stack access of {} bytes in {mode:?}", i.size);
        }
        Operation::String { op, address_bytes, segment, .. } => {
            assert!(matches!(address_bytes, 2 | 4 | 8), "{address_bytes}-byte string addresses");
            assert!(address_bytes != 8 || mode == CodeSize::Bits64, "64-bit string addresses in {mode:?}");
            assert!(address_bytes != 2 || mode != CodeSize::Bits64, "16-bit string addresses in 64-bit mode");
            assert!(segment < 6, "segment {segment}");
            assert!(op != StringOp::Stos || segment == 0, "STOS through segment {segment}");
        }
    }
    // An instruction ends where its length says: the bytes after it change
    // nothing, and without them it decodes the same.
    assert_eq!(decode_mmio(&bytes[..length], mode), Ok(*i), "cut to its length");
    let mut longer = bytes[..length].to_vec();
    longer.extend_from_slice(&[0x0f; 16]);
    assert_eq!(decode_mmio(&longer, mode), Ok(*i), "with other bytes after it");
}

/// Input: a mode byte, then the bytes fetched at the guest's RIP after an
/// intercept. `intercepted_length` and `decode_cr_access` must agree with each
/// other, stay within the bytes and 15, be self-delimiting, and take one more
/// prefix as one more byte.
pub fn intercepted(data: &[u8]) -> u64 {
    let mut r = Reader::new(data);
    let mode = r.pick(&MODES);
    let bytes = r.rest();
    let length = intercepted_length(bytes, mode);
    let cr = decode_cr_access(bytes, mode);
    let mut signal = 0;
    feature(&mut signal, mode as u64);
    check_decided(bytes, length, |b| intercepted_length(b, mode));
    check_decided(bytes, cr, |b| decode_cr_access(b, mode));
    match length {
        Err(e) => feature(&mut signal, 0x100 | error_kind(e) as u64),
        Ok(length) => {
            let n = length as usize;
            assert!((1..=15).contains(&n) && n <= bytes.len(), "length {n} of {} bytes", bytes.len());
            // Each byte of it is needed: without the last, the fetch is short.
            assert_eq!(intercepted_length(&bytes[..n - 1], mode), Err(DecodeError::Truncated), "cut short");
            // A segment override more is a byte more, up to 15. LOCK is #UD on
            // all but MOV CR, where it may make CR8 of CR0.
            let longer = [&[0x2e][..], &bytes[..n]].concat();
            let expected = if n < 15 { Ok(length + 1) } else { Err(DecodeError::Invalid) };
            assert_eq!(intercepted_length(&longer, mode), expected, "with a segment override");
            let locked = [&[0xf0][..], &bytes[..n]].concat();
            if !matches!(cr, Ok(CrInstruction::Mov(_))) {
                assert_eq!(intercepted_length(&locked, mode), Err(DecodeError::Invalid), "with LOCK");
            }
            feature(&mut signal, 0x1000 | length as u64);
        }
    }
    match cr {
        Err(e) => feature(&mut signal, 0x200 | error_kind(e) as u64),
        Ok(cr) => {
            check_cr_access(cr, bytes, mode);
            assert_eq!(length, Ok(cr.length()), "the two decoders disagree on {cr:?}");
            let n = cr.length() as usize;
            if n < 15 {
                let longer = [&[0x2e][..], &bytes[..n]].concat();
                let moved = match cr {
                    CrInstruction::Mov(m) => CrInstruction::Mov(MovCr { length: m.length + 1, ..m }),
                    CrInstruction::Clts { length } => CrInstruction::Clts { length: length + 1 },
                    CrInstruction::Lmsw { gpr, length } => CrInstruction::Lmsw { gpr, length: length + 1 },
                };
                assert_eq!(decode_cr_access(&longer, mode), Ok(moved), "with a segment override");
            }
            let kind = match cr {
                CrInstruction::Mov(m) => 0x2000 | m.cr as u64 | (m.to_cr as u64) << 4 | ((m.gpr >= 8) as u64) << 5,
                CrInstruction::Clts { .. } => 0x2100,
                CrInstruction::Lmsw { gpr, .. } => 0x2200 | ((gpr >= 8) as u64) << 5,
            };
            feature(&mut signal, kind);
        }
    }
    signal
}

/// A decoder that has decided (anything but `Truncated`) has seen all it
/// needs: what follows in the fetch changes nothing, and no 15 bytes are ever
/// too few.
fn check_decided<T: PartialEq + core::fmt::Debug>(
    bytes: &[u8],
    result: Result<T, DecodeError>,
    decode: impl Fn(&[u8]) -> Result<T, DecodeError>,
) {
    if result == Err(DecodeError::Truncated) {
        assert!(bytes.len() < 15, "truncated with {} bytes", bytes.len());
        return;
    }
    let mut longer = bytes.to_vec();
    longer.extend_from_slice(&[0x0f, 0x22, 0xc0, 0xf0, 0x66, 0x2e, 0x48, 0x01]);
    assert_eq!(decode(&longer), result, "with other bytes after it");
}

/// A CR access names an existing CR and register, and its last bytes say so.
fn check_cr_access(cr: CrInstruction, bytes: &[u8], mode: CodeSize) {
    let n = cr.length() as usize;
    assert!((2..=15).contains(&n) && n <= bytes.len(), "length {n} of {} bytes", bytes.len());
    let gprs = if mode == CodeSize::Bits64 { 16 } else { 8 };
    let instruction = &bytes[..n];
    match cr {
        CrInstruction::Mov(MovCr { cr, gpr, to_cr, .. }) => {
            assert!(matches!(cr, 0 | 2 | 3 | 4 | 8), "CR{cr}");
            assert!(gpr < gprs, "register {gpr} in {mode:?}");
            // Outside 64-bit mode only AMD's LOCK reaches CR8.
            assert!(cr != 8 || mode == CodeSize::Bits64 || instruction.contains(&0xf0), "CR8 without LOCK or REX");
            let [.., escape, opcode, modrm] = instruction else { panic!("MOV CR in {n} bytes") };
            assert_eq!((*escape, *opcode), (0x0f, if to_cr { 0x22 } else { 0x20 }));
            assert_eq!((modrm >> 3 & 7, modrm & 7), (cr & 7, gpr & 7), "ModRM {modrm:#x}");
        }
        CrInstruction::Clts { .. } => assert!(instruction.ends_with(&[0x0f, 0x06])),
        CrInstruction::Lmsw { gpr, .. } => {
            assert!(gpr < gprs, "register {gpr} in {mode:?}");
            assert!(instruction.ends_with(&[0x0f, 0x01, 0xf0 | (gpr & 7)]), "LMSW from register {gpr}");
        }
    }
}

/// `merge_register` changes exactly the bytes the CPU writes: 1 or 2 merge
/// (AH..BH at bits 15:8), 4 zero-extends, 8 replaces.
fn check_merge(old: u64, value: u64, width: u8, high_byte: bool) {
    let merged = merge_register(old, value, width, high_byte);
    let (mask, shift) = match (width, high_byte) {
        (1, true) => (0xff00, 8),
        (1, false) => (0xff, 0),
        (2, _) => (0xffff, 0),
        _ => (u64::MAX, 0),
    };
    let kept = if width == 4 { 0 } else { old & !mask };
    let written = if width == 4 { value & 0xffff_ffff } else { (value << shift) & mask };
    assert_eq!(merged, kept | written, "merge of {value:#x} into {old:#x}, {width} bytes, high {high_byte}");
}

/// The XCR0 rules written out again, as the SDM states them (Vol. 1 13.3),
/// component by component rather than with group masks.
fn xcr0_valid_by_the_book(value: u64, allowed: u64) -> bool {
    let bit = |n: u32| value >> n & 1 == 1;
    let x87 = bit(0);
    let sse = bit(1);
    let avx = bit(2);
    let (bndregs, bndcsr) = (bit(3), bit(4));
    let (opmask, zmm_hi256, hi16_zmm) = (bit(5), bit(6), bit(7));
    let (tilecfg, tiledata) = (bit(17), bit(18));
    let avx512_any = opmask || zmm_hi256 || hi16_zmm;
    let avx512_all = opmask && zmm_hi256 && hi16_zmm;
    let only_allowed = (0..64).all(|n| !bit(n) || allowed >> n & 1 == 1);
    x87 && only_allowed
        && (!avx || sse)
        && (!avx512_any || (avx512_all && avx))
        && bndregs == bndcsr
        && tilecfg == tiledata
}

/// Input: a host's XSAVE components, a save area size, a component layout,
/// then XCR0 values to try.
pub fn xcr0(data: &[u8]) -> u64 {
    let mut r = Reader::new(data);
    let host = match r.u8() % 4 {
        0 => xstate::X87 | xstate::SSE | xstate::AVX | xstate::AVX512 | xstate::PKRU | xstate::AMX,
        1 => xstate::X87 | xstate::SSE | xstate::AVX | xstate::MPX,
        _ => r.u64(),
    };
    let area = match r.u8() % 4 {
        0 => 4096,
        1 => 576 + r.u16() as u32,
        _ => r.u32(),
    };
    let mut table = [ComponentLayout { offset: 0, size: 0 }; 64];
    let realistic = r.bool();
    for (bit, entry) in table.iter_mut().enumerate().skip(2) {
        *entry = if realistic {
            // Components one after another from the end of the header.
            let offset = 576 + 256 * (bit as u32 - 2);
            ComponentLayout { offset, size: 64 << (bit % 4) }
        } else {
            ComponentLayout { offset: r.edge() as u32, size: r.edge() as u32 }
        };
    }
    let layout = |bit: u32| table[bit as usize];
    let allowed = xstate::guest_components(host, area, layout);
    let base = xstate::X87 | xstate::SSE;
    assert_eq!(allowed & base, base, "x87 and SSE always remain");
    assert_eq!(allowed & !(xstate::GUEST_COMPONENTS | base), 0, "{allowed:#x} beyond Basalt's list");
    assert_eq!(allowed & !(host | base), 0, "{allowed:#x} beyond the host's {host:#x}");
    let area_needed = xstate::standard_area_size(allowed, layout);
    assert!(area_needed <= area || allowed == base, "{allowed:#x} needs {area_needed} of {area} bytes");
    let mut signal = 0;
    feature(&mut signal, allowed);
    for _ in 0..8 {
        let value = match r.u8() % 4 {
            0 => r.u64(),
            1 => allowed & r.u64(),
            2 => r.u8().into(),
            _ => allowed,
        } | if r.bool() { xstate::X87 } else { 0 };
        let valid = xstate::xcr0_valid(value, allowed);
        assert_eq!(valid, xcr0_valid_by_the_book(value, allowed), "XCR0 {value:#x}, allowed {allowed:#x}");
        if valid {
            assert_eq!(value & !allowed, 0);
            // What a guest can enable fits in the area it was sized for.
            assert!(xstate::standard_area_size(value, layout) <= area_needed);
        }
        // Which rules the value meets, not the value itself: that is what
        // tells one case from another.
        let groups = [xstate::AVX512, xstate::MPX, xstate::AMX].map(|g| match value & g {
            0 => 0,
            v if v == g => 1,
            _ => 2,
        });
        let rules =
            [value & xstate::X87 != 0, value & !allowed == 0, value & xstate::AVX == 0 || value & xstate::SSE != 0];
        let mut case = valid as u64;
        for (i, met) in rules.iter().enumerate() {
            case |= (*met as u64) << (1 + i);
        }
        for (i, state) in groups.iter().enumerate() {
            case |= state << (4 + 2 * i);
        }
        feature(&mut signal, case);
    }
    // CPUID leaf 0xD agrees: sub-leaf 0 reports exactly `allowed`, and a
    // component's own sub-leaf is blank unless it is allowed.
    let [eax, _, ecx, edx] = xstate::cpuid_leaf_0xd(0, [u32::MAX; 4], allowed, area_needed);
    assert_eq!((u64::from(edx) << 32 | u64::from(eax), ecx), (allowed, area_needed));
    for sub in 2..64 {
        if allowed & (1 << sub) == 0 {
            assert_eq!(xstate::cpuid_leaf_0xd(sub, [u32::MAX; 4], allowed, area_needed), [0; 4]);
        }
    }
    // Hiding features only ever clears bits.
    let (leaf, subleaf) = r.pick(&[(1, 0), (7, 0), (7, 1), (0x1d, 0), (0x1e, 0), (0xd, 0)]);
    let regs = [r.u32(), r.u32(), r.u32(), r.u32()];
    let shown = xstate::hide_features_without_state(leaf, subleaf, regs, allowed);
    for (after, before) in shown.iter().zip(regs) {
        assert_eq!(after & !before, 0, "leaf {leaf:#x}.{subleaf} set bits");
    }
    signal
}

/// A control-register bit or a value where the checks meet: a few bits set
/// on a realistic base, or anything.
fn control_value(r: &mut Reader, base: u64) -> u64 {
    match r.u8() % 4 {
        0 => base ^ (1 << r.below(64)),
        1 => base ^ r.u32() as u64,
        2 => base,
        _ => r.u64(),
    }
}

/// Input: the guest's features (CPUID words), its control registers and
/// mode, then a MOV to CR0 and one to CR4. The checks must accept exactly
/// the writes the SDM's rules (stated again here, one per #GP condition of
/// MOV to CR0/CR4) accept, and a refusal must name a rule the write breaks.
pub fn cr(data: &[u8]) -> u64 {
    use arch::control::{check_cr0, check_cr4, cr0, cr4, cr4_allowed, Context, Cr4Features, Refused};
    let mut r = Reader::new(data);
    let features = if r.bool() {
        Cr4Features { leaf1_ecx: r.u32(), leaf1_edx: r.u32(), leaf7_ebx: r.u32(), leaf7_ecx: r.u32() }
    } else {
        Cr4Features { leaf1_ecx: u32::MAX, leaf1_edx: u32::MAX, leaf7_ebx: u32::MAX, leaf7_ecx: u32::MAX }
    };
    let allowed = cr4_allowed(features);
    // Only architectural bits the guest's CPUID names, and never control
    // bits of state Basalt does not switch: CET, key locker, PKS, UINTR, LAM.
    let never = cr4::CET | 1 << 19 | 1 << 24 | 1 << 25 | 1 << 28 | !0xffff_ffff;
    assert_eq!(allowed & never, 0, "CR4 bits {:#x} allowed", allowed & never);
    let feature_bit = |word: u32, bit: u32| word >> bit & 1 == 1;
    for (cr4_bit, present) in [
        (cr4::PAE, feature_bit(features.leaf1_edx, 6)),
        (cr4::OSXSAVE, feature_bit(features.leaf1_ecx, 26)),
        (cr4::PCIDE, feature_bit(features.leaf1_ecx, 17)),
        (cr4::SMEP, feature_bit(features.leaf7_ebx, 7)),
        (cr4::SMAP, feature_bit(features.leaf7_ebx, 20)),
        (cr4::PKE, feature_bit(features.leaf7_ecx, 3)),
        (cr4::LA57, feature_bit(features.leaf7_ecx, 16)),
    ] {
        assert!(allowed & cr4_bit == 0 || present, "CR4 {cr4_bit:#x} allowed without its CPUID bit");
    }

    let long_base = cr0::PE | cr0::PG | cr0::WP | 1 << 4;
    let now = Context {
        cr0: control_value(&mut r, long_base),
        cr3: if r.bool() { r.u64() } else { 0x1000 | r.below(2) },
        cr4: control_value(&mut r, cr4::PAE | cr4::OSFXSR),
        long_mode_enabled: r.bool(),
        long_mode_active: r.bool(),
        code_64: r.bool(),
    };
    let is = |value: u64, bit: u64| value & bit != 0;
    let mut signal = 0;

    let value = control_value(&mut r, now.cr0);
    let broken: [(Refused, bool); 6] = [
        (Refused::ReservedBits, value > u32::MAX as u64),
        (Refused::PagingWithoutProtection, is(value, cr0::PG) && !is(value, cr0::PE)),
        (Refused::NotWriteThroughWithoutCacheDisable, is(value, cr0::NW) && !is(value, cr0::CD)),
        (
            Refused::LongModePagingWithoutPae,
            !is(now.cr0, cr0::PG) && is(value, cr0::PG) && now.long_mode_enabled && !is(now.cr4, cr4::PAE),
        ),
        (
            Refused::PagingOffIn64BitCode,
            is(now.cr0, cr0::PG) && !is(value, cr0::PG) && now.long_mode_active && now.code_64,
        ),
        (Refused::WriteProtectOffWithCet, !is(value, cr0::WP) && is(now.cr4, cr4::CET)),
    ];
    check_verdict("CR0", value, check_cr0(value, now), &broken, &mut signal);

    let value = control_value(&mut r, now.cr4);
    let enabling_pcid = is(value, cr4::PCIDE) && !is(now.cr4, cr4::PCIDE);
    let broken: [(Refused, bool); 6] = [
        (Refused::ReservedBits, value & !allowed != 0),
        (Refused::PaeOffInLongMode, now.long_mode_active && !is(value, cr4::PAE)),
        (Refused::La57ChangedInLongMode, now.long_mode_active && is(value ^ now.cr4, cr4::LA57)),
        (Refused::PcidOutsideLongMode, enabling_pcid && !now.long_mode_active),
        (Refused::PcidWithNonzeroCr3Pcid, enabling_pcid && now.cr3 & 0xfff != 0),
        (Refused::CetWithoutWriteProtect, is(value, cr4::CET) && !is(now.cr0, cr0::WP)),
    ];
    let verdict = check_cr4(value, allowed, now);
    if verdict.is_ok() {
        assert_eq!(value & !allowed, 0);
    }
    check_verdict("CR4", value, verdict, &broken, &mut signal);

    // WRMSR to EFER: only SCE, LME, NXE (and the ignored LMA); LME fixed under paging.
    use arch::control::{check_efer, efer};
    let allowed =
        if r.bool() { r.u64() & (efer::SCE | efer::LME | efer::NXE) } else { efer::SCE | efer::LME | efer::NXE };
    let value = if r.bool() { r.u64() } else { r.u64() & 0xfff };
    let broken: [(Refused, bool); 2] = [
        (Refused::ReservedBits, value & !(allowed | efer::LMA) != 0),
        (
            Refused::LongModeEnableChangedUnderPaging,
            is(now.cr0, cr0::PG) && is(value, efer::LME) != now.long_mode_enabled,
        ),
    ];
    check_verdict("EFER", value, check_efer(value, allowed, now), &broken, &mut signal);
    signal
}

/// A write is refused exactly when it breaks a rule, and for one it breaks.
fn check_verdict<R: Copy + PartialEq + core::fmt::Debug>(
    register: &str,
    value: u64,
    verdict: Result<(), R>,
    rules: &[(R, bool)],
    signal: &mut u64,
) {
    let broken: Vec<R> = rules.iter().filter(|(_, broken)| *broken).map(|(why, _)| *why).collect();
    match verdict {
        Ok(()) => assert!(broken.is_empty(), "{register} {value:#x} accepted, but it breaks {broken:?}"),
        Err(why) => {
            assert!(broken.contains(&why), "{register} {value:#x} refused for {why:?}, but it breaks {broken:?}")
        }
    }
    feature(signal, crate::kind_of(&format!("{register} {verdict:?}")));
}
