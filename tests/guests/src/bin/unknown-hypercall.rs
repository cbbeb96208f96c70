//! Makes a hypercall Basalt does not define: it must answer -1000 (KVM's
//! -ENOSYS) in RAX and let the guest go on, which then reports and exits
//! through the debug-exit port (status 33 when the answer was right).
#![no_std]
#![no_main]

use basalt_test_guests::{entry, exit, println, vmcall};

entry!(main);

const ENOSYS: i64 = -1000;

fn main() -> ! {
    println!("unknown hypercall guest: calling 0x999");
    let answer = vmcall(0x999, 0, 0) as i64;
    println!("unknown hypercall guest: 0x999 answered {answer}");
    // Still a working interface afterwards.
    let version = vmcall(0, 0, 0);
    let ok = answer == ENOSYS && version == 0x0001_0000;
    println!("unknown hypercall guest: {}", if ok { "answered as expected" } else { "wrong answer (FAILED)" });
    exit(if ok { 0x10 } else { 0x11 })
}
