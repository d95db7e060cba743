//! Accept loop, routing and the transport knobs shared by every API.

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
use crate::call::{azure_deployment, gemini_model, Call};
use crate::gemini::Mode;
use crate::knobs::Knobs;
use crate::stats::{Report, Stats};
use crate::{anthropic, completions, embeddings, gemini, openai, responses};

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
        Method::POST => match Api::route(path, req.uri().query()) {
            Some(api) => provider(req, api, stats).await,
            None => not_found(&req),
        },
        _ => not_found(&req),
    };
    Ok(resp)
}

fn not_found(req: &Request<Incoming>) -> Response<MockBody> {
    let msg = format!("no mock route for {} {}", req.method(), req.uri().path());
    json(
        StatusCode::NOT_FOUND,
        openai::error_json("not_found_error", &msg).into(),
        None,
    )
}

/// Which API a request speaks, from its path (any prefix, so Azure's
/// `/openai/deployments/{d}/…` and proxies' own prefixes route too).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Api {
    Chat,
    Completions,
    Responses,
    Embeddings,
    Anthropic,
    Gemini(Mode),
}

impl Api {
    fn route(path: &str, query: Option<&str>) -> Option<Api> {
        // Order matters: `/chat/completions` also ends with `/completions`.
        let api = if path.ends_with("/chat/completions") {
            Api::Chat
        } else if path.ends_with("/completions") {
            Api::Completions
        } else if path.ends_with("/responses") {
            Api::Responses
        } else if path.ends_with("/embeddings") {
            Api::Embeddings
        } else if path.ends_with("/v1/messages") {
            Api::Anthropic
        } else if path.ends_with(":generateContent") {
            Api::Gemini(Mode::Unary)
        } else if path.ends_with(":streamGenerateContent") {
            let sse = query.is_some_and(|q| q.split('&').any(|p| p == "alt=sse"));
            Api::Gemini(if sse { Mode::Sse } else { Mode::JsonArray })
        } else {
            return None;
        };
        Some(api)
    }

    /// The model the path names, used when the body names none.
    fn path_model(self, path: &str) -> Option<&str> {
        match self {
            Api::Anthropic => None,
            Api::Gemini(_) => gemini_model(path),
            _ => azure_deployment(path),
        }
    }

    /// An error body in the API's own shape. `bad_request` picks the
    /// invalid-request flavour over the generic server failure.
    fn error_body(self, status: StatusCode, bad_request: bool, msg: &str) -> Vec<u8> {
        match self {
            Api::Anthropic => anthropic::error_json(
                if bad_request {
                    "invalid_request_error"
                } else {
                    "api_error"
                },
                msg,
            ),
            Api::Gemini(_) => gemini::error_json(status, msg),
            _ => openai::error_json(
                if bad_request {
                    "invalid_request_error"
                } else {
                    "server_error"
                },
                msg,
            ),
        }
    }

    fn respond(self, k: &Knobs, body: &[u8], call: &Call) -> Result<Reply, String> {
        match self {
            Api::Chat => openai::respond(k, body, call),
            Api::Completions => completions::respond(k, body, call),
            Api::Responses => responses::respond(k, body, call),
            Api::Embeddings => embeddings::respond(k, body, call),
            Api::Anthropic => anthropic::respond(k, body, call.id),
            Api::Gemini(mode) => gemini::respond(k, body, call, mode),
        }
    }
}

async fn provider(req: Request<Incoming>, api: Api, stats: &'static Stats) -> Response<MockBody> {
    let (parts, body) = req.into_parts();
    // Created first so a call abandoned at any later point still counts
    // (as unreported) when this is dropped.
    let mut report = Report::new(stats, parts.headers.get("x-agent-id").cloned());
    if !parts.headers.contains_key(hyper::header::CONTENT_LENGTH) {
        stats.record_unsized_request();
    }
    if parts
        .headers
        .keys()
        .any(|name| name.as_str().starts_with("x-agent-budget-claim-"))
    {
        stats.record_claim_header_request();
    }
    let bad_request =
        |status: StatusCode, msg: &str| -> Bytes { api.error_body(status, true, msg).into() };

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
            return json(status, bad_request(status, &msg), Some(report));
        }
    };

    let knobs = match Knobs::from_headers(&parts.headers) {
        Ok(k) => k,
        Err(msg) => {
            return json(
                StatusCode::BAD_REQUEST,
                bad_request(StatusCode::BAD_REQUEST, &msg),
                Some(report),
            );
        }
    };
    let call = Call {
        id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
        created: unix_now(),
        path_model: api.path_model(parts.uri.path()),
    };
    let reply = match knobs.status {
        Some(status) => Reply::Json {
            status,
            body: api.error_body(status, false, "mock failure"),
            usage: None,
        },
        None => match api.respond(&knobs, &body, &call) {
            Ok(r) => r,
            Err(msg) => Reply::Json {
                status: StatusCode::BAD_REQUEST,
                body: api.error_body(StatusCode::BAD_REQUEST, true, &msg),
                usage: None,
            },
        },
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
            resp.headers_mut()
                .insert(CONTENT_TYPE, labelled(&knobs, JSON));
            if gzipped {
                resp.headers_mut()
                    .insert(CONTENT_ENCODING, HeaderValue::from_static("gzip"));
            }
            resp
        }
        Reply::Sse {
            script,
            usage,
            json,
        } => {
            report.set_usage(usage);
            let body = MockBody::sse(script, knobs.truncate_after, knobs.chunk_delay, report);
            let mut resp = Response::new(body);
            let h = resp.headers_mut();
            let content_type = if json {
                JSON
            } else {
                HeaderValue::from_static("text/event-stream")
            };
            h.insert(CONTENT_TYPE, labelled(&knobs, content_type));
            h.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
            resp
        }
    }
}

/// The content type a reply is labelled with: its own, unless `x-mock-content-type` says
/// otherwise (a mislabelled response).
fn labelled(knobs: &Knobs, own: HeaderValue) -> HeaderValue {
    knobs
        .content_type
        .and_then(|label| HeaderValue::from_str(label).ok())
        .unwrap_or(own)
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
    async fn exchange_raw(addr: SocketAddr, req: &str) -> Vec<u8> {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(req.as_bytes()).await.unwrap();
        let mut out = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
        out
    }

    async fn exchange(addr: SocketAddr, req: &str) -> String {
        String::from_utf8(exchange_raw(addr, req).await).unwrap()
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
    async fn requests_carrying_claim_headers_are_counted() {
        let (addr, stats) = start().await;
        let req = post(
            "/v1/chat/completions",
            "x-agent-id: a\r\nx-agent-budget-claim-sub: u\r\n",
            CHAT,
            false,
        ) + &post("/v1/chat/completions", "x-agent-id: a\r\n", CHAT, true);
        let out = exchange(addr, &req).await;
        assert_eq!(out.matches("HTTP/1.1 200 OK").count(), 2, "{out}");
        let doc: Value = serde_json::from_slice(&stats.to_json()).unwrap();
        assert_eq!(doc["claim_header_requests"], 1, "{doc}");
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

    /// Splits one complete response into its lower-cased head and its body,
    /// undoing chunked transfer encoding.
    fn split(out: &str) -> (String, String) {
        let (head, body) = out.split_once("\r\n\r\n").unwrap();
        let head = head.to_ascii_lowercase();
        if !head.contains("transfer-encoding: chunked") {
            return (head, body.to_owned());
        }
        let (mut rest, mut data) = (body, String::new());
        loop {
            let (size, after) = rest.split_once("\r\n").unwrap();
            let size = usize::from_str_radix(size, 16).unwrap();
            if size == 0 {
                assert_eq!(after, "\r\n", "message must be terminated");
                return (head, data);
            }
            data.push_str(&after[..size]);
            rest = after[size..].strip_prefix("\r\n").unwrap();
        }
    }

    async fn call_json(addr: SocketAddr, path: &str, headers: &str, body: &str) -> Value {
        let out = exchange(addr, &post(path, headers, body, true)).await;
        assert!(out.starts_with("HTTP/1.1 200 OK"), "{out}");
        let (head, body) = split(&out);
        assert!(head.contains("content-type: application/json"), "{head}");
        serde_json::from_str(&body).unwrap()
    }

    fn counters(stats: &Stats, agent: &str) -> (u64, u64, u64, u64, u64) {
        let c = stats.agent(agent).unwrap();
        let u = c.usage;
        (
            c.calls,
            u.input_tokens,
            u.output_tokens,
            u.cached_tokens,
            u.reasoning_tokens,
        )
    }

    use serde_json::{json, Value};

    #[test]
    fn routes() {
        use Api::*;
        for (path, query, api) in [
            ("/v1/chat/completions", None, Some(Chat)),
            (
                "/openai/deployments/d/chat/completions",
                Some("api-version=2024-10-21"),
                Some(Chat),
            ),
            ("/v1/completions", None, Some(Completions)),
            ("/openai/deployments/d/completions", None, Some(Completions)),
            ("/v1/responses", None, Some(Responses)),
            (
                "/openai/responses",
                Some("api-version=preview"),
                Some(Responses),
            ),
            ("/v1/embeddings", None, Some(Embeddings)),
            ("/v1/messages", None, Some(Anthropic)),
            (
                "/v1beta/models/g:generateContent",
                None,
                Some(Gemini(Mode::Unary)),
            ),
            (
                "/v1beta/models/g:streamGenerateContent",
                Some("alt=sse"),
                Some(Gemini(Mode::Sse)),
            ),
            (
                "/v1beta/models/g:streamGenerateContent",
                Some("key=k&alt=sse"),
                Some(Gemini(Mode::Sse)),
            ),
            (
                "/v1beta/models/g:streamGenerateContent",
                None,
                Some(Gemini(Mode::JsonArray)),
            ),
            (
                "/v1beta/models/g:streamGenerateContent",
                Some("alt=json"),
                Some(Gemini(Mode::JsonArray)),
            ),
            ("/v1/models", None, None),
            ("/v1/responses/resp_1", None, None),
        ] {
            assert_eq!(Api::route(path, query), api, "{path}");
        }
        assert_eq!(
            Chat.path_model("/openai/deployments/dep/chat/completions"),
            Some("dep")
        );
        assert_eq!(
            Anthropic.path_model("/openai/deployments/dep/v1/messages"),
            None
        );
        assert_eq!(
            Gemini(Mode::Unary).path_model("/v1beta/models/gemini-2.5-pro:generateContent"),
            Some("gemini-2.5-pro")
        );
    }

    #[tokio::test]
    async fn non_streaming_formats_report_what_stats_count() {
        let (addr, stats) = start().await;
        let knobs = "x-mock-input-tokens: 100\r\nx-mock-output-tokens: 10\r\n\
                     x-mock-cached-tokens: 30\r\nx-mock-reasoning-tokens: 4\r\n";

        let v = call_json(
            addr,
            "/v1/completions",
            &format!("x-agent-id: legacy\r\n{knobs}"),
            r#"{"model":"gpt-3.5-turbo-instruct","prompt":"hi"}"#,
        )
        .await;
        assert_eq!(v["object"], "text_completion");
        assert_eq!(
            v["usage"],
            json!({"prompt_tokens":100,"completion_tokens":10,"total_tokens":110})
        );
        // Legacy usage has no cached/reasoning details, so they count as 0.
        assert_eq!(counters(stats, "legacy"), (1, 100, 10, 0, 0));

        let v = call_json(
            addr,
            "/v1/responses",
            &format!("x-agent-id: resp\r\n{knobs}"),
            r#"{"model":"gpt-5","input":"hi"}"#,
        )
        .await;
        assert_eq!(v["object"], "response");
        assert_eq!(v["status"], "completed");
        let u = &v["usage"];
        assert_eq!(u["input_tokens"], 100);
        assert_eq!(u["input_tokens_details"]["cached_tokens"], 30);
        assert_eq!(u["output_tokens"], 10);
        assert_eq!(u["output_tokens_details"]["reasoning_tokens"], 4);
        assert_eq!(counters(stats, "resp"), (1, 100, 10, 30, 4));

        let v = call_json(
            addr,
            "/v1/embeddings",
            &format!("x-agent-id: emb\r\n{knobs}"),
            r#"{"model":"text-embedding-3-small","input":["a","b"]}"#,
        )
        .await;
        assert_eq!(v["data"].as_array().unwrap().len(), 2);
        assert_eq!(v["usage"], json!({"prompt_tokens":100,"total_tokens":100}));
        assert_eq!(counters(stats, "emb"), (1, 100, 0, 0, 0));

        let v = call_json(
            addr,
            "/v1beta/models/gemini-2.5-flash:generateContent",
            &format!("x-agent-id: gem\r\n{knobs}"),
            r#"{"contents":[{"parts":[{"text":"hi"}]}]}"#,
        )
        .await;
        assert_eq!(v["modelVersion"], "gemini-2.5-flash");
        assert_eq!(
            v["usageMetadata"],
            json!({"promptTokenCount":100,"candidatesTokenCount":6,"totalTokenCount":110,
                   "cachedContentTokenCount":30,"thoughtsTokenCount":4})
        );
        assert_eq!(counters(stats, "gem"), (1, 100, 10, 30, 4));

        let v = call_json(
            addr,
            "/v1/projects/p/locations/us-central1/publishers/google/models/gemini-2.0-flash:generateContent",
            "x-agent-id: gem\r\nx-mock-input-tokens: 1\r\n",
            r#"{"contents":[],"generationConfig":{"maxOutputTokens":2}}"#,
        )
        .await;
        assert_eq!(v["modelVersion"], "gemini-2.0-flash");
        assert_eq!(counters(stats, "gem"), (2, 101, 12, 30, 4));
        assert_eq!(stats.totals().0.calls, 5);
        assert_eq!(stats.totals().1, 0);
    }

    #[tokio::test]
    async fn azure_deployment_names_the_model() {
        let (addr, stats) = start().await;
        let q = "?api-version=2024-10-21";
        let base = "/openai/deployments/prod-4o";
        let v = call_json(
            addr,
            &format!("{base}/chat/completions{q}"),
            "",
            r#"{"messages":[]}"#,
        )
        .await;
        assert_eq!(v["model"], "prod-4o");
        assert_eq!(v["object"], "chat.completion");
        let v = call_json(
            addr,
            &format!("{base}/completions{q}"),
            "",
            r#"{"prompt":"x"}"#,
        )
        .await;
        assert_eq!(v["model"], "prod-4o");
        let v = call_json(
            addr,
            &format!("{base}/embeddings{q}"),
            "",
            r#"{"input":"x"}"#,
        )
        .await;
        assert_eq!(v["model"], "prod-4o");
        let v = call_json(
            addr,
            &format!("{base}/embeddings{q}"),
            "x-mock-model: override\r\n",
            r#"{"input":"x"}"#,
        )
        .await;
        assert_eq!(v["model"], "override");
        let v = call_json(
            addr,
            &format!("{base}/responses{q}"),
            "",
            r#"{"model":"from-body","input":"x"}"#,
        )
        .await;
        assert_eq!(v["model"], "from-body");
        assert_eq!(stats.totals().0.calls, 5);
    }

    #[tokio::test]
    async fn content_type_knob_mislabels_json_and_streams() {
        let (addr, _stats) = start().await;
        let label = "x-mock-content-type: text/event-stream\r\n";
        let out = exchange(
            addr,
            &post(
                "/v1/chat/completions",
                label,
                r#"{"model":"m","messages":[]}"#,
                true,
            ),
        )
        .await;
        let (head, data) = split(&out);
        assert!(head.contains("content-type: text/event-stream"), "{head}");
        assert!(serde_json::from_str::<Value>(&data).is_ok(), "{data}");
        let label = "x-mock-content-type: application/json\r\n";
        let body = r#"{"model":"m","stream":true,"messages":[]}"#;
        let out = exchange(addr, &post("/v1/chat/completions", label, body, true)).await;
        let (head, data) = split(&out);
        assert!(head.contains("content-type: application/json"), "{head}");
        assert!(data.starts_with("data: "), "{data}");
    }

    #[tokio::test]
    async fn legacy_completion_stream_over_the_socket() {
        let (addr, stats) = start().await;
        let body = r#"{"prompt":"x","stream":true,"stream_options":{"include_usage":true}}"#;
        let out = exchange(
            addr,
            &post("/v1/completions", "x-mock-output-tokens: 3\r\n", body, true),
        )
        .await;
        let (head, data) = split(&out);
        assert!(head.contains("content-type: text/event-stream"));
        let events: Vec<&str> = data.split_terminator("\n\n").collect();
        assert_eq!(events.len(), 6, "{data}");
        assert_eq!(events[5], "data: [DONE]");
        let usage: Value = serde_json::from_str(events[4].strip_prefix("data: ").unwrap()).unwrap();
        assert_eq!(usage["choices"], json!([]));
        assert_eq!(usage["usage"]["completion_tokens"], 3);
        assert_eq!(stats.totals().0.usage.output_tokens, 3);
    }

    #[tokio::test]
    async fn responses_stream_over_the_socket_and_truncated() {
        let (addr, stats) = start().await;
        let body = r#"{"input":"x","stream":true}"#;
        let out = exchange(
            addr,
            &post(
                "/v1/responses",
                "x-mock-output-tokens: 40\r\nx-mock-input-tokens: 9\r\n",
                body,
                true,
            ),
        )
        .await;
        let (head, data) = split(&out);
        assert!(head.contains("content-type: text/event-stream"));
        let events: Vec<&str> = data.split_terminator("\n\n").collect();
        assert_eq!(events.len(), 48);
        for (i, e) in events.iter().enumerate() {
            let (name, payload) = e.split_once('\n').unwrap();
            let v: Value = serde_json::from_str(payload.strip_prefix("data: ").unwrap()).unwrap();
            assert_eq!(v["sequence_number"], i as u64);
            assert_eq!(name.strip_prefix("event: ").unwrap(), v["type"]);
        }
        let last = events[47].split_once("data: ").unwrap().1;
        let last: Value = serde_json::from_str(last).unwrap();
        assert_eq!(last["type"], "response.completed");
        assert_eq!(last["response"]["usage"]["total_tokens"], 49);
        assert_eq!(counters(stats, "-"), (1, 9, 40, 0, 0));

        let out = exchange(
            addr,
            &post("/v1/responses", "x-mock-truncate-after: 5\r\n", body, false),
        )
        .await;
        assert_eq!(out.matches("event: ").count(), 5, "{out}");
        assert!(!out.contains("response.completed"));
        wait_unreported(stats, 1).await;
        assert_eq!(stats.totals().0.calls, 1);
    }

    #[tokio::test]
    async fn gemini_streams_over_the_socket() {
        let (addr, stats) = start().await;
        let path = "/v1beta/models/gemini-2.5-flash:streamGenerateContent";
        let knobs = "x-mock-input-tokens: 50\r\nx-mock-output-tokens: 9\r\n\
                     x-mock-reasoning-tokens: 3\r\nx-mock-chunks: 3\r\n";
        let body = r#"{"contents":[{"role":"user","parts":[{"text":"hi"}]}]}"#;

        let out = exchange(addr, &post(&format!("{path}?alt=sse"), knobs, body, true)).await;
        let (head, data) = split(&out);
        assert!(head.contains("content-type: text/event-stream"), "{head}");
        let events: Vec<&str> = data.split_terminator("\r\n\r\n").collect();
        assert_eq!(events.len(), 3, "{data}");
        let cands: Vec<u64> = events
            .iter()
            .map(|e| {
                let v: Value = serde_json::from_str(e.strip_prefix("data: ").unwrap()).unwrap();
                assert_eq!(v["usageMetadata"]["promptTokenCount"], 50);
                assert_eq!(v["usageMetadata"]["thoughtsTokenCount"], 3);
                v["usageMetadata"]["candidatesTokenCount"].as_u64().unwrap()
            })
            .collect();
        assert_eq!(cands, [2, 4, 6]);
        assert_eq!(counters(stats, "-"), (1, 50, 9, 0, 3));

        let out = exchange(addr, &post(path, knobs, body, true)).await;
        let (head, data) = split(&out);
        assert!(head.contains("content-type: application/json"), "{head}");
        let v: Value = serde_json::from_str(&data).unwrap();
        let chunks = v.as_array().unwrap();
        assert_eq!(chunks.len(), 3);
        assert_eq!(chunks[2]["candidates"][0]["finishReason"], "STOP");
        assert_eq!(chunks[2]["usageMetadata"]["totalTokenCount"], 59);
        assert_eq!(counters(stats, "-"), (2, 100, 18, 0, 6));

        let out = exchange(
            addr,
            &post(
                path,
                &format!("{knobs}x-mock-truncate-after: 2\r\n"),
                body,
                false,
            ),
        )
        .await;
        assert_eq!(out.matches("{\"candidates\"").count(), 2, "{out}");
        wait_unreported(stats, 1).await;
        assert_eq!(stats.totals().0.calls, 2);
    }

    #[tokio::test]
    async fn new_formats_errors_gzip_and_no_usage() {
        let (addr, stats) = start().await;
        let gem = "/v1beta/models/g:generateContent";
        let out = exchange(addr, &post(gem, "x-mock-status: 429\r\n", "{}", true)).await;
        assert!(out.starts_with("HTTP/1.1 429"), "{out}");
        let (_, body) = split(&out);
        assert_eq!(
            serde_json::from_str::<Value>(&body).unwrap(),
            json!({"error":{"code":429,"message":"mock failure","status":"RESOURCE_EXHAUSTED"}})
        );
        let out = exchange(addr, &post(gem, "", r#"{"contents":{}}"#, true)).await;
        assert!(out.starts_with("HTTP/1.1 400"), "{out}");
        assert!(out.contains("\"status\":\"INVALID_ARGUMENT\""));
        let out = exchange(
            addr,
            &post("/v1/responses", "x-mock-bogus: 1\r\n", "{}", true),
        )
        .await;
        assert!(out.starts_with("HTTP/1.1 400"), "{out}");
        assert!(out.contains("invalid_request_error"));
        let out = exchange(
            addr,
            &post("/v1/embeddings", "x-mock-status: 503\r\n", "{}", true),
        )
        .await;
        assert!(out.starts_with("HTTP/1.1 503"), "{out}");
        assert!(out.contains("\"type\":\"server_error\""));
        assert_eq!(stats.totals().1, 4);

        for (path, body) in [
            (gem, r#"{"contents":[]}"#),
            ("/v1/responses", r#"{"input":"x"}"#),
            ("/v1/embeddings", r#"{"input":"x"}"#),
            ("/v1/completions", r#"{"prompt":"x"}"#),
        ] {
            let out = exchange_raw(
                addr,
                &post(
                    path,
                    "x-mock-content-encoding: gzip\r\nx-mock-input-tokens: 7\r\n",
                    body,
                    true,
                ),
            )
            .await;
            let at = out.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
            let head = String::from_utf8_lossy(&out[..at]).to_ascii_lowercase();
            assert!(head.contains("content-encoding: gzip"), "{head}");
            let mut plain = String::new();
            std::io::Read::read_to_string(
                &mut flate2::read::GzDecoder::new(&out[at + 4..]),
                &mut plain,
            )
            .unwrap();
            let v: Value = serde_json::from_str(&plain).unwrap();
            assert!(
                v.get("usage").or(v.get("usageMetadata")).is_some(),
                "{plain}"
            );
        }
        assert_eq!(stats.totals().0.calls, 4);
        assert_eq!(stats.totals().0.usage.input_tokens, 28);

        let out = exchange(
            addr,
            &post(
                "/v1beta/models/g:streamGenerateContent?alt=sse",
                "x-mock-no-usage: 1\r\n",
                r#"{"contents":[]}"#,
                true,
            ),
        )
        .await;
        assert!(!out.contains("usageMetadata"));
        assert_eq!(stats.totals().1, 5);
        assert_eq!(stats.totals().0.calls, 4);
    }
}
