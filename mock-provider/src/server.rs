//! Accept loop, routing and the transport knobs shared by both providers.

use std::convert::Infallible;
use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use flate2::write::GzEncoder;
use flate2::Compression;
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CACHE_CONTROL, CONTENT_ENCODING, CONTENT_TYPE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use crate::body::{MockBody, Reply};
use crate::knobs::Knobs;
use crate::stats::{Report, Stats};
use crate::{anthropic, openai};

/// Request bodies past this are refused: far beyond any real prompt a test
/// sends, small enough that a runaway client cannot exhaust memory.
const MAX_REQUEST_BODY: usize = 64 * 1024 * 1024;

const JSON: HeaderValue = HeaderValue::from_static("application/json");

/// Response ids only need to be unique within one mock process.
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

pub async fn serve(listener: TcpListener, stats: &'static Stats) {
    let mut builder = http1::Builder::new();
    builder.keep_alive(true);
    loop {
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            // Typically EMFILE under a load test: back off instead of spinning.
            Err(_) => {
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
                continue;
            }
        };
        // Small responses on keep-alive connections would otherwise wait on
        // Nagle + delayed ACK, which caps a benchmark at ~25 req/s/connection.
        let _ = stream.set_nodelay(true);
        let conn = builder.serve_connection(
            TokioIo::new(stream),
            service_fn(move |req| handle(req, stats)),
        );
        tokio::spawn(async move {
            // Connection errors (resets, our own truncations) are expected.
            let _ = conn.await;
        });
    }
}

pub async fn handle(
    req: Request<Incoming>,
    stats: &'static Stats,
) -> Result<Response<MockBody>, Infallible> {
    let path = req.uri().path();
    let resp = match *req.method() {
        Method::GET if path == "/healthz" => plain(StatusCode::OK, Bytes::from_static(b"ok")),
        Method::GET if path == "/mock/stats" => json(StatusCode::OK, stats.to_json(), None),
        Method::POST if path == "/mock/reset" => {
            stats.reset();
            json(
                StatusCode::OK,
                Bytes::from_static(b"{\"reset\":true}"),
                None,
            )
        }
        Method::POST if path.ends_with("/chat/completions") => {
            provider(req, Provider::OpenAi, stats).await
        }
        Method::POST if path.ends_with("/v1/messages") => {
            provider(req, Provider::Anthropic, stats).await
        }
        _ => {
            let msg = format!("no mock route for {} {}", req.method(), path);
            json(
                StatusCode::NOT_FOUND,
                openai::error_json("not_found_error", &msg).into(),
                None,
            )
        }
    };
    Ok(resp)
}

#[derive(Clone, Copy)]
enum Provider {
    OpenAi,
    Anthropic,
}

impl Provider {
    fn error_body(self, kind_openai: &str, kind_anthropic: &str, msg: &str) -> Vec<u8> {
        match self {
            Provider::OpenAi => openai::error_json(kind_openai, msg),
            Provider::Anthropic => anthropic::error_json(kind_anthropic, msg),
        }
    }

    fn bad_request(self, msg: &str) -> Vec<u8> {
        self.error_body("invalid_request_error", "invalid_request_error", msg)
    }
}

async fn provider(
    req: Request<Incoming>,
    provider: Provider,
    stats: &'static Stats,
) -> Response<MockBody> {
    let (parts, body) = req.into_parts();
    // Created first so a call abandoned at any later point still counts
    // (as unreported) when this is dropped.
    let mut report = Report::new(stats, parts.headers.get("x-agent-id").cloned());

    // Always read the whole body, even for bad knobs or failures, so the connection stays
    // usable for the next keep-alive request.
    let body = match Limited::new(body, MAX_REQUEST_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => {
            let status = if e.is::<http_body_util::LengthLimitError>() {
                StatusCode::PAYLOAD_TOO_LARGE
            } else {
                StatusCode::BAD_REQUEST
            };
            let msg = format!("could not read request body: {e}");
            return json(status, provider.bad_request(&msg).into(), Some(report));
        }
    };

    let knobs = match Knobs::from_headers(&parts.headers) {
        Ok(k) => k,
        Err(msg) => {
            return json(
                StatusCode::BAD_REQUEST,
                provider.bad_request(&msg).into(),
                Some(report),
            );
        }
    };
    let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
    let reply = match knobs.status {
        Some(status) => Reply::Json {
            status,
            body: provider.error_body("server_error", "api_error", "mock failure"),
            usage: None,
        },
        None => {
            let r = match provider {
                Provider::OpenAi => openai::respond(&knobs, &body, id, unix_now()),
                Provider::Anthropic => anthropic::respond(&knobs, &body, id),
            };
            match r {
                Ok(r) => r,
                Err(msg) => Reply::Json {
                    status: StatusCode::BAD_REQUEST,
                    body: provider.bad_request(&msg),
                    usage: None,
                },
            }
        }
    };

    if !knobs.delay.is_zero() {
        tokio::time::sleep(knobs.delay).await;
    }

    match reply {
        Reply::Json {
            status,
            body,
            usage,
        } => {
            report.set_usage(usage);
            let (body, gzipped) = if knobs.gzip {
                match gzip(&body) {
                    Ok(z) => (z, true),
                    Err(_) => (body, false),
                }
            } else {
                (body, false)
            };
            let body = Bytes::from(body);
            let body = if knobs.truncate_after.is_some() {
                MockBody::truncated(body, report)
            } else {
                MockBody::full(body, Some(report))
            };
            let mut resp = Response::new(body);
            *resp.status_mut() = status;
            resp.headers_mut().insert(CONTENT_TYPE, JSON);
            if gzipped {
                resp.headers_mut()
                    .insert(CONTENT_ENCODING, HeaderValue::from_static("gzip"));
            }
            resp
        }
        Reply::Sse { script, usage } => {
            report.set_usage(usage);
            let body = MockBody::sse(script, knobs.truncate_after, knobs.chunk_delay, report);
            let mut resp = Response::new(body);
            let h = resp.headers_mut();
            h.insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
            h.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
            resp
        }
    }
}

fn gzip(data: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut enc = GzEncoder::new(Vec::with_capacity(data.len() / 2 + 64), Compression::fast());
    enc.write_all(data)?;
    enc.finish()
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn json(status: StatusCode, body: Bytes, report: Option<Report>) -> Response<MockBody> {
    let mut resp = Response::new(MockBody::full(body, report));
    *resp.status_mut() = status;
    resp.headers_mut().insert(CONTENT_TYPE, JSON);
    resp
}

fn plain(status: StatusCode, body: Bytes) -> Response<MockBody> {
    let mut resp = Response::new(MockBody::full(body, None));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    resp
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::SocketAddr;
    use std::time::Duration;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    async fn start() -> (SocketAddr, &'static Stats) {
        let stats: &'static Stats = Box::leak(Box::new(Stats::new()));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(serve(listener, stats));
        (addr, stats)
    }

    fn post(path: &str, headers: &str, body: &str, close: bool) -> String {
        let conn = if close { "connection: close\r\n" } else { "" };
        format!(
            "POST {path} HTTP/1.1\r\nhost: t\r\ncontent-length: {}\r\n{conn}{headers}\r\n{body}",
            body.len()
        )
    }

    /// Sends raw bytes and reads until the server closes the connection.
    async fn exchange(addr: SocketAddr, req: &str) -> String {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(req.as_bytes()).await.unwrap();
        let mut out = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
        String::from_utf8(out).unwrap()
    }

    /// Aborted responses are counted when hyper drops the body, which can be
    /// a moment after the client sees the connection close.
    async fn wait_unreported(stats: &Stats, n: u64) {
        for _ in 0..200 {
            if stats.totals().1 == n {
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(stats.totals().1, n);
    }

    const CHAT: &str = r#"{"model":"m","messages":[]}"#;
    const CHAT_STREAM: &str =
        r#"{"model":"m","messages":[],"stream":true,"stream_options":{"include_usage":true}}"#;

    #[tokio::test]
    async fn keep_alive_requests_are_counted_per_agent() {
        let (addr, stats) = start().await;
        let req = post(
            "/v1/chat/completions",
            "x-agent-id: a\r\nx-mock-input-tokens: 5\r\n",
            CHAT,
            false,
        ) + &post(
            "/v1/messages",
            "x-agent-id: b\r\n",
            r#"{"messages":[],"max_tokens":2}"#,
            true,
        );
        let out = exchange(addr, &req).await;
        assert_eq!(out.matches("HTTP/1.1 200 OK").count(), 2, "{out}");
        assert_eq!(stats.agent("a").unwrap().usage.input_tokens, 5);
        assert_eq!(stats.agent("b").unwrap().usage.output_tokens, 2);
        assert_eq!(stats.totals().0.calls, 2);
    }

    #[tokio::test]
    async fn complete_stream_is_reported() {
        let (addr, stats) = start().await;
        let out = exchange(
            addr,
            &post(
                "/v1/chat/completions",
                "x-mock-output-tokens: 2\r\n",
                CHAT_STREAM,
                true,
            ),
        )
        .await;
        assert!(out.contains("transfer-encoding: chunked"));
        assert!(out.ends_with("data: [DONE]\n\n\r\n0\r\n\r\n"), "{out}");
        assert_eq!(stats.totals().0.usage.output_tokens, 2);
        assert_eq!(stats.totals().1, 0);
    }

    #[tokio::test]
    async fn truncated_stream_sends_k_events_and_is_unreported() {
        let (addr, stats) = start().await;
        let out = exchange(
            addr,
            &post(
                "/v1/chat/completions",
                "x-mock-truncate-after: 3\r\n",
                CHAT_STREAM,
                false,
            ),
        )
        .await;
        assert_eq!(out.matches("data: ").count(), 3, "{out}");
        assert!(!out.ends_with("0\r\n\r\n"));
        wait_unreported(stats, 1).await;
        assert_eq!(stats.totals().0.calls, 0);
    }

    #[tokio::test]
    async fn truncated_json_sends_half_the_declared_length() {
        let (addr, stats) = start().await;
        let out = exchange(
            addr,
            &post(
                "/v1/chat/completions",
                "x-mock-truncate-after: 1\r\n",
                CHAT,
                false,
            ),
        )
        .await;
        let (head, body) = out.split_once("\r\n\r\n").unwrap();
        let declared: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length: "))
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(body.len(), declared / 2);
        wait_unreported(stats, 1).await;
    }

    #[tokio::test]
    async fn client_leaving_mid_stream_is_unreported() {
        let (addr, stats) = start().await;
        let mut s = TcpStream::connect(addr).await.unwrap();
        let req = post(
            "/v1/messages",
            "x-mock-chunk-delay-ms: 50\r\n",
            r#"{"messages":[],"max_tokens":3,"stream":true}"#,
            false,
        );
        s.write_all(req.as_bytes()).await.unwrap();
        let mut buf = [0u8; 64];
        let n = s.read(&mut buf).await.unwrap();
        assert!(n > 0);
        drop(s);
        wait_unreported(stats, 1).await;
        assert_eq!(stats.totals().0.calls, 0);
    }

    #[tokio::test]
    async fn errors_and_bad_requests_are_unreported() {
        let (addr, stats) = start().await;
        let out = exchange(
            addr,
            &post("/v1/messages", "x-mock-status: 529\r\n", "{}", true),
        )
        .await;
        assert!(out.starts_with("HTTP/1.1 529"));
        assert!(out.ends_with(
            r#"{"type":"error","error":{"type":"api_error","message":"mock failure"}}"#
        ));
        let out = exchange(addr, &post("/v1/chat/completions", "", "{not json", true)).await;
        assert!(out.starts_with("HTTP/1.1 400"), "{out}");
        assert!(out.contains("invalid_request_error"));
        let out = exchange(addr, &post("/v2/other", "", "{}", true)).await;
        assert!(out.starts_with("HTTP/1.1 404"));
        assert_eq!(stats.totals().1, 2);
        assert_eq!(stats.totals().0.calls, 0);
    }
}
