#!/usr/bin/env python3
"""Timing side of tests/bench/verwalter.sh (O1 failover, O2 propagate), for verwalter and etcd.

Runs in the probe namespace; talks HTTP only (verwalter's /v1 API, etcd's v3 JSON gateway),
so both systems pay the same client cost. Subcommands:

  leader SYSTEM URL...               wait until every node agrees on one leader; print its index
  failover SYSTEM PID URL...         SIGKILL PID, then print ms until a write is accepted (200)
                                     on one of the URLs (the survivors)
  propagate SYSTEM COUNT URL FILE... COUNT writes to URL (the leader), each a new value; print
                                     a JSON line per write with ms until each FILE shows it
  sink FILE                          etcd side of O2: read `etcdctl watch` output on stdin and
                                     write `value=V` to FILE (temporary file and rename)
"""
import base64
import json
import os
import signal
import sys
import threading
import time
import urllib.error
import urllib.request

TOKEN = os.environ.get("BENCH_TOKEN", "bench-token")
KEY = "bench/value"
# O1 polling: per-request timeout, pollers per survivor, their start offsets.
REQUEST_TIMEOUT = 0.25
POLLERS = 5
STAGGER = 0.05


def http(url, body=None, timeout=1.0, token=False):
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method="GET" if data is None else "POST")
    if data is not None:
        request.add_header("Content-Type", "application/json")
    if token:
        request.add_header("Authorization", f"Bearer {TOKEN}")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()
    except (OSError, ValueError):
        return None, b""


def b64(text):
    return base64.b64encode(text.encode()).decode()


def write(system, url, value, timeout):
    """One write: an action on verwalter, a put on etcd. True when accepted."""
    if system == "verwalter":
        status, _ = http(f"{url}/v1/action", {"value": value}, timeout, token=True)
    else:
        status, _ = http(f"{url}/v3/kv/put", {"key": b64(KEY), "value": b64(str(value))}, timeout)
    return status == 200


def leader_of(system, url):
    """(this node's leader as the node sees it, whether it is the leader itself)."""
    if system == "verwalter":
        status, body = http(f"{url}/v1/election", timeout=0.5)
        if status != 200:
            return None, False
        election = json.loads(body)
        state = election.get("state")
        name = state.get("state") if isinstance(state, dict) else state
        return election.get("leader"), name == "Leader"
    status, body = http(f"{url}/v3/maintenance/status", {}, timeout=0.5)
    if status != 200:
        return None, False
    reply = json.loads(body)
    leader = reply.get("leader")
    return leader, leader is not None and leader == reply["header"]["member_id"]


def cmd_leader(system, urls):
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        views = [leader_of(system, url) for url in urls]
        leaders = {leader for leader, _ in views}
        own = [i for i, (_, is_leader) in enumerate(views) if is_leader]
        if len(leaders) == 1 and None not in leaders and len(own) == 1:
            print(own[0])
            return 0
        time.sleep(0.1)
    print(f"no stable leader: {views}", file=sys.stderr)
    return 1


def cmd_failover(system, pid, urls):
    done = threading.Event()
    result = {}
    start = time.monotonic()

    def poll(url, offset):
        time.sleep(offset)
        attempt = 0
        while not done.is_set() and time.monotonic() - start < 30:
            attempt += 1
            if write(system, url, f"failover-{pid}-{attempt}", REQUEST_TIMEOUT):
                result.setdefault("ms", (time.monotonic() - start) * 1000)
                result.setdefault("url", url)
                done.set()
                return
            time.sleep(0.02)

    os.kill(pid, signal.SIGKILL)
    # A write sent while a follower still believes in the dead leader can hang (etcd
    # forwards it to the dead leader), so each request gets REQUEST_TIMEOUT and several
    # staggered pollers per survivor keep a fresh request going every STAGGER seconds.
    threads = [
        threading.Thread(target=poll, args=(url, k * STAGGER), daemon=True)
        for url in urls
        for k in range(POLLERS)
    ]
    for thread in threads:
        thread.start()
    done.wait(31)
    if "ms" not in result:
        print("no write accepted within 30 s", file=sys.stderr)
        return 1
    print(f"{result['ms']:.1f} {result['url']}")
    return 0


def cmd_propagate(system, count, url, files):
    base = int(time.time() * 1000) * 1000
    for i in range(count):
        value = base + i
        expected = f"value={value}\n"
        seen = [None] * len(files)
        accepted = {}
        start = time.monotonic()

        def send():
            accepted["ok"] = write(system, url, value, 5.0)
            accepted["ms"] = (time.monotonic() - start) * 1000

        sender = threading.Thread(target=send, daemon=True)
        sender.start()
        while None in seen and time.monotonic() - start < 10:
            for n, path in enumerate(files):
                if seen[n] is None:
                    try:
                        with open(path) as file:
                            if file.read() == expected:
                                seen[n] = (time.monotonic() - start) * 1000
                    except OSError:
                        pass
            time.sleep(0.001)
        sender.join(6)
        print(json.dumps({"i": i, "value": value, "nodes_ms": seen, "write": accepted}), flush=True)
        if None in seen:
            print(f"change {i} did not reach every node within 10 s", file=sys.stderr)
            return 1
        time.sleep(0.1)
    return 0


def cmd_sink(path):
    # `etcdctl watch` prints three lines per event: type, key, value.
    lines = iter(sys.stdin.readline, "")
    for event in lines:
        key, value = next(lines, ""), next(lines, "")
        if event.strip() != "PUT" or key.strip() != KEY:
            continue
        staging = f"{path}.tmp"
        with open(staging, "w") as file:
            file.write(f"value={value.strip()}\n")
        os.rename(staging, path)
    return 0


def main(argv):
    command, rest = argv[1], argv[2:]
    if command == "leader":
        return cmd_leader(rest[0], rest[1:])
    if command == "failover":
        return cmd_failover(rest[0], int(rest[1]), rest[2:])
    if command == "propagate":
        return cmd_propagate(rest[0], int(rest[1]), rest[2], rest[3:])
    if command == "sink":
        return cmd_sink(rest[0])
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
