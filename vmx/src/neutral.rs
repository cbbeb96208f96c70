//! A VM exit as the vendor-neutral `vmexit::Exit`: the exit reason with its
//! qualification and instruction information decoded, an entry failure with
//! what it failed on. Pure: the exit's fields come from a reader (VMREAD in
//! the kernel, a table in the tests), read only as the reason needs them, and
//! nothing is written. Re-injecting an event the exit interrupted is the
//! kernel's (it writes the VMCS).

use crate::exit::{interruption_type, reason, ApicAccess, EptViolation, InterruptionInfo, IoQualification};
use crate::vmcs::{self, Field};
use crate::ExitReason;
use alloc::string::String;
use devices::layout::LAPIC_BASE;
use vmexit::{CrAccess, Exit, PortIo, SegmentRegister, StringIo};

/// The exit described by the current VMCS's exit fields, read through `read`
/// (EXIT_REASON, EXIT_QUALIFICATION, GUEST_PHYSICAL_ADDRESS,
/// EXIT_INSTRUCTION_INFO, EXIT_INTERRUPTION_INFO and its error code, and
/// GUEST_RIP for an entry failure). `virtual_apic_register` reads the
/// virtual-APIC page at a register's offset (None: the vCPU has no page); an
/// APIC-write exit needs it for the value written.
pub fn translate(read: impl Fn(Field) -> u64, virtual_apic_register: impl Fn(u32) -> Option<u32>) -> Exit {
    let exit = ExitReason(read(vmcs::EXIT_REASON) as u32);
    if exit.is_entry_failure() {
        return Exit::EntryFailed(entry_failure(exit, &read));
    }
    match exit.basic() {
        reason::CPUID => Exit::Cpuid,
        reason::HLT => Exit::Hlt,
        // PAUSE-loop exiting: a guest spinning for longer than PLE_Window.
        reason::PAUSE => Exit::Pause,
        reason::IO_INSTRUCTION => Exit::Io(port_io(&read)),
        reason::EPT_VIOLATION => {
            let violation = EptViolation::decode(read(vmcs::EXIT_QUALIFICATION));
            Exit::DeviceMemory { address: read(vmcs::GUEST_PHYSICAL_ADDRESS), fetch: violation.fetch }
        }
        reason::APIC_ACCESS => match ApicAccess::decode(read(vmcs::EXIT_QUALIFICATION)) {
            // Fault-like: emulated like any device access (the current count,
            // PPR, unaligned or wide accesses end up here).
            ApicAccess::Read { offset } | ApicAccess::Write { offset } => {
                Exit::DeviceMemory { address: LAPIC_BASE + offset as u64, fetch: false }
            }
            ApicAccess::Other { kind, offset } => Exit::Unhandled(alloc::format!(
                "local APIC access of type {kind} at offset {offset:#x} (not by an instruction's data access)"
            )),
        },
        reason::APIC_WRITE => {
            // Trap-like: the write is done (the value is in the page) and RIP is past it.
            let offset = read(vmcs::EXIT_QUALIFICATION) as u32 & 0xff0;
            match virtual_apic_register(offset) {
                Some(value) => Exit::ApicWrite { offset, value },
                None => Exit::Unhandled("APIC-write exit without a virtual-APIC page".into()),
            }
        }
        reason::TPR_BELOW_THRESHOLD => Exit::TprBelowThreshold,
        // Trap-like: the CPU has taken the vector out of service; the
        // qualification's low byte names it (the guest wrote EOI for a vector
        // in the EOI-exit bitmap, a level-triggered one).
        reason::VIRTUALIZED_EOI => Exit::VirtualEoi { vector: read(vmcs::EXIT_QUALIFICATION) as u8 },
        reason::RDMSR => Exit::Rdmsr,
        reason::WRMSR => Exit::Wrmsr,
        reason::CR_ACCESS => Exit::Cr(match crate::exit::CrAccess::decode(read(vmcs::EXIT_QUALIFICATION)) {
            crate::exit::CrAccess::MovToCr { cr, gpr } => CrAccess::MovTo { cr, gpr },
            crate::exit::CrAccess::MovFromCr { cr, gpr } => CrAccess::MovFrom { cr, gpr },
            crate::exit::CrAccess::Clts => CrAccess::Clts,
            crate::exit::CrAccess::Lmsw { source } => CrAccess::Lmsw { source },
        }),
        reason::XSETBV => Exit::Xsetbv,
        reason::WBINVD | reason::INVD => Exit::CacheFlush,
        reason::VMCALL => Exit::Hypercall,
        reason::EXTERNAL_INTERRUPT => Exit::HostInterrupt,
        reason::EXCEPTION_OR_NMI => {
            let info = InterruptionInfo(read(vmcs::EXIT_INTERRUPTION_INFO) as u32);
            if info.kind() == interruption_type::NMI {
                Exit::HostNmi
            } else {
                let error_code = info.has_error_code().then(|| read(vmcs::EXIT_INTERRUPTION_ERROR_CODE) as u32);
                Exit::Exception { vector: info.vector(), error_code }
            }
        }
        reason::INTERRUPT_WINDOW => Exit::InterruptWindow,
        reason::NMI_WINDOW => Exit::NmiWindow,
        reason::PREEMPTION_TIMER => Exit::Timer,
        reason::TRIPLE_FAULT => Exit::Shutdown,
        reason::VMCLEAR
        | reason::VMLAUNCH
        | reason::VMPTRLD
        | reason::VMPTRST
        | reason::VMREAD
        | reason::VMRESUME
        | reason::VMWRITE
        | reason::VMXOFF
        | reason::VMXON
        | reason::INVEPT
        | reason::INVVPID
        | reason::VMFUNC
        | reason::GETSEC
        | reason::MONITOR
        | reason::MWAIT => Exit::UndefinedInstruction,
        reason::RDPMC => Exit::Rdpmc,
        _ => Exit::Unhandled(alloc::format!("{} (VMX reason {})", exit.name(), exit.basic())),
    }
}

fn port_io(read: &impl Fn(Field) -> u64) -> PortIo {
    let q = IoQualification::decode(read(vmcs::EXIT_QUALIFICATION));
    let string = q.is_string.then(|| {
        // Instruction information: address size in bits 9:7, segment in 17:15 (OUTS).
        let info = read(vmcs::EXIT_INSTRUCTION_INFO);
        let address_size = match (info >> 7) & 7 {
            0 => 2,
            1 => 4,
            _ => 8,
        };
        let segment = SegmentRegister::from_encoding(((info >> 15) & 7) as u8).unwrap_or(SegmentRegister::Ds);
        StringIo { rep: q.has_rep, address_size, segment }
    });
    PortIo { port: q.port, size: q.size, is_in: q.is_in, string }
}

fn entry_failure(exit: ExitReason, read: &impl Fn(Field) -> u64) -> String {
    let qualification = read(vmcs::EXIT_QUALIFICATION);
    let detail = match (exit.basic(), qualification) {
        (reason::INVALID_GUEST_STATE, 2) => "PDPTE loading failed",
        (reason::INVALID_GUEST_STATE, 3) => "NMI injection blocked",
        (reason::INVALID_GUEST_STATE, 4) => "invalid VMCS link pointer",
        (reason::INVALID_GUEST_STATE, _) => "a guest-state check failed",
        (reason::MSR_LOADING, n) => return alloc::format!("MSR-load entry {n} was refused"),
        (reason::MACHINE_CHECK_DURING_ENTRY, _) => "machine check during VM entry",
        _ => "unknown entry failure",
    };
    alloc::format!("{} ({detail}; RIP {:#x})", exit.name(), read(vmcs::GUEST_RIP))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;
    use std::collections::HashMap;

    const ENTRY_FAILURE: u64 = 1 << 31;

    /// An exit's fields; the ones not given read as 0 (as VMREAD of an
    /// unsupported field does in the kernel).
    struct Fields(HashMap<u32, u64>);

    impl Fields {
        fn new(exit_reason: u64) -> Self {
            Fields(HashMap::from([(vmcs::EXIT_REASON.0, exit_reason)]))
        }
        fn with(mut self, field: Field, value: u64) -> Self {
            self.0.insert(field.0, value);
            self
        }
        fn qualification(self, q: u64) -> Self {
            self.with(vmcs::EXIT_QUALIFICATION, q)
        }
        fn translate(&self) -> Exit {
            translate(|f| self.0.get(&f.0).copied().unwrap_or(0), |_| None)
        }
    }

    fn exit_for(exit_reason: u16) -> Exit {
        Fields::new(exit_reason as u64).translate()
    }

    fn io(q: u64, instruction_info: u64) -> PortIo {
        match Fields::new(reason::IO_INSTRUCTION as u64)
            .qualification(q)
            .with(vmcs::EXIT_INSTRUCTION_INFO, instruction_info)
            .translate()
        {
            Exit::Io(io) => io,
            other => panic!("not port I/O: {other:?}"),
        }
    }

    #[test]
    fn reasons_without_details_map_one_to_one() {
        let table: &[(u16, Exit)] = &[
            (reason::CPUID, Exit::Cpuid),
            (reason::HLT, Exit::Hlt),
            (reason::PAUSE, Exit::Pause),
            (reason::TPR_BELOW_THRESHOLD, Exit::TprBelowThreshold),
            (reason::RDMSR, Exit::Rdmsr),
            (reason::WRMSR, Exit::Wrmsr),
            (reason::XSETBV, Exit::Xsetbv),
            (reason::WBINVD, Exit::CacheFlush),
            (reason::INVD, Exit::CacheFlush),
            (reason::VMCALL, Exit::Hypercall),
            (reason::EXTERNAL_INTERRUPT, Exit::HostInterrupt),
            (reason::INTERRUPT_WINDOW, Exit::InterruptWindow),
            (reason::NMI_WINDOW, Exit::NmiWindow),
            (reason::PREEMPTION_TIMER, Exit::Timer),
            (reason::TRIPLE_FAULT, Exit::Shutdown),
            (reason::RDPMC, Exit::Rdpmc),
        ];
        for (r, exit) in table {
            assert_eq!(&exit_for(*r), exit, "reason {r}");
        }
    }

    #[test]
    fn vmx_smx_and_monitor_instructions_are_undefined() {
        for r in [
            reason::VMCLEAR,
            reason::VMLAUNCH,
            reason::VMPTRLD,
            reason::VMPTRST,
            reason::VMREAD,
            reason::VMRESUME,
            reason::VMWRITE,
            reason::VMXOFF,
            reason::VMXON,
            reason::INVEPT,
            reason::INVVPID,
            reason::VMFUNC,
            reason::GETSEC,
            reason::MONITOR,
            reason::MWAIT,
        ] {
            assert_eq!(exit_for(r), Exit::UndefinedInstruction, "reason {r}");
        }
    }

    #[test]
    fn unknown_reasons_are_unhandled_and_named() {
        assert_eq!(
            exit_for(reason::EPT_MISCONFIGURATION),
            Exit::Unhandled("ept-misconfiguration (VMX reason 49)".into())
        );
        assert_eq!(exit_for(reason::INIT_SIGNAL), Exit::Unhandled("init (VMX reason 3)".into()));
        assert_eq!(exit_for(reason::RDTSC), Exit::Unhandled("rdtsc (VMX reason 16)".into()));
        assert_eq!(exit_for(reason::DR_ACCESS), Exit::Unhandled("dr-access (VMX reason 29)".into()));
        assert_eq!(exit_for(999), Exit::Unhandled("other (VMX reason 999)".into()));
        // Bits above the basic reason (other than entry failure) do not change it.
        assert_eq!(Fields::new((1 << 27) | reason::CPUID as u64).translate(), Exit::Cpuid);
    }

    #[test]
    fn port_io_decodes_direction_size_and_port() {
        // out dx, al to 0x3f8
        assert_eq!(io(0x3f8 << 16, 0), PortIo { port: 0x3f8, size: 1, is_in: false, string: None });
        // in ax, dx from 0x1f0
        assert_eq!(io((0x1f0 << 16) | (1 << 3) | 1, 0), PortIo { port: 0x1f0, size: 2, is_in: true, string: None });
        // in eax, dx from 0xcfc
        assert_eq!(io((0xcfc << 16) | (1 << 3) | 3, 0), PortIo { port: 0xcfc, size: 4, is_in: true, string: None });
        // Instruction information is not looked at for IN/OUT.
        assert_eq!(io(0xffff << 16, u64::MAX).string, None);
    }

    #[test]
    fn string_io_decodes_rep_address_size_and_segment() {
        const STRING: u64 = 1 << 4;
        const REP: u64 = 1 << 5;
        // rep insw, 64-bit addressing, ES.
        let ins = io((0x1f0 << 16) | REP | STRING | (1 << 3) | 1, 2 << 7);
        assert_eq!(
            ins,
            PortIo {
                port: 0x1f0,
                size: 2,
                is_in: true,
                string: Some(StringIo { rep: true, address_size: 8, segment: SegmentRegister::Es }),
            }
        );
        // outsb, 16-bit addressing, DS.
        let outs = io((0x80 << 16) | STRING, 3 << 15);
        assert_eq!(outs.string, Some(StringIo { rep: false, address_size: 2, segment: SegmentRegister::Ds }));
        // rep outsd, 32-bit addressing, FS override.
        let outs = io((0x80 << 16) | REP | STRING | 3, (4 << 15) | (1 << 7));
        assert_eq!((outs.size, outs.is_in), (4, false));
        assert_eq!(outs.string, Some(StringIo { rep: true, address_size: 4, segment: SegmentRegister::Fs }));
        // Every segment encoding; 6 and 7 name none and read as DS.
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
            let outs = io(STRING, (encoding as u64) << 15);
            assert_eq!(outs.string.unwrap().segment, segment, "segment {encoding}");
        }
        // Address sizes 3–7 are reserved; they read as 64-bit.
        for (encoding, size) in [(0, 2), (1, 4), (2, 8), (3, 8), (7, 8)] {
            assert_eq!(io(STRING, encoding << 7).string.unwrap().address_size, size, "address size {encoding}");
        }
    }

    #[test]
    fn ept_violations_are_device_memory_fetch_or_data() {
        let violation = |q| {
            Fields::new(reason::EPT_VIOLATION as u64)
                .qualification(q)
                .with(vmcs::GUEST_PHYSICAL_ADDRESS, 0xfed0_00f0)
                .translate()
        };
        // A write, a read, and a fetch from an unmapped page.
        assert_eq!(violation(0x2 | 0x80), Exit::DeviceMemory { address: 0xfed0_00f0, fetch: false });
        assert_eq!(violation(0x1 | 0x80), Exit::DeviceMemory { address: 0xfed0_00f0, fetch: false });
        assert_eq!(violation(0x4 | 0x80), Exit::DeviceMemory { address: 0xfed0_00f0, fetch: true });
        // A fetch from a mapped, non-executable page.
        assert_eq!(violation(0x4 | 0x8 | 0x10), Exit::DeviceMemory { address: 0xfed0_00f0, fetch: true });
    }

    #[test]
    fn apic_accesses_are_device_memory_in_the_apic_page() {
        let access = |q| Fields::new(reason::APIC_ACCESS as u64).qualification(q).translate();
        assert_eq!(access(0x390), Exit::DeviceMemory { address: LAPIC_BASE + 0x390, fetch: false });
        assert_eq!(access(0x10a0), Exit::DeviceMemory { address: LAPIC_BASE + 0xa0, fetch: false });
        // Unaligned offsets are the emulator's to judge.
        assert_eq!(access(0x1083), Exit::DeviceMemory { address: LAPIC_BASE + 0x83, fetch: false });
        // A fetch, or an access during event delivery: not emulated.
        assert_eq!(
            access(0x2010),
            Exit::Unhandled("local APIC access of type 2 at offset 0x10 (not by an instruction's data access)".into())
        );
        assert_eq!(
            access(0xf080),
            Exit::Unhandled("local APIC access of type 15 at offset 0x80 (not by an instruction's data access)".into())
        );
    }

    #[test]
    fn apic_writes_carry_the_register_and_the_value_written() {
        let page = |offset: u32| Some(0x1000 + offset);
        let write = |q| {
            let fields = Fields::new(reason::APIC_WRITE as u64).qualification(q);
            translate(|f| fields.0.get(&f.0).copied().unwrap_or(0), page)
        };
        assert_eq!(write(0xb0), Exit::ApicWrite { offset: 0xb0, value: 0x10b0 });
        assert_eq!(write(0x300), Exit::ApicWrite { offset: 0x300, value: 0x1300 });
        // The offset is the register's: low bits and bits above the page go.
        assert_eq!(write(0xf_f3f7), Exit::ApicWrite { offset: 0x3f0, value: 0x13f0 });
        // Without a virtual-APIC page the exit cannot be: it is named.
        assert_eq!(
            Fields::new(reason::APIC_WRITE as u64).qualification(0xb0).translate(),
            Exit::Unhandled("APIC-write exit without a virtual-APIC page".into())
        );
    }

    #[test]
    fn virtualized_eois_name_the_vector() {
        let eoi = |q| Fields::new(reason::VIRTUALIZED_EOI as u64).qualification(q).translate();
        assert_eq!(eoi(0x61), Exit::VirtualEoi { vector: 0x61 });
        assert_eq!(eoi(0xff), Exit::VirtualEoi { vector: 0xff });
    }

    #[test]
    fn cr_accesses_decode_every_form() {
        let cr = |q| Fields::new(reason::CR_ACCESS as u64).qualification(q).translate();
        assert_eq!(cr(0x0300), Exit::Cr(CrAccess::MovTo { cr: 0, gpr: 3 }));
        assert_eq!(cr(0x0f04), Exit::Cr(CrAccess::MovTo { cr: 4, gpr: 15 }));
        assert_eq!(cr(0x0018), Exit::Cr(CrAccess::MovFrom { cr: 8, gpr: 0 }));
        assert_eq!(cr(0x0b13), Exit::Cr(CrAccess::MovFrom { cr: 3, gpr: 11 }));
        assert_eq!(cr(0x20), Exit::Cr(CrAccess::Clts));
        assert_eq!(cr(0x0011_0030), Exit::Cr(CrAccess::Lmsw { source: 0x11 }));
        assert_eq!(cr(0xffff_0030), Exit::Cr(CrAccess::Lmsw { source: 0xffff }));
    }

    #[test]
    fn exceptions_carry_their_error_code_and_nmis_are_the_hosts() {
        let exception = |info: u64, error_code: u64| {
            Fields::new(reason::EXCEPTION_OR_NMI as u64)
                .with(vmcs::EXIT_INTERRUPTION_INFO, info)
                .with(vmcs::EXIT_INTERRUPTION_ERROR_CODE, error_code)
                .translate()
        };
        // #DB: no error code, whatever the field holds.
        assert_eq!(exception(0x8000_0301, 0x55), Exit::Exception { vector: 1, error_code: None });
        // #AC: its error code.
        assert_eq!(exception(0x8000_0b11, 0), Exit::Exception { vector: 17, error_code: Some(0) });
        // #GP with a selector error code; only 32 bits of the field count.
        assert_eq!(exception(0x8000_0b0d, 0x1_0000_0018), Exit::Exception { vector: 13, error_code: Some(0x18) });
        // A software exception (INT3, ICEBP's privileged kind) is still an exception.
        assert_eq!(exception(0x8000_0603, 0), Exit::Exception { vector: 3, error_code: None });
        assert_eq!(exception(0x8000_0501, 0), Exit::Exception { vector: 1, error_code: None });
        // An NMI that arrived while the guest ran.
        assert_eq!(exception(0x8000_0202, 0), Exit::HostNmi);
    }

    #[test]
    fn entry_failures_say_what_failed_and_where() {
        let failure = |r: u16, q: u64| {
            Fields::new(ENTRY_FAILURE | r as u64)
                .qualification(q)
                .with(vmcs::GUEST_RIP, 0xffff_8000_0010_2000)
                .translate()
        };
        let failed = |s: &str| Exit::EntryFailed(s.into());
        assert_eq!(
            failure(reason::INVALID_GUEST_STATE, 0),
            failed("invalid-guest-state (a guest-state check failed; RIP 0xffff800000102000)")
        );
        assert_eq!(
            failure(reason::INVALID_GUEST_STATE, 2),
            failed("invalid-guest-state (PDPTE loading failed; RIP 0xffff800000102000)")
        );
        assert_eq!(
            failure(reason::INVALID_GUEST_STATE, 3),
            failed("invalid-guest-state (NMI injection blocked; RIP 0xffff800000102000)")
        );
        assert_eq!(
            failure(reason::INVALID_GUEST_STATE, 4),
            failed("invalid-guest-state (invalid VMCS link pointer; RIP 0xffff800000102000)")
        );
        assert_eq!(failure(reason::MSR_LOADING, 3), failed("MSR-load entry 3 was refused"));
        assert_eq!(
            failure(reason::MACHINE_CHECK_DURING_ENTRY, 0),
            failed("machine-check-during-entry (machine check during VM entry; RIP 0xffff800000102000)")
        );
        // Any other reason with the failure bit: still a failed entry, never the exit it names.
        assert_eq!(failure(reason::CPUID, 0), failed("cpuid (unknown entry failure; RIP 0xffff800000102000)"));
    }

    #[test]
    fn only_the_fields_an_exit_needs_are_read() {
        let reads = RefCell::new(Vec::new());
        let reader = |fields: Fields| {
            reads.borrow_mut().clear();
            translate(
                |f| {
                    reads.borrow_mut().push(f.0);
                    fields.0.get(&f.0).copied().unwrap_or(0)
                },
                |_| Some(0),
            );
            reads.borrow().clone()
        };
        assert_eq!(reader(Fields::new(reason::CPUID as u64)), [vmcs::EXIT_REASON.0]);
        // OUT: no instruction information.
        assert_eq!(
            reader(Fields::new(reason::IO_INSTRUCTION as u64)),
            [vmcs::EXIT_REASON.0, vmcs::EXIT_QUALIFICATION.0]
        );
        // #DB: no error code.
        let db = Fields::new(reason::EXCEPTION_OR_NMI as u64).with(vmcs::EXIT_INTERRUPTION_INFO, 0x8000_0301);
        assert_eq!(reader(db), [vmcs::EXIT_REASON.0, vmcs::EXIT_INTERRUPTION_INFO.0]);
    }
}
