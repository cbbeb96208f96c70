//! The in-process fuzzing engine behind `cargo xtask fuzz`: stable Rust, no
//! compiler instrumentation. A target is a function of bytes that panics when
//! an invariant breaks; the engine replays the target's corpus, then mutates
//! corpus inputs (and now and then makes fresh ones) until its time is up,
//! running each under `catch_unwind`. The first panic ends the target: its
//! input is written where `cargo xtask fuzz TARGET --replay FILE` replays it.
//!
//! Without coverage instrumentation the engine steers by a signal each target
//! returns: a set of up to 64 features of the behaviour an input reached, one
//! bit each (which decode result, which requests and errors a device gave).
//! An input showing a feature not seen before joins the in-memory pool of
//! inputs to mutate; the committed corpus is never changed by a run.

use crate::{edge_value, put, Rng};
use std::cell::{Cell, RefCell};
use std::panic::{self, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::Once;
use std::time::{Duration, Instant};

/// A fuzz target.
pub struct Target {
    /// The command-line name (`cargo xtask fuzz NAME`).
    pub name: &'static str,
    /// One line on what it drives and what it checks.
    pub about: &'static str,
    /// Runs one input and panics if an invariant breaks; returns the
    /// features the input showed, as bits.
    pub run: fn(&[u8]) -> u64,
    /// Mutants are cut to this many bytes: enough for any structure the
    /// target reads, few enough that one run stays quick.
    pub max_len: usize,
}

pub struct Options {
    /// Time spent mutating after the corpus replay.
    pub budget: Duration,
    /// The run's base seed; each target's generator starts from it and the
    /// target's name, so a run repeats from the seed it printed.
    pub seed: u64,
    /// This target's corpus directory (missing: an empty corpus).
    pub corpus: PathBuf,
    /// Where this target's findings are written.
    pub findings: PathBuf,
}

/// An input that made the target panic.
pub struct Finding {
    pub input: PathBuf,
    pub message: String,
    /// A committed corpus file failed (a regression) rather than a mutant.
    pub from_corpus: bool,
}

pub struct Report {
    pub target: &'static str,
    pub corpus: usize,
    pub executions: u64,
    pub elapsed: Duration,
    pub seed: u64,
    /// Features seen (of 64).
    pub behaviours: u32,
    pub finding: Option<Finding>,
}

/// Inputs kept in memory for a run at most; past it, new ones replace old.
const POOL_LIMIT: usize = 4096;
/// One iteration in this many runs fresh random bytes instead of a mutant.
const FRESH_ONE_IN: u64 = 32;

thread_local! {
    static QUIET: Cell<bool> = const { Cell::new(false) };
    static CAUGHT: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// Panics while a target runs are recorded instead of printed: a fuzzer
/// that panics on purpose thousands of times must not flood the terminal.
/// Any other panic still goes to the previous hook.
fn install_hook() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let previous = panic::take_hook();
        panic::set_hook(Box::new(move |info| {
            if QUIET.get() {
                let text = info.to_string().replace(":\n", ": ").replace('\n', " ");
                CAUGHT.with(|c| *c.borrow_mut() = Some(text));
            } else {
                previous(info);
            }
        }));
    });
}

/// Runs `target` on `input`: its signal, or the panic message.
pub fn run_one(target: &Target, input: &[u8]) -> Result<u64, String> {
    install_hook();
    QUIET.set(true);
    let result = panic::catch_unwind(AssertUnwindSafe(|| (target.run)(input)));
    QUIET.set(false);
    result.map_err(|_| CAUGHT.with(|c| c.borrow_mut().take()).unwrap_or_else(|| "panicked".into()))
}

/// The files of a corpus directory, by name; a missing directory is empty.
pub fn corpus_files(dir: &Path) -> Result<Vec<(PathBuf, Vec<u8>)>, String> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(format!("cannot read {}: {e}", dir.display())),
    };
    let mut paths: Vec<PathBuf> = entries.filter_map(|e| e.ok()).map(|e| e.path()).filter(|p| p.is_file()).collect();
    paths.sort();
    paths
        .into_iter()
        .map(|p| {
            std::fs::read(&p).map(|bytes| (p.clone(), bytes)).map_err(|e| format!("cannot read {}: {e}", p.display()))
        })
        .collect()
}

/// Runs every file of `dir` once; an error names the file that panicked.
/// Returns how many files ran. (`cargo test` runs each target this way.)
pub fn replay_corpus(target: &Target, dir: &Path) -> Result<usize, String> {
    let files = corpus_files(dir)?;
    for (path, bytes) in &files {
        run_one(target, bytes).map_err(|why| format!("{} {}: {why}", target.name, path.display()))?;
    }
    Ok(files.len())
}

/// FNV-1a: a finding's file name, stable across runs and machines.
pub fn hash(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3))
}

/// A seed from the clock and the process, for runs not given one.
pub fn time_seed() -> u64 {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64);
    Rng::new(nanos ^ u64::from(std::process::id()) << 32).next_u64()
}

/// Replays the corpus, then fuzzs until the budget is spent or a panic.
pub fn fuzz(target: &Target, options: &Options) -> Result<Report, String> {
    let started = Instant::now();
    let files = corpus_files(&options.corpus)?;
    let mut report = Report {
        target: target.name,
        corpus: files.len(),
        executions: 0,
        elapsed: Duration::ZERO,
        seed: options.seed,
        behaviours: 0,
        finding: None,
    };
    let mut seen = 0u64;
    for (path, bytes) in &files {
        report.executions += 1;
        match run_one(target, bytes) {
            Ok(signal) => seen |= signal,
            Err(message) => {
                report.finding = Some(Finding { input: path.clone(), message, from_corpus: true });
                report.elapsed = started.elapsed();
                return Ok(report);
            }
        }
    }
    let mut pool: Vec<Vec<u8>> = files.into_iter().map(|(_, bytes)| bytes).collect();
    if pool.is_empty() {
        pool.push(Vec::new());
    }
    let mut rng = Rng::new(options.seed ^ hash(target.name.as_bytes()));
    let deadline = Instant::now() + options.budget;
    let mut input = Vec::with_capacity(target.max_len);
    while Instant::now() < deadline {
        input.clear();
        if rng.chance(FRESH_ONE_IN) {
            let len = rng.index(target.max_len.min(512) + 1);
            input.extend((0..len).map(|_| rng.next_u64() as u8));
        } else {
            input.extend_from_slice(&pool[rng.index(pool.len())]);
            mutate(&mut rng, &mut input, &pool, target.max_len);
        }
        report.executions += 1;
        match run_one(target, &input) {
            Ok(signal) => {
                if signal & !seen != 0 {
                    seen |= signal;
                    if pool.len() < POOL_LIMIT {
                        pool.push(input.clone());
                    } else {
                        let at = rng.index(pool.len());
                        pool[at] = input.clone();
                    }
                }
            }
            Err(message) => {
                std::fs::create_dir_all(&options.findings)
                    .map_err(|e| format!("cannot create {}: {e}", options.findings.display()))?;
                let path = options.findings.join(format!("{:016x}", hash(&input)));
                std::fs::write(&path, &input).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
                report.finding = Some(Finding { input: path, message, from_corpus: false });
                break;
            }
        }
    }
    report.behaviours = seen.count_ones();
    report.elapsed = started.elapsed();
    Ok(report)
}

/// Bytes that often sit at a boundary.
const INTERESTING_BYTES: [u8; 8] = [0, 1, 0x7f, 0x80, 0xff, 0x10, 0x20, 0x40];

/// Stacks one to eight mutations on `input`: bit flips, bytes and wide edge
/// values written anywhere, small additions, inserted, deleted and repeated
/// runs, pieces of other pool inputs; never longer than `max_len`.
pub fn mutate(rng: &mut Rng, input: &mut Vec<u8>, pool: &[Vec<u8>], max_len: usize) {
    let count = if rng.chance(4) { 1 + rng.index(8) } else { 1 + rng.index(3) };
    for _ in 0..count {
        let len = input.len();
        // Growing is the only thing to do with nothing.
        let op = if len == 0 { 5 } else { rng.below(13) };
        match op {
            0 => input[rng.index(len)] ^= 1 << rng.below(8),
            1 => input[rng.index(len)] = rng.next_u64() as u8,
            2 => input[rng.index(len)] = rng.pick(&INTERESTING_BYTES),
            3 | 4 => {
                let width = rng.pick(&[1, 2, 4, 8]);
                let value = edge_value(rng, len);
                put(input, (rng.index(len), width), value);
            }
            5 => {
                let at = rng.index(len + 1);
                let n = 1 + rng.index(16);
                let bytes: Vec<u8> = (0..n).map(|_| rng.next_u64() as u8).collect();
                input.splice(at..at, bytes);
            }
            6 => {
                let at = rng.index(len);
                let end = (at + 1 + rng.index(16)).min(len);
                input.drain(at..end);
            }
            7 => {
                // A run again right after itself: repeated records, headers, operations.
                let at = rng.index(len);
                let end = (at + 1 + rng.index(64)).min(len);
                let copy = input[at..end].to_vec();
                input.splice(end..end, copy);
            }
            8 => {
                let other = &pool[rng.index(pool.len())];
                if !other.is_empty() {
                    let from = rng.index(other.len());
                    let n = (1 + rng.index(32)).min(other.len() - from).min(len);
                    let at = rng.index(len - n + 1);
                    input[at..at + n].copy_from_slice(&other[from..from + n]);
                }
            }
            9 => {
                // This input's head on another's tail.
                let other = &pool[rng.index(pool.len())];
                let cut = rng.index(len + 1);
                let from = rng.index(other.len() + 1);
                input.truncate(cut);
                input.extend_from_slice(&other[from..]);
            }
            10 => input.truncate(rng.index(len)),
            11 => {
                let at = rng.index(len);
                let delta = 1 + rng.below(16) as u8;
                input[at] = if rng.chance(2) { input[at].wrapping_add(delta) } else { input[at].wrapping_sub(delta) };
            }
            _ => {
                let (a, b) = (rng.index(len), rng.index(len));
                input.swap(a, b);
            }
        }
        input.truncate(max_len);
    }
}

/// Rows as `cargo xtask qemu-test` prints them: the label, a pass or failure
/// line, and for a finding its input and the command that replays it.
pub fn render(report: &Report) -> String {
    let label = format!("fuzz {}", report.target);
    let seconds = report.elapsed.as_secs_f64();
    let rate = report.executions as f64 / seconds.max(1e-9);
    match &report.finding {
        None => format!(
            "  ok      {label:<28} {seconds:>6.1} s  ({} execs, {rate:.0}/s; corpus {}, {} features; seed {:#x})\n",
            report.executions, report.corpus, report.behaviours, report.seed
        ),
        Some(finding) => {
            let input = relative(&finding.input);
            let what = if finding.from_corpus { "a corpus input" } else { "a mutant" };
            format!(
                "  FAILED  {label:<28} {seconds:>6.1} s  {what} panicked after {} execs (seed {:#x})\n          \
                 - {}\n          input: {input}\n          replay: cargo xtask fuzz {} --replay {input}\n",
                report.executions, report.seed, finding.message, report.target
            )
        }
    }
}

/// `path` relative to the current directory when it lies below it.
fn relative(path: &Path) -> String {
    let cwd = std::env::current_dir().unwrap_or_default();
    path.strip_prefix(&cwd).unwrap_or(path).display().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn picky(input: &[u8]) -> u64 {
        assert!(!input.starts_with(b"BAD"), "found it");
        input.first().copied().unwrap_or(0).into()
    }

    const PICKY: Target = Target { name: "picky", about: "", run: picky, max_len: 64 };

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("basalt-engine-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn a_panic_is_caught_with_its_message() {
        assert_eq!(run_one(&PICKY, b"ok"), Ok(u64::from(b'o')));
        let why = run_one(&PICKY, b"BAD").unwrap_err();
        assert!(why.contains("found it") && why.contains("engine.rs"), "{why}");
    }

    #[test]
    fn mutants_respect_the_length_limit() {
        let mut rng = Rng::new(3);
        let pool = vec![vec![7u8; 100], Vec::new()];
        let mut input = Vec::new();
        for _ in 0..10_000 {
            input.clone_from(&pool[rng.index(2)]);
            mutate(&mut rng, &mut input, &pool, 50);
            assert!(input.len() <= 50);
        }
    }

    #[test]
    fn a_finding_is_written_and_reported() {
        let (corpus, findings) = (scratch("corpus"), scratch("findings"));
        std::fs::create_dir_all(&corpus).unwrap();
        std::fs::write(corpus.join("seed"), b"BAC").unwrap();
        let options = Options { budget: Duration::from_secs(20), seed: 1, corpus: corpus.clone(), findings };
        let report = fuzz(&PICKY, &options).unwrap();
        let finding = report.finding.as_ref().expect("one byte from a known input: found within the budget");
        assert!(!finding.from_corpus);
        assert!(std::fs::read(&finding.input).unwrap().starts_with(b"BAD"));
        assert!(render(&report).contains("replay: cargo xtask fuzz picky --replay"));
        // A finding committed to the corpus fails at once, as a regression.
        std::fs::write(corpus.join("regression"), b"BAD").unwrap();
        let report = fuzz(&PICKY, &options).unwrap();
        assert!(report.finding.is_some_and(|f| f.from_corpus));
        assert!(replay_corpus(&PICKY, &corpus).unwrap_err().contains("regression"));
    }
}
