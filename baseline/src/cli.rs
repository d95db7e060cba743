//! The command line: arguments, the read loop and what goes to stdout and stderr.

use crate::input::{for_each_line, Source};
use crate::record::{self, Skip};
use crate::reprice::{CompareModel, Prices};
use crate::stats::Aggregator;
use crate::{chart, report};
use agent_budget_core::period::TimeZone;
use std::io::{IsTerminal, Write};

pub const HELP: &str = "\
agent-budget-baseline: per-agent spend baselines and recommended daily budgets from
agent-budget's attribution log (the JSON-lines access log, one record per call).

USAGE:
    agent-budget-baseline [OPTIONS] [FILE]...

FILE is a log file, plain or gzip (detected by content); `-` or no FILE reads stdin.
Lines that are not JSON objects with an `agent` are skipped and counted on stderr.

OPTIONS:
    --format table|csv|config  table (default, aligned), CSV, or a YAML snippet of the
                               filter configuration's `agents` with the recommended
                               `daily_usd` (provisional ones commented out)
    --chart FILE.svg           also write an SVG chart of daily spend per agent
    --compare-model MODEL      add what the same traffic would cost on MODEL (each call's
                               tokens repriced with the filter's price table) and the saving
    --pricing FILE.json        prices laid over the built-in table: a JSON filter plugin
                               configuration (or any object) with a `pricing` section
    --time-zone ZONE           the filter's `time_zone` (UTC, +05:30, ...), so days match
                               its daily budgets (default UTC)
    -h, --help                 this text

FIGURES (per agent):
    days         every day from the agent's first to its last call, both included; days
                 without calls count, with cost 0
    tasks        distinct `task` values per day, summed over days (a task spanning
                 midnight counts on each day); a call without a task (`-`) is a task of
                 its own
    tasks/day    tasks / days
    in/out tok   gen_ai.usage.input_tokens (all input, cached included) and
                 gen_ai.usage.output_tokens per task
    cost/task, cost/day
                 sum of cost_micro_usd / tasks, / days
    p90 day      90th-percentile daily cost, nearest rank: the ceil(0.9 x days)-th smallest
                 daily cost
    budget/day   1.5 x p90, rounded up to a cent; provisional under 100 tasks, refused
                 under 20 tasks (or when p90 is $0)

EXIT STATUS: 0 on success, 1 when the log cannot be read or holds no record, 2 on a
usage error.
";

/// What the command line asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    pub format: Format,
    pub chart: Option<String>,
    pub compare_model: Option<String>,
    pub pricing: Option<String>,
    pub time_zone: TimeZone,
    pub sources: Vec<Source>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Table,
    Csv,
    Config,
}

/// The outcome of parsing the arguments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parsed {
    Run(Options),
    Help,
}

/// Parses the arguments after the program name.
pub fn parse_args(args: &[String]) -> Result<Parsed, String> {
    let mut options = Options {
        format: Format::Table,
        chart: None,
        compare_model: None,
        pricing: None,
        time_zone: TimeZone::UTC,
        sources: Vec::new(),
    };
    let mut args = args.iter();
    let mut only_files = false;
    while let Some(arg) = args.next() {
        if only_files {
            options.sources.push(source(arg));
            continue;
        }
        // `--flag=value` and `--flag value` mean the same.
        let (flag, inline) = match arg.split_once('=') {
            Some((flag, value)) if flag.starts_with("--") => (flag, Some(value.to_string())),
            _ => (arg.as_str(), None),
        };
        let mut value = |name: &str| -> Result<String, String> {
            inline
                .clone()
                .or_else(|| args.next().cloned())
                .ok_or_else(|| format!("{name} needs a value"))
        };
        match flag {
            "-h" | "--help" => return Ok(Parsed::Help),
            "--format" => {
                options.format = match value("--format")?.as_str() {
                    "table" => Format::Table,
                    "csv" => Format::Csv,
                    "config" => Format::Config,
                    other => {
                        return Err(format!(
                            "--format: `{other}` is not one of table, csv, config"
                        ))
                    }
                }
            }
            "--chart" => options.chart = Some(value("--chart")?),
            "--compare-model" => options.compare_model = Some(value("--compare-model")?),
            "--pricing" => options.pricing = Some(value("--pricing")?),
            "--time-zone" => {
                let text = value("--time-zone")?;
                options.time_zone =
                    TimeZone::parse(&text).map_err(|reason| format!("--time-zone: {reason}"))?;
            }
            "--" => only_files = true,
            "-" => options.sources.push(Source::Stdin),
            other if other.starts_with('-') => {
                return Err(format!("unknown option `{other}` (see --help)"))
            }
            _ => options.sources.push(source(arg)),
        }
    }
    Ok(Parsed::Run(options))
}

fn source(arg: &str) -> Source {
    if arg == "-" {
        Source::Stdin
    } else {
        Source::File(arg.to_string())
    }
}

/// Lines skipped, by reason.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Skipped {
    pub not_json_object: u64,
    pub no_agent: u64,
    pub bad_field: u64,
}

impl Skipped {
    pub fn total(&self) -> u64 {
        self.not_json_object + self.no_agent + self.bad_field
    }

    pub fn describe(&self) -> String {
        format!(
            "{} skipped ({} not JSON objects, {} without an `agent`, {} with a bad `time` or count)",
            self.total(),
            self.not_json_object,
            self.no_agent,
            self.bad_field
        )
    }
}

/// Reads every source into an aggregator; the comparison model prices each call as read.
pub fn read_log(
    sources: &[Source],
    zone: TimeZone,
    compare: Option<&CompareModel>,
) -> Result<(Aggregator, u64, Skipped), String> {
    let mut aggregator = Aggregator::new(zone);
    let mut records = 0u64;
    let mut skipped = Skipped::default();
    for source in sources {
        for_each_line(source, |line| match record::parse(line) {
            Ok(Some(call)) => {
                let compare_cost = compare.map_or(0, |model| model.cost_micro_usd(&call));
                aggregator.add(&call, compare_cost);
                records += 1;
            }
            Ok(None) => {}
            Err(Skip::NotJsonObject) => skipped.not_json_object += 1,
            Err(Skip::NoAgent) => skipped.no_agent += 1,
            Err(Skip::BadField) => skipped.bad_field += 1,
        })?;
    }
    Ok((aggregator, records, skipped))
}

/// Runs the command with `args` (without the program name); the exit status.
pub fn main(args: &[String]) -> i32 {
    let options = match parse_args(args) {
        Ok(Parsed::Help) => {
            print!("{HELP}");
            return 0;
        }
        Ok(Parsed::Run(options)) => options,
        Err(message) => {
            eprintln!("agent-budget-baseline: {message}");
            return 2;
        }
    };
    match run(options) {
        Ok(()) => 0,
        Err(message) => {
            eprintln!("agent-budget-baseline: {message}");
            1
        }
    }
}

fn run(mut options: Options) -> Result<(), String> {
    let prices = match &options.pricing {
        None => Prices::default(),
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|error| format!("cannot read --pricing {path}: {error}"))?;
            Prices::with_pricing_json(&text)
                .map_err(|reason| format!("--pricing {path}: {reason}"))?
        }
    };
    // Checked before reading a possibly large log.
    let compare = options
        .compare_model
        .as_deref()
        .map(|name| prices.compare_model(name))
        .transpose()?;
    if options.sources.is_empty() {
        if std::io::stdin().is_terminal() {
            return Err(
                "no input: give log files, or pipe the log on stdin (see --help)".to_string(),
            );
        }
        options.sources.push(Source::Stdin);
    }
    let (aggregator, records, skipped) =
        read_log(&options.sources, options.time_zone, compare.as_ref())?;
    let names: Vec<&str> = options.sources.iter().map(Source::name).collect();
    if aggregator.is_empty() {
        let why = if skipped.total() == 0 {
            "no lines".to_string()
        } else {
            skipped.describe()
        };
        return Err(format!(
            "no attribution records in {}: {why}",
            names.join(", ")
        ));
    }
    eprintln!(
        "agent-budget-baseline: {records} records from {}; {}",
        names.join(", "),
        skipped.describe()
    );
    let summaries = aggregator.summaries();
    if let Some(path) = &options.chart {
        let title = format!("Daily spend per agent ({})", options.time_zone);
        std::fs::write(path, chart::svg(&summaries, &title))
            .map_err(|error| format!("cannot write --chart {path}: {error}"))?;
    }
    let text = match options.format {
        Format::Table => report::table(&summaries, compare.as_ref()),
        Format::Csv => report::csv(&summaries, compare.as_ref()),
        Format::Config => report::config(&summaries),
    };
    let mut stdout = std::io::stdout().lock();
    stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
        .map_err(|error| format!("cannot write the report: {error}"))
}

#[cfg(test)]
mod tests;
