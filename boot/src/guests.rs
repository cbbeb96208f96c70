//! Guest images: building the test guests in tests/guests, turning an ELF into
//! a flat image, and packing VMs into the boot bundle the kernel reads.

use crate::setup;
use crate::workspace_root;
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
    let u16_at = |at: usize| elf.get(at..at + 2).map(|b| u16::from_le_bytes(b.try_into().unwrap()));
    let u32_at = |at: usize| elf.get(at..at + 4).map(|b| u32::from_le_bytes(b.try_into().unwrap()));
    let u64_at = |at: usize| elf.get(at..at + 8).map(|b| u64::from_le_bytes(b.try_into().unwrap()));
    if !elf.starts_with(b"\x7fELF") || elf.get(4) != Some(&2) {
        return Err("not an ELF64 file".into());
    }
    let bad = || "truncated ELF".to_string();
    let phoff = u64_at(32).ok_or_else(bad)? as usize;
    let phentsize = u16_at(54).ok_or_else(bad)? as usize;
    let phnum = u16_at(56).ok_or_else(bad)? as usize;
    let mut segments = Vec::new();
    for i in 0..phnum {
        let at = phoff + i * phentsize;
        if u32_at(at).ok_or_else(bad)? != 1 {
            continue;
        }
        let (offset, paddr, filesz) =
            (u64_at(at + 8).ok_or_else(bad)?, u64_at(at + 24).ok_or_else(bad)?, u64_at(at + 32).ok_or_else(bad)?);
        if filesz > 0 {
            segments.push((paddr, &elf[offset as usize..(offset + filesz) as usize]));
        }
    }
    let start = segments.iter().map(|(p, _)| *p).min().ok_or("no loadable segments")?;
    let end = segments.iter().map(|(p, d)| p + d.len() as u64).max().unwrap();
    let mut image = vec![0u8; (end - start) as usize];
    for (paddr, data) in segments {
        let at = (paddr - start) as usize;
        image[at..at + data.len()].copy_from_slice(data);
    }
    Ok((image, start))
}

/// A VM as a test case or the run command describes it.
#[derive(Clone, Debug, serde::Deserialize)]
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
    #[serde(default = "default_time_limit")]
    pub time_limit_ms: u64,
    #[serde(default)]
    pub corrupt_guest_state: bool,
}

fn default_memory() -> u32 {
    16
}
fn default_time_limit() -> u64 {
    10_000
}

/// A Linux guest as a test case describes it: Debian's kernel, a busybox
/// initramfs running `init` (a script in the repository) with `modules` from
/// the kernel package, and the kernel command line `append`.
#[derive(Clone, Debug, serde::Deserialize)]
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
    let kernel_path = crate::linux::debian_kernel()?;
    let kernel = std::fs::read(&kernel_path).map_err(|e| format!("cannot read {}: {e}", kernel_path.display()))?;
    let init_path = crate::workspace_root().join(&guest.init);
    let init = std::fs::read_to_string(&init_path)
        .map_err(|e| format!("Linux VM '{}': cannot read its init {}: {e}", guest.name, init_path.display()))?;
    let wanted: Vec<&str> = guest.modules.iter().map(String::as_str).collect();
    let modules = if wanted.is_empty() {
        Vec::new()
    } else {
        crate::initramfs::modules(&crate::linux::debian_modules()?, &wanted)?
    };
    let initrd = crate::initramfs::busybox_initramfs(&init, modules)?;
    Ok(LinuxVm {
        name: guest.name.clone(),
        kernel,
        initrd: Some(initrd),
        append: guest.append.clone(),
        memory_mib: guest.memory_mib,
        vcpus: guest.vcpus,
        time_limit_ms: guest.time_limit_ms,
        host_console: guest.host_console,
        disks: guest.blank_disks_mib.iter().map(|&mib| vec![0u8; (mib as usize) << 20]).collect(),
    })
}

/// A Linux VM for the bundle: its VM-list spec and the entries it names.
pub struct LinuxVm {
    pub name: String,
    pub kernel: Vec<u8>,
    pub initrd: Option<Vec<u8>>,
    pub append: String,
    pub memory_mib: u32,
    pub vcpus: u32,
    pub time_limit_ms: u64,
    /// Owns the host console (interactive runs; see loader's `host_console`).
    pub host_console: bool,
    /// Disk images, each a virtio-blk disk.
    pub disks: Vec<Vec<u8>>,
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
        let spec = VmSpec {
            name: vm.name.clone(),
            image: format!("{}.bzimage", vm.name),
            format: Format::Linux,
            mode: Mode::Long,
            load: 0,
            entry: 0,
            memory_mib: vm.memory_mib,
            cpus: vm.vcpus,
            time_limit_ms: vm.time_limit_ms,
            corrupt_state: false,
            host_console: vm.host_console,
            initrd: vm.initrd.as_ref().map(|_| format!("{}.initrd", vm.name)),
            kernel_cmdline: Some(format!("{}.cmdline", vm.name)),
            disks: (0..vm.disks.len()).map(|i| format!("{}.disk{i}", vm.name)).collect(),
        };
        // The kernel checks the image again; refusing a bad one here is quicker.
        loader::linux::parse(&vm.kernel).map_err(|e| format!("VM '{}': {e}", vm.name))?;
        lines.push(loader::manifest::render(&spec));
        entries.push((spec.image.clone(), vm.kernel.clone()));
        if let (Some(name), Some(initrd)) = (&spec.initrd, &vm.initrd) {
            entries.push((name.clone(), initrd.clone()));
        }
        entries.push((format!("{}.cmdline", vm.name), vm.append.as_bytes().to_vec()));
        for (name, image) in spec.disks.iter().zip(&vm.disks) {
            if image.len() < 512 {
                return Err(format!("VM '{}': disk {name} is smaller than one 512-byte sector", vm.name));
            }
            entries.push((name.clone(), image.clone()));
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
            let image_name = format!("{}.img", vm.name);
            let spec = VmSpec {
                name: vm.name.clone(),
                image: image_name.clone(),
                format,
                mode,
                load,
                entry: load,
                memory_mib: vm.memory_mib,
                cpus: 1,
                time_limit_ms: vm.time_limit_ms,
                corrupt_state: vm.corrupt_guest_state,
                host_console: false,
                initrd: None,
                kernel_cmdline: None,
                disks: Vec::new(),
            };
            lines.push(loader::manifest::render(&spec));
            entries.push((image_name, image));
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flattening_lays_segments_out_from_the_lowest_address() {
        // Two PT_LOAD segments: 2 bytes at 0x1000 and 1 byte at 0x1004.
        let mut elf = vec![0u8; 64 + 2 * 56];
        elf[..4].copy_from_slice(b"\x7fELF");
        elf[4] = 2;
        elf[32..40].copy_from_slice(&64u64.to_le_bytes());
        elf[54..56].copy_from_slice(&56u16.to_le_bytes());
        elf[56..58].copy_from_slice(&2u16.to_le_bytes());
        let data_at = elf.len() as u64;
        elf.extend_from_slice(&[0xaa, 0xbb, 0xcc]);
        for (i, (offset, paddr, size)) in [(data_at, 0x1000u64, 2u64), (data_at + 2, 0x1004, 1)].into_iter().enumerate()
        {
            let p = 64 + i * 56;
            elf[p..p + 4].copy_from_slice(&1u32.to_le_bytes());
            elf[p + 8..p + 16].copy_from_slice(&offset.to_le_bytes());
            elf[p + 24..p + 32].copy_from_slice(&paddr.to_le_bytes());
            elf[p + 32..p + 40].copy_from_slice(&size.to_le_bytes());
        }
        assert_eq!(flatten_elf(&elf), Ok((vec![0xaa, 0xbb, 0, 0, 0xcc], 0x1000)));
        assert!(flatten_elf(b"MZ").is_err());
    }
}
