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
