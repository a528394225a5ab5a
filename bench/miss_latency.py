#!/usr/bin/env python3
"""What a key-cache miss adds to a request, with the Redis store.

Starts its own redis-server and keygate (release build) on free loopback ports, creates N keys
through the CLI, then for each key sends two requests on one keep-alive connection: the first
misses the cache (one Redis read), the second hits. The added latency of a miss is the
difference of the medians (and of the p90s); the client's own overhead is the same in both.

    python3 bench/miss_latency.py            # N = 2000
    N=5000 python3 bench/miss_latency.py

Prints one summary line; run it on an idle machine (CPU-pinned like bench/run.sh).
"""

import http.client
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KEYGATE = os.path.join(ROOT, "target", "release", "keygate")
N = int(os.environ.get("N", "2000"))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, timeout=10):
    end = time.time() + timeout
    while time.time() < end:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    sys.exit(f"nothing listening on {port}")


def main():
    if not os.path.exists(KEYGATE):
        sys.exit("build first: cargo build --release")
    work = tempfile.mkdtemp(prefix="keygate-miss-")
    procs = []
    try:
        redis_port, public, admin, upstream = (free_port() for _ in range(4))
        procs.append(subprocess.Popen(
            ["taskset", "-c", "0", "redis-server", "--port", str(redis_port), "--save", "",
             "--appendonly", "no", "--bind", "127.0.0.1"],
            stdout=subprocess.DEVNULL))
        wait_port(redis_port)
        # The upstream: keygate's own echo server is not a separate binary, so use a tiny
        # Python one that answers 200 at once (the same for hits and misses).
        up = subprocess.Popen([sys.executable, "-c", UPSTREAM, str(upstream)])
        procs.append(up)
        wait_port(upstream)
        config = os.path.join(work, "proxy.toml")
        with open(config, "w") as f:
            f.write(f"""[listen]
public = "127.0.0.1:{public}"
admin = "127.0.0.1:{admin}"
[server]
workers = 1
[upstream]
url = "http://127.0.0.1:{upstream}"
[store]
kind = "redis"
url = "redis://127.0.0.1:{redis_port}"
[auth]
unmatched = "allow"
[log]
access = false
""")
        out = subprocess.run(
            [KEYGATE, "keys", "create", "-c", config, "--name", "miss", "--scopes", "*",
             "--count", str(N)], check=True, capture_output=True, text=True).stdout
        keys = [json.loads(line)["key"] for line in out.splitlines() if line.strip()]
        kg = subprocess.Popen(["taskset", "-c", "0", KEYGATE, "serve", "-c", config],
                              stderr=subprocess.DEVNULL)
        procs.append(kg)
        wait_port(public)
        conn = http.client.HTTPConnection("127.0.0.1", public)
        conn.connect()
        conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

        def timed(key):
            start = time.perf_counter()
            conn.request("GET", "/v1/resource", headers={"x-api-key": key})
            r = conn.getresponse()
            r.read()
            took = time.perf_counter() - start
            if r.status != 200:
                sys.exit(f"unexpected status {r.status}")
            return took

        for key in keys[:50]:  # warm the connection and the code paths
            timed(key)
            timed(key)
        miss, hit = [], []
        for key in keys[50:]:
            miss.append(timed(key))
            hit.append(timed(key))
        q = lambda xs, p: sorted(xs)[int(p * (len(xs) - 1))] * 1e6
        print(f"{len(miss)} keys: miss p50 {q(miss, .5):.0f} us, hit p50 {q(hit, .5):.0f} us, "
              f"added p50 {q(miss, .5) - q(hit, .5):.0f} us; "
              f"p90 {q(miss, .9):.0f} vs {q(hit, .9):.0f} us "
              f"(added {q(miss, .9) - q(hit, .9):.0f} us)")
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait()
        shutil.rmtree(work, ignore_errors=True)


# One write per response: split writes would meet Nagle and delayed ACKs (40 ms stalls).
UPSTREAM = r"""
import socket, sys, threading
RESPONSE = b"HTTP/1.1 200 OK\r\ncontent-length: 11\r\n\r\n{\"ok\":true}"
def serve(conn):
    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    buf = b""
    while True:
        data = conn.recv(65536)
        if not data:
            return
        buf += data
        while b"\r\n\r\n" in buf:
            _, buf = buf.split(b"\r\n\r\n", 1)
            conn.sendall(RESPONSE)
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", int(sys.argv[1])))
s.listen(128)
while True:
    c, _ = s.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()
"""

if __name__ == "__main__":
    main()
