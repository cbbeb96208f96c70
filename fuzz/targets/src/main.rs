//! The fuzz runner `cargo xtask fuzz` builds (with the `fuzz` profile: release
//! speed, overflow checks and debug assertions on) and starts once per
//! target, so a target that aborts instead of panicking takes only itself
//! down. Run by hand it takes the same commands:
//!
//! ```text
//! basalt-fuzz-targets list
//! basalt-fuzz-targets run TARGET [--seconds N] [--seed S] [--corpus DIR] [--findings DIR]
//! basalt-fuzz-targets replay TARGET FILE
//! basalt-fuzz-targets seed-corpus [DIR]
//! ```

use basalt_fuzz::engine::{self, Options};
use basalt_fuzz_targets::{heap, seeds, target, TARGETS};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

#[global_allocator]
static ALLOCATOR: heap::Counting = heap::Counting;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args) {
        Ok(code) => code,
        Err(message) => {
            eprintln!("basalt-fuzz-targets: {message}");
            ExitCode::from(2)
        }
    }
}

/// fuzz/ (this crate is fuzz/targets).
fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("fuzz/targets has a parent").to_path_buf()
}

fn value<'a>(args: &'a [String], name: &str) -> Result<Option<&'a str>, String> {
    match args.iter().position(|a| a == name) {
        None => Ok(None),
        Some(at) => args.get(at + 1).map(|v| Some(v.as_str())).ok_or(format!("{name} needs a value")),
    }
}

pub fn parse_u64(text: &str) -> Option<u64> {
    match text.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => text.parse().ok(),
    }
}

fn run(args: &[String]) -> Result<ExitCode, String> {
    let find = |name: &str| target(name).ok_or_else(|| format!("no target '{name}'"));
    match args.first().map(String::as_str) {
        Some("list") => {
            for t in TARGETS {
                println!("{}\t{}", t.name, t.about);
            }
            Ok(ExitCode::SUCCESS)
        }
        Some("run") => {
            let t = find(args.get(1).ok_or("run needs a target")?)?;
            let seconds: f64 = value(args, "--seconds")?.map_or(Ok(60.0), |s| s.parse().map_err(|_| "--seconds: a number"))?;
            let seed = match value(args, "--seed")? {
                Some(s) => parse_u64(s).ok_or("--seed: a number")?,
                None => engine::time_seed(),
            };
            let corpus = value(args, "--corpus")?.map_or_else(|| fuzz_dir().join("corpus"), PathBuf::from);
            let findings = value(args, "--findings")?
                .map_or_else(|| fuzz_dir().parent().unwrap_or(Path::new(".")).join("target/fuzz-findings"), PathBuf::from);
            let options = Options {
                budget: Duration::from_secs_f64(seconds.max(0.0)),
                seed,
                corpus: corpus.join(t.name),
                findings: findings.join(t.name),
            };
            let report = engine::fuzz(t, &options)?;
            print!("{}", engine::render(&report));
            Ok(if report.finding.is_some() { ExitCode::FAILURE } else { ExitCode::SUCCESS })
        }
        Some("replay") => {
            let t = find(args.get(1).ok_or("replay needs a target")?)?;
            let file = args.get(2).ok_or("replay needs a file")?;
            let bytes = std::fs::read(file).map_err(|e| format!("cannot read {file}: {e}"))?;
            // Not caught: the panic and its location print as usual
            // (RUST_BACKTRACE=1 adds the backtrace).
            let signal = (t.run)(&bytes);
            println!("replay: {} ran {file} ({} bytes) without a panic (behaviour {signal:#x})", t.name, bytes.len());
            Ok(ExitCode::SUCCESS)
        }
        Some("seed-corpus") => {
            let root = args.get(1).map_or_else(|| fuzz_dir().join("corpus"), PathBuf::from);
            for t in TARGETS {
                let dir = root.join(t.name);
                std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
                // Earlier seeds go; anything else (regressions) stays.
                for (path, _) in engine::corpus_files(&dir)? {
                    if path.file_name().is_some_and(|n| n.to_string_lossy().starts_with("seed-")) {
                        std::fs::remove_file(&path).map_err(|e| format!("cannot remove {}: {e}", path.display()))?;
                    }
                }
                let seeds = seeds::seeds(t.name);
                for (name, bytes) in &seeds {
                    let path = dir.join(name);
                    std::fs::write(&path, bytes).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
                }
                println!("{}: {} seeds in {}", t.name, seeds.len(), dir.display());
            }
            Ok(ExitCode::SUCCESS)
        }
        _ => Err("usage: list | run TARGET [--seconds N] [--seed S] [--corpus DIR] [--findings DIR] | replay TARGET FILE | seed-corpus [DIR]".into()),
    }
}
