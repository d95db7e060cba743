//! Table-driven tests: each fixture must parse identically however it is chunked.

use super::*;

const BIG: usize = 1 << 20;

/// Expected `(event, data, truncated)` of each reported block, in order.
type Expected = &'static [(Option<&'static str>, &'static [u8], bool)];

struct Fixture {
    name: &'static str,
    bytes: &'static [u8],
    expected: Expected,
}

const OPENAI: &[u8] = b"data: {\"id\":\"chatcmpl-123\",\"object\":\"chat.completion.chunk\",\"created\":1694268190,\"model\":\"gpt-4o-mini\",\"system_fingerprint\":\"fp_44709d6fcb\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"},\"logprobs\":null,\"finish_reason\":null}]}\n\
\n\
data: {\"id\":\"chatcmpl-123\",\"object\":\"chat.completion.chunk\",\"created\":1694268190,\"model\":\"gpt-4o-mini\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hello\"},\"logprobs\":null,\"finish_reason\":\"stop\"}]}\n\
\n\
data: {\"id\":\"chatcmpl-123\",\"object\":\"chat.completion.chunk\",\"created\":1694268190,\"model\":\"gpt-4o-mini\",\"choices\":[],\"usage\":{\"prompt_tokens\":9,\"completion_tokens\":12,\"total_tokens\":21}}\n\
\n\
data: [DONE]\n\
\n";

const ANTHROPIC: &[u8] = b"event: message_start\n\
data: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_1nZdL29xx5MUA1yADyHTEsnR8uuvGzszyY\",\"type\":\"message\",\"role\":\"assistant\",\"content\":[],\"model\":\"claude-3-5-sonnet-20241022\",\"stop_reason\":null,\"stop_sequence\":null,\"usage\":{\"input_tokens\":25,\"output_tokens\":1}}}\n\
\n\
event: content_block_start\n\
data: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\
\n\
event: ping\n\
data: {\"type\": \"ping\"}\n\
\n\
event: content_block_delta\n\
data: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"Hello\"}}\n\
\n\
event: content_block_stop\n\
data: {\"type\":\"content_block_stop\",\"index\":0}\n\
\n\
event: message_delta\n\
data: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\",\"stop_sequence\":null},\"usage\":{\"output_tokens\":15}}\n\
\n\
event: message_stop\n\
data: {\"type\":\"message_stop\"}\n\
\n";

const GEMINI: &[u8] = b"data: {\"candidates\": [{\"content\": {\"parts\": [{\"text\": \"Hi\"}],\"role\": \"model\"},\"index\": 0}],\"usageMetadata\": {\"promptTokenCount\": 4,\"candidatesTokenCount\": 1,\"totalTokenCount\": 5},\"modelVersion\": \"gemini-1.5-flash\"}\r\n\
\r\n\
data: {\"candidates\": [{\"content\": {\"parts\": [{\"text\": \" there\"}],\"role\": \"model\"},\"finishReason\": \"STOP\",\"index\": 0}],\"usageMetadata\": {\"promptTokenCount\": 4,\"candidatesTokenCount\": 2,\"totalTokenCount\": 6},\"modelVersion\": \"gemini-1.5-flash\"}\r\n\
\r\n";

fn fixtures() -> Vec<Fixture> {
    vec![
        Fixture {
            name: "openai",
            bytes: OPENAI,
            expected: &[
                (None, br#"{"id":"chatcmpl-123","object":"chat.completion.chunk","created":1694268190,"model":"gpt-4o-mini","system_fingerprint":"fp_44709d6fcb","choices":[{"index":0,"delta":{"role":"assistant","content":""},"logprobs":null,"finish_reason":null}]}"#, false),
                (None, br#"{"id":"chatcmpl-123","object":"chat.completion.chunk","created":1694268190,"model":"gpt-4o-mini","choices":[{"index":0,"delta":{"content":"Hello"},"logprobs":null,"finish_reason":"stop"}]}"#, false),
                (None, br#"{"id":"chatcmpl-123","object":"chat.completion.chunk","created":1694268190,"model":"gpt-4o-mini","choices":[],"usage":{"prompt_tokens":9,"completion_tokens":12,"total_tokens":21}}"#, false),
                (None, b"[DONE]", false),
            ],
        },
        Fixture {
            name: "anthropic",
            bytes: ANTHROPIC,
            expected: &[
                (Some("message_start"), br#"{"type":"message_start","message":{"id":"msg_1nZdL29xx5MUA1yADyHTEsnR8uuvGzszyY","type":"message","role":"assistant","content":[],"model":"claude-3-5-sonnet-20241022","stop_reason":null,"stop_sequence":null,"usage":{"input_tokens":25,"output_tokens":1}}}"#, false),
                (Some("content_block_start"), br#"{"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}"#, false),
                (Some("ping"), br#"{"type": "ping"}"#, false),
                (Some("content_block_delta"), br#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Hello"}}"#, false),
                (Some("content_block_stop"), br#"{"type":"content_block_stop","index":0}"#, false),
                (Some("message_delta"), br#"{"type":"message_delta","delta":{"stop_reason":"end_turn","stop_sequence":null},"usage":{"output_tokens":15}}"#, false),
                (Some("message_stop"), br#"{"type":"message_stop"}"#, false),
            ],
        },
        Fixture {
            name: "gemini_crlf",
            bytes: GEMINI,
            expected: &[
                (None, br#"{"candidates": [{"content": {"parts": [{"text": "Hi"}],"role": "model"},"index": 0}],"usageMetadata": {"promptTokenCount": 4,"candidatesTokenCount": 1,"totalTokenCount": 5},"modelVersion": "gemini-1.5-flash"}"#, false),
                (None, br#"{"candidates": [{"content": {"parts": [{"text": " there"}],"role": "model"},"finishReason": "STOP","index": 0}],"usageMetadata": {"promptTokenCount": 4,"candidatesTokenCount": 2,"totalTokenCount": 6},"modelVersion": "gemini-1.5-flash"}"#, false),
            ],
        },
        Fixture {
            name: "comments_pings_and_stray_blank_lines",
            bytes: b": ping\n\n: keep-alive\ndata: a\n: inside\n\n\n:\n\n",
            expected: &[(None, b"", false), (None, b"a", false), (None, b"", false), (None, b"", false)],
        },
        Fixture {
            name: "multi_line_data_and_spaces",
            bytes: b"data: first\ndata:second\ndata\ndata:  two spaces\ndata: \n\n",
            expected: &[(None, b"first\nsecond\n\n two spaces\n", false)],
        },
        Fixture {
            name: "ignored_fields_and_last_event_wins",
            bytes: b"id: 7\nretry: 100\nfoo: bar\nevent\ndata: x\n\nevent: a\ndata:y\nevent:b\nid\n\nverylongfieldname: z\ndatax: no\n\n",
            expected: &[(Some(""), b"x", false), (Some("b"), b"y", false), (None, b"", false)],
        },
        Fixture {
            name: "lone_cr_and_mixed_endings",
            bytes: b"event: e\rdata: a\r\rdata: b\n\r\n\rdata: c\r\n\ndata: d\r\r",
            expected: &[
                (Some("e"), b"a", false),
                (None, b"b", false),
                (None, b"", false),
                (None, b"c", false),
                (None, b"d", false),
            ],
        },
        Fixture {
            name: "cr_lf_pairs_only",
            bytes: b"data: 1\r\n\r\ndata: 2\r\n\r\n\r\n",
            expected: &[(None, b"1", false), (None, b"2", false), (None, b"", false)],
        },
        Fixture {
            name: "bom_skipped_once",
            bytes: b"\xEF\xBB\xBFdata: bom\n\n\xEF\xBB\xBFdata: kept\n\n",
            expected: &[(None, b"bom", false), (None, b"", false)],
        },
        Fixture {
            name: "partial_bom_is_content",
            bytes: b"\xEF\xBBdata: x\n\ndata: y\n\n",
            expected: &[(None, b"", false), (None, b"y", false)],
        },
        Fixture {
            name: "bom_then_lone_cr",
            bytes: b"\xEF\xBB\xBF\rdata: z\r\r",
            expected: &[(None, b"", false), (None, b"z", false)],
        },
        Fixture {
            name: "missing_final_blank_line",
            bytes: b"event: x\ndata: 1\n\ndata: {\"done\":true}\n",
            expected: &[(Some("x"), b"1", false), (None, b"{\"done\":true}", false)],
        },
        Fixture {
            name: "missing_final_newline",
            bytes: b"data: 1\n\nevent: last\ndata: tail",
            expected: &[(None, b"1", false), (Some("last"), b"tail", false)],
        },
        Fixture {
            name: "unterminated_field_name_only",
            bytes: b"data: 1\n\ndata",
            expected: &[(None, b"1", false), (None, b"", false)],
        },
        Fixture {
            name: "non_utf8",
            bytes: b"event: \xFF\xFEbad\ndata: \xC3\x28\x80\n\n",
            expected: &[(Some("\u{FFFD}\u{FFFD}bad"), b"\xC3\x28\x80", false)],
        },
        Fixture {
            name: "empty_stream",
            bytes: b"",
            expected: &[],
        },
    ]
}

/// Feeds `chunks` in order, then `finish`, collecting everything reported.
fn run<'a>(cap: usize, chunks: impl IntoIterator<Item = &'a [u8]>) -> Vec<SseEvent> {
    let mut parser = SseParser::new(cap);
    let mut out = Vec::new();
    let mut fed = 0u64;
    for chunk in chunks {
        parser.feed(chunk, &mut out);
        fed += chunk.len() as u64;
        assert_eq!(parser.offset(), fed);
    }
    out.extend(parser.finish());
    out
}

fn assert_tiles(name: &str, bytes: &[u8], events: &[SseEvent]) {
    let mut pos = 0;
    for ev in events {
        assert_eq!(ev.start, pos, "{name}: gap or overlap before {ev:?}");
        assert!(ev.end > ev.start, "{name}: empty block {ev:?}");
        pos = ev.end;
    }
    // Every fixture ends on a block boundary (or with a block closed by `finish`).
    assert_eq!(
        pos,
        bytes.len() as u64,
        "{name}: blocks do not cover the stream"
    );
}

#[test]
fn fixtures_parse_to_expected_events() {
    for f in fixtures() {
        let events = run(BIG, [f.bytes]);
        let got: Vec<_> = events
            .iter()
            .map(|e| (e.event.as_deref(), e.data.as_slice(), e.truncated))
            .collect();
        assert_eq!(got, f.expected, "fixture {}", f.name);
        assert_tiles(f.name, f.bytes, &events);
    }
}

#[test]
fn chunking_never_changes_the_events() {
    // A small cap too, so truncation must also be chunking-independent.
    for cap in [BIG, 5, 0] {
        for f in fixtures() {
            let whole = run(cap, [f.bytes]);
            for cut in 0..=f.bytes.len() {
                let (a, b) = f.bytes.split_at(cut);
                assert_eq!(
                    run(cap, [a, b]),
                    whole,
                    "fixture {} cap {cap} cut at {cut}",
                    f.name
                );
            }
            let bytewise = run(cap, f.bytes.chunks(1));
            assert_eq!(bytewise, whole, "fixture {} cap {cap} byte by byte", f.name);
            // Empty chunks in between must be harmless too (e.g. around a pending CR).
            let with_empties = run(cap, f.bytes.chunks(1).flat_map(|c| [c, &[][..]]));
            assert_eq!(
                with_empties, whole,
                "fixture {} cap {cap} with empty chunks",
                f.name
            );
        }
    }
}

#[test]
fn cr_at_chunk_end_defers_blank_line_until_next_byte() {
    let mut p = SseParser::new(BIG);
    let mut out = Vec::new();
    p.feed(b"data: a\r\r", &mut out);
    assert!(out.is_empty(), "held until we know whether an LF follows");
    p.feed(b"\ndata: b\n\n", &mut out);
    assert_eq!(out.len(), 2);
    assert_eq!((out[0].start, out[0].end), (0, 10));
    assert_eq!((out[1].start, out[1].end), (10, 19));
    assert_eq!(out[1].data, b"b");
}

#[test]
fn cap_truncates_data_and_event_name() {
    /// (input, cap, expected event, expected data, expected truncated)
    type Case = (
        &'static [u8],
        usize,
        Option<&'static str>,
        &'static [u8],
        bool,
    );
    let cases: &[Case] = &[
        (b"data: abcdef\n\n", 4, None, b"abcd", true),
        (b"data: abcd\n\n", 4, None, b"abcd", false),
        // The joining newline counts against the cap.
        (b"data: ab\ndata: cd\n\n", 4, None, b"ab\nc", true),
        (b"data: ab\ndata: c\n\n", 4, None, b"ab\nc", false),
        (b"event: toolong\ndata: a\n\n", 4, Some("tool"), b"a", true),
        // A long comment or ignored field is not data: nothing was cut.
        (
            b": a long comment\nid: 123456789\ndata: a\n\n",
            4,
            None,
            b"a",
            false,
        ),
    ];
    for &(input, cap, event, data, truncated) in cases {
        let events = run(cap, [input]);
        assert_eq!(events.len(), 1, "{:?}", String::from_utf8_lossy(input));
        assert_eq!(events[0].event.as_deref(), event);
        assert_eq!(events[0].data, data);
        assert_eq!(
            events[0].truncated,
            truncated,
            "{:?}",
            String::from_utf8_lossy(input)
        );
    }
    // Truncation is per event: the next one starts clean.
    let events = run(4, [&b"data: abcdef\n\ndata: ok\n\n"[..]]);
    assert_eq!(events.len(), 2);
    assert!(events[0].truncated);
    assert!(!events[1].truncated);
    assert_eq!(events[1].data, b"ok");
}

/// Bytes held by the parser right now (allocations, not just lengths).
fn held(p: &SseParser) -> usize {
    p.data.capacity() + p.event.capacity()
}

#[test]
fn ten_megabyte_line_keeps_memory_bounded() {
    const CAP: usize = 1024;
    let filler = vec![b'x'; 64 * 1024];
    let total = 10 * 1024 * 1024;
    for prefix in [
        &b"data: "[..],
        b"event: ",
        b": ",
        b"id: ",
        b"unknownfieldnamexxxxx",
    ] {
        let mut p = SseParser::new(CAP);
        let mut out = Vec::new();
        p.feed(prefix, &mut out);
        let mut fed = 0;
        while fed < total {
            p.feed(&filler, &mut out);
            fed += filler.len();
            assert!(held(&p) <= CAP, "held {} bytes", held(&p));
        }
        p.feed(b"\n\n", &mut out);
        assert_eq!(out.len(), 1);
        let ev = &out[0];
        assert_eq!(ev.end, (prefix.len() + total + 2) as u64);
        match prefix {
            b"data: " => {
                assert!(ev.truncated);
                assert_eq!(ev.data.len(), CAP);
            }
            b"event: " => {
                assert!(ev.truncated);
                assert_eq!(ev.event.as_ref().map(String::len), Some(CAP));
            }
            _ => assert!(!ev.truncated && ev.data.is_empty() && ev.event.is_none()),
        }
    }
}

#[test]
fn ten_megabyte_unterminated_line_is_returned_by_finish() {
    const CAP: usize = 1024;
    let mut p = SseParser::new(CAP);
    let mut out = Vec::new();
    p.feed(b"data: ", &mut out);
    let filler = vec![b'y'; 1 << 20];
    for _ in 0..10 {
        p.feed(&filler, &mut out);
        assert!(held(&p) <= CAP);
    }
    assert!(out.is_empty());
    let ev = p.finish().unwrap();
    assert!(ev.truncated);
    assert_eq!(ev.data.len(), CAP);
    assert_eq!((ev.start, ev.end), (0, 6 + 10 * (1 << 20)));
}

#[test]
fn finish_without_fields_returns_none() {
    for input in [
        &b""[..],
        b": comment only",
        b"data: 1\n\n",
        b"data: 1\n\n: trailing comment\n",
    ] {
        let mut p = SseParser::new(BIG);
        let mut out = Vec::new();
        p.feed(input, &mut out);
        assert_eq!(p.finish(), None, "{:?}", String::from_utf8_lossy(input));
    }
}

#[test]
fn partial_bom_at_end_of_stream_is_a_field_name() {
    // The two bytes are not a BOM, so they form an (unknown) field: `finish` reports the block.
    let mut p = SseParser::new(BIG);
    let mut out = Vec::new();
    p.feed(b"\xEF\xBB", &mut out);
    let ev = p.finish().unwrap();
    assert_eq!((ev.start, ev.end, ev.data.len()), (0, 2, 0));
}

// ---- property tests: random streams, random chunk splits -----------------------------------

#[cfg(not(target_arch = "wasm32"))]
pub(crate) mod properties {
    use super::*;
    use proptest::collection::vec;
    use proptest::prelude::*;

    /// Bytes drawn mostly from SSE syntax, so random streams hold fields, comments, blank
    /// lines, lone CRs and BOMs, with arbitrary bytes between.
    fn stream() -> impl Strategy<Value = Vec<u8>> {
        let piece = prop_oneof![
            Just(b"data:".to_vec()),
            Just(b"data: ".to_vec()),
            Just(b"event: ".to_vec()),
            Just(b":".to_vec()),
            Just(b"\n".to_vec()),
            Just(b"\r".to_vec()),
            Just(b"\r\n".to_vec()),
            Just(BOM.to_vec()),
            vec(any::<u8>(), 0..6),
        ];
        vec(piece, 0..40).prop_map(|pieces| pieces.concat())
    }

    /// `bytes` cut into chunks of the given sizes, cycled.
    pub(crate) fn cut<'a>(bytes: &'a [u8], sizes: &[usize]) -> Vec<&'a [u8]> {
        let mut out = Vec::new();
        let mut rest = bytes;
        for size in sizes.iter().cycle() {
            if rest.is_empty() {
                break;
            }
            let (head, tail) = rest.split_at((*size).clamp(1, rest.len()));
            out.push(head);
            rest = tail;
        }
        out
    }

    fn parse(pieces: &[&[u8]], max: usize) -> Vec<SseEvent> {
        let mut parser = SseParser::new(max);
        let mut out = Vec::new();
        for piece in pieces {
            parser.feed(piece, &mut out);
        }
        out.extend(parser.finish());
        out
    }

    proptest! {
        #[test]
        fn any_split_gives_the_same_tiled_events(
            bytes in stream(),
            sizes in vec(1usize..24, 1..8),
            max in prop_oneof![Just(BIG), 0usize..16],
        ) {
            let whole = parse(&[&bytes], max);
            prop_assert_eq!(&parse(&cut(&bytes, &sizes), max), &whole);
            let mut at = 0;
            for event in &whole {
                prop_assert_eq!(event.start, at);
                prop_assert!(event.end >= event.start && event.end <= bytes.len() as u64);
                prop_assert!(event.data.len() <= max);
                prop_assert!(!event.data.contains(&b'\r'));
                at = event.end;
            }
        }
    }
}
