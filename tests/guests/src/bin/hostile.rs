//! A hostile guest. For a fixed number of operations drawn from a seeded
//! generator it does what a ring-0 guest can do to its hypervisor: IN/OUT and
//! string I/O on random ports, MMIO loads and stores inside and outside the
//! device windows, RDMSR/WRMSR, CPUID, CR0/CR3/CR4/CR8 and XCR0 writes, debug
//! registers, hypercalls with random arguments, instructions Basalt must
//! refuse or absorb (VMX, GETSEC, INVD, WBINVD, MONITOR/MWAIT), interrupt
//! windows, and virtio queues (console and disk) filled with random
//! descriptors. Every fault it provokes comes back through its own IDT, which
//! abandons that operation; the run goes on with the next one.
//!
//! The seed and the operation count are printed first: a failing run is
//! replayed with `HOSTILE_SEED=<seed> cargo xtask qemu-test --case <case>`.
//!
//! Left out, because they end the VM by design and each has a case of its own:
//! the debug-exit, reset and ACPI sleep ports, the exit hypercall and unknown
//! hypercall numbers, HLT with interrupts off, and string I/O on MMIO.
#![no_std]
#![no_main]

use basalt_test_guests::{entry, exit, say, vmcall, xstate};
use core::arch::{asm, global_asm};
use core::ptr::{addr_of, addr_of_mut};

entry!(main);

const OPERATIONS: u64 = 50_000;
/// HOSTILE_TRACE=N at build time prints every operation from the Nth on
/// before it runs (to find the one a replayed run stops at; printing is slow,
/// so start near the last progress line).
const TRACE_FROM: Option<u64> = match option_env!("HOSTILE_TRACE") {
    Some(text) => Some(parse_seed(text.as_bytes())),
    None => None,
};
const DEFAULT_SEED: u64 = 0xba5a_17c0_ffee_0001;
const SEED: u64 = match option_env!("HOSTILE_SEED") {
    Some(text) => parse_seed(text.as_bytes()),
    None => DEFAULT_SEED,
};

/// A number in decimal or 0x-hex, at compile time (a bad value fails the build).
const fn parse_seed(text: &[u8]) -> u64 {
    let (mut i, radix) = if text.len() > 2 && text[0] == b'0' && text[1] == b'x' { (2, 16) } else { (0, 10) };
    let mut value: u64 = 0;
    while i < text.len() {
        let digit = match text[i] {
            b'0'..=b'9' => text[i] - b'0',
            b'a'..=b'f' if radix == 16 => text[i] - b'a' + 10,
            b'A'..=b'F' if radix == 16 => text[i] - b'A' + 10,
            b'_' => {
                i += 1;
                continue;
            }
            _ => panic!("HOSTILE_SEED and HOSTILE_TRACE must be decimal or 0x-hex numbers"),
        };
        value = value.wrapping_mul(radix).wrapping_add(digit as u64);
        i += 1;
    }
    value
}

/// splitmix64: tiny, and the same sequence on every machine for a seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    fn pick<T: Copy>(&mut self, from: &[T]) -> T {
        from[self.below(from.len() as u64) as usize]
    }
    fn chance(&mut self, one_in: u64) -> bool {
        self.below(one_in) == 0
    }
    /// Mostly values that sit on an edge (0, all-ones, powers of two and their
    /// neighbours, sign boundaries), sometimes anything.
    fn edge(&mut self) -> u64 {
        let bit = self.below(64);
        match self.below(8) {
            0 => 0,
            1 => u64::MAX,
            2 => 1 << bit,
            3 => (1u64 << bit).wrapping_sub(1),
            4 => (1u64 << bit).wrapping_add(1),
            5 => u64::MAX << bit,
            6 => self.below(256),
            _ => self.next(),
        }
    }
}

// Exceptions and interrupts. Every vector has a 16-byte stub that pushes its
// number; the common part finds the return frame (past the error code for the
// vectors that push one), counts the vector, sends external interrupts (any
// vector from 32, and any vector taken inside `hostile_window`, the only place
// IF is set: random PIC programming can put them below 32) an EOI at the local
// APIC and both PICs, and returns from them with IF clear (one interrupt per window: a level
// interrupt nobody acknowledges, or a timer programmed to fire every tick,
// would otherwise keep the guest in its handler for good),
// and for an exception (other than NMI) sends the return to `hostile_recover`,
// which abandons the operation that faulted (and disarms what it may have left
// armed: DF, DR7).
global_asm!(
    r#"
.balign 16
.global hostile_stubs
hostile_stubs:
.set vector, 0
.rept 256
    .balign 16
    .byte 0x68
    .long vector
    jmp hostile_interrupt
    .set vector, vector + 1
.endr

hostile_interrupt:
    push rax
    push rcx
    push rdx
    mov rax, [rsp + 24]
    lea rcx, [rip + HOSTILE_VECTORS]
    lock inc qword ptr [rcx + rax * 8]
    lea rcx, [rsp + 32]
    cmp rax, 32
    jae 2f
    cmp rax, 2
    je 3f
    // Below 32 but taken inside the interrupt window: an external interrupt
    // on a vector the guest's random PIC programming chose (no error code).
    mov rdx, [rcx]
    lea rax, [rip + hostile_window]
    cmp rdx, rax
    jb 1f
    lea rax, [rip + hostile_window_end]
    cmp rdx, rax
    jbe 2f
1:  mov rax, [rsp + 24]
    mov edx, 0x60227d00
    bt edx, eax
    jnc 5f
    add rcx, 8
5:  mov [rip + HOSTILE_LAST_VECTOR], rax
    lea rax, [rip + hostile_recover]
    mov [rcx], rax
    jmp 3f
2:  mov eax, 0xfee000b0
    mov dword ptr [rax], 0
    mov al, 0x20
    out 0xa0, al
    out 0x20, al
    and qword ptr [rcx + 16], -0x201
3:  mov [rsp + 24], rcx
    pop rdx
    pop rcx
    pop rax
    pop rsp
    iretq

// The only place interrupts are enabled.
.global hostile_window
hostile_window:
    sti
    nop
    nop
    nop
    cli
hostile_window_end:
    ret

.global hostile_try
hostile_try:
    push rbx
    push rbp
    push r12
    push r13
    push r14
    push r15
    sub rsp, 8
    mov [rip + HOSTILE_SAVED_RSP], rsp
    mov rax, rdi
    mov rdi, rsi
    call rax
    xor eax, eax
    jmp 4f
.global hostile_recover
hostile_recover:
    mov rsp, [rip + HOSTILE_SAVED_RSP]
    cli
    cld
    xor ecx, ecx
    mov dr7, rcx
    mov rax, [rip + HOSTILE_LAST_VECTOR]
    inc rax
4:  add rsp, 8
    pop r15
    pop r14
    pop r13
    pop r12
    pop rbp
    pop rbx
    ret
"#
);

#[no_mangle]
static mut HOSTILE_VECTORS: [u64; 256] = [0; 256];
#[no_mangle]
static mut HOSTILE_LAST_VECTOR: u64 = 0;
#[no_mangle]
static mut HOSTILE_SAVED_RSP: u64 = 0;

extern "C" {
    static hostile_stubs: u8;
    /// Runs `op(args)`; returns 0, or 1 + the vector of the exception that
    /// abandoned it.
    fn hostile_try(op: extern "C" fn(&Op), args: &Op) -> u64;
    /// STI, three NOPs, CLI: where interrupts are taken (see the handler).
    fn hostile_window();
}

static mut IDT: [u64; 512] = [0; 512];

fn install_idt() {
    let cs: u16;
    // SAFETY: reads the code segment selector.
    unsafe { asm!("mov {0:x}, cs", out(reg) cs) };
    let stubs = addr_of!(hostile_stubs) as u64;
    // SAFETY: single-threaded; nothing else touches the IDT.
    let idt = unsafe { &mut *addr_of_mut!(IDT) };
    for vector in 0..256 {
        let handler = stubs + vector as u64 * 16;
        idt[vector * 2] =
            (handler & 0xffff) | ((cs as u64) << 16) | (0x8e00u64 << 32) | ((handler >> 16) & 0xffff) << 48;
        idt[vector * 2 + 1] = handler >> 32;
    }
    #[repr(C, packed)]
    struct Pointer {
        limit: u16,
        base: u64,
    }
    let pointer = Pointer { limit: 4095, base: idt.as_ptr() as u64 };
    // SAFETY: the IDT is static and complete.
    unsafe { asm!("lidt [{}]", in(reg) &pointer) };
}

/// One operation's arguments, drawn before it runs.
#[derive(Clone, Copy, Default)]
#[repr(C)]
struct Op {
    a: u64,
    b: u64,
    c: u64,
    d: u64,
}

/// Ports whose writes end the VM on purpose (debug exit, reset, ACPI sleep);
/// everything else is fair game.
fn ends_the_vm(port: u16) -> bool {
    matches!(port, 0xf4..=0xf7 | 0xcf9 | 0x64 | 0x92 | 0x600..=0x60b)
}

const INTERESTING_PORTS: [u16; 24] = [
    0x20, 0x21, 0xa0, 0xa1, 0x40, 0x41, 0x42, 0x43, 0x61, 0x70, 0x71, 0x3f8, 0x3f9, 0x3fa, 0x3fb, 0x3fc, 0x3fd, 0x3fe,
    0x3ff, 0x4d0, 0x4d1, 0x80, 0xcf8, 0xcfc,
];

fn random_port(rng: &mut Rng) -> u16 {
    loop {
        let port = if rng.chance(2) { rng.pick(&INTERESTING_PORTS) } else { rng.next() as u16 };
        let port = port.wrapping_add(rng.below(4) as u16);
        if !ends_the_vm(port) && !ends_the_vm(port.wrapping_add(3)) {
            return port;
        }
    }
}

extern "C" fn port_out(op: &Op) {
    let port = op.a as u16;
    // SAFETY: I/O to an emulated port; Basalt sees every one.
    unsafe {
        match op.b {
            0 => asm!("out dx, al", in("dx") port, in("al") op.c as u8),
            1 => asm!("out dx, ax", in("dx") port, in("ax") op.c as u16),
            _ => asm!("out dx, eax", in("dx") port, in("eax") op.c as u32),
        }
    }
}

extern "C" fn port_in(op: &Op) {
    let port = op.a as u16;
    // SAFETY: as in `port_out`.
    unsafe {
        match op.b {
            0 => asm!("in al, dx", in("dx") port, out("al") _),
            1 => asm!("in ax, dx", in("dx") port, out("ax") _),
            _ => asm!("in eax, dx", in("dx") port, out("eax") _),
        }
    }
}

/// The only RAM the devices (and string input) may write: descriptors send
/// buffers only here, so the guest cannot have its own code or stack
/// overwritten and can run to the end.
#[repr(align(4096))]
struct Pages<const N: usize>([[u8; 4096]; N]);
const BUFFER_PAGES: usize = 4;
static mut BUFFERS: Pages<BUFFER_PAGES> = Pages([[0; 4096]; BUFFER_PAGES]);
const BUFFER_BYTES: u64 = BUFFER_PAGES as u64 * 4096;

fn buffers() -> u64 {
    addr_of!(BUFFERS) as u64
}

/// Virtio rings: for each device slot and queue, a page for the descriptor
/// table, one for the available ring and one for the used ring (which only
/// the device writes). Random bytes land in the available rings and in the
/// flags and next fields of descriptors, never in a descriptor's address or
/// length.
const QUEUES: usize = 2;
const RING_PAGES: usize = VIRTIO_SLOTS as usize * QUEUES * 3;
static mut RINGS: Pages<RING_PAGES> = Pages([[0; 4096]; RING_PAGES]);

fn ring_page(slot: u64, queue: u64, which: u64) -> u64 {
    addr_of!(RINGS) as u64 + ((slot * QUEUES as u64 + queue) * 3 + which) * 4096
}

extern "C" fn string_io(op: &Op) {
    let port = op.a as u16;
    let count = op.c % 64;
    // At least 256 bytes from either end: with DF set the string runs down.
    let at = buffers() + 256 + op.d % (BUFFER_BYTES - 512);
    // SAFETY: the string stays inside BUFFERS (count * 4 < 256 bytes from `at`);
    // DF is cleared again before returning.
    unsafe {
        if op.b & 8 != 0 {
            asm!("std");
        }
        match op.b & 7 {
            0 => asm!("rep outsb", in("dx") port, inout("rsi") at => _, inout("rcx") count => _),
            1 => asm!("rep outsw", in("dx") port, inout("rsi") at => _, inout("rcx") count => _),
            2 => asm!("rep outsd", in("dx") port, inout("rsi") at => _, inout("rcx") count => _),
            3 => asm!("rep insb", in("dx") port, inout("rdi") at => _, inout("rcx") count => _),
            4 => asm!("rep insw", in("dx") port, inout("rdi") at => _, inout("rcx") count => _),
            5 => asm!("rep insd", in("dx") port, inout("rdi") at => _, inout("rcx") count => _),
            6 => asm!("outsb", in("dx") port, inout("rsi") at => _),
            _ => asm!("insd", in("dx") port, inout("rdi") at => _),
        }
        asm!("cld");
    }
}

/// Device windows and the space around them, below 4 GiB (identity-mapped).
fn random_mmio(rng: &mut Rng) -> u64 {
    let base = match rng.below(6) {
        0 => 0xfee0_0000,                               // local APIC
        1 => 0xfec0_0000,                               // IOAPIC
        2 | 3 => 0xd000_0000 + rng.below(9) * 0x1000,   // virtio slots and past them
        4 => 0xe000_0000 + (rng.below(0x1000) << 12),   // nothing at all
        _ => 0x4000_0000 + (rng.below(0x8_0000) << 12), // past RAM (under 1 GiB)
    };
    (base + rng.below(0x1000)) & !(rng.pick(&[1u64, 2, 4, 8]) - 1)
}

extern "C" fn mmio_read(op: &Op) {
    // SAFETY: the address is identity-mapped and not RAM: Basalt emulates it.
    unsafe {
        match op.b {
            0 => drop((op.a as *const u8).read_volatile()),
            1 => drop((op.a as *const u16).read_volatile()),
            2 => drop((op.a as *const u32).read_volatile()),
            _ => drop((op.a as *const u64).read_volatile()),
        }
    }
}

extern "C" fn mmio_write(op: &Op) {
    // SAFETY: as in `mmio_read`.
    unsafe {
        match op.b {
            0 => (op.a as *mut u8).write_volatile(op.c as u8),
            1 => (op.a as *mut u16).write_volatile(op.c as u16),
            2 => (op.a as *mut u32).write_volatile(op.c as u32),
            _ => (op.a as *mut u64).write_volatile(op.c),
        }
    }
}

const INTERESTING_MSRS: [u32; 40] = [
    0x10,
    0x1b,
    0x3a,
    0x3b,
    0x48,
    0x49,
    0x8b,
    0xc1,
    0xe7,
    0xe8,
    0xfe,
    0x10a,
    0x10b,
    0x174,
    0x175,
    0x176,
    0x179,
    0x17a,
    0x186,
    0x1a0,
    0x1d9,
    0x200,
    0x201,
    0x250,
    0x277,
    0x2ff,
    0x480,
    0x48d,
    0x6e0,
    0x800,
    0x802,
    0x80b,
    0x830,
    0x838,
    0xc000_0080,
    0xc000_0081,
    0xc000_0100,
    0xc000_0102,
    0xc000_0103,
    0x4b56_4d00,
];

extern "C" fn msr_read(op: &Op) {
    // SAFETY: RDMSR exits (or reads a switched MSR); a bad one is #GP.
    unsafe { asm!("rdmsr", in("ecx") op.a as u32, out("eax") _, out("edx") _) };
}

/// Writes a random value, then puts back what was read (if the write took).
extern "C" fn msr_write(op: &Op) {
    let msr = op.a as u32;
    let (low, high): (u32, u32);
    // SAFETY: see msr_read; the old value is restored below.
    unsafe {
        asm!("rdmsr", in("ecx") msr, out("eax") low, out("edx") high);
        let value = if op.c & 1 == 0 { (((high as u64) << 32) | low as u64) ^ (1 << (op.b % 64)) } else { op.b };
        asm!("wrmsr", in("ecx") msr, in("eax") value as u32, in("edx") (value >> 32) as u32);
        asm!("wrmsr", in("ecx") msr, in("eax") low, in("edx") high);
    }
}

extern "C" fn cpuid(op: &Op) {
    // SAFETY: CPUID exits; RBX is saved around it (LLVM reserves it).
    unsafe {
        asm!("push rbx", "cpuid", "pop rbx", inout("eax") op.a as u32 => _, inout("ecx") op.b as u32 => _,
             out("edx") _)
    };
}

/// Flips bits of a control register and puts it back, in one block so
/// nothing runs in between.
extern "C" fn control_register(op: &Op) {
    let flip = op.b;
    // SAFETY: each register is restored right after the write (a refused
    // write faults first and changes nothing).
    unsafe {
        match op.a % 5 {
            0 => asm!("mov {old}, cr0", "mov {new}, {old}", "xor {new}, {flip}", "mov cr0, {new}", "mov cr0, {old}",
                      old = out(reg) _, new = out(reg) _, flip = in(reg) flip & !0x8000_0001),
            1 => asm!("mov {old}, cr4", "mov {new}, {old}", "xor {new}, {flip}", "mov cr4, {new}", "mov cr4, {old}",
                      old = out(reg) _, new = out(reg) _, flip = in(reg) flip),
            2 => asm!("mov {old}, cr3", "mov {new}, {old}", "xor {new}, {flip}", "mov cr3, {new}", "mov cr3, {old}",
                      old = out(reg) _, new = out(reg) _, flip = in(reg) flip & cr3_flippable()),
            3 => asm!("mov {old}, cr8", "mov cr8, {new}", "mov cr8, {old}", old = out(reg) _, new = in(reg) flip),
            _ => asm!("mov {old}, cr0", "mov cr0, {new}", "mov cr0, {old}",
                      old = out(reg) _, new = in(reg) (flip & !0x8000_0001) | 0x8000_0001),
        }
    }
}

/// The CR3 bits the guest flips: the flags and reserved low bits, and bit 63
/// (no-flush), but not bit 63 on AMD: QEMU's TCG takes it there without the
/// #GP a real CPU raises (PCIDE is off), and its VMRUN then refuses the
/// state the guest left in CR3, which would end this VM for an emulator bug.
fn cr3_flippable() -> u64 {
    let vendor_ebx: u32;
    // SAFETY: CPUID leaf 0 only reads; RBX is saved around it.
    unsafe {
        asm!("push rbx", "cpuid", "mov {0:e}, ebx", "pop rbx", out(reg) vendor_ebx, inout("eax") 0 => _,
             out("ecx") _, out("edx") _)
    };
    if vendor_ebx == u32::from_le_bytes(*b"Auth") {
        0xfff
    } else {
        0x8000_0000_0000_0fff
    }
}

extern "C" fn xsetbv(op: &Op) {
    // SAFETY: XSETBV exits; a refused value is #GP. XCR0 is put back after.
    unsafe {
        asm!("xsetbv", in("ecx") op.b as u32, in("eax") op.a as u32, in("edx") (op.a >> 32) as u32);
        asm!("xsetbv", in("ecx") 0, in("eax") op.c as u32, in("edx") (op.c >> 32) as u32);
    }
}

extern "C" fn debug_registers(op: &Op) {
    // SAFETY: breakpoints armed here fire as #DB, which abandons the
    // operation; DR7 is cleared again either way by the next one.
    unsafe {
        asm!("mov dr0, {}", "mov dr1, {}", "mov dr7, {}", "nop", "mov dr7, {}", in(reg) op.a, in(reg) op.b,
             in(reg) op.c, in(reg) 0u64);
    }
}

extern "C" fn hypercall(op: &Op) {
    let number = [0u64, 1, 3, 4, 5][(op.d % 5) as usize];
    // SAFETY: VMCALL exits; Basalt preserves every register but RAX.
    unsafe {
        asm!("push rbx", "mov rbx, {a}", "vmcall", "pop rbx", a = in(reg) op.a, inout("rax") number => _,
             in("rcx") op.b, in("rdx") op.c)
    };
}

/// Instructions that exit (or should) which a guest has no business using.
extern "C" fn odd_instruction(op: &Op) {
    let memory = buffers();
    // SAFETY: each either faults (#UD, #GP), which abandons the operation, or
    // does nothing the guest relies on; the memory operand is BUFFERS.
    unsafe {
        match op.a % 16 {
            0 => asm!("vmxon [{}]", in(reg) memory),
            1 => asm!("vmclear [{}]", in(reg) memory),
            2 => asm!("vmptrld [{}]", in(reg) memory),
            3 => asm!("vmread {}, {}", out(reg) _, in(reg) op.b),
            4 => asm!("vmwrite {}, {}", in(reg) op.b, in(reg) op.c),
            5 => asm!("vmlaunch"),
            6 => asm!("vmresume"),
            7 => asm!("vmxoff"),
            8 => asm!("invept {}, [{}]", in(reg) op.b & 3, in(reg) memory),
            9 => asm!("invvpid {}, [{}]", in(reg) op.b & 3, in(reg) memory),
            10 => asm!("vmfunc", in("eax") op.b as u32, in("ecx") op.c as u32),
            11 => asm!("push rbx", "getsec", "pop rbx", inout("eax") op.b as u32 => _),
            12 => asm!("invd"),
            13 => asm!("wbinvd"),
            14 => asm!("monitor", "mwait", in("rax") memory, in("ecx") 0, in("edx") 0),
            _ => asm!("rdpmc", in("ecx") op.b as u32, out("eax") _, out("edx") _),
        }
    }
}

/// Lets queued interrupts in for a moment (raise-interrupt hypercalls,
/// timers the guest programmed at random).
extern "C" fn interrupt_window(_: &Op) {
    // SAFETY: every vector has a handler; the window re-disables interrupts.
    unsafe { hostile_window() };
}

const VIRTIO_SLOTS: u64 = 2;

fn virtio_write(slot: u64, offset: u64, value: u32) {
    let address = 0xd000_0000 + slot * 0x1000 + offset;
    // SAFETY: a virtio-mmio register, emulated.
    unsafe { (address as *mut u32).write_volatile(value) };
}

/// Where a ring goes: mostly its own page (sometimes misaligned in it),
/// else somewhere that is not RAM: past 4 GiB, in the device hole, or at the
/// edge of the address space.
fn random_ring_address(rng: &mut Rng, own_page: u64) -> u64 {
    match rng.below(8) {
        0..=4 => own_page,
        5 => own_page + rng.below(64),
        6 => 0xd000_0000 + rng.below(0x2000_0000),
        _ => rng.edge() | 1 << 32,
    }
}

/// A buffer address for a descriptor: in BUFFERS, or not RAM at all.
fn random_buffer_address(rng: &mut Rng) -> u64 {
    match rng.below(4) {
        0 | 1 => buffers() + rng.below(BUFFER_BYTES),
        2 => rng.edge() | 1 << 32,
        _ => 0xd000_0000 + rng.below(0x3000_0000),
    }
}

/// Brings a virtio device up far enough for notifies to be served, with its
/// queues where the generator says.
extern "C" fn virtio_setup(op: &Op) {
    let rng = &mut Rng(op.a);
    let slot = rng.below(VIRTIO_SLOTS);
    virtio_write(slot, 0x70, 0);
    for status in [1, 3] {
        virtio_write(slot, 0x70, status);
    }
    virtio_write(slot, 0x24, 1);
    virtio_write(slot, 0x20, if rng.chance(8) { rng.next() as u32 } else { 1 });
    virtio_write(slot, 0x24, 0);
    virtio_write(slot, 0x20, rng.next() as u32);
    virtio_write(slot, 0x70, 0xb);
    for queue in 0..QUEUES as u64 {
        // Sometimes a queue the device does not have.
        let select = if rng.chance(8) { rng.next() as u32 } else { queue as u32 };
        virtio_write(slot, 0x30, select);
        virtio_write(slot, 0x38, if rng.chance(4) { rng.next() as u32 } else { 1 << rng.below(9) });
        for (which, register) in [0x80, 0x90, 0xa0].into_iter().enumerate() {
            let address = random_ring_address(rng, ring_page(slot, queue, which as u64));
            virtio_write(slot, register, address as u32);
            virtio_write(slot, register + 4, (address >> 32) as u32);
        }
        virtio_write(slot, 0x44, 1);
    }
    virtio_write(slot, 0x70, if rng.chance(8) { rng.next() as u32 } else { 0xf });
}

/// Fills one queue's descriptor table and available ring with random
/// content (buffers in BUFFERS or outside RAM), then notifies a random queue.
extern "C" fn virtio_storm(op: &Op) {
    let rng = &mut Rng(op.a);
    let (slot, queue) = (rng.below(VIRTIO_SLOTS), rng.below(QUEUES as u64));
    // SAFETY: single-threaded; the ring pages are the guest's own memory.
    let rings = unsafe { &mut (*addr_of_mut!(RINGS)).0 };
    let page = |which: u64| ((slot * QUEUES as u64 + queue) * 3 + which) as usize;
    let table = &mut rings[page(0)];
    for _ in 0..rng.below(64) {
        let at = (rng.below(256) * 16) as usize;
        let address = random_buffer_address(rng);
        let length = rng.edge() as u32;
        // Inside BUFFERS a buffer is short and ends with it: the device may
        // write there, and a console may print it (a few KiB of random bytes
        // take the host's serial port seconds, and the guest waits for it).
        // Outside RAM any length goes: the device must refuse it.
        let room = (buffers() + BUFFER_BYTES).checked_sub(address).filter(|_| address >= buffers());
        let length = room.map_or(length, |room| length.min(room as u32).min(64));
        table[at..at + 8].copy_from_slice(&address.to_le_bytes());
        table[at + 8..at + 12].copy_from_slice(&length.to_le_bytes());
        table[at + 12..at + 14].copy_from_slice(&(rng.next() as u16 & 7).to_le_bytes());
        table[at + 14..at + 16].copy_from_slice(&(rng.below(300) as u16).to_le_bytes());
    }
    for _ in 0..rng.below(8) {
        // Flags or next of some descriptor (not its length: see above).
        let at = (rng.below(256) * 16 + 12 + rng.below(2) * 2) as usize;
        table[at..at + 2].copy_from_slice(&(rng.next() as u16).to_le_bytes());
    }
    let available = &mut rings[page(1)];
    for _ in 0..rng.below(32) {
        let at = rng.below(4094) as usize;
        available[at..at + 2].copy_from_slice(&(rng.next() as u16).to_le_bytes());
    }
    if rng.chance(2) {
        // Publish a few entries the usual way too.
        let index = u16::from_le_bytes([available[2], available[3]]);
        available[2..4].copy_from_slice(&index.wrapping_add(rng.below(8) as u16).to_le_bytes());
    }
    virtio_write(slot, 0x50, if rng.chance(8) { rng.next() as u32 } else { queue as u32 });
}

fn main() -> ! {
    say!("hostile: seed {SEED:#x}, {OPERATIONS} operations");
    install_idt();
    let xcr0 = xstate::enable_all();
    let mut rng = Rng(SEED);
    let mut abandoned = 0u64;
    for done in 0..OPERATIONS {
        if done > 0 && done % 1000 == 0 {
            say!("hostile: {done} operations, {abandoned} abandoned by a fault");
        }
        let mut op = Op { a: rng.next(), b: rng.next(), c: rng.next(), d: rng.next() };
        let kind = rng.below(20);
        let run: extern "C" fn(&Op) = match kind {
            0 | 1 => {
                op.a = random_port(&mut rng) as u64;
                op.b %= 3;
                port_out
            }
            2 | 3 => {
                op.a = random_port(&mut rng) as u64;
                op.b %= 3;
                port_in
            }
            4 => {
                op.a = random_port(&mut rng) as u64;
                string_io
            }
            5 | 6 => {
                op.a = random_mmio(&mut rng);
                op.b %= 4;
                mmio_read
            }
            7 | 8 => {
                op.a = random_mmio(&mut rng);
                op.b %= 4;
                op.c = rng.edge();
                mmio_write
            }
            9 => {
                op.a = if rng.chance(2) { rng.pick(&INTERESTING_MSRS) as u64 } else { op.a };
                msr_read
            }
            10 => {
                op.a = rng.pick(&INTERESTING_MSRS) as u64;
                op.b = if op.c & 1 == 0 { rng.below(64) } else { rng.edge() };
                msr_write
            }
            11 => {
                op.a =
                    rng.pick(&[0u64, 1, 4, 6, 7, 0xb, 0xd, 0x14, 0x4000_0000, 0x8000_0000, 0x8000_0008]) + rng.below(3);
                op.a = if rng.chance(4) { rng.next() } else { op.a };
                op.b = rng.edge();
                cpuid
            }
            12 => {
                op.b = if rng.chance(2) { 1 << rng.below(64) } else { rng.edge() };
                control_register
            }
            13 => {
                op.a = if rng.chance(2) { rng.below(1 << 20) } else { rng.edge() };
                op.b = if rng.chance(8) { rng.next() } else { 0 };
                op.c = xcr0;
                xsetbv
            }
            14 => {
                op.c = rng.edge() & 0xffff_ffff;
                debug_registers
            }
            15 => {
                op.a = if rng.chance(2) { rng.below(32 << 20) } else { rng.edge() };
                op.b = if rng.chance(2) { rng.below(512) } else { rng.edge() };
                hypercall
            }
            16 => odd_instruction,
            17 => interrupt_window,
            18 => virtio_setup,
            _ => virtio_storm,
        };
        if TRACE_FROM.is_some_and(|from| done >= from) {
            say!("hostile: op {done} kind {kind} {:#x} {:#x} {:#x} {:#x}", op.a, op.b, op.c, op.d);
        }
        // SAFETY: the operations are written for `hostile_try`.
        if unsafe { hostile_try(run, &op) } != 0 {
            abandoned += 1;
        }
    }
    // SAFETY: read after the run; the handlers no longer matter.
    let vectors = unsafe { &*addr_of!(HOSTILE_VECTORS) };
    say!(
        "hostile: done, {OPERATIONS} operations from seed {SEED:#x}, {abandoned} abandoned by a fault \
         (#UD {}, #GP {}, #PF {}, #DB {}), {} interrupts, {} NMIs",
        vectors[6],
        vectors[13],
        vectors[14],
        vectors[1],
        vectors[32..].iter().sum::<u64>(),
        vectors[2]
    );
    vmcall(0, 0, 0);
    exit(0x10)
}
