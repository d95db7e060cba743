use super::*;

/// 2026-11-01T00:00:00Z.
const NOV_1: i64 = 1_793_491_200;

#[test]
fn parses_rfc3339_times() {
    let cases = [
        ("2026-11-01T00:00:00Z", Some(NOV_1)),
        ("2026-11-01T00:00:00.123456Z", Some(NOV_1)),
        ("2026-11-01 00:00:07z", Some(NOV_1 + 7)),
        ("2026-11-01T01:30:00+01:00", Some(NOV_1 + 1800)),
        ("2026-10-31T19:00:00-05:00", Some(NOV_1)),
        ("2026-11-01T05:30:00+0530", Some(NOV_1)),
        ("2026-11-01T23:59:60Z", Some(NOV_1 + 86_399)),
        ("1970-01-01T00:00:00Z", Some(0)),
        ("2026-11-01T00:00:00", None), // no zone
        ("2026-11-01", None),
        ("2026-13-01T00:00:00Z", None),
        ("2026-11-01T24:00:00Z", None),
        ("2026-11-01T00:00:00Zjunk", None),
        ("2026-11-01T00:00:00+01:00junk", None),
        ("2026-11-01T00:00:00+19:00", None),
        ("yesterday", None),
        ("", None),
        ("２０２６-11-01T00:00:00Z", None),
    ];
    for (text, want) in cases {
        assert_eq!(parse_rfc3339(text), want, "{text}");
    }
}

#[test]
fn reads_the_contract_fields() {
    let line = br#"{"time":"2026-11-01T00:00:00Z","agent":"research-bot","budget":"research-bot","task":"t-1","user":"u","api":"openai_chat","gen_ai.usage.input_tokens":1200,"gen_ai.usage.output_tokens":300,"cache_read_tokens":200,"cache_write_tokens":100,"reasoning_tokens":0,"cost_micro_usd":4500,"action":"allowed","estimated":false,"ttft_ms":null}"#;
    let call = parse(line).unwrap().unwrap();
    assert_eq!(
        call,
        Call {
            agent: Cow::Borrowed("research-bot"),
            unix_secs: NOV_1,
            task: Some(Cow::Borrowed("t-1")),
            stopped: false,
            input_tokens: 1200,
            output_tokens: 300,
            cache_read_tokens: 200,
            cache_write_tokens: 100,
            cost_micro_usd: 4500,
        }
    );
}

#[test]
fn tolerates_absent_null_float_and_string_counts() {
    let cases: [(&[u8], u64, u64); 5] = [
        // A stopped call: no tokens, no cost.
        (br#"{"time":"2026-11-01T00:00:00Z","agent":"a","task":"-","action":"stopped"}"#, 0, 0),
        (br#"{"time":"2026-11-01T00:00:00Z","agent":"a","gen_ai.usage.input_tokens":null,"cost_micro_usd":null}"#, 0, 0),
        (br#"{"time":"2026-11-01T00:00:00Z","agent":"a","gen_ai.usage.input_tokens":12.0,"cost_micro_usd":7.0}"#, 12, 7),
        (br#"{"time":"2026-11-01T00:00:00Z","agent":"a","gen_ai.usage.input_tokens":"12","cost_micro_usd":"7"}"#, 12, 7),
        (br#"{"time":"2026-11-01T00:00:00Z","agent":"a","gen_ai.usage.input_tokens":"-","cost_micro_usd":"-"}"#, 0, 0),
    ];
    for (line, input, cost) in cases {
        let call = parse(line).unwrap().unwrap();
        assert_eq!(
            (call.input_tokens, call.cost_micro_usd),
            (input, cost),
            "{}",
            String::from_utf8_lossy(line)
        );
    }
}

#[test]
fn a_call_without_a_task_has_none() {
    for line in [
        &br#"{"time":"2026-11-01T00:00:00Z","agent":"a","task":"-"}"#[..],
        br#"{"time":"2026-11-01T00:00:00Z","agent":"a","task":""}"#,
        br#"{"time":"2026-11-01T00:00:00Z","agent":"a"}"#,
        br#"{"time":"2026-11-01T00:00:00Z","agent":"a","task":null}"#,
    ] {
        assert_eq!(parse(line).unwrap().unwrap().task, None);
    }
    let escaped = br#"{"time":"2026-11-01T00:00:00Z","agent":"a\u0062","task":"t\"1"}"#;
    let call = parse(escaped).unwrap().unwrap();
    assert_eq!(
        (call.agent.as_ref(), call.task.as_deref()),
        ("ab", Some("t\"1"))
    );
    let stopped = br#"{"time":"2026-11-01T00:00:00Z","agent":"a","action":"stopped"}"#;
    assert!(parse(stopped).unwrap().unwrap().stopped);
}

#[test]
fn classifies_skipped_lines() {
    let cases: [(&[u8], Result<bool, Skip>); 13] = [
        (b"", Ok(false)),
        (b"   \t", Ok(false)),
        (b"127.0.0.1 - - GET / 200", Err(Skip::NotJsonObject)),
        (b"[1,2]", Err(Skip::NotJsonObject)),
        (b"\"agent\"", Err(Skip::NotJsonObject)),
        (
            br#"{"agent":"a","time":"2026-11-01T00:00:00Z""#,
            Err(Skip::NotJsonObject),
        ),
        (br#"{"path":"/"}"#, Err(Skip::NoAgent)),
        (
            br#"{"agent":null,"time":"2026-11-01T00:00:00Z"}"#,
            Err(Skip::NoAgent),
        ),
        (
            br#"{"agent":7,"time":"2026-11-01T00:00:00Z"}"#,
            Err(Skip::NoAgent),
        ),
        (
            br#"{"agent":"","time":"2026-11-01T00:00:00Z"}"#,
            Err(Skip::NoAgent),
        ),
        (br#"{"agent":"a"}"#, Err(Skip::BadField)),
        (
            br#"{"agent":"a","time":"2026-11-01T00:00:00Z","cost_micro_usd":-5}"#,
            Err(Skip::BadField),
        ),
        (
            br#"{"agent":"a","time":"2026-11-01T00:00:00Z","cost_micro_usd":1.5}"#,
            Err(Skip::BadField),
        ),
    ];
    for (line, want) in cases {
        let got = parse(line).map(|call| call.is_some());
        assert_eq!(got, want, "{}", String::from_utf8_lossy(line));
    }
}
