//! Device models for Basalt guests. Devices are pure state machines: they never
//! touch hardware, so every one of them is tested on the host. `chipset` wires
//! the PC devices of one VM together at the addresses `layout` gives them.
#![cfg_attr(not(test), no_std)]

extern crate alloc;

pub mod acpi;
pub mod bus;
pub mod chipset;
pub mod clock;
pub mod fw_cfg;
pub mod ioapic;
pub mod lapic;
pub mod layout;
pub mod output;
pub mod pci;
pub mod pending;
pub mod pic;
pub mod pit;
pub mod rtc;
pub mod system_control;
pub mod uart;
pub mod virtio;

/// An access outside guest RAM.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NotRam;

/// Guest-physical memory as devices that do DMA see it.
pub trait GuestRam {
    fn read(&self, address: u64, buf: &mut [u8]) -> Result<(), NotRam>;
    fn write(&mut self, address: u64, data: &[u8]) -> Result<(), NotRam>;
}

pub use bus::{
    BusError, MmioBus, MmioDevice, PortBus, PortDevice, Request, Unclaimed, UnclaimedAddress, UnclaimedAddresses,
};
pub use chipset::{Chipset, ChipsetConfig, IoApicWindow, StartupSignal};
pub use fw_cfg::FwCfg;
pub use pci::PciHost;
pub use pending::PendingEvents;
pub use system_control::SystemControlA;
pub use uart::{BenchMarker, DebugExit, Uart16550};
