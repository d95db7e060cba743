use super::*;
use crate::degrade::ModelMap;
use crate::period::TimeZone;

const NOW: i64 = 1_795_900_000;

fn periods() -> (Period, Period) {
    (
        Period::containing(PeriodKind::Daily, TimeZone::UTC, NOW),
        Period::containing(PeriodKind::Monthly, TimeZone::UTC, NOW),
    )
}

fn budget(daily: Option<u64>, monthly: Option<u64>, action: LimitAction) -> AgentBudget {
    AgentBudget {
        daily,
        monthly,
        action,
        soft_threshold_ppm: 800_000,
        degrade_to: Some(ModelMap::new(vec![("gpt-4o".into(), "gpt-4o-mini".into())]).unwrap()),
        degrade_allowance: None,
        task_daily: None,
        user_daily: None,
    }
}

fn line(scope: Scope, period: &Period, limit: u64, spent: u64, reserved: u64) -> Line {
    Line {
        scope,
        period: period.clone(),
        limit,
        state: Account {
            spent,
            reserved,
            own: spent,
        },
    }
}

fn agent_lines(b: &AgentBudget, day: u64, month: u64) -> Vec<Line> {
    let (d, m) = periods();
    let mut lines = Vec::new();
    if let Some(limit) = b.daily {
        lines.push(line(Scope::Agent, &d, limit, day, 0));
    }
    if let Some(limit) = b.monthly {
        lines.push(line(Scope::Agent, &m, limit, month, 0));
    }
    lines
}

fn verdict(d: Decision) -> String {
    match d {
        Decision::Allow => "allow".into(),
        Decision::Degrade => "degrade".into(),
        Decision::Stop { line, reason } => format!("stop {:?} {}", reason, line.period.kind.name()),
    }
}

#[test]
fn decides_by_action_at_the_limit_not_before() {
    let stop = budget(Some(100), Some(1000), LimitAction::Stop);
    let alert = budget(Some(100), None, LimitAction::Alert);
    let degrade = budget(Some(100), None, LimitAction::Degrade);
    let mut capped = budget(Some(100), None, LimitAction::Degrade);
    capped.degrade_allowance = Some(50);
    let cases = [
        (&stop, 99, 0, "allow"),
        (&stop, 100, 0, "stop Budget daily"),
        (&stop, 100, 1000, "stop Budget monthly"),
        (&stop, 10, 1000, "stop Budget monthly"),
        (&alert, 5000, 0, "allow"),
        (&degrade, 99, 0, "allow"),
        (&degrade, 100, 0, "degrade"),
        (&degrade, 1_000_000, 0, "degrade"),
        (&capped, 149, 0, "degrade"),
        (&capped, 150, 0, "stop DegradeExhausted daily"),
    ];
    for (b, day, month, want) in cases {
        assert_eq!(
            verdict(decide(b, &agent_lines(b, day, month))),
            want,
            "{:?} {day} {month}",
            b.action
        );
    }
}

#[test]
fn reservations_count_as_committed() {
    let (d, _) = periods();
    let l = line(Scope::Agent, &d, 100, 60, 40);
    assert!(l.exhausted());
    assert!(!l.fits(1, 0));
    let l = line(Scope::Agent, &d, 100, 60, 30);
    assert!(l.fits(10, 0) && !l.fits(11, 0) && l.fits(11, 1));
    assert_eq!(l.remaining(), 10);
}

#[test]
fn task_and_user_caps_stop_whatever_the_action() {
    let (d, _) = periods();
    let b = budget(Some(1000), None, LimitAction::Alert);
    let mut lines = agent_lines(&b, 10, 0);
    lines.push(line(Scope::Task("t-1".into()), &d, 50, 50, 0));
    match decide(&b, &lines) {
        Decision::Stop {
            line,
            reason: StopReason::Cap,
        } => assert_eq!(line.scope, Scope::Task("t-1".into())),
        other => panic!("{other:?}"),
    }
}

#[test]
fn levels_reached_with_their_marks() {
    let mut b = budget(Some(1000), None, LimitAction::Degrade);
    b.degrade_allowance = Some(500);
    use Crossing::*;
    let cases: [(u64, &[(Crossing, u64)]); 5] = [
        (799, &[]),
        (800, &[(Soft, 800)]),
        (1000, &[(Soft, 800), (Limit, 1000)]),
        (1499, &[(Soft, 800), (Limit, 1000)]),
        (
            5000,
            &[(Soft, 800), (Limit, 1000), (DegradeExhausted, 1500)],
        ),
    ];
    for (spent, want) in cases {
        assert_eq!(
            levels_reached(&b, PeriodKind::Daily, spent),
            want,
            "{spent}"
        );
    }
    assert!(
        levels_reached(&b, PeriodKind::Monthly, 5000).is_empty(),
        "no monthly budget"
    );
    assert_eq!(overage(1000, 900, 1200), 200);
    assert_eq!(overage(1000, 1100, 1200), 100);
    assert_eq!(overage(1000, 100, 200), 0);
}

#[test]
fn headline_is_the_tightest_agent_line() {
    let b = budget(Some(100), Some(1000), LimitAction::Stop);
    let lines = agent_lines(&b, 10, 950);
    assert_eq!(
        headline(&lines).map(|l| l.period.kind),
        Some(PeriodKind::Monthly)
    );
    let lines = agent_lines(&b, 90, 100);
    let top = headline(&lines).unwrap();
    assert_eq!(top.period.kind, PeriodKind::Daily);
    let headers = budget_headers(top, NOW);
    assert_eq!(headers[0], ("x-agent-budget-period".into(), "daily".into()));
    assert_eq!(headers[1].1, "0.000100");
    assert_eq!(headers[2].1, "0.000010");
    assert_eq!(headers[3].1, (top.period.end - NOW).to_string());
}

#[test]
fn past_limit_and_fitting_look_at_agent_lines_only() {
    let (d, _) = periods();
    let b = budget(Some(100), Some(1000), LimitAction::Alert);
    // (daily spent, monthly spent, task cap spent of 50, estimate, past limit, fits)
    let cases = [
        (0, 0, 0, 100, false, true),
        (0, 0, 50, 100, false, true),
        (1, 0, 0, 100, false, false),
        (99, 0, 0, 1, false, true),
        (100, 0, 0, 0, true, true),
        (100, 0, 0, 1, true, false),
        (10, 1000, 0, 0, true, true),
        (10, 950, 0, 51, false, false),
    ];
    for (day, month, task, estimate, past, fits) in cases {
        let mut lines = agent_lines(&b, day, month);
        lines.push(line(Scope::Task("t-1".into()), &d, 50, task, 0));
        let case = format!("{day} {month} {task} {estimate}");
        assert_eq!(past_limit(&lines), past, "{case}");
        assert_eq!(fits_agent_lines(&lines, estimate), fits, "{case}");
    }
    assert!(!past_limit(&[]) && fits_agent_lines(&[], u64::MAX));
}

#[test]
fn only_a_model_in_the_path_is_checked_at_the_headers() {
    use LimitAction::*;
    use ModelIn::*;
    // (action, where the model is, reservations, checked at the headers)
    let cases = [
        (Degrade, Path, true, true),
        (Degrade, Path, false, false),
        (Degrade, Body, true, false),
        (Degrade, Deployment, true, false),
        (Stop, Path, true, false),
        (Alert, Path, true, false),
    ];
    for (action, model_in, reservations, want) in cases {
        assert_eq!(
            checks_worst_case_at_headers(action, model_in, reservations),
            want,
            "{action:?} {model_in:?} {reservations}"
        );
    }
}

#[test]
fn the_body_may_change_when_the_format_or_degrade_rewrites_it() {
    use LimitAction::*;
    // (API, action, body may change)
    let cases = [
        (Api::OpenAiChat, Stop, true),
        (Api::OpenAiCompletions, Alert, true),
        (Api::AnthropicMessages, Stop, false),
        (Api::AnthropicMessages, Alert, false),
        (Api::AnthropicMessages, Degrade, true),
        (Api::Gemini, Stop, false),
        (Api::Gemini, Degrade, true),
    ];
    for (api, action, want) in cases {
        assert_eq!(body_may_change(api, action), want, "{api:?} {action:?}");
    }
}

#[test]
fn reservation_allowance_by_action() {
    // (action, degrade allowance, degrading, allowance)
    let cases = [
        (LimitAction::Stop, None, false, 0),
        (LimitAction::Stop, None, true, 0),
        (LimitAction::Alert, None, false, u64::MAX),
        (LimitAction::Degrade, None, false, 0),
        (LimitAction::Degrade, None, true, u64::MAX),
        (LimitAction::Degrade, Some(50), false, 0),
        (LimitAction::Degrade, Some(50), true, 50),
    ];
    for (action, allowance, degrading, want) in cases {
        let mut b = budget(Some(100), None, action);
        b.degrade_allowance = allowance;
        assert_eq!(
            reservation_allowance(&b, degrading),
            want,
            "{action:?} {allowance:?} {degrading}"
        );
    }
}

#[test]
fn a_misfit_degrades_once_then_stops() {
    use LimitAction::*;
    use ModelIn::*;
    let agent = Scope::Agent;
    let task = Scope::Task("t-1".into());
    let user = Scope::User("u-1".into());
    let stop = Misfit::Stop;
    // (scope, action, degrading already, where the model is, fate)
    let cases = [
        (&agent, Stop, false, Body, stop(StopReason::Budget)),
        (&agent, Alert, false, Body, stop(StopReason::Budget)),
        (&agent, Degrade, false, Body, Misfit::Degrade),
        (&agent, Degrade, false, Deployment, Misfit::Degrade),
        (&agent, Degrade, false, Path, stop(StopReason::Budget)),
        (
            &agent,
            Degrade,
            true,
            Body,
            stop(StopReason::DegradeExhausted),
        ),
        (
            &agent,
            Degrade,
            true,
            Path,
            stop(StopReason::DegradeExhausted),
        ),
        (&task, Degrade, false, Body, stop(StopReason::Cap)),
        (&user, Alert, true, Body, stop(StopReason::Cap)),
    ];
    for (scope, action, degrading, model_in, want) in cases {
        assert_eq!(
            misfit(scope, action, degrading, model_in),
            want,
            "{scope:?} {action:?} {degrading} {model_in:?}"
        );
    }
}

#[test]
fn worst_case_and_abandoned_usage() {
    // $3/M in, $15/M out.
    let price = Price::new(3_000_000, 15_000_000, None);
    // (request bytes, max output, micro-USD): input at 3 bytes a token, rounded up.
    let cases = [(0, 0, 0), (3, 0, 3), (4, 0, 6), (3000, 1000, 3000 + 15_000)];
    for (bytes, max_output, want) in cases {
        assert_eq!(
            worst_case(&price, bytes, max_output),
            want,
            "{bytes} {max_output}"
        );
    }

    let reported = Usage {
        input: 25,
        cache_read: 100,
        output: 7,
        ..Usage::default()
    };
    // (progress, request bytes, input, output)
    let cases = [
        (Progress::default(), 0, 0, 0),
        (Progress::default(), 9, 3, 0),
        (
            Progress {
                text_bytes: 41,
                ..Progress::default()
            },
            8,
            2,
            11,
        ),
        (
            Progress {
                reported,
                input_reported: true,
                text_bytes: 12,
                model: None,
            },
            4000,
            25,
            7,
        ),
        (
            Progress {
                reported,
                input_reported: false,
                text_bytes: 40,
                model: None,
            },
            4000,
            1000,
            10,
        ),
    ];
    for (progress, bytes, input, output) in cases {
        let case = format!("{progress:?} {bytes}");
        let metered = abandoned_usage(progress, bytes);
        assert_eq!(
            (metered.usage.input, metered.usage.output),
            (input, output),
            "{case}"
        );
    }
    let named = Progress {
        model: Some("m".into()),
        reported,
        input_reported: true,
        text_bytes: 0,
    };
    let metered = abandoned_usage(named, 0);
    assert_eq!(metered.model.as_deref(), Some("m"));
    assert_eq!(metered.usage.cache_read, 100, "reported classes are kept");
}

#[test]
fn budget_headers_by_option() {
    use BudgetHeaders::*;
    // (option, the limit acted on the call, headers shown)
    let cases = [
        (All, false, true),
        (All, true, true),
        (OnLimit, false, false),
        (OnLimit, true, true),
        (None, false, false),
        (None, true, false),
    ];
    for (option, limit_acted, want) in cases {
        assert_eq!(
            shows_budget_headers(option, limit_acted),
            want,
            "{option:?} {limit_acted}"
        );
    }
}

#[test]
fn alert_kind_of_each_crossing() {
    use AlertKind as K;
    // (crossing, action, kind, threshold ppm, flag name)
    let cases = [
        (Crossing::Soft, LimitAction::Stop, K::Soft, 800_000, "soft"),
        (
            Crossing::Limit,
            LimitAction::Stop,
            K::LimitStop,
            1_000_000,
            "limit",
        ),
        (
            Crossing::Limit,
            LimitAction::Degrade,
            K::LimitDegrade,
            1_000_000,
            "limit",
        ),
        (
            Crossing::Limit,
            LimitAction::Alert,
            K::LimitAlert,
            1_000_000,
            "limit",
        ),
        (
            Crossing::DegradeExhausted,
            LimitAction::Degrade,
            K::DegradeExhausted,
            1_000_000,
            "degrade_exhausted",
        ),
    ];
    for (crossing, action, kind, ppm, name) in cases {
        let b = budget(Some(100), None, action);
        assert_eq!(
            alert_kind(crossing, &b),
            (kind, ppm),
            "{crossing:?} {action:?}"
        );
        assert_eq!(crossing.name(), name);
    }
}
