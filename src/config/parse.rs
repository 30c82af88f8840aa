//! Parsing helpers every section uses: durations with a unit, file modes,
//! Unix socket path lengths, and the `file:line:col: message` form of
//! every error and warning.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// A value with its byte range in the config text, for errors that point
/// at it.
pub(super) type Spanned<T> = toml::Spanned<T>;

/// A duration written with a unit: "30s", "500ms", "2m".
pub(super) struct HumanDuration(pub(super) Duration);

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        parse_duration(&s)
            .map(HumanDuration)
            .map_err(serde::de::Error::custom)
    }
}

/// A duration as the config writes it: a number with a unit ("30s",
/// "500ms", "2m 30s"), read by `humantime`; surrounding blanks are ignored.
/// The error says what to write.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s.trim()).map_err(|e| {
        format!("bad duration {s:?} ({e}): write a number with a unit, such as \"30s\", \"500ms\" or \"2m\"")
    })
}

/// A file mode in octal ("0600", "0o660"), at most 0777.
pub(super) fn parse_mode(s: &str) -> Result<u32, String> {
    u32::from_str_radix(s.trim_start_matches("0o"), 8)
        .ok()
        .filter(|m| *m <= 0o777)
        .ok_or_else(|| {
            format!("bad file mode {s:?}: write it in octal, such as \"0600\" or \"0660\"")
        })
}

/// `sun_path` holds 108 bytes including the terminating NUL.
pub(super) fn check_unix_path(p: &Path) -> Result<(), String> {
    let len = p.as_os_str().len();
    if len >= 108 {
        return Err(format!(
            "Unix socket path {} is {len} bytes; the limit is 107: use a shorter path",
            p.display()
        ));
    }
    Ok(())
}

/// `p` against the current directory when it is relative.
pub(super) fn absolute(p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        std::env::current_dir()
            .map(|d| d.join(p))
            .unwrap_or_else(|_| p.to_path_buf())
    }
}

/// Line and column (both from 1, the column in characters) of a byte
/// offset in `text`.
pub(super) fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, col)
}

/// `file:line:col: msg`, always one line: control characters that came
/// from the config (a path or name with a newline) are escaped.
pub(super) fn located(file: &Path, at: Option<(usize, usize)>, msg: &str) -> String {
    let msg: String = msg
        .trim_end()
        .chars()
        .flat_map(|c| {
            if c.is_control() {
                c.escape_default().collect::<Vec<_>>()
            } else {
                vec![c]
            }
        })
        .collect();
    match at {
        Some((l, c)) => format!("{}:{l}:{c}: {msg}", file.display()),
        None => format!("{}: {msg}", file.display()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Columns count characters, not bytes; a control character from the
    /// config cannot break the one-line form.
    #[test]
    fn locations_count_characters_and_stay_on_one_line() {
        assert_eq!(line_col("a = \"é\"\nb", 9), (2, 1));
        assert_eq!(line_col("é = 1", 2), (1, 2));
        let f = Path::new("/etc/bgd/app.toml");
        assert_eq!(
            located(f, Some((3, 4)), "bad\nname\n"),
            "/etc/bgd/app.toml:3:4: bad\\nname"
        );
        assert_eq!(located(f, None, "missing"), "/etc/bgd/app.toml: missing");
    }

    #[test]
    fn modes_are_octal_and_at_most_0777() {
        assert_eq!(parse_mode("0660"), Ok(0o660));
        assert_eq!(parse_mode("0o600"), Ok(0o600));
        assert!(parse_mode("1000").unwrap_err().contains("in octal"));
        assert!(parse_mode("0999").is_err());
    }
}
