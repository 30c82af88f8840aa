//! How bgctl prints: progress on stderr, answers on stdout, colors only when
//! the stream is a terminal and `NO_COLOR` is not set.

use std::io::IsTerminal;

use bgd::history::Record;
use bgd::logs::LogLine;
use bgd::protocol::{Failure, Status, Step};

pub struct Out {
    color_out: bool,
    color_err: bool,
}

const GREEN: &str = "\x1b[32m";
const RED: &str = "\x1b[31m";
const BLUE: &str = "\x1b[34m";
const DIM: &str = "\x1b[2m";
const BOLD: &str = "\x1b[1m";
const RESET: &str = "\x1b[0m";

impl Out {
    pub fn new() -> Out {
        let allowed = std::env::var_os("NO_COLOR").is_none();
        Out {
            color_out: allowed && std::io::stdout().is_terminal(),
            color_err: allowed && std::io::stderr().is_terminal(),
        }
    }

    fn paint(&self, on: bool, code: &str, text: &str) -> String {
        if on {
            format!("{code}{text}{RESET}")
        } else {
            text.to_string()
        }
    }

    /// A color name in its own color.
    fn color_name(&self, on: bool, name: &str) -> String {
        match name {
            "blue" => self.paint(on, BLUE, name),
            "green" => self.paint(on, GREEN, name),
            _ => name.to_string(),
        }
    }

    pub fn progress(&self, step: Step, message: &str) {
        eprintln!(
            "bgctl: {} {message}",
            self.paint(self.color_err, DIM, &format!("[{step}]"))
        );
    }

    pub fn failure(&self, f: &Failure) -> String {
        let mut s = match f.step {
            Some(step) => format!("failed at step {step}: {}", f.message),
            None => f.message.clone(),
        };
        s = self.paint(self.color_err, RED, &s);
        if !f.log_tail.is_empty() {
            s.push_str("\nlast output of the new color:");
            for l in &f.log_tail {
                s.push_str("\n  | ");
                s.push_str(l);
            }
        }
        s
    }

    pub fn released(&self, result: &serde_json::Value) {
        let get = |k: &str| result.get(k).filter(|v| !v.is_null());
        let color = get("color").and_then(|v| v.as_str()).unwrap_or("?");
        let release = get("release")
            .map(|v| v.to_string())
            .unwrap_or_else(|| "?".into());
        let label = get("label")
            .and_then(|v| v.as_str())
            .map(|l| format!(" ({l})"))
            .unwrap_or_default();
        let ms = result
            .pointer("/ms/total")
            .and_then(|v| v.as_u64())
            .unwrap_or(0);
        println!(
            "release {release}{label} is live on {} ({ms} ms)",
            self.color_name(self.color_out, color)
        );
    }

    pub fn log_line(&self, l: &LogLine, json: bool) {
        if json {
            println!(
                "{}",
                serde_json::to_string(l).expect("a log line serializes")
            );
        } else {
            let name = self.color_name(self.color_out, l.color.as_str());
            let pad = " ".repeat(5 - l.color.as_str().len());
            println!("{name}{pad} | {}", l.line);
        }
    }

    pub fn status(&self, s: &Status) {
        let on = self.color_out;
        let live = s
            .live
            .map_or("none".to_string(), |c| self.color_name(on, c.as_str()));
        println!("{}: live {live}", self.paint(on, BOLD, &s.name));
        for (name, c) in [("blue", &s.blue), ("green", &s.green)] {
            let state = match c.state.as_str() {
                "live" => self.paint(on, GREEN, &format!("{:<10}", c.state)),
                "restarting" => self.paint(on, RED, &format!("{:<10}", c.state)),
                _ => format!("{:<10}", c.state),
            };
            let pad = " ".repeat(5 - name.len());
            let mut line = format!("  {}{pad} {state}", self.color_name(on, name));
            if let Some(pid) = c.pid {
                line += &format!(" pid {pid}");
            }
            if let Some(r) = c.release {
                line += &format!(" release {r}");
            }
            if let Some(l) = &c.label {
                line += &format!(" ({l})");
            }
            if let Some(since) = &c.since {
                line += &format!(" since {since}");
            }
            if c.restarts > 0 {
                line += &format!(" restarts {}", c.restarts);
            }
            if let Some(e) = &c.last_exit {
                line += &format!(" last exit: {e}");
            }
            println!("{line}");
        }
        if let Some(r) = &s.release_in_progress {
            println!(
                "  release {} to {} in progress: step {} since {}",
                r.id, r.color, r.step, r.since
            );
        }
        if let Some(r) = &s.last_result {
            let painted = if r.contains(" failed") {
                self.paint(on, RED, r)
            } else {
                r.clone()
            };
            println!("  last result: {painted}");
        }
        for l in &s.listen {
            println!("  listen {} {}", l.name, l.address);
        }
        if let Some(w) = &s.watch {
            println!("watch {} ({}): {}", w.path, w.mode, w.state);
            if let Some(t) = &w.last_event {
                println!("  last change: {t}");
            }
            if let Some(r) = &w.last_release {
                let outcome = if r.ok {
                    self.paint(on, GREEN, "ok")
                } else {
                    self.paint(
                        on,
                        RED,
                        &format!("failed at {}", r.step.map_or("?".into(), |s| s.to_string())),
                    )
                };
                println!(
                    "  last auto-release: {} release {} {outcome}: {}",
                    r.at, r.release, r.message
                );
            }
            if let Some(h) = &w.holding {
                println!("  holding: {h}");
            }
        }
    }

    pub fn history(&self, records: &[Record]) {
        let on = self.color_out;
        if records.is_empty() {
            println!("no releases yet");
        }
        for r in records {
            let outcome = if r.ok {
                self.paint(on, GREEN, "ok    ")
            } else {
                self.paint(on, RED, "failed")
            };
            let label = r
                .label
                .as_deref()
                .map(|l| format!(" ({l})"))
                .unwrap_or_default();
            let steps: Vec<String> = r
                .steps
                .iter()
                .map(|s| format!("{}@{}ms", s.step, s.at_ms))
                .collect();
            println!(
                "{:>4} {outcome} {:<8} {} {:<5} {}{label} [{}] {}",
                r.release,
                r.kind,
                r.started,
                r.color.as_str(),
                r.source.as_deref().unwrap_or("-"),
                r.trigger,
                r.result
            );
            if !steps.is_empty() {
                println!("     {}", self.paint(on, DIM, &steps.join(" ")));
            }
        }
    }
}
