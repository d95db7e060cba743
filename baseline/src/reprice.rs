//! What a call would have cost on another model, priced exactly as the filter prices: the
//! core's price table (plus the `pricing` section of a filter configuration, parsed by the
//! core's own configuration parser) and [`Price::cost_micro_usd`].

use crate::record::Call;
use agent_budget_core::config::Config;
use agent_budget_core::pricing::{normalize, Price, PriceTable};
use agent_budget_core::usage::Usage;

/// The built-in table's model families, for suggesting a name when `--compare-model` is
/// unknown. The core does not list its table; each name here is checked against it before
/// it is suggested, so a stale entry is never offered.
const KNOWN_FAMILIES: &[&str] = &[
    "gpt-5",
    "gpt-5-mini",
    "gpt-5-nano",
    "gpt-4.1",
    "gpt-4.1-mini",
    "gpt-4.1-nano",
    "gpt-4o",
    "gpt-4o-mini",
    "gpt-4-turbo",
    "gpt-4",
    "gpt-3.5-turbo",
    "o1",
    "o1-mini",
    "o3",
    "o3-mini",
    "o4-mini",
    "text-embedding-3-small",
    "text-embedding-3-large",
    "text-embedding-ada-002",
    "claude-opus-4-5",
    "claude-opus-4-1",
    "claude-opus-4",
    "claude-sonnet-4-5",
    "claude-sonnet-4",
    "claude-3-7-sonnet",
    "claude-3-5-sonnet",
    "claude-haiku-4-5",
    "claude-3-5-haiku",
    "claude-3-haiku",
    "claude-3-opus",
    "gemini-2.5-pro",
    "gemini-2.5-flash",
    "gemini-2.5-flash-lite",
    "gemini-2.0-flash",
    "gemini-2.0-flash-lite",
];

/// The price list used for comparisons: the built-in table plus configured prices.
#[derive(Debug, Clone)]
pub struct Prices {
    table: PriceTable,
    /// Models named in the pricing file, offered as suggestions too.
    configured: Vec<String>,
}

impl Default for Prices {
    fn default() -> Self {
        Prices {
            table: PriceTable::builtin(),
            configured: Vec::new(),
        }
    }
}

/// The model that traffic is repriced on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompareModel {
    /// As given on the command line.
    pub name: String,
    /// The table family it resolved to (`gpt-4o-mini` for `gpt-4o-mini-2024-07-18`).
    pub family: String,
    pub price: Price,
}

impl Prices {
    /// The built-in table with the `pricing` section of a filter configuration in JSON (the
    /// plugin configuration itself, or any object with a `pricing` key) laid over it.
    pub fn with_pricing_json(text: &str) -> Result<Prices, String> {
        let document: serde_json::Value =
            serde_json::from_str(text).map_err(|error| format!("not JSON: {error}"))?;
        let section = match document.get("pricing") {
            Some(section @ serde_json::Value::Object(_)) => section.clone(),
            Some(_) => return Err("`pricing` is not a map of model to price".to_string()),
            None => return Err("no `pricing` section".to_string()),
        };
        let configured: Vec<String> = section
            .as_object()
            .map(|map| map.keys().cloned().collect())
            .unwrap_or_default();
        // Parsed by the filter's own parser, so a price means here what it means there and
        // errors name the same fields (`pricing.my-model.input`). The placeholder agent only
        // satisfies the parser's rule that a configuration has one.
        let config = serde_json::json!({
            "agents": { "baseline-placeholder": { "daily_usd": 1 } },
            "pricing": section,
        });
        let parsed =
            Config::from_bytes(config.to_string().as_bytes()).map_err(|error| error.to_string())?;
        Ok(Prices {
            table: parsed.prices,
            configured,
        })
    }

    /// The comparison model, or an error naming it with the closest known names.
    pub fn compare_model(&self, name: &str) -> Result<CompareModel, String> {
        // The filter prices an unknown `gpt-4o-mni` as its prefix `gpt-4o`; as a comparison
        // target that would silently answer for another model, so the name itself (dates
        // and routing prefixes aside) must be priced.
        let wanted = normalize(name);
        match self.table.resolve(name) {
            Some(resolved) if resolved.family == wanted => Ok(CompareModel {
                name: name.to_string(),
                family: resolved.family.to_string(),
                price: *resolved.price,
            }),
            _ => {
                let close = self.close_matches(name);
                let hint = if close.is_empty() {
                    format!("; priced models: {}", self.priced_names().join(", "))
                } else {
                    format!("; close matches: {}", close.join(", "))
                };
                Err(format!(
                    "--compare-model: no price for model `{name}`{hint} (add it with --pricing)"
                ))
            }
        }
    }

    /// Up to five priced names near `name`: those that start with it (a name typed short)
    /// or hold it (`sonnet`), then those within a few edits, nearest first.
    pub fn close_matches(&self, name: &str) -> Vec<String> {
        let wanted = normalize(name);
        let max_edits = (wanted.len() / 3).clamp(1, 3);
        let mut scored: Vec<(usize, String)> = self
            .priced_names()
            .into_iter()
            .filter_map(|candidate| {
                let key = normalize(&candidate);
                let score = if !wanted.is_empty() && key.starts_with(wanted.as_str()) {
                    0
                } else if wanted.len() >= 4 && key.contains(wanted.as_str()) {
                    1
                } else {
                    let distance = edit_distance(&wanted, &key);
                    if distance > max_edits {
                        return None;
                    }
                    distance
                };
                Some((score, candidate))
            })
            .collect();
        scored.sort();
        scored.into_iter().take(5).map(|(_, name)| name).collect()
    }

    /// Every model name this list can price that it knows to name: the built-in families and
    /// the pricing file's models.
    pub fn priced_names(&self) -> Vec<String> {
        let mut names: Vec<String> = KNOWN_FAMILIES
            .iter()
            .map(|family| (*family).to_string())
            .chain(self.configured.iter().cloned())
            .filter(|candidate| self.table.resolve(candidate).is_some())
            .collect();
        names.sort();
        names.dedup();
        names
    }
}

impl CompareModel {
    /// The call's tokens at this model's price. The record's input count includes cached
    /// and cache-write tokens; the log does not split cache writes by tier, so they are
    /// priced at the 5-minute rate (the usual one).
    pub fn cost_micro_usd(&self, call: &Call<'_>) -> u64 {
        let usage = Usage {
            input: call
                .input_tokens
                .saturating_sub(call.cache_read_tokens)
                .saturating_sub(call.cache_write_tokens),
            cache_read: call.cache_read_tokens,
            cache_write_5m: call.cache_write_tokens,
            cache_write_1h: 0,
            output: call.output_tokens,
            reasoning: 0,
        };
        self.price.cost_micro_usd(&usage)
    }
}

/// Levenshtein distance over bytes (model names are ASCII).
pub fn edit_distance(a: &str, b: &str) -> usize {
    let b = b.as_bytes();
    let mut previous: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.bytes().enumerate() {
        let mut current = Vec::with_capacity(b.len() + 1);
        current.push(i + 1);
        for (j, cb) in b.iter().enumerate() {
            let substitute = previous
                .get(j)
                .map_or(usize::MAX, |d| d + usize::from(ca != *cb));
            let delete = previous.get(j + 1).map_or(usize::MAX, |d| d + 1);
            let insert = current.get(j).map_or(usize::MAX, |d| d + 1);
            current.push(substitute.min(delete).min(insert));
        }
        previous = current;
    }
    previous.last().copied().unwrap_or(0)
}

#[cfg(test)]
mod tests;
