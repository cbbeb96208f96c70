//! What happens when the hypervisor itself goes wrong: stop the other CPUs, print
//! a report a person can act on, and end the run with a failure status.

use crate::log::write_crashing;
use crate::trap::TrapFrame;
use crate::{apic, memory, percpu, platform_exit};
use core::sync::atomic::{AtomicBool, Ordering};

static CRASHING: AtomicBool = AtomicBool::new(false);

pub fn in_progress() -> bool {
    CRASHING.load(Ordering::Acquire)
}

const EXCEPTION_NAMES: [(&str, &str); 32] = [
    ("#DE", "divide error"),
    ("#DB", "debug"),
    ("NMI", "non-maskable interrupt"),
    ("#BP", "breakpoint"),
    ("#OF", "overflow"),
    ("#BR", "bound range exceeded"),
    ("#UD", "invalid opcode"),
    ("#NM", "device not available"),
    ("#DF", "double fault"),
    ("-", "coprocessor segment overrun"),
    ("#TS", "invalid TSS"),
    ("#NP", "segment not present"),
    ("#SS", "stack-segment fault"),
    ("#GP", "general protection fault"),
    ("#PF", "page fault"),
    ("-", "reserved"),
    ("#MF", "x87 floating-point error"),
    ("#AC", "alignment check"),
    ("#MC", "machine check"),
    ("#XM", "SIMD floating-point error"),
    ("#VE", "virtualization exception"),
    ("#CP", "control protection"),
    ("-", "reserved"),
    ("-", "reserved"),
    ("-", "reserved"),
    ("-", "reserved"),
    ("-", "reserved"),
    ("-", "reserved"),
    ("#HV", "hypervisor injection"),
    ("#VC", "VMM communication"),
    ("#SX", "security exception"),
    ("-", "reserved"),
];

/// Marks the crash and stops every other CPU. Returns false if another CPU is
/// already crashing, in which case this one should just stop.
fn begin() -> bool {
    if CRASHING.swap(true, Ordering::AcqRel) {
        return false;
    }
    apic::stop_other_cpus();
    true
}

pub fn stopped_by_other_cpu() -> ! {
    platform_exit::halt_forever()
}

pub fn exception(frame: &TrapFrame) -> ! {
    if !begin() {
        stopped_by_other_cpu();
    }
    let vector = frame.vector as usize;
    let (mnemonic, name) = EXCEPTION_NAMES[vector];
    let cpu = percpu::current_index();
    write_crashing(format_args!(
        "\n!!! BASALT CRASH on cpu{cpu}: EXCEPTION {mnemonic} {name} (vector {vector}), error code {:#x}{}\n",
        frame.error_code,
        if vector == 14 { page_fault_detail(frame.error_code) } else { "" },
    ));
    let cr2 = x86_64::registers::control::Cr2::read_raw();
    let (cr3, _) = x86_64::registers::control::Cr3::read_raw();
    write_crashing(format_args!(
        "    RIP {:#018x}  CS {:#06x}  RFLAGS {:#010x}\n    RSP {:#018x}  SS {:#06x}\n    CR2 {:#018x}  CR3 {:#018x}\n",
        frame.rip,
        frame.cs,
        frame.rflags,
        frame.rsp,
        frame.ss,
        cr2,
        cr3.start_address().as_u64()
    ));
    let regs = [
        ("RAX", frame.rax),
        ("RBX", frame.rbx),
        ("RCX", frame.rcx),
        ("RDX", frame.rdx),
        ("RSI", frame.rsi),
        ("RDI", frame.rdi),
        ("RBP", frame.rbp),
        ("R8 ", frame.r8),
        ("R9 ", frame.r9),
        ("R10", frame.r10),
        ("R11", frame.r11),
        ("R12", frame.r12),
        ("R13", frame.r13),
        ("R14", frame.r14),
        ("R15", frame.r15),
    ];
    for row in regs.chunks(3) {
        write_crashing(format_args!("   "));
        for (name, value) in row {
            write_crashing(format_args!(" {name} {value:#018x}"));
        }
        write_crashing(format_args!("\n"));
    }
    backtrace(frame.rip, frame.rbp);
    finish()
}

fn page_fault_detail(code: u64) -> &'static str {
    match (code & 1 != 0, code & 2 != 0, code & 16 != 0) {
        (_, _, true) => " [instruction fetch]",
        (false, false, _) => " [read of a not-present page]",
        (false, true, _) => " [write to a not-present page]",
        (true, false, _) => " [read: protection violation]",
        (true, true, _) => " [write: protection violation]",
    }
}

pub fn panic(info: &core::panic::PanicInfo) -> ! {
    if !begin() {
        stopped_by_other_cpu();
    }
    let cpu = percpu::current_index();
    write_crashing(format_args!("\n!!! BASALT CRASH on cpu{cpu}: PANIC {info}\n"));
    let rbp: u64;
    // SAFETY: reads the frame pointer register.
    unsafe { core::arch::asm!("mov {}, rbp", out(reg) rbp) };
    backtrace(0, rbp);
    finish()
}

/// Walks saved frame pointers (the kernel is built with them) while each frame
/// lies in mapped kernel memory.
fn backtrace(rip: u64, mut rbp: u64) {
    write_crashing(format_args!("    backtrace:"));
    if rip != 0 {
        write_crashing(format_args!(" {rip:#x}"));
    }
    for _ in 0..16 {
        let readable = rbp != 0 && rbp.is_multiple_of(8) && memory::is_mapped(rbp) && memory::is_mapped(rbp + 15);
        if !readable {
            break;
        }
        // SAFETY: both words of the frame record were checked to be mapped.
        let (next, ret) = unsafe { (*(rbp as *const u64), *((rbp + 8) as *const u64)) };
        if ret == 0 {
            break;
        }
        write_crashing(format_args!(" {ret:#x}"));
        if next <= rbp {
            break;
        }
        rbp = next;
    }
    write_crashing(format_args!("\n"));
}

fn finish() -> ! {
    write_crashing(format_args!("basalt: FAILED: the hypervisor crashed; stopping\n"));
    platform_exit::exit(platform_exit::Status::Failure)
}
