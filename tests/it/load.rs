//! Continuous HTTP load from keep-alive clients and from clients that open a
//! new connection per request. Every response and every failure is recorded
//! with the instant its request started.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

pub struct Sample {
    pub started: Instant,
    /// From the request's start to its answer (or failure).
    pub took: Duration,
    /// The body, or why the request failed.
    pub result: Result<String, String>,
}

pub struct Load {
    stop: Arc<AtomicBool>,
    samples: Arc<Mutex<Vec<Sample>>>,
    threads: Vec<JoinHandle<()>>,
}

impl Load {
    /// Starts `keepalive` + `fresh` client threads against `addr`.
    pub fn start(addr: &str, keepalive: usize, fresh: usize) -> Load {
        Load::start_with(addr, keepalive, fresh, Duration::from_secs(15))
    }

    /// Like [`start`](Self::start), each request failing after `timeout`
    /// without an answer (a pause holds requests for many seconds).
    pub fn start_with(addr: &str, keepalive: usize, fresh: usize, timeout: Duration) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let samples = Arc::new(Mutex::new(Vec::new()));
        let mut threads = Vec::new();
        for i in 0..keepalive + fresh {
            let (addr, stop, samples) = (addr.to_string(), stop.clone(), samples.clone());
            let keep = i < keepalive;
            threads.push(std::thread::spawn(move || {
                client(&addr, keep, timeout, &stop, &samples)
            }));
        }
        Load {
            stop,
            samples,
            threads,
        }
    }

    /// The number of requests answered so far.
    pub fn count(&self) -> usize {
        self.samples.lock().unwrap().len()
    }

    /// Stops the load and asserts that not one request failed; returns
    /// the samples.
    pub fn finish_clean(self) -> Vec<Sample> {
        let samples = self.finish();
        let failed: Vec<_> = samples
            .iter()
            .filter_map(|s| s.result.as_ref().err())
            .collect();
        assert!(
            failed.is_empty(),
            "{} of {} requests failed, first: {:?}",
            failed.len(),
            samples.len(),
            &failed[..failed.len().min(5)]
        );
        samples
    }

    pub fn finish(self) -> Vec<Sample> {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            t.join().unwrap();
        }
        Arc::try_unwrap(self.samples)
            .ok()
            .unwrap()
            .into_inner()
            .unwrap()
    }
}

fn client(
    addr: &str,
    keepalive: bool,
    timeout: Duration,
    stop: &AtomicBool,
    samples: &Mutex<Vec<Sample>>,
) {
    let mut conn: Option<BufReader<TcpStream>> = None;
    while !stop.load(Ordering::Relaxed) {
        let started = Instant::now();
        let result = request(addr, keepalive, timeout, &mut conn);
        let took = started.elapsed();
        samples.lock().unwrap().push(Sample {
            started,
            took,
            result,
        });
    }
}

/// One `GET /`. On a keep-alive connection the server's `Connection: close`
/// is honoured by opening a new connection for the next request; any other
/// closed connection, reset or bad answer is a failure.
fn request(
    addr: &str,
    keepalive: bool,
    timeout: Duration,
    conn: &mut Option<BufReader<TcpStream>>,
) -> Result<String, String> {
    if conn.is_none() {
        let s = TcpStream::connect(addr).map_err(|e| format!("connect: {e}"))?;
        s.set_read_timeout(Some(timeout)).unwrap();
        s.set_nodelay(true).unwrap();
        *conn = Some(BufReader::new(s));
    }
    let r = conn.as_mut().unwrap();
    let header = if keepalive { "keep-alive" } else { "close" };
    let sent = write!(
        r.get_mut(),
        "GET / HTTP/1.1\r\nHost: load\r\nConnection: {header}\r\n\r\n"
    );
    let result = sent
        .map_err(|e| format!("send: {e}"))
        .and_then(|()| read_response(r));
    match &result {
        Ok((_, close)) if keepalive && !close => {}
        _ => *conn = None,
    }
    result.map(|(body, _)| body)
}

/// Reads one response; returns (body, server asked to close).
fn read_response(r: &mut BufReader<TcpStream>) -> Result<(String, bool), String> {
    let mut line = String::new();
    let n = r
        .read_line(&mut line)
        .map_err(|e| format!("read status: {e}"))?;
    if n == 0 {
        return Err("connection closed before a response".into());
    }
    if !line.starts_with("HTTP/1.1 200") && !line.starts_with("HTTP/1.0 200") {
        return Err(format!("status: {}", line.trim()));
    }
    let (mut len, mut close) = (None, false);
    loop {
        line.clear();
        r.read_line(&mut line)
            .map_err(|e| format!("read header: {e}"))?;
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        let (k, v) = l.split_once(':').ok_or(format!("bad header {l:?}"))?;
        match k.trim().to_ascii_lowercase().as_str() {
            "content-length" => len = v.trim().parse::<usize>().ok(),
            "connection" => close = v.trim().eq_ignore_ascii_case("close"),
            _ => {}
        }
    }
    let len = len.ok_or("no Content-Length")?;
    let mut body = vec![0; len];
    r.read_exact(&mut body)
        .map_err(|e| format!("read body: {e}"))?;
    Ok((String::from_utf8_lossy(&body).into_owned(), close))
}
