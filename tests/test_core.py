"""The core filter in a real Envoy: metering, stop at the limit, headers, identity, metrics, config."""

import json
import time
from datetime import datetime, timedelta, timezone

import pytest

from harness import FLUSH_WAIT_S, knobs, request, shipped_plugin_config

CHAT = "/v1/chat/completions"
MESSAGES = "/v1/messages"


def chat(model="gpt-4o", stream=False, **extra):
    # max_tokens keeps each call's reservation (its worst case) near its real cost, so the
    # small budgets below admit the calls they are meant to admit.
    body = {"model": model, "max_tokens": 1000, "messages": [{"role": "user", "content": "hello"}], **extra}
    if stream:
        body["stream"] = True
    return body


def message(model="claude-sonnet-4-5", stream=False):
    body = {"model": model, "max_tokens": 64, "messages": [{"role": "user", "content": "hello"}]}
    if stream:
        body["stream"] = True
    return body


def seconds_to_utc_midnight():
    now = datetime.now(timezone.utc)
    midnight = (now + timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)
    return (midnight - now).total_seconds()


def sse_events(body: bytes):
    return [block for block in body.decode().split("\n\n") if block.strip()]


BASIC = {"agents": {"bot": {"daily_usd": 100}, "claude-bot": {"daily_usd": 100, "monthly_usd": 500}}}


def test_openai_call_is_charged_exact_micro_usd(gateway):
    gw = gateway(BASIC)
    resp = gw.post(CHAT, chat("gpt-4o-2024-08-06"), knobs("bot", 1200, 300, cached_tokens=200, reasoning_tokens=50))
    assert resp.status == 200, resp.body
    assert resp.json()["usage"]["prompt_tokens"] == 1200
    # gpt-4o: 1000 uncached x $2.50/M + 200 cached x $1.25/M + 300 out x $10/M
    expected = 1000 * 2.5 + 200 * 1.25 + 300 * 10
    stats = gw.stats()
    assert stats.value("agent_budget_cost_micro_usd", agent="bot") == expected == 5750
    assert stats.value("agent_budget_input_tokens", agent="bot") == 1000
    assert stats.value("agent_budget_cached_input_tokens", agent="bot") == 200
    assert stats.value("agent_budget_output_tokens", agent="bot") == 300
    assert stats.value("agent_budget_reasoning_tokens", agent="bot") == 50
    assert stats.value("agent_budget_requests", agent="bot") == 1
    assert stats.value("agent_budget_spend_micro_usd", agent="bot", period="daily") == 5750
    assert stats.value("agent_budget_spend_micro_usd", agent="bot", period="monthly") == 5750


def test_anthropic_call_with_cache_classes_is_charged(gateway):
    gw = gateway(BASIC)
    resp = gw.post(MESSAGES, message(), knobs("claude-bot", 100, 200, cached_tokens=1000, cache_write_tokens=400))
    assert resp.status == 200, resp.body
    # claude-sonnet-4-5: $3/M in, $0.30/M cache read, $3.75/M cache write, $15/M out
    expected = 100 * 3 + 1000 * 0.3 + 400 * 3.75 + 200 * 15
    assert gw.stats().value("agent_budget_cost_micro_usd", agent="claude-bot") == expected == 5100


def test_openai_stream_is_charged_and_usage_chunk_hidden_from_client(gateway, mock):
    gw = gateway(BASIC)
    resp = gw.post(CHAT, chat("gpt-4o-mini", stream=True), knobs("bot", 400, 40, chunks=20))
    assert resp.status == 200
    events = sse_events(resp.body)
    # role chunk + 20 content chunks + finish chunk + [DONE]; the usage-only chunk the
    # filter asked for is not shown to a client that did not ask for it.
    assert len(events) == 23, events
    assert events[-1] == "data: [DONE]"
    assert not any('"choices":[]' in e for e in events)
    assert mock.stats()["agents"]["bot"]["output_tokens"] == 40  # the mock did report usage
    # gpt-4o-mini: 400 x $0.15/M + 40 x $0.60/M = 60 + 24
    assert gw.stats().value("agent_budget_cost_micro_usd", agent="bot") == 84


def test_openai_stream_keeps_usage_chunk_when_client_asked(gateway):
    gw = gateway(BASIC)
    body = chat("gpt-4o-mini", stream=True, stream_options={"include_usage": True})
    resp = gw.post(CHAT, body, knobs("bot", 400, 40, chunks=5))
    usage_events = [e for e in sse_events(resp.body) if '"choices":[]' in e]
    assert len(usage_events) == 1
    assert json.loads(usage_events[0][len("data: "):])["usage"]["completion_tokens"] == 40
    assert gw.stats().value("agent_budget_cost_micro_usd", agent="bot") == 84


def test_anthropic_stream_charges_final_cumulative_output_once(gateway):
    gw = gateway(BASIC)
    resp = gw.post(MESSAGES, message("claude-haiku-4-5", stream=True), knobs("claude-bot", 1000, 300, chunks=30))
    assert resp.status == 200
    assert sse_events(resp.body)[-1].startswith("event: message_stop")
    stats = gw.stats()
    # claude-haiku-4-5: 1000 x $1/M + 300 x $5/M
    assert stats.value("agent_budget_cost_micro_usd", agent="claude-bot") == 2500
    assert stats.value("agent_budget_output_tokens", agent="claude-bot") == 300


def test_agent_is_stopped_exactly_when_its_budget_is_reached(gateway, mock):
    # Each call: 1000 in x $2.50/M + 50 out x $10/M = 3000 micro-USD; 3 calls reach $0.009.
    gw = gateway({"agents": {"batch": {"daily_usd": 0.009, "action": "stop"},
                                     "other": {"daily_usd": 1}}})
    remaining = []
    for _ in range(3):
        resp = gw.post(CHAT, chat(max_tokens=50), knobs("batch", 1000, 50))
        assert resp.status == 200, resp.body
        remaining.append(resp.headers["x-agent-budget-remaining-usd"])
    assert remaining == ["0.009000", "0.006000", "0.003000"]

    stopped = gw.post(CHAT, chat(max_tokens=50), knobs("batch", 1000, 50))
    assert stopped.status == 429
    assert stopped.headers["content-type"] == "application/json"
    assert stopped.headers["x-should-retry"] == "false"
    assert abs(int(stopped.headers["retry-after"]) - seconds_to_utc_midnight()) <= 5
    assert stopped.headers["x-agent-budget-remaining-usd"] == "0.000000"
    assert stopped.headers["x-agent-budget-limit-usd"] == "0.009000"
    assert stopped.headers["x-agent-budget-period"] == "daily"
    error = stopped.json()["error"]
    assert error["type"] == "budget_exceeded" and error["code"] == "budget_exceeded"
    assert "daily budget" in error["message"] and "resets at" in error["message"]

    # Anthropic-shaped for Anthropic paths.
    stopped = gw.post(MESSAGES, message(), knobs("batch", 10, 10))
    assert stopped.status == 429
    assert stopped.json() == {"type": "error", "error": {"type": "rate_limit_error",
                                                         "message": stopped.json()["error"]["message"]}}

    # The provider saw exactly the 3 allowed calls; other agents are unaffected.
    assert mock.stats()["agents"]["batch"]["calls"] == 3
    assert gw.post(CHAT, chat(), knobs("other", 10, 10)).status == 200
    stats = gw.stats()
    assert stats.value("agent_budget_rejected", agent="batch") == 2
    assert stats.value("agent_budget_spend_micro_usd", agent="batch", period="daily") == 9000
    stops = [r for r in gw.access_records() if r["action"] == "stopped"]
    assert [(r["agent"], r["http.response.status_code"]) for r in stops] == [("batch", 429)] * 2


def test_monthly_budget_stop_waits_for_the_month(gateway):
    # Without reservations: the first call is allowed on settled spend alone, then the month is used up.
    gw = gateway({"agents": {"m": {"monthly_usd": 0.000001}}, "reservations": False})
    assert gw.post(CHAT, chat(), knobs("m", 10, 10)).status == 200
    stopped = gw.post(CHAT, chat(), knobs("m", 10, 10))
    assert stopped.status == 429
    now = datetime.now(timezone.utc)
    first_of_next = (now.replace(day=28) + timedelta(days=4)).replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    assert abs(int(stopped.headers["retry-after"]) - (first_of_next - now).total_seconds()) <= 5
    assert stopped.headers["x-agent-budget-period"] == "monthly"


def test_every_response_carries_budget_headers(gateway):
    gw = gateway({"agents": {"a": {"daily_usd": 2, "monthly_usd": 1.5}}})
    resp = gw.post(CHAT, chat(), knobs("a", 10, 10))
    # The monthly cap is the tighter one.
    assert resp.headers["x-agent-budget-period"] == "monthly"
    assert resp.headers["x-agent-budget-limit-usd"] == "1.500000"
    assert resp.headers["x-agent-budget-remaining-usd"] == "1.500000"
    assert int(resp.headers["x-agent-budget-reset"]) > 0
    failed = gw.post(CHAT, chat(), knobs("a", 10, 10, status=503))
    assert failed.status == 503 and "x-agent-budget-remaining-usd" in failed.headers


@pytest.mark.parametrize("policy, headers, status, reason", [
    ("reject", {}, 400, "missing"),
    ("reject", {"x-agent-id": "stranger"}, 403, "unknown"),
    ("reject", {"x-agent-id": "bad id!"}, 400, "invalid"),
])
def test_unidentified_calls_are_rejected(gateway, mock, policy, headers, status, reason):
    gw = gateway({"missing_agent": policy, "unknown_agent": policy,
                          "agents": {"bot": {"daily_usd": 1}}})
    for path, shape in ((CHAT, "openai"), (MESSAGES, "anthropic")):
        resp = gw.post(path, chat(), headers)
        assert resp.status == status
        assert resp.headers["x-should-retry"] == "false"
        body = resp.json()
        if shape == "openai":
            assert body["error"]["message"]
        else:
            assert body["type"] == "error" and body["error"]["message"]
    assert gw.stats().value("agent_budget_unattributed", reason=reason) == 2
    assert mock.stats()["total"]["calls"] == 0


def test_unidentified_calls_can_be_charged_to_default(gateway):
    gw = gateway({"missing_agent": "default", "unknown_agent": "default",
                          "agents": {"bot": {"daily_usd": 1}, "default": {"daily_usd": 1}}})
    assert gw.post(CHAT, chat(), knobs(None, 1000, 0)).status == 200
    assert gw.post(CHAT, chat(), knobs("stranger", 1000, 0)).status == 200
    assert gw.stats().value("agent_budget_cost_micro_usd", agent="default") == 5000
    # Attribution keeps who really called.
    records = gw.access_records()
    assert sorted((r["agent"], r["budget"]) for r in records) == [("-", "default"), ("stranger", "default")]


def test_access_log_attribution_record(gateway):
    gw = gateway(BASIC)
    gw.post(CHAT, chat("gpt-4o"), {**knobs("bot", 1000, 100), "x-task-id": "t-42", "x-user-id": "u-7"})
    [record] = gw.access_records()
    assert (record["agent"], record["task"], record["user"]) == ("bot", "t-42", "u-7")
    assert (record["gen_ai.request.model"], record["gen_ai.response.model"]) == ("gpt-4o", "gpt-4o")
    assert (record["gen_ai.usage.input_tokens"], record["gen_ai.usage.output_tokens"],
            record["cost_micro_usd"]) == (1000, 100, 3500)
    assert "hello" not in json.dumps(record)


def test_metrics_have_agent_labels_in_prometheus(gateway):
    gw = gateway(BASIC)
    gw.post(CHAT, chat(), knobs("bot", 10, 10))
    time.sleep(FLUSH_WAIT_S)  # counts reach Envoy on the tick
    text = request(gw.admin_port, "GET", "/stats/prometheus").body.decode()
    for line in ('agent_budget_requests{agent="bot"} 1',
                 'agent_budget_limit_micro_usd{agent="bot",period="daily"} 100000000',
                 'agent_budget_limit_micro_usd{agent="claude-bot",period="monthly"} 500000000'):
        assert line in text, line


def test_unmetered_responses_are_counted_not_charged(gateway):
    gw = gateway(BASIC)
    assert gw.post(CHAT, chat(), knobs("bot", 10, 10, status=500)).status == 500
    assert gw.post(CHAT, chat(), knobs("bot", 10, 10, no_usage=1)).status == 200
    gzip = gw.post(CHAT, chat(), knobs("bot", 10, 10, content_encoding="gzip"))
    assert gzip.status == 200 and gzip.headers["content-encoding"] == "gzip"
    stats = gw.stats()
    assert stats.value("agent_budget_unmetered", reason="upstream_error") == 1
    assert stats.value("agent_budget_unmetered", reason="no_usage") == 1
    assert stats.value("agent_budget_unmetered", reason="compressed") == 1
    assert stats.value("agent_budget_unmetered_requests", agent="bot") == 3
    assert stats.value("agent_budget_cost_micro_usd", agent="bot") == 0


def test_config_as_json_string_value_is_accepted(gateway):
    gw = gateway({"agents": {"bot": {"daily_usd": 0.5}}}, as_string=True)
    resp = gw.post(CHAT, chat(), knobs("bot", 10, 10))
    assert resp.status == 200 and resp.headers["x-agent-budget-limit-usd"] == "0.500000"


@pytest.mark.parametrize("as_string", [False, True])
def test_bad_config_is_refused_at_load_naming_the_field(gateway, as_string):
    bad = {"agents": {"bot": {"daily_usd": -5}}}
    gw = gateway(bad, as_string=as_string, expect_failure=True)
    assert gw.proc.returncode != 0
    log = gw.log_text()
    assert "invalid configuration: field `agents.bot.daily_usd`" in log, log[-3000:]


def test_shipped_config_starts_and_serves(gateway):
    gw = gateway(shipped_plugin_config())
    assert gw.post(CHAT, chat("mock-model"), knobs("research-bot", 1_000_000, 0)).status == 200
    # mock-model is priced in the shipped config at $1/M input.
    assert gw.stats().value("agent_budget_cost_micro_usd", agent="research-bot") == 1_000_000
