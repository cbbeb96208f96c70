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
