"""HTTP keep-alive against one nginx (4 workers, reuseport, private config on loopback): wrk's
requests/s and loopfan's, same server, same machine, same connection counts, interleaved (and,
with --against, another loopfan source tree beside them); then loopfan alone at a connection
count wrk cannot open (one process: its fd limit). Prints each run, the medians, and the client's
CPU per request (nginx's is not counted).

    python3 bench/http_nginx.py [--counts 1000,10000] [--big 40000] [--duration 5] [--repeat 3]
                                [--against OLD/src] [--tls [--tls-key ecdsa|rsa]]

--tls: the same nginx also listens with `ssl` (TLS 1.2 and 1.3) on a second port, with a server
certificate for its address from a test CA made by `trustme` (ECDSA P-256 by default, or RSA
2048), both written to nginx's temporary folder. Each count then runs, interleaved: wrk plain, wrk
over https (when this wrk build speaks it: checked once with a 1 s run), loopfan plain, loopfan
https with --cacert (and the --against tree both ways). Printed after the medians, per count and
tool: TLS/plain of the medians of requests/s and of client CPU per request, and how long loopfan's
traffic phase ran beyond its warm-up + window (the handshakes at once, beside a plain run's);
each loopfan TLS line also gives the report's handshake percentiles (each from its first flight to
ready). Not like for like: loopfan verifies the
certificate, wrk does not; loopfan handshakes before its clock, wrk inside its timed window (it has
no warm-up), so at large counts wrk's TLS figure carries the handshakes. --big stays plain.

Needs nginx and wrk (apt-get install nginx-light wrk); --tls needs trustme (pip install trustme).
nginx is stopped by pid at the end.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import sys
from collections import defaultdict
from dataclasses import dataclass

from _runs import NoReport, cpu_us, loopfan_run, private_nginx, summary, timed, us_per

# {tls} is where --tls adds its listener (plain runs leave it out: the config is what it always was).
CONF = """daemon off; master_process on; worker_processes 4; worker_rlimit_nofile 20000;
pid {d}/nginx.pid; error_log {d}/error.log warn; user root;
events {{ worker_connections 19000; multi_accept on; }}
http {{ access_log off; keepalive_requests 100000000; keepalive_timeout 300s;
  client_body_temp_path {d}/b; proxy_temp_path {d}/p; fastcgi_temp_path {d}/f; uwsgi_temp_path {d}/u;
  scgi_temp_path {d}/s;
  server {{ listen 127.77.0.1:18888 reuseport backlog=65535;{tls} location / {{ return 200 "hello\\n"; }} }} }}
"""
URL = "http://127.77.0.1:18888/"
# The certificate names the address the URL uses (checked against its IP SANs, no SNI). TLS 1.3 is
# listed because nginx 1.22 (Debian 12) offers only up to 1.2 unless told.
TLS_ADDRESS = "127.77.0.1"
TLS_URL = f"https://{TLS_ADDRESS}:18443/"
TLS_LISTEN = (f" listen {TLS_ADDRESS}:18443 ssl reuseport backlog=65535; ssl_protocols TLSv1.2 TLSv1.3;"
              " ssl_certificate {d}/server.pem; ssl_certificate_key {d}/server.key;")
KEY_TYPES = {"ecdsa": "ECDSA P-256", "rsa": "RSA 2048"}  # what trustme makes for each


@dataclass
class Measured:
    rate: float  # requests/s; 0 when the run failed
    line: str
    cpu_us: float | None = None  # client CPU per request, user + system
    beyond_s: float | None = None  # loopfan: traffic phase time beyond warm-up + window


def tls_files(key: str) -> dict[str, bytes]:
    """A test CA and a server certificate for TLS_ADDRESS, as files for nginx's folder."""
    try:
        import trustme
    except ImportError:
        print("http_nginx.py: --tls needs the trustme package to make its certificate: pip install trustme",
              file=sys.stderr)
        sys.exit(2)
    key_type = trustme.KeyType.RSA if key == "rsa" else trustme.KeyType.ECDSA
    ca = trustme.CA(key_type=key_type)
    cert = ca.issue_cert(TLS_ADDRESS, key_type=key_type)
    return {"ca.pem": ca.cert_pem.bytes(), "server.key": cert.private_key_pem.bytes(),
            "server.pem": b"".join(blob.bytes() for blob in cert.cert_chain_pems)}


def loopfan(n: int, duration: int, src: str | None, label: str, url: str = URL,
            extra: tuple[str, ...] = ()) -> Measured:
    try:
        rep, t = loopfan_run(["-c", str(n), url, "--duration", f"{duration}s", "--warmup", "1s", "--reply-timeout",
                              "30s", *extra], src)
    except NoReport as e:  # it refused (e.g. an --against tree older than https://): say why, go on
        return Measured(0.0, f"{label} -c {n}: failed, no report: {e}")
    tr = rep["traffic"]
    rate = tr["messages_per_s"] or 0.0
    line = (f"{label} -c {n} ({rep['client_processes']} processes): {rate:,.0f} req/s, p50 "
            f"{tr['latency_ms']['p50']} ms, p99 {tr['latency_ms']['p99']} ms, errors {tr['errors_total']}, "
            f"established {rep['established']:,}, client CPU {us_per(t, tr['replies'])}")
    # The parent times its traffic phase whole: the TLS handshakes (before the clock), warm-up,
    # window, the drain and the last reports. Less warm-up and window, a plain run's is the rest.
    beyond_s = rep["duration_s"]["traffic"] - tr["warmup_s"] - tr["window_s"]
    if tr.get("tls"):
        line += (f", {tr['tls']['version']} {tr['tls']['cipher']}, handshakes "
                 f"{tr['statuses'].get('tls-handshake-ok', 0):,}, "
                 f"traffic phase {beyond_s:.2f} s beyond warm-up + window")
        if tr.get("handshake_ms"):  # (each handshake timed, first flight to ready: reports since ec6a4a7)
            line += f", handshake p50 {tr['handshake_ms']['p50']} ms p99 {tr['handshake_ms']['p99']} ms"
    return Measured(rate, line, cpu_us(t, tr["replies"]), beyond_s)


def wrk(n: int, duration: int, url: str = URL, label: str = "wrk") -> Measured:
    t = timed(["wrk", "-t", "2", "-c", str(n), "-d", f"{duration}s", "--latency", url])
    m = re.search(r"Requests/sec:\s+([\d.]+)", t.stdout)
    total = re.search(r"(\d+) requests in", t.stdout)
    p50 = re.search(r"^\s+50%\s+(\S+)", t.stdout, re.M)  # (not "87.50%" of the thread stats)
    p99 = re.search(r"^\s+99%\s+(\S+)", t.stdout, re.M)
    errs = re.search(r"Socket errors: (.*)", t.stdout)
    if not m:
        return Measured(0.0, f"{label} -c {n}: failed: {t.stdout.strip().splitlines()[-1:]}")
    rate = float(m.group(1))
    count = int(total.group(1)) if total else 0
    return Measured(rate, f"{label} -c {n} (2 threads): {rate:,.0f} req/s, p50 {p50.group(1) if p50 else '?'}, "
                          f"p99 {p99.group(1) if p99 else '?'}, "
                          f"{('socket errors: ' + errs.group(1)) if errs else 'no socket errors'}, "
                          f"client CPU {us_per(t, count)}", cpu_us(t, count))


def wrk_speaks_https() -> tuple[bool, str]:
    """Whether this wrk build does https (Debian's links OpenSSL; a build without it refuses the
    scheme): one connection for one second. The answer and, when no, wrk's last line."""
    t = timed(["wrk", "-t", "1", "-c", "1", "-d", "1s", TLS_URL], timeout=30)
    if re.search(r"Requests/sec:\s+[\d.]+", t.stdout) and " 0 requests in" not in t.stdout:
        return True, ""
    return False, (t.stdout.strip().splitlines() or ["no output"])[-1]


def ratio(a: list[float], b: list[float]) -> str:
    """a's median over b's, or '-' when either side has none."""
    if not a or not b or not statistics.median(b):
        return "-"
    return f"{statistics.median(a) / statistics.median(b):.2f}"


def tls_summary(n: int, label: str, results: dict[tuple[int, str], list[float]],
                cpu: dict[tuple[int, str], list[float]], beyond: dict[tuple[int, str], list[float]]) -> list[str]:
    """The TLS/plain lines of one tool at one count (nothing when it had no TLS run)."""
    plain, tls = (n, label), (n, f"{label} TLS")
    if tls not in results:
        return []
    med = statistics.median
    cpu_part = (f"client CPU per request {ratio(cpu[tls], cpu[plain])} ({med(cpu[tls]):.1f} / {med(cpu[plain]):.1f} us)"
                if cpu.get(tls) and cpu.get(plain) else "client CPU per request -")
    out = [f"-c {n} {label} TLS/plain: req/s {ratio(results[tls], results[plain])}, {cpu_part}"]
    if beyond.get(tls) and beyond.get(plain):
        extra = med(beyond[tls]) - med(beyond[plain])
        out.append(f"-c {n} {label} TLS handshakes (each one's time is on its run's line): its traffic phase ran "
                   f"{med(beyond[tls]):.2f} s beyond warm-up + window (plain {med(beyond[plain]):.2f} s): "
                   f"~{extra:.2f} s for {n:,} handshakes at once (an estimate: the difference of two medians)")
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--counts", default="1000,10000")
    ap.add_argument("--big", type=int, default=40000, help="0: skip")
    ap.add_argument("--duration", type=int, default=5)
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--against", help="another loopfan src/ folder to run side by side (e.g. a worktree of main~1)")
    ap.add_argument("--tls", action="store_true", help="also measure https:// (nginx ssl, a trustme certificate)")
    ap.add_argument("--tls-key", choices=sorted(KEY_TYPES), default="ecdsa", help="the certificate's key type")
    args = ap.parse_args()
    results: dict[tuple[int, str], list[float]] = defaultdict(list)
    cpu: dict[tuple[int, str], list[float]] = defaultdict(list)
    beyond: dict[tuple[int, str], list[float]] = defaultdict(list)

    def record(rnd: int, n: int, label: str, m: Measured) -> None:
        results[(n, label)].append(m.rate)  # (a failed run's 0 too, as always: the medians show it)
        if m.cpu_us is not None:
            cpu[(n, label)].append(m.cpu_us)
        if m.beyond_s is not None:
            beyond[(n, label)].append(m.beyond_s)
        print(f"[{rnd + 1}] {m.line}", flush=True)

    files = tls_files(args.tls_key) if args.tls else None
    conf = CONF.replace("{tls}", TLS_LISTEN if args.tls else "")
    with private_nginx(conf, "127.77.0.1", 18888, files) as d:
        cacert = ("--cacert", os.path.join(d, "ca.pem"))
        wrk_tls = False
        if args.tls:
            print(f"TLS: nginx on {TLS_URL}, an {KEY_TYPES[args.tls_key]} server certificate from a trustme test CA "
                  f"({d}); loopfan verifies it (--cacert), wrk does not", flush=True)
            if shutil.which("wrk"):
                wrk_tls, why = wrk_speaks_https()
                if not wrk_tls:
                    print(f"TLS: this wrk does not speak https ({why}): the TLS comparison is loopfan's alone",
                          flush=True)
        runs = [int(x) for x in args.counts.split(",")]
        for rnd in range(args.repeat):
            for n in runs:
                if shutil.which("wrk"):
                    record(rnd, n, "wrk", wrk(n, args.duration))
                    if wrk_tls:
                        record(rnd, n, "wrk TLS", wrk(n, args.duration, TLS_URL, "wrk TLS"))
                trees = [("loopfan", None)] + ([("before", args.against)] if args.against else [])
                for label, src in trees:
                    record(rnd, n, label, loopfan(n, args.duration, src, label))
                    if args.tls:
                        record(rnd, n, f"{label} TLS", loopfan(n, args.duration, src, f"{label} TLS", TLS_URL, cacert))
        if args.big:
            if shutil.which("wrk"):
                print(wrk(args.big, args.duration).line, flush=True)
            print(loopfan(args.big, args.duration, None, "loopfan").line, flush=True)
    print()
    for (n, label), values in sorted(results.items()):
        print(f"-c {n} {label}: req/s {summary(values)}")
    if args.tls:
        print(f"\nTLS over plain, medians ({KEY_TYPES[args.tls_key]} certificate):")
        for n in runs:
            for label in ["loopfan", "wrk"] + (["before"] if args.against else []):
                for line in tls_summary(n, label, results, cpu, beyond):
                    print(line)


if __name__ == "__main__":
    main()
