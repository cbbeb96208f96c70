//! What the long-mode test guests share: COM1 output, Basalt's hypercalls, the
//! debug-exit port, and an entry stub that calls `guest_main`.
#![no_std]

use core::arch::asm;
use core::fmt::{self, Write};

pub fn outb(port: u16, value: u8) {
    // SAFETY: port I/O in a guest; Basalt emulates every port.
    unsafe { asm!("out dx, al", in("dx") port, in("al") value, options(nomem, nostack)) }
}

pub fn inb(port: u16) -> u8 {
    let value: u8;
    // SAFETY: as in `outb`.
    unsafe { asm!("in al, dx", in("dx") port, out("al") value, options(nomem, nostack)) }
    value
}

pub struct Com1;

impl Write for Com1 {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for b in s.bytes() {
            outb(0x3f8, b);
        }
        Ok(())
    }
}

#[macro_export]
macro_rules! println {
    ($($arg:tt)*) => {{
        use core::fmt::Write;
        let _ = writeln!($crate::Com1, $($arg)*);
    }};
}

/// Basalt hypercall: RAX = number, RBX/RCX/RDX = arguments, result in RAX.
pub fn vmcall(number: u64, a: u64, b: u64) -> u64 {
    let result: u64;
    // SAFETY: VMCALL exits to Basalt, which preserves every register but RAX.
    unsafe {
        asm!("push rbx", "mov rbx, {a}", "vmcall", "pop rbx", a = in(reg) a, inout("rax") number => result,
             in("rcx") b, options(nostack))
    }
    result
}

/// Stops the VM through the debug-exit port: status `(code << 1) | 1`.
pub fn exit(code: u8) -> ! {
    outb(0xf4, code);
    loop {
        // SAFETY: halting with interrupts off; Basalt stops the VM.
        unsafe { asm!("cli", "hlt") }
    }
}

pub fn check(name: &str, ok: bool) -> bool {
    println!("check {name}: {}", if ok { "ok" } else { "FAILED" });
    ok
}

/// A line for the print hypercall, formatted on the stack (cut at 256
/// bytes, the hypercall's limit). It reaches the log even when COM1 has been
/// reprogrammed, which the hostile guest does on purpose.
pub struct HypercallLine {
    bytes: [u8; 256],
    len: usize,
}

impl HypercallLine {
    pub const fn new() -> Self {
        HypercallLine { bytes: [0; 256], len: 0 }
    }

    pub fn send(&self) {
        vmcall(1, self.bytes.as_ptr() as u64, self.len as u64);
    }
}

impl Default for HypercallLine {
    fn default() -> Self {
        Self::new()
    }
}

impl Write for HypercallLine {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let n = s.len().min(self.bytes.len() - self.len);
        self.bytes[self.len..self.len + n].copy_from_slice(&s.as_bytes()[..n]);
        self.len += n;
        Ok(())
    }
}

/// `println!` through the print hypercall (see `HypercallLine`).
#[macro_export]
macro_rules! say {
    ($($arg:tt)*) => {{
        use core::fmt::Write;
        let mut line = $crate::HypercallLine::new();
        let _ = write!(line, $($arg)*);
        line.send();
    }};
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo) -> ! {
    println!("guest panic: {info}");
    say!("guest panic: {info}");
    exit(0x7f)
}

/// Entry: a fixed stack is not needed (Basalt sets RSP below its setup area).
#[macro_export]
macro_rules! entry {
    ($main:path) => {
        #[no_mangle]
        pub extern "C" fn _start() -> ! {
            $main()
        }
    };
}

/// XSAVE state components the guest can enable.
pub mod xstate {
    use core::arch::asm;
    use core::arch::x86_64::__cpuid_count;

    pub const AVX: u64 = 1 << 2;
    pub const AVX512: u64 = 0b111 << 5;

    /// Sets CR4.OSFXSR/OSXMMEXCPT/OSXSAVE and XCR0 to every component CPUID
    /// offers; returns XCR0.
    pub fn enable_all() -> u64 {
        let leaf = __cpuid_count(0xd, 0);
        let offered = ((leaf.edx as u64) << 32) | leaf.eax as u64;
        // SAFETY: what an OS does to use SIMD state; XCR0 is what CPUID offers.
        unsafe {
            asm!("mov {t}, cr4", "or {t}, {bits}", "mov cr4, {t}", t = out(reg) _, bits = in(reg) 0x40600u64);
            asm!("xsetbv", in("ecx") 0, in("eax") offered as u32, in("edx") (offered >> 32) as u32);
            core::arch::x86_64::_xgetbv(0)
        }
    }
}

pub fn rdtsc() -> u64 {
    // SAFETY: RDTSC only reads the time-stamp counter.
    unsafe { core::arch::x86_64::_rdtsc() }
}

/// TSC ticks per millisecond, from Basalt's tsc-khz hypercall.
pub fn tsc_per_ms() -> u64 {
    vmcall(3, 0, 0).max(1)
}

/// A guest that sleeps in HLT between local APIC timer interrupts (TSC-deadline
/// mode, vector 0x30) on a fixed grid of deadlines, and measures how late
/// each wake-up came: what a timer-driven workload sees of the host's
/// scheduling.
pub mod timer {
    use crate::{rdtsc, tsc_per_ms};
    use core::arch::asm;

    core::arch::global_asm!(
        r#"
    .global basalt_timer_interrupt
basalt_timer_interrupt:
    push rax
    lock inc qword ptr [rip + BASALT_TIMER_TICKS]
    mov eax, 0xfee000b0
    mov dword ptr [rax], 0
    pop rax
    iretq
"#
    );

    #[no_mangle]
    static mut BASALT_TIMER_TICKS: u64 = 0;

    extern "C" {
        fn basalt_timer_interrupt();
    }

    const VECTOR: usize = 0x30;
    const LAPIC: u64 = 0xfee0_0000;
    const SVR: u64 = 0xf0;
    const LVT_TIMER: u64 = 0x320;
    const TSC_DEADLINE_MODE: u32 = 2 << 17;
    const IA32_TSC_DEADLINE: u32 = 0x6e0;

    static mut IDT: [u64; 512] = [0; 512];

    fn ticks() -> u64 {
        // SAFETY: written only by the interrupt handler, read whole.
        unsafe { core::ptr::addr_of!(BASALT_TIMER_TICKS).read_volatile() }
    }

    fn lapic_write(register: u64, value: u32) {
        // SAFETY: the local APIC page is identity-mapped (Basalt's set-up
        // tables map the first 4 GiB).
        unsafe { ((LAPIC + register) as *mut u32).write_volatile(value) }
    }

    fn install() {
        let address = basalt_timer_interrupt as *const () as u64;
        // A 64-bit interrupt gate in the VMM's code segment (0x10).
        let low = (address & 0xffff) | (0x10 << 16) | (0x8e00u64 << 32) | ((address >> 16) & 0xffff) << 48;
        #[repr(C, packed)]
        struct Pointer {
            limit: u16,
            base: u64,
        }
        // SAFETY: the guest runs one vCPU and nothing else touches its IDT;
        // LIDT loads the table just built.
        unsafe {
            let idt = &mut *core::ptr::addr_of_mut!(IDT);
            idt[VECTOR * 2] = low;
            idt[VECTOR * 2 + 1] = address >> 32;
            let pointer = Pointer { limit: 256 * 16 - 1, base: core::ptr::addr_of!(IDT) as u64 };
            asm!("lidt [{}]", in(reg) &pointer);
        }
        lapic_write(SVR, 0x1ff);
        lapic_write(LVT_TIMER, TSC_DEADLINE_MODE | VECTOR as u32);
    }

    /// Arms the timer for TSC `deadline` (one already passed fires at once).
    fn arm(deadline: u64) {
        // SAFETY: IA32_TSC_DEADLINE exists on every CPU Basalt offers the
        // guest (TSC-deadline mode, set by `install`).
        unsafe {
            asm!("wrmsr", in("ecx") IA32_TSC_DEADLINE, in("eax") deadline as u32, in("edx") (deadline >> 32) as u32)
        };
    }

    /// Waits in HLT, interrupts on only there, until the tick count moves
    /// past `before`.
    fn wait_for_tick(before: u64) {
        while ticks() == before {
            // SAFETY: STI then HLT waits for an interrupt (STI's
            // one-instruction shadow means none slips in between).
            unsafe { asm!("sti", "hlt", "cli") };
        }
    }

    /// `rounds` times: arms a deadline already passed (its interrupt is
    /// requested at once, with interrupts off), makes an exit with port 0x80
    /// so that the next entry starts at its STI, then STI; HLT. The interrupt
    /// must come after the HLT (STI's one-instruction shadow), waking it; one
    /// taken before would leave it halted for good, nothing else being armed.
    pub fn wake_after_sti(rounds: u32) {
        install();
        for _ in 0..rounds {
            let before = ticks();
            arm(rdtsc());
            // SAFETY: port 0x80 is the POST port (nothing there but the
            // exit); then STI; HLT as in `wait_for_tick`.
            unsafe { asm!("out 0x80, al", "sti", "hlt", "cli", in("al") 0u8) };
            wait_for_tick(before);
        }
    }

    /// How late the wake-ups came, in microseconds.
    pub struct Lateness {
        pub worst_us: u64,
        pub mean_us: u64,
    }

    /// Sleeps `count` periods of `period_us` after a warm-up one, each to its
    /// deadline on a fixed grid (a deadline already passed moves the grid on).
    pub fn sleep(period_us: u64, count: u32) -> Lateness {
        install();
        let per_ms = tsc_per_ms();
        let period = (per_ms * period_us / 1000).max(1);
        let (mut worst, mut total) = (0u64, 0u64);
        let mut deadline = rdtsc() + period;
        // Tick 0 is a warm-up, not counted: its deadline is set while the
        // guest is still starting up, runnable rather than asleep (on an
        // emulator its first slices run long, and it then waits its turn).
        // Lateness counts from the first wake-up out of HLT on.
        for tick in 0..=count {
            let before = ticks();
            arm(deadline);
            wait_for_tick(before);
            let late = rdtsc().saturating_sub(deadline);
            if tick > 0 {
                worst = worst.max(late);
                total += late;
            }
            deadline += period;
            let now = rdtsc();
            if deadline <= now {
                deadline = now + period;
            }
        }
        let us = |ticks: u64| ticks * 1000 / per_ms;
        Lateness { worst_us: us(worst), mean_us: us(total / count.max(1) as u64) }
    }
}
