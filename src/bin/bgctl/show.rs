//! How bgctl prints: progress on stderr, answers on stdout, colors only when
//! the stream is a terminal and `NO_COLOR` is not set.

use std::io::IsTerminal;

use bgd::ops::events::{Event, Kind};
use bgd::ops::protocol::{
    ColorStatus, Comparison, Failure, Listing, Outcome, PauseStatus, Seen, Side, Status, Step,
    WatchStatus,
};
use bgd::store::history::Record;
use bgd::supervise::logs::LogLine;

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

/// Every field printed from data goes through this: a label, a path, a
/// message, and above all the app's own output (`bgctl logs`, the tail of
/// a failed release, hooks' lines in the progress), which could otherwise
/// set the terminal's title, clear it, or overwrite a line with `\r`.
pub use bgd::supervise::logs::escape_controls;

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

    /// A step's progress; a prepare hook's output arrives this way.
    pub fn progress(&self, step: Step, message: &str) {
        eprintln!(
            "bgctl: {} {}",
            self.paint(self.color_err, DIM, &format!("[{step}]")),
            escape_controls(message)
        );
    }

    pub fn failure(&self, f: &Failure) -> String {
        let message = escape_controls(&f.message);
        let mut s = match f.step {
            Some(step) => format!("failed at step {step}: {message}"),
            None => message.into_owned(),
        };
        s = self.paint(self.color_err, RED, &s);
        if !f.log_tail.is_empty() {
            s.push_str("\nlast output of the new color:");
            for l in &f.log_tail {
                s.push_str("\n  | ");
                s.push_str(&escape_controls(l));
            }
        }
        s
    }

    /// The end of a release, rollback, promotion, abort or reexec.
    pub fn outcome(&self, o: &Outcome) {
        let swap = match o {
            Outcome::Released(s) | Outcome::RolledBack(s) | Outcome::Promoted(s) => s,
            // A canary, an abort, a bake: bgd says what happened.
            other => return println!("{}", escape_controls(other.message())),
        };
        let label = swap
            .label
            .as_deref()
            .map(|l| format!(" ({})", escape_controls(l)))
            .unwrap_or_default();
        println!(
            "release {}{label} is live on {} ({} ms)",
            swap.release,
            self.color_name(self.color_out, swap.color.as_str()),
            swap.ms.total
        );
        if let Some(forced) = &swap.forced_drain {
            let line = format!("warning: {}", escape_controls(forced));
            eprintln!("{}", self.paint(self.color_err, RED, &line));
        }
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
            println!("{name}{pad} | {}", escape_controls(&l.line));
        }
    }

    /// One lifecycle event: its time, its type and what happened, on one line.
    pub fn event(&self, e: &Event, json: bool) {
        if json {
            println!("{}", serde_json::to_string(e).expect("an event serializes"));
            return;
        }
        let bad = matches!(
            e.kind,
            Kind::Failed { .. } | Kind::Restarting { .. } | Kind::Aborted { .. }
        );
        let name = format!("{:<13}", e.kind.name());
        let name = if bad {
            self.paint(self.color_out, RED, &name)
        } else {
            name
        };
        println!("{}  {name} {}", e.at, escape_controls(&e.kind.describe()));
    }

    pub fn status(&self, s: &Status) {
        let on = self.color_out;
        let live = s
            .live
            .map_or("none".to_string(), |c| self.color_name(on, c.as_str()));
        println!(
            "{}: live {live}",
            self.paint(on, BOLD, &escape_controls(&s.name))
        );
        if let Some(p) = &s.paused {
            self.pause_status(p);
        }
        for (name, c) in [("blue", &s.blue), ("green", &s.green)] {
            println!("{}", self.color_status(name, c));
        }
        self.in_progress(s);
        if let Some(r) = &s.last_result {
            let r = escape_controls(r);
            let painted = if r.contains(" failed") {
                self.paint(on, RED, &r)
            } else {
                r.into_owned()
            };
            println!("  last result: {painted}");
        }
        for l in &s.listen {
            let (name, address) = (escape_controls(&l.name), escape_controls(&l.address));
            println!("  listen {name} {address}");
        }
        self.traffic_status(s);
        for a in &s.socket_alerts {
            let line = format!("  ALERT: {}", escape_controls(a));
            println!("{}", self.paint(on, RED, &line));
        }
        if let Some(t) = &s.bake_until {
            println!(
                "  baking until {t}: a crash or failed health checks switch back to the standby"
            );
        }
        if let Some(t) = &s.standby_until {
            println!("  standby kept until {t}: `bgctl rollback` switches back to it");
        }
        if let Some(w) = &s.watch {
            self.watch_status(w);
        }
        self.own_files(&s.own_files);
    }

    /// bgd's own files it could not read or write whole, one warning each.
    fn own_files(&self, notes: &[String]) {
        for note in notes {
            let line = format!("warning: {}", escape_controls(note));
            println!("{}", self.paint(self.color_out, RED, &line));
        }
    }

    /// The release in progress, if any.
    fn in_progress(&self, s: &Status) {
        if let Some(r) = &s.release_in_progress {
            let kind = if r.kind.is_empty() {
                "release"
            } else {
                &r.kind
            };
            println!(
                "  {} of release {} on {} in progress: step {} since {}",
                escape_controls(kind),
                r.id,
                r.color,
                r.step,
                escape_controls(&r.since)
            );
        }
    }

    /// The pause's lines of `bgctl status`: `state: paused`, since when,
    /// and how many connections wait.
    fn pause_status(&self, p: &PauseStatus) {
        let on = self.color_out;
        let color = self.color_name(on, p.color.as_str());
        let state = self.paint(on, BOLD, "paused");
        println!(
            "  state: {state} since {} ({} s, {})",
            p.since, p.seconds, p.stage
        );
        match p.stage.as_str() {
            "page" => println!("  the maintenance page serves on {color}"),
            _ if p.waiting == 1 => println!("  1 connection waits on {color}'s socket"),
            _ => println!("  {} connections wait on {color}'s socket", p.waiting),
        }
        if let (Some(max), Some(page)) = (&p.max_at, &p.page) {
            println!(
                "  at {max} (--max) the maintenance page {} starts",
                escape_controls(page)
            );
        } else if let Some(max) = &p.max_at {
            println!("  --max is reached at {max}; no maintenance page is set");
        }
        for w in p.warning.iter().chain(&p.last_failure) {
            let line = format!("  warning: {}", escape_controls(w));
            println!("{}", self.paint(on, RED, &line));
        }
        let resume = p
            .before
            .map(|r| format!(" or `bgctl resume` (release {r})"))
            .unwrap_or_default();
        println!("  `bgctl release DIR`{resume} ends the pause");
    }

    /// Where new connections go: the colors' shares, a preview or canary,
    /// the testers and `canary_by`.
    fn traffic_status(&self, s: &Status) {
        let on = self.color_out;
        match (s.mode.as_str(), s.receiving) {
            ("gate", Some(c)) if s.canary.as_ref().is_some_and(|c| c.preview) => println!(
                "  new connections go to {}, the testers' to {}",
                self.color_name(on, c.as_str()),
                self.color_name(on, c.other().as_str())
            ),
            ("gate", Some(_)) if s.canary.is_some() => println!(
                "  new connections: {} {}%, {} {}%",
                self.color_name(on, "blue"),
                s.traffic.blue,
                self.color_name(on, "green"),
                s.traffic.green
            ),
            ("gate", Some(c)) => println!(
                "  new connections go to {}",
                self.color_name(on, c.as_str())
            ),
            ("gate", None) => println!("  new connections: none yet (no color has been live)"),
            ("shared", _) => println!(
                "  new connections: both colors accept from one socket (traffic.mode = \"shared\")"
            ),
            _ => {}
        }
        if let Some(c) = s.canary.as_ref().filter(|c| c.preview) {
            println!(
                "  preview: release {} on {} since {}, for the testers alone; `bgctl compare` asks both, `bgctl promote [PERCENT]` goes on, `bgctl abort` drains it",
                c.release,
                self.color_name(on, c.color.as_str()),
                c.since,
            );
        }
        if s.mode == "gate" && !s.canary_by.is_empty() && (s.testers > 0 || s.canary.is_some()) {
            println!(
                "  traffic.testers: {}; canary_by = \"{}\"",
                bgd::deploy::clients::networks(s.testers as usize),
                escape_controls(&s.canary_by)
            );
        }
        if let Some(c) = s.canary.as_ref().filter(|c| !c.preview) {
            let step = match (c.step, c.steps, &c.next_step_at) {
                (Some(i), Some(n), Some(at)) => format!("; step {i} of {n}, the next at {at}"),
                _ => "; `bgctl promote` makes it live, `bgctl abort` drains it".into(),
            };
            println!(
                "  canary: release {} on {} at {}% since {}{step}",
                c.release,
                self.color_name(on, c.color.as_str()),
                c.percent,
                c.since
            );
        }
    }

    /// One color's line of `bgctl status`.
    fn color_status(&self, name: &str, c: &ColorStatus) -> String {
        let on = self.color_out;
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
            line += &format!(" ({})", escape_controls(l));
        }
        if let Some(since) = &c.since {
            line += &format!(" since {since}");
        }
        if c.processes > 1 {
            line += &format!(" ({} processes)", c.processes);
        }
        if let Some(m) = c.memory_bytes {
            line += &format!(" memory {:.1} MB", m as f64 / 1_048_576.0);
        }
        if let Some(u) = c.cpu_usec.filter(|_| c.processes > 0) {
            line += &format!(" cpu {:.1} s", u as f64 / 1e6);
        }
        if c.restarts > 0 {
            line += &format!(" restarts {}", c.restarts);
        }
        if let Some(e) = &c.last_exit {
            line += &format!(" last exit: {}", escape_controls(e));
        }
        if let Some(r) = &c.reason {
            line += &format!("; {}", escape_controls(r));
        }
        if let (Some(n), Some(why)) = (c.failing_checks, &c.last_check_failure) {
            let m = format!(
                "; {n} failed health checks in a row: {}",
                escape_controls(why)
            );
            line += &self.paint(on, RED, &m);
        }
        line
    }

    /// The watch section of `bgctl status`.
    fn watch_status(&self, w: &WatchStatus) {
        let on = self.color_out;
        println!(
            "watch {} ({}): {}",
            escape_controls(&w.path),
            w.mode,
            w.state
        );
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
                r.at,
                r.release,
                escape_controls(&r.message)
            );
        }
        if let Some(h) = &w.holding {
            println!("  holding: {}", escape_controls(h));
        }
    }

    /// `bgctl releases`: one line per release, oldest first, then the space.
    pub fn releases(&self, listing: &Listing) {
        let on = self.color_out;
        let mb = |bytes: u64| format!("{:.1} MB", bytes as f64 / 1e6);
        if listing.releases.is_empty() {
            println!("no releases kept yet");
        }
        for r in &listing.releases {
            let painted = match r.state.as_str() {
                "live" => self.paint(on, GREEN, "live   "),
                "failed" => self.paint(on, RED, "failed "),
                other => format!("{other:<7}"),
            };
            let label = r
                .label
                .as_deref()
                .map(|l| format!(" ({})", escape_controls(l)))
                .unwrap_or_default();
            let fingerprint = escape_controls(r.fingerprint.as_deref().unwrap_or("-"));
            println!(
                "{:>4} {painted} {:>9} {} {}{label} {}",
                r.id,
                mb(r.size),
                escape_controls(&r.made),
                escape_controls(&r.source),
                self.paint(on, DIM, &fingerprint),
            );
            if let Some(d) = &r.damaged {
                let m = format!("     damaged: {}", escape_controls(d));
                println!("{}", self.paint(on, RED, &m));
            }
        }
        println!(
            "kept releases use {}, the colors {}; {} free; keep = {}",
            mb(listing.kept_bytes),
            mb(listing.colors_bytes),
            mb(listing.free_bytes),
            listing.keep
        );
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
                .map(|l| format!(" ({})", escape_controls(l)))
                .unwrap_or_default();
            let steps: Vec<String> = r
                .steps
                .iter()
                .map(|s| format!("{}@{}ms", s.step, s.at_ms))
                .collect();
            println!(
                "{:>4} {outcome} {:<8} {} {:<5} {}{label} [{}] {}",
                r.release,
                escape_controls(&r.kind),
                escape_controls(&r.started),
                r.color.as_str(),
                escape_controls(r.source.as_deref().unwrap_or("-")),
                escape_controls(&r.trigger),
                escape_controls(&r.result)
            );
            if !steps.is_empty() {
                println!("     {}", self.paint(on, DIM, &steps.join(" ")));
            }
        }
    }
}

impl Out {
    /// `bgctl compare`: a line naming both builds, then one row per path
    /// with each build's status, body size, digest and median time side by
    /// side, and what differs; then why requests got no answer.
    pub fn compare(&self, c: &Comparison) {
        let on = self.color_out;
        let name = |s: &Side| {
            let label = s
                .label
                .as_deref()
                .map(|l| format!(", {}", escape_controls(l)));
            let release = s
                .release
                .map_or("no build".into(), |r| format!("release {r}"));
            format!(
                "{} {} ({release}{})",
                s.role,
                self.color_name(on, s.color.as_str()),
                label.unwrap_or_default()
            )
        };
        println!(
            "{} beside {}: {} requests per path to each",
            name(&c.live),
            name(&c.other),
            c.requests
        );
        let (a, b) = (&c.live.role, &c.other.role);
        let mut rows = vec![vec![
            "path".to_string(),
            format!("{a} status"),
            "bytes".into(),
            "digest".into(),
            "ms".into(),
            format!("{b} status"),
            "bytes".into(),
            "digest".into(),
            "ms".into(),
            "differs".into(),
        ]];
        for p in &c.paths {
            let mut row = vec![escape_controls(&p.path).into_owned()];
            row.extend(seen_cells(&p.live));
            row.extend(seen_cells(&p.other));
            row.push(if p.differs.is_empty() {
                "-".into()
            } else {
                p.differs.join(", ")
            });
            rows.push(row);
        }
        self.table(&rows);
        for p in &c.paths {
            for (side, seen) in [(&c.live, &p.live), (&c.other, &p.other)] {
                if let Some(e) = &seen.error {
                    println!(
                        "  {} on {} {}: {} of {} got no answer: {}",
                        escape_controls(&p.path),
                        side.role,
                        side.color,
                        seen.failed,
                        c.requests,
                        escape_controls(e)
                    );
                }
            }
        }
    }
}

impl Out {
    /// Rows as columns padded to their widest cell, the first row bold; a
    /// last cell that names `status` in red.
    fn table(&self, rows: &[Vec<String>]) {
        let on = self.color_out;
        let widths: Vec<usize> = (0..rows[0].len())
            .map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0))
            .collect();
        for (n, row) in rows.iter().enumerate() {
            let last = row.len() - 1;
            let mut line = String::new();
            for (i, cell) in row.iter().enumerate() {
                let padded = format!("{cell:<w$}", w = widths[i]);
                line += &match (i, n) {
                    (_, 0) => self.paint(on, BOLD, &padded),
                    (i, _) if i == last && cell.contains("status") => self.paint(on, RED, cell),
                    _ if i == last => cell.clone(),
                    _ => padded,
                };
                if i != last {
                    line += "  ";
                }
            }
            println!("{}", line.trim_end());
        }
    }
}

/// One build's cells of a compare row: status, bytes, digest, median ms.
fn seen_cells(s: &Seen) -> [String; 4] {
    let mut status: Vec<String> = s.statuses.iter().map(u16::to_string).collect();
    if s.failed > 0 {
        status.push(format!("{} no answer", s.failed));
    }
    let digest = s
        .digest
        .as_deref()
        .map_or("-".into(), |d| d.chars().take(8).collect());
    [
        status.join(", "),
        s.bytes.map_or("-".into(), |b| b.to_string()),
        digest,
        s.median_ms.map_or("-".into(), |m| format!("{m:.1}")),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::borrow::Cow;

    #[test]
    fn newline_tab_and_return_become_two_character_escapes() {
        assert_eq!(escape_controls("v1\nfix\tthis\r"), r"v1\nfix\tthis\r");
    }

    #[test]
    fn other_control_characters_become_unicode_escapes() {
        assert_eq!(
            escape_controls("\x1b[31mred\0\x7f"),
            r"\u{1b}[31mred\u{0}\u{7f}"
        );
        // C1 controls too: some terminals act on them.
        assert_eq!(escape_controls("a\u{9b}b"), r"a\u{9b}b");
    }

    #[test]
    fn printable_text_is_kept_as_it_is() {
        for text in [
            "",
            "v1.2 (\"rc\")",
            "/srv/app's build",
            "déjà vu — 版本",
            r"C:\dir",
        ] {
            assert!(
                matches!(escape_controls(text), Cow::Borrowed(t) if t == text),
                "{text}"
            );
        }
    }

    #[test]
    fn an_escaped_field_is_one_line() {
        let label = "line one\nline two\r\n";
        let shown = escape_controls(label);
        assert_eq!(shown.lines().count(), 1, "{shown}");
        assert!(!shown.contains('\r'));
    }
}
