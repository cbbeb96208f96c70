//! Wrappers for the VMX instructions, each returning the decoded failure. All are
//! `unsafe`: they need VMX operation (or, for VMXON, its preconditions) and take
//! physical addresses the caller must own.

use crate::error::{InstructionError, VmFail};
use crate::vmcs::{self, Field};
use core::arch::asm;

const RFLAGS_CF: u64 = 1 << 0;
const RFLAGS_ZF: u64 = 1 << 6;

/// Turns the flags a VMX instruction left into its result.
#[inline]
fn check(rflags: u64) -> Result<(), VmFail> {
    if rflags & RFLAGS_CF != 0 {
        Err(VmFail::Invalid)
    } else if rflags & RFLAGS_ZF != 0 {
        // SAFETY: ZF means there is a current VMCS holding the error number.
        let error = unsafe { vmread(vmcs::VM_INSTRUCTION_ERROR) }.unwrap_or(0);
        Err(VmFail::Valid(InstructionError(error as u32)))
    } else {
        Ok(())
    }
}

/// # Safety
/// CR4.VMXE set, CR0/CR4 within the fixed bits, `region` a 4 KiB-aligned
/// physical page holding the VMCS revision id, owned for the whole VMX operation.
pub unsafe fn vmxon(region: u64) -> Result<(), VmFail> {
    let rflags: u64;
    // SAFETY: the caller upholds this function's contract (above).
    unsafe { asm!("vmxon [{}]", "pushfq", "pop {}", in(reg) &region, lateout(reg) rflags) };
    check(rflags)
}

/// # Safety
/// In VMX operation; nothing may use VMX on this CPU afterwards.
pub unsafe fn vmxoff() -> Result<(), VmFail> {
    let rflags: u64;
    // SAFETY: as for vmxon.
    unsafe { asm!("vmxoff", "pushfq", "pop {}", lateout(reg) rflags) };
    check(rflags)
}

/// # Safety
/// In VMX operation; `vmcs` is a VMCS region this code owns.
pub unsafe fn vmclear(vmcs: u64) -> Result<(), VmFail> {
    let rflags: u64;
    // SAFETY: as for vmxon.
    unsafe { asm!("vmclear [{}]", "pushfq", "pop {}", in(reg) &vmcs, lateout(reg) rflags) };
    check(rflags)
}

/// # Safety
/// In VMX operation; `vmcs` is a VMCS region (revision id set) this code owns.
pub unsafe fn vmptrld(vmcs: u64) -> Result<(), VmFail> {
    let rflags: u64;
    // SAFETY: as for vmxon.
    unsafe { asm!("vmptrld [{}]", "pushfq", "pop {}", in(reg) &vmcs, lateout(reg) rflags) };
    check(rflags)
}

/// # Safety
/// In VMX operation with a current VMCS.
#[inline]
pub unsafe fn vmread(field: Field) -> Result<u64, VmFail> {
    let value: u64;
    let rflags: u64;
    // SAFETY: as for vmxon; VMREAD only reads.
    unsafe {
        asm!("vmread {}, {}", "pushfq", "pop {}", lateout(reg) value, in(reg) field.0 as u64, lateout(reg) rflags)
    };
    // Not `check`: it would recurse on a failed read of the error field.
    if rflags & (RFLAGS_CF | RFLAGS_ZF) != 0 {
        return Err(VmFail::Invalid);
    }
    Ok(value)
}

/// Writes a VMCS field. Exit-information fields are read-only: a write to
/// one is refused here with the error the CPU itself reports (13), also on
/// CPUs that would allow it ("VMWRITE to any field"), so exit information
/// always says what the CPU said.
///
/// # Safety
/// In VMX operation with a current VMCS; the value must keep the VMCS consistent
/// with what the caller will run.
#[inline]
pub unsafe fn vmwrite(field: Field, value: u64) -> Result<(), VmFail> {
    if field.is_read_only() {
        return Err(VmFail::Valid(InstructionError(13)));
    }
    let rflags: u64;
    // SAFETY: as for vmxon; read-only fields were refused above.
    unsafe { asm!("vmwrite {}, {}", "pushfq", "pop {}", in(reg) field.0 as u64, in(reg) value, lateout(reg) rflags) };
    check(rflags)
}

/// INVEPT types.
#[derive(Clone, Copy, Debug)]
pub enum InvEptType {
    SingleContext = 1,
    AllContexts = 2,
}

/// # Safety
/// In VMX operation, with INVEPT supported for `kind`.
pub unsafe fn invept(kind: InvEptType, eptp: u64) -> Result<(), VmFail> {
    let descriptor: [u64; 2] = [eptp, 0];
    let rflags: u64;
    // SAFETY: as for vmxon; the descriptor lives on this stack.
    unsafe {
        asm!("invept {}, [{}]", "pushfq", "pop {}", in(reg) kind as u64, in(reg) &descriptor, lateout(reg) rflags)
    };
    check(rflags)
}

/// INVVPID types.
#[derive(Clone, Copy, Debug)]
pub enum InvVpidType {
    IndividualAddress = 0,
    SingleContext = 1,
    AllContexts = 2,
}

/// # Safety
/// In VMX operation, with INVVPID supported for `kind`.
pub unsafe fn invvpid(kind: InvVpidType, vpid: u16, address: u64) -> Result<(), VmFail> {
    let descriptor: [u64; 2] = [vpid as u64, address];
    let rflags: u64;
    // SAFETY: as for vmxon; the descriptor lives on this stack.
    unsafe {
        asm!("invvpid {}, [{}]", "pushfq", "pop {}", in(reg) kind as u64, in(reg) &descriptor, lateout(reg) rflags)
    };
    check(rflags)
}

/// Guest general registers not held in the VMCS (RSP and RIP are), plus CR2,
/// which VM entries and exits leave alone.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GuestRegisters {
    pub rax: u64,
    pub rbx: u64,
    pub rcx: u64,
    pub rdx: u64,
    pub rsi: u64,
    pub rdi: u64,
    pub rbp: u64,
    pub r8: u64,
    pub r9: u64,
    pub r10: u64,
    pub r11: u64,
    pub r12: u64,
    pub r13: u64,
    pub r14: u64,
    pub r15: u64,
    pub cr2: u64,
}

impl GuestRegisters {
    /// A register by its instruction encoding (0 = RAX ... 15 = R15); 4 (RSP)
    /// lives in the VMCS and is not handled here.
    pub fn get(&self, index: u8) -> u64 {
        match index & 15 {
            0 => self.rax,
            1 => self.rcx,
            2 => self.rdx,
            3 => self.rbx,
            5 => self.rbp,
            6 => self.rsi,
            7 => self.rdi,
            8 => self.r8,
            9 => self.r9,
            10 => self.r10,
            11 => self.r11,
            12 => self.r12,
            13 => self.r13,
            14 => self.r14,
            15 => self.r15,
            _ => 0,
        }
    }

    pub fn set(&mut self, index: u8, value: u64) {
        let slot = match index & 15 {
            0 => &mut self.rax,
            1 => &mut self.rcx,
            2 => &mut self.rdx,
            3 => &mut self.rbx,
            5 => &mut self.rbp,
            6 => &mut self.rsi,
            7 => &mut self.rdi,
            8 => &mut self.r8,
            9 => &mut self.r9,
            10 => &mut self.r10,
            11 => &mut self.r11,
            12 => &mut self.r12,
            13 => &mut self.r13,
            14 => &mut self.r14,
            15 => &mut self.r15,
            _ => return,
        };
        *slot = value;
    }
}

// vmx_enter(regs, launched) enters the guest with `regs` loaded. On a VM exit the
// CPU resumes at vmx_exit with RSP = HOST_RSP (which vmx_enter set to point at the
// saved `regs` pointer); the guest registers are stored back and 0 is returned.
// If VMLAUNCH/VMRESUME itself fails, RFLAGS (CF/ZF say how) is returned instead.
core::arch::global_asm!(
    r#"
.section .text.vmx_enter, "ax"
.global basalt_vmx_enter
basalt_vmx_enter:
    push rbp
    push rbx
    push r12
    push r13
    push r14
    push r15
    push rdi
    mov rax, 0x6c14
    vmwrite rax, rsp
    lea rbx, [rip + basalt_vmx_exit]
    mov rax, 0x6c16
    vmwrite rax, rbx
    mov rax, [rdi + 15*8]
    mov cr2, rax
    test rsi, rsi
    mov rax, [rdi + 0*8]
    mov rbx, [rdi + 1*8]
    mov rcx, [rdi + 2*8]
    mov rdx, [rdi + 3*8]
    mov rsi, [rdi + 4*8]
    mov rbp, [rdi + 6*8]
    mov r8, [rdi + 7*8]
    mov r9, [rdi + 8*8]
    mov r10, [rdi + 9*8]
    mov r11, [rdi + 10*8]
    mov r12, [rdi + 11*8]
    mov r13, [rdi + 12*8]
    mov r14, [rdi + 13*8]
    mov r15, [rdi + 14*8]
    mov rdi, [rdi + 5*8]
    jnz 2f
    vmlaunch
    jmp 3f
2:
    vmresume
3:
    // Entry failed: nothing of the guest ran. Return RFLAGS.
    pushfq
    pop rax
    add rsp, 8
    pop r15
    pop r14
    pop r13
    pop r12
    pop rbx
    pop rbp
    ret

.global basalt_vmx_exit
basalt_vmx_exit:
    push rdi
    mov rdi, [rsp + 8]
    mov [rdi + 0*8], rax
    mov [rdi + 1*8], rbx
    mov [rdi + 2*8], rcx
    mov [rdi + 3*8], rdx
    mov [rdi + 4*8], rsi
    mov [rdi + 6*8], rbp
    mov [rdi + 7*8], r8
    mov [rdi + 8*8], r9
    mov [rdi + 9*8], r10
    mov [rdi + 10*8], r11
    mov [rdi + 11*8], r12
    mov [rdi + 12*8], r13
    mov [rdi + 13*8], r14
    mov [rdi + 14*8], r15
    pop rax
    mov [rdi + 5*8], rax
    mov rax, cr2
    mov [rdi + 15*8], rax
    add rsp, 8
    pop r15
    pop r14
    pop r13
    pop r12
    pop rbx
    pop rbp
    xor eax, eax
    ret
.text
"#
);

extern "C" {
    fn basalt_vmx_enter(regs: *mut GuestRegisters, launched: u64) -> u64;
}

/// Runs the guest of the current VMCS until its next VM exit.
///
/// # Safety
/// In VMX operation with a current, fully set-up VMCS whose host state returns to
/// this kernel (HOST_RSP and HOST_RIP are set here). `launched` must say whether
/// this VMCS was launched since its last VMCLEAR. Interrupts should be off.
pub unsafe fn enter(regs: &mut GuestRegisters, launched: bool) -> Result<(), VmFail> {
    // SAFETY: the caller upholds this function's contract (above); the stub
    // saves and restores the host's callee-saved registers.
    let rflags = unsafe { basalt_vmx_enter(regs, launched as u64) };
    if rflags == 0 {
        Ok(())
    } else {
        check(rflags)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registers_follow_the_instruction_encoding() {
        let mut r = GuestRegisters::default();
        for i in 0..16u8 {
            r.set(i, 0x100 + i as u64);
        }
        assert_eq!((r.rax, r.rcx, r.rdx, r.rbx), (0x100, 0x101, 0x102, 0x103));
        assert_eq!(r.get(4), 0, "RSP lives in the VMCS");
        assert_eq!((r.rbp, r.rsi, r.rdi, r.r8, r.r15), (0x105, 0x106, 0x107, 0x108, 0x10f));
        assert_eq!(r.get(12), 0x10c);
    }

    #[test]
    fn read_only_fields_are_refused_before_any_vmwrite() {
        // On the host a real VMWRITE would fault: the refusal comes first.
        for field in [vmcs::EXIT_INSTRUCTION_LENGTH, vmcs::EXIT_REASON, vmcs::GUEST_PHYSICAL_ADDRESS] {
            // SAFETY: a read-only field never reaches the instruction.
            let result = unsafe { vmwrite(field, 1) };
            assert_eq!(result, Err(VmFail::Valid(InstructionError(13))), "{}", vmcs::name(field));
        }
    }

    #[test]
    fn layout_matches_the_entry_stub_offsets() {
        // The assembly addresses fields by index; keep them where it expects.
        let r = GuestRegisters::default();
        let base = &r as *const _ as usize;
        assert_eq!(&r.rsi as *const _ as usize - base, 4 * 8);
        assert_eq!(&r.rdi as *const _ as usize - base, 5 * 8);
        assert_eq!(&r.r15 as *const _ as usize - base, 14 * 8);
        assert_eq!(&r.cr2 as *const _ as usize - base, 15 * 8);
    }
}
