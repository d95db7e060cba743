"""Anomaly and projection alerts on a real Envoy, with a history of seconds instead of days.

The agent's history uses 5 s buckets, a 10 s current window, a 60 s baseline window and
30 s of minimum history. Every call is gpt-4o-mini with 1000 input and 50 output tokens:
$0.15 / $0.60 per million -> 150 + 30 = 180 micro-USD. Steady traffic is one call a
second (648,000 micro-USD an hour); the burst is five a second, past the 3x multiple.
The day's budget is $1, and the time zone puts the end of the day hours away, so the
steady burn already projects past the budget once 10 s of history exist.
"""

from __future__ import annotations

import time

from harness import knobs, wait_until
from webhook import Webhook

CHAT = "/v1/chat/completions"
CALL_MICRO_USD = 180
STEADY_PER_HOUR = 3600 * CALL_MICRO_USD
HOOK = "anomaly_webhook"


def offset_with_day_left(min_hours: float = 6) -> str:
    """A fixed UTC offset whose local midnight is at least `min_hours` away."""
    day_second = time.time() % 86400
    for hours in range(-12, 13):
        to_midnight = 86400 - (day_second + hours * 3600) % 86400
        if to_midnight >= min_hours * 3600:
            sign = "+" if hours >= 0 else "-"
            return f"{sign}{abs(hours):02d}:00"
    raise AssertionError("no offset found")


def paced(gw, per_second: float, seconds: float) -> int:
    """Sends calls at an even pace for `seconds`; returns how many succeeded."""
    headers = knobs("bursty", 1000, 50)
    body = {"model": "gpt-4o-mini", "max_tokens": 50,
            "messages": [{"role": "user", "content": "hello"}]}
    interval = 1 / per_second
    start = time.monotonic()
    next_at, sent = start, 0
    while next_at < start + seconds:
        delay = next_at - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        assert gw.post(CHAT, body, headers).status == 200
        sent += 1
        next_at += interval
    return sent


def usd(text: str) -> int:
    """A USD decimal string from an alert, in micro-USD."""
    return round(float(text) * 1_000_000)


def test_burst_raises_one_anomaly_alert_with_its_figures(gateway):
    with Webhook() as hook:
        gw = gateway({
            "time_zone": offset_with_day_left(),
            "agents": {"bursty": {"daily_usd": 1}},
            "alerts": {"cluster": HOOK, "format": "json", "path": "/hooks/budget"},
            "anomaly": {"bucket": "5s", "current": "10s", "window": "60s",
                        "min_history": "30s", "multiple": 3},
        }, clusters={HOOK: hook.port})

        steady = paced(gw, 1, 36)
        # The projection alert: a brand-new agent whose steady burn overruns the day.
        projections = [d.body for d in hook.accepted if d.body["kind"] == "projection"]
        assert len(projections) == 1, projections
        projection = projections[0]
        assert projection["agent"] == "bursty" and projection["period"] == "daily"
        assert usd(projection["budget_usd"]) == 1_000_000
        assert usd(projection["projected_usd"]) > 1_000_000
        burn = usd(projection["burn_rate_usd_per_hour"])
        assert 0.6 * STEADY_PER_HOUR <= burn <= 1.4 * STEADY_PER_HOUR, burn
        # No anomaly while the burn is steady.
        assert not [d for d in hook.accepted if d.body["kind"] == "anomaly"]

        stats = gw.stats()
        baseline = stats.value("agent_budget_baseline_micro_usd_per_hour", agent="bursty")
        assert 0.75 * STEADY_PER_HOUR <= baseline <= 1.25 * STEADY_PER_HOUR, baseline
        steady_burn = stats.value("agent_budget_burn_rate_micro_usd_per_hour", agent="bursty")
        assert 0.75 * STEADY_PER_HOUR <= steady_burn <= 1.25 * STEADY_PER_HOUR, steady_burn

        burst = paced(gw, 5, 12)
        alerts = [d.body for d in hook.wait_for(2, timeout=5) if d.body["kind"] == "anomaly"]
        assert len(alerts) == 1, alerts
        alert = alerts[0]
        assert alert["agent"] == "bursty"
        assert alert["severity"] == "warning" and alert["priority"] == "P2"
        assert alert["multiple"] == "3x"
        assert usd(alert["budget_usd"]) == 1_000_000
        spend = usd(alert["spend_usd"])
        assert steady * CALL_MICRO_USD <= spend <= (steady + burst) * CALL_MICRO_USD, spend
        alert_baseline = usd(alert["baseline_usd_per_hour"])
        assert 0.75 * STEADY_PER_HOUR <= alert_baseline <= 1.25 * STEADY_PER_HOUR, alert_baseline
        alert_burn = usd(alert["burn_rate_usd_per_hour"])
        assert alert_burn * 1000 >= 3000 * alert_baseline, (alert_burn, alert_baseline)
        assert alert_burn <= 5.5 * STEADY_PER_HOUR, alert_burn
        assert f"its baseline of ${alert['baseline_usd_per_hour']}/h" in alert["text"]
        assert f"burning ${alert['burn_rate_usd_per_hour']}/h" in alert["text"]
        print(alert["text"])

        stats = gw.stats()
        assert stats.value("agent_budget_burn_rate_micro_usd_per_hour", agent="bursty") >= 3 * STEADY_PER_HOUR
        assert stats.value("agent_budget_alerts", agent="bursty", reason="anomaly") == 1
        assert stats.value("agent_budget_alerts", agent="bursty", reason="projection") == 1
        spent = stats.value("agent_budget_spend_micro_usd", agent="bursty", period="daily")
        assert spent == (steady + burst) * CALL_MICRO_USD
        assert stats.value("agent_budget_remaining_micro_usd", agent="bursty", period="daily") == 1_000_000 - spent
        assert stats.value("agent_budget_projected_spend_micro_usd", agent="bursty", period="daily") > 1_000_000

        # Back to the steady pace: the episode ends without another alert, and a second,
        # larger burst (the first one now weighs in the baseline) is a second episode.
        paced(gw, 1, 12)
        assert len([d for d in hook.accepted if d.body["kind"] == "anomaly"]) == 1
        paced(gw, 12, 8)
        wait_until(lambda: len([d for d in hook.accepted if d.body["kind"] == "anomaly"]) == 2,
                   5, "a second anomaly alert")
        assert gw.stats().value("agent_budget_alerts", agent="bursty", reason="anomaly") == 2
