//! #VMEXIT as `vmexit::Exit` values: the exit code with EXITINFO1/2 decoded,
//! an event whose delivery the exit interrupted set up again, and what SVM
//! leaves to the VMM (NMI masking across IRET, the next RIP).

use super::vcpu::Vcpu;
use svm::exit::{code, CrAccessInfo, ExceptionExit, IoInfo, NpfInfo};
use svm::{Event, ExitCode};
use vmexit::{CrAccess, Exit, PortIo, SegmentRegister, StringIo};

/// The exit that just happened, read from the vCPU's VMCB.
pub fn translate(vcpu: &mut Vcpu) -> Exit {
    let caps = super::cpu::capabilities().ok();
    // The IRET that ended the guest's NMI handler has run once RIP moved on.
    if vcpu.iret_in_flight.is_some_and(|at| at != vcpu.vmcb().save.rip) {
        vcpu.iret_in_flight = None;
        vcpu.nmi_masked = false;
    }
    let c = &mut vcpu.vmcb_mut().control;
    let exit = ExitCode(c.exit_code);
    let (info1, info2) = (c.exit_info1, c.exit_info2);
    // An event the exit interrupted is delivered again at the next entry; what
    // was in EVENTINJ has been consumed.
    c.event_inj = match Event::decode(c.exit_int_info) {
        Some(event) => event.encode(),
        None => 0,
    };
    let next_rip = if caps.is_some_and(|c| c.next_rip_saved()) { Some(c.next_rip) } else { None };
    vcpu.next_rip = next_rip;
    if exit.is_invalid() {
        let v = vcpu.vmcb();
        let s = &v.save;
        return Exit::EntryFailed(alloc::format!(
            "VMRUN refused the guest state (VMEXIT_INVALID): CR0 {:#x} CR3 {:#x} CR4 {:#x} EFER {:#x} \
             CS {:#x}/{:#x} SS {:#x} CPL {} RFLAGS {:#x} RIP {:#x} DR6 {:#x} DR7 {:#x} EVENTINJ {:#x}",
            s.cr0,
            s.cr3,
            s.cr4,
            s.efer,
            s.cs.selector,
            s.cs.attrib,
            s.ss.attrib,
            s.cpl,
            s.rflags,
            s.rip,
            s.dr6,
            s.dr7,
            v.control.event_inj
        ));
    }
    if let Some(exception) = ExceptionExit::decode(exit, info1, info2) {
        if exception.vector == vmexit::DB {
            if let Some((rflags, dr6)) = vcpu.nmi_singlestep.take() {
                // Basalt's own step over the IRET: the guest never sees it.
                vcpu.end_singlestep(rflags, dr6);
                return Exit::NmiWindow;
            }
        }
        return Exit::Exception { vector: exception.vector, error_code: exception.error_code };
    }
    match exit.0 {
        code::CPUID => Exit::Cpuid,
        code::HLT => Exit::Hlt,
        code::IOIO => {
            // EXITINFO2 holds the next RIP with or without next-RIP save.
            vcpu.next_rip = Some(info2);
            Exit::Io(port_io(IoInfo::decode(info1)))
        }
        code::NPF => {
            let fault = NpfInfo::decode(info1);
            if fault.page_table_walk {
                Exit::Unhandled(alloc::format!("guest page tables at non-RAM guest-physical {info2:#x}"))
            } else {
                Exit::DeviceMemory { address: info2, fetch: fault.fetch }
            }
        }
        code::MSR => {
            if info1 & 1 == 0 {
                Exit::Rdmsr
            } else {
                Exit::Wrmsr
            }
        }
        code::CR0_WRITE | code::CR0_SEL_WRITE | code::CR4_WRITE | code::CR8_WRITE | code::CR8_READ => {
            let cr = if exit.0 == code::CR0_SEL_WRITE { 0 } else { (exit.0 & 0xf) as u8 };
            let write = exit.0 != code::CR8_READ;
            let decoded = caps.is_some_and(|c| c.decode_assists());
            match (decoded, CrAccessInfo::decode(info1)) {
                (true, CrAccessInfo::Mov { gpr }) if write => Exit::Cr(CrAccess::MovTo { cr, gpr }),
                (true, CrAccessInfo::Mov { gpr }) => Exit::Cr(CrAccess::MovFrom { cr, gpr }),
                // Without decode assists (or for LMSW/CLTS) the instruction at RIP says.
                _ => Exit::Cr(CrAccess::Undecoded { cr, write }),
            }
        }
        code::XSETBV => Exit::Xsetbv,
        code::INVD | code::WBINVD => Exit::CacheFlush,
        code::VMMCALL => Exit::Hypercall,
        code::INTR | code::SMI => Exit::HostInterrupt,
        code::NMI => Exit::HostNmi,
        code::VINTR => Exit::InterruptWindow,
        code::IRET => {
            // The guest's NMI handler returns: its IRET runs at the next entry,
            // and NMIs are unmasked once it has (see the top of this function).
            vcpu.iret_in_flight = Some(vcpu.vmcb().save.rip);
            vcpu.set_iret_intercept(false);
            Exit::NmiWindow
        }
        code::SHUTDOWN => Exit::Shutdown,
        code::VMRUN
        | code::VMLOAD
        | code::VMSAVE
        | code::STGI
        | code::CLGI
        | code::SKINIT
        | code::INVLPGA
        | code::MONITOR
        | code::MWAIT
        | code::MWAIT_CONDITIONAL => Exit::UndefinedInstruction,
        code::RDPMC => Exit::Rdpmc,
        other => Exit::Unhandled(alloc::format!("{} (SVM exit code {other:#x})", exit.name())),
    }
}

fn port_io(info: IoInfo) -> PortIo {
    let string = info.is_string.then(|| StringIo {
        rep: info.has_rep,
        address_size: match info.address_size {
            16 => 2,
            32 => 4,
            _ => 8,
        },
        segment: info
            .segment
            .map_or(SegmentRegister::Ds, |s| SegmentRegister::from_encoding(s as u8).unwrap_or(SegmentRegister::Ds)),
    });
    PortIo { port: info.port, size: info.size, is_in: info.is_in, string }
}
