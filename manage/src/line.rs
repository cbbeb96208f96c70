//! The shell's line editor, fed one byte at a time from the serial console.
//!
//! A serial line delivers whatever the far end sends: a terminal's escape
//! sequences, line noise, a file pasted by mistake. The editor therefore
//! keeps a bounded line, swallows the escape sequences it does not use, and
//! turns anything that is not text into one clear error when Enter comes,
//! rather than running a command made of garbage.

use alloc::collections::VecDeque;
use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;

/// Bytes of a command line; longer lines are refused whole.
pub const MAX_LINE: usize = 160;
/// Lines kept for the arrow keys.
pub const HISTORY: usize = 32;

/// Ctrl-], the byte that leaves a VM's console (as telnet's escape). The
/// kernel watches for it while a console is attached; at the shell prompt it
/// means nothing and is ignored, so pressing it once too often is harmless.
pub const CONSOLE_ESCAPE: u8 = 0x1d;

const CTRL_C: u8 = 0x03;
const BACKSPACE: u8 = 0x08;
const TAB: u8 = 0x09;
const LINE_FEED: u8 = 0x0a;
const CARRIAGE_RETURN: u8 = 0x0d;
const CTRL_U: u8 = 0x15;
const ESCAPE: u8 = 0x1b;
const DELETE: u8 = 0x7f;

/// Erases the character left of the cursor on a terminal.
const ERASE_ONE: &[u8] = b"\x08 \x08";
/// Returns to column 0 and clears the terminal's line, before a redraw.
const CLEAR_LINE: &[u8] = b"\r\x1b[K";

/// What a byte completed.
#[derive(Debug, PartialEq, Eq, Clone)]
pub enum Event {
    /// Enter on a good line: the text as typed, untrimmed (possibly empty).
    Line(String),
    /// Ctrl-C: the line was dropped.
    Cancelled,
    /// Enter on a line that cannot be run; the line was dropped.
    Error(LineError),
}

/// Why a line was refused at Enter.
#[derive(Debug, PartialEq, Eq, Clone, Copy)]
pub enum LineError {
    /// More than `MAX_LINE` bytes were typed.
    TooLong,
    /// A byte that is neither printable ASCII nor an editing key arrived.
    NotText,
}

impl fmt::Display for LineError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LineError::TooLong => write!(f, "line too long (at most {MAX_LINE} characters); nothing done"),
            LineError::NotText => f.write_str("the line held bytes that are not text; nothing done"),
        }
    }
}

/// Where the editor is in a terminal escape sequence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Escape {
    /// Not in one.
    None,
    /// After ESC.
    Started,
    /// After ESC '['; `plain` while no parameter or intermediate byte has
    /// come, since only the plain arrows ("ESC [ A") recall history and a
    /// modified one ("ESC [ 1 ; 5 A", Ctrl-Up) is swallowed.
    ControlSequence { plain: bool },
    /// After ESC 'O' (SS3, what some terminals send for the arrows and F1-F4).
    SingleShift,
}

/// A line editor with history; see the module's documentation.
#[derive(Debug, Clone)]
pub struct Editor {
    prompt: &'static str,
    /// Printable ASCII only, at most `MAX_LINE` bytes.
    line: Vec<u8>,
    /// More than `MAX_LINE` bytes were typed since the line began.
    overflowed: bool,
    /// A byte that is not text was typed since the line began.
    garbage: bool,
    /// The last byte was CR, so an LF now is the same Enter.
    after_carriage_return: bool,
    escape: Escape,
    /// Oldest first; non-blank lines, no two neighbours equal.
    history: VecDeque<String>,
    /// The history entry shown by the arrow keys, or None for a fresh line.
    recalled: Option<usize>,
}

impl Editor {
    pub fn new(prompt: &'static str) -> Editor {
        Editor {
            prompt,
            line: Vec::with_capacity(MAX_LINE),
            overflowed: false,
            garbage: false,
            after_carriage_return: false,
            escape: Escape::None,
            history: VecDeque::with_capacity(HISTORY),
            recalled: None,
        }
    }

    pub fn prompt(&self) -> &'static str {
        self.prompt
    }

    /// The line typed so far (printable ASCII).
    pub fn current_line(&self) -> &[u8] {
        &self.line
    }

    /// The lines the arrow keys recall, oldest first.
    pub fn history(&self) -> impl Iterator<Item = &str> {
        self.history.iter().map(String::as_str)
    }

    /// Draws the prompt and the line typed so far again, over whatever the
    /// terminal's current line shows: for the kernel to call after printing
    /// a log line over a half-typed command.
    pub fn redraw(&self, echo: &mut Vec<u8>) {
        echo.extend_from_slice(CLEAR_LINE);
        echo.extend_from_slice(self.prompt.as_bytes());
        echo.extend_from_slice(&self.line);
    }

    /// Feeds one typed byte; what to echo to the terminal is appended to `echo`.
    pub fn feed(&mut self, byte: u8, echo: &mut Vec<u8>) -> Option<Event> {
        let after_carriage_return = core::mem::replace(&mut self.after_carriage_return, false);
        if self.in_escape(byte, echo) {
            return None;
        }
        match byte {
            LINE_FEED if after_carriage_return => None,
            CARRIAGE_RETURN | LINE_FEED => {
                self.after_carriage_return = byte == CARRIAGE_RETURN;
                echo.extend_from_slice(b"\r\n");
                Some(self.enter())
            }
            0x20..=0x7e => {
                if self.overflowed || self.line.len() >= MAX_LINE {
                    self.overflowed = true;
                } else {
                    self.line.push(byte);
                    echo.push(byte);
                }
                None
            }
            BACKSPACE | DELETE => {
                if self.line.pop().is_some() {
                    echo.extend_from_slice(ERASE_ONE);
                }
                None
            }
            CTRL_U => {
                self.clear_line();
                self.redraw(echo);
                None
            }
            CTRL_C => {
                self.clear_line();
                self.recalled = None;
                echo.extend_from_slice(b"^C\r\n");
                Some(Event::Cancelled)
            }
            ESCAPE => {
                self.escape = Escape::Started;
                None
            }
            TAB | CONSOLE_ESCAPE => None,
            _ => {
                self.garbage = true;
                None
            }
        }
    }

    /// Moves an escape sequence along; true when `byte` belonged to it (and
    /// is used up), false when it is to be handled as an ordinary byte.
    fn in_escape(&mut self, byte: u8, echo: &mut Vec<u8>) -> bool {
        match self.escape {
            Escape::None => false,
            Escape::Started => match byte {
                b'[' => {
                    self.escape = Escape::ControlSequence { plain: true };
                    true
                }
                b'O' => {
                    self.escape = Escape::SingleShift;
                    true
                }
                // A lone ESC: dropped, and the byte after it is just a byte.
                _ => {
                    self.escape = Escape::None;
                    false
                }
            },
            Escape::ControlSequence { plain } => match byte {
                // Parameter (0x30-0x3f) and intermediate (0x20-0x2f) bytes.
                0x20..=0x3f => {
                    self.escape = Escape::ControlSequence { plain: false };
                    true
                }
                // The final byte ends it.
                0x40..=0x7e => {
                    self.escape = Escape::None;
                    match (plain, byte) {
                        (true, b'A') => self.recall_older(echo),
                        (true, b'B') => self.recall_newer(echo),
                        _ => {}
                    }
                    true
                }
                // Not part of a sequence (Enter, Ctrl-C, a high byte): the
                // sequence is abandoned and the byte keeps its meaning.
                _ => {
                    self.escape = Escape::None;
                    false
                }
            },
            Escape::SingleShift => {
                self.escape = Escape::None;
                (0x40..=0x7e).contains(&byte)
            }
        }
    }

    /// Enter: the event for the line, then an empty line.
    fn enter(&mut self) -> Event {
        let event = if self.overflowed {
            Event::Error(LineError::TooLong)
        } else if self.garbage {
            Event::Error(LineError::NotText)
        } else {
            // Printable ASCII only, so each byte is its own character.
            let text: String = self.line.iter().map(|&byte| char::from(byte)).collect();
            self.remember(&text);
            Event::Line(text)
        };
        self.clear_line();
        self.recalled = None;
        event
    }

    fn clear_line(&mut self) {
        self.line.clear();
        self.overflowed = false;
        self.garbage = false;
    }

    /// Adds a run line to the history, unless it is blank or repeats the newest.
    fn remember(&mut self, text: &str) {
        if text.trim().is_empty() || self.history.back().map(String::as_str) == Some(text) {
            return;
        }
        if self.history.len() >= HISTORY {
            self.history.pop_front();
        }
        self.history.push_back(String::from(text));
    }

    /// Up arrow: the entry before the one shown (the newest at first); stays
    /// on the oldest.
    fn recall_older(&mut self, echo: &mut Vec<u8>) {
        let index = match self.recalled {
            None => self.history.len().checked_sub(1),
            Some(index) => Some(index.saturating_sub(1)),
        };
        if let Some(index) = index {
            self.show(Some(index), echo);
        }
    }

    /// Down arrow: the entry after the one shown; past the newest, an empty
    /// line. Nothing when no entry is shown.
    fn recall_newer(&mut self, echo: &mut Vec<u8>) {
        if let Some(index) = self.recalled {
            let next = index.checked_add(1).filter(|&next| next < self.history.len());
            self.show(next, echo);
        }
    }

    /// Replaces the line with history entry `index` (None: empty) and redraws.
    fn show(&mut self, index: Option<usize>, echo: &mut Vec<u8>) {
        self.clear_line();
        self.recalled = index;
        if let Some(entry) = index.and_then(|index| self.history.get(index)) {
            // Entries came from lines no longer than MAX_LINE; bounded anyway.
            let bytes = entry.as_bytes();
            self.line.extend_from_slice(bytes.get(..MAX_LINE).unwrap_or(bytes));
        }
        self.redraw(echo);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::string::ToString;

    const PROMPT: &str = "basalt> ";

    /// Feeds `bytes`, returning the echo and every event, in order.
    fn type_bytes(editor: &mut Editor, bytes: &[u8]) -> (Vec<u8>, Vec<Event>) {
        let mut echo = Vec::new();
        let events = bytes.iter().filter_map(|&byte| editor.feed(byte, &mut echo)).collect();
        (echo, events)
    }

    fn line(text: &str) -> Event {
        Event::Line(text.to_string())
    }

    #[test]
    fn the_prompt_is_kept() {
        let editor = Editor::new(PROMPT);
        assert_eq!(editor.prompt(), PROMPT);
        assert_eq!(editor.current_line(), b"");
        assert_eq!(editor.history().count(), 0);
    }

    #[test]
    fn printable_bytes_are_kept_and_echoed() {
        let mut editor = Editor::new(PROMPT);
        let (echo, events) = type_bytes(&mut editor, b"list ~!");
        assert_eq!(echo, b"list ~!");
        assert!(events.is_empty());
        assert_eq!(editor.current_line(), b"list ~!");
    }

    #[test]
    fn enter_is_cr_or_lf_and_cr_lf_counts_once() {
        let mut editor = Editor::new(PROMPT);
        let (echo, events) = type_bytes(&mut editor, b"list\r");
        assert_eq!(echo, b"list\r\n");
        assert_eq!(events, [line("list")]);
        assert_eq!(editor.current_line(), b"");

        let (echo, events) = type_bytes(&mut editor, b"top\n");
        assert_eq!(echo, b"top\r\n");
        assert_eq!(events, [line("top")]);

        let (echo, events) = type_bytes(&mut editor, b"mem\r\nlog\r\n");
        assert_eq!(echo, b"mem\r\nlog\r\n");
        assert_eq!(events, [line("mem"), line("log")]);

        // LF LF is two Enters, CR CR too, and LF CR as well.
        let (_, events) = type_bytes(&mut editor, b"\n\n\r\r\n\r");
        assert_eq!(events, [line(""), line(""), line(""), line(""), line("")]);
        // Only an LF straight after a CR is skipped: CR x LF is two Enters.
        let (_, events) = type_bytes(&mut editor, b"\rx\n");
        assert_eq!(events, [line(""), line("x")]);
    }

    #[test]
    fn an_empty_line_and_spaces_are_given_as_typed() {
        let mut editor = Editor::new(PROMPT);
        let (echo, events) = type_bytes(&mut editor, b"\r");
        assert_eq!(echo, b"\r\n");
        assert_eq!(events, [line("")]);
        let (_, events) = type_bytes(&mut editor, b"  start web  \r");
        assert_eq!(events, [line("  start web  ")]);
    }

    #[test]
    fn backspace_and_delete_remove_the_last_byte() {
        let mut editor = Editor::new(PROMPT);
        let (echo, _) = type_bytes(&mut editor, b"lisx\x08t");
        assert_eq!(echo, b"lisx\x08 \x08t");
        assert_eq!(editor.current_line(), b"list");
        let (echo, _) = type_bytes(&mut editor, b"\x7f\x7f");
        assert_eq!(echo, b"\x08 \x08\x08 \x08");
        assert_eq!(editor.current_line(), b"li");
        // On an empty line: nothing echoed.
        let (echo, _) = type_bytes(&mut editor, b"\x08\x08\x7f\x7f");
        assert_eq!(echo, b"\x08 \x08\x08 \x08");
        assert_eq!(editor.current_line(), b"");
        let (echo, events) = type_bytes(&mut editor, b"\x08");
        assert_eq!(echo, b"");
        assert!(events.is_empty());
    }

    #[test]
    fn ctrl_u_clears_the_line_and_redraws_the_prompt() {
        let mut editor = Editor::new(PROMPT);
        let (echo, events) = type_bytes(&mut editor, b"garbage\x15");
        assert_eq!(echo, b"garbage\r\x1b[Kbasalt> ");
        assert!(events.is_empty());
        assert_eq!(editor.current_line(), b"");
        let (_, events) = type_bytes(&mut editor, b"list\r");
        assert_eq!(events, [line("list")]);
    }

    #[test]
    fn ctrl_u_forgets_overflow_and_garbage() {
        let mut editor = Editor::new(PROMPT);
        let mut bytes = alloc::vec![b'a'; MAX_LINE + 5];
        bytes.extend_from_slice(b"\x15list\r");
        assert_eq!(type_bytes(&mut editor, &bytes).1, [line("list")]);
        assert_eq!(type_bytes(&mut editor, b"x\x01y\x15list\r").1, [line("list")]);
    }

    #[test]
    fn ctrl_c_cancels_the_line() {
        let mut editor = Editor::new(PROMPT);
        let (echo, events) = type_bytes(&mut editor, b"start web\x03");
        assert_eq!(echo, b"start web^C\r\n");
        assert_eq!(events, [Event::Cancelled]);
        assert_eq!(editor.current_line(), b"");
        // Cancelled lines are not remembered.
        assert_eq!(editor.history().count(), 0);
        // On an empty line too, and it clears overflow and garbage.
        let (echo, events) = type_bytes(&mut editor, b"\x03");
        assert_eq!(echo, b"^C\r\n");
        assert_eq!(events, [Event::Cancelled]);
        let (_, events) = type_bytes(&mut editor, b"\x01\x03ok\r");
        assert_eq!(events, [Event::Cancelled, line("ok")]);
    }

    #[test]
    fn a_line_at_the_limit_is_fine() {
        let mut editor = Editor::new(PROMPT);
        let text = "a".repeat(MAX_LINE);
        let (echo, events) = type_bytes(&mut editor, alloc::format!("{text}\r").as_bytes());
        assert_eq!(events, [Event::Line(text.clone())]);
        assert_eq!(echo, alloc::format!("{text}\r\n").as_bytes());
    }

    #[test]
    fn a_line_past_the_limit_is_refused() {
        let mut editor = Editor::new(PROMPT);
        let text = "b".repeat(MAX_LINE + 40);
        let (echo, events) = type_bytes(&mut editor, text.as_bytes());
        // Only the first MAX_LINE bytes were echoed or kept.
        assert_eq!(echo, "b".repeat(MAX_LINE).as_bytes());
        assert_eq!(editor.current_line().len(), MAX_LINE);
        assert!(events.is_empty());
        // Backspace still erases what is shown, but the line stays refused:
        // what was typed past the limit is gone.
        let (echo, _) = type_bytes(&mut editor, b"\x08c");
        assert_eq!(echo, b"\x08 \x08");
        assert_eq!(editor.current_line().len(), MAX_LINE - 1);
        let (echo, events) = type_bytes(&mut editor, b"\r");
        assert_eq!(echo, b"\r\n");
        assert_eq!(events, [Event::Error(LineError::TooLong)]);
        // The next line starts afresh, and the refused one is not history.
        assert_eq!(type_bytes(&mut editor, b"list\r").1, [line("list")]);
        assert_eq!(editor.history().collect::<Vec<_>>(), ["list"]);
    }

    #[test]
    fn too_long_wins_over_not_text() {
        let mut editor = Editor::new(PROMPT);
        let mut bytes = alloc::vec![0x01];
        bytes.extend(core::iter::repeat_n(b'z', MAX_LINE + 1));
        bytes.push(b'\r');
        assert_eq!(type_bytes(&mut editor, &bytes).1, [Event::Error(LineError::TooLong)]);
    }

    #[test]
    fn bytes_that_are_not_text_spoil_the_line_silently() {
        for bad in [0x00u8, 0x01, 0x02, 0x04, 0x07, 0x0b, 0x0c, 0x0e, 0x1a, 0x1c, 0x1e, 0x1f, 0x80, 0xc3, 0xff] {
            let mut editor = Editor::new(PROMPT);
            let (echo, events) = type_bytes(&mut editor, &[b'l', bad, b's', b'\r']);
            assert_eq!(echo, b"ls\r\n", "byte {bad:#x}");
            assert_eq!(events, [Event::Error(LineError::NotText)], "byte {bad:#x}");
            // The next line is fine again.
            assert_eq!(type_bytes(&mut editor, b"ls\r").1, [line("ls")]);
            assert_eq!(editor.history().collect::<Vec<_>>(), ["ls"]);
        }
    }

    #[test]
    fn tab_and_the_console_escape_are_ignored() {
        let mut editor = Editor::new(PROMPT);
        let (echo, events) = type_bytes(&mut editor, b"li\tst\x1d\r");
        assert_eq!(echo, b"list\r\n");
        assert_eq!(events, [line("list")]);
    }

    #[test]
    fn error_messages() {
        assert_eq!(LineError::TooLong.to_string(), "line too long (at most 160 characters); nothing done");
        assert_eq!(LineError::NotText.to_string(), "the line held bytes that are not text; nothing done");
    }

    #[test]
    fn escape_sequences_that_are_not_arrows_are_swallowed() {
        let mut editor = Editor::new(PROMPT);
        // Right, left, Ctrl-Up, Delete key, F1 (SS3), Home (SS3), a private mode.
        let sequences: [&[u8]; 8] =
            [b"\x1b[C", b"\x1b[D", b"\x1b[1;5A", b"\x1b[3~", b"\x1bOP", b"\x1bOH", b"\x1b[?25h", b"\x1b[ q"];
        for sequence in sequences {
            let mut bytes = b"ab".to_vec();
            bytes.extend_from_slice(sequence);
            bytes.extend_from_slice(b"c\r");
            let (echo, events) = type_bytes(&mut editor, &bytes);
            assert_eq!(echo, b"abc\r\n", "{sequence:?}");
            assert_eq!(events, [line("abc")], "{sequence:?}");
        }
    }

    #[test]
    fn a_lone_escape_is_dropped_and_the_next_byte_kept() {
        let mut editor = Editor::new(PROMPT);
        let (echo, events) = type_bytes(&mut editor, b"a\x1bxb\r");
        assert_eq!(echo, b"axb\r\n");
        assert_eq!(events, [line("axb")]);
        // ESC then Enter: Enter still works.
        let (_, events) = type_bytes(&mut editor, b"q\x1b\r");
        assert_eq!(events, [line("q")]);
        // ESC ESC [ C: the first ESC is dropped, the second starts a sequence.
        let (echo, events) = type_bytes(&mut editor, b"x\x1b\x1b[Cy\r");
        assert_eq!(echo, b"xy\r\n");
        assert_eq!(events, [line("xy")]);
    }

    #[test]
    fn a_sequence_cut_by_a_control_byte_gives_the_byte_its_meaning() {
        let mut editor = Editor::new(PROMPT);
        assert_eq!(type_bytes(&mut editor, b"ab\x1b[1\r").1, [line("ab")]);
        assert_eq!(type_bytes(&mut editor, b"ab\x1b[\x03").1, [Event::Cancelled]);
        assert_eq!(type_bytes(&mut editor, b"ab\x1bO\r").1, [line("ab")]);
        // A high byte inside a sequence still spoils the line.
        assert_eq!(type_bytes(&mut editor, b"ab\x1b[\xff\r").1, [Event::Error(LineError::NotText)]);
    }

    #[test]
    fn the_arrows_recall_history() {
        let mut editor = Editor::new(PROMPT);
        type_bytes(&mut editor, b"list\rinfo web\rtop\r");
        assert_eq!(editor.history().collect::<Vec<_>>(), ["list", "info web", "top"]);

        let (echo, _) = type_bytes(&mut editor, b"\x1b[A");
        assert_eq!(echo, b"\r\x1b[Kbasalt> top");
        assert_eq!(editor.current_line(), b"top");
        let (echo, _) = type_bytes(&mut editor, b"\x1b[A");
        assert_eq!(echo, b"\r\x1b[Kbasalt> info web");
        let (echo, _) = type_bytes(&mut editor, b"\x1b[A");
        assert_eq!(echo, b"\r\x1b[Kbasalt> list");
        // At the oldest, up stays there.
        let (echo, _) = type_bytes(&mut editor, b"\x1b[A");
        assert_eq!(echo, b"\r\x1b[Kbasalt> list");
        let (echo, _) = type_bytes(&mut editor, b"\x1b[B\x1b[B");
        assert_eq!(echo, b"\r\x1b[Kbasalt> info web\r\x1b[Kbasalt> top");
        // Past the newest: an empty line.
        let (echo, _) = type_bytes(&mut editor, b"\x1b[B");
        assert_eq!(echo, b"\r\x1b[Kbasalt> ");
        assert_eq!(editor.current_line(), b"");
        // And down again does nothing.
        let (echo, _) = type_bytes(&mut editor, b"\x1b[B");
        assert_eq!(echo, b"");
    }

    #[test]
    fn a_recalled_line_can_be_edited_and_run() {
        let mut editor = Editor::new(PROMPT);
        type_bytes(&mut editor, b"start web\r");
        let (echo, events) = type_bytes(&mut editor, b"\x1b[A\x7f\x7f\x7fdb\r");
        assert_eq!(echo, b"\r\x1b[Kbasalt> start web\x08 \x08\x08 \x08\x08 \x08db\r\n");
        assert_eq!(events, [line("start db")]);
        assert_eq!(editor.history().collect::<Vec<_>>(), ["start web", "start db"]);
        // After Enter, up starts from the newest again.
        let (echo, _) = type_bytes(&mut editor, b"\x1b[A");
        assert_eq!(echo, b"\r\x1b[Kbasalt> start db");
    }

    #[test]
    fn ss3_arrows_do_not_recall() {
        let mut editor = Editor::new(PROMPT);
        type_bytes(&mut editor, b"list\r");
        let (echo, _) = type_bytes(&mut editor, b"\x1bOA");
        assert_eq!(echo, b"");
        assert_eq!(editor.current_line(), b"");
    }

    #[test]
    fn arrows_with_no_history_do_nothing() {
        let mut editor = Editor::new(PROMPT);
        let (echo, events) = type_bytes(&mut editor, b"ab\x1b[A\x1b[B");
        assert_eq!(echo, b"ab");
        assert!(events.is_empty());
        assert_eq!(editor.current_line(), b"ab");
    }

    #[test]
    fn history_skips_blank_lines_repeats_and_refusals() {
        let mut editor = Editor::new(PROMPT);
        type_bytes(&mut editor, b"\r   \rlist\rlist\r\x01x\rtop\rlist\r");
        assert_eq!(editor.history().collect::<Vec<_>>(), ["list", "top", "list"]);
        // Repeats are compared as typed: a differently spaced line is new.
        type_bytes(&mut editor, b"list \r");
        assert_eq!(editor.history().collect::<Vec<_>>(), ["list", "top", "list", "list "]);
    }

    #[test]
    fn history_keeps_the_newest_entries() {
        let mut editor = Editor::new(PROMPT);
        for n in 0..HISTORY + 10 {
            type_bytes(&mut editor, alloc::format!("info vm{n}\r").as_bytes());
        }
        let kept: Vec<&str> = editor.history().collect();
        assert_eq!(kept.len(), HISTORY);
        assert_eq!(kept[0], "info vm10");
        assert_eq!(kept[HISTORY - 1], alloc::format!("info vm{}", HISTORY + 9));
        // Up HISTORY+5 times ends at the oldest kept.
        for _ in 0..HISTORY + 5 {
            type_bytes(&mut editor, b"\x1b[A");
        }
        assert_eq!(editor.current_line(), b"info vm10");
    }

    #[test]
    fn redraw_shows_the_prompt_and_line() {
        let mut editor = Editor::new(PROMPT);
        type_bytes(&mut editor, b"sta");
        let mut echo = Vec::new();
        editor.redraw(&mut echo);
        assert_eq!(echo, b"\r\x1b[Kbasalt> sta");
    }

    /// 100k random bytes, then a sane line: no panic, the line never grows
    /// past MAX_LINE, the echo holds only what a terminal can take, and the
    /// editor recovers.
    #[test]
    fn random_bytes_never_break_the_editor() {
        let mut state = 0x853c_49e6_748f_ea9b_u64;
        let mut editor = Editor::new(PROMPT);
        let mut echo = Vec::new();
        let mut lines = 0;
        for _ in 0..100_000 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            // Bias towards the interesting bytes now and then.
            let byte = match state >> 60 {
                0 => b'\r',
                1 => 0x1b,
                2 => b'[',
                3 => b'A',
                _ => (state >> 8) as u8,
            };
            echo.clear();
            if let Some(Event::Line(text)) = editor.feed(byte, &mut echo) {
                assert!(text.len() <= MAX_LINE);
                assert!(text.bytes().all(|b| (0x20..=0x7e).contains(&b)));
                lines += 1;
            }
            assert!(editor.current_line().len() <= MAX_LINE);
            assert!(editor.current_line().iter().all(|b| (0x20..=0x7e).contains(b)));
            assert!(echo.len() <= MAX_LINE + PROMPT.len() + CLEAR_LINE.len());
            assert!(editor.history().count() <= HISTORY);
        }
        assert!(lines > 0);
        // Whatever state it was left in, Ctrl-C then a line works.
        let (_, events) = type_bytes(&mut editor, b"\x03list\r");
        assert_eq!(events.last(), Some(&line("list")));
    }
}
