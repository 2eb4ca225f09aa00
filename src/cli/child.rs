//! The agent's process: started with signals passed on (SIGINT, SIGTERM, SIGHUP) and its exit
//! code reported as a shell would. Used by `run` and by the sandbox's relay, which is the first
//! process of a container or namespace and would otherwise pass nothing on.

use std::process::{Command, ExitStatus};

use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

use super::CliError;

/// The signals that end a run (SIGINT, SIGTERM, SIGHUP), caught from now on: what a run
/// passes on to its child, or answers by stopping what it started.
pub(super) fn stop_signals() -> Result<Signals, CliError> {
    Signals::new([SIGINT, SIGTERM, SIGHUP]).map_err(|source| CliError::Io {
        what: "signals".into(),
        source,
    })
}

/// Runs the child, forwarding SIGINT, SIGTERM and SIGHUP to it.
pub(super) fn spawn_and_wait(cmd: &mut Command, program: &str) -> Result<ExitStatus, CliError> {
    let mut child = cmd.spawn().map_err(|source| CliError::Io {
        what: format!("starting {program}"),
        source,
    })?;
    let pid = rustix::process::Pid::from_raw(child.id() as i32);
    let mut signals = stop_signals()?;
    let handle = signals.handle();
    std::thread::spawn(move || {
        for sig in signals.forever() {
            let signal = match sig {
                SIGINT => rustix::process::Signal::INT,
                SIGHUP => rustix::process::Signal::HUP,
                _ => rustix::process::Signal::TERM,
            };
            if let Some(pid) = pid {
                let _ = rustix::process::kill_process(pid, signal);
            }
        }
    });
    let status = child.wait().map_err(|source| CliError::Io {
        what: format!("waiting for {program}"),
        source,
    });
    handle.close();
    status
}

/// The child's exit code, or 128 + the signal that ended it (as shells report it).
pub(super) fn exit_code(status: ExitStatus) -> u8 {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(c), _) => u8::try_from(c).unwrap_or(1),
        (None, Some(sig)) => u8::try_from(128 + sig).unwrap_or(1),
        _ => 1,
    }
}
