"""Hostile input through a real Envoy: bodies a client or provider may send (malformed,
truncated, huge, non-UTF-8, compressed, mislabelled), calls that stop halfway in either
direction, hostile agent / task / user ids, and a flood of 10,000 distinct ids.

Every case: the gateway keeps serving, the response reaches the client as the provider sent
it unless a policy says otherwise, the event is counted, and nothing is charged to the wrong
agent (b, the bystander, pays exactly its own calls).
"""

import gzip
import http.client
import json
import os
import socket
import time
from concurrent.futures import ThreadPoolExecutor

from harness import knobs, request

CHAT = "/v1/chat/completions"
JSON = "application/json"
CONFIG = {"agents": {"a": {"daily_usd": 100}, "b": {"daily_usd": 100}}}
# gpt-4o at $2.50 / $10 per million tokens, the mock told to report 100 in and 10 out.
CALL_COST = 100 * 2.5 + 10 * 10


def chat_body(stream=False, content="hi") -> bytes:
    body = {"model": "gpt-4o", "max_tokens": 50, "messages": [{"role": "user", "content": content}]}
    if stream:
        body["stream"] = True
    return json.dumps(body).encode()


def call(port, body: bytes, agent=None, content_type=JSON, **more) -> "object":
    headers = {"content-type": content_type, **knobs(agent, 100, 10)}
    headers.update(more)
    return request(port, "POST", CHAT, body, headers)


def bystander_pays_exactly_its_own(gw, calls_of_b: int, **spend_of_a):
    """b's one or more ordinary calls are charged to b alone, whatever came before them."""
    for _ in range(calls_of_b):
        resp = call(gw.port, chat_body(), "b")
        assert resp.status == 200, resp.body
    stats = gw.stats()
    assert stats.value("agent_budget_spend_micro_usd", agent="b", period="daily") == CALL_COST * calls_of_b
    for agent, expected in spend_of_a.items():
        assert stats.value("agent_budget_spend_micro_usd", agent=agent, period="daily") == expected
    return stats


def host_errors(stats) -> int:
    """Host calls Envoy refused, summed over every call name."""
    return sum(int(v) for (name, _), v in stats.samples.items() if name == "agent_budget_host_errors")


def test_hostile_request_bodies_reach_the_provider_as_sent(gateway, mock):
    gw = gateway(CONFIG)
    good = chat_body()
    huge = chat_body(content="x" * 3_000_000)
    cases = {
        "malformed": (b'{"model": "gpt-4o", "messages": [', JSON, {}),
        "truncated": (good[: len(good) // 2], JSON, {}),
        "non_utf8": (b'{"model": "gpt-4o\xff\xfe", "max_tokens": 5, "messages": []}', JSON, {}),
        "empty": (b"", JSON, {}),
        "not_an_object": (b"[1,2,3]", JSON, {}),
        "gzip": (gzip.compress(good), JSON, {"content-encoding": "gzip"}),
        "mislabelled": (good, "text/plain", {}),
        "huge": (huge, JSON, {}),
    }
    charged = 0
    for name, (body, content_type, extra) in cases.items():
        direct = call(mock.port, body, None, content_type, **extra)
        via = call(gw.port, body, "a", content_type, **extra)
        assert via.status == direct.status, (name, via.status, via.body[:200])
        if direct.status != 200:
            # The provider's own refusal, word for word.
            assert via.body == direct.body, name
        else:
            charged += 1
    # Refused by the provider: counted, charged nothing; accepted ones are charged in full.
    stats = bystander_pays_exactly_its_own(gw, 1, a=CALL_COST * charged)
    assert charged == 2
    assert stats.value("agent_budget_unmetered", reason="upstream_error") == len(cases) - charged
    assert stats.value("agent_budget_calls", agent="a", outcome="unmetered") == len(cases) - charged


def test_hostile_response_bodies_reach_the_client_unchanged(gateway, mock):
    gw = gateway(CONFIG)
    cases = {
        # gzip whatever the client accepts: the filter cannot read it, the client gets it.
        "compressed": ({"x-mock-content-encoding": "gzip"}, "compressed"),
        "no_usage": ({"x-mock-no-usage": "1"}, "no_usage"),
        "provider_error": ({"x-mock-status": "503"}, "upstream_error"),
    }
    for name, (extra, reason) in cases.items():
        direct = call(mock.port, chat_body(), None, **extra)
        via = call(gw.port, chat_body(), "a", **extra)
        assert via.status == direct.status, name
        assert via.headers.get("content-encoding") == direct.headers.get("content-encoding"), name
        if name == "compressed":
            assert json.loads(gzip.decompress(via.body))["usage"]["prompt_tokens"] == 100
        stats = gw.stats()
        assert stats.value("agent_budget_unmetered", reason=reason) >= 1, name
    bystander_pays_exactly_its_own(gw, 1, a=0)


def raw_post(port: int, body: bytes, headers: dict, declared_length: int | None = None) -> socket.socket:
    """Opens a connection and sends a request's head and `body` (perhaps less than declared)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    length = len(body) if declared_length is None else declared_length
    head = f"POST {CHAT} HTTP/1.1\r\nhost: x\r\ncontent-type: {JSON}\r\ncontent-length: {length}\r\n"
    head += "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n"
    sock.sendall(head.encode() + body)
    return sock


def test_calls_that_stop_halfway_in_either_direction(gateway):
    gw = gateway(CONFIG)
    # Client gives up mid-request: half the declared body, then gone.
    body = chat_body()
    raw_post(gw.port, body[:10], knobs("a", 100, 10), declared_length=len(body)).close()
    # Client gives up mid-stream: reads the first events of a slow stream, then gone.
    sock = raw_post(gw.port, chat_body(stream=True), knobs("a", 100, 10, chunks=50, chunk_delay_ms=100))
    assert b"200" in sock.recv(200)
    sock.close()
    # The provider drops the stream halfway, and a non-streaming body halfway.
    for extra in ({"x-mock-truncate-after": "3", "x-mock-chunks": "10"}, {"x-mock-truncate-after": "1"}):
        body = chat_body(stream="x-mock-chunks" in extra)
        try:
            call(gw.port, body, "a", **extra)
        except (http.client.HTTPException, OSError):
            pass  # the client sees the provider's reset; the gateway must not care
    time.sleep(6)  # the abandoned slow stream ends upstream
    stats = bystander_pays_exactly_its_own(gw, 2)
    # Each of a's four calls that stopped halfway ended in exactly one counted outcome (the
    # provider's partial usage charged, or unmetered), and none of it was charged to b.
    outcomes = {dict(labels)["outcome"]: int(v) for (name, labels), v in stats.samples.items()
                if name == "agent_budget_calls" and dict(labels).get("agent") == "a"}
    assert sum(outcomes.values()) == stats.value("agent_budget_requests", agent="a") == 4, outcomes
    assert outcomes.get("stopped", 0) == 0, outcomes
    assert host_errors(stats) == 0


# Agent ids a client may send: metric-name syntax, ledger-key separators, dots, `=`, `;`,
# non-ASCII (as the UTF-8 bytes HTTP carries), very long, control characters.
HOSTILE_AGENTS = [
    "a.period.daily", "b.agent.a", "a;b=c", "a=b", "a/b", "agent_budget/ledger/v1/a", "a:daily",
    "ä", "a" * 5000, "a\tb", "a{agent=\"b\"}", "a b", "%61",
]


def test_hostile_agent_ids_never_reach_another_budget(gateway):
    gw = gateway(CONFIG)
    for agent in HOSTILE_AGENTS:
        resp = call(gw.port, chat_body(), agent.encode().decode("latin-1"))
        assert resp.status == 400, (agent[:40], resp.status)
        assert b"Invalid `x-agent-id`" in resp.body
    # A valid id that names no budget, and one differing only in case.
    for agent in ("c", "A"):
        assert call(gw.port, chat_body(), agent).status == 403
    stats = bystander_pays_exactly_its_own(gw, 1, a=0)
    assert stats.value("agent_budget_unattributed", reason="invalid") == len(HOSTILE_AGENTS)
    assert stats.value("agent_budget_unattributed", reason="unknown") == 2
    # No metric series was made from a client's id: only the configured agents label them.
    agents = {dict(labels).get("agent") for (_, labels) in stats.samples} - {None}
    assert agents <= {"a", "b"}, agents


def raw_status(port: int, head: bytes, body: bytes) -> int:
    """Sends a request written byte for byte (what no HTTP client library would send) and
    returns the status Envoy answers with (0: the connection closed without one)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
        conn.sendall(head + b"content-length: %d\r\n\r\n" % len(body) + body)
        reply = b""
        while b"\r\n" not in reply:
            data = conn.recv(4096)
            if not data:
                break
            reply += data
    parts = reply.split(b" ", 2)
    return int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0


def test_ids_with_control_bytes_are_refused_before_any_budget(gateway, mock):
    """Newlines, carriage returns and NUL inside an id never reach a ledger key, a metric or a
    log line: Envoy's HTTP codec refuses NUL before any filter runs, drops a bare CR (`a<CR>b`
    arrives as `ab`, an id of its own, here one with no budget), and reads a bare LF as the
    end of the field line, so `a<LF>x-agent-id: b` is two agent headers, which
    the filter refuses as one invalid id (`a,b`) rather than charging either agent. The core
    refuses or cleans control bytes too (core/src/identity/tests.rs)."""
    gw = gateway(CONFIG)
    start = b"POST /v1/chat/completions HTTP/1.1\r\nhost: gw\r\ncontent-type: application/json\r\n"
    for header in (b"x-agent-id: a\nx-agent-id: b\r\n", b"x-agent-id: a\rb\r\n", b"x-agent-id: a\x00b\r\n",
                   b"x-agent-id: a\r\nx-task-id: t\nx\r\n", b"x-agent-id: a\r\nx-user-id: u\x00\r\n"):
        status = raw_status(gw.port, start + header, chat_body())
        assert status in (0, 400, 403), (header, status)
    assert mock.stats()["total"]["calls"] == 0
    stats = gw.stats()
    assert stats.value("agent_budget_unattributed", reason="invalid") == 1  # a,b
    assert stats.value("agent_budget_unattributed", reason="unknown") == 1  # ab
    stats = bystander_pays_exactly_its_own(gw, 1, a=0)
    assert stats.get("agent_budget_requests", agent="a") in (None, 0)


def test_hostile_task_and_user_ids_cannot_forge_attribution_records(gateway):
    gw = gateway(CONFIG)
    forged = ['t","agent":"b', "t\\\"}", "ü" * 10, "t" * 1000, "t;u=v", "x.agent.b", "t\tu"]
    for value in forged:
        header = value.encode().decode("latin-1")
        resp = call(gw.port, chat_body(), "a", **{"x-task-id": header, "x-user-id": header})
        assert resp.status == 200, resp.body
    stats = bystander_pays_exactly_its_own(gw, 1, a=CALL_COST * len(forged))
    assert host_errors(stats) == 0
    records = gw.access_records()
    of_a = [r for r in records if r.get("agent") == "a"]
    assert len(of_a) == len(forged)
    assert sum(1 for r in records if r.get("agent") == "b") == 1
    for record in of_a:
        # Each id is one printable ASCII value of at most 128 characters, in its own field.
        for field in ("task", "user"):
            assert len(record[field]) <= 128 and record[field].isascii() and record[field].isprintable()
        assert record["budget"] == "a"


def rss_kib(pid: int) -> int:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def gateway_figures(gw) -> dict:
    memory = request(gw.admin_port, "GET", "/memory").json()
    stats = request(gw.admin_port, "GET", "/stats?filter=agent_budget").body.decode().splitlines()
    return {"allocated": int(memory["allocated"]), "heap": int(memory["heap_size"]),
            "rss_kib": rss_kib(gw.proc.pid), "stats": len(stats)}


FLOOD = 10_000


def test_a_flood_of_distinct_ids_keeps_stats_and_memory_bounded(gateway):
    # Unknown agents charge `default`: every call is attributed, so each one's task and user
    # reach the per-worker accumulators and the shared top lists.
    config = {"agents": {"default": {"daily_usd": 1000}, "b": {"daily_usd": 100}}, "unknown_agent": "default"}
    gw = gateway(config)
    warm = [call(gw.port, chat_body(), f"warm-{i}", **{"x-task-id": f"wt{i}", "x-user-id": f"wu{i}"})
            for i in range(50)]
    assert all(r.status == 200 for r in warm)
    time.sleep(2)
    before = gateway_figures(gw)

    def one(i):
        return call(gw.port, chat_body(), f"flood-agent-{i}",
                    **{"x-task-id": f"flood-task-{i}", "x-user-id": f"flood-user-{i}"}).status

    with ThreadPoolExecutor(8) as pool:
        statuses = list(pool.map(one, range(FLOOD)))
    assert statuses.count(200) == FLOOD
    time.sleep(3)  # two ticks: everything counted and merged
    after = gateway_figures(gw)
    stats = bystander_pays_exactly_its_own(gw, 1)
    assert stats.value("agent_budget_spend_micro_usd", agent="default", period="daily") == \
        CALL_COST * (FLOOD + len(warm))
    # Not one stat per id: client ids never name a series.
    assert after["stats"] == before["stats"], (before, after)
    status = request(gw.ops_port, "GET", "/budgets.json").json()
    default = next(a for a in status["agents"] if a["agent"] == "default")
    assert len(default["top_tasks"]) <= 20 and len(default["top_users"]) <= 20
    # VM and Envoy memory: the per-worker task/user sums are capped (1,000 names each), so
    # 10,000 ids grow the heap by at most a few MiB, not by the ids' total.
    grown_kib = (after["rss_kib"] - before["rss_kib"])
    print(f"\nflood figures: before {before}, after {after}, RSS growth {grown_kib} KiB")
    figures = os.environ.get("AGENT_BUDGET_FLOOD_FIGURES")
    if figures:
        with open(figures, "w") as out:
            json.dump({"before": before, "after": after}, out)
    assert grown_kib < 64 * 1024, (before, after)


def without_ids(body: bytes) -> list:
    """A response body's events (or its one JSON object) with the mock's per-call id and
    time left out, so a direct answer and one through the gateway compare equal. A stream
    asked for its usage report carries `"usage": null` in every chunk (as OpenAI's does):
    that null is left out too, since the gateway may ask for the report on the client's
    behalf."""
    texts = [line[len(b"data: "):] for line in body.split(b"\n") if line.startswith(b"data: ")] or [body]
    out = []
    for text in texts:
        if text == b"[DONE]":
            out.append("[DONE]")
            continue
        value = json.loads(text)
        value.pop("id", None)
        value.pop("created", None)
        if value.get("usage", 0) is None:
            value.pop("usage")
        out.append(value)
    return out


def test_mislabelled_responses_reach_the_client_unchanged_and_are_counted(gateway, mock):
    """The content type is only the provider's word: the first body bytes say how the filter
    meters a response (`{` or `[` opens JSON, an SSE field name a stream), so a JSON body
    labelled a stream and a stream labelled JSON are both metered in full, and the usage
    report the filter asked for is still cut from a mislabelled stream. Either way the client
    gets the body as the provider sent it (less that report), and nothing lands on another
    agent."""
    gw = gateway(CONFIG)
    with_usage = json.dumps({**json.loads(chat_body(stream=True)),
                             "stream_options": {"include_usage": True}}).encode()
    cases = [
        # (name, request body, the provider's label)
        ("json_labelled_sse", chat_body(), "text/event-stream"),
        ("json_labelled_text", chat_body(), "text/plain"),
        ("sse_labelled_json", with_usage, JSON),
        # The filter asks for the usage report and cuts it: the client sees what the
        # provider sends a client that did not ask (the direct call below).
        ("sse_labelled_json_usage_added", chat_body(stream=True), JSON),
        ("sse_labelled_text_usage_added", chat_body(stream=True), "text/plain"),
    ]
    for name, body, label in cases:
        before = gw.stats()
        direct = call(mock.port, body, None, **{"x-mock-content-type": label})
        via = call(gw.port, body, "a", **{"x-mock-content-type": label})
        assert via.status == direct.status == 200, (name, via.status, via.body[:200])
        assert via.headers.get("content-type") == label, name
        assert without_ids(via.body) == without_ids(direct.body), name
        after = gw.stats()
        delta = lambda metric, **labels: (after.value(metric, **labels) or 0) - (before.value(metric, **labels) or 0)  # noqa: E731
        assert delta("agent_budget_calls", agent="a", outcome="allowed") == 1, name
        assert delta("agent_budget_spend_micro_usd", agent="a", period="daily") == CALL_COST, name
    bystander_pays_exactly_its_own(gw, 1, a=CALL_COST * len(cases))
