"""Metering edge cases in a real Envoy: aborted, truncated, compressed, oversized responses."""

import gzip
import json
import socket
import time

from harness import knobs

CHAT = "/v1/chat/completions"
MESSAGES = "/v1/messages"
CONFIG = {"agents": {"a": {"daily_usd": 10}, "b": {"daily_usd": 10}}, "max_response_body_bytes": 4096}


def raw_request(port, path, body, headers, stop_after_bytes=None):
    """Sends a request on a raw socket; closes the connection after `stop_after_bytes`
    bytes of response (a client walking away mid-stream), else reads to the end."""
    data = json.dumps(body)
    head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        s.sendall((f"POST {path} HTTP/1.1\r\nhost: gw\r\nconnection: close\r\ncontent-type: application/json\r\n"
                   f"content-length: {len(data)}\r\n{head}\r\n{data}").encode())
        got = b""
        while stop_after_bytes is None or len(got) < stop_after_bytes:
            chunk = s.recv(65536)
            if not chunk:
                break
            got += chunk
    return got


# A stream of 100 events over about a second, for a client to walk away from.
SLOW_STREAM = knobs("a", 1000, 200, chunks=100, chunk_delay_ms=10)


def test_client_leaving_mid_stream_is_charged_an_estimate(gateway):
    gw = gateway(CONFIG)
    # Anthropic reports input in message_start: exact input, output estimated from the text.
    raw_request(gw.port, MESSAGES, {"model": "claude-haiku-4-5", "max_tokens": 200, "stream": True,
                                    "messages": []}, SLOW_STREAM, stop_after_bytes=3000)
    # OpenAI reports nothing before the end: input estimated from the request size.
    raw_request(gw.port, CHAT, {"model": "gpt-4o-mini", "stream": True, "messages": []},
                SLOW_STREAM, stop_after_bytes=3000)
    time.sleep(0.5)  # the aborted streams are settled when Envoy logs them
    stats = gw.stats()
    assert stats.value("agent_budget_estimated_requests", agent="a") == 2
    assert stats.value("agent_budget_cost_micro_usd", agent="a") > 1000  # 1000 haiku input tokens alone
    records = {r["api"]: r for r in gw.access_records()}
    anthropic = records["anthropic_messages"]
    assert anthropic["estimated"] is True and anthropic["gen_ai.usage.input_tokens"] == 1000
    assert 0 < anthropic["gen_ai.usage.output_tokens"] < 200
    assert records["openai_chat"]["estimated"] is True


def test_stream_the_upstream_cuts_is_charged_what_was_reported_and_streamed(gateway):
    gw = gateway(CONFIG)
    # OpenAI reports nothing before its last chunk: input is estimated from the request,
    # output from the 4 "tok " deltas that arrived (16 bytes, 4 tokens).
    got = raw_request(gw.port, CHAT, {"model": "gpt-4o", "stream": True, "messages": []},
                      knobs("a", truncate_after=5, chunks=50))
    assert got.count(b"data: ") == 5  # what the upstream sent did reach the client
    # Anthropic reported its 1000 input tokens in message_start: charged exactly, at
    # claude-sonnet-4-5's $3/M (3000 micro-USD) plus the output streamed so far.
    got = raw_request(gw.port, MESSAGES, {"model": "claude-sonnet-4-5", "max_tokens": 100,
                                          "stream": True, "messages": []},
                      knobs("b", input_tokens=1000, truncate_after=6, chunks=50))
    assert got.count(b"event: ") == 6
    time.sleep(0.3)
    stats = gw.stats()
    assert stats.value("agent_budget_unmetered", reason="incomplete") == 2
    assert stats.value("agent_budget_estimated_requests", agent="a") == 1
    assert stats.value("agent_budget_estimated_requests", agent="b") == 1
    assert stats.value("agent_budget_output_tokens", agent="a") == 4
    assert 0 < stats.value("agent_budget_cost_micro_usd", agent="a") < 1000
    assert stats.value("agent_budget_input_tokens", agent="b") == 1000
    assert 3000 < stats.value("agent_budget_cost_micro_usd", agent="b") < 3100
    records = {r["api"]: r for r in gw.access_records()}
    assert records["openai_chat"]["estimated"] is True
    assert records["anthropic_messages"]["estimated"] is True


def test_oversized_body_reaches_client_unchanged_and_is_counted(gateway):
    gw = gateway(CONFIG)
    big = gw.post(CHAT, {"model": "gpt-4o", "messages": []}, knobs("a", output_tokens=3000))
    assert big.status == 200 and len(big.body) > 4096
    assert big.json()["usage"]["completion_tokens"] == 3000  # intact JSON
    small = gw.post(CHAT, {"model": "gpt-4o", "messages": []}, knobs("a", output_tokens=10))
    assert small.status == 200
    stats = gw.stats()
    assert stats.value("agent_budget_unmetered", reason="too_large") == 1
    assert stats.value("agent_budget_output_tokens", agent="a") == 10


def test_compressed_response_is_never_metered_as_zero(gateway):
    gw = gateway(CONFIG)
    resp = gw.post(CHAT, {"model": "gpt-4o", "messages": []},
                   {**knobs("a", content_encoding="gzip"), "accept-encoding": "gzip"})
    assert resp.status == 200 and resp.headers["content-encoding"] == "gzip"
    stats = gw.stats()
    assert stats.value("agent_budget_unmetered", reason="compressed") == 1
    assert stats.value("agent_budget_unmetered_requests", agent="a") == 1


def test_client_gets_gzip_from_envoy_after_the_filter_metered_identity(gateway):
    gw = gateway(CONFIG)
    # The shipped config compresses toward clients that accept gzip, after agent_budget has
    # read the identity-encoded body it asked the provider for.
    resp = gw.post(CHAT, {"model": "gpt-4o", "messages": []},
                   {**knobs("a", 100, 400), "accept-encoding": "gzip"})
    assert resp.status == 200 and resp.headers.get("content-encoding") == "gzip"
    assert json.loads(gzip.decompress(resp.body))["usage"]["completion_tokens"] == 400
    assert gw.stats().value("agent_budget_cost_micro_usd", agent="a") == 250 + 4000


def test_upstream_errors_are_not_charged(gateway):
    gw = gateway(CONFIG)
    for status in ("400", "429", "500", "503"):
        resp = gw.post(MESSAGES, {"model": "claude-haiku-4-5", "max_tokens": 5, "messages": []},
                       knobs("a", status=status))
        assert resp.status == int(status)
        assert resp.json()["type"] == "error"  # the provider's own body, unchanged
    stats = gw.stats()
    assert stats.value("agent_budget_unmetered", reason="upstream_error") == 4
    assert stats.value("agent_budget_cost_micro_usd", agent="a") == 0
