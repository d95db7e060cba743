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
        state: Account { spent, reserved },
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
