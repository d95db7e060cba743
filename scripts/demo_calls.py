"""The demo's burst of agent calls through the gateway (see scripts/demo)."""

import http.client
import json
import re
import urllib.request

GATEWAY = ("127.0.0.1", 10000)
ADMIN = "http://127.0.0.1:9901"

# (agent, path, body, mock headers setting the usage the provider reports)
CALLS = {
    "research-bot": ("/v1/chat/completions",
                     {"model": "gpt-4o", "messages": [{"role": "user", "content": "Summarise the papers"}]},
                     {"x-mock-input-tokens": "3000", "x-mock-output-tokens": "800"}),
    "support-bot": ("/v1/messages",
                    {"model": "claude-sonnet-4-5", "max_tokens": 400, "stream": True,
                     "messages": [{"role": "user", "content": "Where is my order?"}]},
                    {"x-mock-input-tokens": "1200", "x-mock-output-tokens": "250", "x-mock-chunks": "25"}),
    "nightly-batch": ("/v1/messages",
                      {"model": "claude-haiku-4-5", "max_tokens": 2000,
                       "messages": [{"role": "user", "content": "Classify these tickets"}]},
                      {"x-mock-input-tokens": "8000", "x-mock-output-tokens": "1500"}),
    "intern-script": ("/v1/chat/completions",
                      {"model": "gpt-4o-mini", "stream": True, "messages": [{"role": "user", "content": "hi"}]},
                      {"x-mock-input-tokens": "500", "x-mock-output-tokens": "100", "x-mock-chunks": "10"}),
}


def call(agent, path, body, headers):
    conn = http.client.HTTPConnection(*GATEWAY, timeout=30)
    conn.request("POST", path, json.dumps(body), {"content-type": "application/json",
                                                  "x-agent-id": agent, "x-task-id": "demo", **headers})
    resp = conn.getresponse()
    data = resp.read()
    conn.close()
    return resp.status, {k.lower(): v for k, v in resp.getheaders()}, data


def spend():
    text = urllib.request.urlopen(ADMIN + "/stats/prometheus").read().decode()
    found = re.findall(r'agent_budget_spend_micro_usd\{agent="([^"]+)",period="daily"\} (\d+)', text)
    return {agent: int(v) for agent, v in found}


def main():
    print("agent-budget demo: 6 rounds of calls through Envoy (127.0.0.1:10000)\n")
    print(f"{'round':<6}{'agent':<15}{'status':<8}{'remaining today (USD)':<24}")
    stopped_body = None
    for round_no in range(1, 7):
        for agent, (path, body, headers) in CALLS.items():
            status, resp_headers, data = call(agent, path, body, headers)
            remaining = resp_headers.get("x-agent-budget-remaining-usd", "-")
            print(f"{round_no:<6}{agent:<15}{status:<8}{remaining:<24}")
            if status == 429 and stopped_body is None:
                stopped_body = (agent, resp_headers, data)
    status, _, data = call("", "/v1/chat/completions", {"model": "gpt-4o", "messages": []}, {})
    print(f"\nA call without x-agent-id gets {status}: {json.loads(data)['error']['message']}")
    if stopped_body:
        agent, headers, data = stopped_body
        print(f"\n{agent} was stopped: HTTP 429, retry-after {headers['retry-after']} s, "
              f"x-should-retry {headers['x-should-retry']}")
        print("  " + json.dumps(json.loads(data)))
    print("\nSpend today per budget, from Envoy's /stats/prometheus (micro-USD):")
    for agent, micro in sorted(spend().items()):
        print(f"  {agent:<15}{micro:>10}  (${micro / 1e6:.6f})")
    print("\n(intern-script is not configured: unknown_agent: default charges it to `default`.)")


if __name__ == "__main__":
    main()
