//! `cargo xtask fuzz`: the fuzz targets, each for a time budget, from its
//! committed corpus (fuzz/corpus/<target>/) and the mutants of it; and the
//! short fuzz step `qemu-test` runs in CI.
//!
//! The targets live in fuzz/targets (`basalt-fuzz-targets`), built here with
//! the `fuzz` profile (release speed, overflow checks on) and started once
//! per target, two or more at a time. One target lives here instead:
//! `vm-toml`, the VM description parser, which is part of this binary; it
//! runs in this process with the same engine.

use crate::cli::FuzzArgs;
use crate::workspace_root;
use anyhow::{bail, Context};
use basalt_fuzz::engine::{self, Options, Target};
use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::sync::Mutex;
use std::time::Duration;

/// Per target when `qemu-test` runs in CI: the whole step, build included,
/// stays within a few minutes.
pub const CI_SECONDS: u64 = 10;

/// The VM description parser: any text is parsed or refused with an error
/// that names the file, and what is accepted keeps the file format's limits.
const VM_TOML: Target = Target {
    name: "vm-toml",
    about: "TOML VM descriptions: parse or an error naming the file; accepted values within limits",
    run: vm_toml,
    max_len: 2048,
};

fn vm_toml(data: &[u8]) -> u64 {
    use loader::manifest::{MAX_DISKS, MAX_MEMORY_MIB, MAX_VCPUS, MIN_MEMORY_MIB};
    let file = Path::new("/nonexistent/basalt-fuzz/vm.toml");
    let text = String::from_utf8_lossy(data);
    let feature = |text: &str| 1u64 << (engine::hash(text.as_bytes()) % 64);
    match crate::vmconfig::parse(&text, file) {
        Ok(vm) => {
            assert!(!vm.name.is_empty() && vm.name.chars().all(|c| c.is_ascii_alphanumeric() || "-_".contains(c)));
            assert!((MIN_MEMORY_MIB..=MAX_MEMORY_MIB).contains(&vm.memory_mib) && (1..=MAX_VCPUS).contains(&vm.vcpus));
            assert!(vm.disks.len() <= MAX_DISKS);
            assert!(vm.cmdline.split_whitespace().any(|w| w.starts_with("console=")), "no console in {:?}", vm.cmdline);
            feature("ok") | feature(&format!("disks {} initrd {}", vm.disks.len(), vm.initrd.is_some()))
        }
        Err(why) => {
            let named = format!("{}: ", file.display());
            assert!(why.starts_with(&named), "an error not naming the file: {why}");
            // The kind of error, without what the input put in it.
            let kind: String = why[named.len()..].chars().take_while(|c| !"'`\"0123456789".contains(*c)).collect();
            feature(&kind)
        }
    }
}

fn vm_toml_seeds() -> Vec<(String, Vec<u8>)> {
    let texts = [
        "name = \"web\"\nmemory_mib = 256\nvcpus = 2\nkernel = \"debian\"\ncmdline = \"quiet\"\nconsole = \"virtio\"\n",
        "name = \"d\"\nkernel = \"debian\"\ncmdline = \"console=ttyS1\"\n",
        "name = \"x\"\nkernel = \"debian\"\ninitrd = \"initrd.cpio\"\n[[disk]]\npath = \"disk.img\"\n[[disk]]\npath = \"/abs.img\"\n",
        "name = \"a-b_c\"\nmemory_mib = 4096\nvcpus = 16\nkernel = \"debian\"\nconsole = \"serial\"\n",
        "name = \"x\"\nkernel = \"k\"\ncolour = 1\nmemory_mib = \"lots\"\n",
    ];
    texts.iter().enumerate().map(|(i, t)| (format!("seed-{i:02}"), t.as_bytes().to_vec())).collect()
}

fn corpus_root() -> PathBuf {
    workspace_root().join("fuzz/corpus")
}

fn findings_root() -> PathBuf {
    workspace_root().join("target/fuzz-findings")
}

/// Builds the runner with the fuzz profile; returns its path.
fn build_runner() -> Result<PathBuf, String> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .args(["build", "--quiet", "--profile", "fuzz", "--package", "basalt-fuzz-targets"])
        .current_dir(workspace_root())
        .output()
        .map_err(|e| format!("cannot run cargo build: {e}"))?;
    if !out.status.success() {
        eprint!("{}", String::from_utf8_lossy(&out.stderr));
        return Err("the fuzz runner did not build".into());
    }
    let target_dir = match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => workspace_root().join(dir),
        None => workspace_root().join("target"),
    };
    Ok(target_dir.join("fuzz/basalt-fuzz-targets"))
}

/// The runner's targets, then this binary's: (name, what it checks).
fn targets(runner: &Path) -> Result<Vec<(String, String)>, String> {
    let out = Command::new(runner).arg("list").output().map_err(|e| format!("cannot run {}: {e}", runner.display()))?;
    if !out.status.success() {
        return Err(format!("{} list failed", runner.display()));
    }
    let mut all: Vec<(String, String)> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_once('\t'))
        .map(|(name, about)| (name.to_owned(), about.to_owned()))
        .collect();
    all.push((VM_TOML.name.into(), VM_TOML.about.into()));
    Ok(all)
}

/// One target's run: its report lines, and whether it passed.
fn fuzz_one(runner: &Path, name: &str, seconds: u64, seed: u64) -> (String, bool) {
    if name == VM_TOML.name {
        let options = Options {
            budget: Duration::from_secs(seconds),
            seed,
            corpus: corpus_root().join(name),
            findings: findings_root().join(name),
        };
        return match engine::fuzz(&VM_TOML, &options) {
            Ok(report) => (engine::render(&report), report.finding.is_none()),
            Err(e) => (format!("  FAILED  fuzz {name:<23} could not run: {e}\n"), false),
        };
    }
    let out = Command::new(runner)
        .args(["run", name, "--seconds", &seconds.to_string(), "--seed", &format!("{seed:#x}")])
        .arg("--corpus")
        .arg(corpus_root())
        .arg("--findings")
        .arg(findings_root())
        .current_dir(workspace_root())
        .output();
    match out {
        Ok(out) => {
            let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
            // Killed by a signal or aborted (a stack overflow cannot be caught):
            // no report line, and no saved input either.
            if text.is_empty() {
                let stderr = String::from_utf8_lossy(&out.stderr);
                let last = stderr.lines().last().unwrap_or_default().to_owned();
                text =
                    format!("  FAILED  fuzz {name:<23} the runner ended without a report ({}): {last}\n", out.status);
            }
            (text, out.status.success())
        }
        Err(e) => (format!("  FAILED  fuzz {name:<23} could not run: {e}\n"), false),
    }
}

/// Fuzzes `names` for `seconds` each, `jobs` at a time, printing each
/// target's report as it finishes; returns (name, passed) in that order.
fn fuzz_all(runner: &Path, names: &[String], seconds: u64, seed: u64, jobs: usize) -> Vec<(String, bool)> {
    let queue = Mutex::new(names.iter().cloned().collect::<VecDeque<_>>());
    let results = Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..jobs.clamp(1, names.len().max(1)) {
            s.spawn(|| loop {
                let Some(name) = queue.lock().unwrap().pop_front() else { break };
                let (text, passed) = fuzz_one(runner, &name, seconds, seed);
                let mut results = results.lock().unwrap();
                print!("{text}");
                results.push((name, passed));
            });
        }
    });
    results.into_inner().unwrap()
}

fn jobs_default() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get())
}

/// The step `qemu-test` runs in CI: every target for `seconds`, with a seed
/// from the clock (printed, with the replay command of any finding).
pub fn ci_step(seconds: u64) -> Result<Vec<(String, bool)>, String> {
    let runner = build_runner()?;
    let names: Vec<String> = targets(&runner)?.into_iter().map(|(name, _)| name).collect();
    let seed = engine::time_seed();
    println!("qemu-test: fuzz targets, {seconds} s each, {} at a time (seed {seed:#x})", jobs_default());
    Ok(fuzz_all(&runner, &names, seconds, seed, jobs_default()))
}

pub fn main(args: FuzzArgs) -> anyhow::Result<ExitCode> {
    let FuzzArgs { targets: args, seconds, seed, jobs, replay, list, seed_corpus } = args;
    let runner = build_runner().map_err(anyhow::Error::msg).context("building the fuzz runner")?;
    let all = targets(&runner).map_err(anyhow::Error::msg)?;
    if let Some(unknown) = args.iter().find(|a| !all.iter().any(|(name, _)| name == *a)) {
        let names: Vec<&str> = all.iter().map(|(name, _)| name.as_str()).collect();
        bail!("fuzz: no target '{unknown}' (targets: {})", names.join(", "));
    }
    if list {
        for (name, about) in &all {
            println!("{name:<16} {about}");
        }
        return Ok(ExitCode::SUCCESS);
    }
    if seed_corpus {
        let status = Command::new(&runner).arg("seed-corpus").arg(corpus_root()).status();
        if !status.is_ok_and(|s| s.success()) {
            bail!("the runner could not write the seed corpus");
        }
        let dir = corpus_root().join(VM_TOML.name);
        std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let seeds = vm_toml_seeds();
        for (name, bytes) in &seeds {
            std::fs::write(dir.join(name), bytes).with_context(|| format!("cannot write seed {name}"))?;
        }
        println!("{}: {} seeds in {}", VM_TOML.name, seeds.len(), dir.display());
        return Ok(ExitCode::SUCCESS);
    }
    if let Some(file) = replay {
        let [name] = &args[..] else { bail!("--replay FILE goes with exactly one TARGET") };
        if name == VM_TOML.name {
            let bytes = std::fs::read(&file).with_context(|| format!("cannot read {}", file.display()))?;
            let signal = (VM_TOML.run)(&bytes);
            println!("replay: {name} ran {} without a panic (features {signal:#x})", file.display());
            return Ok(ExitCode::SUCCESS);
        }
        let status = Command::new(&runner).arg("replay").arg(name).arg(&file).status();
        return Ok(if status.is_ok_and(|s| s.success()) { ExitCode::SUCCESS } else { ExitCode::FAILURE });
    }
    let names: Vec<String> = if args.is_empty() { all.into_iter().map(|(name, _)| name).collect() } else { args };
    let seed = seed.unwrap_or_else(engine::time_seed);
    let jobs = jobs.map_or_else(jobs_default, |j| j as usize);
    println!("fuzz: {} target(s), {seconds} s each, {jobs} at a time, seed {seed:#x}", names.len());
    let results = fuzz_all(&runner, &names, seconds, seed, jobs);
    let failed: Vec<&str> = results.iter().filter(|(_, ok)| !ok).map(|(name, _)| name.as_str()).collect();
    if !failed.is_empty() {
        println!("fuzz: failed: {} (the run repeats with --seed {seed:#x})", failed.join(", "));
    }
    println!("fuzz: {} passed, {} failed", results.len() - failed.len(), failed.len());
    Ok(if failed.is_empty() { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// vm-toml's corpus, as the runner's crate replays the others'.
    #[test]
    fn vm_toml_passes_its_corpus() {
        let dir = corpus_root().join(VM_TOML.name);
        assert!(engine::replay_corpus(&VM_TOML, &dir).unwrap() > 0, "no corpus in {}", dir.display());
    }

    #[test]
    fn vm_toml_seeds_are_accepted_or_refused_as_meant() {
        for (name, bytes) in vm_toml_seeds() {
            assert!(bytes.len() < 4096);
            engine::run_one(&VM_TOML, &bytes).unwrap_or_else(|why| panic!("{name}: {why}"));
        }
    }
}
