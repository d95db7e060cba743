"""Policy changes without a restart: envoy/agent-budget-dynamic.yaml (native:
envoy/agent-budget-native-dynamic.yaml) takes its listener (and with it the plugin
configuration) from an LDS file (envoy/lds.yaml, envoy/lds-native.yaml); rewriting that file atomically makes Envoy
configure the plugin anew. Spend already booked is kept (the ledger is shared data under the
vm_id), a new budget and action apply at once to new connections, and an invalid
configuration is refused while the last good one keeps serving.

Each test runs Envoy from copies of both files (free ports, a temp dir) with
`--drain-strategy immediate`, so connections opened before a reload are closed after their
next response rather than over the default 600 s drain.
"""

from __future__ import annotations

import time

import openai
import pytest

import yaml

from harness import BOOTSTRAP, DYNAMIC_BOOTSTRAP, LDS, knobs, request, wait_until
from webhook import Webhook

CALL = 3000  # gpt-4o, 1000 input + 50 output tokens
HELLO = [{"role": "user", "content": "hello"}]
ALERTS = {"cluster": "alert_webhook"}
# Every gateway here: the listener from an LDS file, drained immediately (see above).
DYNAMIC = {"dynamic": True, "envoy_args": ["--drain-strategy", "immediate"]}


def client(gw, agent) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"http://127.0.0.1:{gw.port}/v1", api_key="test", max_retries=0,
                         default_headers=knobs(agent, 1000, 50))


def call(c: openai.OpenAI):
    """One gpt-4o call; returns the raw response (headers) after parsing it."""
    raw = c.chat.completions.with_raw_response.create(model="gpt-4o", messages=HELLO, max_tokens=50)
    raw.parse()
    return raw


def probe(gw, agent) -> dict[str, str]:
    """Budget headers for `agent` as the listener sees it now, on a new connection, without
    spending anything (a GET that is no LLM call is passed through unmetered)."""
    resp = request(gw.port, "GET", "/healthz", headers={"x-agent-id": agent}, timeout=5)
    return {k: v for k, v in resp.headers.items() if k.startswith("x-agent-budget-")}


def reload(gw, plugin_config, agent, limit_usd) -> None:
    """Writes the new configuration and waits until Envoy took it and new connections are
    served with it (the listener's in-place update warms the new filter chain first)."""
    before = gw.lds_stats()["update_success"]
    gw.write_listener(plugin_config)
    wait_until(lambda: gw.lds_stats()["update_success"] == before + 1, 10, "LDS update")
    wait_until(lambda: probe(gw, agent).get("x-agent-budget-limit-usd") == limit_usd, 10,
               f"the new limit {limit_usd} on new connections")


def test_new_budget_and_action_apply_without_restart_and_spend_is_kept(gateway, mock):
    gw = gateway({"agents": {"bot": {"daily_usd": 0.02, "action": "alert"}}}, **DYNAMIC)
    kept_alive = client(gw, "bot")
    for _ in range(2):
        call(kept_alive)
    assert probe(gw, "bot")["x-agent-budget-remaining-usd"] == "0.014000"
    pid = gw.proc.pid

    # Lower budget, different action.
    reload(gw, {"agents": {"bot": {"daily_usd": 0.008, "action": "stop"}}}, "bot", "0.008000")
    assert gw.proc.pid == pid and gw.proc.poll() is None  # no restart
    stats = gw.lds_stats()
    assert stats["update_success"] == 2 and stats["update_rejected"] == 0
    # The $0.006 spent under the old configuration counts against the new limit.
    assert probe(gw, "bot")["x-agent-budget-remaining-usd"] == "0.002000"

    fresh = client(gw, "bot")
    raw = call(fresh)  # fits the $0.002 left (worst case ~$0.0006), spend now $0.009
    assert raw.headers["x-agent-budget-limit-usd"] == "0.008000"
    assert raw.headers["x-agent-budget-remaining-usd"] == "0.002000"
    # The new action: stop (the old `alert` would have let this through).
    with pytest.raises(openai.RateLimitError) as caught:
        call(fresh)
    assert "daily budget of $0.008000" in caught.value.body["message"]

    # A connection opened before the reload: at most one more response from the old filter
    # chain (marked `connection: close` by the immediate drain), then the new policy.
    try:
        old = call(kept_alive)
        assert old.headers["x-agent-budget-limit-usd"] == "0.020000"
        assert old.headers["connection"] == "close"
        extra = CALL
    except openai.RateLimitError:
        extra = 0
    with pytest.raises(openai.RateLimitError):
        call(kept_alive)

    stats = gw.stats()
    assert stats.value("agent_budget_cost_micro_usd", agent="bot") == 3 * CALL + extra
    assert stats.value("agent_budget_spend_micro_usd", agent="bot", period="daily") == 3 * CALL + extra
    assert stats.value("agent_budget_limit_micro_usd", agent="bot", period="daily") in (8000, 20000)
    assert mock.stats()["agents"]["bot"]["calls"] == 3 + extra // CALL


def test_invalid_configuration_is_rejected_and_the_last_good_one_keeps_serving(gateway, mock):
    good = {"agents": {"bot": {"daily_usd": 0.02, "action": "stop"}, "other": {"daily_usd": 1}}}
    gw = gateway(good, **DYNAMIC)
    call(client(gw, "bot"))

    gw.write_listener({"agents": {"bot": {"daily_usd": -5, "action": "stop"}, "other": {"daily_usd": 1}}})
    wait_until(lambda: gw.lds_stats()["update_rejected"] == 1, 10, "the update to be rejected")
    assert gw.lds_stats()["update_success"] == 1
    wait_until(lambda: "field `agents.bot.daily_usd`" in gw.log_text(), 5, "the log line")
    assert ("invalid configuration: field `agents.bot.daily_usd`: -5 is not a USD amount"
            in gw.log_text())

    # Still serving, with the last good configuration, on every worker (new connections).
    for n in range(6):
        raw = call(client(gw, "bot"))
        assert raw.headers["x-agent-budget-limit-usd"] == "0.020000"
        assert raw.headers["x-agent-budget-remaining-usd"] == f"{0.02 - (n + 1) * 0.003:.6f}"
    assert call(client(gw, "other")).headers["x-agent-budget-limit-usd"] == "1.000000"
    assert gw.stats().value("agent_budget_cost_micro_usd", agent="bot") == 7 * CALL

    # A later valid configuration is taken again (the failed one left nothing stuck).
    reload(gw, {"agents": {"bot": {"daily_usd": 0.05}, "other": {"daily_usd": 1}}}, "bot", "0.050000")
    assert probe(gw, "bot")["x-agent-budget-remaining-usd"] == "0.029000"
    assert gw.lds_stats()["update_rejected"] == 1


def test_the_shipped_dynamic_configuration_serves_and_reloads(gateway, mock):
    gw = gateway(None, **DYNAMIC)  # envoy/lds.yaml's own plugin configuration
    raw = call(client(gw, "research-bot"))
    assert raw.headers["x-agent-budget-limit-usd"] == "5.000000"
    assert probe(gw, "support-bot")["x-agent-budget-limit-usd"] == "0.020000"
    reload(gw, {"agents": {"research-bot": {"daily_usd": 7}}}, "research-bot", "7.000000")
    assert probe(gw, "research-bot")["x-agent-budget-remaining-usd"] == "6.997000"


def alertnames(deliveries) -> set[tuple[str, str]]:
    return {(a["labels"]["alertname"], a["annotations"]["budget_usd"]) for d in deliveries for a in d.body}


def test_raising_a_budget_mid_period_alerts_the_crossings_of_the_new_budget(gateway, mock):
    with Webhook() as hook:
        gw = gateway({"agents": {"bot": {"daily_usd": 0.006}}, "alerts": ALERTS},
                     clusters={"alert_webhook": hook.port}, **DYNAMIC)
        old = client(gw, "bot")
        call(old)
        call(old)  # $0.006: soft and limit of the $0.006 budget
        [first] = hook.wait_for(1)
        assert alertnames([first]) == {("AgentBudgetThreshold", "0.006000"),
                                       ("AgentBudgetExhausted", "0.006000")}

        reload(gw, {"agents": {"bot": {"daily_usd": 0.012}}, "alerts": ALERTS}, "bot", "0.012000")
        new = client(gw, "bot")
        call(new)  # $0.009
        call(new)  # $0.012: past 80 % ($0.0096) and 100 % of the new budget
        with pytest.raises(openai.RateLimitError):
            call(new)
        posts = hook.wait_for(2, timeout=4)
        assert alertnames(posts[1:]) == {("AgentBudgetThreshold", "0.012000"),
                                         ("AgentBudgetExhausted", "0.012000")}


def test_lowering_a_budget_below_the_spend_alerts_that_it_is_used_up(gateway, mock):
    with Webhook() as hook:
        gw = gateway({"agents": {"bot": {"daily_usd": 0.02}}, "alerts": ALERTS},
                     clusters={"alert_webhook": hook.port}, **DYNAMIC)
        c = client(gw, "bot")
        call(c)
        call(c)  # $0.006 of $0.02: no alert
        reload(gw, {"agents": {"bot": {"daily_usd": 0.004}}, "alerts": ALERTS}, "bot", "0.004000")
        with pytest.raises(openai.RateLimitError):
            call(client(gw, "bot"))
        assert ("AgentBudgetExhausted", "0.004000") in alertnames(hook.wait_for(1, timeout=4))


def test_the_limit_gauge_shows_the_new_limit_after_a_reload(gateway, mock):
    gw = gateway({"agents": {"bot": {"daily_usd": 0.02}}}, **DYNAMIC)
    limit = lambda: gw.stats().value("agent_budget_limit_micro_usd", agent="bot", period="daily")
    wait_until(lambda: limit() == 20_000, 7, "the limit gauge")
    # Each plugin instance refreshes the gauges every 5 ticks from its own start: reloading
    # ~2.5 s after the start puts the old and the new instances' refreshes out of phase
    # (a reload right after the start would hide the old instance's writes behind the new's).
    time.sleep(2.5)
    reload(gw, {"agents": {"bot": {"daily_usd": 0.008}}}, "bot", "0.008000")
    wait_until(lambda: limit() == 8_000, 7, "the new limit in the gauge")
    # Every plugin instance refreshes the gauges every 5 ticks (1 s each).
    deadline = time.monotonic() + 6
    while time.monotonic() < deadline:
        assert limit() == 8_000
        time.sleep(0.1)


def test_the_lds_file_holds_the_static_bootstraps_listeners():
    # One gateway in two forms: whichever bootstrap a platform team starts from, the
    # listeners, filters and budgets are the same.
    static = yaml.safe_load(BOOTSTRAP.read_text())["static_resources"]["listeners"]
    dynamic = [{key: value for key, value in resource.items() if key != "@type"}
               for resource in yaml.safe_load(LDS.read_text())["resources"]]
    assert dynamic == static
    clusters = lambda path: yaml.safe_load(path.read_text())["static_resources"]["clusters"]
    assert clusters(DYNAMIC_BOOTSTRAP) == clusters(BOOTSTRAP)
