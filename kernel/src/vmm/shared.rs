//! A VM as its vCPUs share it across cores: the VM itself (its chipset
//! takes the locks its devices need, see `devices::chipset`), the decision
//! to stop, and how a vCPU on one core makes another vCPU's core exit so it
//! sees an interrupt or a start-up IPI meant for it.
//!
//! Each vCPU runs on its own core (until the scheduler exists).

use super::counters::ExitCounters;
use super::vm::{Stop, Vm};
use alloc::vec::Vec;
use core::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, Ordering};
use spin::Mutex;

const NOT_PLACED: u32 = u32::MAX;

/// Where an application-processor vCPU's job is.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[repr(u8)]
enum ApJob {
    Queued = 0,
    Running = 1,
    Done = 2,
}

struct Slot {
    /// APIC id of the host core running this vCPU, or NOT_PLACED.
    host_apic_id: AtomicU32,
    /// A wake-up IPI went to this vCPU's core since it last looked for events.
    kicked: AtomicBool,
    job: AtomicU8,
}

/// VM ids are never reused (a new VM may sit where an old one was freed).
static NEXT_VM_ID: AtomicU64 = AtomicU64::new(1);

pub struct SharedVm {
    /// Unique for the host's life: cores compare it to know they changed VM.
    pub id: u64,
    vm: Vm,
    stop: spin::Once<Stop>,
    stopping: AtomicBool,
    /// Host TSC at which the VM's time limit runs out, the same for every vCPU.
    pub deadline: u64,
    pub time_limit_ms: u64,
    slots: Vec<Slot>,
    /// Exits of the application processors, added as each one finishes.
    ap_counters: Mutex<ExitCounters>,
}

impl SharedVm {
    pub fn new(vm: Vm, vcpus: usize, time_limit_ms: u64) -> SharedVm {
        let tsc_per_ms = (crate::time::tsc_hz() / 1000).max(1);
        SharedVm {
            id: NEXT_VM_ID.fetch_add(1, Ordering::Relaxed),
            vm,
            stop: spin::Once::new(),
            stopping: AtomicBool::new(false),
            deadline: crate::time::rdtsc().saturating_add(time_limit_ms.saturating_mul(tsc_per_ms)),
            time_limit_ms,
            slots: (0..vcpus.max(1))
                .map(|_| Slot {
                    host_apic_id: AtomicU32::new(NOT_PLACED),
                    kicked: AtomicBool::new(false),
                    job: AtomicU8::new(ApJob::Queued as u8),
                })
                .collect(),
            ap_counters: Mutex::new(ExitCounters::new()),
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
        for index in 0..self.slots.len() {
            self.kick(index);
        }
    }

    pub fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::Acquire)
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

    /// One IPI per vCPU until it rearms: it exits (external interrupts exit) or,
    /// waiting for a start-up IPI in the VMM, wakes from HLT.
    fn kick(&self, index: usize) {
        let slot = &self.slots[index];
        if slot.kicked.swap(true, Ordering::AcqRel) {
            return;
        }
        let apic_id = slot.host_apic_id.load(Ordering::Acquire);
        if apic_id != NOT_PLACED && apic_id != crate::apic::id() {
            crate::apic::send_fixed(apic_id, crate::trap::VECTOR_PING);
        }
    }

    /// An AP's job claims its vCPU; false when the VM stopped before it started.
    pub fn claim_ap(&self, index: usize) -> bool {
        self.slots[index]
            .job
            .compare_exchange(ApJob::Queued as u8, ApJob::Running as u8, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    /// An AP's job is over; its exits join the VM's report.
    pub fn finish_ap(&self, index: usize, counters: &ExitCounters) {
        self.ap_counters.lock().add(counters);
        self.place(index, false);
        self.slots[index].job.store(ApJob::Done as u8, Ordering::Release);
    }

    /// After `stop`: waits until every AP job that started has finished, and
    /// cancels those that did not start. Returns the APs' exits.
    pub fn wait_for_aps(&self) -> ExitCounters {
        for slot in &self.slots[1..] {
            let _ =
                slot.job.compare_exchange(ApJob::Queued as u8, ApJob::Done as u8, Ordering::AcqRel, Ordering::Acquire);
            while slot.job.load(Ordering::Acquire) != ApJob::Done as u8 {
                core::hint::spin_loop();
            }
        }
        core::mem::replace(&mut *self.ap_counters.lock(), ExitCounters::new())
    }
}
