//! Exercises every exit handler Basalt has from 64-bit mode and reports each
//! check on COM1; exits with status 33 when all pass, 35 otherwise.
#![no_std]
#![no_main]

use basalt_test_guests::{check, entry, exit, inb, println, vmcall};
use core::arch::asm;
use core::arch::x86_64::{__cpuid, __cpuid_count};

entry!(main);

// Interrupt handlers: vector 0x40 counts; the NMI handler counts and, the first
// time, raises another NMI while NMIs are still blocked by this one, so it can
// only arrive after IRETQ (through an NMI-window exit).
core::arch::global_asm!(
    r#"
.global interrupt_0x40
interrupt_0x40:
    lock inc qword ptr [rip + INTERRUPTS]
    iretq
.global nmi_handler
nmi_handler:
    lock inc qword ptr [rip + NMIS]
    cmp qword ptr [rip + NMIS], 1
    jne 1f
    push rax
    mov eax, 5
    vmcall
    cmp qword ptr [rip + NMIS], 1
    jne 2f
    lock inc qword ptr [rip + NMI_WAITED]
2:  pop rax
1:  iretq
"#
);

#[no_mangle]
static mut INTERRUPTS: u64 = 0;
#[no_mangle]
static mut NMIS: u64 = 0;
#[no_mangle]
static mut NMI_WAITED: u64 = 0;

extern "C" {
    fn interrupt_0x40();
    fn nmi_handler();
}

static mut IDT: [u64; 512] = [0; 512];

fn set_gate(vector: usize, handler: unsafe extern "C" fn()) {
    let address = handler as usize as u64;
    let low = (address & 0xffff) | (0x10 << 16) | (0x8e00u64 << 32) | ((address >> 16) & 0xffff) << 48;
    // SAFETY: the guest is single-threaded and nothing else touches the IDT.
    unsafe {
        let idt = &mut *core::ptr::addr_of_mut!(IDT);
        idt[vector * 2] = low;
        idt[vector * 2 + 1] = address >> 32;
    }
}

fn read(counter: *const u64) -> u64 {
    // SAFETY: counters written only by the handlers above.
    unsafe { counter.read_volatile() }
}

/// Self-interrupts through hypercalls 4 and 5 exercise injection and both windows.
fn interrupts() -> bool {
    set_gate(0x40, interrupt_0x40);
    set_gate(2, nmi_handler);
    #[repr(C, packed)]
    struct Pointer {
        limit: u16,
        base: u64,
    }
    let pointer = Pointer { limit: 256 * 16 - 1, base: core::ptr::addr_of!(IDT) as u64 };
    // SAFETY: loads the IDT built above.
    unsafe { asm!("lidt [{}]", in(reg) &pointer) };
    let mut ok = true;
    // SAFETY: interrupts are off while the interrupt is raised.
    unsafe { asm!("cli") };
    vmcall(4, 0x40, 0);
    ok &= check("interrupt waits while IF=0", read(core::ptr::addr_of!(INTERRUPTS)) == 0);
    // SAFETY: the handler is installed; STI opens the interrupt window.
    unsafe { asm!("sti", "nop", "cli") };
    ok &= check("interrupt delivered through the window", read(core::ptr::addr_of!(INTERRUPTS)) == 1);
    vmcall(5, 0, 0);
    ok &= check("nmi delivered, second nmi after iret", read(core::ptr::addr_of!(NMIS)) == 2);
    ok &= check("nmi held while blocked", read(core::ptr::addr_of!(NMI_WAITED)) == 1);
    ok &= check("bad vector refused", vmcall(4, 3, 0) == u64::MAX);
    ok
}

fn rdmsr(msr: u32) -> u64 {
    let (lo, hi): (u32, u32);
    // SAFETY: only MSRs Basalt emulates are read.
    unsafe { asm!("rdmsr", in("ecx") msr, out("eax") lo, out("edx") hi) };
    ((hi as u64) << 32) | lo as u64
}

fn main() -> ! {
    println!("long mode guest: hello");
    let mut ok = true;

    // CPUID: hypervisor present, Basalt's signature, VT-x hidden, TSC leaves.
    let leaf1 = __cpuid(1);
    ok &= check("cpuid hypervisor bit", leaf1.ecx & (1 << 31) != 0);
    ok &= check("cpuid hides vmx", leaf1.ecx & (1 << 5) == 0);
    let hv = __cpuid(0x4000_0000);
    let mut signature = [0u8; 12];
    signature[..4].copy_from_slice(&hv.ebx.to_le_bytes());
    signature[4..8].copy_from_slice(&hv.ecx.to_le_bytes());
    signature[8..].copy_from_slice(&hv.edx.to_le_bytes());
    ok &= check("cpuid signature BasaltHVisor", &signature == b"BasaltHVisor");
    let tsc = __cpuid_count(0x15, 0);
    ok &= check("cpuid 0x15 tsc frequency", tsc.ecx != 0 && tsc.eax != 0 && tsc.ebx != 0);
    println!("tsc {} kHz (cpuid 0x40000010)", __cpuid(0x4000_0010).eax);

    // Hypercalls.
    ok &= check("vmcall version", vmcall(0, 0, 0) == 0x0001_0000);
    let message = b"printed by hypercall";
    ok &= check("vmcall print", vmcall(1, message.as_ptr() as u64, message.len() as u64) == message.len() as u64);
    ok &= check("vmcall tsc-khz", vmcall(3, 0, 0) > 0);

    // MSRs: EFER says long mode; the APIC base is the default.
    ok &= check("rdmsr efer long mode", rdmsr(0xc000_0080) & 0x500 == 0x500);
    ok &= check("rdmsr apic base", rdmsr(0x1b) & !0xfff == 0xfee0_0000);

    // CR0.NE is pinned to 1 by VMX and the guest started seeing 0: setting it
    // differs from the read shadow, so it exits, and the guest then sees 1.
    let (before, after): (u64, u64);
    // SAFETY: CR0.NE only changes how x87 errors are reported.
    unsafe {
        asm!("mov {b}, cr0", "mov {t}, {b}", "or {t}, 0x20", "mov cr0, {t}", "mov {a}, cr0",
             b = out(reg) before, t = out(reg) _, a = out(reg) after);
    }
    ok &= check("cr0 write through the shadow", before & 0x20 == 0 && after & 0x20 != 0);

    // XSETBV: turn on SSE state in XCR0 (needs CR4.OSXSAVE first).
    // SAFETY: enabling OSXSAVE and x87|SSE in XCR0 is what any OS does.
    let xcr0 = unsafe {
        asm!("mov {t}, cr4", "or {t}, 0x40000", "mov cr4, {t}", t = out(reg) _);
        asm!("xsetbv", in("ecx") 0, in("eax") 3, in("edx") 0);
        core::arch::x86_64::_xgetbv(0)
    };
    ok &= check("xsetbv", xcr0 == 3);

    // Port I/O: an unclaimed port floats high; string output with REP.
    ok &= check("unclaimed port reads 0xff", inb(0x80) == 0xff);
    let line = b"written with rep outsb\n";
    // SAFETY: REP OUTSB from our own buffer to COM1.
    unsafe { asm!("rep outsb", in("dx") 0x3f8u16, inout("rsi") line.as_ptr() => _, inout("rcx") line.len() => _) };

    // MMIO with nothing behind it (above the virtio slots at 0xd000_0000, below
    // the IOAPIC): reads are all-ones, writes are dropped.
    let hole = 0xe000_0000 as *mut u32;
    // SAFETY: Basalt's identity map covers this address; it is not RAM.
    let value = unsafe {
        hole.write_volatile(0x1234_5678);
        hole.read_volatile()
    };
    ok &= check("unclaimed mmio reads all-ones", value == 0xffff_ffff);
    let byte = 0xe000_0010 as *const u8;
    // SAFETY: as above.
    ok &= check("unclaimed mmio byte read", unsafe { byte.read_volatile() } == 0xff);

    ok &= interrupts();

    println!("long mode guest: {}", if ok { "all checks passed" } else { "some checks FAILED" });
    exit(if ok { 0x10 } else { 0x11 })
}
