//! Arbitrary UTF-8 as the text of a config file at /fuzz/bgd.toml.
//!
//! Properties:
//! - `Config::parse` never panics.
//! - Every error names the file: its message starts with "/fuzz/bgd.toml".
//! - Every error is one line: no '\n' (or '\r') in the message, so it prints as
//!   a single `file:line:col: what to change` line in logs and on the terminal.
//! - An Ok config has the promised shape: absolute paths, at least one socket,
//!   a non-empty command, some health check.
//!
//! A violated property panics, which stops libFuzzer at the first finding.
//! With `BGD_FUZZ_KEEP_GOING=1` a violated *error-message* property is only
//! reported on stderr instead (once per kind of message, with the input
//! escaped), so one run can collect every kind; panics inside bgd still crash.
#![no_main]

use std::collections::HashSet;
use std::path::Path;
use std::sync::{Mutex, OnceLock};

use bgd::config::Config;
use libfuzzer_sys::fuzz_target;

const FILE: &str = "/fuzz/bgd.toml";

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match Config::parse(Path::new(FILE), text) {
        Err(e) => {
            let msg = e.to_string();
            if !msg.starts_with(FILE) {
                violation(text, &msg, "config error does not start with the file name");
            }
            if msg.contains('\n') || msg.contains('\r') {
                violation(text, &msg, "config error spans more than one line");
            }
        }
        Ok(c) => {
            assert_eq!(c.file, Path::new(FILE));
            assert!(c.fixed.root.is_absolute(), "root {:?} is not absolute", c.fixed.root);
            assert!(c.fixed.control.is_absolute(), "control {:?} is not absolute", c.fixed.control);
            assert!(!c.fixed.listen.is_empty(), "a config with no [[listen]] parsed Ok");
            assert!(
                !c.app.command.is_empty() && !c.app.command[0].is_empty(),
                "a config with an empty app.command parsed Ok"
            );
            assert!(
                c.health.http.is_some() || c.health.notify || c.health.exec.is_some(),
                "a config whose [health] checks nothing parsed Ok"
            );
        }
    }
});

fn violation(text: &str, msg: &str, what: &str) {
    static KEEP_GOING: OnceLock<bool> = OnceLock::new();
    if !*KEEP_GOING.get_or_init(|| std::env::var_os("BGD_FUZZ_KEEP_GOING").is_some()) {
        panic!("{what}: {msg:?}");
    }
    static SEEN: Mutex<Option<HashSet<String>>> = Mutex::new(None);
    let kind = format!("{what}: {}", kind_of(msg));
    let mut seen = SEEN.lock().unwrap();
    if seen.get_or_insert_with(HashSet::new).insert(kind.clone()) {
        eprintln!("VIOLATION {kind}\n  message: {msg:?}\n  input:   {text:?}");
    }
}

/// The message without its location and with quoted text, paths and numbers
/// blanked, cut to its first words: one "kind" of error per code path.
fn kind_of(msg: &str) -> String {
    let rest = msg.strip_prefix(FILE).unwrap_or(msg);
    let rest = rest.trim_start_matches(|c: char| c == ':' || c.is_ascii_digit());
    let mut out = String::new();
    let mut quote = None;
    for c in rest.chars() {
        match quote {
            Some(q) if c == q => quote = None,
            Some(_) => {}
            None if matches!(c, '"' | '\'' | '`') => {
                quote = Some(c);
                out.push_str(" Q ");
            }
            // Keep a path or name with a line break in it one word.
            None if c == '\n' || c == '\r' => out.push('~'),
            None => out.push(c),
        }
    }
    out.split_whitespace()
        .map(|w| if w.starts_with('/') || w.starts_with("unix:") { "P" } else { w })
        .filter(|w| !w.chars().all(|c| c.is_ascii_digit()))
        .take(6)
        .collect::<Vec<_>>()
        .join(" ")
}
