//! The built command on a generated log of known figures: three agents over November 2026.
//!
//! - research-bot: every day d (1..=30), 5 tasks of 2 calls, each call costing d cents
//!   (day d costs $0.10 x d): 150 tasks, p90 = day 27 = $2.70, budget $4.05 (firm).
//! - support-bot: even days only, 3 named tasks of 2 calls ($0.15 each) and one call
//!   without a task ($0.10) = $1.00 a day; 2 stopped calls on day 30: 60 tasks over a
//!   29-day span, p90 $1.00, budget $1.50 (provisional).
//! - nightly-batch: days 1..=10, one task of 3 calls ($0.05 each): 10 tasks (refused).
//!
//! Plus lines that are not records: 2 not JSON objects, 1 without an agent, 1 bad time.

// The helpers below are outside `#[test]` functions, where clippy's test allowances do not
// reach; a failed setup step must fail the test loudly.
#![allow(clippy::panic)]

mod demo_log;

use demo_log::generated_log;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn scratch_dir(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
    dir
}

fn write_log(dir: &Path) -> PathBuf {
    let path = dir.join("access.log");
    std::fs::write(&path, generated_log()).unwrap_or_else(|e| panic!("write log: {e}"));
    path
}

fn run(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_agent-budget-baseline"))
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("run the command: {e}"))
}

fn stdout_of(args: &[&str]) -> String {
    let output = run(args);
    assert!(
        output.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap_or_else(|e| panic!("stdout not UTF-8: {e}"))
}

const TABLE: &str = "\
agent          days  calls  tasks  tasks/day  in tok/task  out tok/task  cost/task  cost/day  p90 day  budget/day  note
nightly-batch    10     30     10       1.00        30000          6000    $0.1500   $0.1500  $0.1500           -  refused: 10 tasks, fewer than 20
research-bot     30    300    150       5.00         2000          1000    $0.3100   $1.5500  $2.7000       $4.05  ok
support-bot      29    107     60       2.07         3100           475    $0.2500   $0.5172  $1.0000       $1.50  provisional: 60 tasks, fewer than 100; 2 calls stopped by the budget (spend is a floor)
";

#[test]
fn table_has_the_known_figures() {
    let dir = scratch_dir("table");
    let log = write_log(&dir);
    let log = log.to_str().unwrap_or_default();
    let output = run(&[log]);
    assert!(output.status.success());
    assert_eq!(String::from_utf8_lossy(&output.stdout), TABLE);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(
            "437 records from "
        ) && stderr.contains(
            "4 skipped (2 not JSON objects, 1 without an `agent`, 1 with a bad `time` or count)"
        ),
        "stderr: {stderr}"
    );
    // No progress bar when stderr is not a terminal.
    assert!(!stderr.contains('\r'), "stderr: {stderr:?}");
}

#[test]
fn stdin_and_gzip_give_the_same_table() {
    let dir = scratch_dir("gzip");
    let gz_path = dir.join("access.log.1");
    let file = std::fs::File::create(&gz_path).unwrap_or_else(|e| panic!("create: {e}"));
    let mut encoder = flate2::write::GzEncoder::new(file, flate2::Compression::fast());
    encoder
        .write_all(generated_log().as_bytes())
        .and_then(|()| encoder.finish().map(drop))
        .unwrap_or_else(|e| panic!("gzip: {e}"));
    assert_eq!(stdout_of(&[gz_path.to_str().unwrap_or_default()]), TABLE);

    let mut child = Command::new(env!("CARGO_BIN_EXE_agent-budget-baseline"))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn: {e}"));
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(generated_log().as_bytes())
            .unwrap_or_else(|e| panic!("stdin: {e}"));
    }
    let output = child
        .wait_with_output()
        .unwrap_or_else(|e| panic!("wait: {e}"));
    assert_eq!(String::from_utf8_lossy(&output.stdout), TABLE);
}

#[test]
fn csv_has_the_known_figures() {
    let dir = scratch_dir("csv");
    let log = write_log(&dir);
    let csv = stdout_of(&["--format", "csv", log.to_str().unwrap_or_default()]);
    assert_eq!(
        csv,
        "\
agent,days,calls,stopped_calls,tasks,tasks_per_day,input_tokens_per_task,output_tokens_per_task,cost_usd,cost_per_task_usd,cost_per_day_usd,p90_daily_usd,recommended_daily_usd,status,note
nightly-batch,10,30,0,10,1.00,30000,6000,1.500000,0.150000,0.150000,0.150000,,refused,\"refused: 10 tasks, fewer than 20\"
research-bot,30,300,0,150,5.00,2000,1000,46.500000,0.310000,1.550000,2.700000,4.05,ok,ok
support-bot,29,107,2,60,2.07,3100,475,15.000000,0.250000,0.517241,1.000000,1.50,provisional,\"provisional: 60 tasks, fewer than 100; 2 calls stopped by the budget (spend is a floor)\"
"
    );
}

#[test]
fn config_snippet_has_the_firm_budget_and_comments_the_rest() {
    let dir = scratch_dir("config");
    let log = write_log(&dir);
    let config = stdout_of(&["--format=config", log.to_str().unwrap_or_default()]);
    assert_eq!(
        config,
        "\
# Daily budgets recommended by agent-budget-baseline: 1.5 x each agent's 90th-percentile
# daily cost (nearest rank over every day from its first to its last call), rounded up
# to a cent. Merge into the plugin configuration's `agents`; provisional ones are
# commented out until the agent has 100 tasks in the log.
agents:
  # nightly-batch: no recommendation (10 tasks, fewer than 20)
  research-bot:
    daily_usd: 4.05 # 150 tasks over 30 days, p90 $2.7000/day
  # provisional (60 tasks over 29 days, p90 $1.0000/day):
  # support-bot:
  #   daily_usd: 1.50
"
    );
    // The uncommented part is a valid filter configuration for the core's own parser.
    let json = r#"{"agents": {"research-bot": {"daily_usd": 4.05}}}"#;
    let parsed = agent_budget_core::config::Config::from_bytes(json.as_bytes())
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        parsed.budget("research-bot").and_then(|b| b.daily),
        Some(4_050_000)
    );
}

#[test]
fn compare_model_reprices_every_call() {
    let dir = scratch_dir("compare");
    let log = write_log(&dir);
    let log = log.to_str().unwrap_or_default();
    let table = stdout_of(&["--compare-model", "claude-haiku-4-5", log]);
    // research-bot: 300 calls x (800 uncached x $1 + 200 cache reads x $0.10 + 500 output
    // x $5 per million) = $0.996; support-bot: 90 x (1500 + 500 writes x $1.25 + 300 x $5)
    // + 15 x (400 + 100 x $5) = $0.33975; nightly-batch: 30 x (10000 + 2000 x $5) = $0.60.
    let expected = "\
agent          days  calls  tasks  tasks/day  in tok/task  out tok/task  cost/task  cost/day  p90 day  budget/day      cost  on claude-haiku-4-5            saving  note
nightly-batch    10     30     10       1.00        30000          6000    $0.1500   $0.1500  $0.1500           -   $1.5000              $0.6000   $0.9000 (60.0%)  refused: 10 tasks, fewer than 20
research-bot     30    300    150       5.00         2000          1000    $0.3100   $1.5500  $2.7000       $4.05  $46.5000              $0.9960  $45.5040 (97.8%)  ok
support-bot      29    107     60       2.07         3100           475    $0.2500   $0.5172  $1.0000       $1.50  $15.0000              $0.3398  $14.6603 (97.7%)  provisional: 60 tasks, fewer than 100; 2 calls stopped by the budget (spend is a floor)
";
    assert_eq!(table, expected);

    let csv = stdout_of(&[
        "--format",
        "csv",
        "--compare-model",
        "claude-haiku-4-5",
        log,
    ]);
    let research = csv
        .lines()
        .find(|line| line.starts_with("research-bot,"))
        .unwrap_or_default();
    assert!(
        research.ends_with(",ok,ok,claude-haiku-4-5,0.996000,45.504000"),
        "{research}"
    );

    // A dearer model is a negative saving.
    let csv = stdout_of(&["--format", "csv", "--compare-model", "claude-opus-4-1", log]);
    let batch = csv
        .lines()
        .find(|line| line.starts_with("nightly-batch,"))
        .unwrap_or_default();
    // 30 x (10000 x $15 + 2000 x $75 per million) = $9.00, against $1.50 paid.
    assert!(
        batch.ends_with(",claude-opus-4-1,9.000000,-7.500000"),
        "{batch}"
    );
}

#[test]
fn pricing_file_adds_a_model_to_compare_with() {
    let dir = scratch_dir("pricing");
    let log = write_log(&dir);
    let pricing = dir.join("pricing.json");
    std::fs::write(
        &pricing,
        r#"{"agents": {"x": {"daily_usd": 1}}, "pricing": {"house-model": {"input": 1.0, "output": 1.0}}}"#,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let csv = stdout_of(&[
        "--format",
        "csv",
        "--pricing",
        pricing.to_str().unwrap_or_default(),
        "--compare-model",
        "house-model",
        log.to_str().unwrap_or_default(),
    ]);
    // nightly-batch: 30 x 12000 tokens at $1 per million = $0.36.
    let batch = csv
        .lines()
        .find(|line| line.starts_with("nightly-batch,"))
        .unwrap_or_default();
    assert!(batch.ends_with(",house-model,0.360000,1.140000"), "{batch}");

    // The filter's parser's field names come through.
    std::fs::write(
        &pricing,
        r#"{"pricing": {"house-model": {"input": -1, "output": 1}}}"#,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let output = run(&["--pricing", pricing.to_str().unwrap_or_default(), "-"]);
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("field `pricing.house-model.input`"),
        "{stderr}"
    );
}

#[test]
fn chart_is_well_formed_svg_with_one_series_per_agent() {
    let dir = scratch_dir("chart");
    let log = write_log(&dir);
    let chart = dir.join("spend.svg");
    stdout_of(&[
        "--chart",
        chart.to_str().unwrap_or_default(),
        log.to_str().unwrap_or_default(),
    ]);
    let text = std::fs::read_to_string(&chart).unwrap_or_else(|e| panic!("read chart: {e}"));
    let document = roxmltree::Document::parse(&text).unwrap_or_else(|e| panic!("not XML: {e}"));
    let root = document.root_element();
    assert_eq!(root.tag_name().name(), "svg");
    assert_eq!(
        root.tag_name().namespace(),
        Some("http://www.w3.org/2000/svg")
    );
    let series: Vec<(String, usize)> = document
        .descendants()
        .filter(|node| node.has_tag_name("polyline") && node.attribute("class") == Some("series"))
        .map(|node| {
            let points = node.attribute("points").unwrap_or_default();
            (
                node.attribute("data-agent").unwrap_or_default().to_string(),
                points.split_whitespace().count(),
            )
        })
        .collect();
    // One point per day of each agent's span.
    assert_eq!(
        series,
        vec![
            ("nightly-batch".to_string(), 10),
            ("research-bot".to_string(), 30),
            ("support-bot".to_string(), 29),
        ]
    );
    let legend: Vec<String> = document
        .descendants()
        .filter(|node| node.has_tag_name("g") && node.attribute("class") == Some("legend"))
        .flat_map(|legend| legend.children().filter(|n| n.has_tag_name("text")))
        .filter_map(|node| node.text().map(str::to_string))
        .collect();
    assert_eq!(legend, ["nightly-batch", "research-bot", "support-bot"]);
    // No external assets: no link, image, script or stylesheet.
    for forbidden in ["href", "<script", "<image", "<style", "@import"] {
        assert!(!text.contains(forbidden), "{forbidden} in the chart");
    }
}

#[test]
fn errors_name_the_problem() {
    let dir = scratch_dir("errors");
    let missing = dir.join("missing.log");
    let output = run(&[missing.to_str().unwrap_or_default()]);
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("cannot read") && stderr.contains("missing.log"),
        "{stderr}"
    );

    let empty = dir.join("other.log");
    std::fs::write(&empty, "GET / 200\n{\"path\": \"/\"}\n").unwrap_or_else(|e| panic!("{e}"));
    let output = run(&[empty.to_str().unwrap_or_default()]);
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("no attribution records in")
            && stderr.contains("2 skipped (1 not JSON objects, 1 without an `agent`"),
        "{stderr}"
    );

    let log = write_log(&dir);
    let output = run(&[
        "--compare-model",
        "gpt-4o-mni",
        log.to_str().unwrap_or_default(),
    ]);
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("no price for model `gpt-4o-mni`")
            && stderr.contains("close matches: gpt-4o-mini"),
        "{stderr}"
    );

    let output = run(&["--format", "xml"]);
    assert_eq!(output.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("`xml` is not one of table, csv, config")
    );

    let help = stdout_of(&["--help"]);
    assert!(help.contains("--compare-model MODEL") && help.contains("nearest rank"));
}

/// The peak resident memory of a running process, in KiB (Linux `/proc`).
#[cfg(target_os = "linux")]
fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_else(|e| panic!("read /proc/{pid}/status: {e}"));
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no VmHWM in /proc/{pid}/status"))
}

#[cfg(target_os = "linux")]
#[test]
fn memory_stays_flat_while_the_log_streams() {
    // Lines go through a pipe: the pipe holds at most a few dozen KiB, so by the time a
    // write returns the command has read nearly everything before it. 400k lines (~60 MB)
    // held in memory would show as tens of MiB; per-agent daily buckets do not grow.
    let mut child = Command::new(env!("CARGO_BIN_EXE_agent-budget-baseline"))
        .args(["--format", "csv"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn: {e}"));
    let pid = child.id();
    let mut stdin = child.stdin.take().unwrap_or_else(|| panic!("no stdin"));
    let total_lines: u64 = 400_000;
    let mut early_peak = 0;
    let mut batch = String::new();
    for i in 0..total_lines {
        let day = i * 30 / total_lines + 1;
        batch.push_str(&format!(
            "{{\"time\":\"2026-11-{day:02}T10:00:00Z\",\"agent\":\"agent-{}\",\"task\":\"t-{}\",\"gen_ai.usage.input_tokens\":1000,\"gen_ai.usage.output_tokens\":100,\"cost_micro_usd\":10}}\n",
            i % 5,
            i % 1000
        ));
        if batch.len() > 64 * 1024 {
            stdin
                .write_all(batch.as_bytes())
                .unwrap_or_else(|e| panic!("write: {e}"));
            batch.clear();
        }
        if i == 50_000 {
            early_peak = peak_rss_kib(pid);
        }
    }
    stdin
        .write_all(batch.as_bytes())
        .unwrap_or_else(|e| panic!("write: {e}"));
    let late_peak = peak_rss_kib(pid);
    drop(stdin);
    let output = child
        .wait_with_output()
        .unwrap_or_else(|e| panic!("wait: {e}"));
    let csv = String::from_utf8_lossy(&output.stdout);
    // Every record was read: 80 000 calls for each of the 5 agents.
    assert!(
        csv.lines()
            .any(|line| line.starts_with("agent-0,30,80000,0,")),
        "{csv}"
    );
    assert!(
        late_peak < early_peak + 4 * 1024,
        "peak RSS grew from {early_peak} KiB to {late_peak} KiB while streaming"
    );
}

#[test]
fn readme_shows_this_table() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md"))
        .unwrap_or_else(|e| panic!("read README.md: {e}"));
    assert!(
        readme.contains(TABLE),
        "README.md's \"Budget baselines\" table is not the command's output:\n{TABLE}"
    );
}

#[test]
fn progress_bar_is_drawn_on_a_terminal_only() {
    // util-linux `script` (Debian's essential bsdutils) runs the command on a pseudo-terminal;
    // inside, stderr goes to the terminal and stdout to /dev/null.
    let dir = scratch_dir("progress");
    let log = write_log(&dir);
    let command = format!(
        "'{}' '{}' 2>&1 >/dev/null",
        env!("CARGO_BIN_EXE_agent-budget-baseline"),
        log.display()
    );
    let output = Command::new("script")
        .args(["-qec", &command, "/dev/null"])
        .output()
        .unwrap_or_else(|e| panic!("run script (util-linux): {e}"));
    assert!(output.status.success(), "{output:?}");
    let terminal = String::from_utf8_lossy(&output.stdout);
    assert!(
        terminal.contains("access.log [##############################] 100% 0.2/0.2 MiB"),
        "{terminal:?}"
    );
    assert!(
        !terminal.contains("research-bot"),
        "the report went to the terminal: {terminal:?}"
    );
}
