//! The trap-class debug exception (#DB) an instruction raises, for the
//! instructions a hypervisor completes on the guest's behalf (port I/O, device
//! memory, CPUID, MSRs...). The CPU never ran them, so it never checked their
//! single step or their data and I/O breakpoints (SDM vol. 3, 18.2-18.3): the
//! hypervisor must, from the guest's RFLAGS.TF, DR7, DR0-DR3, CR4.DE and the
//! accesses the instruction made. `trap_conditions` says which of DR6's
//! conditions the #DB reports (B0-B3, BS), or 0 for no #DB.
//!
//! Instruction breakpoints (R/W = 00) are not here: they are faults, which
//! the CPU raised itself before the instruction could exit.

// Every value here comes from a hostile guest: no arithmetic may wrap or panic.
#![deny(clippy::arithmetic_side_effects)]

/// DR6's condition bits a trap reports.
pub mod dr6 {
    /// B0-B3: breakpoint n's condition was met.
    pub const B0: u64 = 1 << 0;
    pub const BREAKPOINTS: u64 = 0xf;
    /// The single-step trap (RFLAGS.TF).
    pub const BS: u64 = 1 << 14;
}

/// DR7's bits by name.
pub mod dr7 {
    /// General detect: cleared when a #DB is delivered.
    pub const GD: u64 = 1 << 13;
    /// L0, G0 ... L3, G3: at least one set for each enabled breakpoint.
    pub const ENABLES: u64 = 0xff;
}

/// One access an emulated instruction made: memory at `address` (linear or
/// guest-physical, as the caller compares it) or an I/O port.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Touch {
    /// A data read.
    Read { address: u64, len: u8 },
    /// A data write (a read-modify-write counts as a write: every breakpoint
    /// that watches reads watches writes too).
    Write { address: u64, len: u8 },
    /// IN, OUT, INS or OUTS on `len` ports from `port`.
    Port { port: u16, len: u8 },
}

/// What an enabled breakpoint watches (DR7's R/Wn).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Watch {
    /// 00: instruction fetches (a fault the CPU raises itself).
    Execute,
    /// 01: data writes.
    Write,
    /// 10: I/O reads and writes, with CR4.DE set (undefined without it).
    Io,
    /// 11: data reads and writes.
    ReadWrite,
}

/// Breakpoint `index` (0-3) as DR7 sets it up: None when neither its local nor
/// its global enable is set. `len` is the bytes it covers (LENn: 00 = 1,
/// 01 = 2, 10 = 8, 11 = 4).
pub fn breakpoint(dr7: u64, index: usize) -> Option<(Watch, u64)> {
    let index = index & 3;
    let enable_shift = index.wrapping_mul(2);
    if (dr7 >> enable_shift) & 3 == 0 {
        return None;
    }
    let field = dr7 >> 16_usize.wrapping_add(index.wrapping_mul(4));
    let watch = match field & 3 {
        0 => Watch::Execute,
        1 => Watch::Write,
        2 => Watch::Io,
        _ => Watch::ReadWrite,
    };
    let len = match (field >> 2) & 3 {
        0 => 1,
        1 => 2,
        2 => 8,
        _ => 4,
    };
    Some((watch, len))
}

/// Whether any breakpoint DR7 enables can match an access a hypervisor
/// emulates (data, or I/O with `io_breakpoints` = CR4.DE): when none can,
/// nothing but the single step needs looking at.
pub fn watches_accesses(dr7: u64, io_breakpoints: bool) -> bool {
    (0..4).any(|i| match breakpoint(dr7, i) {
        Some((Watch::Write | Watch::ReadWrite, _)) => true,
        Some((Watch::Io, _)) => io_breakpoints,
        _ => false,
    })
}

/// The conditions of the trap-class #DB after an instruction (or one
/// iteration of a REP string) that ran with RFLAGS.TF = `single_step` and
/// made the accesses in `touches`, in DR6's layout: BS for the single step,
/// Bn for each enabled breakpoint whose range the accesses overlap. 0: no #DB.
///
/// `addresses` are DR0-DR3 in the address space of the memory touches
/// (linear, or guest-physical for a caller that translated them; None: the
/// breakpoint has no address there and matches no memory touch; I/O
/// breakpoints use their low 16 bits whatever it is). A breakpoint's address
/// is aligned down to its length, as the CPU ignores its low bits. B0-B3 are
/// reported for enabled breakpoints only (the SDM lets a CPU report the
/// others, or not: debuggers look only at enabled ones).
pub fn trap_conditions(
    single_step: bool,
    dr7: u64,
    io_breakpoints: bool,
    addresses: [Option<u64>; 4],
    touches: &[Touch],
) -> u64 {
    let mut conditions = if single_step { dr6::BS } else { 0 };
    for (index, address) in addresses.into_iter().enumerate() {
        let Some((watch, len)) = breakpoint(dr7, index) else { continue };
        let hit = touches.iter().any(|touch| match (watch, *touch) {
            (Watch::Write, Touch::Write { address: at, len: n })
            | (Watch::ReadWrite, Touch::Read { address: at, len: n } | Touch::Write { address: at, len: n }) => {
                address.is_some_and(|a| overlaps(a & !len.wrapping_sub(1), len, at, u64::from(n)))
            }
            (Watch::Io, Touch::Port { port, len: n }) if io_breakpoints => {
                // Only the low 16 bits of DRn name a port.
                let watched = port_of(address) & !len.wrapping_sub(1);
                overlaps(watched, len, u64::from(port), u64::from(n))
            }
            _ => false,
        });
        if hit {
            conditions |= dr6::B0 << index;
        }
    }
    conditions
}

/// The port an I/O breakpoint names: DRn's low 16 bits.
fn port_of(address: Option<u64>) -> u64 {
    address.unwrap_or(0) & 0xffff
}

/// Whether [a, a + n) and [b, b + m) share a byte (`n`, `m` at least 1; an
/// end past 2^64 is taken as 2^64 - 1).
fn overlaps(a: u64, n: u64, b: u64, m: u64) -> bool {
    if n == 0 || m == 0 {
        return false;
    }
    let a_last = a.saturating_add(n.saturating_sub(1));
    let b_last = b.saturating_add(m.saturating_sub(1));
    a <= b_last && b <= a_last
}

#[cfg(test)]
mod tests {
    use super::*;

    /// DR7 enabling breakpoint `index` (locally) with R/W and LEN fields.
    fn enable(index: u32, rw: u64, len: u64) -> u64 {
        let field = index.wrapping_mul(4);
        (1 << index.wrapping_mul(2)) | (rw << 16u32.wrapping_add(field)) | (len << 18u32.wrapping_add(field))
    }

    const NONE: [Option<u64>; 4] = [None; 4];

    #[test]
    fn dr7_fields_decode_as_the_sdm_lays_them_out() {
        assert_eq!(breakpoint(0x400, 0), None, "reset DR7 enables nothing");
        assert_eq!(breakpoint(enable(0, 1, 3), 0), Some((Watch::Write, 4)));
        assert_eq!(breakpoint(enable(1, 3, 2), 1), Some((Watch::ReadWrite, 8)));
        assert_eq!(breakpoint(enable(2, 2, 1), 2), Some((Watch::Io, 2)));
        assert_eq!(breakpoint(enable(3, 0, 0), 3), Some((Watch::Execute, 1)));
        // The global enable alone enables it too.
        assert_eq!(breakpoint(2 | 1 << 16, 0), Some((Watch::Write, 1)));
        assert_eq!(breakpoint(enable(3, 1, 0), 2), None, "another breakpoint's enable");
        assert!(!watches_accesses(enable(0, 0, 0), true), "execute breakpoints are the CPU's");
        assert!(!watches_accesses(enable(0, 2, 0), false), "I/O breakpoints need CR4.DE");
        assert!(watches_accesses(enable(0, 2, 0), true));
        assert!(watches_accesses(enable(3, 3, 3), false));
    }

    #[test]
    fn the_single_step_alone_is_bs() {
        assert_eq!(trap_conditions(true, 0x400, true, NONE, &[]), dr6::BS);
        assert_eq!(trap_conditions(false, 0x400, true, NONE, &[]), 0);
        let touches = [Touch::Write { address: 0x1000, len: 4 }, Touch::Port { port: 0x80, len: 1 }];
        assert_eq!(trap_conditions(false, 0x400, true, [Some(0x1000); 4], &touches), 0, "nothing enabled");
    }

    #[test]
    fn data_breakpoints_match_overlapping_accesses_of_their_kind() {
        let at = [Some(0x1000), Some(0x2000), Some(0x3004), Some(0x4000)];
        let dr7 = enable(0, 1, 3) | enable(1, 3, 0) | enable(2, 3, 1) | enable(3, 0, 0);
        let write = |address, len| Touch::Write { address, len };
        let read = |address, len| Touch::Read { address, len };
        assert_eq!(trap_conditions(false, dr7, false, at, &[write(0x1000, 4)]), 1);
        assert_eq!(trap_conditions(false, dr7, false, at, &[write(0x1003, 1)]), 1, "last byte of 4");
        assert_eq!(trap_conditions(false, dr7, false, at, &[write(0x0ffd, 4)]), 1, "straddles its start");
        assert_eq!(trap_conditions(false, dr7, false, at, &[write(0x1004, 4)]), 0, "just past it");
        assert_eq!(trap_conditions(false, dr7, false, at, &[write(0x0ffc, 4)]), 0, "just before it");
        assert_eq!(trap_conditions(false, dr7, false, at, &[read(0x1000, 4)]), 0, "write-only breakpoint");
        assert_eq!(trap_conditions(false, dr7, false, at, &[read(0x2000, 1)]), 2, "read/write one byte");
        assert_eq!(trap_conditions(false, dr7, false, at, &[read(0x2001, 1)]), 0);
        assert_eq!(trap_conditions(false, dr7, false, at, &[write(0x3005, 1)]), 4, "2-byte range at 0x3004");
        assert_eq!(trap_conditions(false, dr7, false, at, &[read(0x4000, 8)]), 0, "execute breakpoint");
        // Several at once, with the single step.
        let touches = [read(0x2000, 8), write(0x1002, 2)];
        assert_eq!(trap_conditions(true, dr7, false, at, &touches), dr6::BS | 3);
        // A breakpoint without an address in this space matches nothing.
        assert_eq!(trap_conditions(false, dr7, false, [None, Some(0x2000), None, None], &[write(0x1000, 4)]), 0);
    }

    #[test]
    fn breakpoint_addresses_are_aligned_to_their_length() {
        // LEN 8 at an unaligned 0x1003 watches 0x1000-0x1007.
        let dr7 = enable(0, 3, 2);
        let at = [Some(0x1003), None, None, None];
        assert_eq!(trap_conditions(false, dr7, false, at, &[Touch::Read { address: 0x1000, len: 1 }]), 1);
        assert_eq!(trap_conditions(false, dr7, false, at, &[Touch::Read { address: 0x1007, len: 1 }]), 1);
        assert_eq!(trap_conditions(false, dr7, false, at, &[Touch::Read { address: 0x1008, len: 1 }]), 0);
    }

    #[test]
    fn io_breakpoints_need_cr4_de() {
        let dr7 = enable(1, 2, 1);
        let at = [None, Some(0xdead_0000_0000_0070), None, None];
        let out = [Touch::Port { port: 0x71, len: 1 }];
        assert_eq!(trap_conditions(false, dr7, true, at, &out), 2, "low 16 bits name the port");
        assert_eq!(trap_conditions(false, dr7, false, at, &out), 0, "undefined without CR4.DE");
        assert_eq!(trap_conditions(false, dr7, true, at, &[Touch::Port { port: 0x72, len: 4 }]), 0);
        assert_eq!(trap_conditions(false, dr7, true, at, &[Touch::Port { port: 0x6e, len: 4 }]), 2);
        // A memory access is never an I/O breakpoint's, nor a port a data one's.
        assert_eq!(trap_conditions(false, dr7, true, at, &[Touch::Write { address: 0x70, len: 1 }]), 0);
        let data = enable(0, 3, 0);
        assert_eq!(trap_conditions(false, data, true, [Some(0x70); 4], &out), 0);
    }

    #[test]
    fn hostile_values_neither_wrap_nor_panic() {
        let dr7 = u64::MAX;
        let top = [Some(u64::MAX); 4];
        let touches = [
            Touch::Write { address: u64::MAX, len: 8 },
            Touch::Read { address: u64::MAX - 2, len: 255 },
            Touch::Port { port: u16::MAX, len: 255 },
            Touch::Write { address: 0, len: 0 },
        ];
        // Every breakpoint is R/W 11, LEN 4 (aligned to u64::MAX - 3): the
        // accesses at the top of the space overlap each of them.
        assert_eq!(trap_conditions(true, dr7, true, top, &touches), dr6::BS | 0xf);
        assert_eq!(trap_conditions(false, dr7, true, [Some(0); 4], &[Touch::Write { address: 0, len: 0 }]), 0);
        for index in [0, 3, 4, usize::MAX] {
            let _ = breakpoint(u64::MAX, index);
        }
    }
}
