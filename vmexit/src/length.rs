//! The length of the instruction that exited, for back ends whose CPU does
//! not report it (SVM without next-RIP save): fetched at CS:RIP as the
//! guest's CPU fetched it, and decoded.

use crate::mmio::fetch_instruction;
use crate::{translation_failed, CrAccess, Exit, Machine, Outcome, Stop, Vcpu};
use arch::decode::{self, DecodeError};

/// Tells the vCPU the length of the instruction behind `exit`, when its
/// handler may skip it and nothing else measures it (port I/O comes with its
/// next RIP; device-memory exits and `Undecoded` CR accesses decode their
/// instruction themselves).
pub fn measure(vcpu: &mut dyn Vcpu, vm: &Machine, exit: &Exit) -> Result<(), Outcome> {
    // A CR access the CPU did decode (SVM with decode assists, which does not
    // imply next-RIP save) is measured too: its handler skips it.
    let skips = matches!(
        exit,
        Exit::Cpuid
            | Exit::Hlt
            | Exit::Rdmsr
            | Exit::Wrmsr
            | Exit::Xsetbv
            | Exit::CacheFlush
            | Exit::Hypercall
            | Exit::Pause
    ) || matches!(exit, Exit::Cr(access) if !matches!(access, CrAccess::Undecoded { .. }));
    if !skips {
        return Ok(());
    }
    let length = decode_at_rip(vcpu, vm, decode::intercepted_length)?;
    vcpu.set_instruction_length(length);
    Ok(())
}

/// Runs `decoder` on the bytes at the guest's CS:RIP. A fetch the guest's CPU
/// would fault on is the guest's fault; bytes that are not the instruction
/// that exited (another vCPU rewrote them) stop the VM.
pub fn decode_at_rip<T>(
    vcpu: &mut dyn Vcpu,
    vm: &Machine,
    decoder: fn(&[u8], decode::CodeSize) -> Result<T, DecodeError>,
) -> Result<T, Outcome> {
    let fetched = fetch_instruction(vcpu, vm).map_err(|e| translation_failed(vcpu, e))?;
    match (decoder(&fetched.bytes[..fetched.len], vcpu.code_size()), fetched.beyond) {
        (Ok(value), _) => Ok(value),
        (Err(DecodeError::Truncated), Some(e)) => Err(translation_failed(vcpu, e)),
        (Err(e), _) => Err(Outcome::Stop(Stop::Unsupported(alloc::format!(
            "cannot decode the intercepted instruction at RIP {:#x} ({e:?})",
            vcpu.rip()
        )))),
    }
}
