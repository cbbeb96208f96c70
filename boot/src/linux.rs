//! Debian's stock kernel as a guest: found with apt, fetched with
//! `apt-get download`, unpacked with `dpkg-deb`, cached under target/linux.

use crate::workspace_root;
use std::path::PathBuf;
use std::process::Command;

fn run(program: &str, args: &[&str], dir: &std::path::Path) -> Result<String, String> {
    let out =
        Command::new(program).args(args).current_dir(dir).output().map_err(|e| format!("cannot run {program}: {e}"))?;
    if !out.status.success() {
        return Err(format!("{program} {} failed: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim()));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The versioned package `linux-image-amd64` currently points to.
fn package_name(dir: &std::path::Path) -> Result<String, String> {
    let depends = |dir| run("apt-cache", &["depends", "linux-image-amd64"], dir);
    let text = match depends(dir) {
        Ok(t) if t.contains("Depends:") => t,
        _ => {
            // Fresh machines have no package lists yet.
            run("apt-get", &["update", "-q"], dir)
                .map_err(|e| format!("{e}\n(as a non-root user, run: sudo apt-get update)"))?;
            depends(dir)?
        }
    };
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("Depends: "))
        .find(|p| p.starts_with("linux-image-") && p.ends_with("-amd64"))
        .map(str::to_owned)
        .ok_or_else(|| "apt names no linux-image-*-amd64 package for linux-image-amd64".into())
}

/// Path of Debian's current amd64 bzImage, downloading it once.
pub fn debian_kernel() -> Result<PathBuf, String> {
    let dir = workspace_root().join("target/linux");
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let find = |dir: &std::path::Path| -> Option<PathBuf> {
        std::fs::read_dir(dir.join("unpacked/boot"))
            .ok()?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .find(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("vmlinuz-")))
    };
    if let Some(kernel) = find(&dir) {
        return Ok(kernel);
    }
    let package = package_name(&dir)?;
    println!("xtask: downloading Debian's {package} (about 70 MB, once)");
    run("apt-get", &["download", "-q", &package], &dir)?;
    let deb = std::fs::read_dir(&dir)
        .map_err(|e| e.to_string())?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|x| x == "deb"))
        .ok_or("apt-get download left no .deb")?;
    run("dpkg-deb", &["-x", &deb.to_string_lossy(), "unpacked"], &dir)?;
    let _ = std::fs::remove_file(&deb);
    find(&dir).ok_or_else(|| format!("{package} holds no boot/vmlinuz-*"))
}
