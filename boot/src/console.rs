//! The terminal of `cargo xtask run`: raw mode while the run lasts, keys to
//! the guest's serial port in whole chunks with Ctrl-A X ending the run, and
//! the guest's output to the screen without cursor-position queries.
//!
//! Why the queries go: busybox's shell asks the terminal where the cursor is
//! (ESC [ 6 n) at every prompt, and the terminal's answer (ESC [ row ; col R)
//! travels back as typed input through the emulator, Basalt's COM1 polling and
//! the guest's UART. The shell waits only 50 ms of guest time for the rest of
//! an escape sequence after its ESC; under Bochs that is a few milliseconds of
//! wall time, and QEMU's stdio takes input a byte per main-loop turn. When the
//! answer arrives late or split, the ESC is taken as a key of its own and
//! "[50;1R" is typed into the next command ("sh: [50: not found"). Without the
//! query there is no answer; the shell only uses it to correct its idea of the
//! prompt's column and works the same without.

use std::process::{Command, Stdio};

pub const CTRL_A: u8 = 0x01;

/// The cursor-position query (DSR 6) a terminal answers with ESC [ row ; col R.
const CURSOR_POSITION_QUERY: &[u8] = b"\x1b[6n";

/// Passes guest output on to the terminal without cursor-position queries,
/// also when a query is split between two pieces of output.
#[derive(Default)]
pub struct QueryFilter {
    /// The end of the last piece, held back because it may begin a query.
    held: Vec<u8>,
}

impl QueryFilter {
    /// The bytes of `output` (after any held back from before) that go to the terminal.
    pub fn pass(&mut self, output: &[u8]) -> Vec<u8> {
        let mut bytes = std::mem::take(&mut self.held);
        bytes.extend_from_slice(output);
        let mut shown = Vec::with_capacity(bytes.len());
        let mut at = 0;
        while at < bytes.len() {
            let rest = &bytes[at..];
            if rest.starts_with(CURSOR_POSITION_QUERY) {
                at += CURSOR_POSITION_QUERY.len();
            } else if CURSOR_POSITION_QUERY.starts_with(rest) {
                self.held = rest.to_vec();
                break;
            } else {
                shown.push(bytes[at]);
                at += 1;
            }
        }
        shown
    }
}

/// Keys typed on the terminal, for the guest: Ctrl-A X ends the run and
/// Ctrl-A Ctrl-A types one Ctrl-A, as in QEMU.
#[derive(Default)]
pub struct KeyRelay {
    after_ctrl_a: bool,
}

impl KeyRelay {
    /// The keys to send for what was read from the terminal, in one piece so
    /// an escape sequence (an arrow key) reaches the guest whole; `None` once
    /// Ctrl-A X was typed.
    pub fn keys(&mut self, typed: &[u8]) -> Option<Vec<u8>> {
        let mut keys = Vec::with_capacity(typed.len());
        for &byte in typed {
            if self.after_ctrl_a && (byte == b'x' || byte == b'X') {
                return None;
            }
            self.after_ctrl_a = byte == CTRL_A && !self.after_ctrl_a;
            if !self.after_ctrl_a {
                keys.push(byte);
            }
        }
        Some(keys)
    }
}

/// The terminal in raw mode (no line editing, no echo, no signals, no output
/// processing) while it lives, when stdin is a terminal; restored when dropped.
pub struct RawTerminal {
    saved: Option<String>,
}

impl RawTerminal {
    pub fn enter() -> RawTerminal {
        use std::io::IsTerminal;
        if !std::io::stdin().is_terminal() {
            return RawTerminal { saved: None };
        }
        let stty = |args: &[&str]| Command::new("stty").args(args).stdin(Stdio::inherit()).output().ok();
        let saved =
            stty(&["-g"]).filter(|o| o.status.success()).map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned());
        stty(&["raw", "-echo"]);
        RawTerminal { saved }
    }
}

impl Drop for RawTerminal {
    fn drop(&mut self) {
        if let Some(saved) = &self.saved {
            let _ = Command::new("stty").arg(saved).stdin(Stdio::inherit()).status();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursor_position_queries_never_reach_the_terminal() {
        let mut filter = QueryFilter::default();
        assert_eq!(filter.pass(b"/ # \x1b[6n"), b"/ # ");
        assert_eq!(filter.pass(b"ls\r\n\x1b[6n\x1b[6nok"), b"ls\r\nok");
        // Other escape sequences (colours, cursor moves) pass as they are.
        assert_eq!(filter.pass(b"\x1b[1;32mgreen\x1b[0m\x1b[6A\x1b[J"), b"\x1b[1;32mgreen\x1b[0m\x1b[6A\x1b[J");
    }

    #[test]
    fn a_query_split_between_pieces_is_still_taken_out() {
        let mut filter = QueryFilter::default();
        assert_eq!(filter.pass(b"/ # \x1b["), b"/ # ");
        assert_eq!(filter.pass(b"6"), b"");
        assert_eq!(filter.pass(b"nabc"), b"abc");
        // What only looked like a query's start goes out with the next piece.
        assert_eq!(filter.pass(b"x\x1b"), b"x");
        assert_eq!(filter.pass(b"[2J"), b"\x1b[2J");
        assert_eq!(filter.pass(b"\x1b[6"), b"");
        assert_eq!(filter.pass(b"m"), b"\x1b[6m");
    }

    #[test]
    fn keys_go_on_in_one_piece_until_ctrl_a_x() {
        let mut relay = KeyRelay::default();
        assert_eq!(relay.keys(b"ls\r").unwrap(), b"ls\r");
        // An arrow key stays one piece, so the shell sees the whole sequence at once.
        assert_eq!(relay.keys(b"\x1b[A").unwrap(), b"\x1b[A");
        // Ctrl-A Ctrl-A types a Ctrl-A; Ctrl-A then another key types that key.
        assert_eq!(relay.keys(&[CTRL_A, CTRL_A, b'a', CTRL_A, b'b']).unwrap(), [CTRL_A, b'a', b'b']);
        // Ctrl-A X ends the run, also when the two come in separate reads.
        assert_eq!(relay.keys(&[b'q', CTRL_A]).unwrap(), b"q");
        assert_eq!(relay.keys(b"x"), None);
        assert_eq!(KeyRelay::default().keys(&[CTRL_A, b'X']), None);
    }
}
