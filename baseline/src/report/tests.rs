use super::*;

fn summary(agent: &str, tasks: u64, cost: u64, recommendation: Recommendation) -> Summary {
    Summary {
        agent: agent.to_string(),
        days: 2,
        daily_micro_usd: vec![(0, cost / 2), (1, cost - cost / 2)],
        calls: tasks,
        stopped_calls: 0,
        tasks,
        input_tokens: tasks * 10,
        output_tokens: tasks,
        cost_micro_usd: cost,
        compare_micro_usd: cost / 4,
        p90_daily_micro_usd: cost - cost / 2,
        recommendation,
    }
}

#[test]
fn money_formats() {
    let cases = [
        (0, "$0.0000", "0.00"),
        (49, "$0.0000", "0.01"),
        (50, "$0.0001", "0.01"),
        (1_234_567, "$1.2346", "1.24"),
        (4_050_000, "$4.0500", "4.05"),
        (999_999_950, "$1000.0000", "1000.00"),
    ];
    for (micro, four, cent) in cases {
        assert_eq!(
            (usd4(micro).as_str(), cents(micro).as_str()),
            (four, cent),
            "{micro}"
        );
    }
}

#[test]
fn yaml_keys_are_quoted_only_where_yaml_would_retype_them() {
    let cases = [
        ("research-bot", "research-bot"),
        ("Bot_2", "Bot_2"),
        ("123", "\"123\""),
        ("-x", "\"-x\""),
        ("true", "\"true\""),
        ("No", "\"No\""),
        ("null", "\"null\""),
        ("_x", "\"_x\""),
    ];
    for (name, want) in cases {
        assert_eq!(yaml_key(name), want);
    }
}

#[test]
fn config_comments_out_what_is_not_firm() {
    let summaries = [
        summary("firm", 150, 2_000_000, Recommendation::Firm(1_510_000)),
        summary("maybe", 50, 1_000_000, Recommendation::Provisional(760_000)),
        summary(
            "no",
            5,
            1_000,
            Recommendation::Refused("5 tasks, fewer than 20".into()),
        ),
        summary("yes", 500, 2_000_000, Recommendation::Firm(1_510_000)),
        summary("bad id!", 500, 2_000_000, Recommendation::Firm(1_510_000)),
    ];
    let text = config(&summaries);
    let body: Vec<&str> = text.lines().filter(|line| !line.starts_with('#')).collect();
    assert_eq!(
        body,
        [
            "agents:",
            "  firm:",
            "    daily_usd: 1.51 # 150 tasks over 2 days, p90 $1.0000/day",
            "  # provisional (50 tasks over 2 days, p90 $0.5000/day):",
            "  # maybe:",
            "  #   daily_usd: 0.76",
            "  # \"no\": no recommendation (5 tasks, fewer than 20)",
            "  \"yes\":",
            "    daily_usd: 1.51 # 500 tasks over 2 days, p90 $1.0000/day",
            "  # \"bad id!\": not configurable (agent ids are 1-64 characters of A-Z, a-z, 0-9, `-` and `_`)",
        ]
    );
    // Nothing firm: an empty map, still valid YAML.
    let text = config(&summaries[1..3]);
    assert!(text.lines().any(|line| line == "agents: {}"), "{text}");
}

#[test]
fn csv_quotes_fields_with_commas() {
    let summaries = [summary(
        "no",
        5,
        1_000,
        Recommendation::Refused("5 tasks, fewer than 20".into()),
    )];
    let text = csv(&summaries, None);
    let row = text.lines().nth(1).unwrap();
    assert_eq!(
        row,
        "no,2,5,0,5,2.50,10,1,0.001000,0.000200,0.000500,0.000500,,refused,\"refused: 5 tasks, fewer than 20\""
    );
    assert_eq!(csv_field("a\"b"), "\"a\"\"b\"");
}

#[test]
fn table_aligns_numbers_right_and_shows_losses() {
    let mut dear = summary(
        "a-long-agent-name",
        100,
        1_000_000,
        Recommendation::Firm(760_000),
    );
    dear.compare_micro_usd = 1_500_000;
    let cheap = summary("b", 20, 10_000_000, Recommendation::Provisional(7_500_000));
    let model = Prices::default().compare_model("gpt-4o-mini").unwrap();
    let text = table(&[dear, cheap], Some(&model));
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 3, "{text}");
    let cells = |line: &str| -> Vec<String> {
        line.split("  ")
            .map(str::trim)
            .filter(|cell| !cell.is_empty())
            .map(str::to_string)
            .collect()
    };
    assert_eq!(
        cells(lines[0]),
        [
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
            "cost",
            "on gpt-4o-mini",
            "saving",
            "note"
        ]
    );
    assert_eq!(
        cells(lines[1]),
        [
            "a-long-agent-name",
            "2",
            "100",
            "100",
            "50.00",
            "10",
            "1",
            "$0.0100",
            "$0.5000",
            "$0.5000",
            "$0.76",
            "$1.0000",
            "$1.5000",
            "-$0.5000 (-50.0%)",
            "ok"
        ]
    );
    assert_eq!(
        cells(lines[2]),
        [
            "b",
            "2",
            "20",
            "20",
            "10.00",
            "10",
            "1",
            "$0.5000",
            "$5.0000",
            "$5.0000",
            "$7.50",
            "$10.0000",
            "$2.5000",
            "$7.5000 (75.0%)",
            "provisional: 20 tasks, fewer than 100"
        ]
    );
    // Numbers are right-aligned: each number column ends where its header ends; names
    // and notes start where theirs start.
    let end = |line: &str, cell: &str| line.find(cell).map(|at| at + cell.len());
    for (header, first, second) in [
        ("days", "     2", "     2"),
        ("budget/day", "$0.76", "$7.50"),
        ("on gpt-4o-mini", "$1.5000", "$2.5000"),
        ("saving", "(-50.0%)", "(75.0%)"),
    ] {
        assert_eq!(end(lines[0], header), end(lines[1], first), "{header}");
        assert_eq!(end(lines[0], header), end(lines[2], second), "{header}");
    }
    assert_eq!(lines[0].find("note"), lines[1].find("ok"));
    assert_eq!(lines[0].find("note"), lines[2].find("provisional"));
}

use crate::reprice::Prices;
