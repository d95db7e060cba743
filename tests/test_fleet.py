"""Fleet mode: two Envoy gateways share one budget per agent through a real Redis behind a
real webdis, both started here on free ports (envoy/agent-budget-fleet.yaml)."""

import json
import shutil
import subprocess
import tempfile
import threading
from datetime import datetime, timezone
from pathlib import Path

import pytest

from harness import BOOTSTRAP, NATIVE, REPO, Gateway, free_port, knobs, wait_until
from webhook import Webhook

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"
REDIS_CLI = shutil.which("redis-cli") or "/usr/bin/redis-cli"
WEBDIS = shutil.which("webdis") or "/usr/bin/webdis"
FLEET_BOOTSTRAP = REPO / "envoy/agent-budget-fleet.yaml"
# The native build's bootstrap gets the same webdis cluster from the test (clusters=...).
GATEWAY_BOOTSTRAP = BOOTSTRAP if NATIVE else FLEET_BOOTSTRAP
CHAT = "/v1/chat/completions"
# mock-model at $1/M input and $2/M output: 1000 in + 500 out = 2000 micro-USD a call.
CALL_MICRO_USD = 2000
# Syncs happen every second; every wait below polls for a state, bounded by this.
SETTLE_S = 15



@pytest.fixture(scope="module", autouse=True)
def fleet_binaries():
    missing = [p for p in (REDIS_SERVER, REDIS_CLI, WEBDIS) if not Path(p).exists()]
    if missing:
        pytest.fail("not installed: " + ", ".join(missing) + " -- run scripts/setup")


class Redis:
    """redis-server on a free port, persisting every write (appendonly, fsync always), so a
    restart on the same directory keeps what was written."""

    def __init__(self):
        self.dir = tempfile.TemporaryDirectory(prefix="redis-")
        self.port = free_port()
        self.start()

    def start(self):
        self.proc = subprocess.Popen(
            [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", self.dir.name,
             "--appendonly", "yes", "--appendfsync", "always", "--save", ""],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_until(lambda: self.ping(), 10, "redis-server to answer")

    def ping(self) -> bool:
        result = subprocess.run([REDIS_CLI, "-p", str(self.port), "PING"], capture_output=True, text=True)
        return result.stdout.strip() == "PONG"

    def stop(self):
        self.proc.terminate()
        self.proc.wait(10)

    def cli(self, *args) -> str:
        return subprocess.run([REDIS_CLI, "-p", str(self.port), "--raw", *args],
                              capture_output=True, text=True, check=True).stdout

    def fields(self, key: str) -> dict[str, int]:
        lines = self.cli("HGETALL", key).split("\n")[:-1]
        return {lines[i]: int(lines[i + 1]) for i in range(0, len(lines) - 1, 2)}

    def cleanup(self):
        if self.proc.poll() is None:
            self.stop()
        self.dir.cleanup()


class Webdis:
    def __init__(self, redis_port: int):
        self.dir = tempfile.TemporaryDirectory(prefix="webdis-")
        self.port = free_port()
        config = Path(self.dir.name) / "webdis.json"
        config.write_text(json.dumps({
            "redis_host": "127.0.0.1", "redis_port": redis_port,
            "http_host": "127.0.0.1", "http_port": self.port, "threads": 1,
            "daemonize": False, "database": 0, "verbosity": 1,
            "logfile": str(Path(self.dir.name) / "webdis.log"),
        }))
        self.proc = subprocess.Popen([WEBDIS, str(config)], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL, cwd=self.dir.name)

    def stop(self):
        self.proc.terminate()
        self.proc.wait(10)
        self.dir.cleanup()


@pytest.fixture
def redis():
    r = Redis()
    yield r
    r.cleanup()


@pytest.fixture
def webdis(redis):
    w = Webdis(redis.port)
    yield w
    w.stop()


def fleet_config(daily_usd: float, node: str | None = None) -> dict:
    fleet = {"cluster": "agent_budget_redis"}
    if NATIVE and node:
        # The dynamic-module ABI has no call for Envoy's node id: the native build is named
        # by the config.
        fleet["gateway_id"] = node
    return {
        "agents": {"bot": {"daily_usd": daily_usd, "action": "stop"}},
        "pricing": {"mock-model": {"input": 1.0, "output": 2.0}},
        "fleet": fleet,
    }


@pytest.fixture
def fleet(mock, webdis):
    """Starts a gateway in fleet mode named `node` (its Envoy node id); stops them after."""
    started = []

    def start(node: str, daily_usd: float, extra: dict | None = None,
              clusters: dict | None = None) -> Gateway:
        gw = Gateway(upstream_port=mock.port,
                     plugin_config={**fleet_config(daily_usd, node), **(extra or {})},
                     concurrency=2, bootstrap_path=GATEWAY_BOOTSTRAP,
                     clusters={"agent_budget_redis": webdis.port, **(clusters or {})},
                     envoy_args=["--service-node", node]).start()
        started.append(gw)
        return gw

    yield start
    for gw in started:
        if gw.proc.poll() is None:
            gw.stop()


def call(gw: Gateway):
    body = {"model": "mock-model", "max_tokens": 500, "messages": [{"role": "user", "content": "hi"}]}
    return gw.post(CHAT, body, knobs("bot", 1000, 500))


def day_key() -> str:
    return "agent_budget:{bot}:agent:bot:" + datetime.now(timezone.utc).strftime("%Y-%m-%d")


def fleet_total(redis: Redis) -> int:
    return sum(redis.fields(day_key()).values())


def by_gateway(redis: Redis) -> dict[str, int]:
    """Spend per gateway id (fields are <gateway id>@<process start>)."""
    out: dict[str, int] = {}
    for name, value in redis.fields(day_key()).items():
        gateway = name.split("@")[0]
        out[gateway] = out.get(gateway, 0) + value
    return out


def synced(gw: Gateway):
    """Waits until the gateway has loaded the fleet's spend (calls stop getting 503)."""
    def loaded():
        return "fleet: loaded" in gw.log_text()
    wait_until(loaded, SETTLE_S, "the gateway to load the fleet's spend")


def test_spend_adds_up_in_redis_and_stops_the_agent_on_both(fleet, redis):
    # 10 calls' worth.
    a, b = fleet("gw-a", 0.02), fleet("gw-b", 0.02)
    synced(a)
    synced(b)
    for gw, calls in ((a, 3), (b, 2)):
        for _ in range(calls):
            assert call(gw).status == 200
    wait_until(lambda: by_gateway(redis) == {"gw-a": 3 * CALL_MICRO_USD, "gw-b": 2 * CALL_MICRO_USD},
               SETTLE_S, "both gateways' spend in Redis")
    assert fleet_total(redis) == 5 * CALL_MICRO_USD
    # A enforces on what it has pulled: wait for B's share to reach it.
    wait_until(lambda: gw_spend(a) == 5 * CALL_MICRO_USD, SETTLE_S, "A to pull B's spend")
    # Spend the rest through A alone, then B must refuse too once it has pulled A's spend.
    served = 5
    while call(a).status == 200:
        served += 1
        assert served <= 10
    assert served == 10
    wait_until(lambda: fleet_total(redis) == served * CALL_MICRO_USD, SETTLE_S, "A's spend in Redis")
    # Polling B with calls would spend on its stale view: wait for its pull instead.
    wait_until(lambda: gw_spend(b) == 10 * CALL_MICRO_USD, SETTLE_S, "B to pull A's spend")
    assert call(b).status == 429
    assert call(a).status == 429
    assert fleet_total(redis) == 10 * CALL_MICRO_USD
    # Redis keys carry the agent as hash tag and expire after the period.
    assert int(redis.cli("TTL", day_key())) > 0


def test_a_restarted_gateway_enforces_the_same_remaining_budget(fleet, redis):
    a, b = fleet("gw-a", 0.02), fleet("gw-b", 0.02)
    synced(a)
    synced(b)
    for _ in range(4):
        assert call(a).status == 200
    wait_until(lambda: fleet_total(redis) == 4 * CALL_MICRO_USD, SETTLE_S, "A's spend in Redis")
    a.proc.kill()
    a.proc.wait(10)
    a.stop()
    a = fleet("gw-a", 0.02)
    synced(a)
    log = a.log_text()
    # The agent's day and month, as the killed process left them.
    assert "fleet: loaded 2 accounts from Redis, $0.008000 spent today" in log, log[-3000:]
    # 6 calls left across the fleet, whichever gateway takes them.
    served = 0
    while served <= 6 and call(a if served % 2 else b).status == 200:
        served += 1
        # Each call must reach the other gateway before the next one goes elsewhere.
        wait_until(lambda: fleet_total(redis) == (4 + served) * CALL_MICRO_USD, SETTLE_S, "spend in Redis")
        for gw in (a, b):
            wait_until(lambda: gw_spend(gw) == (4 + served) * CALL_MICRO_USD, SETTLE_S, "the pull")
    assert served == 6
    assert call(a).status == 429 and call(b).status == 429
    # The killed process's field still counts; the restarted one has its own (3 calls).
    fields = redis.fields(day_key())
    assert sorted(v for k, v in fields.items() if k.startswith("gw-a@")) == [
        3 * CALL_MICRO_USD, 4 * CALL_MICRO_USD]
    assert fleet_total(redis) == 10 * CALL_MICRO_USD


def gw_spend(gw: Gateway) -> int:
    return gw.stats().value("agent_budget_spend_micro_usd", agent="bot", period="daily")


def test_redis_restart_mid_traffic_loses_and_double_counts_nothing(fleet, redis):
    a, b = fleet("gw-a", 100), fleet("gw-b", 100)
    synced(a)
    synced(b)
    counts = {"gw-a": 0, "gw-b": 0}
    stop = threading.Event()
    errors = []

    def drive(name, gw):
        while not stop.is_set():
            resp = call(gw)
            if resp.status == 200:
                counts[name] += 1
            else:
                errors.append(resp.status)

    threads = [threading.Thread(target=drive, args=item) for item in (("gw-a", a), ("gw-b", b))]
    for t in threads:
        t.start()
    try:
        wait_until(lambda: fleet_total(redis) > 0, SETTLE_S, "traffic to reach Redis")
        redis.stop()
        # Traffic goes on while Redis is down; the gateways count the failed syncs.
        wait_until(lambda: sync_errors(a) > 0 and sync_errors(b) > 0, SETTLE_S,
                   "failed syncs to be counted")
        before_restart = dict(counts)
        wait_until(lambda: all(counts[k] > before_restart[k] for k in counts), SETTLE_S,
                   "calls served during the outage")
        redis.start()
    finally:
        stop.set()
        for t in threads:
            t.join(30)
    assert errors == []
    expected = {k: v * CALL_MICRO_USD for k, v in counts.items()}
    wait_until(lambda: by_gateway(redis) == expected, SETTLE_S, f"Redis to hold exactly {expected}")
    total = sum(expected.values())
    for gw in (a, b):
        wait_until(lambda: gw_spend(gw) == total, SETTLE_S, "both gateways to see the fleet total")


def sync_errors(gw: Gateway) -> int:
    stats = gw.stats()
    return sum(int(v) for (name, _), v in stats.samples.items() if name == "agent_budget_fleet_sync_errors")


def counter(gw: Gateway, name: str, **labels) -> int:
    return gw.stats().value(name, **labels) or 0


def test_a_soft_limit_crossed_by_the_fleet_reaches_the_webhook_once(fleet, redis):
    with Webhook() as hook:
        alerts = {"alerts": {"cluster": "alert_webhook", "format": "json"}}
        hooks = {"alert_webhook": hook.port}
        # 10 calls' worth; the soft alert comes at 80 %: the 8th call.
        a = fleet("gw-a", 0.02, alerts, hooks)
        b = fleet("gw-b", 0.02, alerts, hooks)
        synced(a)
        synced(b)
        for gw, calls in ((a, 4), (b, 3)):
            for _ in range(calls):
                assert call(gw).status == 200
        for gw in (a, b):
            wait_until(lambda: gw_spend(gw) == 7 * CALL_MICRO_USD, SETTLE_S, "the pull")
        # Each gateway's next call crosses the soft level on the fleet's spend: both raise it.
        assert call(a).status == 200
        wait_until(lambda: gw_spend(b) == 8 * CALL_MICRO_USD, SETTLE_S, "B to pull A's call")
        assert call(b).status == 200
        wait_until(lambda: counter(b, "agent_budget_alert_deliveries", reason="claimed_elsewhere") == 1,
                   SETTLE_S, "B to lose the claim")
        hook.wait_for(1)
        assert counter(a, "agent_budget_alerts", agent="bot", reason="soft") == 1
        assert counter(b, "agent_budget_alerts", agent="bot", reason="soft") == 0
        soft = [d.body for d in hook.accepted if d.body["kind"] == "soft"]
        assert len(soft) == 1, soft
        assert soft[0]["agent"] == "bot"
        # The claim expires after the day.
        claims = [k for k in redis.cli("KEYS", "agent_budget:{bot}:alert:*").split("\n") if k]
        assert len(claims) == 1 and int(redis.cli("TTL", claims[0])) > 86_400, claims


# A 10-minute burn window: calls made within it count whole, so the burn rate is exact.
SLOW_ANOMALY = {"anomaly": {"bucket": "60s", "current": "600s", "window": "3600s"}}


def history_total(redis: Redis) -> int:
    fields = redis.fields("agent_budget:{bot}:history:60")
    return sum(v for k, v in fields.items() if "|" in k)


def burn(gw: Gateway) -> int:
    return counter(gw, "agent_budget_burn_rate_micro_usd_per_hour", agent="bot")


def test_a_restarted_gateway_shows_the_fleets_burn_rate(fleet, redis):
    a, b = fleet("gw-a", 100, SLOW_ANOMALY), fleet("gw-b", 100, SLOW_ANOMALY)
    synced(a)
    synced(b)
    for gw, calls in ((a, 3), (b, 2)):
        for _ in range(calls):
            assert call(gw).status == 200
    wait_until(lambda: history_total(redis) == 5 * CALL_MICRO_USD, SETTLE_S, "the history in Redis")
    fleet_burn = 5 * CALL_MICRO_USD * 3600 // 600
    for gw in (a, b):
        wait_until(lambda: burn(gw) == fleet_burn, SETTLE_S, "the fleet's burn rate")
    a.proc.kill()
    a.proc.wait(10)
    a.stop()
    a = fleet("gw-a", 100, SLOW_ANOMALY)
    synced(a)
    wait_until(lambda: burn(a) == fleet_burn, SETTLE_S, "the restarted gateway's burn rate")
    assert int(redis.cli("TTL", "agent_budget:{bot}:history:60")) > 0
