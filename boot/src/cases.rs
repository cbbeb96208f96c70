//! Declarative integration test cases (tests/cases.toml) and how a run is judged.

use crate::emulator::{Emulator, Ending, Firmware, Machine, RunOutput};
use serde::Deserialize;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CaseFile {
    case: Vec<Case>,
}

#[derive(Deserialize, Clone, Copy, PartialEq, Eq, Debug)]
#[serde(rename_all = "lowercase")]
pub enum MachineKind {
    /// QEMU TCG: everything that does not need VT-x.
    Qemu,
    /// A CPU with VT-x: QEMU+KVM where the host offers VMX, else Bochs.
    Vmx,
}

#[derive(Deserialize, Clone, Copy, PartialEq, Eq, Debug)]
#[serde(rename_all = "lowercase")]
pub enum Expect {
    Success,
    Failure,
    Timeout,
}

#[derive(Deserialize, Clone, Debug)]
#[serde(deny_unknown_fields)]
pub struct Case {
    pub name: String,
    /// "bios" or "uefi".
    pub firmware: String,
    pub cpus: u32,
    #[serde(default = "default_memory")]
    pub memory_mib: u32,
    pub machine: MachineKind,
    /// Boot command line; the runner adds how to exit for the chosen emulator.
    #[serde(default)]
    pub cmdline: String,
    pub expect: Expect,
    /// Each must appear in the serial output, in this order.
    #[serde(default)]
    pub expect_lines: Vec<String>,
    /// None may appear in the serial output.
    #[serde(default)]
    pub forbid_lines: Vec<String>,
    /// Whether expect_lines must appear in order (VMs on several CPUs interleave).
    #[serde(default = "yes")]
    pub ordered: bool,
    pub timeout_s: u64,
    /// Bochs' emulated speed in millions of instructions per second (default 10).
    #[serde(default)]
    pub bochs_mips: Option<u64>,
    /// VMs to run, in this order (spread over the CPUs).
    #[serde(default)]
    pub vm: Vec<crate::guests::GuestVm>,
    /// Linux VMs (Debian's kernel with a busybox initramfs), run before `vm`.
    #[serde(default)]
    pub linux: Vec<crate::guests::LinuxGuest>,
    /// Keys typed on the serial console, each once its cue has appeared.
    #[serde(default)]
    pub console_input: Vec<crate::emulator::ConsoleInput>,
}

fn yes() -> bool {
    true
}

fn default_memory() -> u32 {
    256
}

impl Case {
    pub fn firmware(&self) -> Firmware {
        if self.firmware == "uefi" {
            Firmware::Uefi
        } else {
            Firmware::Bios
        }
    }

    pub fn machine(&self) -> Machine {
        let emulator = match self.machine {
            MachineKind::Qemu => Emulator::QemuTcg,
            MachineKind::Vmx => Emulator::best_for_vmx(),
        };
        Machine {
            emulator,
            firmware: self.firmware(),
            cpus: self.cpus,
            memory_mib: self.memory_mib,
            bochs_ips: self.bochs_mips.map_or(crate::emulator::BOCHS_IPS, |m| m * 1_000_000),
        }
    }
}

/// Parses and checks the case file; errors name the case and field.
pub fn parse(text: &str) -> Result<Vec<Case>, String> {
    let file: CaseFile = toml::from_str(text).map_err(|e| format!("tests/cases.toml: {e}"))?;
    let mut seen = std::collections::HashSet::new();
    for case in &file.case {
        let at = |what: &str| format!("tests/cases.toml: case '{}': {what}", case.name);
        if !seen.insert(case.name.clone()) {
            return Err(at("the name is used twice"));
        }
        if case.firmware != "bios" && case.firmware != "uefi" {
            return Err(at(&format!("firmware must be \"bios\" or \"uefi\", not \"{}\"", case.firmware)));
        }
        if !(1..=64).contains(&case.cpus) {
            return Err(at("cpus must be 1 to 64"));
        }
        if case.bochs_mips.is_some_and(|m| !(1..=1000).contains(&m)) {
            return Err(at("bochs_mips must be 1 to 1000"));
        }
        if case.timeout_s == 0 || case.timeout_s > 1800 {
            return Err(at("timeout_s must be 1 to 1800"));
        }
        for linux in &case.linux {
            // Each vCPU runs on a core of its own until the scheduler exists.
            if linux.vcpus == 0 || linux.vcpus > case.cpus {
                return Err(at(&format!(
                    "Linux VM '{}': vcpus must be 1 to the case's cpus ({})",
                    linux.name, case.cpus
                )));
            }
        }
        if case.console_input.iter().any(|step| step.after.is_empty() || step.send.is_empty()) {
            return Err(at("each console_input step needs a non-empty 'after' cue and 'send' keys"));
        }
        if case.cmdline.split_whitespace().any(|w| w.starts_with("exit=")) {
            return Err(at("cmdline must not set exit=; the runner picks it for the emulator"));
        }
    }
    Ok(file.case)
}

/// What is wrong with a run, judged against its case; empty means it passed.
pub fn judge(case: &Case, run: &RunOutput) -> Vec<String> {
    let mut problems = Vec::new();
    let ending_ok = matches!(
        (case.expect, &run.ending),
        (Expect::Success, Ending::Success) | (Expect::Failure, Ending::Failure) | (Expect::Timeout, Ending::Timeout)
    );
    if !ending_ok {
        problems.push(format!("expected the run to end in {:?}, it ended in {:?}", case.expect, run.ending));
    }
    let mut rest = run.serial.as_str();
    for line in &case.expect_lines {
        if !case.ordered {
            rest = run.serial.as_str();
        }
        match rest.find(line.as_str()) {
            Some(at) => rest = &rest[at + line.len()..],
            None if run.serial.contains(line.as_str()) => {
                problems.push(format!("serial has '{line}' but out of order"))
            }
            None => problems.push(format!("serial lacks '{line}'")),
        }
    }
    for line in &case.forbid_lines {
        if run.serial.contains(line.as_str()) {
            problems.push(format!("serial has forbidden '{line}'"));
        }
    }
    if let Some(cue) = &run.cue_never_seen {
        problems.push(format!("console input never typed: '{cue}' did not appear"));
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn case(expect: Expect) -> Case {
        parse(&format!(
            r#"[[case]]
name = "t"
firmware = "bios"
cpus = 2
machine = "qemu"
expect = "{}"
expect_lines = ["all 2 CPUs online", "selftest: PASS"]
forbid_lines = ["CRASH"]
timeout_s = 10
"#,
            format!("{expect:?}").to_lowercase()
        ))
        .unwrap()
        .remove(0)
    }

    fn run(ending: Ending, serial: &str) -> RunOutput {
        RunOutput { ending, serial: serial.into(), elapsed: Duration::from_secs(1), cue_never_seen: None }
    }

    const GOOD: &str = "x\nall 2 CPUs online\nselftest: PASS\n";

    #[test]
    fn a_good_run_passes() {
        assert!(judge(&case(Expect::Success), &run(Ending::Success, GOOD)).is_empty());
    }

    #[test]
    fn a_crash_is_caught_even_with_the_right_lines() {
        let problems = judge(&case(Expect::Success), &run(Ending::Failure, &format!("{GOOD}BASALT CRASH")));
        assert_eq!(problems.len(), 2, "{problems:?}");
    }

    #[test]
    fn timeouts_and_abnormal_ends_fail_a_success_case() {
        assert!(!judge(&case(Expect::Success), &run(Ending::Timeout, GOOD)).is_empty());
        assert!(!judge(&case(Expect::Success), &run(Ending::Abnormal("triple fault".into()), GOOD)).is_empty());
    }

    #[test]
    fn missing_or_reordered_lines_fail() {
        let problems = judge(&case(Expect::Success), &run(Ending::Success, "selftest: PASS\nall 2 CPUs online\n"));
        assert_eq!(problems, vec!["serial has 'selftest: PASS' but out of order".to_string()]);
        let problems = judge(&case(Expect::Success), &run(Ending::Success, "all 2 CPUs online\n"));
        assert_eq!(problems, vec!["serial lacks 'selftest: PASS'".to_string()]);
    }

    #[test]
    fn unordered_cases_only_need_the_lines() {
        let mut c = case(Expect::Success);
        c.ordered = false;
        assert!(judge(&c, &run(Ending::Success, "selftest: PASS\nall 2 CPUs online\n")).is_empty());
        assert!(!judge(&c, &run(Ending::Success, "selftest: PASS\n")).is_empty());
    }

    #[test]
    fn console_input_left_untyped_fails_the_case() {
        let mut untyped = run(Ending::Success, GOOD);
        untyped.cue_never_seen = Some("login:".into());
        assert_eq!(
            judge(&case(Expect::Success), &untyped),
            vec!["console input never typed: 'login:' did not appear".to_string()]
        );
    }

    #[test]
    fn an_expected_hang_must_really_time_out() {
        let mut c = case(Expect::Timeout);
        c.expect_lines.clear();
        assert!(judge(&c, &run(Ending::Timeout, "")).is_empty());
        assert!(!judge(&c, &run(Ending::Success, "")).is_empty());
    }

    #[test]
    fn bad_case_files_name_the_problem() {
        let bad = |body: &str| parse(&format!("[[case]]\nname = \"b\"\n{body}")).unwrap_err();
        let base = "cpus = 1\nmachine = \"qemu\"\nexpect = \"success\"\ntimeout_s = 5\n";
        assert!(bad(&format!("firmware = \"efi\"\n{base}")).contains("firmware must be"));
        assert!(bad(&format!("firmware = \"bios\"\ncmdline = \"exit=qemu\"\n{base}")).contains("exit="));
        assert!(bad(&format!("firmware = \"bios\"\ncolour = 1\n{base}")).contains("unknown field"));
        let no_cue = format!("firmware = \"bios\"\n{base}[[case.console_input]]\nafter = \"\"\nsend = \"x\"\n");
        assert!(bad(&no_cue).contains("non-empty 'after'"));
    }

    #[test]
    fn the_shipped_case_file_parses() {
        let text = std::fs::read_to_string(crate::workspace_root().join("tests/cases.toml")).unwrap();
        let cases = parse(&text).unwrap();
        assert!(cases.iter().any(|c| c.machine == MachineKind::Vmx));
        assert!(cases.iter().any(|c| c.expect == Expect::Timeout));
        assert!(cases.iter().any(|c| c.expect == Expect::Failure));
    }
}
