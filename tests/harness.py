"""Starts real processes for integration tests: the mock provider and Envoy with the filter.

Every test gets its own free loopback ports and its own Envoy (--disable-hot-restart), so
tests can run in parallel. The Envoy bootstrap is envoy/agent-budget.yaml itself (or
envoy/agent-budget-dynamic.yaml with envoy/lds.yaml, for reloads), with ports, the .wasm
path and the plugin configuration swapped in. The mock's usage figures and failure modes
are set per request by the headers `knobs` builds.

AGENT_BUDGET_BUILD=native runs the same tests against the native dynamic module instead
(envoy/agent-budget-native.yaml, envoy/agent-budget-native-dynamic.yaml with envoy/lds-native.yaml,
target/release-native/libagent_budget_native.so); a test
that cannot apply to a build skips with the reason (`skip_unless_wasm`).
"""

from __future__ import annotations

import http.client
import json
import os
import re
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
# Which build of the filter the tests run against: wasm (the default) or native.
BUILD = os.environ.get("AGENT_BUDGET_BUILD", "wasm")
if BUILD not in ("wasm", "native"):
    raise RuntimeError(f"AGENT_BUDGET_BUILD must be wasm or native, not {BUILD!r}")
NATIVE = BUILD == "native"
WASM = REPO / "target/wasm32-wasip1/release/agent_budget.wasm"
NATIVE_MODULE = REPO / "target/release-native/libagent_budget_native.so"
MOCK = REPO / "target/release/mock-provider"
ENVOY = REPO / ".venv/bin/envoy"
BOOTSTRAP = REPO / ("envoy/agent-budget-native.yaml" if NATIVE else "envoy/agent-budget.yaml")
# The filter's tick period (1 s) plus a margin.
FLUSH_WAIT_S = 1.2


def skip_unless_wasm(reason: str) -> None:
    """Skips the calling test on the native build, saying why it does not apply there."""
    if NATIVE:
        pytest.skip(f"native build: {reason}")


def skip_unless_native(reason: str) -> None:
    """Skips the calling test on the wasm build, saying why it does not apply there."""
    if not NATIVE:
        pytest.skip(f"wasm build: {reason}")


def require_built() -> None:
    missing = [p for p in (NATIVE_MODULE if NATIVE else WASM, MOCK, ENVOY) if not p.exists()]
    if missing:
        raise RuntimeError(
            "not built: " + ", ".join(str(p.relative_to(REPO)) for p in missing)
            + " -- run scripts/setup (or scripts/test, which runs it)"
        )


def _port_slice() -> range:
    """The ports this process hands out: below the kernel's ephemeral range, so no outgoing
    connection or bind(0) elsewhere can take a port between free_port() and Envoy's bind, and
    split between pytest-xdist workers, so two workers never pick the same one."""
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    pool = range(10000, low) if low - 10000 >= 2000 else range(1024, low)
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    worker = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw") or 0)
    width = len(pool) // max(workers, 1)
    return range(pool.start + worker * width, pool.start + (worker + 1) * width)


_PORTS = _port_slice()
# Start at a random point so runs back to back do not reuse the same ports first.
_next_port = _PORTS.start + int.from_bytes(os.urandom(2), "big") % len(_PORTS)


def free_port() -> int:
    """A loopback port nothing listens on, never handed out twice in a row by this process."""
    global _next_port
    for _ in range(len(_PORTS)):
        port = _next_port
        _next_port = _PORTS.start + (port + 1 - _PORTS.start) % len(_PORTS)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free loopback port in {_PORTS.start}-{_PORTS.stop - 1}")


def wait_until(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise TimeoutError(f"timed out after {timeout}s waiting for {what}")


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self):
        return json.loads(self.body)


def request(port: int, method: str, path: str, body: bytes | None = None,
            headers: dict[str, str] | None = None, timeout: float = 30) -> Response:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        data = resp.read()
        return Response(resp.status, {k.lower(): v for k, v in resp.getheaders()}, data)
    finally:
        conn.close()


def _terminate(proc: subprocess.Popen, timeout: float) -> None:
    """SIGTERM, and SIGKILL if the process has not exited within timeout."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()


class Mock:
    """The mock provider (target/release/mock-provider) on a free port."""

    def __init__(self, threads: int = 1):
        self.dir = tempfile.TemporaryDirectory(prefix="mock-")
        port_file = Path(self.dir.name) / "port"
        self.proc = subprocess.Popen(
            [str(MOCK), "--listen", "127.0.0.1:0", "--port-file", str(port_file), "--threads", str(threads)],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        wait_until(port_file.exists, 10, "mock provider port file")
        self.port = int(port_file.read_text())

    def stats(self) -> dict:
        return request(self.port, "GET", "/mock/stats").json()

    def stop(self) -> None:
        _terminate(self.proc, 5)
        self.dir.cleanup()


DYNAMIC_BOOTSTRAP = REPO / ("envoy/agent-budget-native-dynamic.yaml" if NATIVE else "envoy/agent-budget-dynamic.yaml")
OPS_LISTENER = "agent_budget_ops"
LDS = REPO / ("envoy/lds-native.yaml" if NATIVE else "envoy/lds.yaml")


def bootstrap(listen_port: int, admin_port: int, upstream_port: int, plugin_config,
              as_string: bool = False, ops_port: int | None = None, path: Path = BOOTSTRAP) -> dict:
    """envoy/agent-budget.yaml with test ports and plugin configuration (see _set_plugin).
    The ops listener (the status page) shares the gateway's plugin configuration through a
    YAML alias, so it gets the same; it listens on ops_port (a free port if None)."""
    config = _shipped_bootstrap(path, admin_port, upstream_port)
    listener = config["static_resources"]["listeners"][0]
    listener["address"]["socket_address"]["port_value"] = listen_port
    _set_plugin(_hcm(listener), plugin_config, as_string)
    ops = next(entry for entry in config["static_resources"]["listeners"] if entry["name"] == OPS_LISTENER)
    ops["address"]["socket_address"]["port_value"] = free_port() if ops_port is None else ops_port
    return config


def dynamic_listener(listen_port: int, plugin_config, as_string: bool = False) -> dict:
    """The listener of envoy/lds.yaml with a test port and plugin configuration (see _set_plugin)."""
    listener = yaml.safe_load(LDS.read_text())["resources"][0]
    listener["address"]["socket_address"]["port_value"] = listen_port
    _set_plugin(_hcm(listener), plugin_config, as_string)
    return listener


def shipped_plugin_config() -> dict:
    return plugin_config_of(yaml.safe_load(BOOTSTRAP.read_text()))


def plugin_config_of(config: dict) -> dict:
    """The agent_budget plugin configuration (the Struct) of a static bootstrap."""
    hcm = _hcm(config["static_resources"]["listeners"][0])
    return _configuration(_filter(hcm))["value"]


def add_static_cluster(config: dict, name: str, port: int) -> dict:
    """Points the bootstrap's cluster `name` at a plain HTTP/1.1 STATIC 127.0.0.1:port,
    adding it if there is none (the shipped configs already name `alert_webhook`)."""
    clusters = config["static_resources"].setdefault("clusters", [])
    clusters[:] = [c for c in clusters if c.get("name") != name]
    clusters.append({
        "name": name,
        "type": "STATIC",
        "connect_timeout": "1s",
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {
                "socket_address": {"address": "127.0.0.1", "port_value": port}}}}]}],
        },
    })
    return config


def _shipped_bootstrap(path: Path, admin_port: int, upstream_port: int) -> dict:
    """A shipped bootstrap with the admin port and the llm_provider cluster's port swapped in."""
    config = yaml.safe_load(path.read_text())
    config["admin"]["address"]["socket_address"]["port_value"] = admin_port
    cluster = next(c for c in config["static_resources"]["clusters"] if c["name"] == "llm_provider")
    endpoint = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]
    endpoint["address"]["socket_address"]["port_value"] = upstream_port
    return config


def _hcm(listener: dict) -> dict:
    return listener["filter_chains"][0]["filters"][0]["typed_config"]


def _filter(hcm: dict) -> dict:
    return next(f for f in hcm["http_filters"] if f["name"] == "agent_budget")


def _configuration(agent_budget: dict) -> dict:
    """The filter's plugin configuration: the wasm plugin's `configuration` or the dynamic
    module's `filter_config` (an Any either way)."""
    typed = agent_budget["typed_config"]
    return typed["filter_config"] if NATIVE else typed["config"]["configuration"]


def _set_plugin(hcm: dict, plugin_config, as_string: bool) -> None:
    """Points the agent_budget filter at the built .wasm (the native module is found on
    ENVOY_DYNAMIC_MODULES_SEARCH_PATH) and gives it plugin_config: a dict written as a
    google.protobuf.Struct (as in the shipped YAML) or, with as_string, sent as a JSON
    StringValue; None keeps the file's own."""
    agent_budget = _filter(hcm)
    if not NATIVE:
        agent_budget["typed_config"]["config"]["vm_config"]["code"]["local"]["filename"] = str(WASM)
    if plugin_config is None:
        return
    # Edited in place: the ops listener's status plugin holds the same object (a YAML alias).
    configuration = _configuration(agent_budget)
    if as_string:
        configuration.clear()
        configuration.update({
            "@type": "type.googleapis.com/google.protobuf.StringValue",
            "value": plugin_config if isinstance(plugin_config, str) else json.dumps(plugin_config),
        })
    else:
        configuration["value"] = plugin_config


# The mock provider's knobs (mock-provider/README.md). It answers 400 to any other x-mock-*
# header, so a misspelt knob is refused here rather than by the provider mid-test.
MOCK_KNOBS = frozenset({
    "input_tokens", "output_tokens", "cached_tokens", "cache_write_tokens", "reasoning_tokens",
    "chunks", "chunk_delay_ms", "delay_ms", "status", "truncate_after", "content_encoding",
    "model", "no_usage"})


def knobs(agent: str | None = None, input_tokens: int | None = None,
          output_tokens: int | None = None, **more) -> dict[str, str]:
    """Request headers for a call through the mock: x-agent-id (unless agent is None) and one
    x-mock-* header per knob, named after it (cache_write_tokens=400 gives
    x-mock-cache-write-tokens: 400). A knob that is None keeps the mock's default."""
    unknown = sorted(set(more) - MOCK_KNOBS)
    if unknown:
        raise TypeError("not a mock knob: " + ", ".join(unknown))
    headers = {} if agent is None else {"x-agent-id": agent}
    for name, value in {"input_tokens": input_tokens, "output_tokens": output_tokens, **more}.items():
        if value is not None:
            headers["x-mock-" + name.replace("_", "-")] = str(value)
    return headers


@dataclass
class Gateway:
    """A running Envoy with the filter in front of an upstream port.

    The bootstrap is envoy/agent-budget.yaml or, with `dynamic`, envoy/agent-budget-dynamic.yaml,
    whose listener (and with it the plugin configuration) Envoy reads from an lds.yaml in the
    gateway's temp dir and reloads when write_listener renames a new one over it.
    """

    upstream_port: int
    plugin_config: object  # None: the shipped file's own
    concurrency: int = 2
    as_string: bool = False
    dynamic: bool = False
    # Static clusters to add or re-point: {name: port} (e.g. the alert webhook).
    clusters: dict = field(default_factory=dict)
    # Extra Envoy command-line arguments, e.g. ["--drain-strategy", "immediate"].
    envoy_args: list = field(default_factory=list)
    # HTTP filters to run before agent_budget on the gateway listener (e.g. jwt_authn).
    filters_before: list = field(default_factory=list)
    # The static bootstrap to start from (e.g. envoy/agent-budget-fleet.yaml).
    bootstrap_path: Path = BOOTSTRAP
    # Where Envoy looks for the native module (ENVOY_DYNAMIC_MODULES_SEARCH_PATH).
    module_dir: Path = NATIVE_MODULE.parent
    port: int = field(default_factory=free_port)
    admin_port: int = field(default_factory=free_port)
    # The ops listener's (the status page); static bootstraps only.
    ops_port: int = field(default_factory=free_port)
    version: int = field(default=0, init=False)  # of the last lds.yaml written

    def start(self, expect_failure: bool = False) -> "Gateway":
        require_built()
        self.dir = tempfile.TemporaryDirectory(prefix="envoy-")
        home = Path(self.dir.name)
        if self.dynamic:
            config = _shipped_bootstrap(DYNAMIC_BOOTSTRAP, self.admin_port, self.upstream_port)
            self.lds_path = home / "lds.yaml"
            self.write_listener(self.plugin_config)
            source = config["dynamic_resources"]["lds_config"]["path_config_source"]
            source["path"] = str(self.lds_path)
            source["watched_directory"] = {"path": self.dir.name}
        else:
            config = bootstrap(self.port, self.admin_port, self.upstream_port, self.plugin_config,
                               self.as_string, self.ops_port, self.bootstrap_path)
        for name, port in self.clusters.items():
            add_static_cluster(config, name, port)
        if self.filters_before:
            if self.dynamic:
                raise ValueError("filters_before applies to static bootstraps only")
            filters = _hcm(config["static_resources"]["listeners"][0])["http_filters"]
            at = next(i for i, f in enumerate(filters) if f["name"] == "agent_budget")
            filters[at:at] = self.filters_before
        path = home / "envoy.yaml"
        path.write_text(yaml.safe_dump(config))
        self.log_path = home / "envoy.log"
        self.access_log_path = home / "access.log"
        self.log = open(self.log_path, "wb")
        self.access_log = open(self.access_log_path, "wb")
        env = dict(os.environ, ENVOY_DYNAMIC_MODULES_SEARCH_PATH=str(self.module_dir))
        self.proc = subprocess.Popen(
            [str(ENVOY), "-c", str(path), "--disable-hot-restart", "--concurrency", str(self.concurrency),
             "-l", "info", "--log-path", str(self.log_path),
             # Log lines reach the file within 0.1 s (not Envoy's default 10 s), so a test
             # waiting for one waits on what it checks, not on the flush timer.
             "--file-flush-interval-msec", "100", *self.envoy_args],
            stdout=self.access_log, stderr=subprocess.STDOUT, cwd=REPO, env=env)
        if expect_failure:
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.stop()
                raise AssertionError("Envoy started although its configuration should be refused")
            return self
        try:
            wait_until(self._ready, 30, "Envoy to become ready")
        except Exception:
            self.stop()
            raise AssertionError("Envoy did not start:\n" + self.log_text()[-4000:])
        return self

    def _ready(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError("Envoy exited:\n" + self.log_text()[-4000:])
        try:
            if request(self.admin_port, "GET", "/ready", timeout=1).status != 200:
                return False
            if self.dynamic:  # the listener comes from LDS: wait until it accepts connections
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
            return True
        except OSError:
            return False

    def write_listener(self, plugin_config) -> None:
        """Atomically replaces lds.yaml (temp file + rename in the same directory)."""
        self.version += 1
        listener = dynamic_listener(self.port, plugin_config, self.as_string)
        response = {"version_info": str(self.version), "resources": [
            {"@type": "type.googleapis.com/envoy.config.listener.v3.Listener", **listener}]}
        tmp = self.lds_path.with_name(f".lds.{self.version}.tmp")
        tmp.write_text(yaml.safe_dump(response))
        os.rename(tmp, self.lds_path)

    def log_text(self) -> str:
        if not self.log.closed:
            self.log.flush()
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def access_records(self) -> list[dict]:
        """The attribution log (envoy/access-log.yaml): one flat JSON object per attributed
        call. Envoy flushes access logs on a timer, so this stops Envoy first (which flushes
        them): call it last in a test."""
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
        self.access_log.flush()
        return [json.loads(line) for line in self.access_log_path.read_text(errors="replace").splitlines()
                if line.startswith("{")]

    def post(self, path: str, body: dict | bytes, headers: dict[str, str] | None = None) -> Response:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        all_headers = {"content-type": "application/json"}
        all_headers.update(headers or {})
        return request(self.port, "POST", path, data, all_headers)

    def stats(self) -> "Stats":
        """The filter's figures once every worker has ticked: counts and gauges reach Envoy
        on each worker's 1 s tick, so a read right after a call would miss them."""
        time.sleep(FLUSH_WAIT_S)
        return Stats.parse(request(self.admin_port, "GET", "/stats/prometheus").body.decode())

    def lds_stats(self) -> dict[str, int]:
        """listener_manager.lds.* counters: update_success, update_rejected, update_attempt..."""
        body = request(self.admin_port, "GET", r"/stats?filter=^listener_manager\.lds\.", timeout=5).body
        out = {}
        for line in body.decode().splitlines():
            name, sep, value = line.partition(": ")
            if sep and value.strip().lstrip("-").isdigit():
                out[name.strip().rsplit(".", 1)[1]] = int(value)
        return out

    def stop(self) -> None:
        _terminate(self.proc, 10)
        self.log.close()
        self.access_log.close()
        self.dir.cleanup()


_LINE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})?\s+(\S+)$')
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


class Stats:
    """Prometheus text parsed into {(name, frozenset(labels)): value}."""

    def __init__(self, samples: dict):
        self.samples = samples

    @classmethod
    def parse(cls, text: str) -> "Stats":
        samples = {}
        for line in text.splitlines():
            if not line or line.startswith("#"):
                continue
            m = _LINE.match(line)
            if m:
                labels = frozenset(_LABEL.findall(m.group(3) or ""))
                samples[(m.group(1), labels)] = float(m.group(4))
        return cls(samples)

    def get(self, name: str, **labels) -> float | None:
        return self.samples.get((name, frozenset(labels.items())))

    def value(self, name: str, **labels) -> int:
        v = self.get(name, **labels)
        return 0 if v is None else int(v)
