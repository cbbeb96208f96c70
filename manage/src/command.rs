//! The shell's command parser: one typed line to one [`Command`], or one
//! line saying what was wrong with it.
//!
//! The parser only checks shape (the right number of words, numbers in
//! range); whether a named VM exists, and whether its state allows the
//! operation, is the kernel's to answer, since only it knows. Errors quote
//! the offending word, shortened, so a huge token cannot make a huge reply.

use alloc::string::String;
use core::fmt;
use loader::manifest::{parse_affinity, MAX_WEIGHT};

/// What an operator can ask for.
#[derive(Debug, PartialEq, Eq, Clone)]
pub enum Command {
    Help,
    List,
    Info(String),
    Start(String),
    /// `shutdown NAME [SECONDS]`: ask the guest to power off; with SECONDS
    /// (1 to 3600), power it off by force if it has not done so by then.
    Shutdown {
        vm: String,
        timeout_s: Option<u32>,
    },
    Poweroff(String),
    Reset(String),
    Pause(String),
    Resume(String),
    Console(String),
    Top,
    Cores,
    Mem,
    Log,
    Set {
        vm: String,
        setting: Setting,
    },
    /// Stops every VM and ends Basalt (powers the host off).
    Quit,
}

impl Command {
    /// The command's word, as typed.
    pub fn name(&self) -> &'static str {
        match self {
            Command::Help => "help",
            Command::List => "list",
            Command::Info(_) => "info",
            Command::Start(_) => "start",
            Command::Shutdown { .. } => "shutdown",
            Command::Poweroff(_) => "poweroff",
            Command::Reset(_) => "reset",
            Command::Pause(_) => "pause",
            Command::Resume(_) => "resume",
            Command::Console(_) => "console",
            Command::Top => "top",
            Command::Cores => "cores",
            Command::Mem => "mem",
            Command::Log => "log",
            Command::Set { .. } => "set",
            Command::Quit => "quit",
        }
    }

    /// The VM the command is about, if it names one.
    pub fn vm(&self) -> Option<&str> {
        match self {
            Command::Info(vm)
            | Command::Start(vm)
            | Command::Shutdown { vm, .. }
            | Command::Poweroff(vm)
            | Command::Reset(vm)
            | Command::Pause(vm)
            | Command::Resume(vm)
            | Command::Console(vm)
            | Command::Set { vm, .. } => Some(vm),
            Command::Help
            | Command::List
            | Command::Top
            | Command::Cores
            | Command::Mem
            | Command::Log
            | Command::Quit => None,
        }
    }
}

/// A scheduling setting `set` changes on a VM's vCPUs.
#[derive(Debug, PartialEq, Eq, Clone, Copy)]
pub enum Setting {
    /// Share of a contended core, 1 to 65535.
    Weight(u32),
    /// At most this percent (1 to 100) of one core per vCPU; None: no cap.
    Cap(Option<u8>),
    /// The host CPUs its vCPUs may run on, one bit each; None: any.
    Cpus(Option<u64>),
}

/// The longest a quoted word gets in an error, in characters.
pub const MAX_QUOTED: usize = 32;

/// A typed line the parser refused; `Display` gives the one line to print.
#[derive(Debug, PartialEq, Eq, Clone)]
pub enum ParseError {
    /// The first word is not a command (quoted, shortened).
    UnknownCommand(String),
    /// The command needs a VM name and none was given.
    MissingVm(&'static str),
    /// The command takes no arguments and some were given.
    NoArguments(&'static str),
    /// More words than the command takes.
    TooManyArguments(&'static str),
    BadWeight(String),
    BadCap(String),
    BadCpus(String),
    BadTimeout(String),
    /// `set` without its three arguments.
    SetUsage,
    UnknownSetting(String),
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ParseError::UnknownCommand(word) => write!(f, "unknown command '{word}'; 'help' lists the commands"),
            ParseError::MissingVm(command) => write!(f, "'{command}' needs a VM name: {}", usage(command)),
            ParseError::NoArguments(command) => write!(f, "'{command}' takes no arguments"),
            ParseError::TooManyArguments("shutdown") => {
                write!(f, "'shutdown' takes one VM name and an optional timeout: {}", usage("shutdown"))
            }
            ParseError::TooManyArguments(command) => write!(f, "'{command}' takes one VM name"),
            ParseError::BadWeight(word) => write!(f, "bad weight '{word}': a number from 1 to {MAX_WEIGHT}"),
            ParseError::BadCap(word) => write!(f, "bad cap '{word}': a percentage from 1 to 100, or none"),
            ParseError::BadCpus(word) => write!(f, "bad CPU list '{word}': e.g. 0,2-3, or all"),
            ParseError::BadTimeout(word) => {
                write!(f, "bad timeout '{word}': seconds from {MIN_TIMEOUT_S} to {MAX_TIMEOUT_S}")
            }
            ParseError::SetUsage => f.write_str("'set' takes NAME weight|cap|cpus VALUE"),
            ParseError::UnknownSetting(word) => write!(f, "unknown setting '{word}': weight, cap or cpus"),
        }
    }
}

/// The longest a shutdown may wait before forcing the power off: an hour is
/// past any guest's orderly shutdown, and a bound keeps a typo from leaving a
/// VM half-stopped for days.
pub const MAX_TIMEOUT_S: u32 = 3600;
pub const MIN_TIMEOUT_S: u32 = 1;

/// The help text: one line per command, then the keys that matter.
pub const HELP: &str = "\
help                     this list
list                     every VM: state, vCPUs, memory, CPU use, uptime
info NAME                one VM in detail: settings, scheduling, exits
start NAME               start a VM that is defined, stopped or crashed
shutdown NAME [SECONDS]  ask the guest to power off; force it after SECONDS
poweroff NAME            stop a VM now, whatever its guest is doing
reset NAME               hard-reset a running or paused VM
pause NAME               hold a running VM's vCPUs off the cores
resume NAME              let a paused VM run again
console NAME             attach to a VM's console; Ctrl-] leaves it
top                      each vCPU: state, core, CPU use, steal, exits
cores                    each host core: time in guests, halted, run queue
mem                      host memory: total, free, each VM's share
log                      Basalt's recent log lines
set NAME weight N        share of a contended core, 1-65535 (default 256)
set NAME cap P|none      at most P percent (1-100) of one core per vCPU
set NAME cpus LIST|all   the host CPUs its vCPUs may run on, e.g. 0,2-3
quit                     stop every VM and end Basalt: powers the host off
Keys: Up/Down recall earlier lines, Ctrl-U clears the line, Ctrl-C cancels it.
";

/// How a command is typed, for errors that need it.
fn usage(command: &str) -> &'static str {
    match command {
        "info" => "info NAME",
        "start" => "start NAME",
        "shutdown" => "shutdown NAME [SECONDS]",
        "poweroff" => "poweroff NAME",
        "reset" => "reset NAME",
        "pause" => "pause NAME",
        "resume" => "resume NAME",
        "console" => "console NAME",
        "set" => "set NAME weight|cap|cpus VALUE",
        _ => "see 'help'",
    }
}

/// `word` for quoting in an error: at most `MAX_QUOTED` characters, the last
/// three "..." when it was longer.
fn quoted(word: &str) -> String {
    if word.chars().count() <= MAX_QUOTED {
        return String::from(word);
    }
    let mut short: String = word.chars().take(MAX_QUOTED - 3).collect();
    short.push_str("...");
    short
}

/// A plain decimal number: digits only (no sign, no spaces, no prefix), no
/// overflow. Leading zeros are allowed: "05" is five.
fn decimal(word: &str) -> Option<u64> {
    if word.is_empty() {
        return None;
    }
    word.bytes().try_fold(0u64, |value, byte| {
        let digit = char::from(byte).to_digit(10)?;
        value.checked_mul(10)?.checked_add(u64::from(digit))
    })
}

/// A decimal in `min..=max`.
fn decimal_in(word: &str, min: u32, max: u32) -> Option<u32> {
    let value = u32::try_from(decimal(word)?).ok()?;
    (min..=max).contains(&value).then_some(value)
}

fn setting(kind: &str, value: &str) -> Result<Setting, ParseError> {
    match kind {
        "weight" => match decimal_in(value, 1, MAX_WEIGHT) {
            Some(weight) => Ok(Setting::Weight(weight)),
            None => Err(ParseError::BadWeight(quoted(value))),
        },
        "cap" if value == "none" => Ok(Setting::Cap(None)),
        "cap" => match decimal_in(value, 1, 100).and_then(|percent| u8::try_from(percent).ok()) {
            Some(percent) => Ok(Setting::Cap(Some(percent))),
            None => Err(ParseError::BadCap(quoted(value))),
        },
        "cpus" if value == "all" => Ok(Setting::Cpus(None)),
        "cpus" => {
            // `parse_affinity` takes what Rust's integer parser takes, "+1"
            // too; the shell's numbers are digits only.
            let plain = value.bytes().all(|byte| byte.is_ascii_digit() || byte == b',' || byte == b'-');
            match parse_affinity(value).filter(|_| plain) {
                Some(set) => Ok(Setting::Cpus(Some(set))),
                None => Err(ParseError::BadCpus(quoted(value))),
            }
        }
        other => Err(ParseError::UnknownSetting(quoted(other))),
    }
}

/// Parses one typed line. Ok(None) for a blank line.
pub fn parse(line: &str) -> Result<Option<Command>, ParseError> {
    let mut words = line.split_ascii_whitespace();
    let Some(first) = words.next() else {
        return Ok(None);
    };
    // A command's words after the first; at most four matter (`set`'s three
    // and one too many), the rest only make it "too many".
    let mut arguments: [Option<&str>; 4] = [None; 4];
    for slot in arguments.iter_mut() {
        *slot = words.next();
    }
    let extra = words.next().is_some() || arguments[3].is_some();
    let [a, b, c, _] = arguments;

    let bare = |command: Command| match a {
        None => Ok(Some(command)),
        Some(_) => Err(ParseError::NoArguments(command.name())),
    };
    let with_vm = |name: &'static str, build: fn(String) -> Command| match (a, b) {
        (None, _) => Err(ParseError::MissingVm(name)),
        (Some(vm), None) => Ok(Some(build(String::from(vm)))),
        (Some(_), Some(_)) => Err(ParseError::TooManyArguments(name)),
    };

    match first {
        "help" => bare(Command::Help),
        "list" => bare(Command::List),
        "top" => bare(Command::Top),
        "cores" => bare(Command::Cores),
        "mem" => bare(Command::Mem),
        "log" => bare(Command::Log),
        "quit" => bare(Command::Quit),
        "info" => with_vm("info", Command::Info),
        "start" => with_vm("start", Command::Start),
        "poweroff" => with_vm("poweroff", Command::Poweroff),
        "reset" => with_vm("reset", Command::Reset),
        "pause" => with_vm("pause", Command::Pause),
        "resume" => with_vm("resume", Command::Resume),
        "console" => with_vm("console", Command::Console),
        "shutdown" => match (a, b, c) {
            (None, _, _) => Err(ParseError::MissingVm("shutdown")),
            (Some(_), _, Some(_)) => Err(ParseError::TooManyArguments("shutdown")),
            (Some(vm), None, None) => Ok(Some(Command::Shutdown { vm: String::from(vm), timeout_s: None })),
            (Some(vm), Some(seconds), None) => match decimal_in(seconds, MIN_TIMEOUT_S, MAX_TIMEOUT_S) {
                Some(timeout) => Ok(Some(Command::Shutdown { vm: String::from(vm), timeout_s: Some(timeout) })),
                None => Err(ParseError::BadTimeout(quoted(seconds))),
            },
        },
        "set" => match (a, b, c) {
            (Some(vm), Some(kind), value) => {
                if !matches!(kind, "weight" | "cap" | "cpus") {
                    return Err(ParseError::UnknownSetting(quoted(kind)));
                }
                match value {
                    Some(value) if !extra => {
                        Ok(Some(Command::Set { vm: String::from(vm), setting: setting(kind, value)? }))
                    }
                    _ => Err(ParseError::SetUsage),
                }
            }
            _ => Err(ParseError::SetUsage),
        },
        other => Err(ParseError::UnknownCommand(quoted(other))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::string::ToString;
    use alloc::vec::Vec;

    fn ok(line: &str) -> Command {
        match parse(line) {
            Ok(Some(command)) => command,
            other => panic!("{line:?} gave {other:?}"),
        }
    }

    fn error(line: &str) -> String {
        match parse(line) {
            Err(error) => error.to_string(),
            other => panic!("{line:?} gave {other:?}"),
        }
    }

    fn vm(name: &str) -> String {
        String::from(name)
    }

    #[test]
    fn blank_lines_are_nothing() {
        for line in ["", " ", "\t", "  \t  \r\n ", "\x0c"] {
            assert_eq!(parse(line), Ok(None), "{line:?}");
        }
    }

    #[test]
    fn commands_without_arguments() {
        assert_eq!(ok("help"), Command::Help);
        assert_eq!(ok("list"), Command::List);
        assert_eq!(ok("top"), Command::Top);
        assert_eq!(ok("cores"), Command::Cores);
        assert_eq!(ok("mem"), Command::Mem);
        assert_eq!(ok("log"), Command::Log);
        assert_eq!(ok("quit"), Command::Quit);
        assert_eq!(ok("  list  "), Command::List);
        assert_eq!(ok("\tlist\t"), Command::List);
    }

    #[test]
    fn commands_taking_a_vm() {
        assert_eq!(ok("info web"), Command::Info(vm("web")));
        assert_eq!(ok("start web"), Command::Start(vm("web")));
        assert_eq!(ok("poweroff web"), Command::Poweroff(vm("web")));
        assert_eq!(ok("reset web"), Command::Reset(vm("web")));
        assert_eq!(ok("pause web"), Command::Pause(vm("web")));
        assert_eq!(ok("resume web"), Command::Resume(vm("web")));
        assert_eq!(ok("console web"), Command::Console(vm("web")));
        assert_eq!(ok("start   db-2 "), Command::Start(vm("db-2")));
        assert_eq!(ok("start\tdb\t"), Command::Start(vm("db")));
    }

    #[test]
    fn shutdown_with_and_without_a_timeout() {
        assert_eq!(ok("shutdown web"), Command::Shutdown { vm: vm("web"), timeout_s: None });
        assert_eq!(ok("shutdown web 30"), Command::Shutdown { vm: vm("web"), timeout_s: Some(30) });
        assert_eq!(ok("shutdown web 1"), Command::Shutdown { vm: vm("web"), timeout_s: Some(1) });
        assert_eq!(ok("shutdown web 3600"), Command::Shutdown { vm: vm("web"), timeout_s: Some(3600) });
        assert_eq!(ok("shutdown web 0060"), Command::Shutdown { vm: vm("web"), timeout_s: Some(60) });
    }

    #[test]
    fn shutdown_refuses_bad_timeouts() {
        for bad in ["0", "3601", "-1", "+5", "05x", "1e3", "0x10", "1.5", "99999999999999999999999", "ten"] {
            assert_eq!(parse(&alloc::format!("shutdown web {bad}")), Err(ParseError::BadTimeout(bad.to_string())));
        }
        assert_eq!(error("shutdown web 0"), "bad timeout '0': seconds from 1 to 3600");
        assert_eq!(error("shutdown"), "'shutdown' needs a VM name: shutdown NAME [SECONDS]");
        assert_eq!(
            error("shutdown web 5 now"),
            "'shutdown' takes one VM name and an optional timeout: shutdown NAME [SECONDS]"
        );
    }

    #[test]
    fn set_each_setting() {
        let set = |setting| Command::Set { vm: vm("web"), setting };
        assert_eq!(ok("set web weight 1"), set(Setting::Weight(1)));
        assert_eq!(ok("set web weight 512"), set(Setting::Weight(512)));
        assert_eq!(ok("set web weight 65535"), set(Setting::Weight(65535)));
        assert_eq!(ok("set web cap 1"), set(Setting::Cap(Some(1))));
        assert_eq!(ok("set web cap 100"), set(Setting::Cap(Some(100))));
        assert_eq!(ok("set web cap none"), set(Setting::Cap(None)));
        assert_eq!(ok("set web cpus 0"), set(Setting::Cpus(Some(0b1))));
        assert_eq!(ok("set web cpus 0,2-3"), set(Setting::Cpus(Some(0b1101))));
        assert_eq!(ok("set web cpus 63"), set(Setting::Cpus(Some(1 << 63))));
        assert_eq!(ok("set web cpus all"), set(Setting::Cpus(None)));
    }

    #[test]
    fn set_refuses_bad_values() {
        for bad in ["0", "65536", "-3", "+5", "05x", "4294967296", "heavy"] {
            assert_eq!(parse(&alloc::format!("set web weight {bad}")), Err(ParseError::BadWeight(bad.to_string())));
        }
        for bad in ["0", "101", "255", "256", "-1", "+5", "50%", "None", "no"] {
            assert_eq!(parse(&alloc::format!("set web cap {bad}")), Err(ParseError::BadCap(bad.to_string())));
        }
        for bad in ["64", "3-1", "+1", "0,", ",0", "0,,1", "1-", "-1", "a", "0x1", "ALL", "0;1", "1-+2"] {
            assert_eq!(parse(&alloc::format!("set web cpus {bad}")), Err(ParseError::BadCpus(bad.to_string())));
        }
        assert_eq!(error("set web weight x"), "bad weight 'x': a number from 1 to 65535");
        assert_eq!(error("set web cap x"), "bad cap 'x': a percentage from 1 to 100, or none");
        assert_eq!(error("set web cpus x"), "bad CPU list 'x': e.g. 0,2-3, or all");
    }

    #[test]
    fn set_needs_its_three_words() {
        for line in ["set", "set web", "set web weight", "set web cap 5 6", "set web cpus 1 2 3 4"] {
            assert_eq!(parse(line), Err(ParseError::SetUsage), "{line:?}");
        }
        assert_eq!(error("set web"), "'set' takes NAME weight|cap|cpus VALUE");
        assert_eq!(parse("set web speed 5"), Err(ParseError::UnknownSetting(vm("speed"))));
        assert_eq!(parse("set web speed"), Err(ParseError::UnknownSetting(vm("speed"))));
        assert_eq!(error("set web x 1"), "unknown setting 'x': weight, cap or cpus");
        // Settings are lower case, as commands are.
        assert_eq!(parse("set web Weight 5"), Err(ParseError::UnknownSetting(vm("Weight"))));
    }

    #[test]
    fn unknown_commands_are_named() {
        assert_eq!(error("frob"), "unknown command 'frob'; 'help' lists the commands");
        assert_eq!(parse("frob web"), Err(ParseError::UnknownCommand(vm("frob"))));
        // Case-sensitive, lower case.
        assert_eq!(parse("LIST"), Err(ParseError::UnknownCommand(vm("LIST"))));
        assert_eq!(parse("Start web"), Err(ParseError::UnknownCommand(vm("Start"))));
    }

    #[test]
    fn missing_vm_names() {
        let cases = [
            ("info", "'info' needs a VM name: info NAME"),
            ("start", "'start' needs a VM name: start NAME"),
            ("poweroff", "'poweroff' needs a VM name: poweroff NAME"),
            ("reset", "'reset' needs a VM name: reset NAME"),
            ("pause", "'pause' needs a VM name: pause NAME"),
            ("resume", "'resume' needs a VM name: resume NAME"),
            ("console", "'console' needs a VM name: console NAME"),
        ];
        for (line, expected) in cases {
            assert_eq!(error(line), expected);
            assert_eq!(error(&alloc::format!("  {line}  ")), expected);
        }
    }

    #[test]
    fn too_many_arguments() {
        for command in ["help", "list", "top", "cores", "mem", "log", "quit"] {
            let line = alloc::format!("{command} extra");
            assert_eq!(error(&line), alloc::format!("'{command}' takes no arguments"));
        }
        for command in ["info", "start", "poweroff", "reset", "pause", "resume", "console"] {
            let line = alloc::format!("{command} a b");
            assert_eq!(error(&line), alloc::format!("'{command}' takes one VM name"));
        }
        assert_eq!(error("start a b c d e f"), "'start' takes one VM name");
    }

    #[test]
    fn echoed_words_are_shortened() {
        let huge = "x".repeat(500);
        let expected = alloc::format!("{}...", "x".repeat(29));
        assert_eq!(parse(&huge), Err(ParseError::UnknownCommand(expected.clone())));
        assert_eq!(parse(&alloc::format!("set web weight {huge}")), Err(ParseError::BadWeight(expected.clone())));
        assert_eq!(parse(&alloc::format!("set web {huge} 1")), Err(ParseError::UnknownSetting(expected.clone())));
        assert_eq!(parse(&alloc::format!("shutdown web {huge}")), Err(ParseError::BadTimeout(expected)));
        // Exactly the limit is kept whole.
        let limit = "y".repeat(MAX_QUOTED);
        assert_eq!(parse(&limit), Err(ParseError::UnknownCommand(limit.clone())));
        // Shortening counts characters, so it never splits one.
        let wide = "é".repeat(40);
        match parse(&wide) {
            Err(ParseError::UnknownCommand(word)) => {
                assert_eq!(word.chars().count(), MAX_QUOTED);
                assert!(word.ends_with("..."));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn names_match_the_typed_words() {
        let commands = [
            ("help", Command::Help),
            ("list", Command::List),
            ("info", Command::Info(vm("a"))),
            ("start", Command::Start(vm("a"))),
            ("shutdown", Command::Shutdown { vm: vm("a"), timeout_s: None }),
            ("poweroff", Command::Poweroff(vm("a"))),
            ("reset", Command::Reset(vm("a"))),
            ("pause", Command::Pause(vm("a"))),
            ("resume", Command::Resume(vm("a"))),
            ("console", Command::Console(vm("a"))),
            ("top", Command::Top),
            ("cores", Command::Cores),
            ("mem", Command::Mem),
            ("log", Command::Log),
            ("set", Command::Set { vm: vm("a"), setting: Setting::Weight(1) }),
            ("quit", Command::Quit),
        ];
        for (word, command) in commands {
            assert_eq!(command.name(), word);
            // Every command is in the help text, at the start of a line.
            assert!(HELP.lines().any(|line| line.starts_with(word)), "{word} missing from HELP");
            let takes_vm = command.vm().is_some();
            assert_eq!(takes_vm, !matches!(word, "help" | "list" | "top" | "cores" | "mem" | "log" | "quit"));
        }
    }

    #[test]
    fn the_help_text() {
        assert!(HELP.ends_with('\n'));
        assert!(!HELP.contains('\r'));
        assert!(HELP.contains("Ctrl-]"));
        assert!(HELP.lines().any(|line| line.starts_with("quit") && line.contains("powers the host off")));
        for line in HELP.lines() {
            // A serial terminal is 80 columns wide.
            assert!(line.len() < 80, "{line}");
            assert!(!line.ends_with(' '), "{line:?}");
        }
    }

    #[test]
    fn decimal_numbers() {
        assert_eq!(decimal("0"), Some(0));
        assert_eq!(decimal("007"), Some(7));
        assert_eq!(decimal("18446744073709551615"), Some(u64::MAX));
        assert_eq!(decimal("18446744073709551616"), None);
        assert_eq!(decimal(""), None);
        assert_eq!(decimal("+5"), None);
        assert_eq!(decimal("-5"), None);
        assert_eq!(decimal("05x"), None);
        assert_eq!(decimal("١"), None); // A digit, but not an ASCII one.
        assert_eq!(decimal_in("4294967296", 1, u32::MAX), None);
    }

    /// Random lines of the characters commands are made of never panic, and
    /// every error is one short line.
    #[test]
    fn no_input_panics() {
        let alphabet: Vec<char> = "setwighcapunoldfr0123456789,-+ \t\u{e9}\u{0}x".chars().collect();
        let mut state = 0x9e37_79b9_7f4a_7c15_u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let prefixes = ["", "set web ", "set web weight ", "set web cpus ", "shutdown web ", "start "];
        for round in 0..20_000 {
            let length = (next() % 24) as usize;
            let mut line = String::from(prefixes[round % prefixes.len()]);
            for _ in 0..length {
                line.push(alphabet[(next() % alphabet.len() as u64) as usize]);
            }
            if let Err(error) = parse(&line) {
                let text = error.to_string();
                assert!(!text.contains('\n'), "{text:?}");
                assert!(text.len() < 120, "{text:?}");
            }
        }
    }
}
