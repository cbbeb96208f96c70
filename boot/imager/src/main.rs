//! `basalt-imager bios|uefi KERNEL_ELF IMAGE [RAMDISK]`: writes one bootable disk
//! image. Run by `cargo xtask`, not by hand.

use std::path::PathBuf;
use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if !(3..=4).contains(&args.len()) || !matches!(args[0].as_str(), "bios" | "uefi") {
        eprintln!("usage: basalt-imager bios|uefi KERNEL_ELF IMAGE [RAMDISK]");
        return ExitCode::from(2);
    }
    let kernel = PathBuf::from(&args[1]);
    let image = PathBuf::from(&args[2]);
    if !kernel.is_file() {
        eprintln!("basalt-imager: kernel {} does not exist", kernel.display());
        return ExitCode::from(2);
    }
    let mut builder = bootloader::DiskImageBuilder::new(kernel);
    if let Some(ramdisk) = args.get(3) {
        builder.set_ramdisk(PathBuf::from(ramdisk));
    }
    let result = match args[0].as_str() {
        "bios" => builder.create_bios_image(&image),
        _ => builder.create_uefi_image(&image),
    };
    match result {
        Ok(()) => {
            println!("{}", image.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("basalt-imager: {e:#}");
            ExitCode::FAILURE
        }
    }
}
