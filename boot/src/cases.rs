//! Declarative integration test cases (tests/cases.toml) and how a run is judged.

use crate::emulator::{Emulator, Ending, Firmware, Machine, RunOutput, Vendor};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::PathBuf;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CaseFile {
    case: Vec<Case>,
}

/// What a case runs on: `machine = "qemu" | "vmx" | "svm"`.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum MachineKind {
    /// QEMU TCG: everything that needs no hardware virtualisation.
    Qemu,
    /// A CPU with VT-x: QEMU+KVM where the host offers VMX, else Bochs.
    Vmx,
    /// A CPU with AMD SVM and nested paging: QEMU+KVM where the host offers
    /// SVM, else QEMU TCG with the EPYC model.
    Svm,
}

impl MachineKind {
    pub const ALL: [MachineKind; 3] = [MachineKind::Qemu, MachineKind::Vmx, MachineKind::Svm];

    /// As written in tests/cases.toml and in `--case NAME@MACHINE`.
    pub fn name(self) -> &'static str {
        match self {
            MachineKind::Qemu => "qemu",
            MachineKind::Vmx => "vmx",
            MachineKind::Svm => "svm",
        }
    }

    pub fn parse(text: &str) -> Option<MachineKind> {
        MachineKind::ALL.into_iter().find(|m| m.name() == text)
    }

    /// The virtualisation back end this machine is for; none for plain QEMU.
    pub fn vendor(self) -> Option<Vendor> {
        match self {
            MachineKind::Qemu => None,
            MachineKind::Vmx => Some(Vendor::Vmx),
            MachineKind::Svm => Some(Vendor::Svm),
        }
    }

    /// The emulator this machine is on this host.
    pub fn emulator(self) -> Emulator {
        match self.vendor() {
            None => Emulator::QemuTcg,
            Some(vendor) => vendor.best_emulator(),
        }
    }
}

/// The `machine` field's text for error messages: one name or a list.
const MACHINE_VALUES: &str = "\"qemu\", \"vmx\" or \"svm\", or a list of them such as [\"svm\", \"vmx\"]";

/// Reads a case's `machine` value: one machine name or a non-empty list of
/// different ones.
fn machines_of(value: &toml::Value) -> Result<Vec<MachineKind>, String> {
    let one = |v: &toml::Value| match v {
        toml::Value::String(name) => {
            MachineKind::parse(name).ok_or_else(|| format!("machine must be {MACHINE_VALUES}, not \"{name}\""))
        }
        other => Err(format!("machine must be {MACHINE_VALUES}, not {other}")),
    };
    match value {
        toml::Value::Array(list) => {
            if list.is_empty() {
                return Err(format!("machine is an empty list; give {MACHINE_VALUES}"));
            }
            let mut machines = Vec::new();
            for v in list {
                let m = one(v)?;
                if machines.contains(&m) {
                    return Err(format!("machine lists \"{}\" twice", m.name()));
                }
                machines.push(m);
            }
            Ok(machines)
        }
        v => one(v).map(|m| vec![m]),
    }
}

#[derive(Deserialize, Clone, Copy, PartialEq, Eq, Debug)]
#[serde(rename_all = "lowercase")]
pub enum Expect {
    Success,
    Failure,
    Timeout,
}

#[derive(Deserialize, Clone, Debug)]
#[serde(deny_unknown_fields)]
pub struct Case {
    pub name: String,
    /// "bios" or "uefi".
    pub firmware: String,
    pub cpus: u32,
    #[serde(default = "default_memory")]
    pub memory_mib: u32,
    /// `machine` as written: a name or a list of names, checked by [`parse`]
    /// (here, so that errors can name the case).
    #[serde(rename = "machine")]
    machine_value: toml::Value,
    /// What the case runs on, once each: `machine` after [`parse`].
    #[serde(skip)]
    pub machines: Vec<MachineKind>,
    /// Boot command line; the runner adds how to exit for the chosen emulator.
    #[serde(default)]
    pub cmdline: String,
    pub expect: Expect,
    /// Each must appear in the serial output, in this order.
    #[serde(default)]
    pub expect_lines: Vec<String>,
    /// None may appear in the serial output.
    #[serde(default)]
    pub forbid_lines: Vec<String>,
    /// Whether expect_lines must appear in order (VMs on several CPUs interleave).
    #[serde(default = "yes")]
    pub ordered: bool,
    /// `[case.on.MACHINE]`: lines expected or forbidden on that machine only,
    /// on top of the common ones; keyed by machine name, each one the case
    /// runs on (checked by [`parse`]).
    #[serde(default)]
    on: BTreeMap<String, MachineLines>,
    pub timeout_s: u64,
    /// Bochs' emulated speed in millions of instructions per second (default 10).
    #[serde(default)]
    pub bochs_mips: Option<u64>,
    /// VMs to run, in this order (spread over the CPUs).
    #[serde(default)]
    pub vm: Vec<crate::guests::GuestVm>,
    /// Linux VMs (Debian's kernel with a busybox initramfs), run before `vm`.
    #[serde(default)]
    pub linux: Vec<crate::guests::LinuxGuest>,
    /// Keys typed on the serial console, each once its cue has appeared.
    #[serde(default)]
    pub console_input: Vec<crate::emulator::ConsoleInput>,
    /// How the scheduler must have shared the CPUs between VMs.
    #[serde(default)]
    pub share: Vec<Share>,
    /// What the scheduler's figures for one vCPU must show.
    #[serde(default)]
    pub vcpu: Vec<VcpuFigures>,
    /// Bounds on numbers the serial output prints.
    #[serde(default)]
    pub figure: Vec<Figure>,
    /// Lines that must (nearly) not appear between two others.
    #[serde(default)]
    pub between: Vec<Between>,
}

/// `[[case.between]]`: after the first line with `after`, and before the
/// first line with `before` past it, the lines that hold `lines_with` are at
/// least `min` (default 0) and at most `max` (default none) in number; both
/// lines must be there. (A paused VM prints nothing: `max = 1` allows for a
/// line already on its way when the pause came.)
#[derive(Deserialize, Clone, Debug, Default)]
#[serde(deny_unknown_fields)]
pub struct Between {
    pub after: String,
    pub before: String,
    pub lines_with: String,
    #[serde(default)]
    pub min: usize,
    pub max: Option<usize>,
}

fn judge_between(want: &Between, serial: &str) -> Vec<String> {
    let Some(start) = serial.find(want.after.as_str()) else {
        return vec![format!("serial lacks '{}'", want.after)];
    };
    let rest = &serial[start + want.after.len()..];
    let Some(end) = rest.find(want.before.as_str()) else {
        return vec![format!("serial lacks '{}' after '{}'", want.before, want.after)];
    };
    let seen = rest[..end].lines().filter(|line| line.contains(want.lines_with.as_str())).count();
    let (after, before, with) = (&want.after, &want.before, &want.lines_with);
    match want.max {
        Some(max) if seen > max => {
            vec![format!("{seen} line(s) with '{with}' between '{after}' and '{before}' (at most {max})")]
        }
        _ if seen < want.min => {
            vec![format!("{seen} line(s) with '{with}' between '{after}' and '{before}' (at least {})", want.min)]
        }
        _ => Vec::new(),
    }
}

/// `[[case.figure]]`: the number right after `after` (a decimal, as in
/// "93.1%"), on every line that has `after`, must be within `min` and `max`
/// and, with `all_equal`, the same on every such line; at least one line
/// (`count`: exactly that many) must have it.
#[derive(Deserialize, Clone, Debug, Default)]
#[serde(deny_unknown_fields)]
pub struct Figure {
    pub after: String,
    pub min: Option<f64>,
    pub max: Option<f64>,
    #[serde(default)]
    pub all_equal: bool,
    pub count: Option<usize>,
}

fn judge_figure(want: &Figure, serial: &str) -> Vec<String> {
    let mut problems = Vec::new();
    let mut seen = 0;
    let mut first: Option<f64> = None;
    for line in serial.lines() {
        let Some((_, rest)) = line.split_once(want.after.as_str()) else { continue };
        seen += 1;
        let number: String = rest.chars().take_while(|c| c.is_ascii_digit() || *c == '.').collect();
        match number.parse::<f64>() {
            Ok(got) if want.min.is_some_and(|min| got < min) || want.max.is_some_and(|max| got > max) => {
                problems.push(format!(
                    "'{}' is followed by {got}, outside {} to {}",
                    want.after,
                    want.min.map_or("-".into(), |m| m.to_string()),
                    want.max.map_or("-".into(), |m| m.to_string())
                ))
            }
            Ok(got) if want.all_equal && first.is_some_and(|f| f != got) => problems.push(format!(
                "'{}' is followed by {got}, not {} as on its first line",
                want.after,
                first.unwrap_or_default()
            )),
            Ok(got) => {
                first.get_or_insert(got);
            }
            Err(_) => problems.push(format!("'{}' is followed by no number: '{rest}'", want.after)),
        }
    }
    if seen == 0 {
        problems.push(format!("serial lacks '{}'", want.after));
    } else if want.count.is_some_and(|count| count != seen) {
        problems.push(format!("'{}' is on {seen} line(s), not {}", want.after, want.count.unwrap_or_default()));
    }
    problems
}

/// `[[case.vcpu]]`: bounds on a vCPU's figures in its VM's report
/// (`vm NAME vcpuN scheduling: ...`).
#[derive(Deserialize, Clone, Debug, Default)]
#[serde(deny_unknown_fields)]
pub struct VcpuFigures {
    pub vm: String,
    #[serde(default)]
    pub index: u32,
    /// Exactly this many moves between CPUs.
    pub migrations: Option<u64>,
    /// At least this many moves between CPUs.
    pub min_migrations: Option<u64>,
    /// At most this long runnable but waiting for a CPU (steal).
    pub max_waiting_us: Option<u64>,
    /// It ran on these host CPUs only (its line's "; on cpuN T us, ..." part).
    pub cpus: Option<Vec<u32>>,
}

/// The host CPUs a scheduling line says the vCPU ran on ("; on cpu0 12 us, cpu1 3 us").
fn ran_on(line: &str) -> Vec<u32> {
    let Some((_, list)) = line.rsplit_once("; on") else { return Vec::new() };
    list.split(',').filter_map(|item| item.trim().strip_prefix("cpu")?.split(' ').next()?.parse().ok()).collect()
}

/// The figure before `unit` (", 3 migrations" → 3) in a scheduling line.
fn figure(line: &str, unit: &str) -> Option<u64> {
    let before = &line[..line.find(unit)?];
    before.trim_end().rsplit([' ', ',']).next()?.parse().ok()
}

fn judge_vcpu(want: &VcpuFigures, serial: &str) -> Vec<String> {
    let prefix = format!("vm {} vcpu{} scheduling: ", want.vm, want.index);
    let Some(line) = serial.lines().find_map(|line| line.split_once(&prefix).map(|(_, rest)| rest)) else {
        return vec![format!("serial lacks '{prefix}'")];
    };
    let mut problems = Vec::new();
    let who = format!("VM '{}' vCPU {}", want.vm, want.index);
    if let Some(wanted) = want.migrations {
        match figure(line, " migrations") {
            Some(got) if got == wanted => {}
            got => problems.push(format!("{who}: {got:?} migrations, not {wanted}")),
        }
    }
    if let Some(least) = want.min_migrations {
        match figure(line, " migrations") {
            Some(got) if got >= least => {}
            got => problems.push(format!("{who}: {got:?} migrations, fewer than {least}")),
        }
    }
    if let Some(most) = want.max_waiting_us {
        match figure(line, " us, blocked") {
            Some(got) if got <= most => {}
            got => problems.push(format!("{who}: waited {got:?} us for a CPU, more than {most}")),
        }
    }
    if let Some(allowed) = &want.cpus {
        let cpus = ran_on(line);
        if cpus.is_empty() {
            problems.push(format!("{who}: its scheduling line says on no CPU"));
        }
        let outside: Vec<u32> = cpus.into_iter().filter(|cpu| !allowed.contains(cpu)).collect();
        if !outside.is_empty() {
            problems.push(format!("{who}: ran on cpu(s) {outside:?}, outside {allowed:?}"));
        }
    }
    problems
}

/// `[[case.share]]`: the run time each VM's vCPU 0 got, from its report's
/// `vm NAME vcpu0 scheduling: run N us` line, as a percent of the listed
/// VMs' total, must be within `tolerance` points of `percent`.
#[derive(Deserialize, Clone, Debug, Default)]
#[serde(deny_unknown_fields)]
pub struct Share {
    pub vms: Vec<String>,
    pub percent: Vec<u32>,
    pub tolerance: u32,
}

/// The run time in the serial log's `vm NAME vcpu0 scheduling: run N us` line.
fn scheduled_run_us(serial: &str, vm: &str) -> Option<u64> {
    let prefix = format!("vm {vm} vcpu0 scheduling: run ");
    let line = serial.lines().find_map(|line| line.split_once(&prefix).map(|(_, rest)| rest))?;
    line.split_whitespace().next()?.parse().ok()
}

/// What is wrong with the shares the scheduler gave the VMs of `share`.
fn judge_share(share: &Share, serial: &str) -> Vec<String> {
    let runs: Vec<Option<u64>> = share.vms.iter().map(|vm| scheduled_run_us(serial, vm)).collect();
    let mut problems: Vec<String> = share
        .vms
        .iter()
        .zip(&runs)
        .filter(|(_, run)| run.is_none())
        .map(|(vm, _)| format!("serial lacks VM '{vm}''s scheduling line"))
        .collect();
    let total: u64 = runs.iter().flatten().sum();
    if !problems.is_empty() || total == 0 {
        problems.extend((total == 0 && problems.is_empty()).then(|| "the VMs ran for no time at all".to_string()));
        return problems;
    }
    for ((vm, run), &want) in share.vms.iter().zip(runs.iter().flatten()).zip(&share.percent) {
        let got = *run as f64 * 100.0 / total as f64;
        if (got - want as f64).abs() > share.tolerance as f64 {
            problems.push(format!("VM '{vm}' got {got:.1}% of the run time, not {want}% ± {} points", share.tolerance));
        }
    }
    problems
}

/// A case's lines for one of its machines (`[case.on.MACHINE]`), added to
/// the common `expect_lines` and `forbid_lines` on that machine's run. In an
/// ordered case they must appear in order among themselves, as the common
/// lines must among theirs; the two lists are not ordered against each other.
/// Its figures (`[[case.on.MACHINE.figure]]`) are checked on that machine's
/// run only: a bound one emulator's timing can keep and another's cannot.
#[derive(Deserialize, Clone, Debug, Default)]
#[serde(deny_unknown_fields)]
pub struct MachineLines {
    #[serde(default)]
    pub expect_lines: Vec<String>,
    #[serde(default)]
    pub forbid_lines: Vec<String>,
    #[serde(default)]
    pub figure: Vec<Figure>,
}

fn yes() -> bool {
    true
}

fn default_memory() -> u32 {
    256
}

impl Case {
    pub fn firmware(&self) -> Firmware {
        if self.firmware == "uefi" {
            Firmware::Uefi
        } else {
            Firmware::Bios
        }
    }

    /// The lines for its run on `kind` alone (none if it has no `[case.on.KIND]`).
    pub fn on(&self, kind: MachineKind) -> Option<&MachineLines> {
        self.on.get(kind.name())
    }

    /// Every expected line, common and per machine, e.g. to fill in `{date}`.
    pub fn all_expect_lines_mut(&mut self) -> impl Iterator<Item = &mut String> {
        self.expect_lines.iter_mut().chain(self.on.values_mut().flat_map(|lines| lines.expect_lines.iter_mut()))
    }

    /// The machine for this case's run on `kind`.
    pub fn machine(&self, kind: MachineKind) -> Machine {
        Machine {
            emulator: kind.emulator(),
            firmware: self.firmware(),
            cpus: self.cpus,
            memory_mib: self.memory_mib,
            bochs_ips: self.bochs_mips.map_or(crate::emulator::BOCHS_IPS, |m| m * 1_000_000),
        }
    }
}

/// One run of a case: the case on one of its machines.
#[derive(Clone, Copy, Debug)]
pub struct CaseRun<'a> {
    pub case: &'a Case,
    pub kind: MachineKind,
}

impl CaseRun<'_> {
    /// Whether the case runs on more than one machine, so its runs need telling apart.
    fn is_one_of_several(&self) -> bool {
        self.case.machines.len() > 1
    }

    /// How summaries name the run: the case's name, with `@MACHINE` added
    /// when the case runs on several machines (`linux-1cpu@svm`).
    pub fn label(&self) -> String {
        if self.is_one_of_several() {
            format!("{}@{}", self.case.name, self.kind.name())
        } else {
            self.case.name.clone()
        }
    }

    /// Where its image, serial log and emulator files go, under
    /// target/basalt/cases: `NAME/`, or `NAME/MACHINE/` when the case runs
    /// on several machines.
    pub fn dir(&self) -> PathBuf {
        let dir = PathBuf::from(&self.case.name);
        if self.is_one_of_several() {
            dir.join(self.kind.name())
        } else {
            dir
        }
    }

    /// The run's machine on this host.
    pub fn machine(&self) -> Machine {
        self.case.machine(self.kind)
    }
}

/// The runs `cargo xtask qemu-test` makes: every case once per machine it
/// names, in file order, kept when a `--case` pattern matches (if any are
/// given) and the machine is for `vendor` (if given; plain-QEMU runs have no
/// vendor, so `--vendor` leaves them out).
///
/// A pattern `NAME` matches cases whose name contains NAME, on all their
/// machines; `NAME@MACHINE` only their runs on that machine.
pub fn select<'a>(cases: &'a [Case], patterns: &[String], vendor: Option<Vendor>) -> Result<Vec<CaseRun<'a>>, String> {
    let mut wanted = Vec::new();
    for pattern in patterns {
        match pattern.split_once('@') {
            Some((name, machine)) => {
                let kind = MachineKind::parse(machine).ok_or_else(|| {
                    format!(
                        "--case {pattern}: the part after '@' must be a machine (qemu, vmx or svm), not '{machine}'"
                    )
                })?;
                wanted.push((name, Some(kind)));
            }
            None => wanted.push((pattern.as_str(), None)),
        }
    }
    let runs = cases.iter().flat_map(|case| case.machines.iter().map(move |&kind| CaseRun { case, kind }));
    Ok(runs
        .filter(|run| {
            wanted.is_empty()
                || wanted.iter().any(|(name, kind)| run.case.name.contains(name) && kind.is_none_or(|k| k == run.kind))
        })
        .filter(|run| vendor.is_none_or(|v| run.kind.vendor() == Some(v)))
        .collect())
}

/// Parses and checks the case file; errors name the case and field.
pub fn parse(text: &str) -> Result<Vec<Case>, String> {
    let mut file: CaseFile = toml::from_str(text).map_err(|e| format!("tests/cases.toml: {e}"))?;
    let mut seen = std::collections::HashSet::new();
    for case in &mut file.case {
        let at = |what: &str| format!("tests/cases.toml: case '{}': {what}", case.name);
        if !seen.insert(case.name.clone()) {
            return Err(at("the name is used twice"));
        }
        // It names a directory, and '@' separates the machine in `--case NAME@MACHINE`.
        if case.name.is_empty() || !case.name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
            return Err(at("the name may only hold letters, digits, '-' and '_'"));
        }
        case.machines = machines_of(&case.machine_value).map_err(|e| at(&e))?;
        for key in case.on.keys() {
            if !MachineKind::parse(key).is_some_and(|m| case.machines.contains(&m)) {
                let runs_on: Vec<&str> = case.machines.iter().map(|m| m.name()).collect();
                return Err(at(&format!(
                    "[case.on.{key}]: \"{key}\" is not a machine the case runs on (its machine: {})",
                    runs_on.join(", ")
                )));
            }
        }
        if case.firmware != "bios" && case.firmware != "uefi" {
            return Err(at(&format!("firmware must be \"bios\" or \"uefi\", not \"{}\"", case.firmware)));
        }
        if !(1..=64).contains(&case.cpus) {
            return Err(at("cpus must be 1 to 64"));
        }
        if case.bochs_mips.is_some_and(|m| !(1..=1000).contains(&m)) {
            return Err(at("bochs_mips must be 1 to 1000"));
        }
        if case.timeout_s == 0 || case.timeout_s > 1800 {
            return Err(at("timeout_s must be 1 to 1800"));
        }
        for linux in &case.linux {
            // The scheduler time-shares cores, so a VM may have more vCPUs than the machine has CPUs.
            if !(1..=loader::manifest::MAX_VCPUS).contains(&linux.vcpus) {
                return Err(at(&format!(
                    "Linux VM '{}': vcpus must be 1 to {}",
                    linux.name,
                    loader::manifest::MAX_VCPUS
                )));
            }
        }
        for vm in &case.vm {
            // The command line and modules go through the Multiboot information.
            if vm.format != "multiboot" && (vm.append.is_some() || vm.initrd.is_some()) {
                return Err(at(&format!(
                    "VM '{}': append and initrd are for format = \"multiboot\", not \"{}\"",
                    vm.name, vm.format
                )));
            }
            if let Some(list) = &vm.initrd {
                crate::guests::split_module_list(list).map_err(|e| at(&format!("VM '{}': initrd: {e}", vm.name)))?;
            }
        }
        for share in &case.share {
            if share.vms.len() < 2 || share.vms.len() != share.percent.len() {
                return Err(at("each share needs two or more vms and one percent for each"));
            }
            if share.percent.iter().sum::<u32>() != 100 || share.tolerance > 100 {
                return Err(at("a share's percents must add up to 100 and its tolerance be 0 to 100"));
            }
        }
        if case.console_input.iter().any(|step| step.after.is_empty() || step.send.is_empty()) {
            return Err(at("each console_input step needs a non-empty 'after' cue and 'send' keys"));
        }
        if case.cmdline.split_whitespace().any(|w| w.starts_with("exit=")) {
            return Err(at("cmdline must not set exit=; the runner picks it for the emulator"));
        }
    }
    Ok(file.case)
}

/// What is wrong with the case's run on `kind`, judged against the case's
/// common lines and those for `kind`; empty means it passed.
pub fn judge(case: &Case, kind: MachineKind, run: &RunOutput) -> Vec<String> {
    let mut problems = Vec::new();
    let ending_ok = matches!(
        (case.expect, &run.ending),
        (Expect::Success, Ending::Success) | (Expect::Failure, Ending::Failure) | (Expect::Timeout, Ending::Timeout)
    );
    if !ending_ok {
        problems.push(format!("expected the run to end in {:?}, it ended in {:?}", case.expect, run.ending));
    }
    let machine = case.on(kind);
    // Each list in order on its own: the common lines, then the machine's.
    let machine_expect = machine.map_or(&[][..], |m| &m.expect_lines[..]);
    for (lines, whose) in [(&case.expect_lines[..], String::new()), (machine_expect, format!(" (on {})", kind.name()))]
    {
        let mut rest = run.serial.as_str();
        for line in lines {
            if !case.ordered {
                rest = run.serial.as_str();
            }
            match rest.find(line.as_str()) {
                Some(at) => rest = &rest[at + line.len()..],
                None if run.serial.contains(line.as_str()) => {
                    problems.push(format!("serial has '{line}'{whose} but out of order"))
                }
                None => problems.push(format!("serial lacks '{line}'{whose}")),
            }
        }
    }
    let machine_forbid = machine.map_or(&[][..], |m| &m.forbid_lines[..]);
    let forbidden = case.forbid_lines.iter().chain(machine_forbid).map(String::as_str);
    for line in forbidden.chain(FORBIDDEN_IN_EVERY_CASE.iter().copied()) {
        if run.serial.contains(line) {
            problems.push(format!("serial has forbidden '{line}'"));
        }
    }
    if let Some(cue) = &run.cue_never_seen {
        problems.push(format!("console input never typed: '{cue}' did not appear"));
    }
    for share in &case.share {
        problems.extend(judge_share(share, &run.serial));
    }
    for between in &case.between {
        problems.extend(judge_between(between, &run.serial));
    }
    for vcpu in &case.vcpu {
        problems.extend(judge_vcpu(vcpu, &run.serial));
    }
    let machine_figures = machine.map_or(&[][..], |m| &m.figure[..]);
    for figure in case.figure.iter().chain(machine_figures) {
        problems.extend(judge_figure(figure, &run.serial));
    }
    problems
}

/// Lines that fail any case: host memory a VM kept after it ended (the
/// kernel's end-of-run accounting) is a leak whatever the case tests.
const FORBIDDEN_IN_EVERY_CASE: &[&str] = &["not given back", "memories still held"];

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn figures_can_be_required_equal_and_counted() {
        let want = Figure { after: "free (".into(), all_equal: true, count: Some(2), ..Figure::default() };
        assert!(judge_figure(&want, "a free (55806 frames)\nb free (55806 frames)\n").is_empty());
        assert_eq!(
            judge_figure(&want, "a free (55806 frames)\nb free (55805 frames)\n"),
            vec!["'free (' is followed by 55805, not 55806 as on its first line".to_string()]
        );
        assert_eq!(judge_figure(&want, "a free (1 frames)\n"), vec!["'free (' is on 1 line(s), not 2".to_string()]);
    }

    #[test]
    fn the_cpus_a_vcpu_ran_on_are_checked_against_its_affinity() {
        let serial = "INFO  vm p vcpu0 scheduling: run 900 us, waiting 12 us, blocked 3 us, throttled 0 us, \
                      4 slices, 0 migrations, 1 wake-ups (latency mean 1 us, max 1 us); on cpu1 903 us\r\n\
                      INFO  vm q vcpu0 scheduling: run 900 us, waiting 12 us, blocked 3 us, throttled 0 us, \
                      4 slices, 2 migrations, 1 wake-ups (latency mean 1 us, max 1 us); on cpu0 5 us, cpu1 903 us\r\n";
        assert_eq!(ran_on("x; on cpu0 5 us, cpu1 903 us"), vec![0, 1]);
        let pinned = VcpuFigures { vm: "p".into(), cpus: Some(vec![1]), ..VcpuFigures::default() };
        assert!(judge_vcpu(&pinned, serial).is_empty());
        let moved = VcpuFigures { vm: "q".into(), ..pinned };
        assert_eq!(judge_vcpu(&moved, serial), vec!["VM 'q' vCPU 0: ran on cpu(s) [0], outside [1]".to_string()]);
    }

    #[test]
    fn lines_between_two_others_are_counted() {
        let want = Between {
            after: "paused".into(),
            before: "resumed".into(),
            lines_with: "vm c |".into(),
            max: Some(1),
            min: 0,
        };
        let serial = "vm c | 1\npaused\nvm c | 2\nvm d | x\nresumed\nvm c | 3\nvm c | 4\n";
        assert!(judge_between(&want, serial).is_empty());
        let strict = Between { max: Some(0), ..want.clone() };
        assert_eq!(
            judge_between(&strict, serial),
            vec!["1 line(s) with 'vm c |' between 'paused' and 'resumed' (at most 0)".to_string()]
        );
        let wanted = Between { lines_with: "vm d |".into(), min: 2, max: None, ..want.clone() };
        assert_eq!(
            judge_between(&wanted, serial),
            vec!["1 line(s) with 'vm d |' between 'paused' and 'resumed' (at least 2)".to_string()]
        );
        assert_eq!(
            judge_between(&want, "resumed\npaused\n"),
            vec!["serial lacks 'resumed' after 'paused'".to_string()]
        );
        assert_eq!(judge_between(&want, "nothing"), vec!["serial lacks 'paused'".to_string()]);
    }

    #[test]
    fn shares_are_judged_from_the_scheduling_lines() {
        let serial = "[ 1 cpu0] INFO  vm light vcpu0 scheduling: run 260000 us, waiting 1 us\r\n\
                      [ 1 cpu0] INFO  vm heavy vcpu0 scheduling: run 740000 us, waiting 1 us\r\n";
        let share = Share { vms: vec!["light".into(), "heavy".into()], percent: vec![25, 75], tolerance: 10 };
        assert!(judge_share(&share, serial).is_empty(), "{:?}", judge_share(&share, serial));
        let tight = Share { tolerance: 0, ..share.clone() };
        let problems = judge_share(&tight, serial);
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(problems[0].contains("'light' got 26.0%"), "{problems:?}");
        let missing = Share { vms: vec!["light".into(), "gone".into()], ..share };
        assert_eq!(judge_share(&missing, serial), vec!["serial lacks VM 'gone''s scheduling line".to_string()]);
    }

    #[test]
    fn figures_after_a_text_are_bounded() {
        let serial = "halted: cpu0 93.1%, x\r\nticker: worst lateness 1500 us\r\nhalted: cpu0 80.0%\r\n";
        let halted = Figure { after: "halted: cpu0 ".into(), min: Some(90.0), max: None, ..Figure::default() };
        assert_eq!(judge_figure(&halted, serial).len(), 1, "the second line is under 90");
        let late = Figure { after: "worst lateness ".into(), min: None, max: Some(2000.0), ..Figure::default() };
        assert!(judge_figure(&late, serial).is_empty());
        let tight = Figure { max: Some(1000.0), ..late };
        assert_eq!(judge_figure(&tight, serial), vec!["'worst lateness ' is followed by 1500, outside - to 1000"]);
        let absent = Figure { after: "nothing ".into(), min: Some(1.0), max: None, ..Figure::default() };
        assert_eq!(judge_figure(&absent, serial), vec!["serial lacks 'nothing '"]);
    }

    #[test]
    fn a_vcpus_figures_are_read_and_bounded() {
        let serial = "INFO  vm solo vcpu0 scheduling: run 900 us, waiting 12 us, blocked 3 us, throttled 0 us, \
                      4 slices, 2 migrations, 1 wake-ups (latency mean 5 us, max 5 us)\r\n";
        let ok = VcpuFigures { vm: "solo".into(), migrations: Some(2), max_waiting_us: Some(12), ..Default::default() };
        assert!(judge_vcpu(&ok, serial).is_empty(), "{:?}", judge_vcpu(&ok, serial));
        let strict = VcpuFigures { migrations: Some(0), max_waiting_us: Some(11), ..ok.clone() };
        assert_eq!(judge_vcpu(&strict, serial).len(), 2);
        let moved = VcpuFigures { min_migrations: Some(3), ..ok.clone() };
        assert_eq!(judge_vcpu(&moved, serial), vec!["VM 'solo' vCPU 0: Some(2) migrations, fewer than 3".to_string()]);
        let other = VcpuFigures { index: 1, ..ok };
        assert_eq!(judge_vcpu(&other, serial), vec!["serial lacks 'vm solo vcpu1 scheduling: '".to_string()]);
    }

    fn case(expect: Expect) -> Case {
        parse(&format!(
            r#"[[case]]
name = "t"
firmware = "bios"
cpus = 2
machine = "qemu"
expect = "{}"
expect_lines = ["all 2 CPUs online", "selftest: PASS"]
forbid_lines = ["CRASH"]
timeout_s = 10
"#,
            format!("{expect:?}").to_lowercase()
        ))
        .unwrap()
        .remove(0)
    }

    fn run(ending: Ending, serial: &str) -> RunOutput {
        RunOutput { ending, serial: serial.into(), elapsed: Duration::from_secs(1), cue_never_seen: None }
    }

    const GOOD: &str = "x\nall 2 CPUs online\nselftest: PASS\n";

    #[test]
    fn a_good_run_passes() {
        assert!(judge(&case(Expect::Success), MachineKind::Qemu, &run(Ending::Success, GOOD)).is_empty());
    }

    #[test]
    fn a_crash_is_caught_even_with_the_right_lines() {
        let problems =
            judge(&case(Expect::Success), MachineKind::Qemu, &run(Ending::Failure, &format!("{GOOD}BASALT CRASH")));
        assert_eq!(problems.len(), 2, "{problems:?}");
    }

    #[test]
    fn timeouts_and_abnormal_ends_fail_a_success_case() {
        assert!(!judge(&case(Expect::Success), MachineKind::Qemu, &run(Ending::Timeout, GOOD)).is_empty());
        assert!(!judge(&case(Expect::Success), MachineKind::Qemu, &run(Ending::Abnormal("triple fault".into()), GOOD))
            .is_empty());
    }

    #[test]
    fn missing_or_reordered_lines_fail() {
        let problems = judge(
            &case(Expect::Success),
            MachineKind::Qemu,
            &run(Ending::Success, "selftest: PASS\nall 2 CPUs online\n"),
        );
        assert_eq!(problems, vec!["serial has 'selftest: PASS' but out of order".to_string()]);
        let problems = judge(&case(Expect::Success), MachineKind::Qemu, &run(Ending::Success, "all 2 CPUs online\n"));
        assert_eq!(problems, vec!["serial lacks 'selftest: PASS'".to_string()]);
    }

    #[test]
    fn lines_ending_in_cr_lf_match_as_well() {
        // Basalt's log lines end in CR LF on the serial port; expected lines
        // are found within them, and one ending in "\r\n" checks the ending.
        let crlf = GOOD.replace('\n', "\r\n");
        assert!(judge(&case(Expect::Success), MachineKind::Qemu, &run(Ending::Success, &crlf)).is_empty());
        let mut ends = case(Expect::Success);
        ends.expect_lines = vec!["all 2 CPUs online".into(), "selftest: PASS\r\n".into()];
        assert!(judge(&ends, MachineKind::Qemu, &run(Ending::Success, &crlf)).is_empty());
        assert_eq!(
            judge(&ends, MachineKind::Qemu, &run(Ending::Success, GOOD)),
            ["serial lacks 'selftest: PASS\r\n'".to_string()]
        );
    }

    #[test]
    fn unordered_cases_only_need_the_lines() {
        let mut c = case(Expect::Success);
        c.ordered = false;
        assert!(judge(&c, MachineKind::Qemu, &run(Ending::Success, "selftest: PASS\nall 2 CPUs online\n")).is_empty());
        assert!(!judge(&c, MachineKind::Qemu, &run(Ending::Success, "selftest: PASS\n")).is_empty());
    }

    #[test]
    fn console_input_left_untyped_fails_the_case() {
        let mut untyped = run(Ending::Success, GOOD);
        untyped.cue_never_seen = Some("login:".into());
        assert_eq!(
            judge(&case(Expect::Success), MachineKind::Qemu, &untyped),
            vec!["console input never typed: 'login:' did not appear".to_string()]
        );
    }

    #[test]
    fn an_expected_hang_must_really_time_out() {
        let mut c = case(Expect::Timeout);
        c.expect_lines.clear();
        assert!(judge(&c, MachineKind::Qemu, &run(Ending::Timeout, "")).is_empty());
        assert!(!judge(&c, MachineKind::Qemu, &run(Ending::Success, "")).is_empty());
    }

    #[test]
    fn bad_case_files_name_the_problem() {
        let bad = |body: &str| parse(&format!("[[case]]\nname = \"b\"\n{body}")).unwrap_err();
        let base = "cpus = 1\nmachine = \"qemu\"\nexpect = \"success\"\ntimeout_s = 5\n";
        assert!(bad(&format!("firmware = \"efi\"\n{base}")).contains("firmware must be"));
        assert!(bad(&format!("firmware = \"bios\"\ncmdline = \"exit=qemu\"\n{base}")).contains("exit="));
        assert!(bad(&format!("firmware = \"bios\"\ncolour = 1\n{base}")).contains("unknown field"));
        let no_cue = format!("firmware = \"bios\"\n{base}[[case.console_input]]\nafter = \"\"\nsend = \"x\"\n");
        assert!(bad(&no_cue).contains("non-empty 'after'"));
    }

    /// A minimal case file: one case per (name, machine value) pair.
    fn cases_with_machines(cases: &[(&str, &str)]) -> Result<Vec<Case>, String> {
        let text: String = cases
            .iter()
            .map(|(name, machine)| {
                format!(
                    "[[case]]\nname = \"{name}\"\nfirmware = \"bios\"\ncpus = 1\nmachine = {machine}\n\
                     expect = \"success\"\ntimeout_s = 5\n"
                )
            })
            .collect();
        parse(&text)
    }

    #[test]
    fn machine_is_one_name_or_a_list() {
        let cases =
            cases_with_machines(&[("a", "\"qemu\""), ("b", "\"vmx\""), ("c", "\"svm\""), ("d", "[\"svm\", \"vmx\"]")])
                .unwrap();
        let machines: Vec<&[MachineKind]> = cases.iter().map(|c| c.machines.as_slice()).collect();
        use MachineKind::*;
        assert_eq!(machines, [&[Qemu][..], &[Vmx], &[Svm], &[Svm, Vmx]]);
        assert_eq!(Qemu.vendor(), None);
        assert_eq!(Svm.vendor(), Some(Vendor::Svm));
        assert_eq!(Qemu.emulator(), Emulator::QemuTcg);
    }

    #[test]
    fn bad_machines_name_the_case_and_the_field() {
        let err = |machine: &str| cases_with_machines(&[("ok", "\"qemu\""), ("odd", machine)]).unwrap_err();
        for bad in ["\"kvm\"", "\"SVM\"", "3", "[\"svm\", \"amd\"]", "[\"svm\", 1]"] {
            let e = err(bad);
            assert!(e.starts_with("tests/cases.toml: case 'odd': machine must be"), "{bad}: {e}");
        }
        assert!(err("\"kvm\"").ends_with("not \"kvm\""), "{}", err("\"kvm\""));
        assert!(err("[]").contains("case 'odd': machine is an empty list"));
        assert!(err("[\"svm\", \"svm\"]").contains("case 'odd': machine lists \"svm\" twice"));
        // A missing machine is serde's error, which names the field.
        let missing =
            parse("[[case]]\nname = \"m\"\nfirmware = \"bios\"\ncpus = 1\nexpect = \"success\"\ntimeout_s = 5\n");
        assert!(missing.unwrap_err().contains("missing field `machine`"));
    }

    /// A case on VT-x and SVM with common lines and lines for each machine.
    fn case_on_two_machines(ordered: bool) -> Case {
        parse(&format!(
            r#"[[case]]
name = "two"
firmware = "bios"
cpus = 1
machine = ["vmx", "svm"]
expect = "success"
expect_lines = ["common 1", "common 2"]
forbid_lines = ["CRASH"]
ordered = {ordered}
timeout_s = 10

[case.on.vmx]
expect_lines = ["hypercall=7/", "bad TSS"]
forbid_lines = ["status 1"]

[case.on.svm]
expect_lines = ["exception=7/"]

[[case.vm]]
name = "v"
guest = "demo"
format = "elf"
"#
        ))
        .unwrap()
        .remove(0)
    }

    #[test]
    fn per_machine_lines_add_to_the_common_ones() {
        let c = case_on_two_machines(true);
        assert_eq!(c.on(MachineKind::Vmx).unwrap().expect_lines, ["hypercall=7/", "bad TSS"]);
        assert!(c.on(MachineKind::Svm).unwrap().forbid_lines.is_empty());
        assert!(c.on(MachineKind::Qemu).is_none());
        assert_eq!(c.vm.len(), 1, "[[case.vm]] after [case.on.svm] still belongs to the case");
        let vmx = "common 1\nexits: hypercall=7/9\ncommon 2\nstopped: bad TSS\n";
        let svm = "common 1\nexits: exception=7/9\ncommon 2\nstopped: status 1\n";
        // Each machine's run needs the common lines and its own, and only its own.
        assert!(judge(&c, MachineKind::Vmx, &run(Ending::Success, vmx)).is_empty());
        assert!(judge(&c, MachineKind::Svm, &run(Ending::Success, svm)).is_empty());
        assert_eq!(
            judge(&c, MachineKind::Svm, &run(Ending::Success, vmx)),
            ["serial lacks 'exception=7/' (on svm)".to_string()]
        );
        // The machine's forbidden lines apply to its run alone, with the common ones.
        assert_eq!(
            judge(&c, MachineKind::Vmx, &run(Ending::Success, &format!("{vmx}status 1\nCRASH"))),
            ["serial has forbidden 'CRASH'".to_string(), "serial has forbidden 'status 1'".to_string()]
        );
        let missing = judge(&c, MachineKind::Vmx, &run(Ending::Success, svm));
        assert_eq!(
            missing,
            [
                "serial lacks 'hypercall=7/' (on vmx)",
                "serial lacks 'bad TSS' (on vmx)",
                "serial has forbidden 'status 1'"
            ]
        );
    }

    #[test]
    fn host_memory_kept_after_the_vms_fails_every_case() {
        let c = case_on_two_machines(true);
        let vmx = "common 1\nexits: hypercall=7/9\ncommon 2\nstopped: bad TSS\n";
        let leaked = format!("{vmx}vmm: all 1 VM(s) stopped; host frames free: 9 before, 7 after (2 not given back)\n");
        assert_eq!(
            judge(&c, MachineKind::Vmx, &run(Ending::Success, &leaked)),
            ["serial has forbidden 'not given back'"]
        );
        let given_back =
            format!("{vmx}vmm: all 1 VM(s) stopped; host frames free: 9 before, 9 after (all given back)\n");
        assert!(judge(&c, MachineKind::Vmx, &run(Ending::Success, &given_back)).is_empty());
    }

    #[test]
    fn per_machine_figures_bound_that_machines_run_only() {
        let text = r#"
            [[case]]
            name = "late"
            firmware = "bios"
            cpus = 1
            machine = ["vmx", "svm"]
            expect = "success"
            timeout_s = 10
            [[case.figure]]
            after = "worst "
            max = 50000
            [[case.on.vmx.figure]]
            after = "worst "
            max = 500
            [[case.vm]]
            name = "v"
            guest = "demo"
            format = "elf"
        "#;
        let c = &parse(text).unwrap()[0];
        let serial = |worst: u32| format!("worst {worst} us\n");
        assert!(judge(c, MachineKind::Vmx, &run(Ending::Success, &serial(400))).is_empty());
        assert_eq!(
            judge(c, MachineKind::Vmx, &run(Ending::Success, &serial(900))),
            ["'worst ' is followed by 900, outside - to 500".to_string()]
        );
        assert!(judge(c, MachineKind::Svm, &run(Ending::Success, &serial(900))).is_empty());
        assert_eq!(judge(c, MachineKind::Svm, &run(Ending::Success, &serial(60000))).len(), 1);
    }

    #[test]
    fn per_machine_lines_are_ordered_among_themselves_only() {
        let c = case_on_two_machines(true);
        // Common and machine lines may interleave any way...
        let interleaved = "hypercall=7/\nbad TSS\ncommon 1\ncommon 2\n";
        assert!(judge(&c, MachineKind::Vmx, &run(Ending::Success, interleaved)).is_empty());
        // ...but each list keeps its own order.
        let swapped = "common 1\nbad TSS\ncommon 2\nhypercall=7/\n";
        assert_eq!(
            judge(&c, MachineKind::Vmx, &run(Ending::Success, swapped)),
            ["serial has 'bad TSS' (on vmx) but out of order".to_string()]
        );
        let common_swapped = "common 2\nhypercall=7/\ncommon 1\nbad TSS\n";
        assert_eq!(
            judge(&c, MachineKind::Vmx, &run(Ending::Success, common_swapped)),
            ["serial has 'common 2' but out of order".to_string()]
        );
        // An unordered case needs the lines, in any order.
        let unordered = case_on_two_machines(false);
        assert!(judge(&unordered, MachineKind::Vmx, &run(Ending::Success, swapped)).is_empty());
        assert!(!judge(&unordered, MachineKind::Vmx, &run(Ending::Success, "common 1\ncommon 2\nbad TSS")).is_empty());
    }

    #[test]
    fn expected_lines_can_be_rewritten_everywhere() {
        // As qemu_test fills in "{date}": the common lines and every machine's.
        let mut c = case_on_two_machines(true);
        for line in c.all_expect_lines_mut() {
            line.push('!');
        }
        assert_eq!(c.expect_lines, ["common 1!", "common 2!"]);
        assert_eq!(c.on(MachineKind::Vmx).unwrap().expect_lines, ["hypercall=7/!", "bad TSS!"]);
        assert_eq!(c.on(MachineKind::Svm).unwrap().expect_lines, ["exception=7/!"]);
        assert_eq!(c.on(MachineKind::Vmx).unwrap().forbid_lines, ["status 1"]);
    }

    #[test]
    fn per_machine_lines_must_be_for_the_case_machines() {
        let with_on = |machine: &str, on: &str| {
            parse(&format!(
                "[[case]]\nname = \"ok\"\nfirmware = \"bios\"\ncpus = 1\nmachine = \"qemu\"\nexpect = \"success\"\n\
                 timeout_s = 5\n\n[[case]]\nname = \"odd\"\nfirmware = \"bios\"\ncpus = 1\nmachine = {machine}\n\
                 expect = \"success\"\ntimeout_s = 5\n{on}"
            ))
        };
        let e = with_on("[\"vmx\", \"svm\"]", "[case.on.qemu]\nexpect_lines = [\"x\"]\n").unwrap_err();
        assert_eq!(
            e,
            "tests/cases.toml: case 'odd': [case.on.qemu]: \"qemu\" is not a machine the case runs on \
             (its machine: vmx, svm)"
        );
        let e = with_on("\"svm\"", "[case.on.amd]\nexpect_lines = [\"x\"]\n").unwrap_err();
        assert!(e.starts_with("tests/cases.toml: case 'odd': [case.on.amd]: \"amd\" is not"), "{e}");
        let e = with_on("\"svm\"", "[case.on.svm]\nexpect = [\"x\"]\n").unwrap_err();
        assert!(e.contains("unknown field `expect`"), "{e}");
        assert!(with_on("\"svm\"", "[case.on.svm]\nforbid_lines = [\"x\"]\n").is_ok());
        assert!(with_on("\"svm\"", "on.svm.expect_lines = [\"x\"]\n").is_ok());
    }

    #[test]
    fn a_multiboot_vm_takes_a_command_line_and_modules() {
        let with_vm = |format: &str, extra: &str| {
            parse(&format!(
                "[[case]]\nname = \"mb\"\nfirmware = \"bios\"\ncpus = 1\nmachine = [\"vmx\", \"svm\"]\n\
                 expect = \"success\"\ntimeout_s = 5\n[[case.vm]]\nname = \"k\"\nguest = \"g\"\n\
                 format = \"{format}\"\n{extra}"
            ))
        };
        let cases = with_vm("multiboot", "append = \"a b\"\ninitrd = \"m.txt x,,y,n.txt\"\n").unwrap();
        let vm = &cases[0].vm[0];
        assert_eq!((vm.append.as_deref(), vm.initrd.as_deref()), (Some("a b"), Some("m.txt x,,y,n.txt")));
        let plain = with_vm("multiboot", "").unwrap();
        assert_eq!((plain[0].vm[0].append.as_deref(), plain[0].vm[0].initrd.as_deref()), (None, None));
        assert_eq!(
            with_vm("elf", "append = \"a\"\n").unwrap_err(),
            "tests/cases.toml: case 'mb': VM 'k': append and initrd are for format = \"multiboot\", not \"elf\""
        );
        assert!(with_vm("flat", "initrd = \"m\"\n").unwrap_err().contains("are for format = \"multiboot\""));
        assert_eq!(
            with_vm("multiboot", "initrd = \"m.txt,\"\n").unwrap_err(),
            "tests/cases.toml: case 'mb': VM 'k': initrd: module 2 ('') has no file name before its first space"
        );
        assert!(with_vm("multiboot", "cmdline = \"a\"\n").unwrap_err().contains("unknown field `cmdline`"));
    }

    #[test]
    fn names_that_would_clash_with_labels_are_refused() {
        let e = cases_with_machines(&[("a@svm", "\"svm\"")]).unwrap_err();
        assert!(e.contains("case 'a@svm': the name may only hold"), "{e}");
        assert!(cases_with_machines(&[("a/b", "\"svm\"")]).is_err());
    }

    fn labels(runs: &[CaseRun]) -> Vec<String> {
        runs.iter().map(CaseRun::label).collect()
    }

    #[test]
    fn a_case_on_several_machines_runs_once_on_each() {
        let cases =
            cases_with_machines(&[("boot", "\"qemu\""), ("linux", "[\"svm\", \"vmx\"]"), ("ept", "\"vmx\"")]).unwrap();
        let runs = select(&cases, &[], None).unwrap();
        assert_eq!(labels(&runs), ["boot", "linux@svm", "linux@vmx", "ept"]);
        // Single-machine cases keep their directory; the others get one per machine.
        let dirs: Vec<PathBuf> = runs.iter().map(CaseRun::dir).collect();
        assert_eq!(dirs, [PathBuf::from("boot"), "linux/svm".into(), "linux/vmx".into(), "ept".into()]);
        assert_eq!(runs[1].kind, MachineKind::Svm);
        assert_eq!(runs[1].machine().cpus, 1);
    }

    #[test]
    fn case_and_vendor_filters_pick_runs() {
        let cases = cases_with_machines(&[
            ("boot", "\"qemu\""),
            ("linux-1cpu", "[\"svm\", \"vmx\"]"),
            ("linux-2cpu", "[\"vmx\", \"svm\"]"),
            ("ept", "\"vmx\""),
            ("svm-caps", "\"svm\""),
        ])
        .unwrap();
        let pick = |patterns: &[&str], vendor| {
            let patterns: Vec<String> = patterns.iter().map(|p| p.to_string()).collect();
            select(&cases, &patterns, vendor).map(|runs| labels(&runs))
        };
        // A case's name runs it on every machine it names.
        assert_eq!(pick(&["linux-1cpu"], None).unwrap(), ["linux-1cpu@svm", "linux-1cpu@vmx"]);
        assert_eq!(
            pick(&["linux"], None).unwrap(),
            ["linux-1cpu@svm", "linux-1cpu@vmx", "linux-2cpu@vmx", "linux-2cpu@svm"]
        );
        // NAME@MACHINE (as summaries print it) runs one of them.
        assert_eq!(pick(&["linux-1cpu@svm"], None).unwrap(), ["linux-1cpu@svm"]);
        assert_eq!(pick(&["linux@vmx", "svm-caps"], None).unwrap(), ["linux-1cpu@vmx", "linux-2cpu@vmx", "svm-caps"]);
        assert_eq!(pick(&["svm-caps@svm"], None).unwrap(), ["svm-caps"]);
        assert!(pick(&["svm-caps@vmx"], None).unwrap().is_empty());
        // A machine name in a pattern does not match by accident: "svm" is only a name.
        assert_eq!(pick(&["svm"], None).unwrap(), ["svm-caps"]);
        // --vendor keeps the runs on that back end; plain-QEMU cases have none.
        assert_eq!(pick(&[], Some(Vendor::Svm)).unwrap(), ["linux-1cpu@svm", "linux-2cpu@svm", "svm-caps"]);
        assert_eq!(pick(&[], Some(Vendor::Vmx)).unwrap(), ["linux-1cpu@vmx", "linux-2cpu@vmx", "ept"]);
        assert_eq!(pick(&["linux-2cpu"], Some(Vendor::Svm)).unwrap(), ["linux-2cpu@svm"]);
        assert!(pick(&["boot"], Some(Vendor::Vmx)).unwrap().is_empty());
        let e = pick(&["linux@amd"], None).unwrap_err();
        assert!(e.contains("--case linux@amd") && e.contains("not 'amd'"), "{e}");
    }

    #[test]
    fn the_shipped_case_file_parses() {
        let text = std::fs::read_to_string(crate::workspace_root().join("tests/cases.toml")).unwrap();
        let cases = parse(&text).unwrap();
        assert!(cases.iter().any(|c| c.machines == [MachineKind::Vmx]));
        assert!(cases.iter().any(|c| c.machines == [MachineKind::Qemu]));
        assert!(cases.iter().any(|c| c.expect == Expect::Timeout));
        assert!(cases.iter().any(|c| c.expect == Expect::Failure));
        assert!(cases.iter().any(|c| c.on(MachineKind::Svm).is_some()));
    }
}
