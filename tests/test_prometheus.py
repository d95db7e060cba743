"""The shipped dashboard and alert rules (envoy/grafana-dashboard.json, envoy/prometheus-alerts.yaml)
against a real Prometheus (Debian package `prometheus`, which also provides promtool) that
scrapes a real Envoy with the filter: the per-agent spend Prometheus reports is exactly what the
filter charged, every dashboard query runs, every rule evaluates and the limit alerts fire."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tempfile
import time
import urllib.parse
from pathlib import Path

import pytest
import yaml

from harness import REPO, Gateway, Mock, free_port, knobs, request, wait_until

RULES = REPO / "envoy/prometheus-alerts.yaml"
RULE_TESTS = REPO / "envoy/prometheus-alerts.test.yaml"
DASHBOARD = REPO / "envoy/grafana-dashboard.json"

# Every agent_budget_* name at /stats/prometheus (the README's metrics table, and the gauges and
# counters of the live view): the dashboard and the rules may use no other.
METRICS = {
    "agent_budget_requests", "agent_budget_rejected", "agent_budget_input_tokens",
    "agent_budget_cached_input_tokens", "agent_budget_cache_write_tokens", "agent_budget_output_tokens",
    "agent_budget_reasoning_tokens", "agent_budget_cost_micro_usd", "agent_budget_estimated_requests",
    "agent_budget_degraded_requests", "agent_budget_unmetered_requests", "agent_budget_overage_micro_usd",
    "agent_budget_spend_micro_usd", "agent_budget_limit_micro_usd", "agent_budget_alerts",
    "agent_budget_alert_deliveries", "agent_budget_unmetered", "agent_budget_unattributed",
    "agent_budget_ledger_errors", "agent_budget_unpriced_calls",
    "agent_budget_remaining_micro_usd", "agent_budget_burn_rate_micro_usd_per_hour",
    "agent_budget_baseline_micro_usd_per_hour", "agent_budget_projected_spend_micro_usd",
    "agent_budget_calls", "agent_budget_model_cost_micro_usd", "agent_budget_model_input_tokens",
    "agent_budget_model_output_tokens", "agent_budget_folded_agents", "agent_budget_host_errors",
}

# Built-in prices (core/src/pricing.rs), micro-USD per million tokens: (input, output).
PRICES = {"gpt-4o": (2_500_000, 10_000_000), "claude-haiku-4-5": (1_000_000, 5_000_000)}

CHAT = "/v1/chat/completions"
MESSAGES = "/v1/messages"
CONFIG = {"agents": {
    "a": {"daily_usd": 10, "monthly_usd": 100},
    "b": {"daily_usd": 10, "monthly_usd": 100},
    # $0.001 a day, kept working past it (overage): its call uses the day up.
    "c": {"daily_usd": 0.001, "action": "alert"},
    # $0.001 a day, stopped: no call fits (up to 400 gpt-4o output tokens alone cost $0.004).
    "d": {"daily_usd": 0.001, "action": "stop"},
}}
# (agent, path, model, input tokens, output tokens), one call each.
CALLS = [
    ("a", CHAT, "gpt-4o", 100, 400),
    ("a", CHAT, "gpt-4o", 1200, 30),
    ("b", MESSAGES, "claude-haiku-4-5", 1000, 200),
    ("b", MESSAGES, "claude-haiku-4-5", 3000, 600),
    ("b", MESSAGES, "claude-haiku-4-5", 5, 1),
    ("c", CHAT, "gpt-4o", 100, 400),
]


def cost(model: str, input_tokens: int, output_tokens: int) -> int:
    per_input, per_output = PRICES[model]
    micro = input_tokens * per_input + output_tokens * per_output
    assert micro % 1_000_000 == 0, "pick token counts whose cost is a whole micro-USD"
    return micro // 1_000_000


EXPECTED = {}
for _agent, _path, _model, _input, _output in CALLS:
    EXPECTED[_agent] = EXPECTED.get(_agent, 0) + cost(_model, _input, _output)


def promtool(*args: str) -> subprocess.CompletedProcess:
    binary = shutil.which("promtool")
    assert binary, "promtool not installed (Debian package prometheus): run scripts/setup"
    return subprocess.run([binary, *args], capture_output=True, text=True, timeout=60, cwd=REPO)


class Prometheus:
    """A Prometheus on a free loopback port, scraping `targets`' /stats/prometheus every second
    and evaluating `rule_files` every second; its data in a temp dir."""

    def __init__(self, targets: list[str], rule_files: list[Path]):
        binary = shutil.which("prometheus")
        assert binary, "prometheus not installed (Debian package prometheus): run scripts/setup"
        self.dir = tempfile.TemporaryDirectory(prefix="prometheus-")
        home = Path(self.dir.name)
        config = {
            "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(p) for p in rule_files],
            "scrape_configs": [{"job_name": "envoy", "metrics_path": "/stats/prometheus",
                                "static_configs": [{"targets": targets}]}],
        }
        (home / "prometheus.yml").write_text(yaml.safe_dump(config))
        self.port = free_port()
        self.log_path = home / "prometheus.log"
        self.log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            [binary, "--config.file", str(home / "prometheus.yml"), "--storage.tsdb.path", str(home / "data"),
             "--web.listen-address", f"127.0.0.1:{self.port}"],
            stdout=self.log, stderr=subprocess.STDOUT, cwd=home)
        try:
            wait_until(self._ready, 30, "Prometheus to become ready")
        except Exception:
            self.stop()
            raise

    def _ready(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError("Prometheus exited:\n" + self.log_path.read_text(errors="replace")[-4000:])
        try:
            return request(self.port, "GET", "/-/ready", timeout=1).status == 200
        except OSError:
            return False

    def api(self, path: str, **params) -> dict:
        """GET /api/v1/<path>; the `data` of a success, else an AssertionError with the error."""
        query = urllib.parse.urlencode(params, doseq=True)
        resp = request(self.port, "GET", f"/api/v1/{path}" + (f"?{query}" if query else ""), timeout=10)
        body = resp.json()
        assert resp.status == 200 and body.get("status") == "success", f"{path} {params}: {body}"
        return body["data"]

    def query(self, expr: str) -> list[dict]:
        """An instant query's result: [{"metric": {...}, "value": [time, "value"]}, ...]."""
        return self.api("query", query=expr)["result"]

    def values(self, expr: str, label: str) -> dict[str, float]:
        """An instant query's values by one label."""
        return {r["metric"].get(label, ""): float(r["value"][1]) for r in self.query(expr)}

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.log.close()
        self.dir.cleanup()


@pytest.fixture(scope="module")
def scraped():
    """A real Envoy with the filter in front of the mock, CALLS made through it, and a real
    Prometheus scraping it with the shipped rules loaded; once Prometheus has the charged
    figures."""
    mock = Mock()
    gw = Gateway(upstream_port=mock.port, plugin_config=CONFIG).start()
    prometheus = None
    try:
        for agent, path, model, input_tokens, output_tokens in CALLS:
            body = {"model": model, "messages": []}
            if path == MESSAGES:
                body["max_tokens"] = output_tokens
            resp = gw.post(path, body, knobs(agent, input_tokens, output_tokens))
            assert resp.status == 200, (agent, resp.status, resp.body[:300])
        assert gw.post(CHAT, {"model": "gpt-4o", "max_tokens": 400, "messages": []},
                       knobs("d", 100, 400)).status == 429
        # The figures Envoy itself exports, once every worker has ticked.
        stats = gw.stats()
        for agent, charged in EXPECTED.items():
            assert stats.value("agent_budget_cost_micro_usd", agent=agent) == charged, agent
        assert stats.value("agent_budget_rejected", agent="d") == 1

        prometheus = Prometheus([f"127.0.0.1:{gw.admin_port}"], [RULES])
        # Wait for the scrapes to reach the figures (the first can come before the gauges' tick).
        charged = {agent: float(micro) for agent, micro in EXPECTED.items()}
        try:
            wait_until(lambda: prometheus.values("agent_budget_cost_micro_usd", "agent") == charged
                       and prometheus.values('agent_budget_spend_micro_usd{period="daily"}', "agent")
                       == charged | {"d": 0.0}, 20, "Prometheus to scrape the charged figures")
        except TimeoutError:
            raise AssertionError("Prometheus has " + json.dumps(prometheus.query(
                '{__name__=~"agent_budget_cost_micro_usd|agent_budget_spend_micro_usd"}')))
        # Rates and increases (the dashboard's) need a few scrapes of the same figures.
        wait_until(lambda: set(prometheus.values("count_over_time(agent_budget_cost_micro_usd[1m]) >= 3",
                                                 "agent")) == set(EXPECTED), 10, "three scrapes")
        yield gw, prometheus
    finally:
        if prometheus is not None:
            prometheus.stop()
        gw.stop()
        mock.stop()


def test_prometheus_reports_the_spend_the_filter_charged_per_agent(scraped):
    gw, prometheus = scraped
    job = {"instance": f"127.0.0.1:{gw.admin_port}", "job": "envoy"}
    # Exactly the micro-USD of the price table, per agent: the charged counter and the ledger's
    # day; the month has the same spend (kept for every agent, with a monthly budget or not).
    for agent, charged in EXPECTED.items():
        [counter] = prometheus.query(f'agent_budget_cost_micro_usd{{agent="{agent}"}}')
        assert counter["metric"] == {"__name__": "agent_budget_cost_micro_usd", "agent": agent, **job}
        assert counter["value"][1] == str(charged)
        [day] = prometheus.query(f'agent_budget_spend_micro_usd{{agent="{agent}", period="daily"}}')
        assert day["value"][1] == str(charged)
    assert EXPECTED == {"a": 4250 + 3300, "b": 2000 + 6000 + 10, "c": 4250}
    assert prometheus.values('agent_budget_spend_micro_usd{period="monthly"}', "agent") == EXPECTED | {"d": 0}
    assert prometheus.values("agent_budget_overage_micro_usd", "agent") == {"c": 4250 - 1000}
    assert prometheus.values('agent_budget_limit_micro_usd{period="daily"}', "agent") == \
        {"a": 10_000_000, "b": 10_000_000, "c": 1000, "d": 1000}
    assert prometheus.values('agent_budget_limit_micro_usd{period="monthly"}', "agent") == \
        {"a": 100_000_000, "b": 100_000_000}
    # Over the HTTP API, a per-agent aggregate as a dashboard asks for it, in USD.
    assert prometheus.values("sum by (agent) (agent_budget_cost_micro_usd) / 1e6", "agent") == \
        {agent: charged / 1e6 for agent, charged in EXPECTED.items()}


def test_shipped_rules_evaluate_and_the_limit_alerts_fire_for_the_agent_out_of_budget(scraped):
    _, prometheus = scraped
    shipped = {rule["alert"] for group in yaml.safe_load(RULES.read_text())["groups"]
               for rule in group["rules"]}

    def evaluated():
        rules = [r for g in prometheus.api("rules")["groups"] for r in g["rules"]]
        return {r["name"] for r in rules} == shipped and all(r["health"] != "unknown" for r in rules)

    wait_until(evaluated, 15, "every shipped rule to be evaluated")
    rules = [r for g in prometheus.api("rules")["groups"] for r in g["rules"]]
    assert {r["name"]: r["health"] for r in rules} == {name: "ok" for name in shipped}, \
        [(r["name"], r.get("lastError")) for r in rules if r["health"] != "ok"]

    def firing() -> set[tuple[str, str]]:
        return {(a["labels"]["alertname"], a["labels"].get("agent", "")) for a in prometheus.api("alerts")["alerts"]
                if a["state"] == "firing"}

    wait_until(lambda: {("AgentBudgetLimitReached", "c"), ("AgentBudgetCallsRefused", "d")} <= firing(),
               15, "the limit alert for c and the refusal alert for d")
    [limit] = [a for a in prometheus.api("alerts")["alerts"] if a["labels"]["alertname"] == "AgentBudgetLimitReached"]
    assert limit["labels"]["period"] == "daily" and limit["labels"]["severity"] == "critical"
    assert limit["annotations"]["summary"] == "c has spent 4250 micro-USD, its whole daily budget"
    assert {agent for name, agent in firing() if name == "AgentBudgetLimitReached"} == {"c"}
    assert {agent for name, agent in firing() if name == "AgentBudgetCallsRefused"} == {"d"}
    # a and b are far from their budgets: nothing about them.
    assert not {name for name, agent in firing() if agent in ("a", "b")}


def substitutions(instance: str) -> dict[str, str]:
    return {
        # A single value, regex-escaped inside a PromQL string, as Grafana does.
        "$instance": re.escape(instance).replace("\\", "\\\\"),
        "$agent": "(" + "|".join(sorted(CONFIG["agents"])) + ")",
        # What Grafana puts in for a 1 s scrape interval, and a short dashboard time range.
        "$__rate_interval": "4s",
        "$__range": "1m",
    }


def dashboard_exprs() -> list[tuple[str, str, str, bool]]:
    """(panel title, refId, expr, repeated by period) of every query in the dashboard."""
    found = []
    for panel in json.loads(DASHBOARD.read_text())["panels"]:
        for target in panel.get("targets", []):
            found.append((panel["title"], target["refId"], target["expr"], panel.get("repeat") == "period"))
    return found


def test_every_dashboard_query_runs_against_a_real_prometheus(scraped):
    gw, prometheus = scraped
    instance = f"127.0.0.1:{gw.admin_port}"
    subs = substitutions(instance)
    # The template variables' own queries find the agents, periods and the Envoy.
    variables = {v["name"]: v for v in json.loads(DASHBOARD.read_text())["templating"]["list"]}
    found = {}
    for name in ("instance", "agent", "period"):
        m = re.fullmatch(r"label_values\((.+), (\w+)\)", variables[name]["query"]["query"])
        selector = m.group(1).replace("$instance", subs["$instance"])
        found[name] = prometheus.api(f"label/{m.group(2)}/values", **{"match[]": selector})
    assert found == {"instance": [instance], "agent": sorted(CONFIG["agents"]), "period": ["daily", "monthly"]}

    results = {}
    for title, ref, expr, repeated in dashboard_exprs():
        for period in (found["period"] if repeated else [None]):
            query = expr
            for var, value in {**subs, "$period": period or ""}.items():
                query = query.replace(var, value)
            assert "$" not in query, f"{title}: unsubstituted variable in {query}"
            # Raises with Prometheus's error unless the expression parses and executes.
            results[(title, ref, period)] = prometheus.values(query, "agent")
    # The panels over figures this filter exports show them, in USD.
    usd = {agent: charged / 1e6 for agent, charged in EXPECTED.items()}
    assert results[("Spend this $period per agent", "A", "daily")] == usd | {"d": 0.0}
    assert results[("Spend this $period per agent", "B", "daily")] == {"a": 10.0, "b": 10.0, "c": 0.001, "d": 0.001}
    assert set(results[("Top agents by spend (time range)", "A", None)]) == set(EXPECTED)
    used = results[("Budget used this $period", "A", "daily")]
    assert used == {"a": EXPECTED["a"] / 10_000_000, "b": EXPECTED["b"] / 10_000_000, "c": 4.25, "d": 0.0}


def test_dashboard_is_importable_and_uses_only_exported_metrics():
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["schemaVersion"] >= 39
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["DS_PROMETHEUS"]["type"] == "datasource" and variables["DS_PROMETHEUS"]["query"] == "prometheus"
    assert variables["agent"]["query"]["query"] == 'label_values(agent_budget_spend_micro_usd{instance=~"$instance"}, agent)'
    panels = dashboard["panels"]
    assert len({p["id"] for p in panels}) == len(panels)
    for panel in panels:
        if panel["type"] != "row":
            assert panel["datasource"] == {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}, panel["title"]
            assert panel["targets"], panel["title"]
    used = {name for _, _, expr, _ in dashboard_exprs() for name in re.findall(r"agent_budget_\w+", expr)}
    assert used <= METRICS, used - METRICS
    # What the dashboard is for: spend, remaining, burn rate, refusals, degrades, unmetered, alerts.
    for name in ("agent_budget_spend_micro_usd", "agent_budget_remaining_micro_usd",
                 "agent_budget_burn_rate_micro_usd_per_hour", "agent_budget_baseline_micro_usd_per_hour",
                 "agent_budget_projected_spend_micro_usd", "agent_budget_rejected",
                 "agent_budget_degraded_requests", "agent_budget_unmetered", "agent_budget_alerts",
                 "agent_budget_ledger_errors"):
        assert name in used, name


def test_alert_rules_pass_promtool_check():
    result = promtool("check", "rules", str(RULES))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 10 rules found" in result.stdout


def test_alert_rules_pass_their_promtool_unit_tests():
    result = promtool("test", "rules", str(RULE_TESTS))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_every_alert_rule_is_tested_firing_and_not_firing():
    rules = yaml.safe_load(RULES.read_text())["groups"]
    alerts = {rule["alert"] for group in rules for rule in group["rules"]}
    used = {name for group in rules for rule in group["rules"] for name in re.findall(r"agent_budget_\w+", rule["expr"])}
    assert used <= METRICS, used - METRICS
    fires, silent = set(), set()
    for test in yaml.safe_load(RULE_TESTS.read_text())["tests"]:
        for case in test.get("alert_rule_test", []):
            (fires if case.get("exp_alerts") else silent).add(case["alertname"])
    assert fires == alerts and silent == alerts, {"never fires": alerts - fires, "never silent": alerts - silent}
