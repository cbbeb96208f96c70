//! A VM as its vCPUs share it across cores: the VM itself (its chipset
//! takes the locks its devices need, see `devices::chipset`), the decision
//! to stop, and how a vCPU on one core makes another vCPU's core exit so it
//! sees an interrupt or a start-up IPI meant for it.
//!
//! Its vCPUs run on whichever cores the scheduler (`sched.rs`) gives them.

use super::vm::{Stop, Vm};
use alloc::vec::Vec;
use core::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};

const NOT_PLACED: u32 = u32::MAX;

struct Slot {
    /// APIC id of the host core running this vCPU, or NOT_PLACED.
    host_apic_id: AtomicU32,
    /// A wake-up IPI went to this vCPU's core since it last looked for events.
    kicked: AtomicBool,
    /// Its number in the scheduler, once registered (`NOT_PLACED` before).
    sched_id: AtomicU32,
}

/// VM ids are never reused (a new VM may sit where an old one was freed).
static NEXT_VM_ID: AtomicU64 = AtomicU64::new(1);

pub struct SharedVm {
    /// Unique for the host's life: cores compare it to know they changed VM.
    pub id: u64,
    vm: Vm,
    stop: spin::Once<Stop>,
    stopping: AtomicBool,
    /// An operator paused it: its vCPUs leave their cores and stay off them.
    paused: AtomicBool,
    /// Host TSC when the current pause began.
    paused_at: AtomicU64,
    /// Host TSC ticks it spent paused, all pauses together: its clocks (its
    /// devices' and its vCPUs' TSCs) run that much behind the host's, as a
    /// paused machine's would stop.
    time_base: AtomicU64,
    /// Host TSC at which the VM's time limit runs out, the same for every
    /// vCPU; `u64::MAX` until its first vCPU first runs (`start_clock`), so
    /// a VM that waits for a CPU behind others is not charged for the wait.
    deadline: AtomicU64,
    pub time_limit_ms: u64,
    slots: Vec<Slot>,
}

impl SharedVm {
    pub fn new(vm: Vm, vcpus: usize, time_limit_ms: u64) -> SharedVm {
        SharedVm {
            id: NEXT_VM_ID.fetch_add(1, Ordering::Relaxed),
            vm,
            stop: spin::Once::new(),
            stopping: AtomicBool::new(false),
            paused: AtomicBool::new(false),
            paused_at: AtomicU64::new(0),
            time_base: AtomicU64::new(0),
            deadline: AtomicU64::new(u64::MAX),
            time_limit_ms,
            slots: (0..vcpus.max(1))
                .map(|_| Slot {
                    host_apic_id: AtomicU32::new(NOT_PLACED),
                    kicked: AtomicBool::new(false),
                    sched_id: AtomicU32::new(NOT_PLACED),
                })
                .collect(),
        }
    }

    /// Host TSC at which the VM's time limit runs out.
    pub fn deadline(&self) -> u64 {
        self.deadline.load(Ordering::Relaxed)
    }

    /// Its time limit starts: the first time one of its vCPUs runs.
    pub fn start_clock(&self) {
        if self.deadline() == u64::MAX {
            let tsc_per_ms = (crate::time::tsc_hz() / 1000).max(1);
            let end = crate::time::rdtsc().saturating_add(self.time_limit_ms.saturating_mul(tsc_per_ms));
            let _ = self.deadline.compare_exchange(u64::MAX, end, Ordering::AcqRel, Ordering::Relaxed);
        }
    }

    pub fn vm(&self) -> &Vm {
        &self.vm
    }

    /// Stops the VM for `why` unless a vCPU already stopped it; every vCPU
    /// leaves its run loop at its next exit, which the kick brings at once.
    pub fn stop(&self, why: Stop) {
        self.stop.call_once(|| why);
        self.stopping.store(true, Ordering::Release);
        self.kick_all();
    }

    pub fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::Acquire)
    }

    /// Its vCPUs leave their cores at their next exit (the kick brings it at
    /// once) and stay off them until `resume`.
    pub fn pause(&self) {
        if self.paused.load(Ordering::Acquire) {
            return;
        }
        self.paused_at.store(crate::time::rdtsc(), Ordering::Release);
        self.paused.store(true, Ordering::Release);
        self.kick_all();
    }

    /// Every vCPU may run again: each is woken, and one that waited for
    /// something before the pause looks for it and waits again. Its clocks
    /// go on from where they stopped, and the pause does not count against
    /// its time limit.
    pub fn resume(&self) {
        if !self.paused.load(Ordering::Acquire) {
            return;
        }
        let paused_for = crate::time::rdtsc().saturating_sub(self.paused_at.load(Ordering::Acquire));
        self.time_base.fetch_add(paused_for, Ordering::AcqRel);
        let deadline = self.deadline();
        if deadline != u64::MAX {
            self.deadline.store(deadline.saturating_add(paused_for), Ordering::Release);
        }
        self.paused.store(false, Ordering::Release);
        for slot in &self.slots {
            let id = slot.sched_id.load(Ordering::Acquire);
            if id != NOT_PLACED {
                super::sched::wake(basalt_sched::VcpuId(id));
            }
        }
    }

    /// Host TSC ticks its clocks run behind the host's (the time it spent paused).
    pub fn time_base(&self) -> u64 {
        self.time_base.load(Ordering::Acquire)
    }

    pub fn is_paused(&self) -> bool {
        self.paused.load(Ordering::Acquire)
    }

    /// Every vCPU looks for events now (on its core, or woken in the scheduler).
    pub fn kick_all(&self) {
        for index in 0..self.slots.len() {
            self.kick(index);
        }
    }

    /// The scheduler's numbers of its registered vCPUs.
    pub fn sched_ids(&self) -> impl Iterator<Item = basalt_sched::VcpuId> + '_ {
        self.slots
            .iter()
            .map(|slot| slot.sched_id.load(Ordering::Acquire))
            .filter(|&id| id != NOT_PLACED)
            .map(basalt_sched::VcpuId)
    }

    /// Why the VM stopped: the first reason any vCPU gave.
    pub fn stop_reason(&self) -> Option<Stop> {
        self.stop.get().cloned()
    }

    /// Records that the calling core runs vCPU `index` (or no longer does).
    pub fn place(&self, index: usize, here: bool) {
        let apic_id = if here { crate::apic::id() } else { NOT_PLACED };
        self.slots[index].host_apic_id.store(apic_id, Ordering::Release);
    }

    /// Called by vCPU `index` before it looks for events: a kick from now on
    /// must reach it again.
    pub fn rearm_kick(&self, index: usize) {
        self.slots[index].kicked.store(false, Ordering::Release);
    }

    /// After vCPU `me` changed the platform: every other vCPU something arrived
    /// for gets its core interrupted, so it exits and takes it.
    pub fn wake_others(&self, me: usize) {
        if self.slots.len() == 1 {
            return;
        }
        for index in 0..self.slots.len() {
            if index != me && self.vm.chipset.take_wakeup(index) {
                self.kick(index);
            }
        }
    }

    /// Records the vCPU's number in the scheduler.
    pub fn set_sched_id(&self, index: usize, id: basalt_sched::VcpuId) {
        self.slots[index].sched_id.store(id.0, Ordering::Release);
    }

    /// A vCPU on a core gets one IPI until it rearms: it exits (external
    /// interrupts exit). One off its core is woken in the scheduler, every
    /// time (it looks for what woke it when it runs, and blocks again if
    /// nothing did). A vCPU leaving its core as this looks is covered by
    /// its own look for events after it blocked (`sched::block`'s caller).
    fn kick(&self, index: usize) {
        let slot = &self.slots[index];
        let apic_id = slot.host_apic_id.load(Ordering::Acquire);
        if apic_id == NOT_PLACED {
            let id = slot.sched_id.load(Ordering::Acquire);
            if id != NOT_PLACED {
                super::sched::wake(basalt_sched::VcpuId(id));
            }
            return;
        }
        if slot.kicked.swap(true, Ordering::AcqRel) {
            return;
        }
        if apic_id != crate::apic::id() {
            crate::apic::send_fixed(apic_id, crate::trap::VECTOR_PING);
        }
    }
}
