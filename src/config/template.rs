//! `{fd:NAME}` templates in `app.command` arguments and `app.env` values.
//!
//! Servers that take a socket by number (`uvicorn --fd 3`, hypercorn's
//! `--bind fd://3`, nginx's `NGINX="3;"`, Caddy's `bind fd/3`) get the
//! number from the config instead of from the user's head, so a change to
//! `[[listen]]` cannot silently hand them the wrong socket:
//!
//! - `{fd:NAME}` is the fd number of `[[listen]]` NAME as the app sees it
//!   (3 for the first entry, 4 for the second, ...; in shared mode with
//!   `health.http`, `{fd:probe}` is the private probe socket after them);
//! - `{{` and `}}` are a literal `{` and `}`;
//! - any other brace is an error, which `bgd --check` reports with the
//!   config's file:line:col.

/// The first fd a child gets its sockets on (`SD_LISTEN_FDS_START` of
/// sd_listen_fds(3)).
pub const FIRST_FD: usize = 3;

/// What is wrong with a template, and where in the value (a byte offset).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TemplateError {
    /// Byte offset of the offending brace in the value.
    pub offset: usize,
    pub message: String,
}

/// One piece of a parsed value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Piece<'a> {
    /// Text as is (escapes already undone).
    Text(String),
    /// `{fd:NAME}`: the name, and the byte offset of its `{`.
    Fd(&'a str, usize),
}

/// Splits `value` into text and `{fd:NAME}` pieces.
pub fn parse(value: &str) -> Result<Vec<Piece<'_>>, TemplateError> {
    let mut pieces = Vec::new();
    let mut text = String::new();
    let bytes = value.as_bytes();
    let mut i = 0;
    while i < value.len() {
        match bytes[i] {
            b'{' if bytes.get(i + 1) == Some(&b'{') => {
                text.push('{');
                i += 2;
            }
            b'}' if bytes.get(i + 1) == Some(&b'}') => {
                text.push('}');
                i += 2;
            }
            b'{' => {
                let (name, end) = fd_template(value, i)?;
                if !text.is_empty() {
                    pieces.push(Piece::Text(std::mem::take(&mut text)));
                }
                pieces.push(Piece::Fd(name, i));
                i = end;
            }
            b'}' => {
                return Err(TemplateError {
                    offset: i,
                    message: "a lone '}': write }} for a literal brace".into(),
                })
            }
            _ => {
                let next = value[i..].find(['{', '}']).map_or(value.len(), |n| i + n);
                text.push_str(&value[i..next]);
                i = next;
            }
        }
    }
    if !text.is_empty() {
        pieces.push(Piece::Text(text));
    }
    Ok(pieces)
}

/// The template that starts with the `{` at `start`: its name and the
/// offset just past its `}`.
fn fd_template(value: &str, start: usize) -> Result<(&str, usize), TemplateError> {
    let fail = |message: String| TemplateError {
        offset: start,
        message,
    };
    let Some(len) = value[start..].find('}') else {
        return Err(fail(
            "an unclosed '{': write {fd:NAME} (NAME a [[listen]] name), or {{ for a literal brace"
                .into(),
        ));
    };
    let inner = &value[start + 1..start + len];
    let Some(name) = inner.strip_prefix("fd:") else {
        let shell = if value[..start].ends_with('$') {
            format!(" (a shell's ${{{inner}}} is written ${{{{{inner}}}}})")
        } else {
            String::new()
        };
        return Err(fail(format!(
            "unknown template {{{inner}}}: write {{fd:NAME}} (NAME a [[listen]] name), or {{{{ for a literal brace{shell}"
        )));
    };
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        return Err(fail(format!(
            "{{fd:{name}}} does not name a [[listen]] entry: write {{fd:NAME}} with a [[listen]] name, such as {{fd:http}}"
        )));
    }
    Ok((name, start + len + 1))
}

/// `value` with each `{fd:NAME}` replaced by the fd number of NAME, where
/// `fds` are the names of the app's sockets in fd order (the first is fd 3).
pub fn expand(value: &str, fds: &[&str]) -> Result<String, TemplateError> {
    let mut out = String::with_capacity(value.len());
    for piece in parse(value)? {
        match piece {
            Piece::Text(t) => out.push_str(&t),
            Piece::Fd(name, offset) => {
                let Some(i) = fds.iter().position(|n| *n == name) else {
                    return Err(TemplateError {
                        offset,
                        message: unknown_name(name, fds),
                    });
                };
                out.push_str(&(FIRST_FD + i).to_string());
            }
        }
    }
    Ok(out)
}

/// The message for `{fd:NAME}` with a NAME that is not among `fds`.
fn unknown_name(name: &str, fds: &[&str]) -> String {
    let known: Vec<String> = fds.iter().map(|n| format!("{{fd:{n}}}")).collect();
    format!(
        "{{fd:{name}}}: no [[listen]] entry is named {name:?}; the app's sockets are {}",
        known.join(", ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const FDS: &[&str] = &["http", "admin-1", "probe"];

    #[test]
    fn expands_names_to_fd_numbers() {
        for (value, want) in [
            ("", ""),
            ("--fd", "--fd"),
            ("{fd:http}", "3"),
            ("--bind=fd://{fd:admin-1}", "--bind=fd://4"),
            ("{fd:http};{fd:admin-1};", "3;4;"),
            ("{fd:probe}", "5"),
            ("{{fd:http}}", "{fd:http}"),
            ("{{{fd:http}}}", "{3}"),
            ("a}}b{{c", "a}b{c"),
            ("${{PORT}}", "${PORT}"),
            ("é{fd:http}ü", "é3ü"),
        ] {
            assert_eq!(expand(value, FDS).as_deref(), Ok(want), "{value:?}");
        }
    }

    #[test]
    fn refuses_malformed_templates_with_their_offset() {
        for (value, offset, want) in [
            ("{fd:web}", 0, "no [[listen]] entry is named \"web\""),
            ("x{fd:}", 1, "does not name a [[listen]] entry"),
            ("{fd:a b}", 0, "does not name a [[listen]] entry"),
            ("--fd {fd:http", 5, "an unclosed '{'"),
            ("{", 0, "an unclosed '{'"),
            ("${PORT}", 1, "a shell's ${PORT} is written ${{PORT}}"),
            ("{}", 0, "unknown template {}"),
            ("{fds}", 0, "unknown template {fds}"),
            ("ab}", 2, "a lone '}'"),
            ("{fd:http}}", 9, "a lone '}'"),
        ] {
            let e = expand(value, FDS).unwrap_err();
            assert_eq!(e.offset, offset, "{value:?}: {e:?}");
            assert!(e.message.contains(want), "{value:?}: {}", e.message);
        }
    }

    #[test]
    fn an_unknown_name_lists_the_known_ones() {
        let e = expand("{fd:web}", &["http"]).unwrap_err();
        assert!(
            e.message.ends_with("the app's sockets are {fd:http}"),
            "{}",
            e.message
        );
    }

    #[test]
    fn parse_keeps_text_and_names_apart() {
        assert_eq!(
            parse("fd://{fd:http}/x").unwrap(),
            vec![
                Piece::Text("fd://".into()),
                Piece::Fd("http", 5),
                Piece::Text("/x".into())
            ]
        );
        assert!(parse("plain").is_ok_and(|p| p == vec![Piece::Text("plain".into())]));
    }
}
