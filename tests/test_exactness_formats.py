"""10,000 calls, every metered format, streaming and not, on 4 Envoy workers: what the filter
charges equals, to the token and the micro-USD, what the mock provider reported.

Agents keep appearing during the run (agent i makes its first call only after i x 200
calls), so first writes of their ledger entries race other workers' updates.
"""

import concurrent.futures
import http.client
import json
import random

from harness import knobs, wait_until

CALLS = 10_000
AGENTS = [f"fresh-{i:02d}" for i in range(40)]
MODEL = "exact-model"
# micro-USD per million tokens, as configured below
PRICE = {"input": 1_000_000, "cached": 500_000, "cache_write": 1_250_000, "output": 2_000_000}

FORMATS = [
    # (name, path, body, streams?)
    ("chat", "/v1/chat/completions", {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}),
    ("completions", "/v1/completions", {"model": MODEL, "prompt": "hi"}),
    ("responses", "/v1/responses", {"model": MODEL, "input": "hi"}),
    ("embeddings", "/v1/embeddings", {"model": MODEL, "input": "hi"}),
    ("anthropic", "/v1/messages", {"model": MODEL, "max_tokens": 100, "messages": [{"role": "user", "content": "hi"}]}),
    ("gemini", f"/v1beta/models/{MODEL}:generateContent", {"contents": [{"parts": [{"text": "hi"}]}]}),
    ("gemini_sse", f"/v1beta/models/{MODEL}:streamGenerateContent?alt=sse", {"contents": []}),
    ("gemini_array", f"/v1beta/models/{MODEL}:streamGenerateContent", {"contents": []}),
]


def plan(rng):
    calls = []
    for n in range(CALLS):
        agent = AGENTS[rng.randrange(0, min(len(AGENTS), 1 + n // 200))]
        name, path, body = rng.choice(FORMATS)
        body = dict(body)
        stream = name in ("chat", "completions", "responses", "anthropic") and rng.random() < 0.5
        if stream:
            body["stream"] = True
        inp, out = rng.randint(1, 4000), rng.randint(0, 600)
        cached = rng.randint(0, inp) if name not in ("completions", "embeddings") else 0
        cache_write = rng.randint(0, 500) if name == "anthropic" else 0
        if name == "embeddings":
            out = 0
        headers = {**knobs(agent, inp, out, cached_tokens=cached, cache_write_tokens=cache_write,
                           chunks=rng.randint(1, 6)), "content-type": "application/json"}
        # What the filter must book: Anthropic reports input without the cache classes.
        uncached = inp if name == "anthropic" else inp - cached
        usage = {"input": uncached, "cached": cached, "cache_write": cache_write, "output": out}
        calls.append((agent, path, json.dumps(body), headers, usage))
    return calls


def cost(usage):
    total = sum(usage[k] * PRICE[k] for k in PRICE)
    return -(-total // 1_000_000)  # rounded up once per call, like the filter


def send(port, calls):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    bad = []
    for agent, path, body, headers, _ in calls:
        conn.request("POST", path, body=body, headers=headers)
        resp = conn.getresponse()
        data = resp.read()
        if resp.status != 200:
            bad.append((resp.status, path, data[:200]))
    conn.close()
    return bad


def test_ten_thousand_mixed_calls_are_charged_exactly(gateway, mock):
    rng = random.Random(2026)
    calls = plan(rng)
    gw = gateway({
        "agents": {a: {"daily_usd": 1_000_000} for a in AGENTS},
        "pricing": {MODEL: {"input": 1, "output": 2, "cached_input": 0.5, "cache_write": 1.25}},
    }, concurrency=4)
    # Keep the order of first appearances: 16 clients each take every 16th call.
    shares = [calls[i::16] for i in range(16)]
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        bad = [b for result in pool.map(lambda c: send(gw.port, c), shares) for b in result]
    assert bad == []

    expected = {a: {"input": 0, "cached": 0, "cache_write": 0, "output": 0, "cost": 0, "calls": 0} for a in AGENTS}
    for agent, _, _, _, usage in calls:
        e = expected[agent]
        for k in ("input", "cached", "cache_write", "output"):
            e[k] += usage[k]
        e["cost"] += cost(usage)
        e["calls"] += 1
    served = mock.stats()
    assert served["total"]["calls"] == CALLS and served["unreported_calls"] == 0

    stats = gw.stats()
    for agent in AGENTS:
        e = expected[agent]
        got = {
            "input": stats.value("agent_budget_input_tokens", agent=agent),
            "cached": stats.value("agent_budget_cached_input_tokens", agent=agent),
            "cache_write": stats.value("agent_budget_cache_write_tokens", agent=agent),
            "output": stats.value("agent_budget_output_tokens", agent=agent),
            "cost": stats.value("agent_budget_cost_micro_usd", agent=agent),
            "calls": stats.value("agent_budget_requests", agent=agent),
        }
        assert got == e, agent
        assert served["agents"][agent]["calls"] == e["calls"]
    assert stats.value("agent_budget_unmetered_requests", agent=AGENTS[0]) == 0
    assert sum(stats.value("agent_budget_unmetered", reason=r) for r in
               ("no_usage", "malformed", "incomplete", "too_large", "compressed", "upstream_error")) == 0

    # The shared ledger lost no increment, first writes included.
    def ledger_matches():
        now = gw.stats()
        return all(now.value("agent_budget_spend_micro_usd", agent=a, period="daily") == expected[a]["cost"]
                   for a in AGENTS)
    wait_until(ledger_matches, 15, "every agent's ledger spend to equal its charges")
    assert stats.value("agent_budget_ledger_errors", reason="late_create") == 0
