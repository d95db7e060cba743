//! Per-agent aggregates, kept in daily buckets so memory grows with agents × days and
//! distinct tasks, never with the number of log lines; and the figures derived from them.

use crate::record::Call;
use agent_budget_core::period::TimeZone;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::hash::{Hash, Hasher};

const SECS_PER_DAY: i64 = 86_400;

/// Fewer tasks than this: no recommendation.
pub const REFUSE_UNDER_TASKS: u64 = 20;
/// Fewer tasks than this: the recommendation is provisional.
pub const PROVISIONAL_UNDER_TASKS: u64 = 100;
/// The recommended daily budget is this multiple of the p90 daily cost (3/2 = 1.5x).
const HEADROOM_NUMERATOR: u64 = 3;
const HEADROOM_DENOMINATOR: u64 = 2;
const MICRO_PER_CENT: u64 = 10_000;

/// One agent's day.
#[derive(Debug, Default)]
struct Day {
    cost_micro_usd: u64,
    /// 64-bit hashes of the day's task ids: exact counting barring a hash collision, at 8
    /// bytes per distinct task whatever the id's length.
    tasks: HashSet<u64>,
    /// Calls without a task id: each is a task of its own.
    untasked_calls: u64,
}

/// Everything kept about one agent while reading.
#[derive(Debug, Default)]
pub struct AgentTotals {
    days: BTreeMap<i64, Day>,
    calls: u64,
    stopped_calls: u64,
    input_tokens: u64,
    output_tokens: u64,
    cost_micro_usd: u64,
    /// What the same calls would have cost on the comparison model.
    compare_micro_usd: u64,
}

/// Reads calls one by one into per-agent totals.
#[derive(Debug)]
pub struct Aggregator {
    zone: TimeZone,
    agents: HashMap<String, AgentTotals>,
}

impl Aggregator {
    /// Days are calendar days in `zone` (the filter's `time_zone`, so they match its daily
    /// budgets).
    pub fn new(zone: TimeZone) -> Aggregator {
        Aggregator {
            zone,
            agents: HashMap::new(),
        }
    }

    /// Adds one call; `compare_micro_usd` is its cost on the comparison model (0 without one).
    pub fn add(&mut self, call: &Call<'_>, compare_micro_usd: u64) {
        let totals = match self.agents.get_mut(call.agent.as_ref()) {
            Some(totals) => totals,
            None => self.agents.entry(call.agent.to_string()).or_default(),
        };
        let local = call
            .unix_secs
            .saturating_add(i64::from(self.zone.offset_secs()));
        let day = totals
            .days
            .entry(local.div_euclid(SECS_PER_DAY))
            .or_default();
        day.cost_micro_usd = day.cost_micro_usd.saturating_add(call.cost_micro_usd);
        match &call.task {
            Some(task) => {
                day.tasks.insert(task_hash(task));
            }
            None => day.untasked_calls += 1,
        }
        totals.calls += 1;
        totals.stopped_calls += u64::from(call.stopped);
        totals.input_tokens = totals.input_tokens.saturating_add(call.input_tokens);
        totals.output_tokens = totals.output_tokens.saturating_add(call.output_tokens);
        totals.cost_micro_usd = totals.cost_micro_usd.saturating_add(call.cost_micro_usd);
        totals.compare_micro_usd = totals.compare_micro_usd.saturating_add(compare_micro_usd);
    }

    pub fn is_empty(&self) -> bool {
        self.agents.is_empty()
    }

    /// Every agent's figures, sorted by agent name.
    pub fn summaries(&self) -> Vec<Summary> {
        let mut summaries: Vec<Summary> = self
            .agents
            .iter()
            .map(|(agent, totals)| Summary::of(agent, totals))
            .collect();
        summaries.sort_by(|a, b| a.agent.cmp(&b.agent));
        summaries
    }
}

/// A hash that is the same for the same id within a run (`DefaultHasher::new` has fixed
/// keys), so task sets need not keep the ids.
fn task_hash(task: &str) -> u64 {
    let mut hasher = std::hash::DefaultHasher::new();
    task.hash(&mut hasher);
    hasher.finish()
}

/// Whether the figures support a budget.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recommendation {
    /// Enough tasks: this daily budget, in micro-USD (whole cents).
    Firm(u64),
    /// Fewer than [`PROVISIONAL_UNDER_TASKS`] tasks: a budget to revisit.
    Provisional(u64),
    /// No budget, and why.
    Refused(String),
}

/// One agent's figures, all money in micro-USD.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    pub agent: String,
    /// Days from the agent's first to its last day in the log, both included.
    pub days: u64,
    /// (day number in the zone, cost) for every day of that span, zeros included.
    pub daily_micro_usd: Vec<(i64, u64)>,
    pub calls: u64,
    pub stopped_calls: u64,
    pub tasks: u64,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cost_micro_usd: u64,
    pub compare_micro_usd: u64,
    pub p90_daily_micro_usd: u64,
    pub recommendation: Recommendation,
}

impl Summary {
    fn of(agent: &str, totals: &AgentTotals) -> Summary {
        let first = totals.days.keys().next().copied().unwrap_or(0);
        let last = totals.days.keys().next_back().copied().unwrap_or(first);
        let daily_micro_usd: Vec<(i64, u64)> = (first..=last)
            .map(|day| {
                let cost = totals.days.get(&day).map_or(0, |d| d.cost_micro_usd);
                (day, cost)
            })
            .collect();
        let tasks = totals
            .days
            .values()
            .map(|day| day.tasks.len() as u64 + day.untasked_calls)
            .sum();
        let costs: Vec<u64> = daily_micro_usd.iter().map(|(_, cost)| *cost).collect();
        let p90 = percentile_nearest_rank(&costs, 90).unwrap_or(0);
        Summary {
            agent: agent.to_string(),
            days: daily_micro_usd.len() as u64,
            daily_micro_usd,
            calls: totals.calls,
            stopped_calls: totals.stopped_calls,
            tasks,
            input_tokens: totals.input_tokens,
            output_tokens: totals.output_tokens,
            cost_micro_usd: totals.cost_micro_usd,
            compare_micro_usd: totals.compare_micro_usd,
            p90_daily_micro_usd: p90,
            recommendation: recommend(tasks, p90),
        }
    }

    pub fn tasks_per_day_hundredths(&self) -> u64 {
        ratio_rounded(self.tasks.saturating_mul(100), self.days)
    }

    pub fn input_tokens_per_task(&self) -> u64 {
        ratio_rounded(self.input_tokens, self.tasks)
    }

    pub fn output_tokens_per_task(&self) -> u64 {
        ratio_rounded(self.output_tokens, self.tasks)
    }

    pub fn cost_per_task_micro_usd(&self) -> u64 {
        ratio_rounded(self.cost_micro_usd, self.tasks)
    }

    pub fn cost_per_day_micro_usd(&self) -> u64 {
        ratio_rounded(self.cost_micro_usd, self.days)
    }

    /// Actual cost minus the cost on the comparison model (negative: the model costs more).
    pub fn saving_micro_usd(&self) -> i128 {
        i128::from(self.cost_micro_usd) - i128::from(self.compare_micro_usd)
    }
}

/// `numerator / denominator` rounded half up; 0 for a zero denominator.
pub fn ratio_rounded(numerator: u64, denominator: u64) -> u64 {
    if denominator == 0 {
        return 0;
    }
    let (n, d) = (u128::from(numerator), u128::from(denominator));
    u64::try_from((n * 2 + d) / (d * 2)).unwrap_or(u64::MAX)
}

/// The nearest-rank percentile: the smallest value with at least `percent`% of the values
/// at or below it, i.e. the ⌈percent/100 × n⌉-th smallest. `None` for no values.
pub fn percentile_nearest_rank(values: &[u64], percent: u64) -> Option<u64> {
    let mut sorted = values.to_vec();
    sorted.sort_unstable();
    let n = sorted.len() as u64;
    let rank = (percent.min(100) * n).div_ceil(100).max(1);
    let index = usize::try_from(rank - 1).ok()?;
    sorted.get(index).copied()
}

/// 1.5 × `p90` rounded up to a whole cent, in micro-USD.
pub fn recommended_daily_micro_usd(p90_micro_usd: u64) -> u64 {
    let scaled = u128::from(p90_micro_usd) * u128::from(HEADROOM_NUMERATOR);
    let cent_scaled = u128::from(HEADROOM_DENOMINATOR) * u128::from(MICRO_PER_CENT);
    let cents = scaled.div_ceil(cent_scaled);
    u64::try_from(cents * u128::from(MICRO_PER_CENT)).unwrap_or(u64::MAX)
}

/// The recommendation for an agent with `tasks` tasks and this p90 daily cost.
pub fn recommend(tasks: u64, p90_micro_usd: u64) -> Recommendation {
    if tasks < REFUSE_UNDER_TASKS {
        return Recommendation::Refused(format!("{tasks} tasks, fewer than {REFUSE_UNDER_TASKS}"));
    }
    if p90_micro_usd == 0 {
        // A zero budget would refuse every call; nothing to base one on.
        return Recommendation::Refused("no spend on 90% of days (p90 is $0)".to_string());
    }
    let budget = recommended_daily_micro_usd(p90_micro_usd);
    if tasks < PROVISIONAL_UNDER_TASKS {
        Recommendation::Provisional(budget)
    } else {
        Recommendation::Firm(budget)
    }
}

#[cfg(test)]
mod tests;
