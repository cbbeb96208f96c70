//! What the shell's commands print, from plain figures the kernel gathers.
//!
//! Kept apart from the kernel so the exact text can be tested on the host:
//! an operator reads these tables at a serial console, and scripts (and the
//! integration tests) read them back, so columns must line up whatever the
//! names and figures, and every number must be in a stated unit.
//!
//! The rules, the same everywhere:
//! - tables: each column as wide as its widest cell, two spaces apart; names
//!   and words left-aligned, numbers right-aligned; no trailing spaces;
//! - percentages: from permille, one decimal, truncated ("12.5%");
//! - durations ([`duration`]): under a minute as seconds with one decimal
//!   ("4.2s"), under an hour as minutes and seconds ("2m05s"), then hours,
//!   minutes and seconds ("1h02m03s"); always truncated, never rounded up, so
//!   an uptime never shows a second that has not yet passed;
//! - amounts of memory ([`size`]): bytes under 1 KiB, KiB under 1 MiB, MiB
//!   from there, with one truncated decimal unless whole ("1.5 MiB").

use crate::lifecycle::{OnCrash, State};
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use loader::manifest::render_affinity;

const KIB: u64 = 1024;
const MIB: u64 = 1024 * 1024;

/// How many exit reasons `info` lists.
pub const INFO_EXIT_REASONS: usize = 8;
/// How many exit reasons each `top` row lists.
pub const TOP_EXIT_REASONS: usize = 3;

/// `permille` as a percentage with one decimal: 125 → "12.5%".
pub fn percent(permille: u32) -> String {
    format!("{}.{}%", permille / 10, permille % 10)
}

/// A duration in milliseconds, by the rule in the module's documentation:
/// 4_250 → "4.2s", 125_000 → "2m05s", 3_723_000 → "1h02m03s".
pub fn duration(ms: u64) -> String {
    let seconds = ms / 1000;
    if seconds < 60 {
        return format!("{seconds}.{}s", ms % 1000 / 100);
    }
    let minutes = seconds / 60;
    if minutes < 60 {
        return format!("{minutes}m{:02}s", seconds % 60);
    }
    format!("{}h{:02}m{:02}s", minutes / 60, minutes % 60, seconds % 60)
}

/// An amount of memory in bytes, by the rule in the module's documentation:
/// 512 → "512 B", 1536 → "1.5 KiB", 64 MiB → "64 MiB".
pub fn size(bytes: u64) -> String {
    if bytes < KIB {
        format!("{bytes} B")
    } else if bytes < MIB {
        in_unit(bytes, KIB, "KiB")
    } else {
        in_unit(bytes, MIB, "MiB")
    }
}

/// `bytes` in MiB whatever its size, for figures compared side by side.
fn mib(bytes: u64) -> String {
    in_unit(bytes, MIB, "MiB")
}

fn in_unit(bytes: u64, unit: u64, name: &str) -> String {
    let whole = bytes / unit;
    let rest = bytes % unit;
    if rest == 0 {
        format!("{whole} {name}")
    } else {
        // `rest` is below `unit` (at most 1 MiB), so times ten cannot wrap.
        format!("{whole}.{} {name}", rest * 10 / unit)
    }
}

/// "1 time", "2 times".
fn times(count: u32) -> String {
    if count == 1 {
        String::from("1 time")
    } else {
        format!("{count} times")
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Align {
    Left,
    Right,
}

/// Lays out `rows` (the first is the header, if any) in columns, each
/// `indent` from the margin; see the module's documentation for the rules.
fn table(rows: &[Vec<String>], aligns: &[Align], indent: &str) -> String {
    let mut widths: Vec<usize> = alloc::vec![0; aligns.len()];
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in rows {
        let mut line = String::from(indent);
        for (column, ((&width, &align), cell)) in widths.iter().zip(aligns).zip(row).enumerate() {
            if column > 0 {
                line.push_str("  ");
            }
            let padded = match align {
                Align::Left => format!("{cell:<width$}"),
                Align::Right => format!("{cell:>width$}"),
            };
            line.push_str(&padded);
        }
        out.push_str(line.trim_end_matches(' '));
        out.push('\n');
    }
    out
}

fn cells<const N: usize>(texts: [&str; N]) -> Vec<String> {
    texts.iter().map(|&text| String::from(text)).collect()
}

/// The `count` reasons with the most exits, most first (ties by name, so the
/// order does not depend on the kernel's), leaving out reasons never seen.
fn top_reasons(reasons: &[(String, u64)], count: usize) -> Vec<&(String, u64)> {
    let mut sorted: Vec<&(String, u64)> = reasons.iter().filter(|(_, exits)| *exits > 0).collect();
    sorted.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    sorted.truncate(count);
    sorted
}

/// "over the last 1.0s:", the first line of figures measured over an interval.
fn interval_line(interval_ms: u64) -> String {
    format!("over the last {}:\n", duration(interval_ms))
}

/// One VM, as `list` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmRow {
    pub name: String,
    pub state: State,
    pub vcpus: u32,
    pub memory_mib: u32,
    pub cpu_permille: u32,
    /// None when it is not running ("-" is shown).
    pub uptime_ms: Option<u64>,
}

/// `list`: one row per VM under a header.
pub fn list(rows: &[VmRow]) -> String {
    if rows.is_empty() {
        return String::from("no VMs defined\n");
    }
    let mut lines = Vec::with_capacity(rows.len() + 1);
    lines.push(cells(["NAME", "STATE", "VCPUS", "MEMORY", "CPU", "UPTIME"]));
    for row in rows {
        lines.push(alloc::vec![
            row.name.clone(),
            String::from(row.state.name()),
            format!("{}", row.vcpus),
            format!("{} MiB", row.memory_mib),
            percent(row.cpu_permille),
            row.uptime_ms.map_or_else(|| String::from("-"), duration),
        ]);
    }
    use Align::*;
    table(&lines, &[Left, Left, Right, Right, Right, Right], "")
}

/// One VM in full, as `info` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmInfo {
    pub name: String,
    pub state: State,
    /// Why its last run ended, shown when it is stopped or crashed.
    pub stop_reason: Option<String>,
    pub vcpus: u32,
    pub memory_mib: u32,
    pub image: String,
    pub format: String,
    /// Name and size in bytes of each disk.
    pub disks: Vec<(String, u64)>,
    pub devices: Vec<String>,
    pub weight: u32,
    pub cap: Option<u8>,
    /// Host CPUs allowed, one bit each; None: all.
    pub cpus: Option<u64>,
    pub dedicated: bool,
    pub on_crash: OnCrash,
    pub autostart: bool,
    /// Runs begun since Basalt booted, restarts included.
    pub starts: u32,
    /// Crash restarts since an operator last started it.
    pub restarts: u32,
    pub exits: u64,
    pub exits_by_reason: Vec<(String, u64)>,
}

/// `info`: "key: value" lines, values aligned, then the most frequent exit
/// reasons.
pub fn info(i: &VmInfo) -> String {
    let state = match (&i.stop_reason, i.state) {
        (Some(reason), State::Stopped | State::Crashed) => format!("{} ({reason})", i.state),
        _ => String::from(i.state.name()),
    };
    let disks = if i.disks.is_empty() {
        String::from("none")
    } else {
        let each: Vec<String> = i.disks.iter().map(|(name, bytes)| format!("{name} ({})", size(*bytes))).collect();
        each.join(", ")
    };
    let devices = if i.devices.is_empty() { String::from("none") } else { i.devices.join(", ") };
    let cap = match i.cap {
        Some(percent) => format!("cap {percent}%"),
        None => String::from("no cap"),
    };
    let cpus = match i.cpus {
        Some(set) => format!("cpus {}", render_affinity(set)),
        None => String::from("cpus all"),
    };
    let sharing = if i.dedicated { "dedicated" } else { "shared" };
    let on_crash = match i.on_crash {
        OnCrash::Stop => String::from("stop"),
        OnCrash::Restart { limit } => format!("restart, up to {}", times(limit)),
    };
    let fields: [(&str, String); 13] = [
        ("name", i.name.clone()),
        ("state", state),
        ("vcpus", format!("{}", i.vcpus)),
        ("memory", format!("{} MiB", i.memory_mib)),
        ("image", format!("{} ({})", i.image, i.format)),
        ("disks", disks),
        ("devices", devices),
        ("scheduling", format!("weight {}, {cap}, {cpus}, {sharing}", i.weight)),
        ("on crash", on_crash),
        ("autostart", String::from(if i.autostart { "yes" } else { "no" })),
        ("started", times(i.starts)),
        ("crash restarts", format!("{}", i.restarts)),
        ("exits", format!("{}", i.exits)),
    ];
    let key_width = fields.iter().map(|(key, _)| key.len() + 1).max().unwrap_or(0);
    let mut out = String::new();
    for (key, value) in &fields {
        let key = format!("{key}:");
        out.push_str(&format!("{key:<key_width$} {value}\n"));
    }
    let reasons: Vec<Vec<String>> = top_reasons(&i.exits_by_reason, INFO_EXIT_REASONS)
        .into_iter()
        .map(|(reason, count)| alloc::vec![reason.clone(), format!("{count}")])
        .collect();
    out.push_str(&table(&reasons, &[Align::Left, Align::Right], "  "));
    out
}

/// One host core, as `cores` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CoreRow {
    pub core: u32,
    pub guest_permille: u32,
    pub halted_permille: u32,
    /// vCPUs waiting for this core.
    pub runnable: u32,
    /// "vm/vcpuN" running on it now; None when it is idle.
    pub running: Option<String>,
}

/// `cores`: what each host core did over the last interval.
pub fn cores(rows: &[CoreRow], interval_ms: u64) -> String {
    let mut out = interval_line(interval_ms);
    if rows.is_empty() {
        out.push_str("no cores\n");
        return out;
    }
    let mut lines = Vec::with_capacity(rows.len() + 1);
    lines.push(cells(["CORE", "IN-GUESTS", "HALTED", "RUNNABLE", "RUNNING"]));
    for row in rows {
        lines.push(alloc::vec![
            format!("{}", row.core),
            percent(row.guest_permille),
            percent(row.halted_permille),
            format!("{}", row.runnable),
            row.running.clone().unwrap_or_else(|| String::from("-")),
        ]);
    }
    use Align::*;
    out.push_str(&table(&lines, &[Right, Right, Right, Right, Left], ""));
    out
}

/// Host memory, as `mem` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemInfo {
    pub frame_bytes: u64,
    pub total_frames: u64,
    pub free_frames: u64,
    /// Each VM's name and the frames it holds.
    pub per_vm: Vec<(String, u64)>,
}

/// `mem`: the host's totals, then each VM's share. The free frame count is
/// printed as a plain integer, so a test can read it back exactly.
pub fn mem(m: &MemInfo) -> String {
    let bytes = |frames: u64| frames.saturating_mul(m.frame_bytes);
    let mut out = format!(
        "host memory: {} total, {} free ({} frames free)\n",
        mib(bytes(m.total_frames)),
        mib(bytes(m.free_frames)),
        m.free_frames
    );
    let rows: Vec<Vec<String>> =
        m.per_vm.iter().map(|(name, frames)| alloc::vec![name.clone(), mib(bytes(*frames))]).collect();
    out.push_str(&table(&rows, &[Align::Left, Align::Right], "  "));
    out
}

/// One vCPU, as `top` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VcpuRow {
    pub vm: String,
    pub index: u32,
    pub state: &'static str,
    /// The core it runs on, or last ran on; None if it has not run.
    pub core: Option<u32>,
    pub cpu_permille: u32,
    /// Time it was runnable but waiting for a core.
    pub steal_permille: u32,
    pub exits_per_s: u64,
    /// Exit reasons and counts over the interval.
    pub top_reasons: Vec<(String, u64)>,
}

/// `top`: each vCPU over the last interval.
pub fn top(rows: &[VcpuRow], interval_ms: u64) -> String {
    let mut out = interval_line(interval_ms);
    if rows.is_empty() {
        out.push_str("no vCPUs\n");
        return out;
    }
    let mut lines = Vec::with_capacity(rows.len() + 1);
    lines.push(cells(["VM", "VCPU", "STATE", "CORE", "CPU", "STEAL", "EXITS/S", "TOP EXITS"]));
    for row in rows {
        let reasons: Vec<String> = top_reasons(&row.top_reasons, TOP_EXIT_REASONS)
            .into_iter()
            .map(|(reason, count)| format!("{reason} {count}"))
            .collect();
        lines.push(alloc::vec![
            row.vm.clone(),
            format!("{}", row.index),
            String::from(row.state),
            row.core.map_or_else(|| String::from("-"), |core| format!("{core}")),
            percent(row.cpu_permille),
            percent(row.steal_permille),
            format!("{}", row.exits_per_s),
            if reasons.is_empty() { String::from("-") } else { reasons.join(", ") },
        ]);
    }
    use Align::*;
    out.push_str(&table(&lines, &[Left, Right, Left, Right, Right, Right, Right, Left], ""));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::string::ToString;

    fn s(text: &str) -> String {
        text.to_string()
    }

    /// Where each space-separated word of `line` starts and ends (byte
    /// offsets, end exclusive): left-aligned columns share starts,
    /// right-aligned ones share ends.
    fn spans(line: &str) -> Vec<(usize, usize)> {
        let bytes = line.as_bytes();
        let starts = (0..bytes.len()).filter(|&i| bytes[i] != b' ' && (i == 0 || bytes[i - 1] == b' '));
        let ends = (1..=bytes.len()).filter(|&i| bytes[i - 1] != b' ' && (i == bytes.len() || bytes[i] == b' '));
        starts.zip(ends).collect()
    }

    #[test]
    fn percentages() {
        assert_eq!(percent(0), "0.0%");
        assert_eq!(percent(5), "0.5%");
        assert_eq!(percent(125), "12.5%");
        assert_eq!(percent(1000), "100.0%");
        assert_eq!(percent(2345), "234.5%");
        assert_eq!(percent(u32::MAX), "429496729.5%");
    }

    #[test]
    fn durations() {
        assert_eq!(duration(0), "0.0s");
        assert_eq!(duration(99), "0.0s");
        assert_eq!(duration(100), "0.1s");
        assert_eq!(duration(1000), "1.0s");
        assert_eq!(duration(4_250), "4.2s");
        assert_eq!(duration(4_299), "4.2s");
        assert_eq!(duration(59_999), "59.9s");
        assert_eq!(duration(60_000), "1m00s");
        assert_eq!(duration(125_000), "2m05s");
        assert_eq!(duration(3_599_999), "59m59s");
        assert_eq!(duration(3_600_000), "1h00m00s");
        assert_eq!(duration(3_723_000), "1h02m03s");
        assert_eq!(duration(100 * 3_600_000 + 61_000), "100h01m01s");
        assert_eq!(duration(u64::MAX), "5124095576030h25m51s");
    }

    #[test]
    fn sizes() {
        assert_eq!(size(0), "0 B");
        assert_eq!(size(1023), "1023 B");
        assert_eq!(size(1024), "1 KiB");
        assert_eq!(size(1536), "1.5 KiB");
        assert_eq!(size(4095), "3.9 KiB");
        assert_eq!(size(MIB - 1), "1023.9 KiB");
        assert_eq!(size(MIB), "1 MiB");
        assert_eq!(size(64 * MIB), "64 MiB");
        assert_eq!(size(MIB + MIB / 2), "1.5 MiB");
        assert_eq!(size(20 * 1024 * MIB), "20480 MiB");
        assert_eq!(size(u64::MAX), "17592186044415.9 MiB");
        assert_eq!(mib(MIB / 2), "0.5 MiB");
        assert_eq!(mib(0), "0 MiB");
    }

    fn row(name: &str, state: State, vcpus: u32, memory_mib: u32, cpu: u32, uptime: Option<u64>) -> VmRow {
        VmRow { name: s(name), state, vcpus, memory_mib, cpu_permille: cpu, uptime_ms: uptime }
    }

    #[test]
    fn list_of_no_vms() {
        assert_eq!(list(&[]), "no VMs defined\n");
    }

    #[test]
    fn list_fixture() {
        let rows = [
            row("web", State::Running, 2, 256, 125, Some(3_723_000)),
            row("db", State::Stopped, 1, 16, 0, None),
            row("batch", State::Paused, 16, 4096, 1000, Some(4_200)),
        ];
        let expected = "\
NAME   STATE    VCPUS    MEMORY     CPU    UPTIME
web    running      2   256 MiB   12.5%  1h02m03s
db     stopped      1    16 MiB    0.0%         -
batch  paused      16  4096 MiB  100.0%      4.2s
";
        assert_eq!(list(&rows), expected);
    }

    #[test]
    fn list_aligns_a_long_name() {
        let long = "a-virtual-machine-with-a-name-that-is-exactly-sixty-four-chars-x";
        assert_eq!(long.len(), 64);
        let rows = [row(long, State::Crashed, 1, 16, 3, None), row("x", State::Running, 4, 512, 999, Some(61_000))];
        let text = list(&rows);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3);
        assert!(lines[0].starts_with(&format!("NAME{}  STATE", " ".repeat(60))));
        assert!(lines[2].starts_with(&format!("x{}  running", " ".repeat(63))));
        // Right-aligned columns end together; left-aligned ones start together.
        let ends = |line: &str| line.len();
        assert_eq!(ends(lines[0]), ends(lines[1]));
        assert_eq!(ends(lines[1]), ends(lines[2]));
        assert_eq!(lines[1].find("crashed"), lines[0].find("STATE"));
        for line in &lines {
            assert!(!line.ends_with(' '));
        }
    }

    fn info_fixture() -> VmInfo {
        VmInfo {
            name: s("web"),
            state: State::Crashed,
            stop_reason: Some(s("triple fault")),
            vcpus: 2,
            memory_mib: 256,
            image: s("web.elf"),
            format: s("elf"),
            disks: alloc::vec![(s("root.img"), 64 * MIB), (s("data.img"), MIB + MIB / 2)],
            devices: alloc::vec![s("virtio-console"), s("virtio-blk")],
            weight: 512,
            cap: Some(50),
            cpus: Some(0b1101),
            dedicated: false,
            on_crash: OnCrash::Restart { limit: 3 },
            autostart: true,
            starts: 4,
            restarts: 3,
            exits: 123_456,
            exits_by_reason: alloc::vec![
                (s("io"), 80),
                (s("hlt"), 120),
                (s("cpuid"), 5),
                (s("never"), 0),
                (s("msr"), 80),
                (s("ept"), 7),
                (s("apic"), 9),
                (s("irq"), 300),
                (s("vmcall"), 1),
                (s("xsetbv"), 2),
                (s("pause"), 3),
            ],
        }
    }

    #[test]
    fn info_fixture_in_full() {
        let expected = "\
name:           web
state:          crashed (triple fault)
vcpus:          2
memory:         256 MiB
image:          web.elf (elf)
disks:          root.img (64 MiB), data.img (1.5 MiB)
devices:        virtio-console, virtio-blk
scheduling:     weight 512, cap 50%, cpus 0,2,3, shared
on crash:       restart, up to 3 times
autostart:      yes
started:        4 times
crash restarts: 3
exits:          123456
  irq    300
  hlt    120
  io      80
  msr     80
  apic     9
  ept      7
  cpuid    5
  pause    3
";
        assert_eq!(info(&info_fixture()), expected);
    }

    #[test]
    fn info_of_a_plain_vm() {
        let plain = VmInfo {
            name: s("db"),
            state: State::Running,
            stop_reason: Some(s("stale reason, not shown while running")),
            vcpus: 1,
            memory_mib: 16,
            image: s("db.bin"),
            format: s("flat"),
            disks: Vec::new(),
            devices: Vec::new(),
            weight: 256,
            cap: None,
            cpus: None,
            dedicated: true,
            on_crash: OnCrash::Stop,
            autostart: false,
            starts: 1,
            restarts: 0,
            exits: 0,
            exits_by_reason: Vec::new(),
        };
        let expected = "\
name:           db
state:          running
vcpus:          1
memory:         16 MiB
image:          db.bin (flat)
disks:          none
devices:        none
scheduling:     weight 256, no cap, cpus all, dedicated
on crash:       stop
autostart:      no
started:        1 time
crash restarts: 0
exits:          0
";
        assert_eq!(info(&plain), expected);
        let stopped = VmInfo { state: State::Stopped, stop_reason: Some(s("guest powered off")), ..plain.clone() };
        assert!(info(&stopped).contains("\nstate:          stopped (guest powered off)\n"));
        let no_reason = VmInfo { state: State::Stopped, stop_reason: None, ..plain.clone() };
        assert!(info(&no_reason).contains("\nstate:          stopped\n"));
        let once = VmInfo { on_crash: OnCrash::Restart { limit: 1 }, ..plain };
        assert!(info(&once).contains("\non crash:       restart, up to 1 time\n"));
    }

    #[test]
    fn cores_fixture() {
        let rows = [
            CoreRow { core: 0, guest_permille: 850, halted_permille: 100, runnable: 2, running: Some(s("web/vcpu0")) },
            CoreRow { core: 1, guest_permille: 0, halted_permille: 1000, runnable: 0, running: None },
            CoreRow { core: 12, guest_permille: 5, halted_permille: 995, runnable: 10, running: Some(s("db/vcpu1")) },
        ];
        let expected = "\
over the last 1.0s:
CORE  IN-GUESTS  HALTED  RUNNABLE  RUNNING
   0      85.0%   10.0%         2  web/vcpu0
   1       0.0%  100.0%         0  -
  12       0.5%   99.5%        10  db/vcpu1
";
        assert_eq!(cores(&rows, 1000), expected);
        assert_eq!(cores(&[], 2500), "over the last 2.5s:\nno cores\n");
    }

    #[test]
    fn cores_aligns_a_long_vcpu_name() {
        let long = format!("{}/vcpu15", "v".repeat(64));
        let rows = [
            CoreRow { core: 0, guest_permille: 1, halted_permille: 2, runnable: 3, running: Some(long.clone()) },
            CoreRow { core: 1, guest_permille: 1, halted_permille: 2, runnable: 3, running: None },
        ];
        let text = cores(&rows, 1000);
        let lines: Vec<&str> = text.lines().skip(1).collect();
        assert!(lines[1].ends_with(&long));
        let layout = |line: &str| {
            let spans = spans(line);
            // Four right-aligned columns, then RUNNING, left-aligned.
            (spans[0].1, spans[1].1, spans[2].1, spans[3].1, spans[4].0)
        };
        assert_eq!(layout(lines[0]), layout(lines[1]));
        assert_eq!(layout(lines[0]), layout(lines[2]));
    }

    #[test]
    fn mem_fixture() {
        let m = MemInfo {
            frame_bytes: 4096,
            total_frames: 524_288,
            free_frames: 262_145,
            per_vm: alloc::vec![(s("web"), 65_536), (s("database"), 4096), (s("tiny"), 1)],
        };
        let expected = "\
host memory: 2048 MiB total, 1024.0 MiB free (262145 frames free)
  web       256 MiB
  database   16 MiB
  tiny      0.0 MiB
";
        assert_eq!(mem(&m), expected);
        // The free frame count can be read back exactly.
        let text = mem(&m);
        let count: u64 = text.split('(').nth(1).and_then(|rest| rest.split(' ').next()).unwrap().parse().unwrap();
        assert_eq!(count, 262_145);
    }

    #[test]
    fn mem_without_vms_and_with_absurd_figures() {
        let m = MemInfo { frame_bytes: 4096, total_frames: 256, free_frames: 256, per_vm: Vec::new() };
        assert_eq!(mem(&m), "host memory: 1 MiB total, 1 MiB free (256 frames free)\n");
        let huge = MemInfo { frame_bytes: u64::MAX, total_frames: u64::MAX, free_frames: 3, per_vm: Vec::new() };
        assert!(mem(&huge).contains("(3 frames free)"));
    }

    #[test]
    fn mem_aligns_a_long_name() {
        let long = "m".repeat(64);
        let m = MemInfo {
            frame_bytes: 4096,
            total_frames: 1 << 20,
            free_frames: 0,
            per_vm: alloc::vec![(long.clone(), 256), (s("a"), 1 << 18)],
        };
        let text = mem(&m);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[1], format!("  {long}     1 MiB"));
        assert_eq!(lines[2], format!("  a{}  1024 MiB", " ".repeat(63)));
    }

    fn vcpu(vm: &str, index: u32, state: &'static str, core: Option<u32>, reasons: &[(&str, u64)]) -> VcpuRow {
        VcpuRow {
            vm: s(vm),
            index,
            state,
            core,
            cpu_permille: 500,
            steal_permille: 15,
            exits_per_s: 1200,
            top_reasons: reasons.iter().map(|(reason, count)| (s(reason), *count)).collect(),
        }
    }

    #[test]
    fn top_fixture() {
        let rows = [
            vcpu("web", 0, "running", Some(2), &[("io", 80), ("hlt", 120), ("msr", 7), ("cpuid", 1)]),
            vcpu("web", 1, "blocked", Some(0), &[("hlt", 3)]),
            vcpu("db", 10, "runnable", None, &[]),
        ];
        let expected = "\
over the last 1.0s:
VM   VCPU  STATE     CORE    CPU  STEAL  EXITS/S  TOP EXITS
web     0  running      2  50.0%   1.5%     1200  hlt 120, io 80, msr 7
web     1  blocked      0  50.0%   1.5%     1200  hlt 3
db     10  runnable     -  50.0%   1.5%     1200  -
";
        assert_eq!(top(&rows, 1000), expected);
        assert_eq!(top(&[], 500), "over the last 0.5s:\nno vCPUs\n");
    }

    #[test]
    fn top_aligns_a_long_name() {
        let long = "t".repeat(64);
        let rows = [vcpu(&long, 0, "running", Some(1), &[("hlt", 1)]), vcpu("a", 15, "paused", None, &[])];
        let text = top(&rows, 1000);
        let lines: Vec<&str> = text.lines().skip(1).collect();
        let layout = |line: &str| {
            let spans = spans(line);
            // VM and STATE left-aligned, TOP EXITS too; the rest right-aligned.
            let ends: Vec<usize> = [1, 3, 4, 5, 6].iter().map(|&column| spans[column].1).collect();
            (spans[0].0, spans[2].0, spans[7].0, ends)
        };
        assert_eq!(layout(lines[0]), layout(lines[1]));
        assert_eq!(layout(lines[0]), layout(lines[2]));
        assert!(lines[2].starts_with(&format!("a{}    15  paused", " ".repeat(63))));
    }

    #[test]
    fn exit_reasons_are_ranked_by_count_then_name() {
        let reasons = [(s("b"), 5), (s("a"), 5), (s("c"), 9), (s("zero"), 0)];
        let ranked: Vec<&str> = top_reasons(&reasons, 8).into_iter().map(|(name, _)| name.as_str()).collect();
        assert_eq!(ranked, ["c", "a", "b"]);
        assert_eq!(top_reasons(&reasons, 1).len(), 1);
        assert!(top_reasons(&reasons, 0).is_empty());
    }

    #[test]
    fn every_output_ends_with_one_newline_and_no_carriage_return() {
        let outputs = [
            list(&[]),
            list(&[row("x", State::Defined, 1, 16, 0, None)]),
            info(&info_fixture()),
            cores(&[], 0),
            mem(&MemInfo { frame_bytes: 0, total_frames: 0, free_frames: 0, per_vm: Vec::new() }),
            top(&[vcpu("x", 0, "running", None, &[])], u64::MAX),
        ];
        for text in outputs {
            assert!(text.ends_with('\n'), "{text:?}");
            assert!(!text.ends_with("\n\n"), "{text:?}");
            assert!(!text.contains('\r'), "{text:?}");
            assert!(text.lines().all(|line| !line.ends_with(' ')), "{text:?}");
        }
    }
}
