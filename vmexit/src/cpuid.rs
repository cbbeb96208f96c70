//! CPUID: the host's answers, edited into a virtual CPU: the hypervisor bit set,
//! the host's virtualisation extensions (VMX, SVM) hidden, a Basalt signature
//! at 0x40000000, the TSC frequency in leaves 0x15/0x16 (and 0x40000010) so
//! guests need not calibrate against timers, and a topology of one thread per
//! package whichever vendor's leaves describe it.
//!
//! The vendor (leaf 0) and the brand, family and model are the host's, never
//! another's: instructions whose behaviour differs between vendors run on the
//! guest's own CPU, so they behave as the vendor the guest was told says. For
//! one, SYSCALL in compatibility mode is #UD on Intel and works on AMD; a
//! guest on an Intel host reads "GenuineIntel" and gets the #UD, one on an
//! AMD host reads "AuthenticAMD" and gets the system call, with nothing
//! emulated. (Faking a vendor would need every such difference emulated.)

use crate::{Host, Machine, Outcome, Vcpu};
use devices::lapic::Mode;
use devices::Chipset;

/// "BasaltHVisor" as the three signature registers.
pub const SIGNATURE: [u32; 3] =
    [u32::from_le_bytes(*b"Basa"), u32::from_le_bytes(*b"ltHV"), u32::from_le_bytes(*b"isor")];
const HYPERVISOR_MAX_LEAF: u32 = 0x4000_0010;
/// Leaf 0x15/0x16 are synthesised, so the maximum basic leaf is at least 0x16.
const MIN_MAX_BASIC_LEAF: u32 = 0x16;

/// CPUID.1:ECX.x2APIC. The local APIC model has x2APIC mode (its MSRs, and
/// IA32_APIC_BASE's transitions), whatever the host has, so it is offered.
/// Linux sees it and still runs its APIC in xAPIC mode: without interrupt
/// remapping it takes x2APIC only from a hypervisor it knows to allow that
/// (`x86_init.hyper.x2apic_available`), and logs "x2apic: IRQ remapping
/// doesn't support X2APIC mode" instead. Guests that enable it anyway (test
/// kernels, other OSes) get x2APIC mode as the SDM describes it.
pub const X2APIC_OFFERED: bool = true;

/// MAXPHYADDR as the guest sees it (CPUID 8000_0008h EAX[7:0], the host's),
/// or 36 where that leaf is missing, as the SDM says to assume.
pub fn guest_phys_bits<H: Host + ?Sized>(host: &H) -> u32 {
    let [max_extended, ..] = host.cpuid(0x8000_0000, 0);
    let bits = if max_extended >= 0x8000_0008 { host.cpuid(0x8000_0008, 0)[0] & 0xff } else { 0 };
    if bits == 0 {
        36
    } else {
        bits
    }
}

pub fn handle(vcpu: &mut dyn Vcpu, vm: &mut Machine, host: &dyn Host) -> Outcome {
    let leaf = vcpu.gpr(RAX) as u32;
    let apic_disabled = leaf == 1 && vm.chipset.apic_mode(vcpu.index()) == Mode::Disabled;
    answer(vcpu, leaf, apic_disabled, host);
    crate::debug::skip(vcpu);
    Outcome::Resume
}

/// The run loop's fast path for a CPUID exit, before `dispatch`: with
/// RFLAGS.TF clear the instruction is done here as `handle` does it. Of the
/// VM it needs only the vCPU's APIC mode, for leaf 1: without `chipset`
/// (the VM not locked) that leaf is declined. Returns whether it was done;
/// if not, nothing changed and the exit goes to `dispatch` (TF owes a #DB,
/// which the long way delivers).
pub fn fast_cpuid(vcpu: &mut dyn Vcpu, chipset: Option<&Chipset>, host: &dyn Host) -> bool {
    let rflags = vcpu.rflags();
    if rflags & crate::vcpu::RFLAGS_TF != 0 || vcpu.instruction_length_unknown() {
        return false;
    }
    let leaf = vcpu.gpr(RAX) as u32;
    let apic_disabled = match (leaf, chipset) {
        (1, None) => return false,
        (1, Some(chipset)) => chipset.apic_mode(vcpu.index()) == Mode::Disabled,
        _ => false,
    };
    answer(vcpu, leaf, apic_disabled, host);
    crate::debug::skip_untraced(vcpu, rflags);
    true
}

/// The guest's registers get the virtual CPU's answer for `leaf` (with
/// the APIC's presence from `apic_disabled` for leaf 1).
fn answer(vcpu: &mut dyn Vcpu, leaf: u32, apic_disabled: bool, host: &dyn Host) {
    let subleaf = vcpu.gpr(RCX) as u32;
    // Only leaves 1, 0xb and 0x1f name the vCPU, and only leaves 1 and 7
    // have bits that follow CR4 (see `virtual_cpuid`).
    let index = if matches!(leaf, 1 | 0xb | 0x1f) { u32::try_from(vcpu.index()).unwrap_or(u32::MAX) } else { 0 };
    let cr4 = if matches!(leaf, 1 | 7) { vcpu.cr4() } else { 0 };
    let mut regs = virtual_cpuid(host, leaf, subleaf, index, cr4);
    // CPUID.1:EDX.APIC says whether this vCPU's APIC is on (IA32_APIC_BASE.EN),
    // as it does on a CPU.
    if leaf == 1 && apic_disabled {
        regs[3] &= !EDX_APIC;
    }
    vcpu.set_abcd(regs.map(u64::from));
}

/// CPUID.1:EDX.APIC: a local APIC is present and enabled.
const EDX_APIC: u32 = 1 << 9;

const RAX: u8 = 0;
const RCX: u8 = 1;

/// The CR4 bits guests may set: those whose CPUID feature they see (MOV to
/// CR4 with any other bit is #GP, see arch::control).
/// The same for every guest on a host, so hosts may work it out once (see
/// `Host::guest_cr4_allowed`).
pub fn guest_cr4_allowed<H: Host + ?Sized>(host: &H) -> u64 {
    let [_, _, leaf1_ecx, leaf1_edx] = virtual_cpuid(host, 1, 0, 0, 0);
    let [_, leaf7_ebx, leaf7_ecx, _] = virtual_cpuid(host, 7, 0, 0, 0);
    arch::control::cr4_allowed(arch::control::Cr4Features { leaf1_ecx, leaf1_edx, leaf7_ebx, leaf7_ecx })
}

/// CPUID as the guest sees it. Bits that mirror control registers (OSXSAVE,
/// OSPKE) follow the guest's CR4, not the host's.
pub fn virtual_cpuid<H: Host + ?Sized>(host: &H, leaf: u32, subleaf: u32, vcpu: u32, guest_cr4: u64) -> [u32; 4] {
    const CR4_OSXSAVE: u64 = 1 << 18;
    const CR4_PKE: u64 = 1 << 22;
    match leaf {
        0x4000_0000 => return [HYPERVISOR_MAX_LEAF, SIGNATURE[0], SIGNATURE[1], SIGNATURE[2]],
        // TSC and local APIC timer frequency in kHz (the common hypervisor leaf);
        // the virtual APIC timer counts at the TSC rate.
        0x4000_0010 => {
            let khz = (host.tsc_hz() / 1000) as u32;
            return [khz, khz, 0, 0];
        }
        0x4000_0001..=0x4000_ffff => return [0; 4],
        // TSC = crystal * EBX / EAX: report the TSC itself as a 1:1 "crystal",
        // or, for a TSC above 4.29 GHz (ECX has 32 bits), a crystal that
        // fraction of it (off by less than EBX Hz).
        0x15 => {
            let tsc_hz = host.tsc_hz();
            let ratio = tsc_hz.div_ceil(u32::MAX as u64).max(1);
            return [1, ratio as u32, (tsc_hz / ratio) as u32, 0];
        }
        0x16 => {
            let mhz = (host.tsc_hz() / 1_000_000) as u32;
            return [mhz, mhz, 100, 0];
        }
        _ => {}
    }
    let xstate = host.guest_xstate();
    let [mut a, mut b, mut c, mut d] =
        arch::xstate::hide_features_without_state(leaf, subleaf, host.cpuid(leaf, subleaf), xstate.allowed);
    match leaf {
        0 => a = a.max(MIN_MAX_BASIC_LEAF),
        1 => {
            const ECX_VMX: u32 = 1 << 5;
            const ECX_MONITOR: u32 = 1 << 3;
            // GETSEC exits unconditionally and gets #UD (see exits/mod.rs).
            const ECX_SMX: u32 = 1 << 6;
            const ECX_X2APIC: u32 = 1 << 21;
            const ECX_TSC_DEADLINE: u32 = 1 << 24;
            const ECX_HYPERVISOR: u32 = 1 << 31;
            const ECX_OSXSAVE: u32 = 1 << 27;
            // Debug store, thermal and power management: MSR-backed, not emulated.
            const ECX_DTES64_DSCPL_EST_TM2_PDCM: u32 = (1 << 2) | (1 << 4) | (1 << 7) | (1 << 8) | (1 << 15);
            c &= !(ECX_VMX | ECX_MONITOR | ECX_SMX | ECX_X2APIC | ECX_OSXSAVE | ECX_DTES64_DSCPL_EST_TM2_PDCM);
            // The virtual local APIC has the TSC-deadline timer whatever the
            // host has, and x2APIC mode (see X2APIC_OFFERED); it is there
            // (`handle` clears the bit for a vCPU that disabled its APIC).
            c |= ECX_HYPERVISOR | ECX_TSC_DEADLINE;
            if X2APIC_OFFERED {
                c |= ECX_X2APIC;
            }
            d |= EDX_APIC;
            if guest_cr4 & CR4_OSXSAVE != 0 {
                c |= ECX_OSXSAVE;
            }
            // No machine-check architecture: there are no banks to report in
            // (MCG_CAP and MCG_STATUS read 0 for kernels that look anyway).
            const EDX_MCE: u32 = 1 << 7;
            const EDX_MCA: u32 = 1 << 14;
            const EDX_DS_ACPI_TM_PBE: u32 = (1 << 21) | (1 << 22) | (1 << 29) | (1 << 31);
            d &= !(EDX_MCE | EDX_MCA | EDX_DS_ACPI_TM_PBE);
            // Initial APIC id = vCPU index; one logical processor per package.
            b = (b & 0x0000_ffff) | (vcpu << 24) | (1 << 16);
        }
        7 if subleaf == 0 => {
            // IA32_TSC_ADJUST is emulated whatever the host has (msr.rs): with
            // an invariant TSC it tells Linux the TSC needs no watchdog.
            b |= 1 << 1;
            // No IA32_ARCH_CAPABILITIES (not emulated).
            d &= !(1 << 29);
            // Protection keys are hidden (PKRU is not a guest XSAVE component,
            // see arch::xstate::GUEST_COMPONENTS); OSPKE would follow CR4.
            const ECX_PKU: u32 = 1 << 3;
            const ECX_OSPKE: u32 = 1 << 4;
            c &= !(ECX_PKU | ECX_OSPKE);
            if guest_cr4 & CR4_PKE != 0 {
                c |= ECX_OSPKE;
            }
        }
        // Only the components guests may enable, in the standard format (Bochs
        // also misreports the compacted size).
        0xd => [a, b, c, d] = arch::xstate::cpuid_leaf_0xd(subleaf, [a, b, c, d], xstate.allowed, xstate.area_size),
        // No thermal or power management but an always-running APIC timer (ARAT:
        // the virtual timer does not stop in deep C-states; there are none).
        6 => (a, b, c, d) = (1 << 2, 0, 0, 0),
        // No performance counters.
        0xa => (a, b, c, d) = (0, 0, 0, 0),
        // Caches: each shared by one logical processor, one core per package
        // (matching leaf 1), whatever the host's topology.
        4 => a &= 0x3fff,
        // Topology: one thread in one core; x2APIC id = vCPU index.
        0xb | 0x1f => {
            (a, b, c) = (0, if subleaf == 0 { 1 } else { 0 }, subleaf & 0xff);
            d = vcpu;
        }
        // Invariant TSC: the guest's TSC is the host's, constant and never stopped.
        0x8000_0007 => d |= 1 << 8,
        0x8000_0001 => {
            // AMD: no SVM; no multi-core or topology-extension leaves (one
            // thread per package, as leaf 1 says).
            const ECX_CMP_LEGACY: u32 = 1 << 1;
            const ECX_SVM: u32 = 1 << 2;
            const ECX_TOPOLOGY_EXTENSIONS: u32 = 1 << 22;
            c &= !(ECX_CMP_LEGACY | ECX_SVM | ECX_TOPOLOGY_EXTENSIONS);
        }
        // AMD: one core per package (NC = 0, APIC-id size left to default).
        0x8000_0008 => c &= !0xf0ff,
        // AMD's SVM features: none for guests.
        0x8000_000a => (a, b, c, d) = (0, 0, 0, 0),
        _ => {}
    }
    [a, b, c, d]
}
