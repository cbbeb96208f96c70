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
                cpus: vm.vcpus,
                time_limit_ms: vm.time_limit_ms,
                corrupt_state: vm.corrupt_guest_state,
                host_console: false,
                initrd: None,
                kernel_cmdline: None,
                disks: (0..vm.blank_disks_mib.len()).map(|i| format!("{}.disk{i}", vm.name)).collect(),
            };
            lines.push(loader::manifest::render(&spec));
            entries.push((image_name, image));
            for (name, &mib) in spec.disks.iter().zip(&vm.blank_disks_mib) {
                if mib == 0 {
                    return Err(format!("VM '{}': a blank disk needs at least 1 MiB", vm.name));
                }
                entries.push((name.clone(), vec![0u8; (mib as usize) << 20]));
            }
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
