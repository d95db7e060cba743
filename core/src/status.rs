//! The live status page: per agent budget, spend today and this month against its budgets,
//! burn rate, projection, state, time to reset and the top tasks and users of the day, as
//! HTML (`/budgets`) and JSON (`/budgets.json`).
//!
//! It is served by the `agent_budget_status` plugin on an ops listener of its own, in the
//! same VM (same `vm_id`) as the gateway, so it reads the same shared data. Nothing here
//! runs per metered call: [`collect`] reads the ledger when a page is asked for.

use crate::config::{AgentBudget, Config, LimitAction};
use crate::history;
use crate::host::Host;
use crate::ledger::{AccountKey, Ledger, LedgerError, Snapshot};
use crate::period::{format_utc, Period, PeriodKind};
use crate::policy::{self, Crossing};
use crate::pricing::format_usd;
use crate::replies::LocalReply;
use crate::root::Worker;
use crate::top;
use serde_json::{json, Value};
use std::cmp::Reverse;
use std::fmt::Write as _;

/// Paths the status plugin answers.
pub const HTML_PATH: &str = "/budgets";
pub const JSON_PATH: &str = "/budgets.json";
/// Seconds between the page's own reloads.
pub const REFRESH_SECS: u32 = 5;
/// Top tasks and users shown per agent in the HTML table (the JSON has all kept).
const TOP_SHOWN: usize = 5;

/// What the agent's limits are doing now, most severe last.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum State {
    Ok,
    /// Spend reached the soft threshold (the soft alert went out).
    SoftAlerted,
    /// `alert`: spend is past the budget; calls go on, the excess is booked as overage.
    Overage,
    /// `degrade`: the budget is used up; calls are served by the cheaper model.
    Degraded,
    /// Calls are refused (`stop` past the budget, or `degrade` past its allowance).
    Stopped,
}

impl State {
    pub fn name(self) -> &'static str {
        match self {
            State::Ok => "ok",
            State::SoftAlerted => "soft-alerted",
            State::Overage => "overage",
            State::Degraded => "degraded",
            State::Stopped => "stopped",
        }
    }
}

/// One period of an agent budget as of the page's time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeriodView {
    pub kind: PeriodKind,
    /// `2026-12-02` or `2026-12`.
    pub id: String,
    pub spent_micro_usd: u64,
    /// Worst-case cost of calls in flight.
    pub reserved_micro_usd: u64,
    pub budget_micro_usd: Option<u64>,
    pub remaining_micro_usd: Option<u64>,
    /// Spend by the period's end at the current burn rate.
    pub projected_micro_usd: u64,
    pub state: State,
    pub resets_at: i64,
    pub resets_in_secs: u64,
}

/// One agent budget's row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentView {
    pub name: String,
    pub action: LimitAction,
    /// The more severe of the two periods' states.
    pub state: State,
    pub day: PeriodView,
    pub month: PeriodView,
    /// Spend over the last hour.
    pub burn_micro_usd_per_hour: u64,
    /// The agent's usual hourly burn, once there is history enough to say.
    pub baseline_micro_usd_per_hour: Option<u64>,
    /// Today's largest spenders, largest first.
    pub top_tasks: Vec<(String, u64)>,
    pub top_users: Vec<(String, u64)>,
    /// A ledger read that failed: the row's figures may be missing or zero.
    pub error: Option<String>,
}

/// How the rows are ordered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Sort {
    /// Today's spend, largest first (then this month's, then the name).
    #[default]
    Spend,
    Name,
}

impl Sort {
    /// `sort=spend` or `sort=name` from a query string; anything else is the default.
    pub fn from_query(query: &str) -> Sort {
        for pair in query.split('&') {
            match pair {
                "sort=name" => return Sort::Name,
                "sort=spend" => return Sort::Spend,
                _ => {}
            }
        }
        Sort::default()
    }

    pub fn name(self) -> &'static str {
        match self {
            Sort::Spend => "spend",
            Sort::Name => "name",
        }
    }
}

pub fn sort(views: &mut [AgentView], order: Sort) {
    match order {
        Sort::Spend => views.sort_by(|a, b| {
            (
                Reverse(a.day.spent_micro_usd),
                Reverse(a.month.spent_micro_usd),
                &a.name,
            )
                .cmp(&(
                    Reverse(b.day.spent_micro_usd),
                    Reverse(b.month.spent_micro_usd),
                    &b.name,
                ))
        }),
        Sort::Name => views.sort_by(|a, b| a.name.cmp(&b.name)),
    }
}

/// Burn rate, baseline and projected period-end spend of one agent budget.
struct Outlook {
    burn_micro_usd_per_hour: u64,
    baseline_micro_usd_per_hour: Option<u64>,
    /// Projected spend by the end of each of `periods`, in their order.
    projected: Vec<u64>,
}

/// The agent budget's rates from the shared spend history, and each period's projection.
fn rates_of(
    host: &dyn Host,
    config: &Config,
    budget_name: &str,
    now: i64,
    spent_and_periods: &[(u64, &Period)],
) -> Result<Outlook, LedgerError> {
    let rates = history::rates(host, config, budget_name, now)?;
    let projected = spent_and_periods
        .iter()
        .map(|(spent, period)| {
            history::projected_micro_usd(*spent, rates.burn_micro_usd_per_hour, now, period)
        })
        .collect();
    Ok(Outlook {
        burn_micro_usd_per_hour: rates.burn_micro_usd_per_hour,
        baseline_micro_usd_per_hour: rates.baseline_micro_usd_per_hour,
        projected,
    })
}

/// Every configured agent budget's row as of `now`, in configuration (name) order. Reads the
/// agent's ledger account, the alert flags its state may rest on and its top lists.
pub fn collect(host: &dyn Host, worker: &Worker, now: i64) -> Vec<AgentView> {
    let config = &worker.config;
    let [day, month] = worker.current_periods(now);
    let ledger = Ledger::new(host);
    config
        .agents
        .iter()
        .map(|(name, budget)| {
            let mut errors: Vec<LedgerError> = Vec::new();
            let snapshot = ledger
                .snapshot(&AccountKey::Agent(name.clone()))
                .map_err(|e| errors.push(e))
                .ok();
            let account = |period: &Period| {
                snapshot
                    .as_ref()
                    .map(|s: &Snapshot| s.account(period))
                    .unwrap_or_default()
            };
            let (day_account, month_account) = (account(&day), account(&month));
            let outlook = rates_of(
                host,
                config,
                name,
                now,
                &[(day_account.spent, &day), (month_account.spent, &month)],
            )
            .map_err(|e| errors.push(e))
            .ok();
            let projected = |index: usize, spent: u64| {
                outlook
                    .as_ref()
                    .and_then(|o| o.projected.get(index).copied())
                    .unwrap_or(spent)
            };
            let mut flag_set = |period: &Period, crossing: Crossing| {
                flag_is_set(&ledger, name, budget, period, crossing)
                    .map_err(|e| errors.push(e))
                    .unwrap_or(false)
            };
            let day_state = period_state(budget, &day, day_account.spent, &mut flag_set);
            let month_state = period_state(budget, &month, month_account.spent, &mut flag_set);
            let day_view = period_view(
                budget,
                &day,
                day_account,
                projected(0, day_account.spent),
                day_state,
                now,
            );
            let month_view = period_view(
                budget,
                &month,
                month_account,
                projected(1, month_account.spent),
                month_state,
                now,
            );
            let top = top::read(host, name, &day)
                .map_err(|e| errors.push(e))
                .unwrap_or_default();
            AgentView {
                name: name.clone(),
                action: budget.action,
                state: day_state.max(month_state),
                day: day_view,
                month: month_view,
                burn_micro_usd_per_hour: outlook.as_ref().map_or(0, |o| o.burn_micro_usd_per_hour),
                baseline_micro_usd_per_hour: outlook
                    .as_ref()
                    .and_then(|o| o.baseline_micro_usd_per_hour),
                top_tasks: top.tasks,
                top_users: top.users,
                error: (!errors.is_empty()).then(|| {
                    errors
                        .iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join("; ")
                }),
            }
        })
        .collect()
}

fn period_view(
    budget: &AgentBudget,
    period: &Period,
    account: crate::ledger::Account,
    projected_micro_usd: u64,
    state: State,
    now: i64,
) -> PeriodView {
    let limit = budget.limit(period.kind);
    PeriodView {
        kind: period.kind,
        id: period.id.to_string(),
        spent_micro_usd: account.spent,
        reserved_micro_usd: account.reserved,
        budget_micro_usd: limit,
        remaining_micro_usd: limit.map(|l| l.saturating_sub(account.spent)),
        projected_micro_usd,
        state,
        resets_at: period.end,
        resets_in_secs: period.seconds_until_reset(now),
    }
}

/// Whether the alert flag of `crossing` is set for the budget in `period` (the alert went
/// out, or for the limit: the limit took effect, e.g. a call was refused because it no
/// longer fit).
fn flag_is_set(
    ledger: &Ledger,
    name: &str,
    budget: &AgentBudget,
    period: &Period,
    crossing: Crossing,
) -> Result<bool, LedgerError> {
    let Some(mark) = policy::mark(budget, period.kind, crossing) else {
        return Ok(false);
    };
    let flag = AccountKey::Alerted {
        budget: name.to_string(),
        level: crossing.name(),
        mark,
    };
    Ok(ledger.read(period, &flag)?.spent > 0)
}

/// The state of one period from its spend and, where spend alone does not say, the alert
/// flags (a limit takes effect before spend reaches it when a call no longer fits).
pub fn period_state(
    budget: &AgentBudget,
    period: &Period,
    spent: u64,
    flag_set: &mut dyn FnMut(&Period, Crossing) -> bool,
) -> State {
    if budget.limit(period.kind).is_none() {
        return State::Ok;
    }
    let mut reached = |crossing: Crossing| {
        policy::mark(budget, period.kind, crossing).is_some_and(|mark| spent >= mark)
            || flag_set(period, crossing)
    };
    if budget.action == LimitAction::Degrade && reached(Crossing::DegradeExhausted) {
        return State::Stopped;
    }
    if reached(Crossing::Limit) {
        return match budget.action {
            LimitAction::Stop => State::Stopped,
            LimitAction::Degrade => State::Degraded,
            LimitAction::Alert => State::Overage,
        };
    }
    if reached(Crossing::Soft) {
        return State::SoftAlerted;
    }
    State::Ok
}

/// Escapes text for HTML element content and quoted attribute values.
pub fn escape_html(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            other => out.push(other),
        }
    }
    out
}

/// `$1.23` from a dollar up (rounded down); below it every significant digit, with at least
/// the cents (`$0.038`, `$0.0035`, `$0.10`), so small budgets do not read as zero.
fn usd(micro_usd: u64) -> String {
    if micro_usd >= 1_000_000 {
        return format!(
            "${}.{:02}",
            micro_usd / 1_000_000,
            micro_usd % 1_000_000 / 10_000
        );
    }
    let full = format_usd(micro_usd);
    let trimmed = full.trim_end_matches('0');
    // `0.` plus two decimals is the shortest kept.
    let keep = trimmed.len().max(4);
    format!("${}", full.get(..keep).unwrap_or(&full))
}

/// `3h 12m`, `4d 2h`, `45s`.
pub fn duration(secs: u64) -> String {
    let (days, hours, minutes) = (secs / 86_400, secs % 86_400 / 3_600, secs % 3_600 / 60);
    if days > 0 {
        format!("{days}d {hours}h")
    } else if hours > 0 {
        format!("{hours}h {minutes}m")
    } else if minutes > 0 {
        format!("{minutes}m {}s", secs % 60)
    } else {
        format!("{secs}s")
    }
}

const STYLE: &str = "body{font:14px/1.4 system-ui,-apple-system,'Segoe UI',sans-serif;margin:1.5em;color:#1b1f24;background:#fff}\
h1{font-size:1.3em;margin:0 0 .2em}p.meta{color:#57606a;margin:0 0 1em}\
table{border-collapse:collapse;width:100%}th,td{padding:.4em .7em;border-bottom:1px solid #d0d7de;text-align:left;vertical-align:top}\
th{background:#f6f8fa;font-weight:600;white-space:nowrap}th a{color:inherit}\
td.name{font-weight:600;white-space:nowrap}td.num{text-align:right;white-space:nowrap}\
.spent{font-size:1.1em;font-weight:600}.of,.sub{color:#57606a}.sub{font-size:.85em;white-space:nowrap}\
td.list ol{margin:0;padding-left:1.2em}td.list li{white-space:nowrap}\
.state{display:inline-block;padding:.1em .5em;border-radius:1em;font-size:.85em;font-weight:600;white-space:nowrap}\
.ok{background:#dafbe1;color:#116329}.soft-alerted{background:#fff8c5;color:#7d4e00}\
.overage{background:#ffebe9;color:#a40e26}.degraded{background:#fbefff;color:#6e40c9}\
.stopped{background:#a40e26;color:#fff}.error{color:#a40e26;font-size:.85em}";

fn top_list(out: &mut String, entries: &[(String, u64)]) {
    out.push_str("<td class=\"list\">");
    if entries.is_empty() {
        out.push_str("&ndash;");
    } else {
        out.push_str("<ol>");
        for (name, micro_usd) in entries.iter().take(TOP_SHOWN) {
            let _ = write!(
                out,
                "<li>{} <span>{}</span></li>",
                escape_html(name),
                usd(*micro_usd)
            );
        }
        out.push_str("</ol>");
    }
    out.push_str("</td>");
}

/// One period's cell: spent of budget, then what is left, the projection and the reset.
fn period_cell(out: &mut String, view: &PeriodView, class: &str) {
    let _ = write!(
        out,
        "<td class=\"num\"><span class=\"spent {class}\">{}</span> ",
        usd(view.spent_micro_usd)
    );
    match (view.budget_micro_usd, view.remaining_micro_usd) {
        (Some(budget), Some(remaining)) => {
            let _ = write!(
                out,
                "<span class=\"of\">of {}</span><div class=\"sub\">{} left</div>",
                usd(budget),
                usd(remaining)
            );
        }
        _ => out.push_str("<span class=\"of\">no budget</span><div class=\"sub\">&nbsp;</div>"),
    }
    let _ = write!(
        out,
        "<div class=\"sub\">projected {} &middot; resets in {}</div></td>",
        usd(view.projected_micro_usd),
        duration(view.resets_in_secs)
    );
}

/// The HTML page: one table row per agent, in the order given; no scripts, no external
/// assets, reloading itself every [`REFRESH_SECS`].
pub fn render_html(views: &[AgentView], order: Sort, now: i64) -> String {
    let mut out = String::with_capacity(4_096 + views.len() * 1_024);
    let _ = write!(
        out,
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">\
<meta http-equiv=\"refresh\" content=\"{REFRESH_SECS}\">\
<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
<title>agent-budget: budgets</title><style>{STYLE}</style></head><body>\
<h1>Agent budgets</h1><p class=\"meta\">As of <time>{}</time>, sorted by {}; refreshes every {REFRESH_SECS} s. \
Also as <a href=\"{JSON_PATH}\">JSON</a>.</p>",
        format_utc(now),
        order.name(),
    );
    let header = |label: &str, sort: Sort| {
        if sort == order {
            format!("{label} &#9662;")
        } else {
            format!("<a href=\"?sort={}\">{label}</a>", sort.name())
        }
    };
    let _ = write!(
        out,
        "<table id=\"budgets\"><thead><tr><th>{}</th><th>State</th><th class=\"num\">{}</th>\
<th class=\"num\">This month</th><th class=\"num\">Burn (USD/h)</th>\
<th>Top tasks today</th><th>Top users today</th></tr></thead><tbody>",
        header("Agent", Sort::Name),
        header("Spent today", Sort::Spend),
    );
    for view in views {
        let state = view.state.name();
        let _ = write!(
            out,
            "<tr data-agent=\"{name}\" data-state=\"{state}\" data-spent-today-micro-usd=\"{spent}\">\
<td class=\"name\">{name}</td><td><span class=\"state {state}\">{state}</span></td>",
            name = escape_html(&view.name),
            spent = view.day.spent_micro_usd,
        );
        period_cell(&mut out, &view.day, "spent-today");
        period_cell(&mut out, &view.month, "spent-month");
        let _ = write!(
            out,
            "<td class=\"num\">{}</td>",
            usd(view.burn_micro_usd_per_hour)
        );
        top_list(&mut out, &view.top_tasks);
        top_list(&mut out, &view.top_users);
        out.push_str("</tr>");
        if let Some(error) = &view.error {
            let _ = write!(
                out,
                "<tr><td></td><td colspan=\"6\" class=\"error\">ledger: {}</td></tr>",
                escape_html(error)
            );
        }
    }
    out.push_str("</tbody></table></body></html>\n");
    out
}

fn money(micro_usd: u64) -> Value {
    json!(micro_usd)
}

fn usd_number(micro_usd: u64) -> Value {
    json!(micro_usd as f64 / 1e6)
}

fn period_json(view: &PeriodView) -> Value {
    json!({
        "id": view.id,
        "state": view.state.name(),
        "spent_micro_usd": money(view.spent_micro_usd),
        "spent_usd": usd_number(view.spent_micro_usd),
        "reserved_micro_usd": money(view.reserved_micro_usd),
        "budget_micro_usd": view.budget_micro_usd,
        "budget_usd": view.budget_micro_usd.map(usd_number),
        "remaining_micro_usd": view.remaining_micro_usd,
        "remaining_usd": view.remaining_micro_usd.map(usd_number),
        "projected_micro_usd": money(view.projected_micro_usd),
        "projected_usd": usd_number(view.projected_micro_usd),
        "resets_at": format_utc(view.resets_at),
        "resets_in_secs": view.resets_in_secs,
    })
}

fn top_json(entries: &[(String, u64)], kind: &str) -> Value {
    Value::Array(
        entries
            .iter()
            .map(|(name, micro_usd)| {
                json!({
                    kind: name,
                    "spent_micro_usd": micro_usd,
                    "spent_usd": usd_number(*micro_usd),
                })
            })
            .collect(),
    )
}

/// The same rows as JSON (fields in the README's status page section).
pub fn render_json(views: &[AgentView], order: Sort, now: i64) -> String {
    let agents: Vec<Value> = views
        .iter()
        .map(|view| {
            json!({
                "agent": view.name,
                "action": view.action.name(),
                "state": view.state.name(),
                "day": period_json(&view.day),
                "month": period_json(&view.month),
                "burn_micro_usd_per_hour": view.burn_micro_usd_per_hour,
                "burn_usd_per_hour": usd_number(view.burn_micro_usd_per_hour),
                "baseline_micro_usd_per_hour": view.baseline_micro_usd_per_hour,
                "top_tasks": top_json(&view.top_tasks, "task"),
                "top_users": top_json(&view.top_users, "user"),
                "error": view.error,
            })
        })
        .collect();
    let page = json!({
        "generated_at": format_utc(now),
        "generated_at_unix": now,
        "sort": order.name(),
        "agents": agents,
    });
    let mut text = page.to_string();
    text.push('\n');
    text
}

/// A request to the status plugin, as the host read it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StatusRequest<'a> {
    pub method: &'a str,
    /// `:path`, query included.
    pub path: &'a str,
    pub authorization: Option<&'a str>,
}

/// Whether `authorization` is `Bearer <expected>`, compared in time independent of where
/// the two differ.
pub fn authorized(expected: &str, authorization: Option<&str>) -> bool {
    let Some(given) = authorization.map(str::trim) else {
        return false;
    };
    let Some((scheme, token)) = given.split_once(' ') else {
        return false;
    };
    if !scheme.eq_ignore_ascii_case("bearer") {
        return false;
    }
    let (token, expected) = (token.trim().as_bytes(), expected.as_bytes());
    let mut difference = u8::from(token.len() != expected.len());
    for (index, want) in expected.iter().enumerate() {
        difference |= want ^ token.get(index).copied().unwrap_or(!want);
    }
    difference == 0
}

/// The status plugin's answer to a request: `None` for a path it does not serve (the route
/// answers it). With a token configured, a request without it gets a bare 401.
pub fn respond(host: &dyn Host, worker: &Worker, request: &StatusRequest) -> Option<LocalReply> {
    let (path, query) = request.path.split_once('?').unwrap_or((request.path, ""));
    let json = match path {
        HTML_PATH => false,
        JSON_PATH => true,
        _ => return None,
    };
    if let Some(token) = &worker.config.status_page.bearer_token {
        if !authorized(token, request.authorization) {
            return Some(LocalReply {
                status: 401,
                headers: vec![("www-authenticate".to_string(), "Bearer".to_string())],
                body: Vec::new(),
            });
        }
    }
    if request.method != "GET" && request.method != "HEAD" {
        return Some(LocalReply {
            status: 405,
            headers: vec![("allow".to_string(), "GET, HEAD".to_string())],
            body: Vec::new(),
        });
    }
    let now = host.now_unix_secs();
    let order = Sort::from_query(query);
    let mut views = collect(host, worker, now);
    sort(&mut views, order);
    let (content_type, body) = if json {
        ("application/json", render_json(&views, order, now))
    } else {
        ("text/html; charset=utf-8", render_html(&views, order, now))
    };
    Some(LocalReply {
        status: 200,
        headers: vec![
            ("content-type".to_string(), content_type.to_string()),
            ("cache-control".to_string(), "no-store".to_string()),
        ],
        body: if request.method == "HEAD" {
            Vec::new()
        } else {
            body.into_bytes()
        },
    })
}

#[cfg(test)]
mod tests;
