use super::*;
use crate::host::fake::FakeHost;
use crate::ledger::{Account, Ledger};
use crate::period::TimeZone;
use crate::top::Accumulator;
use serde_json::Value;

const NOW: i64 = 1_764_676_800; // 2025-12-02T12:00:00Z
const TOKEN: &str = "s3cret-token-0123456789";

fn worker(agents: Value, extra: Value) -> Worker {
    let mut config = serde_json::json!({ "agents": agents });
    if let (Some(config), Some(extra)) = (config.as_object_mut(), extra.as_object()) {
        config.extend(extra.clone());
    }
    Worker::new(Config::from_bytes(config.to_string().as_bytes()).unwrap())
}

fn shop() -> Worker {
    worker(
        serde_json::json!({
            "research-bot": {"daily_usd": 5, "monthly_usd": 100, "action": "stop"},
            "support-bot": {"daily_usd": 1, "action": "degrade",
                             "degrade_to": {"gpt-4o*": "gpt-4o-mini"}, "degrade_usd": 0.5},
            "copilot": {"monthly_usd": 2, "action": "alert"},
        }),
        serde_json::json!({}),
    )
}

fn day() -> Period {
    Period::containing(PeriodKind::Daily, TimeZone::UTC, NOW)
}

fn month() -> Period {
    Period::containing(PeriodKind::Monthly, TimeZone::UTC, NOW)
}

fn spend(host: &FakeHost, agent: &str, micro_usd: u64) {
    let ledger = Ledger::new(host);
    ledger.ensure_shards().unwrap();
    for period in [day(), month()] {
        ledger
            .add_spend(&period, &AccountKey::Agent(agent.to_string()), micro_usd)
            .unwrap();
    }
}

fn view<'a>(views: &'a [AgentView], name: &str) -> &'a AgentView {
    views.iter().find(|v| v.name == name).unwrap()
}

#[test]
fn collect_reads_spend_limits_and_top_lists() {
    let host = FakeHost::new().at_unix_secs(NOW);
    let worker = shop();
    worker.tick(&host);
    spend(&host, "research-bot", 1_250_000);
    spend(&host, "copilot", 300);
    let gathered = Accumulator::new();
    gathered.add("research-bot", &day(), Some("t-1"), Some("ana"), 1_000_000);
    gathered.add("research-bot", &day(), Some("t-2"), Some("ana"), 250_000);
    assert_eq!(gathered.publish(&host), vec![]);

    let views = collect(&host, &worker, NOW);
    assert_eq!(
        views.iter().map(|v| v.name.as_str()).collect::<Vec<_>>(),
        ["copilot", "research-bot", "support-bot"]
    );
    let research = view(&views, "research-bot");
    assert_eq!(research.state, State::Ok);
    assert_eq!(research.day.spent_micro_usd, 1_250_000);
    assert_eq!(research.day.budget_micro_usd, Some(5_000_000));
    assert_eq!(research.day.remaining_micro_usd, Some(3_750_000));
    assert_eq!(research.month.spent_micro_usd, 1_250_000);
    assert_eq!(research.month.remaining_micro_usd, Some(98_750_000));
    // The stand-in history has no burn: the projection is the spend so far.
    assert_eq!(research.burn_micro_usd_per_hour, 0);
    assert_eq!(research.day.projected_micro_usd, 1_250_000);
    assert_eq!(research.day.resets_in_secs, 12 * 3_600);
    assert_eq!(research.day.id, "2025-12-02");
    assert_eq!(research.month.resets_at, month().end);
    assert_eq!(
        research.top_tasks,
        vec![("t-1".to_string(), 1_000_000), ("t-2".to_string(), 250_000)]
    );
    assert_eq!(research.top_users, vec![("ana".to_string(), 1_250_000)]);
    assert_eq!(research.error, None);
    let copilot = view(&views, "copilot");
    assert_eq!(copilot.day.budget_micro_usd, None);
    assert_eq!(copilot.day.remaining_micro_usd, None);
    assert_eq!(copilot.month.remaining_micro_usd, Some(1_999_700));
    assert_eq!(view(&views, "support-bot").day.spent_micro_usd, 0);
}

#[test]
fn collect_takes_the_state_from_spend_and_alert_flags() {
    let host = FakeHost::new().at_unix_secs(NOW);
    let worker = shop();
    worker.tick(&host);
    // Past its daily budget but within the allowance: degraded.
    spend(&host, "support-bot", 1_100_000);
    // Under the limit, but the limit took effect (a call was refused because it no longer
    // fit): its flag is set, so the agent shows as stopped.
    spend(&host, "research-bot", 4_500_000);
    let flag = AccountKey::Alerted {
        budget: "research-bot".to_string(),
        level: "limit",
        mark: 5_000_000,
    };
    Ledger::new(&host)
        .update(&day(), &flag, |a| Account { spent: 1, ..a })
        .unwrap();
    // 80 % of its monthly budget: soft-alerted.
    spend(&host, "copilot", 1_600_000);
    let views = collect(&host, &worker, NOW);
    let support = view(&views, "support-bot");
    assert_eq!(
        (support.day.state, support.state),
        (State::Degraded, State::Degraded)
    );
    let research = view(&views, "research-bot");
    assert_eq!(research.day.state, State::Stopped);
    assert_eq!(research.month.state, State::Ok);
    assert_eq!(research.state, State::Stopped);
    assert_eq!(view(&views, "copilot").state, State::SoftAlerted);
}

#[test]
fn period_states() {
    let config = |action: &str| {
        let mut agent = serde_json::json!({"daily_usd": 1, "action": action});
        if action == "degrade" {
            agent["degrade_to"] = serde_json::json!({"a": "b"});
            agent["degrade_usd"] = serde_json::json!(0.5);
        }
        let text = serde_json::json!({"agents": {"x": agent}}).to_string();
        Config::from_bytes(text.as_bytes()).unwrap()
    };
    let cases: &[(&str, u64, Option<&str>, State)] = &[
        ("stop", 0, None, State::Ok),
        ("stop", 799_999, None, State::Ok),
        ("stop", 800_000, None, State::SoftAlerted),
        ("stop", 10, Some("soft"), State::SoftAlerted),
        ("stop", 999_999, Some("limit"), State::Stopped),
        ("stop", 1_000_000, None, State::Stopped),
        ("degrade", 1_000_000, None, State::Degraded),
        ("degrade", 1_400_000, Some("limit"), State::Degraded),
        ("degrade", 1_500_000, None, State::Stopped),
        (
            "degrade",
            1_200_000,
            Some("degrade_exhausted"),
            State::Stopped,
        ),
        ("alert", 900_000, None, State::SoftAlerted),
        ("alert", 1_000_000, None, State::Overage),
        ("alert", 5_000_000, None, State::Overage),
    ];
    for (action, spent, flag, want) in cases {
        let config = config(action);
        let budget = config.budget("x").unwrap();
        let mut flags = |_: &Period, crossing: Crossing| Some(crossing.name()) == *flag;
        assert_eq!(
            period_state(budget, &day(), *spent, &mut flags),
            *want,
            "{action} {spent} {flag:?}"
        );
        // A period without a budget is always ok.
        assert_eq!(
            period_state(budget, &month(), *spent, &mut flags),
            State::Ok
        );
    }
    let names: Vec<&str> = [
        State::Ok,
        State::SoftAlerted,
        State::Degraded,
        State::Stopped,
        State::Overage,
    ]
    .iter()
    .map(|s| s.name())
    .collect();
    assert_eq!(
        names,
        ["ok", "soft-alerted", "degraded", "stopped", "overage"]
    );
}

fn sample(name: &str, today: u64, month: u64) -> AgentView {
    let period = |kind, spent| PeriodView {
        kind,
        id: "p".to_string(),
        spent_micro_usd: spent,
        reserved_micro_usd: 0,
        budget_micro_usd: Some(1_000_000),
        remaining_micro_usd: Some(1_000_000u64.saturating_sub(spent)),
        projected_micro_usd: spent,
        state: State::Ok,
        resets_at: NOW + 3_600,
        resets_in_secs: 3_600,
    };
    AgentView {
        name: name.to_string(),
        action: LimitAction::Stop,
        state: State::Ok,
        day: period(PeriodKind::Daily, today),
        month: period(PeriodKind::Monthly, month),
        burn_micro_usd_per_hour: 0,
        baseline_micro_usd_per_hour: None,
        top_tasks: Vec::new(),
        top_users: Vec::new(),
        error: None,
    }
}

#[test]
fn sorts_by_spend_or_name() {
    let mut views = vec![
        sample("b", 10, 10),
        sample("a", 30, 30),
        sample("d", 10, 99),
        sample("c", 0, 0),
    ];
    sort(&mut views, Sort::Spend);
    let names = |views: &[AgentView]| views.iter().map(|v| v.name.clone()).collect::<Vec<_>>();
    assert_eq!(names(&views), ["a", "d", "b", "c"]);
    sort(&mut views, Sort::Name);
    assert_eq!(names(&views), ["a", "b", "c", "d"]);
    for (query, want) in [
        ("", Sort::Spend),
        ("sort=name", Sort::Name),
        ("x=1&sort=name", Sort::Name),
        ("sort=spend", Sort::Spend),
        ("sort=%3Cscript", Sort::Spend),
    ] {
        assert_eq!(Sort::from_query(query), want, "{query}");
    }
}

#[test]
fn html_escapes_every_value_and_links_the_sort_headers() {
    let mut row = sample("bot", 1_234_567, 2_000_000);
    row.top_tasks = vec![("<script>alert('x')</script>&\"".to_string(), 5)];
    row.top_users = vec![("u<1>".to_string(), 1_234_567)];
    row.error = Some("shard <7> corrupt".to_string());
    let html = render_html(&[row], Sort::Spend, NOW);
    assert!(!html.contains("<script"), "{html}");
    assert!(html.contains("&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;&amp;&quot;"));
    assert!(html.contains("u&lt;1&gt; <span>$1.23</span>"));
    assert!(html.contains("shard &lt;7&gt; corrupt"));
    assert!(html.contains("<meta http-equiv=\"refresh\" content=\"5\">"));
    // No external assets: no stylesheet links, scripts or images.
    for external in ["<link", "<script", "<img", "src=", "http://", "https://"] {
        assert!(!html.contains(external), "{external}");
    }
    // Sorted by spend: its header is marked, the other one links.
    assert!(html.contains("<a href=\"?sort=name\">Agent</a>"));
    assert!(html.contains("Spent today &#9662;"));
    assert!(html.contains("data-agent=\"bot\""));
    assert!(html.contains("<span class=\"spent spent-today\">$1.23</span> <span class=\"of\">of $1.00</span><div class=\"sub\">$0.00 left</div><div class=\"sub\">projected $1.23 &middot; resets in 1h 0m</div>"));
    assert!(html.contains("<time>2025-12-02T12:00:00Z</time>"));
    let by_name = render_html(&[], Sort::Name, NOW);
    assert!(by_name.contains("<a href=\"?sort=spend\">Spent today</a>"));
    assert_eq!(escape_html("a&b<c>\"d'"), "a&amp;b&lt;c&gt;&quot;d&#39;");
}

#[test]
fn money_and_durations_read_well() {
    for (micro, text) in [
        (0, "$0.00"),
        (1_234_567, "$1.23"),
        (10_000, "$0.01"),
        (100_000, "$0.10"),
        (38_000, "$0.038"),
        (999_999, "$0.999999"),
        (1_000_000, "$1.00"),
        (9_999, "$0.009999"),
        (3_500, "$0.0035"),
        (5, "$0.000005"),
    ] {
        assert_eq!(usd(micro), text);
    }
    for (secs, text) in [
        (45, "45s"),
        (125, "2m 5s"),
        (3 * 3_600 + 720, "3h 12m"),
        (4 * 86_400 + 7_200, "4d 2h"),
    ] {
        assert_eq!(duration(secs), text);
    }
}

#[test]
fn json_has_the_documented_shape() {
    let host = FakeHost::new().at_unix_secs(NOW);
    let worker = shop();
    worker.tick(&host);
    spend(&host, "copilot", 2_500_000);
    let gathered = Accumulator::new();
    gathered.add("copilot", &day(), Some("t<1>"), Some("bo"), 2_500_000);
    assert_eq!(gathered.publish(&host), vec![]);
    let mut views = collect(&host, &worker, NOW);
    sort(&mut views, Sort::Spend);
    let page: Value = serde_json::from_str(&render_json(&views, Sort::Spend, NOW)).unwrap();
    assert_eq!(page["generated_at"], "2025-12-02T12:00:00Z");
    assert_eq!(page["generated_at_unix"], NOW);
    assert_eq!(page["sort"], "spend");
    let agents = page["agents"].as_array().unwrap();
    assert_eq!(agents.len(), 3);
    let copilot = &agents[0];
    assert_eq!(copilot["agent"], "copilot");
    assert_eq!(copilot["action"], "alert");
    assert_eq!(copilot["state"], "overage");
    assert_eq!(copilot["burn_micro_usd_per_hour"], 0);
    assert_eq!(copilot["burn_usd_per_hour"], 0.0);
    assert_eq!(copilot["baseline_micro_usd_per_hour"], Value::Null);
    assert_eq!(copilot["error"], Value::Null);
    let month = &copilot["month"];
    assert_eq!(month["id"], "2025-12");
    assert_eq!(month["state"], "overage");
    assert_eq!(month["spent_micro_usd"], 2_500_000);
    assert_eq!(month["spent_usd"], 2.5);
    assert_eq!(month["budget_micro_usd"], 2_000_000);
    assert_eq!(month["budget_usd"], 2.0);
    assert_eq!(month["remaining_micro_usd"], 0);
    assert_eq!(month["projected_micro_usd"], 2_500_000);
    assert_eq!(month["reserved_micro_usd"], 0);
    assert_eq!(month["resets_at"], "2026-01-01T00:00:00Z");
    assert_eq!(month["resets_in_secs"], month_end_in());
    let day = &copilot["day"];
    assert_eq!(day["budget_micro_usd"], Value::Null);
    assert_eq!(day["remaining_usd"], Value::Null);
    assert_eq!(day["state"], "ok");
    assert_eq!(day["resets_in_secs"], 43_200);
    assert_eq!(
        copilot["top_tasks"],
        serde_json::json!([{"task": "t<1>", "spent_micro_usd": 2_500_000, "spent_usd": 2.5}])
    );
    assert_eq!(
        copilot["top_users"],
        serde_json::json!([{"user": "bo", "spent_micro_usd": 2_500_000, "spent_usd": 2.5}])
    );
    let keys: Vec<&str> = copilot
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(
        keys,
        [
            "agent",
            "action",
            "state",
            "day",
            "month",
            "burn_micro_usd_per_hour",
            "burn_usd_per_hour",
            "baseline_micro_usd_per_hour",
            "top_tasks",
            "top_users",
            "error"
        ]
    );
}

fn month_end_in() -> i64 {
    month().end - NOW
}

#[test]
fn bearer_tokens_are_checked_exactly() {
    let good = format!("Bearer {TOKEN}");
    assert!(authorized(TOKEN, Some(&good)));
    assert!(authorized(TOKEN, Some(&format!("bearer  {TOKEN} "))));
    for bad in [
        None,
        Some(""),
        Some(TOKEN),
        Some("Bearer"),
        Some("Basic czNjcmV0"),
        Some("Bearer s3cret-token-012345678"),
        Some("Bearer s3cret-token-01234567890"),
        Some("Bearer S3cret-token-0123456789"),
    ] {
        assert!(!authorized(TOKEN, bad), "{bad:?}");
    }
}

fn ask<'a>(
    worker: &Worker,
    host: &FakeHost,
    path: &'a str,
    auth: Option<&'a str>,
) -> Option<LocalReply> {
    respond(
        host,
        worker,
        &StatusRequest {
            method: "GET",
            path,
            authorization: auth,
        },
    )
}

#[test]
fn a_token_guards_both_pages_and_nothing_else_answers() {
    let host = FakeHost::new().at_unix_secs(NOW);
    let worker = worker(
        serde_json::json!({"bot": {"daily_usd": 1}}),
        serde_json::json!({"status_page": {"bearer_token": TOKEN}}),
    );
    worker.tick(&host);
    spend(&host, "bot", 42);
    let good = format!("Bearer {TOKEN}");
    for path in ["/budgets", "/budgets.json", "/budgets?sort=name"] {
        for auth in [None, Some("Bearer wrong-token-0123456789")] {
            let reply = ask(&worker, &host, path, auth).unwrap();
            assert_eq!(reply.status, 401);
            assert!(reply.body.is_empty());
            assert_eq!(
                reply.headers,
                vec![("www-authenticate".to_string(), "Bearer".to_string())]
            );
        }
        let reply = ask(&worker, &host, path, Some(&good)).unwrap();
        assert_eq!(reply.status, 200, "{path}");
        assert!(String::from_utf8(reply.body).unwrap().contains("bot"));
    }
    let json = ask(&worker, &host, "/budgets.json", Some(&good)).unwrap();
    assert!(json
        .headers
        .contains(&("content-type".to_string(), "application/json".to_string())));
    let page: Value = serde_json::from_slice(&json.body).unwrap();
    assert_eq!(page["agents"][0]["day"]["spent_micro_usd"], 42);
    let html = ask(&worker, &host, "/budgets", Some(&good)).unwrap();
    assert!(html.headers.contains(&(
        "content-type".to_string(),
        "text/html; charset=utf-8".to_string()
    )));
    for other in ["/", "/budgets/", "/budgets.jsonx", "/stats"] {
        assert_eq!(ask(&worker, &host, other, None), None, "{other}");
    }
    let post = respond(
        &host,
        &worker,
        &StatusRequest {
            method: "POST",
            path: "/budgets",
            authorization: Some(&good),
        },
    )
    .unwrap();
    assert_eq!(post.status, 405);
}

#[test]
fn without_a_token_the_pages_are_open() {
    let host = FakeHost::new().at_unix_secs(NOW);
    let worker = shop();
    worker.tick(&host);
    spend(&host, "support-bot", 10);
    spend(&host, "research-bot", 20);
    let reply = ask(&worker, &host, "/budgets.json?sort=spend", None).unwrap();
    assert_eq!(reply.status, 200);
    let page: Value = serde_json::from_slice(&reply.body).unwrap();
    let order: Vec<&str> = page["agents"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["agent"].as_str().unwrap())
        .collect();
    assert_eq!(order, ["research-bot", "support-bot", "copilot"]);
    let reply = ask(&worker, &host, "/budgets.json?sort=name", None).unwrap();
    let page: Value = serde_json::from_slice(&reply.body).unwrap();
    assert_eq!(page["sort"], "name");
    assert_eq!(page["agents"][0]["agent"], "copilot");
}
