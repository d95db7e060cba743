"""Identity from the provider API key (`identity.source: api_key`) in a real Envoy: the key
names the agent, a forged agent header neither charges nor reaches anyone, and the key never
shows in Envoy's log, its stats or the access log."""

import hashlib

import pytest

from harness import knobs, request

CHAT = "/v1/chat/completions"
MESSAGES = "/v1/messages"
ALPHA_KEY = "sk-alpha-3f9c1e"
BETA_KEY = "sk-beta-77d0a2"
STRANGER_KEY = "sk-stranger-0b1d"


def digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def keyed_config(missing_agent="reject"):
    agents = {"alpha": {"daily_usd": 100}, "beta": {"daily_usd": 100}}
    if missing_agent == "default":
        agents["default"] = {"daily_usd": 100}
    return {"missing_agent": missing_agent, "agents": agents,
            "identity": {"source": "api_key",
                         "api_keys": {digest(ALPHA_KEY): "alpha", digest(BETA_KEY): "beta"}}}


def chat():
    return {"model": "gpt-4o", "max_tokens": 100, "messages": [{"role": "user", "content": "hello"}]}


def message():
    return {"model": "claude-sonnet-4-5", "max_tokens": 100, "messages": [{"role": "user", "content": "hello"}]}


def test_the_key_names_the_agent_whatever_the_agent_header_says(gateway, mock):
    gw = gateway(keyed_config())
    # OpenAI's bearer token, with a forged agent header naming the other agent.
    resp = gw.post(CHAT, chat(), {**knobs("beta", 1000, 100), "authorization": f"Bearer {ALPHA_KEY}"})
    assert resp.status == 200, resp.body
    # Anthropic's x-api-key, and no agent header at all.
    resp = gw.post(MESSAGES, message(), {**knobs(None, 1000, 100), "x-api-key": BETA_KEY})
    assert resp.status == 200, resp.body
    stats = gw.stats()
    assert stats.value("agent_budget_cost_micro_usd", agent="alpha") == 1000 * 2.5 + 100 * 10
    assert stats.value("agent_budget_cost_micro_usd", agent="beta") == 1000 * 3 + 100 * 15
    assert stats.value("agent_budget_requests", agent="alpha") == 1
    assert stats.value("agent_budget_requests", agent="beta") == 1
    # The mock counts calls by the x-agent-id it received: the forged header never got there.
    provider = mock.stats()
    assert provider["total"]["calls"] == 2
    assert "beta" not in provider["agents"] and "alpha" not in provider["agents"]
    records = gw.access_records()
    assert sorted((r["agent"], r["budget"]) for r in records) == [("alpha", "alpha"), ("beta", "beta")]


@pytest.mark.parametrize("credential", [
    {"authorization": f"Bearer {STRANGER_KEY}"},
    {"x-goog-api-key": STRANGER_KEY},
    {},
], ids=["unknown-bearer", "unknown-goog-key", "no-key"])
def test_a_call_without_a_known_key_is_unidentified(gateway, mock, credential):
    gw = gateway(keyed_config())
    # A valid agent header does not help: in this mode only the key counts.
    resp = gw.post(CHAT, chat(), {**knobs("alpha", 10, 10), **credential})
    assert resp.status == 401, resp.body
    assert resp.headers["x-should-retry"] == "false"
    assert STRANGER_KEY not in resp.body.decode()
    stats = gw.stats()
    assert stats.value("agent_budget_unattributed", reason="missing") == 1
    assert stats.get("agent_budget_requests", agent="alpha") in (None, 0)
    assert mock.stats()["total"]["calls"] == 0


def test_without_a_known_key_the_default_budget_pays_when_configured(gateway, mock):
    gw = gateway(keyed_config(missing_agent="default"))
    resp = gw.post(CHAT, chat(), {**knobs("alpha", 1000, 0), "authorization": f"Bearer {STRANGER_KEY}"})
    assert resp.status == 200, resp.body
    stats = gw.stats()
    assert stats.value("agent_budget_cost_micro_usd", agent="default") == 2500
    assert stats.get("agent_budget_cost_micro_usd", agent="alpha") in (None, 0)
    assert mock.stats()["agents"].get("alpha") is None


def test_keys_and_digests_never_show(gateway):
    gw = gateway(keyed_config())
    gw.post(CHAT, chat(), {**knobs(None, 10, 10), "authorization": f"Bearer {ALPHA_KEY}"})
    gw.post(CHAT, chat(), {**knobs(None, 10, 10), "authorization": f"Bearer {STRANGER_KEY}"})
    prometheus = request(gw.admin_port, "GET", "/stats/prometheus").body.decode()
    plain = request(gw.admin_port, "GET", "/stats").body.decode()
    assert gw.stats().value("agent_budget_requests", agent="alpha") == 1  # the calls happened
    log = gw.log_text()
    records = "\n".join(str(r) for r in gw.access_records())
    assert records
    for text in (prometheus, plain, log, records):
        for secret in (ALPHA_KEY, STRANGER_KEY, digest(ALPHA_KEY), digest(BETA_KEY), digest(STRANGER_KEY)):
            assert secret not in text


def test_a_malformed_digest_is_refused_naming_the_field(gateway):
    gw = gateway({"agents": {"alpha": {"daily_usd": 1}},
                  "identity": {"source": "api_key", "api_keys": {"abc": "alpha"}}}, expect_failure=True)
    assert "field `identity.api_keys`" in gw.log_text()
