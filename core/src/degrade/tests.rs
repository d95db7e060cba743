use super::*;
use serde_json::json;

/// Configured `(pattern, target)` pairs, in test tables.
type Pairs<'a> = &'a [(&'a str, &'a str)];
/// `(from, to, new_path)` from `rewrite_path`, borrowed.
type PathRewrite<'a> = Option<(&'a str, &'a str, &'a str)>;

fn map(pairs: Pairs) -> ModelMap {
    ModelMap::new(
        pairs
            .iter()
            .map(|(p, t)| ((*p).to_string(), (*t).to_string()))
            .collect(),
    )
    .unwrap()
}

/// A realistic configuration: exact and wildcard families, a catch-all, and an exact
/// pattern after the catch-all.
fn sample_map() -> ModelMap {
    map(&[
        ("claude-sonnet-4-5", "claude-haiku-4-5"),
        ("claude-sonnet-*", "claude-3-5-haiku"),
        ("gpt-4o*", "gpt-4o-mini"),
        ("GPT-4.1", "gpt-4.1-mini"),
        ("text-embedding-3-large", "text-embedding-3-small"),
        ("gemini-2.5-pro", "gemini-2.5-flash"),
        ("*-preview-*", "gpt-5-mini"),
        ("o3", "o4-mini"),
        ("*", "gpt-4o-mini"),
        ("claude-opus-4-1", "claude-sonnet-4-5"),
    ])
}

/// Reference glob matcher (dynamic programming over all prefixes) to check the fast one.
fn reference_glob(pattern: &[u8], name: &[u8]) -> bool {
    let mut row = vec![false; name.len() + 1];
    row[0] = true;
    for &p in pattern {
        let mut next = vec![false; name.len() + 1];
        if p == b'*' {
            let mut any = false;
            for i in 0..=name.len() {
                any |= row[i];
                next[i] = any;
            }
        } else {
            for i in 1..=name.len() {
                next[i] = row[i - 1] && name[i - 1] == p;
            }
        }
        row = next;
    }
    row[name.len()]
}

fn glob(pattern: &str, name: &str) -> bool {
    match Pattern::parse(pattern) {
        Pattern::Exact(exact) => exact == name.to_ascii_lowercase(),
        wildcard => wildcard.wildcard_matches(&name.to_ascii_lowercase()),
    }
}

#[test]
fn glob_matches_star_only_patterns() {
    let cases = [
        ("*", "", true),
        ("*", "gpt-4o", true),
        ("**", "", true),
        ("a*", "a", true),
        ("a*", "ba", false),
        ("*a", "ba", true),
        ("*a", "ab", false),
        ("a*a", "a", false),
        ("a*a", "aa", true),
        ("a*a", "aba", true),
        ("a**b", "ab", true),
        ("a*b*c", "abc", true),
        ("a*b*c", "acb", false),
        ("*b*", "abc", true),
        ("*b*", "ac", false),
        ("a*bc*bc", "abcbc", true),
        ("a*bc*bc", "abc", false),
        ("*x*x*x*", "xx", false),
        ("*x*x*x*", "axbxcx", true),
        ("claude-*-4-*", "claude-sonnet-4-5", true),
        ("claude-*-4-*", "claude-sonnet-4", false),
        ("gpt-4o*", "gpt-4o", true),
        ("gpt-4o*", "gpt-4o-mini", true),
        ("gpt-4o*", "gpt-4", false),
        ("GPT-4O*", "gpt-4o-mini", true),
        ("gpt-4o*", "GPT-4O-MINI", true),
        ("é*", "été", true),
        ("*é", "été", true),
        ("*ét*", "été", true),
        ("gpt-4o", "gpt-4o", true),
        ("gpt-4o", "gpt-4o-mini", false),
    ];
    for (pattern, name, want) in cases {
        assert_eq!(glob(pattern, name), want, "{pattern} on {name}");
    }
}

#[test]
fn glob_agrees_with_reference_on_every_small_case() {
    // Every pattern over {a, b, *} up to 5 symbols against every name over {a, b} up to 6.
    fn words(alphabet: &[u8], max: usize) -> Vec<Vec<u8>> {
        let mut all = vec![Vec::new()];
        let mut frontier = vec![Vec::new()];
        for _ in 0..max {
            let mut next = Vec::new();
            for word in &frontier {
                for &c in alphabet {
                    let mut longer = word.clone();
                    longer.push(c);
                    next.push(longer);
                }
            }
            all.extend(next.iter().cloned());
            frontier = next;
        }
        all
    }
    let names = words(b"ab", 6);
    let mut checked = 0;
    for pattern in words(b"ab*", 5) {
        if !pattern.contains(&b'*') {
            continue;
        }
        let parsed = Pattern::parse(std::str::from_utf8(&pattern).unwrap());
        for name in &names {
            let name_str = std::str::from_utf8(name).unwrap();
            assert_eq!(
                parsed.wildcard_matches(name_str),
                reference_glob(&pattern, name),
                "{} on {name_str}",
                String::from_utf8_lossy(&pattern)
            );
            checked += 1;
        }
    }
    assert!(checked > 10_000);
}

#[test]
fn glob_is_fast_on_adversarial_input() {
    // A backtracking matcher takes exponential / quadratic time here; this one is linear.
    let name = "a".repeat(200_000);
    let pattern = format!("{}b", "*a".repeat(64));
    assert!(!glob(&pattern, &name));
    let pattern = format!("*{}b*", "a".repeat(1000));
    assert!(!glob(&pattern, &name));
    let pattern = format!("*{}*", "a".repeat(1000));
    assert!(glob(&pattern, &name));
}

#[test]
fn map_rejects_bad_configuration() {
    let cases: [(Pairs, &str); 10] = [
        (&[], "at least one"),
        (
            &[("", "gpt-4o-mini")],
            "mapping 1: the model pattern is empty",
        ),
        (
            &[("gpt-4o", "")],
            "mapping 1: model pattern \"gpt-4o\" has an empty target",
        ),
        (&[("gpt 4o", "gpt-4o-mini")], "whitespace"),
        (&[("gpt-4o\n", "gpt-4o-mini")], "whitespace"),
        (&[("gpt-4o", " gpt-4o-mini")], "whitespace"),
        (&[("gpt-4o", "gpt-4o-*")], "without `*`"),
        (
            &[("gpt-4o*", "a"), ("o3", "b"), ("GPT-4O**", "c")],
            "mapping 3: model pattern \"GPT-4O**\" is already mapping 1",
        ),
        (
            &[("*", "gpt-4o-mini"), ("claude-*", "claude-haiku-4-5")],
            "after the catch-all",
        ),
        (&[("**", "a"), ("*-mini", "b")], "mapping 2"),
    ];
    for (pairs, want) in cases {
        let pairs: Vec<(String, String)> = pairs
            .iter()
            .map(|(p, t)| ((*p).to_string(), (*t).to_string()))
            .collect();
        let error = ModelMap::new(pairs.clone()).unwrap_err();
        assert!(error.contains(want), "{pairs:?}: {error}");
    }
    // Accepted: exact patterns after the catch-all, many stars, a target with `/` or `:`.
    map(&[
        ("*a*b*c*d*", "x"),
        ("anthropic/claude-*", "anthropic/claude-haiku-4-5"),
        (
            "anthropic.claude-3-opus*",
            "anthropic.claude-3-haiku-20240307-v1:0",
        ),
        ("*", "gpt-4o-mini"),
        ("gpt-4o", "gpt-4.1-nano"),
    ]);
}

#[test]
fn targets_follow_precedence_case_and_normalization() {
    let sample = sample_map();
    let cases = [
        // Exact as sent, exact through normalization, case-insensitive.
        ("claude-sonnet-4-5", Some("claude-haiku-4-5")),
        ("claude-sonnet-4-5-20250929", Some("claude-haiku-4-5")),
        ("CLAUDE-Sonnet-4-5", Some("claude-haiku-4-5")),
        ("anthropic/claude-sonnet-4-5", Some("claude-haiku-4-5")),
        ("claude-sonnet-4-5-latest", Some("claude-haiku-4-5")),
        // The wildcard family takes the rest.
        ("claude-sonnet-4-20250514", Some("claude-3-5-haiku")),
        ("claude-sonnet-4", Some("claude-3-5-haiku")),
        ("claude-sonnet-4-0", Some("claude-3-5-haiku")),
        // `gpt-4o*`: dated, prefixed; the cheap model itself maps to nothing.
        ("gpt-4o", Some("gpt-4o-mini")),
        ("gpt-4o-2024-08-06", Some("gpt-4o-mini")),
        ("GPT-4o", Some("gpt-4o-mini")),
        ("openai/gpt-4o", Some("gpt-4o-mini")),
        ("gpt-4o-mini", None),
        ("GPT-4o-Mini", None),
        ("gpt-4o-mini-2024-07-18", None),
        ("openai/gpt-4o-mini", None),
        // A configured pattern's case does not matter; targets are sent as configured.
        ("gpt-4.1", Some("gpt-4.1-mini")),
        ("gpt-4.1-2025-04-14", Some("gpt-4.1-mini")),
        ("gpt-4.1-mini", Some("gpt-4o-mini")),
        ("text-embedding-3-large", Some("text-embedding-3-small")),
        ("models/gemini-2.5-pro", Some("gemini-2.5-flash")),
        ("gemini-2.5-flash-preview-05-20", Some("gpt-5-mini")),
        ("o3", Some("o4-mini")),
        ("o3-2025-04-16", Some("o4-mini")),
        ("o3-mini", Some("gpt-4o-mini")),
        // Exact after the catch-all still wins.
        ("claude-opus-4-1-20250805", Some("claude-sonnet-4-5")),
        ("claude-opus-4", Some("gpt-4o-mini")),
        ("my-local-llama", Some("gpt-4o-mini")),
        // Nothing to degrade.
        ("", None),
        ("   ", None),
    ];
    for (model, want) in cases {
        assert_eq!(sample.target(model), want, "{model:?}");
    }
}

#[test]
fn exact_wins_over_earlier_wildcards_and_first_match_decides() {
    let cases: [(Pairs, &str, Option<&str>); 9] = [
        // Exact beats a wildcard listed before it, also through normalization.
        (
            &[("gpt-4o*", "gpt-4o-mini"), ("gpt-4o", "gpt-4.1-nano")],
            "gpt-4o",
            Some("gpt-4.1-nano"),
        ),
        (
            &[("gpt-4o*", "gpt-4o-mini"), ("gpt-4o", "gpt-4.1-nano")],
            "gpt-4o-2024-08-06",
            Some("gpt-4.1-nano"),
        ),
        // An exact match of the name as sent beats one of its normalized form.
        (
            &[("gpt-4o", "x"), ("gpt-4o-2024-08-06", "y")],
            "gpt-4o-2024-08-06",
            Some("y"),
        ),
        (
            &[("gpt-4o", "x"), ("gpt-4o-2024-08-06", "y")],
            "gpt-4o-2024-11-20",
            Some("x"),
        ),
        // Wildcards: first in configuration order.
        (
            &[("claude-*", "a"), ("claude-sonnet-*", "b")],
            "claude-sonnet-4",
            Some("a"),
        ),
        (
            &[("claude-sonnet-*", "b"), ("claude-*", "a")],
            "claude-sonnet-4",
            Some("b"),
        ),
        // The first matching rule maps the model to itself: no later rule is tried.
        (
            &[("gpt-4o*", "gpt-4o-mini"), ("*", "claude-haiku-4-5")],
            "gpt-4o-mini",
            None,
        ),
        (
            &[("gpt-4o-mini", "gpt-4o-mini"), ("gpt-4o*", "x")],
            "gpt-4o-mini",
            None,
        ),
        // No matching rule.
        (&[("gpt-4o*", "gpt-4o-mini")], "claude-sonnet-4-5", None),
    ];
    for (pairs, model, want) in cases {
        assert_eq!(map(pairs).target(model), want, "{pairs:?} {model}");
    }
}

/// Checks a rewrite against the original body: the new body is the original JSON with
/// `model` (every top-level occurrence) set to `to`, same keys in the same order, and what
/// the API's own request parser reads as the model is `to`.
fn assert_rewritten_faithfully(api: Api, original: &[u8], rewritten: &[u8], to: &str) {
    let mut before: Value = serde_json::from_slice(original).unwrap();
    let after: Value = serde_json::from_slice(rewritten).unwrap();
    before["model"] = Value::String(to.to_string());
    assert_eq!(after, before);
    let keys = |v: &Value| v.as_object().unwrap().keys().cloned().collect::<Vec<_>>();
    assert_eq!(keys(&after), keys(&before));
    // The API's typed request parser, where it reads the original, reads the target.
    if api.prepare_request(original).model.is_some() {
        assert_eq!(api.prepare_request(rewritten).model.as_deref(), Some(to));
    }
}

#[test]
fn rewrites_the_body_model_of_every_body_api() {
    let sample = sample_map();
    // (api, body, from, to, the exact bytes expected)
    let cases: [(Api, &str, &str, &str, &str); 11] = [
        (
            Api::OpenAiChat,
            r#"{"model":"gpt-4o","messages":[{"role":"user","content":"hi"}],"stream":true,"metadata":{"model":"gpt-4o"},"temperature":0.7}"#,
            "gpt-4o",
            "gpt-4o-mini",
            r#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}],"stream":true,"metadata":{"model":"gpt-4o"},"temperature":0.7}"#,
        ),
        (
            // `model` last, after nested objects and strings that say "model".
            Api::OpenAiChat,
            r#"{"messages":[{"role":"user","content":"\"model\":\"gpt-4o\" {[\\"}],"tools":[{"type":"function","function":{"name":"model","parameters":{"model":{"type":"string"}}}}],"model":"openai/gpt-4o-2024-08-06"}"#,
            "openai/gpt-4o-2024-08-06",
            "gpt-4o-mini",
            r#"{"messages":[{"role":"user","content":"\"model\":\"gpt-4o\" {[\\"}],"tools":[{"type":"function","function":{"name":"model","parameters":{"model":{"type":"string"}}}}],"model":"gpt-4o-mini"}"#,
        ),
        (
            Api::OpenAiCompletions,
            r#"{"prompt": "Say \"model\"", "model": "o3", "max_tokens": 16, "logit_bias": {"50256": -100}}"#,
            "o3",
            "o4-mini",
            r#"{"prompt": "Say \"model\"", "model": "o4-mini", "max_tokens": 16, "logit_bias": {"50256": -100}}"#,
        ),
        (
            Api::OpenAiResponses,
            "{\n  \"model\" :\t\"gpt-4.1\",\n  \"input\": [{\"role\": \"user\", \"content\": [{\"type\": \"input_text\", \"text\": \"hi\"}]}],\n  \"reasoning\": null,\n  \"store\": false\n}",
            "gpt-4.1",
            "gpt-4.1-mini",
            "{\n  \"model\" :\t\"gpt-4.1-mini\",\n  \"input\": [{\"role\": \"user\", \"content\": [{\"type\": \"input_text\", \"text\": \"hi\"}]}],\n  \"reasoning\": null,\n  \"store\": false\n}",
        ),
        (
            Api::OpenAiEmbeddings,
            r#"{"input":[[1,2,3],[4]],"model":"text-embedding-3-large","encoding_format":"float","dimensions":256}"#,
            "text-embedding-3-large",
            "text-embedding-3-small",
            r#"{"input":[[1,2,3],[4]],"model":"text-embedding-3-small","encoding_format":"float","dimensions":256}"#,
        ),
        (
            Api::AnthropicMessages,
            r#"{"model":"claude-sonnet-4-5-20250929","max_tokens":1024,"system":[{"type":"text","text":"sys","cache_control":{"type":"ephemeral"}}],"messages":[{"role":"user","content":"hi"}],"thinking":{"type":"enabled","budget_tokens":2048},"stream":true}"#,
            "claude-sonnet-4-5-20250929",
            "claude-haiku-4-5",
            r#"{"model":"claude-haiku-4-5","max_tokens":1024,"system":[{"type":"text","text":"sys","cache_control":{"type":"ephemeral"}}],"messages":[{"role":"user","content":"hi"}],"thinking":{"type":"enabled","budget_tokens":2048},"stream":true}"#,
        ),
        (
            // Number spellings serde_json would not reproduce are kept as sent.
            Api::OpenAiChat,
            r#" { "temperature" : 1.0E0 , "seed" : 123456789012345678901234567890 , "top_p":0.1000000000000000055511151231257827 , "model" : "gpt-4o" } "#,
            "gpt-4o",
            "gpt-4o-mini",
            r#" { "temperature" : 1.0E0 , "seed" : 123456789012345678901234567890 , "top_p":0.1000000000000000055511151231257827 , "model" : "gpt-4o-mini" } "#,
        ),
        (
            // Escapes in the key and in the value.
            Api::AnthropicMessages,
            r#"{"mod\u0065l":"claude-sonnet-4\u002d5","max_tokens":1,"messages":[]}"#,
            "claude-sonnet-4-5",
            "claude-haiku-4-5",
            r#"{"mod\u0065l":"claude-haiku-4-5","max_tokens":1,"messages":[]}"#,
        ),
        (
            // Duplicate keys: every one gets the target, whichever one a parser keeps.
            Api::OpenAiChat,
            r#"{"model":"gpt-4o","messages":[],"model":"gpt-4o"}"#,
            "gpt-4o",
            "gpt-4o-mini",
            r#"{"model":"gpt-4o-mini","messages":[],"model":"gpt-4o-mini"}"#,
        ),
        (
            Api::OpenAiChat,
            r#"{"model":7,"messages":[],"model":"gpt-4o"}"#,
            "gpt-4o",
            "gpt-4o-mini",
            r#"{"model":"gpt-4o-mini","messages":[],"model":"gpt-4o-mini"}"#,
        ),
        (
            // Azure ignores it, but the body is still rewritten (callers check `model_in`).
            Api::OpenAiChat,
            r#"{"messages":[],"model":"gpt-4o"}"#,
            "gpt-4o",
            "gpt-4o-mini",
            r#"{"messages":[],"model":"gpt-4o-mini"}"#,
        ),
    ];
    for (api, body, from, to, want) in cases {
        let rewrite = rewrite_body(api, body.as_bytes(), &sample);
        let Rewrite::Body {
            from: got_from,
            to: got_to,
            body: got,
        } = rewrite
        else {
            panic!("{body}: {rewrite:?}");
        };
        assert_eq!((got_from.as_str(), got_to.as_str()), (from, to), "{body}");
        assert_eq!(String::from_utf8(got.clone()).unwrap(), want, "{body}");
        if !body.contains("\"model\":7") {
            assert_rewritten_faithfully(api, body.as_bytes(), &got, to);
        }
    }
}

#[test]
fn targets_are_json_escaped() {
    let odd = map(&[("gpt-4o", "we\"ird\\name\u{e9}")]);
    let Rewrite::Body { body, .. } = rewrite_body(Api::OpenAiChat, br#"{"model":"gpt-4o"}"#, &odd)
    else {
        panic!("not rewritten");
    };
    assert_eq!(body, "{\"model\":\"we\\\"ird\\\\name\u{e9}\"}".as_bytes());
    let value: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(value, json!({"model": "we\"ird\\name\u{e9}"}));
}

#[test]
fn leaves_bodies_it_cannot_or_need_not_rewrite() {
    let sample = sample_map();
    let no_catch_all = map(&[("gpt-4o*", "gpt-4o-mini")]);
    let deep_array = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    let deep_inside = format!(
        r#"{{"model":"gpt-4o","x":{}{}}}"#,
        "[".repeat(1000),
        "]".repeat(1000)
    );
    let cases: Vec<(Api, Vec<u8>, &ModelMap)> = vec![
        // The model is in the path for Gemini.
        (
            Api::Gemini,
            br#"{"model":"gemini-2.5-pro"}"#.to_vec(),
            &sample,
        ),
        // Nothing to degrade.
        (
            Api::OpenAiChat,
            br#"{"model":"gpt-4o-mini"}"#.to_vec(),
            &sample,
        ),
        (
            Api::OpenAiChat,
            br#"{"model":"claude-sonnet-4-5"}"#.to_vec(),
            &no_catch_all,
        ),
        (Api::OpenAiChat, br#"{"model":""}"#.to_vec(), &sample),
        // No string model at the top level.
        (Api::OpenAiChat, br#"{"messages":[]}"#.to_vec(), &sample),
        (
            Api::OpenAiChat,
            br#"{"metadata":{"model":"gpt-4o"}}"#.to_vec(),
            &sample,
        ),
        (Api::OpenAiChat, br#"{"model":null}"#.to_vec(), &sample),
        (
            Api::OpenAiChat,
            br#"{"model":["gpt-4o"]}"#.to_vec(),
            &sample,
        ),
        (
            Api::OpenAiChat,
            br#"{"model":"gpt-4o","model":1}"#.to_vec(),
            &sample,
        ),
        (Api::OpenAiChat, br#"{}"#.to_vec(), &sample),
        // Not an object.
        (
            Api::OpenAiChat,
            br#"[{"model":"gpt-4o"}]"#.to_vec(),
            &sample,
        ),
        (Api::OpenAiChat, br#""gpt-4o""#.to_vec(), &sample),
        (Api::OpenAiChat, b"42".to_vec(), &sample),
        (Api::OpenAiChat, b"null".to_vec(), &sample),
        (Api::AnthropicMessages, b"true".to_vec(), &sample),
        // Not JSON.
        (Api::OpenAiChat, Vec::new(), &sample),
        (Api::OpenAiChat, b"  \n".to_vec(), &sample),
        (
            Api::OpenAiChat,
            b"\xef\xbb\xbf{\"model\":\"gpt-4o\"}".to_vec(),
            &sample,
        ),
        (
            Api::OpenAiChat,
            b"{\"model\":\"gpt-4o\xff\"}".to_vec(),
            &sample,
        ),
        (Api::OpenAiChat, b"\xff\xfe\x00{".to_vec(), &sample),
        (
            Api::OpenAiChat,
            br#"{"model":"gpt-4o"} {}"#.to_vec(),
            &sample,
        ),
        (Api::OpenAiChat, br#"{"model":"gpt-4o",}"#.to_vec(), &sample),
        (Api::OpenAiChat, br#"{'model':'gpt-4o'}"#.to_vec(), &sample),
        (
            Api::OpenAiChat,
            b"model=gpt-4o&stream=true".to_vec(),
            &sample,
        ),
        (Api::OpenAiChat, deep_array.into_bytes(), &sample),
        // Deeper than serde_json's recursion limit: unreadable, so unchanged.
        (Api::OpenAiChat, deep_inside.into_bytes(), &sample),
    ];
    for (api, body, map) in cases {
        assert_eq!(
            rewrite_body(api, &body, map),
            Rewrite::Unchanged,
            "{}",
            String::from_utf8_lossy(body.get(..200.min(body.len())).unwrap())
        );
    }
}

fn valid_bodies() -> Vec<(Api, &'static str)> {
    vec![
        (
            Api::OpenAiChat,
            r#"{"model":"gpt-4o","messages":[{"role":"user","content":"a \"quoted\" {text} [x]\\"}],"stream":true,"stream_options":{"include_usage":true},"n":1,"stop":null,"x":-1.5e-3}"#,
        ),
        (
            Api::OpenAiResponses,
            "{\"input\": \"hi\",\n \"model\": \"gpt-4.1\", \"tools\": [{\"type\": \"web_search\"}], \"store\": false}",
        ),
        (
            Api::OpenAiEmbeddings,
            r#"{"input":["x","y"],"model":"text-embedding-3-large"}"#,
        ),
        (
            Api::AnthropicMessages,
            r#"{"model":"claude-sonnet-4-5-20250929","max_tokens":64,"messages":[{"role":"user","content":[{"type":"text","text":"é ☃ \ud83d\ude00"}]}]}"#,
        ),
    ]
}

/// The invariant for any input: no panic, and a rewrite is always a faithful one.
fn check_any(api: Api, body: &[u8], map: &ModelMap) -> bool {
    match rewrite_body(api, body, map) {
        Rewrite::Unchanged => false,
        Rewrite::Body {
            from,
            to,
            body: new,
        } => {
            assert_eq!(map.target(&from), Some(to.as_str()));
            assert_rewritten_faithfully(api, body, &new, &to);
            true
        }
    }
}

#[test]
fn every_truncation_is_left_unchanged() {
    let sample = sample_map();
    for (api, body) in valid_bodies() {
        let body = body.as_bytes();
        assert!(
            check_any(api, body, &sample),
            "{}",
            String::from_utf8_lossy(body)
        );
        for cut in 0..body.len() {
            let head = body.get(..cut).unwrap();
            assert_eq!(
                rewrite_body(api, head, &sample),
                Rewrite::Unchanged,
                "{api:?} cut at {cut}"
            );
        }
    }
}

#[test]
fn mutated_bodies_never_panic_and_rewrite_faithfully() {
    let sample = sample_map();
    let replacements = [
        b'"', b'\\', b'{', b'}', b'[', b']', b',', b':', b' ', b'0', b'e', b'x', 0x00, 0x80, 0xff,
    ];
    let mut rewritten = 0;
    let mut tried = 0;
    for (api, body) in valid_bodies() {
        let body = body.as_bytes();
        for at in 0..body.len() {
            for &byte in &replacements {
                let mut mutated = body.to_vec();
                mutated[at] = byte;
                rewritten += usize::from(check_any(api, &mutated, &sample));
                // Also with a byte inserted and one removed.
                let mut inserted = body.to_vec();
                inserted.insert(at, byte);
                rewritten += usize::from(check_any(api, &inserted, &sample));
                tried += 2;
            }
            let mut removed = body.to_vec();
            removed.remove(at);
            rewritten += usize::from(check_any(api, &removed, &sample));
            tried += 1;
        }
    }
    // Mutations inside strings or whitespace keep the body valid and degradable.
    assert!(
        rewritten > 100 && rewritten < tried,
        "{rewritten} of {tried}"
    );
}

#[test]
fn huge_bodies() {
    let sample = sample_map();
    let content = "lorem ipsum \\\"model\\\": ".repeat(200_000);
    let body = format!(
        r#"{{"messages":[{{"role":"user","content":"{content}"}}],"model":"gpt-4o","max_tokens":5}}"#
    );
    let Rewrite::Body { body: new, .. } = rewrite_body(Api::OpenAiChat, body.as_bytes(), &sample)
    else {
        panic!("not rewritten");
    };
    let want = body.replace(r#""model":"gpt-4o""#, r#""model":"gpt-4o-mini""#);
    assert!(new == want.as_bytes());
    // Megabytes of garbage, and a huge unterminated string.
    let garbage: Vec<u8> = (0..4_000_000u32).map(|i| (i % 251) as u8).collect();
    assert_eq!(
        rewrite_body(Api::OpenAiChat, &garbage, &sample),
        Rewrite::Unchanged
    );
    let open = format!(r#"{{"model":"gpt-4o","x":"{}"#, "a".repeat(4_000_000));
    assert_eq!(
        rewrite_body(Api::AnthropicMessages, open.as_bytes(), &sample),
        Rewrite::Unchanged
    );
}

#[test]
fn the_scanner_finds_top_level_model_values_only() {
    let cases: [(&str, Option<Vec<&str>>); 9] = [
        (r#"{"model":"a"}"#, Some(vec![r#""a""#])),
        (r#" {  "model"  :  "a"  } "#, Some(vec![r#""a""#])),
        (r#"{"x":{"model":"b"},"model":"a"}"#, Some(vec![r#""a""#])),
        (
            r#"{"x":"\"model\":\"b\"","model":1.5e3}"#,
            Some(vec!["1.5e3"]),
        ),
        (
            r#"{"model":{"a":["}"]},"model":null}"#,
            Some(vec![r#"{"a":["}"]}"#, "null"]),
        ),
        (r#"{"models":"a","Model":"b"}"#, Some(vec![])),
        (r#"{}"#, Some(vec![])),
        (r#"[]"#, None),
        (r#"{"model":"a""#, None),
    ];
    for (body, want) in cases {
        let found = members(body.as_bytes(), "model");
        let got: Option<Vec<&str>> = found.map(|found| {
            assert_eq!(body.get(found.close..found.close + 1), Some("}"), "{body}");
            found
                .values
                .into_iter()
                .map(|s| body.get(s).unwrap())
                .collect()
        });
        assert_eq!(got, want, "{body}");
    }
}

#[test]
fn rewrites_gemini_paths() {
    let gemini = map(&[
        ("gemini-2.5-pro", "gemini-2.5-flash"),
        ("gemini-*-pro*", "gemini-2.0-flash"),
        ("gemini-2.5-flash*", "gemini-2.5-flash-lite"),
        ("gemini-exp", "tuned/model"),
        ("gemini-odd", "gemini?2"),
    ]);
    let cases: [(&str, PathRewrite); 20] = [
        (
            "/v1beta/models/gemini-2.5-pro:generateContent",
            Some(("gemini-2.5-pro", "gemini-2.5-flash", "/v1beta/models/gemini-2.5-flash:generateContent")),
        ),
        (
            "/v1beta/models/gemini-2.5-pro:streamGenerateContent?alt=sse",
            Some((
                "gemini-2.5-pro",
                "gemini-2.5-flash",
                "/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse",
            )),
        ),
        (
            "/v1/projects/p/locations/l/publishers/google/models/gemini-2.5-pro:streamGenerateContent",
            Some((
                "gemini-2.5-pro",
                "gemini-2.5-flash",
                "/v1/projects/p/locations/l/publishers/google/models/gemini-2.5-flash:streamGenerateContent",
            )),
        ),
        (
            "/v1/projects/p/locations/us-central1/publishers/google/models/gemini-1.5-pro-002:generateContent?alt=sse&key=a:b/models/x",
            Some((
                "gemini-1.5-pro-002",
                "gemini-2.0-flash",
                "/v1/projects/p/locations/us-central1/publishers/google/models/gemini-2.0-flash:generateContent?alt=sse&key=a:b/models/x",
            )),
        ),
        (
            "/v1beta/models/GEMINI-2.5-PRO:generateContent/",
            Some(("GEMINI-2.5-PRO", "gemini-2.5-flash", "/v1beta/models/gemini-2.5-flash:generateContent/")),
        ),
        (
            "/v1beta/models/gemini-2.5-pro-latest:generateContent#top",
            Some(("gemini-2.5-pro-latest", "gemini-2.5-flash", "/v1beta/models/gemini-2.5-flash:generateContent#top")),
        ),
        (
            "/v1beta/models/gemini-2.5-flash-preview-05-20:streamGenerateContent?alt=sse",
            Some((
                "gemini-2.5-flash-preview-05-20",
                "gemini-2.5-flash-lite",
                "/v1beta/models/gemini-2.5-flash-lite:streamGenerateContent?alt=sse",
            )),
        ),
        (
            "/gemini/v1beta/models/gemini-2.5-pro:generateContent?",
            Some(("gemini-2.5-pro", "gemini-2.5-flash", "/gemini/v1beta/models/gemini-2.5-flash:generateContent?")),
        ),
        // Already the target.
        ("/v1beta/models/gemini-2.5-flash-lite:generateContent", None),
        // Not mapped.
        ("/v1beta/models/gemini-2.0-flash:generateContent", None),
        // Target that is no path segment.
        ("/v1beta/models/gemini-exp:generateContent", None),
        ("/v1beta/models/gemini-odd:generateContent", None),
        // Not a generate call on a base model.
        ("/v1beta/models/gemini-2.5-pro:countTokens", None),
        ("/v1beta/models/gemini-2.5-pro", None),
        ("/v1beta/tunedModels/gemini-2.5-pro:generateContent", None),
        ("/v1/projects/p/locations/l/endpoints/gemini-2.5-pro:generateContent", None),
        ("/v1beta/models/:generateContent", None),
        ("/v1beta/models?x=/models/gemini-2.5-pro:generateContent", None),
        ("/v1/chat/completions", None),
        ("", None),
    ];
    for (path, want) in cases {
        // Only an API whose model is in the path has a model segment to rewrite.
        assert_eq!(rewrite_path(Api::OpenAiChat, path, &gemini), None, "{path}");
        let got = rewrite_path(Api::Gemini, path, &gemini);
        let got = got
            .as_ref()
            .map(|(from, to, new)| (from.as_str(), to.as_str(), new.as_str()));
        assert_eq!(got, want, "{path}");
        if let Some((_, to, new)) = got {
            let detected = Api::detect(new).unwrap();
            assert_eq!(detected.api, Api::Gemini);
            assert_eq!(detected.path_model.as_deref(), Some(to));
        }
    }
}

// ---- property tests: random request objects, random bytes ----------------------------------

#[cfg(not(target_arch = "wasm32"))]
mod properties {
    use super::*;
    use proptest::collection::vec;
    use proptest::prelude::*;

    /// A JSON value as text, with the awkward spellings a client may send: escapes,
    /// whitespace, nested `model` keys, numbers in exponent form.
    fn value_text() -> impl Strategy<Value = String> {
        let leaf = prop_oneof![
            Just("\"gpt-4o\"".to_string()),
            Just("\"claude-sonnet-4-5-20250929\"".to_string()),
            Just("\"a\\\"b\\\\\"".to_string()),
            Just("\"\\u006dodel\"".to_string()),
            Just("1.5e3".to_string()),
            Just("-0".to_string()),
            Just("null".to_string()),
            Just("true".to_string()),
            "[a-z{}\\[\\]:, ]{0,8}".prop_map(|s| serde_json::to_string(&s).unwrap()),
        ];
        leaf.prop_recursive(3, 16, 4, |inner| {
            prop_oneof![
                vec(inner.clone(), 0..4).prop_map(|items| format!("[{}]", items.join(" , "))),
                vec(inner, 0..3).prop_map(|values| {
                    let fields: Vec<String> =
                        values.iter().map(|v| format!("\"model\":{v}")).collect();
                    format!("{{{}}}", fields.join(","))
                }),
            ]
        })
    }

    /// A request object: `model` (maybe twice, maybe with an escaped key) among other keys.
    fn request() -> impl Strategy<Value = String> {
        let model = prop_oneof![
            Just("gpt-4o"),
            Just("GPT-4o-2024-08-06"),
            Just("claude-sonnet-4-5-20250929"),
            Just("openai/gpt-4.1"),
            Just("o3"),
            Just("unknown"),
        ];
        let key = prop_oneof![
            Just("\"model\""),
            Just("\"m\\u006fdel\""),
            Just("\"messages\""),
            Just("\"stream\""),
            Just("\"x\""),
        ];
        (
            model,
            vec((key, value_text()), 0..5),
            any::<prop::sample::Index>(),
            "[ \t\n]{0,2}",
        )
            .prop_map(|(model, mut fields, at, space)| {
                let at = at.index(fields.len() + 1);
                fields.insert(at, ("\"model\"", format!("\"{model}\"")));
                let fields: Vec<String> = fields
                    .iter()
                    .map(|(k, v)| format!("{space}{k}{space}:{space}{v}"))
                    .collect();
                format!("{{{}{space}}}", fields.join(","))
            })
    }

    proptest! {
        #[test]
        fn a_rewritten_body_is_json_with_the_target_and_every_other_key_unchanged(
            body in request(),
        ) {
            let map = sample_map();
            for api in [Api::OpenAiChat, Api::OpenAiResponses, Api::AnthropicMessages] {
                let Rewrite::Body { from, to, body: sent } =
                    rewrite_body(api, body.as_bytes(), &map)
                else {
                    continue;
                };
                prop_assert_eq!(map.target(&from), Some(to.as_str()));
                let mut original: Value = serde_json::from_str(&body).unwrap();
                let mut sent: Value = serde_json::from_slice(&sent).unwrap();
                prop_assert_eq!(original.get("model"), Some(&Value::String(from)));
                prop_assert_eq!(sent.get("model"), Some(&Value::String(to)));
                original.as_object_mut().unwrap().remove("model");
                sent.as_object_mut().unwrap().remove("model");
                prop_assert_eq!(original, sent);
            }
        }

        #[test]
        fn any_bytes_and_paths_rewrite_without_panic(
            body in vec(any::<u8>(), 0..64),
            path in "/v1beta/models/[a-z0-9.:/?#*-]{0,24}(:generateContent)?",
        ) {
            let map = sample_map();
            prop_assert_eq!(rewrite_body(Api::OpenAiChat, &body, &map), Rewrite::Unchanged);
            if let Some((from, to, new_path)) = rewrite_path(Api::Gemini, &path, &map) {
                prop_assert_eq!(map.target(&from), Some(to.as_str()));
                let span = Api::Gemini.path_model_span(&new_path).unwrap();
                prop_assert_eq!(&new_path[span], to.as_str());
            }
        }
    }
}
