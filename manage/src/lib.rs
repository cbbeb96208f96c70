//! The management shell on Basalt's console, as pure parts the kernel drives:
//!
//! - [`line`]: a line editor fed one byte at a time (echo, backspace,
//!   Ctrl-U, history on the arrow keys, the console escape Ctrl-]),
//!   bounded, that turns binary garbage into one clear error;
//! - [`command`]: the command parser (`list`, `info NAME`, `start NAME`, ...)
//!   with one clear line for every mistake;
//! - [`lifecycle`]: the VM states and which operation each allows;
//! - [`format`]: what each command prints, from plain figures the kernel
//!   gathers;
//! - [`ring`]: bounded byte rings (a VM's recent console output, Basalt's
//!   recent log lines) that keep the newest bytes and count what they lost;
//! - [`sample`]: counters shown as their growth since the last look.
//!
//! No clock, no hardware, no locks: the kernel owns those.
#![cfg_attr(not(test), no_std)]

extern crate alloc;

pub mod command;
pub mod format;
pub mod lifecycle;
pub mod line;
pub mod ring;
pub mod sample;
