use super::*;
use crate::providers::{assert_split_invariant, Api};

/// Expected usage and model, or why there are none.
type Expected = Result<(Usage, Option<&'static str>), Unmetered>;

const BODY: &[u8] = include_bytes!("../../../../tests/fixtures/gemini/generate_content.json");
const STREAM: &[u8] =
    include_bytes!("../../../../tests/fixtures/gemini/stream_generate_content.sse");
const ARRAY: &[u8] =
    include_bytes!("../../../../tests/fixtures/gemini/stream_generate_content_array.json");

const FIRST_TEXT: &str = "Rayleigh scattering: sunlight hits";
const SECOND_TEXT: &str =
    " nitrogen and oxygen molecules, which scatter short blue wavelengths far more than red ones.";

/// Usage of the SSE fixture after `candidates` output tokens (612 thought tokens each time).
fn stream_usage(candidates: u64) -> Usage {
    Usage {
        input: 14,
        output: candidates + 612,
        reasoning: 612,
        ..Usage::default()
    }
}

/// The SSE fixture up to the end of its `n`th event.
fn events(n: usize) -> &'static [u8] {
    let ends: Vec<usize> = STREAM
        .windows(4)
        .enumerate()
        .filter(|(_, w)| *w == b"\r\n\r\n")
        .map(|(i, _)| i + 4)
        .collect();
    &STREAM[..ends[n - 1]]
}

fn progress_of(stream: &[u8]) -> Progress {
    crate::providers::progress_of(Api::Gemini, stream)
}

#[test]
fn meters_generate_content_body() {
    let metered = usage_from_body(BODY).unwrap();
    assert_eq!(metered.model.as_deref(), Some("gemini-2.5-flash"));
    // Cached tokens come out of the prompt; thoughts are billed as output.
    assert_eq!(
        metered.usage,
        Usage {
            input: 2210 - 2048,
            cache_read: 2048,
            output: 312 + 977,
            reasoning: 977,
            ..Usage::default()
        }
    );
    assert_eq!(Api::Gemini.usage_from_body(BODY), Ok(metered));
}

#[test]
fn meters_stream_array_body_from_last_report() {
    let metered = usage_from_body(ARRAY).unwrap();
    assert_eq!(metered.model.as_deref(), Some("gemini-2.0-flash"));
    // Tool-use prompt tokens are input too; earlier cumulative reports are not added.
    assert_eq!(
        metered.usage,
        Usage {
            input: 1290 - 1024 + 31,
            cache_read: 1024,
            output: 70,
            ..Usage::default()
        }
    );
    assert_eq!(Api::Gemini.usage_from_body(ARRAY), Ok(metered));
}

#[test]
fn body_cases() {
    let cases: [(&[u8], Expected); 17] = [
        (b"", Err(Unmetered::Malformed)),
        (b"   ", Err(Unmetered::Malformed)),
        (&BODY[..BODY.len() / 2], Err(Unmetered::Malformed)),
        (&ARRAY[..ARRAY.len() - 1], Err(Unmetered::Malformed)),
        (b"\xff\xfe", Err(Unmetered::Malformed)),
        (b"[1]", Err(Unmetered::Malformed)),
        (b"[null]", Err(Unmetered::Malformed)),
        (b"{\"usageMetadata\":{\"promptTokenCount\":-3}}", Err(Unmetered::Malformed)),
        (b"{\"usageMetadata\":{\"promptTokenCount\":\"3\"}}", Err(Unmetered::Malformed)),
        (b"[]", Err(Unmetered::NoUsage)),
        (b"{\"candidates\":[]}", Err(Unmetered::NoUsage)),
        (b"{\"usageMetadata\":null}", Err(Unmetered::NoUsage)),
        // Vertex AI's count-less metadata is no report.
        (b"{\"usageMetadata\":{\"trafficType\":\"ON_DEMAND\"},\"modelVersion\":\"gemini-2.0-flash\"}", Err(Unmetered::NoUsage)),
        // A blocked prompt: no candidates, and zero counts left out.
        (
            br#"{"promptFeedback":{"blockReason":"SAFETY"},"usageMetadata":{"promptTokenCount":9,"totalTokenCount":9},"modelVersion":"gemini-2.5-pro"}"#,
            Ok((Usage { input: 9, ..Usage::default() }, Some("gemini-2.5-pro"))),
        ),
        // The last element with a report wins, even when later ones carry none.
        (
            b" \r\n[{\"usageMetadata\":{\"promptTokenCount\":5,\"candidatesTokenCount\":1}},{\"usageMetadata\":{\"promptTokenCount\":5,\"candidatesTokenCount\":4},\"modelVersion\":\"gemini-2.5-flash-lite\"},{\"candidates\":[],\"usageMetadata\":{\"trafficType\":\"ON_DEMAND\"}}]",
            Ok((Usage { input: 5, output: 4, ..Usage::default() }, Some("gemini-2.5-flash-lite"))),
        ),
        // Cached tokens beyond the prompt (a broken server) never underflow.
        (
            br#"{"usageMetadata":{"promptTokenCount":5,"cachedContentTokenCount":9,"toolUsePromptTokenCount":2}}"#,
            Ok((Usage { input: 2, cache_read: 5, ..Usage::default() }, None)),
        ),
        (
            br#"{"usageMetadata":{"candidatesTokenCount":18446744073709551615,"thoughtsTokenCount":7}}"#,
            Ok((Usage { output: u64::MAX, reasoning: 7, ..Usage::default() }, None)),
        ),
    ];
    for (body, want) in cases {
        let got = usage_from_body(body).map(|m| (m.usage, m.model));
        let want = want.map(|(usage, model)| (usage, model.map(str::to_string)));
        assert_eq!(got, want, "{}", String::from_utf8_lossy(body));
    }
}

#[test]
fn meters_sse_stream_at_every_split() {
    // Google ends SSE lines with CRLF.
    assert!(STREAM.windows(4).any(|w| w == b"\r\n\r\n"));
    assert!(STREAM
        .iter()
        .enumerate()
        .all(|(i, b)| *b != b'\n' || i > 0 && STREAM[i - 1] == b'\r'));
    let (metered, fates) = assert_split_invariant(Api::Gemini, STREAM);
    let metered = metered.unwrap();
    assert_eq!(metered.model.as_deref(), Some("gemini-2.5-flash"));
    // The last cumulative report, not the sum of the three.
    assert_eq!(metered.usage, stream_usage(44));
    assert_eq!(fates.len(), 3);
    assert!(fates.iter().all(|f| *f == EventFate::Forward));
}

#[test]
fn stream_variants() {
    let vertex = "data: {\"candidates\": [{\"content\": {\"role\": \"model\",\"parts\": [{\"text\": \"Hello!\"}]}}],\"usageMetadata\": {\"trafficType\": \"ON_DEMAND\"},\"modelVersion\": \"gemini-2.0-flash-001\",\"createTime\": \"2025-08-28T14:54:45.066123Z\",\"responseId\": \"tTCwacuEBMvnitYP06qsgQY\"}\r\n\r\n";
    let vertex_end = "data: {\"candidates\": [{\"content\": {\"role\": \"model\",\"parts\": [{\"text\": \"\"}]},\"finishReason\": \"STOP\"}],\"usageMetadata\": {\"promptTokenCount\": 3,\"candidatesTokenCount\": 9,\"totalTokenCount\": 12,\"trafficType\": \"ON_DEMAND\"},\"modelVersion\": \"gemini-2.0-flash-001\",\"responseId\": \"tTCwacuEBMvnitYP06qsgQY\"}\r\n\r\n";
    let cases: Vec<(&str, String, Expected)> = vec![
        (
            "Vertex AI: count-less metadata until the last chunk",
            format!("{vertex}{vertex_end}"),
            Ok((Usage { input: 3, output: 9, ..Usage::default() }, Some("gemini-2.0-flash-001"))),
        ),
        ("Vertex AI cut before its report", vertex.to_string(), Err(Unmetered::NoUsage)),
        (
            "LF line endings and a tool-use report",
            "data: {\"candidates\":[{\"content\":{\"parts\":[{\"functionCall\":{\"name\":\"f\",\"args\":{}}}]},\"finishReason\":\"STOP\"}],\"usageMetadata\":{\"promptTokenCount\":10,\"toolUsePromptTokenCount\":4,\"candidatesTokenCount\":2},\"modelVersion\":\"gemini-2.5-pro\"}\n\n".to_string(),
            Ok((Usage { input: 14, output: 2, ..Usage::default() }, Some("gemini-2.5-pro"))),
        ),
        (
            "malformed report",
            "data: {\"usageMetadata\": {\"promptTokenCount\": 3,\r\n\r\n".to_string(),
            Err(Unmetered::Malformed),
        ),
        (
            "a good report survives a later malformed one",
            format!("{vertex_end}data: {{\"usageMetadata\": oops}}\r\n\r\n"),
            Ok((Usage { input: 3, output: 9, ..Usage::default() }, Some("gemini-2.0-flash-001"))),
        ),
        (
            "malformed chunks without a report are ignored",
            format!("data: {{not json\r\n\r\n{vertex_end}"),
            Ok((Usage { input: 3, output: 9, ..Usage::default() }, Some("gemini-2.0-flash-001"))),
        ),
        (
            "an error chunk",
            "data: {\"error\": {\"code\": 503, \"message\": \"The model is overloaded.\", \"status\": \"UNAVAILABLE\"}}\r\n\r\n".to_string(),
            Err(Unmetered::NoUsage),
        ),
        ("empty", String::new(), Err(Unmetered::NoUsage)),
        ("garbage", "\u{0}data:\r\r\n[\n\n".to_string(), Err(Unmetered::NoUsage)),
    ];
    for (name, stream, want) in cases {
        let (metered, fates) = assert_split_invariant(Api::Gemini, stream.as_bytes());
        let got = metered.map(|m| (m.usage, m.model));
        let want = want.map(|(usage, model)| (usage, model.map(str::to_string)));
        assert_eq!(got, want, "{name}");
        assert!(fates.iter().all(|f| *f == EventFate::Forward), "{name}");
    }
}

/// A stream cut before its `finishReason` chunk holds only running figures: incomplete
/// (`progress` still offers them as the basis of an estimate).
#[test]
fn truncated_streams_are_incomplete() {
    let cases: [(&[u8], Result<Usage, Unmetered>); 4] = [
        (events(1), Err(Unmetered::Incomplete)),
        (events(2), Err(Unmetered::Incomplete)),
        // Cut inside the third event: its partial data is no report.
        (&STREAM[..STREAM.len() - 40], Err(Unmetered::Incomplete)),
        // Cut inside the first event, before its report.
        (&STREAM[..60], Err(Unmetered::NoUsage)),
    ];
    for (stream, want) in cases {
        let (metered, _) = assert_split_invariant(Api::Gemini, stream);
        assert_eq!(metered.map(|m| m.usage), want, "cut at {}", stream.len());
    }
}

#[test]
fn progress_reports_the_last_counts_and_text() {
    let cases: [(&[u8], Progress); 4] = [
        (&STREAM[..60], Progress::default()),
        (
            events(1),
            Progress {
                reported: stream_usage(7),
                input_reported: true,
                model: Some("gemini-2.5-flash".into()),
                text_bytes: FIRST_TEXT.len() as u64,
            },
        ),
        (
            events(2),
            Progress {
                reported: stream_usage(26),
                input_reported: true,
                model: Some("gemini-2.5-flash".into()),
                text_bytes: (FIRST_TEXT.len() + SECOND_TEXT.len()) as u64,
            },
        ),
        (
            "data: {\"candidates\": [{\"content\": {\"parts\": [{\"text\": \"Hi\"}]}}],\"usageMetadata\": {\"trafficType\": \"ON_DEMAND\"},\"modelVersion\": \"gemini-2.0-flash-001\"}\r\n\r\n".as_bytes(),
            Progress {
                model: Some("gemini-2.0-flash-001".into()),
                text_bytes: 2,
                ..Progress::default()
            },
        ),
    ];
    for (stream, want) in cases {
        assert_eq!(
            progress_of(stream),
            want,
            "{}",
            String::from_utf8_lossy(stream)
        );
    }
    // Chunks without any metadata still name the model, once.
    let bare = b"data: {\"candidates\":[{\"content\":{\"parts\":[{\"text\":\"abc\"}]}}],\"modelVersion\":\"gemini-2.5-pro\"}\n\ndata: {\"candidates\":[{\"content\":{\"parts\":[{\"text\":\"de\"}]}}],\"modelVersion\":\"other\"}\n\n";
    let progress = progress_of(bare);
    assert_eq!(
        (
            progress.model.as_deref(),
            progress.text_bytes,
            progress.input_reported
        ),
        (Some("gemini-2.5-pro"), 5, false)
    );
}

#[test]
fn request_is_left_alone() {
    for body in [
        &br#"{"contents":[{"role":"user","parts":[{"text":"hi"}]}],"generationConfig":{"thinkingConfig":{"thinkingBudget":1024}}}"#[..],
        b"{\"model\":\"gemini-2.5-pro\",\"stream\":true}",
        b"",
        b"\xff",
    ] {
        assert_eq!(prepare_request(body), PreparedRequest::default());
        assert_eq!(Api::Gemini.prepare_request(body), PreparedRequest::default());
    }
}

#[test]
fn error_shape_is_google_rpc_status() {
    let cases = [
        (ErrorKind::BudgetExceeded, 429, "RESOURCE_EXHAUSTED"),
        (ErrorKind::InvalidRequest, 400, "INVALID_ARGUMENT"),
        (ErrorKind::PermissionDenied, 403, "PERMISSION_DENIED"),
    ];
    for (kind, code, status) in cases {
        let body: serde_json::Value =
            serde_json::from_slice(&error_body(kind, "budget \"daily\" used up")).unwrap();
        assert_eq!(
            body,
            serde_json::json!({"error": {"code": code, "message": "budget \"daily\" used up", "status": status}})
        );
        assert_eq!(
            Api::Gemini.error_body(kind, "budget \"daily\" used up"),
            error_body(kind, "budget \"daily\" used up")
        );
    }
}

#[test]
fn oversized_chunk_is_too_large_unless_a_report_came() {
    let event = |data: &str, truncated: bool| crate::sse::SseEvent {
        event: None,
        data: data.as_bytes().to_vec(),
        start: 0,
        end: 0,
        truncated,
    };
    // What the parser keeps of a chunk of inline image data that outgrew its cap.
    let cut = event(
        r#"{"candidates": [{"content": {"parts": [{"inlineData": {"mimeType": "image/png","data": "iVBORw0KGgo"#,
        true,
    );
    let mut meter = StreamMeter::default();
    meter.on_event(&cut);
    assert_eq!(meter.finish(), Err(Unmetered::TooLarge));
    meter.on_event(&event(
        r#"{"candidates": [{"finishReason": "STOP"}],"usageMetadata": {"promptTokenCount": 7,"candidatesTokenCount": 1290,"totalTokenCount": 1297},"modelVersion": "gemini-2.5-flash-image"}"#,
        false,
    ));
    let metered = meter.finish().unwrap();
    assert_eq!(
        (
            metered.usage.input,
            metered.usage.output,
            metered.model.as_deref()
        ),
        (7, 1290, Some("gemini-2.5-flash-image"))
    );
}
