//! The `[metrics] listen` endpoint: `GET /metrics` over HTTP/1.1 (hyper).
//!
//! Each connection is its own task with a deadline and there are at most
//! [`MAX_CONNECTIONS`] at once, so a scraper that connects and sends
//! nothing, or sends garbage, costs a task for [`DEADLINE`] and never
//! reaches the event loop. The exposition is built on the blocking pool (it
//! reads /proc). No keep-alive: a scrape is one connection, so nothing stays
//! open (or wakes bgd) between scrapes.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use super::Metrics;

/// The longest a scrape connection may stay open, whatever it sends.
pub const DEADLINE: Duration = Duration::from_secs(10);

/// Scrape connections served at once; more are closed at once.
pub const MAX_CONNECTIONS: usize = 16;

/// Binds `metrics.listen`; the error names the key and what to do.
pub fn bind(addr: SocketAddr) -> anyhow::Result<std::net::TcpListener> {
    let fail = |e: std::io::Error| {
        anyhow::anyhow!("metrics.listen = \"{addr}\": cannot listen there ({e}): pick a free address and port, or remove [metrics] to serve no metrics")
    };
    let listener = std::net::TcpListener::bind(addr).map_err(fail)?;
    listener.set_nonblocking(true).map_err(fail)?;
    Ok(listener)
}

/// Serves `/metrics` on `listener` until bgd exits.
pub async fn serve(listener: std::net::TcpListener, metrics: Arc<Metrics>) {
    let listener = match TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => return tracing::error!("cannot serve metrics: {e}"),
    };
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!("metrics accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tracing::debug!("{MAX_CONNECTIONS} metrics connections open: closing a new one");
            continue;
        };
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| answer(req, metrics.clone()));
            let conn = hyper::server::conn::http1::Builder::new()
                .keep_alive(false)
                .serve_connection(TokioIo::new(stream), service);
            // A scraper that stalls is cut at the deadline; errors (garbage,
            // a reset) only end its own connection.
            let _ = tokio::time::timeout(DEADLINE, conn).await;
            drop(slot);
        });
    }
}

async fn answer(
    req: Request<Incoming>,
    metrics: Arc<Metrics>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let reply = |status: StatusCode, body: String| {
        Response::builder()
            .status(status)
            .header("content-type", "text/plain; charset=utf-8")
            .body(Full::new(Bytes::from(body)))
            .expect("a status and one valid header make a response")
    };
    if req.uri().path() != "/metrics" {
        return Ok(reply(
            StatusCode::NOT_FOUND,
            "bgd serves GET /metrics\n".into(),
        ));
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return Ok(reply(StatusCode::METHOD_NOT_ALLOWED, "use GET\n".into()));
    }
    match tokio::task::spawn_blocking(move || metrics.encode()).await {
        Ok(text) => {
            let mut r = reply(StatusCode::OK, text);
            r.headers_mut().insert(
                "content-type",
                hyper::header::HeaderValue::from_static(
                    prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
                ),
            );
            Ok(r)
        }
        Err(e) => Ok(reply(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot build the metrics: {e}\n"),
        )),
    }
}
