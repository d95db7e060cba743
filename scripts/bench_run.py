"""agent-budget benchmarks: run by scripts/bench (which builds and installs what this needs).

Everything runs on loopback and is started here: the mock provider; Envoys built from
envoy/agent-budget.yaml (tests/harness.py's bootstrap) that differ only in the agent_budget
wasm filter (removed; as shipped; with budget_headers: none; or swapped for a generated
do-nothing / host-call-replica module), all started by start_side(); LiteLLM's proxy; wrk.
Comparisons are made side by side in the same run, with the sides interleaved inside each
repetition, and reported as medians of per-repetition ratios / differences; absolute figures
are context only. BENCHMARKS.md describes the method.

    .venv/bin/python scripts/bench_run.py [--reps 3] [--duration 3] [--only load,stream,...]

Writes .work/bench/results.json and .work/bench/results.md, and prints the tables.
"""

from __future__ import annotations

import argparse
import copy
import functools
import gzip
import json
import os
import platform
import re
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO / "scripts"))

import harness  # noqa: E402
import bench_sse  # noqa: E402

OUT = REPO / ".work/bench"
WASM = harness.WASM
MOCK = harness.MOCK
ENVOY = harness.ENVOY
NATIVE_BOOTSTRAP = REPO / "envoy/agent-budget-native.yaml"
# Where the "native" side's Envoy finds libagent_budget_native.so (other sides load none).
os.environ["ENVOY_DYNAMIC_MODULES_SEARCH_PATH"] = str(harness.NATIVE_MODULE.parent)
LITELLM = REPO / ".venv-litellm/bin/litellm"

# Core layout (2 cores): Envoy (and LiteLLM's workers get both, see there) on core 1,
# the load generator and the mock provider on core 0.
ENVOY_CPU = "1"
CLIENT_CPU = "0"
AGENT = "bench-agent"

PHASES = ["size", "micro", "load", "stream", "memory", "litellm", "hostcalls", "profile"]

# ~1 KB requests; the mock answers max_tokens (300) "tok " tokens: ~1.6-1.7 KB bodies.
SYSTEM_PROMPT = ("You are a meticulous research assistant. Answer with short, sourced "
                 "paragraphs; say when you are unsure; never invent citations. ") * 3
USER_PROMPT = ("Summarise the trade-offs between optimistic and pessimistic concurrency "
               "control for a shared counter updated by many workers, in three bullet points.")
OPENAI_BODY = json.dumps({
    "model": "gpt-4o", "max_tokens": 300, "temperature": 0.2,
    "messages": [{"role": "system", "content": SYSTEM_PROMPT},
                 {"role": "user", "content": USER_PROMPT}],
}, separators=(",", ":"))
ANTHROPIC_BODY = json.dumps({
    "model": "claude-sonnet-4-5", "max_tokens": 300, "system": SYSTEM_PROMPT,
    "messages": [{"role": "user", "content": USER_PROMPT}],
}, separators=(",", ":"))
APIS = {
    "openai": ("/v1/chat/completions", OPENAI_BODY),
    "anthropic": ("/v1/messages", ANTHROPIC_BODY),
}
CLIENT_HEADERS = {"content-type": "application/json", "x-agent-id": AGENT,
                  "x-task-id": "bench-task", "x-user-id": "bench-user"}

_procs: list[subprocess.Popen] = []
_tmpdirs: list[Path] = []


def tmpdir(prefix: str) -> Path:
    path = Path(tempfile.mkdtemp(prefix=prefix))
    _tmpdirs.append(path)
    return path


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ---------------------------------------------------------------------------------------
# processes

def spawn(cmd: list[str], **kw) -> subprocess.Popen:
    # Own session: LiteLLM forks workers, and the whole group is ended by its id.
    proc = subprocess.Popen(cmd, start_new_session=True, **kw)
    _procs.append(proc)
    return proc


def stop(proc: subprocess.Popen, sig=signal.SIGTERM) -> None:
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            pass
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)
    if proc in _procs:
        _procs.remove(proc)


def stop_all() -> None:
    for proc in list(_procs):
        try:
            stop(proc)
        except Exception:  # noqa: BLE001 - best effort on the way out
            pass


def group_cpu_ticks(pgid: int) -> int:
    """utime+stime (clock ticks) of every live process in the group (threads included)."""
    total = 0
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry.name}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        if int(fields[2]) == pgid:
            total += int(fields[11]) + int(fields[12])
    return total


def cpu_busy_ticks() -> dict[str, int]:
    """Busy ticks per core from /proc/stat (everything but idle and iowait)."""
    busy = {}
    for line in Path("/proc/stat").read_text().splitlines():
        if line.startswith("cpu") and line[3:4].isdigit():
            name, *vals = line.split()
            v = list(map(int, vals))
            busy[name] = sum(v[:8]) - v[3] - v[4]
    return busy


HZ = os.sysconf("SC_CLK_TCK")


class Mock:
    def __init__(self) -> None:
        self.dir = tmpdir("bench-mock-")
        port_file = self.dir / "port"
        self.proc = spawn(["taskset", "-c", CLIENT_CPU, str(MOCK), "--listen", "127.0.0.1:0",
                           "--port-file", str(port_file), "--threads", "1"],
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        harness.wait_until(port_file.exists, 10, "mock provider")
        self.port = int(port_file.read_text())


def plugin_config() -> dict:
    plugin = copy.deepcopy(harness.shipped_plugin_config())
    # Budgets that never stop a call during the run (the cap is 10^12 USD).
    plugin.setdefault("agents", {})[AGENT] = {"daily_usd": 1_000_000, "monthly_usd": 10_000_000}
    return plugin


def envoy_bootstrap(variant: str, upstream: int, wasm: Path | None = None,
                    budget_headers: str | None = None, access_log: bool = True,
                    module: Path | None = None) -> tuple[dict, int, int]:
    """The shipped bootstrap (ports swapped in). variant: "filter" as shipped, "plain" with
    the agent_budget wasm filter removed (everything else identical, the compressor filter
    included), "wasm" with the filter's .wasm replaced by `wasm` (a generated module),
    "native" the native dynamic module's bootstrap (envoy/agent-budget-native.yaml) with the
    same plugin configuration, loading `module` (a generated lib<name>.so) instead of
    agent-budget's when given. budget_headers, when given, is set in the plugin configuration."""
    port, admin = harness.free_port(), harness.free_port()
    plugin = plugin_config()
    if budget_headers is not None:
        plugin["budget_headers"] = budget_headers
    if variant == "native":
        config = harness._shipped_bootstrap(NATIVE_BOOTSTRAP, admin, upstream)
        listener = config["static_resources"]["listeners"][0]
        listener["address"]["socket_address"]["port_value"] = port
        module_filter = next(f for f in harness._hcm(listener)["http_filters"]
                             if f["name"] == "agent_budget")
        module_filter["typed_config"]["filter_config"]["value"] = plugin
        if module is not None:
            name = module.name.removeprefix("lib").removesuffix(".so")
            module_filter["typed_config"]["dynamic_module_config"] = {"name": name}
    else:
        config = harness.bootstrap(port, admin, upstream, plugin)
    # The ops listener (status page) serves no calls; without it "plain" runs no VM at all.
    listeners = config["static_resources"]["listeners"]
    listeners[:] = [entry for entry in listeners if entry["name"] != harness.OPS_LISTENER]
    hcm = config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    if not access_log:
        assert hcm.pop("access_log", None) is not None, "the shipped bootstrap has an access log"
    if variant == "plain":
        before = len(hcm["http_filters"])
        hcm["http_filters"] = [f for f in hcm["http_filters"] if f["name"] != "agent_budget"]
        assert len(hcm["http_filters"]) == before - 1
    elif variant == "wasm":
        wasm_filter = next(f for f in hcm["http_filters"] if f["name"] == "agent_budget")
        vm = wasm_filter["typed_config"]["config"]["vm_config"]
        vm["code"]["local"]["filename"] = str(wasm)
        vm["vm_id"] = wasm.stem
    else:
        assert variant in ("filter", "native"), variant
    return config, port, admin


class Envoy:
    def __init__(self, name: str, variant: str, upstream: int, concurrency: int = 1,
                 log_level: str = "info", extra_args: list[str] | None = None,
                 cpus: str | None = ENVOY_CPU, wasm: Path | None = None,
                 budget_headers: str | None = None, access_log: bool = True,
                 module: Path | None = None) -> None:
        self.name = name
        self.variant = variant
        config, self.port, self.admin = envoy_bootstrap(variant, upstream, wasm, budget_headers,
                                                        access_log, module)
        self.dir = tmpdir(f"bench-envoy-{name}-")
        (self.dir / "envoy.yaml").write_text(yaml.safe_dump(config))
        self.log_path = self.dir / "envoy.log"
        cmd = [str(ENVOY), "-c", str(self.dir / "envoy.yaml"), "--disable-hot-restart",
               "--concurrency", str(concurrency), "-l", log_level,
               "--log-path", str(self.log_path)] + (extra_args or [])
        if cpus:
            cmd = ["taskset", "-c", cpus] + cmd
        # The access log (stdout) goes to /dev/null for both configurations.
        env = dict(os.environ)
        if module is not None:
            env["ENVOY_DYNAMIC_MODULES_SEARCH_PATH"] = str(module.parent)
        self.proc = spawn(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, cwd=REPO,
                          env=env)
        harness.wait_until(self._ready, 60, f"Envoy {name}")

    def _ready(self) -> bool:
        if self.proc.poll() is not None:
            raise RuntimeError(f"Envoy {self.name} exited:\n" + self.log_path.read_text()[-3000:])
        try:
            return harness.request(self.admin, "GET", "/ready", timeout=1).status == 200
        except OSError:
            return False

    def memory(self) -> dict:
        status = Path(f"/proc/{self.proc.pid}/status").read_text()
        rss_kb = int(re.search(r"VmRSS:\s+(\d+)", status).group(1))
        mem = json.loads(harness.request(self.admin, "GET", "/memory").body)
        return {"rss": rss_kb * 1024, "allocated": int(mem["allocated"]),
                "heap_size": int(mem["heap_size"])}

    def stat(self, name: str) -> int:
        body = harness.request(self.admin, "GET", f"/stats?filter=^{re.escape(name)}$").body.decode()
        m = re.search(r":\s*(\d+)", body)
        return int(m.group(1)) if m else 0

    def stop(self) -> None:
        stop(self.proc)


# The Envoys compared. "filter" is the shipped plugin configuration, whose budget_headers
# default is `all`; "filter-none" differs from it in budget_headers only.
SIDE_LABELS = {
    "plain": "plain Envoy (no wasm filter)",
    "noop": "do-nothing wasm filter (floor)",
    "replica": "agent-budget's host calls only (replica)",
    "filter": "agent-budget, budget_headers: all",
    "filter-none": "agent-budget, budget_headers: none",
    "noop-native": "do-nothing dynamic module (native floor)",
    "native": "agent-budget native dynamic module, budget_headers: all",
    "replica-native": "agent-budget's native ABI calls only (native replica)",
}
# Sides of the cost breakdown only (profile phase): the replica without part of its host
# calls, and Envoy without the shipped access log (the attribution records' line per call).
SIDE_LABELS.update({
    "replica-no-ledger": "replica without its 4 shared-data calls",
    "replica-no-headers": "replica without its 4 response-header writes",
    "plain-no-access-log": "plain Envoy, no access log",
    "filter-no-access-log": "agent-budget (all), no access log",
})
LOAD_SIDES = ["plain", "noop", "filter", "filter-none", "noop-native", "native"]
PROFILE_SIDES = ["plain", "noop", "replica", "filter"]
ABLATION_SIDES = PROFILE_SIDES + ["replica-no-ledger", "replica-no-headers",
                                  "plain-no-access-log", "filter-no-access-log",
                                  "noop-native", "replica-native", "native"]


def start_side(side: str, mock: Mock, name: str | None = None, **envoy_args) -> Envoy:
    """Starts one of SIDE_LABELS' Envoys (named `name`, default the side) in front of the mock."""
    name = name or side
    if side == "plain":
        return Envoy(name, "plain", mock.port, **envoy_args)
    if side == "noop":
        return Envoy(name, "wasm", mock.port, wasm=build_wasm_module("noop-filter", NOOP_LIB),
                     **envoy_args)
    if side == "replica":
        return Envoy(name, "wasm", mock.port,
                     wasm=build_wasm_module("hostcall-replica", REPLICA_LIB), **envoy_args)
    if side == "filter":
        return Envoy(name, "filter", mock.port, **envoy_args)
    if side == "native":
        return Envoy(name, "native", mock.port, **envoy_args)
    if side == "noop-native":
        return Envoy(name, "native", mock.port,
                     module=build_native_module("noop_native", NOOP_NATIVE_LIB), **envoy_args)
    if side == "replica-native":
        return Envoy(name, "native", mock.port,
                     module=build_native_module("replica_native", NATIVE_REPLICA_LIB), **envoy_args)
    if side == "filter-none":
        return Envoy(name, "filter", mock.port, budget_headers="none", **envoy_args)
    if side == "replica-no-ledger":
        source = (REPLICA_LIB.replace("let _ = hostcalls::get_shared_data(LEDGER);\n", "")
                  .replace("let _ = hostcalls::set_shared_data(LEDGER, Some(&VALUE), None);\n", "")
                  .replace("            charge();\n", ""))
        # Left: the uncalled charge() (on_configure's write goes too: nothing reads the key).
        assert source.count("shared_data") == 2 and "charge();" not in source, "replica changed"
        return Envoy(name, "wasm", mock.port, wasm=build_wasm_module("replica-no-ledger", source),
                     **envoy_args)
    if side == "replica-no-headers":
        source = "\n".join(line for line in REPLICA_LIB.split("\n")
                           if "set_http_response_header(" not in line)
        assert source.count("\n") == REPLICA_LIB.count("\n") - 4, "replica's header writes moved"
        return Envoy(name, "wasm", mock.port, wasm=build_wasm_module("replica-no-headers", source),
                     **envoy_args)
    if side in ("plain-no-access-log", "filter-no-access-log"):
        return Envoy(name, side.split("-")[0], mock.port, access_log=False, **envoy_args)
    raise ValueError(f"unknown side {side!r}: one of {', '.join(SIDE_LABELS)}")


def check_side(envoy: Envoy, side: str) -> None:
    """Both APIs answer 200 through the side, and agent-budget's headers are there exactly
    when its configuration asks for them (so the filter is metering, and budget_headers took)."""
    for api, (path, body) in APIS.items():
        r = harness.request(envoy.port, "POST", path, body.encode(), CLIENT_HEADERS)
        assert r.status == 200, (side, api, r.status, r.body[:300])
        has = "x-agent-budget-remaining-usd" in r.headers
        shows = side in ("filter", "native", "replica", "replica-no-ledger", "filter-no-access-log",
                         "replica-native")
        assert has == shows, (side, api, "x-agent-budget-remaining-usd", has)


# ---------------------------------------------------------------------------------------
# wrk

WRK_DONE = r'''
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "BENCHJSON {\"requests\":%d,\"duration_us\":%d,\"bytes\":%d,\"connect\":%d,\"read\":%d," ..
    "\"write\":%d,\"status\":%d,\"timeout\":%d,\"p50\":%.1f,\"p90\":%.1f,\"p99\":%.1f," ..
    "\"mean\":%.1f,\"max\":%.1f}\n",
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.status,
    e.timeout, latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency.mean, latency.max))
end
'''


def lua_string(s: str) -> str:
    return "[==[" + s + "]==]"


def wrk_script(api: str, extra_headers: dict[str, str] | None = None,
               pace_ms: int | None = None) -> Path:
    """wrk Lua script POSTing the API's request; with pace_ms every connection waits that
    long before each request (a fixed offered load well below saturation)."""
    path, body = APIS[api]
    headers = dict(CLIENT_HEADERS)
    headers.update(extra_headers or {})
    lines = ['wrk.method = "POST"', f"wrk.path = {lua_string(path)}",
             f"wrk.body = {lua_string(body)}"]
    lines += [f"wrk.headers[ {lua_string(k)} ] = {lua_string(v)}" for k, v in headers.items()]
    if pace_ms:
        # Exponentially distributed pauses (mean pace_ms): connections drift apart instead
        # of firing in lock-step bursts, so arrivals are close to Poisson.
        lines.append(f"delay = function() return math.floor(-{int(pace_ms)} * math.log(1 - math.random())) end")
    name = api + ("-" + "-".join(sorted(extra_headers)) if extra_headers else "")
    name += f"-paced{pace_ms}" if pace_ms else ""
    script = OUT / f"wrk-{name}.lua"
    script.write_text("\n".join(lines) + "\n" + WRK_DONE)
    return script


def run_wrk(port: int, script: Path, conns: int, duration: float,
            watch: dict[str, int] | None = None) -> dict:
    """One wrk run (one thread, pinned with the mock); watch maps a label to a process group
    whose CPU use is reported (percent of one core)."""
    watch = watch or {}
    before = {k: group_cpu_ticks(v) for k, v in watch.items()}
    busy0 = cpu_busy_ticks()
    ru0 = os.times()
    t0 = time.monotonic()
    cmd = ["taskset", "-c", CLIENT_CPU, "wrk", "-t1", f"-c{conns}", f"-d{max(1, round(duration))}s",
           "--timeout", "30s", "-s", str(script), f"http://127.0.0.1:{port}"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 60)
    wall = time.monotonic() - t0
    ru1 = os.times()
    busy1 = cpu_busy_ticks()
    line = next((ln for ln in out.stdout.splitlines() if ln.startswith("BENCHJSON ")), None)
    if line is None:
        raise RuntimeError(f"wrk failed: {out.stdout}\n{out.stderr}")
    r = json.loads(line[len("BENCHJSON "):])
    r["rps"] = r["requests"] / (r["duration_us"] / 1e6)
    r["errors"] = r["connect"] + r["read"] + r["write"] + r["status"] + r["timeout"]
    r["cpu"] = {k: 100.0 * (group_cpu_ticks(v) - before[k]) / HZ / wall for k, v in watch.items()}
    r["cpu"]["wrk"] = 100.0 * ((ru1.children_user + ru1.children_system)
                               - (ru0.children_user + ru0.children_system)) / wall
    r["core_busy"] = {k: 100.0 * (busy1[k] - busy0[k]) / HZ / wall for k in busy1}
    return r


def med(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


# ---------------------------------------------------------------------------------------
# phases

def wasm_sections(data: bytes) -> dict[str, int]:
    """Bytes per wasm section (custom sections by name)."""
    names = {1: "type", 2: "import", 3: "function", 4: "table", 5: "memory", 6: "global",
             7: "export", 8: "start", 9: "element", 10: "code", 11: "data", 12: "datacount"}

    def leb(pos: int) -> tuple[int, int]:
        result = shift = 0
        while True:
            b = data[pos]
            pos += 1
            result |= (b & 0x7F) << shift
            shift += 7
            if b < 0x80:
                return result, pos

    out: dict[str, int] = {}
    pos = 8
    while pos < len(data):
        sid = data[pos]
        size, body = leb(pos + 1)
        name = names.get(sid, f"id{sid}")
        if sid == 0:
            nlen, npos = leb(body)
            name = "custom:" + data[npos:npos + nlen].decode(errors="replace")
        out[name] = out.get(name, 0) + size
        pos = body + size
    return out


def phase_size(results: dict) -> None:
    """Release .wasm size under the shipped profile and with parts of it turned off."""
    shipped = dict(lto="true", opt="3", cgu="1", strip="debuginfo")
    variants = [
        ("shipped: opt-level=3, lto=fat, codegen-units=1, strip=debuginfo", None, shipped),
        ("profile off: opt-level=3, lto=off, codegen-units=16, strip=none", "no-lto",
         dict(lto="false", opt="3", cgu="16", strip="none")),
        ('opt-level="s" (rest shipped)', "opt-s", dict(shipped, opt='"s"')),
        ('opt-level="z" (rest shipped)', "opt-z", dict(shipped, opt='"z"')),
        ("shipped + strip=symbols (drops the name section)", "strip-symbols",
         dict(shipped, strip="symbols")),
        ('opt-level="z" + strip=symbols', "opt-z-strip", dict(shipped, opt='"z"', strip="symbols")),
    ]
    rows = []
    for label, dirname, p in variants:
        if dirname is None:
            wasm = WASM
            build_s = None
        else:
            env = dict(os.environ, CARGO_PROFILE_RELEASE_LTO=p["lto"],
                       CARGO_PROFILE_RELEASE_OPT_LEVEL=p["opt"].strip('"'),
                       CARGO_PROFILE_RELEASE_CODEGEN_UNITS=p["cgu"],
                       CARGO_PROFILE_RELEASE_STRIP=p["strip"])
            target_dir = REPO / "target/bench-size" / dirname
            t0 = time.monotonic()
            subprocess.run(["cargo", "build", "--quiet", "--release", "--lib", "--target",
                            "wasm32-wasip1", "--target-dir", str(target_dir)],
                           cwd=REPO, env=env, check=True)
            build_s = time.monotonic() - t0
            wasm = target_dir / "wasm32-wasip1/release/agent_budget.wasm"
        data = wasm.read_bytes()
        sections = wasm_sections(data)
        rows.append({"variant": label, "bytes": len(data),
                     "gzip_bytes": len(gzip.compress(data, 9)), "build_s": build_s,
                     "code": sections.get("code", 0), "data": sections.get("data", 0),
                     "names": sum(v for k, v in sections.items() if k == "custom:name"),
                     "debug": sum(v for k, v in sections.items() if k.startswith("custom:.debug")),
                     "sections": sections})
        log(f"size: {label}: {len(data)} bytes")
    results["size"] = rows


def phase_micro(results: dict) -> None:
    """criterion micro-benchmarks (core/benches/micro.rs), natively."""
    crit = REPO / "target/criterion"
    shutil.rmtree(crit, ignore_errors=True)  # only this run's estimates
    # Build first, so that the busy-time check below covers the measurements only.
    subprocess.run(["cargo", "bench", "--quiet", "-p", "agent-budget-core", "--features", "test-host", "--bench", "micro", "--no-run"], cwd=REPO,
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    busy0, ru0, t0 = cpu_busy_ticks(), os.times(), time.monotonic()
    subprocess.run(["cargo", "bench", "--quiet", "-p", "agent-budget-core", "--features", "test-host", "--bench", "micro", "--",
                    "--warm-up-time", "1", "--measurement-time", "2", "--noplot"],
                   cwd=REPO, check=True, stdout=subprocess.DEVNULL)
    busy1, ru1, wall = cpu_busy_ticks(), os.times(), time.monotonic() - t0
    ours = (ru1.children_user + ru1.children_system) - (ru0.children_user + ru0.children_system)
    other_pct = max(0.0, 100.0 * (sum(busy1.values()) - sum(busy0.values())) / HZ / wall
                    - 100.0 * ours / wall)
    rows = []
    for est in sorted(crit.glob("**/new/estimates.json")):
        bench = json.loads((est.parent / "benchmark.json").read_text())
        estimate = json.loads(est.read_text())["median"]
        median_ns = estimate["point_estimate"]
        ci = estimate["confidence_interval"]
        tp = bench.get("throughput") or {}
        row = {"bench": bench["full_id"], "median_ns": median_ns,
               "ci_pct": 100 * (ci["upper_bound"] - ci["lower_bound"]) / 2 / median_ns}
        if "Bytes" in tp:
            row["mb_s"] = tp["Bytes"] / (median_ns / 1e9) / 1e6
        rows.append(row)
    results["micro"] = rows
    results["micro_other_cpu"] = other_pct


def phase_load(results: dict, args, mock: Mock, sides: list[Envoy]) -> None:
    """Non-streaming throughput and latency: mock direct, then each side (sides[0] is plain
    Envoy, the baseline). Closed loop at each connection count (saturating from 16 on), plus
    64 connections paced to a fixed offered load below every side's capacity, where latency
    is not queueing. Within a repetition every side runs once; the order rotates."""
    assert sides[0].name == "plain", [t.name for t in sides]
    out = []
    watch_envoy = lambda e: {"envoy": e.proc.pid, "mock": mock.proc.pid}  # noqa: E731
    points = [(c, None) for c in args.conns] + [(64, args.paced_ms)] * bool(args.paced_ms)
    for api in args.apis:
        script = wrk_script(api)
        for target in sides:  # warm-up: connections, V8 tier-up
            run_wrk(target.port, script, 16, 2)
        for conns, pace in points:
            point_script = wrk_script(api, pace_ms=pace) if pace else script
            direct = run_wrk(mock.port, point_script, conns, args.direct_duration,
                             {"mock": mock.proc.pid})
            reps = []
            for rep in range(args.reps):
                k = rep % len(sides)
                reps.append({t.name: run_wrk(t.port, point_script, conns, args.duration,
                                             watch_envoy(t))
                             for t in sides[k:] + sides[:k]})
            row = summarize_load(api, conns, direct, reps, [t.name for t in sides])
            row["pace_ms"] = pace
            out.append(row)
            log(f"load {api} c={conns}{f' paced {pace} ms' if pace else ''}: " + ", ".join(
                f"{name} {x['rps']:.0f} req/s"
                + (f" ({x['ratio']:.3f}x, +p99 {x['d_p99_us']:.0f} us)" if name != "plain" else "")
                for name, x in row["sides"].items()))
    results["load"] = out


def summarize_load(api: str, conns: int, direct: dict, reps: list[dict], names: list[str]) -> dict:
    """Medians per side; ratios and added latencies are medians of the per-repetition
    side/plain figures."""
    base = [r["plain"] for r in reps]
    # Envoy CPU time per request (us): where the filter's cost shows at any load.
    cpu_us = lambda x: x["cpu"]["envoy"] / 100.0 * 1e6 / x["rps"]  # noqa: E731
    sides = {}
    for name in names:
        runs = [r[name] for r in reps]
        sides[name] = {
            "rps": med([x["rps"] for x in runs]),
            "ratio": med([b["rps"] / a["rps"] for a, b in zip(base, runs)]),
            "p50_us": med([x["p50"] for x in runs]),
            "p99_us": med([x["p99"] for x in runs]),
            "d_p50_us": med([b["p50"] - a["p50"] for a, b in zip(base, runs)]),
            "d_p99_us": med([b["p99"] - a["p99"] for a, b in zip(base, runs)]),
            "envoy_cpu": med([x["cpu"]["envoy"] for x in runs]),
            "cpu_us_per_req": med([cpu_us(x) for x in runs]),
            "resp_bytes": runs[0]["bytes"] / max(1, runs[0]["requests"]),
            "errors": sum(x["errors"] for x in runs),
        }
    every = [r[name] for r in reps for name in names]
    return {
        "api": api, "conns": conns, "reps": len(reps),
        "direct_rps": direct["rps"], "direct_p50_us": direct["p50"], "direct_p99_us": direct["p99"],
        "direct_mock_cpu": direct["cpu"]["mock"],
        "sides": sides,
        "core0_busy": med([x["core_busy"].get("cpu0", 0) for x in every]),
        "mock_cpu": med([x["cpu"]["mock"] for x in every]),
        "wrk_cpu": med([x["cpu"]["wrk"] for x in every]),
        "foreign_cpu": med([foreign_cpu(x) for x in every]),
        "errors": sum(x["errors"] for x in every) + direct["errors"],
        "raw": reps,
    }


def foreign_cpu(run: dict) -> float:
    """CPU (percent of a core) used by anything but the measured processes: other work on
    the machine, plus softirq time for loopback traffic not charged to a process."""
    ours = sum(run["cpu"].values())
    return max(0.0, sum(run["core_busy"].values()) - ours)


def stream_headers(chunks: int, delay_ms: int) -> dict[str, str]:
    h = dict(CLIENT_HEADERS)
    h.update({"x-mock-chunks": str(chunks), "x-mock-chunk-delay-ms": str(delay_ms),
              "x-mock-output-tokens": str(chunks)})
    return h


def stream_body() -> bytes:
    # The usual SDK request: no stream_options, so the filter adds include_usage and strips
    # the extra usage chunk again (its most expensive streaming path).
    body = json.loads(OPENAI_BODY)
    body["stream"] = True
    return json.dumps(body).encode()


def phase_stream(results: dict, args, plain: Envoy, filt: Envoy) -> None:
    """TTFT and whole-stream time of a 500-chunk OpenAI SSE stream, alternating sides."""
    headers = stream_headers(args.stream_chunks, args.stream_delay_ms)
    body = stream_body()
    for target in (plain, filt):
        for _ in range(2):
            bench_sse.timed_stream(target.port, "/v1/chat/completions", body, headers)
    samples = {"plain": [], "filter": []}
    for rep in range(args.stream_reps):
        order = (plain, filt) if rep % 2 == 0 else (filt, plain)
        for target in order:
            t = bench_sse.timed_stream(target.port, "/v1/chat/completions", body, headers)
            if t.status != 200:
                raise RuntimeError(f"stream via {target.name}: status {t.status}")
            samples[target.name].append(t)
    p, f = samples["plain"], samples["filter"]
    row = {
        "chunks": args.stream_chunks, "delay_ms": args.stream_delay_ms, "reps": len(p),
        "plain_ttft_ms": med([x.ttft_s * 1e3 for x in p]),
        "filter_ttft_ms": med([x.ttft_s * 1e3 for x in f]),
        "d_ttft_ms": med([(b.ttft_s - a.ttft_s) * 1e3 for a, b in zip(p, f)]),
        "plain_ttft_p90_ms": statistics.quantiles([x.ttft_s * 1e3 for x in p], n=10)[-1],
        "filter_ttft_p90_ms": statistics.quantiles([x.ttft_s * 1e3 for x in f], n=10)[-1],
        "plain_total_ms": med([x.total_s * 1e3 for x in p]),
        "filter_total_ms": med([x.total_s * 1e3 for x in f]),
        "d_total_ms": med([(b.total_s - a.total_s) * 1e3 for a, b in zip(p, f)]),
        "plain_events": med([x.events for x in p]), "filter_events": med([x.events for x in f]),
        "plain_bytes": med([x.body_bytes for x in p]), "filter_bytes": med([x.body_bytes for x in f]),
    }
    results["stream"] = row
    log(f"stream: TTFT plain {row['plain_ttft_ms']:.3f} ms, filter {row['filter_ttft_ms']:.3f} ms "
        f"(+{row['d_ttft_ms']:.3f}); total {row['plain_total_ms']:.0f} / {row['filter_total_ms']:.0f} ms")


def phase_memory(results: dict, args, mock: Mock) -> None:
    """Envoy memory with N streams open, without/with the filter, short and long streams.
    A fresh Envoy for each case, so allocator history does not carry over."""
    rows = []
    body = stream_body()
    for chunks in args.mem_chunks:
        for name in ("plain", "filter"):
            envoy = start_side(name, mock, name=f"mem-{name}-{chunks}")
            try:
                for _ in range(3):  # warm: VM contexts, first allocations
                    bench_sse.timed_stream(envoy.port, "/v1/chat/completions", body,
                                           stream_headers(10, 0))
                time.sleep(0.5)
                idle = envoy.memory()
                samples = []

                def sample(all_open: bool, envoy=envoy, samples=samples) -> None:
                    if all_open:
                        m = envoy.memory()
                        m["active"] = envoy.stat("http.llm_gateway.downstream_rq_active")
                        samples.append(m)

                t0 = time.monotonic()
                cpu0 = group_cpu_ticks(envoy.proc.pid)
                held = bench_sse.hold_streams(envoy.port, args.mem_streams, "/v1/chat/completions",
                                              body, stream_headers(chunks, args.mem_delay_ms), sample)
                took = time.monotonic() - t0
                cpu_s = (group_cpu_ticks(envoy.proc.pid) - cpu0) / HZ
            finally:
                envoy.stop()
            if held.completed != args.mem_streams or not samples:
                raise RuntimeError(f"memory run {name}/{chunks}: {held}, {len(samples)} samples")
            peak_rss = max(s["rss"] for s in samples)
            peak_alloc = max(s["allocated"] for s in samples)
            row = {"config": name, "chunks": chunks, "streams": args.mem_streams,
                   "delay_ms": args.mem_delay_ms, "seconds": took, "samples": len(samples),
                   "active_min": min(s["active"] for s in samples),
                   "idle_rss": idle["rss"], "peak_rss": peak_rss,
                   "idle_alloc": idle["allocated"], "peak_alloc": peak_alloc,
                   "rss_per_stream": (peak_rss - idle["rss"]) / args.mem_streams,
                   "alloc_per_stream": (peak_alloc - idle["allocated"]) / args.mem_streams,
                   "body_bytes_per_stream": held.body_bytes / args.mem_streams,
                   # Envoy CPU per SSE event passed (content chunks + ~4 framing events)
                   "cpu_us_per_event": cpu_s * 1e6 / (args.mem_streams * (chunks + 4)),
                   "envoy_cpu_pct": 100 * cpu_s / took}
            rows.append(row)
            log(f"memory {name} {chunks} chunks: +{row['rss_per_stream'] / 1024:.1f} KiB RSS, "
                f"+{row['alloc_per_stream'] / 1024:.1f} KiB allocated per open stream "
                f"({row['samples']} samples, >= {row['active_min']} active, {took:.1f}s)")
    results["memory"] = rows


def phase_litellm(results: dict, args, mock: Mock) -> None:
    """LiteLLM's proxy in front of the same mock, same wrk load (OpenAI chat)."""
    if not LITELLM.exists():
        raise RuntimeError(f"{LITELLM} missing: scripts/bench installs it")
    key = "sk-" + secrets.token_hex(24)
    port = harness.free_port()
    workdir = tmpdir("bench-litellm-")
    config = {
        "model_list": [{"model_name": "gpt-4o", "litellm_params": {
            "model": "openai/gpt-4o", "api_base": f"http://127.0.0.1:{mock.port}/v1",
            "api_key": "sk-mock"}}],
        "general_settings": {"master_key": key},
        # Spend tracking: a global proxy budget, costed per call from LiteLLM's bundled price
        # map. No database, so no per-key budgets (see BENCHMARKS.md).
        "litellm_settings": {"max_budget": 1_000_000, "budget_duration": "30d",
                             "telemetry": False},
    }
    (workdir / "config.yaml").write_text(yaml.safe_dump(config))
    env = dict(os.environ, LITELLM_LOCAL_MODEL_COST_MAP="True", LITELLM_LOG="ERROR",
               LITELLM_TELEMETRY="False", LITELLM_LOCAL_ANTHROPIC_BETA_HEADERS="True",
               NO_PROXY="*", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    for var in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "DATABASE_URL"):
        env.pop(var, None)
    workers = args.litellm_workers
    cmd = [str(LITELLM), "--config", str(workdir / "config.yaml"), "--host", "127.0.0.1",
           "--port", str(port), "--num_workers", str(workers)]
    lpath = workdir / "litellm.log"
    proc = spawn(cmd, stdout=open(lpath, "wb"), stderr=subprocess.STDOUT, env=env, cwd=workdir)
    t0 = time.monotonic()

    def ready() -> bool:
        if proc.poll() is not None:
            raise RuntimeError("LiteLLM exited:\n" + lpath.read_text(errors="replace")[-3000:])
        try:
            return harness.request(port, "GET", "/health/liveliness", timeout=1).status == 200
        except OSError:
            return False

    try:
        harness.wait_until(ready, 120, "LiteLLM")
        startup = time.monotonic() - t0
        script = wrk_script("openai", {"authorization": f"Bearer {key}"})
        check = harness.request(port, "POST", "/v1/chat/completions", OPENAI_BODY.encode(),
                                {"content-type": "application/json",
                                 "authorization": f"Bearer {key}"})
        if check.status != 200:
            raise RuntimeError(f"LiteLLM answered {check.status}: {check.body[:500]!r}")
        spend_header = check.headers.get("x-litellm-response-cost")
        run_wrk(port, script, 16, 3)  # warm-up
        rows = []
        for conns in args.conns:
            reps = [run_wrk(port, script, conns, args.duration, {"litellm": proc.pid})
                    for _ in range(args.reps)]
            rows.append({"conns": conns, "rps": med([r["rps"] for r in reps]),
                         "best_rps": max(r["rps"] for r in reps),
                         "all_rps": [round(r["rps"]) for r in reps],
                         "cpu_ms_per_req": med([r["cpu"]["litellm"] / 100 * 1e3 / r["rps"] for r in reps]),
                         "p50_us": med([r["p50"] for r in reps]),
                         "p99_us": med([r["p99"] for r in reps]),
                         "cpu": med([r["cpu"]["litellm"] for r in reps]),
                         "errors": sum(r["errors"] for r in reps), "raw": reps})
            log(f"litellm c={conns}: {rows[-1]['rps']:.0f} req/s, p50 {rows[-1]['p50_us'] / 1e3:.1f} ms")
        version = subprocess.run([str(REPO / ".venv-litellm/bin/python"), "-c",
                                  "import importlib.metadata as m; print(m.version('litellm'))"],
                                 capture_output=True, text=True).stdout.strip()
        results["litellm"] = {"version": version, "workers": workers, "startup_s": startup,
                              "response_cost_header": spend_header, "rows": rows}
    finally:
        stop(proc)


WASM_CARGO = """[package]
name = "{name}"
version = "0.0.0"
edition = "2021"
publish = false

[lib]
crate-type = ["cdylib"]

[dependencies]
proxy-wasm = "=0.2.5"
log = "0.4"

[profile.release]
opt-level = 3
lto = true
codegen-units = 1
panic = "abort"
strip = "debuginfo"

[workspace]
"""

NOOP_LIB = """//! A proxy-wasm HTTP filter that does nothing (every callback continues): what any Rust
//! proxy-wasm filter costs in this Envoy before it does any work. Generated by scripts/bench.
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{ContextType, LogLevel};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(NoopRoot) });
}}

struct NoopRoot;
impl Context for NoopRoot {}
impl RootContext for NoopRoot {
    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Noop))
    }
}

struct Noop;
impl Context for Noop {}
impl HttpContext for Noop {}
"""

# The host calls agent-budget (budget_headers: all) makes on one non-streaming call, from
# its wasm:trace log (the hostcalls phase), in the same callbacks, with the same sizes, and
# nothing else: no parsing, no pricing. Root ticks are left out, as in the hostcalls count.
REPLICA_LIB = """//! Makes the proxy-wasm host calls agent-budget makes for one non-streaming call, in the
//! same callbacks, and does no other work. Generated by scripts/bench.
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel};

const LEDGER: &str = "replica/v1/d/00007";
const VALUE: [u8; 88] = [7; 88];
const RECORD: [u8; 184] = [b'x'; 184];

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(ReplicaRoot) });
}}

struct ReplicaRoot;
impl Context for ReplicaRoot {}
impl RootContext for ReplicaRoot {
    fn on_configure(&mut self, _size: usize) -> bool {
        let _ = hostcalls::set_shared_data(LEDGER, Some(&VALUE), None);
        true
    }
    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Replica))
    }
}

fn charge() {
    if let Ok((value, cas)) = hostcalls::get_shared_data(LEDGER) {
        let value = value.unwrap_or_default();
        let _ = hostcalls::set_shared_data(LEDGER, Some(&value), cas);
    }
}

struct Replica;
impl Context for Replica {}
impl HttpContext for Replica {
    fn on_http_request_headers(&mut self, _n: usize, eos: bool) -> Action {
        let _ = self.get_http_request_headers();
        let _ = hostcalls::get_current_time();
        let _ = hostcalls::get_shared_data(LEDGER);
        // hold_request_headers, as shipped: the headers wait for the body.
        if eos {
            Action::Continue
        } else {
            Action::Pause
        }
    }
    fn on_http_request_body(&mut self, size: usize, eos: bool) -> Action {
        if !eos {
            return Action::Pause;
        }
        let _ = self.get_http_request_body(0, size);
        // agent-budget books the reservation with the ledger value its headers callback read.
        let _ = hostcalls::set_shared_data(LEDGER, Some(&VALUE), None);
        Action::Continue
    }
    fn on_http_response_headers(&mut self, _n: usize, _eos: bool) -> Action {
        let _ = self.get_http_response_headers();
        self.set_http_response_header("x-agent-budget-period", Some("daily"));
        self.set_http_response_header("x-agent-budget-limit-usd", Some("1000000.000000"));
        self.set_http_response_header("x-agent-budget-remaining-usd", Some("999999.993174"));
        self.set_http_response_header("x-agent-budget-reset", Some("30491"));
        Action::Continue
    }
    fn on_http_response_body(&mut self, size: usize, eos: bool) -> Action {
        if size > 0 {
            let _ = self.get_http_response_body(0, size);
        }
        if eos {
            charge();
            let _ = hostcalls::set_property(vec!["agent_budget"], Some(&RECORD));
        }
        Action::Continue
    }
}
"""


NATIVE_CARGO = """[package]
name = "{name}"
version = "0.0.0"
edition = "2021"
publish = false

[lib]
crate-type = ["cdylib"]

[profile.release]
opt-level = 3
lto = true
codegen-units = 1
panic = "abort"

[workspace]
"""

# The hooks Envoy resolves by name in an HTTP filter module, as native/src/ffi.rs defines them.
NATIVE_HOOKS = sorted(set(re.findall(r"extern \"C\" fn (envoy_dynamic_module_on_\w+)",
                                     (REPO / "native/src/ffi.rs").read_text())))
NATIVE_NONNULL = ("envoy_dynamic_module_on_http_filter_config_new",
                  "envoy_dynamic_module_on_http_filter_new")
# A dynamic module that does nothing: every hook answers 0 (continue), config and filter
# objects are one static byte. What any native HTTP filter costs in this Envoy before it does
# any work. The hooks take no parameters here: under the x86-64 C calling convention the
# arguments Envoy passes in registers are simply ignored.
NOOP_NATIVE_LIB = (
    "//! Generated by scripts/bench: a do-nothing Envoy dynamic module (the native floor).\n"
    "#![allow(clippy::missing_safety_doc)]\n"
    "static OBJECT: u8 = 0;\n"
    "#[no_mangle]\npub extern \"C\" fn envoy_dynamic_module_on_program_init() -> *const u8 "
    "{ b\"v0.2.0\\0\".as_ptr() }\n"
    + "".join(f"#[no_mangle]\npub extern \"C\" fn {hook}() -> *const u8 {{ &OBJECT }}\n"
              for hook in NATIVE_NONNULL)
    + "".join(f"#[no_mangle]\npub extern \"C\" fn {hook}() -> u64 {{ 0 }}\n"
              for hook in NATIVE_HOOKS
              if hook not in NATIVE_NONNULL and hook != "envoy_dynamic_module_on_program_init"))

# The ABI calls agent-budget's native module (budget_headers: all) makes on one non-streaming
# call, in the same hooks, with the same sizes, and nothing else: no parsing, no pricing, no
# ledger (the module's ledger is its own memory, not an Envoy call). Its gap to the native
# floor is Envoy's work on behalf of any native filter that meters this way.
NATIVE_REPLICA_HOOKS = {
    "envoy_dynamic_module_on_program_init", "envoy_dynamic_module_on_http_filter_config_new",
    "envoy_dynamic_module_on_http_filter_new", "envoy_dynamic_module_on_http_filter_destroy",
    "envoy_dynamic_module_on_http_filter_request_headers",
    "envoy_dynamic_module_on_http_filter_request_body",
    "envoy_dynamic_module_on_http_filter_response_headers",
    "envoy_dynamic_module_on_http_filter_response_body",
}
NATIVE_REPLICA_LIB = r"""//! Makes the dynamic-module ABI calls agent-budget's native module makes for one
//! non-streaming call, in the same hooks, and does no other work. Generated by scripts/bench.
#![allow(clippy::missing_safety_doc)]
use std::ffi::c_void;

#[repr(C)]
#[derive(Clone, Copy)]
pub struct Buf { ptr: *const u8, len: usize }
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Header { key: *const u8, key_len: usize, value: *const u8, value_len: usize }

const EMPTY: Buf = Buf { ptr: std::ptr::null(), len: 0 };
const NO_HEADER: Header = Header { key: std::ptr::null(), key_len: 0, value: std::ptr::null(), value_len: 0 };
const RECORD: [u8; 184] = [b'x'; 184];
static OBJECT: u8 = 0;

extern "C" {
    fn envoy_dynamic_module_callback_http_get_headers_size(f: *mut c_void, kind: u32) -> usize;
    fn envoy_dynamic_module_callback_http_get_headers(f: *mut c_void, kind: u32, out: *mut Header) -> bool;
    fn envoy_dynamic_module_callback_http_set_header(f: *mut c_void, kind: u32, key: Buf, value: Buf) -> bool;
    fn envoy_dynamic_module_callback_http_get_body_chunks_size(f: *mut c_void, kind: u32) -> usize;
    fn envoy_dynamic_module_callback_http_get_body_chunks(f: *mut c_void, kind: u32, out: *mut Buf) -> bool;
    fn envoy_dynamic_module_callback_http_get_body_size(f: *mut c_void, kind: u32) -> usize;
    fn envoy_dynamic_module_callback_http_received_buffered_request_body(f: *mut c_void) -> bool;
    fn envoy_dynamic_module_callback_http_set_filter_state_bytes(f: *mut c_void, key: Buf, value: Buf) -> bool;
}

fn of(bytes: &[u8]) -> Buf { Buf { ptr: bytes.as_ptr(), len: bytes.len() } }

unsafe fn read_headers(f: *mut c_void, kind: u32) -> usize {
    let n = envoy_dynamic_module_callback_http_get_headers_size(f, kind);
    let mut headers = vec![NO_HEADER; n];
    if n > 0 { envoy_dynamic_module_callback_http_get_headers(f, kind, headers.as_mut_ptr()); }
    headers.iter().map(|h| h.key_len + h.value_len).sum()
}

unsafe fn read_body(f: *mut c_void, kind: u32) -> Vec<u8> {
    let n = envoy_dynamic_module_callback_http_get_body_chunks_size(f, kind);
    let mut chunks = vec![EMPTY; n];
    let mut body = Vec::new();
    if n > 0 && envoy_dynamic_module_callback_http_get_body_chunks(f, kind, chunks.as_mut_ptr()) {
        for c in &chunks { body.extend_from_slice(std::slice::from_raw_parts(c.ptr, c.len)); }
    }
    body
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_program_init() -> *const u8 { b"v0.2.0\0".as_ptr() }
#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_config_new() -> *const u8 { &OBJECT }
#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_new() -> *mut u8 {
    Box::into_raw(Box::new([0u8; 256])).cast()
}
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_destroy(stream: *mut [u8; 256]) {
    if !stream.is_null() { drop(Box::from_raw(stream)); }
}
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_request_headers(f: *mut c_void, _s: *const c_void, eos: bool) -> u32 {
    std::hint::black_box(read_headers(f, 0));
    // The headers wait for the body, as agent-budget's native module holds them.
    u32::from(!eos)
}
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_request_body(f: *mut c_void, _s: *const c_void, eos: bool) -> u32 {
    let size = envoy_dynamic_module_callback_http_get_body_size(f, 0);
    if !eos && size == 0 { return 1; }
    let mut body = Vec::new();
    if !envoy_dynamic_module_callback_http_received_buffered_request_body(f) { body = read_body(f, 1); }
    body.extend(read_body(f, 0));
    std::hint::black_box(body);
    0
}
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_response_headers(f: *mut c_void, _s: *const c_void, _eos: bool) -> u32 {
    std::hint::black_box(read_headers(f, 2));
    for (k, v) in [("x-agent-budget-period", "daily"), ("x-agent-budget-limit-usd", "1000000.000000"),
                   ("x-agent-budget-remaining-usd", "999999.993174"), ("x-agent-budget-reset", "30491")] {
        envoy_dynamic_module_callback_http_set_header(f, 2, of(k.as_bytes()), of(v.as_bytes()));
    }
    0
}
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_response_body(f: *mut c_void, _s: *const c_void, eos: bool) -> u32 {
    let _ = envoy_dynamic_module_callback_http_get_body_size(f, 2);
    std::hint::black_box(read_body(f, 2));
    if eos {
        envoy_dynamic_module_callback_http_set_filter_state_bytes(f, of(b"wasm.agent_budget"), of(&RECORD));
    }
    0
}
""" + "".join(f"#[no_mangle]\npub extern \"C\" fn {hook}() -> u64 {{ 0 }}\n"
              for hook in NATIVE_HOOKS if hook not in NATIVE_REPLICA_HOOKS)


@functools.lru_cache(maxsize=None)
def build_native_module(name: str, source: str) -> Path:
    """Builds a generated dynamic module in .work/bench/<name>: lib<name>.so."""
    crate = OUT / name
    (crate / "src").mkdir(parents=True, exist_ok=True)
    cargo = NATIVE_CARGO.replace("{name}", name)
    for path, text in ((crate / "Cargo.toml", cargo), (crate / "src/lib.rs", source)):
        if not path.exists() or path.read_text() != text:
            path.write_text(text)
    subprocess.run(["cargo", "build", "--quiet", "--release"], cwd=crate, check=True)
    return crate / "target/release" / f"lib{name}.so"


@functools.lru_cache(maxsize=None)
def build_wasm_module(name: str, source: str) -> Path:
    """Builds a generated proxy-wasm module (same SDK version and release profile as
    agent-budget) in .work/bench/<name>, for the ablation."""
    crate = OUT / name
    (crate / "src").mkdir(parents=True, exist_ok=True)
    cargo = WASM_CARGO.replace("{name}", name)
    if not (crate / "Cargo.toml").exists() or (crate / "Cargo.toml").read_text() != cargo:
        (crate / "Cargo.toml").write_text(cargo)
    if not (crate / "src/lib.rs").exists() or (crate / "src/lib.rs").read_text() != source:
        (crate / "src/lib.rs").write_text(source)
    if not (crate / "Cargo.lock").exists():
        shutil.copy(REPO / "Cargo.lock", crate / "Cargo.lock")
    subprocess.run(["cargo", "build", "--quiet", "--release", "--target", "wasm32-wasip1"],
                   cwd=crate, check=True)
    return crate / "target/wasm32-wasip1/release" / (name.replace("-", "_") + ".wasm")


def phase_hostcalls(results: dict, mock: Mock) -> None:
    """VM crossings per request, counted from Envoy's wasm trace log on the last of three
    identical requests (warmed up): calls from the VM to Envoy, Envoy's calls into the VM's
    allocator for what those calls return, and the callbacks Envoy makes into the VM."""
    # (label, streaming, path, body, headers)
    openai = ("openai non-streaming", False, "/v1/chat/completions", OPENAI_BODY.encode(),
              CLIENT_HEADERS)
    anthropic = ("anthropic non-streaming", False, "/v1/messages", ANTHROPIC_BODY.encode(),
                 CLIENT_HEADERS)
    stream = ("openai stream, 50 chunks 1 ms apart", True, "/v1/chat/completions", stream_body(),
              stream_headers(50, 1))
    cases = [("filter", openai), ("filter-none", openai), ("filter", anthropic),
             ("filter-none", anthropic), ("noop", openai), ("replica", openai), ("filter", stream)]
    rows = []
    for side, (label, streaming, path, body, headers) in cases:
        envoy = start_side(side, mock, name="trace", log_level="info",
                           extra_args=["--component-log-level", "wasm:trace"], cpus=None)
        try:
            for _ in range(3):
                r = harness.request(envoy.port, "POST", path, body, headers)
                assert r.status == 200, (side, label, r.status)
        finally:
            envoy.stop()  # flushes the log
        counts = count_host_calls(envoy.log_path.read_text(errors="replace"))
        rows.append(dict(label=label, side=side, streaming=streaming, **counts))
        log(f"hostcalls {side} {label}: {counts['host_calls']} host calls, {counts['allocs']} "
            f"allocations, {counts['callbacks']} callbacks = {counts['crossings']} crossings")
    results["hostcalls"] = rows


_TRACE = re.compile(r"\[(host->vm|vm->host)\] (?:env\.)?([a-z_]+)\(([^)]*)\)")


def count_host_calls(text: str) -> dict:
    """VM crossings of the last HTTP context in a wasm:trace log (root ticks left out):
    host_calls (VM -> Envoy), allocs (Envoy -> the VM's proxy_on_memory_allocate, for data a
    host call returns), callbacks (every other Envoy -> VM call, proxy_on_context_create
    included), and their sum."""
    contexts: dict[str, list[tuple[str, str]]] = {}
    current = None
    in_tick = False
    for line in text.splitlines():
        m = _TRACE.search(line)
        if not m:
            if "proxy_on_tick return" in line:
                in_tick = False
            continue
        direction, name, call_args = m.groups()
        if name == "proxy_on_tick":
            in_tick = True
            continue
        if in_tick:
            continue
        parts = [a.strip() for a in call_args.split(",")]
        if name == "proxy_on_context_create" and len(parts) == 2 and parts[1] != "0":
            current = parts[0]
            contexts[current] = []
        if current is not None:
            contexts[current].append((direction, name))
            if name == "proxy_on_delete":
                current = None
    calls = contexts[list(contexts)[-1]] if contexts else []

    def tally(pairs) -> dict[str, int]:
        out: dict[str, int] = {}
        for _, name in pairs:
            out[name] = out.get(name, 0) + 1
        return dict(sorted(out.items(), key=lambda kv: (-kv[1], kv[0])))

    host = [c for c in calls if c[0] == "vm->host"]
    allocs = [c for c in calls if c[0] == "host->vm" and c[1] == "proxy_on_memory_allocate"]
    callbacks = [c for c in calls if c[0] == "host->vm" and c[1] != "proxy_on_memory_allocate"]
    return {"host_calls": len(host), "allocs": len(allocs), "callbacks": len(callbacks),
            "crossings": len(calls), "host_by_name": tally(host),
            "callbacks_by_name": tally(callbacks)}


def phase_profile(results: dict, args, mock: Mock, sides: list[Envoy]) -> None:
    """What bounds the filter's throughput (OpenAI, c=64), measured two ways, on PROFILE_SIDES.

    Ablation: plain Envoy, the same Envoy with a do-nothing Rust proxy-wasm filter (same SDK,
    same profile) in agent_budget's place, with the host-call replica there, and agent-budget;
    interleaved repetitions.
    Profile: perf (cpu-clock, DWARF call chains) on each Envoy under the same load. Samples
    whose leaf is V8-generated code are the filter's wasm; samples in Envoy/libc/kernel code
    with a V8-generated frame above them are host calls made by the wasm (the proxy-wasm ABI
    in Envoy, and the V8 runtime glue); the rest is Envoy outside the VM, including the
    callbacks' entry into V8.
    """
    assert sides[0].name == "plain", [t.name for t in sides]
    script = wrk_script("openai")
    for t in sides:  # warm-up
        run_wrk(t.port, script, 16, 2)
    reps = []
    for rep in range(args.reps):
        k = rep % len(sides)
        reps.append({t.name: run_wrk(t.port, script, 64, args.duration,
                                     {"envoy": t.proc.pid, "mock": mock.proc.pid})
                     for t in sides[k:] + sides[:k]})
    cpu_us = lambda x: x["cpu"]["envoy"] / 100.0 * 1e6 / x["rps"]  # noqa: E731
    ablation = {}
    for t in sides:
        ablation[t.name] = {
            "rps": med([r[t.name]["rps"] for r in reps]),
            "ratio": med([r[t.name]["rps"] / r["plain"]["rps"] for r in reps]),
            "cpu_us_per_req": med([cpu_us(r[t.name]) for r in reps]),
            "p50_us": med([r[t.name]["p50"] for r in reps]),
            "envoy_cpu": med([r[t.name]["cpu"]["envoy"] for r in reps]),
        }
    log("ablation c=64: " + ", ".join(
        f"{k} {v['rps']:.0f} req/s ({v['ratio']:.3f}x, {v['cpu_us_per_req']:.1f} us CPU/req)"
        for k, v in ablation.items()))
    profiles = {}
    perf_sides = [t for t in sides if t.name in PROFILE_SIDES]
    if shutil.which("perf") and subprocess.run(
            ["perf", "record", "-e", "cpu-clock", "-o", "/dev/null", "true"],
            capture_output=True).returncode == 0:
        for t in perf_sides:
            profiles[t.name] = perf_profile(t, mock, script, args.profile_duration)
            p = profiles[t.name]
            log(f"profile {t.name}: {p['cpu_us_per_req']:.1f} us CPU/req: wasm code "
                f"{p['us']['wasm']:.1f}, host calls {p['us']['host_calls']:.1f}, Envoy outside "
                f"the VM {p['us']['outside']:.1f} (kernel {p['us']['kernel']:.1f})")
    results["profile"] = {"ablation": ablation, "perf": profiles, "raw": reps}


def perf_profile(target: Envoy, mock: Mock, script: Path, duration: float) -> dict:
    data = OUT / f"perf-{target.name}.data"
    rec = subprocess.Popen(["perf", "record", "-e", "cpu-clock", "-F", "1000", "--call-graph",
                            "dwarf,16384", "-p", str(target.proc.pid), "-o", str(data)],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(0.5)
    r = run_wrk(target.port, script, 64, duration, {"envoy": target.proc.pid})
    rec.send_signal(signal.SIGINT)
    rec.wait(120)
    text = subprocess.run(["perf", "script", "-i", str(data), "-F", "comm,tid,ip,sym,dso"],
                          capture_output=True, text=True).stdout
    data.unlink(missing_ok=True)
    shares = classify_samples(text)
    per_req = r["cpu"]["envoy"] / 100.0 * 1e6 / r["rps"]
    return {"rps": r["rps"], "cpu_us_per_req": per_req, "samples": shares.pop("samples"),
            "unwound": shares.pop("unwound"), "share": shares,
            "us": {k: v * per_req for k, v in shares.items()}}


def classify_samples(text: str) -> dict:
    def kind(frame: str) -> str:
        if "[JIT]" in frame or ("/perf-" in frame and ".map" in frame):
            return "jit"
        if "kernel" in frame:
            return "kernel"
        return "user"

    counts = {"wasm": 0, "host_calls": 0, "outside": 0, "kernel": 0}
    unwound = total = 0
    for sample in text.split("\n\n"):
        frames = [ln.strip() for ln in sample.strip().splitlines()[1:] if ln.strip()]
        if not frames:
            continue
        total += 1
        kinds = [kind(f) for f in frames]
        if kinds[0] == "jit":
            counts["wasm"] += 1
        elif "jit" in kinds:
            counts["host_calls"] += 1
        else:
            counts["outside"] += 1
            if kinds[0] == "kernel":
                counts["kernel"] += 1  # a part of "outside"
            if any("start_thread" in f or "clone" in f or "__libc_start" in f for f in frames):
                unwound += 1
    total = max(total, 1)
    shares = {k: v / total for k, v in counts.items()}
    shares["samples"] = total
    shares["unwound"] = unwound / max(1, counts["outside"])
    return shares


# ---------------------------------------------------------------------------------------
# report


def conns_label(r: dict) -> str:
    return f"{r['conns']}, paced {r['pace_ms']} ms" if r.get("pace_ms") else str(r["conns"])


def fmt(v, spec=".0f", unit=""):
    return "n/a" if v is None else f"{v:{spec}}{unit}"


def machine_info() -> dict:
    cpuinfo = Path("/proc/cpuinfo").read_text()
    model = re.search(r"model name\s*:\s*(.+)", cpuinfo)
    mem_kb = int(re.search(r"MemTotal:\s+(\d+)", Path("/proc/meminfo").read_text()).group(1))

    def version(cmd):
        try:
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
            return (out.stdout + out.stderr).strip().splitlines()[0]
        except Exception:  # noqa: BLE001
            return "n/a"

    return {
        "nproc": os.cpu_count(), "cpu": model.group(1) if model else "?",
        "mem_gib": round(mem_kb / 1024 / 1024, 1), "kernel": platform.release(),
        "envoy": version([str(ENVOY), "--version"]).split("version:")[-1].strip(),
        "wrk": version(["wrk", "--version"]),
        "rustc": version(["rustc", "--version"]), "python": platform.python_version(),
        "perf": version(["perf", "--version"]),
        "loadavg_start": Path("/proc/loadavg").read_text().split()[:3],
    }


SIDE_SHORT = {"plain": "plain", "noop": "floor", "replica": "replica", "filter": "all",
              "filter-none": "none", "noop-native": "native floor", "native": "native",
              "replica-native": "native replica"}


def load_side_names(results: dict) -> list[str]:
    rows = results.get("load") or []
    return list(rows[0]["sides"]) if rows else []


def render(results: dict) -> str:
    L = []
    names = load_side_names(results)
    short = " / ".join(SIDE_SHORT[n] for n in names)
    others = [n for n in names if n != "plain"]
    if "load" in results:
        L.append("### 1. Non-streaming throughput (req/s, medians; ratio to plain Envoy in brackets)")
        L.append("")
        L.append("| API | conns | mock direct | " + " | ".join(SIDE_LABELS[n] for n in names) + " |")
        L.append("|---|---:|---:|" + "---:|" * len(names))
        for r in results["load"]:
            cells = []
            for n in names:
                x = r["sides"][n]
                if n == "plain":
                    cells.append(fmt(x["rps"]))
                else:
                    ratio = f"{x['ratio']:.3f}x"
                    cells.append(f"{fmt(x['rps'])} ({'**' + ratio + '**' if n.startswith('filter') else ratio})")
            L.append(f"| {r['api']} | {conns_label(r)} | {fmt(r['direct_rps'])} | " + " | ".join(cells) + " |")
        L.append("")
        L.append(f"Latency and Envoy CPU per request (medians), one figure per side in the order "
                 f"{short} (the columns above). Added p99 is the median of the per-repetition "
                 "differences to plain Envoy.")
        L.append("")
        L.append(f"| API | conns | p50 (ms) {short} | p99 (ms) {short} | "
                 f"**added p99** (ms) {' / '.join(SIDE_SHORT[n] for n in others)} | "
                 f"Envoy CPU us/req {short} | errors |")
        L.append("|---|---:|---:|---:|---:|---:|---:|")
        for r in results["load"]:
            sd = r["sides"]
            L.append(
                f"| {r['api']} | {conns_label(r)} | "
                + " / ".join(f"{sd[n]['p50_us'] / 1e3:.3f}" for n in names) + " | "
                + " / ".join(f"{sd[n]['p99_us'] / 1e3:.3f}" for n in names) + " | **"
                + " / ".join(f"{sd[n]['d_p99_us'] / 1e3:+.3f}" for n in others) + "** | "
                + " / ".join(f"{sd[n]['cpu_us_per_req']:.1f}" for n in names)
                + f" | {r['errors']} |")
        L.append("")
    if "hostcalls" in results:
        L.append("### 2. VM crossings per call (wasm:trace, the last of 3 identical requests)")
        L.append("")
        L.append("Host calls are calls from the VM into Envoy (the target counts these); VM "
                 "allocations are Envoy's proxy_on_memory_allocate calls into the VM for data a "
                 "host call returns; callbacks are Envoy's other calls into the VM "
                 "(proxy_on_context_create to proxy_on_delete). Crossings = all three.")
        L.append("")
        L.append("| request | Envoy with | **host calls** | VM allocations | callbacks | "
                 "crossings per call | host calls by name | callbacks by name |")
        L.append("|---|---|---:|---:|---:|---:|---|---|")
        strip = lambda d: ", ".join(f"{k.replace('proxy_', '')} {v}" for k, v in d.items())  # noqa: E731
        for r in results["hostcalls"]:
            L.append(f"| {r['label']} | {SIDE_LABELS[r['side']]} | **{r['host_calls']}** | {r['allocs']} | "
                     f"{r['callbacks']} | {r['crossings']} | {strip(r['host_by_name'])} | "
                     f"{strip(r['callbacks_by_name'])} |")
        L.append("")
    if "load" in results:
        L.append(f"Context per load point (medians): Envoy CPU % {short}; mock CPU %; wrk CPU %; "
                 "core 0 busy %; CPU used by anything else (other processes, softirq) %; "
                 f"response bytes {short}.")
        L.append("")
        L.append(f"| API | conns | Envoy CPU % {short} | mock % | wrk % | core 0 busy % | other % | "
                 f"bytes/resp {short} |")
        L.append("|---|---:|---:|---:|---:|---:|---:|---:|")
        for r in results["load"]:
            sd = r["sides"]
            L.append(f"| {r['api']} | {conns_label(r)} | "
                     + " / ".join(f"{sd[n]['envoy_cpu']:.0f}" for n in names)
                     + f" | {r['mock_cpu']:.0f} | {r['wrk_cpu']:.0f} | {r['core0_busy']:.0f} | "
                     f"{r['foreign_cpu']:.0f} | " + " / ".join(f"{sd[n]['resp_bytes']:.0f}" for n in names)
                     + " |")
        L.append("")
    if "stream" in results:
        s = results["stream"]
        L.append(f"### 3a. Streaming: OpenAI SSE, {s['chunks']} chunks, {s['delay_ms']} ms apart "
                 f"({s['reps']} streams per side, medians; agent-budget as shipped)")
        L.append("")
        L.append("| | plain Envoy | with filter | **difference** |")
        L.append("|---|---:|---:|---:|")
        L.append(f"| time to first event | {s['plain_ttft_ms']:.3f} ms | {s['filter_ttft_ms']:.3f} ms | "
                 f"**{s['d_ttft_ms']:+.3f} ms** |")
        L.append(f"| TTFT p90 | {s['plain_ttft_p90_ms']:.3f} ms | {s['filter_ttft_p90_ms']:.3f} ms | |")
        L.append(f"| whole stream | {s['plain_total_ms']:.1f} ms | {s['filter_total_ms']:.1f} ms | "
                 f"**{s['d_total_ms']:+.1f} ms** |")
        L.append(f"| events / body bytes seen by the client | {s['plain_events']:.0f} / {s['plain_bytes']:.0f} | "
                 f"{s['filter_events']:.0f} / {s['filter_bytes']:.0f} | |")
        L.append("")
    if "memory" in results:
        rows = results["memory"]
        L.append(f"### 3b. Envoy memory with {rows[0]['streams']} streams open "
                 f"({rows[0]['delay_ms']} ms between chunks; peak while all were open minus idle)")
        L.append("")
        L.append("| config | chunks per stream | RSS idle -> peak (MiB) | **RSS per stream** | "
                 "allocated idle -> peak (MiB) | **allocated per stream** | samples | run (s) | "
                 "Envoy CPU % / us per event |")
        L.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
        for r in rows:
            L.append(f"| {r['config']} | {r['chunks']} | {r['idle_rss'] / 2**20:.1f} -> {r['peak_rss'] / 2**20:.1f} | "
                     f"**{r['rss_per_stream'] / 1024:.1f} KiB** | "
                     f"{r['idle_alloc'] / 2**20:.1f} -> {r['peak_alloc'] / 2**20:.1f} | "
                     f"**{r['alloc_per_stream'] / 1024:.1f} KiB** | {r['samples']} | {r['seconds']:.1f} | "
                     f"{r['envoy_cpu_pct']:.0f} / {r['cpu_us_per_event']:.1f} |")
        L.append("")
    if "litellm" in results:
        ll = results["litellm"]
        L.append(f"### 4. Against LiteLLM proxy {ll['version']} ({ll['workers']} uvicorn workers, "
                 "not pinned: both cores; no database), OpenAI chat, same mock and load")
        L.append("")
        L.append("Ratios are against LiteLLM's best repetition (uvicorn spreads keep-alive connections "
                 "over its workers unevenly, so a repetition can land on one worker). Envoy + filter "
                 "is agent-budget as shipped (budget_headers: all).")
        L.append("")
        L.append("| conns | LiteLLM req/s: median (reps) | Envoy + filter req/s | **ours / LiteLLM best** | "
                 "LiteLLM p50 / p99 (ms) | LiteLLM added p50 vs mock direct | Envoy + filter added p50 vs mock direct | "
                 "CPU per request: LiteLLM / Envoy + filter | errors |")
        L.append("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for r in ll["rows"]:
            row = load_point(results, "openai", r["conns"])
            ours = row and row["sides"].get("filter")
            best = r.get("best_rps", r["rps"])
            ratio = ours["rps"] / best if ours and best else None
            reps = ", ".join(str(x) for x in r.get("all_rps", []))
            L.append(f"| {r['conns']} | {r['rps']:.0f} ({reps}) | {fmt(ours and ours['rps'])} | "
                     f"**{fmt(ratio, '.1f', 'x')}** | {r['p50_us'] / 1e3:.1f} / {r['p99_us'] / 1e3:.1f} | "
                     + (f"{(r['p50_us'] - row['direct_p50_us']) / 1e3:+.2f} ms | "
                        f"{(ours['p50_us'] - row['direct_p50_us']) / 1e3:+.3f} ms | "
                        if ours else "n/a | n/a | ")
                     + f"{r.get('cpu_ms_per_req', 0):.2f} ms / "
                     f"{fmt(ours and ours['cpu_us_per_req'] / 1e3, '.3f', ' ms')} | {r['errors']} |")
        L.append("")
    if "micro" in results:
        L.append("### 5. Micro-benchmarks (criterion, native x86-64, median)")
        L.append("")
        other = results.get("micro_other_cpu")
        if other is not None:
            L.append(f"CPU used by other processes while they ran: {other:.0f}% of a core"
                     + (" (**disturbed: rerun**)" if other > 10 else "") + ".")
            L.append("")
        L.append("| benchmark | time (median) | 95% CI of the median | throughput |")
        L.append("|---|---:|---:|---:|")
        for r in results["micro"]:
            t = r["median_ns"]
            tstr = f"{t / 1e3:.1f} us" if t >= 1e4 else f"{t:.0f} ns"
            L.append(f"| {r['bench']} | {tstr} | ±{r.get('ci_pct', 0):.1f}% | "
                     f"{fmt(r.get('mb_s'), '.0f', ' MB/s') if 'mb_s' in r else ''} |")
        L.append("")
    if "size" in results:
        L.append("### 6. Release .wasm size")
        L.append("")
        L.append("| build | bytes | KiB | code KiB | data KiB | name section KiB | DWARF KiB | gzip -9 KiB |")
        L.append("|---|---:|---:|---:|---:|---:|---:|---:|")
        k = lambda v: f"{v / 1024:.0f}"  # noqa: E731
        for r in results["size"]:
            L.append(f"| {r['variant']} | {r['bytes']} | {k(r['bytes'])} | {k(r['code'])} | {k(r['data'])} | "
                     f"{k(r['names'])} | {k(r['debug'])} | {k(r['gzip_bytes'])} |")
        L.append("")
    if "profile" in results:
        ab = results["profile"]["ablation"]
        L.append("### 7. What the filter's cost is made of (OpenAI, c=64)")
        L.append("")
        L.append("Ablation (interleaved repetitions, medians): the same Envoy with no wasm filter; with a "
                 "do-nothing Rust proxy-wasm filter (same SDK and profile); with a module that makes "
                 "agent-budget's host calls for such a call (its row in table 2) and nothing else, and "
                 "that module without its ledger or its header calls; with agent-budget as shipped; "
                 "and plain Envoy and agent-budget without the shipped access log (the attribution "
                 "record's line per call is Envoy's work, not the filter's); then the native "
                 "module's floor (a do-nothing dynamic module), a dynamic module making only the "
                 "native module's ABI calls for such a call (native replica: read both header maps "
                 "and both bodies, hold the request headers for the body, write 4 response headers, "
                 "set the attribution record), and the native module.")
        L.append("")
        L.append("| Envoy with | req/s | vs plain | Envoy CPU us/req | p50 (ms) |")
        L.append("|---|---:|---:|---:|---:|")
        for name in [n for n in ABLATION_SIDES if n in ab]:
            x = ab[name]
            L.append(f"| {SIDE_LABELS[name]} | {x['rps']:.0f} | {x['ratio']:.3f} | {x['cpu_us_per_req']:.1f} | "
                     f"{x['p50_us'] / 1e3:.2f} |")
        L.append("")
        pf = results["profile"].get("perf") or {}
        if pf:
            L.append("perf (cpu-clock 1 kHz, DWARF call chains; figures under perf, which costs some "
                     "throughput itself): Envoy CPU per request split by where the sample landed.")
            L.append("")
            L.append("| Envoy with | us/req | in wasm code (V8-generated) | in host calls from wasm | "
                     "Envoy outside the VM (of which kernel) | samples | chains unwound |")
            L.append("|---|---:|---:|---:|---:|---:|---:|")
            for name in PROFILE_SIDES:
                x = pf.get(name)
                if not x:
                    continue
                u = x["us"]
                L.append(f"| {SIDE_LABELS[name]} | {x['cpu_us_per_req']:.1f} | {u['wasm']:.1f} | {u['host_calls']:.1f} | "
                         f"{u['outside']:.1f} ({u['kernel']:.1f}) | {x['samples']} | {100 * x['unwound']:.0f}% |")
            L.append("")
    L.append(render_targets(results))
    m = results["machine"]
    L.append(f"Machine: {m['nproc']} cores ({m['cpu']}), {m['mem_gib']} GiB, Linux {m['kernel']}; "
             f"Envoy {m['envoy']}; {m['wrk']}; {m['rustc']}; load average at start "
             f"{' '.join(m['loadavg_start'])}, CPU busy before start {m.get('busy_before_pct', 0):.0f}% "
             f"(of {100 * m['nproc']}%).")
    L.append("")
    a = results["args"]
    L.append(f"Run: {a['reps']} repetitions x {a['duration']} s per load point, sides interleaved; "
             f"Envoy --concurrency 1 pinned to core {ENVOY_CPU}, wrk (1 thread) and the mock "
             f"(1 thread) pinned to core {CLIENT_CPU}. Phases: {', '.join(results['phases'])}. "
             f"Total {results.get('total_s', 0):.0f} s.")
    return "\n".join(L)


def load_point(results: dict, api: str, conns: int) -> dict | None:
    return next((r for r in results.get("load", [])
                 if r["api"] == api and r["conns"] == conns and not r.get("pace_ms")), None)


# The target: at most this many calls from the VM into Envoy for a non-streaming
# call of a configured agent.
MAX_HOST_CALLS = 16


def render_targets(results: dict) -> str:
    L = ["### Targets", "", "| target | measured | |", "|---|---|---|"]

    def row(name, value, ok):
        L.append(f"| {name} | {value} | {'met' if ok else '**missed**'} |")

    filters = [n for n in load_side_names(results) if n.startswith("filter")]
    for r in results.get("load", []):
        if r["conns"] == 64 and not r.get("pace_ms"):
            for n in filters:
                x = r["sides"][n]
                # The product's bar for the wasm build (a do-nothing filter is ~0.89x).
                row(f"throughput >= 0.70x plain ({SIDE_SHORT[n]}, {r['api']}, c=64)",
                    f"{x['ratio']:.3f}x", x["ratio"] >= 0.70)
            if "native" in r["sides"]:
                # The native build's bar (a do-nothing dynamic module is ~0.94-0.99x).
                x = r["sides"]["native"]
                row(f"throughput >= 0.90x plain (native, {r['api']}, c=64)",
                    f"{x['ratio']:.3f}x", x["ratio"] >= 0.90)
    for r in results.get("load", []):
        for n in filters:
            x = r["sides"][n]
            row(f"added p99 <= 0.5 ms ({SIDE_SHORT[n]}, {r['api']}, c={conns_label(r)})",
                f"{x['d_p99_us'] / 1e3:+.3f} ms", x["d_p99_us"] <= 500)
    for r in results.get("hostcalls", []):
        if r["side"].startswith("filter") and not r["streaming"]:
            row(f"<= {MAX_HOST_CALLS} host calls per non-streaming call ({SIDE_SHORT[r['side']]}, "
                f"{r['label'].split()[0]})",
                f"{r['host_calls']} (+ {r['allocs']} allocations, {r['callbacks']} callbacks)",
                r["host_calls"] <= MAX_HOST_CALLS)
    if "stream" in results:
        s = results["stream"]
        row("TTFT within 1 ms of plain Envoy", f"{s['d_ttft_ms']:+.3f} ms", abs(s["d_ttft_ms"]) <= 1)
    mem = {(r["config"], r["chunks"]): r for r in results.get("memory", [])}
    lens = sorted({r["chunks"] for r in results.get("memory", [])})
    if len(lens) >= 2:
        short, long_ = mem.get(("filter", lens[0])), mem.get(("filter", lens[-1]))
        if short and long_:
            grow = (long_["rss_per_stream"] - short["rss_per_stream"]) / 1024
            grow_a = (long_["alloc_per_stream"] - short["alloc_per_stream"]) / 1024
            row(f"memory flat in stream length (filter, {lens[0]} -> {lens[-1]} chunks)",
                f"{grow:+.1f} KiB RSS, {grow_a:+.1f} KiB allocated per stream",
                abs(grow) < 16 and abs(grow_a) < 16)
    if "litellm" in results:
        for r in results["litellm"]["rows"]:
            point = load_point(results, "openai", r["conns"])
            ours = point and point["sides"].get("filter")
            if ours:
                ratio = ours["rps"] / r.get("best_rps", r["rps"])
                row(f">= 10x LiteLLM req/s (c={r['conns']}, vs its best repetition)", f"{ratio:.1f}x",
                    ratio >= 10)
    L.append("")
    return "\n".join(L)


# ---------------------------------------------------------------------------------------

def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--duration", type=float, default=3, help="seconds per wrk run")
    ap.add_argument("--direct-duration", type=float, default=2,
                    help="seconds per wrk run straight at the mock (context only)")
    ap.add_argument("--conns", type=lambda s: [int(x) for x in s.split(",")], default=[1, 16, 64])
    ap.add_argument("--paced-ms", type=int, default=16,
                    help="per-connection pause between requests for the paced 64-connection "
                         "point (0: skip it)")
    ap.add_argument("--apis", type=lambda s: s.split(","), default=["openai", "anthropic"])
    ap.add_argument("--stream-reps", type=int, default=12)
    ap.add_argument("--stream-chunks", type=int, default=500)
    ap.add_argument("--stream-delay-ms", type=int, default=2)
    ap.add_argument("--mem-streams", type=int, default=200)
    ap.add_argument("--mem-chunks", type=lambda s: [int(x) for x in s.split(",")], default=[500, 5000])
    ap.add_argument("--mem-delay-ms", type=int, default=3)
    ap.add_argument("--litellm-workers", type=int, default=2)
    ap.add_argument("--profile-duration", type=float, default=3)
    ap.add_argument("--only", type=lambda s: s.split(","), default=PHASES,
                    help="comma-separated subset of: " + ",".join(PHASES))
    ap.add_argument("--skip", type=lambda s: s.split(","), default=[])
    ap.add_argument("--sides", type=lambda s: s.split(","), default=LOAD_SIDES,
                    help="Envoys compared in the load phase, plain first (default: "
                         + ",".join(LOAD_SIDES) + ")")
    args = ap.parse_args()
    if args.sides[0] != "plain" or not set(args.sides) <= set(SIDE_LABELS):
        ap.error(f"--sides: plain first, then any of {', '.join(SIDE_LABELS)}")
    phases = [p for p in PHASES if p in args.only and p not in args.skip]

    harness.require_built()
    OUT.mkdir(parents=True, exist_ok=True)
    for tool in ("wrk", "taskset"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} not found: run scripts/bench (it installs it)")
    t_start = time.monotonic()
    results: dict = {"machine": machine_info(), "args": vars(args), "phases": phases, "timing": {}}
    b0 = cpu_busy_ticks()
    time.sleep(1)
    b1 = cpu_busy_ticks()
    busy = 100.0 * sum(b1[k] - b0[k] for k in b1) / HZ
    results["machine"]["busy_before_pct"] = busy
    if busy > 15:
        log(f"WARNING: the machine is already {busy:.0f}% busy (of {100 * len(b1)}%) before the "
            "benchmark starts: other work will add noise (see the 'other %' column)")
    log(f"phases: {', '.join(phases)}; load average {' '.join(results['machine']['loadavg_start'])}")

    def timed(name, fn, *a):
        t0 = time.monotonic()
        log(f"== {name}")
        fn(results, *a)
        results["timing"][name] = time.monotonic() - t0

    mock = None
    envoys: dict[str, Envoy] = {}

    def side(name: str) -> Envoy:
        """The long-running Envoy of a side, started (and checked) on first use."""
        if name not in envoys:
            envoys[name] = start_side(name, mock)
            check_side(envoys[name], name)
        return envoys[name]

    try:
        if "size" in phases:
            timed("size", phase_size)
        if "micro" in phases:
            timed("micro", phase_micro)
        if {"load", "stream", "memory", "litellm", "hostcalls", "profile"} & set(phases):
            mock = Mock()
        if "load" in phases:
            timed("load", phase_load, args, mock, [side(n) for n in args.sides])
        if "profile" in phases:
            timed("profile", phase_profile, args, mock, [side(n) for n in ABLATION_SIDES])
        if "stream" in phases:
            timed("stream", phase_stream, args, side("plain"), side("filter"))
        for e in envoys.values():
            e.stop()
        if "memory" in phases:
            timed("memory", phase_memory, args, mock)
        if "litellm" in phases:
            timed("litellm", phase_litellm, args, mock)
        if "hostcalls" in phases:
            timed("hostcalls", phase_hostcalls, mock)
    finally:
        stop_all()
        for path in _tmpdirs:
            shutil.rmtree(path, ignore_errors=True)
    results["total_s"] = time.monotonic() - t_start
    results["machine"]["loadavg_end"] = Path("/proc/loadavg").read_text().split()[:3]
    table = render(results)
    (OUT / "results.json").write_text(json.dumps(results, indent=1, default=str))
    (OUT / "results.md").write_text(table + "\n")
    print()
    print(table)
    print(f"(phase times: {', '.join(f'{k} {v:.0f}s' for k, v in results['timing'].items())}; "
          f"written to {OUT.relative_to(REPO)}/results.md and results.json)")
    return 0


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        stop_all()
        sys.exit(130)
