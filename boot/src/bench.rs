//! `cargo xtask bench`: boots the test guests on a VT-x machine and prints, per
//! VM, the exits by reason and the hypervisor's TSC cycles per exit, from the
//! counter line the kernel logs when a VM stops. Figures, not pass/fail.

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
    }
}

/// One parsed "vm NAME ran on cpuN for U us: E exits; r=n/c ...; M MiB RAM + K KiB VMM overhead" line.
#[derive(Debug, PartialEq)]
pub struct VmFigures {
    pub name: String,
    pub micros: u64,
    pub exits: u64,
    pub by_reason: Vec<(String, u64, u64)>,
    pub overhead_kib: u64,
}

pub fn parse_line(line: &str) -> Option<VmFigures> {
    let rest = &line[line.find("vm ")? + 3..];
    let (name, rest) = rest.split_once(" ran on cpu")?;
    let micros = rest.split_once(" for ")?.1.split_once(" us: ")?.0.parse().ok()?;
    let after_us = rest.split_once(" us: ")?.1;
    let (exits, rest) = after_us.split_once(" exits;")?;
    let (reasons, rest) = rest.split_once(';')?;
    let by_reason = reasons
        .split_whitespace()
        .filter_map(|r| {
            let (reason, figures) = r.split_once('=')?;
            let (n, c) = figures.split_once('/')?;
            Some((reason.to_string(), n.parse().ok()?, c.parse().ok()?))
        })
        .collect();
    let overhead_kib = rest.split_once(" + ")?.1.split_whitespace().next()?.parse().ok()?;
    Some(VmFigures { name: name.to_string(), micros, exits: exits.trim().parse().ok()?, by_reason, overhead_kib })
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
    let machine = Machine { emulator, firmware: Firmware::Bios, cpus: 1, memory_mib: 256 };
    println!("bench: test guests on {}, 1 CPU (emulated time: figures compare runs, not hardware)", emulator.name());
    let run = emulator::run_captured(&machine, &image, &dir, Duration::from_secs(300))?;
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
        println!("  {:<20} {:>8} {:>14}", "reason", "exits", "cycles/exit");
        for (reason, n, c) in &f.by_reason {
            println!("  {reason:<20} {n:>8} {c:>14}");
        }
    }
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
}
