//! Per-CPU data, reached through the GS base register. The BSP's block is static
//! (it is needed before the heap exists); each AP's comes from the heap.

use crate::gdt::CpuTables;
use alloc::boxed::Box;
use core::sync::atomic::{AtomicBool, AtomicU32, AtomicU64};
use x86_64::registers::model_specific::GsBase;
use x86_64::VirtAddr;

pub const MAX_CPUS: usize = 64;

pub struct PerCpu {
    /// Dense index: 0 is the BSP, APs count up in start order.
    pub index: u32,
    pub apic_id: u32,
    pub tables: CpuTables,
    /// Local APIC timer interrupts taken.
    pub timer_ticks: AtomicU64,
    /// Test IPIs taken.
    pub ipis_received: AtomicU32,
    /// VT-x or SVM is on, so it can run vCPUs.
    pub runs_guests: AtomicBool,
    /// Id of the VM whose vCPU ran here last (0: none yet), so a change of VM
    /// on this core gets its isolation barrier (vmm::switch).
    pub last_vm: AtomicU64,
}

static BSP: spin::Once<&'static PerCpu> = spin::Once::new();
/// Every CPU's block by index, filled as CPUs come up.
static CPUS: [spin::Once<&'static PerCpu>; MAX_CPUS] = [const { spin::Once::new() }; MAX_CPUS];

impl PerCpu {
    fn new(index: u32, apic_id: u32) -> Self {
        PerCpu {
            index,
            apic_id,
            tables: CpuTables::new(),
            timer_ticks: AtomicU64::new(0),
            ipis_received: AtomicU32::new(0),
            runs_guests: AtomicBool::new(false),
            last_vm: AtomicU64::new(0),
        }
    }
}

/// Sets up the boot CPU's block (static storage, no heap needed).
pub fn init_bsp(apic_id: u32) -> &'static PerCpu {
    static mut BSP_BLOCK: Option<PerCpu> = None;
    let block = BSP.call_once(|| {
        // SAFETY: runs once, on the BSP, before any other CPU exists.
        unsafe {
            let slot = &mut *core::ptr::addr_of_mut!(BSP_BLOCK);
            slot.insert(PerCpu::new(0, apic_id))
        }
    });
    install(block)
}

/// Creates and installs the block of the AP running this code.
pub fn init_ap(index: u32, apic_id: u32) -> &'static PerCpu {
    install(Box::leak(Box::new(PerCpu::new(index, apic_id))))
}

fn install(block: &'static PerCpu) -> &'static PerCpu {
    CPUS[block.index as usize].call_once(|| block);
    GsBase::write(VirtAddr::from_ptr(block));
    block.tables.load();
    block
}

/// This CPU's block, once it has one.
pub fn current() -> Option<&'static PerCpu> {
    let base = GsBase::read();
    if base.is_null() {
        return None;
    }
    // SAFETY: the GS base is only ever set by `install` to a 'static PerCpu.
    Some(unsafe { &*base.as_ptr::<PerCpu>() })
}

/// This CPU's index; 0 before per-CPU data exists (only the BSP runs then).
pub fn current_index() -> u32 {
    current().map_or(0, |c| c.index)
}

pub fn online() -> impl Iterator<Item = &'static PerCpu> {
    CPUS.iter().map_while(|c| c.get().copied())
}
