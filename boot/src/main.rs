//! `cargo xtask`: builds, runs and tests Basalt. See `cargo xtask help`.

mod bench;
mod cases;
mod emulator;
mod fuzz;
mod guests;
mod images;
mod initramfs;
mod linux;
mod qemu_test;
mod setup;
mod vmconfig;
mod vmlinux;

use emulator::{Emulator, Ending, Firmware, InteractiveEnd, Vendor};
use std::path::PathBuf;
use std::process::ExitCode;

const USAGE: &str = "\
usage: cargo xtask <command> [options]

commands:
  run         build Basalt and boot it with serial on this terminal
                --emulator auto|kvm|bochs|qemu   (auto: QEMU+KVM with -cpu host if it
                                  offers VMX or SVM, else QEMU TCG with the EPYC CPU
                                  model: SVM + nested paging, in software)
                --vendor vmx|svm  the virtualisation the machine must have (default:
                                  either, as above). vmx: auto is QEMU+KVM if it offers
                                  VMX, else Bochs; qemu has no VT-x. svm: auto is
                                  QEMU+KVM if it offers SVM, else QEMU TCG (EPYC); qemu
                                  is that TCG machine; bochs is VT-x only
                --cpus N          (default 2)
                --memory MIB      (default 512)
                --uefi            boot the UEFI image (QEMU and KVM only; Bochs has no UEFI)
                --vm PATH.toml    run the VM this file describes (a Linux, Multiboot or
                                  ELF kernel; see README.md, 'VM description files')
                (default VM: Debian's stock Linux with a busybox shell on
                this terminal; Ctrl-A X ends the run)
                --demo            run the tiny built-in demo guest instead
                --kernel PATH     run this kernel as the VM, as QEMU's -kernel would: a
                                  Linux bzImage or vmlinux (PVH), a Multiboot kernel
                                  or an ELF (told apart by the file's contents;
                                  `--kernel debian`: Debian's stock kernel, fetched
                                  once, as the vmlinux unpacked from its bzImage;
                                  `--kernel debian-bzimage`: that bzImage)
                --initrd PATH     with --kernel: Linux: its initramfs; Multiboot: its
                                  modules as QEMU takes them: 'FILE ARGS,FILE2', a
                                  doubled comma being a comma
                --append TEXT     with --kernel: its command line (Multiboot: after
                                  the kernel's path and a space, as QEMU passes it)
                --vm-memory MIB   with --kernel: the VM's RAM (default 256)
                --vcpus N         with --kernel: the VM's vCPUs (default 1; each
                                  needs a CPU of its own, so at most --cpus)
                --disk PATH       with --kernel: a virtio-blk disk image (repeatable;
                                  the guest's writes last for the run, the file is
                                  not changed)
  qemu-test   run host unit tests and the integration cases in tests/cases.toml
              (with CI=true also every fuzz target, 10 s each)
                --case NAME       run only cases whose name contains NAME (repeatable);
                                  a case on several machines runs on each, unless
                                  given as NAME@vmx or NAME@svm (as summaries name it)
                --vendor vmx|svm  run only the cases' runs on that back end
                --host-only       host unit tests (and the fuzz step) only, no cases
                --list            list the cases and exit
  fuzz        run the fuzz targets from their corpus (fuzz/corpus/); see
              `cargo xtask fuzz --help`
                [TARGET...]       only these (default: all)
                --seconds N       per target (default 60)
                --replay FILE     with one TARGET: run FILE through it once
  bench       boot the test guests, then Debian Linux to its /init (console=ttyS0,
              then console=hvc0 quiet), on a VT-x and an SVM machine; print exits
              and hypervisor cycles by reason, timer interrupts, time to init, VMM
              memory; under Bochs Linux runs at two clock rates (ips) and each
              reason's exits are split into per timer tick and outside timer
              handling (see README.md, 'Benchmarks')
                --vendor vmx|svm  only that back end (the VT-x side takes minutes on Bochs)
                --save FILE       write every figure to FILE, one 'key value' a line
                --compare FILE    print each figure next to FILE's, with the change
  build       build the kernel and write BIOS and UEFI images to target/basalt/
  setup       install what the other commands need (Debian packages, rustup parts)
  help        this text
";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(command) = args.first() else {
        eprint!("{USAGE}");
        return ExitCode::from(2);
    };
    let rest = &args[1..];
    let result = match command.as_str() {
        "run" => run(rest),
        "qemu-test" => qemu_test::main(rest),
        "fuzz" => fuzz::main(rest),
        "build" => build(rest),
        "bench" => bench::main(rest),
        "setup" => setup::ensure(&setup::Needs::everything()).map(|_| ExitCode::SUCCESS),
        "help" | "--help" | "-h" => {
            print!("{USAGE}");
            Ok(ExitCode::SUCCESS)
        }
        other => Err(format!("unknown command '{other}'\n\n{USAGE}")),
    };
    match result {
        Ok(code) => code,
        Err(message) => {
            eprintln!("xtask: {message}");
            ExitCode::FAILURE
        }
    }
}

/// The workspace root (xtask lives in boot/).
pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).parent().expect("boot/ has a parent").to_path_buf()
}

/// Pulls `--name VALUE` out of `args`.
pub fn take_value(args: &mut Vec<String>, name: &str) -> Result<Option<String>, String> {
    let Some(at) = args.iter().position(|a| a == name) else { return Ok(None) };
    if at + 1 >= args.len() {
        return Err(format!("{name} needs a value"));
    }
    let value = args.remove(at + 1);
    args.remove(at);
    Ok(Some(value))
}

pub fn take_flag(args: &mut Vec<String>, name: &str) -> bool {
    let before = args.len();
    args.retain(|a| a != name);
    args.len() != before
}

fn parse_number(
    value: Option<String>,
    name: &str,
    default: u32,
    range: std::ops::RangeInclusive<u32>,
) -> Result<u32, String> {
    let Some(text) = value else { return Ok(default) };
    let n: u32 = text.parse().map_err(|_| format!("{name} wants a number, not '{text}'"))?;
    if !range.contains(&n) {
        return Err(format!("{name} must be between {} and {}, not {n}", range.start(), range.end()));
    }
    Ok(n)
}

fn run(args: &[String]) -> Result<ExitCode, String> {
    let mut args = args.to_vec();
    let emulator = take_value(&mut args, "--emulator")?;
    let vendor = take_value(&mut args, "--vendor")?;
    let cpus = parse_number(take_value(&mut args, "--cpus")?, "--cpus", 2, 1..=64)?;
    let memory = parse_number(take_value(&mut args, "--memory")?, "--memory", 512, 64..=16384)?;
    let firmware = if take_flag(&mut args, "--uefi") { Firmware::Uefi } else { Firmware::Bios };
    let vm_file = take_value(&mut args, "--vm")?;
    let kernel_path = take_value(&mut args, "--kernel")?;
    let initrd_path = take_value(&mut args, "--initrd")?;
    let append = take_value(&mut args, "--append")?;
    let vm_memory_mib = loader::manifest::MIN_MEMORY_MIB..=loader::manifest::MAX_MEMORY_MIB;
    let vm_memory = parse_number(take_value(&mut args, "--vm-memory")?, "--vm-memory", 256, vm_memory_mib)?;
    let vcpus = take_value(&mut args, "--vcpus")?;
    let demo = take_flag(&mut args, "--demo");
    let mut disk_paths = Vec::new();
    while let Some(path) = take_value(&mut args, "--disk")? {
        disk_paths.push(path);
    }
    if let Some(unknown) = args.first() {
        return Err(format!("run: unknown option '{unknown}'\n\n{USAGE}"));
    }
    if demo && (vm_file.is_some() || kernel_path.is_some()) {
        return Err("--demo runs the built-in demo guest; it does not go with --vm or --kernel".into());
    }
    if vm_file.is_some() && kernel_path.is_some() {
        return Err("--vm and --kernel each describe the VM; give one".into());
    }
    if kernel_path.is_none() && (initrd_path.is_some() || append.is_some() || vcpus.is_some() || !disk_paths.is_empty())
    {
        return Err("--initrd, --append, --vcpus and --disk go with --kernel".into());
    }
    let vcpus = parse_number(vcpus, "--vcpus", 1, 1..=loader::manifest::MAX_VCPUS)?;
    let vendor = vendor
        .map(|v| Vendor::parse(&v).ok_or_else(|| format!("--vendor must be vmx or svm, not '{v}'")))
        .transpose()?;
    let kvm = KvmOffers { vmx: emulator::kvm_offers_vmx(), svm: emulator::kvm_offers_svm() };
    let emulator = choose_emulator(emulator.as_deref().unwrap_or("auto"), vendor, kvm)?;
    if firmware == Firmware::Uefi && emulator == Emulator::Bochs {
        return Err("Bochs has no UEFI firmware here; use --emulator qemu or kvm with --uefi".into());
    }
    setup::ensure(&setup::Needs::for_emulator(emulator))?;
    let kernel = images::build_kernel(images::Config::Run)?;
    let dir = workspace_root().join("target/basalt/run");
    let linux = match (vm_file, kernel_path) {
        (Some(file), _) => Some(vmconfig::load(std::path::Path::new(&file))?),
        (None, Some(path)) => {
            let boot = KernelBoot { initrd: initrd_path, append, memory_mib: vm_memory, vcpus, disks: disk_paths };
            Some(kernel_vm(&path, boot)?)
        }
        (None, None) if demo => None,
        (None, None) => Some(default_linux_vm()?),
    };
    let bundle = match linux {
        Some(linux) => {
            if linux.vcpus > cpus {
                return Err(format!(
                    "VM '{}' has {} vCPUs but the machine only {cpus} CPU(s); each vCPU needs a CPU of its own (--cpus)",
                    linux.name, linux.vcpus
                ));
            }
            guests::bundle_with_linux(emulator.exit_option(), &[], &[linux])?
        }
        None => default_bundle(emulator.exit_option())?,
    };
    let image = images::make_image(&kernel, &dir, &bundle, firmware)?;
    println!(
        "xtask: booting {} on {} with {cpus} CPU(s) and {memory} MiB; serial follows (Ctrl-A X ends the run{})",
        image.display(),
        emulator.name(),
        if emulator == Emulator::Bochs { "; Bochs boots Linux to its shell in a few minutes" } else { "" }
    );
    let machine = emulator::Machine { emulator, firmware, cpus, memory_mib: memory, bochs_ips: emulator::BOCHS_IPS };
    // The run ends when Basalt has no VM left (the exit option above) or the user quits.
    match emulator::run_interactive(&machine, &image, &dir)? {
        InteractiveEnd::Quit => println!("\r\nxtask: run ended (Ctrl-A X)"),
        InteractiveEnd::Ended(Ending::Success) => println!("\r\nxtask: run ended: every VM has stopped"),
        InteractiveEnd::Ended(Ending::Failure) => return Err("Basalt reported a failure; its log is above".into()),
        InteractiveEnd::Ended(Ending::Abnormal(why)) => return Err(format!("the run ended abnormally: {why}")),
        InteractiveEnd::Ended(Ending::Timeout) => return Err("the run timed out".into()),
    }
    Ok(ExitCode::SUCCESS)
}

/// What `run --kernel` is given besides the kernel.
struct KernelBoot {
    initrd: Option<String>,
    append: Option<String>,
    memory_mib: u32,
    vcpus: u32,
    disks: Vec<String>,
}

/// The VM `run --kernel PATH` runs, as QEMU's `-kernel` would boot the file:
/// its format from its bytes (a Linux bzImage or vmlinux with the PVH note, a
/// Multiboot kernel, a plain ELF). A Linux kernel's `--initrd` is its
/// initramfs and `--append` its command line (default `console=ttyS0`); a
/// Multiboot kernel's `--initrd` is QEMU's module list ("file args,file2",
/// files relative to the current directory) and its command line is PATH, a
/// space and `--append`. `--kernel debian` is Debian's stock kernel as the
/// vmlinux unpacked from its bzImage, `--kernel debian-bzimage` the bzImage.
fn kernel_vm(path: &str, boot: KernelBoot) -> Result<guests::LinuxVm, String> {
    use loader::Format;
    use std::path::Path;
    let read = |p: &Path| std::fs::read(p).map_err(|e| format!("cannot read {}: {e}", p.display()));
    let file = match path {
        "debian" => linux::debian_vmlinux()?,
        "debian-bzimage" => linux::debian_kernel()?,
        _ => path.into(),
    };
    let kernel = read(&file)?;
    let format = guests::kernel_format(&kernel, &file)?;
    let (initrd, modules) = match (format, &boot.initrd) {
        (Format::Linux, Some(initrd)) => (Some(read(Path::new(initrd))?), Vec::new()),
        (Format::Multiboot, Some(list)) => {
            (None, guests::read_modules(list, Path::new("")).map_err(|e| format!("--initrd: {e}"))?)
        }
        (_, Some(_)) => {
            return Err(format!(
                "--initrd: {path} is an ELF kernel without a Multiboot header, which has no way to take modules"
            ))
        }
        (_, None) => (None, Vec::new()),
    };
    let default_append = if format == Format::Linux { "console=ttyS0" } else { "" };
    Ok(guests::LinuxVm {
        name: if format == Format::Linux { "linux" } else { "kernel" }.into(),
        format,
        kernel,
        kernel_name: path.into(),
        initrd,
        modules,
        append: boot.append.unwrap_or_else(|| default_append.into()),
        memory_mib: boot.memory_mib,
        vcpus: boot.vcpus,
        time_limit_ms: 24 * 3600 * 1000,
        host_console: true,
        disks: boot.disks.iter().map(|p| read(Path::new(p))).collect::<Result<_, _>>()?,
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
fn choose_emulator(choice: &str, vendor: Option<Vendor>, kvm: KvmOffers) -> Result<Emulator, String> {
    let kvm_has = |v: Vendor| match v {
        Vendor::Vmx => kvm.vmx,
        Vendor::Svm => kvm.svm,
    };
    Ok(match (choice, vendor) {
        ("auto", None) => {
            if kvm.vmx || kvm.svm {
                Emulator::QemuKvm
            } else {
                Emulator::QemuTcgSvm
            }
        }
        ("auto", Some(Vendor::Vmx)) => {
            if kvm.vmx {
                Emulator::QemuKvm
            } else {
                Emulator::Bochs
            }
        }
        ("auto", Some(Vendor::Svm)) => {
            if kvm.svm {
                Emulator::QemuKvm
            } else {
                Emulator::QemuTcgSvm
            }
        }
        ("kvm", None) => {
            if !(kvm.vmx || kvm.svm) {
                return Err("--emulator kvm: this host's /dev/kvm offers neither VMX nor SVM \
                            (no 'vmx' or 'svm' in /proc/cpuinfo)"
                    .into());
            }
            Emulator::QemuKvm
        }
        ("kvm", Some(wanted)) => {
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
        ("bochs", Some(Vendor::Svm)) => {
            return Err("--vendor svm: Bochs here emulates VT-x only; use --emulator auto, qemu or kvm".into())
        }
        ("bochs", _) => Emulator::Bochs,
        ("qemu", None) => Emulator::QemuTcg,
        ("qemu", Some(Vendor::Svm)) => Emulator::QemuTcgSvm,
        ("qemu", Some(Vendor::Vmx)) => {
            return Err("--vendor vmx: QEMU TCG has no VT-x; use --emulator auto, bochs or kvm".into())
        }
        (other, _) => return Err(format!("--emulator must be auto, kvm, bochs or qemu, not '{other}'")),
    })
}

/// The built-in default VM: Debian's stock kernel (fetched once, cached) with a
/// busybox initramfs whose /init loads the virtio drivers and runs a shell on
/// the serial console, which is this terminal; one vCPU, 256 MiB, a blank
/// 8 MiB virtio disk (the bundle is loaded through the BIOS, which is slow in
/// Bochs, so the default image stays small).
fn default_linux_vm() -> Result<guests::LinuxVm, String> {
    let guest = guests::LinuxGuest {
        name: "linux".into(),
        init: "scripts/linux-shell-init.sh".into(),
        memory_mib: 256,
        vcpus: 1,
        time_limit_ms: 24 * 3600 * 1000,
        append: "console=ttyS0".into(),
        modules: guests::VIRTIO_AND_EXT4_MODULES.iter().map(|m| m.to_string()).collect(),
        blank_disks_mib: vec![8],
        host_console: true,
        boot: guests::KernelFile::Vmlinux,
    };
    guests::linux_vm(&guest)
}

/// `--demo`: the tiny demo guest, which greets through its UART (no downloads).
fn default_bundle(cmdline: &str) -> Result<Vec<u8>, String> {
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
    };
    guests::bundle(cmdline, &[demo])
}

fn build(args: &[String]) -> Result<ExitCode, String> {
    if let Some(unknown) = args.first() {
        return Err(format!("build: unknown option '{unknown}'"));
    }
    setup::ensure(&setup::Needs::build_only())?;
    let kernel = images::build_kernel(images::Config::Run)?;
    let dir = workspace_root().join("target/basalt");
    let bundle = default_bundle("")?;
    for firmware in [Firmware::Bios, Firmware::Uefi] {
        let image = images::make_image(&kernel, &dir, &bundle, firmware)?;
        println!("{}", image.display());
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    const NONE: KvmOffers = KvmOffers { vmx: false, svm: false };
    const VMX: KvmOffers = KvmOffers { vmx: true, svm: false };
    const SVM: KvmOffers = KvmOffers { vmx: false, svm: true };
    const BOTH: KvmOffers = KvmOffers { vmx: true, svm: true };

    #[test]
    fn run_without_vendor_takes_kvm_with_either_else_qemu_tcg_with_svm() {
        assert_eq!(choose_emulator("auto", None, NONE), Ok(Emulator::QemuTcgSvm));
        assert_eq!(choose_emulator("auto", None, SVM), Ok(Emulator::QemuKvm));
        assert_eq!(choose_emulator("auto", None, VMX), Ok(Emulator::QemuKvm));
        assert_eq!(choose_emulator("auto", None, BOTH), Ok(Emulator::QemuKvm));
        assert_eq!(choose_emulator("qemu", None, NONE), Ok(Emulator::QemuTcg));
        assert_eq!(choose_emulator("bochs", None, VMX), Ok(Emulator::Bochs));
        assert_eq!(choose_emulator("bochs", None, NONE), Ok(Emulator::Bochs));
        assert_eq!(choose_emulator("kvm", None, VMX), Ok(Emulator::QemuKvm));
        assert_eq!(choose_emulator("kvm", None, SVM), Ok(Emulator::QemuKvm));
        assert!(choose_emulator("kvm", None, NONE).unwrap_err().contains("offers neither VMX nor SVM"));
        assert!(choose_emulator("tcg", None, NONE).unwrap_err().contains("not 'tcg'"));
    }

    #[test]
    fn run_with_vendor_svm_needs_svm() {
        let svm = Some(Vendor::Svm);
        assert_eq!(choose_emulator("auto", svm, NONE), Ok(Emulator::QemuTcgSvm));
        assert_eq!(choose_emulator("auto", svm, VMX), Ok(Emulator::QemuTcgSvm));
        assert_eq!(choose_emulator("auto", svm, SVM), Ok(Emulator::QemuKvm));
        assert_eq!(choose_emulator("qemu", svm, SVM), Ok(Emulator::QemuTcgSvm));
        assert_eq!(choose_emulator("kvm", svm, SVM), Ok(Emulator::QemuKvm));
        assert!(choose_emulator("kvm", svm, VMX).unwrap_err().contains("offers no SVM"));
        assert!(choose_emulator("bochs", svm, NONE).unwrap_err().contains("VT-x only"));
    }

    #[test]
    fn run_with_vendor_vmx_needs_vmx() {
        let vmx = Some(Vendor::Vmx);
        assert_eq!(choose_emulator("auto", vmx, NONE), Ok(Emulator::Bochs));
        assert_eq!(choose_emulator("auto", vmx, VMX), Ok(Emulator::QemuKvm));
        assert_eq!(choose_emulator("bochs", vmx, NONE), Ok(Emulator::Bochs));
        assert!(choose_emulator("qemu", vmx, NONE).unwrap_err().contains("no VT-x"));
        assert!(choose_emulator("kvm", vmx, SVM).unwrap_err().contains("offers no VMX"));
        assert!(choose_emulator("kvm", vmx, SVM).unwrap_err().contains("add --vendor svm"));
        assert_eq!(choose_emulator("auto", vmx, SVM), Ok(Emulator::Bochs));
    }
}
