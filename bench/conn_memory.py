#!/usr/bin/env python3
"""Resident memory per open client connection, and after the connections close.

    bench/conn_memory.py [KEYGATE_BINARY] [--connections N] [--floods K] [--env K=V ...] [--tls] [--h2]
    bench/conn_memory.py --attach PORT --pid PID [--pid PID ...] --key KEY [--tls] [--h2] [...]

Starts keygate (file store, one key, access log off; build it first, e.g. `cargo build
--release`, or `--features mimalloc` to compare allocators) in front of a small asyncio upstream,
then K times: opens N HTTP/1.1 keep-alive connections that each send one request, read the
response and then sit idle; samples keygate's VmRSS while they are held (after 3 s, past the
1 s after which an idle connection gives up its buffers), closes them all and samples again
after 3 s. Prints one line per flood and a summary: KB per idle connection, and RSS after
the last close against RSS before the first flood. A silent round follows: N connections that
never send a byte (they hold a slot until the header timeout). With `--tls` keygate serves
HTTPS (a self-signed certificate made with `openssl`) and every connection, the silent ones
included, completes a TLS handshake first. With `--h2` each connection speaks HTTP/2 (prior
knowledge, or ALPN h2 with `--tls`) and its one request is stream 1.

`--attach` measures a server that is already running instead (a peer started by `bench/run.sh
serve`: nginx key+limit on 8084, TLS 8484; HAProxy 8085, TLS 8485; a key from
`bench/work/wrk_keys.txt`; HTTP/2 with prior knowledge: nginx 8184, HAProxy 8185), its RSS summed over the given PIDs (nginx: its master and worker).

No timed assertions: figures go to bench/RESULTS.md.
"""

import argparse
import asyncio
import json
import os
import socket
import ssl
import subprocess
import sys
import tempfile
import time


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_by_mapping(pid):
    """Resident KB by what backs it: the binary's own pages, shared libraries, the heap and
    anonymous mappings (glibc's thread arenas, stacks, tokio's structures)."""
    kinds = {}
    kind = None
    with open(f"/proc/{pid}/smaps") as f:
        for line in f:
            first = line.split(maxsplit=6)
            if "-" in first[0] and len(first) >= 5 and ":" in first[3]:
                path = first[5].strip() if len(first) > 5 else ""
                if not path:
                    kind = "anonymous"
                elif path.startswith("/"):
                    kind = "binary" if os.path.basename(path).startswith("keygate") else "libraries"
                else:
                    kind = path
            elif line.startswith("Rss:"):
                kinds[kind] = kinds.get(kind, 0) + int(line.split()[1])
    return kinds


def show_mappings(label, pid):
    kinds = rss_by_mapping(pid)
    parts = ", ".join(f"{k} {v / 1024:.2f}" for k, v in sorted(kinds.items(), key=lambda kv: -kv[1]) if v)
    print(f"  resident by mapping {label} (MB): {parts}")


def rss_kb(pids):
    """VmRSS summed over `pids` (one PID, or several for a server of many processes)."""
    total = 0
    for pid in [pids] if isinstance(pids, int) else pids:
        with open(f"/proc/{pid}/status") as f:
            total += next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
    return total


async def upstream(reader, writer):
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            if not head:
                break
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
        pass
    finally:
        writer.close()


def tls_files(work):
    """A self-signed certificate for 127.0.0.1, made by the openssl command line."""
    cert, key = os.path.join(work, "cert.pem"), os.path.join(work, "key.pem")
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
         "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1", "-addext",
         "subjectAltName=IP:127.0.0.1", "-keyout", key, "-out", cert],
        check=True, capture_output=True,
    )
    return cert, key


def client_tls(h2):
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.set_alpn_protocols(["h2"] if h2 else ["http/1.1"])
    return ctx


def hpack_literal(index, value):
    """A header with the name at static-table `index`, its value a literal, not indexed."""
    return bytes([index, len(value)]) + value


def h2_frame(kind, flags, stream, payload=b""):
    return len(payload).to_bytes(3, "big") + bytes([kind, flags]) + stream.to_bytes(4, "big") + payload


async def one_request(port, key, tls=None, h2=False):
    if h2:
        return await one_h2_request(port, key, tls)
    reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=tls)
    writer.write(
        f"GET /x HTTP/1.1\r\nhost: bench\r\nx-api-key: {key}\r\n\r\n".encode()
    )
    await writer.drain()
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":")[1])
    await reader.readexactly(length)
    if not head.startswith(b"HTTP/1.1 200"):
        raise RuntimeError(head.decode(errors="replace"))
    return writer


async def one_h2_request(port, key, tls):
    """An HTTP/2 connection (prior knowledge, or ALPN h2 over TLS) that sends one GET on stream
    1 and reads its answer whole, then stays open: frames written by hand (HPACK literals, no
    Huffman), so the script needs no HTTP/2 package."""
    SETTINGS, HEADERS, DATA, GOAWAY, RST = 4, 1, 0, 7, 3
    END_STREAM, ACK, END_HEADERS = 0x1, 0x1, 0x4
    reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=tls)
    block = (
        b"\x82" + (b"\x87" if tls else b"\x86")  # :method GET, :scheme https / http
        + hpack_literal(4, b"/x") + hpack_literal(1, b"bench")  # :path, :authority
        + b"\x00" + bytes([len(b"x-api-key")]) + b"x-api-key" + bytes([len(key)]) + key.encode()
    )
    writer.write(
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + h2_frame(SETTINGS, 0, 0)
        + h2_frame(HEADERS, END_STREAM | END_HEADERS, 1, block)
    )
    await writer.drain()
    while True:
        head = await reader.readexactly(9)
        length, kind, flags = int.from_bytes(head[:3], "big"), head[3], head[4]
        stream = int.from_bytes(head[5:9], "big") & 0x7FFFFFFF
        payload = await reader.readexactly(length)
        if kind == SETTINGS and not flags & ACK:
            writer.write(h2_frame(SETTINGS, ACK, 0))
        elif kind in (GOAWAY, RST):
            raise RuntimeError(f"HTTP/2 frame {kind}: {payload.hex()}")
        elif kind == HEADERS and stream == 1 and payload[:1] != b"\x88":  # :status 200
            raise RuntimeError(f"HTTP/2 response head {payload.hex()}")
        if kind in (HEADERS, DATA) and stream == 1 and flags & END_STREAM:
            return writer


async def open_many(count, make):
    out = []
    batch = 200
    for start in range(0, count, batch):
        out += await asyncio.gather(*(make() for _ in range(min(batch, count - start))))
    return out


async def close_all(writers):
    for w in writers:
        w.close()
    await asyncio.sleep(0)


async def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("binary", nargs="?", default="target/release/keygate")
    parser.add_argument("--connections", type=int, default=5000)
    parser.add_argument("--floods", type=int, default=3)
    parser.add_argument("--env", action="append", default=[])
    parser.add_argument("--tls", action="store_true", help="HTTPS: a TLS handshake per connection")
    parser.add_argument("--h2", action="store_true", help="HTTP/2: h2c, or ALPN h2 with --tls")
    parser.add_argument("--attach", type=int, metavar="PORT", help="a running server's port")
    parser.add_argument("--pid", type=int, action="append", default=[], help="with --attach")
    parser.add_argument("--key", help="with --attach: an API key the server accepts")
    args = parser.parse_args()
    tls = client_tls(args.h2) if args.tls else None
    if args.attach:
        if not args.pid or not args.key:
            parser.error("--attach needs --pid and --key")
        await measure(args, args.attach, args.key, tls, args.pid, f"server on :{args.attach}")
        return

    up_server = await asyncio.start_server(upstream, "127.0.0.1", 0, backlog=4096)
    up_port = up_server.sockets[0].getsockname()[1]
    work = tempfile.mkdtemp(prefix="conn-memory-")
    public, admin = free_port(), free_port()
    config = os.path.join(work, "proxy.toml")
    tls_section = ""
    if args.tls:
        cert, key_file = tls_files(work)
        tls_section = f'[tls]\ncert = "{cert}"\nkey = "{key_file}"\n\n'
    with open(config, "w") as f:
        f.write(
            f'[listen]\npublic = "127.0.0.1:{public}"\nadmin = "127.0.0.1:{admin}"\n\n'
            f'[upstream]\nurl = "http://127.0.0.1:{up_port}"\n\n'
            '[store]\nkind = "file"\npath = "keys.json"\n\n'
            '[server]\nmax_connections = 20000\n\n'
            '[auth]\nunmatched = "allow"\n\n[log]\naccess = false\n\n' + tls_section
        )
    created = subprocess.run(
        [args.binary, "keys", "create", "-c", config, "--name", "bench", "--scopes", "*"],
        check=True, capture_output=True,
    )
    key = json.loads(created.stdout)["key"]
    env = dict(os.environ)
    for kv in args.env:
        k, v = kv.split("=", 1)
        env[k] = v
    proc = subprocess.Popen(
        [args.binary, "serve", "-c", config], env=env,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        await measure(args, public, key, tls, [proc.pid], f"keygate {args.binary} {' '.join(args.env)}")
    finally:
        proc.terminate()
        proc.wait()
        up_server.close()


async def measure(args, public, key, tls, pids, label):
    """The floods, the settling and the silent connections, against `public`."""
    for _ in range(200):
        try:
            w = await one_request(public, key, tls, args.h2)
            w.close()
            break
        except OSError:
            await asyncio.sleep(0.05)
    await asyncio.sleep(1)
    start = rss_kb(pids)
    print(f"{label}{' TLS' if args.tls else ''}{' HTTP/2' if args.h2 else ''}: RSS at start {start / 1024:.1f} MB")
    if len(pids) == 1:
        show_mappings("at start", pids[0])
    per_conn = []
    after = start
    for flood in range(1, args.floods + 1):
        before = rss_kb(pids)
        t0 = time.monotonic()
        writers = await open_many(args.connections, lambda: one_request(public, key, tls, args.h2))
        opened = time.monotonic() - t0
        await asyncio.sleep(3)
        held = rss_kb(pids)
        await close_all(writers)
        await asyncio.sleep(3)
        after = rss_kb(pids)
        kb = (held - before) / args.connections
        per_conn.append(kb)
        print(
            f"flood {flood}: {args.connections} idle keep-alive connections (opened in "
            f"{opened:.1f} s): RSS {before / 1024:.1f} -> {held / 1024:.1f} MB held "
            f"({kb:.1f} KB each), {after / 1024:.1f} MB 3 s after closing"
        )
    print(
        f"summary: {min(per_conn):.1f}-{max(per_conn):.1f} KB per idle connection; "
        f"after the last close {after / 1024:.1f} MB against {start / 1024:.1f} MB at "
        f"start ({100 * (after - start) / start:+.0f} %)"
    )
    # Parked upstream connections (at most 256) are closed after 30 s, by a sweep every
    # 5 s, and the heap trimmed within 2 s of that.
    await asyncio.sleep(37)
    settled = rss_kb(pids)
    print(
        f"40 s after the last close (parked upstream connections gone): "
        f"{settled / 1024:.1f} MB ({100 * (settled - start) / start:+.0f} % of the start)"
    )
    if len(pids) == 1:
        show_mappings("40 s after the last close", pids[0])

    async def silent():
        _, writer = await asyncio.open_connection("127.0.0.1", public, ssl=tls)
        return writer

    before = rss_kb(pids)
    writers = await open_many(args.connections, silent)
    await asyncio.sleep(2)
    held = rss_kb(pids)
    await close_all(writers)
    await asyncio.sleep(3)
    print(
        f"silent: {args.connections} connections that never send: RSS {before / 1024:.1f} "
        f"-> {held / 1024:.1f} MB ({(held - before) / args.connections:.1f} KB each), "
        f"{rss_kb(pids) / 1024:.1f} MB 3 s after closing"
    )


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
