//! Guest images: building the test guests in tests/guests, turning an ELF into
//! a flat image, and packing VMs into the boot bundle the kernel reads.

use crate::setup;
use crate::workspace_root;
use loader::linux::VmlinuxEntry;
use loader::manifest::{Format, Mode, VmSpec};
use std::path::PathBuf;

/// Builds tests/guests (once per xtask run) and returns the directory of its binaries.
pub fn build() -> Result<PathBuf, String> {
    static BUILT: std::sync::OnceLock<Result<PathBuf, String>> = std::sync::OnceLock::new();
    BUILT
        .get_or_init(|| {
            let root = workspace_root();
            let target_dir = root.join("target/guests");
            let toolchain = setup::workspace_toolchain()?;
            // Run from tests/guests so its own .cargo/config.toml (target, static
            // relocation) applies.
            let status = crate::images::cargo(&toolchain)
                .args(["build", "--quiet", "--release", "--target-dir"])
                .arg(&target_dir)
                .current_dir(root.join("tests/guests"))
                .status()
                .map_err(|e| format!("cannot build the test guests: {e}"))?;
            if !status.success() {
                return Err("building the test guests failed".into());
            }
            Ok(target_dir.join(setup::KERNEL_TARGET).join("release"))
        })
        .clone()
}

/// The loadable bytes of an ELF as one flat image starting at its lowest
/// loadable address; returns (image, that address).
pub fn flatten_elf(elf: &[u8]) -> Result<(Vec<u8>, u64), String> {
    let parsed = loader::image::parse_elf(elf).map_err(|e| e.to_string())?;
    // Only file bytes go into a flat image (pure-BSS segments add none); the
    // loader ensures paddr + data length cannot wrap.
    let segments: Vec<_> = parsed.segments.iter().filter(|s| !s.data.is_empty()).collect();
    let start = segments.iter().map(|s| s.paddr).min().ok_or("the ELF has no loadable bytes")?;
    let end = segments.iter().map(|s| s.paddr + s.data.len() as u64).max().unwrap_or(start);
    // A flat image this large could never be loaded into a VM; refuse it before
    // allocating it.
    let max = u64::from(loader::manifest::MAX_MEMORY_MIB) << 20;
    let size = end - start;
    if size > max {
        return Err(format!(
            "the loadable bytes span {size:#x} bytes ({start:#x}..{end:#x}), more than a VM's {max:#x}"
        ));
    }
    let mut image = vec![0u8; size as usize];
    for segment in segments {
        let at = (segment.paddr - start) as usize;
        image[at..at + segment.data.len()].copy_from_slice(segment.data);
    }
    Ok((image, start))
}

/// A VM as a test case or the run command describes it.
#[derive(Clone, Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GuestVm {
    pub name: String,
    /// A binary of tests/guests.
    pub guest: String,
    /// "elf", "flat" (the ELF's loadable bytes) or "multiboot" (likewise, header inside).
    pub format: String,
    /// CPU mode of a flat image: "real", "protected" or "long".
    #[serde(default)]
    pub mode: Option<String>,
    #[serde(default = "default_memory")]
    pub memory_mib: u32,
    /// vCPUs (the guest starts the others itself, or leaves them waiting).
    #[serde(default = "default_vcpus")]
    pub vcpus: u32,
    #[serde(default = "default_time_limit")]
    pub time_limit_ms: u64,
    #[serde(default)]
    pub corrupt_guest_state: bool,
    /// Blank (zero-filled) virtio disks to give it, by size in MiB (a test
    /// guest drives them through the virtio-mmio registers itself).
    #[serde(default)]
    pub blank_disks_mib: Vec<u32>,
    /// Multiboot: the command line after the image's name, as QEMU's `-append`.
    #[serde(default)]
    pub append: Option<String>,
    /// Multiboot: modules as QEMU's `-initrd` takes them ([`split_module_list`]),
    /// file names relative to the repository root.
    #[serde(default)]
    pub initrd: Option<String>,
    /// The scheduler's share of a contended CPU, relative to other vCPUs'
    /// (1 to 65535; 256 when not given).
    #[serde(default)]
    pub weight: Option<u32>,
    /// At most this percent (1 to 100) of one host CPU per vCPU.
    #[serde(default)]
    pub cap: Option<u32>,
    /// The host CPUs its vCPUs may run on.
    #[serde(default)]
    pub cpus: Option<Vec<u32>>,
    /// Each vCPU owns a host CPU alone (the VM fails to start if none is free).
    #[serde(default)]
    pub dedicated: bool,
    /// Started at boot (default), or only from the management shell.
    #[serde(default)]
    pub autostart: Option<bool>,
    /// "stop" (default) or "restart": what follows a crash.
    #[serde(default)]
    pub on_crash: Option<String>,
    /// Crash restarts in a row with on_crash = "restart" (default 3).
    #[serde(default)]
    pub restart_limit: Option<u32>,
}

fn default_memory() -> u32 {
    16
}
fn default_vcpus() -> u32 {
    1
}
fn default_time_limit() -> u64 {
    10_000
}

/// A Linux guest as a test case describes it: Debian's kernel, a busybox
/// initramfs running `init` (a script in the repository) with `modules` from
/// the kernel package, and the kernel command line `append`. The kernel is
/// the vmlinux unpacked from Debian's bzImage, booted through its PVH entry,
/// unless `boot = "bzimage"` asks for the bzImage itself (which keeps that
/// boot path tested: the case `linux-2cpu` does).
#[derive(Clone, Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LinuxGuest {
    pub name: String,
    /// Path of the /init script, relative to the repository root.
    pub init: String,
    #[serde(default = "default_linux_memory")]
    pub memory_mib: u32,
    #[serde(default = "one")]
    pub vcpus: u32,
    #[serde(default = "default_linux_time_limit")]
    pub time_limit_ms: u64,
    #[serde(default = "default_append")]
    pub append: String,
    /// Kernel modules to carry, relative to lib/modules/VERSION.
    #[serde(default)]
    pub modules: Vec<String>,
    /// Blank (zero-filled) virtio disks to give it, by size in MiB.
    #[serde(default)]
    pub blank_disks_mib: Vec<u32>,
    /// Its COM1 is the host's serial console, input included (as in `run`).
    #[serde(default)]
    pub host_console: bool,
    /// Which of Debian's kernel files it boots.
    #[serde(default)]
    pub boot: KernelFile,
    /// The scheduler's share of a contended CPU, relative to other vCPUs'
    /// (1 to 65535; 256 when not given).
    #[serde(default)]
    pub weight: Option<u32>,
    /// At most this percent (1 to 100) of one host CPU per vCPU.
    #[serde(default)]
    pub cap: Option<u32>,
    /// The host CPUs its vCPUs may run on.
    #[serde(default)]
    pub cpus: Option<Vec<u32>>,
    /// Each vCPU owns a host CPU alone (the VM fails to start if none is free).
    #[serde(default)]
    pub dedicated: bool,
    /// Started at boot (default), or only from the management shell.
    #[serde(default)]
    pub autostart: Option<bool>,
    /// "stop" (default) or "restart": what follows a crash.
    #[serde(default)]
    pub on_crash: Option<String>,
    /// Crash restarts in a row with on_crash = "restart" (default 3).
    #[serde(default)]
    pub restart_limit: Option<u32>,
}

/// A VM's lifecycle fields, checked; errors name the field.
pub fn lifecycle(
    autostart: Option<bool>,
    on_crash: Option<&str>,
    restart_limit: Option<u32>,
) -> Result<loader::manifest::Lifecycle, String> {
    use loader::manifest::{Lifecycle, OnCrash, DEFAULT_RESTART_LIMIT, MAX_RESTART_LIMIT};
    let limit = restart_limit.unwrap_or(DEFAULT_RESTART_LIMIT);
    if !(1..=MAX_RESTART_LIMIT).contains(&limit) {
        return Err(format!("restart_limit: {limit} is outside 1 to {MAX_RESTART_LIMIT}"));
    }
    let on_crash = match on_crash {
        None | Some("stop") if restart_limit.is_some() => {
            return Err("restart_limit: only with on_crash = \"restart\"".into());
        }
        None | Some("stop") => OnCrash::Stop,
        Some("restart") => OnCrash::Restart { limit },
        Some(other) => return Err(format!("on_crash: must be \"stop\" or \"restart\", not \"{other}\"")),
    };
    Ok(Lifecycle { autostart: autostart.unwrap_or(true), on_crash })
}

/// A VM's scheduling fields, checked; errors name the field.
pub fn scheduling(
    weight: Option<u32>,
    cap: Option<u32>,
    cpus: Option<&[u32]>,
    dedicated: bool,
) -> Result<loader::manifest::Scheduling, String> {
    use loader::manifest::{Scheduling, MAX_HOST_CPUS, MAX_WEIGHT};
    let mut out = Scheduling { dedicated, ..Scheduling::default() };
    if let Some(weight) = weight {
        if !(1..=MAX_WEIGHT).contains(&weight) {
            return Err(format!("weight: {weight} is outside 1 to {MAX_WEIGHT}"));
        }
        out.weight = weight;
    }
    if let Some(cap) = cap {
        if !(1..=100).contains(&cap) {
            return Err(format!("cap: {cap} is outside 1 to 100 (percent of one CPU)"));
        }
        out.cap = Some(cap as u8);
    }
    if let Some(cpus) = cpus {
        if cpus.is_empty() {
            return Err("cpus: the list is empty (leave it out for any CPU)".into());
        }
        let mut set = 0u64;
        for &cpu in cpus {
            if cpu >= MAX_HOST_CPUS {
                return Err(format!("cpus: {cpu} is not a host CPU (0 to {})", MAX_HOST_CPUS - 1));
            }
            set |= 1 << cpu;
        }
        out.affinity = Some(set);
    }
    Ok(out)
}

/// The form of Debian's kernel a Linux guest boots.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KernelFile {
    /// The uncompressed kernel through its PVH entry: no decompressor to run
    /// in the guest, which under Bochs is most of the boot.
    #[default]
    Vmlinux,
    /// The uncompressed kernel through Linux's 64-bit boot protocol
    /// (`linux-entry=64bit`), as any vmlinux boots, PVH note or not.
    #[serde(rename = "vmlinux-64bit")]
    Vmlinux64Bit,
    /// The bzImage through its 64-bit entry, decompressing itself.
    Bzimage,
}

fn default_linux_memory() -> u32 {
    128
}
fn one() -> u32 {
    1
}
fn default_linux_time_limit() -> u64 {
    30 * 60 * 1000
}
fn default_append() -> String {
    "console=ttyS0".into()
}

/// Debian's kernel modules for virtio (disk and console) and ext2/3/4, in the
/// order an /init must load them (the package has no modules.dep).
/// The ACPI power button's driver and the input events it sends: what an
/// init needs to shut down when an operator's `shutdown` presses the button.
pub const POWER_BUTTON_MODULES: [&str; 2] = ["kernel/drivers/input/evdev.ko", "kernel/drivers/acpi/button.ko"];

pub const VIRTIO_AND_EXT4_MODULES: [&str; 10] = [
    "kernel/drivers/virtio/virtio_ring.ko",
    "kernel/drivers/virtio/virtio.ko",
    "kernel/drivers/virtio/virtio_mmio.ko",
    "kernel/drivers/block/virtio_blk.ko",
    "kernel/drivers/char/virtio_console.ko",
    "kernel/lib/crc16.ko",
    "kernel/crypto/crc32c_generic.ko",
    "kernel/fs/mbcache.ko",
    "kernel/fs/jbd2/jbd2.ko",
    "kernel/fs/ext4/ext4.ko",
];

/// Builds a test case's Linux guest: fetches Debian's kernel and busybox
/// (cached), packs the initramfs.
pub fn linux_vm(guest: &LinuxGuest) -> Result<LinuxVm, String> {
    let kernel_path = match guest.boot {
        KernelFile::Vmlinux | KernelFile::Vmlinux64Bit => crate::linux::debian_vmlinux()?,
        KernelFile::Bzimage => crate::linux::debian_kernel()?,
    };
    let kernel = std::fs::read(&kernel_path).map_err(|e| format!("cannot read {}: {e}", kernel_path.display()))?;
    let init_path = crate::workspace_root().join(&guest.init);
    let init = std::fs::read_to_string(&init_path)
        .map_err(|e| format!("Linux VM '{}': cannot read its init {}: {e}", guest.name, init_path.display()))?;
    let wanted: Vec<&str> = guest.modules.iter().map(String::as_str).collect();
    let modules = if wanted.is_empty() {
        Vec::new()
    } else {
        crate::initramfs::modules(&crate::linux::debian_modules(&wanted)?, &wanted)?
    };
    let initrd = crate::initramfs::busybox_initramfs(&init, modules)?;
    Ok(LinuxVm {
        name: guest.name.clone(),
        format: Format::Linux,
        kernel,
        kernel_name: kernel_path.display().to_string(),
        vmlinux_entry: match guest.boot {
            KernelFile::Vmlinux64Bit => VmlinuxEntry::Boot64,
            _ => VmlinuxEntry::Preferred,
        },
        initrd: Some(initrd),
        modules: Vec::new(),
        append: guest.append.clone(),
        memory_mib: guest.memory_mib,
        vcpus: guest.vcpus,
        time_limit_ms: guest.time_limit_ms,
        host_console: guest.host_console,
        disks: guest.blank_disks_mib.iter().map(|&mib| vec![0u8; (mib as usize) << 20]).collect(),
        scheduling: scheduling(guest.weight, guest.cap, guest.cpus.as_deref(), guest.dedicated)
            .map_err(|e| format!("Linux VM '{}': {e}", guest.name))?,
        lifecycle: lifecycle(guest.autostart, guest.on_crash.as_deref(), guest.restart_limit)
            .map_err(|e| format!("Linux VM '{}': {e}", guest.name))?,
    })
}

/// A VM booted from a kernel file for the bundle: a Linux bzImage or vmlinux
/// (Debian's, or one given to `run`), or a Multiboot or plain ELF kernel
/// given to `run`.
pub struct LinuxVm {
    pub name: String,
    /// The boot protocol, from the file ([`kernel_format`]).
    pub format: Format,
    pub kernel: Vec<u8>,
    /// The kernel's file name as given: a Multiboot kernel's argv[0] (its
    /// command line's first word, which QEMU makes the file name), through
    /// the name of its bundle entry.
    pub kernel_name: String,
    /// A vmlinux's entry (see `loader::linux::VmlinuxEntry`).
    pub vmlinux_entry: VmlinuxEntry,
    /// Linux only.
    pub initrd: Option<Vec<u8>>,
    /// Multiboot only: (string, bytes) per module, in order.
    pub modules: Vec<(String, Vec<u8>)>,
    /// Linux: the command line; Multiboot: what follows the kernel's name on it.
    pub append: String,
    pub memory_mib: u32,
    pub vcpus: u32,
    pub time_limit_ms: u64,
    /// Owns the host console (interactive runs; see loader's `host_console`).
    pub host_console: bool,
    /// Disk images, each a virtio-blk disk.
    pub disks: Vec<Vec<u8>>,
    pub scheduling: loader::manifest::Scheduling,
    pub lifecycle: loader::manifest::Lifecycle,
}

/// `bytes` packed for the boot bundle (`loader::packed`: a header and one
/// LZ4 block), for the kernel to unpack when it builds the VM. Everything the
/// BIOS boot reads costs about a second per MB under QEMU's TCG (0.6 s under
/// Bochs), and the bootloader reads at most 32 MiB: a vmlinux (35 MB as it
/// is) goes packed, and so do initrds and disks, which pack well (a blank
/// disk to almost nothing); unpacking them costs the kernel far less.
pub fn pack(bytes: &[u8]) -> Vec<u8> {
    let mut packed = loader::packed::header(bytes.len() as u64).to_vec();
    packed.extend(lz4_flex::block::compress(bytes));
    packed
}

/// The boot bundle for a command line and VMs: (VM list, image) entries as the
/// kernel expects them. Errors name the VM and what is wrong.
pub fn bundle(cmdline: &str, vms: &[GuestVm]) -> Result<Vec<u8>, String> {
    bundle_with_linux(cmdline, vms, &[])
}

pub fn bundle_with_linux(cmdline: &str, vms: &[GuestVm], linux: &[LinuxVm]) -> Result<Vec<u8>, String> {
    let mut entries = vec![("cmdline".to_string(), cmdline.as_bytes().to_vec())];
    let mut lines = Vec::new();
    for vm in linux {
        let spec = kernel_vm_spec(vm)?;
        lines.push(loader::manifest::render(&spec));
        // A vmlinux goes packed: as it is, it would not fit in a BIOS image.
        let image = match spec.format {
            Format::Linux if vm.kernel.starts_with(b"\x7fELF") => pack(&vm.kernel),
            _ => vm.kernel.clone(),
        };
        entries.push((spec.image.clone(), image));
        if let (Some(name), Some(initrd)) = (&spec.initrd, &vm.initrd) {
            entries.push((name.clone(), pack(initrd)));
        }
        if let (Some(name), false) = (&spec.initrd, vm.modules.is_empty()) {
            entries.push((name.clone(), loader::multiboot::pack_modules(&vm.modules)));
        }
        if let Some(name) = &spec.kernel_cmdline {
            entries.push((name.clone(), vm.append.as_bytes().to_vec()));
        }
        for (name, image) in spec.disks.iter().zip(&vm.disks) {
            if image.len() < 512 {
                return Err(format!("VM '{}': disk {name} is smaller than one 512-byte sector", vm.name));
            }
            entries.push((name.clone(), pack(image)));
        }
    }
    if !vms.is_empty() {
        let dir = build()?;
        for vm in vms {
            let elf_path = dir.join(&vm.guest);
            let elf = std::fs::read(&elf_path)
                .map_err(|_| format!("VM '{}': there is no test guest '{}' in tests/guests", vm.name, vm.guest))?;
            let (format, image, load) = match vm.format.as_str() {
                "elf" => (Format::Elf, elf, 0),
                "flat" | "multiboot" => {
                    let (image, load) = flatten_elf(&elf).map_err(|e| format!("VM '{}': {e}", vm.name))?;
                    (if vm.format == "flat" { Format::Flat } else { Format::Multiboot }, image, load)
                }
                other => return Err(format!("VM '{}': format must be elf, flat or multiboot, not '{other}'", vm.name)),
            };
            let mode = match vm.mode.as_deref() {
                None | Some("real") => Mode::Real,
                Some("protected") => Mode::Protected,
                Some("long") => Mode::Long,
                Some(other) => {
                    return Err(format!("VM '{}': mode must be real, protected or long, not '{other}'", vm.name))
                }
            };
            if format != Format::Multiboot && (vm.append.is_some() || vm.initrd.is_some()) {
                return Err(format!("VM '{}': append and initrd are for format \"multiboot\"", vm.name));
            }
            let modules = match &vm.initrd {
                Some(list) => {
                    read_modules(list, &crate::workspace_root()).map_err(|e| format!("VM '{}': {e}", vm.name))?
                }
                None => Vec::new(),
            };
            let image_name = format!("{}.img", vm.name);
            let spec = VmSpec {
                name: vm.name.clone(),
                image: image_name.clone(),
                format,
                mode,
                load,
                entry: load,
                memory_mib: vm.memory_mib,
                cpus: vm.vcpus,
                time_limit_ms: vm.time_limit_ms,
                corrupt_state: vm.corrupt_guest_state,
                host_console: false,
                vmlinux_entry: VmlinuxEntry::Preferred,
                scheduling: scheduling(vm.weight, vm.cap, vm.cpus.as_deref(), vm.dedicated)
                    .map_err(|e| format!("VM '{}': {e}", vm.name))?,
                lifecycle: lifecycle(vm.autostart, vm.on_crash.as_deref(), vm.restart_limit)
                    .map_err(|e| format!("VM '{}': {e}", vm.name))?,
                initrd: vm.initrd.as_ref().map(|_| format!("{}.modules", vm.name)),
                kernel_cmdline: vm.append.as_ref().map(|_| format!("{}.cmdline", vm.name)),
                disks: (0..vm.blank_disks_mib.len()).map(|i| format!("{}.disk{i}", vm.name)).collect(),
            };
            lines.push(loader::manifest::render(&spec));
            entries.push((image_name, image));
            if let Some(name) = &spec.initrd {
                entries.push((name.clone(), loader::multiboot::pack_modules(&modules)));
            }
            if let (Some(name), Some(append)) = (&spec.kernel_cmdline, &vm.append) {
                entries.push((name.clone(), append.as_bytes().to_vec()));
            }
            for (name, &mib) in spec.disks.iter().zip(&vm.blank_disks_mib) {
                if mib == 0 {
                    return Err(format!("VM '{}': a blank disk needs at least 1 MiB", vm.name));
                }
                entries.push((name.clone(), pack(&vec![0u8; (mib as usize) << 20])));
            }
        }
    }
    // The kernel finds entries by name; a kernel's file name could take
    // another entry's.
    for (i, (name, _)) in entries.iter().enumerate() {
        if entries[..i].iter().any(|(other, _)| other == name) {
            return Err(format!("two boot bundle entries would be named '{name}'; rename the kernel file or the VM"));
        }
    }
    if !lines.is_empty() {
        let list = lines.join("\n");
        // The kernel parses this again; checking here gives the error at build time.
        loader::parse_manifest(&list).map_err(|e| e.to_string())?;
        entries.push(("vms".to_string(), list.into_bytes()));
    }
    Ok(loader::bundle::write(&entries))
}

/// The boot protocol of a kernel file, from its bytes; the error names the file.
pub fn kernel_format(kernel: &[u8], path: &std::path::Path) -> Result<Format, String> {
    loader::detect_format(kernel).ok_or_else(|| {
        format!(
            "{} is not a kernel Basalt can boot: it has no Linux boot header (HdrS), no Multiboot header in its \
             first 8 KiB and no ELF magic",
            path.display()
        )
    })
}

/// The VM-list spec of a kernel VM, its image checked as far as the host can
/// (the kernel checks everything again; refusing a bad image here is quicker
/// and names the file): loaded into the VM's RAM with its command line,
/// initrd and modules, as the kernel will.
fn kernel_vm_spec(vm: &LinuxVm) -> Result<VmSpec, String> {
    let at = |e: loader::ImageError| format!("VM '{}': {}: {e}", vm.name, vm.kernel_name);
    let image = match vm.format {
        // Either Linux kernel file; the name says which, for the logs.
        Format::Linux if vm.kernel.starts_with(b"\x7fELF") => format!("{}.vmlinux", vm.name),
        Format::Linux => format!("{}.bzimage", vm.name),
        // A Multiboot kernel's argv[0] is its image's name: the file name as
        // given, made one word, as the VM list needs.
        _ => vm.kernel_name.split_whitespace().collect::<Vec<_>>().join("_"),
    };
    let image = if image.is_empty() { format!("{}.kernel", vm.name) } else { image };
    let spec = VmSpec {
        name: vm.name.clone(),
        image,
        format: vm.format,
        mode: Mode::Long,
        load: 0,
        entry: 0,
        memory_mib: vm.memory_mib,
        cpus: vm.vcpus,
        time_limit_ms: vm.time_limit_ms,
        corrupt_state: false,
        host_console: vm.host_console,
        vmlinux_entry: vm.vmlinux_entry,
        scheduling: vm.scheduling,
        lifecycle: vm.lifecycle,
        initrd: match vm.format {
            Format::Linux => vm.initrd.as_ref().map(|_| format!("{}.initrd", vm.name)),
            _ => (!vm.modules.is_empty()).then(|| format!("{}.modules", vm.name)),
        },
        kernel_cmdline: (vm.format != Format::Elf).then(|| format!("{}.cmdline", vm.name)),
        disks: (0..vm.disks.len()).map(|i| format!("{}.disk{i}", vm.name)).collect(),
    };
    if vm.format == Format::Flat {
        return Err(format!("VM '{}': {} is a flat image, not a kernel", vm.name, vm.kernel_name));
    }
    if vm.format == Format::Elf && (!vm.append.is_empty() || vm.initrd.is_some() || !vm.modules.is_empty()) {
        return Err(format!(
            "VM '{}': {} is an ELF kernel without a Multiboot header, which has no way to take a command line or \
             modules (--append, --initrd)",
            vm.name, vm.kernel_name
        ));
    }
    let modules: Vec<loader::Module> =
        vm.modules.iter().map(|(string, data)| loader::Module { data, string }).collect();
    let ram = loader::GuestRam::of_size(u64::from(vm.memory_mib) << 20, loader::image::VMM_SETUP_AREA)
        .ok_or_else(|| format!("VM '{}': {} MiB is too small", vm.name, vm.memory_mib))?;
    let extras = loader::Extras {
        name: &spec.image,
        cmdline: &vm.append,
        modules: &modules,
        initrd: vm.initrd.as_deref(),
        ..Default::default()
    };
    loader::load(&vm.kernel, &spec, ram, extras).map_err(at)?;
    Ok(spec)
}

/// QEMU's `-initrd` for a Multiboot kernel: modules separated by commas (a
/// doubled comma is a comma inside one), each a file name, then optionally a
/// space and its arguments. Returns (file, string) per module: the string the
/// kernel gets is the whole item, file name included, as QEMU passes it.
pub fn split_module_list(text: &str) -> Result<Vec<(String, String)>, String> {
    let mut items = vec![String::new()];
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            ',' if chars.peek() == Some(&',') => {
                chars.next();
                items.last_mut().expect("never empty").push(',');
            }
            ',' => items.push(String::new()),
            c => items.last_mut().expect("never empty").push(c),
        }
    }
    items
        .into_iter()
        .enumerate()
        .map(|(i, item)| match item.split(' ').next() {
            Some(file) if !file.is_empty() => Ok((file.to_string(), item)),
            _ => Err(format!("module {} ('{item}') has no file name before its first space", i + 1)),
        })
        .collect()
}

/// The modules `text` lists ([`split_module_list`]), read from files relative
/// to `base`, as (string, bytes).
pub fn read_modules(text: &str, base: &std::path::Path) -> Result<Vec<(String, Vec<u8>)>, String> {
    let modules = split_module_list(text)?;
    let max = loader::multiboot::MAX_MODULES;
    if modules.len() > max {
        return Err(format!("{} modules; at most {max} are taken", modules.len()));
    }
    modules
        .into_iter()
        .map(|(file, string)| {
            let path = base.join(&file);
            let bytes =
                std::fs::read(&path).map_err(|e| format!("module '{file}': cannot read {}: {e}", path.display()))?;
            Ok((string, bytes))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An x86-64 executable with one PT_LOAD segment per (file offset, paddr,
    /// size), the given bytes following the program headers.
    fn elf64(segments: &[(u64, u64, u64)], bytes: &[u8]) -> Vec<u8> {
        let mut elf = vec![0u8; 64 + segments.len() * 56];
        elf[..4].copy_from_slice(b"\x7fELF");
        elf[4] = 2;
        elf[5] = 1;
        elf[6] = 1;
        elf[16..18].copy_from_slice(&2u16.to_le_bytes()); // ET_EXEC
        elf[18..20].copy_from_slice(&62u16.to_le_bytes()); // x86-64
        elf[32..40].copy_from_slice(&64u64.to_le_bytes());
        elf[54..56].copy_from_slice(&56u16.to_le_bytes());
        elf[56..58].copy_from_slice(&(segments.len() as u16).to_le_bytes());
        for (i, &(offset, paddr, size)) in segments.iter().enumerate() {
            let p = 64 + i * 56;
            elf[p..p + 4].copy_from_slice(&1u32.to_le_bytes());
            elf[p + 8..p + 16].copy_from_slice(&offset.to_le_bytes());
            elf[p + 24..p + 32].copy_from_slice(&paddr.to_le_bytes());
            elf[p + 32..p + 40].copy_from_slice(&size.to_le_bytes());
            elf[p + 40..p + 48].copy_from_slice(&size.to_le_bytes());
        }
        elf.extend_from_slice(bytes);
        elf
    }

    #[test]
    fn module_lists_split_as_qemu_splits_them() {
        let split = |text: &str| split_module_list(text);
        let pair = |file: &str, string: &str| (file.to_string(), string.to_string());
        assert_eq!(split("a.bin"), Ok(vec![pair("a.bin", "a.bin")]));
        assert_eq!(
            split("mods/a.bin x=1 y,b.bin,c"),
            Ok(vec![pair("mods/a.bin", "mods/a.bin x=1 y"), pair("b.bin", "b.bin"), pair("c", "c")])
        );
        // A doubled comma is one comma in the item, in arguments or file names.
        assert_eq!(
            split("bzImage earlyprintk=xen,,keep root=/dev/xvda1,initrd.img"),
            Ok(vec![pair("bzImage", "bzImage earlyprintk=xen,keep root=/dev/xvda1"), pair("initrd.img", "initrd.img")])
        );
        assert_eq!(split("a,,b"), Ok(vec![pair("a,b", "a,b")]));
        assert_eq!(split("a,"), Err("module 2 ('') has no file name before its first space".into()));
        assert_eq!(split(""), Err("module 1 ('') has no file name before its first space".into()));
        assert_eq!(split("a, b"), Err("module 2 (' b') has no file name before its first space".into()));
    }

    /// A Multiboot kernel at 1 MiB (the header's address fields).
    fn multiboot_kernel() -> Vec<u8> {
        let (magic, flags, load) = (0x1bad_b002u32, 1u32 << 16, 0x10_0000u32);
        let fields = [magic, flags, 0u32.wrapping_sub(magic).wrapping_sub(flags), load, load, load + 36, 0, load + 32];
        let mut kernel: Vec<u8> = fields.iter().flat_map(|v| v.to_le_bytes()).collect();
        kernel.extend_from_slice(&[0xf4; 4]);
        kernel
    }

    fn kernel_vm(format: Format, kernel: Vec<u8>, append: &str, modules: Vec<(String, Vec<u8>)>) -> LinuxVm {
        LinuxVm {
            name: "k".into(),
            format,
            kernel,
            kernel_name: "dir/my kernel.elf".into(),
            vmlinux_entry: Default::default(),
            initrd: None,
            modules,
            append: append.into(),
            memory_mib: 16,
            vcpus: 1,
            time_limit_ms: 1000,
            host_console: true,
            disks: Vec::new(),
            scheduling: Default::default(),
            lifecycle: Default::default(),
        }
    }

    #[test]
    fn a_multiboot_kernel_goes_into_the_bundle_with_its_modules_and_command_line() {
        let modules = vec![("m.txt a".to_string(), b"one".to_vec()), ("m.txt a".to_string(), b"two".to_vec())];
        let vm = kernel_vm(Format::Multiboot, multiboot_kernel(), "x y", modules);
        let bytes = bundle_with_linux("", &[], &[vm]).unwrap();
        let bundle = loader::Bundle::parse(&bytes).unwrap();
        let list = std::str::from_utf8(bundle.get("vms").unwrap()).unwrap();
        let spec = &loader::parse_manifest(list).unwrap()[0];
        // The file name as given, one word: the kernel's argv[0].
        assert_eq!((spec.format, spec.image.as_str()), (Format::Multiboot, "dir/my_kernel.elf"));
        assert_eq!(bundle.get(&spec.image), Some(&multiboot_kernel()[..]));
        assert_eq!(bundle.get(spec.kernel_cmdline.as_deref().unwrap()), Some(&b"x y"[..]));
        let packed = bundle.get(spec.initrd.as_deref().unwrap()).unwrap();
        let unpacked = loader::multiboot::unpack_modules(packed).unwrap();
        let unpacked: Vec<(&str, &[u8])> = unpacked.iter().map(|m| (m.string, m.data)).collect();
        assert_eq!(unpacked, [("m.txt a", &b"one"[..]), ("m.txt a", &b"two"[..])]);
    }

    /// What a packed bundle entry holds.
    fn unpacked(entry: &[u8]) -> Vec<u8> {
        let size = loader::packed::unpacked_size(entry).expect("a packed entry").unwrap();
        let mut out = vec![0u8; size as usize];
        loader::packed::unpack_into(entry, &mut out).unwrap();
        out
    }

    #[test]
    fn a_vmlinux_its_initrd_and_disks_go_into_the_bundle_packed() {
        let kernel = crate::vmlinux::tests::vmlinux();
        let mut vm = kernel_vm(Format::Linux, kernel.clone(), "console=ttyS0", Vec::new());
        vm.memory_mib = 64;
        vm.initrd = Some(b"070701 an initramfs".to_vec());
        vm.disks = vec![vec![0u8; 1 << 20]];
        let bytes = bundle_with_linux("", &[], &[vm]).unwrap();
        let bundle = loader::Bundle::parse(&bytes).unwrap();
        let spec = &loader::parse_manifest(std::str::from_utf8(bundle.get("vms").unwrap()).unwrap()).unwrap()[0];
        assert_eq!((spec.format, spec.image.as_str()), (Format::Linux, "k.vmlinux"));
        assert_eq!(unpacked(bundle.get(&spec.image).unwrap()), kernel);
        assert_eq!(unpacked(bundle.get(spec.initrd.as_deref().unwrap()).unwrap()), b"070701 an initramfs");
        let disk = bundle.get(&spec.disks[0]).unwrap();
        assert!(disk.len() < 8192, "a blank MiB packs to {} bytes", disk.len());
        assert_eq!(unpacked(disk), vec![0u8; 1 << 20]);
        // The command line stays as it is; the kernel reads it as text.
        assert_eq!(bundle.get(spec.kernel_cmdline.as_deref().unwrap()), Some(&b"console=ttyS0"[..]));
    }

    #[test]
    fn kernels_are_checked_before_anything_boots() {
        let mut elf = elf64(&[(64 + 56, 0x20_0000, 1)], &[0xf4]);
        elf[24..32].copy_from_slice(&0x20_0000u64.to_le_bytes()); // e_entry
        assert_eq!(kernel_format(&elf, std::path::Path::new("k")), Ok(Format::Elf));
        assert_eq!(kernel_format(&multiboot_kernel(), std::path::Path::new("k")), Ok(Format::Multiboot));
        assert!(kernel_format(b"MZ", std::path::Path::new("dos.exe"))
            .unwrap_err()
            .starts_with("dos.exe is not a kernel"));
        // A plain ELF runs, but has no way to take a command line or modules.
        assert!(bundle_with_linux("", &[], &[kernel_vm(Format::Elf, elf.clone(), "", Vec::new())]).is_ok());
        let err = bundle_with_linux("", &[], &[kernel_vm(Format::Elf, elf, "quiet", Vec::new())]).unwrap_err();
        assert!(err.contains("an ELF kernel without a Multiboot header"), "{err}");
        // The loader's refusals come out naming the VM and the file.
        let huge = vec![("big".to_string(), vec![0u8; 16 << 20])];
        let err =
            bundle_with_linux("", &[], &[kernel_vm(Format::Multiboot, multiboot_kernel(), "", huge)]).unwrap_err();
        assert!(err.starts_with("VM 'k': dir/my kernel.elf: no room for module 1"), "{err}");
        // A kernel file named like another entry.
        let mut clash = kernel_vm(Format::Multiboot, multiboot_kernel(), "", Vec::new());
        clash.kernel_name = "k.cmdline".into();
        assert!(bundle_with_linux("", &[], &[clash]).unwrap_err().contains("two boot bundle entries would be named"));
    }

    #[test]
    fn flattening_lays_segments_out_from_the_lowest_address() {
        // Two PT_LOAD segments: 2 bytes at 0x1000 and 1 byte at 0x1004.
        let data_at = 64 + 2 * 56;
        let elf = elf64(&[(data_at, 0x1000, 2), (data_at + 2, 0x1004, 1)], &[0xaa, 0xbb, 0xcc]);
        assert_eq!(flatten_elf(&elf), Ok((vec![0xaa, 0xbb, 0, 0, 0xcc], 0x1000)));
        assert_eq!(flatten_elf(b"MZ"), Err("not an ELF file (bad magic)".into()));
    }

    #[test]
    fn segment_data_past_the_end_of_the_file_is_an_error() {
        let data_at = 64 + 56;
        for (offset, size) in [(data_at, 4), (u64::MAX - 1, 4), (data_at, 1 << 40)] {
            let elf = elf64(&[(offset, 0x1000, size)], &[0x90; 3]);
            assert_eq!(
                flatten_elf(&elf),
                Err("the image is truncated: a segment's data (p_offset, p_filesz) lies past its end".into()),
                "p_offset {offset:#x}, p_filesz {size:#x}"
            );
        }
    }

    #[test]
    fn program_headers_near_the_top_of_the_address_space_are_an_error() {
        let mut elf = elf64(&[(64 + 56, 0x1000, 1)], &[0x90]);
        elf[32..40].copy_from_slice(&(u64::MAX - 2).to_le_bytes());
        assert_eq!(
            flatten_elf(&elf),
            Err("the image is truncated: the program headers (e_phoff, e_phnum) lie past its end".into())
        );
    }

    #[test]
    fn a_segment_wrapping_past_2_64_is_an_error() {
        let elf = elf64(&[(64 + 56, u64::MAX - 1, 4)], &[0x90; 4]);
        assert_eq!(flatten_elf(&elf), Err("unsupported ELF: a segment runs past the top of the address space".into()));
    }

    #[test]
    fn segments_further_apart_than_a_vm_is_large_are_an_error() {
        let data_at = 64 + 2 * 56;
        for high in [0x1_0000_0000u64, u64::MAX - 0x1000] {
            let elf = elf64(&[(data_at, 0, 1), (data_at + 1, high, 1)], &[0x90, 0x90]);
            let err = flatten_elf(&elf).unwrap_err();
            assert!(err.starts_with("the loadable bytes span"), "{err}");
        }
    }
}
