//! What a long emulator run shows while it lasts (a Linux case runs for
//! minutes under Bochs): on a terminal a spinner with the run's name, the time
//! so far and the guest's last serial line; elsewhere (CI, a pipe) a heartbeat
//! line every 30 s. Either ends with the run, before its result is printed, so
//! summaries stay as they were and `qemu-test`'s count stays the last line.

use std::io::IsTerminal;
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// How often a run without a terminal says it is still going.
const HEARTBEAT: Duration = Duration::from_secs(30);

/// The longest guest line shown in a heartbeat.
const HEARTBEAT_LINE_CHARS: usize = 100;

pub struct Progress {
    shown: Shown,
}

enum Shown {
    Spinner(indicatif::ProgressBar),
    Heartbeat {
        last_line: std::sync::Arc<std::sync::Mutex<String>>,
        /// Dropped to end the heartbeat thread, which is then joined: no
        /// heartbeat comes after the run.
        stop: Option<mpsc::Sender<()>>,
        thread: Option<std::thread::JoinHandle<()>>,
    },
}

/// Whether progress can redraw one line in place: stderr is a terminal and
/// this is not CI (whose logs keep every redraw).
fn on_a_terminal() -> bool {
    std::io::stderr().is_terminal() && !std::env::var("CI").is_ok_and(|v| v == "true")
}

impl Progress {
    /// Progress for the run called `name`, shown until dropped.
    pub fn start(name: &str) -> Progress {
        if on_a_terminal() {
            let style = indicatif::ProgressStyle::with_template("{spinner} {prefix} {elapsed:>4} {wide_msg}")
                .expect("a valid template");
            let spinner = indicatif::ProgressBar::new_spinner().with_style(style).with_prefix(name.to_owned());
            spinner.enable_steady_tick(Duration::from_millis(120));
            return Progress { shown: Shown::Spinner(spinner) };
        }
        let last_line = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let (stop, stopped) = mpsc::channel::<()>();
        let name = name.to_owned();
        let line = last_line.clone();
        let started = Instant::now();
        let thread = std::thread::spawn(move || {
            while let Err(mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(HEARTBEAT) {
                let line = line.lock().map(|l| l.clone()).unwrap_or_default();
                println!("{}", heartbeat(&name, started.elapsed(), &line));
            }
        });
        Progress { shown: Shown::Heartbeat { last_line, stop: Some(stop), thread: Some(thread) } }
    }

    /// The guest's output so far: its last line is what progress shows.
    pub fn output(&self, output: &[u8]) {
        let Some(line) = last_line(output) else { return };
        match &self.shown {
            Shown::Spinner(spinner) => spinner.set_message(line),
            Shown::Heartbeat { last_line, .. } => {
                if let Ok(mut last) = last_line.lock() {
                    *last = line;
                }
            }
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        match &mut self.shown {
            Shown::Spinner(spinner) => spinner.finish_and_clear(),
            Shown::Heartbeat { stop, thread, .. } => {
                drop(stop.take());
                if let Some(thread) = thread.take() {
                    let _ = thread.join();
                }
            }
        }
    }
}

/// "still running NAME (90 s): LAST LINE".
fn heartbeat(name: &str, elapsed: Duration, line: &str) -> String {
    let line: String = line.chars().take(HEARTBEAT_LINE_CHARS).collect();
    let line = if line.is_empty() { String::new() } else { format!(": {line}") };
    format!("  ...     still running {name} ({:.0} s){line}", elapsed.as_secs_f64())
}

/// The last line of `output` with any text, printable: a partial line counts
/// (a prompt), the CR of a CR LF does not, control characters go.
fn last_line(output: &[u8]) -> Option<String> {
    let tail = &output[output.len().saturating_sub(4096)..];
    let text = String::from_utf8_lossy(tail);
    let line = text.split(['\n', '\r']).map(str::trim).rfind(|line| !line.is_empty())?;
    Some(line.chars().filter(|c| !c.is_control()).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_line_with_text_is_shown() {
        assert_eq!(last_line(b"one\r\ntwo\r\n").as_deref(), Some("two"));
        assert_eq!(last_line(b"one\r\n/ # ").as_deref(), Some("/ #"));
        assert_eq!(last_line(b"one\n\n\r\n").as_deref(), Some("one"));
        assert_eq!(last_line(b"a\x1b[6n\x07b\n").as_deref(), Some("a[6nb"));
        assert_eq!(last_line(b"\r\n"), None);
        assert_eq!(last_line(b""), None);
    }

    #[test]
    fn a_heartbeat_names_the_run_its_time_and_last_line() {
        assert_eq!(
            heartbeat("linux-1cpu@vmx", Duration::from_secs(90), "[    3.0] Run /init as init process"),
            "  ...     still running linux-1cpu@vmx (90 s): [    3.0] Run /init as init process"
        );
        assert_eq!(heartbeat("boot", Duration::from_millis(30_400), ""), "  ...     still running boot (30 s)");
        let long = "x".repeat(500);
        assert_eq!(heartbeat("b", Duration::ZERO, &long).len(), "  ...     still running b (0 s): ".len() + 100);
    }
}
