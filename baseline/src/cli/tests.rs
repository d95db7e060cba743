use super::*;

fn args(list: &[&str]) -> Vec<String> {
    list.iter().map(|a| (*a).to_string()).collect()
}

#[test]
fn parses_options_and_files() {
    let Parsed::Run(options) = parse_args(&args(&[
        "--format=csv",
        "--chart",
        "out.svg",
        "--compare-model",
        "gpt-4o-mini",
        "--time-zone",
        "+05:30",
        "a.log",
        "-",
        "--",
        "--odd-name.log",
    ]))
    .unwrap() else {
        panic!("not a run");
    };
    assert_eq!(options.format, Format::Csv);
    assert_eq!(options.chart.as_deref(), Some("out.svg"));
    assert_eq!(options.compare_model.as_deref(), Some("gpt-4o-mini"));
    assert_eq!(options.time_zone.offset_secs(), 19_800);
    assert_eq!(
        options.sources,
        [
            Source::File("a.log".into()),
            Source::Stdin,
            Source::File("--odd-name.log".into())
        ]
    );
    assert_eq!(parse_args(&args(&["x", "-h"])), Ok(Parsed::Help));
    let Parsed::Run(defaults) = parse_args(&[]).unwrap() else {
        panic!("not a run");
    };
    assert_eq!(
        (defaults.format, defaults.sources.len()),
        (Format::Table, 0)
    );
}

#[test]
fn usage_errors_name_the_option() {
    let cases = [
        (
            &["--format", "xml"][..],
            "--format: `xml` is not one of table, csv, config",
        ),
        (&["--format"], "--format needs a value"),
        (&["--chart"], "--chart needs a value"),
        (
            &["--time-zone", "Europe/Paris"],
            "--time-zone: `Europe/Paris` is not UTC",
        ),
        (&["--bogus"], "unknown option `--bogus`"),
    ];
    for (list, want) in cases {
        let error = parse_args(&args(list)).unwrap_err();
        assert!(error.starts_with(want), "{list:?}: {error}");
    }
}

#[test]
fn skipped_lines_are_described() {
    let skipped = Skipped {
        not_json_object: 2,
        no_agent: 1,
        bad_field: 3,
    };
    assert_eq!(
        skipped.describe(),
        "6 skipped (2 not JSON objects, 1 without an `agent`, 3 with a bad `time` or count)"
    );
}
