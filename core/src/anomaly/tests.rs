use super::*;
use crate::config::Config;
use crate::host::fake::FakeHost;
use serde_json::Value;

/// 2026-11-01T00:00:00Z: a month start, so simulated weeks stay inside one month.
const START: i64 = 1_793_491_200;
const HOUR: i64 = 3_600;
/// Simulated time between ticks.
const STEP: i64 = 300;

/// Workers over one host with a manual clock; each step charges an hourly rate spread
/// over the workers in turn, ticks them all and answers every webhook call with 200.
struct Sim {
    host: FakeHost,
    workers: Vec<Worker>,
    now: i64,
    answered: usize,
}

impl Sim {
    fn new(config: &str, workers: usize) -> Sim {
        let config = Config::from_bytes(config.as_bytes()).unwrap();
        let host = FakeHost::new().at_unix_secs(START);
        let workers: Vec<Worker> = (0..workers).map(|_| Worker::new(config.clone())).collect();
        for worker in &workers {
            worker.tick(&host);
        }
        Sim {
            host,
            workers,
            now: START,
            answered: 0,
        }
    }

    /// Spends `micro_usd_per_hour` for `hours` (also booked in the ledger, as calls are).
    fn run(&mut self, agent: &str, micro_usd_per_hour: u64, hours: i64) {
        let per_step = micro_usd_per_hour * STEP as u64 / HOUR as u64;
        for step in 0..hours * HOUR / STEP {
            self.now += STEP;
            self.host.set_unix_secs(self.now);
            let worker = &self.workers[step as usize % self.workers.len()];
            let periods = worker.current_periods(self.now);
            let ledger = Ledger::new(&self.host);
            for period in &periods {
                ledger
                    .add_spend(period, &AccountKey::Agent(agent.to_string()), per_step)
                    .unwrap();
            }
            // A step's calls happen during it, not at its end.
            worker.record_spend(agent, self.now - STEP / 2, per_step);
            for worker in &self.workers {
                // Each worker serves calls: its spend gauges refresh on this tick.
                worker.serving();
                worker.tick(&self.host);
            }
            self.answer();
        }
    }

    fn answer(&mut self) {
        let dispatched = self.host.dispatched();
        for call in dispatched.iter().skip(self.answered) {
            for worker in &self.workers {
                worker.on_alert_reply(&self.host, call.token, 200);
            }
        }
        self.answered = dispatched.len();
    }

    /// Every alert delivered so far, as JSON objects.
    fn alerts(&self, kind: &str) -> Vec<Value> {
        self.host
            .dispatched()
            .iter()
            .map(|call| serde_json::from_slice::<Value>(&call.body).unwrap())
            .filter(|alert| alert["kind"] == kind)
            .collect()
    }

    fn counted(&self, agent: &str, reason: &str) -> i64 {
        self.host
            .metric(&format!(
                "agent_budget_alerts.agent.{agent}.reason.{reason}"
            ))
            .unwrap_or(0)
    }

    /// A gauge as each worker publishes it (the fake sums the workers' equal values).
    fn gauge(&self, name: &str) -> Option<i64> {
        let workers = i64::try_from(self.workers.len()).unwrap();
        self.host.metric(name).map(|sum| sum / workers)
    }

    fn episode_since(&self, agent: &str) -> i64 {
        let config = &self.workers[0].config;
        history::load(&self.host, &history::key(&config.anomaly, agent))
            .unwrap()
            .unwrap()
            .history
            .episode_since
    }
}

fn usd(value: &Value) -> f64 {
    value.as_str().unwrap().parse().unwrap()
}

const ALERTS: &str = r#""alerts":{"cluster":"hook","format":"json"}"#;

fn steady_config() -> String {
    format!(r#"{{"agents":{{"bot":{{"daily_usd":1000}}}},{ALERTS}}}"#)
}

#[test]
fn a_burst_raises_one_alert_per_episode_and_a_bump_none() {
    let mut sim = Sim::new(&steady_config(), 2);
    // Two weeks of $1.20 an hour.
    sim.run("bot", 1_200_000, 14 * 24);
    assert_eq!(sim.counted("bot", "anomaly"), 0);
    assert_eq!(
        sim.gauge("agent_budget_baseline_micro_usd_per_hour.agent.bot"),
        Some(1_200_000)
    );
    // One worker may not have seen the other's last step yet.
    let burn = sim
        .gauge("agent_budget_burn_rate_micro_usd_per_hour.agent.bot")
        .unwrap();
    assert!((1_100_000..=1_200_000).contains(&burn), "{burn}");

    // 4x for three hours: one alert, from one of the two workers.
    sim.run("bot", 4_800_000, 3);
    assert_eq!(sim.counted("bot", "anomaly"), 1);
    assert_ne!(sim.episode_since("bot"), 0);
    let alerts = sim.alerts("anomaly");
    assert_eq!(alerts.len(), 1, "{alerts:?}");
    let alert = &alerts[0];
    assert_eq!(alert["agent"], "bot");
    assert_eq!(alert["baseline_usd_per_hour"], "1.200000");
    assert_eq!(alert["multiple"], "3x");
    assert_eq!(alert["budget_usd"], "1000.000000");
    let burn = usd(&alert["burn_rate_usd_per_hour"]);
    assert!((3.6..3.9).contains(&burn), "{burn}");
    assert!(alert["text"]
        .as_str()
        .unwrap()
        .contains("its baseline of $1.200000/h"));

    // Back to normal: the episode ends, without an alert.
    sim.run("bot", 1_200_000, 24);
    assert_eq!(sim.episode_since("bot"), 0);
    assert_eq!(sim.counted("bot", "anomaly"), 1);

    // 2x is within the multiple.
    sim.run("bot", 2_400_000, 6);
    sim.run("bot", 1_200_000, 24);
    assert_eq!(sim.counted("bot", "anomaly"), 1);

    // A second burst is a second episode.
    sim.run("bot", 6_000_000, 2);
    assert_eq!(sim.counted("bot", "anomaly"), 2);
    assert_eq!(sim.alerts("anomaly").len(), 2);
    assert_eq!(sim.counted("bot", "projection"), 0);
}

#[test]
fn day_one_raises_no_anomaly_however_the_spend_moves() {
    let mut sim = Sim::new(&steady_config(), 1);
    sim.run("bot", 100_000, 12);
    sim.run("bot", 5_000_000, 6);
    sim.run("bot", 100_000, 5);
    assert_eq!(sim.counted("bot", "anomaly"), 0);
    assert_eq!(
        sim.gauge("agent_budget_baseline_micro_usd_per_hour.agent.bot"),
        Some(0)
    );
    // Past `min_history` (a day) the same burst is one.
    sim.run("bot", 100_000, 2);
    sim.run("bot", 5_000_000, 2);
    assert_eq!(sim.counted("bot", "anomaly"), 1);
}

#[test]
fn a_new_agent_on_course_to_overrun_is_told_once_per_period() {
    let config = format!(
        r#"{{"agents":{{"fresh":{{"daily_usd":10,"monthly_usd":10000,"action":"alert"}}}},{ALERTS}}}"#
    );
    let mut sim = Sim::new(&config, 2);
    // $2.40 an hour: $57.60 a day projected against $10, from the first full hour on.
    sim.run("fresh", 2_400_000, 1);
    sim.run("fresh", 2_400_000, 22);
    assert_eq!(sim.counted("fresh", "projection"), 1);
    let alerts = sim.alerts("projection");
    assert_eq!(alerts.len(), 1);
    let alert = &alerts[0];
    assert_eq!(alert["period"], "daily");
    // The other worker's last five minutes may not be merged yet.
    let burn = usd(&alert["burn_rate_usd_per_hour"]);
    assert!((2.2..=2.4).contains(&burn), "{burn}");
    let projected = usd(&alert["projected_usd"]);
    assert!(projected > 10.0, "{projected}");
    // Day two: the new period gets its own.
    sim.run("fresh", 2_400_000, 24);
    assert_eq!(sim.counted("fresh", "projection"), 2);
    // The monthly budget is out of reach at this pace: never projected past.
    assert!(sim
        .alerts("projection")
        .iter()
        .all(|a| a["period"] == "daily"));
    assert_eq!(sim.counted("fresh", "anomaly"), 0);
    assert_eq!(
        sim.gauge("agent_budget_remaining_micro_usd.agent.fresh.period.monthly"),
        Some(10_000_000_000 - 112_800_000)
    );
    let projected_month = sim
        .gauge("agent_budget_projected_spend_micro_usd.agent.fresh.period.monthly")
        .unwrap();
    // 2026-11-02T23:00Z: $112.80 so far and 673 hours at $2.40 (the other worker's
    // last step may not be merged yet).
    let want = 112_800_000 + 673 * 2_400_000;
    assert!(
        (want - 673 * 200_000..=want).contains(&projected_month),
        "{projected_month}"
    );
}

#[test]
fn switched_off_alerts_stay_quiet_but_gauges_go_on() {
    let config = format!(
        r#"{{"agents":{{"bot":{{"daily_usd":10}}}},{ALERTS},"anomaly":{{"enabled":false,"projection":false}}}}"#
    );
    let mut sim = Sim::new(&config, 1);
    sim.run("bot", 100_000, 48);
    sim.run("bot", 3_000_000, 3);
    assert_eq!(sim.counted("bot", "anomaly"), 0);
    assert_eq!(sim.counted("bot", "projection"), 0);
    assert_eq!(
        sim.gauge("agent_budget_burn_rate_micro_usd_per_hour.agent.bot"),
        Some(3_000_000)
    );
}

#[test]
fn reviews_come_a_fraction_of_a_bucket_apart() {
    let minute = Config::from_bytes(
        br#"{"agents":{"a":{"daily_usd":1}},"anomaly":{"bucket":"5s","current":"10s","window":"60s"}}"#,
    )
    .unwrap();
    assert_eq!(review_interval_secs(&minute.anomaly), 1);
    assert_eq!(review_interval_secs(&AnomalyConfig::default()), 10);
}

#[test]
fn a_budget_folded_into_other_is_still_reviewed_but_sets_no_gauges_of_its_own() {
    // `zz-late` sorts past max_tracked_agents: its metrics report under `other`.
    let config = format!(
        r#"{{"max_tracked_agents":1,"agents":{{"aa":{{"daily_usd":10}},"zz-late":{{"daily_usd":10,"action":"alert"}}}},{ALERTS}}}"#
    );
    let mut sim = Sim::new(&config, 1);
    sim.run("zz-late", 2_400_000, 2);
    assert_eq!(sim.alerts("projection").len(), 1);
    assert_eq!(sim.alerts("projection")[0]["agent"], "zz-late");
    assert_eq!(sim.counted("other", "projection"), 1);
    let own_series = sim
        .host
        .metric_names()
        .into_iter()
        .filter(|n| n.contains(".agent.other.") && n.contains("_per_hour"))
        .count();
    assert_eq!(
        own_series, 0,
        "rate gauges of folded budgets would overwrite each other"
    );
}

#[test]
fn a_burn_wavering_across_the_multiple_is_one_episode() {
    let mut sim = Sim::new(&steady_config(), 1);
    sim.run("bot", 1_200_000, 14 * 24);
    // 4x, then 2.5x (below the 3x multiple, above halfway back to it), then 4x again.
    sim.run("bot", 4_800_000, 2);
    sim.run("bot", 3_000_000, 2);
    sim.run("bot", 4_800_000, 2);
    assert_eq!(sim.counted("bot", "anomaly"), 1);
    assert_ne!(sim.episode_since("bot"), 0, "still the first episode");
    // Below 2x the episode is over; the next burst is a new one.
    sim.run("bot", 1_200_000, 24);
    assert_eq!(sim.episode_since("bot"), 0);
    sim.run("bot", 6_000_000, 2);
    assert_eq!(sim.counted("bot", "anomaly"), 2);
}
