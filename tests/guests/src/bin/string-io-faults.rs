//! String I/O through the guest's own page tables, checked the way its CPU
//! checks them: a REP INSB into a read-only page (CR0.WP=1) and an OUTSW whose
//! word runs into a missing page raise #PF with the CPU's error code and CR2,
//! and leave RDI/RSI/RCX at the element that faulted; a word across two pages
//! lands in both frames; a plain REP OUTSB to COM1 still prints. Exits with
//! status 33 when all pass, 35 otherwise.
#![no_std]
#![no_main]

use basalt_test_guests::{check, entry, exit, println};
use core::arch::asm;
use core::ptr::{addr_of, addr_of_mut};

entry!(main);

// #PF and #GP both land here: the handler notes what happened and returns to
// FAULT_RESUME (set by the test before the faulting instruction), so one
// fault never loops.
core::arch::global_asm!(
    r#"
.global page_fault_entry
page_fault_entry:
    push rax
    mov eax, 14
    jmp fault_common
.global general_protection_entry
general_protection_entry:
    push rax
    mov eax, 13
fault_common:
    mov [rip + FAULT_VECTOR], rax
    mov rax, [rsp + 8]
    mov [rip + FAULT_ERROR], rax
    mov rax, cr2
    mov [rip + FAULT_CR2], rax
    mov rax, [rsp + 16]
    mov [rip + FAULT_RIP], rax
    mov rax, [rip + FAULT_RESUME]
    mov [rsp + 16], rax
    lock inc qword ptr [rip + FAULTS]
    pop rax
    add rsp, 8
    iretq
"#
);

extern "C" {
    fn page_fault_entry();
    fn general_protection_entry();
}

#[no_mangle]
static mut FAULT_VECTOR: u64 = 0;
#[no_mangle]
static mut FAULT_ERROR: u64 = 0;
#[no_mangle]
static mut FAULT_CR2: u64 = 0;
#[no_mangle]
static mut FAULT_RIP: u64 = 0;
#[no_mangle]
static mut FAULT_RESUME: u64 = 0;
#[no_mangle]
static mut FAULTS: u64 = 0;

/// What the handler saw.
#[derive(Clone, Copy, PartialEq, Eq)]
struct Fault {
    count: u64,
    vector: u64,
    error: u64,
    cr2: u64,
    rip: u64,
}

fn last_fault() -> Fault {
    // SAFETY: written only by the handler, which has returned.
    unsafe {
        Fault {
            count: addr_of!(FAULTS).read_volatile(),
            vector: addr_of!(FAULT_VECTOR).read_volatile(),
            error: addr_of!(FAULT_ERROR).read_volatile(),
            cr2: addr_of!(FAULT_CR2).read_volatile(),
            rip: addr_of!(FAULT_RIP).read_volatile(),
        }
    }
}

fn forget_faults() {
    // SAFETY: single-threaded, and no fault is being handled.
    unsafe { addr_of_mut!(FAULTS).write_volatile(0) }
}

static mut IDT: [u64; 512] = [0; 512];

fn install_handlers() {
    for (vector, handler) in [(14, page_fault_entry as unsafe extern "C" fn()), (13, general_protection_entry)] {
        let address = handler as usize as u64;
        // A present 64-bit interrupt gate in the flat code segment (0x10).
        let low = (address & 0xffff) | (0x10 << 16) | (0x8e00 << 32) | (((address >> 16) & 0xffff) << 48);
        // SAFETY: the guest is single-threaded and the IDT is not loaded yet.
        unsafe {
            let idt = &mut *addr_of_mut!(IDT);
            idt[vector * 2] = low;
            idt[vector * 2 + 1] = address >> 32;
        }
    }
    #[repr(C, packed)]
    struct Pointer {
        limit: u16,
        base: u64,
    }
    let pointer = Pointer { limit: 256 * 16 - 1, base: addr_of!(IDT) as u64 };
    // SAFETY: loads the IDT built above.
    unsafe { asm!("lidt [{}]", in(reg) &pointer) };
}

#[repr(C, align(4096))]
struct Table([u64; 512]);

#[repr(C, align(4096))]
struct Frame([u8; 4096]);

static mut PML4: Table = Table([0; 512]);
static mut PDPT: Table = Table([0; 512]);
static mut PD: Table = Table([0; 512]);
static mut PT: Table = Table([0; 512]);
static mut FRAMES: [Frame; 7] = [const { Frame([0; 4096]) }; 7];

const PRESENT: u64 = 1;
const WRITABLE: u64 = 2;
/// The test's pages, at 4 GiB, where Basalt's identity map ends.
const WINDOW: u64 = 0x1_0000_0000;
/// Writable, then read-only: the INS test.
const WRITABLE_PAGE: u64 = WINDOW;
const READ_ONLY_PAGE: u64 = WINDOW + 0x1000;
/// Present, then not present: the OUTS test.
const PRESENT_PAGE: u64 = WINDOW + 0x2000;
const MISSING_PAGE: u64 = WINDOW + 0x3000;
/// Two writable pages whose frames are not neighbours (5, then 3).
const SPLIT_PAGE: u64 = WINDOW + 0x4000;
/// Port 0x80 is unclaimed: reads are all-ones, writes are dropped.
const SCRATCH_PORT: u16 = 0x80;

fn frame(index: usize) -> u64 {
    // SAFETY: only the address is taken.
    unsafe { addr_of!(FRAMES[index]) as u64 }
}

fn frame_byte(index: usize, offset: usize) -> u8 {
    // SAFETY: in bounds; the frames are plain memory (identity-mapped).
    unsafe { addr_of!(FRAMES[index].0[offset]).read_volatile() }
}

/// The window's page table maps `page` in this entry.
fn pte(page: u64) -> usize {
    ((page >> 12) & 0x1ff) as usize
}

fn set_pte(page: u64, value: u64) {
    let index = pte(page);
    // SAFETY: the page tables are ours; INVLPG drops the old translation.
    unsafe {
        addr_of_mut!(PT.0[index]).write_volatile(value);
        asm!("invlpg [{}]", in(reg) page);
    }
}

/// Keeps Basalt's identity map of the first 4 GiB and adds the test window
/// above it in 4 KiB pages; turns on CR0.WP so supervisor writes honour R/W.
fn build_page_tables() {
    // SAFETY: the tables are ours and the identity map they keep covers
    // everything the guest runs from; the old tables are read through it.
    unsafe {
        let cr3: u64;
        asm!("mov {}, cr3", out(reg) cr3);
        let old_pml4 = (cr3 & 0x000f_ffff_ffff_f000) as *const u64;
        let old_pdpt = (old_pml4.read() & 0x000f_ffff_ffff_f000) as *const u64;
        let pdpt = &mut *addr_of_mut!(PDPT);
        for gib in 0..4 {
            pdpt.0[gib] = old_pdpt.add(gib).read();
        }
        pdpt.0[4] = addr_of!(PD) as u64 | PRESENT | WRITABLE;
        (*addr_of_mut!(PD)).0[0] = addr_of!(PT) as u64 | PRESENT | WRITABLE;
        (*addr_of_mut!(PML4)).0[0] = addr_of!(PDPT) as u64 | PRESENT | WRITABLE;
        let pt = &mut *addr_of_mut!(PT);
        pt.0[pte(WRITABLE_PAGE)] = frame(0) | PRESENT | WRITABLE;
        pt.0[pte(READ_ONLY_PAGE)] = frame(1) | PRESENT;
        pt.0[pte(PRESENT_PAGE)] = frame(2) | PRESENT;
        pt.0[pte(MISSING_PAGE)] = 0;
        pt.0[pte(SPLIT_PAGE)] = frame(5) | PRESENT | WRITABLE;
        pt.0[pte(SPLIT_PAGE + 0x1000)] = frame(3) | PRESENT | WRITABLE;
        asm!("mov cr3, {}", in(reg) addr_of!(PML4) as u64);
        asm!("mov {t}, cr0", "or {t}, {wp}", "mov cr0, {t}", t = out(reg) _, wp = in(reg) 1u64 << 16);
    }
}

/// (a) REP INSB of 4 bytes from 2 bytes before the read-only page.
fn ins_into_read_only_page() -> bool {
    let mut ok = true;
    forget_faults();
    let (rdi, rcx, at): (u64, u64, u64);
    // SAFETY: writes only the window's pages; a fault resumes after the INSB.
    unsafe {
        asm!(
            "lea {t}, [rip + 3f]",
            "mov [rip + FAULT_RESUME], {t}",
            "lea {at}, [rip + 2f]",
            "2: rep insb",
            "3:",
            t = out(reg) _,
            at = out(reg) at,
            in("dx") SCRATCH_PORT,
            inout("rdi") READ_ONLY_PAGE - 2 => rdi,
            inout("rcx") 4u64 => rcx,
        );
    }
    let fault = last_fault();
    ok &= check("rep insb into a read-only page raises #PF", fault.count == 1 && fault.vector == 14);
    ok &= check("its error code is P|W (0x3)", fault.error == 0x3);
    ok &= check("its CR2 is the read-only page", fault.cr2 == READ_ONLY_PAGE);
    ok &= check("RDI and RCX stop at the faulting element", rdi == READ_ONLY_PAGE && rcx == 2 && fault.rip == at);
    ok &= check(
        "the elements before the fault were stored, none after",
        frame_byte(0, 0xffe) == 0xff && frame_byte(0, 0xfff) == 0xff && frame_byte(1, 0) == 0,
    );

    // What a kernel's fault handler does: make the page writable and run the
    // instruction again, which finishes the rest.
    set_pte(READ_ONLY_PAGE, frame(1) | PRESENT | WRITABLE);
    forget_faults();
    let (rdi_after, rcx_after): (u64, u64);
    // SAFETY: as above.
    unsafe {
        asm!(
            "lea {t}, [rip + 3f]",
            "mov [rip + FAULT_RESUME], {t}",
            "rep insb",
            "3:",
            t = out(reg) _,
            in("dx") SCRATCH_PORT,
            inout("rdi") rdi => rdi_after,
            inout("rcx") rcx => rcx_after,
        );
    }
    ok &= check(
        "rep insb resumes once the page is writable",
        last_fault().count == 0 && rcx_after == 0 && rdi_after == READ_ONLY_PAGE + 2 && frame_byte(1, 1) == 0xff,
    );
    ok
}

/// (b) OUTSW of the present page's last byte and the missing page's first.
fn outs_into_missing_page() -> bool {
    let mut ok = true;
    forget_faults();
    let (rsi, at): (u64, u64);
    // SAFETY: reads only the window's pages; a fault resumes after the OUTSW.
    unsafe {
        asm!(
            "lea {t}, [rip + 3f]",
            "mov [rip + FAULT_RESUME], {t}",
            "lea {at}, [rip + 2f]",
            "2: outsw",
            "3:",
            t = out(reg) _,
            at = out(reg) at,
            in("dx") SCRATCH_PORT,
            inout("rsi") MISSING_PAGE - 1 => rsi,
        );
    }
    let fault = last_fault();
    ok &= check("outsw into a missing page raises #PF", fault.count == 1 && fault.vector == 14);
    ok &= check("its error code is 0 (read, not present)", fault.error == 0);
    ok &= check("its CR2 is the missing page's first byte", fault.cr2 == MISSING_PAGE);
    ok &= check("RSI stays at the element", rsi == MISSING_PAGE - 1 && fault.rip == at);
    ok
}

/// An INSW element across two pages whose frames are apart.
fn ins_across_frames() -> bool {
    forget_faults();
    let rdi: u64;
    // SAFETY: writes only the window's pages.
    unsafe {
        asm!(
            "lea {t}, [rip + 3f]",
            "mov [rip + FAULT_RESUME], {t}",
            "insw",
            "3:",
            t = out(reg) _,
            in("dx") SCRATCH_PORT,
            inout("rdi") SPLIT_PAGE + 0xfff => rdi,
        );
    }
    check(
        "insw across two pages lands in both frames",
        last_fault().count == 0
            && rdi == SPLIT_PAGE + 0x1001
            && frame_byte(5, 0xfff) == 0xff
            && frame_byte(3, 0) == 0xff
            && frame_byte(6, 0) == 0,
    )
}

/// (c) REP OUTSB of a line that starts in one frame and ends in another.
fn rep_outs_prints() -> bool {
    let line = b"string-io-faults: printed with rep outsb across two frames\n";
    let start = SPLIT_PAGE + 0x1000 - 20;
    // SAFETY: the window's writable pages, through the guest's own mapping.
    unsafe { core::ptr::copy_nonoverlapping(line.as_ptr(), start as *mut u8, line.len()) };
    forget_faults();
    let (rsi, rcx): (u64, u64);
    // SAFETY: REP OUTSB from our own pages to COM1.
    unsafe {
        asm!(
            "lea {t}, [rip + 3f]",
            "mov [rip + FAULT_RESUME], {t}",
            "rep outsb",
            "3:",
            t = out(reg) _,
            in("dx") 0x3f8u16,
            inout("rsi") start => rsi,
            inout("rcx") line.len() as u64 => rcx,
        );
    }
    check("rep outsb to COM1 completes", last_fault().count == 0 && rcx == 0 && rsi == start + line.len() as u64)
}

fn main() -> ! {
    println!("string-io-faults: hello");
    install_handlers();
    build_page_tables();
    let mut ok = true;
    ok &= ins_into_read_only_page();
    ok &= outs_into_missing_page();
    ok &= ins_across_frames();
    ok &= rep_outs_prints();
    println!("string-io-faults: {}", if ok { "all checks passed" } else { "some checks FAILED" });
    exit(if ok { 0x10 } else { 0x11 })
}
