"""scripts/import-litellm-prices: LiteLLM's price list -> the filter's `pricing` block.

Runs on a real copy of LiteLLM's model_prices_and_context_window.json (tests/fixtures/litellm,
see its README for provenance), then proves a real Envoy with the filter accepts the
generated table and charges with it.
"""

from __future__ import annotations

import gzip
import importlib.machinery
import importlib.util
import json
import os
import re
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import pytest
import yaml

from harness import BOOTSTRAP, knobs, plugin_config_of, skip_unless_wasm

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "scripts/import-litellm-prices"
FIXTURE = REPO / "tests/fixtures/litellm/model_prices_and_context_window.json.gz"

CHAT = "/v1/chat/completions"
MESSAGES = "/v1/messages"


def run(*args: str, stdin: bytes | None = None, direct: bool = False) -> subprocess.CompletedProcess:
    cmd = [str(SCRIPT)] if direct else [sys.executable, str(SCRIPT)]
    env = dict(os.environ, SOURCE_DATE_EPOCH="1767225600")  # 2026-01-01: stable header
    return subprocess.run(cmd + list(args), input=stdin if stdin is not None else b"",
                          capture_output=True, env=env, timeout=60)


def ok(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess:
    proc = run(*args, stdin=stdin)
    assert proc.returncode == 0, proc.stderr.decode()
    return proc


def pricing_of(proc: subprocess.CompletedProcess) -> dict:
    return yaml.safe_load(proc.stdout)["pricing"]


def import_module():
    loader = importlib.machinery.SourceFileLoader("import_litellm_prices", str(SCRIPT))
    spec = importlib.util.spec_from_loader(loader.name, loader)
    module = importlib.util.module_from_spec(spec)
    sys.modules[loader.name] = module  # dataclasses look their module up
    loader.exec_module(module)
    return module


def synthetic(entries: dict) -> bytes:
    """A small LiteLLM-shaped file: name -> (provider, mode, input/token, output/token, extra)."""
    doc = {"sample_spec": {"input_cost_per_token": 0.0, "output_cost_per_token": 0.0,
                           "litellm_provider": "one of https://docs.litellm.ai/docs/providers",
                           "mode": "chat"}}
    for name, (provider, mode, inp, out, extra) in entries.items():
        entry = {"litellm_provider": provider, "mode": mode, **extra}
        if inp is not None:
            entry["input_cost_per_token"] = inp
        if out is not None:
            entry["output_cost_per_token"] = out
        doc[name] = entry
    return json.dumps(doc).encode()


@pytest.fixture(scope="module")
def mod():
    return import_module()


@pytest.fixture(scope="module")
def raw_litellm() -> dict:
    return json.loads(gzip.decompress(FIXTURE.read_bytes()), parse_float=Decimal)


@pytest.fixture(scope="module")
def default_run() -> subprocess.CompletedProcess:
    return ok("--input", str(FIXTURE))


@pytest.fixture(scope="module")
def default_pricing(default_run) -> dict:
    return pricing_of(default_run)


@pytest.fixture(scope="module")
def all_run() -> subprocess.CompletedProcess:
    return ok("--input", str(FIXTURE), "--provider", "all")


# --------------------------------------------------------------------------- real data


@pytest.mark.parametrize("model, expected", [
    ("gpt-4o", {"input": 2.5, "output": 10, "cached_input": 1.25}),
    ("gpt-4o-mini", {"input": 0.15, "output": 0.6, "cached_input": 0.075}),
    ("gpt-4.1-nano", {"input": 0.1, "output": 0.4, "cached_input": 0.025}),
    ("o4-mini", {"input": 1.1, "output": 4.4, "cached_input": 0.275}),
    ("claude-sonnet-4-5", {"input": 3, "output": 15, "cached_input": 0.3, "cache_write": 3.75,
                           "cache_write_1h": 6}),
    ("claude-haiku-4-5", {"input": 1, "output": 5, "cached_input": 0.1, "cache_write": 1.25,
                          "cache_write_1h": 2}),
    ("gemini-2.5-flash", {"input": 0.3, "output": 2.5, "cached_input": 0.03}),
    ("gemini-2.5-pro", {"input": 1.25, "output": 10, "cached_input": 0.125}),
    ("text-embedding-3-small", {"input": 0.02, "output": 0}),
    ("gpt-3.5-turbo-instruct", {"input": 1.5, "output": 2}),  # text-completion-openai
])
def test_real_file_prices(default_pricing, model, expected):
    assert default_pricing[model] == expected


@pytest.mark.parametrize("line", [
    "gpt-4o: {input: 2.5, output: 10, cached_input: 1.25}",
    "claude-sonnet-4-5: {input: 3, output: 15, cached_input: 0.3, cache_write: 3.75, cache_write_1h: 6}",
    "gemini-2.5-flash: {input: 0.3, output: 2.5, cached_input: 0.03}",
    "gpt-4.1-nano: {input: 0.1, output: 0.4, cached_input: 0.025}",
    "text-embedding-3-small: {input: 0.02, output: 0}",
])
def test_yaml_text_is_exact(default_run, line):
    assert "\n" + " " * 22 + line + "\n" in default_run.stdout.decode()


def test_every_number_is_the_exact_decimal_of_the_source(default_run, raw_litellm, mod):
    """Each written number is Decimal(LiteLLM text) x 10^6, written without float noise; and the
    data holds values where float arithmetic would have added noise, so this means something."""
    text = default_run.stdout.decode()
    rows = re.findall(r"^ {22}([^:\s]+): \{(.*)\}$", text, re.M)
    assert len(rows) == len(yaml.safe_load(text)["pricing"]) > 100
    by_key = {}
    for name, entry in raw_litellm.items():
        if name != "sample_spec" and entry.get("litellm_provider") in mod.FIRST_PARTY:
            by_key.setdefault(name.rsplit("/", 1)[-1], []).append(entry)
    noisy = 0
    for key, fields in rows:
        written = dict(field_text.split(": ") for field_text in fields.split(", "))
        for value in written.values():
            assert re.fullmatch(r"0|[1-9][0-9]*|[0-9]+\.[0-9]*[1-9]", value), (key, value)
        # One of the LiteLLM entries spelled this way, field for field (absent output: 0).
        sources = [{ours: entry.get(theirs) for ours, theirs in mod.FIELDS
                    if entry.get(theirs) is not None} for entry in by_key[key]]
        matching = [src for src in sources
                    if set(src) | {"output"} == set(written)
                    and all(Decimal(written[f]) == src.get(f, Decimal(0)) * 1_000_000 for f in written)]
        assert matching, (key, written, sources)
        for f, value in written.items():
            as_float = repr(float(matching[0].get(f, 0)) * 1e6)
            if as_float not in (value, value + ".0"):
                noisy += 1
    assert noisy > 0


def test_sample_spec_and_non_token_entries_are_skipped(default_run, default_pricing):
    stderr = default_run.stderr.decode()
    assert "sample_spec" not in default_pricing
    assert re.search(r"1  sample_spec", stderr)
    for model in ("gpt-image-1", "gpt-realtime", "tts-1", "whisper-1", "gpt-4o-transcribe",
                  "omni-moderation-latest", "claude-sonnet-latest"):
        assert model not in default_pricing
    assert "mode not selected (image_generation" in stderr
    assert "alias entry (alias_of, no prices)" in stderr
    # LiteLLM's fine-tuning templates would all become the filter family `ft`.
    assert not [k for k in default_pricing if k.startswith("ft:")]
    # Zero-priced entries need --include-free.
    assert "gemma-3-27b-it" not in default_pricing
    free = pricing_of(ok("--input", str(FIXTURE), "--include-free", "--models", "^gemma-3-27b-it$"))
    assert free == {"gemma-3-27b-it": {"input": 0, "output": 0}}


def test_summary_counts(default_run, default_pricing):
    stderr = default_run.stderr.decode()
    m = re.search(r"^(\d+) models written \((.*)\), (\d+) skipped:", stderr, re.M)
    assert m, stderr
    assert int(m.group(1)) == len(default_pricing)
    per_provider = dict(part.rsplit(" ", 1) for part in m.group(2).split(", "))
    assert set(per_provider) == {"openai", "text-completion-openai", "anthropic", "gemini"}
    assert sum(int(n) for n in per_provider.values()) == len(default_pricing)
    skipped = re.findall(r"^\s+(\d+)  ", stderr, re.M)
    assert sum(int(n) for n in skipped) == int(m.group(3))
    # Every entry of the file is either written or counted as skipped.
    total = len(json.loads(gzip.decompress(FIXTURE.read_bytes())))
    assert int(m.group(1)) + int(m.group(3)) == total


def test_output_is_sorted_stable_and_has_header(default_run):
    text = default_run.stdout.decode()
    header = [line.strip() for line in text.splitlines() if line.strip().startswith("#")]
    assert any("source:" in h and "model_prices_and_context_window.json.gz" in h for h in header)
    count = len(yaml.safe_load(text)["pricing"])
    assert any(f"generated: 2026-01-01, {count} models" in h for h in header)
    keys = re.findall(r"^ {22}(\S+):", text, re.M)
    assert keys == sorted(keys)
    assert run("--input", str(FIXTURE)).stdout == default_run.stdout


def test_prefixes_dropped(default_pricing, all_run):
    assert "gemini-2.5-flash" in default_pricing  # `gemini/gemini-2.5-flash` in LiteLLM
    assert not [k for k in default_pricing if "/" in k]
    assert not [k for k in pricing_of(all_run) if "/" in k]
    data = synthetic({
        "openai/gpt-x": ("openai", "chat", 1e-06, 2e-06, {}),
        "anthropic/claude-x": ("anthropic", "chat", 3e-06, 1.5e-05, {}),
        "gemini/gemini-x": ("gemini", "chat", 3e-07, 2.5e-06, {}),
        "models/gemini-y": ("gemini", "chat", 3e-07, 2.5e-06, {}),
    })
    assert sorted(pricing_of(ok(stdin=data))) == ["claude-x", "gemini-x", "gemini-y", "gpt-x"]


@pytest.mark.parametrize("model, provider_name", [
    ("gpt-4o", "gpt-4o (openai"),
    ("gemini-2.5-flash", "gemini/gemini-2.5-flash (gemini"),
    ("claude-sonnet-4-5", "claude-sonnet-4-5 (anthropic"),
])
def test_collisions_resolve_to_first_party(all_run, default_pricing, model, provider_name):
    # With every provider, azure/, vertex_ai/, bedrock/... spellings land on the same keys.
    assert pricing_of(all_run)[model] == default_pricing[model]
    stderr = all_run.stderr.decode()
    line = next(l for l in stderr.splitlines() if l.startswith(f"collision on filter key `{model}`"))
    assert f"kept {provider_name}" in line


@pytest.mark.parametrize("entries, key, expected, report", [
    # A gateway's copy listed first loses to the provider's own price.
    ({"azure/gpt-q": ("azure", "chat", 5e-06, 2e-05, {}),
      "gpt-q": ("openai", "chat", 2.5e-06, 1e-05, {})},
     "gpt-q", {"input": 2.5, "output": 10}, "kept gpt-q (openai"),
    ({"vertex_ai/claude-q@20250101": ("vertex_ai-anthropic_models", "chat", 4e-06, 2e-05, {}),
      "claude-q": ("anthropic", "chat", 3e-06, 1.5e-05, {})},
     "claude-q", {"input": 3, "output": 15}, "kept claude-q (anthropic"),
    # The filter reads dated snapshots as the family: the undated name's price wins.
    ({"gpt-q-2024-05-13": ("openai", "chat", 5e-06, 1.5e-05, {}),
      "gpt-q": ("openai", "chat", 2.5e-06, 1e-05, {})},
     "gpt-q", {"input": 2.5, "output": 10}, "PRICES DIFFER"),
    # Without an undated entry, the newest snapshot.
    ({"claude-q-20240101": ("anthropic", "chat", 1e-06, 5e-06, {}),
      "claude-q-20250101": ("anthropic", "chat", 2e-06, 1e-05, {})},
     "claude-q-20250101", {"input": 2, "output": 10}, "kept claude-q-20250101"),
])
def test_collision_rules(entries, key, expected, report):
    proc = ok(stdin=synthetic(entries), *["--provider", "all"])
    assert pricing_of(proc) == {key: expected}
    assert report in proc.stderr.decode()


def test_json_format_matches_yaml(default_pricing):
    proc = ok("--input", str(FIXTURE), "--format", "json")
    doc = json.loads(proc.stdout)
    assert list(doc) == ["pricing"]
    assert doc["pricing"] == default_pricing
    exact = json.loads(proc.stdout, parse_float=Decimal)["pricing"]
    assert exact["gpt-4.1-nano"]["cached_input"] == Decimal("0.025")
    assert str(exact["gemini-2.5-flash"]["cached_input"]) == "0.03"


def test_models_filter(default_pricing):
    subset = pricing_of(ok("--input", str(FIXTURE), "--models", "^gpt-4o"))
    assert subset and all(k.startswith("gpt-4o") for k in subset)
    assert {"gpt-4o", "gpt-4o-mini"} <= set(subset)
    assert subset == {k: v for k, v in default_pricing.items() if k.startswith("gpt-4o")}
    nothing = run("--input", str(FIXTURE), "--models", "^no-such-model$")
    assert nothing.returncode == 1 and nothing.stdout == b""
    assert b"no models selected" in nothing.stderr


def test_provider_and_mode_filters(default_pricing):
    anthropic = pricing_of(ok("--input", str(FIXTURE), "--provider", "anthropic"))
    assert anthropic and all(k.startswith("claude-") for k in anthropic)
    embeddings = pricing_of(ok("--input", str(FIXTURE), "--mode", "embedding"))
    assert set(embeddings) == {k for k in default_pricing if "embedding" in k}
    assert all(v["output"] == 0 for v in embeddings.values())
    bad = run("--input", str(FIXTURE), "--mode", "image_generation")
    assert bad.returncode == 2 and b"not a token-priced mode" in bad.stderr


def test_only_changed_vs_builtin(default_pricing):
    proc = ok("--input", str(FIXTURE), "--only-changed-vs-builtin")
    changed = pricing_of(proc)
    # Already the built-in price, directly or through its family: left out.
    for model in ("gpt-4o", "gpt-4o-mini", "claude-sonnet-4-5", "gemini-2.5-flash",
                  "gpt-4o-search-preview"):
        assert model not in changed
    # Unknown to the built-in table, or resolved there to a family with another price
    # (claude-opus-4-7 would be charged as claude-opus-4 at $15/M): kept.
    assert changed["gpt-5.4-mini"] == default_pricing["gpt-5.4-mini"]
    assert changed["claude-opus-4-7"]["input"] == 5
    assert "same price as the built-in table" in proc.stderr.decode()
    # A changed built-in price is spelled out on stderr.
    data = synthetic({"gpt-4o": ("openai", "chat", 3e-06, 1e-05, {"cache_read_input_token_cost": 1.25e-06})})
    proc = ok("--only-changed-vs-builtin", stdin=data)
    assert pricing_of(proc) == {"gpt-4o": {"input": 3, "output": 10, "cached_input": 1.25}}
    assert "changes built-in gpt-4o" in proc.stderr.decode()


def test_invalid_prices_are_skipped_not_written():
    data = synthetic({
        "good": ("openai", "chat", 1e-06, 2e-06, {}),
        "negative": ("openai", "chat", -1e-06, 2e-06, {}),
        "text": ("openai", "chat", "0.000001", 2e-06, {}),
        "huge": ("openai", "chat", 1e07, 2e-06, {}),
        "no-output": ("openai", "chat", 1e-06, None, {}),
        "bad-cache": ("openai", "chat", 1e-06, 2e-06, {"cache_read_input_token_cost": -1}),
    }).replace(b'"good"', b'"nan-input": {"litellm_provider": "openai", "mode": "chat", '
                          b'"input_cost_per_token": NaN, "output_cost_per_token": 1e-06}, "good"')
    proc = ok(stdin=data)
    assert pricing_of(proc) == {"good": {"input": 1, "output": 2}}
    stderr = proc.stderr.decode()
    assert re.search(r"5  price the filter would reject", stderr)
    assert re.search(r"1  no input/output price per token", stderr)


@pytest.mark.parametrize("content", [
    b"",
    b"not json at all",
    b'{"gpt-4o": {"input_cost_per_token": 2.5e-06',
    b"[]",
    b'"a string"',
    b'{"gpt-4o": 2.5, "gpt-4": [1, 2]}',
    b"{}",
    gzip.compress(b'{"gpt-4o": {}}', mtime=0)[:20],
    b"\xff\xfe\x00garbage",
])
def test_malformed_input_exits_non_zero(content, tmp_path):
    path = tmp_path / "prices.json"
    path.write_bytes(content)
    for proc in (run("--input", str(path)), run(stdin=content)):
        assert proc.returncode == 2
        assert proc.stdout == b""
        assert b"import-litellm-prices: error:" in proc.stderr
        assert b"Traceback" not in proc.stderr


def test_missing_file_and_stdin(tmp_path):
    proc = run("--input", str(tmp_path / "absent.json"))
    assert proc.returncode == 2 and b"cannot read" in proc.stderr
    # Plain JSON on stdin, run through its shebang.
    assert os.access(SCRIPT, os.X_OK)
    assert SCRIPT.read_text().startswith("#!/usr/bin/env python3\n")
    plain = gzip.decompress(FIXTURE.read_bytes())
    proc = run("--input", "-", "--models", "^gpt-4o$", stdin=plain, direct=True)
    assert proc.returncode == 0, proc.stderr.decode()
    assert pricing_of(proc) == {"gpt-4o": {"input": 2.5, "output": 10, "cached_input": 1.25}}


def test_yaml_pastes_into_the_shipped_envoy_config(default_run, default_pricing):
    """The default indentation is that of `value:` contents in envoy/agent-budget.yaml."""
    skip_unless_wasm("the importer's default indentation is envoy/agent-budget.yaml's")
    shipped = BOOTSTRAP.read_text()
    old = re.search(r"^ +# Prices extend.*\n +pricing:\n( +mock-model:.*\n)", shipped, re.M)
    assert old, "envoy/agent-budget.yaml no longer has the pricing block this test replaces"
    pasted = shipped.replace(old.group(0), default_run.stdout.decode())
    value = plugin_config_of(yaml.safe_load(pasted))
    assert value["pricing"] == default_pricing
    assert "agents" in value


def test_odd_names_are_quoted_for_yaml():
    data = synthetic({
        "bedrock/anthropic.claude-q-v1:0": ("bedrock", "chat", 1e-06, 2e-06, {}),
        "x/yes": ("xai", "chat", 1e-06, 2e-06, {}),
        "x/1.5": ("xai", "chat", 1e-06, 2e-06, {}),
    })
    proc = ok("--provider", "all", stdin=data)
    assert set(pricing_of(proc)) == {"anthropic.claude-q-v1:0", "yes", "1.5"}
    json_keys = set(json.loads(ok("--provider", "all", "--format", "json", stdin=data).stdout)["pricing"])
    assert json_keys == set(pricing_of(proc))


# --------------------------------------------------------------------------- filter model


def test_normalize_matches_the_filter(mod):
    """The same cases as core/src/pricing.rs `resolves_dated_and_prefixed_names`."""
    table = mod.load_builtin(REPO / "core/src/pricing.rs")
    cases = [
        ("gpt-4o", "gpt-4o"), ("gpt-4o-2024-08-06", "gpt-4o"),
        ("gpt-4o-mini-2024-07-18", "gpt-4o-mini"), ("GPT-4o-mini", "gpt-4o-mini"),
        ("openai/gpt-4.1-mini", "gpt-4.1-mini"),
        ("claude-3-5-sonnet-20241022", "claude-3-5-sonnet"),
        ("claude-sonnet-4-5-20250929", "claude-sonnet-4-5"),
        ("claude-3-5-sonnet-latest", "claude-3-5-sonnet"),
        ("anthropic.claude-3-5-sonnet-20241022-v2:0", "claude-3-5-sonnet"),
        ("claude-3-5-sonnet-v2@20241022", "claude-3-5-sonnet"),
        ("models/gemini-2.5-flash", "gemini-2.5-flash"),
        ("gemini-2.5-flash-lite", "gemini-2.5-flash-lite"),
        ("claude-opus-4-1-20250805", "claude-opus-4-1"), ("o3-mini-2025-01-31", "o3-mini"),
        ("my-local-llama", None), ("", None), ("-", None),
    ]
    for model, family in cases:
        hit = mod.resolve(table, model)
        assert (hit[0] if hit else None) == family, model


def test_builtin_table_is_read_from_pricing_rs(mod):
    table = mod.load_builtin(REPO / "core/src/pricing.rs")
    assert len(table) >= 30
    assert table["gpt-4o"] == mod.EffectivePrice(2_500_000, 10_000_000, 1_250_000, 3_125_000, 5_000_000)
    assert table["gpt-4o-mini"].cache_read == 75_000
    assert table["text-embedding-3-small"].output == 0
    assert table["gemini-2.0-flash-lite"].cache_read == 75_000  # None -> input


def test_exact_conversion(mod):
    assert mod.per_million(Decimal("2.5E-06")) == Decimal("2.5")
    assert float("2.5e-08") * 1e6 != 0.025  # what a float conversion would write
    assert mod.format_usd(mod.per_million(Decimal("2.5e-08"))) == "0.025"
    assert mod.format_usd(mod.per_million(Decimal("0.00001"))) == "10"
    assert mod.format_usd(mod.per_million(Decimal("-0.0"))) == "0"
    assert mod.usd_to_micro(Decimal("0.075")) == 75_000


# --------------------------------------------------------------------------- real Envoy


def _cost(gw, agent="a") -> int:
    return gw.stats().value("agent_budget_cost_micro_usd", agent=agent)


def _charge(gw, path, model, tokens, agent="a") -> int:
    before = _cost(gw, agent)
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}]}
    if path == MESSAGES:
        body["max_tokens"] = 16
    resp = gw.post(path, body, knobs(agent, tokens, 0))
    assert resp.status == 200, resp.body
    return _cost(gw, agent) - before


def test_envoy_charges_with_an_imported_subset(gateway):
    proc = ok("--input", str(FIXTURE), "--models", r"^(gpt-4o|gpt-5\.4-mini$|claude-opus-4-7$)")
    pricing = pricing_of(proc)
    assert len(pricing) < 10
    gw = gateway({"agents": {"a": {"daily_usd": 100}}, "pricing": pricing})
    # 1M input tokens of gpt-4o-mini at $0.15/M.
    assert _charge(gw, CHAT, "gpt-4o-mini", 1_000_000) == 150_000
    # Unknown to the built-in table (the $15/M fallback would charge 15_000_000): $0.75/M.
    assert _charge(gw, CHAT, "gpt-5.4-mini-2026-03-17", 1_000_000) == 750_000
    # Built-in would price it as the claude-opus-4 family ($15/M): LiteLLM's $5/M wins.
    assert _charge(gw, MESSAGES, "claude-opus-4-7", 1_000_000) == 5_000_000
    # The same calls without the import: the fallback and the built-in family.
    bare = gateway({"agents": {"a": {"daily_usd": 100}}})
    assert _charge(bare, CHAT, "gpt-5.4-mini-2026-03-17", 1_000_000) == 15_000_000
    assert _charge(bare, MESSAGES, "claude-opus-4-7", 1_000_000) == 15_000_000


def test_envoy_accepts_the_full_default_import_as_yaml_and_json(gateway):
    yaml_pricing = pricing_of(ok("--input", str(FIXTURE)))
    json_text = ok("--input", str(FIXTURE), "--format", "json").stdout.decode()
    assert len(yaml_pricing) > 100
    # As a YAML map (google.protobuf.Struct), the way envoy/agent-budget.yaml carries it.
    gw = gateway({"agents": {"a": {"daily_usd": 100}}, "pricing": yaml_pricing})
    assert _charge(gw, CHAT, "gpt-5.4-mini", 1_000_000) == 750_000
    assert _charge(gw, MESSAGES, "claude-opus-4-7-20260416", 1_000_000) == 5_000_000
    # As the JSON StringValue, with the exact decimal text the importer wrote.
    config = '{"agents": {"a": {"daily_usd": 100}},' + json_text.strip()[1:]
    gw = gateway(config, as_string=True)
    assert _charge(gw, CHAT, "gpt-4.1-nano", 1_000_000) == 100_000
    assert _charge(gw, CHAT, "gpt-6-luna", 1_000_000) == 100_000
