//! The one queue of lines waiting for the host's serial port: Basalt's own log
//! and every VM's console output. The port is slow (38400 baud, ~3.8 KB/s) and
//! guests can write faster than that forever, so nothing waits for it: writers
//! append whole lines and go on, and whoever passes by with nothing better to
//! do sends what the port can take without waiting (`take`).
//!
//! Fair by construction: each source (the host, or one VM) may have at most
//! its quota of bytes queued; a line that would exceed it, or the queue's size,
//! is dropped and counted against its source. A VM flooding its console loses
//! its own lines, never another VM's or the host's, and never slows anyone
//! else down. Lines leave in the order they came.

/// A writer of lines: the host's log is source 0.
pub type Source = usize;
pub const HOST: Source = 0;

/// Each entry is a 3-byte header (source, length) and the line.
const HEADER: usize = 3;
/// Longest line kept whole; longer ones are cut (and the cut counted as dropped).
pub const MAX_LINE: usize = 1024;

/// `BYTES` of queue shared by up to `SOURCES` sources.
pub struct OutputQueue<const BYTES: usize, const SOURCES: usize> {
    ring: [u8; BYTES],
    /// Where the oldest entry starts, and how many bytes the entries take.
    head: usize,
    used: usize,
    /// Bytes of the oldest line already handed out by `take`.
    sent_of_head: usize,
    sources: [SourceState; SOURCES],
}

#[derive(Clone, Copy, Default)]
struct SourceState {
    registered: bool,
    quota: usize,
    /// Bytes (headers included) this source has in the ring.
    queued: usize,
    dropped_bytes: u64,
    dropped_lines: u64,
}

impl<const BYTES: usize, const SOURCES: usize> Default for OutputQueue<BYTES, SOURCES> {
    fn default() -> Self {
        Self::new()
    }
}

impl<const BYTES: usize, const SOURCES: usize> OutputQueue<BYTES, SOURCES> {
    /// The host (source 0) may use the whole queue.
    pub const fn new() -> Self {
        let mut sources =
            [SourceState { registered: false, quota: 0, queued: 0, dropped_bytes: 0, dropped_lines: 0 }; SOURCES];
        sources[HOST] = SourceState { registered: true, quota: BYTES, queued: 0, dropped_bytes: 0, dropped_lines: 0 };
        OutputQueue { ring: [0; BYTES], head: 0, used: 0, sent_of_head: 0, sources }
    }

    /// A new source with at most `quota` bytes queued at once, or None when
    /// every slot is taken. A released slot is reused only once its last line
    /// has left, so counts never mix two sources.
    pub fn register(&mut self, quota: usize) -> Option<Source> {
        let slot = (1..SOURCES).find(|&s| !self.sources[s].registered && self.sources[s].queued == 0)?;
        self.sources[slot] = SourceState { registered: true, quota, ..SourceState::default() };
        Some(slot)
    }

    /// The source writes no more; its queued lines still go out.
    pub fn release(&mut self, source: Source) {
        if source != HOST {
            if let Some(s) = self.sources.get_mut(source) {
                s.registered = false;
            }
        }
    }

    /// Appends one line (the caller adds any newline). Returns false, counting
    /// the line as dropped, when the source is unknown or over its quota, or
    /// the queue is full. A line over MAX_LINE keeps its first MAX_LINE bytes.
    pub fn push(&mut self, source: Source, line: &[u8]) -> bool {
        let Some(state) = self.sources.get(source).filter(|s| s.registered) else { return false };
        let kept = line.len().min(MAX_LINE);
        let need = HEADER + kept;
        if state.queued + need > state.quota || self.used + need > BYTES {
            let s = &mut self.sources[source];
            s.dropped_lines += 1;
            s.dropped_bytes += line.len() as u64;
            return false;
        }
        let header = [source as u8, kept as u8, (kept >> 8) as u8];
        self.write_at(self.used, &header);
        self.write_at(self.used + HEADER, &line[..kept]);
        self.used += need;
        let s = &mut self.sources[source];
        s.queued += need;
        s.dropped_bytes += (line.len() - kept) as u64;
        true
    }

    /// Up to `out.len()` bytes of queued lines, oldest first; how many were
    /// written to `out`. Sources whose lines are gone get their quota back.
    pub fn take(&mut self, out: &mut [u8]) -> usize {
        let mut n = 0;
        while n < out.len() && self.used > 0 {
            let mut header = [0u8; HEADER];
            self.read_at(0, &mut header);
            let (source, len) = (header[0] as usize, header[1] as usize | (header[2] as usize) << 8);
            let chunk = (len - self.sent_of_head).min(out.len() - n);
            self.read_at(HEADER + self.sent_of_head, &mut out[n..n + chunk]);
            n += chunk;
            self.sent_of_head += chunk;
            if self.sent_of_head == len {
                self.head = (self.head + HEADER + len) % BYTES;
                self.used -= HEADER + len;
                self.sent_of_head = 0;
                if let Some(s) = self.sources.get_mut(source) {
                    s.queued -= HEADER + len;
                }
            }
        }
        n
    }

    /// Bytes `source` has waiting (headers included).
    pub fn queued(&self, source: Source) -> usize {
        self.sources.get(source).map_or(0, |s| s.queued)
    }

    pub fn is_empty(&self) -> bool {
        self.used == 0
    }

    /// Lines and bytes of `source` dropped so far.
    pub fn dropped(&self, source: Source) -> (u64, u64) {
        self.sources.get(source).map_or((0, 0), |s| (s.dropped_lines, s.dropped_bytes))
    }

    fn write_at(&mut self, offset: usize, bytes: &[u8]) {
        for (i, &b) in bytes.iter().enumerate() {
            self.ring[(self.head + offset + i) % BYTES] = b;
        }
    }

    fn read_at(&self, offset: usize, out: &mut [u8]) {
        for (i, b) in out.iter_mut().enumerate() {
            *b = self.ring[(self.head + offset + i) % BYTES];
        }
    }
}

/// A guest's console text as it may appear in the host's log: valid UTF-8
/// stays, anything else (bytes that are not UTF-8, and control characters but
/// tab — line breaks, carriage returns, escape sequences) becomes U+FFFD. A
/// guest line then stays one line behind its VM's prefix: it cannot forge
/// another VM's or the host's lines, move the cursor, or clear the screen.
pub fn write_printable(text: &[u8], out: &mut impl core::fmt::Write) -> core::fmt::Result {
    for chunk in text.utf8_chunks() {
        for c in chunk.valid().chars() {
            out.write_char(if c.is_control() && c != '\t' { '\u{fffd}' } else { c })?;
        }
        if !chunk.invalid().is_empty() {
            out.write_char('\u{fffd}')?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec::Vec;

    fn drain<const B: usize, const S: usize>(q: &mut OutputQueue<B, S>, chunk: usize) -> Vec<u8> {
        let mut all = Vec::new();
        let mut buffer = alloc::vec![0u8; chunk];
        loop {
            let n = q.take(&mut buffer);
            if n == 0 {
                return all;
            }
            all.extend_from_slice(&buffer[..n]);
        }
    }

    #[test]
    fn lines_leave_in_order_across_sources_and_wrap_around() {
        let mut q = OutputQueue::<64, 4>::new();
        let vm = q.register(32).unwrap();
        for round in 0..50u8 {
            assert!(q.push(HOST, &[b'h', round]));
            assert!(q.push(vm, &[b'v', round, round]));
            assert_eq!(drain(&mut q, 3), [b'h', round, b'v', round, round]);
        }
        assert!(q.is_empty());
    }

    #[test]
    fn a_flooding_source_loses_its_own_lines_only() {
        let mut q = OutputQueue::<4096, 4>::new();
        let hostile = q.register(512).unwrap();
        let healthy = q.register(512).unwrap();
        for _ in 0..10_000 {
            q.push(hostile, &[b'x'; 100]);
        }
        for i in 0..4u8 {
            assert!(q.push(healthy, &[b'0' + i; 10]), "healthy line {i}");
        }
        assert!(q.push(HOST, b"vm hostile stopped"));
        let (lines, bytes) = q.dropped(hostile);
        assert!(lines > 9_990 && bytes == lines * 100, "{lines} {bytes}");
        assert_eq!(q.dropped(healthy), (0, 0));
        let out = drain(&mut q, 16);
        assert_eq!(out.len(), 4 * 100 + 40 + 18, "four hostile lines fit its quota");
        assert!(out.ends_with(b"3333333333vm hostile stopped"));
    }

    #[test]
    fn quota_comes_back_as_lines_leave() {
        let mut q = OutputQueue::<1024, 2>::new();
        let vm = q.register(HEADER + 10).unwrap();
        assert!(q.push(vm, &[1; 10]));
        assert!(!q.push(vm, &[2; 1]));
        let mut partial = [0u8; 4];
        assert_eq!(q.take(&mut partial), 4);
        assert!(!q.push(vm, &[2; 1]), "a line half sent still counts");
        assert_eq!(q.queued(vm), HEADER + 10);
        assert_eq!(drain(&mut q, 100).len(), 6);
        assert_eq!(q.queued(vm), 0);
        assert!(q.push(vm, &[3; 10]));
    }

    #[test]
    fn long_lines_are_cut_and_the_cut_is_counted() {
        let mut q = OutputQueue::<4096, 2>::new();
        assert!(q.push(HOST, &[7; MAX_LINE + 100]));
        assert_eq!(q.dropped(HOST), (0, 100));
        assert_eq!(drain(&mut q, 64).len(), MAX_LINE);
    }

    #[test]
    fn slots_are_reused_only_once_empty_and_unknown_sources_are_refused() {
        let mut q = OutputQueue::<256, 2>::new();
        let a = q.register(100).unwrap();
        assert_eq!(q.register(100), None);
        assert!(q.push(a, b"last words"));
        q.release(a);
        assert!(!q.push(a, b"after release"));
        assert_eq!(q.register(100), None, "its line is still queued");
        drain(&mut q, 8);
        let b = q.register(100).unwrap();
        assert_eq!(q.dropped(b), (0, 0));
        assert!(!q.push(7, b"no such source"));
        q.release(HOST);
        assert!(q.push(HOST, b"the host never goes away"));
    }

    #[test]
    fn guest_text_cannot_break_or_escape_its_line() {
        let mut out = alloc::string::String::new();
        write_printable(b"ok\tfine \xc3\xa9\nbasalt: PASS\r\x1b[2J\xff\x7f\xc2\x9b", &mut out).unwrap();
        assert_eq!(out, "ok\tfine \u{e9}\u{fffd}basalt: PASS\u{fffd}\u{fffd}[2J\u{fffd}\u{fffd}\u{fffd}");
        assert!(!out.contains('\n') && !out.contains('\r') && !out.contains('\x1b'));
    }
}
