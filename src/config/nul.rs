//! NUL bytes: TOML lets a string hold one (`"\u0000"`), but no program
//! argument, environment variable or path can (execve(2) takes C strings).
//! An `app.env` value with one was accepted by `--check` and by SIGHUP,
//! and every start of the app then failed with "nul byte found"; after
//! such a reload a crash of the live color left it restarting forever.
//! So every string and key of the file is checked here, once, before the
//! sections are: a NUL anywhere is refused at its `file:line:col`.

use toml::de::{DeTable, DeValue};
use toml::Spanned;

use super::{ConfigError, Source};

/// Refuses the first key or string value that holds a NUL byte, naming
/// its key (`app.env.TOKEN`, `app.command[1]`, `listen[0].address`).
pub(super) fn refuse(src: &Source) -> Result<(), ConfigError> {
    // The text parsed already; a second parse error cannot happen.
    let Ok(table) = DeTable::parse(src.text) else {
        return Ok(());
    };
    table_has(src, table.get_ref(), "")
}

fn table_has(src: &Source, table: &DeTable, prefix: &str) -> Result<(), ConfigError> {
    for (key, value) in table {
        let name = if prefix.is_empty() {
            key.get_ref().to_string()
        } else {
            format!("{prefix}.{}", key.get_ref())
        };
        if key.get_ref().contains('\0') {
            return Err(fail(src, key.span(), &name, "key"));
        }
        value_has(src, value, &name)?;
    }
    Ok(())
}

fn value_has(src: &Source, value: &Spanned<DeValue>, name: &str) -> Result<(), ConfigError> {
    match value.get_ref() {
        DeValue::String(s) if s.contains('\0') => Err(fail(src, value.span(), name, "value")),
        DeValue::Array(items) => items
            .iter()
            .enumerate()
            .try_for_each(|(i, v)| value_has(src, v, &format!("{name}[{i}]"))),
        DeValue::Table(t) => table_has(src, t, name),
        _ => Ok(()),
    }
}

/// The error, pointing at the escape that wrote the NUL when it is found
/// in the span (`\u0000`, `\U00000000`), else at the value.
fn fail(src: &Source, span: std::ops::Range<usize>, name: &str, what: &str) -> ConfigError {
    let written = src.text.get(span.clone()).unwrap_or_default();
    let at = ["\\u0000", "\\U00000000"]
        .iter()
        .filter_map(|e| written.find(e))
        .min()
        .map_or(span.start, |i| span.start + i);
    let name: String = name
        .chars()
        .map(|c| match c.is_control() {
            true => c.escape_default().to_string(),
            false => c.to_string(),
        })
        .collect();
    src.fail(
        at..at,
        format!(
            "{name}: the {what} holds a NUL byte (\\u0000), which no program argument, environment variable or path can hold: remove it"
        ),
    )
}

#[cfg(test)]
mod tests {
    use crate::config::tests::{parse, GOOD};

    #[test]
    fn a_nul_anywhere_is_refused_at_its_escape() {
        let env = GOOD.replace(
            "allow_root = true",
            "allow_root = true\nenv = { TOKEN = \"abc\\u0000def\" }",
        );
        let e = parse(&env).unwrap_err();
        assert_eq!(
            e,
            "/etc/bgd/app.toml:13:21: app.env.TOKEN: the value holds a NUL byte (\\u0000), which no program argument, environment variable or path can hold: remove it"
        );
        // The same kind: an argument, a hook, a path, a key.
        let cases = [
            (
                GOOD.replace("[\"./server\"]", "[\"./server\", \"--x=\\u0000\"]"),
                "app.toml:10:29: app.command[1]: the value",
            ),
            (
                format!("{GOOD}\n[hooks]\nprepare = [\"make\\U00000000\"]\n"),
                "app.toml:18:17: hooks.prepare[0]: the value",
            ),
            (
                GOOD.replace("\"state\"", "\"st\\u0000ate\""),
                "app.toml:3:11: root: the value",
            ),
            (
                GOOD.replace(
                    "allow_root = true",
                    "allow_root = true\nenv = { \"A\\u0000\" = \"1\" }",
                ),
                "app.toml:13:11: app.env.A\\u{0}: the key",
            ),
        ];
        for (text, want) in cases {
            let e = parse(&text).unwrap_err();
            assert!(e.contains(want), "{e}\nwanted {want}");
        }
    }
}
