"""The Kubernetes examples in envoy/k8s/: every core resource passes kubernetes-validate's
strict schema of the newest Kubernetes it bundles; the Istio and Envoy Gateway resources, for
which no offline schema exists, pass schemas written here from their documented fields (so a
misspelt field fails); the plugin configuration each one embeds is accepted by the real filter
in a real Envoy; webdis's configuration points at the Redis Service, and the gateways at
webdis; and real Redis and webdis processes, run with the manifests' own arguments and command
list, refuse what the fleet sync does not need."""

import copy
import json
import os
import re
import socket
import subprocess
import urllib.parse
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml

from harness import NATIVE, REPO, _terminate, free_port, request, wait_until

K8S = REPO / "envoy/k8s"
MANIFESTS = ("redis-webdis.yaml", "istio-wasmplugin.yaml", "envoy-gateway.yaml")
CHAT = "/v1/chat/completions"

# Commands the fleet sync sends through webdis (EVALs per agent budget and alert claim; the
# scripts' own hash, SETNX, GET and EXPIREAT commands run inside Redis), plus PING for the
# readiness probe.
FLEET_COMMANDS = {"EVAL", "PING"}
# What the sync's script does inside Redis, as an EVAL through webdis: raise this gateway's
# field, set the key's expiry, return the fields.
SYNC_LIKE_EVAL = ("/EVAL/" + urllib.parse.quote(
    "redis.call('HSET', KEYS[1], ARGV[1], ARGV[2]) redis.call('EXPIREAT', KEYS[1], ARGV[3]) "
    "return redis.call('HVALS', KEYS[1])", safe="") + "/1/agent_budget:test/gw-a/5/4102444800")


def documents() -> list[tuple[str, dict]]:
    docs = []
    for name in MANIFESTS:
        for doc in yaml.safe_load_all((K8S / name).read_text()):
            if doc is not None:
                docs.append((f"{name}:{doc['kind']}/{doc['metadata']['name']}", doc))
    return docs


def only(kind: str, name: str | None = None) -> dict:
    found = [doc for _, doc in documents()
             if doc["kind"] == kind and (name is None or doc["metadata"]["name"] == name)]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def strict(properties: dict, required: tuple = ()) -> dict:
    """An object schema that refuses fields it does not list."""
    return {"type": "object", "properties": properties, "required": list(required),
            "additionalProperties": False}


def resource(api_version: str, kind: str, spec: dict) -> dict:
    return strict({
        "apiVersion": {"const": api_version},
        "kind": {"const": kind},
        "metadata": {"type": "object", "required": ["name", "namespace"],
                     "properties": {"name": {"type": "string"}, "namespace": {"type": "string"}}},
        "spec": spec,
    }, ("apiVersion", "kind", "metadata", "spec"))


SHA256 = {"type": "string", "pattern": "^[a-f0-9]{64}$"}
POLICY_TARGET = strict({"group": {"type": "string"}, "kind": {"type": "string"},
                        "name": {"type": "string"}, "sectionName": {"type": "string"}},
                       ("group", "kind", "name"))

# Istio extensions.istio.io/v1alpha1 WasmPlugin (Istio's WasmPlugin reference).
WASM_PLUGIN = resource("extensions.istio.io/v1alpha1", "WasmPlugin", strict({
    "selector": strict({"matchLabels": {"type": "object",
                                        "additionalProperties": {"type": "string"}}}),
    "targetRef": POLICY_TARGET,
    "targetRefs": {"type": "array", "items": POLICY_TARGET},
    "url": {"type": "string", "pattern": "^(oci|https?|file)://"},
    "sha256": SHA256,
    "imagePullPolicy": {"enum": ["UNSPECIFIED_POLICY", "IfNotPresent", "Always"]},
    "imagePullSecret": {"type": "string"},
    "verificationKey": {"type": "string"},
    "pluginConfig": {"type": "object"},
    "pluginName": {"type": "string"},
    "phase": {"enum": ["UNSPECIFIED_PHASE", "AUTHN", "AUTHZ", "STATS"]},
    "priority": {"type": "integer"},
    "failStrategy": {"enum": ["FAIL_CLOSE", "FAIL_OPEN", "FAIL_RELOAD"]},
    "vmConfig": strict({"env": {"type": "array"}}),
    "match": {"type": "array"},
    "type": {"enum": ["UNSPECIFIED_PLUGIN_TYPE", "HTTP", "NETWORK"]},
}, ("url",)))

# Envoy Gateway gateway.envoyproxy.io/v1alpha1 (api/extension_types: EnvoyExtensionPolicy, Wasm).
EG_WASM = strict({
    "name": {"type": "string"},
    "rootID": {"type": "string"},
    "code": strict({
        "type": {"enum": ["HTTP", "Image", "ConfigMap"]},
        "http": strict({"url": {"type": "string"}, "sha256": SHA256, "tls": {"type": "object"}},
                       ("url",)),
        "image": strict({"url": {"type": "string"}, "sha256": SHA256,
                         "pullSecretRef": {"type": "object"}, "tls": {"type": "object"}},
                        ("url",)),
        "configMap": {"type": "object"},
        "pullPolicy": {"enum": ["IfNotPresent", "Always"]},
    }, ("type",)),
    "config": {"type": "object"},
    "failOpen": {"type": "boolean"},
    "env": strict({"hostKeys": {"type": "array", "items": {"type": "string"}}}),
}, ("code",))
ENVOY_EXTENSION_POLICY = resource("gateway.envoyproxy.io/v1alpha1", "EnvoyExtensionPolicy", strict({
    "targetRef": POLICY_TARGET,
    "targetRefs": {"type": "array", "items": POLICY_TARGET},
    "targetSelectors": {"type": "array"},
    "mergeType": {"type": "string"},
    "backends": {"type": "array"},
    "wasm": {"type": "array", "items": EG_WASM, "maxItems": 16},
    "extProc": {"type": "array"},
    "lua": {"type": "array"},
    "dynamicModule": {"type": "array"},
}))
ENVOY_PATCH_POLICY = resource("gateway.envoyproxy.io/v1alpha1", "EnvoyPatchPolicy", strict({
    "type": {"enum": ["JSONPatch"]},
    "jsonPatches": {"type": "array", "items": strict({
        "type": {"enum": [
            "type.googleapis.com/envoy.config.listener.v3.Listener",
            "type.googleapis.com/envoy.config.route.v3.RouteConfiguration",
            "type.googleapis.com/envoy.config.cluster.v3.Cluster",
            "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment",
            "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"]},
        "name": {"type": "string"},
        "operation": strict({
            "op": {"enum": ["add", "remove", "replace", "move", "copy", "test"]},
            "path": {"type": "string"},
            "jsonPath": {"type": "string"},
            "from": {"type": "string"},
            "value": {},
        }, ("op",)),
    }, ("type", "name", "operation"))},
    "targetRef": POLICY_TARGET,
    "priority": {"type": "integer"},
}, ("type", "targetRef")))

CRD_SCHEMAS = {
    "WasmPlugin": WASM_PLUGIN,
    "EnvoyExtensionPolicy": ENVOY_EXTENSION_POLICY,
    "EnvoyPatchPolicy": ENVOY_PATCH_POLICY,
}
CORE = [(label, doc) for label, doc in documents() if doc["kind"] not in CRD_SCHEMAS]
CRDS = [(label, doc) for label, doc in documents() if doc["kind"] in CRD_SCHEMAS]


def validate_core(doc: dict) -> None:
    kubernetes_validate.validate(doc, kubernetes_validate.latest_version(), strict=True)


def validate_crd(doc: dict) -> None:
    jsonschema.Draft202012Validator(CRD_SCHEMAS[doc["kind"]]).validate(doc)


@pytest.mark.parametrize("doc", [doc for _, doc in CORE], ids=[label for label, _ in CORE])
def test_core_resource_passes_the_strict_kubernetes_schema(doc):
    validate_core(doc)


@pytest.mark.parametrize("doc", [doc for _, doc in CRDS], ids=[label for label, _ in CRDS])
def test_custom_resource_passes_its_documented_schema(doc):
    validate_crd(doc)


def test_the_manifests_hold_the_expected_resources():
    """A manifest that lost its resources would pass the checks above by having none."""
    kinds = sorted(doc["kind"] for _, doc in documents())
    assert kinds == sorted(["Namespace", "PersistentVolumeClaim", "Deployment", "Service",
                            "NetworkPolicy", "NetworkPolicy", "ConfigMap", "Deployment", "Service",
                            "WasmPlugin", "EnvoyExtensionPolicy", "EnvoyPatchPolicy"])


def misspell(doc: dict, path: tuple, wrong: str) -> dict:
    """A copy of doc with the field at path renamed to wrong (its value kept)."""
    out = copy.deepcopy(doc)
    parent = out
    for key in path[:-1]:
        parent = parent[key]
    parent[wrong] = parent.pop(path[-1])
    return out


@pytest.mark.parametrize("kind, name, path, wrong, check", [
    ("Deployment", "webdis", ("spec", "template", "spec", "securityContext", "runAsNonRoot"),
     "runAsNonroot", validate_core),
    ("Service", "redis", ("spec", "selector"), "selectors", validate_core),
    ("WasmPlugin", None, ("spec", "failStrategy"), "failstrategy", validate_crd),
    ("EnvoyExtensionPolicy", None, ("spec", "wasm"), "wasms", validate_crd),
    ("EnvoyPatchPolicy", None, ("spec", "jsonPatches"), "jsonPatch", validate_crd),
], ids=["deployment", "service", "wasmplugin", "extension-policy", "patch-policy"])
def test_a_misspelt_field_fails_validation(kind, name, path, wrong, check):
    with pytest.raises((kubernetes_validate.ValidationError, jsonschema.ValidationError)):
        check(misspell(only(kind, name), path, wrong))


def plugin_configs() -> dict[str, dict]:
    return {
        "istio": only("WasmPlugin")["spec"]["pluginConfig"],
        "envoy-gateway": only("EnvoyExtensionPolicy")["spec"]["wasm"][0]["config"],
    }


# The examples load the .wasm filter (a WasmPlugin, an EnvoyExtensionPolicy's wasm), and
# verify agents by JWT, which only the wasm build reads.
WASM_ONLY = pytest.mark.skipif(NATIVE, reason="native build: the Kubernetes examples load the .wasm filter")


@WASM_ONLY
@pytest.mark.parametrize("as_string", [False, True], ids=["struct", "json-string"])
@pytest.mark.parametrize("platform", ["istio", "envoy-gateway"])
def test_embedded_plugin_config_is_accepted_by_the_filter(gateway, platform, as_string):
    # Envoy Gateway hands the configuration over as a JSON string; both encodings are checked
    # so the result holds whichever one a platform release uses.
    gw = gateway(plugin_configs()[platform], as_string=as_string)
    # Live and enforcing: a call with no verified JWT names no agent (missing_agent: reject).
    response = gw.post(CHAT, {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]})
    assert response.status == 401, response.body


@WASM_ONLY
def test_a_broken_embedded_config_is_refused(gateway):
    """The check above can fail: the same configuration with one bad budget stops Envoy."""
    config = copy.deepcopy(plugin_configs()["istio"])
    config["agents"]["research-bot"]["daily_usd"] = -5
    gw = gateway(config, as_string=True, expect_failure=True)
    assert gw.proc.returncode != 0
    assert "agents.research-bot.daily_usd" in gw.log_text()


def service_host(name: str) -> tuple[str, int]:
    service = only("Service", name)
    (port,) = service["spec"]["ports"]
    return f"{name}.{service['metadata']['namespace']}.svc.cluster.local", port["port"]


def webdis_json() -> dict:
    return json.loads(only("ConfigMap", "webdis-config")["data"]["webdis.json"])


def test_webdis_points_at_the_redis_service():
    host, port = service_host("redis")
    config = webdis_json()
    assert (config["redis_host"], config["redis_port"]) == (host, port)


def test_webdis_listens_where_its_service_and_probe_send():
    (container,) = only("Deployment", "webdis")["spec"]["template"]["spec"]["containers"]
    (container_port,) = container["ports"]
    assert webdis_json()["http_port"] == container_port["containerPort"]
    assert container["command"][-1] == "/etc/webdis/webdis.json"
    probe = container["readinessProbe"]["exec"]["command"][-1]
    assert f"http://127.0.0.1:{container_port['containerPort']}/PING" in probe


def test_webdis_allows_only_the_fleet_commands():
    # Rules apply in order and the last match wins: refuse all, then allow the few back.
    first, *rest = webdis_json()["acl"]
    assert first == {"disabled": ["*"]}
    allowed = {command for rule in rest for command in rule.get("enabled", [])}
    assert allowed == FLEET_COMMANDS
    assert all("disabled" not in rule for rule in rest)


def test_the_gateways_fleet_clusters_reach_the_webdis_service():
    host, port = service_host("webdis")
    configs = plugin_configs()
    # Istio names a Service's cluster outbound|<port>||<host>.
    assert configs["istio"]["fleet"]["cluster"] == f"outbound|{port}||{host}"
    # Envoy Gateway: the cluster the EnvoyPatchPolicy adds, pointed at the same Service.
    (patch,) = only("EnvoyPatchPolicy")["spec"]["jsonPatches"]
    cluster = patch["operation"]["value"]
    assert configs["envoy-gateway"]["fleet"]["cluster"] == patch["name"] == cluster["name"]
    (endpoint,) = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"]
    address = endpoint["endpoint"]["address"]["socket_address"]
    assert (address["address"], address["port_value"]) == (host, port)


# The same manifests against real Redis and webdis processes on loopback (Debian's
# redis-server and webdis, installed by scripts/setup).
PASSWORD = "fleet-test-password-0123456789"


class Resp:
    """A minimal RESP2 client: enough to send commands and read Redis's replies."""

    def __init__(self, port: int):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        self.file = self.sock.makefile("rb")

    def __call__(self, *args: str):
        frame = f"*{len(args)}\r\n" + "".join(f"${len(a.encode())}\r\n{a}\r\n" for a in args)
        self.sock.sendall(frame.encode())
        return self._reply()

    def _reply(self):
        line = self.file.readline().rstrip(b"\r\n").decode()
        kind, rest = line[:1], line[1:]
        if kind == "+":
            return rest
        if kind == "-":
            return RedisError(rest)
        if kind == ":":
            return int(rest)
        if kind == "$":
            return None if rest == "-1" else self.file.read(int(rest) + 2)[:-2].decode()
        if kind == "*":
            return [self._reply() for _ in range(int(rest))]
        raise AssertionError(f"not a RESP reply: {line!r}")

    def close(self):
        self.file.close()
        self.sock.close()


class RedisError(str):
    """An error reply (kept apart from a status reply of the same text)."""


@pytest.fixture
def spawn(tmp_path):
    """Starts a process and waits until it accepts connections on port; stops them all after."""
    started = []

    def start(argv: list[str], port: int, env: dict | None = None) -> subprocess.Popen:
        log = open(tmp_path / f"{Path(argv[0]).name}-{port}.log", "wb")
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path,
                                env={**os.environ, **(env or {})})
        started.append((proc, log))

        def accepting() -> bool:
            assert proc.poll() is None, f"{argv[0]} exited: {(tmp_path / log.name).read_text()}"
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                return True
            except OSError:
                return False

        wait_until(accepting, 10, f"{argv[0]} on port {port}")
        return proc

    yield start
    for proc, log in started:
        _terminate(proc, 5)
        log.close()


def redis_container() -> dict:
    (container,) = only("Deployment", "redis")["spec"]["template"]["spec"]["containers"]
    return container


def redis_argv(port: int, data_dir: Path) -> list[str]:
    """redis-server with the Deployment's own arguments, Kubernetes' $(VAR) expansion done
    with the test password, on a loopback port with a scratch data directory."""
    container = redis_container()
    env_names = {var["name"] for var in container["env"]}
    args = []
    for arg in container["args"]:
        for name in re.findall(r"\$\((\w+)\)", arg):
            assert name in env_names, f"argument {arg!r} names {name}, which the container lacks"
        args.append(arg.replace("$(REDIS_PASSWORD)", PASSWORD))
    at = args.index("--dir")
    args[at + 1] = str(data_dir)
    # Later arguments win: loopback only, on a free port.
    return ["redis-server", *args, "--port", str(port), "--bind", "127.0.0.1"]


def test_redis_takes_logins_only_as_the_fleet_account(spawn, tmp_path):
    port = free_port()
    spawn(redis_argv(port, tmp_path), port)
    anonymous, fleet = Resp(port), Resp(port)
    try:
        assert isinstance(anonymous("PING"), RedisError)              # no anonymous access
        assert isinstance(anonymous("AUTH", PASSWORD), RedisError)    # `default` is off
        assert fleet("AUTH", "fleet", PASSWORD) == "OK"
        assert fleet("HSET", "agent_budget:test", "spent", "5") == 1
        assert fleet("EXPIRE", "agent_budget:test", "60") == 1
        assert fleet("EVAL", "return redis.call('HINCRBY', KEYS[1], 'spent', 2)", "1",
                     "agent_budget:test") == 7
        # Dangerous commands are refused, also when a script calls them.
        for command in (["FLUSHALL"], ["CONFIG", "GET", "dir"], ["KEYS", "*"],
                        ["EVAL", "return redis.call('FLUSHALL')", "0"]):
            reply = fleet(*command)
            assert isinstance(reply, RedisError), (command, reply)
        assert fleet("HGET", "agent_budget:test", "spent") == "7"
    finally:
        anonymous.close()
        fleet.close()


def test_webdis_passes_only_the_fleet_commands(spawn, tmp_path):
    redis_port, webdis_port = free_port(), free_port()
    spawn(["redis-server", "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "",
           "--dir", str(tmp_path)], redis_port)
    config = webdis_json()
    config.update(redis_host="127.0.0.1", redis_port=redis_port, http_host="127.0.0.1",
                  http_port=webdis_port, logfile=str(tmp_path / "webdis.log"),
                  pidfile=str(tmp_path / "webdis.pid"))
    # Debian's webdis (0.1.9) predates `["user", "password"]` logins, which the image's has;
    # this Redis asks for none. The ACL, under test here, is the ConfigMap's own.
    del config["redis_auth"]
    path = tmp_path / "webdis.json"
    path.write_text(json.dumps(config))
    spawn(["webdis", str(path)], webdis_port)

    def call(path: str):
        return request(webdis_port, "GET", path, timeout=5)

    allowed = {
        SYNC_LIKE_EVAL: {"EVAL": ["5"]},
        "/PING": {"PING": [True, "PONG"]},
    }
    assert {path.split("/")[1] for path in allowed} == FLEET_COMMANDS
    for path, reply in allowed.items():
        response = call(path)
        assert (response.status, response.json()) == (200, reply), path
    # Everything else is refused before Redis sees it: the commands the script runs inside
    # Redis, near-namesakes of allowed commands and the dangerous ones.
    for path in ("/FLUSHALL", "/DEL/agent_budget:test", "/SET/a/b", "/CONFIG/GET/dir",
                 "/KEYS/*", "/HSET/agent_budget:test/gw-a/9", "/HGET/agent_budget:test/gw-a",
                 "/HGETALL/agent_budget:test", "/EXPIRE/agent_budget:test/60",
                 "/EVALSHA/7f923f79fe76194c868d7e1d0820de36700eb649/0",
                 "/HSETNX/agent_budget:test/x/1", "/EXPIREAT/agent_budget:test/1",
                 "/HDEL/agent_budget:test/gw-a"):
        assert call(path).status == 403, path
    assert call(SYNC_LIKE_EVAL).json() == {"EVAL": ["5"]}
