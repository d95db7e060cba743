//! The degrade model rewrite: the model map's pattern matching, the body rewrite of every
//! API that names its model in the body, and Gemini's path rewrite. A rewritten body is
//! valid JSON whose top-level `model` is the target and whose other keys are unchanged; a
//! rewritten path names the target where the model was and keeps the rest byte for byte.
//! Input: `pattern target` lines, NUL, a request path, NUL, the request body. Rules the map
//! refuses are replaced by a fixed map (with a catch-all), so bodies are rewritten anyway.
#![no_main]

use agent_budget_core::degrade::{rewrite_body, rewrite_path, ModelMap, Rewrite};
use agent_budget_core::providers::{Api, ModelIn};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

fn fixed_map() -> ModelMap {
    let pairs = [
        ("claude-sonnet-*", "claude-haiku-4-5"),
        ("gpt-4o", "gpt-4o-mini"),
        ("*-pro*", "gemini-2.5-flash"),
        ("*", "cheap-model"),
    ];
    ModelMap::new(
        pairs
            .iter()
            .map(|(p, t)| (p.to_string(), t.to_string()))
            .collect(),
    )
    .unwrap_or_else(|reason| panic!("fixed map refused: {reason}"))
}

fn split_nul(data: &[u8]) -> (&[u8], &[u8]) {
    match data.iter().position(|&b| b == 0) {
        Some(at) => (&data[..at], &data[at + 1..]),
        None => (data, &[]),
    }
}

fuzz_target!(|data: &[u8]| {
    let (rules, rest) = split_nul(data);
    let (path, body) = split_nul(rest);
    let rules = String::from_utf8_lossy(rules);
    let pairs: Vec<(String, String)> = rules
        .lines()
        .map(|line| match line.split_once(' ') {
            Some((pattern, target)) => (pattern.to_string(), target.to_string()),
            None => (line.to_string(), String::new()),
        })
        .collect();
    let map = ModelMap::new(pairs).unwrap_or_else(|_| fixed_map());
    let path = String::from_utf8_lossy(path);

    for api in [
        Api::OpenAiChat,
        Api::OpenAiResponses,
        Api::OpenAiEmbeddings,
        Api::AnthropicMessages,
        Api::Gemini,
    ] {
        let rewrite = rewrite_body(api, body, &map);
        let Rewrite::Body {
            from,
            to,
            body: sent,
        } = rewrite
        else {
            continue;
        };
        assert_eq!(api.model_in(), ModelIn::Body);
        assert_eq!(map.target(&from), Some(to.as_str()));
        let Ok(Value::Object(original)) = serde_json::from_slice::<Value>(body) else {
            panic!("rewrote a body that is not a JSON object");
        };
        let Ok(Value::Object(sent)) = serde_json::from_slice::<Value>(&sent) else {
            panic!("the rewritten body is not a JSON object");
        };
        assert_eq!(original.get("model"), Some(&Value::String(from.clone())));
        assert_eq!(sent.get("model"), Some(&Value::String(to.clone())));
        let others = |map: &serde_json::Map<String, Value>| {
            map.iter()
                .filter(|(key, _)| *key != "model")
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect::<Vec<_>>()
        };
        assert_eq!(others(&original), others(&sent), "other keys changed");
    }

    // The model as sent is never its own target (the call would be "degraded" to itself).
    for model in [path.as_ref(), rules.as_ref()] {
        if let Some(target) = map.target(model) {
            assert!(
                !target.eq_ignore_ascii_case(model),
                "{model} maps to itself"
            );
        }
    }

    if let Some((from, to, new_path)) = rewrite_path(Api::Gemini, &path, &map) {
        let span = Api::Gemini
            .path_model_span(&path)
            .unwrap_or_else(|| panic!("rewrote a path with no model: {path}"));
        assert_eq!(&path[span.clone()], from);
        assert_eq!(map.target(&from), Some(to.as_str()));
        assert_eq!(&new_path[..span.start], &path[..span.start]);
        assert_eq!(&new_path[span.start + to.len()..], &path[span.end..]);
        let new_span = Api::Gemini.path_model_span(&new_path);
        assert_eq!(new_span.map(|s| new_path[s].to_string()), Some(to));
    }
});
