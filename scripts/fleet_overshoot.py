"""Measures fleet mode's overshoot: two gateways (envoy/agent-budget-fleet.yaml, default
1 s sync) share one `stop` budget through a real Redis + webdis; clients drive both flat
out until both refuse, and the spend past the budget is reported next to the bound
(N-1) * r * c * (2T + rtt) of README "Fleet mode".

Run from the repository root after scripts/setup: .venv/bin/python scripts/fleet_overshoot.py
"""

import argparse
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from harness import Gateway, Mock  # noqa: E402
from test_fleet import (  # noqa: E402
    CALL_MICRO_USD, GATEWAY_BOOTSTRAP, Redis, Webdis, call, fleet_config, fleet_total, synced)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--budget-usd", type=float, default=2.0)
    parser.add_argument("--clients", type=int, default=2, help="client threads per gateway")
    args = parser.parse_args()
    redis = Redis()
    webdis = Webdis(redis.port)
    mock = Mock()
    gateways = []
    try:
        for node in ("gw-a", "gw-b"):
            gateways.append(Gateway(
                upstream_port=mock.port, plugin_config=fleet_config(args.budget_usd, node), concurrency=1,
                bootstrap_path=GATEWAY_BOOTSTRAP, clusters={"agent_budget_redis": webdis.port},
                envoy_args=["--service-node", node]).start())
        for gw in gateways:
            synced(gw)
        served = [0] * len(gateways)
        lock = threading.Lock()

        def drive(index: int) -> None:
            refused_in_a_row = 0
            # Both gateways refuse for good once they have pulled each other's spend.
            while refused_in_a_row < 50:
                if call(gateways[index]).status == 200:
                    refused_in_a_row = 0
                    with lock:
                        served[index] += 1
                else:
                    refused_in_a_row += 1

        threads = [threading.Thread(target=drive, args=(i,))
                   for i in range(len(gateways)) for _ in range(args.clients)]
        start = time.monotonic()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        elapsed = time.monotonic() - start
        time.sleep(3)  # last pushes
        budget = round(args.budget_usd * 1e6)
        spent = sum(served) * CALL_MICRO_USD
        rate = sum(served) / len(gateways) / elapsed
        print(f"gateways 2, sync 1 s, clients/gateway {args.clients}, call ${CALL_MICRO_USD / 1e6:.4f}")
        print(f"served {served} in {elapsed:.1f}s: {rate:.0f} calls/s per gateway")
        print(f"budget ${budget / 1e6:.4f}, spent ${spent / 1e6:.4f} (Redis ${fleet_total(redis) / 1e6:.4f}), "
              f"overshoot ${max(0, spent - budget) / 1e6:.4f} = {max(0, spent - budget) / budget:.1%}")
        bound = (len(gateways) - 1) * rate * (CALL_MICRO_USD / 1e6) * 2.0
        print(f"bound (N-1)*r*c*2T = ${bound:.4f} (capped at (N-1)*budget = ${args.budget_usd:.4f})")
    finally:
        for gw in gateways:
            gw.stop()
        mock.stop()
        webdis.stop()
        redis.cleanup()


if __name__ == "__main__":
    main()
