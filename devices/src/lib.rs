//! Device models for Basalt guests. Devices are pure state machines: they never
//! touch hardware, so every one of them is tested on the host.
#![cfg_attr(not(test), no_std)]

extern crate alloc;

pub mod bus;
pub mod pending;
pub mod uart;

pub use bus::{BusError, MmioBus, MmioDevice, PortBus, PortDevice, Request, Unclaimed};
pub use pending::PendingEvents;
pub use uart::{DebugExit, Uart16550};
