//! `cargo xtask bench`: boots the test guests, then Debian's Linux, on each
//! back end, VT-x ([`Emulator::best_for_vmx`]) and SVM
//! ([`Emulator::best_for_svm`]), or on the one `--vendor` names, and prints
//! the exits by reason and the hypervisor's TSC cycles per exit, from the
//! counter lines the kernel logs when a VM stops, and for Linux also when its
//! /init writes the bench marker (time to init and the exits up to it), then
//! the VM's memory overhead. Figures, not pass/fail.
//!
//! Linux boots twice per back end, its console on the UART (`console=ttyS0`)
//! and on virtio (`console=hvc0 quiet`). Most of its exits before init come
//! from the guest's timer ticks, and how many ticks a boot takes depends on
//! the emulator's clock, not on Basalt: Bochs' guest time is paced by
//! instructions (`ips`), about 300 times faster per instruction than a real
//! CPU at the test cases' rate. So under Bochs each Linux boot runs at two
//! clock rates, and each reason's exits are split into exits per timer tick
//! and exits outside timer handling (count = outside + per tick × ticks),
//! which mean the same on hardware. QEMU's TCG clock follows the host's, so
//! the SVM side has one run and no split.
//!
//! `--save FILE` writes every figure as `key value` lines, `--compare FILE`
//! prints each figure next to the saved one with the change.

use crate::cli::BenchArgs;
use crate::emulator::{self, Emulator, Firmware, Machine, Vendor};
use crate::guests::{self, GuestVm, LinuxVm};
use crate::images::{self, Config};
use crate::{setup, workspace_root};
use anyhow::{anyhow, bail, Context};
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
        ..Default::default()
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

/// A kernel command line the bench boots Linux with, and the key its figures go under.
pub struct Console {
    pub key: &'static str,
    pub append: &'static str,
    /// The vmlinux's entry: PVH, or the 64-bit boot protocol.
    pub boot: guests::KernelFile,
}

impl Console {
    /// How the bench's output names the runs.
    fn title(&self) -> String {
        match self.boot {
            guests::KernelFile::Vmlinux64Bit => format!("{}, 64-bit entry", self.append),
            _ => self.append.to_string(),
        }
    }
}

/// The initramfs carries no virtio modules and /init loads none before the
/// marker, so with hvc0 Linux boots to init with no console at all, as it
/// would with virtio-console built in and `quiet`: no UART output to exit on.
/// The last boots the vmlinux at its 64-bit entry instead of the PVH one,
/// where Linux does not look for Xen first.
pub const CONSOLES: [Console; 3] = [
    Console { key: "linux-ttyS0", append: "console=ttyS0", boot: guests::KernelFile::Vmlinux },
    Console { key: "linux-hvc0", append: "console=hvc0 quiet", boot: guests::KernelFile::Vmlinux },
    Console { key: "linux-hvc0-64bit", append: "console=hvc0 quiet", boot: guests::KernelFile::Vmlinux64Bit },
];

/// The second Bochs clock for the Linux runs: four times the cases' rate, so
/// the same boot takes about a quarter of the guest time and timer ticks,
/// which keeps the two runs' tick counts far apart. Linux boots cleanly at it
/// (the case `linux-2cpu` runs at it too).
pub const FAST_BOCHS_IPS: u64 = 4 * emulator::BOCHS_IPS;

/// Debian's kernel with one vCPU and a /init that writes the marker and powers off.
fn linux_guest(console: &Console) -> guests::LinuxGuest {
    guests::LinuxGuest {
        name: "linux".into(),
        init: "tests/linux/bench.sh".into(),
        memory_mib: 128,
        vcpus: 1,
        time_limit_ms: 30 * 60 * 1000,
        append: console.append.into(),
        modules: Vec::new(),
        blank_disks_mib: Vec::new(),
        host_console: false,
        boot: console.boot,
        ..Default::default()
    }
}

/// What the Linux VM reported: the figures up to its /init marker and for the whole run.
#[derive(Debug, PartialEq)]
pub struct LinuxFigures {
    pub marker: MarkerFigures,
    pub total: VmFigures,
    /// The kernel's "unclaimed addresses" list for the run, if it logged one.
    pub unclaimed: Option<String>,
}

/// One boot of Linux: the Bochs clock it ran at (None: the emulator's own
/// clock) and its figures or why there are none.
struct LinuxRun {
    ips: Option<u64>,
    figures: anyhow::Result<LinuxFigures>,
}

/// One back end's runs: each an error (the other runs still go ahead) or its figures.
struct Side {
    vendor: Vendor,
    emulator: Emulator,
    guests: anyhow::Result<Vec<VmFigures>>,
    /// Per entry of [`CONSOLES`], its runs.
    linux: Vec<Vec<LinuxRun>>,
    /// The 2-vCPU guest whose vCPUs exit at once.
    smp: anyhow::Result<Vec<Throughput>>,
    /// Two CPU hogs sharing a CPU, per slice of [`SCHED_SLICES_US`].
    sched: Vec<anyhow::Result<SchedFigures>>,
    /// A 1 kHz timer VM next to two hogs.
    latency: anyhow::Result<LatencyFigures>,
}

/// Bochs' clock for the latency run: at its default 10 MIPS a VMM run costs
/// the ticker ~600 us of guest time, more than its third of the core (see
/// the case sched-latency-1cpu).
const LATENCY_BOCHS_IPS: u64 = 100_000_000;

/// A 1 kHz timer VM (the ticker) sharing one CPU with two hogs at the
/// default slice: how late its wake-ups came, in microseconds.
#[derive(Debug, PartialEq)]
pub struct LatencyFigures {
    /// As the guest saw them: worst and mean over its 1000 ticks.
    worst_us: u64,
    mean_us: u64,
    /// As the VMM saw them: the longest wait before a core noticed a timer
    /// event (its delivery), and the longest from then to the guest entry
    /// (the policy and the switch).
    noticed_us: u64,
    after_us: u64,
}

/// Reads a `LatencyFigures` out of the run's serial output.
fn parse_latency(serial: &str) -> Option<LatencyFigures> {
    let line = |text: &str| serial.lines().find(|l| l.contains(text));
    // The number after `text` in `line`.
    let after = |line: &str, text: &str| {
        let rest = line.split_once(text)?.1;
        rest.chars().take_while(char::is_ascii_digit).collect::<String>().parse::<u64>().ok()
    };
    let guest = line("ticker: worst lateness ")?;
    let vmm = line("vm ticker vcpu0 timer wake-ups: ")?;
    Some(LatencyFigures {
        worst_us: after(guest, "worst lateness ")?,
        mean_us: after(guest, " us, mean ")?,
        noticed_us: after(vmm, "; noticed by max ")?,
        after_us: after(vmm, " us, in the guest max ")?,
    })
}

/// The ticker next to two CPU hogs on one CPU at the default slice.
fn bench_latency(vendor: Vendor, emulator: Emulator, kernel: &Path) -> anyhow::Result<LatencyFigures> {
    let hog = |name: &str| GuestVm { time_limit_ms: 3000, ..vm(name, "runaway", "elf", None) };
    let ticker = GuestVm { time_limit_ms: 10_000, ..vm("ticker", "ticker", "elf", None) };
    let vms = [ticker, hog("hog1"), hog("hog2")];
    let dir = workspace_root().join("target/basalt/bench-latency").join(vendor.name());
    let what = format!("{} on {}: a 1 kHz timer VM next to two CPU hogs", vendor.name(), emulator.name());
    let one_cpu = machine(emulator, 256, LATENCY_BOCHS_IPS);
    let run = run_guests(&what, &one_cpu, kernel, &dir, emulator.exit_option(), &vms)?;
    parse_latency(&run.serial).ok_or_else(|| {
        anyhow::anyhow!("the latency figures are missing ({:?}); see {}", run.ending, dir.join("serial.log").display())
    })
}

/// The ticker's wake-up latency, per back end.
fn render_latency(sides: &[Side]) -> String {
    let mut rows = vec![vec![
        "1 kHz timer VM next to two hogs, 500 us slice".to_string(),
        "worst".into(),
        "mean".into(),
        "timer delivery (max)".into(),
        "then to the guest (max)".into(),
    ]];
    for side in sides {
        let label = format!("  {}", side.vendor.name());
        rows.push(match &side.latency {
            Ok(f) => vec![
                label,
                format!("{} us", f.worst_us),
                format!("{} us", f.mean_us),
                format!("{} us", f.noticed_us),
                format!("{} us", f.after_us),
            ],
            Err(_) => vec![label, dash(), dash(), dash(), dash()],
        });
    }
    let mut out = layout(&rows);
    out.push_str(&format!(
        "  (bounds: worst one slice, mean 200 us; Bochs at {} MIPS here, where a VMM run costs guest time as on slow hardware)\n",
        LATENCY_BOCHS_IPS / 1_000_000
    ));
    out
}

/// The slices the scheduler is measured at.
const SCHED_SLICES_US: [u64; 2] = [1000, 10_000];

/// Two CPU-bound VMs weighted 1:3 on one CPU for three seconds, at one slice.
#[derive(Debug, PartialEq)]
pub struct SchedFigures {
    slice_us: u64,
    /// The light VM's share of their run time, percent (its due: 25).
    light_percent: f64,
    /// The core's time in guests, percent of the run.
    in_guests_percent: f64,
    /// vCPU runs (each a switch in and out) on the core.
    runs: u64,
    /// Cycles per run neither in a guest nor halted: switches, decisions, exits.
    vmm_cycles_per_run: u64,
}

/// Reads a `SchedFigures` out of the run's serial output.
fn parse_sched(serial: &str, slice_us: u64) -> Option<SchedFigures> {
    let run_us = |vm: &str| {
        let prefix = format!("vm {vm} vcpu0 scheduling: run ");
        let rest = serial.lines().find_map(|l| l.split_once(prefix.as_str()).map(|(_, r)| r.to_string()))?;
        rest.split_whitespace().next()?.parse::<f64>().ok()
    };
    let (light, heavy) = (run_us("light")?, run_us("heavy")?);
    let line = serial.lines().find_map(|l| l.split_once("vmm: cores while VMs ran: cpu0 ").map(|(_, r)| r))?;
    let words: Vec<&str> = line.split_whitespace().collect();
    let in_guests_percent = words.first()?.trim_end_matches('%').parse().ok()?;
    let runs = words.get(3)?.parse().ok()?;
    let vmm_cycles_per_run = words.get(6)?.parse().ok()?;
    Some(SchedFigures {
        slice_us,
        light_percent: light * 100.0 / (light + heavy).max(1.0),
        in_guests_percent,
        runs,
        vmm_cycles_per_run,
    })
}

/// Two CPU hogs weighted 1:3 on one CPU at `slice_us`: their shares, and
/// what the switching costs the core.
fn bench_sched(vendor: Vendor, emulator: Emulator, kernel: &Path, slice_us: u64) -> anyhow::Result<SchedFigures> {
    let hog = |name: &str, weight: u32| GuestVm {
        time_limit_ms: 3000,
        weight: Some(weight),
        ..vm(name, "runaway", "elf", None)
    };
    let vms = [hog("light", 256), hog("heavy", 768)];
    let dir = workspace_root().join("target/basalt/bench-sched").join(vendor.name()).join(slice_us.to_string());
    let cmdline = format!("{} slice-us={slice_us}", emulator.exit_option());
    let what = format!("{} on {}: two CPU hogs at a {slice_us} us slice", vendor.name(), emulator.name());
    let one_cpu = machine(emulator, 256, emulator::BOCHS_IPS);
    let run = run_guests(&what, &one_cpu, kernel, &dir, &cmdline, &vms)?;
    parse_sched(&run.serial, slice_us).ok_or_else(|| {
        anyhow::anyhow!(
            "the scheduler's figures are missing ({:?}); see {}",
            run.ending,
            dir.join("serial.log").display()
        )
    })
}

/// The scheduler, per back end and slice.
fn render_sched(sides: &[Side]) -> String {
    let mut rows = vec![vec![
        "two CPU hogs 1:3 on one CPU".to_string(),
        "light share".into(),
        "in guests".into(),
        "vCPU runs".into(),
        "VMM cycles per run".into(),
    ]];
    for side in sides {
        for (slice, figures) in SCHED_SLICES_US.iter().zip(&side.sched) {
            let label = format!("  {} slice {} ms", side.vendor.name(), slice / 1000);
            rows.push(match figures {
                Ok(f) => vec![
                    label,
                    format!("{:.1}%", f.light_percent),
                    format!("{:.1}%", f.in_guests_percent),
                    f.runs.to_string(),
                    f.vmm_cycles_per_run.to_string(),
                ],
                Err(_) => vec![label, dash(), dash(), dash(), dash()],
            });
        }
    }
    let mut out = layout(&rows);
    out.push_str("  (light share due: 25%; the rest of the core's time is the VMM's: switches, decisions, exits)\n");
    out
}

/// One "throughput DEVICES: one vCPU X exits per million ticks, two vCPUs Y: Rx"
/// line of the smp-throughput guest: exits per million guest TSC ticks of one
/// vCPU alone and of two at once, on devices of their own.
#[derive(Debug, PartialEq)]
pub struct Throughput {
    pub devices: String,
    pub one: f64,
    pub two: f64,
}

impl Throughput {
    /// 2.0 when the two vCPUs do not slow each other down at all.
    pub fn ratio(&self) -> f64 {
        if self.one > 0.0 {
            self.two / self.one
        } else {
            0.0
        }
    }
}

pub fn parse_throughput(line: &str) -> Option<Throughput> {
    let rest = &line[line.find("throughput ")? + "throughput ".len()..];
    let (devices, rest) = rest.split_once(": one vCPU ")?;
    let (one, rest) = rest.split_once(" exits per million ticks, two vCPUs ")?;
    let (two, _) = rest.split_once(':')?;
    Some(Throughput { devices: devices.to_string(), one: one.parse().ok()?, two: two.parse().ok()? })
}

/// The clocks Linux runs at on this emulator: two where it can be set.
fn clocks(emulator: Emulator) -> Vec<Option<u64>> {
    match emulator {
        Emulator::Bochs => vec![Some(emulator::BOCHS_IPS), Some(FAST_BOCHS_IPS)],
        _ => vec![None],
    }
}

pub fn main(args: BenchArgs) -> anyhow::Result<ExitCode> {
    let BenchArgs { vendor, save, compare } = args;
    // Read before the long runs, so a wrong path fails at once.
    let saved = compare
        .as_ref()
        .map(|file| {
            let text =
                std::fs::read_to_string(file).with_context(|| format!("--compare: cannot read {}", file.display()))?;
            read_figures(&text).map_err(|e| anyhow!("--compare: {}: {e}", file.display()))
        })
        .transpose()?;
    let vendors = vendor.map_or(Vendor::ALL.to_vec(), |v| vec![v]);
    let machines: Vec<(Vendor, Emulator)> = vendors.iter().map(|&v| (v, v.best_emulator())).collect();
    for &(_, emulator) in &machines {
        setup::ensure(&setup::Needs::for_emulator(emulator)).map_err(anyhow::Error::msg)?;
    }
    let kernel = images::build_kernel(Config::Run).context("building the kernel")?;
    let linux: Vec<LinuxVm> = CONSOLES
        .iter()
        .map(|c| guests::linux_vm(&linux_guest(c)))
        .collect::<Result<_, _>>()
        .map_err(anyhow::Error::msg)
        .context("building the Linux VMs")?;
    let on: Vec<String> = machines.iter().map(|(v, e)| format!("{} on {}", v.name(), e.name())).collect();
    println!(
        "bench: {}; the test guests on 1 CPU, then Debian Linux (1 vCPU, 128 MiB) to its /init marker and \
         power-off, with {}",
        on.join(", "),
        CONSOLES.iter().map(Console::title).collect::<Vec<_>>().join(" and with ")
    );
    println!("{}", tsc_note(&machines));
    for &(vendor, emulator) in &machines {
        println!("{}", clock_note(vendor, emulator));
    }
    // The quick side first, so its mistakes show before Bochs' long runs.
    let mut order = machines.clone();
    order.sort_by_key(|&(_, e)| e == Emulator::Bochs);
    let mut sides: Vec<Side> = order
        .into_iter()
        .map(|(vendor, emulator)| {
            let guests = bench_guests(vendor, emulator, &kernel);
            let linux = CONSOLES
                .iter()
                .zip(&linux)
                .map(|(console, vm)| {
                    clocks(emulator)
                        .into_iter()
                        .map(|ips| LinuxRun { ips, figures: bench_linux(vendor, emulator, &kernel, vm, console, ips) })
                        .collect()
                })
                .collect();
            let smp = bench_smp(vendor, emulator, &kernel);
            let sched = SCHED_SLICES_US.iter().map(|&slice| bench_sched(vendor, emulator, &kernel, slice)).collect();
            let latency = bench_latency(vendor, emulator, &kernel);
            Side { vendor, emulator, guests, linux, smp, sched, latency }
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
    for (index, console) in CONSOLES.iter().enumerate() {
        for side in &sides {
            let runs: Vec<(Option<u64>, Option<&LinuxFigures>)> =
                side.linux[index].iter().map(|r| (r.ips, r.figures.as_ref().ok())).collect();
            let title = format!("linux {} on {}", console.title(), side.vendor.name());
            print!("\n{}", render_linux(&title, &runs));
        }
    }

    print!("\n{}", render_smp(&sides));
    print!("\n{}", render_sched(&sides));
    print!("\n{}", render_latency(&sides));

    let figures: Vec<Figure> = sides.iter().flat_map(side_figures).collect();
    if let (Some(saved), Some(file)) = (&saved, &compare) {
        let ran: Vec<&str> = sides.iter().map(|s| s.vendor.name()).collect();
        print!("\ncompared with {}:\n{}", file.display(), render_comparison(saved, &figures, &ran));
    }
    if let Some(file) = &save {
        let about: Vec<String> =
            sides.iter().map(|s| format!("{} on {}", s.vendor.name(), s.emulator.name())).collect();
        std::fs::write(file, write_figures(&about.join(", "), &figures))
            .with_context(|| format!("--save: cannot write {}", file.display()))?;
        println!("\nbench: {} figures saved in {}", figures.len(), file.display());
    }

    let mut failed = false;
    for side in &sides {
        let linux = side.linux.iter().flatten().filter_map(|r| r.figures.as_ref().err());
        let sched = side.sched.iter().filter_map(|r| r.as_ref().err()).chain(side.latency.as_ref().err());
        for error in side.guests.as_ref().err().into_iter().chain(linux).chain(side.smp.as_ref().err()).chain(sched) {
            eprintln!("xtask: bench {} on {}: {error:#}", side.vendor.name(), side.emulator.name());
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
        "compare runs of one back end, not vmx with svm"
    } else {
        "compare runs with each other"
    };
    format!("cycles and times are each machine's own TSC ({}): {compare}", each.join("; "))
}

/// The emulated clock a back end's runs use, in one line.
fn clock_note(vendor: Vendor, emulator: Emulator) -> String {
    let clock = match emulator {
        Emulator::Bochs => format!(
            "Bochs' clock is ips={} (the test cases' rate) for the test guests, ips={} and ips={} for Linux, \
             whose exits are split into per timer tick and outside timer handling",
            emulator::BOCHS_IPS,
            emulator::BOCHS_IPS,
            FAST_BOCHS_IPS
        ),
        Emulator::QemuTcg | Emulator::QemuTcgSvm => {
            "QEMU TCG's clock follows the host's and cannot be set: one run each, no per-tick split".into()
        }
        Emulator::QemuKvm => "the host's own clock: one run each, no per-tick split".into(),
    };
    format!("{}: {clock}", vendor.name())
}

/// Writes "bench: WHAT" and, once `run` is done, how long it took (on a line
/// of its own: the emulator's progress shows between the two).
fn timed<T>(what: &str, run: impl FnOnce() -> anyhow::Result<(T, Duration)>) -> anyhow::Result<T> {
    println!("bench: {what} ...");
    let result = run();
    match &result {
        Ok((_, elapsed)) => println!("bench: {what}: {:.1} s", elapsed.as_secs_f64()),
        Err(_) => println!("bench: {what}: failed"),
    }
    result.map(|(value, _)| value)
}

fn machine(emulator: Emulator, memory_mib: u32, bochs_ips: u64) -> Machine {
    Machine { emulator, firmware: Firmware::Bios, cpus: 1, memory_mib, bochs_ips }
}

/// Boots the test guests on one back end; their figures, one per VM.
fn bench_guests(vendor: Vendor, emulator: Emulator, kernel: &Path) -> anyhow::Result<Vec<VmFigures>> {
    let vms = test_vms();
    let dir = workspace_root().join("target/basalt/bench").join(vendor.name());
    let bundle = guests::bundle(emulator.exit_option(), &vms).map_err(anyhow::Error::msg)?;
    let image = images::make_image(kernel, &dir, &bundle, Firmware::Bios)?;
    let what = format!("{} on {}: the test guests", vendor.name(), emulator.name());
    let run = timed(&what, || {
        let machine = machine(emulator, 256, emulator::BOCHS_IPS);
        let run = emulator::run_captured(&what, &machine, &image, &dir, Duration::from_secs(300), &[])?;
        let elapsed = run.elapsed;
        Ok((run, elapsed))
    })?;
    let figures: Vec<VmFigures> = run.serial.lines().filter_map(parse_line).collect();
    if figures.len() != vms.len() {
        bail!(
            "expected figures for {} VMs, found {} ({:?}); see {}",
            vms.len(),
            figures.len(),
            run.ending,
            dir.join("serial.log").display()
        );
    }
    Ok(figures)
}

/// Boots `vms` with boot options `cmdline` on a machine of `cpus` CPUs (256
/// MiB, Bochs at its usual clock), its files in `dir`; the run, timed.
fn run_guests(
    what: &str,
    machine: &Machine,
    kernel: &Path,
    dir: &Path,
    cmdline: &str,
    vms: &[GuestVm],
) -> anyhow::Result<emulator::RunOutput> {
    let bundle = guests::bundle(cmdline, vms).map_err(anyhow::Error::msg)?;
    let image = images::make_image(kernel, dir, &bundle, Firmware::Bios)?;
    timed(what, || {
        let run = emulator::run_captured(what, machine, &image, dir, Duration::from_secs(300), &[])?;
        let elapsed = run.elapsed;
        Ok((run, elapsed))
    })
}

/// Boots the 2-vCPU smp-throughput guest on a 2-CPU machine: its figures,
/// one per kind of device.
fn bench_smp(vendor: Vendor, emulator: Emulator, kernel: &Path) -> anyhow::Result<Vec<Throughput>> {
    let vm = GuestVm { memory_mib: 32, vcpus: 2, ..vm("smp", "smp-throughput", "elf", None) };
    let dir = workspace_root().join("target/basalt/bench-smp").join(vendor.name());
    let what = format!("{} on {}: two vCPUs exiting at once", vendor.name(), emulator.name());
    let two_cpus = Machine { cpus: 2, ..machine(emulator, 256, emulator::BOCHS_IPS) };
    let run = run_guests(&what, &two_cpus, kernel, &dir, emulator.exit_option(), std::slice::from_ref(&vm))?;
    let figures: Vec<Throughput> = run.serial.lines().filter_map(parse_throughput).collect();
    if figures.is_empty() {
        bail!(
            "the smp-throughput guest printed no figures ({:?}); see {}",
            run.ending,
            dir.join("serial.log").display()
        );
    }
    Ok(figures)
}

/// Two vCPUs of one VM exiting at once, per back end: exits per million
/// ticks of one vCPU, of two, and the ratio (2.00: no slowdown at all).
fn render_smp(sides: &[Side]) -> String {
    let mut rows =
        vec![vec!["two vCPUs exiting at once".to_string(), "one vCPU".into(), "two vCPUs".into(), "ratio".into()]];
    for side in sides {
        match &side.smp {
            Ok(figures) => rows.extend(figures.iter().map(|f| {
                vec![
                    format!("  {} on {}", f.devices, side.vendor.name()),
                    format!("{:.2}", f.one),
                    format!("{:.2}", f.two),
                    format!("{:.2}", f.ratio()),
                ]
            })),
            Err(_) => rows.push(vec![format!("  {}", side.vendor.name()), dash(), dash(), dash()]),
        }
    }
    let mut out = layout(&rows);
    out.push_str("  (exits per million guest TSC ticks; each vCPU on a device of its own)\n");
    out
}

/// Boots Debian's kernel on one back end to its /init marker and power-off,
/// under Bochs at `ips`.
fn bench_linux(
    vendor: Vendor,
    emulator: Emulator,
    kernel: &Path,
    linux: &LinuxVm,
    console: &Console,
    ips: Option<u64>,
) -> anyhow::Result<LinuxFigures> {
    let run_name = match ips {
        Some(ips) => format!("{}-ips{ips}", console.key),
        None => console.key.to_string(),
    };
    let dir = workspace_root().join("target/basalt/bench-linux").join(vendor.name()).join(run_name);
    let bundle = guests::bundle_with_linux(emulator.exit_option(), &[], std::slice::from_ref(linux))
        .map_err(anyhow::Error::msg)?;
    let image = images::make_image(kernel, &dir, &bundle, Firmware::Bios)?;
    let clock = ips.map(|ips| format!(", ips={ips}")).unwrap_or_default();
    let what = format!(
        "{} on {}: Debian Linux, {}{clock}, to /init and power-off",
        vendor.name(),
        emulator.name(),
        console.title()
    );
    let run = timed(&what, || {
        let machine = machine(emulator, 512, ips.unwrap_or(emulator::BOCHS_IPS));
        let run = emulator::run_captured(&what, &machine, &image, &dir, Duration::from_secs(1200), &[])?;
        let elapsed = run.elapsed;
        Ok((run, elapsed))
    })?;
    let log = dir.join("serial.log");
    let marker = run.serial.lines().find_map(parse_marker).ok_or_else(|| {
        anyhow!("the Linux guest never wrote the bench marker ({:?}); see {}", run.ending, log.display())
    })?;
    let total = run
        .serial
        .lines()
        .filter_map(parse_line)
        .find(|f| f.name == marker.name)
        .ok_or_else(|| anyhow!("no report line for VM '{}'; see {}", marker.name, log.display()))?;
    let unclaimed_prefix = format!("vm {} unclaimed addresses: ", marker.name);
    let unclaimed = run
        .serial
        .lines()
        .find_map(|line| Some(line[line.find(&unclaimed_prefix)? + unclaimed_prefix.len()..].trim().to_string()));
    Ok(LinuxFigures { marker, total, unclaimed })
}

/// One reason's exits to init split by the guest's timer ticks:
/// count = outside + per_tick × ticks.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Split {
    pub per_tick: f64,
    pub outside: f64,
    /// The exact solution had a negative part (noise, or exits that grow
    /// with guest time per instruction rather than with ticks); see [`split`].
    pub clamped: bool,
}

/// Solves count = outside + per_tick × ticks for two runs, each given as
/// (count, ticks); None when their ticks are equal. A negative part is set to
/// zero and the other fitted to one run: a negative per-tick figure becomes
/// 0 with everything outside, as counted in the run with fewer ticks (the
/// closer to none); a negative outside figure becomes 0 with every exit per
/// tick, as in the run with more ticks.
pub fn split((n1, t1): (u64, u64), (n2, t2): (u64, u64)) -> Option<Split> {
    if t1 == t2 {
        return None;
    }
    let ((few_n, few_t), (many_n, many_t)) = if t1 < t2 { ((n1, t1), (n2, t2)) } else { ((n2, t2), (n1, t1)) };
    let (few_n, few_t, many_n, many_t) = (few_n as f64, few_t as f64, many_n as f64, many_t as f64);
    let per_tick = (many_n - few_n) / (many_t - few_t);
    let outside = few_n - per_tick * few_t;
    Some(if per_tick < 0.0 {
        Split { per_tick: 0.0, outside: few_n, clamped: true }
    } else if outside < 0.0 {
        Split { per_tick: many_n / many_t, outside: 0.0, clamped: true }
    } else {
        Split { per_tick, outside, clamped: false }
    })
}

/// Two runs' exits to init split by reason, and the sums: the timer-related
/// exits per tick and the exits outside timer handling.
#[derive(Debug, PartialEq)]
pub struct LinuxSplit {
    pub by_reason: Vec<(String, Split)>,
    pub per_tick: f64,
    pub outside: f64,
}

/// The split of two runs' exits to init, or why there is none.
pub fn split_linux(a: &MarkerFigures, b: &MarkerFigures) -> Result<LinuxSplit, String> {
    let (Some(ta), Some(tb)) = (a.timer_interrupts, b.timer_interrupts) else {
        return Err("the kernel did not report the guest's timer interrupts".into());
    };
    if ta == tb {
        return Err(format!("both runs took {ta} timer interrupts: nothing to tell the parts apart"));
    }
    let count = |f: &MarkerFigures, reason: &str| f.by_reason.iter().find(|r| r.0 == reason).map_or(0, |r| r.1);
    let by_reason: Vec<(String, Split)> = merged_reasons(&[Some(&a.by_reason), Some(&b.by_reason)])
        .into_iter()
        .filter_map(|reason| {
            let s = split((count(a, &reason), ta), (count(b, &reason), tb))?;
            Some((reason, s))
        })
        .collect();
    let per_tick = by_reason.iter().map(|(_, s)| s.per_tick).sum();
    let outside = by_reason.iter().map(|(_, s)| s.outside).sum();
    Ok(LinuxSplit { by_reason, per_tick, outside })
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

/// Rows of cells as text columns: the first left-aligned, the others right-aligned.
fn layout(rows: &[Vec<String>]) -> String {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|i| rows.iter().filter_map(|r| r.get(i)).map(|c| c.chars().count()).max().unwrap_or(0))
        .collect();
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

fn dash() -> String {
    "-".to_string()
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
    layout(&rows)
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

/// "10 MIPS" for 10000000 instructions per second.
fn mips(ips: u64) -> String {
    if ips.is_multiple_of(1_000_000) {
        format!("{} MIPS", ips / 1_000_000)
    } else {
        format!("{:.3} MIPS", ips as f64 / 1e6)
    }
}

/// Exits per timer tick of a run, if it counted ticks.
fn exits_per_tick(exits: u64, ticks: Option<u64>) -> Option<f64> {
    ticks.filter(|&t| t > 0).map(|t| exits as f64 / t as f64)
}

/// One summary figure of a Linux run, if it has it.
type LinuxValue = fn(&LinuxFigures) -> Option<String>;

/// One Linux set-up's table on one back end: for each run (its Bochs clock,
/// if set) the exits and cycles per exit by reason up to /init, then with two
/// runs each reason's exits per timer tick and outside timer handling, then
/// totals, timer interrupts, times and memory; notes on the split below.
pub fn render_linux(title: &str, runs: &[(Option<u64>, Option<&LinuxFigures>)]) -> String {
    let split = match runs {
        [(_, Some(a)), (_, Some(b))] => Some(split_linux(&a.marker, &b.marker)),
        [_, _] => Some(Err("a run has no figures".to_string())),
        _ => None,
    };
    let mut rows: Vec<Vec<String>> = Vec::new();
    let mut head = vec![format!("{title}: exits to /init")];
    for (ips, _) in runs {
        head.push(ips.map_or("exits".to_string(), |ips| format!("exits @{}", mips(ips))));
        head.push("cycles/exit".into());
    }
    head.extend(["per tick".into(), "outside".into()]);
    rows.push(head);
    let reasons: Vec<Option<&[ReasonFigures]>> = runs.iter().map(|r| r.1.map(|f| &f.marker.by_reason[..])).collect();
    let ok_split = split.as_ref().and_then(|s| s.as_ref().ok());
    for reason in merged_reasons(&reasons) {
        let mut row = vec![format!("  {reason}")];
        for column in &reasons {
            match column.map(|c| c.iter().find(|(r, _, _)| *r == reason)) {
                Some(Some((_, n, c))) => row.extend([n.to_string(), c.to_string()]),
                Some(None) => row.extend(["0".into(), dash()]),
                None => row.extend([dash(), dash()]),
            }
        }
        match ok_split.and_then(|s| s.by_reason.iter().find(|(r, _)| *r == reason)) {
            Some((_, s)) => {
                let mark = if s.clamped { "*" } else { "" };
                row.extend([format!("{:.3}{mark}", s.per_tick), format!("{:.0}{mark}", s.outside)]);
            }
            None => row.extend([dash(), dash()]),
        }
        rows.push(row);
    }
    let summary: [(&str, LinuxValue); 7] = [
        ("all exits", |f| Some(f.marker.exits.to_string())),
        ("timer interrupts", |f| f.marker.timer_interrupts.map(|t| t.to_string())),
        ("exits per tick", |f| exits_per_tick(f.marker.exits, f.marker.timer_interrupts).map(|e| format!("{e:.2}"))),
        ("time to init (s)", |f| Some(seconds(f.marker.micros))),
        ("exits to power-off", |f| Some(f.total.exits.to_string())),
        ("time to power-off (s)", |f| Some(seconds(f.total.micros))),
        ("VMM memory (KiB)", |f| Some(f.total.overhead_kib.to_string())),
    ];
    for (label, value) in summary {
        let mut row = vec![format!("  {label}")];
        for (_, figures) in runs {
            row.extend([figures.and_then(value).unwrap_or_else(dash), String::new()]);
        }
        match (label, ok_split) {
            ("all exits", Some(s)) => row.extend([format!("{:.3}", s.per_tick), format!("{:.0}", s.outside)]),
            _ => row.extend([String::new(), String::new()]),
        }
        rows.push(row);
    }
    let mut out = layout(&rows);
    match split {
        None => out.push_str("  per tick, outside: - (one clock rate only)\n"),
        Some(Err(why)) => out.push_str(&format!("  per tick, outside: - ({why})\n")),
        Some(Ok(s)) => {
            out.push_str(&format!(
                "  per tick, outside: each reason's exits to init as outside + per tick x timer interrupts, from the \
                 two runs: {:.3} timer-related exits per tick, {:.0} exits outside timer handling\n",
                s.per_tick, s.outside
            ));
            if s.by_reason.iter().any(|(_, s)| s.clamped) {
                out.push_str(
                    "  * clamped: the exact solution had a negative part, set to 0 (per tick 0: the count as in \
                     the run with fewer ticks; outside 0: per tick as in the run with more)\n",
                );
            }
        }
    }
    for (ips, figures) in runs {
        if let Some(unclaimed) = figures.and_then(|f| f.unclaimed.as_ref()) {
            let at = ips.map(|ips| format!(" @{}", mips(ips))).unwrap_or_default();
            out.push_str(&format!("  unclaimed addresses{at}, whole run: {unclaimed}\n"));
        }
    }
    out
}

/// One figure as `--save` writes it: a key without spaces and a number.
pub type Figure = (String, f64);

/// A figure rounded as it is saved, so a saved file reads back equal.
fn figure(key: String, value: f64) -> Figure {
    (key, (value * 10_000.0).round() / 10_000.0)
}

/// Every figure of one back end's runs, under keys that start with its name.
fn side_figures(side: &Side) -> Vec<Figure> {
    let v = side.vendor.name();
    let mut out = Vec::new();
    for f in side.guests.iter().flatten() {
        let at = format!("{v}.{}", f.name);
        reason_figures(&mut out, &at, &f.by_reason);
        out.push(figure(format!("{at}.exits"), f.exits as f64));
        out.push(figure(format!("{at}.micros"), f.micros as f64));
        if let Some(t) = f.timer_interrupts {
            out.push(figure(format!("{at}.timer-interrupts"), t as f64));
        }
        out.push(figure(format!("{at}.vmm-memory-kib"), f.overhead_kib as f64));
    }
    for f in side.sched.iter().flatten() {
        let at = format!("{v}.sched.slice-{}us", f.slice_us);
        out.push(figure(format!("{at}.light-percent"), f.light_percent));
        out.push(figure(format!("{at}.in-guests-percent"), f.in_guests_percent));
        out.push(figure(format!("{at}.vmm-cycles-per-run"), f.vmm_cycles_per_run as f64));
    }
    if let Ok(f) = &side.latency {
        let at = format!("{v}.sched.latency");
        out.push(figure(format!("{at}.worst-us"), f.worst_us as f64));
        out.push(figure(format!("{at}.mean-us"), f.mean_us as f64));
        out.push(figure(format!("{at}.timer-delivery-us"), f.noticed_us as f64));
        out.push(figure(format!("{at}.to-the-guest-us"), f.after_us as f64));
    }
    for f in side.smp.iter().flatten() {
        let at = format!("{v}.smp.{}", f.devices.replace(' ', "-"));
        out.push(figure(format!("{at}.one"), f.one));
        out.push(figure(format!("{at}.two"), f.two));
        out.push(figure(format!("{at}.ratio"), f.ratio()));
    }
    for (console, runs) in CONSOLES.iter().zip(&side.linux) {
        let base = format!("{v}.{}", console.key);
        for (index, run) in runs.iter().enumerate() {
            let Ok(f) = &run.figures else { continue };
            let at = if index == 0 { base.clone() } else { format!("{base}.fast") };
            out.extend(linux_figures(&at, run.ips, f));
        }
        if let [LinuxRun { figures: Ok(a), .. }, LinuxRun { figures: Ok(b), .. }] = &runs[..] {
            if let Ok(split) = split_linux(&a.marker, &b.marker) {
                out.extend(split_figures(&base, &split));
            }
        }
    }
    out
}

/// `AT.exits.REASON` and `AT.cycles.REASON` for each reason.
fn reason_figures(out: &mut Vec<Figure>, at: &str, by_reason: &[ReasonFigures]) {
    for (reason, n, _) in by_reason {
        out.push(figure(format!("{at}.exits.{reason}"), *n as f64));
    }
    for (reason, _, c) in by_reason {
        out.push(figure(format!("{at}.cycles.{reason}"), *c as f64));
    }
}

/// One Linux run's figures under `at`: its clock, the exits to init by
/// reason and in all, ticks, times, memory.
pub fn linux_figures(at: &str, ips: Option<u64>, f: &LinuxFigures) -> Vec<Figure> {
    let mut out = Vec::new();
    if let Some(ips) = ips {
        out.push(figure(format!("{at}.ips"), ips as f64));
    }
    let marker = format!("{at}.marker");
    reason_figures(&mut out, &marker, &f.marker.by_reason);
    out.push(figure(format!("{marker}.exits"), f.marker.exits as f64));
    if let Some(t) = f.marker.timer_interrupts {
        out.push(figure(format!("{marker}.timer-interrupts"), t as f64));
    }
    if let Some(e) = exits_per_tick(f.marker.exits, f.marker.timer_interrupts) {
        out.push(figure(format!("{marker}.exits-per-tick"), e));
    }
    out.push(figure(format!("{marker}.micros"), f.marker.micros as f64));
    out.push(figure(format!("{at}.power-off.exits"), f.total.exits as f64));
    if let Some(t) = f.total.timer_interrupts {
        out.push(figure(format!("{at}.power-off.timer-interrupts"), t as f64));
    }
    out.push(figure(format!("{at}.power-off.micros"), f.total.micros as f64));
    out.push(figure(format!("{at}.vmm-memory-kib"), f.total.overhead_kib as f64));
    out
}

/// A split's figures under `at`: `AT.per-tick.REASON`, `AT.outside.REASON`, and `.all` for the sums.
pub fn split_figures(at: &str, split: &LinuxSplit) -> Vec<Figure> {
    let mut out = Vec::new();
    for (reason, s) in &split.by_reason {
        out.push(figure(format!("{at}.per-tick.{reason}"), s.per_tick));
    }
    out.push(figure(format!("{at}.per-tick.all"), split.per_tick));
    for (reason, s) in &split.by_reason {
        out.push(figure(format!("{at}.outside.{reason}"), s.outside.round()));
    }
    out.push(figure(format!("{at}.outside.all"), split.outside.round()));
    out
}

/// A number as saved and shown: whole numbers without a fraction.
fn number(value: f64) -> String {
    if value.fract() == 0.0 && value.abs() < 1e15 {
        format!("{value:.0}")
    } else {
        format!("{value:.4}").trim_end_matches('0').to_string()
    }
}

/// The `--save` file: a comment naming the runs, then one `key value` per line.
pub fn write_figures(about: &str, figures: &[Figure]) -> String {
    let mut out = format!("# cargo xtask bench: {about}\n");
    for (key, value) in figures {
        out.push_str(&format!("{key} {}\n", number(*value)));
    }
    out
}

/// Reads a `--save` file back: `key value` lines; blank lines and `#` comments skipped.
pub fn read_figures(text: &str) -> Result<Vec<Figure>, String> {
    let mut figures: Vec<Figure> = Vec::new();
    for (index, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let at = |what: String| format!("line {}: {what}", index + 1);
        let mut words = line.split_whitespace();
        let (Some(key), Some(value), None) = (words.next(), words.next(), words.next()) else {
            return Err(at(format!("'{line}' is not 'key value'")));
        };
        let value: f64 = value.parse().map_err(|_| at(format!("'{value}' is not a number")))?;
        if !value.is_finite() {
            return Err(at(format!("'{value}' is not a finite number")));
        }
        if figures.iter().any(|(k, _)| k == key) {
            return Err(at(format!("{key} appears twice")));
        }
        figures.push((key.to_string(), value));
    }
    Ok(figures)
}

/// The change from `saved` to `now` in percent, as shown.
fn change(saved: f64, now: f64) -> String {
    if saved == now {
        "0%".into()
    } else if saved == 0.0 {
        "from 0".into()
    } else {
        format!("{:+.1}%", (now - saved) / saved * 100.0)
    }
}

/// Each figure next to the saved one and the change: the figures of this
/// run in order, then saved ones it lacks; a figure on one side only shows
/// "missing" on the other. Saved figures of back ends that did not run
/// (`ran` names those that did) are left out and counted.
pub fn render_comparison(saved: &[Figure], now: &[Figure], ran: &[&str]) -> String {
    let vendor_ran = |key: &str| ran.iter().any(|v| key.split('.').next() == Some(*v));
    let missing = || "missing".to_string();
    let mut rows = vec![vec!["figure".to_string(), "saved".into(), "now".into(), "change".into()]];
    for (key, value) in now {
        match saved.iter().find(|(k, _)| k == key) {
            Some((_, old)) => rows.push(vec![key.clone(), number(*old), number(*value), change(*old, *value)]),
            None => rows.push(vec![key.clone(), missing(), number(*value), String::new()]),
        }
    }
    let mut left_out = 0;
    for (key, old) in saved {
        if now.iter().any(|(k, _)| k == key) {
            continue;
        }
        if vendor_ran(key) {
            rows.push(vec![key.clone(), number(*old), missing(), String::new()]);
        } else {
            left_out += 1;
        }
    }
    let mut out = layout(&rows);
    if left_out > 0 {
        out.push_str(&format!("({left_out} saved figures of back ends that did not run left out)\n"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn throughput_lines_parse() {
        let line = "[   2.89 cpu0] INFO  vm smp | throughput local APICs: one vCPU 576.81 exits per million ticks, \
                    two vCPUs 669.13: 1.16x";
        let f = parse_throughput(line).unwrap();
        assert_eq!(f, Throughput { devices: "local APICs".into(), one: 576.81, two: 669.13 });
        assert!((f.ratio() - 1.16).abs() < 0.001);
        assert_eq!(Throughput { devices: "ports".into(), one: 0.0, two: 5.0 }.ratio(), 0.0);
        assert_eq!(
            parse_throughput("vm smp | throughput ports: one vCPU x exits per million ticks, two vCPUs 1: 1x"),
            None
        );
        assert_eq!(parse_throughput("vm smp | smp throughput guest: starting vCPU 1"), None);
    }

    #[test]
    fn scheduler_figures_are_read_from_the_report_lines() {
        let serial = "[ 3.1 cpu0] INFO  vm light vcpu0 scheduling: run 750000 us, waiting 2250000 us\r\n\
                      [ 3.1 cpu0] INFO  vm heavy vcpu0 scheduling: run 2250000 us, waiting 750000 us\r\n\
                      [ 3.2 cpu0] INFO  vmm: cores while VMs ran: cpu0 97.5% in guests, 1500 vCPU runs, 4200 VMM cycles per run\r\n";
        let f = parse_sched(serial, 1000).unwrap();
        assert_eq!((f.light_percent, f.in_guests_percent, f.runs, f.vmm_cycles_per_run), (25.0, 97.5, 1500, 4200));
        assert_eq!(parse_sched("vm light vcpu0 scheduling: run 1 us", 1000), None);
    }

    #[test]
    fn latency_figures_are_read_from_the_guest_and_the_vmm() {
        let serial = "[ 1.1 cpu0] INFO  vm ticker | ticker: worst lateness 368 us, mean 111 us\r\n\
                      [ 1.2 cpu0] INFO  vm ticker vcpu0 timer wake-ups: 1001, from the due time to the guest \
                      late by mean 92 us, max 350 us; noticed by max 26 us, in the guest max 328 us after\r\n";
        let f = parse_latency(serial).unwrap();
        assert_eq!((f.worst_us, f.mean_us, f.noticed_us, f.after_us), (368, 111, 26, 328));
        assert_eq!(parse_latency("vm ticker | ticker: worst lateness 368 us, mean 111 us"), None);
    }

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

    fn marker(micros: u64, ticks: Option<u64>, by_reason: &[(&str, u64, u64)]) -> MarkerFigures {
        let f = figures("linux", micros, by_reason, 0);
        MarkerFigures {
            name: f.name,
            value: 1,
            micros,
            exits: f.exits,
            by_reason: f.by_reason,
            timer_interrupts: ticks,
        }
    }

    fn linux(marker: MarkerFigures, total_micros: u64, total_exits: u64) -> LinuxFigures {
        let mut total = figures("linux", total_micros, &[], 1204);
        total.exits = total_exits;
        total.timer_interrupts = marker.timer_interrupts.map(|t| t + 10);
        LinuxFigures { marker, total, unclaimed: None }
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
    fn the_split_solves_two_runs_and_clamps_what_comes_out_negative() {
        // 1000 outside, 2 per tick: 5000 exits at 2000 ticks, 3000 at 1000.
        let s = split((5000, 2000), (3000, 1000)).unwrap();
        assert_eq!(s, Split { per_tick: 2.0, outside: 1000.0, clamped: false });
        assert_eq!(split((3000, 1000), (5000, 2000)), Some(s));
        // Nothing per tick.
        assert_eq!(split((942, 40000), (942, 10000)), Some(Split { per_tick: 0.0, outside: 942.0, clamped: false }));
        // Equal ticks: no way to tell the parts apart.
        assert_eq!(split((5000, 2000), (3000, 2000)), None);
        // More exits with fewer ticks: nothing per tick, the count of the
        // run with fewer ticks outside.
        assert_eq!(split((400, 40000), (460, 10000)), Some(Split { per_tick: 0.0, outside: 460.0, clamped: true }));
        // Outside below zero: all of it per tick, as in the run with more ticks.
        assert_eq!(split((4200, 40000), (1000, 10000)), Some(Split { per_tick: 0.105, outside: 0.0, clamped: true }));
        // Every exit per tick.
        assert_eq!(split((50, 100), (200, 400)), Some(Split { per_tick: 0.5, outside: 0.0, clamped: false }));
        // None of the reason in one run.
        assert_eq!(split((0, 100), (30, 400)), Some(Split { per_tick: 0.075, outside: 0.0, clamped: true }));
    }

    #[test]
    fn a_linux_split_covers_every_reason_and_sums_them() {
        let a = marker(1, Some(2000), &[("cpuid", 900, 500), ("wrmsr", 2000, 380), ("timer", 2100, 160)]);
        let b = marker(1, Some(500), &[("cpuid", 900, 500), ("wrmsr", 500, 380), ("io", 10, 600), ("timer", 600, 160)]);
        let s = split_linux(&a, &b).unwrap();
        let names: Vec<&str> = s.by_reason.iter().map(|(r, _)| r.as_str()).collect();
        assert_eq!(names, ["cpuid", "wrmsr", "io", "timer"]);
        assert_eq!(s.by_reason[1].1, Split { per_tick: 1.0, outside: 0.0, clamped: false });
        // io: 0 at 2000 ticks, 10 at 500: clamped to 10 outside.
        assert_eq!(s.by_reason[2].1, Split { per_tick: 0.0, outside: 10.0, clamped: true });
        assert_eq!((s.per_tick, s.outside), (2.0, 1010.0));

        let same = marker(1, Some(2000), &[("cpuid", 900, 500)]);
        assert!(split_linux(&a, &same).unwrap_err().contains("both runs took 2000 timer interrupts"));
        let old = marker(1, None, &[("cpuid", 900, 500)]);
        assert!(split_linux(&old, &b).unwrap_err().contains("did not report"));
    }

    #[test]
    fn a_linux_table_with_two_clocks_shows_the_split() {
        let a = linux(marker(40_000_000, Some(2000), &[("cpuid", 900, 500), ("timer", 2100, 160)]), 41_000_000, 3100);
        let b = linux(
            marker(10_000_000, Some(500), &[("cpuid", 900, 510), ("io", 10, 600), ("timer", 600, 161)]),
            11_000_000,
            1600,
        );
        let text =
            render_linux("linux console=ttyS0 on vmx", &[(Some(10_000_000), Some(&a)), (Some(40_000_000), Some(&b))]);
        let expected = "\
linux console=ttyS0 on vmx: exits to /init  exits @10 MIPS  cycles/exit  exits @40 MIPS  cycles/exit  per tick  outside
  cpuid                                                900          500             900          510     0.000      900
  io                                                     0            -              10          600    0.000*      10*
  timer                                               2100          160             600          161     1.000      100
  all exits                                           3000                         1510                  1.000     1010
  timer interrupts                                    2000                          500
  exits per tick                                      1.50                         3.02
  time to init (s)                                  40.000                       10.000
  exits to power-off                                  3100                         1600
  time to power-off (s)                             41.000                       11.000
  VMM memory (KiB)                                    1204                         1204
  per tick, outside: each reason's exits to init as outside + per tick x timer interrupts, from the two runs: 1.000 timer-related exits per tick, 1010 exits outside timer handling
  * clamped: the exact solution had a negative part, set to 0 (per tick 0: the count as in the run with fewer ticks; outside 0: per tick as in the run with more)
";
        assert_eq!(text, expected);
    }

    #[test]
    fn a_linux_table_with_one_clock_has_dashes_for_the_split_but_shows_ticks() {
        let mut f =
            linux(marker(1_250_000, Some(300), &[("io", 900, 5000), ("device-memory", 40, 7000)]), 1_300_000, 991);
        f.unclaimed = Some("ports 0x70 0x80, MMIO none".into());
        let text = render_linux("linux console=hvc0 quiet on svm", &[(None, Some(&f))]);
        let expected = "\
linux console=hvc0 quiet on svm: exits to /init  exits  cycles/exit  per tick  outside
  io                                               900         5000         -        -
  device-memory                                     40         7000         -        -
  all exits                                        940
  timer interrupts                                 300
  exits per tick                                  3.13
  time to init (s)                               1.250
  exits to power-off                               991
  time to power-off (s)                          1.300
  VMM memory (KiB)                                1204
  per tick, outside: - (one clock rate only)
  unclaimed addresses, whole run: ports 0x70 0x80, MMIO none
";
        assert_eq!(text, expected);
    }

    #[test]
    fn a_linux_table_says_why_it_has_no_split() {
        let a = linux(marker(1, None, &[("io", 9, 5)]), 2, 10);
        let text = render_linux("t", &[(Some(10_000_000), Some(&a)), (Some(40_000_000), None)]);
        assert!(text.contains(
            "\n  io                                  9            5               -            -         -        -\n"
        ));
        assert!(text.ends_with("  per tick, outside: - (a run has no figures)\n"), "{text}");
        let b = linux(marker(1, None, &[("io", 9, 5)]), 2, 10);
        let text = render_linux("t", &[(Some(10_000_000), Some(&a)), (Some(40_000_000), Some(&b))]);
        assert!(text.contains("\n  timer interrupts                    -                            -\n"), "{text}");
        assert!(text.ends_with("(the kernel did not report the guest's timer interrupts)\n"), "{text}");
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
             compare runs of one back end, not vmx with svm"
        );
        assert!(!tsc_note(&[(Vendor::Svm, Emulator::QemuKvm)]).contains("not vmx with svm"));
    }

    #[test]
    fn the_clock_note_states_each_rate() {
        let note = clock_note(Vendor::Vmx, Emulator::Bochs);
        assert!(note.starts_with("vmx: Bochs' clock is ips=10000000 (the test cases' rate)"), "{note}");
        assert!(note.contains("ips=10000000 and ips=40000000 for Linux"), "{note}");
        assert!(clock_note(Vendor::Svm, Emulator::QemuTcgSvm).contains("cannot be set"));
    }

    #[test]
    fn linux_figures_have_stable_keys() {
        let f = linux(marker(4_000_000, Some(200), &[("cpuid", 1190, 500), ("timer", 400, 166)]), 5_000_000, 1700);
        let keys: Vec<String> = linux_figures("vmx.linux-ttyS0", Some(10_000_000), &f)
            .into_iter()
            .map(|(k, v)| format!("{k} {}", number(v)))
            .collect();
        assert_eq!(
            keys,
            [
                "vmx.linux-ttyS0.ips 10000000",
                "vmx.linux-ttyS0.marker.exits.cpuid 1190",
                "vmx.linux-ttyS0.marker.exits.timer 400",
                "vmx.linux-ttyS0.marker.cycles.cpuid 500",
                "vmx.linux-ttyS0.marker.cycles.timer 166",
                "vmx.linux-ttyS0.marker.exits 1590",
                "vmx.linux-ttyS0.marker.timer-interrupts 200",
                "vmx.linux-ttyS0.marker.exits-per-tick 7.95",
                "vmx.linux-ttyS0.marker.micros 4000000",
                "vmx.linux-ttyS0.power-off.exits 1700",
                "vmx.linux-ttyS0.power-off.timer-interrupts 210",
                "vmx.linux-ttyS0.power-off.micros 5000000",
                "vmx.linux-ttyS0.vmm-memory-kib 1204",
            ]
        );
        let split = LinuxSplit {
            by_reason: vec![("cpuid".into(), Split { per_tick: 0.0, outside: 1190.0, clamped: false })],
            per_tick: 1.0 / 3.0,
            outside: 1190.4,
        };
        let keys: Vec<String> =
            split_figures("vmx.linux-hvc0", &split).into_iter().map(|(k, v)| format!("{k} {}", number(v))).collect();
        assert_eq!(
            keys,
            [
                "vmx.linux-hvc0.per-tick.cpuid 0",
                "vmx.linux-hvc0.per-tick.all 0.3333",
                "vmx.linux-hvc0.outside.cpuid 1190",
                "vmx.linux-hvc0.outside.all 1190",
            ]
        );
    }

    #[test]
    fn saved_figures_read_back_as_written() {
        let figures = vec![
            figure("vmx.linux-ttyS0.marker.exits.cpuid".into(), 1190.0),
            figure("vmx.linux-ttyS0.per-tick.all".into(), 3.41234567),
            figure("svm.demo.micros".into(), 5000.0),
            figure("vmx.linux-hvc0.per-tick.io".into(), 0.0),
        ];
        let text = write_figures("vmx on Bochs", &figures);
        assert_eq!(
            text,
            "# cargo xtask bench: vmx on Bochs\n\
             vmx.linux-ttyS0.marker.exits.cpuid 1190\n\
             vmx.linux-ttyS0.per-tick.all 3.4123\n\
             svm.demo.micros 5000\n\
             vmx.linux-hvc0.per-tick.io 0\n"
        );
        assert_eq!(read_figures(&text).unwrap(), figures);
        assert_eq!(read_figures("\n  # note\n a 1.5 \n").unwrap(), vec![("a".to_string(), 1.5)]);
    }

    #[test]
    fn a_bad_saved_file_is_refused_naming_the_line() {
        assert_eq!(read_figures("a 1\nb\n").unwrap_err(), "line 2: 'b' is not 'key value'");
        assert_eq!(read_figures("a 1 2\n").unwrap_err(), "line 1: 'a 1 2' is not 'key value'");
        assert_eq!(read_figures("# x\na lots\n").unwrap_err(), "line 2: 'lots' is not a number");
        assert_eq!(read_figures("a NaN\n").unwrap_err(), "line 1: 'NaN' is not a finite number");
        assert_eq!(read_figures("a 1\na 2\n").unwrap_err(), "line 2: a appears twice");
    }

    #[test]
    fn a_comparison_shows_changes_and_what_either_side_lacks() {
        let f = |pairs: &[(&str, f64)]| pairs.iter().map(|&(k, v)| (k.to_string(), v)).collect::<Vec<Figure>>();
        let saved = f(&[
            ("vmx.linux-ttyS0.marker.exits", 200000.0),
            ("vmx.linux-ttyS0.marker.exits.io", 38215.0),
            ("vmx.linux-ttyS0.per-tick.all", 4.0),
            ("vmx.linux-ttyS0.marker.exits.hlt", 0.0),
            ("vmx.demo.exits.nmi", 3.0),
            ("svm.demo.exits", 130.0),
        ]);
        let now = f(&[
            ("vmx.linux-ttyS0.marker.exits", 150000.0),
            ("vmx.linux-ttyS0.marker.exits.io", 38215.0),
            ("vmx.linux-ttyS0.per-tick.all", 1.9512),
            ("vmx.linux-ttyS0.marker.exits.hlt", 4.0),
            ("vmx.linux-hvc0.marker.exits", 1400.0),
        ]);
        let expected = "\
figure                              saved      now  change
vmx.linux-ttyS0.marker.exits       200000   150000  -25.0%
vmx.linux-ttyS0.marker.exits.io     38215    38215      0%
vmx.linux-ttyS0.per-tick.all            4   1.9512  -51.2%
vmx.linux-ttyS0.marker.exits.hlt        0        4  from 0
vmx.linux-hvc0.marker.exits       missing     1400
vmx.demo.exits.nmi                      3  missing
(1 saved figures of back ends that did not run left out)
";
        assert_eq!(render_comparison(&saved, &now, &["vmx"]), expected);
        let both = render_comparison(&saved, &now, &["vmx", "svm"]);
        assert!(both.ends_with("svm.demo.exits                        130  missing\n"), "{both}");
    }
}
