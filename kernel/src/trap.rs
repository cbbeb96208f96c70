//! Interrupt and exception entry. Every vector Basalt uses has a small assembly
//! stub that saves all general registers into a [`TrapFrame`] and calls
//! [`trap_dispatch`]; exceptions end in a crash report, device vectors go to
//! their handlers.

use crate::{apic, crash, gdt, percpu, pic};
use core::sync::atomic::Ordering;

/// Local APIC timer.
pub const VECTOR_TIMER: u8 = 0x20;
/// Test IPI: the receiver counts it.
pub const VECTOR_PING: u8 = 0xf0;
/// Stop IPI: the receiver halts (sent when another CPU crashed).
pub const VECTOR_STOP: u8 = 0xf1;
pub const VECTOR_SPURIOUS: u8 = 0xff;

/// Registers as the stubs leave them on the stack, lowest address first.
#[repr(C)]
#[derive(Debug)]
pub struct TrapFrame {
    pub rax: u64,
    pub rbx: u64,
    pub rcx: u64,
    pub rdx: u64,
    pub rsi: u64,
    pub rdi: u64,
    pub rbp: u64,
    pub r8: u64,
    pub r9: u64,
    pub r10: u64,
    pub r11: u64,
    pub r12: u64,
    pub r13: u64,
    pub r14: u64,
    pub r15: u64,
    pub vector: u64,
    pub error_code: u64,
    // Pushed by the CPU:
    pub rip: u64,
    pub cs: u64,
    pub rflags: u64,
    pub rsp: u64,
    pub ss: u64,
}

// The stubs. Vectors where the CPU pushes an error code skip the dummy push, so
// every frame has the same shape. The CPU aligns RSP to 16 before pushing its
// 5-word frame; with error code, vector and 15 registers the stack is 16-aligned
// again at the `call`, as the ABI wants.
core::arch::global_asm!(
    r#"
.macro trap_stub vector, has_error_code
trap_stub_\vector:
    .if \has_error_code == 0
    push 0
    .endif
    push \vector
    jmp trap_common
.endm

.section .text.trap_stubs, "ax"
trap_common:
    push r15
    push r14
    push r13
    push r12
    push r11
    push r10
    push r9
    push r8
    push rbp
    push rdi
    push rsi
    push rdx
    push rcx
    push rbx
    push rax
    mov rdi, rsp
    cld
    call {dispatch}
    pop rax
    pop rbx
    pop rcx
    pop rdx
    pop rsi
    pop rdi
    pop rbp
    pop r8
    pop r9
    pop r10
    pop r11
    pop r12
    pop r13
    pop r14
    pop r15
    add rsp, 16
    iretq

.irp v, 0,1,2,3,4,5,6,7,9,15,16,18,19,20,22,23,24,25,26,27,28,31,32,231,239,240,241,255
trap_stub \v, 0
.endr
.irp v, 8,10,11,12,13,14,17,21,29,30
trap_stub \v, 1
.endr

// (vector, stub address) pairs for building the IDT. Writable section: the
// addresses need load-time relocation in a position-independent kernel.
.section .data.trap_stub_table, "aw"
.balign 8
.global trap_stub_table
trap_stub_table:
.irp v, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31,32,231,239,240,241,255
    .quad \v
    .quad trap_stub_\v
.endr
.global trap_stub_table_end
trap_stub_table_end:
.text
"#,
    dispatch = sym trap_dispatch,
);

extern "C" {
    static trap_stub_table: [[u64; 2]; 0];
    static trap_stub_table_end: u8;
}

#[repr(C)]
#[derive(Clone, Copy)]
struct Gate {
    offset_low: u16,
    selector: u16,
    ist: u8,
    type_attr: u8,
    offset_mid: u16,
    offset_high: u32,
    reserved: u32,
}

#[repr(C, align(16))]
struct Idt([Gate; 256]);

static IDT: spin::Once<Idt> = spin::Once::new();

fn ist_for(vector: u8) -> u16 {
    match vector {
        8 => gdt::IST_DOUBLE_FAULT,
        2 => gdt::IST_NMI,
        18 => gdt::IST_MACHINE_CHECK,
        _ => 0,
    }
}

/// Builds the IDT once and loads it on this CPU.
pub fn load_idt() {
    let idt = IDT.call_once(|| {
        let empty =
            Gate { offset_low: 0, selector: 0, ist: 0, type_attr: 0, offset_mid: 0, offset_high: 0, reserved: 0 };
        let mut idt = Idt([empty; 256]);
        // SAFETY: the table is defined above in global_asm as (vector, address) pairs.
        let stubs = unsafe {
            let start = core::ptr::addr_of!(trap_stub_table) as *const [u64; 2];
            let end = core::ptr::addr_of!(trap_stub_table_end) as *const [u64; 2];
            core::slice::from_raw_parts(start, end.offset_from(start) as usize)
        };
        for &[vector, addr] in stubs {
            idt.0[vector as usize] = Gate {
                offset_low: addr as u16,
                selector: gdt::KERNEL_CODE.0,
                ist: ist_for(vector as u8) as u8,
                type_attr: 0x8e, // present, ring 0, 64-bit interrupt gate
                offset_mid: (addr >> 16) as u16,
                offset_high: (addr >> 32) as u32,
                reserved: 0,
            };
        }
        idt
    });
    let pointer = x86_64::structures::DescriptorTablePointer {
        limit: (core::mem::size_of::<Idt>() - 1) as u16,
        base: x86_64::VirtAddr::from_ptr(idt),
    };
    // SAFETY: the IDT is 'static and its gates point at the stubs above.
    unsafe { x86_64::instructions::tables::lidt(&pointer) };
}

extern "C" fn trap_dispatch(frame: &mut TrapFrame) {
    match frame.vector as u8 {
        VECTOR_TIMER => {
            if let Some(cpu) = percpu::current() {
                cpu.timer_ticks.fetch_add(1, Ordering::Relaxed);
            }
            apic::end_of_interrupt();
        }
        VECTOR_PING => {
            if let Some(cpu) = percpu::current() {
                cpu.ipis_received.fetch_add(1, Ordering::Release);
            }
            apic::end_of_interrupt();
        }
        VECTOR_STOP => crash::stopped_by_other_cpu(),
        // NMIs are only sent to stop CPUs during a crash; otherwise report them.
        2 if crash::in_progress() => crash::stopped_by_other_cpu(),
        // Spurious interrupts get no EOI; the masked PIC can still raise IRQ 7/15.
        VECTOR_SPURIOUS | pic::VECTOR_SPURIOUS_PRIMARY | pic::VECTOR_SPURIOUS_SECONDARY => {}
        0..=31 => crash::exception(frame),
        _ => {
            log::warn!("unexpected interrupt vector {:#x}", frame.vector);
            apic::end_of_interrupt();
        }
    }
}
