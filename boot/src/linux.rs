//! Debian's stock kernel as a guest: found with apt, fetched with
//! `apt-get download`, unpacked with `dpkg-deb`, cached under target/linux;
//! likewise busybox-static for the test initramfs. The vmlinux inside its
//! bzImage, which VMs boot through the PVH entry, is unpacked once and cached
//! there too (target/linux/vmlinux/).

use crate::workspace_root;
use std::path::{Path, PathBuf};
use std::process::Command;

fn run(program: &str, args: &[&str], dir: &Path) -> Result<String, String> {
    let out =
        Command::new(program).args(args).current_dir(dir).output().map_err(|e| format!("cannot run {program}: {e}"))?;
    if !out.status.success() {
        return Err(format!("{program} {} failed: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim()));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// What `apt-cache depends` says, after fetching package lists if a fresh
/// machine has none yet.
fn depends(package: &str, dir: &Path) -> Result<String, String> {
    let query = |dir| run("apt-cache", &["depends", package], dir);
    match query(dir) {
        Ok(t) if t.contains("Depends:") => Ok(t),
        _ => {
            update_lists(dir)?;
            query(dir)
        }
    }
}

fn update_lists(dir: &Path) -> Result<(), String> {
    run("apt-get", &["update", "-q"], dir)
        .map(|_| ())
        .map_err(|e| format!("{e}\n(as a non-root user, run: sudo apt-get update)"))
}

/// The versioned package `linux-image-amd64` currently points to.
fn kernel_package_name(dir: &Path) -> Result<String, String> {
    depends("linux-image-amd64", dir)?
        .lines()
        .filter_map(|l| l.trim().strip_prefix("Depends: "))
        .find(|p| p.starts_with("linux-image-") && p.ends_with("-amd64"))
        .map(str::to_owned)
        .ok_or_else(|| "apt names no linux-image-*-amd64 package for linux-image-amd64".into())
}

/// Downloads `package` with apt-get into `dir`; returns the .deb's path.
fn download_package(package: &str, dir: &Path) -> Result<PathBuf, String> {
    std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
    let download = || run("apt-get", &["download", "-q", package], dir);
    if download().is_err() {
        update_lists(dir)?;
        download()?;
    }
    std::fs::read_dir(dir)
        .map_err(|e| e.to_string())?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| {
            let name = p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            name.starts_with(&format!("{package}_")) && name.ends_with(".deb")
        })
        .ok_or_else(|| format!("apt-get download left no {package}_*.deb"))
}

/// Downloads `package` with apt-get and unpacks all of it into `into` (once;
/// the caller checks for what it needs first).
fn unpack_package(package: &str, into: &Path) -> Result<(), String> {
    let dir = into.parent().ok_or("no parent directory")?;
    let deb = download_package(package, dir)?;
    let result = run("dpkg-deb", &["-x", &deb.to_string_lossy(), &into.to_string_lossy()], dir);
    let _ = std::fs::remove_file(&deb);
    result.map(|_| ())
}

/// Unpacks only `members` (paths as the package's tar names them, "./boot")
/// of `deb` into `into`: `dpkg-deb --fsys-tarfile` piped into tar.
fn unpack_members(deb: &Path, into: &Path, members: &[String]) -> Result<(), String> {
    use std::process::Stdio;
    std::fs::create_dir_all(into).map_err(|e| format!("cannot create {}: {e}", into.display()))?;
    let mut package = Command::new("dpkg-deb")
        .arg("--fsys-tarfile")
        .arg(deb)
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run dpkg-deb: {e}"))?;
    let tarfile = package.stdout.take().ok_or("dpkg-deb gave no output")?;
    let tar = Command::new("tar")
        .arg("-x")
        .arg("-C")
        .arg(into)
        .args(members)
        .stdin(tarfile)
        .stderr(Stdio::piped())
        .output()
        .map_err(|e| format!("cannot run tar: {e}"))?;
    // tar stops reading once it has all members; dpkg-deb then ends on a broken pipe.
    let _ = package.wait();
    if !tar.status.success() {
        return Err(format!(
            "unpacking {} from {} failed: {}",
            members.join(" "),
            deb.display(),
            String::from_utf8_lossy(&tar.stderr).trim()
        ));
    }
    Ok(())
}

/// Debian's kernel package, kept whole as target/linux/kernel.deb (~70 MB)
/// while only its boot/ and the modules guests ask for are unpacked: all its
/// modules would take ~400 MB of disk.
const KERNEL_DEB: &str = "kernel.deb";

/// The directory holding Debian's current amd64 kernel package, with its
/// boot/ unpacked, downloading it once.
fn kernel_package() -> Result<PathBuf, String> {
    let root = workspace_root().join("target/linux");
    let unpacked = root.join("unpacked");
    if find_vmlinuz(&unpacked).is_none() {
        let deb = kernel_deb(&root)?;
        unpack_members(&deb, &unpacked, &["./boot".to_owned()])?;
    }
    Ok(unpacked)
}

/// target/linux/kernel.deb, downloading it if it is not there.
fn kernel_deb(root: &Path) -> Result<PathBuf, String> {
    let deb = root.join(KERNEL_DEB);
    if !deb.exists() {
        std::fs::create_dir_all(root).map_err(|e| format!("cannot create {}: {e}", root.display()))?;
        let package = kernel_package_name(root)?;
        println!("xtask: downloading Debian's {package} (about 70 MB, once)");
        let downloaded = download_package(&package, root)?;
        std::fs::rename(&downloaded, &deb).map_err(|e| format!("cannot rename {}: {e}", downloaded.display()))?;
    }
    Ok(deb)
}

fn find_vmlinuz(unpacked: &Path) -> Option<PathBuf> {
    std::fs::read_dir(unpacked.join("boot"))
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("vmlinuz-")))
}

/// Path of Debian's current amd64 bzImage, downloading it once.
pub fn debian_kernel() -> Result<PathBuf, String> {
    let unpacked = kernel_package()?;
    find_vmlinuz(&unpacked).ok_or_else(|| format!("{} holds no boot/vmlinuz-*", unpacked.display()))
}

/// Path of the vmlinux in Debian's current amd64 bzImage (`crate::vmlinux`),
/// unpacked once per bzImage into target/linux/vmlinux/ and kept there: a
/// cached file newer than the bzImage is used as it is.
pub fn debian_vmlinux() -> Result<PathBuf, String> {
    let bzimage = debian_kernel()?;
    let name = bzimage.file_name().map(|n| n.to_string_lossy().replacen("vmlinuz", "vmlinux", 1));
    let name = name.ok_or_else(|| format!("{} has no file name", bzimage.display()))?;
    let dir = workspace_root().join("target/linux/vmlinux");
    let cached = dir.join(&name);
    let modified = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    if modified(&cached).zip(modified(&bzimage)).is_some_and(|(cached, source)| cached >= source) {
        return Ok(cached);
    }
    println!("xtask: unpacking the vmlinux from {} (once)", bzimage.display());
    let bytes = std::fs::read(&bzimage).map_err(|e| format!("cannot read {}: {e}", bzimage.display()))?;
    let vmlinux = crate::vmlinux::extract(&bytes).map_err(|e| format!("{}: {e}", bzimage.display()))?;
    std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    // Written aside, then renamed: an interrupted run leaves no cut-short file behind.
    let partial = dir.join(format!("{name}.partial"));
    std::fs::write(&partial, &vmlinux).map_err(|e| format!("cannot write {}: {e}", partial.display()))?;
    std::fs::rename(&partial, &cached).map_err(|e| format!("cannot rename {}: {e}", partial.display()))?;
    Ok(cached)
}

/// The kernel modules directory (lib/modules/VERSION) of Debian's kernel,
/// holding at least `wanted` (paths under it, "kernel/fs/ext4/ext4.ko"):
/// those not unpacked yet are unpacked from the kept package.
pub fn debian_modules(wanted: &[&str]) -> Result<PathBuf, String> {
    let bzimage = debian_kernel()?;
    let version = bzimage
        .file_name()
        .and_then(|n| n.to_string_lossy().strip_prefix("vmlinuz-").map(str::to_owned))
        .ok_or_else(|| format!("{} is not named vmlinuz-VERSION", bzimage.display()))?;
    let root = workspace_root().join("target/linux");
    let unpacked = root.join("unpacked");
    let modules = unpacked.join("lib/modules").join(&version);
    let missing: Vec<String> = wanted
        .iter()
        .filter(|relative| !modules.join(relative).exists())
        .map(|relative| format!("./lib/modules/{version}/{relative}"))
        .collect();
    if !missing.is_empty() {
        unpack_members(&kernel_deb(&root)?, &unpacked, &missing)
            .map_err(|e| format!("kernel modules not in Debian's {version} package? {e}"))?;
    }
    Ok(modules)
}

/// Debian's statically linked busybox, downloading busybox-static once.
pub fn busybox() -> Result<PathBuf, String> {
    let unpacked = workspace_root().join("target/linux/busybox");
    let binary = unpacked.join("bin/busybox");
    if !binary.exists() {
        println!("xtask: downloading Debian's busybox-static (about 1 MB, once)");
        unpack_package("busybox-static", &unpacked)?;
    }
    binary.exists().then_some(binary).ok_or_else(|| "busybox-static holds no bin/busybox".into())
}
