//! The control protocol shared by `bgd` and `bgctl`.
//!
//! Line-delimited JSON over a Unix stream socket. The client sends one
//! [`Request`] line; bgd answers with zero or more [`Reply::Progress`] lines
//! and ends with exactly one [`Reply::Done`] or [`Reply::Error`], then closes.
//! Every line carries `"v": PROTOCOL_VERSION`; see `docs/protocol.md`.

use serde::{Deserialize, Serialize};

use crate::color::Color;

mod event;
mod outcome;
mod status;

pub use crate::deploy::compare::{Comparison, PathReport, Seen, Side};
pub use crate::deploy::{Failure, FailureKind, Record, Step, StepTime};
pub use crate::pipeline::releases::{Listed, Listing};
pub use event::*;
pub use outcome::{Done, Outcome, Share, StepMs, Swap, SwapMs};
pub use status::*;

pub const PROTOCOL_VERSION: u32 = 1;

/// Longest request line bgd reads; longer ones are refused.
pub const MAX_REQUEST_BYTES: usize = 64 * 1024;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Envelope<T> {
    pub v: u32,
    #[serde(flatten)]
    pub body: T,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "cmd", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    /// Stage `dir` (an absolute path) into the dormant color and make it live.
    Release {
        dir: String,
        label: Option<String>,
        /// Once ready, give the new color this share of new connections
        /// (1 to 99 percent) beside the live one, instead of all of them.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        canary: Option<u8>,
        /// Once ready, only the clients in `traffic.testers` reach the new
        /// color (a preview); not with `canary`.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        preview: bool,
        /// Answer once the bake window (and the canary steps) passed.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        wait_bake: bool,
    },
    /// Make an earlier build live again: kept release `to` (an id or a
    /// label), else the standby (a switch), else the previous good release
    /// (staged from its kept copy).
    Rollback {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        to: Option<String>,
    },
    /// The kept releases and the space they use.
    Releases,
    /// Hold new connections in the kernel and stop the app (database
    /// work); answered once no app process runs. `max_ms`: start `page`
    /// (an absolute build path; else `[pause] page`) once the pause has
    /// lasted this long. `page` alone during a pause starts it now.
    Pause {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        max_ms: Option<u64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        page: Option<String>,
    },
    /// End a pause with the build that was live before it.
    Resume,
    /// Raise the canary's share to `percent`, or make it live (`None`).
    Promote {
        #[serde(default)]
        percent: Option<u8>,
    },
    /// Give the canary no more connections and drain it.
    Abort,
    /// Ask `paths` (none: `compare.paths`) of the live build and of the one
    /// beside it, several times each, and answer both side by side.
    Compare {
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        paths: Vec<String>,
    },
    /// Re-execute bgd's binary in place (an upgrade); the app keeps running.
    Reexec,
    Status,
    /// Pause or resume auto-release.
    Watch {
        pause: bool,
    },
    /// The last releases.
    History,
    /// The apps' recent output (`color` or both), then, with `follow`, new
    /// lines as they come until the client goes away.
    Logs {
        color: Option<Color>,
        lines: usize,
        follow: bool,
    },
    /// The lifecycle events kept (the last 256), then, with `follow`, new
    /// ones as they happen until the client goes away.
    Events {
        follow: bool,
    },
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Reply {
    Progress {
        step: Step,
        message: String,
    },
    /// One line of an app's output (`bgctl logs`).
    Log(crate::supervise::logs::LogLine),
    /// One lifecycle event (`bgctl events`).
    Lifecycle(Event),
    Done {
        result: Done,
    },
    Error(Failure),
}

impl Request {
    /// A request whose answer goes on until the client hangs up.
    pub fn follows(&self) -> bool {
        matches!(
            self,
            Request::Logs { follow: true, .. } | Request::Events { follow: true }
        )
    }
}

impl Reply {
    /// The line that ends an answer: bgd closes the connection after it.
    pub fn is_last(&self) -> bool {
        matches!(self, Reply::Done { .. } | Reply::Error(_))
    }
}

/// Decodes one request line, checking the version first so an old or new
/// client gets a clear answer rather than a field error.
pub fn decode_request(line: &[u8]) -> Result<Request, Failure> {
    let value: serde_json::Value = serde_json::from_slice(line).map_err(|e| {
        Failure::new(
            FailureKind::BadRequest,
            None,
            format!("request is not valid JSON: {e}"),
        )
    })?;
    match value.get("v").and_then(|v| v.as_u64()) {
        Some(v) if v == PROTOCOL_VERSION as u64 => {}
        Some(v) => {
            return Err(Failure::new(
                FailureKind::BadRequest,
                None,
                format!("protocol version {v} is not supported; this bgd speaks version {PROTOCOL_VERSION}: use a bgctl of the same release"),
            ))
        }
        None => {
            return Err(Failure::new(
                FailureKind::BadRequest,
                None,
                format!("request has no protocol version: send {{\"v\":{PROTOCOL_VERSION},\"cmd\":...}}"),
            ))
        }
    }
    let mut obj = value;
    if let Some(map) = obj.as_object_mut() {
        map.remove("v");
    }
    serde_json::from_value(obj)
        .map_err(|e| Failure::new(FailureKind::BadRequest, None, format!("bad request: {e}")))
}

/// One line of JSON, newline included.
pub fn encode<T: Serialize>(body: &T) -> Vec<u8> {
    let mut line = serde_json::to_vec(&Envelope {
        v: PROTOCOL_VERSION,
        body,
    })
    .expect("protocol types serialize infallibly: plain structs with string keys");
    line.push(b'\n');
    line
}

pub fn decode_reply(line: &[u8]) -> Result<Reply, String> {
    let env: Envelope<Reply> =
        serde_json::from_slice(line).map_err(|e| format!("bad reply from bgd: {e}"))?;
    if env.v != PROTOCOL_VERSION {
        return Err(format!(
            "bgd speaks protocol version {}, this bgctl version {PROTOCOL_VERSION}: use a bgctl of the same release",
            env.v
        ));
    }
    Ok(env.body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_round_trip() {
        let r = Request::Release {
            dir: "/tmp/x".into(),
            label: Some("v2".into()),
            canary: None,
            preview: false,
            wait_bake: false,
        };
        let line = encode(&r);
        assert_eq!(
            std::str::from_utf8(&line).unwrap(),
            "{\"v\":1,\"cmd\":\"release\",\"dir\":\"/tmp/x\",\"label\":\"v2\"}\n"
        );
        assert_eq!(decode_request(&line).unwrap(), r);
    }

    #[test]
    fn clear_answers_to_bad_requests() {
        let e = decode_request(b"{\"v\":2,\"cmd\":\"status\"}").unwrap_err();
        assert!(
            e.message.contains("version 2 is not supported"),
            "{}",
            e.message
        );
        let e = decode_request(b"{\"cmd\":\"status\"}").unwrap_err();
        assert!(e.message.contains("no protocol version"), "{}", e.message);
        let e = decode_request(b"{\"v\":1,\"cmd\":\"launch\"}").unwrap_err();
        assert!(e.message.contains("unknown variant"), "{}", e.message);
        let e = decode_request(b"{\"v\":1,").unwrap_err();
        assert!(e.message.contains("not valid JSON"), "{}", e.message);
    }
}
