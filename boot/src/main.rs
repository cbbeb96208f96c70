//! `cargo xtask`: builds, runs and tests Basalt. See `cargo xtask --help`.

mod bench;
mod cases;
mod cli;
mod console;
mod emulator;
mod fuzz;
mod guests;
mod images;
mod initramfs;
mod linux;
mod progress;
mod qemu_test;
mod setup;
mod vmconfig;
mod vmlinux;

use anyhow::{anyhow, bail, Context};
use clap::Parser;
use cli::{Command, EmulatorChoice, RunArgs};
use emulator::{Emulator, Ending, Firmware, InteractiveEnd, Vendor};
use std::path::PathBuf;
use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    let result = match cli.command {
        Command::Run(args) => run(args),
        Command::QemuTest(args) => qemu_test::main(args),
        Command::Fuzz(args) => fuzz::main(args),
        Command::Build => build(),
        Command::Bench(args) => bench::main(args),
        Command::Setup => {
            setup::ensure(&setup::Needs::everything()).map(|_| ExitCode::SUCCESS).map_err(anyhow::Error::msg)
        }
    };
    match result {
        Ok(code) => code,
        Err(error) => {
            // The whole chain: what failed, then why, down to the cause.
            eprintln!("xtask: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// The workspace root (xtask lives in boot/).
pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).parent().expect("boot/ has a parent").to_path_buf()
}

fn run(args: RunArgs) -> anyhow::Result<ExitCode> {
    let RunArgs {
        emulator,
        vendor,
        cpus,
        memory,
        uefi,
        vm,
        demo,
        no_shell,
        kernel: kernel_path,
        initrd,
        append,
        vm_memory,
        vcpus,
        disks,
    } = args;
    let firmware = if uefi { Firmware::Uefi } else { Firmware::Bios };
    let kvm = KvmOffers { vmx: emulator::kvm_offers_vmx(), svm: emulator::kvm_offers_svm() };
    let emulator = choose_emulator(emulator, vendor, kvm).map_err(anyhow::Error::msg)?;
    if firmware == Firmware::Uefi && emulator == Emulator::Bochs {
        bail!("Bochs has no UEFI firmware here; use --emulator qemu or kvm with --uefi");
    }
    setup::ensure(&setup::Needs::for_emulator(emulator)).map_err(anyhow::Error::msg)?;
    let kernel = images::build_kernel(images::Config::Run).context("building the kernel")?;
    let dir = workspace_root().join("target/basalt/run");
    let linux = match (vm.is_empty(), kernel_path) {
        (false, _) => {
            let mut vms = vm
                .iter()
                .map(|file| vmconfig::load(file).map_err(anyhow::Error::msg))
                .collect::<Result<Vec<_>, _>>()?;
            // The first has the console at start; the shell reaches the others.
            for later in vms.iter_mut().skip(1) {
                later.host_console = false;
            }
            vms
        }
        (true, Some(path)) => {
            let boot = KernelBoot { initrd, append, memory_mib: vm_memory, vcpus, disks };
            vec![kernel_vm(&path, boot).with_context(|| format!("--kernel {path}"))?]
        }
        (true, None) if demo => Vec::new(),
        (true, None) => vec![default_linux_vm().context("building the default Linux VM")?],
    };
    let cmdline = format!("{}{}", emulator.exit_option(), if no_shell { "" } else { " shell=on" });
    let bundle = if linux.is_empty() {
        default_bundle(&cmdline)?
    } else {
        guests::bundle_with_linux(&cmdline, &[], &linux)
            .map_err(anyhow::Error::msg)
            .context("writing the boot bundle")?
    };
    let image = images::make_image(&kernel, &dir, &bundle, firmware).context("writing the disk image")?;
    println!(
        "xtask: booting {} on {} with {cpus} CPU(s) and {memory} MiB; serial follows ({}Ctrl-A X ends the run{})",
        image.display(),
        emulator.name(),
        if no_shell { "" } else { "Ctrl-] gives Basalt's shell; " },
        if emulator == Emulator::Bochs { "; Bochs boots Linux to its shell in a few minutes" } else { "" }
    );
    let machine = emulator::Machine { emulator, firmware, cpus, memory_mib: memory, bochs_ips: emulator::BOCHS_IPS };
    // The run ends when Basalt has no VM left (the exit option above) or the user quits.
    let end = emulator::run_interactive(&machine, &image, &dir)
        .with_context(|| format!("running {} (its files are in {})", emulator.name(), dir.display()))?;
    match end {
        InteractiveEnd::Quit => println!("\r\nxtask: run ended (Ctrl-A X)"),
        InteractiveEnd::Ended(Ending::Success) if no_shell => println!("\r\nxtask: run ended: every VM has stopped"),
        InteractiveEnd::Ended(Ending::Success) => println!("\r\nxtask: run ended: the shell's quit stopped Basalt"),
        InteractiveEnd::Ended(Ending::Failure) => bail!("Basalt reported a failure; its log is above"),
        InteractiveEnd::Ended(Ending::Abnormal(why)) => bail!("the run ended abnormally: {why}"),
        InteractiveEnd::Ended(Ending::Timeout) => bail!("the run timed out"),
    }
    Ok(ExitCode::SUCCESS)
}

/// What `run --kernel` is given besides the kernel.
struct KernelBoot {
    initrd: Option<String>,
    append: Option<String>,
    memory_mib: u32,
    vcpus: u32,
    disks: Vec<PathBuf>,
}

/// The VM `run --kernel PATH` runs, as QEMU's `-kernel` would boot the file:
/// its format from its bytes (a Linux bzImage or vmlinux with the PVH note, a
/// Multiboot kernel, a plain ELF). A Linux kernel's `--initrd` is its
/// initramfs and `--append` its command line (default `console=ttyS0`); a
/// Multiboot kernel's `--initrd` is QEMU's module list ("file args,file2",
/// files relative to the current directory) and its command line is PATH, a
/// space and `--append`. `--kernel debian` is Debian's stock kernel as the
/// vmlinux unpacked from its bzImage, `--kernel debian-bzimage` the bzImage.
fn kernel_vm(path: &str, boot: KernelBoot) -> anyhow::Result<guests::LinuxVm> {
    use loader::Format;
    use std::path::Path;
    let read = |p: &Path| std::fs::read(p).with_context(|| format!("cannot read {}", p.display()));
    let file = match path {
        "debian" => linux::debian_vmlinux().map_err(anyhow::Error::msg)?,
        "debian-bzimage" => linux::debian_kernel().map_err(anyhow::Error::msg)?,
        _ => path.into(),
    };
    let kernel = read(&file)?;
    let format = guests::kernel_format(&kernel, &file).map_err(anyhow::Error::msg)?;
    let (initrd, modules) = match (format, &boot.initrd) {
        (Format::Linux, Some(initrd)) => (Some(read(Path::new(initrd)).context("--initrd")?), Vec::new()),
        (Format::Multiboot, Some(list)) => {
            (None, guests::read_modules(list, Path::new("")).map_err(|e| anyhow!("--initrd: {e}"))?)
        }
        (_, Some(_)) => {
            bail!("--initrd: {path} is an ELF kernel without a Multiboot header, which has no way to take modules")
        }
        (_, None) => (None, Vec::new()),
    };
    let default_append = if format == Format::Linux { "console=ttyS0" } else { "" };
    Ok(guests::LinuxVm {
        name: if format == Format::Linux { "linux" } else { "kernel" }.into(),
        format,
        kernel,
        kernel_name: path.into(),
        vmlinux_entry: Default::default(),
        initrd,
        modules,
        append: boot.append.unwrap_or_else(|| default_append.into()),
        memory_mib: boot.memory_mib,
        vcpus: boot.vcpus,
        time_limit_ms: 24 * 3600 * 1000,
        host_console: true,
        disks: boot.disks.iter().map(|p| read(p).context("--disk")).collect::<Result<_, _>>()?,
        scheduling: Default::default(),
        lifecycle: Default::default(),
    })
}

/// What this host's /dev/kvm passes on to a guest.
#[derive(Clone, Copy)]
struct KvmOffers {
    vmx: bool,
    svm: bool,
}

/// The machine `run` boots, from `--emulator` and `--vendor`. Without
/// `--vendor`, `auto` and `kvm` take QEMU+KVM with whichever back end the host
/// offers, and `auto` falls back to QEMU TCG with SVM (much faster than Bochs);
/// `qemu` is plain QEMU TCG (no VT-x or SVM). With it, the machine must have
/// that back end.
fn choose_emulator(choice: EmulatorChoice, vendor: Option<Vendor>, kvm: KvmOffers) -> Result<Emulator, String> {
    let kvm_has = |v: Vendor| match v {
        Vendor::Vmx => kvm.vmx,
        Vendor::Svm => kvm.svm,
    };
    use EmulatorChoice::*;
    Ok(match (choice, vendor) {
        (Auto, None) => {
            if kvm.vmx || kvm.svm {
                Emulator::QemuKvm
            } else {
                Emulator::QemuTcgSvm
            }
        }
        (Auto, Some(Vendor::Vmx)) => {
            if kvm.vmx {
                Emulator::QemuKvm
            } else {
                Emulator::Bochs
            }
        }
        (Auto, Some(Vendor::Svm)) => {
            if kvm.svm {
                Emulator::QemuKvm
            } else {
                Emulator::QemuTcgSvm
            }
        }
        (Kvm, None) => {
            if !(kvm.vmx || kvm.svm) {
                return Err("--emulator kvm: this host's /dev/kvm offers neither VMX nor SVM \
                            (no 'vmx' or 'svm' in /proc/cpuinfo)"
                    .into());
            }
            Emulator::QemuKvm
        }
        (Kvm, Some(wanted)) => {
            if !kvm_has(wanted) {
                let name = wanted.name();
                let hint = match Vendor::ALL.into_iter().find(|&v| v != wanted && kvm_has(v)) {
                    Some(other) => {
                        format!("; it offers {}: add --vendor {}", other.name().to_uppercase(), other.name())
                    }
                    None => String::new(),
                };
                return Err(format!(
                    "--emulator kvm: this host's /dev/kvm offers no {} (no '{name}' in /proc/cpuinfo){hint}",
                    name.to_uppercase()
                ));
            }
            Emulator::QemuKvm
        }
        (Bochs, Some(Vendor::Svm)) => {
            return Err("--vendor svm: Bochs here emulates VT-x only; use --emulator auto, qemu or kvm".into())
        }
        (Bochs, _) => Emulator::Bochs,
        (Qemu, None) => Emulator::QemuTcg,
        (Qemu, Some(Vendor::Svm)) => Emulator::QemuTcgSvm,
        (Qemu, Some(Vendor::Vmx)) => {
            return Err("--vendor vmx: QEMU TCG has no VT-x; use --emulator auto, bochs or kvm".into())
        }
    })
}

/// The built-in default VM: Debian's stock kernel (fetched once, cached) with a
/// busybox initramfs whose /init loads the virtio drivers and runs a shell on
/// the serial console, which is this terminal; one vCPU, 256 MiB, a blank
/// 8 MiB virtio disk (the bundle is loaded through the BIOS, which is slow in
/// Bochs, so the default image stays small).
fn default_linux_vm() -> anyhow::Result<guests::LinuxVm> {
    let guest = guests::LinuxGuest {
        name: "linux".into(),
        init: "scripts/linux-shell-init.sh".into(),
        memory_mib: 256,
        vcpus: 1,
        time_limit_ms: 24 * 3600 * 1000,
        append: "console=ttyS0".into(),
        modules: guests::VIRTIO_AND_EXT4_MODULES
            .iter()
            .chain(&guests::POWER_BUTTON_MODULES)
            .map(|m| m.to_string())
            .collect(),
        blank_disks_mib: vec![8],
        host_console: true,
        boot: guests::KernelFile::Vmlinux,
        ..Default::default()
    };
    guests::linux_vm(&guest).map_err(anyhow::Error::msg)
}

/// `--demo`: the tiny demo guest, which greets through its UART (no downloads).
fn default_bundle(cmdline: &str) -> anyhow::Result<Vec<u8>> {
    let demo = guests::GuestVm {
        name: "demo".into(),
        guest: "demo".into(),
        format: "elf".into(),
        mode: None,
        memory_mib: 16,
        vcpus: 1,
        time_limit_ms: 10_000,
        corrupt_guest_state: false,
        blank_disks_mib: Vec::new(),
        append: None,
        initrd: None,
        ..Default::default()
    };
    guests::bundle(cmdline, &[demo]).map_err(anyhow::Error::msg).context("writing the demo's boot bundle")
}

fn build() -> anyhow::Result<ExitCode> {
    setup::ensure(&setup::Needs::build_only()).map_err(anyhow::Error::msg)?;
    let kernel = images::build_kernel(images::Config::Run).context("building the kernel")?;
    let dir = workspace_root().join("target/basalt");
    // On a real machine the management shell is on COM1, as in `run`.
    let bundle = default_bundle("shell=on")?;
    for firmware in [Firmware::Bios, Firmware::Uefi] {
        let image = images::make_image(&kernel, &dir, &bundle, firmware)
            .with_context(|| format!("writing the {} image", firmware.name()))?;
        println!("{}", image.display());
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;
    use EmulatorChoice::*;

    const NONE: KvmOffers = KvmOffers { vmx: false, svm: false };
    const VMX: KvmOffers = KvmOffers { vmx: true, svm: false };
    const SVM: KvmOffers = KvmOffers { vmx: false, svm: true };
    const BOTH: KvmOffers = KvmOffers { vmx: true, svm: true };

    #[test]
    fn run_without_vendor_takes_kvm_with_either_else_qemu_tcg_with_svm() {
        assert_eq!(choose_emulator(Auto, None, NONE), Ok(Emulator::QemuTcgSvm));
        assert_eq!(choose_emulator(Auto, None, SVM), Ok(Emulator::QemuKvm));
        assert_eq!(choose_emulator(Auto, None, VMX), Ok(Emulator::QemuKvm));
        assert_eq!(choose_emulator(Auto, None, BOTH), Ok(Emulator::QemuKvm));
        assert_eq!(choose_emulator(Qemu, None, NONE), Ok(Emulator::QemuTcg));
        assert_eq!(choose_emulator(Bochs, None, VMX), Ok(Emulator::Bochs));
        assert_eq!(choose_emulator(Bochs, None, NONE), Ok(Emulator::Bochs));
        assert_eq!(choose_emulator(Kvm, None, VMX), Ok(Emulator::QemuKvm));
        assert_eq!(choose_emulator(Kvm, None, SVM), Ok(Emulator::QemuKvm));
        assert!(choose_emulator(Kvm, None, NONE).unwrap_err().contains("offers neither VMX nor SVM"));
    }

    #[test]
    fn run_with_vendor_svm_needs_svm() {
        let svm = Some(Vendor::Svm);
        assert_eq!(choose_emulator(Auto, svm, NONE), Ok(Emulator::QemuTcgSvm));
        assert_eq!(choose_emulator(Auto, svm, VMX), Ok(Emulator::QemuTcgSvm));
        assert_eq!(choose_emulator(Auto, svm, SVM), Ok(Emulator::QemuKvm));
        assert_eq!(choose_emulator(Qemu, svm, SVM), Ok(Emulator::QemuTcgSvm));
        assert_eq!(choose_emulator(Kvm, svm, SVM), Ok(Emulator::QemuKvm));
        assert!(choose_emulator(Kvm, svm, VMX).unwrap_err().contains("offers no SVM"));
        assert!(choose_emulator(Bochs, svm, NONE).unwrap_err().contains("VT-x only"));
    }

    #[test]
    fn run_with_vendor_vmx_needs_vmx() {
        let vmx = Some(Vendor::Vmx);
        assert_eq!(choose_emulator(Auto, vmx, NONE), Ok(Emulator::Bochs));
        assert_eq!(choose_emulator(Auto, vmx, VMX), Ok(Emulator::QemuKvm));
        assert_eq!(choose_emulator(Bochs, vmx, NONE), Ok(Emulator::Bochs));
        assert!(choose_emulator(Qemu, vmx, NONE).unwrap_err().contains("no VT-x"));
        assert!(choose_emulator(Kvm, vmx, SVM).unwrap_err().contains("offers no VMX"));
        assert!(choose_emulator(Kvm, vmx, SVM).unwrap_err().contains("add --vendor svm"));
        assert_eq!(choose_emulator(Auto, vmx, SVM), Ok(Emulator::Bochs));
    }
}
