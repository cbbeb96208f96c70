//! Building the kernel and wrapping it in bootable disk images.

use crate::emulator::Firmware;
use crate::setup;
use crate::workspace_root;
use anyhow::{bail, Context};
use std::path::{Path, PathBuf};
use std::process::Command;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Config {
    /// What ships: no test hooks.
    Run,
    /// With fault injection for the integration tests (`test-hooks` feature).
    Test,
}

/// Environment a nested cargo must not inherit from the `cargo xtask` that runs us.
const CARGO_ENV_LEAKS: &[&str] =
    &["RUSTC", "RUSTC_WRAPPER", "RUSTFLAGS", "CARGO_ENCODED_RUSTFLAGS", "CARGO_TARGET_DIR"];

/// A cargo pinned to `toolchain` for itself and every rustc it starts. Naming it
/// matters: rustc runs in each dependency's directory, and a dependency that ships
/// its own rust-toolchain.toml (the `x86_64` crate does) would otherwise pick its
/// toolchain instead of ours.
pub fn cargo(toolchain: &str) -> Command {
    let mut command = Command::new("rustup");
    command.args(["run", toolchain, "cargo"]);
    for var in CARGO_ENV_LEAKS {
        command.env_remove(var);
    }
    command.env("RUSTUP_TOOLCHAIN", toolchain);
    command.current_dir(workspace_root());
    command
}

fn run(mut command: Command, what: &str) -> anyhow::Result<()> {
    let status = command.status().with_context(|| format!("cannot start the {what}"))?;
    if !status.success() {
        bail!("the {what} failed ({status})");
    }
    Ok(())
}

/// Builds the kernel and returns a copy of its ELF that later builds do not overwrite.
pub fn build_kernel(config: Config) -> anyhow::Result<PathBuf> {
    let mut command = cargo(&setup::workspace_toolchain().map_err(anyhow::Error::msg)?);
    command.args(["build", "--quiet", "--release", "--package", "basalt-kernel", "--target", setup::KERNEL_TARGET]);
    if config == Config::Test {
        command.args(["--features", "test-hooks"]);
    }
    run(command, "kernel build")?;
    let built = workspace_root().join("target").join(setup::KERNEL_TARGET).join("release/basalt");
    let name = match config {
        Config::Run => "basalt.elf",
        Config::Test => "basalt-test.elf",
    };
    let kept = workspace_root().join("target/basalt").join(name);
    let kept_dir = kept.parent().expect("under target/basalt");
    std::fs::create_dir_all(kept_dir).with_context(|| format!("cannot create {}", kept_dir.display()))?;
    std::fs::copy(&built, &kept).with_context(|| format!("cannot copy {} to {}", built.display(), kept.display()))?;
    Ok(kept)
}

/// Builds (once) the image builder with its pinned nightly.
fn imager() -> anyhow::Result<PathBuf> {
    let toolchain = setup::imager_toolchain().map_err(anyhow::Error::msg)?;
    let target_dir = workspace_root().join("target/imager");
    let mut command = cargo(&toolchain);
    command.args([
        "build",
        "--quiet",
        "--release",
        "--locked",
        "--manifest-path",
        "boot/imager/Cargo.toml",
        "--target-dir",
    ]);
    command.arg(&target_dir);
    let binary = target_dir.join("release/basalt-imager");
    if !binary.exists() {
        println!("xtask: building the disk-image builder (the first build compiles the bootloader, 2-4 minutes)");
    }
    run(command, "disk-image builder build")?;
    Ok(binary)
}

/// The files `make_image` writes into its directory.
pub const BIOS_IMAGE: &str = "basalt-bios.img";
pub const UEFI_IMAGE: &str = "basalt-uefi.img";
pub const BUNDLE: &str = "bundle";

/// Writes a disk image of `kernel` for `firmware` into `dir`, with `bundle` (see
/// guests::bundle) as its ramdisk. Returns the image path.
pub fn make_image(kernel: &Path, dir: &Path, bundle: &[u8], firmware: Firmware) -> anyhow::Result<PathBuf> {
    // Kept as text: every later image reports the first build's failure.
    static IMAGER: std::sync::OnceLock<Result<PathBuf, String>> = std::sync::OnceLock::new();
    let imager = IMAGER.get_or_init(|| imager().map_err(|e| format!("{e:#}"))).clone().map_err(anyhow::Error::msg)?;
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let image = dir.join(match firmware {
        Firmware::Bios => BIOS_IMAGE,
        Firmware::Uefi => UEFI_IMAGE,
    });
    let mut command = Command::new(&imager);
    let file = dir.join(BUNDLE);
    std::fs::write(&file, bundle).with_context(|| format!("cannot write {}", file.display()))?;
    command.arg(firmware.name()).arg(kernel).arg(&image).arg(file);
    command.stdout(std::process::Stdio::null());
    run(command, "disk-image builder")?;
    if firmware == Firmware::Bios {
        check_bios_partition(&image, bundle.len())?;
    }
    Ok(image)
}

/// The bootloader's BIOS stage reads its FAT16 boot partition only while the
/// partition's sector count fits the boot sector's 16-bit field, under
/// 32 MiB: with more it stops with a panic on the screen before any serial
/// output, and the run looks hung. Such an image is refused here instead,
/// naming the sizes.
fn check_bios_partition(image: &Path, bundle: usize) -> anyhow::Result<()> {
    use std::io::{Read, Seek, SeekFrom};
    let mut file = std::fs::File::open(image).with_context(|| format!("cannot open {}", image.display()))?;
    let mut sector = [0u8; 512];
    let mut read_at =
        |at: u64, sector: &mut [u8; 512]| file.seek(SeekFrom::Start(at)).and_then(|_| file.read_exact(sector));
    read_at(0, &mut sector).with_context(|| format!("cannot read {}", image.display()))?;
    // The partition table's four entries; the FAT partition has type 0x0c.
    let fat = (0..4).map(|i| &sector[0x1be + 16 * i..0x1be + 16 * (i + 1)]).find(|entry| entry[4] == 0x0c);
    let Some(entry) = fat else { bail!("{} has no FAT boot partition", image.display()) };
    let start = u64::from(u32::from_le_bytes(entry[8..12].try_into().expect("4 bytes")));
    let sectors = u32::from_le_bytes(entry[12..16].try_into().expect("4 bytes"));
    read_at(start * 512, &mut sector).with_context(|| format!("cannot read {}", image.display()))?;
    let total_sectors_16 = u16::from_le_bytes([sector[19], sector[20]]);
    if total_sectors_16 == 0 {
        bail!(
            "the boot bundle ({:.1} MiB) makes the BIOS image's FAT partition {} MiB, but the bootloader's BIOS \
             stage reads only partitions under 32 MiB (65536 sectors); give the VMs smaller disks or initrds",
            bundle as f64 / f64::from(1 << 20),
            sectors >> 11
        );
    }
    Ok(())
}
