//! Budget periods (day, month) in a fixed-offset time zone, computed from Unix time.
//!
//! Envoy gives the filter no time-zone database, so zones are fixed UTC offsets; the civil
//! calendar math is Howard Hinnant's days-from-civil algorithm, exact for any i64 day.

use std::fmt;
use std::rc::Rc;

/// A fixed offset from UTC, in seconds east of Greenwich.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TimeZone {
    offset_secs: i32,
}

const MAX_OFFSET_SECS: i32 = 18 * 3600;

impl TimeZone {
    pub const UTC: TimeZone = TimeZone { offset_secs: 0 };

    /// Parses `UTC`, `Z`, `+05:30`, `-08:00`, `+0530`, `UTC+2`, `UTC-03:30`.
    pub fn parse(text: &str) -> Result<TimeZone, String> {
        let trimmed = text.trim();
        let rest = trimmed
            .strip_prefix("UTC")
            .or_else(|| trimmed.strip_prefix("GMT"))
            .unwrap_or(trimmed);
        if rest.is_empty() || rest == "Z" {
            return Ok(TimeZone::UTC);
        }
        let invalid = || {
            format!("`{text}` is not UTC or a fixed offset such as +05:30 or -08:00 (named zones are not supported)")
        };
        let (sign, digits) = match rest.as_bytes().first() {
            Some(b'+') => (1, rest.get(1..).unwrap_or("")),
            Some(b'-') => (-1, rest.get(1..).unwrap_or("")),
            _ => return Err(invalid()),
        };
        let (hours, minutes) = match digits.split_once(':') {
            Some((h, m)) => (h, m),
            None if digits.len() == 4 => {
                (digits.get(..2).unwrap_or(""), digits.get(2..).unwrap_or(""))
            }
            None => (digits, "0"),
        };
        let hours: i32 = hours.parse().map_err(|_| invalid())?;
        let minutes: i32 = minutes.parse().map_err(|_| invalid())?;
        if !(0..60).contains(&minutes) {
            return Err(invalid());
        }
        let offset_secs = sign * (hours * 3600 + minutes * 60);
        if offset_secs.abs() > MAX_OFFSET_SECS {
            return Err(format!("`{text}` is beyond ±18:00"));
        }
        Ok(TimeZone { offset_secs })
    }

    pub fn offset_secs(&self) -> i32 {
        self.offset_secs
    }
}

impl fmt::Display for TimeZone {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.offset_secs == 0 {
            return f.write_str("UTC");
        }
        let sign = if self.offset_secs < 0 { '-' } else { '+' };
        let abs = self.offset_secs.unsigned_abs();
        write!(f, "{sign}{:02}:{:02}", abs / 3600, abs % 3600 / 60)
    }
}

/// The two budget periods an agent can have.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PeriodKind {
    Daily,
    Monthly,
}

impl PeriodKind {
    pub const ALL: [PeriodKind; 2] = [PeriodKind::Daily, PeriodKind::Monthly];

    pub fn name(self) -> &'static str {
        match self {
            PeriodKind::Daily => "daily",
            PeriodKind::Monthly => "monthly",
        }
    }
}

/// One concrete period: its kind, a stable id used in ledger keys, and its bounds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Period {
    pub kind: PeriodKind,
    /// `2026-11-28` for a day, `2026-11` for a month (local dates in the configured zone).
    /// Shared: periods are cloned into every booking line of every call.
    pub id: Rc<str>,
    /// Unix seconds of the first instant of the period.
    pub start: i64,
    /// Unix seconds of the first instant after the period (when the budget resets).
    pub end: i64,
}

const SECS_PER_DAY: i64 = 86_400;

impl Period {
    /// The period of `kind` that contains `unix_secs`.
    pub fn containing(kind: PeriodKind, zone: TimeZone, unix_secs: i64) -> Period {
        let offset = i64::from(zone.offset_secs);
        let local_day = (unix_secs + offset).div_euclid(SECS_PER_DAY);
        let (year, month, day) = civil_from_days(local_day);
        match kind {
            PeriodKind::Daily => Period {
                kind,
                id: format!("{year:04}-{month:02}-{day:02}").into(),
                start: local_day * SECS_PER_DAY - offset,
                end: (local_day + 1) * SECS_PER_DAY - offset,
            },
            PeriodKind::Monthly => {
                let first = days_from_civil(year, month, 1);
                let (next_year, next_month) = if month == 12 {
                    (year + 1, 1)
                } else {
                    (year, month + 1)
                };
                let next_first = days_from_civil(next_year, next_month, 1);
                Period {
                    kind,
                    id: format!("{year:04}-{month:02}").into(),
                    start: first * SECS_PER_DAY - offset,
                    end: next_first * SECS_PER_DAY - offset,
                }
            }
        }
    }

    /// The period right after this one.
    pub fn next(&self, zone: TimeZone) -> Period {
        Period::containing(self.kind, zone, self.end)
    }

    /// Seconds from `now` until the period resets (at least 1, so clients never retry at once).
    pub fn seconds_until_reset(&self, now: i64) -> u64 {
        u64::try_from(self.end.saturating_sub(now))
            .unwrap_or(0)
            .max(1)
    }
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian.
pub fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    // day in 1..=31 and month in 1..=12 by construction.
    (year, month as u32, day as u32)
}

/// (year, month, day) to days since 1970-01-01, proleptic Gregorian.
pub fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let yoe = year.rem_euclid(400);
    let month = i64::from(month);
    let mp = if month > 2 { month - 3 } else { month + 9 };
    let doy = (153 * mp + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// `2026-11-29T00:00:00Z` for a Unix time, always in UTC (what HTTP clients expect).
pub fn format_utc(unix_secs: i64) -> String {
    let days = unix_secs.div_euclid(SECS_PER_DAY);
    let secs = unix_secs.rem_euclid(SECS_PER_DAY);
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        secs % 3600 / 60,
        secs % 60
    )
}

#[cfg(test)]
mod tests;
