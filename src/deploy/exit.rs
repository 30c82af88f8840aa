//! How a process ended, as the core sees it: the reaper (waitpid(2)) or a
//! pidfd (pidfd_open(2), for a process bgd adopted) tells.

use std::fmt;

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    Code(i32),
    Signal(i32),
    /// It exited, but bgd was not its parent (it was adopted after bgd
    /// restarted), so its status is not known (pidfd_open(2)).
    Unknown,
}

impl Exit {
    pub fn success(self) -> bool {
        self == Exit::Code(0)
    }
}

impl fmt::Display for Exit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Exit::Code(c) => write!(f, "exit code {c}"),
            Exit::Unknown => write!(f, "exited, status unknown (adopted by a restarted bgd)"),
            Exit::Signal(s) => match nix::sys::signal::Signal::try_from(*s) {
                Ok(sig) => write!(f, "killed by {sig}"),
                Err(_) => write!(f, "killed by signal {s}"),
            },
        }
    }
}
