//! Arbitrary bytes as one control-socket line, decoded as a request and as a reply.
//!
//! Properties:
//! - `decode_request` and `decode_reply` never panic, whatever the bytes.
//! - A request that decodes Ok survives `encode` -> `decode_request` unchanged,
//!   and `encode` yields exactly one line (one trailing '\n', no other).
//! - A reply that decodes Ok survives `encode` -> `decode_reply` unchanged
//!   (numbers inside a `done` result compared with a 1-ULP-ish tolerance,
//!   since serde_json's default float parser is not exactly round-trip).
#![no_main]

use bgd::ops::protocol::{decode_reply, decode_request, encode, Reply};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

fuzz_target!(|data: &[u8]| {
    if let Ok(request) = decode_request(data) {
        let line = encode(&request);
        assert_one_line(&line);
        match decode_request(&line) {
            Ok(again) => assert_eq!(
                again,
                request,
                "request changed in a round trip through {:?}",
                String::from_utf8_lossy(&line)
            ),
            Err(e) => panic!(
                "re-encoded request {:?} does not decode: {}",
                String::from_utf8_lossy(&line),
                e.message
            ),
        }
    }

    if let Ok(reply) = decode_reply(data) {
        let line = encode(&reply);
        assert_one_line(&line);
        match decode_reply(&line) {
            Ok(again) => assert!(
                same_reply(&again, &reply),
                "reply changed in a round trip through {:?}: {reply:?} -> {again:?}",
                String::from_utf8_lossy(&line)
            ),
            Err(e) => panic!(
                "re-encoded reply {:?} does not decode: {e}",
                String::from_utf8_lossy(&line)
            ),
        }
    }
});

fn assert_one_line(line: &[u8]) {
    assert_eq!(line.last(), Some(&b'\n'), "encoded line does not end in '\\n'");
    assert!(
        !line[..line.len() - 1].contains(&b'\n'),
        "encoded line has an embedded newline: {:?}",
        String::from_utf8_lossy(line)
    );
}

fn same_reply(a: &Reply, b: &Reply) -> bool {
    match (a, b) {
        (Reply::Done { result: x }, Reply::Done { result: y }) => same_value(
            &serde_json::to_value(x).unwrap(),
            &serde_json::to_value(y).unwrap(),
        ),
        // A canary's share is a float: compared like the numbers in `done`.
        (Reply::Lifecycle(x), Reply::Lifecycle(y)) => same_value(
            &serde_json::to_value(x).unwrap(),
            &serde_json::to_value(y).unwrap(),
        ),
        _ => a == b,
    }
}

fn same_value(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => {
            if x == y {
                return true;
            }
            match (x.as_f64(), y.as_f64()) {
                (Some(x), Some(y)) => (x - y).abs() <= 4.0 * f64::EPSILON * x.abs().max(y.abs()),
                _ => false,
            }
        }
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(x, y)| same_value(x, y))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| same_value(v, w)))
        }
        _ => a == b,
    }
}
