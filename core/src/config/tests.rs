use super::*;
use crate::pbstruct::tests::enc as encode_struct;
use crate::providers::{Api, ModelIn};
use serde_json::json;

const FULL: &str = r#"{
  "agent_header": "X-Agent",
  "task_header": "x-task",
  "user_header": "x-user",
  "time_zone": "+05:30",
  "missing_agent": "default",
  "unknown_agent": "reject",
  "agents": {
    "research-bot": {"daily_usd": 5, "monthly_usd": 100.5, "action": "stop"},
    "default": {"daily_usd": 0.25}
  },
  "pricing": {"my-llama": {"input": 0.2, "output": 0.6, "cached_input": 0.05}},
  "fallback_price": {"input": 1, "output": 2},
  "max_response_body_bytes": 65536
}"#;

#[test]
fn parses_a_full_json_config() {
    let config = Config::from_bytes(FULL.as_bytes()).unwrap();
    assert_eq!(config.agent_header, "x-agent");
    assert_eq!(config.time_zone.offset_secs(), 19_800);
    assert_eq!(config.missing_agent, Unidentified::Default);
    let bot = config.budget("research-bot").unwrap();
    assert_eq!(
        (bot.daily, bot.monthly, bot.action),
        (Some(5_000_000), Some(100_500_000), LimitAction::Stop)
    );
    assert_eq!(config.budget("default").unwrap().daily, Some(250_000));
    let llama = config.prices.resolve("my-llama-3").unwrap().price;
    assert_eq!(
        (llama.input, llama.output, llama.cache_read),
        (200_000, 600_000, 50_000)
    );
    assert_eq!(config.fallback_price.output, 2_000_000);
    assert_eq!(config.max_response_body_bytes, 65_536);
}

#[test]
fn defaults_are_applied() {
    let config = Config::from_bytes(br#"{"agents":{"a":{"monthly_usd":1}}}"#).unwrap();
    assert_eq!(
        (
            config.agent_header.as_str(),
            config.task_header.as_str(),
            config.user_header.as_str()
        ),
        ("x-agent-id", "x-task-id", "x-user-id")
    );
    assert_eq!(config.time_zone, TimeZone::UTC);
    assert_eq!(
        (config.missing_agent, config.unknown_agent),
        (Unidentified::Reject, Unidentified::Reject)
    );
    assert_eq!(config.budget("a").unwrap().action, LimitAction::Stop);
    assert_eq!(config.fallback_price, DEFAULT_FALLBACK_PRICE);
    assert_eq!(config.max_tracked_agents, DEFAULT_MAX_TRACKED_AGENTS);
    assert!(config.prices.resolve("gpt-4o").is_some());
}

#[test]
fn struct_encoding_gives_the_same_config() {
    let value: serde_json::Value = serde_json::from_str(FULL).unwrap();
    let from_struct = Config::from_bytes(&encode_struct(&value)).unwrap();
    assert_eq!(from_struct, Config::from_bytes(FULL.as_bytes()).unwrap());
}

/// A Struct's first byte is the tag 0x0a ("\n") and the next is its first entry's length: at
/// 123 that is "{", so the bytes look like JSON text. Every length must still read as the Struct.
#[test]
fn struct_whose_bytes_look_like_json_text_is_read_as_a_struct() {
    let mut saw_brace = false;
    for name_len in 1..=64 {
        let name = "a".repeat(name_len);
        let value = serde_json::json!({"agents": {name: {"daily_usd": 10, "monthly_usd": 100}}});
        let bytes = encode_struct(&value);
        saw_brace |= bytes.get(1) == Some(&b'{');
        let from_struct = Config::from_bytes(&bytes);
        let from_json = Config::from_bytes(&serde_json::to_vec(&value).unwrap());
        assert_eq!(from_struct, from_json, "agent name of {name_len} bytes");
        assert!(from_struct.is_ok(), "agent name of {name_len} bytes");
    }
    assert!(
        saw_brace,
        "no length in the sweep produced the JSON-looking prefix"
    );
}

/// Each bad configuration is rejected with the field it names.
#[test]
fn rejections_name_the_field() {
    let cases: Vec<(serde_json::Value, &str, &str)> = vec![
        (
            json!({"agents": {"a": {"daily_usd": -1}}}),
            "agents.a.daily_usd",
            "USD amount",
        ),
        (
            json!({"agents": {"a": {"daily_usd": "five"}}}),
            "agents.a.daily_usd",
            "invalid value",
        ),
        (
            json!({"agents": {"a": {"dayly_usd": 5}}}),
            "agents.a.dayly_usd",
            "unknown field `dayly_usd`",
        ),
        (json!({"agents": {"a": {}}}), "agents.a", "daily_usd"),
        (
            json!({"agents": {"a": {"daily_usd": 1, "action": "pause"}}}),
            "agents.a.action",
            "unknown variant `pause`",
        ),
        (
            json!({"agents": {"bad.id": {"daily_usd": 1}}}),
            "agents.bad.id",
            "agent ids",
        ),
        (json!({"agents": {}}), "agents", "at least one"),
        (json!({"agentz": {}}), "agentz", "unknown field `agentz`"),
        (json!({}), "", "`agents`"),
        (
            json!({"time_zone": "Europe/Paris", "agents": {"a": {"daily_usd": 1}}}),
            "time_zone",
            "named zones",
        ),
        (
            json!({"agent_header": "x agent", "agents": {"a": {"daily_usd": 1}}}),
            "agent_header",
            "header name",
        ),
        (
            json!({"missing_agent": "default", "agents": {"a": {"daily_usd": 1}}}),
            "missing_agent",
            "`default`",
        ),
        (
            json!({"unknown_agent": "allow", "agents": {"a": {"daily_usd": 1}}}),
            "unknown_agent",
            "unknown variant",
        ),
        (
            json!({"pricing": {"m": {"input": 1}}, "agents": {"a": {"daily_usd": 1}}}),
            "pricing.m",
            "missing field `output`",
        ),
        (
            json!({"pricing": {"m": {"input": 1, "output": -2}}, "agents": {"a": {"daily_usd": 1}}}),
            "pricing.m.output",
            "USD",
        ),
        (
            json!({"max_response_body_bytes": 10, "agents": {"a": {"daily_usd": 1}}}),
            "max_response_body_bytes",
            "at least",
        ),
        (
            json!({"status_page": {"bearer_token": "short"}, "agents": {"a": {"daily_usd": 1}}}),
            "status_page.bearer_token",
            "16 to 512",
        ),
        (
            json!({"status_page": {"bearer_token": "has a space in it, long enough"}, "agents": {"a": {"daily_usd": 1}}}),
            "status_page.bearer_token",
            "without spaces",
        ),
        (
            json!({"status_page": {"token": "x"}, "agents": {"a": {"daily_usd": 1}}}),
            "status_page.token",
            "unknown field `token`",
        ),
        (
            json!({"max_tracked_agents": 0, "agents": {"a": {"daily_usd": 1}}}),
            "max_tracked_agents",
            "at least 1",
        ),
    ];
    for (value, field, reason) in cases {
        for bytes in [serde_json::to_vec(&value).unwrap(), encode_struct(&value)] {
            let error = Config::from_bytes(&bytes).unwrap_err();
            assert_eq!(error.field, field, "{value} -> {error}");
            assert!(error.reason.contains(reason), "{value} -> {error}");
            assert!(error.to_string().contains(field), "{error}");
        }
    }
}

#[test]
fn status_page_token_is_optional() {
    let open = Config::from_bytes(br#"{"agents":{"a":{"daily_usd":1}},"status_page":{}}"#).unwrap();
    assert_eq!(open.status_page.bearer_token, None);
    let token = "0123456789abcdef-_.~+/=";
    let text = format!(
        r#"{{"agents":{{"a":{{"daily_usd":1}}}},"status_page":{{"bearer_token":"{token}"}}}}"#
    );
    let closed = Config::from_bytes(text.as_bytes()).unwrap();
    assert_eq!(closed.status_page.bearer_token.as_deref(), Some(token));
}

#[test]
fn validates_agent_ids() {
    assert!(is_valid_agent_id("research-bot_2"));
    assert!(!is_valid_agent_id(""));
    assert!(!is_valid_agent_id("a.b"));
    assert!(!is_valid_agent_id(&"a".repeat(65)));
    assert!(is_valid_agent_id(&"a".repeat(64)));
}

#[test]
fn amounts_may_be_strings_as_envoy_yaml_delivers_them() {
    let config = Config::from_bytes(&encode_struct(&json!({
        "agents": {"a": {"daily_usd": "0.5", "monthly_usd": 3}},
        "pricing": {"m": {"input": "0.15", "output": 0.6}}
    })))
    .unwrap();
    assert_eq!(config.budget("a").unwrap().daily, Some(500_000));
    assert_eq!(config.prices.resolve("m").unwrap().price.input, 150_000);
}

#[test]
fn malformed_documents_say_where() {
    let error = Config::from_bytes(b"{\n  \"agents\": {,}\n}").unwrap_err();
    assert!(error.reason.contains("line 2 column"), "{error}");
    let error = Config::from_bytes(b"").unwrap_err();
    assert!(error.reason.contains("empty"), "{error}");
    let error = Config::from_bytes(b"agents: {}").unwrap_err();
    assert!(error.reason.contains("neither JSON"), "{error}");
    let error = Config::from_bytes(&[0x0a, 0xff]).unwrap_err();
    assert!(error.reason.contains("protobuf"), "{error}");
}

#[test]
fn api_overrides_and_azure_deployments() {
    let config = Config::from_bytes(
        br#"{"agents":{"a":{"daily_usd":1}},
            "api_overrides":[{"path_prefix":"/llm/internal/","api":"anthropic_messages"},
                             {"cluster_name":"vllm","api":"openai_chat"}],
            "azure_deployments":{"prod-4o":"gpt-4o"}}"#,
    )
    .unwrap();
    assert!(config.overrides_need_route());
    let api = |path, route, cluster| config.detect_api(path, route, cluster).map(|d| d.api);
    assert_eq!(
        api("/llm/internal/generate", None, None),
        Some(Api::AnthropicMessages)
    );
    assert_eq!(
        api("/custom/generate", None, Some("vllm")),
        Some(Api::OpenAiChat)
    );
    assert_eq!(api("/custom/generate", None, Some("other")), None);
    assert_eq!(
        api("/v1/messages", None, None),
        Some(Api::AnthropicMessages)
    );
    // An overridden call on an Azure deployment path still has its model fixed.
    let azure = config
        .detect_api("/llm/internal/openai/deployments/d1/generate", None, None)
        .unwrap();
    assert_eq!(azure.azure_deployment.as_deref(), Some("d1"));
    assert_eq!(azure.model_in(), ModelIn::Deployment);
    assert_eq!(
        config.azure_deployments.get("prod-4o").map(String::as_str),
        Some("gpt-4o")
    );

    let cases = [
        (
            json!([{"api": "openai_chat"}]),
            "api_overrides[0]",
            "at least one",
        ),
        (
            json!([{"path_prefix": "llm", "api": "openai_chat"}]),
            "api_overrides[0].path_prefix",
            "start with",
        ),
        (
            json!([{"path_prefix": "/x", "api": "cohere"}]),
            "api_overrides[0].api",
            "unknown variant",
        ),
    ];
    for (overrides, field, reason) in cases {
        let value = json!({"agents": {"a": {"daily_usd": 1}}, "api_overrides": overrides});
        let error = Config::from_bytes(&serde_json::to_vec(&value).unwrap()).unwrap_err();
        assert_eq!(error.field, field, "{error}");
        assert!(error.reason.contains(reason), "{error}");
    }
}

#[test]
fn anomaly_section_defaults_and_durations() {
    let defaults = Config::from_bytes(br#"{"agents":{"a":{"daily_usd":1}}}"#).unwrap();
    assert_eq!(defaults.anomaly, AnomalyConfig::default());
    assert_eq!(
        (
            defaults.anomaly.enabled,
            defaults.anomaly.projection,
            defaults.anomaly.multiple_milli,
            defaults.anomaly.bucket_secs,
            defaults.anomaly.current_secs,
            defaults.anomaly.window_secs,
            defaults.anomaly.min_history_secs
        ),
        (true, true, 3_000, 3_600, 3_600, 14 * 86_400, 86_400)
    );
    let value = json!({
        "agents": {"a": {"daily_usd": 1}},
        "anomaly": {"enabled": false, "projection": false, "multiple": "2.5", "bucket": "5s",
                    "current": "10s", "window": "60s"}
    });
    for bytes in [serde_json::to_vec(&value).unwrap(), encode_struct(&value)] {
        let anomaly = Config::from_bytes(&bytes).unwrap().anomaly;
        assert_eq!(
            anomaly,
            AnomalyConfig {
                enabled: false,
                projection: false,
                multiple_milli: 2_500,
                bucket_secs: 5,
                current_secs: 10,
                window_secs: 60,
                // A day, or the window when it is shorter.
                min_history_secs: 60,
            }
        );
    }
    for (text, want) in [
        ("90s", Ok(90)),
        ("5m", Ok(300)),
        ("1h", Ok(3_600)),
        ("14d", Ok(1_209_600)),
        (" 2h ", Ok(7_200)),
    ] {
        assert_eq!(parse_duration(text), want, "{text}");
    }
    for text in [
        "",
        "h",
        "5",
        "1w",
        "-5m",
        "1.5h",
        "0s",
        "400d",
        "99999999999999999999d",
    ] {
        assert!(parse_duration(text).is_err(), "{text}");
    }
}

#[test]
fn anomaly_rejections_name_the_field() {
    let cases = [
        (json!({"bucket": "7m"}), "anomaly.current", "whole number"),
        (
            json!({"bucket": "1h", "current": "2h", "window": "150m"}),
            "anomaly.window",
            "whole number",
        ),
        (json!({"current": "14d"}), "anomaly.current", "shorter"),
        (
            json!({"window": "2h", "min_history": "3h"}),
            "anomaly.min_history",
            "longer",
        ),
        (json!({"multiple": 1}), "anomaly.multiple", "above 1"),
        (
            json!({"multiple": "lots"}),
            "anomaly.multiple",
            "invalid value",
        ),
        (json!({"bucket": "1m"}), "anomaly.bucket", "5000 buckets"),
        (json!({"window": "two weeks"}), "anomaly.window", "duration"),
        (json!({"windw": "1d"}), "anomaly.windw", "unknown field"),
    ];
    for (anomaly, field, reason) in cases {
        let value = json!({"agents": {"a": {"daily_usd": 1}}, "anomaly": anomaly});
        for bytes in [serde_json::to_vec(&value).unwrap(), encode_struct(&value)] {
            let error = Config::from_bytes(&bytes).unwrap_err();
            assert_eq!(error.field, field, "{value} -> {error}");
            assert!(error.reason.contains(reason), "{value} -> {error}");
        }
    }
}

const ALPHA_DIGEST: &str = "2179e632e89277f18aa600491b68ad55121fd6caa045e047fdeb426088a5a5f1";

#[test]
fn identity_source_and_its_errors() {
    let with_identity = |identity: serde_json::Value| {
        let config = json!({"agents": {"alpha": {"daily_usd": 1}}, "identity": identity});
        Config::from_bytes(config.to_string().as_bytes())
    };
    let none = Config::from_bytes(br#"{"agents":{"alpha":{"daily_usd":1}}}"#).unwrap();
    assert_eq!(none.identity, IdentitySource::Header);
    assert_eq!(
        with_identity(json!({"source": "header"})).unwrap().identity,
        IdentitySource::Header
    );
    let keyed =
        with_identity(json!({"source": "api_key", "api_keys": {ALPHA_DIGEST: "alpha"}})).unwrap();
    let IdentitySource::ApiKey(keys) = &keyed.identity else {
        panic!("api_key source expected");
    };
    let digest = parse_digest(ALPHA_DIGEST).unwrap();
    assert_eq!(keys.agent(&digest), Some("alpha"));
    // Upper-case hex is the same digest; Debug never shows one.
    let upper = with_identity(
        json!({"source": "api_key", "api_keys": {ALPHA_DIGEST.to_uppercase(): "alpha"}}),
    )
    .unwrap();
    assert_eq!(upper.identity, keyed.identity);
    assert!(!format!("{keyed:?}").contains("2179e6"));

    // The JWT source: jwt_authn's usual payload name and `sub` unless configured.
    let jwt = with_identity(json!({"source": "jwt"})).unwrap();
    assert_eq!(
        jwt.identity,
        IdentitySource::Jwt(JwtClaims {
            payload: "jwt_payload".to_string(),
            agent: "sub".to_string(),
            task: None,
            user: None,
        })
    );
    let jwt = with_identity(json!({"source": "jwt", "jwt_payload": "agent_token",
        "agent_claim": "agent", "task_claim": "task", "user_claim": "sub"}))
    .unwrap();
    assert_eq!(
        jwt.identity,
        IdentitySource::Jwt(JwtClaims {
            payload: "agent_token".to_string(),
            agent: "agent".to_string(),
            task: Some("task".to_string()),
            user: Some("sub".to_string()),
        })
    );

    let short = &ALPHA_DIGEST[..63];
    let not_hex = format!("{}g", &ALPHA_DIGEST[..63]);
    let cases = [
        (
            json!({"source": "api_key"}),
            "field `identity.api_keys`: `source: api_key` needs at least one key digest",
        ),
        (
            json!({"source": "api_key", "api_keys": {short: "alpha"}}),
            "field `identity.api_keys`: key #1 is not a SHA-256 digest (64 hex characters)",
        ),
        (
            json!({"source": "api_key", "api_keys": {not_hex: "alpha"}}),
            "field `identity.api_keys`: key #1 is not a SHA-256 digest (64 hex characters)",
        ),
        (
            json!({"source": "api_key", "api_keys": {ALPHA_DIGEST: "ghost"}}),
            "field `identity.api_keys`: agent `ghost` is not in `agents`",
        ),
        (
            json!({"source": "api_key", "api_keys": {ALPHA_DIGEST: "alpha", ALPHA_DIGEST.to_uppercase(): "alpha"}}),
            "field `identity.api_keys`: key #2 repeats another key's digest",
        ),
        (
            json!({"api_keys": {ALPHA_DIGEST: "alpha"}}),
            "field `identity.api_keys`: only used with `source: api_key`",
        ),
        (
            json!({"agent_claim": "sub"}),
            "field `identity.agent_claim`: only used with `source: jwt`",
        ),
        (
            json!({"source": "api_key", "api_keys": {ALPHA_DIGEST: "alpha"}, "jwt_payload": "p"}),
            "field `identity.jwt_payload`: only used with `source: jwt`",
        ),
        (
            json!({"source": "jwt", "api_keys": {ALPHA_DIGEST: "alpha"}}),
            "field `identity.api_keys`: only used with `source: api_key`",
        ),
        (
            json!({"source": "jwt", "agent_claim": " "}),
            "field `identity.agent_claim`: must not be empty",
        ),
        (
            json!({"source": "jwt", "user_claim": ""}),
            "field `identity.user_claim`: must not be empty",
        ),
        (json!({"source": "token"}), "field `identity.source`"),
        (json!({"sauce": "header"}), "field `identity"),
    ];
    for (identity, want) in cases {
        let error = with_identity(identity.clone()).unwrap_err().to_string();
        assert!(
            error.starts_with(&format!("invalid configuration: {want}")),
            "{identity}: {error}"
        );
        assert!(!error.contains("2179e6"), "{error}");
    }
}

#[test]
fn fleet_section_defaults_and_rejections() {
    let base =
        |fleet: serde_json::Value| json!({"agents": {"a": {"daily_usd": 1}}, "fleet": fleet});
    let config = Config::from_bytes(&encode_struct(&base(json!({"cluster": "redis"})))).unwrap();
    assert_eq!(
        config.fleet,
        Some(FleetConfig {
            cluster: "redis".into(),
            sync_millis: 1_000,
            timeout_millis: 1_000,
            gateway_id: None,
            key_prefix: "agent_budget".into(),
            unsynced: Unsynced::Refuse,
        })
    );
    let set = json!({"cluster": "r", "sync_millis": 250, "timeout_millis": 100,
        "gateway_id": "gw-1.eu", "key_prefix": "ab", "unsynced": "allow"});
    let fleet = Config::from_bytes(&encode_struct(&base(set)))
        .unwrap()
        .fleet
        .unwrap();
    assert_eq!(
        (
            fleet.sync_millis,
            fleet.timeout_millis,
            fleet.gateway_id.as_deref()
        ),
        (250, 100, Some("gw-1.eu"))
    );
    assert_eq!(
        (fleet.key_prefix.as_str(), fleet.unsynced),
        ("ab", Unsynced::Allow)
    );
    let embedded = json!({"agents": {"a": {"daily_usd": 1}}});
    assert_eq!(
        Config::from_bytes(&encode_struct(&embedded)).unwrap().fleet,
        None
    );

    let cases = [
        (json!({"cluster": " "}), "fleet.cluster", "webdis"),
        (json!({}), "fleet", "cluster"),
        (
            json!({"cluster": "r", "sync_millis": 5000}),
            "fleet.sync_millis",
            "between 100 and 1000",
        ),
        (
            json!({"cluster": "r", "sync_millis": 10}),
            "fleet.sync_millis",
            "between 100 and 1000",
        ),
        (
            json!({"cluster": "r", "timeout_millis": 0}),
            "fleet.timeout_millis",
            "between",
        ),
        (
            json!({"cluster": "r", "gateway_id": "a b"}),
            "fleet.gateway_id",
            "letters",
        ),
        (
            json!({"cluster": "r", "key_prefix": "{x}"}),
            "fleet.key_prefix",
            "letters",
        ),
        (
            json!({"cluster": "r", "unsynced": "wait"}),
            "fleet.unsynced",
            "unknown variant",
        ),
        (
            json!({"cluster": "r", "sync": 1}),
            "fleet.sync",
            "unknown field",
        ),
    ];
    for (fleet, field, reason) in cases {
        let value = base(fleet);
        for bytes in [serde_json::to_vec(&value).unwrap(), encode_struct(&value)] {
            let error = Config::from_bytes(&bytes).unwrap_err();
            assert_eq!(error.field, field, "{value} -> {error}");
            assert!(error.reason.contains(reason), "{value} -> {error}");
        }
    }
}
