//! What the chipset target checks the platform against, stated from the
//! documents the devices follow rather than from their code: the port devices
//! a VM gets beside the chipset (fw_cfg after QEMU's docs/specs/fw_cfg.rst,
//! PCI configuration mechanism #1 with an 82441FX host bridge at 00:00.0,
//! system control port A), the local APIC's modes after the Intel SDM
//! (IA32_APIC_BASE's state transitions, the x2APIC MSR map), and the two logs
//! a VM keeps of what its guest tried that nothing answered (unclaimed bus
//! addresses, refused MSRs). The target runs these beside the chipset and
//! asserts that both say the same after every step.

use devices::bus::{all_ones, Unclaimed, UNCLAIMED_ADDRESSES};
use devices::chipset::REFUSED_MSRS_LOGGED;
use devices::lapic::{apic_base, Mode};
use devices::{layout, Request};

/// fw_cfg's two ports: the 16-bit selector and the data port.
pub const FW_CFG_SELECTOR: u16 = layout::FW_CFG;
pub const FW_CFG_DATA: u16 = layout::FW_CFG + 1;
/// The item keys a VM has: signature, ID, RAM size, CPU count, maximum CPU
/// count, file directory.
pub const FW_CFG_KEYS: [u16; 6] = [0x00, 0x01, 0x03, 0x05, 0x0f, 0x19];

/// fw_cfg as a guest sees it: the generic items, no files, the selected item
/// and how far into it the guest has read.
pub struct FwCfg {
    items: Vec<(u16, Vec<u8>)>,
    /// Index into `items`; None for a key with no item, and before any selection.
    selected: Option<usize>,
    offset: usize,
}

impl FwCfg {
    /// The items QEMU's spec gives a VM of `cpus` CPUs (none hot-pluggable:
    /// the maximum is the count) and `ram_bytes` of RAM, with an empty file
    /// directory (a big-endian count of 0).
    pub fn new(cpus: u16, ram_bytes: u64) -> FwCfg {
        let items = vec![
            (0x00, b"QEMU".to_vec()),
            // Bit 0: the traditional interface; bit 1 (DMA) clear.
            (0x01, vec![1, 0, 0, 0]),
            (0x03, ram_bytes.to_le_bytes().to_vec()),
            (0x05, cpus.to_le_bytes().to_vec()),
            (0x0f, cpus.to_le_bytes().to_vec()),
            (0x19, vec![0; 4]),
        ];
        FwCfg { items, selected: None, offset: 0 }
    }

    /// A read of `size` bytes at fw_cfg's `port`: the selector is write-only
    /// and reads 0; the data port gives the selected item's next bytes, the
    /// first in the low byte, and 0 for each byte past the item's end.
    /// Returns the value and how many of its bytes were past the end.
    pub fn read(&mut self, port: u16, size: u8) -> (u32, u8) {
        if port != FW_CFG_DATA {
            return (0, 0);
        }
        let (mut value, mut past_end) = (0, 0);
        for i in 0..size {
            let byte = self.selected.and_then(|item| self.items[item].1.get(self.offset)).copied();
            match byte {
                Some(byte) => {
                    self.offset += 1;
                    value |= u32::from(byte) << (8 * i);
                }
                None => past_end += 1,
            }
        }
        (value, past_end)
    }

    /// A write: only a 16-bit one to the selector does anything. It selects
    /// the key (bit 14, the write channel, selects the same item: data writes
    /// are ignored anyway) from its first byte.
    pub fn write(&mut self, port: u16, size: u8, value: u32) {
        if port == FW_CFG_SELECTOR && size == 2 {
            let key = value as u16 & !0x4000;
            self.selected = self.items.iter().position(|(k, _)| *k == key);
            self.offset = 0;
        }
    }

    /// The key of the selected item, if it is one the VM has.
    pub fn selected_key(&self) -> Option<u16> {
        self.selected.map(|item| self.items[item].0)
    }
}

const PCI_ENABLE: u32 = 1 << 31;
/// What CONFIG_ADDRESS keeps: enable, bus, device, function, dword register.
/// Bits 30:24 are reserved and 1:0 are read-only 0 (PCI Local Bus 3.0, 3.2.2.3.2).
const PCI_ADDRESS_BITS: u32 = 0x80ff_fffc;

/// Configuration mechanism #1 with one function behind it, the host bridge
/// at 00:00.0 (Intel 82441FX, 8086:1237, class 06/00/00, revision 2).
pub struct PciHost {
    address: u32,
    config: [u8; 256],
}

impl Default for PciHost {
    fn default() -> Self {
        Self::new()
    }
}

impl PciHost {
    pub fn new() -> PciHost {
        let mut config = [0u8; 256];
        config[..4].copy_from_slice(&[0x86, 0x80, 0x37, 0x12]);
        // Command: memory space and bus master on, for good.
        config[0x04] = 0x06;
        config[0x08] = 0x02;
        config[0x0b] = 0x06;
        PciHost { address: 0, config }
    }

    /// The bits of header byte `register` software may write: parity error
    /// response (command bit 6), SERR# enable (command bit 8) and the latency
    /// timer's count (bits 7:3); everything else in a host bridge's header is
    /// read-only or absent.
    fn writable(register: usize) -> u8 {
        match register {
            0x04 => 0x40,
            0x05 => 0x01,
            0x0d => 0xf8,
            _ => 0,
        }
    }

    /// The bus, device and function CONFIG_ADDRESS names, and whether
    /// configuration cycles are enabled.
    pub fn target(&self) -> (bool, u32) {
        (self.address & PCI_ENABLE != 0, self.address >> 8 & 0xffff)
    }

    /// The bridge's register a data port reaches now, if a configuration
    /// cycle is made and the bridge answers it.
    fn register(&self, port: u16) -> Option<usize> {
        let byte = port.checked_sub(layout::PCI_CONFIG_DATA).filter(|&b| b < 4)?;
        let (enabled, bdf) = self.target();
        (enabled && bdf == 0).then_some((self.address & 0xfc) as usize + byte as usize)
    }

    /// A read at 0xcf8 or 0xcfa-0xcff (0xcf9 is the reset control register):
    /// CONFIG_ADDRESS takes 32-bit accesses only (narrower ones are plain I/O
    /// nothing answers), and a data port reads the bridge's bytes from the
    /// register it reaches, or all-ones when nothing answers, as for every
    /// function but 00:00.0 and bytes past the 256-byte space.
    pub fn read(&self, port: u16, size: u8) -> u32 {
        let ones = all_ones(size) as u32;
        if port == layout::PCI_CONFIG_ADDRESS {
            return if size == 4 { self.address } else { ones };
        }
        let Some(register) = self.register(port) else { return ones };
        (0..size as usize).fold(0, |value, i| {
            let byte = self.config.get(register + i).copied().unwrap_or(0xff);
            value | u32::from(byte) << (8 * i)
        })
    }

    pub fn write(&mut self, port: u16, size: u8, value: u32) {
        if port == layout::PCI_CONFIG_ADDRESS {
            if size == 4 {
                self.address = value & PCI_ADDRESS_BITS;
            }
            return;
        }
        let Some(register) = self.register(port) else { return };
        for (i, byte) in value.to_le_bytes().into_iter().enumerate().take(size.into()) {
            let at = register + i;
            if let Some(old) = self.config.get_mut(at) {
                let mask = Self::writable(at);
                *old = (*old & !mask) | (byte & mask);
            }
        }
    }
}

/// System control port A: A20 (bit 1) always reads enabled; bit 0 reads as
/// written and asks for a reset when it goes from 0 to 1; the other bits read
/// 0. The port is one byte: the rest of a wider read floats high.
#[derive(Default)]
pub struct SystemControlA {
    reset: bool,
}

impl SystemControlA {
    pub fn read(&self, size: u8) -> u32 {
        (all_ones(size) as u32 & !0xff) | 0x02 | self.reset as u32
    }

    pub fn write(&mut self, value: u32) -> Option<Request> {
        let reset = value & 1 != 0;
        let rising = reset && !self.reset;
        self.reset = reset;
        rising.then_some(Request::Reset)
    }
}

/// The mode a WRMSR of `value` to IA32_APIC_BASE leaves an APIC in that is
/// in `mode`, or None where the CPU raises #GP (Intel SDM vol. 3A, "x2APIC
/// State Transitions" and the IA32_APIC_BASE layout): reserved bits (0-7, 9,
/// and MAXPHYADDR up), EXTD where CPUID does not offer x2APIC, EXTD without
/// EN, x2APIC straight to xAPIC, disabled straight to x2APIC. The BSP bit is
/// read-only and ignored. Two choices are Basalt's: the base cannot move from
/// 0xfee0_0000 (a write of another is refused), and a MAXPHYADDR outside the
/// 36 to 52 any x2APIC-capable CPU has is taken as the nearer of the two.
pub fn apic_base_write(mode: Mode, value: u64, x2apic_offered: bool, phys_bits: u32) -> Option<Mode> {
    let phys_bits = phys_bits.clamp(36, 52);
    let reserved = 0xff | 1 << 9 | !((1u64 << phys_bits) - 1);
    let (en, extd) = (value & apic_base::EN != 0, value & apic_base::EXTD != 0);
    if value & reserved != 0 || (extd && !x2apic_offered) || value & !0xfff != layout::LAPIC_BASE {
        return None;
    }
    let new = match (en, extd) {
        (false, false) => Mode::Disabled,
        (true, false) => Mode::XApic,
        (true, true) => Mode::X2Apic,
        (false, true) => return None,
    };
    match (mode, new) {
        (Mode::X2Apic, Mode::XApic) | (Mode::Disabled, Mode::X2Apic) => None,
        _ => Some(new),
    }
}

/// IA32_APIC_BASE as RDMSR reads it on `vcpu` (vCPU 0 is the bootstrap
/// processor) in `mode`.
pub fn apic_base_value(vcpu: usize, mode: Mode) -> u64 {
    let bsp = if vcpu == 0 { apic_base::BSP } else { 0 };
    let enable = match mode {
        Mode::Disabled => 0,
        Mode::XApic => apic_base::EN,
        Mode::X2Apic => apic_base::EN | apic_base::EXTD,
    };
    layout::LAPIC_BASE | bsp | enable
}

/// The x2APIC MSRs of the SDM's table of them, and a few numbers in the range
/// that are not registers in x2APIC mode (0x800, APR 0x809, RRD 0x80c, DFR
/// 0x80e, ICR high 0x831, 0x83d): the ones a generator picks from.
pub const X2APIC_MSRS: [u32; 33] = [
    0x802, 0x803, 0x808, 0x80a, 0x80b, 0x80d, 0x80f, 0x810, 0x817, 0x818, 0x81f, 0x820, 0x827, 0x828, 0x82f, 0x830,
    0x832, 0x833, 0x834, 0x835, 0x836, 0x837, 0x838, 0x839, 0x83e, 0x83f, 0x800, 0x809, 0x80c, 0x80e, 0x831, 0x83d,
    0x8ff,
];

/// x2APIC ICR bits that are reserved: 31:20, 17:16 and 13 (the SDM's x2APIC
/// ICR layout; KVM checks the same ones).
pub const X2APIC_ICR_RESERVED: u64 = 0xfff0_0000 | 0x3_0000 | 0x2000;

/// Whether RDMSR of `msr` succeeds in x2APIC mode (SDM vol. 3A, "Local APIC
/// Register Address Map Supported by x2APIC"): ID, version, TPR, PPR, LDR,
/// SVR, ISR, TMR, IRR, ESR, ICR (one 64-bit register), the LVTs, the timer's
/// initial and current counts and divide configuration. EOI and SELF IPI are
/// write-only; everything else is reserved. None: either will do (LVT CMCI,
/// which this APIC's version register does not count among its LVTs, yet it
/// keeps one as in xAPIC mode).
pub fn x2apic_readable(msr: u32) -> Option<bool> {
    let Some(register) = msr.checked_sub(apic_base::X2APIC_MSR_BASE) else { return Some(false) };
    Some(match register {
        0x2f => return None,
        0x02 | 0x03 | 0x08 | 0x0a | 0x0d | 0x0f | 0x10..=0x28 | 0x30 | 0x32..=0x39 | 0x3e => true,
        _ => false,
    })
}

/// Whether WRMSR of `value` to `msr` succeeds in x2APIC mode: TPR, SVR, the
/// LVTs, the initial count, divide configuration and SELF IPI with bits 63:32
/// clear; EOI and ESR with 0 only; ICR with none of its reserved bits. The
/// read-only and reserved registers refuse every write. None: either (CMCI,
/// see `x2apic_readable`).
pub fn x2apic_writable(msr: u32, value: u64) -> Option<bool> {
    let Some(register) = msr.checked_sub(apic_base::X2APIC_MSR_BASE) else { return Some(false) };
    let low = value >> 32 == 0;
    Some(match register {
        0x2f if low => return None,
        0x08 | 0x0f | 0x32..=0x38 | 0x3e | 0x3f => low,
        0x0b | 0x28 => value == 0,
        0x30 => value & X2APIC_ICR_RESERVED == 0,
        _ => false,
    })
}

/// The x2APIC logical ID of x2APIC ID `id`: cluster (ID / 16) in bits 31:16,
/// one bit for the ID's place in it (SDM, "Logical Destination Mode in x2APIC Mode").
pub fn x2apic_ldr(id: u32) -> u32 {
    (id >> 4) << 16 | 1 << (id & 0xf)
}

/// The VM log's list of MSRs answered with #GP: each of the first
/// `REFUSED_MSRS_LOGGED` distinct numbers named once.
#[derive(Default)]
pub struct RefusedMsrs(Vec<u32>);

impl RefusedMsrs {
    /// Whether a refusal of `msr` is one the log names.
    pub fn first(&mut self, msr: u32) -> bool {
        if self.0.contains(&msr) || self.0.len() == REFUSED_MSRS_LOGGED {
            return false;
        }
        self.0.push(msr);
        true
    }
}

/// A bus's log of accesses nothing claimed: every one counted, and the first
/// `UNCLAIMED_ADDRESSES` distinct addresses kept in the order first accessed,
/// each with the sizes it was read and written with and its access count; an
/// access to any other address counts as one elsewhere.
#[derive(Default)]
pub struct UnclaimedLog {
    /// (address, kinds: bit 4 * write + log2(size), accesses).
    first: Vec<(u64, u8, u64)>,
    reads: u64,
    writes: u64,
    elsewhere: u64,
}

const SIZES: [u8; 4] = [1, 2, 4, 8];

impl UnclaimedLog {
    pub fn record(&mut self, address: u64, size: u8, write: bool) {
        *if write { &mut self.writes } else { &mut self.reads } += 1;
        let kind = SIZES.iter().position(|&s| s == size).map_or(0, |n| 1 << (n + 4 * write as usize));
        if let Some(seen) = self.first.iter_mut().find(|(a, _, _)| *a == address) {
            seen.1 |= kind;
            seen.2 += 1;
        } else if self.first.len() < UNCLAIMED_ADDRESSES {
            self.first.push((address, kind, 1));
        } else {
            self.elsewhere += 1;
        }
    }

    /// Asserts that `log`, the `bus`'s, says the same.
    pub fn check(&self, log: &Unclaimed, bus: &str) {
        let (counts, expected) = ((log.reads, log.writes, log.elsewhere), (self.reads, self.writes, self.elsewhere));
        assert_eq!(counts, expected, "{bus}: unclaimed (reads, writes, elsewhere)");
        let kept = log.addresses().count();
        assert!(kept <= UNCLAIMED_ADDRESSES, "{bus}: {kept} unclaimed addresses kept");
        assert_eq!(kept, self.first.len(), "{bus}: unclaimed addresses kept");
        for (seen, &(address, kinds, count)) in log.addresses().zip(&self.first) {
            assert_eq!((seen.address, seen.count), (address, count), "{bus}: unclaimed address and its count");
            for (n, size) in SIZES.iter().enumerate() {
                for write in [false, true] {
                    let kind = kinds & 1 << (n + 4 * write as usize) != 0;
                    assert_eq!(seen.saw(write, *size), kind, "{bus} {address:#x}: seen with a write {write} of {size}");
                }
            }
        }
    }

    /// The addresses kept.
    pub fn addresses(&self) -> impl Iterator<Item = u64> + '_ {
        self.first.iter().map(|&(address, _, _)| address)
    }
}
