#!/usr/bin/env python3
"""Summaries for bench/run.sh: medians of clean runs, per-round ratios, chart data.

    analyze.py throughput RESULTS_TSV STEAL_MAX WORKDIR   markdown tables on stdout, WORKDIR/chart.dat
    analyze.py latency    LATENCY_TSV STEAL_MAX WORKDIR   markdown table on stdout (latency and
                                                            latency-proto modes)
    analyze.py oha-line   OHA_JSON ID STEAL BUSY          one progress line
    analyze.py h2load-result H2LOAD_OUTPUT                  h2load's report as a RESULT line
    analyze.py scaling    SCALING_TSV                       one worker on one core vs two on two

The h2 and tls modes of run.sh use `throughput` on their own results-h2.tsv / results-tls.tsv
(chart data to $CHART_DAT instead of WORKDIR/chart.dat). h2load's report has no percentiles:
they come from its --log-file when run.sh passes one (else they print as nan).

results.tsv rows: round, scenario, steal %, CPU-0 busy %, then the k=v fields of bench.lua's
RESULT line (rps, requests, p50_us, p90_us, p99_us, p999_us, max_us, mean_us, non2xx3xx,
err_connect, err_read, err_write, err_timeout) and other= (CPU % of one core used by
processes other than the servers and wrk). Standard library only.
"""

import json
import os
import re
import statistics
import sys

ORDER = [
    "direct", "nginx_plain", "nginx_auth", "haproxy_plain", "haproxy_auth",
    "kg_a", "kg_b", "kg_c", "kg_d", "kg_e", "kg_f", "kg_g",
]
LABEL = {
    "direct": "direct upstream",
    "nginx_plain": "nginx plain",
    "nginx_auth": "nginx key+limit",
    "haproxy_plain": "HAProxy plain",
    "haproxy_auth": "HAProxy key+limit",
    "kg_a": "keygate (a) public path",
    "kg_b": "keygate (b) file store",
    "kg_c": "keygate (c) + rate limits",
    "kg_d": "keygate (d) Redis store",
    "kg_e": "keygate (e) unknown keys",
    "kg_f": "keygate (f) (b) without io_uring: AIO",
    "kg_g": "keygate (g) (b) batched writes off",
}
# HTTP/2 and TLS scenarios (run.sh h2 / tls): the three proxies doing the same job.
PROXIES = (("nginx", "nginx key+limit"), ("haproxy", "HAProxy key+limit"), ("kg", "keygate key+limit"))
PROTO_GROUPS = [
    ("h2_h2c_m10", "h2c, 10 streams/conn"),
    ("h2_h2c_m1", "h2c, 1 stream/conn"),
    ("h2_tls_m10", "TLS h2, 10 streams/conn"),
    ("h2_tls_m1", "TLS h2, 1 stream/conn"),
    ("tls_ka", "TLS HTTP/1.1 keep-alive"),
    ("tls_hs", "TLS HTTP/1.1, handshake per request"),
]
# HTTP/2 only: HAProxy's job with the five rate-limit headers keygate sends (bench/peers/haproxy.cfg).
WITH_HEADERS = ("haproxyh", "HAProxy key+limit+headers")


def proxies(group):
    return PROXIES[:2] + (WITH_HEADERS,) + PROXIES[2:] if group.startswith("h2_") else PROXIES


for group, what in PROTO_GROUPS:
    for proxy, name in proxies(group):
        ORDER.append("%s_%s" % (group, proxy))
        LABEL["%s_%s" % (group, proxy)] = "%s: %s" % (what, name)

# (numerator, denominator, what it answers)
RATIOS = [
    ("kg_b", "haproxy_auth", "keygate(b) / HAProxy key+limit"),
    ("kg_b", "nginx_auth", "keygate(b) / nginx key+limit"),
    ("kg_b", "kg_a", "keygate(b) / keygate(a): cost of the key check"),
    ("kg_c", "haproxy_auth", "keygate(c) / HAProxy key+limit: same job"),
    ("kg_c", "nginx_auth", "keygate(c) / nginx key+limit: same job"),
    ("kg_c", "kg_b", "keygate(c) / keygate(b): cost of the rate limit"),
    ("kg_e", "kg_b", "keygate(e) / keygate(b): refusing vs forwarding"),
    ("kg_d", "kg_b", "keygate(d) / keygate(b): Redis store vs file store"),
    ("kg_f", "haproxy_auth", "keygate(f) / HAProxy key+limit: without io_uring (AIO)"),
    ("kg_f", "nginx_auth", "keygate(f) / nginx key+limit: without io_uring (AIO)"),
    ("kg_f", "kg_b", "keygate(f) / keygate(b): AIO vs io_uring"),
    ("kg_g", "haproxy_auth", "keygate(g) / HAProxy key+limit: batched writes off"),
    ("kg_f", "kg_g", "keygate(f) / keygate(g): AIO batching vs none"),
    ("kg_a", "haproxy_plain", "keygate(a) / HAProxy plain: bare proxying"),
    ("haproxy_auth", "haproxy_plain", "HAProxy key+limit / HAProxy plain"),
    ("nginx_auth", "haproxy_plain", "nginx key+limit / HAProxy plain"),
]
for group, what in PROTO_GROUPS:
    RATIOS.append((group + "_kg", group + "_haproxy", "%s: keygate / HAProxy key+limit" % what))
    if group.startswith("h2_"):
        RATIOS.append((group + "_kg", group + "_haproxyh",
                       "%s: keygate / HAProxy key+limit+headers: same headers" % what))
    RATIOS.append((group + "_kg", group + "_nginx", "%s: keygate / nginx key+limit" % what))


def med(xs):
    return statistics.median(xs) if xs else float("nan")


def load_runs(path):
    runs = []
    with open(path) as f:
        for line in f:
            cols = line.rstrip("\n").split("\t")
            if len(cols) < 5:
                continue
            run = {"round": cols[0], "id": cols[1], "steal": float(cols[2]), "busy": float(cols[3])}
            for kv in cols[4:]:
                k, _, v = kv.partition("=")
                run[k] = float(v)
            runs.append(run)
    return runs


def throughput(path, steal_max, work, other_max):
    runs = load_runs(path)
    ids = [i for i in ORDER if any(r["id"] == i for r in runs)]
    rounds = sorted({r["round"] for r in runs}, key=int)
    clean = lambda r: (r is not None and "rps" in r and r["steal"] <= steal_max
                       and r.get("other", 0) <= other_max)
    # A scenario may have been re-run within its round: its clean attempt counts, else the last.
    by = {}
    for r in runs:
        key = (r["round"], r["id"])
        if key not in by or not clean(by[key]):
            by[key] = r

    print("### Per round: req/s (steal %%, other processes' CPU %% during the run; "
          "`*` = dropped: steal > %.1f%% or other > %.1f%% of a CPU)\n" % (steal_max, other_max))
    print("| scenario | " + " | ".join("r" + x for x in rounds) + " |")
    print("|---|" + "---:|" * len(rounds))
    for i in ids:
        cells = []
        for x in rounds:
            r = by.get((x, i))
            if r is None or "rps" not in r:
                cells.append("–")
            else:
                cells.append("%s%.0f (%.1f, %.1f)" % ("" if clean(r) else "*", r["rps"], r["steal"],
                                                      r.get("other", float("nan"))))
        print("| %s | %s |" % (LABEL[i], " | ".join(cells)))

    print("\n### Medians of clean runs\n")
    print("| scenario | clean runs | req/s | p50 µs | p99 µs | p99.9 µs | CPU-0 busy % | non-2xx/3xx | socket errors |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    chart = []
    for i in ids:
        ok = [by[(x, i)] for x in rounds if clean(by.get((x, i)))]
        all_runs = [r for r in runs if r["id"] == i and "rps" in r]  # retries included
        non2xx = sum(r["non2xx3xx"] for r in all_runs)
        reqs = sum(r["requests"] for r in all_runs)
        errs = sum(r["err_connect"] + r["err_read"] + r["err_write"] + r["err_timeout"] for r in all_runs)
        m = {k: med([r[k] for r in ok]) for k in ("rps", "p50_us", "p99_us", "p999_us", "busy")}
        print("| %s | %d/%d | %.0f | %.0f | %.0f | %.0f | %.0f | %d of %d | %d |" % (
            LABEL[i], len(ok), len(rounds), m["rps"], m["p50_us"], m["p99_us"], m["p999_us"],
            m["busy"], non2xx, reqs, errs))
        chart.append((LABEL[i], m["rps"], m["p99_us"]))
    with open(os.environ.get("CHART_DAT") or work + "/chart.dat", "w") as f:
        for label, rps, p99 in chart:
            f.write("%s\t%.1f\t%.1f\n" % (label, rps, p99))

    print("\n### Per-round ratios of req/s (both runs of the round clean)\n")
    print("| ratio | " + " | ".join("r" + x for x in rounds) + " | median | min–max |")
    print("|---|" + "---:|" * (len(rounds) + 2))
    for num, den, what in RATIOS:
        if num not in ids or den not in ids:
            continue
        vals, cells = [], []
        for x in rounds:
            a, b = by.get((x, num)), by.get((x, den))
            if clean(a) and clean(b) and b["rps"] > 0:
                v = a["rps"] / b["rps"]
                vals.append(v)
                cells.append("%.2f" % v)
            else:
                cells.append("–")
        rng = "%.2f–%.2f" % (min(vals), max(vals)) if vals else "–"
        print("| %s | %s | **%.2f** | %s |" % (what, " | ".join(cells), med(vals), rng))

    print("\n### Status checks\n")
    print("- %d timed runs for %d rounds x %d scenarios (runs that were not clean are re-run in "
          "their round, up to RETRIES times)" % (len(runs), len(rounds), len(ids)))
    wants = [("kg_b", "all 2xx"), ("kg_c", "all 2xx"), ("kg_d", "all 2xx"), ("kg_e", "all refused"),
             ("kg_f", "all 2xx"), ("kg_g", "all 2xx")]
    wants += [(i, "all 2xx") for i in ORDER if i.startswith(("h2_", "tls_"))]
    for i, want in wants:
        rs = [r for r in runs if r["id"] == i and "rps" in r]
        if not rs:
            continue
        non2xx = sum(r["non2xx3xx"] for r in rs)
        reqs = sum(r["requests"] for r in rs)
        verdict = {
            "all 2xx": "OK" if non2xx == 0 else "NOT OK",
            "all refused": "OK" if non2xx == reqs else "NOT OK",
        }[want]
        print("- %s: %d non-2xx/3xx of %d requests (want %s): %s" % (LABEL[i], non2xx, reqs, want, verdict))
    try:
        with open(work + "/checks.tsv") as f:
            for line in f:
                name, got, n = line.split()
                if name == "e_sample_401":
                    print("- keygate (e): %s of %s sampled requests (curl, one per key) answered 401 invalid_api_key" % (got, n))
    except FileNotFoundError:
        pass


def oha_stats(path):
    with open(path) as f:
        d = json.load(f)
    pct = d.get("latencyPercentiles", {})
    summ = d.get("summary", {})
    codes = d.get("statusCodeDistribution", {})
    errors = d.get("errorDistribution", {})
    return {
        "rps": summ.get("requestsPerSec", float("nan")),
        "p50_us": pct.get("p50", float("nan")) * 1e6,
        "p99_us": pct.get("p99", float("nan")) * 1e6,
        "p999_us": pct.get("p99.9", float("nan")) * 1e6,
        "ok": sum(v for k, v in codes.items() if k.startswith("2")),
        "non2xx": sum(v for k, v in codes.items() if not k.startswith("2")),
        # oha's own end of run, not the server's: requests the rate had scheduled when the
        # duration ran out.
        "errors": sum(v for k, v in errors.items() if k != "aborted due to deadline")
        if isinstance(errors, dict) else 0,
    }


def oha_line(path, ident, steal, busy, other="nan", servers="nan"):
    try:
        s = oha_stats(path)
    except (OSError, ValueError) as e:
        print("  %-14s unreadable oha output: %s" % (ident, e))
        return
    print("  %-14s rps=%.0f p50_us=%.0f p99_us=%.0f p999_us=%.0f 2xx=%d non2xx=%d errors=%d "
          "steal=%s%% cpu0=%s%% servers=%s%% other=%s%%" % (
              ident, s["rps"], s["p50_us"], s["p99_us"], s["p999_us"], s["ok"], s["non2xx"],
              s["errors"], steal, busy, servers, other))


def latency(path, steal_max, work, other_max):
    rows = []
    with open(path) as f:
        for line in f:
            rnd, ident, steal, busy, other, servers, out = line.rstrip("\n").split("\t")
            try:
                s = oha_stats(out)
            except (OSError, ValueError):
                continue
            s.update(round=rnd, id=ident, steal=float(steal), busy=float(busy),
                     other=float(other), servers=float(servers))
            s["clean"] = s["steal"] <= steal_max and s["other"] <= other_max
            rows.append(s)
    ids = [i for i in ORDER if any(r["id"] == i for r in rows)]
    n_rounds = len({r["round"] for r in rows})
    direct = med([r["servers"] for r in rows if r["id"] == "direct" and r["clean"]])
    print("### Fixed rate: medians of clean runs\n")
    print("Servers CPU = CPU time of the servers under test (proxy + upstream) from their own "
          "/proc/PID/stat, in % of one core; proxy µs/req = (servers CPU - direct's) / achieved rate.\n")
    print("| scenario | clean runs | achieved req/s | p50 µs | p99 µs | p99.9 µs | CPU-0 busy % | servers CPU % | proxy CPU µs/req | non-2xx | errors |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for i in ids:
        ok = [r for r in rows if r["id"] == i and r["clean"]]
        allr = [r for r in rows if r["id"] == i]
        m = {k: med([r[k] for r in ok]) for k in ("rps", "p50_us", "p99_us", "p999_us", "busy", "servers")}
        per_req = "–" if i == "direct" else "%.1f" % ((m["servers"] - direct) / 100 / m["rps"] * 1e6)
        print("| %s | %d/%d | %.0f | %.0f | %.0f | %.0f | %.1f | %.1f | %s | %d | %d |" % (
            LABEL[i], len(ok), n_rounds, m["rps"], m["p50_us"], m["p99_us"], m["p999_us"], m["busy"],
            m["servers"], per_req, sum(r["non2xx"] for r in allr), sum(r["errors"] for r in allr)))
    # latency-proto: keygate's p99 against each peer's, per protocol (below 1: keygate lower).
    groups = [(g, what) for g, what in PROTO_GROUPS if any(r["id"].startswith(g + "_") for r in rows)]
    if groups:
        print("\nkeygate's p99 / the peer's p99, per round (clean runs; below 1: keygate's is lower):\n")
    for g, what in groups:
        for peer, name in (("haproxy", "HAProxy key+limit"), ("nginx", "nginx key+limit")):
            per_round = []
            for rnd in sorted({r["round"] for r in rows}, key=int):
                kg = [r["p99_us"] for r in rows if r["id"] == g + "_kg" and r["round"] == rnd and r["clean"]]
                other = [r["p99_us"] for r in rows if r["id"] == "%s_%s" % (g, peer) and r["round"] == rnd and r["clean"]]
                if kg and other and other[-1] > 0:
                    per_round.append(kg[-1] / other[-1])
            print("- %s, keygate / %s: %s (median %.2f)" % (
                what, name, ", ".join("%.2f" % x for x in per_round) or "no clean pair", med(per_round)))
    print("\nEvery run (p50 / p99 µs; CPU-0 busy, servers CPU, other processes, steal in %; "
          "`*` = not clean, re-run):\n")
    for r in rows:
        print("- r%s %s%s: %.0f / %.0f µs; busy %.1f, servers %.1f, other %.1f, steal %.2f" % (
            r["round"], "" if r["clean"] else "*", LABEL[r["id"]], r["p50_us"], r["p99_us"],
            r["busy"], r["servers"], r["other"], r["steal"]))


def percentile(sorted_xs, q):
    """Nearest-rank percentile of an ascending list (q in 0..100)."""
    if not sorted_xs:
        return float("nan")
    k = max(0, min(len(sorted_xs) - 1, int(round(q / 100.0 * len(sorted_xs) + 0.5)) - 1))
    return sorted_xs[k]


def h2load_result(path, reqlog=None):
    """h2load's text report -> "RESULT k=v ..." with bench.lua's keys. Percentiles come from
    h2load's --log-file (start µs, status, µs to the end of the response), when given."""
    text = open(path).read()
    m = re.search(r"finished in ([\d.]+)(m?s), ([\d.]+) req/s", text)
    r = re.search(r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, "
                  r"(\d+) failed, (\d+) errored, (\d+) timeout", text)
    c = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", text)
    t = re.search(r"time for request:\s+(\S+)\s+(\S+)\s+(\S+)", text)
    if not (m and r and c):
        return
    done = int(r.group(3))
    failed, errored, timeout = int(r.group(5)), int(r.group(6)), int(r.group(7))

    def us(v):
        n = re.match(r"([\d.]+)(us|ms|s)$", v)
        return float(n.group(1)) * {"us": 1, "ms": 1e3, "s": 1e6}[n.group(2)] if n else float("nan")

    mean, mx = (us(t.group(3)), us(t.group(2))) if t else (float("nan"), float("nan"))
    lat = []
    if reqlog:
        try:
            with open(reqlog) as f:
                for line in f:
                    cols = line.split("\t")
                    if len(cols) >= 3 and cols[1] != "-1":
                        lat.append(float(cols[2]))
        except OSError:
            pass
    lat.sort()
    p = {q: percentile(lat, q) for q in (50, 90, 99, 99.9)}
    non2xx3xx = int(c.group(3)) + int(c.group(4))
    print("RESULT rps=%s requests=%d p50_us=%.0f p90_us=%.0f p99_us=%.0f p999_us=%.0f max_us=%.0f "
          "mean_us=%.1f non2xx3xx=%d err_connect=0 err_read=%d err_write=0 err_timeout=%d" % (
              m.group(3), done, p[50], p[90], p[99], p[99.9], mx, mean, non2xx3xx,
              max(failed - timeout - non2xx3xx, 0), timeout))


def scaling(path):
    """Medians per layout of bench/run.sh scaling's rows (round, layout, k=v...), and what
    they say: keygate's per-core efficiency at two workers and the machine's split."""
    rows = {}
    with open(path) as f:
        for line in f:
            cols = line.rstrip("\n").split("\t")
            if len(cols) < 3:
                continue
            kv = dict(c.split("=", 1) for c in cols[2:] if "=" in c)
            rows.setdefault(cols[1], []).append({k: float(v) for k, v in kv.items()})
    fields = ["rps", "p99_us", "keygate_us", "upstream_us", "wrk_us",
              "keygate_cores", "upstream_cores", "wrk_cores"]
    med = {}
    print("| layout | runs | " + " | ".join(fields) + " | non-2xx/3xx |")
    print("|---|---:|" + "---:|" * len(fields) + "---:|")
    for layout in ("one_core", "two_cores", "two_procs", "two_pinned", "two_sharded",
                   "two_sharded_pinned"):
        runs = rows.get(layout, [])
        if not runs:
            continue
        med[layout] = {k: statistics.median(r[k] for r in runs) for k in fields}
        print("| %s | %d | %s | %d |" % (
            layout, len(runs), " | ".join("%.2f" % med[layout][k] if k.endswith(("_us", "_cores"))
                                          and k != "p99_us" else "%.0f" % med[layout][k]
                                          for k in fields),
            sum(r.get("non2xx3xx", 0) for r in runs)))
    if "one_core" in med and "two_cores" in med:
        one, two = med["one_core"], med["two_cores"]
        eff = one["keygate_us"] / two["keygate_us"]
        served = two["keygate_cores"] + two["upstream_cores"]
        print()
        print("- req/s two cores / one core: %.2f" % (two["rps"] / one["rps"]))
        print("- keygate CPU per request: %.2f µs at one worker, %.2f µs at two: per-core "
              "efficiency at two workers %.2f" % (one["keygate_us"], two["keygate_us"], eff))
        print("- keygate alone, per core it fully uses: %.0f req/s at one worker, %.0f at two"
              % (1e6 / one["keygate_us"], 1e6 / two["keygate_us"]))
        print("- two-core layout: keygate %.2f cores, upstream %.2f, wrk %.2f (the generator "
              "took %.0f %% of what was used)" % (
                  two["keygate_cores"], two["upstream_cores"], two["wrk_cores"],
                  100 * two["wrk_cores"] / (served + two["wrk_cores"])))
        print("- had the generator's CPU gone to keygate and its upstream in the same "
              "proportion: %.0f req/s (%.2f× one core)" % (
                  two["rps"] * (served + two["wrk_cores"]) / served,
                  two["rps"] * (served + two["wrk_cores"]) / served / one["rps"]))
    if "one_core" in med and "two_procs" in med:
        one, procs = med["one_core"], med["two_procs"]
        eff_procs = one["keygate_us"] / procs["keygate_us"]
        print("- two one-worker processes, one per core: %.2f µs per request, per-core "
              "efficiency %.2f; req/s %.2f× one core (wrk %.2f cores)" % (
                  procs["keygate_us"], eff_procs, procs["rps"] / one["rps"], procs["wrk_cores"]))
        if "two_cores" in med:
            eff_two = one["keygate_us"] / med["two_cores"]["keygate_us"]
            print("- of the two-worker runtime's loss (1 - %.2f), the machine's share (what two "
                  "separate processes lose too) is %.2f and the shared runtime's %.2f" % (
                      eff_two, 1 - eff_procs, eff_procs - eff_two))
    if "one_core" in med and "two_pinned" in med:
        one, pinned = med["one_core"], med["two_pinned"]
        eff_pinned = one["keygate_us"] / pinned["keygate_us"]
        print("- one process, its two workers pinned one per core: %.2f µs per request, per-core "
              "efficiency %.2f; req/s %.2f× one core" % (
                  pinned["keygate_us"], eff_pinned, pinned["rps"] / one["rps"]))
    for layout, what in (("two_sharded", "threads floating"),
                         ("two_sharded_pinned", "one pinned per core")):
        if "one_core" in med and layout in med:
            one, sharded = med["one_core"], med[layout]
            line = ("- one process, `sharded = true`, two shards (%s): %.2f µs per request, "
                    "per-core efficiency %.2f; req/s %.2f× one core" % (
                        what, sharded["keygate_us"], one["keygate_us"] / sharded["keygate_us"],
                        sharded["rps"] / one["rps"]))
            if "two_cores" in med:
                line += ", %.2f× two shared workers" % (sharded["rps"] / med["two_cores"]["rps"])
            if "two_procs" in med:
                line += ", %.2f× two processes" % (sharded["rps"] / med["two_procs"]["rps"])
            print(line)


def main(argv):
    mode = argv[1]
    if mode == "throughput":
        throughput(argv[2], float(argv[3]), argv[4], float(argv[5]) if len(argv) > 5 else float("inf"))
    elif mode == "latency":
        latency(argv[2], float(argv[3]), argv[4], float(argv[5]) if len(argv) > 5 else float("inf"))
    elif mode == "h2load-result":
        h2load_result(argv[2], argv[3] if len(argv) > 3 else None)
    elif mode == "scaling":
        scaling(argv[2])
    elif mode == "oha-line":
        oha_line(*argv[2:8])
    else:
        sys.exit("unknown mode " + mode)


if __name__ == "__main__":
    main(sys.argv)
