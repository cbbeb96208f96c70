//! Making a fresh machine ready: Debian packages for the emulators and the rustup
//! pieces the builds need. `RUSTUP_AUTO_INSTALL=0` is set on our machines, so
//! nothing is fetched unless this code asks for it. As root it installs what is
//! missing; otherwise it prints the exact commands and stops.

use crate::emulator::Emulator;
use std::process::Command;

/// The nightly the disk-image builder (`bootloader` 0.11.15) is known to build with.
pub const IMAGER_NIGHTLY: &str = "nightly-2026-05-20";
/// Its rustc commit, so an already installed plain `nightly` that is this build counts.
const IMAGER_NIGHTLY_COMMIT: &str = "e50aa6fba4e63ab34c72bf9acfd2c307c1155d1a";
pub const KERNEL_TARGET: &str = "x86_64-unknown-none";

const QEMU_PACKAGES: &[&str] = &["qemu-system-x86", "ovmf"];
const BOCHS_PACKAGES: &[&str] = &["bochs", "bochsbios", "vgabios", "bochs-sdl"];

pub struct Needs {
    pub packages: Vec<&'static str>,
}

impl Needs {
    pub fn everything() -> Self {
        Needs { packages: [QEMU_PACKAGES, BOCHS_PACKAGES].concat() }
    }

    pub fn for_emulator(emulator: Emulator) -> Self {
        match emulator {
            Emulator::Bochs => Needs { packages: BOCHS_PACKAGES.to_vec() },
            Emulator::QemuTcg | Emulator::QemuTcgSvm | Emulator::QemuKvm => Needs { packages: QEMU_PACKAGES.to_vec() },
        }
    }

    pub fn build_only() -> Self {
        Needs { packages: Vec::new() }
    }
}

fn output(program: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(program).args(args).env_remove("RUSTUP_TOOLCHAIN").output().ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

fn is_root() -> bool {
    output("id", &["-u"]).is_some_and(|s| s.trim() == "0")
}

fn run_step(description: &str, program: &str, args: &[&str]) -> Result<(), String> {
    println!("xtask: set-up: {description}: {program} {}", args.join(" "));
    let status = Command::new(program)
        .args(args)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .env_remove("RUSTUP_TOOLCHAIN")
        .status()
        .map_err(|e| format!("cannot run {program}: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("set-up step failed ({status}): {program} {}", args.join(" ")))
    }
}

/// Debian packages from `wanted` that are not installed.
fn missing_packages(wanted: &[&'static str]) -> Result<Vec<&'static str>, String> {
    if output("dpkg-query", &["--version"]).is_none() {
        return Err(format!(
            "this is not a Debian-based system; install the equivalents of these packages yourself: {}",
            wanted.join(" ")
        ));
    }
    Ok(wanted
        .iter()
        .copied()
        .filter(|p| {
            output("dpkg-query", &["-W", "-f=${Status}", p]).is_none_or(|s| !s.contains("install ok installed"))
        })
        .collect())
}

fn ensure_packages(wanted: &[&'static str]) -> Result<(), String> {
    let missing = missing_packages(wanted)?;
    if missing.is_empty() {
        return Ok(());
    }
    let install: Vec<&str> = ["install", "-y", "-q"].into_iter().chain(missing.iter().copied()).collect();
    if !is_root() {
        return Err(format!(
            "missing Debian packages; run:\n    sudo apt-get update && sudo apt-get {}\nthen run this command again",
            install.join(" ")
        ));
    }
    run_step("refresh the package lists", "apt-get", &["update", "-q"])?;
    run_step("install emulators", "apt-get", &install)
}

/// The toolchain the workspace itself uses (rust-toolchain.toml).
pub fn workspace_toolchain() -> Result<String, String> {
    let root = crate::workspace_root();
    let out = Command::new("rustup")
        .args(["show", "active-toolchain"])
        .current_dir(&root)
        .env_remove("RUSTUP_TOOLCHAIN")
        .output()
        .map_err(|e| format!("cannot run rustup (is it installed?): {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.split_whitespace().next().map(str::to_owned).ok_or_else(|| "rustup names no active toolchain".into())
}

fn installed_toolchains() -> Vec<String> {
    output("rustup", &["toolchain", "list"])
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
        .collect()
}

fn has_component(toolchain: &str, component: &str) -> bool {
    output("rustup", &["component", "list", "--installed", "--toolchain", toolchain])
        .is_some_and(|list| list.lines().any(|l| l == component || l.starts_with(&format!("{component}-x86_64"))))
}

fn ensure_component(toolchain: &str, component: &str) -> Result<(), String> {
    if has_component(toolchain, component) {
        return Ok(());
    }
    run_step(
        &format!("add {component} to {toolchain}"),
        "rustup",
        &["component", "add", "--toolchain", toolchain, component],
    )
}

fn ensure_kernel_target() -> Result<(), String> {
    let toolchain = workspace_toolchain()?;
    let targets = output("rustup", &["target", "list", "--installed", "--toolchain", &toolchain]).unwrap_or_default();
    if targets.lines().any(|t| t.trim() == KERNEL_TARGET) {
        return Ok(());
    }
    run_step("add the kernel target", "rustup", &["target", "add", "--toolchain", &toolchain, KERNEL_TARGET])
}

/// The nightly for the image builder, installed with its components if needed.
pub fn imager_toolchain() -> Result<String, String> {
    let installed = installed_toolchains();
    let pinned_installed = installed.iter().any(|t| t.starts_with(IMAGER_NIGHTLY));
    let plain_nightly_matches = installed.iter().any(|t| t.starts_with("nightly-x86_64"))
        && output("rustup", &["run", "nightly", "rustc", "-vV"]).is_some_and(|v| v.contains(IMAGER_NIGHTLY_COMMIT));
    let toolchain = if pinned_installed {
        IMAGER_NIGHTLY.to_owned()
    } else if plain_nightly_matches {
        "nightly".to_owned()
    } else {
        run_step(
            "install the image builder's nightly",
            "rustup",
            &["toolchain", "install", IMAGER_NIGHTLY, "--profile", "minimal"],
        )?;
        IMAGER_NIGHTLY.to_owned()
    };
    ensure_component(&toolchain, "rust-src")?;
    ensure_component(&toolchain, "llvm-tools")?;
    Ok(toolchain)
}

/// Everything a command needs, installed or explained.
pub fn ensure(needs: &Needs) -> Result<(), String> {
    ensure_packages(&needs.packages)?;
    ensure_kernel_target()?;
    imager_toolchain()?;
    Ok(())
}
