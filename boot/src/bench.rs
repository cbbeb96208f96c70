//! `cargo xtask bench`: boots the test guests, then Debian's Linux, on each
//! back end, VT-x ([`Emulator::best_for_vmx`]) and SVM
//! ([`Emulator::best_for_svm`]), or on the one `--vendor` names, and prints one
//! table per VM with a pair of columns per back end: the exits by reason and
//! the hypervisor's TSC cycles per exit, from the counter lines the kernel logs
//! when a VM stops, and for Linux also when its /init writes the bench marker
//! (time to init and the exits up to it), then the VM's memory overhead.
//! Figures, not pass/fail.

use crate::emulator::{self, Emulator, Firmware, Machine, Vendor};
use crate::guests::{self, GuestVm, LinuxVm};
use crate::images::{self, Config};
use crate::{setup, take_value, workspace_root};
use std::io::Write;
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

fn vm(name: &str, guest: &str, format: &str, mode: Option<&str>) -> GuestVm {
    GuestVm {
        name: name.into(),
        guest: guest.into(),
        format: format.into(),
        mode: mode.map(Into::into),
        memory_mib: 16,
        vcpus: 1,
        time_limit_ms: 10_000,
        corrupt_guest_state: false,
        blank_disks_mib: Vec::new(),
        append: None,
        initrd: None,
    }
}

/// One parsed "vm NAME ran on cpuN for U us: E exits; r=n/c ...; T timer
/// interrupts; M MiB RAM + K KiB VMM overhead" line.
#[derive(Debug, PartialEq)]
pub struct VmFigures {
    pub name: String,
    pub micros: u64,
    pub exits: u64,
    pub by_reason: Vec<ReasonFigures>,
    /// None from a kernel that did not count them yet.
    pub timer_interrupts: Option<u64>,
    pub overhead_kib: u64,
}

pub fn parse_line(line: &str) -> Option<VmFigures> {
    let rest = &line[line.find("vm ")? + 3..];
    let (name, rest) = rest.split_once(" ran on cpu")?;
    let micros = rest.split_once(" for ")?.1.split_once(" us: ")?.0.parse().ok()?;
    let (exits, by_reason, rest) = parse_exits(rest.split_once(" us: ")?.1)?;
    let overhead_kib = rest.split_once(" + ")?.1.split_whitespace().next()?.parse().ok()?;
    let timer_interrupts = parse_timer_interrupts(rest);
    Some(VmFigures { name: name.to_string(), micros, exits, by_reason, timer_interrupts, overhead_kib })
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

/// The "T timer interrupts" item among the `;`-separated ones after the reasons.
fn parse_timer_interrupts(rest: &str) -> Option<u64> {
    rest.split(';').find_map(|item| item.trim().strip_suffix(" timer interrupts")?.parse().ok())
}

/// One parsed "vm NAME marker V on vcpuN at U us: E exits; r=n/c ...; T timer interrupts" line.
#[derive(Debug, PartialEq)]
pub struct MarkerFigures {
    pub name: String,
    pub value: u8,
    pub micros: u64,
    pub exits: u64,
    pub by_reason: Vec<ReasonFigures>,
    /// None from a kernel that did not count them yet.
    pub timer_interrupts: Option<u64>,
}

pub fn parse_marker(line: &str) -> Option<MarkerFigures> {
    let rest = &line[line.find("vm ")? + 3..];
    let (name, rest) = rest.split_once(" marker ")?;
    let (value, rest) = rest.split_once(" on vcpu")?;
    let micros = rest.split_once(" at ")?.1.split_once(" us: ")?.0.parse().ok()?;
    let (exits, by_reason, rest) = parse_exits(rest.split_once(" us: ")?.1)?;
    let timer_interrupts = parse_timer_interrupts(rest);
    Some(MarkerFigures {
        name: name.to_string(),
        value: value.parse().ok()?,
        micros,
        exits,
        by_reason,
        timer_interrupts,
    })
}

/// The test guests, in the order the kernel runs them and reports them.
fn test_vms() -> Vec<GuestVm> {
    vec![
        vm("real-mode", "real-mode", "flat", Some("real")),
        vm("multiboot", "multiboot", "multiboot", None),
        vm("long-mode", "long-mode", "elf", None),
        vm("demo", "demo", "elf", None),
    ]
}

/// Debian's kernel with one vCPU and a /init that writes the marker and powers off.
fn linux_guest() -> guests::LinuxGuest {
    guests::LinuxGuest {
        name: "linux".into(),
        init: "tests/linux/bench.sh".into(),
        memory_mib: 128,
        vcpus: 1,
        time_limit_ms: 30 * 60 * 1000,
        append: "console=ttyS0".into(),
        modules: Vec::new(),
        blank_disks_mib: Vec::new(),
        host_console: false,
        boot: guests::KernelFile::Vmlinux,
    }
}

/// What the Linux VM reported: the figures up to its /init marker and for the whole run.
#[derive(Debug, PartialEq)]
pub struct LinuxFigures {
    pub marker: MarkerFigures,
    pub total: VmFigures,
}

/// One back end's runs: each an error (the other side still runs) or its figures.
struct Side {
    vendor: Vendor,
    emulator: Emulator,
    guests: Result<Vec<VmFigures>, String>,
    linux: Result<LinuxFigures, String>,
}

pub fn main(args: &[String]) -> Result<ExitCode, String> {
    let mut args = args.to_vec();
    let vendor = take_value(&mut args, "--vendor")?
        .map(|v| Vendor::parse(&v).ok_or_else(|| format!("--vendor must be vmx or svm, not '{v}'")))
        .transpose()?;
    if let Some(unknown) = args.first() {
        return Err(format!("bench: unknown option '{unknown}'"));
    }
    let vendors = vendor.map_or(Vendor::ALL.to_vec(), |v| vec![v]);
    let machines: Vec<(Vendor, Emulator)> = vendors.iter().map(|&v| (v, v.best_emulator())).collect();
    for &(_, emulator) in &machines {
        setup::ensure(&setup::Needs::for_emulator(emulator))?;
    }
    let kernel = images::build_kernel(Config::Run)?;
    let linux = guests::linux_vm(&linux_guest())?;
    let on: Vec<String> = machines.iter().map(|(v, e)| format!("{} on {}", v.name(), e.name())).collect();
    println!(
        "bench: {}; the test guests on 1 CPU, then Debian Linux (1 vCPU, 128 MiB) to its /init marker and power-off",
        on.join(", ")
    );
    println!("{}", tsc_note(&machines));
    // The quick side first, so its mistakes show before Bochs' long runs.
    let mut order = machines.clone();
    order.sort_by_key(|&(_, e)| e == Emulator::Bochs);
    let mut sides: Vec<Side> = order
        .into_iter()
        .map(|(vendor, emulator)| {
            let guests = bench_guests(vendor, emulator, &kernel);
            let linux = bench_linux(vendor, emulator, &kernel, &linux);
            Side { vendor, emulator, guests, linux }
        })
        .collect();
    sides.sort_by_key(|s| Vendor::ALL.iter().position(|&v| v == s.vendor));

    for name in test_vms().iter().map(|v| v.name.as_str()) {
        let columns: Vec<(Vendor, Option<&VmFigures>)> = sides
            .iter()
            .map(|s| (s.vendor, s.guests.as_ref().ok().and_then(|f| f.iter().find(|f| f.name == name))))
            .collect();
        print!("\n{}", render_vm(name, &columns));
    }
    let columns: Vec<(Vendor, Option<&LinuxFigures>)> =
        sides.iter().map(|s| (s.vendor, s.linux.as_ref().ok())).collect();
    print!("\n{}", render_linux(&columns));

    let mut failed = false;
    for side in &sides {
        for error in [side.guests.as_ref().err(), side.linux.as_ref().err()].into_iter().flatten() {
            eprintln!("xtask: bench {} on {}: {error}", side.vendor.name(), side.emulator.name());
            failed = true;
        }
    }
    Ok(if failed { ExitCode::FAILURE } else { ExitCode::SUCCESS })
}

/// How a back end's cycles are counted, in one line: each machine's own TSC.
fn tsc_note(machines: &[(Vendor, Emulator)]) -> String {
    let each: Vec<String> = machines
        .iter()
        .map(|&(v, e)| {
            let tsc = match e {
                Emulator::Bochs => "Bochs' emulated TSC",
                Emulator::QemuTcg | Emulator::QemuTcgSvm => "QEMU TCG's TSC, host-paced",
                Emulator::QemuKvm => "the host CPU's TSC",
            };
            format!("{}: {tsc}", v.name())
        })
        .collect();
    let compare = if machines.len() > 1 {
        "compare runs of one column, not vmx with svm"
    } else {
        "compare runs with each other"
    };
    format!("cycles and times are each machine's own TSC ({}): {compare}", each.join("; "))
}

/// Writes "bench: WHAT ..." and, once `run` is done, how long it took.
fn timed<T>(what: &str, run: impl FnOnce() -> Result<(T, Duration), String>) -> Result<T, String> {
    print!("bench: {what} ...");
    let _ = std::io::stdout().flush();
    let result = run();
    match &result {
        Ok((_, elapsed)) => println!(" {:.1} s", elapsed.as_secs_f64()),
        Err(_) => println!(" failed"),
    }
    result.map(|(value, _)| value)
}

fn machine(emulator: Emulator, memory_mib: u32) -> Machine {
    Machine { emulator, firmware: Firmware::Bios, cpus: 1, memory_mib, bochs_ips: emulator::BOCHS_IPS }
}

/// Boots the test guests on one back end; their figures, one per VM.
fn bench_guests(vendor: Vendor, emulator: Emulator, kernel: &Path) -> Result<Vec<VmFigures>, String> {
    let vms = test_vms();
    let dir = workspace_root().join("target/basalt/bench").join(vendor.name());
    let bundle = guests::bundle(emulator.exit_option(), &vms)?;
    let image = images::make_image(kernel, &dir, &bundle, Firmware::Bios)?;
    let what = format!("{} on {}: the test guests", vendor.name(), emulator.name());
    let run = timed(&what, || {
        let run = emulator::run_captured(&machine(emulator, 256), &image, &dir, Duration::from_secs(300), &[])?;
        let elapsed = run.elapsed;
        Ok((run, elapsed))
    })?;
    let figures: Vec<VmFigures> = run.serial.lines().filter_map(parse_line).collect();
    if figures.len() != vms.len() {
        return Err(format!(
            "expected figures for {} VMs, found {} ({:?}); see {}",
            vms.len(),
            figures.len(),
            run.ending,
            dir.join("serial.log").display()
        ));
    }
    Ok(figures)
}

/// Boots Debian's kernel on one back end to its /init marker and power-off.
fn bench_linux(vendor: Vendor, emulator: Emulator, kernel: &Path, linux: &LinuxVm) -> Result<LinuxFigures, String> {
    let dir = workspace_root().join("target/basalt/bench-linux").join(vendor.name());
    let bundle = guests::bundle_with_linux(emulator.exit_option(), &[], std::slice::from_ref(linux))?;
    let image = images::make_image(kernel, &dir, &bundle, Firmware::Bios)?;
    let slow = if emulator == Emulator::Bochs { ", a few minutes on Bochs" } else { "" };
    let what = format!("{} on {}: Debian Linux to /init and power-off{slow}", vendor.name(), emulator.name());
    let run = timed(&what, || {
        let run = emulator::run_captured(&machine(emulator, 512), &image, &dir, Duration::from_secs(1200), &[])?;
        let elapsed = run.elapsed;
        Ok((run, elapsed))
    })?;
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
    Ok(LinuxFigures { marker, total })
}

/// Every reason any column has, each column's order kept (the kernel reports
/// them in one fixed order, so the columns agree on it); a reason only a later
/// column has goes right after the one it follows there.
fn merged_reasons(columns: &[Option<&[ReasonFigures]>]) -> Vec<String> {
    let mut merged: Vec<String> = Vec::new();
    for reasons in columns.iter().flatten() {
        let mut at = 0;
        for (reason, _, _) in reasons.iter() {
            match merged.iter().position(|r| r == reason) {
                Some(found) => at = found + 1,
                None => {
                    merged.insert(at, reason.clone());
                    at += 1;
                }
            }
        }
    }
    merged
}

/// A table: its title, then for each column a vendor's exits and cycles per
/// exit by reason, then summary rows with one value per column. What a column
/// lacks shows as "-".
fn render_table(
    title: &str,
    vendors: &[Vendor],
    reasons: &[Option<&[ReasonFigures]>],
    summary: &[(&str, Vec<Option<String>>)],
) -> String {
    let dash = || "-".to_string();
    let mut rows: Vec<Vec<String>> = Vec::new();
    let mut head = vec![title.to_string()];
    for v in vendors {
        head.push(format!("{} exits", v.name()));
        head.push(format!("{} cycles/exit", v.name()));
    }
    rows.push(head);
    for reason in merged_reasons(reasons) {
        let mut row = vec![format!("  {reason}")];
        for column in reasons {
            match column.and_then(|c| c.iter().find(|(r, _, _)| *r == reason)) {
                Some((_, n, c)) => row.extend([n.to_string(), c.to_string()]),
                None => row.extend([dash(), dash()]),
            }
        }
        rows.push(row);
    }
    for (label, values) in summary {
        let mut row = vec![format!("  {label}")];
        for value in values {
            row.extend([value.clone().unwrap_or_else(dash), String::new()]);
        }
        rows.push(row);
    }
    let widths: Vec<usize> =
        (0..rows[0].len()).map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0)).collect();
    let mut out = String::new();
    for row in rows {
        let mut line = format!("{:<w$}", row[0], w = widths[0]);
        for (cell, &w) in row.iter().zip(&widths).skip(1) {
            line.push_str(&format!("  {cell:>w$}"));
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// One test guest's table: a column pair per vendor, `None` where it has no figures.
pub fn render_vm(name: &str, columns: &[(Vendor, Option<&VmFigures>)]) -> String {
    let vendors: Vec<Vendor> = columns.iter().map(|c| c.0).collect();
    let reasons: Vec<Option<&[ReasonFigures]>> = columns.iter().map(|c| c.1.map(|f| &f.by_reason[..])).collect();
    let each = |value: fn(&VmFigures) -> String| columns.iter().map(|c| c.1.map(value)).collect::<Vec<_>>();
    let summary = [
        ("all exits", each(|f| f.exits.to_string())),
        ("run time (us)", each(|f| f.micros.to_string())),
        ("VMM memory (KiB)", each(|f| f.overhead_kib.to_string())),
    ];
    render_table(name, &vendors, &reasons, &summary)
}

fn seconds(micros: u64) -> String {
    format!("{:.3}", micros as f64 / 1e6)
}

/// The Linux VM's table: the exits by reason up to its /init marker, then time
/// to init, the whole run and its memory overhead.
pub fn render_linux(columns: &[(Vendor, Option<&LinuxFigures>)]) -> String {
    let vendors: Vec<Vendor> = columns.iter().map(|c| c.0).collect();
    let reasons: Vec<Option<&[ReasonFigures]>> = columns.iter().map(|c| c.1.map(|f| &f.marker.by_reason[..])).collect();
    let each = |value: fn(&LinuxFigures) -> String| columns.iter().map(|c| c.1.map(value)).collect::<Vec<_>>();
    let summary = [
        ("exits to init", each(|f| f.marker.exits.to_string())),
        ("time to init (s)", each(|f| seconds(f.marker.micros))),
        ("exits to power-off", each(|f| f.total.exits.to_string())),
        ("time to power-off (s)", each(|f| seconds(f.total.micros))),
        ("VMM memory (KiB)", each(|f| f.total.overhead_kib.to_string())),
    ];
    render_table("linux (exits up to /init)", &vendors, &reasons, &summary)
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
        assert_eq!(f.timer_interrupts, None);
        assert_eq!(parse_line("vm long | ran on cpu (guest output)"), None);
    }

    #[test]
    fn counter_lines_with_timer_interrupts_parse() {
        let line = "[ 240.1 cpu0] INFO  vm linux ran on cpu0 for 236262000 us: 200356 exits; cpuid=1190/500 \
                    timer=45822/166; 45900 timer interrupts; 128 MiB RAM + 1204 KiB VMM overhead";
        let f = parse_line(line).unwrap();
        assert_eq!((f.exits, f.timer_interrupts, f.overhead_kib), (200356, Some(45900), 1204));
        assert_eq!(f.by_reason, vec![("cpuid".into(), 1190, 500), ("timer".into(), 45822, 166)]);
        // A VM that never exited still has its items in place.
        let idle =
            parse_line("vm idle ran on cpu1 for 10 us: 0 exits;; 0 timer interrupts; 16 MiB RAM + 40 KiB VMM overhead")
                .unwrap();
        assert_eq!((idle.exits, idle.by_reason.len(), idle.timer_interrupts, idle.overhead_kib), (0, 0, Some(0), 40));
    }

    #[test]
    fn marker_lines_parse() {
        let line = "[ 9.1 cpu0] INFO  vm linux marker 1 on vcpu0 at 4512345 us: 1200 exits; io=1000/2100 hlt=200/900";
        let m = parse_marker(line).unwrap();
        assert_eq!((m.name.as_str(), m.value, m.micros, m.exits), ("linux", 1, 4512345, 1200));
        assert_eq!(m.by_reason, vec![("io".into(), 1000, 2100), ("hlt".into(), 200, 900)]);
        assert_eq!(m.timer_interrupts, None);
        assert_eq!(parse_marker("vm linux | marker 1 on vcpu0 (guest output)"), None);

        let line =
            "vm linux marker 1 on vcpu0 at 4512345 us: 1200 exits; io=1000/2100 hlt=200/900; 333 timer interrupts";
        let m = parse_marker(line).unwrap();
        assert_eq!((m.exits, m.timer_interrupts), (1200, Some(333)));
        assert_eq!(m.by_reason[1], ("hlt".into(), 200, 900));
        let bad = "vm linux marker 1 on vcpu0 at 45 us: 12 exits; io=12/2100; many timer interrupts";
        assert_eq!(parse_marker(bad).unwrap().timer_interrupts, None);
    }

    fn figures(name: &str, micros: u64, by_reason: &[(&str, u64, u64)], overhead_kib: u64) -> VmFigures {
        let by_reason: Vec<ReasonFigures> = by_reason.iter().map(|&(r, n, c)| (r.to_string(), n, c)).collect();
        let exits = by_reason.iter().map(|r| r.1).sum();
        VmFigures { name: name.into(), micros, exits, by_reason, timer_interrupts: None, overhead_kib }
    }

    #[test]
    fn a_vm_table_has_a_column_pair_per_vendor_and_dashes_where_a_side_saw_nothing() {
        let vmx = figures("long-mode", 730791, &[("cpuid", 4, 103), ("io", 522, 6226), ("hypercall", 3, 900)], 56);
        let svm = figures("long-mode", 61234, &[("cpuid", 4, 220), ("io", 522, 4100), ("exception", 3, 1500)], 60);
        let text = render_vm("long-mode", &[(Vendor::Vmx, Some(&vmx)), (Vendor::Svm, Some(&svm))]);
        let expected = "\
long-mode           vmx exits  vmx cycles/exit  svm exits  svm cycles/exit
  cpuid                     4              103          4              220
  io                      522             6226        522             4100
  exception                 -                -          3             1500
  hypercall                 3              900          -                -
  all exits               529                         529
  run time (us)        730791                       61234
  VMM memory (KiB)         56                          60
";
        assert_eq!(text, expected);
    }

    #[test]
    fn a_side_without_figures_is_all_dashes_and_one_side_is_one_pair() {
        let svm = figures("demo", 5000, &[("io", 20, 3000)], 48);
        let text = render_vm("demo", &[(Vendor::Vmx, None), (Vendor::Svm, Some(&svm))]);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "demo                vmx exits  vmx cycles/exit  svm exits  svm cycles/exit");
        assert_eq!(lines[1], "  io                        -                -         20             3000");
        assert_eq!(lines[2], "  all exits                 -                          20");
        assert_eq!(lines.len(), 5);

        let text = render_vm("demo", &[(Vendor::Svm, Some(&svm))]);
        let expected = "\
demo                svm exits  svm cycles/exit
  io                       20             3000
  all exits                20
  run time (us)          5000
  VMM memory (KiB)         48
";
        assert_eq!(text, expected);
    }

    #[test]
    fn the_linux_table_shows_exits_to_init_then_time_and_memory() {
        let marker = |micros, by_reason: &[(&str, u64, u64)]| {
            let f = figures("linux", micros, by_reason, 0);
            MarkerFigures {
                name: f.name,
                value: 1,
                micros,
                exits: f.exits,
                by_reason: f.by_reason,
                timer_interrupts: None,
            }
        };
        let vmx = LinuxFigures {
            marker: marker(4512345, &[("io", 1000, 2100), ("hlt", 200, 900)]),
            total: figures("linux", 4600000, &[("io", 1100, 2000), ("hlt", 210, 900)], 1204),
        };
        let svm = LinuxFigures {
            marker: marker(1250000, &[("io", 900, 5000), ("device-memory", 40, 7000)]),
            total: figures("linux", 1300000, &[("io", 950, 5000), ("device-memory", 41, 7000)], 1300),
        };
        let text = render_linux(&[(Vendor::Vmx, Some(&vmx)), (Vendor::Svm, Some(&svm))]);
        let expected = "\
linux (exits up to /init)  vmx exits  vmx cycles/exit  svm exits  svm cycles/exit
  io                            1000             2100        900             5000
  device-memory                    -                -         40             7000
  hlt                            200              900          -                -
  exits to init                 1200                         940
  time to init (s)             4.512                       1.250
  exits to power-off            1310                         991
  time to power-off (s)        4.600                       1.300
  VMM memory (KiB)              1204                        1300
";
        assert_eq!(text, expected);
    }

    #[test]
    fn reasons_merge_in_each_sides_order() {
        let r = |names: &[&str]| names.iter().map(|n| (n.to_string(), 1, 1)).collect::<Vec<ReasonFigures>>();
        let (a, b) = (r(&["cpuid", "io", "timer"]), r(&["cpuid", "hlt", "io", "hypercall"]));
        assert_eq!(merged_reasons(&[Some(&a), Some(&b)]), ["cpuid", "hlt", "io", "hypercall", "timer"]);
        assert_eq!(merged_reasons(&[None, Some(&b)]), ["cpuid", "hlt", "io", "hypercall"]);
        assert!(merged_reasons(&[None, None]).is_empty());
    }

    #[test]
    fn the_cycle_note_names_each_machines_tsc() {
        let both = tsc_note(&[(Vendor::Vmx, Emulator::Bochs), (Vendor::Svm, Emulator::QemuTcgSvm)]);
        assert_eq!(
            both,
            "cycles and times are each machine's own TSC (vmx: Bochs' emulated TSC; svm: QEMU TCG's TSC, host-paced): \
             compare runs of one column, not vmx with svm"
        );
        assert!(!tsc_note(&[(Vendor::Svm, Emulator::QemuKvm)]).contains("not vmx with svm"));
    }
}
