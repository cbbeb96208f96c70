//! A VM's serial console on a managed host (`shell=on`). Its output is kept
//! in a bounded ring whoever watches (the shell's `console NAME` shows the
//! recent part first); while an operator is attached it goes to the host's
//! console as raw bytes (an interactive shell echoes one key at a time),
//! otherwise as "vm NAME | ..." lines in Basalt's log, like any VM's.
//! Defined once per VM, so the ring outlives a restart.

use crate::log::GuestOutput;
use alloc::boxed::Box;
use alloc::string::String;
use alloc::sync::Arc;
use alloc::vec::Vec;
use basalt_manage::ring::ByteRing;
use core::sync::atomic::{AtomicBool, Ordering};
use devices::uart::{LineBuffer, LineSink};
use spin::Mutex;

/// Recent output kept per VM (a few screens).
const RECENT_BYTES: usize = 16 * 1024;

pub struct VmConsole {
    name: String,
    recent: Mutex<ByteRing>,
    attached: AtomicBool,
}

impl VmConsole {
    pub fn new(name: &str) -> Arc<VmConsole> {
        Arc::new(VmConsole {
            name: name.into(),
            recent: Mutex::new(ByteRing::new(RECENT_BYTES)),
            attached: AtomicBool::new(false),
        })
    }

    pub fn set_attached(&self, on: bool) {
        self.attached.store(on, Ordering::Release);
    }

    /// Its recent output, from a line's start, oldest first.
    pub fn recent(&self) -> Vec<u8> {
        x86_64::instructions::interrupts::without_interrupts(|| self.recent.lock().whole_lines())
    }

    /// The COM1 sink of one run of the VM (its UART passes every byte at
    /// once): kept in the ring, then raw or as lines.
    pub fn sink(self: &Arc<Self>, output: Arc<GuestOutput>) -> LineSink {
        let console = self.clone();
        let lines_out = output.clone();
        let name = self.name.clone();
        let mut lines = FlushedOnDrop(LineBuffer::new(Box::new(move |line: &[u8]| {
            lines_out.line(format_args!("vm {name}"), line)
        })));
        Box::new(move |bytes: &[u8]| {
            x86_64::instructions::interrupts::without_interrupts(|| console.recent.lock().push(bytes));
            if console.attached.load(Ordering::Acquire) {
                output.raw(bytes);
            } else {
                for &byte in bytes {
                    lines.0.push(byte);
                }
            }
        })
    }
}

/// A partial last line still reaches the log when the VM's UART goes.
struct FlushedOnDrop(LineBuffer);

impl Drop for FlushedOnDrop {
    fn drop(&mut self) {
        self.0.flush();
    }
}
