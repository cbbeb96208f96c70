//! A VM described in TOML (`cargo xtask run --vm PATH.toml`), checked here on
//! the host so a mistake is reported naming the field before anything boots:
//!
//! ```toml
//! name = "web"
//! memory_mib = 256
//! vcpus = 1
//! kernel = "debian"          # or a bzImage path
//! initrd = "initrd.cpio"     # optional
//! cmdline = "quiet"          # optional; console= is added for `console`
//! console = "serial"         # "serial" (ttyS0) or "virtio" (hvc0)
//! [[disk]]
//! path = "disk.img"
//! ```
//!
//! Relative paths are relative to the TOML file.

use crate::guests::LinuxVm;
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
    initrd: Option<String>,
    #[serde(default)]
    cmdline: String,
    #[serde(default = "serial")]
    console: String,
    #[serde(default)]
    disk: Vec<Disk>,
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
fn serial() -> String {
    "serial".into()
}

/// What a VM file asks for, with paths resolved and values checked.
#[derive(Debug, PartialEq, Eq)]
pub struct VmConfig {
    pub name: String,
    pub memory_mib: u32,
    pub vcpus: u32,
    pub kernel: Option<PathBuf>,
    pub initrd: Option<PathBuf>,
    pub cmdline: String,
    pub disks: Vec<PathBuf>,
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
    let console = match vm.console.as_str() {
        "serial" => "console=ttyS0",
        "virtio" => "console=hvc0",
        other => return Err(at("console", format!("must be \"serial\" or \"virtio\", not \"{other}\""))),
    };
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
    let initrd = vm.initrd.as_deref().map(|p| existing("initrd", p)).transpose()?;
    let disks = vm
        .disk
        .iter()
        .enumerate()
        .map(|(i, d)| existing(&format!("disk[{i}].path"), &d.path))
        .collect::<Result<Vec<_>, _>>()?;
    let cmdline = if vm.cmdline.split_whitespace().any(|w| w.starts_with("console=")) {
        vm.cmdline.clone()
    } else {
        format!("{console} {}", vm.cmdline).trim().to_owned()
    };
    Ok(VmConfig { name: vm.name, memory_mib: vm.memory_mib, vcpus: vm.vcpus, kernel, initrd, cmdline, disks })
}

/// Reads the file and everything it names into a Linux VM for the bundle.
pub fn load(file: &Path) -> Result<LinuxVm, String> {
    let text = std::fs::read_to_string(file).map_err(|e| format!("cannot read {}: {e}", file.display()))?;
    let config = parse(&text, file)?;
    let read = |p: &Path| std::fs::read(p).map_err(|e| format!("cannot read {}: {e}", p.display()));
    let kernel_path = match config.kernel {
        Some(path) => path,
        None => crate::linux::debian_kernel()?,
    };
    Ok(LinuxVm {
        name: config.name,
        kernel: read(&kernel_path)?,
        initrd: config.initrd.as_deref().map(read).transpose()?,
        append: config.cmdline,
        memory_mib: config.memory_mib,
        vcpus: config.vcpus,
        time_limit_ms: 24 * 3600 * 1000,
        host_console: true,
        disks: config.disks.iter().map(|p| read(p)).collect::<Result<_, _>>()?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir_with(files: &[&str]) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("basalt-vmconfig-{}-{}", std::process::id(), files.len()));
        std::fs::create_dir_all(&dir).unwrap();
        for f in files {
            std::fs::write(dir.join(f), [0u8; 512]).unwrap();
        }
        dir
    }

    #[test]
    fn a_full_file_resolves_paths_and_adds_the_console() {
        let dir = dir_with(&["bzImage", "initrd.cpio", "disk.img"]);
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
    fn errors_name_the_field() {
        let dir = dir_with(&["k"]);
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
        let dir = dir_with(&["k"]);
        let file = dir.join("vm.toml");
        for mib in [loader::manifest::MIN_MEMORY_MIB, loader::manifest::MAX_MEMORY_MIB] {
            let config = parse(&format!("name = \"x\"\nkernel = \"k\"\nmemory_mib = {mib}"), &file).unwrap();
            assert_eq!(config.memory_mib, mib);
        }
        let below = loader::manifest::MIN_MEMORY_MIB - 1;
        assert!(parse(&format!("name = \"x\"\nkernel = \"k\"\nmemory_mib = {below}"), &file).is_err());
    }
}
