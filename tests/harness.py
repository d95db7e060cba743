"""Starts real processes for integration tests: the mock provider and Envoy with the filter.

Every test gets its own free loopback ports and its own Envoy (--disable-hot-restart), so
tests can run in parallel. The Envoy bootstrap is envoy/agent-budget.yaml itself, with
ports, the .wasm path and the plugin configuration swapped in.
"""

from __future__ import annotations

import copy
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

import yaml

REPO = Path(__file__).resolve().parent.parent
WASM = REPO / "target/wasm32-wasip1/release/agent_budget.wasm"
MOCK = REPO / "target/release/mock-provider"
ENVOY = REPO / ".venv/bin/envoy"
BOOTSTRAP = REPO / "envoy/agent-budget.yaml"


def require_built() -> None:
    missing = [p for p in (WASM, MOCK, ENVOY) if not p.exists()]
    if missing:
        raise RuntimeError(
            "not built: " + ", ".join(str(p.relative_to(REPO)) for p in missing)
            + " -- run scripts/setup (or scripts/test, which runs it)"
        )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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
        self.proc.terminate()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.dir.cleanup()


def bootstrap(listen_port: int, admin_port: int, upstream_port: int, plugin_config,
              as_string: bool = False) -> dict:
    """envoy/agent-budget.yaml with test ports and plugin configuration.

    plugin_config is a dict (written as a google.protobuf.Struct, as in the shipped YAML)
    or, with as_string, sent as a JSON StringValue.
    """
    config = copy.deepcopy(yaml.safe_load(BOOTSTRAP.read_text()))
    config["admin"]["address"]["socket_address"]["port_value"] = admin_port
    listener = config["static_resources"]["listeners"][0]
    listener["address"]["socket_address"]["port_value"] = listen_port
    hcm = listener["filter_chains"][0]["filters"][0]["typed_config"]
    wasm = _wasm_filter(hcm)["typed_config"]["config"]
    wasm["vm_config"]["code"]["local"]["filename"] = str(WASM)
    if as_string:
        wasm["configuration"] = {
            "@type": "type.googleapis.com/google.protobuf.StringValue",
            "value": json.dumps(plugin_config) if not isinstance(plugin_config, str) else plugin_config,
        }
    else:
        wasm["configuration"]["value"] = plugin_config
    cluster = next(c for c in config["static_resources"]["clusters"] if c["name"] == "llm_provider")
    endpoint = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]
    endpoint["address"]["socket_address"]["port_value"] = upstream_port
    return config


def _wasm_filter(hcm: dict) -> dict:
    return next(f for f in hcm["http_filters"] if f["name"] == "agent_budget")


def shipped_plugin_config() -> dict:
    config = yaml.safe_load(BOOTSTRAP.read_text())
    hcm = config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    return _wasm_filter(hcm)["typed_config"]["config"]["configuration"]["value"]


@dataclass
class Gateway:
    """A running Envoy with the filter in front of an upstream port."""

    upstream_port: int
    plugin_config: object
    concurrency: int = 2
    as_string: bool = False
    port: int = field(default_factory=free_port)
    admin_port: int = field(default_factory=free_port)

    def start(self, expect_failure: bool = False) -> "Gateway":
        require_built()
        self.dir = tempfile.TemporaryDirectory(prefix="envoy-")
        path = Path(self.dir.name) / "envoy.yaml"
        path.write_text(yaml.safe_dump(bootstrap(
            self.port, self.admin_port, self.upstream_port, self.plugin_config, self.as_string)))
        self.log_path = Path(self.dir.name) / "envoy.log"
        self.access_log_path = Path(self.dir.name) / "access.log"
        self.log = open(self.log_path, "wb")
        self.access_log = open(self.access_log_path, "wb")
        self.proc = subprocess.Popen(
            [str(ENVOY), "-c", str(path), "--disable-hot-restart", "--concurrency", str(self.concurrency),
             "-l", "info", "--log-path", str(self.log_path)],
            stdout=self.access_log, stderr=subprocess.STDOUT, cwd=REPO)
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
            return request(self.admin_port, "GET", "/ready", timeout=1).status == 200
        except OSError:
            return False

    def log_text(self) -> str:
        if not self.log.closed:
            self.log.flush()
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def access_records(self) -> list[dict]:
        """Attribution records from the access log. Envoy flushes access logs on a timer, so
        this stops Envoy first (which flushes them): call it last in a test."""
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
        self.access_log.flush()
        records = []
        for line in self.access_log_path.read_text(errors="replace").splitlines():
            if line.startswith("{"):
                records.append(json.loads(line))
        return records

    def post(self, path: str, body: dict | bytes, headers: dict[str, str] | None = None) -> Response:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        all_headers = {"content-type": "application/json"}
        all_headers.update(headers or {})
        return request(self.port, "POST", path, data, all_headers)

    def stats(self) -> "Stats":
        return Stats.parse(request(self.admin_port, "GET", "/stats/prometheus").body.decode())

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
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


# ---------------------------------------------------------------------------------------
# Extra clusters (alert webhooks) and file-based dynamic listeners (reload tests).
# ---------------------------------------------------------------------------------------

DYNAMIC_BOOTSTRAP = REPO / "envoy/agent-budget-dynamic.yaml"
LDS = REPO / "envoy/lds.yaml"


def static_cluster(name: str, port: int, host: str = "127.0.0.1") -> dict:
    """A plain HTTP/1.1 STATIC cluster on host:port, e.g. for the alert webhook."""
    return {
        "name": name,
        "type": "STATIC",
        "connect_timeout": "1s",
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {
                "socket_address": {"address": host, "port_value": port}}}}]}],
        },
    }


def add_static_cluster(config: dict, name: str, port: int) -> dict:
    """Points the bootstrap's cluster `name` at 127.0.0.1:port, adding a STATIC cluster of
    that name if there is none (the shipped config already names `alert_webhook`)."""
    clusters = config["static_resources"].setdefault("clusters", [])
    clusters[:] = [c for c in clusters if c.get("name") != name]
    clusters.append(static_cluster(name, port))
    return config


def _launch(gw: "Gateway", config: dict, expect_failure: bool = False, ready=None,
            extra_args: list[str] | None = None) -> None:
    """Gateway.start with a given bootstrap dict (written to gw.dir): the same process
    handling, log files and readiness wait, so Gateway's other methods work unchanged."""
    require_built()
    if not hasattr(gw, "dir"):
        gw.dir = tempfile.TemporaryDirectory(prefix="envoy-")
    path = Path(gw.dir.name) / "envoy.yaml"
    path.write_text(yaml.safe_dump(config))
    gw.log_path = Path(gw.dir.name) / "envoy.log"
    gw.access_log_path = Path(gw.dir.name) / "access.log"
    gw.log = open(gw.log_path, "wb")
    gw.access_log = open(gw.access_log_path, "wb")
    gw.proc = subprocess.Popen(
        [str(ENVOY), "-c", str(path), "--disable-hot-restart", "--concurrency", str(gw.concurrency),
         "-l", "info", "--log-path", str(gw.log_path), *(extra_args or [])],
        stdout=gw.access_log, stderr=subprocess.STDOUT, cwd=REPO)
    if expect_failure:
        try:
            gw.proc.wait(30)
        except subprocess.TimeoutExpired:
            gw.stop()
            raise AssertionError("Envoy started although its configuration should be refused")
        return
    try:
        wait_until(ready or gw._ready, 30, "Envoy to become ready")
    except Exception:
        gw.stop()
        raise AssertionError("Envoy did not start:\n" + gw.log_text()[-4000:])


@dataclass
class ClusterGateway(Gateway):
    """A Gateway whose bootstrap carries extra STATIC clusters: {name: port}."""

    extra_clusters: dict = field(default_factory=dict)

    def start(self, expect_failure: bool = False) -> "ClusterGateway":
        self.dir = tempfile.TemporaryDirectory(prefix="envoy-")
        config = bootstrap(self.port, self.admin_port, self.upstream_port, self.plugin_config,
                           self.as_string)
        for name, port in self.extra_clusters.items():
            add_static_cluster(config, name, port)
        _launch(self, config, expect_failure)
        return self

    def admin_stats(self) -> dict[str, int]:
        """Envoy's own counters and gauges from /stats (not Prometheus): {name: value}."""
        return admin_stats(self.admin_port)


def admin_stats(admin_port: int, filter_regex: str | None = None) -> dict[str, int]:
    path = "/stats" + (f"?filter={filter_regex}" if filter_regex else "")
    out = {}
    for line in request(admin_port, "GET", path, timeout=5).body.decode().splitlines():
        name, sep, value = line.partition(": ")
        if sep and value.strip().lstrip("-").isdigit():
            out[name.strip()] = int(value)
    return out


def dynamic_listener(listen_port: int, plugin_config, wasm: Path = WASM) -> dict:
    """The listener of envoy/lds.yaml with a test port, the built .wasm and a plugin config
    (None keeps the file's own)."""
    response = yaml.safe_load(LDS.read_text())
    listener = copy.deepcopy(response["resources"][0])
    listener["address"]["socket_address"]["port_value"] = listen_port
    hcm = listener["filter_chains"][0]["filters"][0]["typed_config"]
    config = _wasm_filter(hcm)["typed_config"]["config"]
    config["vm_config"]["code"]["local"]["filename"] = str(wasm)
    if plugin_config is not None:  # None: the plugin configuration shipped in envoy/lds.yaml
        config["configuration"]["value"] = plugin_config
    return listener


@dataclass
class DynamicGateway(Gateway):
    """Envoy from envoy/agent-budget-dynamic.yaml: static clusters, and the listener (with the
    plugin configuration) read from an lds.yaml in the test's temp dir, reloaded by Envoy when
    a new file is renamed over it (write_listener)."""

    version: int = 0
    # Extra Envoy command-line arguments, e.g. ["--drain-strategy", "immediate"].
    envoy_args: list = field(default_factory=list)
    # Static clusters to add or re-point: {name: port} (e.g. the alert webhook).
    extra_clusters: dict = field(default_factory=dict)

    def start(self, expect_failure: bool = False) -> "DynamicGateway":
        self.dir = tempfile.TemporaryDirectory(prefix="envoy-dyn-")
        self.lds_path = Path(self.dir.name) / "lds.yaml"
        self.write_listener(self.plugin_config)
        config = copy.deepcopy(yaml.safe_load(DYNAMIC_BOOTSTRAP.read_text()))
        config["admin"]["address"]["socket_address"]["port_value"] = self.admin_port
        source = config["dynamic_resources"]["lds_config"]["path_config_source"]
        source["path"] = str(self.lds_path)
        source["watched_directory"] = {"path": self.dir.name}
        cluster = next(c for c in config["static_resources"]["clusters"] if c["name"] == "llm_provider")
        endpoint = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]
        endpoint["address"]["socket_address"]["port_value"] = self.upstream_port
        for name, port in self.extra_clusters.items():
            add_static_cluster(config, name, port)
        _launch(self, config, expect_failure, ready=self._listening, extra_args=self.envoy_args)
        return self

    def _listening(self) -> bool:
        if not self._ready():
            return False
        try:  # the listener comes from LDS: wait until it accepts connections
            socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
            return True
        except OSError:
            return False

    def write_listener(self, plugin_config, listener: dict | None = None) -> None:
        """Atomically replaces lds.yaml (temp file + rename in the same directory)."""
        self.version += 1
        listener = listener or dynamic_listener(self.port, plugin_config)
        response = {"version_info": str(self.version), "resources": [
            {"@type": "type.googleapis.com/envoy.config.listener.v3.Listener", **listener}]}
        tmp = self.lds_path.with_name(f".lds.{self.version}.tmp")
        tmp.write_text(yaml.safe_dump(response))
        os.rename(tmp, self.lds_path)

    def lds_stats(self) -> dict[str, int]:
        """listener_manager.lds.* counters: update_success, update_rejected, update_attempt..."""
        return {k.rsplit(".", 1)[1]: v for k, v in
                admin_stats(self.admin_port, r"^listener_manager\.lds\.").items()}
