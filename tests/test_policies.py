"""Budget policies on a real Envoy, driven by the official OpenAI and Anthropic Python SDKs:
stop (RateLimitError, no retries), degrade (cheaper model), alert-and-continue (webhooks,
overage), soft alerts, task / user caps, and the overshoot under concurrency with and
without reservations.

Costs used throughout (built-in prices, USD per million tokens), with the mock told to
report 1000 input and 50 output tokens:
  gpt-4o            $2.50 / $10     -> 2500 + 500  = 3000 micro-USD
  gpt-4o-mini       $0.15 / $0.60   ->  150 +  30  =  180
  claude-sonnet-4-5 $3 / $15        -> 3000 + 750  = 3750
  claude-haiku-4-5  $1 / $5         -> 1000 + 250  = 1250
  gemini-2.5-pro    $1.25 / $10     -> 1250 + 500  = 1750
  gemini-2.5-flash  $0.30 / $2.50   ->  300 + 125  =  425
Each request asks for max_tokens 50, so its worst case (reserved before it is forwarded)
is well under its real cost and small budgets admit exactly the calls they are meant to.
"""

from __future__ import annotations

import fcntl
import json
import math
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone

import anthropic
import openai
import pytest

from harness import REPO, knobs, wait_until
from webhook import Webhook

# The mock serves whatever model is asked for; the SDK's deprecation notices are noise here.
pytestmark = pytest.mark.filterwarnings("ignore:The model .* is deprecated:DeprecationWarning")

HELLO = [{"role": "user", "content": "hello"}]
GPT4O, MINI, SONNET, HAIKU, GEMINI_PRO, GEMINI_FLASH = 3000, 180, 3750, 1250, 1750, 425
WEBHOOK = "alert_webhook"
OVERSHOOT_FILE = REPO / "tests/.overshoot.json"


# --- fixtures and helpers ----------------------------------------------------------------

@pytest.fixture
def hook():
    with Webhook() as h:
        yield h


def oai(gw, agent, input_tokens=1000, output_tokens=50, **more) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"http://127.0.0.1:{gw.port}/v1", api_key="test", max_retries=0,
                         default_headers=knobs(agent, input_tokens, output_tokens, **more))


def claude(gw, agent) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=f"http://127.0.0.1:{gw.port}", api_key="test", max_retries=0,
                               default_headers=knobs(agent, 1000, 50))


def chat(client, model="gpt-4o", **kw):
    return client.chat.completions.create(model=model, messages=HELLO, max_tokens=50, **kw)


def message(client, model="claude-sonnet-4-5", **kw):
    return client.messages.create(model=model, max_tokens=50, messages=HELLO, **kw)


def alerts_config(**extra):
    return {"cluster": WEBHOOK, **extra}


def next_utc_midnight() -> datetime:
    now = datetime.now(timezone.utc)
    return (now + timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)


def offset_resetting_soon() -> tuple[str, float]:
    """A fixed UTC offset ("+HH:MM" / "-HH:MM") whose local midnight is 60-120 s away, so the
    429's retry-after is within what the SDKs would otherwise honour and retry (<= 120 s)."""
    now = time.time()
    day_second = now % 86400
    for minutes in range(-18 * 60, 18 * 60 + 1):
        to_midnight = 86400 - (day_second + minutes * 60) % 86400
        if 60 < to_midnight <= 120:
            sign = "+" if minutes >= 0 else "-"
            return f"{sign}{abs(minutes) // 60:02d}:{abs(minutes) % 60:02d}", to_midnight
    raise AssertionError("no offset found")


def assert_stays(predicate, seconds: float, what: str) -> None:
    """Checks that `predicate` holds throughout `seconds` (used to see no extra webhook
    arrives for a tick or two after the expected ones)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert predicate(), what
        time.sleep(0.05)


def alerts_in(deliveries) -> list[dict]:
    """Every Alertmanager alert in the accepted webhook bodies (each body is an array)."""
    return [alert for d in deliveries for alert in d.body]


# --- 1. stop: the SDKs raise RateLimitError and do not retry ----------------------------

def test_openai_sdk_raises_rate_limit_error_and_does_not_retry(gateway, mock):
    tz, to_reset = offset_resetting_soon()
    gw = gateway({"time_zone": tz, "agents": {"bot": {"daily_usd": 0.009, "action": "stop"}}})
    client = oai(gw, "bot")
    for _ in range(3):
        assert chat(client).usage.prompt_tokens == 1000
    with pytest.raises(openai.RateLimitError) as caught:
        chat(client)
    err = caught.value
    assert err.status_code == 429
    assert err.code == "budget_exceeded" and err.type == "budget_exceeded"
    assert "Agent `bot` has used its daily budget of $0.009000" in err.body["message"]
    assert "resets at" in err.body["message"] and err.body["message"] in err.message
    headers = err.response.headers
    assert headers["x-should-retry"] == "false"
    retry_after = int(headers["retry-after"])
    # Within the SDKs' own limit (120 s), so only x-should-retry keeps them from retrying.
    assert 1 <= retry_after <= 120 and abs(retry_after - to_reset) <= 10
    assert headers["x-agent-budget-remaining-usd"] == "0.000000"
    assert headers["x-agent-budget-limit-usd"] == "0.009000"

    # Default SDK retries (max_retries=2): still one attempt per call, raised at once.
    retrying = openai.OpenAI(base_url=f"http://127.0.0.1:{gw.port}/v1", api_key="test",
                             default_headers=knobs("bot", 1000, 50))
    assert retrying.max_retries == 2
    rejected = gw.stats().value("agent_budget_rejected", agent="bot")
    began = time.monotonic()
    for stream in (False, True):
        with pytest.raises(openai.RateLimitError):
            chat(retrying, stream=stream)
    assert time.monotonic() - began < 1.5, "no retry backoff (2 retries would sleep >= 1.1 s per call)"
    stats = gw.stats()
    assert stats.value("agent_budget_rejected", agent="bot") == rejected + 2
    assert stats.value("agent_budget_requests", agent="bot") == 3 + 1 + 2
    assert mock.stats()["agents"]["bot"]["calls"] == 3


def test_anthropic_sdk_raises_rate_limit_error_and_does_not_retry(gateway, mock):
    tz, to_reset = offset_resetting_soon()
    # One sonnet call (3750) uses up 0.0035.
    gw = gateway({"time_zone": tz, "agents": {"bot": {"daily_usd": 0.0035}}})
    assert message(claude(gw, "bot")).usage.input_tokens == 1000
    with pytest.raises(anthropic.RateLimitError) as caught:
        message(claude(gw, "bot"))
    err = caught.value
    assert err.status_code == 429
    assert err.body["type"] == "error"
    assert err.body["error"]["type"] == "rate_limit_error"
    assert "Agent `bot` has used its daily budget of $0.003500" in err.body["error"]["message"]
    assert err.response.headers["x-should-retry"] == "false"
    assert 1 <= int(err.response.headers["retry-after"]) <= 120

    retrying = anthropic.Anthropic(base_url=f"http://127.0.0.1:{gw.port}", api_key="test",
                                   default_headers=knobs("bot", 1000, 50))
    assert retrying.max_retries == 2
    began = time.monotonic()
    for stream in (False, True):
        with pytest.raises(anthropic.RateLimitError):
            message(retrying, stream=stream)
    assert time.monotonic() - began < 1.5, "no retry backoff (2 retries would sleep >= 1.1 s per call)"
    stats = gw.stats()
    assert stats.value("agent_budget_rejected", agent="bot") == 3
    assert stats.value("agent_budget_requests", agent="bot") == 4
    assert mock.stats()["agents"]["bot"]["calls"] == 1


# --- 2. degrade: a cheaper model once the budget is used up -----------------------------

DEGRADE_TO = {"gpt-4o*": "gpt-4o-mini", "claude-sonnet-*": "claude-haiku-4-5"}


def degrade_config(daily_usd, **extra):
    return {"agents": {"deg": {"daily_usd": daily_usd, "action": "degrade",
                               "degrade_to": DEGRADE_TO, **extra}}}


def openai_call(gw, stream):
    """One gpt-4o call through the OpenAI SDK: (model the client saw, response headers)."""
    raw = oai(gw, "deg").chat.completions.with_raw_response.create(
        model="gpt-4o", messages=HELLO, max_tokens=50, stream=stream)
    if stream:
        chunks = list(raw.parse())
        models = {c.model for c in chunks}
        assert len(models) == 1 and "".join(
            c.choices[0].delta.content or "" for c in chunks if c.choices).startswith("tok")
        return models.pop(), raw.headers
    completion = raw.parse()
    assert completion.choices[0].message.content.startswith("tok")
    return completion.model, raw.headers


def anthropic_call(gw, stream):
    raw = claude(gw, "deg").messages.with_raw_response.create(
        model="claude-sonnet-4-5", max_tokens=50, messages=HELLO, stream=stream)
    if stream:
        events = list(raw.parse())
        assert events[0].type == "message_start" and events[-1].type == "message_stop"
        assert [e.usage.output_tokens for e in events if e.type == "message_delta"][-1] == 50
        return events[0].message.model, raw.headers
    msg = raw.parse()
    assert msg.content[0].text.startswith("tok") and msg.usage.output_tokens == 50
    return msg.model, raw.headers


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
@pytest.mark.parametrize("sdk, call, full, cheap, full_cost, cheap_cost", [
    ("openai", openai_call, "gpt-4o", "gpt-4o-mini", GPT4O, MINI),
    ("anthropic", anthropic_call, "claude-sonnet-4-5", "claude-haiku-4-5", SONNET, HAIKU),
], ids=["openai", "anthropic"])
def test_degrade_serves_the_cheaper_model_once_the_budget_is_spent(
        gateway, mock, sdk, call, full, cheap, full_cost, cheap_cost, stream):
    gw = gateway(degrade_config(0.003))
    model, headers = call(gw, stream)
    assert model == full and "x-agent-budget-degraded-from" not in headers
    assert gw.stats().value("agent_budget_cost_micro_usd", agent="deg") == full_cost

    # The budget is used up: the SDK still gets a normal completion, from the cheaper model.
    for n in (1, 2):
        model, headers = call(gw, stream)
        assert model == cheap
        assert headers["x-agent-budget-degraded-from"] == full
        assert headers["x-agent-budget-degraded-to"] == cheap
        assert headers["x-agent-budget-remaining-usd"] == "0.000000"
        stats = gw.stats()
        # Priced at the cheaper model (the mock echoed it as the model that served the call).
        assert stats.value("agent_budget_cost_micro_usd", agent="deg") == full_cost + n * cheap_cost
        assert stats.value("agent_budget_degraded_requests", agent="deg") == n
        assert stats.value("agent_budget_spend_micro_usd", agent="deg", period="daily") == \
            full_cost + n * cheap_cost
    assert stats.value("agent_budget_rejected", agent="deg") == 0
    assert mock.stats()["agents"]["deg"]["calls"] == 3


@pytest.mark.parametrize("sdk", ["openai", "anthropic"])
def test_degrade_stops_once_the_degrade_allowance_is_spent(gateway, mock, sdk):
    full_cost, cheap_cost = (GPT4O, MINI) if sdk == "openai" else (SONNET, HAIKU)
    # Budget $0.003; the allowance lets exactly two degraded calls through.
    allowance = full_cost + 2 * cheap_cost - 3000
    gw = gateway(degrade_config(0.003, degrade_usd=allowance / 1e6))
    call, error = (openai_call, openai.RateLimitError) if sdk == "openai" else \
        (anthropic_call, anthropic.RateLimitError)
    models = [call(gw, False)[0] for _ in range(3)]
    assert models == (["gpt-4o", "gpt-4o-mini", "gpt-4o-mini"] if sdk == "openai"
                      else ["claude-sonnet-4-5", "claude-haiku-4-5", "claude-haiku-4-5"])
    with pytest.raises(error) as caught:
        call(gw, False)
    assert caught.value.status_code == 429
    assert caught.value.response.headers["x-should-retry"] == "false"
    assert "the spend allowed after degrading to a cheaper model" in caught.value.message
    stats = gw.stats()
    assert stats.value("agent_budget_cost_micro_usd", agent="deg") == 3000 + allowance
    assert stats.value("agent_budget_degraded_requests", agent="deg") == 2
    assert stats.value("agent_budget_rejected", agent="deg") == 1
    assert stats.value("agent_budget_alerts", agent="deg", reason="degrade_exhausted") == 1
    assert mock.stats()["agents"]["deg"]["calls"] == 3


def gemini(gw, model, agent="gem", stream=False):
    method = "streamGenerateContent?alt=sse" if stream else "generateContent"
    return gw.post(f"/v1beta/models/{model}:{method}",
                   {"contents": [{"role": "user", "parts": [{"text": "hello"}]}],
                    "generationConfig": {"maxOutputTokens": 50}},
                   knobs(agent, 1000, 50))


def gemini_model_version(resp, stream):
    if not stream:
        return resp.json()["modelVersion"]
    events = [e for e in resp.body.decode().split("\r\n\r\n") if e.strip()]
    versions = {json.loads(e[len("data: "):])["modelVersion"] for e in events}
    assert len(versions) == 1
    return versions.pop()


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_degrade_rewrites_the_gemini_path_model(gateway, mock, stream):
    # Gemini's model is in the path, so degrade is decided at the request headers, before
    # the body's maxOutputTokens is known: the worst case uses default_max_output_tokens.
    gw = gateway({"agents": {"gem": {"daily_usd": 0.00175, "action": "degrade",
                                   "degrade_to": {"gemini-2.5-pro": "gemini-2.5-flash"}}},
                "default_max_output_tokens": 50})
    first = gemini(gw, "gemini-2.5-pro", stream=stream)
    assert first.status == 200, first.body
    assert gemini_model_version(first, stream) == "gemini-2.5-pro"
    assert gw.stats().value("agent_budget_cost_micro_usd", agent="gem") == GEMINI_PRO

    degraded = gemini(gw, "gemini-2.5-pro", stream=stream)
    assert degraded.status == 200, degraded.body
    # The mock serves the model the (rewritten) path names.
    assert gemini_model_version(degraded, stream) == "gemini-2.5-flash"
    assert degraded.headers["x-agent-budget-degraded-from"] == "gemini-2.5-pro"
    assert degraded.headers["x-agent-budget-degraded-to"] == "gemini-2.5-flash"
    stats = gw.stats()
    assert stats.value("agent_budget_cost_micro_usd", agent="gem") == GEMINI_PRO + GEMINI_FLASH
    assert stats.value("agent_budget_degraded_requests", agent="gem") == 1
    assert mock.stats()["agents"]["gem"]["calls"] == 2


def test_gemini_call_that_does_not_fit_is_degraded_not_stopped(gateway, mock):
    # Nothing spent of $0.01; a call without maxOutputTokens has a worst case of 4096 output
    # tokens x $10/M = $0.041 > $0.01: an OpenAI call here is degraded (next test).
    gw = gateway({"agents": {"gem": {"daily_usd": 0.01, "action": "degrade",
                                   "degrade_to": {"gemini-2.5-pro": "gemini-2.5-flash"}}}})
    resp = gw.post("/v1beta/models/gemini-2.5-pro:generateContent",
                   {"contents": [{"role": "user", "parts": [{"text": "hello"}]}]}, knobs("gem", 1000, 50))
    assert resp.status == 200, resp.body
    assert resp.json()["modelVersion"] == "gemini-2.5-flash"
    assert resp.headers["x-agent-budget-degraded-to"] == "gemini-2.5-flash"


def test_openai_call_that_does_not_fit_is_degraded(gateway, mock):
    # Counterpart of the Gemini case above: a gpt-4o call with no max_tokens (worst case
    # 4096 x $10/M = $0.041) on a $0.01 budget is degraded rather than stopped.
    gw = gateway(degrade_config(0.01))
    raw = oai(gw, "deg").chat.completions.with_raw_response.create(model="gpt-4o", messages=HELLO)
    assert raw.parse().model == "gpt-4o-mini"
    assert raw.headers["x-agent-budget-degraded-to"] == "gpt-4o-mini"


# --- 3. alert-and-continue ---------------------------------------------------------------

def test_alert_action_lets_calls_through_and_alerts_once_per_crossing(gateway, hook):
    gw = gateway({"agents": {"al": {"daily_usd": 0.01, "action": "alert"}},
                "alerts": alerts_config()}, clusters={WEBHOOK: hook.port})
    client = oai(gw, "al")
    for _ in range(3):  # 9000: past the 80 % soft threshold
        chat(client)
    [soft_post] = hook.wait_for(1)
    assert soft_post.path == "/api/v2/alerts"
    assert soft_post.headers["content-type"] == "application/json"
    [soft] = soft_post.body
    assert soft["labels"] == {"alertname": "AgentBudgetThreshold", "agent": "al", "period": "daily",
                              "period_id": soft["labels"]["period_id"], "severity": "warning",
                              "priority": "P3", "action": "alert"}
    assert soft["annotations"]["threshold"] == "80%"
    assert soft["annotations"]["spend_usd"] == "0.009000"
    assert soft["annotations"]["budget_usd"] == "0.010000"
    assert soft["annotations"]["summary"] == "al reached 80% of its daily budget"
    midnight = next_utc_midnight()
    assert soft["endsAt"] == midnight.strftime("%Y-%m-%dT%H:%M:%SZ")
    assert soft["labels"]["period_id"] == (midnight - timedelta(days=1)).strftime("%Y-%m-%d")
    started = datetime.strptime(soft["startsAt"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc)
    assert abs((datetime.now(timezone.utc) - started).total_seconds()) < 30

    # Past the budget: calls keep flowing (200, a normal completion), one P1 alert.
    for _ in range(2):
        raw = oai(gw, "al").chat.completions.with_raw_response.create(
            model="gpt-4o", messages=HELLO, max_tokens=50)
        assert raw.parse().usage.completion_tokens == 50
    assert raw.headers["x-agent-budget-remaining-usd"] == "0.000000"
    posts = hook.wait_for(2)
    [limit] = posts[1].body
    assert limit["labels"]["alertname"] == "AgentBudgetExhausted"
    assert limit["labels"]["priority"] == "P1" and limit["labels"]["severity"] == "critical"
    assert limit["labels"]["action"] == "alert" and limit["labels"]["agent"] == "al"
    assert limit["annotations"]["spend_usd"] == "0.012000"
    assert "calls continue and spend keeps growing" in limit["annotations"]["summary"]

    stats = gw.stats()
    spend = stats.value("agent_budget_spend_micro_usd", agent="al", period="daily")
    assert spend == 5 * GPT4O
    assert stats.value("agent_budget_overage_micro_usd", agent="al", period="daily") == spend - 10_000
    assert stats.value("agent_budget_rejected", agent="al") == 0
    assert stats.value("agent_budget_alerts", agent="al", reason="soft") == 1
    assert stats.value("agent_budget_alerts", agent="al", reason="limit_alert") == 1
    assert stats.value("agent_budget_alert_deliveries", reason="delivered") == 2
    assert_stays(lambda: len(hook.all) == 2, 1.2, "no further webhook calls")


def test_alert_json_format_sends_one_object_with_text_per_alert(gateway, hook):
    gw = gateway({"agents": {"al": {"daily_usd": 0.01, "action": "alert"}},
                "alerts": alerts_config(format="json", path="/hooks/budget")},
               clusters={WEBHOOK: hook.port})
    client = oai(gw, "al")
    for _ in range(5):  # soft at 9000, limit at 12000
        chat(client)
    posts = hook.wait_for(2)
    assert {p.path for p in posts} == {"/hooks/budget"}
    bodies = sorted((p.body for p in posts), key=lambda b: b["kind"])
    assert [b["kind"] for b in bodies] == ["limit_alert", "soft"]
    limit, soft = bodies
    assert isinstance(soft, dict) and isinstance(limit, dict)
    assert soft["text"].startswith("[P3 warning] al reached 80% of its daily budget (")
    assert limit["text"].startswith("[P1 critical] al used up its daily budget (")
    assert "calls continue and spend keeps growing" in limit["text"]
    assert (limit["agent"], limit["period"], limit["priority"], limit["severity"]) == \
        ("al", "daily", "P1", "critical")
    assert limit["budget_usd"] == "0.010000" and limit["percent"] >= 100
    assert gw.stats().value("agent_budget_overage_micro_usd", agent="al", period="daily") == 5000
    assert_stays(lambda: len(hook.all) == 2, 1.2, "no further webhook calls")


def test_overage_is_booked_per_period_past_each_budget(gateway):
    gw = gateway({"agents": {"al": {"daily_usd": 0.01, "monthly_usd": 0.012, "action": "alert"}}})
    client = oai(gw, "al")
    for _ in range(5):
        raw = client.chat.completions.with_raw_response.create(
            model="gpt-4o", messages=HELLO, max_tokens=50)
        assert raw.http_response.status_code == 200
    stats = gw.stats()
    spend = 5 * GPT4O
    assert stats.value("agent_budget_spend_micro_usd", agent="al", period="daily") == spend
    assert stats.value("agent_budget_overage_micro_usd", agent="al", period="daily") == spend - 10_000
    assert stats.value("agent_budget_overage_micro_usd", agent="al", period="monthly") == spend - 12_000
    assert stats.value("agent_budget_rejected", agent="al") == 0


def test_concurrent_crossing_on_four_workers_alerts_exactly_once(gateway, hook, mock):
    calls = 60
    gw = gateway({"agents": {"al": {"daily_usd": 0.05, "action": "alert"}},
                "alerts": alerts_config()}, clusters={WEBHOOK: hook.port}, concurrency=4)
    client = oai(gw, "al", delay_ms=50)
    barrier = threading.Barrier(calls)

    def one(_):
        barrier.wait()
        return chat(client).usage.total_tokens

    with ThreadPoolExecutor(calls) as pool:
        assert list(pool.map(one, range(calls))) == [1050] * calls
    assert mock.stats()["agents"]["al"]["calls"] == calls

    wait_until(lambda: gw.stats().value("agent_budget_alert_deliveries", reason="delivered") >= 2,
               10, "two alerts delivered")
    assert_stays(lambda: len(hook.all) == len(hook.accepted), 1.2, "no failed webhook calls")
    alerts = alerts_in(hook.accepted)
    names = sorted(a["labels"]["alertname"] for a in alerts)
    assert names == ["AgentBudgetExhausted", "AgentBudgetThreshold"], alerts
    assert len(hook.accepted) <= 2
    stats = gw.stats()
    assert stats.value("agent_budget_alerts", agent="al", reason="soft") == 1
    assert stats.value("agent_budget_alerts", agent="al", reason="limit_alert") == 1
    assert stats.value("agent_budget_alert_deliveries", reason="delivered") == 2
    total = calls * GPT4O
    assert stats.value("agent_budget_cost_micro_usd", agent="al") == total
    assert stats.value("agent_budget_overage_micro_usd", agent="al", period="daily") == total - 50_000


def test_failed_webhook_deliveries_are_retried_until_one_succeeds(gateway, mock):
    with Webhook(fail_first=2) as hook:
        gw = gateway({"agents": {"al": {"daily_usd": 0.01, "action": "alert"}},
                    "alerts": alerts_config()}, clusters={WEBHOOK: hook.port})
        # One call of 3600 input tokens: $0.009, crossing the soft threshold only.
        chat(oai(gw, "al", input_tokens=3600))
        [delivered] = hook.wait_for(1, timeout=15)
        assert [r.status for r in hook.all] == [500, 500, 200]
        # The same alert each time; it arrived (was accepted) exactly once.
        assert len({r.raw for r in hook.all}) == 1
        [alert] = delivered.body
        assert alert["labels"]["alertname"] == "AgentBudgetThreshold"
        stats = gw.stats()
        assert stats.value("agent_budget_alert_deliveries", reason="failed") == 2
        assert stats.value("agent_budget_alert_deliveries", reason="delivered") == 1
        assert stats.value("agent_budget_alert_deliveries", reason="given_up") == 0
        assert stats.value("agent_budget_alerts", agent="al", reason="soft") == 1
        assert_stays(lambda: len(hook.all) == 3, 1.2, "no more attempts after the success")


# --- 4. soft alerts for stop agents ------------------------------------------------------

def test_stop_agent_gets_a_soft_alert_at_80_percent_once_then_a_limit_alert(gateway, hook):
    gw = gateway({"agents": {"bot": {"daily_usd": 0.01, "action": "stop"}},
                "alerts": alerts_config()}, clusters={WEBHOOK: hook.port})
    client = oai(gw, "bot")
    chat(client)
    chat(client)  # 6000: 60 %, no alert
    chat(client)  # 9000: soft
    [soft_post] = hook.wait_for(1)
    [soft] = soft_post.body
    assert soft["labels"]["alertname"] == "AgentBudgetThreshold"
    assert soft["labels"]["action"] == "stop" and soft["labels"]["priority"] == "P3"
    assert soft["annotations"]["threshold"] == "80%" and soft["annotations"]["percent"] == "90%"
    chat(client)  # 12000: the limit (the call that crosses is let through)
    with pytest.raises(openai.RateLimitError):
        chat(client)
    posts = hook.wait_for(2)
    [limit] = posts[1].body
    assert limit["labels"]["alertname"] == "AgentBudgetExhausted"
    assert limit["labels"]["priority"] == "P2" and limit["labels"]["action"] == "stop"
    assert "calls are stopped" in limit["annotations"]["summary"]
    stats = gw.stats()
    assert stats.value("agent_budget_alerts", agent="bot", reason="soft") == 1
    assert stats.value("agent_budget_alerts", agent="bot", reason="limit_stop") == 1
    assert_stays(lambda: len(hook.all) == 2, 1.2, "soft alert raised once per period")


def test_custom_soft_thresholds_agent_and_global(gateway, hook):
    gw = gateway({"soft_threshold": 0.3,
                "agents": {"half": {"daily_usd": 0.01, "soft_threshold": 0.5},
                           "third": {"daily_usd": 0.01}},
                "alerts": alerts_config(format="json")}, clusters={WEBHOOK: hook.port})
    chat(oai(gw, "half"))        # 3000 = 30 %: under half's own 50 %
    chat(oai(gw, "third"))       # 3000 = 30 %: the global 30 % applies
    [third] = hook.wait_for(1)
    assert third.body["agent"] == "third" and third.body["threshold"] == 0.3
    assert third.body["text"].startswith("[P3 warning] third reached 30% of its daily budget")
    chat(oai(gw, "half"))        # 6000 = 60 %
    posts = hook.wait_for(2)
    half = posts[1].body
    assert half["agent"] == "half" and half["kind"] == "soft" and half["threshold"] == 0.5
    assert half["text"].startswith("[P3 warning] half reached 50% of its daily budget")
    chat(oai(gw, "half"))        # 9000: nothing new
    chat(oai(gw, "third"))       # 6000: nothing new
    assert_stays(lambda: len(hook.all) == 2, 1.2, "one soft alert per agent and period")


# --- 5. task and user caps ---------------------------------------------------------------

@pytest.mark.parametrize("header, field, scope", [
    ("x-task-id", "task_daily_usd", "task"),
    ("x-user-id", "user_daily_usd", "user"),
])
def test_cap_stops_one_task_or_user_while_the_agent_continues(gateway, mock, header, field, scope):
    gw = gateway({"agents": {"svc": {"daily_usd": 1, "action": "stop", field: 0.006}}})
    client = oai(gw, "svc")
    for _ in range(2):
        chat(client, extra_headers={header: "a"})
    with pytest.raises(openai.RateLimitError) as caught:
        chat(client, extra_headers={header: "a"})
    err = caught.value
    assert f"its daily cap for {scope} `a` of $0.006000" in err.body["message"]
    assert err.response.headers["x-agent-budget-limit-usd"] == "0.006000"
    assert err.response.headers["x-agent-budget-remaining-usd"] == "0.000000"
    assert err.response.headers["x-should-retry"] == "false"
    # Anthropic-shaped on the Messages API, the same cap.
    with pytest.raises(anthropic.RateLimitError):
        message(claude(gw, "svc"), extra_headers={header: "a"})

    # Other tasks / users of the agent, and calls with none, go on.
    for other in ("b", "c"):
        raw = client.chat.completions.with_raw_response.create(
            model="gpt-4o", messages=HELLO, max_tokens=50, extra_headers={header: other})
        assert raw.http_response.status_code == 200
    raw = client.chat.completions.with_raw_response.create(model="gpt-4o", messages=HELLO, max_tokens=50)
    # The agent-wide headers on a normal call: $1 less the 4 calls booked before it.
    assert raw.headers["x-agent-budget-remaining-usd"] == "0.988000"
    stats = gw.stats()
    assert stats.value("agent_budget_rejected", agent="svc") == 2
    assert stats.value("agent_budget_spend_micro_usd", agent="svc", period="daily") == 5 * GPT4O
    assert mock.stats()["agents"]["svc"]["calls"] == 5


# --- 6. overshoot under concurrency, with and without reservations ----------------------

OVERSHOOT_CALLS = 200
OVERSHOOT_BUDGET = 1_000_000  # $1
# Each call: 1000 input + 750 output tokens of gpt-4o = 2500 + 7500 = $0.01, so 100 fit.
OVERSHOOT_IN, OVERSHOOT_OUT = 1000, 750
# How long the provider takes. The 200 SDK calls leave the client threads over ~0.3 s, so
# with 50 ms only part of them overlap (46-99 extra calls admitted without reservations,
# varying run to run); 200 ms makes every call overlap every other: the worst case, stable.
OVERSHOOT_DELAY_MS = 200


def record_overshoot(key: str, figures: dict) -> None:
    """Merges this run's figures into tests/.overshoot.json (locked: xdist workers)."""
    held = os.open(OVERSHOOT_FILE.parent, os.O_RDONLY)  # lock the directory: no lock file
    try:
        fcntl.flock(held, fcntl.LOCK_EX)
        try:
            data = json.loads(OVERSHOOT_FILE.read_text()) if OVERSHOOT_FILE.exists() else {}
        except ValueError:
            data = {}
        data[key] = figures
        tmp = OVERSHOOT_FILE.with_name(f".overshoot.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
        os.replace(tmp, OVERSHOOT_FILE)
    finally:
        os.close(held)  # releases the lock


@pytest.mark.parametrize("reservations", [True, False], ids=["reservations", "no_reservations"])
def test_overshoot_of_200_concurrent_calls_racing_the_last_dollar(gateway, mock, reservations):
    gw = gateway({"reservations": reservations,
                "agents": {"race": {"daily_usd": OVERSHOOT_BUDGET / 1e6, "action": "stop"}}},
               concurrency=4)
    body_sizes = []
    # The request body the filter sizes the worst case from, seen on the wire.
    http_client = openai.DefaultHttpxClient(
        event_hooks={"request": [lambda r: body_sizes.append(len(r.content))]})
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{gw.port}/v1", api_key="test", max_retries=0,
                           http_client=http_client,
                           default_headers=knobs("race", OVERSHOOT_IN, OVERSHOOT_OUT,
                                                 delay_ms=OVERSHOOT_DELAY_MS))
    # A prompt sized so that the filter's worst case (bytes / 3 input tokens, all of
    # max_tokens out) equals the real cost (1000 input tokens, 750 out): the SDK sends a
    # 3000-byte body.
    prompt = [{"role": "user", "content": "x" * 2923}]
    barrier = threading.Barrier(OVERSHOOT_CALLS)

    def one(_):
        barrier.wait()
        try:
            client.chat.completions.create(model="gpt-4o", messages=prompt, max_tokens=OVERSHOOT_OUT)
            return 200
        except openai.RateLimitError:
            return 429

    began = time.monotonic()
    with ThreadPoolExecutor(OVERSHOOT_CALLS) as pool:
        statuses = list(pool.map(one, range(OVERSHOOT_CALLS)))
    elapsed = time.monotonic() - began
    admitted = statuses.count(200)
    assert admitted + statuses.count(429) == OVERSHOOT_CALLS

    body_bytes = max(body_sizes)
    assert min(body_sizes) == body_bytes
    real_cost = OVERSHOOT_IN * 2.5 + OVERSHOOT_OUT * 10                       # micro-USD
    worst_case = math.ceil(math.ceil(body_bytes / 3) * 2.5 + OVERSHOOT_OUT * 10)
    assert real_cost <= worst_case < real_cost * 1.01, (body_bytes, worst_case)

    assert mock.stats()["agents"]["race"]["calls"] == admitted
    charged = gw.stats().value("agent_budget_cost_micro_usd", agent="race")
    assert charged == admitted * real_cost
    # The daily spend gauge (refreshed from the ledger) agrees with what was charged.
    wait_until(lambda: gw.stats().value("agent_budget_spend_micro_usd", agent="race",
                                        period="daily") == charged, 8, "spend gauge to settle")
    spend = gw.stats().value("agent_budget_spend_micro_usd", agent="race", period="daily")
    overshoot = spend - OVERSHOOT_BUDGET
    figures = {
        "reservations": reservations, "concurrency": 4, "calls": OVERSHOOT_CALLS,
        "provider_delay_ms": OVERSHOOT_DELAY_MS,
        "budget_usd": OVERSHOOT_BUDGET / 1e6, "call_cost_usd": real_cost / 1e6,
        "call_worst_case_usd": worst_case / 1e6, "admitted": admitted,
        "rejected": OVERSHOOT_CALLS - admitted, "final_spend_usd": spend / 1e6,
        "overshoot_usd": overshoot / 1e6, "overshoot_calls": round(overshoot / real_cost, 2),
        "elapsed_s": round(elapsed, 2),
    }
    print(f"\novershoot ({'with' if reservations else 'without'} reservations): "
          f"${overshoot / 1e6:+.6f} = {figures['overshoot_calls']:+} calls "
          f"(admitted {admitted}/{OVERSHOOT_CALLS}, spend ${spend / 1e6:.6f} of ${OVERSHOOT_BUDGET / 1e6:.2f}, "
          f"per-call cost ${real_cost / 1e6:.6f}, worst case ${worst_case / 1e6:.6f}, {elapsed:.2f} s)")
    record_overshoot("with_reservations" if reservations else "without_reservations", figures)

    if reservations:
        assert overshoot <= worst_case
        assert admitted == OVERSHOOT_BUDGET // worst_case
    else:
        # Decided on settled spend only: calls in flight all see room and overshoot.
        assert overshoot > worst_case


# --- 6. the limit alert goes out the moment the limit takes effect ------------------------
#
# With reservations a call is refused (or degraded) once its worst case no longer fits what
# is left, usually before spend reaches 100 %. Calls here: gpt-4o, max_tokens 60, the mock
# reporting 20 input and 60 output tokens: 50 + 600 = 650 micro-USD each, a worst case of
# ~700 (the request's bytes as input plus 60 output tokens). Against $0.004: six calls fit
# (3900), the seventh does not (3900 + ~700 > 4000), at 97 % spend.

SMALL = {"input_tokens": 20, "output_tokens": 60}


def small_chat(gw, agent, max_tokens=60):
    client = oai(gw, agent, **SMALL)
    return client.chat.completions.create(model="gpt-4o", messages=HELLO, max_tokens=max_tokens)


def kinds_of(hook) -> list[tuple[str, str]]:
    """(kind, trigger) of every alert delivered, sorted (JSON format: one per body; each
    worker delivers its own alerts, so arrival order is not raising order)."""
    return sorted((d.body["kind"], d.body["trigger"]) for d in hook.accepted)


def test_stop_agent_refused_before_its_budget_is_reached_gets_its_limit_alert(gateway, hook):
    gw = gateway({"agents": {"batch": {"daily_usd": 0.004, "action": "stop"}},
                  "alerts": alerts_config(format="json")}, clusters={WEBHOOK: hook.port})
    for _ in range(6):
        small_chat(gw, "batch")
    for _ in range(2):
        with pytest.raises(openai.RateLimitError) as refused:
            small_chat(gw, "batch")
    assert "more than is left" in refused.value.message
    hook.wait_for(2)
    assert_stays(lambda: len(hook.all) == 2, 1.2, "one limit alert, not one per refusal")
    assert kinds_of(hook) == [("limit_stop", "worst_case"), ("soft", "budget_reached")]
    [limit] = [d.body for d in hook.accepted if d.body["kind"] == "limit_stop"]
    assert limit["spend_usd"] == "0.003900" and limit["percent"] == 97
    assert "no longer fits" in limit["text"] and limit["worst_case_usd"] is not None
    stats = gw.stats()
    assert stats.value("agent_budget_alerts", agent="batch", reason="limit_stop") == 1
    assert stats.value("agent_budget_rejected", agent="batch") == 2


def test_a_call_larger_than_the_whole_budget_is_refused_at_once_and_alerted(gateway, hook):
    gw = gateway({"agents": {"batch": {"daily_usd": 0.004, "action": "stop"}},
                  "alerts": alerts_config(format="json")}, clusters={WEBHOOK: hook.port})
    with pytest.raises(openai.RateLimitError) as refused:
        small_chat(gw, "batch", max_tokens=1000)  # worst case > $0.010
    assert "no call of this size can ever fit" in refused.value.message
    assert "max_tokens" in refused.value.message
    hook.wait_for(1)
    assert_stays(lambda: len(hook.all) == 1, 1.2, "exactly one alert")
    assert kinds_of(hook) == [("limit_stop", "worst_case")]
    assert hook.accepted[0].body["spend_usd"] == "0.000000"


def test_degrade_that_starts_before_the_budget_is_reached_gets_its_limit_alert(gateway, hook):
    gw = gateway({"agents": {"deg": {"daily_usd": 0.004, "action": "degrade",
                                     "degrade_to": DEGRADE_TO}},
                  "alerts": alerts_config(format="json")}, clusters={WEBHOOK: hook.port})
    served = [small_chat(gw, "deg").model for _ in range(8)]
    assert served == ["gpt-4o"] * 6 + ["gpt-4o-mini"] * 2
    hook.wait_for(2)
    assert_stays(lambda: len(hook.all) == 2, 1.2, "one limit alert")
    assert kinds_of(hook) == [("limit_degrade", "worst_case"), ("soft", "budget_reached")]


def test_degrade_allowance_that_starts_refusing_gets_its_alert(gateway, hook):
    # Budget $0.004 and an allowance of $0.0005 past it: gpt-4o-mini calls (20 + 60 tokens,
    # 39 micro-USD, worst case ~50) fit until the allowance cannot take another.
    gw = gateway({"agents": {"deg": {"daily_usd": 0.004, "action": "degrade",
                                     "degrade_to": DEGRADE_TO, "degrade_usd": 0.0005}},
                  "alerts": alerts_config(format="json")}, clusters={WEBHOOK: hook.port})
    refused = 0
    for _ in range(30):
        try:
            small_chat(gw, "deg")
        except openai.RateLimitError as error:
            assert "the spend allowed after degrading" in error.message
            refused += 1
            if refused == 2:
                break
    assert refused == 2
    hook.wait_for(3)
    assert_stays(lambda: len(hook.all) == 3, 1.2, "one alert per level")
    assert kinds_of(hook) == [("degrade_exhausted", "worst_case"),
                              ("limit_degrade", "worst_case"), ("soft", "budget_reached")]


def test_shipped_config_nightly_batch_gets_its_limit_alert_when_refusals_begin(gateway, hook):
    # The demo's batch agent in envoy/agent-budget.yaml as shipped: $0.05 a day, stop, tasks
    # capped at $0.03; claude-haiku-4-5 calls of 8000 input and 1500 output tokens cost
    # $0.0155 each, with a worst case of ~$0.01 (max_tokens 2000).
    gw = gateway(None, clusters={WEBHOOK: hook.port})
    client = anthropic.Anthropic(base_url=f"http://127.0.0.1:{gw.port}", api_key="test",
                                 max_retries=0, default_headers=knobs("nightly-batch", 8000, 1500))
    outcomes = []
    for task in ["reindex", "summarize", "reindex", "summarize", "reindex"]:
        try:
            client.messages.create(model="claude-haiku-4-5", max_tokens=2000, messages=HELLO,
                                   extra_headers={"x-task-id": task})
            outcomes.append(200)
        except anthropic.RateLimitError:
            outcomes.append(429)
    assert outcomes == [200, 200, 200, 429, 429]
    wait_until(lambda: len([a for a in alerts_in(hook.accepted)
                            if a["labels"]["agent"] == "nightly-batch"]) == 2, 10, "two alerts")
    assert_stays(lambda: len(hook.all) == len(hook.accepted), 1.2, "no failed deliveries")
    mine = [a for a in alerts_in(hook.accepted) if a["labels"]["agent"] == "nightly-batch"]
    names = sorted((a["labels"]["alertname"], a["annotations"]["trigger"]) for a in mine)
    assert names == [("AgentBudgetExhausted", "worst_case"), ("AgentBudgetThreshold", "budget_reached")]
