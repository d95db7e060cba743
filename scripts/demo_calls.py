"""The demo's burst of agent calls through the gateway (see scripts/demo), with a small
alert receiver standing in for Alertmanager on 127.0.0.1:9093."""

import http.client
import http.server
import json
import re
import threading
import time
import urllib.request

GATEWAY = ("127.0.0.1", 10000)
ADMIN = "http://127.0.0.1:9901"
ALERTS = []


class AlertReceiver(http.server.BaseHTTPRequestHandler):
    def do_POST(self):  # noqa: N802 (http.server's naming)
        body = self.rfile.read(int(self.headers.get("content-length", 0)))
        ALERTS.extend(json.loads(body))
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args):
        pass


def chat(model, max_tokens, stream=False):
    body = {"model": model, "max_tokens": max_tokens, "messages": [{"role": "user", "content": "..."}]}
    if stream:
        body["stream"] = True
    return body


def tokens(inp, out, chunks=None):
    headers = {"x-mock-input-tokens": str(inp), "x-mock-output-tokens": str(out)}
    if chunks:
        headers["x-mock-chunks"] = str(chunks)
    return headers


# agent -> (path, request body, usage the mock provider reports, task per round)
CALLS = {
    "research-bot": ("/v1/chat/completions", chat("gpt-4o", 1000), tokens(3000, 800), None),
    "support-bot": ("/v1/messages", chat("claude-sonnet-4-5", 400, stream=True), tokens(1200, 250, 25), None),
    "nightly-batch": ("/v1/messages", chat("claude-haiku-4-5", 2000), tokens(8000, 1500), ["reindex", "summarize"]),
    "copilot": ("/v1/chat/completions", chat("gpt-4o", 300), tokens(1000, 200), None),
    "intern-script": ("/v1/chat/completions", chat("gpt-4o-mini", 100, stream=True), tokens(500, 100, 10), None),
}


def call(agent, path, body, headers):
    conn = http.client.HTTPConnection(*GATEWAY, timeout=30)
    all_headers = {"content-type": "application/json", **headers}
    if agent:
        all_headers["x-agent-id"] = agent
    conn.request("POST", path, json.dumps(body), all_headers)
    resp = conn.getresponse()
    data = resp.read()
    conn.close()
    return resp.status, {k.lower(): v for k, v in resp.getheaders()}, data


def served_model(status, headers, data):
    if status != 200:
        return "-"
    if "x-agent-budget-degraded-to" in headers:
        return headers["x-agent-budget-degraded-to"] + " (degraded)"
    text = data.decode(errors="replace")
    found = re.search(r'"model"\s*:\s*"([^"]+)"', text)
    return found.group(1) if found else "?"


def metrics():
    return urllib.request.urlopen(ADMIN + "/stats/prometheus").read().decode()


def main():
    receiver = http.server.ThreadingHTTPServer(("127.0.0.1", 9093), AlertReceiver)
    threading.Thread(target=receiver.serve_forever, daemon=True).start()

    print("agent-budget demo: 6 rounds of calls through Envoy (127.0.0.1:10000)\n")
    print(f"{'round':<6}{'agent':<15}{'task':<11}{'status':<8}{'model served':<34}{'remaining today (USD)'}")
    first_refusal = {}
    for round_no in range(1, 7):
        for agent, (path, body, usage, tasks) in CALLS.items():
            task = tasks[round_no % len(tasks)] if tasks else "-"
            headers = dict(usage)
            if tasks:
                headers["x-task-id"] = task
            status, resp_headers, data = call(agent, path, body, headers)
            remaining = resp_headers.get("x-agent-budget-remaining-usd", "-")
            print(f"{round_no:<6}{agent:<15}{task:<11}{status:<8}{served_model(status, resp_headers, data):<34}{remaining}")
            if status == 429 and agent not in first_refusal:
                first_refusal[agent] = (resp_headers, data)
    status, _, data = call("", "/v1/chat/completions", chat("gpt-4o", 10), {})
    print(f"\nA call without x-agent-id gets {status}: {json.loads(data)['error']['message']}")
    for agent, (headers, data) in first_refusal.items():
        message = json.loads(data)["error"]["message"]
        print(f"\n{agent} refused: HTTP 429, retry-after {headers['retry-after']} s, "
              f"x-should-retry {headers['x-should-retry']}\n  {message}")

    time.sleep(2.5)  # alerts leave on the filter's 1 s tick
    print("\nAlerts received by the webhook (Alertmanager API v2 payloads):")
    for alert in ALERTS:
        labels = alert["labels"]
        print(f"  [{labels['priority']} {labels['severity']}] {alert['annotations']['summary']}")
    text = metrics()
    print("\nSpend today per budget, from Envoy's /stats/prometheus (micro-USD):")
    for agent, micro in re.findall(r'agent_budget_spend_micro_usd\{agent="([^"]+)",period="daily"\} (\d+)', text):
        print(f"  {agent:<15}{int(micro):>10}  (${int(micro) / 1e6:.6f})")
    for agent, period, micro in re.findall(r'agent_budget_overage_micro_usd\{agent="([^"]+)",period="([^"]+)"\} (\d+)', text):
        print(f"  overage {agent} ({period}): {micro} micro-USD past its budget")
    print("\n(intern-script is not configured: unknown_agent: default charges it to `default`.)")
    receiver.shutdown()


if __name__ == "__main__":
    main()
