//! The adapter against a fake Envoy that fails each host call in turn: whichever call fails,
//! nothing panics, the failure is counted under the call's name, and the call goes on as its
//! failure mode says (never charged to another agent, never forwarded once refused).

use super::*;
use crate::wire;
use agent_budget_core::host::fake::FakeHost;
use agent_budget_core::host::{MetricKind, Versioned};
use agent_budget_core::ledger::{AccountKey, Ledger};
use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;

const CHAT_PATH: &str = "/v1/chat/completions";
const CHAT_RESPONSE: &[u8] = br#"{"id":"c1","object":"chat.completion","model":"gpt-4o","choices":[],"usage":{"prompt_tokens":1000,"completion_tokens":100,"total_tokens":1100}}"#;
/// gpt-4o at $2.50 / $10 per million tokens.
const CHAT_COST: u64 = 1000 * 5 / 2 + 100 * 10;
const STREAM_RESPONSE: &[u8] = b"data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"model\":\"gpt-4o\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"hi\"}}]}\n\ndata: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"model\":\"gpt-4o\",\"choices\":[],\"usage\":{\"prompt_tokens\":1000,\"completion_tokens\":100,\"total_tokens\":1100}}\n\ndata: [DONE]\n\n";

/// Envoy as the adapter sees it: the stream's header maps and buffers, properties, the local
/// reply sent, and a switch that makes the n-th ABI call fail.
#[derive(Default)]
struct FakeEnvoy {
    core: FakeHost,
    plugin_configuration: Vec<u8>,
    request_headers: RefCell<Vec<(String, String)>>,
    /// The serialized request map handed out instead of `request_headers`, when set: bytes
    /// the pairs cannot hold (a pair that is not UTF-8).
    request_map_bytes: Option<Vec<u8>>,
    response_headers: RefCell<Vec<(String, String)>>,
    request_body: RefCell<Vec<u8>>,
    response_body: RefCell<Vec<u8>>,
    properties: BTreeMap<Vec<String>, Vec<u8>>,
    reply: RefCell<Option<u32>>,
    /// Every ABI call so far, by name.
    calls: RefCell<Vec<&'static str>>,
    fail_at: Cell<Option<usize>>,
}

/// The host status the fake fails with (proxy-wasm's `InternalFailure`).
const FAILURE: HostError = HostError::Status(10);

impl FakeEnvoy {
    fn new(config: &str) -> FakeEnvoy {
        FakeEnvoy {
            core: FakeHost::new().at_unix_secs(1_760_000_000),
            plugin_configuration: config.as_bytes().to_vec(),
            ..FakeEnvoy::default()
        }
    }

    /// Records an ABI call; fails it if it is the one to fail.
    fn enter(&self, name: &'static str) -> Result<(), HostError> {
        let mut calls = self.calls.borrow_mut();
        let index = calls.len();
        calls.push(name);
        if self.fail_at.get() == Some(index) {
            Err(FAILURE)
        } else {
            Ok(())
        }
    }

    fn map(&self, map: Map) -> &RefCell<Vec<(String, String)>> {
        match map {
            Map::RequestHeaders => &self.request_headers,
            Map::ResponseHeaders | Map::CallResponseHeaders => &self.response_headers,
        }
    }

    fn metric(&self, name: &str) -> i64 {
        self.core.metric(name).unwrap_or(0)
    }
}

impl Host for FakeEnvoy {
    fn now_unix_nanos(&self) -> u64 {
        self.core.now_unix_nanos()
    }
    fn shared_get(&self, key: &str) -> Result<Option<Versioned>, HostError> {
        self.core.shared_get(key)
    }
    fn shared_set(&self, key: &str, value: &[u8], cas: u32) -> Result<(), HostError> {
        self.core.shared_set(key, value, cas)
    }
    fn dispatch_http(
        &self,
        cluster: &str,
        headers: &[(&str, &str)],
        body: &[u8],
        timeout_ms: u32,
    ) -> Result<u32, HostError> {
        self.core.dispatch_http(cluster, headers, body, timeout_ms)
    }
    fn define_metric(&self, kind: MetricKind, name: &str) -> Result<u32, HostError> {
        self.core.define_metric(kind, name)
    }
    fn increment_metric(&self, id: u32, delta: i64) -> Result<(), HostError> {
        self.core.increment_metric(id, delta)
    }
    fn record_metric(&self, id: u32, value: u64) -> Result<(), HostError> {
        self.core.record_metric(id, value)
    }
}

impl FakeEnvoy {
    /// A map in proxy-wasm's serialized form, as the wasm host receives it.
    fn header_map(&self, map: Map) -> Result<Vec<u8>, HostError> {
        self.enter("get_header_map")?;
        if let (Map::RequestHeaders, Some(bytes)) = (map, &self.request_map_bytes) {
            return Ok(bytes.clone());
        }
        let pairs = self.map(map).borrow();
        wire::serialize(pairs.iter().map(|(n, v)| (n.as_str(), v.as_str()))).ok_or(FAILURE)
    }
}

impl Abi for FakeEnvoy {
    /// As the wasm host visits a map: serialized, then read in place.
    fn visit_headers(&self, map: Map, visit: &mut dyn FnMut(&str, &str)) -> Result<(), HostError> {
        wire::visit_pairs(&self.header_map(map)?, visit);
        Ok(())
    }

    fn set_header(&self, map: Map, name: &str, value: &str) -> Result<(), HostError> {
        self.enter("set_header")?;
        let mut pairs = self.map(map).borrow_mut();
        pairs.retain(|(n, _)| n != name);
        pairs.push((name.to_string(), value.to_string()));
        Ok(())
    }

    fn remove_header(&self, map: Map, name: &str) -> Result<(), HostError> {
        self.enter("remove_header")?;
        self.map(map).borrow_mut().retain(|(n, _)| n != name);
        Ok(())
    }

    fn get_buffer(
        &self,
        buffer: Buffer,
        start: usize,
        max_size: usize,
    ) -> Result<Vec<u8>, HostError> {
        self.enter("get_buffer")?;
        let bytes = match buffer {
            Buffer::RequestBody => self.request_body.borrow().clone(),
            Buffer::ResponseBody => self.response_body.borrow().clone(),
            Buffer::PluginConfiguration => self.plugin_configuration.clone(),
            Buffer::CallResponseBody => self.response_body.borrow().clone(),
        };
        Ok(bytes.into_iter().skip(start).take(max_size).collect())
    }

    fn set_buffer(
        &self,
        buffer: Buffer,
        _start: usize,
        _size: usize,
        bytes: &[u8],
    ) -> Result<(), HostError> {
        self.enter("set_buffer")?;
        match buffer {
            Buffer::RequestBody => *self.request_body.borrow_mut() = bytes.to_vec(),
            Buffer::ResponseBody => *self.response_body.borrow_mut() = bytes.to_vec(),
            Buffer::PluginConfiguration | Buffer::CallResponseBody => return Err(FAILURE),
        }
        Ok(())
    }

    fn get_property(&self, path: &[&str]) -> Result<Option<Vec<u8>>, HostError> {
        self.enter("get_property")?;
        let path: Vec<String> = path.iter().map(|p| p.to_string()).collect();
        Ok(self.properties.get(&path).cloned())
    }

    fn set_property(&self, _path: &[&str], _value: &[u8]) -> Result<(), HostError> {
        self.enter("set_property")
    }

    fn send_local_reply(
        &self,
        status: u32,
        _headers: &[(String, String)],
        _body: &[u8],
    ) -> Result<(), HostError> {
        self.enter("send_local_reply")?;
        *self.reply.borrow_mut() = Some(status);
        Ok(())
    }

    fn set_tick_period(&self, _millis: u32) -> Result<(), HostError> {
        self.enter("set_tick_period")
    }
}

fn headers(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(n, v)| (n.to_string(), v.to_string()))
        .collect()
}

/// One call as Envoy plays it.
struct Scenario {
    name: &'static str,
    config: &'static str,
    request_headers: &'static [(&'static str, &'static str)],
    request_body: &'static [u8],
    response_body: &'static [u8],
    content_type: &'static str,
    properties: &'static [(&'static [&'static str], &'static str)],
}

/// What came of a call: each callback's flow, whether the provider was reached (the request
/// went on and no reply was sent), and the spend of each agent.
#[derive(Debug)]
struct Played {
    forwarded: bool,
    reply_attempted: bool,
    spent: BTreeMap<&'static str, u64>,
}

const AGENTS: [&str; 3] = ["bot", "other", "default"];

fn spent(envoy: &FakeEnvoy, root: &Root, agent: &str) -> u64 {
    let Some(worker) = &root.worker else {
        return 0;
    };
    let [day, _] = worker.current_periods((&envoy.core as &dyn Host).now_unix_secs());
    Ledger::new(&envoy.core)
        .read(&day, &AccountKey::Agent(agent.to_string()))
        .map(|account| account.spent)
        .unwrap_or(0)
}

/// Configures a root (its ABI calls never fail: those are tested apart), then plays the
/// scenario with the `fail_at`-th ABI call of the call failing.
fn play(scenario: &Scenario, fail_at: Option<usize>) -> (FakeEnvoy, Played, Vec<&'static str>) {
    let mut envoy = FakeEnvoy::new(scenario.config);
    for (path, value) in scenario.properties {
        envoy.properties.insert(
            path.iter().map(|p| p.to_string()).collect(),
            value.as_bytes().to_vec(),
        );
    }
    if let Err(error) = Config::from_bytes(scenario.config.as_bytes()) {
        panic!("{}: {error}", scenario.name);
    }
    let mut root = Root::default();
    assert!(root.on_configure(&envoy), "{}", scenario.name);
    envoy.calls.borrow_mut().clear();
    envoy.fail_at.set(fail_at);

    *envoy.request_headers.borrow_mut() = headers(scenario.request_headers);
    *envoy.request_body.borrow_mut() = scenario.request_body.to_vec();
    let mut call = root
        .new_http_call(Some, |_| None)
        .flatten()
        .expect("a gateway call");
    let mut forwarded = call.on_request_headers(&envoy, false) == Flow::Continue;
    let body_size = scenario.request_body.len();
    forwarded &= call.on_request_body(&envoy, body_size, true) == Flow::Continue;
    let reply_attempted = envoy.calls.borrow().contains(&"send_local_reply");
    if forwarded && !reply_attempted {
        *envoy.response_headers.borrow_mut() =
            headers(&[(":status", "200"), ("content-type", scenario.content_type)]);
        call.on_response_headers(&envoy, false);
        *envoy.response_body.borrow_mut() = scenario.response_body.to_vec();
        call.on_response_body(&envoy, scenario.response_body.len(), true);
    }
    call.on_log(&envoy);
    root.on_tick(&envoy);
    let spent = AGENTS
        .iter()
        .map(|agent| (*agent, spent(&envoy, &root, agent)))
        .collect();
    let calls = envoy.calls.borrow().clone();
    (
        envoy,
        Played {
            forwarded: forwarded && !reply_attempted,
            reply_attempted,
            spent,
        },
        calls,
    )
}

const BUDGETS: &str = r#"{"agents":{"bot":{"daily_usd":100},"other":{"daily_usd":100},
    "broke":{"daily_usd":0.000001,"action":"stop"}}}"#;

fn scenarios() -> Vec<Scenario> {
    let chat = &[
        (":path", CHAT_PATH),
        (":method", "POST"),
        ("x-agent-id", "bot"),
        ("accept-encoding", "gzip"),
    ];
    vec![
        Scenario {
            name: "charged chat",
            config: BUDGETS,
            request_headers: chat,
            request_body: br#"{"model":"gpt-4o","max_tokens":100,"messages":[]}"#,
            response_body: CHAT_RESPONSE,
            content_type: "application/json",
            properties: &[],
        },
        Scenario {
            name: "stream with the usage report cut",
            config: BUDGETS,
            request_headers: chat,
            request_body: br#"{"model":"gpt-4o","max_tokens":100,"stream":true,"messages":[]}"#,
            response_body: STREAM_RESPONSE,
            content_type: "text/event-stream",
            properties: &[],
        },
        Scenario {
            name: "refused",
            config: BUDGETS,
            request_headers: &[(":path", CHAT_PATH), ("x-agent-id", "broke")],
            request_body: br#"{"model":"gpt-4o","max_tokens":100,"messages":[]}"#,
            response_body: CHAT_RESPONSE,
            content_type: "application/json",
            properties: &[],
        },
        Scenario {
            name: "agent from a verified token",
            config: r#"{"identity":{"source":"jwt"},"agents":{"bot":{"daily_usd":100},
                "other":{"daily_usd":100}}}"#,
            // The forged headers name another agent: only the token counts.
            request_headers: &[
                (":path", CHAT_PATH),
                ("x-agent-id", "other"),
                ("x-agent-budget-claim-sub", "other"),
            ],
            request_body: br#"{"model":"gpt-4o","max_tokens":100,"messages":[]}"#,
            response_body: CHAT_RESPONSE,
            content_type: "application/json",
            properties: &[(
                &[
                    "metadata",
                    "filter_metadata",
                    "envoy.filters.http.jwt_authn",
                    "jwt_payload",
                    "sub",
                ],
                "bot",
            )],
        },
    ]
}

#[test]
fn every_scenario_plays_as_expected_when_nothing_fails() {
    for scenario in scenarios() {
        let (envoy, played, calls) = play(&scenario, None);
        let refused = scenario.name == "refused";
        assert_eq!(played.forwarded, !refused, "{}", scenario.name);
        assert_eq!(played.reply_attempted, refused, "{}", scenario.name);
        let want_bot = if refused { 0 } else { CHAT_COST };
        assert_eq!(played.spent["bot"], want_bot, "{}", scenario.name);
        assert_eq!(played.spent["other"], 0, "{}", scenario.name);
        assert!(calls.len() >= 3, "{}: {calls:?}", scenario.name);
        assert_eq!(
            envoy.metric("agent_budget_host_errors.reason.get_buffer"),
            0,
            "{}",
            scenario.name
        );
    }
    // The stream's usage report, asked for by the filter, was cut from what the client got.
    let (envoy, _, calls) = play(&scenarios()[1], None);
    assert_eq!(calls.iter().filter(|c| **c == "set_buffer").count(), 2);
    let client = envoy.response_body.borrow().clone();
    assert!(!String::from_utf8_lossy(&client).contains("\"usage\""));
}

#[test]
fn with_jwt_identity_no_claim_header_reaches_the_provider() {
    let jwt = scenarios()
        .into_iter()
        .find(|scenario| scenario.name == "agent from a verified token")
        .expect("the jwt scenario");
    let (envoy, played, _) = play(&jwt, None);
    assert!(played.forwarded);
    let sent = envoy.request_headers.borrow();
    assert!(
        sent.iter()
            .all(|(name, _)| !name.starts_with("x-agent-budget-claim-") && name != "x-agent-id"),
        "{sent:?}"
    );
    // In the header mode the name means nothing and the header is left alone.
    let header_mode = scenarios()
        .into_iter()
        .find(|scenario| scenario.name == "charged chat")
        .expect("the header scenario");
    let mut with_claim = header_mode.request_headers.to_vec();
    with_claim.push(("x-agent-budget-claim-sub", "bot"));
    let with_claim: &'static [(&str, &str)] = Box::leak(with_claim.into_boxed_slice());
    let (envoy, _, _) = play(
        &Scenario {
            request_headers: with_claim,
            ..header_mode
        },
        None,
    );
    assert!(envoy
        .request_headers
        .borrow()
        .iter()
        .any(|(name, _)| name == "x-agent-budget-claim-sub"));
}

#[test]
fn whichever_host_call_fails_nothing_panics_and_nothing_lands_on_another_agent() {
    for scenario in scenarios() {
        let (_, baseline, calls) = play(&scenario, None);
        for (index, failed) in calls.iter().enumerate() {
            let case = format!("{}: call #{index} ({failed}) fails", scenario.name);
            let (envoy, played, _) = play(&scenario, Some(index));
            // Counted under the call's name, once.
            assert_eq!(
                envoy.metric(&format!("agent_budget_host_errors.reason.{failed}")),
                1,
                "{case}"
            );
            // Nobody else pays, and the agent pays at most the call's cost.
            assert_eq!(played.spent["other"], 0, "{case}");
            assert_eq!(played.spent["default"], 0, "{case}");
            assert!(
                [0, CHAT_COST].contains(&played.spent["bot"]),
                "{case}: {played:?}"
            );
            // A call the filter refused never reaches the provider, even when the reply
            // cannot be sent.
            if played.reply_attempted {
                assert!(!played.forwarded, "{case}");
            }
            match *failed {
                // No request map: no identity, refused (the unidentified outcome).
                "get_header_map" if index == 0 => {
                    assert!(played.reply_attempted && !played.forwarded, "{case}");
                }
                // A forwarded call whose report is lost is unmetered, never charged twice;
                // one whose report arrives is charged in full.
                _ if baseline.forwarded => {}
                _ => assert!(!played.forwarded, "{case}"),
            }
        }
    }
}

#[test]
fn a_configuration_the_host_cannot_give_or_tick_is_refused() {
    // (the ABI call that fails, configured)
    let cases = [
        ("get_buffer", false),
        // The root id cannot be read: the plugin meters (the status page needs it said).
        ("get_property", true),
        ("set_tick_period", false),
    ];
    for (failing, configured) in cases {
        let envoy = FakeEnvoy::new(BUDGETS);
        let mut root = Root::default();
        assert!(root.on_configure(&envoy));
        let index = envoy
            .calls
            .borrow()
            .iter()
            .position(|call| *call == failing)
            .expect(failing);
        let envoy = FakeEnvoy::new(BUDGETS);
        envoy.fail_at.set(Some(index));
        let mut root = Root::default();
        assert_eq!(root.on_configure(&envoy), configured, "{failing}");
        assert_eq!(root.worker.is_some(), configured, "{failing}");
    }
}

#[test]
fn an_alert_reply_whose_headers_cannot_be_read_counts_as_a_failed_delivery() {
    let envoy = FakeEnvoy::new(BUDGETS);
    let mut root = Root::default();
    assert!(root.on_configure(&envoy));
    let at = envoy.calls.borrow().len();
    envoy.fail_at.set(Some(at));
    root.on_http_call_response(&envoy, 7, 0);
    root.on_tick(&envoy);
    assert_eq!(
        envoy.metric("agent_budget_host_errors.reason.get_header_map"),
        1
    );
}

#[test]
fn a_callout_reply_whose_body_cannot_be_read_is_counted_and_read_as_empty() {
    let envoy = FakeEnvoy::new(BUDGETS);
    let mut root = Root::default();
    assert!(root.on_configure(&envoy));
    *envoy.response_body.borrow_mut() = b"[1]".to_vec();
    // The headers read; the body does not.
    let at = envoy.calls.borrow().len() + 1;
    envoy.fail_at.set(Some(at));
    root.on_http_call_response(&envoy, 7, 3);
    root.on_tick(&envoy);
    assert_eq!(
        envoy.metric("agent_budget_host_errors.reason.get_buffer"),
        1
    );
}

/// Fleet mode names the gateway after Envoy's node id unless the config names it.
#[test]
fn the_node_id_names_the_fleet_gateway_unless_the_config_does() {
    let fleet = |gateway_id: &str| {
        format!(
            r#"{{"agents": {{"a": {{"daily_usd": 1}}}}, "fleet": {{"cluster": "webdis"{gateway_id}}}}}"#
        )
    };
    let node = vec!["xds".to_string(), "node".to_string(), "id".to_string()];
    let cases = [
        (
            "",
            Some(b"sidecar~10.0.0.1~pod".to_vec()),
            Some("sidecar_10.0.0.1_pod"),
        ),
        (
            r#", "gateway_id": "edge-1""#,
            Some(b"node-x".to_vec()),
            Some("edge-1"),
        ),
        ("", None, None),
    ];
    for (gateway_id, node_id, want) in cases {
        let mut envoy = FakeEnvoy::new(&fleet(gateway_id));
        if let Some(node_id) = node_id {
            envoy.properties.insert(node.clone(), node_id);
        }
        let mut root = Root::default();
        assert!(root.on_configure(&envoy), "{gateway_id}");
        let worker = root.worker.as_ref().expect("configured");
        let named = worker
            .config
            .fleet
            .as_ref()
            .and_then(|f| f.gateway_id.as_deref());
        assert_eq!(named, want, "{gateway_id}");
    }
}

#[test]
fn the_panic_report_names_the_agent_escaped_and_cut_short() {
    use std::sync::{Arc, Mutex};
    let reports = Arc::new(Mutex::new(Vec::new()));
    let previous = std::panic::take_hook();
    let sink = Arc::clone(&reports);
    std::panic::set_hook(Box::new(move |info| {
        if let Ok(mut reports) = sink.lock() {
            reports.push(panic_report(info, "the VM stops"));
        }
    }));
    let long: String = "x".repeat(100);
    let agents: [Option<&str>; 3] = [None, Some("bot\n\"forged\""), Some(&long)];
    for agent in agents {
        let agent: Option<Rc<str>> = agent.map(Rc::from);
        set_current_agent(agent.as_ref());
        let _ = std::panic::catch_unwind(|| panic!("boom"));
    }
    set_current_agent(None);
    std::panic::set_hook(previous);
    let reports = reports.lock().unwrap().clone();
    assert_eq!(reports.len(), 3);
    assert!(reports[0].contains("(call agent none): "), "{}", reports[0]);
    assert!(reports[0].contains("boom"), "{}", reports[0]);
    // Escaped: the newline and quotes cannot forge a log line.
    assert!(
        reports[1].contains(r#"(call agent "bot\n\"forged\"")"#),
        "{}",
        reports[1]
    );
    assert!(!reports[1].contains("bot\n"), "{}", reports[1]);
    let cut = format!("(call agent \"{}\")", "x".repeat(PANIC_AGENT_CHARS));
    assert!(reports[2].contains(&cut), "{}", reports[2]);
}

#[test]
fn a_call_naming_two_agents_is_refused_rather_than_charged_to_either() {
    let scenario = Scenario {
        name: "two agent headers",
        config: BUDGETS,
        request_headers: &[
            (":path", CHAT_PATH),
            ("x-agent-id", "bot"),
            ("x-agent-id", "other"),
        ],
        request_body: br#"{"model":"gpt-4o","max_tokens":100,"messages":[]}"#,
        response_body: CHAT_RESPONSE,
        content_type: "application/json",
        properties: &[],
    };
    let (envoy, played, _) = play(&scenario, None);
    assert!(played.reply_attempted && !played.forwarded);
    assert_eq!(*envoy.reply.borrow(), Some(400));
    assert!(played.spent.values().all(|spent| *spent == 0));
    assert_eq!(envoy.metric("agent_budget_unattributed.reason.invalid"), 1);
}

/// Visiting a serialized map (`wire::visit_pairs`, the proxy-wasm host's way) visits what
/// `wire::pairs` reads, in the map's order, skipping a pair that is not UTF-8; a map the
/// host cannot give visits nothing.
#[test]
fn a_serialized_header_map_is_visited_as_the_wire_parser_reads_it() {
    let pairs = [
        (":path", CHAT_PATH),
        ("x-agent-id", "bot"),
        ("x-~", "skipped"),
        ("x-agent-id", "other"),
        ("empty", ""),
    ];
    let mut bytes = wire::serialize(pairs).expect("small map");
    // `~` is in no length word: this makes that one pair's name invalid UTF-8.
    let marker = bytes.iter().position(|b| *b == b'~').expect("marker");
    *bytes.get_mut(marker).expect("marker") = 0xff;
    let envoy = FakeEnvoy {
        request_map_bytes: Some(bytes.clone()),
        ..FakeEnvoy::new(BUDGETS)
    };
    let expected = headers(&[
        (":path", CHAT_PATH),
        ("x-agent-id", "bot"),
        ("x-agent-id", "other"),
        ("empty", ""),
    ]);
    let parsed: Vec<(String, String)> = wire::pairs(&bytes)
        .map(|(n, v)| (n.to_string(), v.to_string()))
        .collect();
    assert_eq!(parsed, expected);
    let mut visited = Vec::new();
    let read = envoy.visit_headers(Map::RequestHeaders, &mut |n, v| {
        visited.push((n.to_string(), v.to_string()));
    });
    assert_eq!(read, Ok(()));
    assert_eq!(visited, expected);

    envoy.fail_at.set(Some(envoy.calls.borrow().len()));
    let mut visited = 0;
    let read = envoy.visit_headers(Map::RequestHeaders, &mut |_, _| visited += 1);
    assert_eq!(read, Err(FAILURE));
    assert_eq!(visited, 0);
}
