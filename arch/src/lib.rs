//! Architectural rules of x86-64 that do not depend on the virtualisation
//! vendor: which XSAVE state components a guest may enable, how large their
//! save area is, which XCR0 values are valid, and the CPUID bits that must agree
//! with them; the guest's own page walk and the access rights it enforces;
//! the decoder of instructions that touch device memory and the integer
//! operations (with their flags) the emulator carries out for them; the
//! trap-class debug exceptions of instructions a hypervisor completes itself.
//! Pure functions of their inputs, so the host tests them.
#![no_std]

pub mod alu;
pub mod control;
pub mod debug;
pub mod decode;
pub mod paging;
pub mod xstate;
