//! A Multiboot (v1) kernel using the header's address fields, as small test
//! kernels do: entered in 32-bit protected mode with EAX = 0x2BADB002 and EBX
//! pointing at the information structure. Reports mem_upper; exit status 33.
#![no_std]
#![no_main]

core::arch::global_asm!(
    r#"
.section .text.multiboot, "ax"
.code32
.align 4
multiboot_header:
    .long 0x1BADB002
    .long 0x00010002
    .long -(0x1BADB002 + 0x00010002)
    .long multiboot_header
    .long multiboot_header
    .long image_end
    .long bss_end
    .long start

.section .text.boot, "ax"
.global start
start:
    cli
    cld
    movl $stack_top, %esp
    cmpl $0x2BADB002, %eax
    jne fail
    testl $1, (%ebx)
    jz fail
    movl $hello, %esi
    movl $(hello_end - hello), %ecx
    movw $0x3f8, %dx
    rep outsb

    /* mem_upper in KiB, in decimal */
    movl 8(%ebx), %eax
    movl $digits_end, %edi
    movl $10, %ecx
1:  xorl %edx, %edx
    divl %ecx
    addb $0x30, %dl
    decl %edi
    movb %dl, (%edi)
    testl %eax, %eax
    jnz 1b
    pushl %edi
    movl $memory, %esi
    movl $(memory_end - memory), %ecx
    movw $0x3f8, %dx
    rep outsb
    popl %esi
    movl $digits_end, %ecx
    subl %esi, %ecx
    rep outsb
    movl $kib, %esi
    movl $(kib_end - kib), %ecx
    rep outsb

    movb $0x10, %al
    outb %al, $0xf4
    hlt
fail:
    movl $failed, %esi
    movl $(failed_end - failed), %ecx
    movw $0x3f8, %dx
    rep outsb
    movb $0x11, %al
    outb %al, $0xf4
    hlt

hello: .ascii "multiboot guest: hello from protected mode\n"
hello_end:
memory: .ascii "multiboot guest: mem_upper "
memory_end:
kib: .ascii " KiB\n"
kib_end:
failed: .ascii "multiboot guest: bad boot information\n"
failed_end:

.section .data
digits: .ascii "0000000000"
digits_end:

.section .bss
.align 16
    .skip 4096
stack_top:
.code64
"#,
    options(att_syntax)
);

#[panic_handler]
fn panic(_: &core::panic::PanicInfo) -> ! {
    loop {}
}
