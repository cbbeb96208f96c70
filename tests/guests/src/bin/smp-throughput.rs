//! Two vCPUs exiting at once. The bootstrap processor starts the second one as
//! an OS does (INIT and start-up IPIs to a real-mode trampoline that climbs to
//! long mode), then for each kind of device each vCPU hammers one of its own
//! with a fixed number of exits: first vCPU 0 alone, then both together. It
//! prints the exits per million guest TSC ticks of each run and their ratio
//! (2.00 when the two vCPUs do not slow each other down at all), then exits
//! with status 33 when the second vCPU came up and did all its exits.
//!
//! Devices: the ACPI PM timer (vCPU 0) and the CMOS RTC's data port (vCPU 1),
//! two devices behind the VM; and each vCPU's own local APIC (the timer's
//! current count, a register no CPU virtualises, so every read exits).
#![no_std]
#![no_main]

use basalt_test_guests::{check, entry, exit, inb, outb, println, rdtsc};
use core::arch::{asm, global_asm};
use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};

entry!(main);

/// Where the trampoline runs: start-up IPI vector 8.
const TRAMPOLINE: u64 = 0x8000;
const LAPIC: u64 = 0xfee0_0000;
const LAPIC_SVR: u64 = 0xf0;
const LAPIC_ICR_LOW: u64 = 0x300;
const LAPIC_ICR_HIGH: u64 = 0x310;
const LAPIC_TIMER_CURRENT: u64 = 0x390;
const PM_TIMER: u16 = 0x608;
const CMOS_INDEX: u16 = 0x70;
const CMOS_DATA: u16 = 0x71;
/// Exits per vCPU per run.
const EXITS: u32 = 4000;

// The second vCPU starts in real mode at TRAMPOLINE (a copy of this code):
// it loads the bootstrap processor's GDT, turns on protected mode, PAE, the
// BSP's page tables, long mode and paging, then jumps to `ap_entry` on its
// own stack. The slots at the end are filled in before the IPIs. Addresses
// are the copy's: TRAMPOLINE + (label - start).
global_asm!(
    r#"
    .section .text.trampoline, "ax"
    .global smp_trampoline_start, smp_trampoline_end
    .global smp_gdtr, smp_cr3, smp_stack, smp_entry
    .code16
smp_trampoline_start:
    cli
    xorw %ax, %ax
    movw %ax, %ds
    lgdtl 0x8000 + (smp_gdtr - smp_trampoline_start)
    movl %cr0, %eax
    orl $1, %eax
    movl %eax, %cr0
    ljmpl $0x20, $(0x8000 + (smp_protected - smp_trampoline_start))
    .code32
smp_protected:
    movw $0x18, %ax
    movw %ax, %ds
    movw %ax, %es
    movw %ax, %ss
    movl %cr4, %eax
    orl $0x20, %eax
    movl %eax, %cr4
    movl 0x8000 + (smp_cr3 - smp_trampoline_start), %eax
    movl %eax, %cr3
    movl $0xc0000080, %ecx
    rdmsr
    orl $0x100, %eax
    wrmsr
    movl %cr0, %eax
    orl $0x80000000, %eax
    movl %eax, %cr0
    ljmpl $0x10, $(0x8000 + (smp_long - smp_trampoline_start))
    .code64
smp_long:
    movq 0x8000 + (smp_stack - smp_trampoline_start), %rsp
    movq 0x8000 + (smp_entry - smp_trampoline_start), %rax
    jmpq *%rax
    .balign 8
smp_gdtr:
    .word 0
    .long 0
    .balign 8
smp_cr3:
    .quad 0
smp_stack:
    .quad 0
smp_entry:
    .quad 0
smp_trampoline_end:
    .text
"#,
    options(att_syntax)
);

extern "C" {
    static smp_trampoline_start: u8;
    static smp_trampoline_end: u8;
    static smp_gdtr: u8;
    static smp_cr3: u8;
    static smp_stack: u8;
    static smp_entry: u8;
}

/// The second vCPU's stack (only ever used through its address).
#[repr(align(16))]
struct Stack(#[allow(dead_code)] [u8; 16 * 1024]);
static mut AP_STACK: Stack = Stack([0; 16 * 1024]);

/// Set by the second vCPU when it runs Rust code.
static AP_ALIVE: AtomicU32 = AtomicU32::new(0);
/// Run number the second vCPU is told to do (0: none yet), and the last run
/// it finished, with its ticks.
static AP_GO: AtomicU32 = AtomicU32::new(0);
static AP_DONE: AtomicU32 = AtomicU32::new(0);
static AP_TICKS: AtomicU64 = AtomicU64::new(0);
static AP_EXITS: AtomicU32 = AtomicU32::new(0);

fn lapic_read(register: u64) -> u32 {
    // SAFETY: the local APIC page is identity-mapped; the registers read have
    // no side effect.
    unsafe { ((LAPIC + register) as *const u32).read_volatile() }
}

fn lapic_write(register: u64, value: u32) {
    // SAFETY: as in `lapic_read`; what an OS writes to start a CPU.
    unsafe { ((LAPIC + register) as *mut u32).write_volatile(value) }
}

fn inl(port: u16) -> u32 {
    let value: u32;
    // SAFETY: port I/O in a guest; Basalt emulates every port.
    unsafe { asm!("in eax, dx", in("dx") port, out("eax") value, options(nomem, nostack)) }
    value
}

#[derive(Clone, Copy)]
enum Device {
    /// vCPU 0: the PM timer; vCPU 1: the CMOS RTC.
    Ports,
    /// Each vCPU's own local APIC.
    LocalApics,
}

/// `EXITS` exits on this vCPU's device of `kind`; the ticks they took.
fn hammer(kind: Device, vcpu: usize) -> u64 {
    let start = rdtsc();
    for _ in 0..EXITS {
        match (kind, vcpu) {
            (Device::Ports, 0) => {
                inl(PM_TIMER);
            }
            (Device::Ports, _) => {
                inb(CMOS_DATA);
            }
            (Device::LocalApics, _) => {
                lapic_read(LAPIC_TIMER_CURRENT);
            }
        }
    }
    rdtsc() - start
}

const DEVICES: [(Device, &str); 2] = [(Device::Ports, "ports"), (Device::LocalApics, "local APICs")];

extern "C" fn ap_entry() -> ! {
    AP_ALIVE.store(1, Ordering::Release);
    let mut done = 0;
    loop {
        let run = AP_GO.load(Ordering::Acquire);
        if run == u32::MAX {
            break;
        }
        if run != done {
            let ticks = hammer(DEVICES[(run - 1) as usize].0, 1);
            AP_TICKS.store(ticks, Ordering::Relaxed);
            AP_EXITS.fetch_add(EXITS, Ordering::Relaxed);
            AP_DONE.store(run, Ordering::Release);
            done = run;
        }
        core::hint::spin_loop();
    }
    // SAFETY: halting with interrupts off parks this vCPU for good.
    unsafe { asm!("cli", "hlt", options(noreturn)) }
}

/// Copies the trampoline to TRAMPOLINE, fills in its slots and sends the
/// second vCPU INIT and a start-up IPI.
fn start_second_vcpu() {
    // SAFETY: the symbols are the trampoline's labels in this image; RAM at
    // TRAMPOLINE is the guest's own and unused; the slots are inside the copy.
    unsafe {
        let start = core::ptr::addr_of!(smp_trampoline_start);
        let len = core::ptr::addr_of!(smp_trampoline_end) as usize - start as usize;
        core::ptr::copy_nonoverlapping(start, TRAMPOLINE as *mut u8, len);
        let slot = |label: *const u8| (TRAMPOLINE as usize + (label as usize - start as usize)) as *mut u8;
        let mut gdtr = [0u8; 10];
        asm!("sgdt [{}]", in(reg) gdtr.as_mut_ptr(), options(nostack));
        core::ptr::copy_nonoverlapping(gdtr.as_ptr(), slot(core::ptr::addr_of!(smp_gdtr)), 6);
        let cr3: u64;
        asm!("mov {}, cr3", out(reg) cr3, options(nomem, nostack));
        (slot(core::ptr::addr_of!(smp_cr3)) as *mut u64).write_unaligned(cr3);
        let stack_top = core::ptr::addr_of_mut!(AP_STACK) as u64 + core::mem::size_of::<Stack>() as u64;
        (slot(core::ptr::addr_of!(smp_stack)) as *mut u64).write_unaligned(stack_top);
        (slot(core::ptr::addr_of!(smp_entry)) as *mut u64).write_unaligned(ap_entry as *const () as u64);
    }
    lapic_write(LAPIC_SVR, 0x1ff);
    lapic_write(LAPIC_ICR_HIGH, 1 << 24);
    lapic_write(LAPIC_ICR_LOW, 0x4500); // INIT, assert
    lapic_write(LAPIC_ICR_HIGH, 1 << 24);
    lapic_write(LAPIC_ICR_LOW, 0x4600 | (TRAMPOLINE >> 12) as u32); // start-up
}

/// Waits until `done()` or about `ticks` TSC ticks pass; whether it happened.
fn wait_for(ticks: u64, done: impl Fn() -> bool) -> bool {
    let start = rdtsc();
    while !done() {
        if rdtsc() - start > ticks {
            return false;
        }
        core::hint::spin_loop();
    }
    true
}

/// Exits per million ticks, with two decimals, as hundredths.
fn per_million(exits: u64, ticks: u64) -> u64 {
    (exits * 100_000_000).checked_div(ticks).unwrap_or(0)
}

fn main() -> ! {
    println!("smp throughput guest: starting vCPU 1");
    let second = 1000 * basalt_test_guests::tsc_per_ms();
    outb(CMOS_INDEX, 0x0a);
    start_second_vcpu();
    let mut ok = check("second vcpu runs", wait_for(second, || AP_ALIVE.load(Ordering::Acquire) == 1));
    if !ok {
        exit(1);
    }
    for (run, (kind, name)) in DEVICES.iter().enumerate() {
        let run = run as u32 + 1;
        let alone = hammer(*kind, 0);
        AP_GO.store(run, Ordering::Release);
        let mine = hammer(*kind, 0);
        ok &= wait_for(60 * second, || AP_DONE.load(Ordering::Acquire) == run);
        let together = mine.max(AP_TICKS.load(Ordering::Relaxed));
        let one = per_million(EXITS as u64, alone);
        let two = per_million(2 * EXITS as u64, together);
        let ratio = (two * 100).checked_div(one).unwrap_or(0);
        println!(
            "throughput {name}: one vCPU {}.{:02} exits per million ticks, two vCPUs {}.{:02}: {}.{:02}x",
            one / 100,
            one % 100,
            two / 100,
            two % 100,
            ratio / 100,
            ratio % 100
        );
    }
    AP_GO.store(u32::MAX, Ordering::Release);
    ok &= check("second vcpu did all its exits", AP_EXITS.load(Ordering::Relaxed) == 2 * EXITS);
    println!("smp throughput guest: {}", if ok { "all checks passed" } else { "some checks FAILED" });
    exit(if ok { 16 } else { 1 })
}
