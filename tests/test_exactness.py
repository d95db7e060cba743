"""Under concurrency on several Envoy workers, what is charged equals what the provider reported."""

import concurrent.futures
import http.client
import json
import random

from harness import knobs, wait_until

AGENTS = [f"agent-{i}" for i in range(8)]


def _worker(port: int, calls: list[tuple[str, dict, dict]]) -> list[int]:
    """One keep-alive client sending its share of calls; returns the statuses."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    statuses = []
    for path, body, headers in calls:
        conn.request("POST", path, body=json.dumps(body), headers={"content-type": "application/json", **headers})
        resp = conn.getresponse()
        resp.read()
        statuses.append(resp.status)
    conn.close()
    return statuses


def test_charged_tokens_equal_reported_tokens_under_concurrency(gateway, mock):
    rng = random.Random(7)
    gw = gateway({"agents": {a: {"daily_usd": 1000} for a in AGENTS}}, concurrency=4)
    calls = []
    for _ in range(2000):
        agent = rng.choice(AGENTS)
        headers = knobs(agent, rng.randint(1, 5000), rng.randint(0, 800), chunks=rng.randint(1, 8))
        if rng.random() < 0.5:
            body = {"model": "gpt-4o-mini", "messages": [], "stream": rng.random() < 0.5}
            calls.append(("/v1/chat/completions", body, headers))
        else:
            body = {"model": "claude-haiku-4-5", "max_tokens": 10, "messages": [], "stream": rng.random() < 0.5}
            calls.append(("/v1/messages", body, headers))
    shares = [calls[i::16] for i in range(16)]
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        statuses = [s for result in pool.map(lambda c: _worker(gw.port, c), shares) for s in result]
    assert statuses.count(200) == len(calls)

    served = mock.stats()["agents"]
    stats = gw.stats()
    for agent in AGENTS:
        assert stats.value("agent_budget_input_tokens", agent=agent) == served[agent]["input_tokens"]
        assert stats.value("agent_budget_output_tokens", agent=agent) == served[agent]["output_tokens"]
        assert stats.value("agent_budget_requests", agent=agent) == served[agent]["calls"]
    assert sum(served[a]["calls"] for a in AGENTS) == len(calls)

    # No increment lost in the shared ledger: each agent's spend equals the sum of its
    # charges. The spend gauges are re-read from the ledger on every tick (5 s), so wait
    # for one: a gauge set by a racing worker may briefly show an older total.
    def ledger_matches():
        now = gw.stats()
        return all(
            now.value("agent_budget_spend_micro_usd", agent=a, period=p)
            == now.value("agent_budget_cost_micro_usd", agent=a) > 0
            for a in AGENTS for p in ("daily", "monthly"))
    wait_until(ledger_matches, 15, "spend gauges to equal the charged cost")
    assert stats.value("agent_budget_ledger_errors", reason="late_create") == 0
