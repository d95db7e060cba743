"""Holding the request headers until the body is read (`hold_request_headers` with the
plugin's `allow_on_headers_stop_iteration`): what the provider receives, through a real Envoy."""

import pytest

from harness import knobs, shipped_plugin_config

CHAT = "/v1/chat/completions"
MESSAGES = "/v1/messages"


def agents(hold: bool) -> dict:
    return {
        "hold_request_headers": hold,
        "agents": {
            "bot": {"daily_usd": 100},
            # $0.001 a day: any gpt-4o call asking for 1000 output tokens ($0.01 worst case)
            # is refused at the body step.
            "tiny": {"daily_usd": 0.001},
            "saver": {"daily_usd": 0.000001, "action": "degrade", "degrade_to": {"gpt-4o*": "gpt-4o-mini"}},
        },
    }


def chat(model="gpt-4o", stream=False, max_tokens=1000):
    body = {"model": model, "max_tokens": max_tokens, "messages": [{"role": "user", "content": "hello"}]}
    if stream:
        body["stream"] = True
    return body


def test_shipped_config_holds_headers_and_envoy_lets_it():
    # The filter setting and Envoy's go together: one without the other stalls calls or
    # loses the benefit.
    assert shipped_plugin_config()["hold_request_headers"] is True
    import yaml
    from harness import BOOTSTRAP, _filter, _hcm, skip_unless_wasm
    skip_unless_wasm("the dynamic-module filter holds headers without an Envoy setting")
    listener = yaml.safe_load(BOOTSTRAP.read_text())["static_resources"]["listeners"][0]
    plugin = _filter(_hcm(listener))["typed_config"]["config"]
    assert plugin["allow_on_headers_stop_iteration"] is True


def test_held_headers_keep_content_length_even_when_the_body_is_rewritten(gateway, mock):
    gw = gateway(agents(hold=True))
    # Non-streaming OpenAI and Anthropic calls: the body goes upstream as it came.
    assert gw.post(CHAT, chat(), knobs("bot", 100, 10)).status == 200
    msg = {"model": "claude-haiku-4-5", "max_tokens": 64, "messages": [{"role": "user", "content": "hi"}]}
    assert gw.post(MESSAGES, msg, knobs("bot", 100, 10)).status == 200
    # A stream the filter asks usage of (stream_options added: a longer body) and a call
    # degraded in the body (model swapped): each goes with its new length.
    resp = gw.post(CHAT, chat("gpt-4o-mini", stream=True), knobs("bot", 400, 40, chunks=5))
    assert resp.status == 200
    degraded = gw.post(CHAT, chat(max_tokens=10), knobs("saver", 10, 1))
    assert degraded.status == 200, degraded.body
    assert degraded.headers.get("x-agent-budget-degraded-to") == "gpt-4o-mini"
    served = mock.stats()
    assert served["unsized_requests"] == 0, served
    assert served["total"]["calls"] == 4 and served["unreported_calls"] == 0
    # The rewritten stream was read whole by the provider: its usage came back and was charged
    # (gpt-4o-mini: 400 x $0.15/M + 40 x $0.60/M).
    assert served["agents"]["bot"]["output_tokens"] == 10 + 10 + 40


def test_call_refused_for_its_worst_case_never_reaches_the_provider(gateway, mock):
    gw = gateway(agents(hold=True))
    resp = gw.post(CHAT, chat(), knobs("tiny", 10, 1))
    assert resp.status == 429, resp.body
    assert "max_tokens" in resp.body.decode()
    served = mock.stats()
    assert served["total"]["calls"] == 0 and served["unreported_calls"] == 0, served
    assert gw.stats().value("agent_budget_rejected", agent="tiny") == 1


@pytest.mark.parametrize("path,body,unsized", [
    # An OpenAI chat body may gain stream_options: its length is not declared ahead.
    (CHAT, chat(), 1),
    (MESSAGES, {"model": "claude-haiku-4-5", "max_tokens": 64, "messages": [{"role": "user", "content": "hi"}]}, 0),
])
def test_without_holding_content_length_goes_only_where_the_body_may_change(gateway, mock, path, body, unsized):
    gw = gateway(agents(hold=False))
    assert gw.post(path, body, knobs("bot", 100, 10)).status == 200
    served = mock.stats()
    assert served["unsized_requests"] == unsized, served
    assert served["total"]["calls"] == 1
