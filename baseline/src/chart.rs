//! A self-contained SVG line chart of daily spend per agent: axes with date and USD ticks,
//! one polyline per agent over its own span of days, and a legend. No scripts, no external
//! fonts or stylesheets.

use crate::report::{cents, usd4};
use crate::stats::Summary;
use agent_budget_core::period::civil_from_days;
use std::fmt::Write;

const WIDTH: f64 = 960.0;
const HEIGHT: f64 = 480.0;
const LEFT: f64 = 90.0;
const RIGHT: f64 = 220.0;
const TOP: f64 = 50.0;
const BOTTOM: f64 = 60.0;
/// Distinguishable on white (Tableau 10).
const PALETTE: &[&str] = &[
    "#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1", "#ff9da7",
    "#9c755f", "#bab0ac",
];

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn date(day: i64) -> String {
    let (year, month, day) = civil_from_days(day);
    format!("{year:04}-{month:02}-{day:02}")
}

/// The smallest 1, 2 or 5 × 10^k micro-USD at or above `value` (at least one cent), so the
/// USD axis has round ticks.
fn nice_ceiling(value: u64) -> u64 {
    let mut step: u64 = 10_000;
    loop {
        for multiple in [1, 2, 5] {
            let candidate = step.saturating_mul(multiple);
            if candidate >= value || candidate == u64::MAX {
                return candidate;
            }
        }
        step = step.saturating_mul(10);
    }
}

/// The chart of every agent's daily spend (the days of its span, zeros included).
pub fn svg(summaries: &[Summary], title: &str) -> String {
    let first = summaries
        .iter()
        .filter_map(|s| s.daily_micro_usd.first().map(|(day, _)| *day))
        .min()
        .unwrap_or(0);
    let last = summaries
        .iter()
        .filter_map(|s| s.daily_micro_usd.last().map(|(day, _)| *day))
        .max()
        .unwrap_or(first);
    let max_cost = summaries
        .iter()
        .flat_map(|s| s.daily_micro_usd.iter().map(|(_, cost)| *cost))
        .max()
        .unwrap_or(0);
    let y_max = nice_ceiling(max_cost);
    let plot_width = WIDTH - LEFT - RIGHT;
    let plot_height = HEIGHT - TOP - BOTTOM;
    let span = (last - first).max(1) as f64;
    let x = |day: i64| {
        if last == first {
            LEFT + plot_width / 2.0
        } else {
            LEFT + (day - first) as f64 / span * plot_width
        }
    };
    let y = |cost: u64| TOP + plot_height - cost as f64 / y_max as f64 * plot_height;

    let mut out = String::new();
    let _ = writeln!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(out, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        out,
        r#"<text x="{}" y="24" text-anchor="middle" font-size="16">{}</text>"#,
        LEFT + plot_width / 2.0,
        escape(title)
    );

    // Axes and ticks.
    let _ = writeln!(out, r##"<g class="axes" stroke="#333" fill="#333">"##);
    let _ = writeln!(
        out,
        r#"<line x1="{LEFT}" y1="{TOP}" x2="{LEFT}" y2="{}"/>"#,
        TOP + plot_height
    );
    let _ = writeln!(
        out,
        r#"<line x1="{LEFT}" y1="{0}" x2="{1}" y2="{0}"/>"#,
        TOP + plot_height,
        LEFT + plot_width
    );
    for tick in 0..=5u64 {
        let cost = y_max / 5 * tick;
        let at = y(cost);
        // Ticks of a cent or more read as dollars and cents.
        let label = if y_max >= 50_000 {
            format!("${}", cents(cost))
        } else {
            usd4(cost)
        };
        let _ = writeln!(
            out,
            r##"<line x1="{}" y1="{at:.1}" x2="{LEFT}" y2="{at:.1}"/><line x1="{LEFT}" y1="{at:.1}" x2="{}" y2="{at:.1}" stroke="#ddd"/><text x="{}" y="{:.1}" text-anchor="end" stroke="none">{label}</text>"##,
            LEFT - 5.0,
            LEFT + plot_width,
            LEFT - 8.0,
            at + 4.0,
        );
    }
    let days = last - first + 1;
    let step = (days / 6).max(1);
    let mut day = first;
    while day <= last {
        let at = x(day);
        let _ = writeln!(
            out,
            r#"<line x1="{at:.1}" y1="{0}" x2="{at:.1}" y2="{1}"/><text x="{at:.1}" y="{2}" text-anchor="middle" stroke="none">{3}</text>"#,
            TOP + plot_height,
            TOP + plot_height + 5.0,
            TOP + plot_height + 20.0,
            date(day)
        );
        day += step;
    }
    let _ = writeln!(
        out,
        r#"<text x="{}" y="{}" text-anchor="middle" stroke="none">day</text>"#,
        LEFT + plot_width / 2.0,
        HEIGHT - 12.0
    );
    let _ = writeln!(
        out,
        r#"<text x="20" y="{0}" text-anchor="middle" stroke="none" transform="rotate(-90 20 {0})">USD per day</text>"#,
        TOP + plot_height / 2.0
    );
    let _ = writeln!(out, "</g>");

    // One series per agent.
    for (index, summary) in summaries.iter().enumerate() {
        let color = PALETTE
            .get(index % PALETTE.len())
            .copied()
            .unwrap_or("#000");
        let points: Vec<String> = summary
            .daily_micro_usd
            .iter()
            .map(|(day, cost)| format!("{:.1},{:.1}", x(*day), y(*cost)))
            .collect();
        let agent = escape(&summary.agent);
        let _ = writeln!(
            out,
            r#"<polyline class="series" data-agent="{agent}" fill="none" stroke="{color}" stroke-width="2" points="{}"><title>{agent}</title></polyline>"#,
            points.join(" ")
        );
        // A one-day span is a single point, which a polyline does not show.
        if let [(day, cost)] = summary.daily_micro_usd.as_slice() {
            let _ = writeln!(
                out,
                r#"<circle cx="{:.1}" cy="{:.1}" r="3" fill="{color}"/>"#,
                x(*day),
                y(*cost)
            );
        }
    }

    // Legend.
    let _ = writeln!(out, r#"<g class="legend">"#);
    for (index, summary) in summaries.iter().enumerate() {
        let color = PALETTE
            .get(index % PALETTE.len())
            .copied()
            .unwrap_or("#000");
        let top = TOP + index as f64 * 20.0;
        let left = WIDTH - RIGHT + 20.0;
        let _ = writeln!(
            out,
            r#"<rect x="{left}" y="{top}" width="14" height="14" fill="{color}"/><text x="{}" y="{}">{}</text>"#,
            left + 20.0,
            top + 11.0,
            escape(&summary.agent)
        );
    }
    let _ = writeln!(out, "</g>");
    out.push_str("</svg>\n");
    out
}

#[cfg(test)]
mod tests;
