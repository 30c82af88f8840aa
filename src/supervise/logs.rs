//! The apps' captured output, for `bgctl logs`: the last `KEEP` (2,000) lines of
//! both colors in memory, and a broadcast of new lines for `bgctl logs -f`.
//! (The same lines also go to bgd's own log with the color as a field.)

use std::borrow::Cow;
use std::collections::VecDeque;
use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

use crate::color::Color;

/// `text` with each control character escaped, so that a field printed
/// from data (an app's line of output, a label, a path, a message) stays
/// on its line and cannot reach a terminal as a control sequence: `\n`,
/// `\r` and `\t` as those two characters, other control characters
/// (C0, DEL and C1: ESC, BEL, NUL, CSI...) as `\u{..}`. Everything else,
/// non-ASCII letters and backslashes included, is kept as it is; `--json`
/// has the exact text. bgctl prints every such field through it, and
/// bgd's own log the apps' lines.
pub fn escape_controls(text: &str) -> Cow<'_, str> {
    if !text.chars().any(char::is_control) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// Lines kept, both colors together.
pub(crate) const KEEP: usize = 2000;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct LogLine {
    /// RFC 3339, UTC, with milliseconds.
    pub at: String,
    pub color: Color,
    pub pid: u32,
    /// `stdout` or `stderr`.
    pub stream: String,
    pub line: String,
}

pub(crate) struct LogHub {
    recent: Mutex<VecDeque<LogLine>>,
    live: broadcast::Sender<LogLine>,
}

impl Default for LogHub {
    fn default() -> Self {
        LogHub {
            recent: Mutex::new(VecDeque::with_capacity(KEEP)),
            live: broadcast::channel(1024).0,
        }
    }
}

impl LogHub {
    pub(crate) fn push(&self, line: LogLine) {
        let mut r = self
            .recent
            .lock()
            .expect("log lock is never held across a panic");
        if r.len() == KEEP {
            r.pop_front();
        }
        r.push_back(line.clone());
        // No receiver (nobody follows) is fine.
        let _ = self.live.send(line);
    }

    /// The last `n` lines of `color` (or of both), oldest first, and a
    /// receiver for the lines after them.
    pub(crate) fn tail(
        &self,
        color: Option<Color>,
        n: usize,
    ) -> (Vec<LogLine>, broadcast::Receiver<LogLine>) {
        let r = self
            .recent
            .lock()
            .expect("log lock is never held across a panic");
        // Subscribing under the lock: no line falls between tail and follow.
        let rx = self.live.subscribe();
        let mut lines: Vec<LogLine> = r
            .iter()
            .rev()
            .filter(|l| color.is_none_or(|c| l.color == c))
            .take(n)
            .cloned()
            .collect();
        lines.reverse();
        (lines, rx)
    }
}
