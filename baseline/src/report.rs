//! The three printed forms of the per-agent figures: an aligned table, CSV, and a YAML
//! snippet of the filter's `agents` configuration.

use crate::reprice::CompareModel;
use crate::stats::{Recommendation, Summary};
use agent_budget_core::config::is_valid_agent_id;
use agent_budget_core::pricing::format_usd;

/// `$1.2346`: micro-USD rounded half up to a hundredth of a cent, for reading.
pub fn usd4(micro_usd: u64) -> String {
    let units = micro_usd / 100 + u64::from(micro_usd % 100 >= 50);
    format!("${}.{:04}", units / 10_000, units % 10_000)
}

/// `$-0.5000` style for a signed amount (a saving that is a loss).
fn signed_usd4(micro_usd: i128) -> String {
    let magnitude = u64::try_from(micro_usd.unsigned_abs()).unwrap_or(u64::MAX);
    if micro_usd < 0 {
        format!("-{}", usd4(magnitude))
    } else {
        usd4(magnitude)
    }
}

/// `4.05`: a whole-cent amount (recommendations are rounded up to a cent).
pub fn cents(micro_usd: u64) -> String {
    let cents = micro_usd.div_ceil(10_000);
    format!("{}.{:02}", cents / 100, cents % 100)
}

/// `12.34`: hundredths as a decimal.
fn hundredths(value: u64) -> String {
    format!("{}.{:02}", value / 100, value % 100)
}

/// The saving as a percentage of the actual cost with one decimal (`37.5%`), or `-`.
fn saving_percent(summary: &Summary) -> String {
    if summary.cost_micro_usd == 0 {
        return "-".to_string();
    }
    let tenths = summary.saving_micro_usd() * 1000 / i128::from(summary.cost_micro_usd);
    let sign = if tenths < 0 { "-" } else { "" };
    let magnitude = tenths.unsigned_abs();
    format!("{sign}{}.{}%", magnitude / 10, magnitude % 10)
}

/// Why the recommendation is what it is, and what biases it.
fn note(summary: &Summary) -> String {
    let mut note = match &summary.recommendation {
        Recommendation::Firm(_) => "ok".to_string(),
        Recommendation::Provisional(_) => format!(
            "provisional: {} tasks, fewer than {}",
            summary.tasks,
            crate::stats::PROVISIONAL_UNDER_TASKS
        ),
        Recommendation::Refused(reason) => format!("refused: {reason}"),
    };
    if summary.stopped_calls > 0 {
        note.push_str(&format!(
            "; {} calls stopped by the budget (spend is a floor)",
            summary.stopped_calls
        ));
    }
    note
}

fn budget(summary: &Summary) -> Option<u64> {
    match summary.recommendation {
        Recommendation::Firm(budget) | Recommendation::Provisional(budget) => Some(budget),
        Recommendation::Refused(_) => None,
    }
}

fn status(summary: &Summary) -> &'static str {
    match summary.recommendation {
        Recommendation::Firm(_) => "ok",
        Recommendation::Provisional(_) => "provisional",
        Recommendation::Refused(_) => "refused",
    }
}

/// The aligned table: numbers right-aligned, names and notes left-aligned.
pub fn table(summaries: &[Summary], compare: Option<&CompareModel>) -> String {
    let mut header: Vec<String> = [
        "agent",
        "days",
        "calls",
        "tasks",
        "tasks/day",
        "in tok/task",
        "out tok/task",
        "cost/task",
        "cost/day",
        "p90 day",
        "budget/day",
    ]
    .iter()
    .map(|h| (*h).to_string())
    .collect();
    if let Some(model) = compare {
        header.push("cost".to_string());
        header.push(format!("on {}", model.name));
        header.push("saving".to_string());
    }
    header.push("note".to_string());
    let columns = header.len();
    let rows: Vec<Vec<String>> = summaries
        .iter()
        .map(|s| {
            let mut row = vec![
                s.agent.clone(),
                s.days.to_string(),
                s.calls.to_string(),
                s.tasks.to_string(),
                hundredths(s.tasks_per_day_hundredths()),
                s.input_tokens_per_task().to_string(),
                s.output_tokens_per_task().to_string(),
                usd4(s.cost_per_task_micro_usd()),
                usd4(s.cost_per_day_micro_usd()),
                usd4(s.p90_daily_micro_usd),
                budget(s).map_or_else(|| "-".to_string(), |b| format!("${}", cents(b))),
            ];
            if compare.is_some() {
                row.push(usd4(s.cost_micro_usd));
                row.push(usd4(s.compare_micro_usd));
                row.push(format!(
                    "{} ({})",
                    signed_usd4(s.saving_micro_usd()),
                    saving_percent(s)
                ));
            }
            row.push(note(s));
            row
        })
        .collect();
    let widths: Vec<usize> = (0..columns)
        .map(|column| {
            std::iter::once(&header)
                .chain(rows.iter())
                .filter_map(|row| row.get(column))
                .map(|cell| cell.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let left_aligned = |column: usize| column == 0 || column + 1 == columns;
    let mut out = String::new();
    for row in std::iter::once(&header).chain(rows.iter()) {
        let cells: Vec<String> = row
            .iter()
            .zip(&widths)
            .enumerate()
            .map(|(column, (cell, width))| {
                if column + 1 == columns {
                    cell.clone()
                } else if left_aligned(column) {
                    format!("{cell:<width$}")
                } else {
                    format!("{cell:>width$}")
                }
            })
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    out
}

fn csv_field(value: &str) -> String {
    if value.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", value.replace('"', "\"\""))
    } else {
        value.to_string()
    }
}

/// CSV with a header row; money in USD with six decimals (exact micro-USD), the budget in
/// cents, empty when refused.
pub fn csv(summaries: &[Summary], compare: Option<&CompareModel>) -> String {
    let mut header = vec![
        "agent",
        "days",
        "calls",
        "stopped_calls",
        "tasks",
        "tasks_per_day",
        "input_tokens_per_task",
        "output_tokens_per_task",
        "cost_usd",
        "cost_per_task_usd",
        "cost_per_day_usd",
        "p90_daily_usd",
        "recommended_daily_usd",
        "status",
        "note",
    ];
    if compare.is_some() {
        header.extend(["compare_model", "cost_on_model_usd", "saving_usd"]);
    }
    let mut out = header.join(",");
    out.push('\n');
    for s in summaries {
        let mut row = vec![
            csv_field(&s.agent),
            s.days.to_string(),
            s.calls.to_string(),
            s.stopped_calls.to_string(),
            s.tasks.to_string(),
            hundredths(s.tasks_per_day_hundredths()),
            s.input_tokens_per_task().to_string(),
            s.output_tokens_per_task().to_string(),
            format_usd(s.cost_micro_usd),
            format_usd(s.cost_per_task_micro_usd()),
            format_usd(s.cost_per_day_micro_usd()),
            format_usd(s.p90_daily_micro_usd),
            budget(s).map(cents).unwrap_or_default(),
            status(s).to_string(),
            csv_field(&note(s)),
        ];
        if let Some(model) = compare {
            let saving = s.saving_micro_usd();
            let magnitude = u64::try_from(saving.unsigned_abs()).unwrap_or(u64::MAX);
            let sign = if saving < 0 { "-" } else { "" };
            row.push(csv_field(&model.name));
            row.push(format_usd(s.compare_micro_usd));
            row.push(format!("{sign}{}", format_usd(magnitude)));
        }
        out.push_str(&row.join(","));
        out.push('\n');
    }
    out
}

/// A YAML map key as the filter's `agents` expects it, quoted where YAML would read it as
/// something other than a string (`true`, `123`, `-x`).
fn yaml_key(name: &str) -> String {
    let plain = name.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
        && !matches!(
            name.to_ascii_lowercase().as_str(),
            "y" | "n" | "yes" | "no" | "true" | "false" | "on" | "off" | "null"
        );
    if plain {
        name.to_string()
    } else {
        format!("\"{name}\"")
    }
}

/// The filter configuration's `agents` section with the recommended daily budgets, ready
/// to merge into the plugin configuration; provisional ones are commented out.
pub fn config(summaries: &[Summary]) -> String {
    let mut out = String::from(
        "# Daily budgets recommended by agent-budget-baseline: 1.5 x each agent's 90th-percentile\n\
         # daily cost (nearest rank over every day from its first to its last call), rounded up\n\
         # to a cent. Merge into the plugin configuration's `agents`; provisional ones are\n\
         # commented out until the agent has 100 tasks in the log.\n",
    );
    let firm = summaries.iter().any(|s| {
        matches!(s.recommendation, Recommendation::Firm(_)) && is_valid_agent_id(&s.agent)
    });
    out.push_str(if firm { "agents:\n" } else { "agents: {}\n" });
    for s in summaries {
        let figures = format!(
            "{} tasks over {} days, p90 {}/day",
            s.tasks,
            s.days,
            usd4(s.p90_daily_micro_usd)
        );
        if !is_valid_agent_id(&s.agent) {
            out.push_str(&format!(
                "  # {:?}: not configurable ({})\n",
                s.agent,
                agent_budget_core::config::AGENT_ID_RULE
            ));
            continue;
        }
        let key = yaml_key(&s.agent);
        match &s.recommendation {
            Recommendation::Firm(budget) => {
                out.push_str(&format!(
                    "  {key}:\n    daily_usd: {} # {figures}\n",
                    cents(*budget)
                ));
            }
            Recommendation::Provisional(budget) => {
                out.push_str(&format!(
                    "  # provisional ({figures}):\n  # {key}:\n  #   daily_usd: {}\n",
                    cents(*budget)
                ));
            }
            Recommendation::Refused(reason) => {
                out.push_str(&format!("  # {key}: no recommendation ({reason})\n"));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests;
