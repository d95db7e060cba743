"""Calls by outcome, per-model series and agent folding at /stats/prometheus, and the
attribution log (envoy/access-log.yaml) with the README's jq line, on a real Envoy."""

import json
import re
import shlex
import subprocess
import time
from datetime import datetime, timezone
from pathlib import Path

import yaml

from harness import BOOTSTRAP, LDS, REPO, knobs, request

CHAT = "/v1/chat/completions"
MESSAGES = "/v1/messages"

# Every agent's first call uses up its tiny budget (reservations off: decisions rest on
# settled spend only, so which call gets which outcome is certain).
OUTCOMES = {
    "reservations": False,
    "agents": {
        "ok": {"daily_usd": 10},
        "stopper": {"daily_usd": 0.000001},
        "alerting": {"daily_usd": 0.000001, "action": "alert"},
        "cheap": {"daily_usd": 0.000001, "action": "degrade", "degrade_usd": 10,
                  "degrade_to": {"gpt-4o*": "gpt-4o-mini"}},
    },
    "pricing": {"acme.chat-1": {"input": 1, "output": 2}},
}

# The contract's keys (common to every part of the product that reads the log).
CONTRACT_KEYS = {
    "time", "agent", "budget", "task", "user", "api", "gen_ai.operation.name",
    "gen_ai.provider.name", "gen_ai.request.model", "gen_ai.response.model",
    "gen_ai.usage.input_tokens", "gen_ai.usage.output_tokens", "cache_read_tokens",
    "cache_write_tokens", "reasoning_tokens", "cost_micro_usd", "action", "estimated",
    "unmetered_reason", "http.response.status_code", "latency_ms", "ttft_ms",
}
# Present on every line, whatever the outcome.
ALWAYS = {"time", "agent", "budget", "task", "user", "api", "cost_micro_usd", "action",
          "estimated", "http.response.status_code", "latency_ms", "ttft_ms"}


def chat(model="gpt-4o", stream=False):
    body = {"model": model, "max_tokens": 100, "messages": [{"role": "user", "content": "hello"}]}
    if stream:
        body["stream"] = True
    return body


def prometheus(gw) -> str:
    gw.stats()  # waits for every worker's tick
    return request(gw.admin_port, "GET", "/stats/prometheus").body.decode()


def run_every_outcome(gw):
    calls = [
        (CHAT, chat(), knobs("ok", 1000, 100), 200),
        (CHAT, chat("acme.chat-1"), knobs("ok", 1000, 0), 200),
        (CHAT, chat("mystery-model"), knobs("ok", 10, 0), 200),
        (CHAT, chat(), knobs("ok", 10, 10, status=500), 500),
        ("/v1/models", chat(), knobs("ok"), None),
        (CHAT, chat(), knobs("stopper", 10, 10), 200),
        (CHAT, chat(), knobs("stopper", 10, 10), 429),
        (CHAT, chat(), knobs("alerting", 10, 10), 200),
        (CHAT, chat(stream=True), knobs("alerting", 10, 10), 200),
        (CHAT, chat(), knobs("cheap", 10, 10), 200),
        (CHAT, chat(), knobs("cheap", 10, 10), 200),
    ]
    for path, body, headers, status in calls:
        got = gw.post(path, body, headers)
        if status is not None:
            assert got.status == status, (path, headers, got.status)
    return len(calls)


def test_calls_by_outcome_and_served_model_in_prometheus(gateway):
    gw = gateway(OUTCOMES)
    run_every_outcome(gw)
    text = prometheus(gw)
    # gpt-4o at $2.5/M input and $10/M output; acme.chat-1 at $1/M input; mystery-model has
    # no price (the fallback's $15/M input) and reports under model="other".
    for line in (
        'agent_budget_calls{agent="ok",outcome="allowed"} 3',
        'agent_budget_calls{agent="ok",outcome="unmetered"} 2',
        'agent_budget_calls{agent="stopper",outcome="allowed"} 1',
        'agent_budget_calls{agent="stopper",outcome="stopped"} 1',
        'agent_budget_calls{agent="alerting",outcome="overage"} 2',
        'agent_budget_calls{agent="cheap",outcome="allowed"} 1',
        'agent_budget_calls{agent="cheap",outcome="degraded"} 1',
        'agent_budget_model_cost_micro_usd{agent="ok",model="gpt-4o"} 3500',
        'agent_budget_model_input_tokens{agent="ok",model="gpt-4o"} 1000',
        'agent_budget_model_output_tokens{agent="ok",model="gpt-4o"} 100',
        # The dot of the family would split the stat name: it becomes `_`.
        'agent_budget_model_input_tokens{agent="ok",model="acme_chat-1"} 1000',
        'agent_budget_model_cost_micro_usd{agent="ok",model="acme_chat-1"} 1000',
        'agent_budget_model_cost_micro_usd{agent="ok",model="other"} 150',
        'agent_budget_model_input_tokens{agent="cheap",model="gpt-4o-mini"} 10',
        'agent_budget_folded_agents{} 0',
    ):
        assert line in text, line + "\n" + "\n".join(
            l for l in text.splitlines() if "agent_budget_calls" in l or "model" in l)
    assert "# TYPE agent_budget_calls counter" in text
    total = sum(float(l.rsplit(" ", 1)[1]) for l in text.splitlines()
                if l.startswith("agent_budget_calls{"))
    assert total == 11, "exactly one outcome per call"


def test_agents_past_max_tracked_agents_fold_into_other(gateway):
    gw = gateway({"max_tracked_agents": 1,
                  "agents": {"a": {"daily_usd": 1}, "b": {"daily_usd": 1}, "c": {"daily_usd": 1}}})
    for agent in ("a", "b", "c", "c"):
        assert gw.post(CHAT, chat(), knobs(agent, 1000, 0)).status == 200
    text = prometheus(gw)
    for line in (
        'agent_budget_calls{agent="a",outcome="allowed"} 1',
        'agent_budget_calls{agent="other",outcome="allowed"} 3',
        'agent_budget_cost_micro_usd{agent="other"} 7500',
        'agent_budget_model_cost_micro_usd{agent="other",model="gpt-4o"} 7500',
        'agent_budget_folded_agents{} 2',
        'agent_budget_limit_micro_usd{agent="a",period="daily"} 1000000',
    ):
        assert line in text, line
    # Folded agents have no series of their own (their gauges included).
    assert 'agent="b"' not in text and 'agent="c"' not in text


def test_access_log_writes_one_flat_record_per_attributed_call(gateway):
    gw = gateway(OUTCOMES)
    started = datetime.now(timezone.utc)
    count = run_every_outcome(gw)
    # Not attributed (no agent id): refused by the filter, and no line in the log.
    assert gw.post(CHAT, chat(), {}).status == 400
    records = gw.access_records()
    assert len(records) == count
    for record in records:
        assert set(record) <= CONTRACT_KEYS, set(record) - CONTRACT_KEYS
        assert ALWAYS <= set(record), ALWAYS - set(record)
        assert not any(isinstance(v, (dict, list)) for v in record.values()), "flat"
        when = datetime.strptime(record["time"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=timezone.utc)
        assert abs((when - started).total_seconds()) < 60
        assert isinstance(record["latency_ms"], int) and isinstance(record["http.response.status_code"], int)
        assert isinstance(record["cost_micro_usd"], int)
        assert record["ttft_ms"] is None or isinstance(record["ttft_ms"], (int, float))

    by_action = {}
    for record in records:
        by_action.setdefault(record["action"], []).append(record)
    assert {a: len(r) for a, r in by_action.items()} == {
        "allowed": 5, "unmetered": 2, "stopped": 1, "overage": 2, "degraded": 1}

    first = records[0]
    assert first == {**first, "agent": "ok", "budget": "ok", "task": "-", "user": "-", "api": "openai_chat",
                     "gen_ai.operation.name": "chat", "gen_ai.provider.name": "openai",
                     "gen_ai.request.model": "gpt-4o", "gen_ai.response.model": "gpt-4o",
                     "gen_ai.usage.input_tokens": 1000, "gen_ai.usage.output_tokens": 100,
                     "cache_read_tokens": 0, "cache_write_tokens": 0, "reasoning_tokens": 0,
                     "cost_micro_usd": 3500, "action": "allowed", "estimated": False,
                     "http.response.status_code": 200}
    assert isinstance(first["ttft_ms"], int)

    [stopped] = by_action["stopped"]
    assert (stopped["agent"], stopped["http.response.status_code"], stopped["ttft_ms"]) == ("stopper", 429, None)
    assert stopped["cost_micro_usd"] == 0 and "gen_ai.usage.input_tokens" not in stopped

    unmetered = {r["unmetered_reason"]: r for r in by_action["unmetered"]}
    assert unmetered["upstream_error"]["http.response.status_code"] == 500
    assert unmetered["unknown_api"]["api"] == "-"

    [degraded] = by_action["degraded"]
    assert (degraded["gen_ai.request.model"], degraded["gen_ai.response.model"]) == ("gpt-4o", "gpt-4o-mini")
    assert all(r["agent"] == "alerting" for r in by_action["overage"])


def readme_jq_line() -> str:
    """The jq line the README shows for tracing a spike (the block after its marker)."""
    readme = (REPO / "README.md").read_text()
    match = re.search(r"<!-- spike-trace -->\s*```sh\n(jq .*?)\n```", readme, re.S)
    assert match, "README.md lost its spike-trace jq line"
    return match.group(1)


def with_args(line: str, log: Path, **args) -> list[str]:
    """The README's jq line as argv, with its --arg values and log file replaced."""
    argv = shlex.split(line)
    for name, value in args.items():
        argv[argv.index(name) + 1] = value  # `--arg NAME VALUE`
    assert argv[-1].endswith(".log"), argv
    argv[-1] = str(log)
    return argv


def millis(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def test_readme_jq_line_traces_a_spike_to_task_and_user(gateway):
    gw = gateway({"agents": {"research-bot": {"daily_usd": 10}, "other-bot": {"daily_usd": 10}},
                  "pricing": {"mock-model": {"input": 1, "output": 2}}})

    def call(agent, task, user, input_tokens):
        headers = {**knobs(agent, input_tokens, 0), "x-task-id": task, "x-user-id": user}
        assert gw.post(CHAT, chat("mock-model"), headers).status == 200

    since = millis(datetime.now(timezone.utc))
    call("research-bot", "t-1", "u-1", 1000)
    call("research-bot", "t-1", "u-1", 1000)
    call("research-bot", "t-2", "u-2", 5000)
    call("other-bot", "t-9", "u-9", 90000)  # another agent: not in the answer
    time.sleep(0.05)
    until = millis(datetime.now(timezone.utc))
    time.sleep(0.05)
    call("research-bot", "t-3", "u-3", 70000)  # after the range: not in the answer
    records = gw.access_records()
    assert len(records) == 5
    argv = with_args(readme_jq_line(), gw.access_log_path,
                     agent="research-bot", **{"from": since, "to": until})
    out = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
    answer = [json.loads(line) for line in out.splitlines()]
    assert answer == [
        {"task": "t-2", "user": "u-2", "calls": 1, "cost_usd": 0.005},
        {"task": "t-1", "user": "u-1", "calls": 2, "cost_usd": 0.002},
    ]


def test_shipped_configs_carry_the_access_log_snippet():
    snippet = yaml.safe_load((REPO / "envoy/access-log.yaml").read_text())["access_log"]
    static = yaml.safe_load(BOOTSTRAP.read_text())["static_resources"]["listeners"][0]
    dynamic = yaml.safe_load(LDS.read_text())["resources"][0]
    for listener in (static, dynamic):
        hcm = listener["filter_chains"][0]["filters"][0]["typed_config"]
        assert hcm["access_log"] == snippet
