#!/usr/bin/env python3
"""Writes the O3 scheduler input: HOSTS simulated hosts and SERVICES services of INSTANCES
instances each, in the format of verwalter's /v1/scheduler_input."""
import json
import sys

HOSTS, SERVICES, INSTANCES = (int(a) for a in sys.argv[1:4])
NOW = 1_800_000_000_000

peers = {}
for i in range(HOSTS):
    peer_id = f"{i + 1:032x}"
    peers[peer_id] = {
        "id": peer_id,
        "addr": f"10.0.{i // 250}.{i % 250 + 1}:8379",
        "name": f"host{i + 1:03}",
        "hostname": f"host{i + 1:03}",
        "schedule": None,
        "known_since": NOW,
        "last_report_direct": NOW,
        "errors": 0,
        "failed_roles": [],
        "state": "alive",
        # Two sizes of host, so the placement is not a plain round robin.
        "machine": {"capacity": {"cpu": 16 if i % 3 else 32, "memory": 65536 if i % 3 else 131072}},
    }
runtime = {
    f"svc{s:02}": {"v1": {"release": {"instances": INSTANCES, "cpu": 0.25 + (s % 4) * 0.25, "memory": 256 * (1 + s % 3)}}}
    for s in range(SERVICES)
}
json.dump(
    {
        "now": NOW,
        "current_host": "host001",
        "current_id": f"{1:032x}",
        "parents": [],
        "actions": {},
        "runtime": runtime,
        "peers": peers,
        "metrics": {},
        "metrics_errors": {},
    },
    sys.stdout,
)
