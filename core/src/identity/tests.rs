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
}
