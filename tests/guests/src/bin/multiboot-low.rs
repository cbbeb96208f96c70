//! A Multiboot (v1) kernel loaded at 0x8000, so that its bytes cover 0x9000,
//! where the Multiboot information used to be written over such kernels. Its
//! 32-bit entry switches to long mode; then it checks that a canary of known
//! bytes across 0x9000 is intact and that the boot data lies outside its own
//! image, and prints its command line and each module's string and contents.
//! Exits with status 33 when every check passes, 35 otherwise.
#![no_std]
#![no_main]

use basalt_test_guests::{check, exit, println};
use core::ptr::{addr_of, read_volatile};

// Entered in 32-bit protected mode, paging off, EAX = the boot loader's magic,
// EBX = the information. Identity-maps the first GiB with 2 MiB pages (the
// boot data may lie anywhere in the VM's RAM), turns on long mode and calls
// `multiboot_low_main(magic, info)`.
core::arch::global_asm!(
    r#"
.section .text.multiboot, "ax"
.code32
.align 4
multiboot_header:
    .long 0x1BADB002
    /* modules page-aligned, memory information, the address fields */
    .long 0x00010003
    .long -(0x1BADB002 + 0x00010003)
    .long multiboot_header
    .long image_start
    .long image_end
    .long bss_end
    .long start

.section .text.boot, "ax"
.global start
start:
    cli
    cld
    movl $boot_stack_top, %esp
    movl %eax, %edi
    movl %ebx, %esi
    movl $pdpt, %eax
    orl $3, %eax
    movl %eax, pml4
    movl $pd, %eax
    orl $3, %eax
    movl %eax, pdpt
    xorl %ecx, %ecx
1:  movl %ecx, %eax
    shll $21, %eax
    orl $0x83, %eax
    movl %eax, pd(,%ecx,8)
    incl %ecx
    cmpl $512, %ecx
    jne 1b
    movl $pml4, %eax
    movl %eax, %cr3
    movl %cr4, %eax
    orl $0x20, %eax
    movl %eax, %cr4
    movl $0xC0000080, %ecx
    rdmsr
    orl $0x100, %eax
    wrmsr
    movl %cr0, %eax
    orl $0x80000001, %eax
    movl %eax, %cr0
    lgdt gdt_pointer
    ljmp $0x08, $start64

.code64
start64:
    movw $0x10, %ax
    movw %ax, %ds
    movw %ax, %es
    movw %ax, %ss
    movw %ax, %fs
    movw %ax, %gs
    /* The upper halves are undefined after the switch. */
    movl $boot_stack_top, %esp
    movl %edi, %edi
    movl %esi, %esi
    call multiboot_low_main
1:  hlt
    jmp 1b

.align 8
gdt:
    .quad 0
    .quad 0x00af9a000000ffff
    .quad 0x00cf92000000ffff
gdt_end:
gdt_pointer:
    .word gdt_end - gdt - 1
    .long gdt

.section .bss
.align 4096
pml4: .skip 4096
pdpt: .skip 4096
pd: .skip 4096
boot_stack: .skip 16384
boot_stack_top:
"#,
    options(att_syntax)
);

unsafe extern "C" {
    // From the linker script: where the image starts and its zero fill ends.
    safe static image_start: u8;
    safe static bss_end: u8;
}

const CANARY_LEN: usize = 0x2000;

/// Bytes no loader would write by accident.
const fn canary() -> [u8; CANARY_LEN] {
    let mut bytes = [0u8; CANARY_LEN];
    let mut i = 0;
    while i < CANARY_LEN {
        bytes[i] = ((i as u32).wrapping_mul(2_654_435_761) >> 24) as u8;
        i += 1;
    }
    bytes
}

/// Placed right after the entry code (multiboot-low.ld), so 0x9000 falls inside.
#[link_section = ".data.canary"]
#[used]
static CANARY: [u8; CANARY_LEN] = canary();

const BOOTLOADER_MAGIC: u32 = 0x2bad_b002;
const FLAG_CMDLINE: u32 = 1 << 2;
const FLAG_MODULES: u32 = 1 << 3;

fn read32(address: u64) -> u32 {
    // SAFETY: the first GiB is identity-mapped, and Basalt put the
    // information (and the module list it points to) in the VM's RAM.
    unsafe { read_volatile(address as *const u32) }
}

fn bytes<'a>(address: u64, length: u64) -> &'a [u8] {
    // SAFETY: as in `read32`; only read, never written while borrowed.
    unsafe { core::slice::from_raw_parts(address as *const u8, length as usize) }
}

/// The NUL-terminated string at `address` (at most 4 KiB of it).
fn string<'a>(address: u64) -> &'a str {
    let length = (0..4096).find(|&i| bytes(address + i, 1)[0] == 0).unwrap_or(4096);
    core::str::from_utf8(bytes(address, length)).unwrap_or("<not UTF-8>")
}

#[no_mangle]
extern "C" fn multiboot_low_main(magic: u32, info: u32) -> ! {
    println!("multiboot-low guest: hello from long mode");
    let canary_at = addr_of!(CANARY) as u64;
    let (start, end) = (addr_of!(image_start) as u64, addr_of!(bss_end) as u64);
    let outside = |at: u64, length: u64| at + length <= start || at >= end;
    let expected = canary();
    // SAFETY: reads of a static; volatile, so the compiler cannot assume the
    // bytes it put there are still there.
    let intact = (0..CANARY_LEN).all(|i| unsafe { read_volatile(addr_of!(CANARY[i])) } == expected[i]);
    let mut ok = check("image from 0x8000", start == 0x8000);
    ok &= check("0x9000 inside the canary", (canary_at..canary_at + CANARY_LEN as u64).contains(&0x9000));
    ok &= check("canary intact", intact);
    ok &= check("boot loader magic", magic == BOOTLOADER_MAGIC);
    let info = u64::from(info);
    ok &= check("information outside the image", outside(info, 88));
    let flags = read32(info);
    ok &= check("command line and modules given", flags & FLAG_CMDLINE != 0 && flags & FLAG_MODULES != 0);
    if !ok {
        exit(0x11);
    }
    let cmdline = u64::from(read32(info + 16));
    ok &= check("command line outside the image", outside(cmdline, 1));
    println!("multiboot-low guest: command line '{}'", string(cmdline));
    let (count, list) = (read32(info + 20), u64::from(read32(info + 24)));
    println!("multiboot-low guest: {count} module(s)");
    for i in 0..u64::from(count) {
        let entry = list + 16 * i;
        let (from, to) = (u64::from(read32(entry)), u64::from(read32(entry + 4)));
        let text = string(u64::from(read32(entry + 8)));
        let length = to.saturating_sub(from);
        let contents = core::str::from_utf8(bytes(from, length)).unwrap_or("<not UTF-8>");
        println!("multiboot-low guest: module {}: '{text}' holds '{contents}'", i + 1);
        ok &= check("module page-aligned and outside the image", from % 4096 == 0 && outside(from, length));
    }
    if ok {
        println!("multiboot-low guest: all checks passed");
        exit(0x10)
    }
    exit(0x11)
}
