use super::*;

fn config(missing: &str, unknown: &str) -> Config {
    let json = format!(
        r#"{{"missing_agent":"{missing}","unknown_agent":"{unknown}","agents":{{"bot":{{"daily_usd":1}},"default":{{"daily_usd":1}}}}}}"#
    );
    Config::from_bytes(json.as_bytes()).unwrap()
}

#[test]
fn identifies_by_policy() {
    let reject = config("reject", "reject");
    let lenient = config("default", "default");
    let cases: [(&Config, Option<&str>, Result<&str, &str>); 10] = [
        (&reject, Some("bot"), Ok("bot")),
        (&reject, Some(" bot "), Ok("bot")),
        (&reject, None, Err("missing")),
        (&reject, Some(""), Err("missing")),
        (&reject, Some("stranger"), Err("unknown")),
        (&reject, Some("bad id!"), Err("invalid")),
        (&lenient, None, Ok("default")),
        (&lenient, Some("stranger"), Ok("default")),
        (&lenient, Some("bad id!"), Ok("default")),
        (&lenient, Some("bot"), Ok("bot")),
    ];
    for (config, agent, want) in cases {
        let got = identify(config, agent, None, None);
        let got = got
            .as_ref()
            .map(|i| i.budget.as_str())
            .map_err(|u| u.reason());
        assert_eq!(got, want, "{agent:?}");
    }
    let stranger = identify(&lenient, Some("stranger"), Some("t-1"), Some("u\n2")).unwrap();
    assert_eq!(stranger.agent, "stranger");
    assert_eq!(stranger.task.as_deref(), Some("t-1"));
    assert_eq!(stranger.user.as_deref(), Some("u_2"));
}

#[test]
fn sanitizes_attributes() {
    assert_eq!(
        sanitize_attribute(Some(&"é".repeat(300))).unwrap().len(),
        128
    );
    assert_eq!(sanitize_attribute(Some("  ")), None);
    // Control bytes cannot start a new log line or record field.
    for (raw, clean) in [("t\nu", "t_u"), ("t\r\nx: y", "t__x:_y"), ("a\0b", "a_b")] {
        assert_eq!(
            sanitize_attribute(Some(raw)).as_deref(),
            Some(clean),
            "{raw:?}"
        );
    }
}

#[test]
fn agent_ids_with_control_bytes_are_invalid() {
    let config = config("reject", "reject");
    for agent in ["a\nb", "a\rb", "a\0b", "bot\n"] {
        let identified = identify(&config, Some(agent), None, None);
        // A trailing newline is trimmed whitespace: the id is then the configured `bot`.
        if agent == "bot\n" {
            assert_eq!(identified.map(|i| i.budget), Ok("bot".to_string()));
        } else {
            assert_eq!(identified, Err(Unattributed::Invalid), "{agent:?}");
        }
    }
}

const ALPHA_DIGEST: &str = "2179e632e89277f18aa600491b68ad55121fd6caa045e047fdeb426088a5a5f1";

fn credentials(
    authorization: Option<&str>,
    x_api_key: Option<&str>,
    x_goog_api_key: Option<&str>,
) -> Credentials {
    Credentials {
        authorization: authorization.map(str::to_string),
        x_api_key: x_api_key.map(str::to_string),
        x_goog_api_key: x_goog_api_key.map(str::to_string),
    }
}

#[test]
fn api_key_names_the_agent() {
    let json = format!(
        r#"{{"identity":{{"source":"api_key","api_keys":{{"{ALPHA_DIGEST}":"alpha"}}}},"agents":{{"alpha":{{"daily_usd":1}}}}}}"#
    );
    let config = Config::from_bytes(json.as_bytes()).unwrap();
    let crate::config::IdentitySource::ApiKey(keys) = &config.identity else {
        panic!("api_key source expected");
    };
    let cases: [(Credentials, Option<&str>); 10] = [
        (
            credentials(Some("Bearer sk-alpha"), None, None),
            Some("alpha"),
        ),
        (
            credentials(Some("bearer  sk-alpha "), None, None),
            Some("alpha"),
        ),
        (credentials(None, Some("sk-alpha"), None), Some("alpha")),
        (credentials(None, None, Some("sk-alpha")), Some("alpha")),
        (credentials(Some("Bearer sk-other"), None, None), None),
        (credentials(Some("Basic sk-alpha"), None, None), None),
        (credentials(Some("sk-alpha"), None, None), None),
        (
            credentials(Some("Bearer "), Some("sk-alpha"), None),
            Some("alpha"),
        ),
        // The bearer token is the key when both are sent.
        (
            credentials(Some("Bearer sk-other"), Some("sk-alpha"), None),
            None,
        ),
        (credentials(None, None, None), None),
    ];
    for (given, want) in cases {
        assert_eq!(api_key_agent(keys, &given), want, "{given:?}");
    }
    let debug = format!("{:?}", credentials(Some("Bearer sk-alpha"), None, None));
    assert!(!debug.contains("sk-alpha"), "{debug}");
}
