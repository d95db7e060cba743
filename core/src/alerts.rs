//! Budget alerts: what to tell people when an agent's spend crosses a threshold or its
//! budget is used up, in the shapes their tools accept, and a small per-worker outbox that
//! delivers them with bounded retries.
//!
//! Everything here is pure: no host calls, time comes in as Unix seconds. The root context
//! pushes [`Alert`]s into an [`Outbox`], asks it on ticks for the [`Delivery`]s [`due`] now,
//! sends each body with `dispatch_http_call` and reports the outcome with [`sent`].
//!
//! Two payload formats:
//!
//! - [`PayloadFormat::Alertmanager`]: the body of `POST /api/v2/alerts` (a JSON array of
//!   `postableAlert`s: `labels` and `annotations` are string-to-string maps, `startsAt` and
//!   `endsAt` RFC 3339). One body carries up to [`MAX_BATCH`] alerts. `endsAt` is the end of
//!   the budget period, so Alertmanager resolves the alert by itself when the budget resets.
//! - [`PayloadFormat::Json`]: one flat JSON object per alert and per request, with a
//!   one-line `text` that Slack-compatible incoming webhooks display as is and the figures
//!   as separate fields for anything else. One alert per request because chat webhooks
//!   take one message per call.
//!
//! Money is always a USD decimal string made from integer micro-USD, and percentages are
//! integer arithmetic (rounded down), so `80%` in an alert means at least 80 %.
//!
//! [`due`]: Outbox::due
//! [`sent`]: Outbox::sent

use crate::period::{format_utc, PeriodKind};
use crate::pricing::format_usd;
use serde_json::{json, Map, Value};
use std::collections::{HashMap, VecDeque};

/// Why an alert was raised.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum AlertKind {
    /// Spend crossed the agent's soft threshold (say 80 %) of a period's budget.
    Soft,
    /// The budget is used up and the action is `stop`: calls are refused until the reset.
    LimitStop,
    /// The budget is used up and the action is `degrade`: calls continue, degraded.
    LimitDegrade,
    /// The budget is used up and the action is `alert`: calls continue unchecked, so
    /// spend keeps growing past the budget until the reset.
    LimitAlert,
    /// The degrade allowance is used up as well: calls are now stopped.
    DegradeExhausted,
    /// The agent burns money at a multiple of its usual rate (once per episode).
    Anomaly,
    /// At its current burn rate the agent will spend past the period's budget.
    Projection,
}

impl AlertKind {
    pub const ALL: [AlertKind; 7] = [
        AlertKind::Soft,
        AlertKind::LimitStop,
        AlertKind::LimitDegrade,
        AlertKind::LimitAlert,
        AlertKind::DegradeExhausted,
        AlertKind::Anomaly,
        AlertKind::Projection,
    ];

    /// Stable snake_case name, used in dedup keys, log lines and the JSON `kind` field.
    pub fn name(self) -> &'static str {
        match self {
            AlertKind::Soft => "soft",
            AlertKind::LimitStop => "limit_stop",
            AlertKind::LimitDegrade => "limit_degrade",
            AlertKind::LimitAlert => "limit_alert",
            AlertKind::DegradeExhausted => "degrade_exhausted",
            AlertKind::Anomaly => "anomaly",
            AlertKind::Projection => "projection",
        }
    }

    /// `warning` for a soft threshold, an unusual burn or a projected overrun, `critical`
    /// once a budget (or the degrade allowance) is used up.
    pub fn severity(self) -> &'static str {
        match self {
            AlertKind::Soft | AlertKind::Anomaly | AlertKind::Projection => "warning",
            AlertKind::LimitStop
            | AlertKind::LimitDegrade
            | AlertKind::LimitAlert
            | AlertKind::DegradeExhausted => "critical",
        }
    }

    /// Paging priority:
    ///
    /// - `P3` for a soft threshold or a projected overrun: nothing is affected yet, look at
    ///   it in working hours.
    /// - `P2` for an anomaly: money goes out faster than usual right now.
    /// - `P1` for [`AlertKind::LimitAlert`]: the budget is used up but nothing stops the
    ///   spend, so money is being lost until someone acts.
    /// - `P2` for the other limit kinds: the spend is contained (stopped or degraded), but
    ///   the agent's calls are refused or degraded, which somebody should look at soon.
    pub fn priority(self) -> &'static str {
        match self {
            AlertKind::Soft | AlertKind::Projection => "P3",
            AlertKind::LimitAlert => "P1",
            AlertKind::LimitStop
            | AlertKind::LimitDegrade
            | AlertKind::DegradeExhausted
            | AlertKind::Anomaly => "P2",
        }
    }

    /// The Alertmanager `alertname` label. The three "budget used up" kinds share
    /// `AgentBudgetExhausted` (their `action` label tells them apart).
    pub fn alertname(self) -> &'static str {
        match self {
            AlertKind::Soft => "AgentBudgetThreshold",
            AlertKind::LimitStop | AlertKind::LimitDegrade | AlertKind::LimitAlert => {
                "AgentBudgetExhausted"
            }
            AlertKind::DegradeExhausted => "AgentBudgetDegradeExhausted",
            AlertKind::Anomaly => "AgentBudgetAnomaly",
            AlertKind::Projection => "AgentBudgetProjectedOverrun",
        }
    }

    /// What happened, after the agent's name: `reached 80% of its daily budget`.
    fn what(self, threshold: &str, period: &str) -> String {
        match self {
            AlertKind::Soft => format!("reached {threshold} of its {period} budget"),
            AlertKind::LimitStop | AlertKind::LimitDegrade | AlertKind::LimitAlert => {
                format!("used up its {period} budget")
            }
            AlertKind::DegradeExhausted => format!("used up its {period} degrade allowance"),
            AlertKind::Anomaly => "is spending faster than usual".to_string(),
            AlertKind::Projection => format!("is on course to overrun its {period} budget"),
        }
    }

    /// What it means for the agent's calls, when anything.
    fn consequence(self) -> Option<&'static str> {
        match self {
            AlertKind::Soft | AlertKind::Anomaly | AlertKind::Projection => None,
            AlertKind::LimitStop | AlertKind::DegradeExhausted => Some("calls are stopped"),
            AlertKind::LimitDegrade => Some("calls continue degraded"),
            AlertKind::LimitAlert => Some("calls continue and spend keeps growing"),
        }
    }
}

/// What set a limit alert off.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Trigger {
    /// Spend reached the mark.
    #[default]
    Reached,
    /// A call's worst case no longer fit what was left of the budget, so the limit action
    /// took effect before spend reached the mark.
    WorstCase {
        worst_case_micro_usd: u64,
        remaining_micro_usd: u64,
    },
    /// The burn rate reached `multiple_milli` thousandths of the baseline; the episode
    /// began at `episode_since` (Unix seconds).
    Anomaly {
        burn_micro_usd_per_hour: u64,
        baseline_micro_usd_per_hour: u64,
        multiple_milli: u64,
        episode_since: i64,
    },
    /// Spend so far plus the burn rate until the period ends passes the budget.
    Projection {
        projected_micro_usd: u64,
        burn_micro_usd_per_hour: u64,
    },
}

impl Trigger {
    pub fn name(self) -> &'static str {
        match self {
            Trigger::Reached => "budget_reached",
            Trigger::WorstCase { .. } => "worst_case",
            Trigger::Anomaly { .. } => "burn_rate",
            Trigger::Projection { .. } => "projected_spend",
        }
    }

    /// `a call's worst case of $0.010000 no longer fits the $0.000400 left`.
    fn describe(self) -> Option<String> {
        match self {
            Trigger::Reached => None,
            Trigger::Anomaly {
                burn_micro_usd_per_hour,
                baseline_micro_usd_per_hour,
                multiple_milli,
                ..
            } => Some(format!(
                "burning ${}/h, {} its baseline of ${}/h (alert at {})",
                format_usd(burn_micro_usd_per_hour),
                ratio_text(burn_micro_usd_per_hour, baseline_micro_usd_per_hour),
                format_usd(baseline_micro_usd_per_hour),
                multiple_text(multiple_milli)
            )),
            Trigger::Projection {
                projected_micro_usd,
                burn_micro_usd_per_hour,
            } => Some(format!(
                "projected ${} by the reset at ${}/h",
                format_usd(projected_micro_usd),
                format_usd(burn_micro_usd_per_hour)
            )),
            Trigger::WorstCase {
                worst_case_micro_usd,
                remaining_micro_usd,
            } => Some(format!(
                "a call's worst case of ${} no longer fits the ${} left",
                format_usd(worst_case_micro_usd),
                format_usd(remaining_micro_usd)
            )),
        }
    }
}

/// One threshold crossing of one agent's budget in one period.
#[derive(Debug, Clone, PartialEq)]
pub struct Alert {
    pub kind: AlertKind,
    pub agent: String,
    pub period: PeriodKind,
    /// The period's id (`2026-11-28`, `2026-11`), as in [`crate::period::Period::id`].
    pub period_id: String,
    /// Spend in the period when the crossing was seen.
    pub spend_micro_usd: u64,
    /// The figure the spend is compared with: the period's budget, or for
    /// [`AlertKind::DegradeExhausted`] whatever limit the degrade allowance ends at.
    pub budget_micro_usd: u64,
    /// The crossed fraction of the budget: the soft threshold (`0.8`), `1.0` for limit kinds.
    pub threshold: f64,
    /// The agent's action at the limit: `stop`, `degrade` or `alert`.
    pub action: String,
    /// When the crossing was seen (Unix seconds).
    pub at_unix_secs: i64,
    /// When the period ends and the budget resets ([`crate::period::Period::end`]).
    pub period_end_unix_secs: i64,
    /// Spend reaching the mark, or a call that no longer fit before it did.
    pub trigger: Trigger,
}

impl Alert {
    /// `soft/daily/2026-11-28/research-bot`: one key per (kind, period kind, period id,
    /// agent), whatever the spend or time, so the same crossing maps to the same key on
    /// every worker. The agent comes last, so names containing `/` cannot collide.
    pub fn dedup_key(&self) -> String {
        // Each anomaly episode is an alert of its own, whichever period it falls in.
        let episode = match self.trigger {
            Trigger::Anomaly { episode_since, .. } => format!("{episode_since}/"),
            _ => String::new(),
        };
        format!(
            "{}/{}/{}/{episode}{}",
            self.kind.name(),
            self.period.name(),
            self.period_id,
            self.agent
        )
    }

    /// Spend as a whole percentage of the budget, rounded down; `None` for a zero budget.
    pub fn percent(&self) -> Option<u64> {
        percent(self.spend_micro_usd, self.budget_micro_usd)
    }

    /// `research-bot reached 80% of its daily budget`, `research-bot used up its daily
    /// budget: calls are stopped`.
    pub fn summary(&self) -> String {
        let mut summary = format!("{} {}", self.agent, self.what());
        if let Some(consequence) = self.kind.consequence() {
            summary.push_str(": ");
            summary.push_str(consequence);
        }
        summary
    }

    /// One line for people, as in `[P2 critical] research-bot used up its daily budget
    /// (2026-11-28): calls are stopped; spend $10.250000 of $10.000000 (102%), resets at
    /// 2026-11-29T00:00:00Z`.
    pub fn text(&self) -> String {
        format!(
            "[{} {}] {} {} ({}): {}",
            self.kind.priority(),
            self.kind.severity(),
            self.agent,
            self.what(),
            self.period_id,
            self.details()
        )
    }

    fn what(&self) -> String {
        match self.trigger {
            Trigger::Reached => self
                .kind
                .what(&threshold_percent(self.threshold), self.period.name()),
            Trigger::WorstCase { .. } => {
                format!(
                    "can no longer fit a call in its {} budget",
                    self.period.name()
                )
            }
            Trigger::Anomaly { .. } | Trigger::Projection { .. } => self
                .kind
                .what(&threshold_percent(self.threshold), self.period.name()),
        }
    }

    /// `[calls are stopped; ]spend $8.000000 of $10.000000 (80%), resets at <RFC 3339>`.
    fn details(&self) -> String {
        let figures = format!(
            "spend ${} of ${} ({}), resets at {}",
            format_usd(self.spend_micro_usd),
            format_usd(self.budget_micro_usd),
            percent_text(self.percent()),
            format_utc(self.period_end_unix_secs)
        );
        let figures = match self.trigger.describe() {
            Some(why) => format!("{why}; {figures}"),
            None => figures,
        };
        match self.kind.consequence() {
            Some(consequence) => format!("{consequence}; {figures}"),
            None => figures,
        }
    }

    /// Longer text for the Alertmanager `description` annotation.
    fn description(&self) -> String {
        let threshold = match self.trigger {
            Trigger::Reached | Trigger::WorstCase { .. } => {
                format!("Threshold {}, action", threshold_percent(self.threshold))
            }
            // Their threshold is not a share of the budget: the figures say it.
            Trigger::Anomaly { .. } | Trigger::Projection { .. } => "Action".to_string(),
        };
        format!(
            "Agent {} {} in period {}: {}. {threshold} at the limit: {}.",
            self.agent,
            self.what(),
            self.period_id,
            self.details(),
            self.action
        )
    }
}

/// `spend × 100 / budget` rounded down, in integers; `None` when the budget is zero.
pub fn percent(spend_micro_usd: u64, budget_micro_usd: u64) -> Option<u64> {
    if budget_micro_usd == 0 {
        return None;
    }
    let pct = u128::from(spend_micro_usd) * 100 / u128::from(budget_micro_usd);
    Some(u64::try_from(pct).unwrap_or(u64::MAX))
}

/// `burn / baseline` to a tenth, rounded down: `4.0x`; `-` for a zero baseline.
fn ratio_text(burn: u64, baseline: u64) -> String {
    if baseline == 0 {
        return "-".to_string();
    }
    let tenths = u128::from(burn) * 10 / u128::from(baseline);
    format!("{}.{}x", tenths / 10, tenths % 10)
}

/// `3000` → `3x`, `2500` → `2.5x`.
fn multiple_text(milli: u64) -> String {
    let whole = milli / 1_000;
    let frac = milli % 1_000;
    if frac == 0 {
        format!("{whole}x")
    } else {
        let digits = format!("{frac:03}");
        format!("{whole}.{}x", digits.trim_end_matches('0'))
    }
}

/// The figures of anomaly and projection alerts, as `(name, USD or text)` pairs for the
/// payloads; empty for the other triggers.
fn rate_figures(trigger: Trigger) -> Vec<(&'static str, String)> {
    match trigger {
        Trigger::Reached | Trigger::WorstCase { .. } => Vec::new(),
        Trigger::Anomaly {
            burn_micro_usd_per_hour,
            baseline_micro_usd_per_hour,
            multiple_milli,
            episode_since,
        } => vec![
            (
                "burn_rate_usd_per_hour",
                format_usd(burn_micro_usd_per_hour),
            ),
            (
                "baseline_usd_per_hour",
                format_usd(baseline_micro_usd_per_hour),
            ),
            ("multiple", multiple_text(multiple_milli)),
            (
                "ratio",
                ratio_text(burn_micro_usd_per_hour, baseline_micro_usd_per_hour),
            ),
            ("episode_since", format_utc(episode_since)),
        ],
        Trigger::Projection {
            projected_micro_usd,
            burn_micro_usd_per_hour,
        } => vec![
            ("projected_usd", format_usd(projected_micro_usd)),
            (
                "burn_rate_usd_per_hour",
                format_usd(burn_micro_usd_per_hour),
            ),
        ],
    }
}

fn percent_text(pct: Option<u64>) -> String {
    match pct {
        Some(pct) => format!("{pct}%"),
        None => "no budget".to_string(),
    }
}

/// `0.8` → `80%`, `0.825` → `82.5%` (to a hundredth of a percent).
fn threshold_percent(threshold: f64) -> String {
    // Basis points; `as` saturates and maps NaN to 0, which is fine for display.
    let bp = (threshold * 10_000.0).round() as i64;
    let (whole, frac) = (bp / 100, (bp % 100).abs());
    if frac == 0 {
        format!("{whole}%")
    } else if frac % 10 == 0 {
        format!("{whole}.{}%", frac / 10)
    } else {
        format!("{whole}.{frac:02}%")
    }
}

/// The receiving end's format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PayloadFormat {
    /// Prometheus Alertmanager API v2, `POST /api/v2/alerts`: one array of alerts per body.
    Alertmanager,
    /// A flat JSON object per alert with a Slack-compatible `text`: one alert per body.
    Json,
}

/// Most alerts in one Alertmanager body.
pub const MAX_BATCH: usize = 64;

/// A `postableAlerts` array for Alertmanager API v2.
pub fn alertmanager_body<'a>(alerts: impl IntoIterator<Item = &'a Alert>) -> Vec<u8> {
    let items: Vec<Value> = alerts.into_iter().map(alertmanager_alert).collect();
    to_bytes(&Value::Array(items))
}

fn alertmanager_alert(alert: &Alert) -> Value {
    let resets_at = format_utc(alert.period_end_unix_secs);
    let labels = string_map([
        ("alertname", alert.kind.alertname().to_string()),
        ("agent", alert.agent.clone()),
        ("period", alert.period.name().to_string()),
        ("period_id", alert.period_id.clone()),
        ("severity", alert.kind.severity().to_string()),
        ("priority", alert.kind.priority().to_string()),
        ("action", alert.action.clone()),
    ]);
    let mut annotations = string_map([
        ("summary", alert.summary()),
        ("description", alert.description()),
        ("spend_usd", format_usd(alert.spend_micro_usd)),
        ("budget_usd", format_usd(alert.budget_micro_usd)),
        ("percent", percent_text(alert.percent())),
        ("threshold", threshold_percent(alert.threshold)),
        ("resets_at", resets_at),
        ("trigger", alert.trigger.name().to_string()),
    ]);
    if let Value::Object(map) = &mut annotations {
        for (name, value) in rate_figures(alert.trigger) {
            map.insert(name.to_string(), Value::String(value));
        }
    }
    // Alertmanager rejects the whole request if an alert ends before it starts, which a
    // late alert for a period already over would do: such an alert arrives resolved.
    let ends_at = alert.period_end_unix_secs.max(alert.at_unix_secs);
    json!({
        "labels": labels,
        "annotations": annotations,
        "startsAt": format_utc(alert.at_unix_secs),
        "endsAt": format_utc(ends_at),
        "generatorURL": "",
    })
}

/// One alert as a flat JSON object whose `text` Slack-compatible webhooks display.
pub fn json_body(alert: &Alert) -> Vec<u8> {
    to_bytes(&json_alert(alert))
}

fn json_alert(alert: &Alert) -> Value {
    let mut value = json!({
        "text": alert.text(),
        "agent": alert.agent,
        "period": alert.period.name(),
        "period_id": alert.period_id,
        "kind": alert.kind.name(),
        "severity": alert.kind.severity(),
        "priority": alert.kind.priority(),
        "spend_usd": format_usd(alert.spend_micro_usd),
        "budget_usd": format_usd(alert.budget_micro_usd),
        "percent": alert.percent(),
        "threshold": alert.threshold,
        "action": alert.action,
        "time": format_utc(alert.at_unix_secs),
        "resets_at": format_utc(alert.period_end_unix_secs),
        "trigger": alert.trigger.name(),
        "worst_case_usd": match alert.trigger {
            Trigger::WorstCase { worst_case_micro_usd, .. } => Some(format_usd(worst_case_micro_usd)),
            _ => None,
        },
    });
    if let Value::Object(map) = &mut value {
        for (name, figure) in rate_figures(alert.trigger) {
            map.insert(name.to_string(), Value::String(figure));
        }
    }
    value
}

fn string_map<const N: usize>(pairs: [(&str, String); N]) -> Value {
    let map: Map<String, Value> = pairs
        .into_iter()
        .map(|(name, value)| (name.to_string(), Value::String(value)))
        .collect();
    Value::Object(map)
}

fn to_bytes(value: &Value) -> Vec<u8> {
    // Serializing a `Value` into memory cannot fail.
    serde_json::to_vec(value).unwrap_or_default()
}

/// `agent_budget_alert kind=soft severity=warning ... resets_at=2026-11-29T00:00:00Z`: a
/// key=value line for `log::warn!`, figures only (never prompt text). Values with spaces,
/// quotes or `=` are quoted.
pub fn log_line(alert: &Alert) -> String {
    let pct = match alert.percent() {
        Some(pct) => pct.to_string(),
        None => "none".to_string(),
    };
    let figures: String = rate_figures(alert.trigger)
        .into_iter()
        .map(|(name, value)| format!(" {name}={}", log_value(&value)))
        .collect();
    format!(
        "agent_budget_alert kind={} severity={} priority={} agent={} period={} period_id={} \
         spend_usd={} budget_usd={} percent={} threshold={} action={} at={} resets_at={}{figures}",
        alert.kind.name(),
        alert.kind.severity(),
        alert.kind.priority(),
        log_value(&alert.agent),
        alert.period.name(),
        log_value(&alert.period_id),
        format_usd(alert.spend_micro_usd),
        format_usd(alert.budget_micro_usd),
        pct,
        alert.threshold,
        log_value(&alert.action),
        format_utc(alert.at_unix_secs),
        format_utc(alert.period_end_unix_secs),
    )
}

fn log_value(value: &str) -> String {
    let bare = !value.is_empty()
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.:/@+".contains(c));
    if bare {
        value.to_string()
    } else {
        format!("{value:?}")
    }
}

/// Seconds an attempt may wait for its reply before it counts as failed.
pub const REPLY_TIMEOUT_SECS: i64 = 10;
/// Wait after the first failed attempt; it doubles after each further failure...
pub const BACKOFF_BASE_SECS: i64 = 1;
/// ...up to this.
pub const BACKOFF_CAP_SECS: i64 = 60;
/// How long after its period ends a dedup key is remembered. Alerts for periods that ended
/// longer ago than this are refused by [`Outbox::push`], so forgetting never lets one in twice.
pub const SEEN_GRACE_SECS: i64 = 86_400;

/// The wait before the next attempt after `failures` failed attempts (1 s, 2 s, 4 s, ...,
/// capped at [`BACKOFF_CAP_SECS`]).
pub fn backoff_secs(failures: u32) -> i64 {
    let doublings = failures.saturating_sub(1).min(32);
    BACKOFF_BASE_SECS
        .saturating_mul(1i64 << doublings)
        .min(BACKOFF_CAP_SECS)
}

/// One request to send: `body` to the alert endpoint, then report to [`Outbox::sent`] with
/// `id`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    pub id: u64,
    pub body: Vec<u8>,
    /// Dedup keys of the alerts in `body`, in order.
    pub alerts: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct InFlight {
    id: u64,
    sent_at: i64,
}

#[derive(Debug, Clone)]
struct Entry {
    key: String,
    alert: Alert,
    /// Attempts made so far.
    attempts: u32,
    /// Earliest time of the next attempt.
    next_at: i64,
    in_flight: Option<InFlight>,
    /// Ids of every delivery this alert went out in, so a late success still counts.
    attempt_ids: Vec<u64>,
}

/// Alerts waiting to be delivered by one worker, with bounded retries.
///
/// Each alert is tracked on its own: new alerts are due at once, a failed (or timed-out)
/// one is due again after [`backoff_secs`], and after `max_attempts` failed attempts it is
/// given up. An alert is never in two requests at once, never sent again once a request
/// carrying it succeeded, and a dedup key pushed twice is queued once.
#[derive(Debug)]
pub struct Outbox {
    format: PayloadFormat,
    max_attempts: u32,
    max_queued: usize,
    queue: VecDeque<Entry>,
    /// Every dedup key pushed, with its period end, until [`SEEN_GRACE_SECS`] after it.
    seen: HashMap<String, i64>,
    next_id: u64,
    /// The latest time seen by [`Outbox::due`] or [`Outbox::sent`].
    now: i64,
    delivered: u64,
    failed_attempts: u64,
    given_up: u64,
    dropped: u64,
}

impl Outbox {
    /// An outbox sending `format` bodies, trying each alert at most `max_attempts` times
    /// and keeping at most `max_queued` alerts (both at least 1).
    pub fn new(format: PayloadFormat, max_attempts: u32, max_queued: usize) -> Outbox {
        Outbox {
            format,
            max_attempts: max_attempts.max(1),
            max_queued: max_queued.max(1),
            queue: VecDeque::new(),
            seen: HashMap::new(),
            next_id: 1,
            now: i64::MIN,
            delivered: 0,
            failed_attempts: 0,
            given_up: 0,
            dropped: 0,
        }
    }

    /// Queues `alert` for delivery; false (and nothing queued) if its dedup key was pushed
    /// before, or its period ended more than [`SEEN_GRACE_SECS`] before the latest time
    /// this outbox has seen. A full queue drops its oldest alert not awaiting a reply (or
    /// the oldest of all), counted in [`Outbox::dropped`].
    pub fn push(&mut self, alert: Alert) -> bool {
        if alert.period_end_unix_secs.saturating_add(SEEN_GRACE_SECS) <= self.now {
            return false;
        }
        let key = alert.dedup_key();
        if self.seen.contains_key(&key) {
            return false;
        }
        self.seen.insert(key.clone(), alert.period_end_unix_secs);
        if self.queue.len() >= self.max_queued {
            let oldest = self
                .queue
                .iter()
                .position(|entry| entry.in_flight.is_none())
                .unwrap_or(0);
            if self.queue.remove(oldest).is_some() {
                self.dropped += 1;
            }
        }
        self.queue.push_back(Entry {
            key,
            alert,
            attempts: 0,
            next_at: i64::MIN,
            in_flight: None,
            attempt_ids: Vec::new(),
        });
        true
    }

    /// The requests to send now. Attempts without a reply for [`REPLY_TIMEOUT_SECS`] count
    /// as failed first; then every alert not awaiting a reply whose time has come goes out
    /// (Alertmanager: batched up to [`MAX_BATCH`] per body; Json: one per body) and awaits
    /// its reply.
    pub fn due(&mut self, now: i64) -> Vec<Delivery> {
        self.now = self.now.max(now);
        let mut timed_out: Vec<u64> = self
            .queue
            .iter()
            .filter_map(|entry| entry.in_flight)
            .filter(|flight| now.saturating_sub(flight.sent_at) >= REPLY_TIMEOUT_SECS)
            .map(|flight| flight.id)
            .collect();
        timed_out.sort_unstable();
        timed_out.dedup();
        for id in timed_out {
            self.fail(id, now);
        }
        let horizon = self.now;
        self.seen
            .retain(|_, end| end.saturating_add(SEEN_GRACE_SECS) > horizon);

        let ready: Vec<usize> = self
            .queue
            .iter()
            .enumerate()
            .filter(|(_, entry)| entry.in_flight.is_none() && entry.next_at <= now)
            .map(|(index, _)| index)
            .collect();
        let per_body = match self.format {
            PayloadFormat::Alertmanager => MAX_BATCH,
            PayloadFormat::Json => 1,
        };
        let mut deliveries = Vec::new();
        for group in ready.chunks(per_body) {
            let id = self.next_id;
            self.next_id += 1;
            let mut alerts = Vec::with_capacity(group.len());
            let mut keys = Vec::with_capacity(group.len());
            for &index in group {
                if let Some(entry) = self.queue.get_mut(index) {
                    entry.attempts = entry.attempts.saturating_add(1);
                    entry.in_flight = Some(InFlight { id, sent_at: now });
                    entry.attempt_ids.push(id);
                    alerts.push(entry.alert.clone());
                    keys.push(entry.key.clone());
                }
            }
            let body = match self.format {
                PayloadFormat::Alertmanager => alertmanager_body(&alerts),
                PayloadFormat::Json => alerts.first().map(json_body).unwrap_or_default(),
            };
            deliveries.push(Delivery {
                id,
                body,
                alerts: keys,
            });
        }
        deliveries
    }

    /// Records the outcome of delivery `id` (`ok`: the endpoint answered 2xx). Success
    /// removes its alerts, even if the reply comes after the timeout and a retry is already
    /// queued or in flight. Failure schedules a retry, or gives the alert up after
    /// `max_attempts`; a failure reported for an attempt that already timed out is ignored.
    /// Returns whether `id` still meant anything.
    pub fn sent(&mut self, id: u64, ok: bool, now: i64) -> bool {
        self.now = self.now.max(now);
        if ok {
            let before = self.queue.len();
            self.queue.retain(|entry| !entry.attempt_ids.contains(&id));
            let delivered = before - self.queue.len();
            self.delivered += delivered as u64;
            delivered > 0
        } else {
            self.fail(id, now)
        }
    }

    fn fail(&mut self, id: u64, now: i64) -> bool {
        let max_attempts = self.max_attempts;
        let mut matched = false;
        let mut given_up = 0u64;
        self.queue.retain_mut(|entry| {
            if entry.in_flight.map(|flight| flight.id) != Some(id) {
                return true;
            }
            matched = true;
            entry.in_flight = None;
            if entry.attempts >= max_attempts {
                given_up += 1;
                return false;
            }
            entry.next_at = now.saturating_add(backoff_secs(entry.attempts));
            true
        });
        if matched {
            self.failed_attempts += 1;
        }
        self.given_up += given_up;
        matched
    }

    /// Alerts queued, awaiting a reply included.
    pub fn len(&self) -> usize {
        self.queue.len()
    }

    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// Alerts whose current attempt awaits its reply.
    pub fn in_flight(&self) -> usize {
        self.queue
            .iter()
            .filter(|entry| entry.in_flight.is_some())
            .count()
    }

    /// Alerts delivered (a request carrying them got a success).
    pub fn delivered(&self) -> u64 {
        self.delivered
    }

    /// Requests that failed or timed out (one per request, however many alerts it carried).
    pub fn failed_attempts(&self) -> u64 {
        self.failed_attempts
    }

    /// Alerts abandoned after `max_attempts` failed attempts.
    pub fn given_up(&self) -> u64 {
        self.given_up
    }

    /// Alerts dropped unsent because the queue was full.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }
}

#[cfg(test)]
mod tests;
