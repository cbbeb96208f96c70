//! VMCS field encodings (Intel SDM vol. 3, appendix B). A field's encoding also
//! says its width, which `Field::width` decodes.

/// One VMCS field, by its architectural encoding.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Field(pub u32);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Width {
    Bits16,
    Bits64,
    Bits32,
    Natural,
}

impl Field {
    pub const fn width(self) -> Width {
        match (self.0 >> 13) & 3 {
            0 => Width::Bits16,
            1 => Width::Bits64,
            2 => Width::Bits32,
            _ => Width::Natural,
        }
    }

    /// Read-only fields hold exit information (bits 11:10 = 1).
    pub const fn is_read_only(self) -> bool {
        (self.0 >> 10) & 3 == 1
    }
}

macro_rules! fields {
    ($($name:ident = $value:expr;)*) => {
        $(pub const $name: Field = Field($value);)*
        /// Every named field with its name, for diagnostics.
        pub const ALL: &[(Field, &str)] = &[$(($name, stringify!($name)),)*];
    };
}

fields! {
    // 16-bit control, guest and host state.
    VPID = 0x0000;
    GUEST_ES_SELECTOR = 0x0800;
    GUEST_CS_SELECTOR = 0x0802;
    GUEST_SS_SELECTOR = 0x0804;
    GUEST_DS_SELECTOR = 0x0806;
    GUEST_FS_SELECTOR = 0x0808;
    GUEST_GS_SELECTOR = 0x080a;
    GUEST_LDTR_SELECTOR = 0x080c;
    GUEST_TR_SELECTOR = 0x080e;
    // Virtual-interrupt delivery: RVI (bits 7:0) and SVI (bits 15:8).
    GUEST_INTERRUPT_STATUS = 0x0810;
    HOST_ES_SELECTOR = 0x0c00;
    HOST_CS_SELECTOR = 0x0c02;
    HOST_SS_SELECTOR = 0x0c04;
    HOST_DS_SELECTOR = 0x0c06;
    HOST_FS_SELECTOR = 0x0c08;
    HOST_GS_SELECTOR = 0x0c0a;
    HOST_TR_SELECTOR = 0x0c0c;
    // 64-bit control.
    IO_BITMAP_A = 0x2000;
    IO_BITMAP_B = 0x2002;
    MSR_BITMAP = 0x2004;
    EXIT_MSR_STORE_ADDRESS = 0x2006;
    EXIT_MSR_LOAD_ADDRESS = 0x2008;
    ENTRY_MSR_LOAD_ADDRESS = 0x200a;
    TSC_OFFSET = 0x2010;
    VIRTUAL_APIC_ADDRESS = 0x2012;
    APIC_ACCESS_ADDRESS = 0x2014;
    EPT_POINTER = 0x201a;
    EOI_EXIT_BITMAP0 = 0x201c;
    EOI_EXIT_BITMAP1 = 0x201e;
    EOI_EXIT_BITMAP2 = 0x2020;
    EOI_EXIT_BITMAP3 = 0x2022;
    XSS_EXITING_BITMAP = 0x202c;
    // 64-bit read-only.
    GUEST_PHYSICAL_ADDRESS = 0x2400;
    // 64-bit guest and host state.
    VMCS_LINK_POINTER = 0x2800;
    GUEST_IA32_DEBUGCTL = 0x2802;
    GUEST_IA32_PAT = 0x2804;
    GUEST_IA32_EFER = 0x2806;
    GUEST_PDPTE0 = 0x280a;
    GUEST_PDPTE1 = 0x280c;
    GUEST_PDPTE2 = 0x280e;
    GUEST_PDPTE3 = 0x2810;
    HOST_IA32_PAT = 0x2c00;
    HOST_IA32_EFER = 0x2c02;
    // 32-bit control.
    PIN_BASED_CONTROLS = 0x4000;
    PRIMARY_PROCESSOR_CONTROLS = 0x4002;
    EXCEPTION_BITMAP = 0x4004;
    PAGE_FAULT_ERROR_CODE_MASK = 0x4006;
    PAGE_FAULT_ERROR_CODE_MATCH = 0x4008;
    CR3_TARGET_COUNT = 0x400a;
    EXIT_CONTROLS = 0x400c;
    EXIT_MSR_STORE_COUNT = 0x400e;
    EXIT_MSR_LOAD_COUNT = 0x4010;
    ENTRY_CONTROLS = 0x4012;
    ENTRY_MSR_LOAD_COUNT = 0x4014;
    ENTRY_INTERRUPTION_INFO = 0x4016;
    ENTRY_EXCEPTION_ERROR_CODE = 0x4018;
    ENTRY_INSTRUCTION_LENGTH = 0x401a;
    TPR_THRESHOLD = 0x401c;
    SECONDARY_PROCESSOR_CONTROLS = 0x401e;
    PLE_GAP = 0x4020;
    PLE_WINDOW = 0x4022;
    // 32-bit read-only.
    VM_INSTRUCTION_ERROR = 0x4400;
    EXIT_REASON = 0x4402;
    EXIT_INTERRUPTION_INFO = 0x4404;
    EXIT_INTERRUPTION_ERROR_CODE = 0x4406;
    IDT_VECTORING_INFO = 0x4408;
    IDT_VECTORING_ERROR_CODE = 0x440a;
    EXIT_INSTRUCTION_LENGTH = 0x440c;
    EXIT_INSTRUCTION_INFO = 0x440e;
    // 32-bit guest and host state.
    GUEST_ES_LIMIT = 0x4800;
    GUEST_CS_LIMIT = 0x4802;
    GUEST_SS_LIMIT = 0x4804;
    GUEST_DS_LIMIT = 0x4806;
    GUEST_FS_LIMIT = 0x4808;
    GUEST_GS_LIMIT = 0x480a;
    GUEST_LDTR_LIMIT = 0x480c;
    GUEST_TR_LIMIT = 0x480e;
    GUEST_GDTR_LIMIT = 0x4810;
    GUEST_IDTR_LIMIT = 0x4812;
    GUEST_ES_ACCESS_RIGHTS = 0x4814;
    GUEST_CS_ACCESS_RIGHTS = 0x4816;
    GUEST_SS_ACCESS_RIGHTS = 0x4818;
    GUEST_DS_ACCESS_RIGHTS = 0x481a;
    GUEST_FS_ACCESS_RIGHTS = 0x481c;
    GUEST_GS_ACCESS_RIGHTS = 0x481e;
    GUEST_LDTR_ACCESS_RIGHTS = 0x4820;
    GUEST_TR_ACCESS_RIGHTS = 0x4822;
    GUEST_INTERRUPTIBILITY = 0x4824;
    GUEST_ACTIVITY_STATE = 0x4826;
    GUEST_SYSENTER_CS = 0x482a;
    PREEMPTION_TIMER_VALUE = 0x482e;
    HOST_SYSENTER_CS = 0x4c00;
    // Natural-width control.
    CR0_GUEST_HOST_MASK = 0x6000;
    CR4_GUEST_HOST_MASK = 0x6002;
    CR0_READ_SHADOW = 0x6004;
    CR4_READ_SHADOW = 0x6006;
    // Natural-width read-only.
    EXIT_QUALIFICATION = 0x6400;
    GUEST_LINEAR_ADDRESS = 0x640a;
    // Natural-width guest state.
    GUEST_CR0 = 0x6800;
    GUEST_CR3 = 0x6802;
    GUEST_CR4 = 0x6804;
    GUEST_ES_BASE = 0x6806;
    GUEST_CS_BASE = 0x6808;
    GUEST_SS_BASE = 0x680a;
    GUEST_DS_BASE = 0x680c;
    GUEST_FS_BASE = 0x680e;
    GUEST_GS_BASE = 0x6810;
    GUEST_LDTR_BASE = 0x6812;
    GUEST_TR_BASE = 0x6814;
    GUEST_GDTR_BASE = 0x6816;
    GUEST_IDTR_BASE = 0x6818;
    GUEST_DR7 = 0x681a;
    GUEST_RSP = 0x681c;
    GUEST_RIP = 0x681e;
    GUEST_RFLAGS = 0x6820;
    GUEST_PENDING_DEBUG_EXCEPTIONS = 0x6822;
    GUEST_SYSENTER_ESP = 0x6824;
    GUEST_SYSENTER_EIP = 0x6826;
    // Natural-width host state.
    HOST_CR0 = 0x6c00;
    HOST_CR3 = 0x6c02;
    HOST_CR4 = 0x6c04;
    HOST_FS_BASE = 0x6c06;
    HOST_GS_BASE = 0x6c08;
    HOST_TR_BASE = 0x6c0a;
    HOST_GDTR_BASE = 0x6c0c;
    HOST_IDTR_BASE = 0x6c0e;
    HOST_SYSENTER_ESP = 0x6c10;
    HOST_SYSENTER_EIP = 0x6c12;
    HOST_RSP = 0x6c14;
    HOST_RIP = 0x6c16;
}

/// The field's name, or its encoding in hex when it has none here.
pub fn name(field: Field) -> &'static str {
    ALL.iter().find(|(f, _)| *f == field).map_or("unnamed field", |(_, n)| n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn widths_decode_from_the_encoding() {
        assert_eq!(VPID.width(), Width::Bits16);
        assert_eq!(EPT_POINTER.width(), Width::Bits64);
        assert_eq!(EXIT_REASON.width(), Width::Bits32);
        assert_eq!(GUEST_RIP.width(), Width::Natural);
    }

    #[test]
    fn read_only_fields_are_recognised() {
        assert!(EXIT_REASON.is_read_only());
        assert!(EXIT_QUALIFICATION.is_read_only());
        assert!(GUEST_PHYSICAL_ADDRESS.is_read_only());
        assert!(!GUEST_RIP.is_read_only());
        assert!(!PIN_BASED_CONTROLS.is_read_only());
    }

    #[test]
    fn every_field_is_named_once_with_a_consistent_width_group() {
        for (i, (field, name)) in ALL.iter().enumerate() {
            assert!(ALL[i + 1..].iter().all(|(f, _)| f != field), "{name} listed twice");
            assert_eq!(field.0 & 1, 0, "{name}: full-width encodings are even");
            let is_guest_or_host = name.starts_with("GUEST_") || name.starts_with("HOST_");
            let state_group = (field.0 >> 10) & 3;
            if is_guest_or_host && !field.is_read_only() {
                assert!(state_group >= 2, "{name}: guest/host state groups are 2 and 3");
            }
        }
        assert_eq!(super::name(GUEST_CR3), "GUEST_CR3");
    }
}
