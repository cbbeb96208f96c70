//! The VM list in a bundle (entry `vms`): one VM per line of `key=value` words.
//! `cargo xtask` writes it from validated configuration; the kernel still checks
//! everything, since a bundle can be built by other means.
//!
//! ```text
//! name=demo image=demo.bin format=flat mode=real load=0x7c00 entry=0x7c00 memory=16 cpus=1 time-limit-ms=5000
//! ```

use alloc::string::{String, ToString};
use alloc::vec::Vec;
use core::fmt;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// Raw bytes at `load`, entered at `entry` in `mode`.
    Flat,
    /// ELF64 (entered in long mode) or ELF32 (entered in protected mode).
    Elf,
    /// A Multiboot (v1) kernel, loaded and entered as QEMU's `-kernel` does.
    Multiboot,
    /// A Linux bzImage, booted through its 64-bit entry.
    Linux,
}

/// CPU mode a flat image starts in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Real,
    Protected,
    Long,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VmSpec {
    pub name: String,
    pub image: String,
    pub format: Format,
    pub mode: Mode,
    pub load: u64,
    pub entry: u64,
    pub memory_mib: u32,
    pub cpus: u32,
    /// Wall-clock budget of guest time; the VM is stopped when it runs out.
    pub time_limit_ms: u64,
    /// Linux: which entry a vmlinux boots through (`linux-entry=pvh|64bit`;
    /// without it, PVH where the kernel has the note).
    pub vmlinux_entry: crate::linux::VmlinuxEntry,
    /// Linux and Multiboot: bundle entries holding the initrd (Multiboot:
    /// the modules, packed by `multiboot::pack_modules`) and the kernel
    /// command line (Multiboot: what follows the image's name on it).
    pub initrd: Option<String>,
    pub kernel_cmdline: Option<String>,
    /// Bundle entries holding disk images, each a virtio-blk disk (read-write
    /// for the VM's life; the image in the bundle is not changed).
    pub disks: Vec<String>,
    /// Test aid (`corrupt-guest-state=1`): a kernel built with test hooks starts
    /// this VM with an invalid TR, to prove a bad guest state stops only its VM.
    pub corrupt_state: bool,
    /// `host-console=1`: the VM owns the host's serial console: its COM1 output
    /// goes there unprefixed and unbuffered, and what is typed there reaches
    /// its COM1. At most one VM has it.
    pub host_console: bool,
    /// How the host's scheduler treats each of its vCPUs.
    pub scheduling: Scheduling,
    /// When it starts, and what follows a crash.
    pub lifecycle: Lifecycle,
}

/// A VM's life on a managed host.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Lifecycle {
    /// `autostart=0`: defined at boot but started only from the shell.
    pub autostart: bool,
    /// `on-crash=restart` (with `restart-limit=N`): a crashed VM (triple
    /// fault, a guest the VMM cannot run) starts again from its images, up
    /// to N times in a row; `on-crash=stop` (the default) leaves it crashed.
    pub on_crash: OnCrash,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OnCrash {
    Stop,
    Restart { limit: u32 },
}

/// Crash restarts when `on-crash=restart` names no limit, and the most one may.
pub const DEFAULT_RESTART_LIMIT: u32 = 3;
pub const MAX_RESTART_LIMIT: u32 = 1000;

impl Default for Lifecycle {
    fn default() -> Self {
        Lifecycle { autostart: true, on_crash: OnCrash::Stop }
    }
}

/// A VM's scheduling parameters, the same for each of its vCPUs (see
/// `basalt-sched`'s `Params`; checked here with the same limits, so a bad
/// value is refused by name before the VM is built).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Scheduling {
    /// `weight=N`: share of a contended core, relative to other vCPUs' (1 to `MAX_WEIGHT`).
    pub weight: u32,
    /// `cap=P`: at most P percent (1 to 100) of one core per vCPU.
    pub cap: Option<u8>,
    /// `affinity=0,2-3`: the host CPUs its vCPUs may run on, one bit each;
    /// None: any.
    pub affinity: Option<u64>,
    /// `dedicated=1`: each vCPU owns a host CPU alone and never time-shares.
    pub dedicated: bool,
}

pub const DEFAULT_WEIGHT: u32 = 256;
pub const MAX_WEIGHT: u32 = 65_535;
/// Host CPUs an affinity can name (the kernel's limit).
pub const MAX_HOST_CPUS: u32 = 64;

impl Default for Scheduling {
    fn default() -> Self {
        Scheduling { weight: DEFAULT_WEIGHT, cap: None, affinity: None, dedicated: false }
    }
}

/// `0,2-3` → bits 0, 2 and 3; None for anything else (empty, a CPU past
/// `MAX_HOST_CPUS`, a backwards range).
pub fn parse_affinity(text: &str) -> Option<u64> {
    let mut set = 0u64;
    for part in text.split(',') {
        let (first, last) = match part.split_once('-') {
            Some((a, b)) => (a.parse::<u32>().ok()?, b.parse::<u32>().ok()?),
            None => {
                let cpu = part.parse::<u32>().ok()?;
                (cpu, cpu)
            }
        };
        if first > last || last >= MAX_HOST_CPUS {
            return None;
        }
        for cpu in first..=last {
            set |= 1 << cpu;
        }
    }
    (set != 0).then_some(set)
}

/// The affinity's text form, as `parse_affinity` reads it.
pub fn render_affinity(set: u64) -> String {
    let cpus: Vec<String> = (0..MAX_HOST_CPUS).filter(|c| set >> c & 1 != 0).map(|c| c.to_string()).collect();
    cpus.join(",")
}

/// A VM's RAM, in MiB, whichever way it is described (this VM list or xtask's
/// TOML files). 16 MiB is the least any guest here uses, and leaves room above
/// the first MiB (BIOS area, ACPI tables, boot data) for the VMM's setup area.
pub const MIN_MEMORY_MIB: u32 = 16;
pub const MAX_MEMORY_MIB: u32 = 4096;
pub const MAX_VCPUS: u32 = 16;
/// virtio slots left after the console.
pub const MAX_DISKS: usize = 7;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ManifestError {
    pub line: usize,
    pub vm: String,
    pub message: String,
}

impl fmt::Display for ManifestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "VM list line {} (vm '{}'): {}", self.line, self.vm, self.message)
    }
}

fn number(text: &str) -> Option<u64> {
    match text.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => text.parse().ok(),
    }
}

pub fn parse_manifest(text: &str) -> Result<Vec<VmSpec>, ManifestError> {
    let mut vms: Vec<VmSpec> = Vec::new();
    for (index, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut vm = VmSpec {
            name: String::new(),
            image: String::new(),
            format: Format::Flat,
            mode: Mode::Real,
            load: 0x7c00,
            entry: u64::MAX,
            memory_mib: 16,
            cpus: 1,
            time_limit_ms: 10_000,
            corrupt_state: false,
            host_console: false,
            vmlinux_entry: crate::linux::VmlinuxEntry::Preferred,
            scheduling: Scheduling::default(),
            lifecycle: Lifecycle::default(),
            initrd: None,
            kernel_cmdline: None,
            disks: Vec::new(),
        };
        let mut seen_format = false;
        let mut restart_limit = DEFAULT_RESTART_LIMIT;
        let error = |vm: &VmSpec, message: String| ManifestError { line: index + 1, vm: vm.name.clone(), message };
        // The name first, so every error can name the VM.
        if let Some(name) = line.split_whitespace().find_map(|w| w.strip_prefix("name=")) {
            vm.name = name.to_string();
        }
        for word in line.split_whitespace() {
            let Some((key, value)) = word.split_once('=') else {
                return Err(error(&vm, alloc::format!("'{word}' is not key=value")));
            };
            let num = |vm: &VmSpec| {
                number(value).ok_or_else(|| ManifestError {
                    line: index + 1,
                    vm: vm.name.clone(),
                    message: alloc::format!("{key}: '{value}' is not a number"),
                })
            };
            match key {
                "name" => {}
                "image" => vm.image = value.to_string(),
                "format" => {
                    seen_format = true;
                    vm.format = match value {
                        "flat" => Format::Flat,
                        "elf" => Format::Elf,
                        "multiboot" => Format::Multiboot,
                        "linux" => Format::Linux,
                        _ => {
                            return Err(error(
                                &vm,
                                alloc::format!("format must be flat, elf, multiboot or linux, not '{value}'"),
                            ))
                        }
                    }
                }
                "mode" => {
                    vm.mode = match value {
                        "real" => Mode::Real,
                        "protected" => Mode::Protected,
                        "long" => Mode::Long,
                        _ => {
                            return Err(error(
                                &vm,
                                alloc::format!("mode must be real, protected or long, not '{value}'"),
                            ))
                        }
                    }
                }
                "linux-entry" => {
                    vm.vmlinux_entry = match value {
                        "pvh" => crate::linux::VmlinuxEntry::Pvh,
                        "64bit" => crate::linux::VmlinuxEntry::Boot64,
                        _ => return Err(error(&vm, alloc::format!("linux-entry must be pvh or 64bit, not '{value}'"))),
                    }
                }
                "load" => vm.load = num(&vm)?,
                "entry" => vm.entry = num(&vm)?,
                "memory" => vm.memory_mib = num(&vm)?.try_into().unwrap_or(u32::MAX),
                "cpus" => vm.cpus = num(&vm)?.try_into().unwrap_or(u32::MAX),
                "time-limit-ms" => vm.time_limit_ms = num(&vm)?,
                "corrupt-guest-state" => vm.corrupt_state = num(&vm)? != 0,
                "host-console" => vm.host_console = num(&vm)? != 0,
                "initrd" => vm.initrd = Some(value.to_string()),
                "kernel-cmdline" => vm.kernel_cmdline = Some(value.to_string()),
                "disk" => vm.disks.push(value.to_string()),
                "weight" => match num(&vm)? {
                    w @ 1..=0xffff => vm.scheduling.weight = w as u32,
                    _ => return Err(error(&vm, alloc::format!("weight must be 1 to {MAX_WEIGHT}"))),
                },
                "cap" => match num(&vm)? {
                    p @ 1..=100 => vm.scheduling.cap = Some(p as u8),
                    _ => return Err(error(&vm, "cap must be 1 to 100 (percent of one CPU)".into())),
                },
                "affinity" => match parse_affinity(value) {
                    Some(set) => vm.scheduling.affinity = Some(set),
                    None => {
                        return Err(error(
                            &vm,
                            alloc::format!("affinity must list host CPUs 0 to {} as 0,2-3", MAX_HOST_CPUS - 1),
                        ))
                    }
                },
                "dedicated" => vm.scheduling.dedicated = num(&vm)? != 0,
                "autostart" => vm.lifecycle.autostart = num(&vm)? != 0,
                "on-crash" => {
                    vm.lifecycle.on_crash = match (value, vm.lifecycle.on_crash) {
                        ("stop", _) => OnCrash::Stop,
                        ("restart", OnCrash::Restart { limit }) => OnCrash::Restart { limit },
                        ("restart", OnCrash::Stop) => OnCrash::Restart { limit: restart_limit },
                        _ => return Err(error(&vm, alloc::format!("on-crash must be stop or restart, not '{value}'"))),
                    }
                }
                "restart-limit" => match num(&vm)? {
                    n @ 1..=1000 => {
                        restart_limit = n as u32;
                        if let OnCrash::Restart { limit } = &mut vm.lifecycle.on_crash {
                            *limit = restart_limit;
                        }
                    }
                    _ => return Err(error(&vm, alloc::format!("restart-limit must be 1 to {MAX_RESTART_LIMIT}"))),
                },
                _ => return Err(error(&vm, alloc::format!("unknown key '{key}'"))),
            }
        }
        if vm.name.is_empty() || !vm.name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
            return Err(error(&vm, "name must be non-empty letters, digits, '-' or '_'".into()));
        }
        if vms.iter().any(|v| v.name == vm.name) {
            return Err(error(&vm, "the name is used twice".into()));
        }
        if vm.image.is_empty() {
            return Err(error(&vm, "image is missing".into()));
        }
        if !seen_format {
            return Err(error(&vm, "format is missing".into()));
        }
        if !(MIN_MEMORY_MIB..=MAX_MEMORY_MIB).contains(&vm.memory_mib) {
            return Err(error(&vm, alloc::format!("memory must be {MIN_MEMORY_MIB} to {MAX_MEMORY_MIB} MiB")));
        }
        if !(1..=MAX_VCPUS).contains(&vm.cpus) {
            return Err(error(&vm, alloc::format!("cpus must be 1 to {MAX_VCPUS}")));
        }
        if vm.time_limit_ms == 0 {
            return Err(error(&vm, "time-limit-ms must be above 0".into()));
        }
        let takes_boot_data = matches!(vm.format, Format::Linux | Format::Multiboot);
        if !takes_boot_data && (vm.initrd.is_some() || vm.kernel_cmdline.is_some()) {
            return Err(error(&vm, "initrd and kernel-cmdline are for format=linux or multiboot only".into()));
        }
        if vm.format != Format::Linux && vm.vmlinux_entry != crate::linux::VmlinuxEntry::Preferred {
            return Err(error(&vm, "linux-entry is for format=linux only".into()));
        }
        if vm.disks.len() > MAX_DISKS {
            return Err(error(&vm, alloc::format!("at most {MAX_DISKS} disks")));
        }
        if vm.host_console && vms.iter().any(|v| v.host_console) {
            return Err(error(&vm, "host-console: only one VM can own the host console".into()));
        }
        if vm.entry == u64::MAX {
            vm.entry = vm.load;
        }
        vms.push(vm);
    }
    Ok(vms)
}

/// The manifest line for `vm` (what `cargo xtask` writes).
pub fn render(vm: &VmSpec) -> String {
    let format = match vm.format {
        Format::Flat => "flat",
        Format::Elf => "elf",
        Format::Multiboot => "multiboot",
        Format::Linux => "linux",
    };
    let mode = match vm.mode {
        Mode::Real => "real",
        Mode::Protected => "protected",
        Mode::Long => "long",
    };
    alloc::format!(
        "name={} image={} format={format} mode={mode} load={:#x} entry={:#x} memory={} cpus={} time-limit-ms={}{}",
        vm.name,
        vm.image,
        vm.load,
        vm.entry,
        vm.memory_mib,
        vm.cpus,
        vm.time_limit_ms,
        if vm.corrupt_state { " corrupt-guest-state=1" } else { "" }
    ) + if vm.host_console { " host-console=1" } else { "" }
        + match vm.vmlinux_entry {
            crate::linux::VmlinuxEntry::Preferred => "",
            crate::linux::VmlinuxEntry::Pvh => " linux-entry=pvh",
            crate::linux::VmlinuxEntry::Boot64 => " linux-entry=64bit",
        }
        + &vm.initrd.as_ref().map(|i| alloc::format!(" initrd={i}")).unwrap_or_default()
        + &vm.kernel_cmdline.as_ref().map(|c| alloc::format!(" kernel-cmdline={c}")).unwrap_or_default()
        + &vm.disks.iter().map(|d| alloc::format!(" disk={d}")).collect::<String>()
        + &render_scheduling(&vm.scheduling)
        + &render_lifecycle(&vm.lifecycle)
}

fn render_lifecycle(l: &Lifecycle) -> String {
    let mut out = String::new();
    if !l.autostart {
        out += " autostart=0";
    }
    if let OnCrash::Restart { limit } = l.on_crash {
        out += &alloc::format!(" on-crash=restart restart-limit={limit}");
    }
    out
}

fn render_scheduling(s: &Scheduling) -> String {
    let mut out = String::new();
    if s.weight != DEFAULT_WEIGHT {
        out += &alloc::format!(" weight={}", s.weight);
    }
    if let Some(cap) = s.cap {
        out += &alloc::format!(" cap={cap}");
    }
    if let Some(set) = s.affinity {
        out += &alloc::format!(" affinity={}", render_affinity(set));
    }
    if s.dedicated {
        out += " dedicated=1";
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lifecycle_parses_renders_and_refuses_by_name() {
        let vms = parse_manifest(
            "name=a image=a format=elf autostart=0 on-crash=restart restart-limit=5\n\
             name=b image=b format=elf restart-limit=7 on-crash=restart\n\
             name=c image=c format=elf on-crash=restart\n\
             name=d image=d format=elf\n",
        )
        .unwrap();
        assert_eq!(vms[0].lifecycle, Lifecycle { autostart: false, on_crash: OnCrash::Restart { limit: 5 } });
        assert_eq!(vms[1].lifecycle.on_crash, OnCrash::Restart { limit: 7 }, "either order");
        assert_eq!(vms[2].lifecycle.on_crash, OnCrash::Restart { limit: DEFAULT_RESTART_LIMIT });
        assert_eq!(vms[3].lifecycle, Lifecycle::default());
        assert!(vms[3].lifecycle.autostart);
        for vm in &vms {
            assert_eq!(&parse_manifest(&render(vm)).unwrap()[0], vm);
        }
        assert!(!render(&vms[3]).contains("autostart") && !render(&vms[3]).contains("on-crash"));
        for (line, field) in [
            ("on-crash=reboot", "on-crash"),
            ("restart-limit=0", "restart-limit"),
            ("restart-limit=1001", "restart-limit"),
            ("autostart=yes", "autostart"),
        ] {
            let e = parse_manifest(&alloc::format!("name=x image=x format=elf {line}")).unwrap_err();
            assert!(e.message.starts_with(field), "{line}: {}", e.message);
        }
    }

    #[test]
    fn scheduling_parses_renders_and_refuses_by_name() {
        let vms = parse_manifest(
            "name=a image=a format=elf weight=768 cap=20 affinity=0,2-3 dedicated=1\nname=b image=b format=elf\n",
        )
        .unwrap();
        let s = vms[0].scheduling;
        assert_eq!((s.weight, s.cap, s.affinity, s.dedicated), (768, Some(20), Some(0b1101), true));
        assert_eq!(vms[1].scheduling, Scheduling::default());
        assert_eq!(parse_manifest(&render(&vms[0])).unwrap()[0], vms[0]);
        assert!(!render(&vms[1]).contains("weight"), "defaults are not written");
        for (line, field) in [
            ("weight=0", "weight"),
            ("weight=65536", "weight"),
            ("cap=0", "cap"),
            ("cap=101", "cap"),
            ("affinity=64", "affinity"),
            ("affinity=3-1", "affinity"),
            ("affinity=", "affinity"),
            ("affinity=a", "affinity"),
        ] {
            let e = parse_manifest(&alloc::format!("name=x image=x format=elf {line}")).unwrap_err();
            assert!(e.message.starts_with(field), "{line}: {}", e.message);
        }
        assert_eq!(parse_affinity("5"), Some(1 << 5));
        assert_eq!(render_affinity(0b1101), "0,2,3");
    }

    #[test]
    fn lines_parse_with_defaults_and_round_trip() {
        let vms = parse_manifest("# test\nname=a image=a.bin format=flat load=0x1000\n\nname=b image=b.elf format=elf memory=64 cpus=2 time-limit-ms=500 corrupt-guest-state=1\nname=l image=vmlinuz format=linux initrd=l.initrd kernel-cmdline=l.cmdline disk=d0 disk=d1 host-console=1\nname=p image=vmlinux format=linux linux-entry=pvh\nname=q image=vmlinux format=linux linux-entry=64bit\n").unwrap();
        assert!(vms[2].host_console && !vms[0].host_console);
        assert_eq!(vms.len(), 5);
        use crate::linux::VmlinuxEntry::{Boot64, Preferred, Pvh};
        assert_eq!([vms[2].vmlinux_entry, vms[3].vmlinux_entry, vms[4].vmlinux_entry], [Preferred, Pvh, Boot64]);
        assert_eq!(vms[2].disks, vec!["d0".to_string(), "d1".to_string()]);
        assert_eq!((vms[2].initrd.as_deref(), vms[2].kernel_cmdline.as_deref()), (Some("l.initrd"), Some("l.cmdline")));
        assert_eq!((vms[0].load, vms[0].entry, vms[0].mode), (0x1000, 0x1000, Mode::Real));
        assert_eq!((vms[1].format, vms[1].memory_mib, vms[1].cpus, vms[1].time_limit_ms), (Format::Elf, 64, 2, 500));
        let again = parse_manifest(&vms.iter().map(render).collect::<Vec<_>>().join("\n")).unwrap();
        assert_eq!(again, vms);
    }

    #[test]
    fn errors_name_the_line_vm_and_problem() {
        let err = |text: &str| parse_manifest(text).unwrap_err().to_string();
        for mib in [0, MIN_MEMORY_MIB - 1, MAX_MEMORY_MIB + 1] {
            let line = alloc::format!("name=x image=i format=flat memory={mib}");
            assert_eq!(err(&line), "VM list line 1 (vm 'x'): memory must be 16 to 4096 MiB");
        }
        for mib in [MIN_MEMORY_MIB, MAX_MEMORY_MIB] {
            let vms = parse_manifest(&alloc::format!("name=x image=i format=flat memory={mib}")).unwrap();
            assert_eq!(vms[0].memory_mib, mib);
        }
        assert_eq!(
            err("name=x image=i format=floppy"),
            "VM list line 1 (vm 'x'): format must be flat, elf, multiboot or linux, not 'floppy'"
        );
        assert!(err("name=x image=i format=flat initrd=r").contains("for format=linux or multiboot only"));
        assert!(err("name=x image=i format=elf kernel-cmdline=c").contains("for format=linux or multiboot only"));
        assert_eq!(
            err("name=x image=i format=linux linux-entry=32bit"),
            "VM list line 1 (vm 'x'): linux-entry must be pvh or 64bit, not '32bit'"
        );
        assert!(err("name=x image=i format=elf linux-entry=64bit").contains("linux-entry is for format=linux only"));
        let multiboot =
            &parse_manifest("name=m image=k format=multiboot initrd=m.modules kernel-cmdline=m.cmdline").unwrap()[0];
        assert_eq!(
            (multiboot.initrd.as_deref(), multiboot.kernel_cmdline.as_deref()),
            (Some("m.modules"), Some("m.cmdline"))
        );
        assert_eq!(parse_manifest("name=x image=i format=elf disk=d").unwrap()[0].disks, vec!["d".to_string()]);
        assert_eq!(err("\nname=x format=flat"), "VM list line 2 (vm 'x'): image is missing");
        assert_eq!(err("name=x image=i format=flat load=12q"), "VM list line 1 (vm 'x'): load: '12q' is not a number");
        assert_eq!(err("name=x image=i format=flat colour=red"), "VM list line 1 (vm 'x'): unknown key 'colour'");
        assert_eq!(
            err("name=x image=i format=flat\nname=x image=j format=flat"),
            "VM list line 2 (vm 'x'): the name is used twice"
        );
        assert!(err("name=a/b image=i format=flat").contains("name must be"));
        assert!(err("name=x image=i format=flat cpus=99").contains("cpus must be 1 to 16"));
        assert!(err("name=x image=i format=flat host-console=1\nname=y image=j format=flat host-console=1")
            .contains("only one VM can own the host console"));
    }
}
