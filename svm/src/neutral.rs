//! A #VMEXIT as the vendor-neutral `vmexit::Exit`: the exit code with
//! EXITINFO1/2 decoded, plus what the back end must act on that the `Exit`
//! does not carry (the next RIP where the CPU gave it, and which half of the
//! NMI window SVM lacks came to an end). Pure: it reads a VMCB and writes
//! nothing. The state behind it (NMI masking across IRET, the single step,
//! EVENTINJ re-injection) is the kernel's back end's.

use crate::exit::{code, CrAccessInfo, ExceptionExit, IoInfo, NpfInfo};
use crate::{ExitCode, SvmCapabilities, Vmcb};
use vmexit::{CrAccess, Exit, PortIo, SegmentRegister, StringIo};

/// One #VMEXIT, translated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Translation {
    pub exit: Exit,
    /// The RIP after the intercepted instruction where the CPU reported it:
    /// NEXT_RIP with next-RIP save, and EXITINFO2 of IOIO on every CPU (QEMU's
    /// TCG included). None: the length comes from decoding the instruction.
    pub next_rip: Option<u64>,
    /// Set when `exit` is `Exit::NmiWindow`: how it came about.
    pub nmi_window: Option<NmiWindow>,
}

/// SVM has no NMI-window exit: the back end intercepts the IRET of the
/// guest's NMI handler, and, when another NMI waits, steps the guest over it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NmiWindow {
    /// The IRET was intercepted: it runs at the next entry, and NMIs are
    /// unmasked once RIP has moved past it. The intercept has done its job.
    Iret,
    /// The #DB of the back end's own step over that IRET: the guest never
    /// sees it, and gets its TF, RF and DR6 back.
    SingleStep,
}

/// The exit in `vmcb`'s control area. `caps` are the CPU's SVM capabilities
/// (None: unknown, so neither next-RIP save nor decode assists are used);
/// `single_stepping` says the back end is stepping the guest over an IRET,
/// so a #DB is its own. A VMRUN that was refused (VMEXIT_INVALID, also in
/// QEMU's 32-bit form) reports the guest state it refused, with EVENTINJ as
/// the back end has set it for the next entry (the event EXITINTINFO names).
pub fn translate(vmcb: &Vmcb, caps: Option<&SvmCapabilities>, single_stepping: bool) -> Translation {
    let c = &vmcb.control;
    let exit = ExitCode(c.exit_code);
    let (info1, info2) = (c.exit_info1, c.exit_info2);
    let mut next_rip = if caps.is_some_and(|c| c.next_rip_saved()) { Some(c.next_rip) } else { None };
    let mut nmi_window = None;
    let exit = if exit.is_invalid() {
        Exit::EntryFailed(refused(vmcb))
    } else if let Some(exception) = ExceptionExit::decode(exit, info1, info2) {
        if exception.vector == vmexit::DB && single_stepping {
            nmi_window = Some(NmiWindow::SingleStep);
            Exit::NmiWindow
        } else {
            Exit::Exception { vector: exception.vector, error_code: exception.error_code }
        }
    } else {
        match exit.0 {
            code::CPUID => Exit::Cpuid,
            code::HLT => Exit::Hlt,
            // Intercepted only with the pause filter: a PAUSE loop.
            code::PAUSE => Exit::Pause,
            code::IOIO => {
                // EXITINFO2 holds the next RIP with or without next-RIP save.
                next_rip = Some(info2);
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
                nmi_window = Some(NmiWindow::Iret);
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
    };
    Translation { exit, next_rip, nmi_window }
}

/// The guest state VMRUN refused, for the stop reason.
fn refused(vmcb: &Vmcb) -> alloc::string::String {
    let s = &vmcb.save;
    alloc::format!(
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
        vmcb.control.event_inj
    )
}

/// EXITINFO1 of IOIO as `PortIo`. The address size and segment are the CPU's
/// only with decode assists (`vmexit::Vcpu::reports_string_io_operands`);
/// without, they are placeholders the handler does not use.
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::caps::SvmFeatures;

    /// QEMU's TCG EPYC model: neither next-RIP save nor decode assists.
    fn tcg() -> SvmCapabilities {
        SvmCapabilities::decode(1, 16, SvmFeatures::NESTED_PAGING.bits())
    }

    /// A CPU with both.
    fn assisted() -> SvmCapabilities {
        let features = SvmFeatures::NESTED_PAGING | SvmFeatures::NRIP_SAVE | SvmFeatures::DECODE_ASSISTS;
        SvmCapabilities::decode(1, 16, features.bits())
    }

    fn vmcb(exit_code: u64, info1: u64, info2: u64) -> Vmcb {
        let mut vmcb = Vmcb::new();
        vmcb.control.exit_code = exit_code;
        vmcb.control.exit_info1 = info1;
        vmcb.control.exit_info2 = info2;
        vmcb.control.next_rip = 0x1003;
        vmcb.save.rip = 0x1000;
        vmcb
    }

    fn exit_with(exit_code: u64, info1: u64, info2: u64, caps: Option<&SvmCapabilities>) -> Exit {
        translate(&vmcb(exit_code, info1, info2), caps, false).exit
    }

    fn exit_for(exit_code: u64) -> Exit {
        exit_with(exit_code, 0, 0, Some(&tcg()))
    }

    #[test]
    fn codes_without_details_map_one_to_one() {
        let table: &[(u64, Exit)] = &[
            (code::CPUID, Exit::Cpuid),
            (code::HLT, Exit::Hlt),
            (code::PAUSE, Exit::Pause),
            (code::XSETBV, Exit::Xsetbv),
            (code::INVD, Exit::CacheFlush),
            (code::WBINVD, Exit::CacheFlush),
            (code::VMMCALL, Exit::Hypercall),
            (code::INTR, Exit::HostInterrupt),
            (code::SMI, Exit::HostInterrupt),
            (code::NMI, Exit::HostNmi),
            (code::VINTR, Exit::InterruptWindow),
            (code::SHUTDOWN, Exit::Shutdown),
            (code::RDPMC, Exit::Rdpmc),
        ];
        for (c, exit) in table {
            let t = translate(&vmcb(*c, 0, 0), Some(&tcg()), false);
            assert_eq!((&t.exit, t.nmi_window), (exit, None), "code {c:#x}");
        }
    }

    #[test]
    fn svm_and_monitor_instructions_are_undefined() {
        for c in [
            code::VMRUN,
            code::VMLOAD,
            code::VMSAVE,
            code::STGI,
            code::CLGI,
            code::SKINIT,
            code::INVLPGA,
            code::MONITOR,
            code::MWAIT,
            code::MWAIT_CONDITIONAL,
        ] {
            assert_eq!(exit_for(c), Exit::UndefinedInstruction, "code {c:#x}");
        }
    }

    #[test]
    fn unknown_codes_are_unhandled_and_named() {
        let unhandled = |s: &str| Exit::Unhandled(s.into());
        assert_eq!(exit_for(code::CR0_READ), unhandled("cr-read (SVM exit code 0x0)"));
        assert_eq!(exit_for(code::CR3_WRITE), unhandled("cr-write (SVM exit code 0x13)"));
        assert_eq!(exit_for(code::DR0_WRITE + 7), unhandled("dr-write (SVM exit code 0x37)"));
        assert_eq!(exit_for(code::INIT), unhandled("init (SVM exit code 0x63)"));
        assert_eq!(exit_for(code::RDTSC), unhandled("rdtsc (SVM exit code 0x6e)"));
        assert_eq!(exit_for(code::CR0_WRITE_TRAP + 4), unhandled("cr-write-trap (SVM exit code 0x94)"));
        assert_eq!(exit_for(code::AVIC_NOACCEL), unhandled("avic (SVM exit code 0x402)"));
        assert_eq!(exit_for(0x3ff), unhandled("other (SVM exit code 0x3ff)"));
        // Near the 32-bit -1 but not it.
        assert_eq!(exit_for(0xffff_fffe), unhandled("other (SVM exit code 0xfffffffe)"));
    }

    #[test]
    fn refused_vmrun_reports_the_guest_state_in_either_encoding() {
        for exit_code in [code::INVALID, code::INVALID as u32 as u64, code::BUSY] {
            let mut v = vmcb(exit_code, 0, 0);
            let s = &mut v.save;
            (s.cr0, s.cr3, s.cr4, s.efer) = (0x8000_0011, 0x10_0000, 0x20, 0x1500);
            (s.cs.selector, s.cs.attrib, s.ss.attrib, s.cpl) = (0x8, 0x29b, 0x493, 0);
            (s.rflags, s.rip, s.dr6, s.dr7) = (0x2, 0x10_0000, 0xffff_0ff0, 0x400);
            v.control.event_inj = 0x8000_0b0d;
            let t = translate(&v, Some(&assisted()), true);
            assert_eq!(
                t.exit,
                Exit::EntryFailed(
                    "VMRUN refused the guest state (VMEXIT_INVALID): CR0 0x80000011 CR3 0x100000 CR4 0x20 \
                     EFER 0x1500 CS 0x8/0x29b SS 0x493 CPL 0 RFLAGS 0x2 RIP 0x100000 DR6 0xffff0ff0 DR7 0x400 \
                     EVENTINJ 0x80000b0d"
                        .into()
                ),
                "exit code {exit_code:#x}"
            );
            assert_eq!((t.next_rip, t.nmi_window), (Some(0x1003), None));
        }
    }

    #[test]
    fn next_rip_is_known_with_next_rip_save_and_for_port_io() {
        assert_eq!(translate(&vmcb(code::CPUID, 0, 0), Some(&assisted()), false).next_rip, Some(0x1003));
        assert_eq!(translate(&vmcb(code::CPUID, 0, 0), Some(&tcg()), false).next_rip, None);
        assert_eq!(translate(&vmcb(code::CPUID, 0, 0), None, false).next_rip, None);
        // IOIO's EXITINFO2 is the next RIP on every CPU, and wins over NEXT_RIP.
        for caps in [Some(&tcg()), Some(&assisted()), None] {
            let t = translate(&vmcb(code::IOIO, 0x3f8 << 16 | 1 << 4, 0x1002), caps, false);
            assert_eq!(t.next_rip, Some(0x1002));
        }
    }

    fn io(info1: u64) -> PortIo {
        match exit_with(code::IOIO, info1, 0x1002, Some(&tcg())) {
            Exit::Io(io) => io,
            other => panic!("not port I/O: {other:?}"),
        }
    }

    #[test]
    fn port_io_decodes_direction_size_and_port() {
        assert_eq!(io(0x3f8 << 16 | 1 << 4), PortIo { port: 0x3f8, size: 1, is_in: false, string: None });
        assert_eq!(io(0x1f0 << 16 | 1 << 5 | 1), PortIo { port: 0x1f0, size: 2, is_in: true, string: None });
        assert_eq!(io(0xcfc << 16 | 1 << 6 | 1), PortIo { port: 0xcfc, size: 4, is_in: true, string: None });
        // No size bit: passed on as 0 for the handler to refuse.
        assert_eq!(io(0xffff << 16).size, 0);
    }

    #[test]
    fn string_io_decodes_rep_address_size_and_segment() {
        const STRING: u64 = 1 << 2;
        const REP: u64 = 1 << 3;
        // rep insw, 64-bit addressing, ES.
        let ins = io(0x1f0 << 16 | 1 << 9 | 1 << 5 | REP | STRING | 1);
        assert_eq!(
            ins,
            PortIo {
                port: 0x1f0,
                size: 2,
                is_in: true,
                string: Some(StringIo { rep: true, address_size: 8, segment: SegmentRegister::Es }),
            }
        );
        // outsb with an FS override, 32-bit addressing.
        let outs = io(0x80 << 16 | 4 << 10 | 1 << 8 | 1 << 4 | STRING);
        assert_eq!(outs.string, Some(StringIo { rep: false, address_size: 4, segment: SegmentRegister::Fs }));
        // 16-bit addressing, DS.
        let outs = io(0x80 << 16 | 3 << 10 | 1 << 7 | 1 << 4 | STRING);
        assert_eq!(outs.string, Some(StringIo { rep: false, address_size: 2, segment: SegmentRegister::Ds }));
        // No address-size bit (a CPU without decode assists may leave it):
        // a placeholder the handler does not trust.
        assert_eq!(io(1 << 4 | STRING).string.unwrap().address_size, 8);
        let segments = [
            SegmentRegister::Es,
            SegmentRegister::Cs,
            SegmentRegister::Ss,
            SegmentRegister::Ds,
            SegmentRegister::Fs,
            SegmentRegister::Gs,
            SegmentRegister::Ds,
            SegmentRegister::Ds,
        ];
        for (encoding, segment) in segments.into_iter().enumerate() {
            let outs = io((encoding as u64) << 10 | 1 << 4 | STRING);
            assert_eq!(outs.string.unwrap().segment, segment, "segment {encoding}");
        }
    }

    #[test]
    fn nested_page_faults_are_device_memory_unless_in_a_page_table_walk() {
        let npf = |info1| exit_with(code::NPF, info1, 0xfed0_00f0, Some(&tcg()));
        // A write and a read of unmapped MMIO space.
        assert_eq!(npf(1 << 32 | 1 << 1 | 1 << 2), Exit::DeviceMemory { address: 0xfed0_00f0, fetch: false });
        assert_eq!(npf(1 << 32 | 1 << 2), Exit::DeviceMemory { address: 0xfed0_00f0, fetch: false });
        // A fetch, from a mapped non-executable page.
        assert_eq!(npf(1 << 32 | 1 << 4 | 1), Exit::DeviceMemory { address: 0xfed0_00f0, fetch: true });
        // The guest's page tables are not in RAM.
        assert_eq!(npf(1 << 33), Exit::Unhandled("guest page tables at non-RAM guest-physical 0xfed000f0".into()));
        assert_eq!(
            npf(1 << 33 | 1 << 4 | 1 << 1),
            Exit::Unhandled("guest page tables at non-RAM guest-physical 0xfed000f0".into())
        );
    }

    #[test]
    fn msr_exits_are_reads_or_writes() {
        assert_eq!(exit_with(code::MSR, 0, 0, None), Exit::Rdmsr);
        assert_eq!(exit_with(code::MSR, 1, 0, None), Exit::Wrmsr);
        // Only bit 0 says.
        assert_eq!(exit_with(code::MSR, 0xfe, 0, None), Exit::Rdmsr);
    }

    #[test]
    fn cr_accesses_are_decoded_only_with_decode_assists() {
        const MOV: u64 = 1 << 63;
        let cr = |c, info1, caps: &SvmCapabilities| exit_with(c, info1, 0, Some(caps));
        let a = &assisted();
        assert_eq!(cr(code::CR0_WRITE, MOV | 3, a), Exit::Cr(CrAccess::MovTo { cr: 0, gpr: 3 }));
        assert_eq!(cr(code::CR0_SEL_WRITE, MOV | 5, a), Exit::Cr(CrAccess::MovTo { cr: 0, gpr: 5 }));
        assert_eq!(cr(code::CR4_WRITE, MOV | 15, a), Exit::Cr(CrAccess::MovTo { cr: 4, gpr: 15 }));
        assert_eq!(cr(code::CR8_WRITE, MOV | 1, a), Exit::Cr(CrAccess::MovTo { cr: 8, gpr: 1 }));
        assert_eq!(cr(code::CR8_READ, MOV | 9, a), Exit::Cr(CrAccess::MovFrom { cr: 8, gpr: 9 }));
        // LMSW or CLTS (no MOV bit): the instruction at RIP says.
        assert_eq!(cr(code::CR0_WRITE, 0, a), Exit::Cr(CrAccess::Undecoded { cr: 0, write: true }));
        assert_eq!(cr(code::CR0_SEL_WRITE, 0, a), Exit::Cr(CrAccess::Undecoded { cr: 0, write: true }));
        // Without decode assists EXITINFO1 is not believed, whatever it holds.
        let t = &tcg();
        assert_eq!(cr(code::CR0_WRITE, MOV | 3, t), Exit::Cr(CrAccess::Undecoded { cr: 0, write: true }));
        assert_eq!(cr(code::CR0_SEL_WRITE, 0, t), Exit::Cr(CrAccess::Undecoded { cr: 0, write: true }));
        assert_eq!(cr(code::CR4_WRITE, 0, t), Exit::Cr(CrAccess::Undecoded { cr: 4, write: true }));
        assert_eq!(cr(code::CR8_WRITE, MOV | 1, t), Exit::Cr(CrAccess::Undecoded { cr: 8, write: true }));
        assert_eq!(cr(code::CR8_READ, MOV | 9, t), Exit::Cr(CrAccess::Undecoded { cr: 8, write: false }));
        // Unknown capabilities count as none.
        assert_eq!(exit_with(code::CR4_WRITE, MOV | 2, 0, None), Exit::Cr(CrAccess::Undecoded { cr: 4, write: true }));
    }

    #[test]
    fn exceptions_carry_their_error_code() {
        let exception = |vector: u64, info1| exit_with(code::EXCP_BASE + vector, info1, 0xdead_b000, Some(&tcg()));
        assert_eq!(exception(1, 0x55), Exit::Exception { vector: 1, error_code: None });
        assert_eq!(exception(6, 0), Exit::Exception { vector: 6, error_code: None });
        assert_eq!(exception(17, 0), Exit::Exception { vector: 17, error_code: Some(0) });
        assert_eq!(exception(13, 0x1_0000_0018), Exit::Exception { vector: 13, error_code: Some(0x18) });
        assert_eq!(exception(14, 6), Exit::Exception { vector: 14, error_code: Some(6) });
        assert_eq!(exception(31, 0), Exit::Exception { vector: 31, error_code: None });
    }

    #[test]
    fn the_nmi_window_is_the_iret_intercept_or_the_step_over_it() {
        let iret = translate(&vmcb(code::IRET, 0, 0), Some(&tcg()), false);
        assert_eq!((iret.exit, iret.nmi_window), (Exit::NmiWindow, Some(NmiWindow::Iret)));
        // The #DB after Basalt's own step is the window, not the guest's #DB.
        let step = translate(&vmcb(code::EXCP_BASE + 1, 0, 0), Some(&tcg()), true);
        assert_eq!((step.exit, step.nmi_window), (Exit::NmiWindow, Some(NmiWindow::SingleStep)));
        let guests = translate(&vmcb(code::EXCP_BASE + 1, 0, 0), Some(&tcg()), false);
        assert_eq!((guests.exit, guests.nmi_window), (Exit::Exception { vector: 1, error_code: None }, None));
        // Other exits while stepping are what they are.
        let ac = translate(&vmcb(code::EXCP_BASE + 17, 0, 0), Some(&tcg()), true);
        assert_eq!((ac.exit, ac.nmi_window), (Exit::Exception { vector: 17, error_code: Some(0) }, None));
        let intr = translate(&vmcb(code::INTR, 0, 0), Some(&tcg()), true);
        assert_eq!((intr.exit, intr.nmi_window), (Exit::HostInterrupt, None));
    }
}
