//! VT-x as a library. Everything here is pure computation over values read from the
//! CPU, so the host can test it; the kernel supplies the MSR reads.
#![cfg_attr(not(test), no_std)]

pub mod caps;
pub mod controls;
pub mod msr;

pub use caps::{EptVpidCaps, FixedBits, VmxBasic, VmxCapabilities, VmxMisc};
pub use controls::{AllowedControls, ControlError};
pub use msr::MsrReader;
