//! The instructions Basalt emulates on device memory, beyond MOV, with their
//! results and flags as the CPU would give them: the ALU group, XCHG,
//! CMPXCHG, the bit tests, MOVSX/MOVSXD, PUSH/POP of memory and the string
//! moves with REP, on memory nobody claims (reads all-ones, writes dropped)
//! and on the local APIC's TPR, which reads back what was written (bits 7:0).
//! An instruction Basalt does not emulate there raises #UD in the guest, as
//! a CPU does for one it does not know. Exits with status 33 when all pass,
//! 35 otherwise.
#![no_std]
#![no_main]

use basalt_test_guests::{check, entry, exit, println};
use core::arch::asm;
use core::ptr::{addr_of, addr_of_mut};

entry!(main);

/// Nothing claims it: above the virtio slots at 0xd000_0000, below the IOAPIC.
const UNCLAIMED: u64 = 0xe000_0000;
/// The local APIC's task-priority register.
const TPR: u64 = 0xfee0_0080;

const CF: u64 = 1 << 0;
const PF: u64 = 1 << 2;
const AF: u64 = 1 << 4;
const ZF: u64 = 1 << 6;
const SF: u64 = 1 << 7;
const OF: u64 = 1 << 11;
const STATUS: u64 = CF | PF | AF | ZF | SF | OF;

// #UD lands here: the handler counts it, notes where it was raised and
// returns to UD_RESUME (set by the test before the instruction).
core::arch::global_asm!(
    r#"
.global invalid_opcode_entry
invalid_opcode_entry:
    push rax
    mov rax, [rsp + 8]
    mov [rip + UD_RIP], rax
    mov rax, [rip + UD_RESUME]
    mov [rsp + 8], rax
    lock inc qword ptr [rip + UD_COUNT]
    pop rax
    iretq
"#
);

extern "C" {
    fn invalid_opcode_entry();
}

#[no_mangle]
static mut UD_RIP: u64 = 0;
#[no_mangle]
static mut UD_RESUME: u64 = 0;
#[no_mangle]
static mut UD_COUNT: u64 = 0;

static mut IDT: [u64; 512] = [0; 512];

fn install_handler() {
    let handler: unsafe extern "C" fn() = invalid_opcode_entry;
    let address = handler as usize as u64;
    // A present 64-bit interrupt gate in the flat code segment (0x10).
    let low = (address & 0xffff) | (0x10 << 16) | (0x8e00 << 32) | (((address >> 16) & 0xffff) << 48);
    // SAFETY: the guest is single-threaded and the IDT is not loaded yet.
    unsafe {
        let idt = &mut *addr_of_mut!(IDT);
        idt[6 * 2] = low;
        idt[6 * 2 + 1] = address >> 32;
    }
    #[repr(C, packed)]
    struct Pointer {
        limit: u16,
        base: u64,
    }
    let pointer = Pointer { limit: 256 * 16 - 1, base: addr_of!(IDT) as u64 };
    // SAFETY: loads the IDT built above.
    unsafe { asm!("lidt [{}]", in(reg) &pointer) };
}

fn read(value: *const u64) -> u64 {
    // SAFETY: written only by the #UD handler, which has returned.
    unsafe { value.read_volatile() }
}

fn tpr() -> u32 {
    // SAFETY: the local APIC page is identity-mapped; TPR reads have no side effect.
    unsafe { (TPR as *const u32).read_volatile() }
}

fn set_tpr(value: u32) {
    // SAFETY: as above; a TPR of 0 or of the small values here masks nothing
    // the guest waits for.
    unsafe { (TPR as *mut u32).write_volatile(value) }
}

/// On memory nobody claims: every read is all-ones, so the results are known.
fn unclaimed() -> bool {
    let mut ok = true;
    let u = UNCLAIMED;
    let flags: u64;
    // SAFETY: each instruction below accesses UNCLAIMED (identity-mapped, not
    // RAM: Basalt emulates it) or the guest's own stack and locals; the stack
    // is balanced and the flags are read before anything changes them.
    unsafe {
        asm!("add dword ptr [{u}], {one:e}", "pushfq", "pop {f}", u = in(reg) u, one = in(reg) 1, f = out(reg) flags)
    };
    ok &= check("add [mmio], 1 on all-ones carries to zero", flags & STATUS == CF | ZF | PF | AF);

    let flags: u64;
    // SAFETY: as above.
    unsafe {
        asm!("cmp dword ptr [{u}], {z:e}", "pushfq", "pop {f}", u = in(reg) u, z = in(reg) 0, f = out(reg) flags)
    };
    ok &= check("cmp [mmio], 0 is negative, no carry", flags & STATUS == SF | PF);

    let flags: u64;
    // SAFETY: as above.
    unsafe { asm!("test byte ptr [{u}], 0x80", "pushfq", "pop {f}", u = in(reg) u, f = out(reg) flags) };
    ok &= check("test byte [mmio], 0x80", flags & (CF | ZF | SF | OF) == SF);

    let mut ecx: u64 = 0x1234;
    // SAFETY: as above.
    unsafe { asm!("xchg dword ptr [{u}], {c:e}", u = in(reg) u, c = inout(reg) ecx) };
    ok &= check("xchg [mmio], ecx loads all-ones", ecx == 0xffff_ffff);

    let mut eax: u64 = 5;
    let flags: u64;
    // SAFETY: as above.
    unsafe {
        asm!("lock cmpxchg dword ptr [{u}], {c:e}", "pushfq", "pop {f}",
             u = in(reg) u, c = in(reg) 9u64, f = out(reg) flags, inout("rax") eax)
    };
    ok &= check("lock cmpxchg [mmio] fails and loads eax", eax == 0xffff_ffff && flags & ZF == 0);

    let flags: u64;
    // SAFETY: as above.
    unsafe { asm!("clc", "bt dword ptr [{u}], 7", "pushfq", "pop {f}", u = in(reg) u, f = out(reg) flags) };
    ok &= check("bt [mmio], 7 sets CF", flags & CF != 0);

    let (wide, sign): (u64, u64);
    // SAFETY: as above.
    unsafe {
        asm!("movsxd {w}, dword ptr [{u}]", "movsx {s:e}, byte ptr [{u}]", u = in(reg) u, w = out(reg) wide, s = out(reg) sign)
    };
    ok &= check("movsxd and movsx sign-extend", wide == u64::MAX && sign == 0xffff_ffff);

    let popped: u64;
    // SAFETY: as above; the push is popped at once.
    unsafe { asm!("push qword ptr [{u}]", "pop {p}", u = in(reg) u, p = out(reg) popped) };
    ok &= check("push [mmio] stores all-ones on the stack", popped == u64::MAX);

    let (before, after): (u64, u64);
    // SAFETY: as above; the pushed value goes to UNCLAIMED (dropped).
    unsafe {
        asm!("mov {b}, rsp", "push 7", "pop qword ptr [{u}]", "mov {a}, rsp", u = in(reg) u, b = out(reg) before,
             a = out(reg) after)
    };
    ok &= check("pop [mmio] moves rsp back", before == after);

    let mut buffer = [0u32; 4];
    let (rsi, rcx): (u64, u64);
    // SAFETY: REP MOVSD of 4 dwords from UNCLAIMED into `buffer`; DF is clear.
    unsafe {
        asm!("rep movsd", inout("rsi") u => rsi, inout("rdi") buffer.as_mut_ptr() => _, inout("rcx") 4u64 => rcx)
    };
    ok &= check("rep movsd from mmio to ram", buffer == [u32::MAX; 4] && rsi == u + 16 && rcx == 0);

    let (rdi, rcx): (u64, u64);
    // SAFETY: REP STOSQ of 3 qwords to UNCLAIMED (dropped); DF is clear.
    unsafe { asm!("rep stosq", in("rax") 0u64, inout("rdi") u => rdi, inout("rcx") 3u64 => rcx) };
    ok &= check("rep stosq to mmio", rdi == u + 24 && rcx == 0);

    let mut rdi: u64 = u + 0x10;
    // SAFETY: STD; MOVSB from `buffer` to UNCLAIMED, then CLD: DF is clear again.
    unsafe { asm!("std", "movsb", "cld", inout("rsi") buffer.as_ptr() => _, inout("rdi") rdi) };
    ok &= check("movsb with DF set goes down", rdi == u + 0xf);
    ok
}

/// On the local APIC's TPR, which reads back bits 7:0 of what was written.
fn task_priority() -> bool {
    let mut ok = true;
    let t = TPR;
    set_tpr(0x10);
    let flags: u64;
    // SAFETY: each instruction below accesses TPR (identity-mapped, emulated)
    // with values that mask no interrupt the guest waits for; TPR is 0 at the end.
    unsafe { asm!("add dword ptr [{t}], 0x20", "pushfq", "pop {f}", t = in(reg) t, f = out(reg) flags) };
    ok &= check("add [tpr], 0x20 reads back", tpr() == 0x30 && flags & (ZF | CF | PF) == PF);

    let flags: u64;
    // SAFETY: as above.
    unsafe { asm!("sub dword ptr [{t}], 0x30", "pushfq", "pop {f}", t = in(reg) t, f = out(reg) flags) };
    ok &= check("sub [tpr] to zero sets ZF", tpr() == 0 && flags & (ZF | CF) == ZF);

    let mut ecx: u64 = 0x50;
    // SAFETY: as above.
    unsafe { asm!("or dword ptr [{t}], 0x21", "lock xchg dword ptr [{t}], {c:e}", t = in(reg) t, c = inout(reg) ecx) };
    ok &= check("or then xchg on tpr", ecx == 0x21 && tpr() == 0x50);

    let flags: u64;
    // SAFETY: as above.
    unsafe {
        asm!("lock cmpxchg dword ptr [{t}], {c:e}", "pushfq", "pop {f}", t = in(reg) t, c = in(reg) 0x60u64,
             f = out(reg) flags, inout("rax") 0x50u64 => _)
    };
    ok &= check("lock cmpxchg on tpr stores when equal", tpr() == 0x60 && flags & ZF != 0);

    let flags: u64;
    // SAFETY: as above.
    unsafe { asm!("lock btr dword ptr [{t}], 5", "pushfq", "pop {f}", t = in(reg) t, f = out(reg) flags) };
    ok &= check("lock btr on tpr", tpr() == 0x40 && flags & CF != 0);

    // SAFETY: as above.
    unsafe { asm!("inc dword ptr [{t}]", "inc dword ptr [{t}]", "dec dword ptr [{t}]", t = in(reg) t) };
    ok &= check("inc and dec on tpr", tpr() == 0x41);
    set_tpr(0);
    ok
}

/// What Basalt does not emulate on device memory is #UD, at the instruction.
fn undefined() -> bool {
    let mut ok = true;
    let (before, at): (u64, u64);
    // SAFETY: the #UD handler resumes at label 2; XADD is not emulated on MMIO.
    unsafe {
        before = read(addr_of!(UD_COUNT));
        asm!("lea {r}, [rip + 2f]", "mov [rip + UD_RESUME], {r}", "lea {at}, [rip + 3f]",
             "3: xadd dword ptr [{u}], {v:e}", "2:",
             r = out(reg) _, at = out(reg) at, u = in(reg) UNCLAIMED, v = in(reg) 1u64);
    }
    let count = read(addr_of!(UD_COUNT));
    ok &= check("xadd on mmio raises #UD", count == before + 1 && read(addr_of!(UD_RIP)) == at);

    let at: u64;
    // SAFETY: as above; SHL on memory is not emulated either.
    unsafe {
        asm!("lea {r}, [rip + 2f]", "mov [rip + UD_RESUME], {r}", "lea {at}, [rip + 3f]",
             "3: shl dword ptr [{u}], 1", "2:",
             r = out(reg) _, at = out(reg) at, u = in(reg) UNCLAIMED);
    }
    ok &= check("shl on mmio raises #UD", read(addr_of!(UD_COUNT)) == count + 1 && read(addr_of!(UD_RIP)) == at);
    ok
}

fn main() -> ! {
    println!("mmio-emulation: hello");
    install_handler();
    let mut ok = unclaimed();
    ok &= task_priority();
    ok &= undefined();
    println!("mmio-emulation: {}", if ok { "all checks passed" } else { "some checks FAILED" });
    exit(if ok { 0x10 } else { 0x11 })
}
