"""The baseline command over an attribution log a real Envoy wrote (envoy/access-log.yaml)."""

import csv
import io
import subprocess

from harness import REPO, knobs

BASELINE = REPO / "target/release/agent-budget-baseline"
CHAT = "/v1/chat/completions"


def chat():
    return {"model": "gpt-4o", "max_tokens": 1000, "messages": [{"role": "user", "content": "hi"}]}


def test_baseline_reads_the_gateway_access_log(gateway):
    assert BASELINE.exists(), "run scripts/setup (it builds agent-budget-baseline)"
    gw = gateway({"agents": {"research": {"daily_usd": 100}, "batch": {"daily_usd": 100}}})
    # research: tasks t1 (2 calls) and t2 (1 call), and one call without a task: 3 tasks.
    # gpt-4o: 1000 in x $2.50/M + 100 out x $10/M = 3500 micro-USD a call.
    for task in ["t1", "t1", "t2", None]:
        headers = knobs("research", 1000, 100)
        if task:
            headers["x-task-id"] = task
        assert gw.post(CHAT, chat(), headers).status == 200
    # batch: one task, 2000 in / 200 out = 7000 micro-USD.
    assert gw.post(CHAT, chat(), {**knobs("batch", 2000, 200), "x-task-id": "nightly"}).status == 200
    records = gw.access_records()  # stops Envoy, which flushes the log
    assert len(records) == 5
    out = subprocess.run([str(BASELINE), "--format", "csv", str(gw.access_log_path)],
                         capture_output=True, text=True, timeout=30, check=True).stdout
    rows = {row["agent"]: row for row in csv.DictReader(io.StringIO(out))}
    assert set(rows) == {"research", "batch"}, out
    research, batch = rows["research"], rows["batch"]
    assert (research["calls"], research["tasks"], research["days"]) == ("4", "3", "1"), research
    assert (batch["calls"], batch["tasks"]) == ("1", "1"), batch
    # Spend per day is what the filter charged: 4 x 3500 and 7000 micro-USD.
    assert float(research["cost_per_day_usd"]) == 0.014, research
    assert float(batch["cost_per_day_usd"]) == 0.007, batch
    # Fewer than 20 tasks: no recommendation yet.
    assert (research["status"], research["recommended_daily_usd"]) == ("refused", ""), research
