//! Arbitrary UTF-8 as the text of a config file at /fuzz/bgd.toml.
//!
//! Properties:
//! - `Config::parse` never panics.
//! - Every error names the file: its message starts with "/fuzz/bgd.toml".
//! - Every error is one line: no '\n' (or '\r') in the message, so it prints as
//!   a single `file:line:col: what to change` line in logs and on the terminal.
//! - An Ok config has the promised shape: absolute paths, at least one socket,
//!   a non-empty command, some health check.
#![no_main]

use std::path::Path;

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
            assert!(
                msg.starts_with(FILE),
                "config error does not start with the file name: {msg:?}"
            );
            assert!(
                !msg.contains('\n') && !msg.contains('\r'),
                "config error spans more than one line: {msg:?}"
            );
        }
        Ok(c) => {
            assert_eq!(c.file, Path::new(FILE));
            assert!(c.root.is_absolute(), "root {:?} is not absolute", c.root);
            assert!(c.control.is_absolute(), "control {:?} is not absolute", c.control);
            assert!(!c.listen.is_empty(), "a config with no [[listen]] parsed Ok");
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
