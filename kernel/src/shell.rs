//! The management shell on Basalt's serial console (`shell=on`; `cargo xtask
//! run` asks for it): a `basalt>` prompt whose commands list, start, stop,
//! pause and inspect VMs, and attach the console to one VM's (Ctrl-] comes
//! back). Line editing, parsing and output formats are the pure
//! `basalt_manage` crate's; what a command does to a VM is `vmm::manage`'s.
//!
//! Typed bytes are read by whichever core passes by (`poll`: every vCPU's
//! run loop and every idle core, at most `POLLS_PER_SECOND`). A complete
//! command line is queued, and the core that read it leaves its guest so
//! its scheduling loop runs the command (`run_pending`) with no lock held
//! and no vCPU on it. While a console is attached, bytes go to that VM's
//! COM1 and Basalt's own lines wait (`log::hold_lines`), shown on return.

use crate::vmm::manage;
use alloc::collections::VecDeque;
use alloc::string::String;
use alloc::sync::Arc;
use alloc::vec::Vec;
use basalt_manage::command::{self, Command};
use basalt_manage::format;
use basalt_manage::line::{Editor, Event, CONSOLE_ESCAPE};
use basalt_manage::sample::{permille, Sampler};
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use spin::Mutex;

const PROMPT: &str = "basalt> ";
/// Console reads per second: COM1's 16-byte FIFO holds 4 ms of input at
/// 38400 baud, so typing is never lost (a long paste may be).
const POLLS_PER_SECOND: u64 = 250;
/// Command lines typed ahead of the cores running them.
const MAX_PENDING: usize = 8;

enum Mode {
    /// Typed lines are commands.
    Shell,
    /// Typed bytes go to this VM's COM1 until Ctrl-].
    Attached { vm: String, console: Arc<crate::vmm::vm_console::VmConsole> },
    /// `top` redraws itself at host TSC `next` until a key is pressed.
    Top { next: u64 },
}

/// How often `top` redraws.
const TOP_REFRESH_MS: u64 = 2000;

static ON: AtomicBool = AtomicBool::new(false);
static QUITTING: AtomicBool = AtomicBool::new(false);
static NEXT_POLL: AtomicU64 = AtomicU64::new(0);
static MODE: Mutex<Mode> = Mutex::new(Mode::Shell);
static EDITOR: Mutex<Option<Editor>> = Mutex::new(None);
static PENDING: Mutex<VecDeque<Command>> = Mutex::new(VecDeque::new());
static HAS_PENDING: AtomicBool = AtomicBool::new(false);
/// For `cores`: each core's halted and in-guest time at the last `cores`.
static CORES_SAMPLE: Mutex<Sampler<u32, 2>> = Mutex::new(Sampler::new());

/// The shell takes the console: attached to the VM that owns it at boot,
/// if one does, else at the prompt.
pub fn start() {
    crate::log::start_managing();
    *EDITOR.lock() = Some(Editor::new(PROMPT));
    ON.store(true, Ordering::Release);
    match manage::first_console() {
        Some(vm) => {
            log::info!("vm {vm} has the console; Ctrl-] gives Basalt's shell ('help' lists its commands)");
            crate::log::pump();
            attach(&vm);
        }
        None => {
            say("Basalt management shell; 'help' lists the commands\n");
            prompt();
        }
    }
}

/// The operator asked Basalt to end (`quit`).
pub fn quitting() -> bool {
    QUITTING.load(Ordering::Acquire)
}

/// Text for the console, with "\n" as CR LF.
fn say(text: &str) {
    let mut bytes = Vec::with_capacity(text.len() + 16);
    for &byte in text.as_bytes() {
        if byte == b'\n' {
            bytes.push(b'\r');
        }
        bytes.push(byte);
    }
    crate::log::shell_output(&bytes);
}

fn prompt() {
    crate::log::line_went_out();
    crate::log::shell_output(PROMPT.as_bytes());
}

/// Basalt's lines went out over the prompt: it and the half-typed line are
/// drawn again below them (not while a command runs: its output and the
/// prompt after it come in order anyway).
fn redraw_prompt() {
    let idle = !HAS_PENDING.load(Ordering::Acquire) && !RUNNER.load(Ordering::Acquire) && !quitting();
    if !idle || !matches!(&*MODE.lock(), Mode::Shell) || !crate::log::line_went_out() {
        return;
    }
    let mut echo = Vec::new();
    if let Some(editor) = EDITOR.lock().as_ref() {
        editor.redraw(&mut echo);
    }
    crate::log::shell_output(&echo);
}

/// Reads what was typed, if it is time to; returns whether a command waits
/// for a core's scheduling loop (the caller, in a guest's loop, leaves it).
pub fn poll(now: u64) -> bool {
    if !ON.load(Ordering::Acquire) {
        return false;
    }
    let due = NEXT_POLL.load(Ordering::Relaxed);
    if now >= due {
        let next = now + crate::time::tsc_hz() / POLLS_PER_SECOND;
        if NEXT_POLL.compare_exchange(due, next, Ordering::Relaxed, Ordering::Relaxed).is_ok() {
            // Lines that went out since the last poll took the prompt's
            // place: it comes back before the echo of what was typed, or the
            // echo would land on a line of its own.
            redraw_prompt();
            let mut typed = [0u8; 64];
            let n = crate::log::read_input(&mut typed);
            if n > 0 {
                take_input(&typed[..n]);
            }
            manage::enforce_shutdowns(now);
            redraw_prompt();
            let redraw = matches!(&*MODE.lock(), Mode::Top { next } if now >= *next);
            if redraw && !HAS_PENDING.load(Ordering::Acquire) {
                queue(Command::Top);
            }
        }
    }
    HAS_PENDING.load(Ordering::Acquire)
}

fn take_input(mut bytes: &[u8]) {
    while !bytes.is_empty() {
        let attached = {
            let mut mode = MODE.lock();
            match &*mode {
                Mode::Attached { vm, .. } => Some(vm.clone()),
                Mode::Shell => None,
                Mode::Top { .. } => {
                    // Any key leaves `top`; that key does nothing else.
                    *mode = Mode::Shell;
                    drop(mode);
                    say("\n");
                    prompt();
                    bytes = &bytes[1..];
                    continue;
                }
            }
        };
        match attached {
            Some(vm) => {
                let (for_vm, rest) = match bytes.iter().position(|&b| b == CONSOLE_ESCAPE) {
                    Some(at) => (&bytes[..at], Some(&bytes[at + 1..])),
                    None => (bytes, None),
                };
                if !for_vm.is_empty() {
                    manage::type_into(&vm, for_vm);
                }
                let Some(rest) = rest else { return };
                detach();
                bytes = rest;
            }
            None => {
                edit(bytes);
                return;
            }
        }
    }
}

/// Shell mode: the line editor gets the bytes; a whole line is parsed and
/// queued, a mistake answered at once. What is typed while a command waits
/// for a core waits too (`TYPED_AHEAD`), so its echo follows the command's
/// output and the next prompt, as on any terminal.
fn edit(bytes: &[u8]) {
    if HAS_PENDING.load(Ordering::Acquire) {
        type_ahead(bytes);
        return;
    }
    // Keys that reached the type-ahead just as the last command finished go first.
    let stuck = core::mem::take(&mut *TYPED_AHEAD.lock());
    if !stuck.is_empty() {
        let mut all = stuck;
        all.extend_from_slice(bytes);
        return edit(&all);
    }
    let mut echo = Vec::new();
    let mut event = None;
    let mut used = bytes.len();
    {
        let mut editor = EDITOR.lock();
        let Some(editor) = editor.as_mut() else { return };
        for (at, &byte) in bytes.iter().enumerate() {
            if let Some(e) = editor.feed(byte, &mut echo) {
                event = Some(e);
                used = at + 1;
                break;
            }
        }
    }
    if !echo.is_empty() {
        crate::log::shell_output(&echo);
    }
    let Some(event) = event else { return };
    match event {
        Event::Line(line) => match command::parse(&line) {
            Ok(Some(command)) => queue(command),
            Ok(None) => prompt(),
            Err(error) => {
                say(&alloc::format!("{error}\n"));
                prompt();
            }
        },
        Event::Cancelled => prompt(),
        Event::Error(error) => {
            say(&alloc::format!("{error}\n"));
            prompt();
        }
    }
    if used < bytes.len() {
        edit(&bytes[used..]);
    }
}

/// Keystrokes typed while a command waits (a paste of several lines):
/// bounded, the excess dropped.
static TYPED_AHEAD: Mutex<Vec<u8>> = Mutex::new(Vec::new());
const MAX_TYPED_AHEAD: usize = 1024;

fn type_ahead(bytes: &[u8]) {
    let mut typed = TYPED_AHEAD.lock();
    let room = MAX_TYPED_AHEAD.saturating_sub(typed.len());
    typed.extend_from_slice(&bytes[..bytes.len().min(room)]);
}

fn queue(command: Command) {
    let mut pending = PENDING.lock();
    if pending.len() >= MAX_PENDING {
        drop(pending);
        say("too many commands typed ahead; this one is dropped\n");
        prompt();
        return;
    }
    pending.push_back(command);
    HAS_PENDING.store(true, Ordering::Release);
    drop(pending);
}

/// Runs the commands typed so far (from a core's scheduling loop, holding
/// no lock and running no vCPU), one core at a time so they run in order;
/// then what was typed meanwhile. `HAS_PENDING` stays set until all is
/// done, so keys typed meanwhile wait their turn (`edit`).
pub fn run_pending() {
    if !HAS_PENDING.load(Ordering::Acquire) || RUNNER.swap(true, Ordering::AcqRel) {
        return;
    }
    loop {
        let command = PENDING.lock().pop_front();
        if let Some(command) = command {
            if run(command) && !quitting() {
                prompt();
            }
            continue;
        }
        // What was typed meanwhile, now that its echo comes in order; it may
        // queue more commands.
        let typed = core::mem::take(&mut *TYPED_AHEAD.lock());
        if typed.is_empty() {
            break;
        }
        HAS_PENDING.store(false, Ordering::Release);
        take_input(&typed);
        if !HAS_PENDING.load(Ordering::Acquire) {
            break;
        }
    }
    {
        // Cleared with the queue's lock held: a command queued from now on
        // sets it again.
        let pending = PENDING.lock();
        if pending.is_empty() {
            HAS_PENDING.store(false, Ordering::Release);
        }
    }
    RUNNER.store(false, Ordering::Release);
}

/// Set while a core runs commands.
static RUNNER: AtomicBool = AtomicBool::new(false);

/// Runs one command; false when it left the prompt (an attached console).
fn run(command: Command) -> bool {
    let answer = |result: Result<String, String>| match result {
        Ok(done) | Err(done) => say(&alloc::format!("{done}\n")),
    };
    // Said by the command before it acts (see `manage::start`).
    let announce = |what: &str| say(&alloc::format!("{what}\n"));
    let refused = |result: Result<(), String>| {
        if let Err(why) = result {
            say(&alloc::format!("{why}\n"));
        }
    };
    match command {
        Command::Help => say(command::HELP),
        Command::List => say(&format::list(&manage::rows())),
        Command::Info(vm) => match manage::info(&vm) {
            Ok(info) => say(&format::info(&info)),
            Err(error) => say(&alloc::format!("{error}\n")),
        },
        Command::Start(vm) => refused(manage::start(&vm, &announce)),
        Command::Shutdown { vm, timeout_s } => refused(manage::shutdown(&vm, timeout_s, &announce)),
        Command::Poweroff(vm) => refused(manage::poweroff(&vm, &announce)),
        Command::Reset(vm) => refused(manage::reset(&vm, &announce)),
        Command::Pause(vm) => answer(manage::pause(&vm)),
        Command::Resume(vm) => refused(manage::resume(&vm, &announce)),
        Command::Set { vm, setting } => answer(manage::set(&vm, setting)),
        Command::Console(vm) => match manage::console_of(&vm) {
            Ok(_) => {
                attach(&vm);
                return false;
            }
            Err(error) => say(&alloc::format!("{error}\n")),
        },
        Command::Cores => say(&cores()),
        Command::Mem => say(&format::mem(&manage::mem())),
        Command::Log => {
            let recent = crate::log::recent_lines();
            crate::log::shell_output(&recent);
        }
        Command::Top => {
            let mut mode = MODE.lock();
            // A key pressed since the redraw was queued left `top` already.
            let redraw = matches!(*mode, Mode::Top { .. });
            if redraw || matches!(*mode, Mode::Shell) {
                let next = crate::time::rdtsc() + crate::time::tsc_hz() * TOP_REFRESH_MS / 1000;
                *mode = Mode::Top { next };
                drop(mode);
                // Home and clear the screen for a redraw; the first view follows the command.
                let clear = if redraw { "\x1b[H\x1b[2J" } else { "" };
                say(&alloc::format!("{clear}{}(any key returns to the shell)\n", crate::vmm::top()));
                return false;
            }
        }
        Command::Quit => {
            QUITTING.store(true, Ordering::Release);
            manage::stop_all();
            say("stopping every VM; Basalt ends once they have\n");
        }
    }
    true
}

/// The console goes to `vm`: its recent output first, then live.
fn attach(vm: &str) {
    let Ok(console) = manage::console_of(vm) else { return };
    say(&alloc::format!("[console of {vm}; Ctrl-] returns to the shell]\n"));
    crate::log::shell_output(&console.recent());
    crate::log::hold_lines();
    console.set_attached(true);
    *MODE.lock() = Mode::Attached { vm: vm.into(), console };
}

/// A VM's run ended for good (not a restart): if its console is attached,
/// the operator is back at the prompt, with its end among the lines shown.
pub fn vm_stopped(vm: &str) {
    if !ON.load(Ordering::Acquire) {
        return;
    }
    let attached = matches!(&*MODE.lock(), Mode::Attached { vm: name, .. } if name == vm);
    if attached {
        detach();
    }
}

/// Back to the prompt, with the lines that waited meanwhile.
fn detach() {
    let previous = core::mem::replace(&mut *MODE.lock(), Mode::Shell);
    if let Mode::Attached { console, .. } = previous {
        console.set_attached(false);
    }
    let (held, lost) = crate::log::release_lines();
    say("\n[back in Basalt's shell]\n");
    crate::log::shell_output(&held);
    if lost > 0 {
        say(&alloc::format!("[{lost} bytes of Basalt's lines were lost while the console was attached]\n"));
    }
    prompt();
}

/// `cores`: each core's share in guests and halted since the last `cores`.
fn cores() -> String {
    let now = crate::time::rdtsc();
    let view = crate::vmm::core_view();
    let mut sample = CORES_SAMPLE.lock();
    let since = sample.last_look().unwrap_or(crate::vmm::first_run().max(1));
    let growth = sample.look(now, view.iter().map(|&(core, _, _, halted, in_guest)| (core, since, [halted, in_guest])));
    let rows: Vec<format::CoreRow> = view
        .into_iter()
        .zip(&growth)
        .map(|((core, runnable, running, ..), g)| format::CoreRow {
            core,
            guest_permille: permille(g.by[1], g.elapsed).min(1000),
            halted_permille: permille(g.by[0], g.elapsed).min(1000),
            runnable,
            running,
        })
        .collect();
    format::cores(&rows, crate::time::tsc_to_micros(now.saturating_sub(since)) / 1000)
}

/// The core has nothing to run: it waits for typing (or a kick) with the
/// host tick on, then runs what was typed.
pub fn serve_while_idle() {
    crate::apic::timer_start_periodic(crate::time::apic_timer_hz(), crate::vmm::HOST_TICK_HZ);
    x86_64::instructions::interrupts::enable_and_hlt();
    crate::log::pump();
    poll(crate::time::rdtsc());
    run_pending();
    crate::apic::timer_stop();
}
