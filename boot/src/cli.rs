//! `cargo xtask`'s command line: every subcommand, option, default and limit
//! in one place, from which clap builds the parser and each `--help`.

use crate::emulator::Vendor;
use clap::{Args, Parser, Subcommand, ValueEnum};
use loader::manifest::{MAX_MEMORY_MIB, MAX_VCPUS, MIN_MEMORY_MIB};
use std::path::PathBuf;

#[derive(Parser, Debug)]
#[command(
    name = "xtask",
    bin_name = "cargo xtask",
    about = "Builds, runs and tests Basalt.",
    arg_required_else_help = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Build Basalt and boot it with serial on this terminal (Ctrl-A X ends the run)
    #[command(long_about = RUN_ABOUT)]
    Run(RunArgs),
    /// Run the host unit tests and the integration cases in tests/cases.toml
    ///
    /// With CI=true also every fuzz target, 10 s each. Ends with the line
    /// "qemu-test: N passed, M failed".
    QemuTest(QemuTestArgs),
    /// Run the fuzz targets from their corpus (fuzz/corpus/TARGET/), then mutate
    ///
    /// Replays each target's corpus, then fuzzes it for the time given; a
    /// panic is a finding, written to target/fuzz-findings/TARGET/.
    Fuzz(FuzzArgs),
    /// Boot the test guests and Debian's Linux on a VT-x and an SVM machine; print exits and their cost
    ///
    /// Boots the test guests, then Debian Linux to its /init (console=ttyS0,
    /// then console=hvc0 quiet); prints exits and hypervisor cycles by reason,
    /// timer interrupts, time to init and VMM memory. Under Bochs Linux runs at
    /// two clock rates (ips) and each reason's exits are split into per timer
    /// tick and outside timer handling (see README.md, "Benchmarks").
    Bench(BenchArgs),
    /// Build the kernel and write BIOS and UEFI images to target/basalt/
    Build,
    /// Install what the other commands need (Debian packages, rustup parts)
    Setup,
}

const RUN_ABOUT: &str = "\
Build Basalt and boot it with serial on this terminal (Ctrl-A X ends the run).

The machine: QEMU with KVM and -cpu host where /dev/kvm offers VT-x or SVM
(vmx or svm in /proc/cpuinfo); otherwise QEMU TCG with -cpu EPYC, which
emulates AMD SVM with nested paging in software and brings the default VM's
shell up in well under a minute. `--emulator bochs` (or `--vendor vmx` without
KVM) runs the VT-x back end on Bochs instead, minutes to the shell.

The default VM: Debian's stock Linux with a busybox shell on this terminal.
Ctrl-] gives Basalt's management shell (`help` lists its commands, `console
linux` goes back to the VM, `quit` ends the run); with --no-shell the
terminal is the VM's alone and `poweroff -f` in it ends the run.";

/// `run --emulator`.
#[derive(ValueEnum, Clone, Copy, PartialEq, Eq, Debug)]
pub enum EmulatorChoice {
    /// QEMU+KVM where the host offers VT-x or SVM, else QEMU TCG with SVM (-cpu EPYC)
    Auto,
    /// QEMU+KVM with whichever of VT-x and SVM the host offers
    Kvm,
    /// Bochs: VT-x in software (minutes to the shell)
    Bochs,
    /// Plain QEMU TCG: neither VT-x nor SVM, unless --vendor svm
    Qemu,
}

#[derive(Args, Debug)]
pub struct RunArgs {
    /// The emulator to boot in
    #[arg(long, value_enum, default_value_t = EmulatorChoice::Auto)]
    pub emulator: EmulatorChoice,
    /// The virtualisation the machine must have (default: either). vmx: auto is
    /// QEMU+KVM if it offers VMX, else Bochs; qemu has no VT-x. svm: auto is
    /// QEMU+KVM if it offers SVM, else QEMU TCG (EPYC); bochs is VT-x only
    #[arg(long, value_enum, value_name = "VENDOR")]
    pub vendor: Option<Vendor>,
    /// The machine's CPUs
    #[arg(long, value_name = "N", default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub cpus: u32,
    /// The machine's memory
    #[arg(long, value_name = "MIB", default_value_t = 512, value_parser = clap::value_parser!(u32).range(64..=16384))]
    pub memory: u32,
    /// Boot the UEFI image (QEMU and KVM only; Bochs has no UEFI firmware)
    #[arg(long)]
    pub uefi: bool,
    /// Run the VM this TOML file describes (a Linux, Multiboot or ELF kernel;
    /// see README.md, "VM description files"). Repeatable: the first has the
    /// console at start, Ctrl-] gives Basalt's shell, which reaches them all
    #[arg(long, value_name = "PATH", conflicts_with = "kernel")]
    pub vm: Vec<PathBuf>,
    /// Run the tiny built-in demo guest instead of the default VM (no downloads)
    #[arg(long, conflicts_with_all = ["vm", "kernel"])]
    pub demo: bool,
    /// Without Basalt's management shell: the console is the VM's alone,
    /// and the run ends when every VM has stopped
    #[arg(long)]
    pub no_shell: bool,
    /// Run this kernel as the VM, as QEMU's -kernel would: a Linux bzImage or
    /// vmlinux (PVH), a Multiboot kernel or an ELF, told apart by its contents.
    /// `debian`: Debian's stock kernel (the vmlinux from its bzImage);
    /// `debian-bzimage`: that bzImage
    #[arg(long, value_name = "PATH")]
    pub kernel: Option<String>,
    /// With --kernel: Linux: its initramfs; Multiboot: its modules as QEMU
    /// takes them, 'FILE ARGS,FILE2' (a doubled comma is a comma)
    #[arg(long, value_name = "PATH", requires = "kernel")]
    pub initrd: Option<String>,
    /// With --kernel: its command line (default console=ttyS0; Multiboot: after
    /// the kernel's path and a space). One starting with '-' goes as --append=-v
    #[arg(long, value_name = "TEXT", requires = "kernel")]
    pub append: Option<String>,
    /// With --kernel: the VM's RAM
    #[arg(
        long,
        value_name = "MIB",
        default_value_t = 256,
        requires = "kernel",
        value_parser = clap::value_parser!(u32).range(i64::from(MIN_MEMORY_MIB)..=i64::from(MAX_MEMORY_MIB))
    )]
    pub vm_memory: u32,
    /// With --kernel: the VM's vCPUs (the scheduler time-shares the machine's CPUs among them)
    #[arg(
        long,
        value_name = "N",
        default_value_t = 1,
        requires = "kernel",
        value_parser = clap::value_parser!(u32).range(1..=i64::from(MAX_VCPUS))
    )]
    pub vcpus: u32,
    /// With --kernel: a virtio-blk disk image (repeatable; the guest's writes
    /// last for the run, the file is not changed)
    #[arg(long = "disk", value_name = "PATH", requires = "kernel")]
    pub disks: Vec<PathBuf>,
}

#[derive(Args, Debug)]
pub struct QemuTestArgs {
    /// Run only cases whose name contains NAME (repeatable); a case on several
    /// machines runs on each, unless given as NAME@vmx or NAME@svm (as
    /// summaries name it)
    #[arg(long = "case", value_name = "NAME")]
    pub cases: Vec<String>,
    /// Run only the cases' runs on that back end
    #[arg(long, value_enum, value_name = "VENDOR")]
    pub vendor: Option<Vendor>,
    /// Host unit tests (and the fuzz step) only, no cases
    #[arg(long, conflicts_with_all = ["cases", "vendor"])]
    pub host_only: bool,
    /// List the cases and exit
    #[arg(long)]
    pub list: bool,
}

#[derive(Args, Debug)]
pub struct FuzzArgs {
    /// Only these targets (default: all; --list names them)
    #[arg(value_name = "TARGET")]
    pub targets: Vec<String>,
    /// Fuzzing time per target
    #[arg(long, value_name = "N", default_value_t = 60)]
    pub seconds: u64,
    /// The run's base seed, decimal or 0x-hex (default: from the clock; printed)
    #[arg(long, value_name = "S", value_parser = parse_seed)]
    pub seed: Option<u64>,
    /// Targets at a time (default: the CPU count)
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub jobs: Option<u32>,
    /// Run FILE through the one TARGET given, once, panic and all
    #[arg(long, value_name = "FILE")]
    pub replay: Option<PathBuf>,
    /// List the targets
    #[arg(long)]
    pub list: bool,
    /// (Re)write the seed-* files of every corpus
    #[arg(long)]
    pub seed_corpus: bool,
}

/// A seed as printed by a run (`0x...`) or in decimal.
fn parse_seed(text: &str) -> Result<u64, String> {
    let parsed = match text.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => text.parse(),
    };
    parsed.map_err(|_| format!("'{text}' is not a number (decimal, or hex with 0x)"))
}

#[derive(Args, Debug)]
pub struct BenchArgs {
    /// Only that back end (the VT-x side takes minutes on Bochs)
    #[arg(long, value_enum, value_name = "VENDOR")]
    pub vendor: Option<Vendor>,
    /// Write every figure to FILE, one 'key value' a line
    #[arg(long, value_name = "FILE")]
    pub save: Option<PathBuf>,
    /// Print each figure next to FILE's, with the change
    #[arg(long, value_name = "FILE")]
    pub compare: Option<PathBuf>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::error::ErrorKind;
    use clap::CommandFactory;

    fn parse(line: &str) -> Result<Command, clap::Error> {
        Cli::try_parse_from(std::iter::once("xtask").chain(line.split_whitespace())).map(|cli| cli.command)
    }

    fn run(line: &str) -> RunArgs {
        match parse(&format!("run {line}")) {
            Ok(Command::Run(args)) => args,
            other => panic!("run {line}: {other:?}"),
        }
    }

    fn error(line: &str) -> (ErrorKind, String) {
        let e = parse(line).expect_err(line);
        (e.kind(), e.to_string())
    }

    #[test]
    fn the_definitions_are_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn run_defaults_are_today_s() {
        let args = run("");
        assert_eq!((args.emulator, args.vendor, args.cpus, args.memory), (EmulatorChoice::Auto, None, 2, 512));
        assert_eq!((args.vm_memory, args.vcpus, args.uefi, args.demo), (256, 1, false, false));
        assert!(args.vm.is_empty() && args.kernel.is_none() && args.disks.is_empty());
        assert!(!args.no_shell, "the shell is on unless asked otherwise");
    }

    #[test]
    fn several_vm_files_run_together_and_not_with_a_kernel() {
        let args = run("--vm a.toml --vm=b.toml --no-shell");
        assert_eq!(args.vm, [PathBuf::from("a.toml"), PathBuf::from("b.toml")]);
        assert!(args.no_shell);
        assert_eq!(error("run --vm a.toml --kernel debian").0, ErrorKind::ArgumentConflict);
    }

    #[test]
    fn values_come_after_a_space_or_an_equals_sign() {
        let args = run("--emulator bochs --vendor=vmx --cpus=4 --memory 1024 --uefi");
        assert_eq!(
            (args.emulator, args.vendor, args.cpus, args.memory),
            (EmulatorChoice::Bochs, Some(Vendor::Vmx), 4, 1024)
        );
        assert!(args.uefi);
        let args = run("--kernel=debian --append=-v --disk a.img --disk=b.img --vcpus 2 --vm-memory=512");
        assert_eq!((args.kernel.as_deref(), args.append.as_deref()), (Some("debian"), Some("-v")));
        assert_eq!(args.disks, [PathBuf::from("a.img"), PathBuf::from("b.img")]);
        assert_eq!((args.vcpus, args.vm_memory), (2, 512));
    }

    #[test]
    fn a_missing_value_is_reported_not_taken_from_the_next_flag() {
        let (kind, text) = error("run --kernel --demo");
        assert_eq!(kind, ErrorKind::InvalidValue, "{text}");
        assert!(text.contains("--kernel <PATH>"), "{text}");
        let (kind, text) = error("run --cpus");
        assert_eq!(kind, ErrorKind::InvalidValue, "{text}");
        assert!(text.contains("--cpus <N>"), "{text}");
        let (kind, _) = error("qemu-test --case --list");
        assert_eq!(kind, ErrorKind::InvalidValue);
    }

    #[test]
    fn numbers_out_of_range_name_the_flag_and_the_range() {
        let (kind, text) = error("run --cpus 65");
        assert_eq!(kind, ErrorKind::ValueValidation);
        assert!(text.contains("--cpus <N>") && text.contains("1..=64"), "{text}");
        let (_, text) = error("run --memory=32");
        assert!(text.contains("--memory <MIB>") && text.contains("64..=16384"), "{text}");
        let (_, text) = error("run --kernel k --vcpus 0");
        assert!(text.contains("--vcpus <N>") && text.contains(&format!("1..={MAX_VCPUS}")), "{text}");
        let (_, text) = error(&format!("run --kernel k --vm-memory {}", MAX_MEMORY_MIB + 1));
        assert!(text.contains("--vm-memory <MIB>"), "{text}");
        let (_, text) = error("run --cpus two");
        assert!(text.contains("--cpus <N>") && text.contains("'two'"), "{text}");
        let (_, text) = error("fuzz --jobs 0");
        assert!(text.contains("--jobs <N>"), "{text}");
    }

    #[test]
    fn choices_are_checked_by_name() {
        let (kind, text) = error("run --emulator tcg");
        assert_eq!(kind, ErrorKind::InvalidValue);
        assert!(text.contains("'tcg'") && text.contains("auto, kvm, bochs, qemu"), "{text}");
        let (_, text) = error("bench --vendor amd");
        assert!(text.contains("--vendor <VENDOR>") && text.contains("vmx, svm"), "{text}");
    }

    #[test]
    fn options_that_need_another_or_exclude_one_say_so() {
        for line in ["run --initrd i", "run --append quiet", "run --vcpus 2", "run --disk d.img", "run --vm-memory 128"]
        {
            let (kind, text) = error(line);
            assert_eq!(kind, ErrorKind::MissingRequiredArgument, "{line}: {text}");
            assert!(text.contains("--kernel <PATH>"), "{line}: {text}");
        }
        for line in ["run --demo --kernel k", "run --demo --vm a.toml", "run --vm a.toml --kernel k"] {
            assert_eq!(error(line).0, ErrorKind::ArgumentConflict, "{line}");
        }
        assert_eq!(error("qemu-test --host-only --case x").0, ErrorKind::ArgumentConflict);
        assert_eq!(error("qemu-test --host-only --vendor svm").0, ErrorKind::ArgumentConflict);
        assert_eq!(error("run --colour").0, ErrorKind::UnknownArgument);
        assert_eq!(error("test").0, ErrorKind::InvalidSubcommand);
    }

    #[test]
    fn qemu_test_takes_cases_with_machines_and_a_vendor() {
        let Ok(Command::QemuTest(args)) = parse("qemu-test --case linux-shell@svm --case=boot --vendor svm") else {
            panic!()
        };
        assert_eq!(args.cases, ["linux-shell@svm", "boot"]);
        assert_eq!((args.vendor, args.host_only, args.list), (Some(Vendor::Svm), false, false));
        let Ok(Command::QemuTest(args)) = parse("qemu-test --host-only") else { panic!() };
        assert!(args.host_only && args.cases.is_empty());
    }

    #[test]
    fn bench_and_fuzz_keep_their_options() {
        let Ok(Command::Bench(args)) = parse("bench --vendor=vmx --save a.txt --compare=b.txt") else { panic!() };
        assert_eq!(args.vendor, Some(Vendor::Vmx));
        assert_eq!((args.save, args.compare), (Some("a.txt".into()), Some("b.txt".into())));
        let Ok(Command::Fuzz(args)) = parse("fuzz decoder virtqueue --seconds 5 --seed 0x1f --jobs=2") else {
            panic!()
        };
        assert_eq!(args.targets, ["decoder", "virtqueue"]);
        assert_eq!((args.seconds, args.seed, args.jobs), (5, Some(0x1f), Some(2)));
        let Ok(Command::Fuzz(args)) = parse("fuzz") else { panic!() };
        assert_eq!((args.seconds, args.seed, args.jobs), (60, None, None));
        let (_, text) = error("fuzz --seed 0xzz");
        assert!(text.contains("--seed <S>") && text.contains("'0xzz' is not a number"), "{text}");
    }

    #[test]
    fn every_subcommand_has_help() {
        for sub in ["run", "qemu-test", "fuzz", "bench", "build", "setup"] {
            let (kind, text) = error(&format!("{sub} --help"));
            assert_eq!(kind, ErrorKind::DisplayHelp, "{sub}");
            assert!(text.contains("Usage: cargo xtask"), "{sub}: {text}");
        }
        let (_, text) = error("run --help");
        assert!(text.contains("QEMU TCG with -cpu EPYC") && text.contains("--emulator bochs"), "{text}");
        assert_eq!(error("help").0, ErrorKind::DisplayHelp);
        assert_eq!(error("").0, ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand);
    }
}
