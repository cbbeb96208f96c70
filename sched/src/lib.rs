//! The vCPU scheduling policy: which vCPU a core runs next and until when.
//! Pure: no clock, no hardware, no locks. The kernel owns the mechanism (run
//! queues' locking, switching VMCS/VMCB, IPIs, timers) and feeds the policy
//! events with the time in nanoseconds; the policy answers with decisions.
//! The same code runs in `cargo test` and in the simulator under
//! `tests/sim`, which drives thousands of vCPUs on hundreds of cores.
//!
//! [`Policy`] is the interface a second policy would implement; [`Eevdf`] is
//! the one there is (see `eevdf.rs` and docs/ARCHITECTURE.md for why).
#![cfg_attr(not(test), no_std)]

extern crate alloc;

mod cpuset;
mod eevdf;

pub use cpuset::CpuSet;
pub use eevdf::{Eevdf, Tunables};

/// A vCPU, as the kernel numbers them: small and dense (the lowest free
/// number is reused), because the policy indexes a table with it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct VcpuId(pub u32);

/// A physical core, numbered `0..cores`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct CoreId(pub u32);

/// The weight a vCPU gets unless its VM says otherwise (Xen's default too).
pub const DEFAULT_WEIGHT: u32 = 256;
/// Weights above this would let one vCPU's share round the others' to zero.
pub const MAX_WEIGHT: u32 = 65_535;

/// What a VM's configuration says about each of its vCPUs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Params {
    /// Share of a contended core, proportional to the other runnable vCPUs' weights.
    pub weight: u32,
    /// At most this percent (1 to 100) of one core, enforced per cap period.
    pub cap: Option<u8>,
    /// The cores this vCPU may run on.
    pub cpus: CpuSet,
    /// The vCPU owns one of `cpus` alone: no time-sharing, no migration.
    pub dedicated: bool,
}

impl Params {
    /// Default weight, no cap, any of `cores` cores, shared.
    pub fn new(cores: usize) -> Self {
        Params { weight: DEFAULT_WEIGHT, cap: None, cpus: CpuSet::all(cores), dedicated: false }
    }
}

/// The states the issue lists, plus `Throttled` (runnable, but its cap is used up until the next period).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VcpuState {
    Running,
    Runnable,
    Throttled,
    Blocked,
    WaitingForSipi,
    Paused,
    Stopped,
}

/// Why a vCPU stops being runnable; the policy treats them alike, the report tells them apart.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NotRunnable {
    Blocked,
    WaitingForSipi,
    Paused,
    Stopped,
}

impl From<NotRunnable> for VcpuState {
    fn from(why: NotRunnable) -> Self {
        match why {
            NotRunnable::Blocked => VcpuState::Blocked,
            NotRunnable::WaitingForSipi => VcpuState::WaitingForSipi,
            NotRunnable::Paused => VcpuState::Paused,
            NotRunnable::Stopped => VcpuState::Stopped,
        }
    }
}

/// Why the policy would not take a vCPU or a change of its parameters.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refused {
    UnknownVcpu(VcpuId),
    AlreadyAdded(VcpuId),
    /// `weight` must be 1 to [`MAX_WEIGHT`].
    BadWeight(u32),
    /// `cap` must be 1 to 100 percent.
    BadCap(u8),
    /// None of `cpus` exists or is free of dedicated vCPUs.
    NoUsableCore,
    /// A dedicated vCPU found every core of its `cpus` taken; `core` is the
    /// last one tried, with its dedicated owner or its count of runnable vCPUs.
    CoreTaken {
        core: CoreId,
        dedicated_to: Option<VcpuId>,
        runnable: u32,
    },
    /// Dedicating `core` would leave `vcpu` with no core it may run on.
    WouldStrand {
        core: CoreId,
        vcpu: VcpuId,
    },
    /// `dedicated` changes by removing the vCPU and adding it again.
    DedicatedChange,
}

/// Interrupt this core now (an IPI): it should call `pick`, because a vCPU
/// arrived that may preempt its current one, or it is idle and has work.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Kick {
    pub core: CoreId,
}

/// A queued vCPU moved between run queues; the kernel VMCLEARs it on `from`
/// before `to` loads it (it was not running, so nothing is interrupted).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Migration {
    pub vcpu: VcpuId,
    pub from: CoreId,
    pub to: CoreId,
}

/// What a core does next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Decision {
    /// The vCPU to run; `None`: halt with interrupts on.
    pub run: Option<VcpuId>,
    /// When to call `pick` again on this core (absolute ns: the VMX-preemption
    /// timer or a one-shot APIC timer). `None`: not until an interrupt or a
    /// kick; an idle core, or a vCPU alone on its core, gets no tick.
    pub until: Option<u64>,
    /// Another core to interrupt so that it pulls work from this one.
    pub kick: Option<Kick>,
}

/// Per-vCPU figures for the VM's report and the bench, all in nanoseconds but the counts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Accounting {
    pub run_ns: u64,
    /// Runnable but waiting for a core: the guest's steal time.
    pub wait_ns: u64,
    pub blocked_ns: u64,
    /// Runnable but held back by its own cap (not steal: the VM asked for it).
    pub throttled_ns: u64,
    /// Times it was switched onto a core.
    pub slices: u64,
    pub migrations: u64,
    pub wakeups: u64,
    /// From `wake` to running, summed over wake-ups, and the worst of them.
    pub wake_latency_total_ns: u64,
    pub wake_latency_max_ns: u64,
}

/// A scheduling policy. Every call carries the current time; the policy has
/// no clock of its own. The kernel's contract:
/// - after `block` of the running vCPU, after a `Kick`, and when `until`
///   passes, the core calls `balance` then `pick`;
/// - `wake` is called from any core when an interrupt becomes pending for a
///   vCPU that is not runnable; its `Kick` is sent as an IPI.
pub trait Policy {
    /// Adds a vCPU, not runnable (`Stopped`) until `wake`. Returns its first core.
    fn add(&mut self, vcpu: VcpuId, params: Params, now: u64) -> Result<CoreId, Refused>;
    /// Takes a vCPU out for good (its VM stopped); its core should `pick` if it was running.
    fn remove(&mut self, vcpu: VcpuId, now: u64) -> Result<Accounting, Refused>;
    fn set_params(&mut self, vcpu: VcpuId, params: Params, now: u64) -> Result<Option<Kick>, Refused>;
    /// The vCPU became runnable.
    fn wake(&mut self, vcpu: VcpuId, now: u64) -> Option<Kick>;
    /// The vCPU stops being runnable (HLT with nothing pending, INIT, pause, stop).
    fn block(&mut self, vcpu: VcpuId, why: NotRunnable, now: u64);
    /// The running vCPU offers its core (a PAUSE-loop exit): it goes behind the others.
    fn yield_now(&mut self, core: CoreId, now: u64);
    /// What `core` runs next.
    fn pick(&mut self, core: CoreId, now: u64) -> Decision;
    /// Pulls one runnable vCPU onto `core` from the busiest core it may take
    /// one from; does nothing more often than once per balance interval.
    fn balance(&mut self, core: CoreId, now: u64) -> Option<Migration>;
    fn state(&self, vcpu: VcpuId) -> Option<VcpuState>;
    /// The core the vCPU is on or last ran on.
    fn core_of(&self, vcpu: VcpuId) -> Option<CoreId>;
    fn accounting(&self, vcpu: VcpuId) -> Option<Accounting>;
}
