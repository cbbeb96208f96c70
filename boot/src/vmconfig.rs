//! A VM described in TOML (`cargo xtask run --vm PATH.toml`), checked here on
//! the host so a mistake is reported naming the field before anything boots:
//!
//! ```toml
//! name = "web"
//! memory_mib = 256
//! vcpus = 1
//! kernel = "debian"          # or a kernel file: bzImage, vmlinux, Multiboot or ELF
//! linux_entry = "64bit"      # optional, vmlinux: "pvh" (default where it has the note)
//!                            #   or "64bit"; an ELF without the note is a vmlinux with it
//! initrd = "initrd.cpio"     # optional; Multiboot: modules, "FILE ARGS,FILE2"
//! cmdline = "quiet"          # optional; Linux: console= is added for `console`
//! console = "serial"         # Linux: "serial" (ttyS0) or "virtio" (hvc0)
//! weight = 512               # optional: share of a contended CPU (default 256)
//! cap = 50                   # optional: at most 50% of one CPU per vCPU
//! cpus = [0, 1]              # optional: the host CPUs its vCPUs may run on
//! dedicated = false          # optional: each vCPU owns a host CPU alone
//! autostart = true           # optional: false starts it only from the shell
//! on_crash = "stop"          # optional: "restart" starts a crashed VM again,
//! restart_limit = 3          #   up to restart_limit times in a row
//! [[disk]]
//! path = "disk.img"
//! ```
//!
//! The kernel's format comes from its contents, as `run --kernel` finds it.
//! Relative paths are relative to the TOML file.

use crate::guests::LinuxVm;
use loader::linux::VmlinuxEntry;
use loader::Format;
use serde::Deserialize;
use std::path::{Path, PathBuf};

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct VmFile {
    name: String,
    #[serde(default = "default_memory")]
    memory_mib: u32,
    #[serde(default = "one")]
    vcpus: u32,
    kernel: String,
    linux_entry: Option<String>,
    initrd: Option<String>,
    #[serde(default)]
    cmdline: String,
    /// Linux only; "serial" when not given.
    console: Option<String>,
    #[serde(default)]
    disk: Vec<Disk>,
    weight: Option<u32>,
    cap: Option<u32>,
    cpus: Option<Vec<u32>>,
    #[serde(default)]
    dedicated: bool,
    autostart: Option<bool>,
    on_crash: Option<String>,
    restart_limit: Option<u32>,
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct Disk {
    path: String,
}

fn default_memory() -> u32 {
    256
}
fn one() -> u32 {
    1
}

/// What a VM file asks for, with paths resolved and values checked.
#[derive(Debug, PartialEq, Eq)]
pub struct VmConfig {
    pub name: String,
    pub memory_mib: u32,
    pub vcpus: u32,
    /// None: Debian's kernel.
    pub kernel: Option<PathBuf>,
    /// The kernel's boot protocol, from its contents (and `linux_entry`).
    pub format: Format,
    pub vmlinux_entry: VmlinuxEntry,
    /// `kernel` as written: a Multiboot kernel's argv[0], as QEMU passes the
    /// path it was given.
    pub kernel_name: String,
    /// Linux only.
    pub initrd: Option<PathBuf>,
    /// Multiboot only: each module's file and its string, in order.
    pub modules: Vec<(PathBuf, String)>,
    /// Linux: with the console added; Multiboot: what follows the kernel's
    /// name on its command line.
    pub cmdline: String,
    pub disks: Vec<PathBuf>,
    pub scheduling: loader::manifest::Scheduling,
    pub lifecycle: loader::manifest::Lifecycle,
}

/// Parses and checks `text` (from `file`); errors name the file and field.
pub fn parse(text: &str, file: &Path) -> Result<VmConfig, String> {
    let at = |field: &str, what: String| format!("{}: {field}: {what}", file.display());
    let vm: VmFile = toml::from_str(text).map_err(|e| format!("{}: {}", file.display(), e.message()))?;
    if vm.name.is_empty() || !vm.name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
        return Err(at("name", format!("'{}' must be letters, digits, '-' or '_'", vm.name)));
    }
    let (min, max) = (loader::manifest::MIN_MEMORY_MIB, loader::manifest::MAX_MEMORY_MIB);
    if !(min..=max).contains(&vm.memory_mib) {
        return Err(at("memory_mib", format!("{} is outside {min} to {max} (MiB)", vm.memory_mib)));
    }
    if !(1..=loader::manifest::MAX_VCPUS).contains(&vm.vcpus) {
        return Err(at("vcpus", format!("{} is outside 1 to {}", vm.vcpus, loader::manifest::MAX_VCPUS)));
    }
    let console = match vm.console.as_deref() {
        None | Some("serial") => "console=ttyS0",
        Some("virtio") => "console=hvc0",
        Some(other) => return Err(at("console", format!("must be \"serial\" or \"virtio\", not \"{other}\""))),
    };
    let scheduling = crate::guests::scheduling(vm.weight, vm.cap, vm.cpus.as_deref(), vm.dedicated)
        .map_err(|e| format!("{}: {e}", file.display()))?;
    let lifecycle = crate::guests::lifecycle(vm.autostart, vm.on_crash.as_deref(), vm.restart_limit)
        .map_err(|e| format!("{}: {e}", file.display()))?;
    if vm.disk.len() > loader::manifest::MAX_DISKS {
        return Err(at("disk", format!("at most {} disks", loader::manifest::MAX_DISKS)));
    }
    let base = file.parent().unwrap_or(Path::new("."));
    let resolve = |p: &str| if Path::new(p).is_absolute() { PathBuf::from(p) } else { base.join(p) };
    let existing = |field: &str, p: &str| {
        let path = resolve(p);
        if path.is_file() {
            Ok(path)
        } else {
            Err(at(field, format!("{} is not a file", path.display())))
        }
    };
    let kernel = if vm.kernel == "debian" { None } else { Some(existing("kernel", &vm.kernel)?) };
    let vmlinux_entry = match vm.linux_entry.as_deref() {
        None => VmlinuxEntry::Preferred,
        Some("pvh") => VmlinuxEntry::Pvh,
        Some("64bit") => VmlinuxEntry::Boot64,
        Some(other) => return Err(at("linux_entry", format!("must be \"pvh\" or \"64bit\", not \"{other}\""))),
    };
    let (format, is_elf) = match &kernel {
        None => (Format::Linux, true),
        Some(path) => {
            let bytes =
                std::fs::read(path).map_err(|e| at("kernel", format!("cannot read {}: {e}", path.display())))?;
            let format = crate::guests::kernel_format(&bytes, path).map_err(|e| at("kernel", e))?;
            (format, bytes.starts_with(b"\x7fELF"))
        }
    };
    // Only a vmlinux has a choice of entry; an ELF file without the PVH note
    // is one when the file says how to enter it.
    let format = match (format, vm.linux_entry.is_some()) {
        (_, false) => format,
        (Format::Linux | Format::Elf, true) if is_elf => Format::Linux,
        (_, true) => {
            return Err(at("linux_entry", format!("is for a vmlinux (an ELF kernel); {} is not one", vm.kernel)))
        }
    };
    let disks = vm
        .disk
        .iter()
        .enumerate()
        .map(|(i, d)| existing(&format!("disk[{i}].path"), &d.path))
        .collect::<Result<Vec<_>, _>>()?;
    let not_for = |field: &str| at(field, format!("{} is not a Linux or Multiboot kernel but a plain ELF", vm.kernel));
    let (initrd, modules, cmdline) = match format {
        Format::Linux => {
            let initrd = vm.initrd.as_deref().map(|p| existing("initrd", p)).transpose()?;
            let cmdline = if vm.cmdline.split_whitespace().any(|w| w.starts_with("console=")) {
                vm.cmdline.clone()
            } else {
                format!("{console} {}", vm.cmdline).trim().to_owned()
            };
            (initrd, Vec::new(), cmdline)
        }
        Format::Multiboot | Format::Elf => {
            if vm.console.is_some() {
                return Err(at("console", format!("is for Linux kernels; {} is not one", vm.kernel)));
            }
            if format == Format::Elf && !vm.cmdline.is_empty() {
                return Err(not_for("cmdline"));
            }
            if format == Format::Elf && vm.initrd.is_some() {
                return Err(not_for("initrd"));
            }
            // Multiboot: modules as QEMU's -initrd lists them.
            let listed = vm.initrd.as_deref().map(crate::guests::split_module_list).transpose();
            let listed = listed.map_err(|e| at("initrd", e))?.unwrap_or_default();
            let modules = listed
                .into_iter()
                .map(|(file, string)| Ok((existing("initrd", &file)?, string)))
                .collect::<Result<Vec<_>, String>>()?;
            (None, modules, vm.cmdline.clone())
        }
        Format::Flat => return Err(at("kernel", format!("{} is a flat image, not a kernel", vm.kernel))),
    };
    Ok(VmConfig {
        name: vm.name,
        memory_mib: vm.memory_mib,
        vcpus: vm.vcpus,
        kernel,
        format,
        vmlinux_entry,
        kernel_name: vm.kernel,
        initrd,
        modules,
        cmdline,
        disks,
        scheduling,
        lifecycle,
    })
}

/// Reads the file and everything it names into a Linux VM for the bundle.
pub fn load(file: &Path) -> Result<LinuxVm, String> {
    let text = std::fs::read_to_string(file).map_err(|e| format!("cannot read {}: {e}", file.display()))?;
    let config = parse(&text, file)?;
    let read = |p: &Path| std::fs::read(p).map_err(|e| format!("cannot read {}: {e}", p.display()));
    let kernel_path = match config.kernel {
        Some(path) => path,
        None => crate::linux::debian_vmlinux()?,
    };
    Ok(LinuxVm {
        name: config.name,
        format: config.format,
        kernel: read(&kernel_path)?,
        kernel_name: config.kernel_name,
        vmlinux_entry: config.vmlinux_entry,
        initrd: config.initrd.as_deref().map(read).transpose()?,
        modules: config
            .modules
            .iter()
            .map(|(path, string)| Ok((string.clone(), read(path)?)))
            .collect::<Result<_, String>>()?,
        append: config.cmdline,
        memory_mib: config.memory_mib,
        vcpus: config.vcpus,
        time_limit_ms: 24 * 3600 * 1000,
        host_console: true,
        disks: config.disks.iter().map(|p| read(p)).collect::<Result<_, _>>()?,
        scheduling: config.scheduling,
        lifecycle: config.lifecycle,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A directory of `test`'s own (tests run in parallel, and one that
    /// rewrites a file another is reading makes it see an empty one) holding
    /// `files`: each one a Linux kernel as far as the format's detection
    /// looks (the boot sector's flag and "HdrS").
    fn dir_with(test: &str, files: &[&str]) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("basalt-vmconfig-{}-{test}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut bzimage = [0u8; 1024];
        bzimage[0x1fe..0x200].copy_from_slice(&[0x55, 0xaa]);
        bzimage[0x202..0x206].copy_from_slice(b"HdrS");
        for f in files {
            std::fs::write(dir.join(f), bzimage).unwrap();
        }
        dir
    }

    /// A Multiboot kernel (the header's address fields, loaded at 1 MiB).
    fn multiboot_kernel() -> Vec<u8> {
        let (magic, flags, load) = (0x1bad_b002u32, 1u32 << 16, 0x10_0000u32);
        let fields = [magic, flags, 0u32.wrapping_sub(magic).wrapping_sub(flags), load, load, load + 36, 0, load + 32];
        let mut kernel: Vec<u8> = fields.iter().flat_map(|v| v.to_le_bytes()).collect();
        kernel.extend_from_slice(&[0xf4; 4]);
        kernel
    }

    #[test]
    fn a_multiboot_kernel_takes_modules_as_qemu_lists_them() {
        let dir = dir_with("multiboot", &["m1.bin", "m2.bin", "x", "y"]);
        std::fs::write(dir.join("mb.elf"), multiboot_kernel()).unwrap();
        let file = dir.join("vm.toml");
        let text = "name = \"mb\"\nkernel = \"mb.elf\"\ncmdline = \"a b\"\ninitrd = \"m1.bin x=1,,2,m2.bin\"\n";
        std::fs::write(&file, text).unwrap();
        let c = parse(text, &file).unwrap();
        assert_eq!((c.format, c.kernel_name.as_str(), c.cmdline.as_str()), (Format::Multiboot, "mb.elf", "a b"));
        assert_eq!(
            c.modules,
            [(dir.join("m1.bin"), "m1.bin x=1,2".to_string()), (dir.join("m2.bin"), "m2.bin".into())]
        );
        assert_eq!(c.initrd, None);
        let vm = load(&file).unwrap();
        assert_eq!((vm.format, vm.modules.len(), vm.append.as_str()), (Format::Multiboot, 2, "a b"));
        let err = |text: &str| parse(text, &file).unwrap_err();
        assert!(err("name = \"mb\"\nkernel = \"mb.elf\"\nconsole = \"serial\"").contains("console: is for Linux"));
        assert!(err("name = \"mb\"\nkernel = \"mb.elf\"\ninitrd = \"m1.bin,nope.bin\"").contains("initrd: "));
        assert!(err("name = \"mb\"\nkernel = \"mb.elf\"\ninitrd = \" m1.bin\"").contains("no file name"));
        std::fs::write(dir.join("plain.elf"), b"\x7fELF").unwrap();
        let plain = parse("name = \"p\"\nkernel = \"plain.elf\"", &file).unwrap();
        assert_eq!((plain.format, plain.cmdline.as_str()), (Format::Elf, ""));
        assert!(err("name = \"p\"\nkernel = \"plain.elf\"\ncmdline = \"x\"").contains("cmdline: plain.elf is not"));
        assert!(err("name = \"p\"\nkernel = \"plain.elf\"\ninitrd = \"x\"").contains("initrd: plain.elf is not"));
        std::fs::write(dir.join("junk"), b"MZ").unwrap();
        assert!(
            err("name = \"j\"\nkernel = \"junk\"").contains("kernel: ")
                && err("name = \"j\"\nkernel = \"junk\"").contains("not a kernel Basalt can boot")
        );
    }

    #[test]
    fn a_full_file_resolves_paths_and_adds_the_console() {
        let dir = dir_with("full", &["bzImage", "initrd.cpio", "disk.img"]);
        let file = dir.join("vm.toml");
        let text = r#"
            name = "web"
            memory_mib = 128
            vcpus = 2
            kernel = "bzImage"
            initrd = "initrd.cpio"
            cmdline = "quiet"
            console = "virtio"
            [[disk]]
            path = "disk.img"
        "#;
        let c = parse(text, &file).unwrap();
        assert_eq!(c.kernel, Some(dir.join("bzImage")));
        assert_eq!(c.initrd, Some(dir.join("initrd.cpio")));
        assert_eq!(c.disks, vec![dir.join("disk.img")]);
        assert_eq!(c.cmdline, "console=hvc0 quiet");
        assert_eq!(c.vcpus, 2);
        let debian = parse("name = \"d\"\nkernel = \"debian\"\ncmdline = \"console=ttyS1\"", &file).unwrap();
        assert_eq!((debian.kernel, debian.cmdline.as_str(), debian.memory_mib), (None, "console=ttyS1", 256));
    }

    #[test]
    fn a_vmlinux_entry_is_chosen_by_name_and_makes_a_noteless_elf_a_vmlinux() {
        let dir = dir_with("linux-entry", &["bzImage"]);
        std::fs::write(dir.join("mb.elf"), multiboot_kernel()).unwrap();
        std::fs::write(dir.join("vmlinux"), b"\x7fELF").unwrap();
        let file = dir.join("vm.toml");
        let entry = |kernel: &str, choice: &str| {
            parse(&format!("name = \"v\"\nkernel = \"{kernel}\"\nlinux_entry = \"{choice}\""), &file)
        };
        let c = entry("vmlinux", "64bit").unwrap();
        assert_eq!((c.format, c.vmlinux_entry), (Format::Linux, VmlinuxEntry::Boot64));
        assert_eq!(c.cmdline, "console=ttyS0", "a Linux VM's console");
        assert_eq!(entry("debian", "pvh").unwrap().vmlinux_entry, VmlinuxEntry::Pvh);
        let plain = parse("name = \"v\"\nkernel = \"vmlinux\"", &file).unwrap();
        assert_eq!((plain.format, plain.vmlinux_entry), (Format::Elf, VmlinuxEntry::Preferred));
        assert!(entry("vmlinux", "32bit").unwrap_err().contains("linux_entry: must be \"pvh\" or \"64bit\""));
        assert!(entry("bzImage", "64bit").unwrap_err().contains("linux_entry: is for a vmlinux"));
        assert!(entry("mb.elf", "pvh").unwrap_err().contains("linux_entry: is for a vmlinux"));
    }

    #[test]
    fn lifecycle_fields_are_checked_by_name() {
        use loader::manifest::{Lifecycle, OnCrash};
        let dir = dir_with("lifecycle", &["k"]);
        let file = dir.join("vm.toml");
        let c = parse("name = \"x\"\nkernel = \"k\"", &file).unwrap();
        assert_eq!(c.lifecycle, Lifecycle::default(), "autostart, and a crash leaves it crashed");
        let text = "name = \"x\"\nkernel = \"k\"\nautostart = false\non_crash = \"restart\"\nrestart_limit = 5";
        let c = parse(text, &file).unwrap();
        assert_eq!(c.lifecycle, Lifecycle { autostart: false, on_crash: OnCrash::Restart { limit: 5 } });
        let restart = parse("name = \"x\"\nkernel = \"k\"\non_crash = \"restart\"", &file).unwrap();
        assert_eq!(restart.lifecycle.on_crash, OnCrash::Restart { limit: 3 });
        let err = |text: &str| parse(text, &file).unwrap_err();
        assert!(err("name = \"x\"\nkernel = \"k\"\non_crash = \"reboot\"").contains("on_crash: must be"));
        assert!(err("name = \"x\"\nkernel = \"k\"\nrestart_limit = 2").contains("only with on_crash"));
        assert!(err("name = \"x\"\nkernel = \"k\"\non_crash = \"restart\"\nrestart_limit = 0")
            .contains("restart_limit: 0 is outside"));
    }

    #[test]
    fn errors_name_the_field() {
        let dir = dir_with("errors", &["k"]);
        let file = dir.join("vm.toml");
        let err = |text: &str| parse(text, &file).unwrap_err();
        assert!(err("name = \"x\"\nkernel = \"k\"\ncolour = 1").contains("unknown field `colour`"));
        assert!(err("name = \"x\"").contains("missing field `kernel`"));
        assert!(err("name = \"a b\"\nkernel = \"k\"").contains("name: 'a b'"));
        assert!(
            err("name = \"x\"\nkernel = \"k\"\nmemory_mib = 8").contains("memory_mib: 8 is outside 16 to 4096 (MiB)")
        );
        assert!(err("name = \"x\"\nkernel = \"k\"\nmemory_mib = 4097").contains("memory_mib: 4097 is outside"));
        assert!(err("name = \"x\"\nkernel = \"k\"\nvcpus = 0").contains("vcpus: 0 is outside"));
        assert!(err("name = \"x\"\nkernel = \"k\"\nconsole = \"vga\"").contains("console: must be"));
        assert!(err("name = \"x\"\nkernel = \"nope\"").contains("kernel: "));
        assert!(err("name = \"x\"\nkernel = \"k\"\n[[disk]]\npath = \"missing.img\"").contains("disk[0].path: "));
        assert!(err("name = \"x\"\nkernel = \"k\"\nmemory_mib = \"lots\"").contains("vm.toml"));
    }

    #[test]
    fn memory_limits_are_the_vm_lists() {
        let dir = dir_with("memory", &["k"]);
        let file = dir.join("vm.toml");
        for mib in [loader::manifest::MIN_MEMORY_MIB, loader::manifest::MAX_MEMORY_MIB] {
            let config = parse(&format!("name = \"x\"\nkernel = \"k\"\nmemory_mib = {mib}"), &file).unwrap();
            assert_eq!(config.memory_mib, mib);
        }
        let below = loader::manifest::MIN_MEMORY_MIB - 1;
        assert!(parse(&format!("name = \"x\"\nkernel = \"k\"\nmemory_mib = {below}"), &file).is_err());
    }
}
