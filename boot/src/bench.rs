//! `cargo xtask bench`: boots the test guests, then Debian's Linux, on a VT-x
//! machine and prints, per VM, the exits by reason and the hypervisor's TSC
//! cycles per exit, from the counter lines the kernel logs: when a VM stops,
//! and for Linux also when its /init writes the bench marker (time to init and
//! the exits up to it). Figures, not pass/fail.

use crate::emulator::{self, Emulator, Firmware, Machine};
use crate::guests::{self, GuestVm};
use crate::images::{self, Config};
use crate::{setup, workspace_root};
use std::process::ExitCode;
use std::time::Duration;

fn vm(name: &str, guest: &str, format: &str, mode: Option<&str>) -> GuestVm {
    GuestVm {
        name: name.into(),
        guest: guest.into(),
        format: format.into(),
        mode: mode.map(Into::into),
        memory_mib: 16,
        time_limit_ms: 10_000,
        corrupt_guest_state: false,
        blank_disks_mib: Vec::new(),
    }
}

/// One parsed "vm NAME ran on cpuN for U us: E exits; r=n/c ...; M MiB RAM + K KiB VMM overhead" line.
#[derive(Debug, PartialEq)]
pub struct VmFigures {
    pub name: String,
    pub micros: u64,
    pub exits: u64,
    pub by_reason: Vec<ReasonFigures>,
    pub overhead_kib: u64,
}

pub fn parse_line(line: &str) -> Option<VmFigures> {
    let rest = &line[line.find("vm ")? + 3..];
    let (name, rest) = rest.split_once(" ran on cpu")?;
    let micros = rest.split_once(" for ")?.1.split_once(" us: ")?.0.parse().ok()?;
    let (exits, by_reason, rest) = parse_exits(rest.split_once(" us: ")?.1)?;
    let overhead_kib = rest.split_once(" + ")?.1.split_whitespace().next()?.parse().ok()?;
    Some(VmFigures { name: name.to_string(), micros, exits, by_reason, overhead_kib })
}

/// Exits of one reason: (reason, count, cycles per exit).
type ReasonFigures = (String, u64, u64);

/// "E exits; r=n/c ...;REST" (REST may be empty): the total, each reason, REST.
fn parse_exits(text: &str) -> Option<(u64, Vec<ReasonFigures>, &str)> {
    let (exits, rest) = text.split_once(" exits;")?;
    let (reasons, rest) = rest.split_once(';').unwrap_or((rest, ""));
    let by_reason = reasons
        .split_whitespace()
        .filter_map(|r| {
            let (reason, figures) = r.split_once('=')?;
            let (n, c) = figures.split_once('/')?;
            Some((reason.to_string(), n.parse().ok()?, c.parse().ok()?))
        })
        .collect();
    Some((exits.trim().parse().ok()?, by_reason, rest))
}

/// One parsed "vm NAME marker V on vcpuN at U us: E exits; r=n/c ..." line.
#[derive(Debug, PartialEq)]
pub struct MarkerFigures {
    pub name: String,
    pub value: u8,
    pub micros: u64,
    pub exits: u64,
    pub by_reason: Vec<ReasonFigures>,
}

pub fn parse_marker(line: &str) -> Option<MarkerFigures> {
    let rest = &line[line.find("vm ")? + 3..];
    let (name, rest) = rest.split_once(" marker ")?;
    let (value, rest) = rest.split_once(" on vcpu")?;
    let micros = rest.split_once(" at ")?.1.split_once(" us: ")?.0.parse().ok()?;
    let (exits, by_reason, _) = parse_exits(rest.split_once(" us: ")?.1)?;
    Some(MarkerFigures { name: name.to_string(), value: value.parse().ok()?, micros, exits, by_reason })
}

fn print_reasons(by_reason: &[ReasonFigures]) {
    println!("  {:<20} {:>8} {:>14}", "reason", "exits", "cycles/exit");
    for (reason, n, c) in by_reason {
        println!("  {reason:<20} {n:>8} {c:>14}");
    }
}

pub fn main(args: &[String]) -> Result<ExitCode, String> {
    if let Some(unknown) = args.first() {
        return Err(format!("bench: unknown option '{unknown}'"));
    }
    let emulator = Emulator::best_for_vmx();
    setup::ensure(&setup::Needs::for_emulator(emulator))?;
    let kernel = images::build_kernel(Config::Run)?;
    let vms = [
        vm("real-mode", "real-mode", "flat", Some("real")),
        vm("multiboot", "multiboot", "multiboot", None),
        vm("long-mode", "long-mode", "elf", None),
        vm("demo", "demo", "elf", None),
    ];
    let dir = workspace_root().join("target/basalt/bench");
    let bundle = guests::bundle(emulator.exit_option(), &vms)?;
    let image = images::make_image(&kernel, &dir, &bundle, Firmware::Bios)?;
    let machine =
        Machine { emulator, firmware: Firmware::Bios, cpus: 1, memory_mib: 256, bochs_ips: emulator::BOCHS_IPS };
    println!("bench: test guests on {}, 1 CPU (emulated time: figures compare runs, not hardware)", emulator.name());
    let run = emulator::run_captured(&machine, &image, &dir, Duration::from_secs(300), &[])?;
    let figures: Vec<VmFigures> = run.serial.lines().filter_map(parse_line).collect();
    if figures.len() != vms.len() {
        return Err(format!(
            "expected figures for {} VMs, found {}; see {}",
            vms.len(),
            figures.len(),
            dir.join("serial.log").display()
        ));
    }
    for f in &figures {
        println!(
            "\n{:<10} {:>6} exits  {:>8} us  VMM memory beyond guest RAM: {} KiB",
            f.name, f.exits, f.micros, f.overhead_kib
        );
        print_reasons(&f.by_reason);
    }
    linux_boot(emulator, &kernel)
}

/// Boots Debian's kernel with one vCPU to a /init that writes the marker and
/// powers off; prints the figures up to init and the VM's memory overhead.
fn linux_boot(emulator: Emulator, kernel: &std::path::Path) -> Result<ExitCode, String> {
    let guest = guests::LinuxGuest {
        name: "linux".into(),
        init: "tests/linux/bench.sh".into(),
        memory_mib: 128,
        vcpus: 1,
        time_limit_ms: 30 * 60 * 1000,
        append: "console=ttyS0".into(),
        modules: Vec::new(),
        blank_disks_mib: Vec::new(),
        host_console: false,
    };
    let linux = guests::linux_vm(&guest)?;
    let dir = workspace_root().join("target/basalt/bench-linux");
    let bundle = guests::bundle_with_linux(emulator.exit_option(), &[], &[linux])?;
    let image = images::make_image(kernel, &dir, &bundle, Firmware::Bios)?;
    let machine =
        Machine { emulator, firmware: Firmware::Bios, cpus: 1, memory_mib: 512, bochs_ips: emulator::BOCHS_IPS };
    println!("\nbench: Debian Linux, 1 vCPU, 128 MiB, to its /init marker and power-off (a few minutes on Bochs)");
    let run = emulator::run_captured(&machine, &image, &dir, Duration::from_secs(1200), &[])?;
    let log = dir.join("serial.log");
    let marker = run.serial.lines().find_map(parse_marker).ok_or_else(|| {
        format!("the Linux guest never wrote the bench marker ({:?}); see {}", run.ending, log.display())
    })?;
    let total = run
        .serial
        .lines()
        .filter_map(parse_line)
        .find(|f| f.name == marker.name)
        .ok_or_else(|| format!("no report line for VM '{}'; see {}", marker.name, log.display()))?;
    println!(
        "\nlinux: init reached after {:.3} s of guest time, {} exits up to it (VM-exit handling cycles are TSC cycles)",
        marker.micros as f64 / 1e6,
        marker.exits
    );
    print_reasons(&marker.by_reason);
    println!(
        "\nlinux: whole run to power-off {:.3} s, {} exits; VMM memory beyond guest RAM: {} KiB",
        total.micros as f64 / 1e6,
        total.exits,
        total.overhead_kib
    );
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counter_lines_parse() {
        let line = "[   1.5 cpu1] INFO  vm long ran on cpu1 for 730791 us: 536 exits; cpuid=4/103 io=522/6226; 16 MiB RAM + 56 KiB VMM overhead";
        let f = parse_line(line).unwrap();
        assert_eq!((f.name.as_str(), f.micros, f.exits, f.overhead_kib), ("long", 730791, 536, 56));
        assert_eq!(f.by_reason, vec![("cpuid".into(), 4, 103), ("io".into(), 522, 6226)]);
        assert_eq!(parse_line("vm long | ran on cpu (guest output)"), None);
    }

    #[test]
    fn marker_lines_parse() {
        let line = "[ 9.1 cpu0] INFO  vm linux marker 1 on vcpu0 at 4512345 us: 1200 exits; io=1000/2100 hlt=200/900";
        let m = parse_marker(line).unwrap();
        assert_eq!((m.name.as_str(), m.value, m.micros, m.exits), ("linux", 1, 4512345, 1200));
        assert_eq!(m.by_reason, vec![("io".into(), 1000, 2100), ("hlt".into(), 200, 900)]);
        assert_eq!(parse_marker("vm linux | marker 1 on vcpu0 (guest output)"), None);
    }
}
