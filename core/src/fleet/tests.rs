use super::*;
use crate::config::LimitAction;
use crate::host::fake::FakeHost;
use crate::ledger::AccountKey;
use crate::period::PeriodKind;
use crate::root::Worker;
use std::collections::BTreeMap;

const NOW: i64 = 1_795_900_000; // 2026-11-28

const CONFIG: &str = r#"{"agents":{"bot":{"daily_usd":1,"monthly_usd":10,"task_daily_usd":0.5},
  "soft":{"daily_usd":1,"action":"alert"}},
  "fleet":{"cluster":"webdis","gateway_id":"GW"}}"#;

/// A hash's fields for one bucket: gateway field → micro-USD.
type FieldValues = BTreeMap<String, u64>;

/// Redis with the script's semantics, fed the webdis request bodies the gateways send.
#[derive(Default)]
struct FakeRedis {
    hashes: BTreeMap<String, BTreeMap<String, u64>>,
    /// Claimed alerts: key → (claimant field, expire at).
    claims: BTreeMap<String, (String, i64)>,
    /// History hashes: key → (began, bucket → field → micro-USD).
    histories: BTreeMap<String, (i64, BTreeMap<i64, FieldValues>)>,
    /// History calls run, with the `from` bucket each asked for.
    history_froms: Vec<i64>,
}

fn decode(part: &str) -> String {
    let bytes = part.as_bytes();
    let mut out = Vec::new();
    let mut at = 0;
    while at < bytes.len() {
        if bytes[at] == b'%' {
            out.push(u8::from_str_radix(&part[at + 1..at + 3], 16).unwrap());
            at += 3;
        } else {
            out.push(bytes[at]);
            at += 1;
        }
    }
    String::from_utf8(out).unwrap()
}

impl FakeRedis {
    /// Runs one `EVAL/...` body and returns webdis's JSON reply.
    fn run(&mut self, body: &[u8]) -> Vec<u8> {
        let text = std::str::from_utf8(body).unwrap();
        let parts: Vec<String> = text.split('/').map(decode).collect();
        assert_eq!(parts[0], "EVAL");
        if parts[1] == CLAIM_SCRIPT {
            return self.claim(&parts);
        }
        if parts[1] == HISTORY_SCRIPT {
            return self.history(&parts);
        }
        assert_eq!(parts[1], SCRIPT);
        let n: usize = parts[2].parse().unwrap();
        let keys = &parts[3..3 + n];
        let field = &parts[3 + n];
        let args = &parts[4 + n..];
        assert_eq!(args.len(), 2 * n);
        let mut out = Vec::new();
        for (i, key) in keys.iter().enumerate() {
            let own: u64 = args[2 * i].parse().unwrap();
            let expire_at: i64 = args[2 * i + 1].parse().unwrap();
            assert!(expire_at > NOW);
            let hash = self.hashes.entry(key.clone()).or_default();
            let mine = hash.get(field).copied().unwrap_or(0);
            if own > mine {
                hash.insert(field.clone(), own);
            }
            out.push(hash.values().sum::<u64>());
            out.push(mine.max(own));
        }
        serde_json::to_vec(&serde_json::json!({ "EVAL": out })).unwrap()
    }

    fn claim(&mut self, parts: &[String]) -> Vec<u8> {
        assert_eq!(parts[2], "1");
        let (key, field, expire_at) = (&parts[3], &parts[4], parts[5].parse::<i64>().unwrap());
        assert!(expire_at > NOW);
        let holder = self
            .claims
            .entry(key.clone())
            .or_insert_with(|| (field.clone(), expire_at));
        let won = u64::from(holder.0 == *field);
        serde_json::to_vec(&serde_json::json!({ "EVAL": won })).unwrap()
    }

    fn history(&mut self, parts: &[String]) -> Vec<u8> {
        assert_eq!(parts[2], "1");
        let key = parts[3].clone();
        let field = parts[4].clone();
        let n = |i: usize| parts[i].parse::<i64>().unwrap();
        let (expire_at, began, from, oldest) = (n(5), n(6), n(7), n(8));
        assert!(expire_at > NOW && from >= oldest);
        self.history_froms.push(from);
        let (stored_began, buckets) = self
            .histories
            .entry(key)
            .or_insert_with(|| (began, BTreeMap::new()));
        *stored_began = (*stored_began).min(began);
        for pair in parts[9..].chunks(2) {
            let own: u64 = pair[1].parse().unwrap();
            let slot = buckets
                .entry(pair[0].parse().unwrap())
                .or_default()
                .entry(field.clone())
                .or_insert(0);
            *slot = (*slot).max(own);
        }
        buckets.retain(|b, _| *b >= oldest);
        let mut out = vec![*stored_began as u64];
        for (bucket, fields) in buckets.range(from..) {
            out.push(*bucket as u64);
            out.push(fields.values().sum());
            out.push(fields.get(&field).copied().unwrap_or(0));
        }
        serde_json::to_vec(&serde_json::json!({ "EVAL": out })).unwrap()
    }

    /// The fleet's spend in a history bucket of `bot`.
    fn bucket_total(&self, bucket: i64) -> u64 {
        self.histories
            .values()
            .filter_map(|(_, buckets)| buckets.get(&bucket))
            .map(|fields| fields.values().sum::<u64>())
            .sum()
    }

    fn total(&self, key: &str) -> u64 {
        self.hashes.get(key).map_or(0, |h| h.values().sum())
    }
}

/// Answers a call's body with a status and a reply body.
type Webdis<'a> = dyn FnMut(&[u8]) -> (u32, Vec<u8>) + 'a;
type Pairs = Result<Vec<(u64, u64)>, SyncError>;

/// One gateway: an Envoy's shared data with one worker, and the calls it has answered.
struct Gateway {
    host: FakeHost,
    worker: Worker,
    answered: usize,
    /// Alert webhook calls answered.
    hooks: usize,
}

impl Gateway {
    fn start() -> Gateway {
        Gateway::start_at(NOW)
    }

    /// A gateway process started at `secs` (which names its field in Redis).
    fn start_at(secs: i64) -> Gateway {
        Gateway::start_with(CONFIG, secs)
    }

    fn start_with(config: &str, secs: i64) -> Gateway {
        let host = FakeHost::new().at_unix_secs(secs);
        let worker = Worker::new(Config::from_bytes(config.as_bytes()).unwrap());
        worker.tick(&host); // the configure-time run: prepares, sends nothing
        Gateway {
            host,
            worker,
            answered: 0,
            hooks: 0,
        }
    }

    fn charge(&self, key: &AccountKey, micro_usd: u64) {
        let ledger = Ledger::new(&self.host);
        for period in self.periods() {
            if matches!(key, AccountKey::Agent(_)) || period.kind == PeriodKind::Daily {
                ledger.add_spend(&period, key, micro_usd).unwrap();
            }
        }
    }

    fn periods(&self) -> [Period; 2] {
        self.worker.current_periods(self.host_secs())
    }

    fn host_secs(&self) -> i64 {
        let host: &dyn Host = &self.host;
        host.now_unix_secs()
    }

    fn account(&self, key: &AccountKey) -> Account {
        let day = self.worker.current_periods(NOW)[0].clone();
        Ledger::new(&self.host).read(&day, key).unwrap()
    }

    /// Ticks, and answers the calls sent since the last time with `reply`.
    /// Ticks, and answers the calls sent since the last time (and those the replies send)
    /// with `reply`; webhook calls get a 200 and are counted in `hooks`.
    fn sync(&mut self, reply: &mut Webdis) -> usize {
        self.worker.tick(&self.host);
        let start = self.answered;
        loop {
            let sent = self.host.dispatched();
            let Some(call) = sent.get(self.answered) else {
                break;
            };
            self.answered += 1;
            if call.cluster == "hook" {
                self.hooks += 1;
                self.worker.on_http_reply(&self.host, call.token, 200, b"");
                continue;
            }
            assert_eq!(call.cluster, "webdis");
            let (status, body) = reply(&call.body);
            self.worker
                .on_http_reply(&self.host, call.token, status, &body);
        }
        self.answered - start
    }

    fn sync_with(&mut self, redis: &mut FakeRedis) -> usize {
        self.sync(&mut |body| (200, redis.run(body)))
    }

    fn metric(&self, name: &str) -> Option<i64> {
        self.worker.metrics.flush(&self.host);
        self.host.metric(name)
    }
}

fn bot() -> AccountKey {
    AccountKey::Agent("bot".into())
}

fn task() -> AccountKey {
    AccountKey::Task {
        budget: "bot".into(),
        task: "t1".into(),
    }
}

const BOT_DAY: &str = "agent_budget:{bot}:agent:bot:2026-11-28";
const BOT_MONTH: &str = "agent_budget:{bot}:agent:bot:2026-11";
const TASK_DAY: &str = "agent_budget:{bot}:task:bot/t1:2026-11-28";

#[test]
fn spend_of_two_gateways_adds_up_in_redis_and_in_both_ledgers() {
    let mut redis = FakeRedis::default();
    let (mut a, mut b) = (Gateway::start(), Gateway::start());
    a.charge(&bot(), 300);
    a.charge(&task(), 300);
    b.charge(&bot(), 200);
    // Per configured budget and tick, one spend call and one history call.
    assert_eq!(a.sync_with(&mut redis), 4);
    assert_eq!(b.sync_with(&mut redis), 4);
    a.sync_with(&mut redis);
    assert_eq!(redis.total(BOT_DAY), 500);
    assert_eq!(redis.total(BOT_MONTH), 500);
    assert_eq!(redis.total(TASK_DAY), 300);
    let cases = [
        (&a, bot(), 500, 300),
        (&b, bot(), 500, 200),
        (&a, task(), 300, 300),
        // B never saw the task: it learns of it once it charges it (see the README).
        (&b, task(), 0, 0),
    ];
    for (gateway, key, spent, own) in cases {
        let account = gateway.account(&key);
        assert_eq!((account.spent, account.own), (spent, own), "{key:?}");
    }
    let month = a.periods()[1].clone();
    let monthly = Ledger::new(&a.host).read(&month, &bot()).unwrap();
    assert_eq!(monthly.spent, 500);
}

#[test]
fn a_retried_or_duplicated_push_is_applied_once() {
    let mut redis = FakeRedis::default();
    let mut a = Gateway::start();
    a.charge(&bot(), 400);
    // Every body reaches Redis three times (a timeout and two retries), replies get lost.
    a.sync(&mut |body| {
        redis.run(body);
        redis.run(body);
        let reply = redis.run(body);
        (200, reply)
    });
    assert_eq!(redis.total(BOT_DAY), 400);
    a.charge(&bot(), 100);
    a.sync_with(&mut redis);
    a.sync_with(&mut redis);
    assert_eq!(redis.total(BOT_DAY), 500);
    assert_eq!(a.account(&bot()).spent, 500);
}

#[test]
fn an_outage_is_counted_enforced_locally_and_reconciled_exactly() {
    let mut redis = FakeRedis::default();
    let (mut a, mut b) = (Gateway::start(), Gateway::start());
    b.charge(&bot(), 100);
    b.sync_with(&mut redis);
    a.sync_with(&mut redis);
    assert_eq!(a.account(&bot()).spent, 100);
    let outages: [(u32, &[u8], &str); 5] = [
        (503, b"", "status"),
        (0, b"", "timeout"),
        (504, b"upstream request timeout", "timeout"),
        (200, br#"{"EVAL":[false,"ERR busy"]}"#, "redis"),
        (200, b"<html>", "bad_reply"),
    ];
    for (status, body, reason) in outages {
        a.charge(&bot(), 10);
        let name = format!("agent_budget_fleet_sync_errors.reason.{reason}");
        let counted = a.metric(&name).unwrap_or(0);
        a.sync(&mut |_| (status, body.to_vec()));
        // Two failed calls (spend, history) per budget.
        assert_eq!(a.metric(&name), Some(counted + 4), "{name}");
        // Still enforcing on what it knew plus its own new spend.
        let account = a.account(&bot());
        assert_eq!(account.spent, 100 + account.own);
    }
    assert_eq!(a.account(&bot()).own, 50);
    assert_eq!(redis.total(BOT_DAY), 100);
    a.sync_with(&mut redis);
    assert_eq!(redis.total(BOT_DAY), 150);
    assert_eq!(a.account(&bot()).spent, 150);
    b.sync_with(&mut redis);
    assert_eq!(b.account(&bot()).spent, 150);
}

#[test]
fn a_restarted_gateway_loads_the_fleet_spend_before_it_enforces() {
    let mut redis = FakeRedis::default();
    let mut before = Gateway::start();
    before.charge(&bot(), 700);
    before.charge(&task(), 450);
    before.sync_with(&mut redis);
    before.sync_with(&mut redis);
    assert!(!before
        .worker
        .refuses_unsynced(&before.host, LimitAction::Stop));

    // The same gateway after a restart: empty shared data, a new field in Redis.
    let mut after = Gateway::start_at(NOW + 1);
    assert!(after
        .worker
        .refuses_unsynced(&after.host, LimitAction::Stop));
    assert!(!after
        .worker
        .refuses_unsynced(&after.host, LimitAction::Alert));
    // A load that fails keeps it refusing.
    after.sync(&mut |_| (503, Vec::new()));
    assert!(after
        .worker
        .refuses_unsynced(&after.host, LimitAction::Stop));
    after.sync_with(&mut redis);
    assert!(!after
        .worker
        .refuses_unsynced(&after.host, LimitAction::Stop));
    let loaded = after.account(&bot());
    assert_eq!((loaded.spent, loaded.own), (700, 0));
    // Its first charge of the task makes it push and pull the task too.
    after.charge(&task(), 10);
    after.sync_with(&mut redis);
    assert_eq!(after.account(&task()).spent, 460);
    assert_eq!(redis.total(BOT_DAY), 700);
    assert_eq!(redis.total(TASK_DAY), 460);
    assert_eq!(
        redis.hashes[BOT_DAY].len(),
        1,
        "no field for a gateway with no spend"
    );
}

#[test]
fn a_late_reply_or_a_redis_that_lost_data_never_lowers_local_spend() {
    let mut redis = FakeRedis::default();
    let (mut a, mut b) = (Gateway::start(), Gateway::start());
    b.charge(&bot(), 300);
    b.sync_with(&mut redis);
    a.sync_with(&mut redis);
    assert_eq!(a.account(&bot()).spent, 300);
    // Redis restarted empty: the totals drop, the gateways re-push what they own.
    redis = FakeRedis::default();
    a.charge(&bot(), 5);
    a.sync_with(&mut redis);
    assert_eq!(a.account(&bot()).spent, 305);
    b.sync_with(&mut redis);
    a.sync_with(&mut redis);
    assert_eq!(redis.total(BOT_DAY), 305);
    assert_eq!(a.account(&bot()).spent, 305);
}

#[test]
fn one_worker_per_envoy_syncs() {
    let host = FakeHost::new().at_unix_secs(NOW);
    let workers: Vec<Worker> = (0..3)
        .map(|_| Worker::new(Config::from_bytes(CONFIG.as_bytes()).unwrap()))
        .collect();
    for _ in 0..3 {
        for worker in &workers {
            worker.tick(&host);
        }
    }
    // Two calls (spend, history) per budget, from one worker; the calls are unanswered,
    // so the next ticks send no more for those budgets.
    assert_eq!(host.dispatched().len(), 4);
    let leader = workers.iter().filter(|w| w.fleet_in_flight() > 0).count();
    assert_eq!(leader, 1);
}

#[test]
fn replies_parse_into_pairs_or_fail_typed() {
    let cases: [(&[u8], usize, Pairs); 6] = [
        (br#"{"EVAL":[5,2,7,0]}"#, 2, Ok(vec![(5, 2), (7, 0)])),
        (br#"{"EVAL":[5,2]}"#, 2, Err(SyncError::BadReply)),
        (br#"{"EVAL":[5,-2]}"#, 1, Err(SyncError::BadReply)),
        (br#"{"EVAL":[false,"NOSCRIPT"]}"#, 1, Err(SyncError::Redis)),
        (br#"{"GET":[5,2]}"#, 1, Err(SyncError::BadReply)),
        (b"", 1, Err(SyncError::BadReply)),
    ];
    for (body, items, want) in cases {
        assert_eq!(
            parse_reply(body, items),
            want,
            "{}",
            String::from_utf8_lossy(body)
        );
    }
}

#[test]
fn keys_carry_the_budget_as_hash_tag_and_arguments_are_percent_encoded() {
    let day = Period::containing(PeriodKind::Daily, crate::period::TimeZone::UTC, NOW);
    assert_eq!(
        redis_key("ab", "bot", "user:bot/u.1", &day),
        "ab:{bot}:user:bot/u.1:2026-11-28"
    );
    assert_eq!(encode("a/b.c d{}%"), "a%2Fb%2Ec%20d%7B%7D%25");
    let items = [Item {
        name: "agent:bot".into(),
        period: day.clone(),
        own: 42,
    }];
    let body = command("ab", "bot", "gw@1f", &items);
    let parts: Vec<&str> = body.split('/').collect();
    assert_eq!(parts.len(), 7, "{body}");
    assert_eq!(
        parts[2..4],
        ["1", "ab%3A%7Bbot%7D%3Aagent%3Abot%3A2026-11-28"]
    );
    assert_eq!(
        parts[4..],
        ["gw%401f", "42", &(day.end + KEY_MARGIN_SECS).to_string()]
    );
}

#[test]
fn a_node_id_becomes_a_gateway_id_of_the_configs_character_set() {
    let cases = [
        ("gw-1", Some("gw-1".to_string())),
        (
            "sidecar~10.0.0.1~pod.ns~ns.svc.cluster.local",
            Some("sidecar_10.0.0.1_pod.ns_ns.svc.cluster.local".to_string()),
        ),
        ("é/x", Some("__x".to_string())),
        ("", None),
    ];
    for (node, want) in cases {
        assert_eq!(gateway_id_from_node(node), want, "{node:?}");
    }
    let long = "n".repeat(300);
    assert_eq!(gateway_id_from_node(&long).map(|id| id.len()), Some(128));
}

const WITH_HOOK: &str = r#"{"agents":{"bot":{"daily_usd":1}},
  "alerts":{"cluster":"hook","format":"json"},
  "fleet":{"cluster":"webdis","gateway_id":"GW"}}"#;

fn soft_alert(at: i64) -> Alert {
    Alert {
        kind: AlertKind::Soft,
        agent: "bot".into(),
        period: PeriodKind::Daily,
        period_id: "2026-11-28".into(),
        spend_micro_usd: 800_000,
        budget_micro_usd: 1_000_000,
        threshold: 0.8,
        action: "stop".into(),
        at_unix_secs: at,
        period_end_unix_secs: NOW + 86_400,
        trigger: crate::alerts::Trigger::Reached,
    }
}

#[test]
fn an_alert_two_gateways_raise_is_delivered_once_for_the_fleet() {
    let mut redis = FakeRedis::default();
    let (mut a, mut b) = (
        Gateway::start_with(WITH_HOOK, NOW),
        Gateway::start_with(WITH_HOOK, NOW + 1),
    );
    a.worker.raise_alert(soft_alert(NOW));
    b.worker.raise_alert(soft_alert(NOW));
    // A claims first; each reply is answered the tick it is sent, delivery follows at once.
    a.sync_with(&mut redis);
    b.sync_with(&mut redis);
    a.sync_with(&mut redis);
    b.sync_with(&mut redis);
    assert_eq!((a.hooks, b.hooks), (1, 0));
    assert_eq!(redis.claims.len(), 1);
    let won = "agent_budget_alerts.agent.bot.reason.soft";
    let lost = "agent_budget_alert_deliveries.reason.claimed_elsewhere";
    assert_eq!((a.metric(won), a.metric(lost).unwrap_or(0)), (Some(1), 0));
    assert_eq!((b.metric(won).unwrap_or(0), b.metric(lost)), (0, Some(1)));
    // Another period is another alert.
    let mut tomorrow = soft_alert(NOW);
    tomorrow.period_id = "2026-11-29".into();
    b.worker.raise_alert(tomorrow);
    a.sync_with(&mut redis);
    b.sync_with(&mut redis);
    assert_eq!((a.hooks, b.hooks), (1, 1));
}

#[test]
fn an_alert_whose_claim_fails_is_delivered_anyway() {
    let outages: [(u32, &[u8], &str); 4] = [
        (503, b"", "status"),
        (0, b"", "timeout"),
        (200, br#"{"EVAL":[false,"ERR busy"]}"#, "redis"),
        (200, br#"{"EVAL":"OK"}"#, "bad_reply"),
    ];
    for (status, body, reason) in outages {
        let mut a = Gateway::start_with(WITH_HOOK, NOW);
        a.worker.raise_alert(soft_alert(NOW));
        a.sync(&mut |_| (status, body.to_vec()));
        assert_eq!(a.hooks, 1, "{reason}");
        let name = format!("agent_budget_fleet_sync_errors.reason.{reason}");
        assert!(a.metric(&name).unwrap_or(0) >= 1, "{name}");
        assert_eq!(
            a.metric("agent_budget_alerts.agent.bot.reason.soft"),
            Some(1)
        );
    }
}

#[test]
fn claim_keys_name_agent_kind_fraction_and_period_and_expire_after_it() {
    let config = Config::from_bytes(WITH_HOOK.as_bytes()).unwrap();
    let soft = soft_alert(NOW);
    let mut anomaly = soft_alert(NOW);
    anomaly.kind = AlertKind::Anomaly;
    let cases = [
        (
            &soft,
            "p:{bot}:alert:soft:800000:2026-11-28",
            NOW + 86_400 + KEY_MARGIN_SECS,
        ),
        (
            &anomaly,
            "p:{bot}:alert:anomaly",
            NOW + config.anomaly.current_secs,
        ),
    ];
    for (alert, key, expiry) in cases {
        assert_eq!(claim_key("p", alert), key);
        assert_eq!(claim_expiry(&config, alert), expiry);
    }
}

fn burn(gateway: &Gateway) -> u64 {
    let now = gateway.host_secs();
    crate::history::rates(&gateway.host, &gateway.worker.config, "bot", now)
        .unwrap()
        .burn_micro_usd_per_hour
}

#[test]
fn the_history_adds_up_across_gateways_idempotently_and_loads_on_restart() {
    let mut redis = FakeRedis::default();
    let (mut a, mut b) = (Gateway::start(), Gateway::start_at(NOW + 1));
    let settings = a.worker.config.anomaly;
    let bucket = crate::history::bucket_of(&settings, NOW);
    a.worker.record_spend("bot", NOW, 3_000);
    b.worker.record_spend("bot", NOW, 2_000);
    // Every history body reaches Redis twice: the duplicate changes nothing.
    a.sync(&mut |body| {
        redis.run(body);
        (200, redis.run(body))
    });
    b.sync_with(&mut redis);
    a.sync_with(&mut redis);
    assert_eq!(redis.bucket_total(bucket), 5_000);
    // The current window's burn: the fleet's 5,000 micro-USD over `current`.
    let fleet_burn = 5_000 * 3_600 / settings.current_secs as u64;
    assert_eq!((burn(&a), burn(&b)), (fleet_burn, fleet_burn));
    // The whole window was pulled once, then only the last two buckets.
    let oldest = crate::history::oldest_needed(&settings, NOW);
    assert_eq!(redis.history_froms.first(), Some(&oldest));
    assert_eq!(redis.history_froms.last(), Some(&(bucket - 1)));
    a.worker.record_spend("bot", NOW, 1_000);
    a.sync_with(&mut redis);
    assert_eq!(redis.bucket_total(bucket), 6_000);

    // A restarted A: empty shared data, not ready (no alert decision) until it loaded.
    let mut after = Gateway::start_at(NOW + 2);
    assert!(!after.worker.fleet_ready(&after.host));
    after.sync_with(&mut redis);
    assert!(after.worker.fleet_ready(&after.host));
    assert_eq!(burn(&after), 6_000 * 3_600 / settings.current_secs as u64);
    // The fleet history began when the first gateway's did.
    let fleet = crate::history::load(&after.host, &crate::history::fleet_key(&settings, "bot"))
        .unwrap()
        .unwrap();
    assert_eq!(fleet.history.began, NOW);
}

#[test]
fn history_replies_parse_or_fail_typed() {
    let cases: [(&[u8], Result<HistoryReply, SyncError>); 5] = [
        (br#"{"EVAL":[7,100,5,2]}"#, Ok((7, vec![(100, 5, 2)]))),
        (br#"{"EVAL":[7]}"#, Ok((7, vec![]))),
        (br#"{"EVAL":[7,100,5]}"#, Err(SyncError::BadReply)),
        (br#"{"EVAL":[]}"#, Err(SyncError::BadReply)),
        (br#"{"EVAL":[false,"ERR x"]}"#, Err(SyncError::Redis)),
    ];
    for (body, expected) in cases {
        assert_eq!(parse_history(body), expected, "{body:?}");
    }
}
