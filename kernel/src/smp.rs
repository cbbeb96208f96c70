//! Starting the application processors. The bootloader leaves them asleep, so the
//! BSP copies a start-up page below 1 MiB, identity-maps it, and wakes each AP with
//! INIT-SIPI-SIPI. The AP goes real mode -> protected mode -> long mode on a copy of
//! the BSP's page tables and jumps to `ap_entry` on its own stack.

use crate::platform::Platform;
use crate::{apic, memory, percpu, time, trap};
use core::sync::atomic::{AtomicU32, Ordering};
use x86_64::registers::control::{Cr0, Cr3, Cr4, Efer};
use x86_64::structures::paging::PageTableFlags;

const AP_STACK_SIZE: u64 = 64 * 1024;

// Offsets into the start-up page are label differences, so the code runs at
// whatever page it is copied to. The linear addresses the far jumps and the GDT
// pointer need are patched in by `start_aps`.
core::arch::global_asm!(
    r#"
.section .rodata.ap_startup, "a"
.global ap_startup_start
.global ap_startup_end
.global ap_startup_params
.code16
ap_startup_start:
    cli
    cld
    mov %cs, %bx
    mov %bx, %ds
    movzwl %bx, %ebx
    shll $4, %ebx
    lgdtl (ap_gdt_pointer - ap_startup_start)
    movl %cr0, %eax
    orl $1, %eax
    movl %eax, %cr0
    ljmpl *(ap_far_32 - ap_startup_start)

.code32
ap_protected:
    movw $0x10, %ax
    movw %ax, %ds
    movw %ax, %es
    movw %ax, %ss
    movl (ap_cr4 - ap_startup_start)(%ebx), %eax
    movl %eax, %cr4
    movl (ap_cr3 - ap_startup_start)(%ebx), %eax
    movl %eax, %cr3
    movl $0xc0000080, %ecx
    movl (ap_efer - ap_startup_start)(%ebx), %eax
    xorl %edx, %edx
    wrmsr
    movl (ap_cr0 - ap_startup_start)(%ebx), %eax
    movl %eax, %cr0
    ljmpl *(ap_far_64 - ap_startup_start)(%ebx)

.code64
ap_long:
    movw $0x10, %ax
    movw %ax, %ds
    movw %ax, %es
    movw %ax, %ss
    xorl %eax, %eax
    movw %ax, %fs
    movw %ax, %gs
    movq ap_stack(%rip), %rsp
    movq ap_index(%rip), %rdi
    xorl %ebp, %ebp
    pushq %rbp
    jmpq *ap_entry_address(%rip)

.balign 8
ap_gdt:
    .quad 0
    .quad 0x00af9a000000ffff
    .quad 0x00cf92000000ffff
    .quad 0x00cf9a000000ffff
ap_gdt_pointer:
    .word 31
    .long 0
    .balign 8
ap_far_32:
    .long 0
    .word 0x18
    .balign 8
ap_far_64:
    .long 0
    .word 0x08
    .balign 8
ap_startup_params:
ap_cr3: .quad 0
ap_cr4: .quad 0
ap_cr0: .quad 0
ap_efer: .quad 0
ap_stack: .quad 0
ap_index: .quad 0
ap_entry_address: .quad 0
ap_offsets:
    .quad ap_gdt - ap_startup_start
    .quad ap_gdt_pointer - ap_startup_start
    .quad ap_far_32 - ap_startup_start
    .quad ap_protected - ap_startup_start
    .quad ap_far_64 - ap_startup_start
    .quad ap_long - ap_startup_start
ap_startup_end:
.code64
.text
"#,
    options(att_syntax)
);

extern "C" {
    static ap_startup_start: u8;
    static ap_startup_end: u8;
    static ap_startup_params: u8;
}

/// Mirrors the parameter block at `ap_startup_params`.
#[repr(C)]
struct Params {
    cr3: u64,
    cr4: u64,
    cr0: u64,
    efer: u64,
    stack: u64,
    index: u64,
    entry: u64,
    offsets: Offsets,
}

#[repr(C)]
struct Offsets {
    gdt: u64,
    gdt_pointer: u64,
    far_32: u64,
    protected: u64,
    far_64: u64,
    long: u64,
}

/// APs that reached `ap_entry` and finished their set-up.
static READY: AtomicU32 = AtomicU32::new(0);

#[derive(Debug)]
pub struct SmpResult {
    pub expected: usize,
    pub online: usize,
    pub failed_apic_ids: alloc::vec::Vec<u32>,
}

/// Starts every AP the platform lists, one at a time.
pub fn start_aps(platform: &Platform) -> Result<SmpResult, &'static str> {
    let bsp_apic_id = apic::id();
    let aps: alloc::vec::Vec<u32> =
        platform.cpus.iter().map(|c| c.apic_id).filter(|&id| id != bsp_apic_id).take(percpu::MAX_CPUS - 1).collect();
    let mut result = SmpResult { expected: aps.len() + 1, online: 1, failed_apic_ids: alloc::vec::Vec::new() };
    if aps.is_empty() {
        return Ok(result);
    }

    // SAFETY: the symbols delimit the start-up code assembled above.
    let (code, params_offset) = unsafe {
        let start = core::ptr::addr_of!(ap_startup_start);
        let len = core::ptr::addr_of!(ap_startup_end).offset_from(start) as usize;
        (core::slice::from_raw_parts(start, len), core::ptr::addr_of!(ap_startup_params).offset_from(start) as usize)
    };
    let page = memory::alloc_frame_in(0x1000, 0x10_0000).ok_or("no free page below 1 MiB for AP start-up")?;
    // The 32-bit start-up path can only load a CR3 below 4 GiB: give the APs a
    // copy of the BSP's top-level table there (lower levels are shared).
    let root = memory::alloc_frame_in(0x10_0000, 0x1_0000_0000).ok_or("no free page below 4 GiB for AP page tables")?;
    memory::identity_map(page, PageTableFlags::WRITABLE).map_err(|_| "cannot identity-map the AP start-up page")?;
    // SAFETY: `page` is a fresh frame reachable through the physical mapping and
    // the code fits in one page.
    let params = unsafe {
        let base = memory::phys_to_virt(page) as *mut u8;
        core::ptr::copy_nonoverlapping(code.as_ptr(), base, code.len());
        &mut *(base.add(params_offset) as *mut Params)
    };
    let page32 = page as u32;
    // SAFETY: the offsets come from the assembled code; each patch writes inside the page.
    unsafe {
        let at = |offset: u64| memory::phys_to_virt(page + offset) as *mut u32;
        at(params.offsets.gdt_pointer + 2).write_unaligned(page32 + params.offsets.gdt as u32);
        at(params.offsets.far_32).write_unaligned(page32 + params.offsets.protected as u32);
        at(params.offsets.far_64).write_unaligned(page32 + params.offsets.long as u32);
    }
    params.cr3 = root;
    params.cr4 = Cr4::read_raw();
    params.cr0 = Cr0::read_raw();
    params.efer = Efer::read_raw();
    params.entry = ap_entry as extern "C" fn(u64) -> ! as usize as u64;

    for (n, &apic_id) in aps.iter().enumerate() {
        let index = n as u32 + 1;
        let stack = memory::alloc_stack(index, AP_STACK_SIZE)?;
        params.stack = stack;
        // Copied now, so the top-level entries of everything mapped so far (this
        // AP's stack included) are in the AP's table.
        copy_top_level_table(root);
        params.index = index as u64 | ((apic_id as u64) << 32);
        let before = READY.load(Ordering::Acquire);
        // The MP start-up protocol: INIT, wait 10 ms, SIPI, and a second SIPI if
        // the AP has not come up after a short wait.
        apic::send_init(apic_id);
        time::delay_us(10_000);
        apic::send_startup(apic_id, (page >> 12) as u8);
        if !wait_ready(before, 1_000) {
            apic::send_startup(apic_id, (page >> 12) as u8);
        }
        // Emulators run the AP's start slowly; give it up to a second.
        if wait_ready(before, 1_000_000) {
            result.online += 1;
        } else {
            log::error!("cpu with APIC id {apic_id} did not start");
            result.failed_apic_ids.push(apic_id);
        }
    }
    memory::unmap(page);
    memory::free_frame(page);
    Ok(result)
}

fn copy_top_level_table(to: u64) {
    let (bsp_root, _) = Cr3::read_raw();
    // SAFETY: both are whole page-table frames reachable through the physical
    // mapping; `to` was allocated for this purpose.
    unsafe {
        core::ptr::copy_nonoverlapping(
            memory::phys_to_virt(bsp_root.start_address().as_u64()) as *const u8,
            memory::phys_to_virt(to) as *mut u8,
            4096,
        )
    };
}

fn wait_ready(before: u32, micros: u64) -> bool {
    let end = time::deadline_after_us(micros);
    while time::rdtsc() < end {
        if READY.load(Ordering::Acquire) != before {
            return true;
        }
        core::hint::spin_loop();
    }
    false
}

/// First Rust code on an AP. `packed` holds its index (low half) and APIC id.
extern "C" fn ap_entry(packed: u64) -> ! {
    let (index, apic_id) = (packed as u32, (packed >> 32) as u32);
    trap::load_idt();
    let cpu = percpu::init_ap(index, apic_id);
    apic::enable_this_cpu();
    let guests = crate::enable_virtualization_here();
    let on = match crate::vmm::vendor() {
        Some(crate::vmm::Vendor::Intel) if guests => ", VMX on",
        Some(crate::vmm::Vendor::Amd) if guests => ", SVM on",
        _ => "",
    };
    log::info!("cpu{} online (APIC id {}){on}", cpu.index, apic::id());
    READY.fetch_add(1, Ordering::AcqRel);
    // APs rest here; an IPI wakes them to run whatever VMs are queued.
    loop {
        if guests {
            crate::vmm::work();
        }
        x86_64::instructions::interrupts::enable_and_hlt();
        crate::log::pump();
    }
}

/// Wakes every AP so it looks for work.
pub fn wake_all_aps() {
    let me = percpu::current_index();
    for cpu in percpu::online().filter(|c| c.index != me) {
        apic::send_fixed(cpu.apic_id, trap::VECTOR_PING);
    }
}
