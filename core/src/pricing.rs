//! Model prices and the cost of a call, in integer micro-USD.
//!
//! Prices are kept as micro-USD per million tokens (USD per million tokens × 10^6), so a
//! call's cost is `Σ tokens × price / 10^6` computed in u128 and rounded up once per call:
//! no float ever touches money after configuration is parsed.

use crate::usage::Usage;
use std::collections::BTreeMap;

/// Micro-USD per million tokens for each billing class.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Price {
    pub input: u64,
    pub output: u64,
    pub cache_read: u64,
    pub cache_write_5m: u64,
    pub cache_write_1h: u64,
}

impl Price {
    /// A price from USD-per-million figures given in micro units, deriving the cache classes
    /// the way providers bill them when not given: cache reads at the input rate (the safe
    /// side), 5-minute cache writes at 1.25× input, 1-hour writes at 2× input.
    pub const fn new(input: u64, output: u64, cache_read: Option<u64>) -> Price {
        Price {
            input,
            output,
            cache_read: match cache_read {
                Some(price) => price,
                None => input,
            },
            cache_write_5m: input.saturating_add(input / 4),
            cache_write_1h: input.saturating_mul(2),
        }
    }

    /// The same price with the 5-minute cache-write rate given explicitly (where a provider
    /// does not bill exactly 1.25x input).
    pub const fn with_cache_write(self, cache_write_5m: u64) -> Price {
        Price {
            cache_write_5m,
            ..self
        }
    }

    /// Cost of `usage` at this price, in micro-USD, rounded up to the next micro-USD.
    pub fn cost_micro_usd(&self, usage: &Usage) -> u64 {
        let classes = [
            (usage.input, self.input),
            (usage.output, self.output),
            (usage.cache_read, self.cache_read),
            (usage.cache_write_5m, self.cache_write_5m),
            (usage.cache_write_1h, self.cache_write_1h),
        ];
        // tokens × micro-USD per million: exact in u128 for any realistic figure, saturating
        // for absurd ones instead of wrapping.
        let micro_times_million = classes.iter().fold(0u128, |sum, (tokens, price)| {
            sum.saturating_add(u128::from(*tokens).saturating_mul(u128::from(*price)))
        });
        let micro = micro_times_million.div_ceil(1_000_000);
        u64::try_from(micro).unwrap_or(u64::MAX)
    }
}

/// `usd(2, 50)` is $2.50 per million tokens, as micro-USD per million.
const fn usd(dollars: u64, cents_and_below: u64) -> u64 {
    dollars * 1_000_000 + cents_and_below * 10_000
}

/// Micro-USD per million from a price with more than two decimals (`micro(75_000)` is $0.075).
const fn micro(v: u64) -> u64 {
    v
}

/// Built-in list prices (USD per million tokens, standard tier, as published by the
/// providers). Users extend or override them with `pricing` in the plugin configuration.
const BUILTIN: &[(&str, Price)] = &[
    // OpenAI
    (
        "gpt-5",
        Price::new(usd(1, 25), usd(10, 0), Some(micro(125_000))),
    ),
    (
        "gpt-5-mini",
        Price::new(usd(0, 25), usd(2, 0), Some(micro(25_000))),
    ),
    (
        "gpt-5-nano",
        Price::new(micro(50_000), usd(0, 40), Some(micro(5_000))),
    ),
    (
        "gpt-4.1",
        Price::new(usd(2, 0), usd(8, 0), Some(usd(0, 50))),
    ),
    (
        "gpt-4.1-mini",
        Price::new(usd(0, 40), usd(1, 60), Some(usd(0, 10))),
    ),
    (
        "gpt-4.1-nano",
        Price::new(usd(0, 10), usd(0, 40), Some(micro(25_000))),
    ),
    (
        "gpt-4o",
        Price::new(usd(2, 50), usd(10, 0), Some(usd(1, 25))),
    ),
    (
        "gpt-4o-mini",
        Price::new(micro(150_000), usd(0, 60), Some(micro(75_000))),
    ),
    ("gpt-4-turbo", Price::new(usd(10, 0), usd(30, 0), None)),
    ("gpt-4", Price::new(usd(30, 0), usd(60, 0), None)),
    ("gpt-3.5-turbo", Price::new(usd(0, 50), usd(1, 50), None)),
    ("o1", Price::new(usd(15, 0), usd(60, 0), Some(usd(7, 50)))),
    (
        "o1-mini",
        Price::new(usd(1, 10), usd(4, 40), Some(usd(0, 55))),
    ),
    ("o3", Price::new(usd(2, 0), usd(8, 0), Some(usd(0, 50)))),
    (
        "o3-mini",
        Price::new(usd(1, 10), usd(4, 40), Some(usd(0, 55))),
    ),
    (
        "o4-mini",
        Price::new(usd(1, 10), usd(4, 40), Some(micro(275_000))),
    ),
    ("text-embedding-3-small", Price::new(micro(20_000), 0, None)),
    (
        "text-embedding-3-large",
        Price::new(micro(130_000), 0, None),
    ),
    ("text-embedding-ada-002", Price::new(usd(0, 10), 0, None)),
    // Anthropic (cache writes 1.25× / 2× input and reads 0.1× input, as billed)
    (
        "claude-opus-4-5",
        Price::new(usd(5, 0), usd(25, 0), Some(usd(0, 50))),
    ),
    (
        "claude-opus-4-1",
        Price::new(usd(15, 0), usd(75, 0), Some(usd(1, 50))),
    ),
    (
        "claude-opus-4",
        Price::new(usd(15, 0), usd(75, 0), Some(usd(1, 50))),
    ),
    (
        "claude-sonnet-4-5",
        Price::new(usd(3, 0), usd(15, 0), Some(usd(0, 30))),
    ),
    (
        "claude-sonnet-4",
        Price::new(usd(3, 0), usd(15, 0), Some(usd(0, 30))),
    ),
    (
        "claude-3-7-sonnet",
        Price::new(usd(3, 0), usd(15, 0), Some(usd(0, 30))),
    ),
    (
        "claude-3-5-sonnet",
        Price::new(usd(3, 0), usd(15, 0), Some(usd(0, 30))),
    ),
    (
        "claude-haiku-4-5",
        Price::new(usd(1, 0), usd(5, 0), Some(usd(0, 10))),
    ),
    (
        "claude-3-5-haiku",
        Price::new(micro(800_000), usd(4, 0), Some(micro(80_000))),
    ),
    (
        "claude-3-haiku",
        Price::new(usd(0, 25), usd(1, 25), Some(micro(30_000))),
    ),
    (
        "claude-3-opus",
        Price::new(usd(15, 0), usd(75, 0), Some(usd(1, 50))),
    ),
    // Google (standard context tier)
    (
        "gemini-2.5-pro",
        Price::new(usd(1, 25), usd(10, 0), Some(micro(125_000))),
    ),
    (
        "gemini-2.5-flash",
        Price::new(usd(0, 30), usd(2, 50), Some(micro(30_000))),
    ),
    (
        "gemini-2.5-flash-lite",
        Price::new(usd(0, 10), usd(0, 40), Some(micro(10_000))),
    ),
    (
        "gemini-2.0-flash",
        Price::new(usd(0, 10), usd(0, 40), Some(micro(25_000))),
    ),
    (
        "gemini-2.0-flash-lite",
        Price::new(micro(75_000), usd(0, 30), None),
    ),
];

/// The built-in table plus the configured overrides, keyed by normalized model family.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PriceTable {
    prices: BTreeMap<String, Price>,
}

/// How a model name matched the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resolved<'a> {
    pub family: &'a str,
    pub price: &'a Price,
}

impl PriceTable {
    pub fn builtin() -> PriceTable {
        PriceTable {
            prices: BUILTIN
                .iter()
                .map(|(name, price)| ((*name).to_string(), *price))
                .collect(),
        }
    }

    /// Adds or replaces a model's price (configuration wins over the built-in table).
    pub fn set(&mut self, model: &str, price: Price) {
        self.prices.insert(normalize(model), price);
    }

    /// The price of `model`: an exact match of the normalized name, else the longest table
    /// family that is a `-`-separated prefix of it (`gpt-4o-mini-2024-07-18` is `gpt-4o-mini`,
    /// `claude-sonnet-4-5-20250929` is `claude-sonnet-4-5`).
    pub fn resolve(&self, model: &str) -> Option<Resolved<'_>> {
        // Most calls name a table key exactly; normalizing it would give the same key.
        if let Some((family, price)) = self.prices.get_key_value(model) {
            return Some(Resolved { family, price });
        }
        let name = normalize(model);
        let mut candidate = name.as_str();
        loop {
            if let Some((family, price)) = self.prices.get_key_value(candidate) {
                return Some(Resolved { family, price });
            }
            candidate = candidate.get(..candidate.rfind('-')?)?;
        }
    }
}

/// Lower-cases and drops routing prefixes (`models/`, `openai/`, `anthropic/`...) and
/// date/`-latest` suffixes, so every spelling of a model lands on one table key.
pub fn normalize(model: &str) -> String {
    let trimmed = model.trim();
    let base = trimmed.rsplit('/').next().unwrap_or(trimmed);
    let mut name = base.to_ascii_lowercase();
    // Bedrock / Vertex spellings: `anthropic.claude-3-5-sonnet-20241022-v2:0`, `...@20241022`.
    if let Some(at) = name.find('@') {
        name.truncate(at);
    }
    if let Some(rest) = name.strip_prefix("anthropic.") {
        name = rest.to_string();
    }
    if let Some(colon) = name.find(':') {
        name.truncate(colon);
    }
    strip_version_suffixes(&name).to_string()
}

fn strip_version_suffixes(name: &str) -> &str {
    let mut name = name;
    loop {
        let before = name;
        for suffix in ["-latest", "-v1", "-v2"] {
            if let Some(stripped) = name.strip_suffix(suffix) {
                name = stripped;
            }
        }
        // -YYYYMMDD
        if let Some((head, tail)) = name.rsplit_once('-') {
            if tail.len() == 8 && tail.bytes().all(|b| b.is_ascii_digit()) {
                name = head;
            }
        }
        // -YYYY-MM-DD
        if name.len() > 11 {
            let split = name.len() - 11;
            if let (Some(head), Some(tail)) = (name.get(..split), name.get(split..)) {
                let bytes = tail.as_bytes();
                let date_shape = bytes.len() == 11
                    && bytes.iter().enumerate().all(|(i, b)| match i {
                        0 | 5 | 8 => *b == b'-',
                        _ => b.is_ascii_digit(),
                    });
                if date_shape {
                    name = head;
                }
            }
        }
        if name == before {
            return name;
        }
    }
}

/// USD (as configured, e.g. 2.5) to micro-USD, or None if negative, non-finite or absurd.
pub fn usd_to_micro(usd: f64) -> Option<u64> {
    // 10^12 USD is far beyond any budget or price; above it f64 stops being exact in micro.
    if !usd.is_finite() || !(0.0..=1e12).contains(&usd) {
        return None;
    }
    // In range by the check above; rounding to the nearest micro-USD absorbs binary noise (0.1).
    Some((usd * 1e6).round() as u64)
}

/// Micro-USD as a USD decimal string with six decimals (`5.000000`), for headers and logs.
pub fn format_usd(micro_usd: u64) -> String {
    // Digit by digit, from the last: a budget header is formatted on every call, and the
    // formatting machinery costs several times this.
    let mut reversed = Vec::with_capacity(28);
    let mut rest = micro_usd;
    for place in 0.. {
        if place == 6 {
            reversed.push(b'.');
        }
        reversed.push(b'0' + (rest % 10) as u8);
        rest /= 10;
        if place >= 6 && rest == 0 {
            break;
        }
    }
    reversed.reverse();
    String::from_utf8(reversed).unwrap_or_default()
}

#[cfg(test)]
mod tests;
