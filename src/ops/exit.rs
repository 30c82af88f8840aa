//! bgctl's exit codes: the one table. bgctl exits with them, its man page's
//! EXIT STATUS is rendered from [`Code::ALL`], and a test checks that
//! `docs/cli.md` lists each with these words.

use crate::deploy::FailureKind;

/// What bgctl's exit status says happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Code {
    /// 0
    Done,
    /// 1
    AppFailed,
    /// 2
    Usage,
    /// 3
    Unreachable,
    /// 4
    Busy,
    /// 5
    BadRequest,
    /// 6
    Stage,
    /// 7
    Internal,
    /// 8
    RolledBack,
    /// 9
    Differs,
}

impl Code {
    /// Every code, in order.
    pub const ALL: [Code; 10] = [
        Code::Done,
        Code::AppFailed,
        Code::Usage,
        Code::Unreachable,
        Code::Busy,
        Code::BadRequest,
        Code::Stage,
        Code::Internal,
        Code::RolledBack,
        Code::Differs,
    ];

    /// The exit status.
    pub fn number(self) -> u8 {
        match self {
            Code::Done => 0,
            Code::AppFailed => 1,
            Code::Usage => 2,
            Code::Unreachable => 3,
            Code::Busy => 4,
            Code::BadRequest => 5,
            Code::Stage => 6,
            Code::Internal => 7,
            Code::RolledBack => 8,
            Code::Differs => 9,
        }
    }

    /// What it means, as the man page and `docs/cli.md` say it.
    pub fn meaning(self) -> &'static str {
        match self {
            Code::Done => "done: the requested build is live, or what was asked was printed",
            Code::AppFailed => "the new color failed: a prepare hook failed, or it did not start, exited, or was not ready in time; the old color still serves",
            Code::Usage => "bad arguments, or bgctl could not read the config it was given",
            Code::Unreachable => "cannot reach bgd: no control socket, connection refused, permission denied",
            Code::Busy => "refused: another release is in progress, or bgd is stopping",
            Code::BadRequest => "refused: bad request (no such build directory, a build too deep, nothing to roll back to, a damaged kept copy, nothing to promote or compare, no testers for a preview)",
            Code::Stage => "staging failed (copy error, disk full, or the build changed while it was copied); the old color still serves",
            Code::Internal => "bgd failed internally (for example it could not write its state), or spoke an unknown protocol; see its log",
            Code::RolledBack => "release --wait-bake: the build went live (or became a canary) and was rolled back or aborted before its bake passed; the previous build serves",
            Code::Differs => "compare: a path answered another status on one build than on the other (or no answer); the table shows which",
        }
    }

    /// The code for a failure bgd reported.
    pub fn of(kind: FailureKind) -> Code {
        match kind {
            FailureKind::App => Code::AppFailed,
            FailureKind::Denied => Code::Unreachable,
            FailureKind::Busy => Code::Busy,
            FailureKind::BadRequest => Code::BadRequest,
            FailureKind::Stage | FailureKind::Changed => Code::Stage,
            FailureKind::Internal => Code::Internal,
            FailureKind::RolledBack => Code::RolledBack,
        }
    }
}

impl From<Code> for std::process::ExitCode {
    fn from(c: Code) -> Self {
        std::process::ExitCode::from(c.number())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// docs/cli.md's exit code table says what [`Code::meaning`] says.
    #[test]
    fn docs_cli_lists_every_code_with_its_meaning() {
        let cli = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/cli.md"))
            .expect("docs/cli.md");
        for c in Code::ALL {
            let row = format!("| {} | {} |", c.number(), c.meaning());
            assert!(cli.lines().any(|l| l == row), "docs/cli.md lacks {row}");
        }
    }

    #[test]
    fn the_numbers_are_the_order_of_the_table() {
        for (i, c) in Code::ALL.iter().enumerate() {
            assert_eq!(usize::from(c.number()), i, "{c:?}");
        }
    }
}
