//! `bgctl compare` (issue 23): the same requests to the live build and to
//! the build beside it (a preview, a canary, or the standby of a swap and
//! its bake), side by side.
//!
//! The core decides what can be compared ([`Core::compare_sides`]) and
//! how the answers read ([`summarize`], [`report`]); the daemon sends the
//! requests (`ops/compare.rs`), through the public address, each steered
//! to its color by its exact source as bgd's health checks are.

use serde::{Deserialize, Serialize};

use super::{ColorPhase, Core, Process};
use crate::color::Color;
use crate::deploy::{Failure, FailureKind};

/// Requests per path to each build.
pub const ROUNDS: u32 = 5;

/// The most paths one compare asks.
pub const MAX_PATHS: usize = 32;

/// One of the two builds a compare asks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Side {
    /// `live`, or what the other color is: `preview`, `canary` or `standby`.
    pub role: String,
    pub color: Color,
    pub release: Option<u64>,
    pub label: Option<String>,
}

/// What one request saw.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// The status code, or why there was no answer.
    pub status: Result<u16, String>,
    /// The body's size in bytes (0 without an answer).
    pub bytes: u64,
    /// [`digest`] of the body.
    pub digest: u64,
    /// From the start of the connection to the end of the answer, in
    /// milliseconds.
    pub ms: f64,
}

/// What one build answered to one path, over all its requests.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Seen {
    /// The status codes it answered, each once, in the order first seen.
    pub statuses: Vec<u16>,
    /// Requests that got no answer.
    pub failed: u32,
    /// Why the last of those got none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The size of the last answer's body, in bytes.
    pub bytes: Option<u64>,
    /// FNV-1a (64 bits, hex) of the body when every answer had the same
    /// body; `varies` when they differed. For telling bodies apart, not a
    /// checksum against tampering.
    pub digest: Option<String>,
    /// The median time of the answered requests, in milliseconds.
    pub median_ms: Option<f64>,
}

/// One path, asked of both builds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PathReport {
    pub path: String,
    pub live: Seen,
    pub other: Seen,
    /// What differs: `status` (another status, or no answer on one side),
    /// `size`, `body`.
    pub differs: Vec<String>,
}

/// A whole compare: the two builds and each path.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Comparison {
    pub live: Side,
    pub other: Side,
    /// Requests per path to each build.
    pub requests: u32,
    pub paths: Vec<PathReport>,
}

impl Comparison {
    /// Whether a path answered another status on one build than on the
    /// other (bgctl then exits 9).
    pub fn status_differs(&self) -> bool {
        self.paths
            .iter()
            .any(|p| p.differs.iter().any(|d| d == "status"))
    }
}

/// FNV-1a, 64 bits (the Fowler-Noll-Vo hash): cheap and enough to tell two
/// bodies apart.
pub fn digest(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// A path `bgctl compare` may ask: absolute, no blanks or control
/// characters (it goes into a request line as it is), at most 2,048 bytes.
pub fn check_path(p: &str) -> Result<(), String> {
    if !p.starts_with('/') {
        return Err(format!(
            "compare path {p:?} is not absolute: start it with '/', such as \"/{}\"",
            p.trim_start_matches(['.', '/'])
        ));
    }
    if p.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!(
            "compare path {p:?} has a blank or a control character: write it as it goes in a URL, with %20 for a space"
        ));
    }
    if p.len() > 2048 {
        return Err(format!(
            "compare path of {} bytes is too long: at most 2048",
            p.len()
        ));
    }
    Ok(())
}

/// The paths to ask: those given, else `configured` (`compare.paths`, by
/// default `health.http`'s). Each checked; `Err` says what to give.
pub fn paths(asked: Vec<String>, configured: &[String]) -> Result<Vec<String>, String> {
    let paths = if asked.is_empty() {
        configured.to_vec()
    } else {
        asked
    };
    if paths.is_empty() {
        return Err("nothing to ask: name the paths (`bgctl compare / /api/items`), or set [compare] paths or health.http in the config".into());
    }
    if paths.len() > MAX_PATHS {
        return Err(format!(
            "{} paths: compare asks at most {MAX_PATHS} at once",
            paths.len()
        ));
    }
    for p in &paths {
        check_path(p)?;
    }
    Ok(paths)
}

/// What one build's `samples` of one path come to.
pub fn summarize(samples: &[Sample]) -> Seen {
    let mut seen = Seen::default();
    let mut digests = Vec::new();
    let mut ms = Vec::new();
    for s in samples {
        match &s.status {
            Ok(code) => {
                if !seen.statuses.contains(code) {
                    seen.statuses.push(*code);
                }
                seen.bytes = Some(s.bytes);
                if !digests.contains(&s.digest) {
                    digests.push(s.digest);
                }
                ms.push(s.ms);
            }
            Err(e) => {
                seen.failed += 1;
                seen.error = Some(e.clone());
            }
        }
    }
    seen.digest = match digests.as_slice() {
        [] => None,
        [one] => Some(format!("{one:016x}")),
        _ => Some("varies".into()),
    };
    ms.sort_by(f64::total_cmp);
    seen.median_ms = (!ms.is_empty()).then(|| ms[ms.len() / 2]);
    seen
}

/// One path's report: both builds' answers and what differs.
pub fn report(path: String, live: &[Sample], other: &[Sample]) -> PathReport {
    let (live, other) = (summarize(live), summarize(other));
    let mut differs = Vec::new();
    let answered = |s: &Seen| {
        let mut codes = s.statuses.clone();
        codes.sort_unstable();
        (codes, s.failed > 0)
    };
    if answered(&live) != answered(&other) {
        differs.push("status".to_string());
    }
    if live.bytes != other.bytes {
        differs.push("size".into());
    }
    if live.digest != other.digest || live.digest.as_deref() == Some("varies") {
        differs.push("body".into());
    }
    PathReport {
        path,
        live,
        other,
        differs,
    }
}

/// The status and body of a whole HTTP/1.x answer (the server closed the
/// connection after it: the request said `Connection: close`). A chunked
/// body is decoded; otherwise the body is what follows the headers, cut at
/// `Content-Length` if the answer gives one. `Err` says what was wrong.
pub fn parse_response(raw: &[u8]) -> Result<(u16, Vec<u8>), String> {
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or("the answer ended before its headers did")?;
    let head = String::from_utf8_lossy(&raw[..end]);
    let mut lines = head.split("\r\n");
    let status = lines.next().unwrap_or("");
    let code = status
        .strip_prefix("HTTP/1.")
        .and_then(|rest| rest.get(2..5))
        .and_then(|c| c.parse::<u16>().ok())
        .ok_or_else(|| format!("not an HTTP answer: {:?}", &status[..status.len().min(40)]))?;
    let (mut length, mut chunked) = (None, false);
    for line in lines {
        let Some((k, v)) = line.split_once(':') else {
            continue;
        };
        match k.trim().to_ascii_lowercase().as_str() {
            "content-length" => length = v.trim().parse::<usize>().ok(),
            "transfer-encoding" => chunked = v.to_ascii_lowercase().contains("chunked"),
            _ => {}
        }
    }
    let body = &raw[end + 4..];
    if chunked {
        return dechunk(body).map(|b| (code, b));
    }
    Ok((
        code,
        body[..length.unwrap_or(body.len()).min(body.len())].to_vec(),
    ))
}

/// A chunked body's data.
fn dechunk(mut rest: &[u8]) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    loop {
        let eol = rest
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or("a chunked body ended inside a chunk size")?;
        let size = String::from_utf8_lossy(&rest[..eol]);
        let size = size.split(';').next().unwrap_or("").trim();
        let n = usize::from_str_radix(size, 16).map_err(|_| format!("bad chunk size {size:?}"))?;
        rest = &rest[eol + 2..];
        if n == 0 {
            return Ok(out);
        }
        let chunk = rest.get(..n).ok_or("a chunked body ended inside a chunk")?;
        out.extend_from_slice(chunk);
        rest = rest.get(n + 2..).unwrap_or(&[]);
    }
}

impl<P: Process> Core<P> {
    /// The two builds a compare asks: the live one, and the one running
    /// beside it (a preview, a canary, or a standby, which is the previous
    /// build during a bake). `Err` says why there is nothing to compare.
    pub fn compare_sides(&self) -> Result<(Side, Side), Failure> {
        let refuse = |m: String| Err(Failure::new(FailureKind::BadRequest, None, m));
        let Some(live) = self.state.live else {
            return refuse(
                "nothing is live, so there is nothing to compare: `bgctl release DIR` first".into(),
            );
        };
        if !matches!(self.slot(live).phase, ColorPhase::Live { .. }) {
            return refuse(format!(
                "{live} is live but not serving (it is restarting): compare once it serves"
            ));
        }
        let other = live.other();
        let role = match (&self.slot(other).phase, &self.canary) {
            (ColorPhase::Canary { .. }, Some(c)) if c.percent == 0 => "preview",
            (ColorPhase::Canary { .. }, _) => "canary",
            (ColorPhase::Standby { .. }, _) => "standby",
            _ => {
                return refuse(format!(
                    "nothing runs beside the live {live}, so there is nothing to compare: `bgctl release DIR --preview` starts a new build beside it for the testers, and `bgctl compare` then asks both"
                ))
            }
        };
        Ok((self.side(live, "live"), self.side(other, role)))
    }

    fn side(&self, color: Color, role: &str) -> Side {
        let build = self.state.build(color);
        Side {
            role: role.into(),
            color,
            release: build.map(|b| b.release),
            label: build.and_then(|b| b.label.clone()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(code: u16, body: &str, ms: f64) -> Sample {
        Sample {
            status: Ok(code),
            bytes: body.len() as u64,
            digest: digest(body.as_bytes()),
            ms,
        }
    }

    fn failed(why: &str) -> Sample {
        Sample {
            status: Err(why.into()),
            bytes: 0,
            digest: 0,
            ms: 0.0,
        }
    }

    #[test]
    fn answers_summarize_to_statuses_size_digest_and_median() {
        let s = summarize(&[ok(200, "a", 3.0), ok(200, "a", 1.0), ok(200, "a", 2.0)]);
        assert_eq!(s.statuses, [200]);
        assert_eq!(s.bytes, Some(1));
        assert_eq!(s.digest, Some(format!("{:016x}", digest(b"a"))));
        assert_eq!(s.median_ms, Some(2.0));
        assert_eq!((s.failed, s.error), (0, None));
        let s = summarize(&[ok(200, "a", 1.0), ok(503, "bb", 1.0), failed("refused")]);
        assert_eq!(s.statuses, [200, 503]);
        assert_eq!(s.digest.as_deref(), Some("varies"));
        assert_eq!((s.failed, s.error.as_deref()), (1, Some("refused")));
        let s = summarize(&[failed("timed out")]);
        assert_eq!((s.bytes, s.digest, s.median_ms), (None, None, None));
    }

    #[test]
    fn what_differs_is_named() {
        for (live, other, want) in [
            (vec![ok(200, "a", 1.0)], vec![ok(200, "a", 9.0)], vec![]),
            (
                vec![ok(200, "a", 1.0)],
                vec![ok(200, "b", 1.0)],
                vec!["body"],
            ),
            (
                vec![ok(200, "a", 1.0)],
                vec![ok(500, "boom", 1.0)],
                vec!["status", "size", "body"],
            ),
            (
                vec![ok(200, "a", 1.0)],
                vec![ok(200, "a", 1.0), failed("reset")],
                vec!["status"],
            ),
            (
                vec![ok(200, "a", 1.0), ok(404, "a", 1.0)],
                vec![ok(404, "a", 1.0), ok(200, "a", 1.0)],
                vec![],
            ),
        ] {
            let r = report("/".into(), &live, &other);
            assert_eq!(r.differs, want, "{live:?} {other:?}");
        }
        let side = |role: &str| Side {
            role: role.into(),
            color: Color::Blue,
            release: Some(1),
            label: None,
        };
        let mut c = Comparison {
            live: side("live"),
            other: side("preview"),
            requests: 1,
            paths: vec![report(
                "/".into(),
                &[ok(200, "a", 1.0)],
                &[ok(200, "b", 1.0)],
            )],
        };
        assert!(!c.status_differs(), "a body alone is no exit 9");
        c.paths.push(report(
            "/x".into(),
            &[ok(200, "a", 1.0)],
            &[ok(500, "a", 1.0)],
        ));
        assert!(c.status_differs());
    }

    #[test]
    fn answers_parse_to_status_and_body() {
        let r = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX: y\r\n\r\nhello";
        assert_eq!(parse_response(r), Ok((200, b"hello".to_vec())));
        let r = b"HTTP/1.0 500 Oops\r\n\r\nboom\n";
        assert_eq!(parse_response(r), Ok((500, b"boom\n".to_vec())));
        let r = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6;x=1\r\n world\r\n0\r\n\r\n";
        assert_eq!(parse_response(r), Ok((200, b"hello world".to_vec())));
        assert!(parse_response(b"HTTP/1.1 200 OK\r\n")
            .unwrap_err()
            .contains("before its headers"));
        assert!(parse_response(b"SSH-2.0\r\n\r\n")
            .unwrap_err()
            .contains("not an HTTP answer"));
    }

    #[test]
    fn paths_are_the_asked_ones_else_the_configured_ones_and_absolute() {
        let conf = vec!["/healthz".to_string()];
        assert_eq!(paths(vec![], &conf), Ok(conf.clone()));
        assert_eq!(
            paths(vec!["/a?b=1".into()], &conf),
            Ok(vec!["/a?b=1".into()])
        );
        for (asked, says) in [
            (vec!["api/items"], "compare path \"api/items\" is not absolute: start it with '/', such as \"/api/items\""),
            (vec!["/a b"], "has a blank"),
            (vec!["/a\r\nX: 1"], "control character"),
        ] {
            let e = paths(asked.iter().map(|s| s.to_string()).collect(), &conf).unwrap_err();
            assert!(e.contains(says), "{asked:?}: {e}");
        }
        let e = paths(vec![], &[]).unwrap_err();
        assert!(e.contains("set [compare] paths or health.http"), "{e}");
        let many = (0..33).map(|i| format!("/{i}")).collect();
        assert!(paths(many, &conf).unwrap_err().contains("at most 32"));
    }
}
