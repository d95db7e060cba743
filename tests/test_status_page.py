"""The live status page on the ops listener of a real Envoy: /budgets.json figures equal what
the gateway charged, the bearer token guards both pages, and headless Chromium renders the
HTML table (sorted by spend or name) and writes a screenshot."""

import html
import re
import shutil
import subprocess
import tempfile
import time

from harness import FLUSH_WAIT_S, REPO, knobs, request

CHAT = "/v1/chat/completions"
TOKEN = "status-token-0123456789abcdef"
SCREENSHOT = REPO / ".work/screenshots/budgets.png"
# mock-model at $1/M input and $2/M output: a token of input is 1 micro-USD, of output 2.
PRICING = {"mock-model": {"input": 1.0, "output": 2.0}}
AGENTS = {
    "research-bot": {"daily_usd": 5, "monthly_usd": 100, "action": "stop"},
    # 80 % of $0.004 is 3200 micro-USD: one call of 3500 makes it soft-alerted.
    "nightly-batch": {"daily_usd": 0.004, "action": "stop"},
    # Never refused: two calls of 1500 put it past its $0.002.
    "copilot": {"daily_usd": 0.002, "action": "alert"},
    "idle-bot": {"daily_usd": 1},
}
# (agent, task, user, input tokens, output tokens)
CALLS = [
    ("research-bot", "t-alpha", "ana", 10_000, 1_000),
    ("research-bot", "t-beta", "ana", 20_000, 0),
    ("research-bot", "t-alpha", "bo<b>", 5_000, 500),
    ("nightly-batch", "nightly", None, 1_500, 1_000),
    ("copilot", None, "cy", 1_000, 250),
    ("copilot", None, "cy", 1_000, 250),
]


def cost(input_tokens, output_tokens):
    return input_tokens + 2 * output_tokens


def expected_spend():
    spend = {agent: 0 for agent in AGENTS}
    for agent, _, _, input_tokens, output_tokens in CALLS:
        spend[agent] += cost(input_tokens, output_tokens)
    return spend


def make_calls(gw):
    for agent, task, user, input_tokens, output_tokens in CALLS:
        headers = knobs(agent, input_tokens, output_tokens)
        if task:
            headers["x-task-id"] = task
        if user:
            headers["x-user-id"] = user
        body = {"model": "mock-model", "max_tokens": 1000, "messages": [{"role": "user", "content": "hi"}]}
        response = gw.post(CHAT, body, headers)
        assert response.status == 200, response.body
    # Top tasks and users reach shared data on each worker's tick.
    time.sleep(FLUSH_WAIT_S)


def config(token=None):
    plugin = {"pricing": PRICING, "agents": AGENTS}
    if token:
        plugin["status_page"] = {"bearer_token": token}
    return plugin


def test_json_figures_equal_the_charges_and_the_token_guards_them(gateway):
    gw = gateway(config(TOKEN))
    make_calls(gw)
    for path in ["/budgets", "/budgets.json", "/budgets.json?sort=name"]:
        for headers in [{}, {"authorization": "Bearer wrong-token-0123456789abc"},
                        {"authorization": TOKEN}, {"authorization": f"Basic {TOKEN}"}]:
            denied = request(gw.ops_port, "GET", path, headers=headers)
            assert denied.status == 401, (path, headers)
            assert denied.body == b""
            assert denied.headers.get("www-authenticate") == "Bearer"
    # Other paths go to the ops listener's route.
    assert request(gw.ops_port, "GET", "/stats").status == 404

    auth = {"authorization": f"Bearer {TOKEN}"}
    response = request(gw.ops_port, "GET", "/budgets.json", headers=auth)
    assert response.status == 200
    assert response.headers["content-type"] == "application/json"
    page = response.json()
    assert page["sort"] == "spend"
    spend = expected_spend()
    assert spend == {"research-bot": 38_000, "nightly-batch": 3_500, "copilot": 3_000, "idle-bot": 0}
    agents = {a["agent"]: a for a in page["agents"]}
    assert [a["agent"] for a in page["agents"]] == ["research-bot", "nightly-batch", "copilot", "idle-bot"]
    for name, spent in spend.items():
        agent = agents[name]
        assert agent["day"]["spent_micro_usd"] == spent, name
        assert agent["month"]["spent_micro_usd"] == spent, name
        assert agent["day"]["spent_usd"] == spent / 1e6
        limit = round(AGENTS[name]["daily_usd"] * 1e6)
        assert agent["day"]["budget_micro_usd"] == limit
        assert agent["day"]["remaining_micro_usd"] == max(0, limit - spent)
        assert agent["day"]["reserved_micro_usd"] == 0
        assert 0 < agent["day"]["resets_in_secs"] <= 86_400
        assert agent["error"] is None
        # Every call fell within the last hour (the burn window): the burn is what was spent
        # (a hair less if an hour began since, as the older bucket weighs in part). A
        # history seconds old has no baseline yet.
        assert 0.99 * spent <= agent["burn_micro_usd_per_hour"] <= spent, (name, agent)
        assert agent["baseline_micro_usd_per_hour"] is None
        hours_left = agent["day"]["resets_in_secs"] / 3600
        projected = spent + agent["burn_micro_usd_per_hour"] * hours_left
        assert abs(agent["day"]["projected_micro_usd"] - projected) <= 0.01 * projected + 1, (name, agent)
    assert agents["research-bot"]["month"]["budget_micro_usd"] == 100_000_000
    assert agents["idle-bot"]["month"]["budget_micro_usd"] is None
    states = {name: agent["state"] for name, agent in agents.items()}
    assert states == {"research-bot": "ok", "nightly-batch": "soft-alerted", "copilot": "overage",
                      "idle-bot": "ok"}
    research = agents["research-bot"]
    assert research["top_tasks"] == [
        {"task": "t-beta", "spent_micro_usd": 20_000, "spent_usd": 0.02},
        {"task": "t-alpha", "spent_micro_usd": 18_000, "spent_usd": 0.018},
    ]
    assert [(u["user"], u["spent_micro_usd"]) for u in research["top_users"]] == [("ana", 32_000), ("bo<b>", 6_000)]
    assert agents["copilot"]["top_users"][0]["spent_micro_usd"] == 3_000
    assert agents["copilot"]["top_tasks"] == []

    by_name = request(gw.ops_port, "GET", "/budgets.json?sort=name", headers=auth).json()
    assert [a["agent"] for a in by_name["agents"]] == sorted(AGENTS)

    # The page's figures are the gateway's, and serving it metered nothing.
    stats = gw.stats()
    for name, spent in spend.items():
        assert stats.value("agent_budget_cost_micro_usd", agent=name) == spent
    requests = sum(stats.value("agent_budget_requests", agent=name) for name in AGENTS)
    assert requests == len(CALLS)
    assert all(value == 0 for (name, _), value in stats.samples.items() if name == "agent_budget_unattributed")


def chromium(*args):
    binary = shutil.which("chromium")
    assert binary, "chromium is not installed: run scripts/setup (Debian package chromium)"
    with tempfile.TemporaryDirectory(prefix="chromium-") as profile:
        proc = subprocess.run(
            [binary, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--disable-dev-shm-usage", f"--user-data-dir={profile}", *args],
            capture_output=True, timeout=120)
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")[-2000:]
    return proc.stdout.decode()


def rows(dom):
    """(agent, spent today in micro-USD, state, the row's text) per table row, in page order."""
    found = []
    for match in re.finditer(r'<tr data-agent="([^"]+)" data-state="([^"]+)" '
                             r'data-spent-today-micro-usd="(\d+)">(.*?)</tr>', dom, re.S):
        text = html.unescape(re.sub(r"<[^>]+>", " ", match.group(4)))
        found.append((match.group(1), int(match.group(3)), match.group(2), " ".join(text.split())))
    return found


def test_chromium_renders_the_table_sorted_and_takes_a_screenshot(gateway):
    gw = gateway(config())
    make_calls(gw)
    base = f"http://127.0.0.1:{gw.ops_port}/budgets"

    dom = chromium("--dump-dom", f"{base}?sort=spend")
    assert '<meta http-equiv="refresh" content="5">' in dom
    assert "<script" not in dom
    table = rows(dom)
    assert [(agent, spent, state) for agent, spent, state, _ in table] == [
        ("research-bot", 38_000, "ok"), ("nightly-batch", 3_500, "soft-alerted"),
        ("copilot", 3_000, "overage"), ("idle-bot", 0, "ok")]
    research = table[0][3]
    shown = re.match(r"research-bot ok \$0\.038 of \$5\.00 \$4\.96 left projected \$([0-9.]+) · resets in ", research)
    assert shown, research
    # All of today's spend fell in the last hour: the burn ($0.038/h) projects past it.
    assert float(shown.group(1)) > 0.038, research
    assert "t-beta $0.02 t-alpha $0.018" in research and "ana $0.032" in research
    # The user name `bo<b>` is text, not markup.
    assert "bo<b> $0.006" in research
    assert "<b>" not in dom.replace("bo&lt;b&gt;", "")
    assert table[2][3].startswith("copilot overage $0.003 of $0.002 $0.00 left")
    assert "$0.003 no budget" in table[2][3]
    # The column headers link the other order.
    assert '<a href="?sort=name">Agent</a>' in dom

    by_name = rows(chromium("--dump-dom", f"{base}?sort=name"))
    assert [agent for agent, *_ in by_name] == ["copilot", "idle-bot", "nightly-batch", "research-bot"]

    SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
    SCREENSHOT.unlink(missing_ok=True)
    chromium(f"--screenshot={SCREENSHOT}", "--window-size=1280,800", f"{base}?sort=spend")
    data = SCREENSHOT.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n")
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    assert (width, height) == (1280, 800)
    # A blank page compresses to a few KiB; a rendered table does not.
    assert len(data) > 20_000, len(data)
    print(f"status page screenshot: {SCREENSHOT}")
