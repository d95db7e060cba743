use super::*;

#[test]
fn civil_round_trips_over_centuries() {
    for days in (-200_000..200_000).step_by(7) {
        let (y, m, d) = civil_from_days(days);
        assert_eq!(days_from_civil(y, m, d), days);
    }
    assert_eq!(civil_from_days(0), (1970, 1, 1));
    assert_eq!(civil_from_days(20_420), (2025, 11, 28));
}

#[test]
fn parses_zones() {
    let cases = [
        ("UTC", Some(0)),
        ("Z", Some(0)),
        ("+05:30", Some(19_800)),
        ("-08:00", Some(-28_800)),
        ("+0530", Some(19_800)),
        ("UTC+2", Some(7_200)),
        ("UTC-03:30", Some(-12_600)),
        ("Europe/Paris", None),
        ("+19:00", None),
        ("+05:75", None),
        ("", Some(0)),
        ("+", None),
    ];
    for (text, want) in cases {
        assert_eq!(
            TimeZone::parse(text).ok().map(|z| z.offset_secs()),
            want,
            "{text}"
        );
    }
    assert_eq!(
        TimeZone::parse("-08:00").map(|z| z.to_string()),
        Ok("-08:00".into())
    );
}

#[test]
fn periods_in_utc_and_offsets() {
    // 2026-11-28T21:30:00Z
    let now = days_from_civil(2026, 11, 28) * SECS_PER_DAY + 21 * 3600 + 1800;
    let day = Period::containing(PeriodKind::Daily, TimeZone::UTC, now);
    assert_eq!(&*day.id, "2026-11-28");
    assert_eq!(day.end - now, 2 * 3600 + 1800);
    assert_eq!(format_utc(day.end), "2026-11-29T00:00:00Z");

    // Already the 29th in UTC+05:30.
    let india = TimeZone::parse("+05:30").unwrap();
    let day = Period::containing(PeriodKind::Daily, india, now);
    assert_eq!(&*day.id, "2026-11-29");
    assert_eq!(format_utc(day.end), "2026-11-29T18:30:00Z");

    let month = Period::containing(PeriodKind::Monthly, TimeZone::UTC, now);
    assert_eq!(&*month.id, "2026-11");
    assert_eq!(format_utc(month.start), "2026-11-01T00:00:00Z");
    assert_eq!(format_utc(month.end), "2026-12-01T00:00:00Z");
    assert_eq!(&*month.next(TimeZone::UTC).id, "2026-12");

    // December rolls into the next year; a west offset is still in November at UTC midnight.
    let dec = Period::containing(
        PeriodKind::Monthly,
        TimeZone::UTC,
        days_from_civil(2026, 12, 31) * SECS_PER_DAY,
    );
    assert_eq!(
        (&*dec.id, format_utc(dec.end).as_str()),
        ("2026-12", "2027-01-01T00:00:00Z")
    );
    let west = TimeZone::parse("-08:00").unwrap();
    let m = Period::containing(
        PeriodKind::Monthly,
        west,
        days_from_civil(2026, 12, 1) * SECS_PER_DAY,
    );
    assert_eq!(&*m.id, "2026-11");
    assert_eq!(format_utc(m.end), "2026-12-01T08:00:00Z");
}

#[test]
fn boundaries_are_half_open() {
    let midnight = days_from_civil(2026, 3, 1) * SECS_PER_DAY;
    assert_eq!(
        &*Period::containing(PeriodKind::Daily, TimeZone::UTC, midnight - 1).id,
        "2026-02-28"
    );
    assert_eq!(
        &*Period::containing(PeriodKind::Daily, TimeZone::UTC, midnight).id,
        "2026-03-01"
    );
    let p = Period::containing(PeriodKind::Daily, TimeZone::UTC, midnight - 1);
    assert_eq!(p.seconds_until_reset(midnight - 1), 1);
    assert_eq!(p.seconds_until_reset(midnight + 10), 1);
}
