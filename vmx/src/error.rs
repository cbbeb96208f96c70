//! What a failed VMX instruction tells us: VMfailInvalid (no current VMCS) or
//! VMfailValid with an error number in the VMCS, decoded here by name.

use core::fmt;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VmFail {
    /// CF set: there is no current VMCS to hold an error number.
    Invalid,
    /// ZF set: the VM-instruction error field says why.
    Valid(InstructionError),
}

/// VM-instruction error numbers (Intel SDM vol. 3, 31.4).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InstructionError(pub u32);

impl InstructionError {
    pub fn description(self) -> &'static str {
        match self.0 {
            1 => "VMCALL executed in VMX root operation",
            2 => "VMCLEAR with invalid physical address",
            3 => "VMCLEAR with VMXON pointer",
            4 => "VMLAUNCH with non-clear VMCS",
            5 => "VMRESUME with non-launched VMCS",
            6 => "VMRESUME after VMXOFF",
            7 => "VM entry with invalid control field(s)",
            8 => "VM entry with invalid host-state field(s)",
            9 => "VMPTRLD with invalid physical address",
            10 => "VMPTRLD with VMXON pointer",
            11 => "VMPTRLD with incorrect VMCS revision identifier",
            12 => "VMREAD/VMWRITE from/to unsupported VMCS component",
            13 => "VMWRITE to read-only VMCS component",
            15 => "VMXON executed in VMX root operation",
            16 => "VM entry with invalid executive-VMCS pointer",
            17 => "VM entry with non-launched executive VMCS",
            18 => "VM entry with executive-VMCS pointer not VMXON pointer",
            19 => "VMCALL with non-clear VMCS",
            20 => "VMCALL with invalid VM-exit control fields",
            22 => "VMCALL with incorrect MSEG revision identifier",
            23 => "VMXOFF under dual-monitor treatment of SMIs and SMM",
            24 => "VMCALL with invalid SMM-monitor features",
            25 => "VM entry with invalid VM-execution control fields in executive VMCS",
            26 => "VM entry with events blocked by MOV SS",
            28 => "invalid operand to INVEPT/INVVPID",
            _ => "unknown VM-instruction error",
        }
    }
}

impl fmt::Display for VmFail {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            VmFail::Invalid => write!(f, "VMfailInvalid (no current VMCS)"),
            VmFail::Valid(e) => write!(f, "VM-instruction error {}: {}", e.0, e.description()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_display_their_number_and_meaning() {
        assert_eq!(
            VmFail::Valid(InstructionError(7)).to_string(),
            "VM-instruction error 7: VM entry with invalid control field(s)"
        );
        assert_eq!(VmFail::Invalid.to_string(), "VMfailInvalid (no current VMCS)");
        assert_eq!(InstructionError(99).description(), "unknown VM-instruction error");
    }
}
