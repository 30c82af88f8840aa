//! The apps' captured output, for `bgctl logs`: the last `KEEP` (2,000) lines of
//! both colors in memory, and a broadcast of new lines for `bgctl logs -f`.
//! (The same lines also go to bgd's own log with the color as a field.)

use std::collections::VecDeque;
use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

use crate::color::Color;

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
