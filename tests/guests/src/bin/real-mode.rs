//! A 16-bit guest started in real mode at 0x7c00 (unrestricted guest): REP OUTSB
//! to COM1, CPUID, a hypercall, an unclaimed port; exit status 33 on success.
#![no_std]
#![no_main]

core::arch::global_asm!(
    r#"
.section .text.boot, "ax"
.code16
.global start
start:
    cli
    xorw %ax, %ax
    movw %ax, %ds
    movw %ax, %es
    movw %ax, %ss
    movw $0x7c00, %sp
    cld
    movw $hello, %si
    movw $(hello_end - hello), %cx
    movw $0x3f8, %dx
    rep outsb

    movl $1, %eax
    cpuid
    btl $31, %ecx
    jnc fail
    movl $0x40000000, %eax
    cpuid
    cmpl $0x61736142, %ebx
    jne fail

    xorl %eax, %eax
    vmcall
    cmpl $0x10000, %eax
    jne fail

    inb $0x80, %al
    cmpb $0xff, %al
    jne fail

    movw $passed, %si
    movw $(passed_end - passed), %cx
    movw $0x3f8, %dx
    rep outsb
    movb $0x10, %al
    outb %al, $0xf4
    hlt

fail:
    movw $failed, %si
    movw $(failed_end - failed), %cx
    movw $0x3f8, %dx
    rep outsb
    movb $0x11, %al
    outb %al, $0xf4
    hlt

hello: .ascii "real mode guest: hello\n"
hello_end:
passed: .ascii "real mode guest: all checks passed\n"
passed_end:
failed: .ascii "real mode guest: a check FAILED\n"
failed_end:
.code64
"#,
    options(att_syntax)
);

#[panic_handler]
fn panic(_: &core::panic::PanicInfo) -> ! {
    loop {}
}
