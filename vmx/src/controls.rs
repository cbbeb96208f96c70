//! VM-execution, exit and entry control words are constrained per CPU: an
//! "allowed-0" half says which bits must be 1, an "allowed-1" half which may be 1.
//! Basalt asks for features in two sets, required and wanted, and gets either a
//! legal control word or an error naming the required bits the CPU lacks.

use core::fmt;

/// One control word's constraints, as a capability MSR reports them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AllowedControls {
    /// Bits that must be 1 (low half of the MSR).
    pub must_be_one: u32,
    /// Bits that may be 1 (high half of the MSR).
    pub may_be_one: u32,
}

/// A required control the CPU cannot provide.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ControlError {
    /// Which control word (e.g. "secondary processor-based").
    pub word: &'static str,
    /// Required bits that are not allowed to be 1.
    pub missing: u32,
}

impl fmt::Display for ControlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "the CPU lacks required {} VM controls (bits {:#010x})", self.word, self.missing)
    }
}

impl AllowedControls {
    pub const fn from_msr(value: u64) -> Self {
        AllowedControls { must_be_one: value as u32, may_be_one: (value >> 32) as u32 }
    }

    /// True when `bits` may all be set.
    pub const fn supports(&self, bits: u32) -> bool {
        self.may_be_one & bits == bits
    }

    /// The control word with every `required` bit, as many `wanted` bits as the CPU
    /// allows, and the CPU's must-be-one bits.
    pub fn adjust(&self, word: &'static str, required: u32, wanted: u32) -> Result<u32, ControlError> {
        let missing = required & !self.may_be_one;
        if missing != 0 {
            return Err(ControlError { word, missing });
        }
        Ok((required | (wanted & self.may_be_one)) | self.must_be_one)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn halves_come_from_the_right_msr_words() {
        let c = AllowedControls::from_msr(0xffff_0000_0000_0016);
        assert_eq!(c.must_be_one, 0x16);
        assert_eq!(c.may_be_one, 0xffff_0000);
    }

    #[test]
    fn adjust_sets_must_be_one_bits_and_drops_unsupported_wanted_bits() {
        let c = AllowedControls { must_be_one: 0x16, may_be_one: 0x0000_ff16 };
        assert_eq!(c.adjust("pin-based", 0x100, 0x1_0000 | 0x200), Ok(0x316));
    }

    #[test]
    fn adjust_names_missing_required_bits() {
        let c = AllowedControls { must_be_one: 0, may_be_one: 0x0f };
        let err = c.adjust("secondary processor-based", 0x82, 0).unwrap_err();
        assert_eq!(err.missing, 0x80);
        assert_eq!(err.to_string(), "the CPU lacks required secondary processor-based VM controls (bits 0x00000080)");
    }

    #[test]
    fn supports_is_all_or_nothing() {
        let c = AllowedControls { must_be_one: 0, may_be_one: 0b0110 };
        assert!(c.supports(0b0100));
        assert!(!c.supports(0b0101));
    }
}
