//! `cargo xtask qemu-test`: host unit tests, in CI the fuzz targets for a few
//! seconds each, then every case in tests/cases.toml, then one summary line
//! `N passed, M failed`.

use crate::cases::{self, CaseRun, MachineKind};
use crate::cli::QemuTestArgs;
use crate::emulator;
use crate::images::{self, Config};
use crate::{setup, workspace_root};
use anyhow::{bail, Context};
use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

pub fn main(args: QemuTestArgs) -> anyhow::Result<ExitCode> {
    let QemuTestArgs { cases: filters, vendor, host_only, list: list_only } = args;
    let case_file = workspace_root().join("tests/cases.toml");
    let text = std::fs::read_to_string(&case_file).with_context(|| format!("cannot read {}", case_file.display()))?;
    let all = cases::parse(&text).map_err(anyhow::Error::msg)?;
    let selected = cases::select(&all, &filters, vendor).map_err(anyhow::Error::msg)?;
    // --case and --vendor pick cases; host unit tests and the fuzz step run without either.
    let filtered = !filters.is_empty() || vendor.is_some();
    if list_only {
        for run in &selected {
            let c = run.case;
            println!("{:<34} {} {} {} CPU(s), expect {:?}", run.label(), run.kind.name(), c.firmware, c.cpus, c.expect);
        }
        return Ok(ExitCode::SUCCESS);
    }
    if selected.is_empty() {
        let vendor = vendor.map_or(String::new(), |v| format!(" on {}", v.name()));
        bail!("no case matches {filters:?}{vendor}");
    }

    setup::ensure(&setup::Needs::everything()).map_err(anyhow::Error::msg)?;
    report_free_disk();
    let started = Instant::now();
    let mut passed = 0usize;
    let mut failed = Vec::new();

    if !filtered {
        println!("qemu-test: host unit tests (cargo test --workspace)");
        let (ok, bad) = host_unit_tests().context("host unit tests")?;
        passed += ok;
        if bad > 0 {
            failed.push(format!("host unit tests ({bad} failed)"));
        }
        // In CI only: a developer's run stays as it was, and `cargo xtask
        // fuzz` fuzzes for longer when wanted.
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            let started = Instant::now();
            match crate::fuzz::ci_step(crate::fuzz::CI_SECONDS) {
                Ok(results) => {
                    for (name, ok) in results {
                        if ok {
                            passed += 1;
                        } else {
                            failed.push(format!("fuzz {name}"));
                        }
                    }
                }
                Err(e) => {
                    println!("  FAILED  {:<28} could not run: {e}", "fuzz targets");
                    failed.push("fuzz targets".into());
                }
            }
            println!("qemu-test: fuzz step took {:.0} s", started.elapsed().as_secs_f64());
        } else {
            println!("qemu-test: fuzz targets skipped (CI=true runs them; `cargo xtask fuzz` runs them longer)");
        }
    }
    if host_only {
        println!("qemu-test: --host-only: no cases run");
    } else {
        let kernel = images::build_kernel(Config::Test).context("building the test kernel")?;
        let mut where_ = Vec::new();
        for (kind, what) in [(MachineKind::Vmx, "VT-x"), (MachineKind::Svm, "SVM")] {
            if selected.iter().any(|run| run.kind == kind) {
                where_.push(format!("; {what} cases run on {}", kind.emulator().name()));
            }
        }
        let cases = selected.iter().map(|run| &run.case.name).collect::<std::collections::HashSet<_>>().len();
        let runs = if cases == selected.len() { String::new() } else { format!(" in {} run(s)", selected.len()) };
        println!("qemu-test: {cases} case(s){runs}{}", where_.concat());
        for run in &selected {
            let started = Instant::now();
            let label = run.label();
            let machine = on_what(run);
            match run_case(&kernel, run) {
                Ok((problems, took)) if problems.is_empty() => {
                    passed += 1;
                    drop_images(&case_dir(run));
                    println!(
                        "  ok      {label:<34} {:>6.1} s  ({machine} in {:.1} s)",
                        started.elapsed().as_secs_f64(),
                        took.as_secs_f64()
                    );
                }
                Ok((problems, _)) => {
                    println!("  FAILED  {label:<34} {:>6.1} s  ({machine})", started.elapsed().as_secs_f64());
                    for p in &problems {
                        println!("          - {p}");
                    }
                    let dir = case_dir(run);
                    println!("          serial: {}", dir.join("serial.log").display());
                    print_tail(&dir.join("serial.log"), 15);
                    print_cpus_at_timeout(&dir, &kernel);
                    failed.push(label);
                }
                Err(e) => {
                    println!("  FAILED  {label:<34} could not run ({machine}): {e:#}");
                    failed.push(label);
                }
            }
        }
    }
    println!("qemu-test: finished in {:.0} s", started.elapsed().as_secs_f64());
    if !failed.is_empty() {
        println!("qemu-test: failed: {}", failed.join(", "));
    }
    println!("qemu-test: {passed} passed, {} failed", failed.len());
    Ok(if failed.is_empty() { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

/// What a whole run writes under target/ on a fresh clone (the host build,
/// the kernels, the image builder, Debian's kernel, each case's logs and the
/// images of the one running), with room to spare.
const DISK_NEEDED_GB: f64 = 3.0;

/// Says how much disk is free under target/, and warns when a run may not fit:
/// otherwise a full disk shows up minutes later as cases that "could not run".
fn report_free_disk() {
    let target = workspace_root().join("target");
    let output = Command::new("df").arg("-Pk").arg(&target).output();
    // `df -P`: a header, then "filesystem blocks used available capacity mount".
    let free_kib = output.ok().and_then(|o| {
        let text = String::from_utf8_lossy(&o.stdout).into_owned();
        text.lines().nth(1)?.split_whitespace().nth(3)?.parse::<u64>().ok()
    });
    let Some(free_kib) = free_kib else { return };
    let free_gb = free_kib as f64 / (1024.0 * 1024.0);
    println!("qemu-test: {free_gb:.1} GB free on the disk holding {}", target.display());
    if free_gb < DISK_NEEDED_GB {
        println!(
            "qemu-test: warning: a full run needs about {DISK_NEEDED_GB:.0} GB there; \
             cases may fail with \"No space left on device\""
        );
    }
}

/// What a summary line says the run was on: the back end (for VT-x and SVM
/// runs) and the emulator, e.g. "svm on QEMU TCG (EPYC, SVM)".
fn on_what(run: &CaseRun) -> String {
    let emulator = run.kind.emulator().name();
    match run.kind.vendor() {
        Some(vendor) => format!("{} on {emulator}", vendor.name()),
        None => emulator.to_owned(),
    }
}

fn case_dir(run: &CaseRun) -> std::path::PathBuf {
    workspace_root().join("target/basalt/cases").join(run.dir())
}

/// A passed case keeps its logs but not its disk image and bundle: together
/// they are ~550 MB over the suite, and CI machines may be short of disk. A
/// failed case keeps everything, to be run again by hand.
fn drop_images(dir: &std::path::Path) {
    for name in [images::BIOS_IMAGE, images::UEFI_IMAGE, images::BUNDLE] {
        let _ = std::fs::remove_file(dir.join(name));
    }
}

fn run_case(kernel: &std::path::Path, run: &CaseRun) -> anyhow::Result<(Vec<String>, Duration)> {
    let case = run.case;
    let machine = run.machine();
    let dir = case_dir(run);
    let _ = std::fs::remove_dir_all(&dir);
    let cmdline = format!("{} {}", case.cmdline, machine.emulator.exit_option());
    let linux = case
        .linux
        .iter()
        .map(crate::guests::linux_vm)
        .collect::<Result<Vec<_>, _>>()
        .map_err(anyhow::Error::msg)
        .context("building its Linux VMs")?;
    let bundle = crate::guests::bundle_with_linux(cmdline.trim(), &case.vm, &linux)
        .map_err(anyhow::Error::msg)
        .context("writing its boot bundle")?;
    let image = images::make_image(kernel, &dir, &bundle, case.firmware()).context("writing its disk image")?;
    let date_before = utc_date();
    let output = emulator::run_captured(
        &run.label(),
        &machine,
        &image,
        &dir,
        Duration::from_secs(case.timeout_s),
        &case.console_input,
    )
    .with_context(|| format!("running {} (its files are in {})", machine.emulator.name(), dir.display()))?;
    // "{date}" in an expected line is today's date (UTC); a run that crosses
    // midnight may show either day.
    let judged = |date: &str| {
        let mut dated = case.clone();
        for line in dated.all_expect_lines_mut() {
            *line = line.replace("{date}", date);
        }
        cases::judge(&dated, run.kind, &output)
    };
    let mut problems = judged(&date_before);
    if !problems.is_empty() {
        let after = judged(&utc_date());
        if after.is_empty() {
            problems = after;
        }
    }
    Ok((problems, output.elapsed))
}

/// Today's date in UTC as YYYY-MM-DD.
fn utc_date() -> String {
    Command::new("date")
        .args(["-u", "+%F"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}

fn print_tail(path: &std::path::Path, lines: usize) {
    let text = std::fs::read(path).map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default();
    let all: Vec<&str> = text.lines().filter(|l| !l.starts_with("INFO :")).collect();
    for line in &all[all.len().saturating_sub(lines)..] {
        println!("          | {line}");
    }
}

/// For a run that timed out in QEMU: where each CPU was (its saved register
/// dump), with the kernel function when the RIP is in the kernel image.
fn print_cpus_at_timeout(dir: &std::path::Path, kernel: &std::path::Path) {
    let path = dir.join(emulator::CPUS_AT_TIMEOUT);
    let Ok(dump) = std::fs::read_to_string(&path) else { return };
    let serial = std::fs::read(dir.join("serial.log")).map(|b| String::from_utf8_lossy(&b).into_owned());
    let image_at = serial.ok().as_deref().and_then(kernel_image_offset);
    println!("          cpus at the timeout: {}", path.display());
    let rips = cpu_rips(&dump);
    if rips.is_empty() {
        println!("          | QEMU's monitor gave no registers: its main loop did not answer (an emulator livelock?)");
    }
    for (cpu, rip, halted) in rips {
        let function = image_at.and_then(|at| rip.checked_sub(at)).and_then(|address| symbol(kernel, address));
        let halted = if halted { ", halted" } else { "" };
        println!("          | cpu{cpu} RIP {rip:#x}{halted} {}", function.as_deref().unwrap_or("(no kernel symbol)"));
    }
}

/// The kernel's load offset from its boot line "kernel image at 0x...".
fn kernel_image_offset(serial: &str) -> Option<u64> {
    let rest = serial.split("kernel image at 0x").nth(1)?;
    let hex: String = rest.chars().take_while(char::is_ascii_hexdigit).collect();
    u64::from_str_radix(&hex, 16).ok()
}

/// Each CPU's number, RIP and whether it is halted (HLT=1), in QEMU's
/// `info registers -a` output. A CPU in a guest shows the guest's.
fn cpu_rips(dump: &str) -> Vec<(u32, u64, bool)> {
    let mut rips = Vec::new();
    let mut cpu = None;
    for line in dump.lines() {
        if let Some(n) = line.trim().strip_prefix("CPU#") {
            cpu = n.trim().parse().ok();
        } else if let (Some(n), Some(rest)) = (cpu, line.strip_prefix("RIP=")) {
            let hex: String = rest.chars().take_while(char::is_ascii_hexdigit).collect();
            if let Ok(rip) = u64::from_str_radix(&hex, 16) {
                rips.push((n, rip, line.contains(" HLT=1")));
            }
        }
    }
    rips
}

/// The function at `address` of the kernel ELF (binutils' addr2line; the
/// release kernel has its symbol table, not line tables).
fn symbol(kernel: &std::path::Path, address: u64) -> Option<String> {
    let output =
        Command::new("addr2line").args(["-f", "-C", "-e"]).arg(kernel).arg(format!("{address:#x}")).output().ok()?;
    let name = String::from_utf8_lossy(&output.stdout).lines().next()?.trim().to_owned();
    (output.status.success() && name != "??").then_some(name)
}

/// Runs `cargo test` for the host crates; returns (passed, failed) test counts.
fn host_unit_tests() -> anyhow::Result<(usize, usize)> {
    let out = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(["test", "--workspace", "--exclude", "basalt-kernel"])
        .current_dir(workspace_root())
        .output()
        .context("cannot run cargo test")?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let (mut passed, mut failed) = (0, 0);
    // "test result: ok. 9 passed; 0 failed; 0 ignored; ..."
    for line in stdout.lines().filter(|l| l.starts_with("test result:")) {
        let words: Vec<&str> = line.split_whitespace().collect();
        for pair in words.windows(2) {
            let n = pair[0].parse::<usize>().unwrap_or(0);
            match pair[1].trim_end_matches(';') {
                "passed" => passed += n,
                "failed" => failed += n,
                _ => {}
            }
        }
    }
    for line in stdout.lines().filter(|l| l.contains("FAILED") || l.contains("panicked")) {
        println!("  {line}");
    }
    if !out.status.success() && failed == 0 {
        print!("{}", String::from_utf8_lossy(&out.stderr));
        bail!("cargo test failed to build or run");
    }
    println!("  ok      host unit tests: {passed} passed, {failed} failed");
    Ok((passed, failed))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_cpu_rip_is_read_from_the_register_dump() {
        let dump = "(qemu) info registers -a\n\nCPU#0\nRAX=0000000000000000 RBX=0000000000000001\n\
                    RIP=ffffffff80012345 RFL=00000002 [-------] CPL=0 II=0 A20=1 SMM=0 HLT=1\n\n\
                    CPU#1\nRIP=0000000000039bd0 RFL=00000046\n(qemu) ";
        assert_eq!(cpu_rips(dump), vec![(0, 0xffff_ffff_8001_2345, true), (1, 0x39bd0, false)]);
        assert!(cpu_rips("(qemu) ").is_empty());
    }

    #[test]
    fn the_kernel_load_offset_is_read_from_its_boot_line() {
        let serial = "[   0.000001 cpu0] INFO  Basalt 0.1.0 starting\n[   0.000002 cpu0] INFO  kernel image at 0xffff800000000000\n";
        assert_eq!(kernel_image_offset(serial), Some(0xffff_8000_0000_0000));
        assert_eq!(kernel_image_offset("no such line"), None);
    }
}
