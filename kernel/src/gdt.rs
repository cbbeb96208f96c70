//! Each CPU's own GDT and TSS. The TSS carries the interrupt stacks (IST) that
//! double faults, NMIs and machine checks switch to, so a crash report can still
//! be printed after a kernel stack overflow.

use core::cell::UnsafeCell;
use x86_64::instructions::segmentation::{Segment, CS, DS, ES, SS};
use x86_64::instructions::tables::load_tss;
use x86_64::structures::gdt::{Descriptor, GlobalDescriptorTable, SegmentSelector};
use x86_64::structures::tss::TaskStateSegment;
use x86_64::VirtAddr;

pub const IST_DOUBLE_FAULT: u16 = 1;
pub const IST_NMI: u16 = 2;
pub const IST_MACHINE_CHECK: u16 = 3;
const IST_STACK_SIZE: usize = 16 * 1024;

#[repr(C, align(16))]
struct IstStack([u8; IST_STACK_SIZE]);

/// One CPU's descriptor tables and IST stacks. Lives inside that CPU's PerCpu.
pub struct CpuTables {
    gdt: UnsafeCell<GlobalDescriptorTable>,
    tss: UnsafeCell<TaskStateSegment>,
    ist_stacks: UnsafeCell<[IstStack; 3]>,
}

// SAFETY: only the owning CPU touches its tables, once, in `load`.
unsafe impl Sync for CpuTables {}

pub const KERNEL_CODE: SegmentSelector = SegmentSelector(8);
pub const KERNEL_DATA: SegmentSelector = SegmentSelector(0x10);

impl CpuTables {
    pub const fn new() -> Self {
        CpuTables {
            gdt: UnsafeCell::new(GlobalDescriptorTable::new()),
            tss: UnsafeCell::new(TaskStateSegment::new()),
            ist_stacks: UnsafeCell::new([const { IstStack([0; IST_STACK_SIZE]) }; 3]),
        }
    }

    /// Fills in and loads this CPU's GDT and TSS. Must run on the owning CPU,
    /// once, with the tables at their final ('static) address.
    pub fn load(&'static self) {
        // SAFETY: called once per CPU by percpu::install before anything else can
        // reach these cells.
        let (gdt, tss, stacks) = unsafe { (&mut *self.gdt.get(), &mut *self.tss.get(), &mut *self.ist_stacks.get()) };
        for (slot, stack) in [IST_DOUBLE_FAULT, IST_NMI, IST_MACHINE_CHECK].into_iter().zip(stacks.iter()) {
            let top = VirtAddr::from_ptr(stack.0.as_ptr_range().end);
            tss.interrupt_stack_table[slot as usize - 1] = top;
        }
        let code = gdt.append(Descriptor::kernel_code_segment());
        let data = gdt.append(Descriptor::kernel_data_segment());
        // SAFETY: the TSS is 'static (inside a 'static PerCpu) and not moved again.
        let tss_sel = gdt.append(Descriptor::tss_segment(unsafe { &*(tss as *const TaskStateSegment) }));
        debug_assert_eq!(code, KERNEL_CODE);
        // SAFETY: the GDT is 'static; the selectors were just created in it.
        unsafe {
            (*(gdt as *const GlobalDescriptorTable)).load_unsafe();
            CS::set_reg(code);
            SS::set_reg(data);
            DS::set_reg(data);
            ES::set_reg(data);
            load_tss(tss_sel);
        }
    }
}
