//! AMD SVM as a library: the data formats of AMD64 APM vol. 2, chapter 15 and
//! appendix B, as plain types that the host tests, and a #VMEXIT translated
//! into the vendor-neutral `vmexit::Exit` (`neutral`). Nothing here touches the
//! CPU; the VMRUN path, MSR writes and CPUID reads belong to the kernel's SVM
//! back end.
#![cfg_attr(not(test), no_std)]

extern crate alloc;

pub mod caps;
pub mod exit;
pub mod intercepts;
pub mod maps;
pub mod neutral;
pub mod vmcb;

pub use caps::{SvmCapabilities, SvmError, SvmFeatures};
pub use exit::{Event, EventType, ExitCode};
pub use intercepts::{Intercepts, Wants};
pub use vmcb::{ControlArea, SaveArea, Segment, Vmcb};
