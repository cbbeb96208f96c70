//! What Basalt boots from and what it boots guests from, as pure code the host
//! tests: the boot bundle (the image's ramdisk: command line, VM list, guest
//! images), the VM list format, loaders for flat, ELF, Multiboot and Linux
//! (bzImage, or vmlinux through its PVH entry) images, and which of those a
//! kernel file is.
#![cfg_attr(not(test), no_std)]

extern crate alloc;

pub mod bundle;
#[cfg(test)]
mod fuzz;
#[cfg(test)]
mod hostile;
pub mod image;
pub mod linux;
pub mod manifest;
pub mod multiboot;
pub mod packed;
pub mod place;
#[cfg(any(test, feature = "plan-check"))]
pub mod plan_check;
pub mod pvh;

pub use bundle::{Bundle, BundleError};
pub use image::{
    detect_format, load, parse_elf, ElfClass, ElfImage, ElfSegment, EntryMode, Extras, GuestRam, ImageError, LoadPlan,
};
pub use manifest::{parse_manifest, Format, ManifestError, VmSpec};
pub use multiboot::Module;
