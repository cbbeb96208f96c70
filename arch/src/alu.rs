//! The integer operations the MMIO emulator carries out on a device
//! register, with the arithmetic flags (CF, PF, AF, ZF, SF, OF) exactly as the
//! SDM defines them. Pure functions of the operands and RFLAGS before, so the
//! host checks them against its own CPU (`arch/tests/alu_differential.rs`).
//!
//! Where the SDM leaves a flag undefined (AF after AND, OR, XOR and TEST; OF,
//! SF, AF and PF after the bit tests) a CPU may leave anything there. These
//! functions clear AF after the logical operations (as the AMD host the
//! differential test was written on does) and leave the bit tests' undefined
//! flags as they were;
//! `AluOp::defined_flags` says which flags a guest may rely on.

// The operands are a hostile guest's: no arithmetic may wrap or panic.
#![deny(clippy::arithmetic_side_effects)]

pub const CF: u64 = 1 << 0;
pub const PF: u64 = 1 << 2;
pub const AF: u64 = 1 << 4;
pub const ZF: u64 = 1 << 6;
pub const SF: u64 = 1 << 7;
pub const OF: u64 = 1 << 11;
/// The six status flags arithmetic sets; nothing here changes another bit.
pub const STATUS_FLAGS: u64 = CF | PF | AF | ZF | SF | OF;

/// An operation of the ALU group on a memory operand.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AluOp {
    Add,
    Or,
    Adc,
    Sbb,
    And,
    Sub,
    Xor,
    Cmp,
    Test,
    Not,
    Neg,
    Inc,
    Dec,
}

impl AluOp {
    /// The operation numbered as opcodes 00-3F (bits 5:3) and ModRM.reg of
    /// group 1 (80, 81, 83) number them: ADD, OR, ADC, SBB, AND, SUB, XOR, CMP.
    pub fn from_group1(n: u8) -> AluOp {
        const GROUP1: [AluOp; 8] =
            [AluOp::Add, AluOp::Or, AluOp::Adc, AluOp::Sbb, AluOp::And, AluOp::Sub, AluOp::Xor, AluOp::Cmp];
        GROUP1[usize::from(n & 7)]
    }

    /// CMP and TEST only set flags; the others store their result.
    pub fn writes_result(self) -> bool {
        !matches!(self, AluOp::Cmp | AluOp::Test)
    }

    /// Whether the operation reads a second operand (NOT, NEG, INC and DEC
    /// have only the one they change).
    pub fn has_source(self) -> bool {
        !matches!(self, AluOp::Not | AluOp::Neg | AluOp::Inc | AluOp::Dec)
    }

    /// Whether LOCK may precede it (with a memory destination): the SDM's
    /// list, which leaves out CMP and TEST (they write nothing).
    pub fn lockable(self) -> bool {
        self.writes_result()
    }

    /// The status flags whose value after the operation the SDM defines,
    /// either computed or left as they were: all six but AF after the
    /// logical operations; NOT defines all six by leaving them alone, INC and
    /// DEC leave CF.
    pub fn defined_flags(self) -> u64 {
        match self {
            AluOp::And | AluOp::Or | AluOp::Xor | AluOp::Test => STATUS_FLAGS & !AF,
            _ => STATUS_FLAGS,
        }
    }
}

/// The value bits and the sign bit of a `size`-byte operand (1, 2, 4 or 8;
/// anything else is taken as 8).
fn widths(size: u8) -> (u64, u64) {
    match size {
        1 => (0xff, 0x80),
        2 => (0xffff, 0x8000),
        4 => (0xffff_ffff, 0x8000_0000),
        _ => (u64::MAX, 1 << 63),
    }
}

/// PF: set when the low byte of a result has an even number of ones.
fn parity(result: u64) -> u64 {
    if (result & 0xff).count_ones().is_multiple_of(2) {
        PF
    } else {
        0
    }
}

/// ZF, SF and PF of a result already cut to its size.
fn zf_sf_pf(result: u64, sign: u64) -> u64 {
    let mut flags = parity(result);
    if result == 0 {
        flags |= ZF;
    }
    if result & sign != 0 {
        flags |= SF;
    }
    flags
}

/// `dest + source + carry_in` on `size` bytes: the result and all six flags.
fn add(dest: u64, source: u64, carry_in: bool, size: u8) -> (u64, u64) {
    let (mask, sign) = widths(size);
    let (dest, source) = (dest & mask, source & mask);
    // In 128 bits the sum of two 64-bit values and a carry cannot wrap.
    let full = u128::from(dest).wrapping_add(u128::from(source)).wrapping_add(u128::from(carry_in));
    let result = full as u64 & mask;
    let mut flags = zf_sf_pf(result, sign);
    if full > u128::from(mask) {
        flags |= CF;
    }
    // Overflow: both operands have the same sign and the result the other.
    if (dest ^ result) & (source ^ result) & sign != 0 {
        flags |= OF;
    }
    if (dest ^ source ^ result) & 0x10 != 0 {
        flags |= AF;
    }
    (result, flags)
}

/// `dest - source - borrow_in` on `size` bytes: the result and all six flags.
fn sub(dest: u64, source: u64, borrow_in: bool, size: u8) -> (u64, u64) {
    let (mask, sign) = widths(size);
    let (dest, source) = (dest & mask, source & mask);
    let subtrahend = u128::from(source).wrapping_add(u128::from(borrow_in));
    let result = dest.wrapping_sub(source).wrapping_sub(u64::from(borrow_in)) & mask;
    let mut flags = zf_sf_pf(result, sign);
    if u128::from(dest) < subtrahend {
        flags |= CF;
    }
    // Overflow: the operands differ in sign and the result has the source's.
    if (dest ^ source) & (dest ^ result) & sign != 0 {
        flags |= OF;
    }
    if (dest ^ source ^ result) & 0x10 != 0 {
        flags |= AF;
    }
    (result, flags)
}

/// `dest op source` on `size` bytes (1, 2, 4 or 8) with `rflags` as they were
/// before (ADC and SBB read CF): the result, cut to the size, and RFLAGS
/// after. Only the status flags change. For CMP and TEST the result is
/// what SUB and AND would give (the caller stores nothing); NOT, NEG, INC and
/// DEC ignore `source`.
pub fn alu(op: AluOp, size: u8, dest: u64, source: u64, rflags: u64) -> (u64, u64) {
    let (mask, sign) = widths(size);
    let carry = rflags & CF != 0;
    let logical = |result: u64| (result & mask, zf_sf_pf(result & mask, sign));
    let (result, flags) = match op {
        AluOp::Add => add(dest, source, false, size),
        AluOp::Adc => add(dest, source, carry, size),
        AluOp::Sub | AluOp::Cmp => sub(dest, source, false, size),
        AluOp::Sbb => sub(dest, source, carry, size),
        AluOp::Neg => sub(0, dest, false, size),
        AluOp::And | AluOp::Test => logical(dest & source),
        AluOp::Or => logical(dest | source),
        AluOp::Xor => logical(dest ^ source),
        // CF is the one flag INC and DEC leave alone.
        AluOp::Inc => {
            let (result, flags) = add(dest, 1, false, size);
            (result, (flags & !CF) | (rflags & CF))
        }
        AluOp::Dec => {
            let (result, flags) = sub(dest, 1, false, size);
            (result, (flags & !CF) | (rflags & CF))
        }
        AluOp::Not => return (!dest & mask, rflags),
    };
    (result, (rflags & !STATUS_FLAGS) | flags)
}

/// What CMPXCHG does, as the SDM's pseudocode: the accumulator is compared
/// with the memory operand (flags as CMP accumulator, memory); if equal ZF is
/// set and the source is stored, else ZF is clear, the accumulator is loaded
/// from memory and memory is written back unchanged (the CPU's bus always
/// sees a write: "the destination operand receives a write cycle without
/// regard to the result of the comparison").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cmpxchg {
    /// The value written to memory, `size` bytes.
    pub memory: u64,
    /// The value the accumulator gets, `size` bytes wide, if it is written
    /// (only when the comparison fails).
    pub accumulator: Option<u64>,
    pub rflags: u64,
}

/// CMPXCHG on `size` bytes: `memory` as read, the accumulator's and the
/// source register's values, and RFLAGS before.
pub fn cmpxchg(size: u8, memory: u64, accumulator: u64, source: u64, rflags: u64) -> Cmpxchg {
    let (mask, _) = widths(size);
    let (_, rflags) = alu(AluOp::Cmp, size, accumulator, memory, rflags);
    if rflags & ZF != 0 {
        Cmpxchg { memory: source & mask, accumulator: None, rflags }
    } else {
        Cmpxchg { memory: memory & mask, accumulator: Some(memory & mask), rflags }
    }
}

/// BT, BTS, BTR and BTC on a memory operand.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BitOp {
    Bt,
    Bts,
    Btr,
    Btc,
}

impl BitOp {
    /// BT only reads; the others write the operand back.
    pub fn writes_result(self) -> bool {
        self != BitOp::Bt
    }

    /// The flags the SDM defines after a bit test: CF (the bit) and ZF
    /// (left alone); OF, SF, AF and PF are undefined.
    pub const DEFINED_FLAGS: u64 = CF | ZF;
}

/// Bit `offset` modulo the operand's width of the `size`-byte `value` (2, 4 or
/// 8 bytes; the caller has already moved to the operand a register offset
/// selects): the value with the bit set, cleared or flipped, and RFLAGS with
/// CF = the bit as it was. Every other flag is left as it was.
pub fn bit_test(op: BitOp, size: u8, value: u64, offset: u64, rflags: u64) -> (u64, u64) {
    let (mask, _) = widths(size);
    // The width is a power of two: the low bits of the offset pick the bit.
    let bits = mask.count_ones();
    let bit = 1u64.wrapping_shl((offset as u32) & bits.wrapping_sub(1));
    let value = value & mask;
    let new = match op {
        BitOp::Bt => value,
        BitOp::Bts => value | bit,
        BitOp::Btr => value & !bit,
        BitOp::Btc => value ^ bit,
    };
    let cf = if value & bit != 0 { CF } else { 0 };
    (new, (rflags & !CF) | cf)
}

/// `value`, `size` bytes wide, sign-extended to 64 bits (MOVSX, MOVSXD, and
/// the immediates that are sign-extended to the operand size).
pub fn sign_extend(value: u64, size: u8) -> u64 {
    match size {
        1 => value as u8 as i8 as i64 as u64,
        2 => value as u16 as i16 as i64 as u64,
        4 => value as u32 as i32 as i64 as u64,
        _ => value,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn add_and_sub_set_the_flags_at_each_size() {
        // 0x7f + 1 overflows a byte's sign; 0xff + 1 carries out of it.
        assert_eq!(alu(AluOp::Add, 1, 0x7f, 1, 0), (0x80, OF | SF | AF));
        assert_eq!(alu(AluOp::Add, 1, 0xff, 1, 0), (0, CF | ZF | PF | AF));
        // The same values in a wider operand do neither.
        assert_eq!(alu(AluOp::Add, 2, 0xff, 1, 0), (0x100, AF | PF));
        assert_eq!(alu(AluOp::Add, 8, u64::MAX, 1, 0), (0, CF | ZF | PF | AF));
        // 0 - 1 borrows; 0x80 - 1 overflows.
        assert_eq!(alu(AluOp::Sub, 4, 0, 1, 0), (0xffff_ffff, CF | SF | PF | AF));
        assert_eq!(alu(AluOp::Cmp, 1, 0x80, 1, 0).1, OF | AF);
        // Bits above the size are not part of the operands.
        assert_eq!(alu(AluOp::Add, 1, 0x1ff, 0x100, 0).0, 0xff);
    }

    #[test]
    fn carry_in_and_the_flags_left_alone() {
        let other = 0x202; // IF and the reserved bit 1 stay
        assert_eq!(alu(AluOp::Adc, 1, 0xff, 0, other | CF), (0, other | CF | ZF | PF | AF));
        assert_eq!(alu(AluOp::Sbb, 2, 0, 0xffff, other | CF), (0, other | CF | ZF | PF | AF));
        // ADC/SBB with all-ones and a carry: the carry counts though the sum wraps to the same value.
        assert_eq!(alu(AluOp::Adc, 8, 5, u64::MAX, CF).0, 5);
        assert_ne!(alu(AluOp::Adc, 8, 5, u64::MAX, CF).1 & CF, 0);
        assert_eq!(alu(AluOp::Inc, 1, 0xff, 0, CF), (0, CF | ZF | PF | AF));
        assert_eq!(alu(AluOp::Dec, 4, 0, 0, 0), (0xffff_ffff, SF | PF | AF));
        assert_eq!(alu(AluOp::Not, 2, 0x00ff, 0, other | STATUS_FLAGS), (0xff00, other | STATUS_FLAGS));
    }

    #[test]
    fn neg_and_the_logical_operations() {
        assert_eq!(alu(AluOp::Neg, 4, 0, 0, CF), (0, ZF | PF));
        assert_eq!(alu(AluOp::Neg, 1, 0x80, 0, 0), (0x80, CF | OF | SF));
        assert_eq!(alu(AluOp::Neg, 1, 1, 0, 0), (0xff, CF | SF | PF | AF));
        // CF and OF are cleared, AF too (undefined).
        assert_eq!(alu(AluOp::And, 4, 0xf0, 0x0f, CF | OF | AF), (0, ZF | PF));
        assert_eq!(alu(AluOp::Test, 8, 1 << 63, u64::MAX, 0), (1 << 63, SF | PF));
        assert_eq!(alu(AluOp::Or, 1, 0x01, 0x02, 0), (0x03, PF));
        assert_eq!(alu(AluOp::Xor, 2, 0x8001, 0x0001, 0), (0x8000, SF | PF));
    }

    #[test]
    fn bit_tests_take_the_offset_modulo_the_width() {
        assert_eq!(bit_test(BitOp::Bt, 4, 0x8000_0000, 31, 0), (0x8000_0000, CF));
        assert_eq!(bit_test(BitOp::Bts, 2, 0, 16 + 3, CF), (0x8, 0));
        assert_eq!(bit_test(BitOp::Btr, 8, u64::MAX, 63 + 64, ZF), (u64::MAX >> 1, ZF | CF));
        assert_eq!(bit_test(BitOp::Btc, 4, 1, 0, 0), (0, CF));
        // A negative register offset: its low bits still pick the bit.
        assert_eq!(bit_test(BitOp::Bt, 4, 1 << 31, -1i64 as u64, 0).1, CF);
    }

    #[test]
    fn cmpxchg_stores_the_source_only_if_equal_and_always_writes() {
        let equal = cmpxchg(4, 0x1234, 0xffff_ffff_0000_1234, 0x5678, 0);
        assert_eq!(equal, Cmpxchg { memory: 0x5678, accumulator: None, rflags: ZF | PF });
        let differs = cmpxchg(2, 0x8000, 0x0001, 0x5678, ZF);
        assert_eq!(differs, Cmpxchg { memory: 0x8000, accumulator: Some(0x8000), rflags: CF | SF | OF });
    }

    #[test]
    fn sign_extension() {
        assert_eq!(sign_extend(0x80, 1), 0xffff_ffff_ffff_ff80);
        assert_eq!(sign_extend(0x7fff, 2), 0x7fff);
        assert_eq!(sign_extend(0x1_8000_0000, 4), 0xffff_ffff_8000_0000);
        assert_eq!(sign_extend(5, 8), 5);
    }
}
