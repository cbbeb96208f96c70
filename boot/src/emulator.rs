//! Starting Basalt in an emulator: QEMU (TCG, or KVM where the host offers VMX
//! or SVM), QEMU TCG with an AMD CPU model that has SVM and nested paging, and
//! Bochs (the one VT-x-capable CPU on machines without hardware VMX).

use anyhow::{bail, Context};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Emulator {
    /// QEMU TCG with its default CPU model: no VT-x, no nested paging.
    QemuTcg,
    /// QEMU TCG with [`SVM_CPU_MODEL`]: AMD SVM with nested paging, in software.
    QemuTcgSvm,
    /// QEMU with KVM and the host's CPU (`-cpu host`): VMX or SVM, whichever the host has.
    QemuKvm,
    Bochs,
}

/// The CPU model QEMU TCG runs SVM guests on. With QEMU 7.2 `-cpu EPYC` has
/// `svm` and `npt` on by itself (its QOM properties say so; `qemu64` has `svm`
/// but no `npt`); TCG drops NRIP save and a few other bits it cannot emulate,
/// with a warning each on QEMU's stderr. See shared/PLATFORM.md.
pub const SVM_CPU_MODEL: &str = "EPYC";

/// A hardware virtualisation back end: Intel VT-x or AMD SVM.
#[derive(Clone, Copy, PartialEq, Eq, Debug, clap::ValueEnum)]
pub enum Vendor {
    /// Intel VT-x
    Vmx,
    /// AMD SVM with nested paging
    Svm,
}

impl Vendor {
    pub const ALL: [Vendor; 2] = [Vendor::Vmx, Vendor::Svm];

    /// "vmx" or "svm", as written in cases and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Vendor::Vmx => "vmx",
            Vendor::Svm => "svm",
        }
    }

    /// Where a guest on this back end runs best on this host.
    pub fn best_emulator(self) -> Emulator {
        match self {
            Vendor::Vmx => Emulator::best_for_vmx(),
            Vendor::Svm => Emulator::best_for_svm(),
        }
    }
}

/// Whether a `/proc/cpuinfo` text lists `flag` among the CPU flags.
fn cpuinfo_has_flag(cpuinfo: &str, flag: &str) -> bool {
    cpuinfo.lines().any(|l| l.starts_with("flags") && l.split_whitespace().any(|f| f == flag))
}

/// True when /dev/kvm is there and the host CPU shows `flag` (vmx or svm) to
/// pass on. Some hosts have a /dev/kvm without either (software nested
/// virtualisation, e.g. `kvm_pvm`); that one is no use.
fn kvm_offers(flag: &str) -> bool {
    let cpu_has_it = std::fs::read_to_string("/proc/cpuinfo").is_ok_and(|info| cpuinfo_has_flag(&info, flag));
    cpu_has_it && std::fs::OpenOptions::new().read(true).write(true).open("/dev/kvm").is_ok()
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Firmware {
    Bios,
    Uefi,
}

impl Firmware {
    pub fn name(self) -> &'static str {
        match self {
            Firmware::Bios => "bios",
            Firmware::Uefi => "uefi",
        }
    }
}

/// True when /dev/kvm is there and the host CPU has VMX to pass on.
pub fn kvm_offers_vmx() -> bool {
    kvm_offers("vmx")
}

/// True when /dev/kvm is there and the host CPU has SVM to pass on.
pub fn kvm_offers_svm() -> bool {
    kvm_offers("svm")
}

impl Emulator {
    /// Where a VMX guest can run: QEMU+KVM when the host offers VMX, else Bochs.
    pub fn best_for_vmx() -> Emulator {
        if kvm_offers_vmx() {
            Emulator::QemuKvm
        } else {
            Emulator::Bochs
        }
    }

    /// Where an SVM guest can run: QEMU+KVM when the host offers SVM, else
    /// QEMU TCG with an AMD CPU model that has SVM and nested paging.
    pub fn best_for_svm() -> Emulator {
        if kvm_offers_svm() {
            Emulator::QemuKvm
        } else {
            Emulator::QemuTcgSvm
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Emulator::QemuTcg => "QEMU (TCG)",
            Emulator::QemuTcgSvm => "QEMU TCG (EPYC, SVM)",
            Emulator::QemuKvm => "QEMU + KVM",
            Emulator::Bochs => "Bochs",
        }
    }

    /// Whether this is one of the QEMU set-ups (same exit device and exit codes).
    pub fn is_qemu(self) -> bool {
        self != Emulator::Bochs
    }

    /// The boot command line word that tells the kernel how to end a run.
    pub fn exit_option(self) -> &'static str {
        if self.is_qemu() {
            "exit=qemu"
        } else {
            "exit=bochs"
        }
    }
}

#[derive(Clone, Debug)]
pub struct Machine {
    pub emulator: Emulator,
    pub firmware: Firmware,
    pub cpus: u32,
    pub memory_mib: u32,
    /// Bochs only: emulated instructions per second of emulated time, per CPU.
    pub bochs_ips: u64,
}

/// Bochs' emulated speed unless a case asks otherwise (see PLATFORM.md: a low
/// figure keeps BIOS waits and UART pacing cheap).
pub const BOCHS_IPS: u64 = 10_000_000;

const OVMF_CODE: &str = "/usr/share/OVMF/OVMF_CODE_4M.fd";
const OVMF_VARS: &str = "/usr/share/OVMF/OVMF_VARS_4M.fd";

/// How the serial port reaches us.
enum Serial<'a> {
    File(&'a Path),
    /// The emulator as a TCP server on localhost at this port (interactive
    /// runs, scripted console input).
    Socket(u16),
}

fn qemu_command(machine: &Machine, image: &Path, dir: &Path, serial: Serial) -> anyhow::Result<Command> {
    let mut c = Command::new("qemu-system-x86_64");
    c.args(["-M", "q35", "-display", "none", "-no-reboot"]);
    c.args(["-m", &format!("{}M", machine.memory_mib), "-smp", &machine.cpus.to_string()]);
    match machine.emulator {
        Emulator::QemuKvm => c.args(["-accel", "kvm", "-cpu", "host"]),
        Emulator::QemuTcgSvm => c.args(["-accel", "tcg", "-cpu", SVM_CPU_MODEL]),
        _ => c.args(["-accel", "tcg"]),
    };
    c.args(["-device", "isa-debug-exit,iobase=0xf4,iosize=0x04"]);
    c.arg("-drive").arg(format!("format=raw,file={}", image.display()));
    if machine.firmware == Firmware::Uefi {
        // OVMF wants a writable copy of its variable store.
        let vars = dir.join("OVMF_VARS.fd");
        std::fs::copy(OVMF_VARS, &vars).with_context(|| format!("cannot copy {OVMF_VARS} (is ovmf installed?)"))?;
        c.arg("-drive").arg(format!("if=pflash,format=raw,readonly=on,file={OVMF_CODE}"));
        c.arg("-drive").arg(format!("if=pflash,format=raw,file={}", vars.display()));
    }
    if let Some(socket) = monitor_socket(dir) {
        c.arg("-monitor").arg(format!("unix:{},server=on,wait=off", socket.display()));
    }
    match serial {
        Serial::File(path) => c.arg("-serial").arg(format!("file:{}", path.display())),
        // Like Bochs' socket server: QEMU waits for our connection before it starts.
        Serial::Socket(port) => c.arg("-serial").arg(format!("tcp:127.0.0.1:{port},server=on,wait=on")),
    };
    Ok(c)
}

/// Bochs set-up that boots the bootloader crate's BIOS image headless with VT-x.
/// Facts behind each line are in shared/PLATFORM.md.
fn bochs_command(machine: &Machine, image: &Path, dir: &Path, serial: Serial) -> anyhow::Result<Command> {
    if machine.firmware == Firmware::Uefi {
        bail!("Bochs has no UEFI firmware; UEFI cases run in QEMU");
    }
    let _ = std::fs::remove_file(image.with_extension("img.lock"));
    let com1 = match serial {
        Serial::File(path) => format!("mode=file, dev={}", path.display()),
        Serial::Socket(port) => format!("mode=socket-server, dev=localhost:{port}"),
    };
    let config = format!(
        "megs: {megs}
cpu: model=corei7_icelake_u, count={cpus}, ips={ips}, reset_on_triple_fault=0
clock: sync=none, time0=local
romimage: file=/usr/share/bochs/BIOS-bochs-latest, options=fastboot
vgaromimage: file=/usr/share/vgabios/vgabios.cirrus.bin
vga: extension=cirrus
pci: enabled=1, chipset=i440fx, slot1=cirrus
ata0-master: type=disk, path={image}, mode=flat
boot: disk
com1: enabled=1, {com1}
port_e9_hack: enabled=1
magic_break: enabled=1
display_library: sdl2
log: {log}
panic: action=fatal
error: action=report
info: action=ignore
",
        megs = machine.memory_mib,
        cpus = machine.cpus,
        ips = machine.bochs_ips,
        image = image.display(),
        log = dir.join("bochs.log").display(),
    );
    let rc = dir.join("bochsrc");
    std::fs::write(&rc, config).with_context(|| format!("cannot write {}", rc.display()))?;
    // Bochs starts in its debugger: continue, and quit when the guest's magic
    // breakpoint (Basalt's success exit) stops the simulation.
    let commands = dir.join("bochs-commands");
    std::fs::write(&commands, "c\nquit\n").with_context(|| format!("cannot write {}", commands.display()))?;
    let mut c = Command::new("bochs");
    c.arg("-q").arg("-f").arg(&rc).arg("-rc").arg(&commands);
    c.env("SDL_VIDEODRIVER", "dummy").env("SDL_AUDIODRIVER", "dummy");
    Ok(c)
}

/// How a run ended, before any case expectations are applied.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Ending {
    /// The kernel reported success through the exit device.
    Success,
    /// The kernel reported failure through the exit device.
    Failure,
    /// Still running at the deadline; killed.
    Timeout,
    /// Anything else: triple fault, emulator error.
    Abnormal(String),
}

pub struct RunOutput {
    pub ending: Ending,
    pub serial: String,
    pub elapsed: Duration,
    /// The console-input cue that never appeared, so its keys were never typed.
    pub cue_never_seen: Option<String>,
}

/// Maps an emulator's exit status to an [`Ending`].
pub fn classify(emulator: Emulator, code: Option<i32>) -> Ending {
    match (emulator.is_qemu(), code) {
        (true, Some(33)) => Ending::Success,
        (true, Some(35)) => Ending::Failure,
        (true, Some(0)) => {
            Ending::Abnormal("QEMU stopped on its own (a triple fault or reset under -no-reboot)".into())
        }
        (false, Some(0)) => Ending::Success,
        (false, Some(1)) => Ending::Failure,
        (_, Some(code)) => Ending::Abnormal(format!("{} exited with status {code}", emulator.name())),
        (_, None) => Ending::Abnormal(format!("{} was killed by a signal", emulator.name())),
    }
}

/// Text typed on the serial console once the output shows a cue.
#[derive(Clone, Debug, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsoleInput {
    /// Typed once this appears in the output, after the previous step's cue.
    pub after: String,
    /// The keys, as typed (a newline is Enter).
    pub send: String,
}

/// Walks a list of [`ConsoleInput`] steps along the output as it arrives.
struct ConsoleScript<'a> {
    steps: &'a [ConsoleInput],
    /// Where the search for the next cue starts: past the previous cue, and
    /// past output already searched (the output arrives in small pieces).
    search_from: usize,
}

impl<'a> ConsoleScript<'a> {
    fn new(steps: &'a [ConsoleInput]) -> Self {
        ConsoleScript { steps, search_from: 0 }
    }

    /// What to type now, given all output so far. Each cue is looked for only
    /// after the previous one, so a step cannot fire on stale output.
    fn due(&mut self, output: &[u8]) -> Vec<&'a str> {
        let mut typed = Vec::new();
        while let Some((step, rest)) = self.steps.split_first() {
            let cue = step.after.as_bytes();
            let unseen = &output[self.search_from..];
            let Some(at) = unseen.windows(cue.len()).position(|w| w == cue) else {
                // A cue may straddle this piece and the next.
                self.search_from = output.len().saturating_sub(cue.len() - 1).max(self.search_from);
                break;
            };
            self.search_from += at + cue.len();
            self.steps = rest;
            typed.push(step.send.as_str());
        }
        typed
    }

    /// The cue still awaited, if any.
    fn waiting_for(&self) -> Option<&'a str> {
        self.steps.first().map(|s| s.after.as_str())
    }
}

/// Runs to completion or `timeout`, capturing serial output (in `dir`/serial.log
/// too), with progress shown under `name` while it runs. With `input`, serial
/// goes through a local socket so the steps can be typed as their cues appear.
pub fn run_captured(
    name: &str,
    machine: &Machine,
    image: &Path,
    dir: &Path,
    timeout: Duration,
    input: &[ConsoleInput],
) -> anyhow::Result<RunOutput> {
    let serial_file = dir.join("serial.log");
    let _ = std::fs::remove_file(&serial_file);
    let serial_log_error = || format!("cannot write {}", serial_file.display());
    let mut serial_log = std::fs::File::create(&serial_file).with_context(serial_log_error)?;
    // Where the emulator writes serial.log itself, what it has written so far.
    let mut serial_written = std::fs::File::open(&serial_file).with_context(serial_log_error)?;
    let port = if input.is_empty() { None } else { Some(free_local_port()?) };
    let serial = port.map_or(Serial::File(&serial_file), Serial::Socket);
    let mut command = match machine.emulator {
        Emulator::Bochs => bochs_command(machine, image, dir, serial)?,
        _ => qemu_command(machine, image, dir, serial)?,
    };
    let emulator_log = emulator_log(dir)?;
    command.stdin(Stdio::null()).stdout(emulator_log.try_clone()?).stderr(emulator_log);
    let start = Instant::now();
    let mut child = command.spawn().with_context(|| format!("cannot start {}", machine.emulator.name()))?;
    let mut console = match port {
        Some(port) => {
            let stream = connect_serial(&mut child, machine.emulator, port, dir)?;
            stream.set_read_timeout(Some(Duration::from_millis(25)))?;
            Some(stream)
        }
        None => None,
    };
    let mut script = ConsoleScript::new(input);
    let progress = crate::progress::Progress::start(name);
    let mut output = Vec::new();
    let mut buffer = [0u8; 4096];
    let ending = loop {
        match console.as_mut().map(|stream| stream.read(&mut buffer)) {
            Some(Ok(n)) if n > 0 => {
                output.extend_from_slice(&buffer[..n]);
                serial_log.write_all(&buffer[..n]).with_context(serial_log_error)?;
                for keys in script.due(&output) {
                    // A failed write shows up as a cue never seen.
                    let _ = console.as_mut().map(|stream| stream.write_all(keys.as_bytes()));
                }
                progress.output(&output);
            }
            Some(Err(e)) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
            // The emulator closed the console: it is ending.
            Some(_) => console = None,
            None => {
                std::thread::sleep(Duration::from_millis(25));
                if port.is_none() && serial_written.read_to_end(&mut output).is_ok_and(|n| n > 0) {
                    progress.output(&output);
                }
            }
        }
        if let Some(status) = child.try_wait().context("cannot wait for the emulator")? {
            break match classify(machine.emulator, status.code()) {
                Ending::Abnormal(_) if machine.emulator == Emulator::Bochs && quitting_after_success(dir) => {
                    // Seen a few times under heavy load: Bochs dies of a
                    // signal inside its debugger's `quit`, after the kernel's
                    // success breakpoint. The kernel's verdict stands; the
                    // case's expected lines still decide the case.
                    use std::os::unix::process::ExitStatusExt;
                    eprintln!(
                        "xtask: Bochs ended by signal {:?} while quitting after the success breakpoint; counted as success",
                        status.signal()
                    );
                    Ending::Success
                }
                ending => ending,
            };
        }
        if start.elapsed() >= timeout {
            if machine.emulator.is_qemu() {
                // Where each CPU was: what a hang needs first. Best effort.
                let _ = save_cpus_at_timeout(dir);
            }
            let _ = child.kill();
            let _ = child.wait();
            break Ending::Timeout;
        }
    };
    let elapsed = start.elapsed();
    if let Some(mut stream) = console {
        // What the emulator wrote before it closed the socket.
        while let Ok(n @ 1..) = stream.read(&mut buffer) {
            output.extend_from_slice(&buffer[..n]);
            serial_log.write_all(&buffer[..n]).with_context(serial_log_error)?;
        }
    }
    if machine.emulator == Emulator::Bochs {
        let _ = std::fs::remove_file(image.with_extension("img.lock"));
    }
    drop(progress);
    if port.is_none() {
        serial_written.read_to_end(&mut output).with_context(|| format!("cannot read {}", serial_file.display()))?;
    }
    Ok(RunOutput {
        ending,
        serial: String::from_utf8_lossy(&output).replace('\0', ""),
        elapsed,
        cue_never_seen: script.waiting_for().map(str::to_owned),
    })
}

/// QEMU's monitor socket for a run in `dir` (None where the path is too long
/// for a Unix socket): the runner asks it for the CPUs' registers when a run
/// times out.
fn monitor_socket(dir: &Path) -> Option<PathBuf> {
    let path = dir.join("monitor.sock");
    (path.as_os_str().len() < 100).then_some(path)
}

/// Where a timed-out QEMU run's CPU registers are saved, in its directory.
pub const CPUS_AT_TIMEOUT: &str = "cpus-at-timeout.txt";

/// Asks the QEMU of the run in `dir`, through its monitor, for every CPU's
/// registers and saves them as [`CPUS_AT_TIMEOUT`].
fn save_cpus_at_timeout(dir: &Path) -> anyhow::Result<()> {
    let socket = monitor_socket(dir).context("no monitor socket")?;
    let mut monitor = std::os::unix::net::UnixStream::connect(&socket)?;
    monitor.set_read_timeout(Some(Duration::from_millis(200)))?;
    monitor.write_all(b"info registers -a\n")?;
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut text = Vec::new();
    let mut buffer = [0u8; 4096];
    // The banner's prompt, then the command's output and the next prompt.
    const PROMPT: &[u8] = b"(qemu) ";
    while Instant::now() < deadline && text.windows(PROMPT.len()).filter(|w| *w == PROMPT).count() < 2 {
        match monitor.read(&mut buffer) {
            Ok(0) => break,
            Ok(n) => text.extend_from_slice(&buffer[..n]),
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
            Err(e) => return Err(e.into()),
        }
    }
    // The monitor speaks to a terminal: drop its escape sequences and CRs.
    let text = String::from_utf8_lossy(&text).replace('\r', "");
    let plain = strip_escapes(&text);
    // From the first CPU on: the monitor's banner and echo are noise.
    let registers = plain.find("CPU#").map_or(plain.as_str(), |at| &plain[at..]);
    std::fs::write(dir.join(CPUS_AT_TIMEOUT), registers)?;
    Ok(())
}

/// `text` without ANSI escape sequences (ESC, '[', parameters, a final letter).
fn strip_escapes(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '\x1b' {
            out.push(c);
            continue;
        }
        if chars.peek() == Some(&'[') {
            chars.next();
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        }
    }
    out
}

/// The file an emulator's own output goes to, in `dir`.
fn emulator_log(dir: &Path) -> anyhow::Result<std::fs::File> {
    let path = dir.join("emulator.log");
    std::fs::File::create(&path).with_context(|| format!("cannot create {}", path.display()))
}

/// Whether Bochs stopped at the magic breakpoint, which only the kernel's
/// success exit uses: its debugger then runs `quit`, the last command.
fn quitting_after_success(dir: &Path) -> bool {
    std::fs::read_to_string(dir.join("emulator.log")).is_ok_and(|log| log.contains("Magic breakpoint"))
}

/// A local TCP port nobody listens on now, for an emulator's serial server.
fn free_local_port() -> anyhow::Result<u16> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .context("no free local TCP port for the serial port")
}

/// Connects to the emulator's serial server once it listens.
fn connect_serial(
    child: &mut std::process::Child,
    emulator: Emulator,
    port: u16,
    dir: &Path,
) -> anyhow::Result<std::net::TcpStream> {
    loop {
        if let Ok(stream) = std::net::TcpStream::connect(("127.0.0.1", port)) {
            return Ok(stream);
        }
        if let Some(status) = child.try_wait().context("cannot wait for the emulator")? {
            bail!(
                "{} ended ({status}) before its serial port opened; see its logs in {}",
                emulator.name(),
                dir.display()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// How an interactive run ended.
#[derive(Debug, PartialEq, Eq)]
pub enum InteractiveEnd {
    /// The user quit (Ctrl-A X).
    Quit,
    /// The machine ended by itself.
    Ended(Ending),
}

/// Runs with serial on this terminal until the machine stops or the user quits
/// (Ctrl-A X). COM1 is a local TCP socket of the emulator's, relayed to and
/// from the terminal, which is switched to raw mode so keys reach the guest as
/// typed; see `console` for what the relay does besides.
pub fn run_interactive(machine: &Machine, image: &Path, dir: &Path) -> anyhow::Result<InteractiveEnd> {
    use crate::console::{KeyRelay, QueryFilter, RawTerminal};
    use std::sync::atomic::{AtomicBool, Ordering};
    let port = free_local_port()?;
    let mut command = match machine.emulator {
        Emulator::Bochs => bochs_command(machine, image, dir, Serial::Socket(port))?,
        _ => qemu_command(machine, image, dir, Serial::Socket(port))?,
    };
    let log = emulator_log(dir)?;
    command.stdin(Stdio::null()).stdout(log.try_clone()?).stderr(log);
    let mut child = command.spawn().with_context(|| format!("cannot start {}", machine.emulator.name()))?;
    let stream = connect_serial(&mut child, machine.emulator, port, dir)?;
    let _raw = RawTerminal::enter();
    let mut to_guest = stream.try_clone()?;
    let quit = std::sync::Arc::new(AtomicBool::new(false));
    let quit_by_key = quit.clone();
    std::thread::spawn(move || {
        let mut relay = KeyRelay::default();
        let mut typed = [0u8; 1024];
        let mut stdin = std::io::stdin().lock();
        while let Ok(n @ 1..) = stdin.read(&mut typed) {
            let Some(keys) = relay.keys(&typed[..n]) else {
                quit_by_key.store(true, Ordering::Release);
                let _ = to_guest.shutdown(std::net::Shutdown::Both);
                return;
            };
            if to_guest.write_all(&keys).is_err() {
                return;
            }
        }
    });
    let mut from_guest = stream;
    let mut filter = QueryFilter::default();
    let mut buffer = [0u8; 4096];
    while let Ok(n @ 1..) = from_guest.read(&mut buffer) {
        let mut out = std::io::stdout().lock();
        let _ = out.write_all(&filter.pass(&buffer[..n]));
        let _ = out.flush();
    }
    let quit = quit.load(Ordering::Acquire);
    if quit {
        let _ = child.kill();
    }
    let status = child.wait().with_context(|| format!("cannot wait for {}", machine.emulator.name()))?;
    if machine.emulator == Emulator::Bochs {
        let _ = std::fs::remove_file(image.with_extension("img.lock"));
    }
    Ok(if quit { InteractiveEnd::Quit } else { InteractiveEnd::Ended(classify(machine.emulator, status.code())) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_map_to_endings() {
        assert_eq!(classify(Emulator::QemuTcg, Some(33)), Ending::Success);
        assert_eq!(classify(Emulator::QemuKvm, Some(35)), Ending::Failure);
        assert!(matches!(classify(Emulator::QemuTcg, Some(0)), Ending::Abnormal(_)));
        assert!(matches!(classify(Emulator::QemuTcg, Some(1)), Ending::Abnormal(_)));
        assert_eq!(classify(Emulator::Bochs, Some(0)), Ending::Success);
        assert_eq!(classify(Emulator::Bochs, Some(1)), Ending::Failure);
        assert!(matches!(classify(Emulator::Bochs, None), Ending::Abnormal(_)));
        assert_eq!(classify(Emulator::QemuTcgSvm, Some(33)), Ending::Success);
        assert_eq!(classify(Emulator::QemuTcgSvm, Some(35)), Ending::Failure);
        assert!(matches!(classify(Emulator::QemuTcgSvm, Some(0)), Ending::Abnormal(_)));
    }

    #[test]
    fn the_svm_machine_is_qemu_tcg_with_the_epyc_model() {
        let machine = Machine {
            emulator: Emulator::QemuTcgSvm,
            firmware: Firmware::Bios,
            cpus: 1,
            memory_mib: 256,
            bochs_ips: 0,
        };
        let dir = std::env::temp_dir();
        let command = qemu_command(&machine, Path::new("/nonexistent.img"), &dir, Serial::Socket(4444)).unwrap();
        let args: Vec<String> = command.get_args().map(|a| a.to_string_lossy().into_owned()).collect();
        let at = args.iter().position(|a| a == "-accel").unwrap();
        assert_eq!(args[at..at + 4], ["-accel", "tcg", "-cpu", "EPYC"]);
        assert_eq!(Emulator::QemuTcgSvm.exit_option(), "exit=qemu");
        assert_eq!(Emulator::QemuTcgSvm.name(), "QEMU TCG (EPYC, SVM)");
    }

    #[test]
    fn kvm_needs_the_vendor_flag_in_cpuinfo() {
        // This machine's kind: an AMD host whose /dev/kvm is software nesting, no svm flag.
        let amd_without_svm = "vendor_id\t: AuthenticAMD\nflags\t\t: fpu vme sse4a misalignsse vmmcall\n";
        assert!(!cpuinfo_has_flag(amd_without_svm, "svm"));
        assert!(!cpuinfo_has_flag(amd_without_svm, "vmx"));
        let amd = "flags\t\t: fpu svm npt nrip_save\n";
        assert!(cpuinfo_has_flag(amd, "svm"));
        assert!(!cpuinfo_has_flag(amd, "vmx"));
        // A flag's name must match whole, not as part of another word.
        assert!(!cpuinfo_has_flag("flags\t: svm_lock\n", "svm"));
        assert!(cpuinfo_has_flag("flags\t: vmx ept\n", "vmx"));
    }

    fn step(after: &str, send: &str) -> ConsoleInput {
        ConsoleInput { after: after.into(), send: send.into() }
    }

    #[test]
    fn console_steps_are_typed_in_order_once_their_cues_appear() {
        let steps = [step("login:", "root\n"), step("# ", "echo hi\n"), step("hi\n", "exit\n")];
        let mut script = ConsoleScript::new(&steps);
        assert!(script.due(b"booting\nlog").is_empty());
        assert_eq!(script.waiting_for(), Some("login:"));
        assert_eq!(script.due(b"booting\nlogin: "), vec!["root\n"]);
        // Two cues in one chunk: both steps are due, in order.
        assert_eq!(script.due(b"booting\nlogin: root\n# echo hi\nhi\n"), vec!["echo hi\n", "exit\n"]);
        assert_eq!(script.waiting_for(), None);
        assert!(script.due(b"booting\nlogin: root\n# echo hi\nhi\n# ").is_empty());
    }

    #[test]
    fn a_cue_is_only_looked_for_after_the_previous_one() {
        // "ok" was printed before "ready", so it must not count for the second step.
        let steps = [step("ready", "a"), step("ok", "b")];
        let mut script = ConsoleScript::new(&steps);
        assert_eq!(script.due(b"ok ready"), vec!["a"]);
        assert!(script.due(b"ok ready ...").is_empty());
        assert_eq!(script.due(b"ok ready ... ok"), vec!["b"]);
    }
}
