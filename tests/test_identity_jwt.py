"""Identity from a JWT that Envoy's own jwt_authn filter verified (`identity.source: jwt`), in a
real Envoy with a local JWKS file: the token's claims name the agent, task and user; a forged
header neither charges nor reaches anyone; a caller can neither spend another agent's budget
nor escape its own; no token gets the unidentified outcome.

The wasm filter reads the claims from jwt_authn's dynamic metadata (payload_in_metadata); the
native module from the headers jwt_authn's claim_to_headers writes, behind the guard filter
that removes a client's own claim headers before jwt_authn runs. The same tests hold for both,
with each build's jwt_authn setup; a forged claim header is tried on both."""

import base64
import hashlib
import hmac
import json
import time

import pytest

from harness import NATIVE, knobs, request, skip_unless_native, wait_until

CHAT = "/v1/chat/completions"
ISSUER = "https://issuer.agents.test"
SIGNING_KEY = b"agent-budget-test-signing-key-0123456789"
OTHER_KEY = b"not-the-gateway-key-9876543210-abcdefgh"


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def token(claims: dict, key: bytes = SIGNING_KEY) -> str:
    """An HS256 JWT (RFC 7519) signed with key, valid for ten minutes."""
    header = {"alg": "HS256", "typ": "JWT", "kid": "agents-1"}
    payload = {"iss": ISSUER, "iat": int(time.time()), "exp": int(time.time()) + 600, **claims}
    signing_input = f"{b64url(json.dumps(header).encode())}.{b64url(json.dumps(payload).encode())}"
    signature = hmac.new(key, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64url(signature)}"


def bearer(claims: dict, key: bytes = SIGNING_KEY) -> dict[str, str]:
    return {"authorization": f"Bearer {token(claims, key)}"}


@pytest.fixture
def jwks_file(tmp_path):
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps({"keys": [
        {"kty": "oct", "alg": "HS256", "kid": "agents-1", "k": b64url(SIGNING_KEY)}]}))
    return path


CLAIM_HEADER_PREFIX = "x-agent-budget-claim-"
GUARD = {
    "name": "agent_budget_jwt_guard",
    "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.dynamic_modules.v3.DynamicModuleFilter",
        "dynamic_module_config": {"name": "agent_budget_native"},
        "filter_name": "agent_budget_jwt_guard",
    },
}


def jwt_authn(jwks_path, claims=("sub",)) -> dict:
    """jwt_authn verifying the agents' tokens against a local JWKS file; calls without a token
    pass on (allow_missing), so the budget filter's unidentified outcome decides them. The
    payload goes to dynamic metadata (the wasm filter's source) and each of `claims` to its
    claim header (the native module's)."""
    return {
        "name": "envoy.filters.http.jwt_authn",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication",
            "providers": {"agents": {
                "issuer": ISSUER,
                "local_jwks": {"filename": str(jwks_path)},
                "payload_in_metadata": "agent_token",
                "claim_to_headers": [{"header_name": CLAIM_HEADER_PREFIX + claim, "claim_name": claim}
                                     for claim in dict.fromkeys(claims)],
            }},
            "rules": [{"match": {"prefix": "/"}, "requires": {"requires_any": {"requirements": [
                {"provider_name": "agents"}, {"allow_missing": {}}]}}}],
        },
    }


def jwt_config(**identity):
    return {"missing_agent": "reject",
            "agents": {"alpha": {"daily_usd": 100}, "beta": {"daily_usd": 100},
                       "thrifty": {"daily_usd": 0.001, "action": "stop"}},
            "identity": {"source": "jwt", "jwt_payload": "agent_token", **identity}}


def chat():
    return {"model": "gpt-4o", "max_tokens": 100, "messages": [{"role": "user", "content": "hello"}]}


@pytest.fixture
def jwt_gateway(gateway, jwks_file):
    def start(guard=True, **identity):
        claims = [identity.get("agent_claim", "sub"), identity.get("task_claim"), identity.get("user_claim")]
        authn = jwt_authn(jwks_file, [claim for claim in claims if claim])
        before = [GUARD, authn] if NATIVE and guard else [authn]
        return gateway(jwt_config(**identity), filters_before=before)
    return start


def test_the_verified_token_names_the_agent_task_and_user(jwt_gateway, mock):
    gw = jwt_gateway(agent_claim="agent", task_claim="task", user_claim="sub")
    claims = {"agent": "alpha", "task": "nightly-report", "sub": "u-17"}
    # Forged headers name another agent, task and user: the token wins and they are removed.
    forged = {**knobs("beta", 1000, 100), "x-task-id": "forged-task", "x-user-id": "forged-user"}
    credential = bearer(claims)
    resp = gw.post(CHAT, chat(), {**forged, **credential})
    assert resp.status == 200, resp.body
    stats = gw.stats()
    assert stats.value("agent_budget_cost_micro_usd", agent="alpha") == 1000 * 2.5 + 100 * 10
    assert stats.get("agent_budget_requests", agent="beta") in (None, 0)
    # The mock counts calls by the x-agent-id it received: the forged header never got there.
    provider = mock.stats()
    assert provider["total"]["calls"] == 1
    assert "beta" not in provider["agents"]
    prometheus = request(gw.admin_port, "GET", "/stats/prometheus").body.decode()
    records = gw.access_records()
    [record] = records
    assert (record["agent"], record["budget"]) == ("alpha", "alpha")
    assert (record["task"], record["user"]) == ("nightly-report", "u-17")
    # The token, or any of its three parts, never shows in logs, stats or records.
    for text in (prometheus, gw.log_text(), str(records)):
        for part in credential["authorization"].removeprefix("Bearer ").split("."):
            assert part not in text


def test_a_caller_cannot_escape_its_own_budget_by_naming_another(jwt_gateway, mock):
    gw = jwt_gateway()
    # thrifty's budget cannot fit a gpt-4o call's worst case; beta's could.
    resp = gw.post(CHAT, chat(), {**knobs("beta", 1000, 100), **bearer({"sub": "thrifty"})})
    assert resp.status == 429, resp.body
    stats = gw.stats()
    assert stats.value("agent_budget_rejected", agent="thrifty") == 1
    assert stats.get("agent_budget_requests", agent="beta") in (None, 0)
    assert mock.stats()["total"]["calls"] == 0


@pytest.mark.parametrize("credential,status", [
    ({}, 401),  # no token: jwt_authn lets it pass, the budget filter has no verified agent
    ({"authorization": "Bearer " + token({"sub": "alpha"}, OTHER_KEY)}, 401),  # forged signature
    ({"authorization": "Bearer " + token({"sub": "ghost"})}, 403),  # verified, but no budget
    ({"authorization": "Bearer " + token({"sub": "not a valid id"})}, 401),
], ids=["no-token", "wrong-signature", "unknown-agent", "invalid-agent-claim"])
def test_a_call_without_a_verified_agent_is_unidentified(jwt_gateway, mock, credential, status):
    gw = jwt_gateway()
    # A valid agent header does not help: in this mode only the verified token counts.
    resp = gw.post(CHAT, chat(), {**knobs("alpha", 10, 10), **credential})
    assert resp.status == status, resp.body
    assert mock.stats()["total"]["calls"] == 0
    assert gw.stats().get("agent_budget_requests", agent="alpha") in (None, 0)


def test_jwt_fields_outside_the_jwt_source_are_refused_naming_the_field(gateway):
    gw = gateway({"agents": {"alpha": {"daily_usd": 1}}, "identity": {"agent_claim": "sub"}},
                 expect_failure=True)
    assert "field `identity.agent_claim`: only used with `source: jwt`" in gw.log_text()


def test_a_forged_claim_header_names_no_one(jwt_gateway, mock):
    # A client sends the header jwt_authn would write the agent claim to: with no token it
    # identifies no one, and with a token the verified claim wins over it.
    gw = jwt_gateway()
    forged = {CLAIM_HEADER_PREFIX + "sub": "alpha"}
    resp = gw.post(CHAT, chat(), {**knobs("alpha", 10, 10), **forged})
    assert resp.status == 401, resp.body
    resp = gw.post(CHAT, chat(), {**knobs("alpha", 10, 10), **forged, **bearer({"sub": "thrifty"})})
    assert resp.status == 429, resp.body
    stats = gw.stats()
    assert stats.value("agent_budget_rejected", agent="thrifty") == 1
    assert stats.get("agent_budget_requests", agent="alpha") in (None, 0)
    assert mock.stats()["total"]["calls"] == 0


def test_claim_headers_do_not_reach_the_provider(jwt_gateway, mock):
    gw = jwt_gateway(agent_claim="agent", user_claim="sub")
    resp = gw.post(CHAT, chat(), {**knobs("x", 10, 10), **bearer({"agent": "alpha", "sub": "u-1"}),
                                  CLAIM_HEADER_PREFIX + "extra": "forged"})
    assert resp.status == 200, resp.body
    assert gw.access_records()[0]["user"] == "u-1"
    served = mock.stats()
    assert served["total"]["calls"] == 1
    assert served["claim_header_requests"] == 0


def test_without_the_guard_claim_headers_name_no_one_and_the_log_says_why(jwt_gateway, mock):
    skip_unless_native("the wasm filter reads jwt_authn's metadata and needs no guard")
    gw = jwt_gateway(guard=False)
    # Even a verified token identifies no one: nothing removed a client's claim headers.
    for _ in range(2):
        resp = gw.post(CHAT, chat(), {**knobs("alpha", 10, 10), **bearer({"sub": "alpha"})})
        assert resp.status == 401, resp.body
    assert mock.stats()["total"]["calls"] == 0
    wait_until(lambda: "no agent_budget_jwt_guard filter ran before jwt_authn" in gw.log_text(), 15,
               "the log line naming the missing guard")
    # Said once per configuration, not once per call.
    assert gw.log_text().count("no agent_budget_jwt_guard filter ran") == 1
