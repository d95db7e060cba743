//! The request-body reader of each API (`prepare_request`): model, stream flag, output limit,
//! and the OpenAI rewrite that asks a stream for its usage report. A rewritten body is a
//! JSON object (when the original is) that keeps every other key as sent and asks for the
//! report; it reads back the same and needs no second rewrite.
//! Input: API selector, then the request body.
#![no_main]

use agent_budget_core::providers::Api;
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

fuzz_target!(|data: &[u8]| {
    let [selector, body @ ..] = data else {
        return;
    };
    let api = Api::ALL[usize::from(*selector) % Api::ALL.len()];
    let prepared = api.prepare_request(body);
    assert_eq!(
        prepared.rewritten.is_some(),
        prepared.strip_usage_from_client
    );
    let Some(rewritten) = &prepared.rewritten else {
        return;
    };
    assert!(api.rewrites_request(), "{api:?} rewrote a body");
    assert!(prepared.stream, "only streams are rewritten");
    // A body that is JSON stays JSON (one whose ignored strings are not UTF-8 is not, and
    // is forwarded with the option all the same).
    if let Ok(Value::Object(original)) = serde_json::from_slice::<Value>(body) {
        let Ok(Value::Object(sent)) = serde_json::from_slice::<Value>(rewritten) else {
            panic!("the rewritten body is not a JSON object");
        };
        assert_eq!(
            sent.get("stream_options")
                .and_then(|o| o.get("include_usage")),
            Some(&Value::Bool(true))
        );
        let others = |map: &serde_json::Map<String, Value>| {
            map.iter()
                .filter(|(key, _)| *key != "stream_options")
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect::<Vec<_>>()
        };
        assert_eq!(others(&original), others(&sent), "other keys changed");
        if let Some(Value::Object(options)) = original.get("stream_options") {
            for (key, value) in options {
                if key != "include_usage" {
                    assert_eq!(sent["stream_options"].get(key), Some(value));
                }
            }
        }
    }
    let again = api.prepare_request(rewritten);
    assert_eq!(again.model, prepared.model);
    assert_eq!(again.stream, prepared.stream);
    assert_eq!(again.max_output_tokens, prepared.max_output_tokens);
    assert_eq!(
        again.rewritten, None,
        "a rewritten body needed a second rewrite"
    );
});
