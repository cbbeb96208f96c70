//! VT-x as a library. Decoding, control computation and the translation of an
//! exit into the vendor-neutral `vmexit::Exit` (`neutral`) are pure and tested
//! on the host; the instruction wrappers and the guest entry stub are the only
//! code here that touches the CPU.
#![cfg_attr(not(test), no_std)]

extern crate alloc;

pub mod caps;
pub mod controls;
pub mod error;
pub mod exit;
pub mod guest_state;
pub mod instructions;
pub mod msr;
pub mod neutral;
pub mod vmcs;

pub use caps::{EptVpidCaps, FixedBits, SecondaryControls, VmxBasic, VmxCapabilities, VmxMisc};
pub use controls::{AllowedControls, ControlError};
pub use error::{InstructionError, VmFail};
pub use exit::ExitReason;
pub use instructions::GuestRegisters;
pub use msr::MsrReader;
