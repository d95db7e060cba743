//! One line of the attribution log: the fields a baseline needs, parsed without copying
//! where the JSON has no escapes. Every other key of the record is ignored.

use serde::{Deserialize, Deserializer};
use std::borrow::Cow;

/// The fields of one attribution record that the baseline reads.
#[derive(Debug, Deserialize)]
pub struct Line<'a> {
    #[serde(borrow, default)]
    pub time: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub agent: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub task: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub action: Option<Cow<'a, str>>,
    #[serde(
        rename = "gen_ai.usage.input_tokens",
        default,
        deserialize_with = "count"
    )]
    pub input_tokens: Option<u64>,
    #[serde(
        rename = "gen_ai.usage.output_tokens",
        default,
        deserialize_with = "count"
    )]
    pub output_tokens: Option<u64>,
    #[serde(default, deserialize_with = "count")]
    pub cache_read_tokens: Option<u64>,
    #[serde(default, deserialize_with = "count")]
    pub cache_write_tokens: Option<u64>,
    #[serde(default, deserialize_with = "count")]
    pub cost_micro_usd: Option<u64>,
}

/// A record the baseline counts: the agent, the Unix second of the call and its figures.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Call<'a> {
    pub agent: Cow<'a, str>,
    pub unix_secs: i64,
    /// `None` for a call without a task id (absent or `-`): a task of its own.
    pub task: Option<Cow<'a, str>>,
    pub stopped: bool,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cache_read_tokens: u64,
    pub cache_write_tokens: u64,
    pub cost_micro_usd: u64,
}

/// Why a line was not counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Skip {
    /// Not a JSON object at all (a plain-text log line, an array, truncated JSON).
    NotJsonObject,
    /// A JSON object without a non-empty string `agent` (another access log's line).
    NoAgent,
    /// Has an agent, but its `time` is missing or not RFC 3339, or a count is not a
    /// non-negative integer.
    BadField,
}

/// Parses one line (without its newline). `Ok(None)` for a blank line.
pub fn parse(bytes: &[u8]) -> Result<Option<Call<'_>>, Skip> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    let line: Line<'_> = match serde_json::from_slice(bytes) {
        Ok(line) => line,
        Err(_) => return Err(classify(bytes)),
    };
    let Some(agent) = line.agent.filter(|agent| !agent.is_empty()) else {
        return Err(Skip::NoAgent);
    };
    let unix_secs = line
        .time
        .as_deref()
        .and_then(parse_rfc3339)
        .ok_or(Skip::BadField)?;
    let task = line.task.filter(|task| task != "-" && !task.is_empty());
    Ok(Some(Call {
        agent,
        unix_secs,
        task,
        stopped: line.action.as_deref() == Some("stopped"),
        input_tokens: line.input_tokens.unwrap_or(0),
        output_tokens: line.output_tokens.unwrap_or(0),
        cache_read_tokens: line.cache_read_tokens.unwrap_or(0),
        cache_write_tokens: line.cache_write_tokens.unwrap_or(0),
        cost_micro_usd: line.cost_micro_usd.unwrap_or(0),
    }))
}

/// The slow path, only for lines the typed parse refused: say which kind of bad it is.
fn classify(bytes: &[u8]) -> Skip {
    match serde_json::from_slice::<serde_json::Value>(bytes) {
        Ok(serde_json::Value::Object(map)) => match map.get("agent") {
            Some(serde_json::Value::String(_)) => Skip::BadField,
            _ => Skip::NoAgent,
        },
        _ => Skip::NotJsonObject,
    }
}

/// A token count or micro-USD amount: an integer, an integral float (some JSON writers
/// print every number as a float), or a string holding one; null and `-` mean absent.
fn count<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<u64>, D::Error> {
    struct CountVisitor;
    impl serde::de::Visitor<'_> for CountVisitor {
        type Value = Option<u64>;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a non-negative integer")
        }
        fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Self::Value, E> {
            Ok(Some(v))
        }
        fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Self::Value, E> {
            u64::try_from(v)
                .map(Some)
                .map_err(|_| E::invalid_value(serde::de::Unexpected::Signed(v), &self))
        }
        fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Self::Value, E> {
            if v.is_finite() && v >= 0.0 && v.fract() == 0.0 && v < 1.8e19 {
                // Integral and in range by the check above.
                Ok(Some(v as u64))
            } else {
                Err(E::invalid_value(serde::de::Unexpected::Float(v), &self))
            }
        }
        fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Self::Value, E> {
            match v.trim() {
                "" | "-" => Ok(None),
                text => text
                    .parse::<u64>()
                    .map(Some)
                    .map_err(|_| E::invalid_value(serde::de::Unexpected::Str(v), &self)),
            }
        }
        fn visit_unit<E: serde::de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_none<E: serde::de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
    }
    deserializer.deserialize_any(CountVisitor)
}

/// `2026-11-01T12:00:00Z`, `2026-11-01T12:00:00.123456Z`, `2026-11-01T13:00:00+01:00` (also
/// with a space for `T`) to Unix seconds; fractions of a second are dropped.
pub fn parse_rfc3339(text: &str) -> Option<i64> {
    let bytes = text.as_bytes();
    let digits = |from: usize, len: usize| -> Option<i64> {
        let part = bytes.get(from..from.checked_add(len)?)?;
        if !part.iter().all(u8::is_ascii_digit) {
            return None;
        }
        std::str::from_utf8(part).ok()?.parse().ok()
    };
    let separator_at =
        |at: usize, allowed: &[u8]| bytes.get(at).is_some_and(|b| allowed.contains(b));
    if !(separator_at(4, b"-")
        && separator_at(7, b"-")
        && separator_at(10, b"Tt ")
        && separator_at(13, b":")
        && separator_at(16, b":"))
    {
        return None;
    }
    let (year, month, day) = (digits(0, 4)?, digits(5, 2)?, digits(8, 2)?);
    let (hour, minute, second) = (digits(11, 2)?, digits(14, 2)?, digits(17, 2)?);
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || minute > 59 {
        return None;
    }
    // A leap second (:60) is accepted as the last second of its minute.
    if second > 60 {
        return None;
    }
    let mut at = 19;
    if separator_at(at, b".,") {
        at += 1;
        while bytes.get(at).is_some_and(u8::is_ascii_digit) {
            at += 1;
        }
    }
    let offset_secs = match bytes.get(at) {
        Some(b'Z' | b'z') if at + 1 == bytes.len() => 0,
        Some(sign @ (b'+' | b'-')) => {
            let hours = digits(at + 1, 2)?;
            let minutes_at = if separator_at(at + 3, b":") {
                at + 4
            } else {
                at + 3
            };
            let minutes = digits(minutes_at, 2)?;
            if minutes_at + 2 != bytes.len() || hours > 18 || minutes > 59 {
                return None;
            }
            let offset = hours * 3600 + minutes * 60;
            if *sign == b'-' {
                -offset
            } else {
                offset
            }
        }
        _ => return None,
    };
    // month and day are range-checked above.
    let days = agent_budget_core::period::days_from_civil(year, month as u32, day as u32);
    Some(days * 86_400 + hour * 3600 + minute * 60 + second.min(59) - offset_secs)
}

#[cfg(test)]
mod tests;
