//! VM states, which operation each allows, and what follows a run's end.
//!
//! The rules live here, apart from the kernel's mechanism, so that every
//! command refuses an impossible request the same way (before touching a
//! vCPU) and so the whole table can be tested on the host.

use alloc::format;
use alloc::string::String;
use core::fmt;

/// Where a VM is in its life, as the operator sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Configured, never started since Basalt booted.
    Defined,
    Running,
    /// Its vCPUs are held off the cores; its memory and devices are kept.
    Paused,
    /// Asked to shut down; its guest has not finished yet.
    Stopping,
    /// Its run ended cleanly (or an operator stopped it).
    Stopped,
    /// Its run ended in a crash and its policy did not restart it.
    Crashed,
}

impl State {
    /// Every state, for tables and tests.
    pub const ALL: [State; 6] =
        [State::Defined, State::Running, State::Paused, State::Stopping, State::Stopped, State::Crashed];

    pub fn name(self) -> &'static str {
        match self {
            State::Defined => "defined",
            State::Running => "running",
            State::Paused => "paused",
            State::Stopping => "stopping",
            State::Stopped => "stopped",
            State::Crashed => "crashed",
        }
    }

    /// The VM's run has ended (or never began): its resources can be rebuilt
    /// by a start.
    pub fn is_down(self) -> bool {
        matches!(self, State::Defined | State::Stopped | State::Crashed)
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What an operator can ask of one VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    Start,
    /// Ask the guest to power itself off (ACPI power button).
    Shutdown,
    /// Stop it now, whatever the guest is doing.
    Poweroff,
    Reset,
    Pause,
    Resume,
    Console,
    Set,
}

impl Operation {
    /// Every operation, for tables and tests.
    pub const ALL: [Operation; 8] = [
        Operation::Start,
        Operation::Shutdown,
        Operation::Poweroff,
        Operation::Reset,
        Operation::Pause,
        Operation::Resume,
        Operation::Console,
        Operation::Set,
    ];

    /// The command's word.
    pub fn name(self) -> &'static str {
        match self {
            Operation::Start => "start",
            Operation::Shutdown => "shutdown",
            Operation::Poweroff => "poweroff",
            Operation::Reset => "reset",
            Operation::Pause => "pause",
            Operation::Resume => "resume",
            Operation::Console => "console",
            Operation::Set => "set",
        }
    }

    /// The verb around its object, as an English sentence needs it: "shut
    /// 'web' down" reads better than "shutdown 'web'".
    fn phrase(self, object: &str) -> String {
        match self {
            Operation::Start => format!("start {object}"),
            Operation::Shutdown => format!("shut {object} down"),
            Operation::Poweroff => format!("power {object} off"),
            Operation::Reset => format!("reset {object}"),
            Operation::Pause => format!("pause {object}"),
            Operation::Resume => format!("resume {object}"),
            Operation::Console => format!("attach to the console of {object}"),
            Operation::Set => format!("change the settings of {object}"),
        }
    }
}

/// An operation the VM's state does not allow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StateError {
    pub op: Operation,
    pub state: State,
}

impl StateError {
    /// The refusal naming the VM: "cannot pause 'web': it is stopped".
    pub fn describe(&self, vm: &str) -> String {
        self.sentence(&format!("'{vm}'"))
    }

    fn sentence(&self, object: &str) -> String {
        let action = self.op.phrase(object);
        let state = self.state;
        match self.hint() {
            Some(hint) => format!("cannot {action}: it is {state} ({hint})"),
            None => format!("cannot {action}: it is {state}"),
        }
    }

    /// What the operator can do instead, where that is not obvious.
    fn hint(&self) -> Option<&'static str> {
        match (self.op, self.state) {
            (Operation::Shutdown, State::Paused) => Some("resume it first, or poweroff"),
            (Operation::Shutdown, State::Stopping) => Some("poweroff forces it off"),
            (Operation::Start, State::Stopping) => Some("wait for it to stop, or poweroff"),
            (Operation::Start, State::Running | State::Paused) => Some("reset restarts it"),
            _ => None,
        }
    }
}

impl fmt::Display for StateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.sentence("it"))
    }
}

/// Whether `op` is allowed on a VM in `state`.
pub fn check(op: Operation, state: State) -> Result<(), StateError> {
    use State::*;
    let allowed = match op {
        Operation::Start => matches!(state, Defined | Stopped | Crashed),
        Operation::Shutdown => matches!(state, Running),
        Operation::Poweroff => matches!(state, Running | Paused | Stopping),
        Operation::Reset => matches!(state, Running | Paused),
        Operation::Pause => matches!(state, Running),
        Operation::Resume => matches!(state, Paused),
        Operation::Console | Operation::Set => true,
    };
    if allowed {
        Ok(())
    } else {
        Err(StateError { op, state })
    }
}

/// How a VM's run ended, as far as its crash policy cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// The guest powered off, exited, halted for good or ran out of time, or
    /// an operator stopped it: nothing to retry.
    Clean,
    /// A triple fault, a guest the VMM cannot run, a failed entry: the guest
    /// did not mean to stop, and its policy may restart it.
    Crash,
}

/// A VM's crash policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnCrash {
    /// Leave it crashed, for an operator to look at.
    #[default]
    Stop,
    /// Start it again, at most `limit` times after each operator start, so a
    /// guest that crashes at boot does not loop forever.
    Restart { limit: u32 },
}

/// What the kernel does with a VM whose run has ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterStop {
    Stopped,
    Crashed,
    Restart,
}

/// What follows a run's end: `restarts` is how many crash restarts this VM
/// has had since an operator last started it.
pub fn after_stop(ending: Ending, policy: OnCrash, restarts: u32) -> AfterStop {
    match (ending, policy) {
        (Ending::Clean, _) => AfterStop::Stopped,
        (Ending::Crash, OnCrash::Stop) => AfterStop::Crashed,
        (Ending::Crash, OnCrash::Restart { limit }) if restarts < limit => AfterStop::Restart,
        (Ending::Crash, OnCrash::Restart { .. }) => AfterStop::Crashed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::string::ToString;

    #[test]
    fn state_names_and_display() {
        let names: alloc::vec::Vec<&str> = State::ALL.iter().map(|s| s.name()).collect();
        assert_eq!(names, ["defined", "running", "paused", "stopping", "stopped", "crashed"]);
        for state in State::ALL {
            assert_eq!(state.to_string(), state.name());
        }
    }

    #[test]
    fn operation_names() {
        let names: alloc::vec::Vec<&str> = Operation::ALL.iter().map(|o| o.name()).collect();
        assert_eq!(names, ["start", "shutdown", "poweroff", "reset", "pause", "resume", "console", "set"]);
    }

    #[test]
    fn down_states() {
        let down: alloc::vec::Vec<State> = State::ALL.into_iter().filter(|s| s.is_down()).collect();
        assert_eq!(down, [State::Defined, State::Stopped, State::Crashed]);
    }

    /// The whole table, written out as the operator reads it: one row per
    /// operation, one column per state (D R P S s C).
    #[test]
    fn the_full_table_of_operations_and_states() {
        use Operation::*;
        let table: [(Operation, [bool; 6]); 8] = [
            //            defined running paused stopping stopped crashed
            (Start, [true, false, false, false, true, true]),
            (Shutdown, [false, true, false, false, false, false]),
            (Poweroff, [false, true, true, true, false, false]),
            (Reset, [false, true, true, false, false, false]),
            (Pause, [false, true, false, false, false, false]),
            (Resume, [false, false, true, false, false, false]),
            (Console, [true; 6]),
            (Set, [true; 6]),
        ];
        for (op, allowed) in table {
            for (state, allowed) in State::ALL.into_iter().zip(allowed) {
                let result = check(op, state);
                if allowed {
                    assert_eq!(result, Ok(()), "{op:?} in {state:?}");
                } else {
                    assert_eq!(result, Err(StateError { op, state }), "{op:?} in {state:?}");
                }
            }
        }
    }

    #[test]
    fn refusals_read_as_sentences() {
        let stopped_pause = StateError { op: Operation::Pause, state: State::Stopped };
        assert_eq!(stopped_pause.to_string(), "cannot pause it: it is stopped");
        assert_eq!(stopped_pause.describe("web"), "cannot pause 'web': it is stopped");

        let paused_shutdown = StateError { op: Operation::Shutdown, state: State::Paused };
        assert_eq!(
            paused_shutdown.describe("web"),
            "cannot shut 'web' down: it is paused (resume it first, or poweroff)"
        );
        assert_eq!(paused_shutdown.to_string(), "cannot shut it down: it is paused (resume it first, or poweroff)");

        let cases = [
            (Operation::Shutdown, State::Stopping, "cannot shut 'db' down: it is stopping (poweroff forces it off)"),
            (Operation::Shutdown, State::Defined, "cannot shut 'db' down: it is defined"),
            (Operation::Poweroff, State::Stopped, "cannot power 'db' off: it is stopped"),
            (Operation::Start, State::Running, "cannot start 'db': it is running (reset restarts it)"),
            (Operation::Start, State::Stopping, "cannot start 'db': it is stopping (wait for it to stop, or poweroff)"),
            (Operation::Reset, State::Crashed, "cannot reset 'db': it is crashed"),
            (Operation::Resume, State::Running, "cannot resume 'db': it is running"),
            (Operation::Console, State::Stopped, "cannot attach to the console of 'db': it is stopped"),
            (Operation::Set, State::Paused, "cannot change the settings of 'db': it is paused"),
        ];
        for (op, state, expected) in cases {
            assert_eq!(StateError { op, state }.describe("db"), expected);
        }
    }

    #[test]
    fn every_refusal_is_one_line_naming_the_vm_and_state() {
        for op in Operation::ALL {
            for state in State::ALL {
                let text = StateError { op, state }.describe("some-vm");
                assert!(text.starts_with("cannot "), "{text}");
                assert!(text.contains("'some-vm'"), "{text}");
                assert!(text.contains(state.name()), "{text}");
                assert!(!text.contains('\n'), "{text}");
            }
        }
    }

    #[test]
    fn after_a_clean_end_a_vm_is_stopped_whatever_its_policy() {
        for policy in [OnCrash::Stop, OnCrash::Restart { limit: 0 }, OnCrash::Restart { limit: 5 }] {
            for restarts in [0, 1, 5, u32::MAX] {
                assert_eq!(after_stop(Ending::Clean, policy, restarts), AfterStop::Stopped);
            }
        }
    }

    #[test]
    fn after_a_crash_the_policy_decides() {
        assert_eq!(OnCrash::default(), OnCrash::Stop);
        assert_eq!(after_stop(Ending::Crash, OnCrash::Stop, 0), AfterStop::Crashed);
        assert_eq!(after_stop(Ending::Crash, OnCrash::Restart { limit: 0 }, 0), AfterStop::Crashed);
        let three = OnCrash::Restart { limit: 3 };
        assert_eq!(after_stop(Ending::Crash, three, 0), AfterStop::Restart);
        assert_eq!(after_stop(Ending::Crash, three, 2), AfterStop::Restart);
        assert_eq!(after_stop(Ending::Crash, three, 3), AfterStop::Crashed);
        assert_eq!(after_stop(Ending::Crash, three, u32::MAX), AfterStop::Crashed);
        let unlimited = OnCrash::Restart { limit: u32::MAX };
        assert_eq!(after_stop(Ending::Crash, unlimited, u32::MAX - 1), AfterStop::Restart);
        assert_eq!(after_stop(Ending::Crash, unlimited, u32::MAX), AfterStop::Crashed);
    }
}
