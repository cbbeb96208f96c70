//! `basalt-imager KERNEL_ELF OUT_DIR [RAMDISK]`: writes `basalt-bios.img` and
//! `basalt-uefi.img` into OUT_DIR. Run by `cargo xtask build`, not by hand.

use std::path::PathBuf;
use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() < 2 || args.len() > 3 {
        eprintln!("usage: basalt-imager KERNEL_ELF OUT_DIR [RAMDISK]");
        return ExitCode::from(2);
    }
    let kernel = PathBuf::from(&args[0]);
    let out_dir = PathBuf::from(&args[1]);
    if !kernel.is_file() {
        eprintln!("basalt-imager: kernel {} does not exist", kernel.display());
        return ExitCode::from(2);
    }
    if let Err(e) = std::fs::create_dir_all(&out_dir) {
        eprintln!("basalt-imager: cannot create {}: {e}", out_dir.display());
        return ExitCode::FAILURE;
    }
    let mut builder = bootloader::DiskImageBuilder::new(kernel);
    if let Some(ramdisk) = args.get(2) {
        builder.set_ramdisk(PathBuf::from(ramdisk));
    }
    let bios = out_dir.join("basalt-bios.img");
    let uefi = out_dir.join("basalt-uefi.img");
    if let Err(e) = builder.create_bios_image(&bios) {
        eprintln!("basalt-imager: BIOS image: {e:#}");
        return ExitCode::FAILURE;
    }
    if let Err(e) = builder.create_uefi_image(&uefi) {
        eprintln!("basalt-imager: UEFI image: {e:#}");
        return ExitCode::FAILURE;
    }
    println!("{}", bios.display());
    println!("{}", uefi.display());
    ExitCode::SUCCESS
}
