#!/usr/bin/env python3
"""Side-by-side benchmark: the gateway (asyncio and epoll reactors) against nginx.

Run it through ``bench/run.sh`` (``make bench``); see bench/README.md for what is measured
and how to read the tables. Standard library only, so it runs with any Python 3.11 (the
certificate for the TLS cases comes from the project's ``gateway.tls.selfsigned``, or
openssl when that is missing); the ``grpc`` case's peer and bidi client
(bench/grpcecho.py, bench/grpcload.py) need grpcio, which the project's venv has, and run
with the same interpreter.

Layout of the headline case, ``http1`` (every address is 127.0.0.1, ports chosen free at
start):

    wrk ──► proxy under test ──► two upstream "backends": one nginx instance serving a
            (nginx, or the gateway       small fixed 200 on two ports, plus a stub_status
             on each reactor)             port used to count upstream connections

All proxies of a case are started first and stay up; the measured runs then alternate
between them (round 1: every proxy, round 2: every proxy) so slow drift of the machine
affects each alike, and the better of the rounds is reported. The other cases
(``--cases``) run one after the other, each with its own freshly started proxies, after
``http1``'s proxies are stopped:

- ``https``: wrk over TLS 1.3 (keepalive, HTTP/1.1) to the same backends;
- ``h2`` and ``h2c``: h2load over TLS with ALPN h2, and cleartext HTTP/2 with prior
  knowledge;
- ``ws``: WebSocket echo through each proxy (bench/wsload.py → proxy → bench/wsecho.py):
  messages/s, CPU per message, and memory per idle tunnel; plus the client straight to
  the echo backend ("direct") as the load side's own ceiling;
- ``http1-w2``: the ``http1`` load with 2 worker processes in each proxy (nginx
  ``worker_processes 2``, the gateway's ``[gateway] workers = 2``), CPU summed over each
  process tree;
- ``grpc``: unary calls/s (h2load framing gRPC requests by hand, h2c) and bidi
  messages/s (bench/grpcload.py) to one grpc.aio echo peer (bench/grpcecho.py): direct,
  through nginx ``grpc_pass``, through the gateway's ``grpc_pass`` location and through
  its ``[[grpc_servers]]`` front door.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import resource
import select
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import http.client
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

ROOT = Path(__file__).resolve().parent.parent
BENCH = Path(__file__).resolve().parent
CLK_TCK = os.sysconf("SC_CLK_TCK")
BACKEND_BODIES = (b"bench-backend-1\n", b"bench-backend-2\n")


class BenchError(Exception):
    """A step failed; the message is printed as is."""


# -- processes -------------------------------------------------------------------------

_children: List[subprocess.Popen] = []


def spawn(argv, log_path: Path, cpu: Optional[str] = None, cwd: Path = ROOT,
          env: Optional[dict] = None) -> subprocess.Popen:
    """Start a long-running child in its own session (so a Ctrl-C on the terminal reaches
    only us, and we stop it in order), with stdout and stderr going to ``log_path``."""
    if cpu is not None:
        argv = ["taskset", "-c", cpu] + list(argv)
    log = open(log_path, "ab")
    try:
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                cwd=cwd, env=env, start_new_session=True)
    finally:
        log.close()
    _children.append(proc)
    return proc


def stop(proc: subprocess.Popen, grace: float = 5.0) -> None:
    """SIGTERM, wait up to ``grace`` seconds, then SIGKILL the child's process group."""
    if proc.poll() is None:
        try:
            proc.send_signal(signal.SIGTERM)
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(proc.pid, signal.SIGKILL)  # its own session: pgid == pid
            except ProcessLookupError:
                pass
            proc.wait(5)
        except ProcessLookupError:
            pass
    if proc in _children:
        _children.remove(proc)


def stop_all() -> None:
    for proc in reversed(list(_children)):
        try:
            stop(proc)
        except Exception as e:  # keep going: every child must be stopped
            print(f"warning: could not stop pid {proc.pid}: {e}", file=sys.stderr)


def _on_signal(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def tree_pids(pid: int) -> List[int]:
    """``pid`` and all its descendants (nginx master + worker, twistd + any workers)."""
    children: Dict[int, List[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        ppid = int(stat[stat.rindex(b")") + 2:].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, ()))
    return out


def cpu_by_process(pid: int) -> Dict[int, float]:
    """utime + stime of ``pid`` and of each of its live descendants, in seconds."""
    out = {}
    for p in tree_pids(pid):
        try:
            with open(f"/proc/{p}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rindex(b")") + 2:].split()
        out[p] = (int(fields[11]) + int(fields[12])) / CLK_TCK  # fields 14 and 15 of proc(5)
    return out


def cpu_seconds(pid: int) -> float:
    """utime + stime of ``pid`` and its live descendants, in seconds."""
    return sum(cpu_by_process(pid).values())


# -- helpers ---------------------------------------------------------------------------

def free_ports(n: int) -> List[int]:
    socks, ports = [], []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
            ports.append(s.getsockname()[1])
    finally:
        for s in socks:
            s.close()
    return ports


def http_get(port: int, path: str = "/", timeout: float = 2.0):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def log_tail(path: Path, lines: int = 25) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError:
        return "    (no log)"
    return "\n".join("    " + line for line in text[-lines:]) or "    (log is empty)"


def wait_http(name: str, proc: subprocess.Popen, port: int, log: Path, timeout: float,
              expect=None) -> None:
    """Wait until ``GET /`` on ``port`` answers 200 (and ``expect(body)`` holds)."""
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise BenchError(f"{name} exited with status {proc.returncode} before answering "
                             f"on 127.0.0.1:{port}. Last lines of {log}:\n{log_tail(log)}")
        try:
            status, body = http_get(port)
            if status == 200 and (expect is None or expect(body)):
                return
            last = f"HTTP {status} {body[:200]!r}"
        except (OSError, http.client.HTTPException) as e:
            last = f"{type(e).__name__}: {e}"
        time.sleep(0.2)
    raise BenchError(f"{name} did not answer GET / on 127.0.0.1:{port} with 200 from a backend "
                     f"within {timeout:.0f}s (last: {last}). Last lines of {log}:\n{log_tail(log)}")


# -- configs ---------------------------------------------------------------------------

def nginx_backends_conf(work: Path, ports: List[int], status_port: int) -> str:
    servers = "\n".join(
        f"""    server {{
        listen 127.0.0.1:{port} reuseport backlog=4096;
        location / {{ return 200 "{BACKEND_BODIES[i].decode().strip()}\\n"; }}
    }}"""
        for i, port in enumerate(ports))
    return f"""# upstream backends for the benchmark: a fixed small 200, never the bottleneck
worker_processes 1;
daemon off;
pid {work}/backends.pid;
error_log {work}/backends-error.log warn;
events {{ worker_connections 8192; }}
http {{
    access_log off;
    default_type text/plain;
    keepalive_requests 10000000;   # only the proxies' own limits recycle connections
    keepalive_timeout 300s;
    client_body_temp_path {work}/tmp-backends;
    proxy_temp_path {work}/tmp-backends;
    fastcgi_temp_path {work}/tmp-backends;
    uwsgi_temp_path {work}/tmp-backends;
    scgi_temp_path {work}/tmp-backends;
{servers}
    server {{
        listen 127.0.0.1:{status_port};
        location = /status {{ stub_status; }}
    }}
}}
"""


def nginx_proxy_conf(work: Path, port: int, backend_ports: List[int], keepalive: int,
                     workers: int = 1) -> str:
    servers = "\n".join(f"        server 127.0.0.1:{p};" for p in backend_ports)
    return f"""# nginx as the reference proxy: the same job as the gateway's bench config
worker_processes {workers};
daemon off;
pid {work}/nginx-proxy.pid;
error_log {work}/nginx-proxy-error.log warn;
events {{ worker_connections 8192; }}
http {{
    access_log off;
    client_body_temp_path {work}/tmp-proxy;
    proxy_temp_path {work}/tmp-proxy;
    fastcgi_temp_path {work}/tmp-proxy;
    uwsgi_temp_path {work}/tmp-proxy;
    scgi_temp_path {work}/tmp-proxy;
    upstream bench {{
{servers}
        keepalive {keepalive};
    }}
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location / {{
            proxy_pass http://bench;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            # the request headers the gateway sends by default (CONFIG.md), so both
            # proxies build the same upstream request
            proxy_set_header Host $host;
            proxy_set_header X-Real-IP $remote_addr;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto $scheme;
            proxy_set_header X-Forwarded-Host $host;
            proxy_set_header X-Request-ID $request_id;
        }}
    }}
}}
"""


def gateway_toml(port: int, backend_ports: List[int], keepalive: int, workers: int = 1) -> str:
    servers = ", ".join(f'{{ address = "127.0.0.1:{p}" }}' for p in backend_ports)
    workers_line = f"workers = {workers}\n" if workers != 1 else ""
    return f"""# gateway config for the benchmark (CONFIG.md); the nginx proxy config does the same job
[gateway]
{workers_line}access_log = false
shutdown_timeout = "1s"

[admin]
listen = false

[upstreams.bench]
keepalive = {keepalive}
servers = [ {servers} ]

[[servers]]
listen = ["tcp:{port}:interface=127.0.0.1"]
locations = [ {{ path = "/", proxy_pass = "http://bench" }} ]
"""


# -- wrk -------------------------------------------------------------------------------

_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3, "h": 3600e3}


def _ms(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m|h)", text)
    if not m:
        raise ValueError(text)
    return float(m.group(1)) * _UNITS[m.group(2)]


@dataclass
class WrkResult:
    rps: float
    requests: int
    seconds: float
    p50_ms: float
    p99_ms: float
    errors: int
    non_2xx: int
    raw: str = field(repr=False, default="")


def parse_wrk(out: str) -> WrkResult:
    def find(pattern):
        m = re.search(pattern, out, re.M)
        if not m:
            raise BenchError(f"could not find {pattern!r} in wrk output:\n{out}")
        return m

    rps = float(find(r"^Requests/sec:\s+([\d.]+)").group(1))
    m = find(r"^\s*(\d+) requests in ([\d.]+\w+),")
    p50 = _ms(find(r"^\s+50%\s+(\S+)").group(1))
    p99 = _ms(find(r"^\s+99%\s+(\S+)").group(1))
    errors = 0
    e = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if e:
        errors = sum(int(x) for x in e.groups())
    n = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return WrkResult(rps=rps, requests=int(m.group(1)), seconds=_ms(m.group(2)) / 1e3,
                     p50_ms=p50, p99_ms=p99, errors=errors, non_2xx=int(n.group(1)) if n else 0, raw=out)


def run_wrk(args, port: int, seconds: float, cpu: Optional[str], url: Optional[str] = None) -> WrkResult:
    # wrk takes whole seconds only ("0.5s" is a usage error)
    argv = ["wrk", f"-t{args.threads}", f"-c{args.connections}", f"-d{max(1, round(seconds))}s", "--latency",
            url or f"http://127.0.0.1:{port}/"]
    if cpu is not None:
        argv = ["taskset", "-c", cpu] + argv
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    _children.append(proc)
    try:
        out, _ = proc.communicate(timeout=seconds + 30)
    except subprocess.TimeoutExpired:
        raise BenchError(f"wrk did not finish within {seconds + 30:.0f}s") from None
    finally:
        stop(proc)
    if proc.returncode != 0:
        raise BenchError(f"wrk failed (status {proc.returncode}):\n{out}")
    return parse_wrk(out)


# -- the benchmark ---------------------------------------------------------------------

@dataclass
class Target:
    name: str
    kind: str            # "nginx" or "gateway"
    port: int
    argv: List[str]
    log: Path
    proc: Optional[subprocess.Popen] = None
    error: Optional[str] = None
    runs: List[dict] = field(default_factory=list)
    best_key: str = "rps"   # the run field that picks the best run
    extra: dict = field(default_factory=dict)   # per-target results outside the runs (ws: idle memory)

    @property
    def best(self) -> Optional[dict]:
        return max(self.runs, key=lambda r: r[self.best_key]) if self.runs else None


def upstream_accepts(status_port: int) -> int:
    """Connections the backends have accepted so far (nginx stub_status ``accepts``)."""
    status, body = http_get(status_port, "/status")
    m = re.search(rb"server accepts handled requests\s+(\d+)", body)
    if status != 200 or not m:
        raise BenchError(f"unexpected stub_status answer: {status} {body!r}")
    return int(m.group(1))


def measure(args, target: Target, status_port: int, wrk_cpu: Optional[str], url: Optional[str] = None,
            duration: Optional[float] = None, warmup: Optional[float] = None) -> dict:
    run_wrk(args, target.port, args.warmup if warmup is None else warmup, wrk_cpu, url)
    accepts0 = upstream_accepts(status_port)
    by0 = cpu_by_process(target.proc.pid)
    t0 = time.monotonic()
    w = run_wrk(args, target.port, args.duration if duration is None else duration, wrk_cpu, url)
    wall = time.monotonic() - t0
    by1 = cpu_by_process(target.proc.pid)
    cpu0, cpu1 = sum(by0.values()), sum(by1.values())
    accepts1 = upstream_accepts(status_port)
    if target.proc.poll() is not None:
        raise BenchError(f"{target.name} exited during the run (status {target.proc.returncode}). "
                         f"Last lines of {target.log}:\n{log_tail(target.log)}")
    cpu = cpu1 - cpu0
    # one accept is our own stub_status request (the one taken before the run)
    new_upstream = max(0, accepts1 - accepts0 - 1)
    return {
        "rps": w.rps,
        "requests": w.requests,
        "p50_ms": w.p50_ms,
        "p99_ms": w.p99_ms,
        "errors": w.errors,
        "non_2xx": w.non_2xx,
        "cpu_s": cpu,
        "cpu_us_per_req": cpu / w.requests * 1e6 if w.requests else float("nan"),
        "cpu_util": cpu / wall,
        "upstream_conns": new_upstream,
        "pool_reuse": 1 - new_upstream / w.requests if w.requests else float("nan"),
        # each process of the tree over the run, the top process first (nginx master +
        # workers; the gateway's master + workers): how the work was shared
        "cpu_by_process": [round(by1[p] - by0.get(p, 0.0), 3) for p in
                           [target.proc.pid] + sorted(p for p in by1 if p != target.proc.pid)],
    }


def gateway_env() -> dict:
    """The environment the gateway runs in: the checkout first on ``PYTHONPATH`` (so the
    checkout is what is benchmarked, and twisted/plugins/gateway_plugin.py is found even
    uninstalled)."""
    return dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(ROOT)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))


def start_hint(t: Target) -> str:
    log = t.log.read_text(errors="replace") if t.log.exists() else ""
    if "Unknown command: gateway" in log:
        return ("\n  hint: twistd does not know the gateway plugin: install the project into .venv "
                "(make install, or .venv/bin/pip install -e .)")
    if "No module named" in log:
        return "\n  hint: a module is missing: is the project (and its dependencies) installed into .venv?"
    return ""


def start_target(t: Target, cpu: Optional[str], timeout: float) -> None:
    env = gateway_env() if t.kind == "gateway" else None
    t.proc = spawn(t.argv, t.log, cpu, env=env)
    try:
        wait_http(t.name, t.proc, t.port, t.log, timeout,
                  expect=lambda body: body in BACKEND_BODIES)
    except BenchError as e:
        raise BenchError(f"{e}{start_hint(t)}") from None
    # a few requests must reach both backends (round robin over two equal peers)
    seen = set()
    for _ in range(6):
        seen.add(http_get(t.port)[1])
    if seen != set(BACKEND_BODIES):
        print(f"  warning: {t.name} sent 6 requests to {sorted(seen)}, expected both backends",
              file=sys.stderr)


def fmt_row(cols, widths):
    return "  ".join(str(c).rjust(w) if i else str(c).ljust(w) for i, (c, w) in enumerate(zip(cols, widths)))


def print_table(args, targets: List[Target], pinned: bool, title: Optional[str] = None,
                notes: Tuple[str, ...] = ()) -> None:
    nginx = next((t for t in targets if t.kind == "nginx" and t.best), None)
    head = ["proxy", "req/s", "p50 ms", "p99 ms", "CPU us/req", "proxy CPU", "pool reuse",
            "vs nginx", "CPU/req vs nginx", "errors"]
    rows = []
    for t in targets:
        b = t.best
        if b is None:
            rows.append([t.name, "FAILED"] + ["-"] * (len(head) - 2))
            continue
        other = nginx is not None and t is not nginx
        ratio = f"{b['rps'] / nginx.best['rps']:.2f}x" if other else "-"
        cpu_ratio = f"{b['cpu_us_per_req'] / nginx.best['cpu_us_per_req']:.1f}x" if other else "-"
        rows.append([
            t.name, f"{b['rps']:,.0f}", f"{b['p50_ms']:.2f}", f"{b['p99_ms']:.2f}",
            f"{b['cpu_us_per_req']:.1f}", f"{b['cpu_util'] * 100:.0f}%", f"{b['pool_reuse'] * 100:.2f}%",
            ratio, cpu_ratio, str(b["errors"] + b["non_2xx"]),
        ])
    widths = [max(len(str(r[i])) for r in rows + [head]) for i in range(len(head))]
    print()
    print(title or (
          f"wrk -t{args.threads} -c{args.connections} -d{args.duration:g}s (keepalive, after a "
          f"{args.warmup:g}s warm-up), best of {args.rounds} alternating rounds; "
          f"{'proxy pinned to CPU ' + args.proxy_cpu + ', wrk and backends to CPU ' + args.load_cpu if pinned else 'no CPU pinning'}"
          + (f"; {args.workers} workers" if args.workers != 1 else "")))
    print(fmt_row(head, widths))
    print(fmt_row(["-" * w for w in widths], widths))
    for r in rows:
        print(fmt_row(r, widths))
    for t in targets:
        if t.runs:
            print(f"  {t.name}: req/s per round " + ", ".join(f"{r['rps']:,.0f}" for r in t.runs))
    for n in notes:
        print("  " + n)
    print()


# -- the other cases: shared machinery -------------------------------------------------

CASES = ("http1", "http1-w2", "https", "h2", "h2c", "grpc", "ws")


@dataclass
class Ctx:
    """What every case needs: the settings, the work dir, the programs and the backends."""
    args: argparse.Namespace
    work: Path
    nginx_bin: str
    twistd: Path
    reactors: List[str]
    proxy_cpu: Optional[str]
    load_cpu: Optional[str]
    backend_ports: List[int]
    status_port: int
    pinned: bool
    certificate: Optional[Path] = None
    key: Optional[Path] = None


def rss_kib(pid: int) -> int:
    """Resident memory of ``pid`` and its live descendants, in KiB (``/proc/PID/statm``)."""
    page = os.sysconf("SC_PAGE_SIZE")
    total = 0
    for p in tree_pids(pid):
        try:
            with open(f"/proc/{p}/statm") as f:
                total += int(f.read().split()[1])
        except (OSError, IndexError, ValueError):
            continue
    return total * page // 1024


def run_tool(argv, timeout: float, cpu: Optional[str] = None) -> Tuple[int, str]:
    """Run a short-lived tool to completion (stopped on timeout or interrupt)."""
    if cpu is not None:
        argv = ["taskset", "-c", cpu] + list(argv)
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            text=True, cwd=ROOT, start_new_session=True)
    _children.append(proc)
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        raise BenchError(f"{' '.join(map(str, argv))} did not finish within {timeout:.0f}s") from None
    finally:
        stop(proc)
    return proc.returncode, out


class LineReader:
    """Lines from a child's stdout pipe, each with its own deadline."""

    def __init__(self, proc: subprocess.Popen, what: str, log: Path):
        self.proc, self.what, self.log = proc, what, log
        self.fd = proc.stdout.fileno()
        self.buf = b""

    def line(self, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while b"\n" not in self.buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise BenchError(f"{self.what}: no output within {timeout:.0f}s. Last lines of "
                                 f"{self.log}:\n{log_tail(self.log)}")
            ready, _, _ = select.select([self.fd], [], [], left)
            if ready:
                chunk = os.read(self.fd, 65536)
                if not chunk:
                    self.proc.wait(5)
                    raise BenchError(f"{self.what} exited (status {self.proc.returncode}). Last lines of "
                                     f"{self.log}:\n{log_tail(self.log)}")
                self.buf += chunk
        line, _, self.buf = self.buf.partition(b"\n")
        return line.decode(errors="replace")

    def expect(self, prefix: str, timeout: float) -> str:
        line = self.line(timeout)
        if not line.startswith(prefix):
            raise BenchError(f"{self.what}: expected {prefix!r}, got {line[:300]!r}")
        return line


def toml_str(value) -> str:
    return json.dumps(str(value))   # a JSON string is a valid TOML basic string


def make_certificate(work: Path) -> Tuple[Path, Path]:
    """A throwaway self-signed certificate for localhost/127.0.0.1 in ``work/tls``: the
    project's ``python -m gateway.tls.selfsigned DIR``, or openssl when that fails."""
    d = work / "tls"
    cert, key = d / "localhost.pem", d / "localhost.key"
    try:
        r = subprocess.run([sys.executable, "-m", "gateway.tls.selfsigned", str(d)], cwd=ROOT,
                           env=gateway_env(), capture_output=True, text=True, timeout=60)
        if r.returncode == 0 and cert.exists() and key.exists():
            return cert, key
        why = (r.stdout + r.stderr).strip()[-500:]
    except (OSError, subprocess.TimeoutExpired) as e:
        why = str(e)
    if shutil.which("openssl") is None:
        raise BenchError(f"could not make a certificate: gateway.tls.selfsigned failed ({why}) and openssl is missing")
    d.mkdir(parents=True, exist_ok=True)
    r = subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                        "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "2", "-subj", "/CN=localhost",
                        "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
                       capture_output=True, text=True, timeout=60)
    if r.returncode != 0:
        raise BenchError(f"could not make a certificate with openssl:\n{r.stdout}{r.stderr}")
    return cert, key


# -- the other cases: configs ----------------------------------------------------------

def nginx_case_conf(ctx: Ctx, case: str, port: int, upstream_ports: List[int], keepalive: Optional[int],
                    listen_flags: str = "", tls: bool = False, websocket: bool = False,
                    server_extra: str = "", workers: Optional[int] = None) -> str:
    """nginx as the reference proxy for one case: the http1 case's proxy config, plus TLS,
    HTTP/2 or WebSocket settings."""
    w = ctx.work
    servers = "\n".join(f"        server 127.0.0.1:{p};" for p in upstream_ports)
    keep = f"\n        keepalive {keepalive};" if keepalive else ""
    ssl = (f"\n        ssl_certificate {ctx.certificate};\n        ssl_certificate_key {ctx.key};"
           f"\n        ssl_protocols TLSv1.3;" if tls else "")
    if websocket:
        connection = ('proxy_set_header Upgrade $http_upgrade;\n'
                      '            proxy_set_header Connection "upgrade";')
    else:
        connection = 'proxy_set_header Connection "";'
    return f"""# nginx as the reference proxy for the {case} case; gateway-{case}-*.toml do the same job
worker_processes {ctx.args.workers if workers is None else workers};
daemon off;
pid {w}/nginx-{case}.pid;
error_log {w}/nginx-{case}-error.log warn;
events {{ worker_connections 8192; }}
http {{
    access_log off;
    client_body_temp_path {w}/tmp-proxy;
    proxy_temp_path {w}/tmp-proxy;
    fastcgi_temp_path {w}/tmp-proxy;
    uwsgi_temp_path {w}/tmp-proxy;
    scgi_temp_path {w}/tmp-proxy;
    upstream bench {{
{servers}{keep}
    }}
    server {{
        listen 127.0.0.1:{port}{listen_flags} backlog=4096;{ssl}{server_extra}
        location / {{
            proxy_pass http://bench;
            proxy_http_version 1.1;
            {connection}
            # the request headers the gateway sends by default (CONFIG.md), so both
            # proxies build the same upstream request
            proxy_set_header Host $host;
            proxy_set_header X-Real-IP $remote_addr;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto $scheme;
            proxy_set_header X-Forwarded-Host $host;
            proxy_set_header X-Request-ID $request_id;
        }}
    }}
}}
"""


def gateway_case_toml(ctx: Ctx, case: str, port: int, upstream_ports: List[int], keepalive: Optional[int],
                      tls: bool = False, http2: Optional[bool] = None,
                      server_extra: Tuple[Tuple[str, str], ...] = (), workers: Optional[int] = None) -> str:
    """The gateway's config for one case: the http1 case's, plus TLS / HTTP/2 keys."""
    servers = ", ".join(f'{{ address = "127.0.0.1:{p}" }}' for p in upstream_ports)
    lines = [f"# gateway config for the benchmark's {case} case (CONFIG.md); nginx-{case}.conf does the same job",
             "[gateway]"]
    workers = ctx.args.workers if workers is None else workers
    if workers != 1:
        lines.append(f"workers = {workers}")
    lines += ["access_log = false", 'shutdown_timeout = "1s"', "", "[admin]", "listen = false", "",
              "[upstreams.bench]"]
    if keepalive is not None:
        lines.append(f"keepalive = {keepalive}")
    lines += [f"servers = [ {servers} ]", "", "[[servers]]", f'listen = ["tcp:{port}:interface=127.0.0.1"]']
    if http2 is not None:
        lines.append(f"http2 = {'true' if http2 else 'false'}")
    lines += [f"{k} = {v}" for k, v in server_extra]
    if tls:
        lines.append(f"tls = {{ certificate = {toml_str(ctx.certificate)}, key = {toml_str(ctx.key)}, "
                     f'protocols = ["TLSv1.3"] }}')
    lines.append('locations = [ { path = "/", proxy_pass = "http://bench" } ]')
    return "\n".join(lines) + "\n"


def case_targets(ctx: Ctx, case: str, nginx_conf: Callable[[int], str],
                 gateway_conf: Callable[[int], str], reactors: Optional[List[str]] = None) -> List[Target]:
    """nginx and one gateway per reactor (default: every ``--reactors``) for ``case``,
    configs written, not started."""
    w = ctx.work
    reactors = ctx.reactors if reactors is None else reactors
    ports = free_ports(1 + len(reactors))
    conf = w / f"nginx-{case}.conf"
    conf.write_text(nginx_conf(ports[0]))
    targets = [Target("nginx", "nginx", ports[0],
                      [ctx.nginx_bin, "-p", str(w), "-e", str(w / f"nginx-{case}-error.log"), "-c", str(conf)],
                      w / f"nginx-{case}.log")]
    for reactor, port in zip(reactors, ports[1:]):
        conf = w / f"gateway-{case}-{reactor}.toml"
        conf.write_text(gateway_conf(port))
        argv = [str(ctx.twistd), "-n", "--pidfile="]
        if reactor != "asyncio":
            argv.append(f"--reactor={reactor}")
        argv += ["gateway", "-c", str(conf)]
        targets.append(Target(f"gateway ({reactor})", "gateway", port, argv, w / f"gateway-{case}-{reactor}.log"))
    return targets


def start_probed(ctx: Ctx, t: Target, probe: Callable[[Target], Optional[str]]) -> None:
    """Start ``t`` and wait until ``probe(t)`` returns None (it returns what went wrong)."""
    t.proc = spawn(t.argv, t.log, ctx.proxy_cpu, env=gateway_env() if t.kind == "gateway" else None)
    deadline = time.monotonic() + ctx.args.start_timeout
    while True:
        if t.proc.poll() is not None:
            raise BenchError(f"{t.name} exited with status {t.proc.returncode} before answering on "
                             f"127.0.0.1:{t.port}. Last lines of {t.log}:\n{log_tail(t.log)}{start_hint(t)}")
        last = probe(t)
        if last is None:
            return
        if time.monotonic() >= deadline:
            raise BenchError(f"{t.name} did not answer on 127.0.0.1:{t.port} within {ctx.args.start_timeout:.0f}s "
                             f"(last: {last}). Last lines of {t.log}:\n{log_tail(t.log)}{start_hint(t)}")
        time.sleep(0.2)


def check_alive(t: Target) -> None:
    if t.proc is not None and t.proc.poll() is not None:
        raise BenchError(f"{t.name} exited during the run (status {t.proc.returncode}). "
                         f"Last lines of {t.log}:\n{log_tail(t.log)}")


def run_case(ctx: Ctx, case: str, targets: List[Target], probe: Callable[[Target], Optional[str]],
             measure_one: Callable[[Target, int], dict], describe: Callable[[dict], str]) -> None:
    """Start the case's proxies, alternate ``--case-rounds`` measured rounds over them,
    then stop them. Targets of kind "direct" have no process of their own."""
    for t in targets:
        if t.kind == "direct":
            continue
        print(f"bench: {case}: starting {t.name} on 127.0.0.1:{t.port}: {' '.join(t.argv)}")
        try:
            start_probed(ctx, t, probe)
        except BenchError as e:
            t.error = str(e)
            print(f"bench: {case}: {t.name} FAILED to start, skipping it:\n{e}\n", file=sys.stderr)
            if t.proc is not None:
                stop(t.proc)
    try:
        for rnd in range(1, ctx.args.case_rounds + 1):
            for t in targets:
                if t.error is not None:
                    continue
                try:
                    r = measure_one(t, rnd)
                    check_alive(t)
                except BenchError as e:
                    t.error = str(e)
                    print(f"bench: {case}: {t.name} FAILED during round {rnd}:\n{e}\n", file=sys.stderr)
                    continue
                t.runs.append(r)
                print(f"bench: {case} round {rnd} {t.name:<18} {describe(r)}")
    finally:
        for t in targets:
            if t.proc is not None:
                stop(t.proc)


def print_rows(title: str, head: List[str], rows: List[list], notes: List[str]) -> None:
    widths = [max(len(str(r[i])) for r in rows + [head]) for i in range(len(head))]
    print()
    print(title)
    print(fmt_row(head, widths))
    print(fmt_row(["-" * w for w in widths], widths))
    for r in rows:
        print(fmt_row(r, widths))
    for n in notes:
        print("  " + n)
    print()


def ratio(value: float, reference: Optional[float], digits: int = 2) -> str:
    if reference is None or not reference or value != value:
        return "-"
    return f"{value / reference:.{digits}f}x"


def pinning_note(ctx: Ctx) -> str:
    a = ctx.args
    text = (f"proxy pinned to CPU {a.proxy_cpu}, load and backends to CPU {a.load_cpu}" if ctx.pinned
            else "no CPU pinning")
    return text + (f"; {a.workers} workers" if a.workers != 1 else "")


# -- case https: wrk over TLS 1.3 --------------------------------------------------------

def probe_https(t: Target) -> Optional[str]:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE   # the throwaway self-signed certificate
    conn = http.client.HTTPSConnection("127.0.0.1", t.port, timeout=2, context=context)
    try:
        conn.request("GET", "/")
        resp = conn.getresponse()
        body = resp.read()
        if resp.status == 200 and body in BACKEND_BODIES:
            t.extra["tls"] = f"{conn.sock.version()} {conn.sock.cipher()[0]}"
            return None
        return f"HTTP {resp.status} {body[:200]!r}"
    except (OSError, http.client.HTTPException) as e:
        return f"{type(e).__name__}: {e}"
    finally:
        conn.close()


def case_https(ctx: Ctx) -> Tuple[str, List[Target]]:
    a = ctx.args
    targets = case_targets(
        ctx, "https",
        lambda port: nginx_case_conf(ctx, "https", port, ctx.backend_ports, a.keepalive, " ssl", tls=True),
        lambda port: gateway_case_toml(ctx, "https", port, ctx.backend_ports, a.keepalive, tls=True, http2=False))

    def measure_one(t: Target, rnd: int) -> dict:
        r = measure(a, t, ctx.status_port, ctx.load_cpu, url=f"https://127.0.0.1:{t.port}/",
                    duration=a.case_duration, warmup=a.case_warmup)
        r["tls"] = t.extra.get("tls", "")
        return r

    run_case(ctx, "https", targets, probe_https, measure_one,
             lambda r: (f"{r['rps']:>10,.0f} req/s  p50 {r['p50_ms']:.2f} ms  p99 {r['p99_ms']:.2f} ms  "
                        f"{r['cpu_us_per_req']:.1f} us CPU/req  proxy CPU {r['cpu_util'] * 100:.0f}%  "
                        f"upstream conns {r['upstream_conns']}  errors {r['errors'] + r['non_2xx']}  ({r['tls']})"))
    title = (f"https: wrk -t{a.threads} -c{a.connections} -d{a.case_duration:g}s over TLS 1.3 (keepalive, "
             f"HTTP/1.1, after a {a.case_warmup:g}s warm-up), best of {a.case_rounds} round(s); {pinning_note(ctx)}")
    print_table(a, targets, ctx.pinned, title=title)
    tls = sorted({t.extra['tls'] for t in targets if t.extra.get('tls')})
    if tls:
        print(f"  negotiated with a Python client: {'; '.join(tls)}\n")
    return title, targets


# -- cases h2 and h2c: h2load --------------------------------------------------------------

def parse_h2load(out: str) -> dict:
    def find(pattern):
        m = re.search(pattern, out, re.M)
        if not m:
            raise BenchError(f"could not find {pattern!r} in h2load output:\n{out[-3000:]}")
        return m

    fin = find(r"^finished in ([\d.]+)(\w+), ([\d.]+) req/s")
    req = find(r"^requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, "
               r"(\d+) errored, (\d+) timeout")
    codes = find(r"^status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx")
    lat = find(r"^time for request:\s+(\S+)\s+(\S+)\s+(\S+)")
    proto = re.search(r"^Application protocol: (\S+)", out, re.M)
    tls = re.search(r"^TLS Protocol: (\S+)", out, re.M)
    cipher = re.search(r"^Cipher: (\S+)", out, re.M)
    total, started, done, ok, failed, errored, timeout = (int(x) for x in req.groups())
    return {
        "rps": float(fin.group(3)),
        "seconds": _ms(fin.group(1) + fin.group(2)) / 1e3,
        "requests": ok,
        "started": started,
        "failed": failed,
        "errored": errored,
        "timeout": timeout,
        "non_2xx": int(codes.group(2)) + int(codes.group(3)) + int(codes.group(4)),
        "mean_ms": _ms(lat.group(3)),
        "max_ms": _ms(lat.group(2)),
        "protocol": proto.group(1) if proto else "",
        "tls": f"{tls.group(1)} {cipher.group(1)}" if tls and cipher else "",
    }


def run_h2load(ctx: Ctx, url: str, seconds: float) -> dict:
    a = ctx.args
    argv = ["h2load", f"-c{a.h2_clients}", f"-m{a.h2_streams}", f"-t{a.h2_threads}",
            "-D", f"{max(1, round(seconds * 1000))}ms", url]
    rc, out = run_tool(argv, seconds + 30, ctx.load_cpu)
    if rc != 0:
        raise BenchError(f"h2load failed (status {rc}):\n{out[-3000:]}")
    return parse_h2load(out)


def case_h2(ctx: Ctx, case: str) -> Tuple[str, List[Target]]:
    """``h2``: TLS 1.3 + ALPN h2; ``h2c``: cleartext HTTP/2 with prior knowledge."""
    a = ctx.args
    tls = case == "h2"
    scheme, expect = ("https", "h2") if tls else ("http", "h2c")
    # h2load opens its connections once and does not reconnect after a GOAWAY, so the
    # client-side keepalive_requests (1000 by default, in both) would end each connection
    # after 1000 requests and the run with it: raised alike in both proxies
    big = 10_000_000
    # the pool must cover the concurrent streams (clients x streams), as in the http1 case
    keepalive = max(a.keepalive, a.h2_clients * a.h2_streams)
    targets = case_targets(
        ctx, case,
        lambda port: nginx_case_conf(ctx, case, port, ctx.backend_ports, keepalive,
                                     " ssl http2" if tls else " http2", tls=tls,
                                     server_extra=f"\n        keepalive_requests {big};"),
        lambda port: gateway_case_toml(ctx, case, port, ctx.backend_ports, keepalive, tls=tls, http2=True,
                                       server_extra=(("keepalive_requests", str(big)),)))

    def probe(t: Target) -> Optional[str]:
        try:
            rc, out = run_tool(["h2load", "-n4", "-c1", f"{scheme}://127.0.0.1:{t.port}/"], 10)
            h = parse_h2load(out)
        except BenchError as e:
            return str(e).splitlines()[0]
        if h["protocol"] != expect:
            return f"negotiated {h['protocol'] or 'no protocol'!r}, not {expect}"
        if h["requests"] != 4:
            return f"{h['requests']} of 4 requests succeeded"
        t.extra["tls"] = h["tls"]
        return None

    def measure_one(t: Target, rnd: int) -> dict:
        url = f"{scheme}://127.0.0.1:{t.port}/"
        run_h2load(ctx, url, a.case_warmup)
        accepts0 = upstream_accepts(ctx.status_port)
        cpu0 = cpu_seconds(t.proc.pid)
        t0 = time.monotonic()
        h = run_h2load(ctx, url, a.case_duration)
        wall = time.monotonic() - t0
        cpu = cpu_seconds(t.proc.pid) - cpu0
        new_upstream = max(0, upstream_accepts(ctx.status_port) - accepts0 - 1)
        if h["protocol"] != expect:
            raise BenchError(f"h2load negotiated {h['protocol']!r}, not {expect}")
        n = h["requests"]
        # h2load counts the streams still open when the duration ends as failed; more than
        # clients x streams of them are real errors
        cut = a.h2_clients * a.h2_streams
        h.update({
            "cpu_s": cpu,
            "cpu_us_per_req": cpu / n * 1e6 if n else float("nan"),
            "cpu_util": cpu / wall,
            "upstream_conns": new_upstream,
            "pool_reuse": 1 - new_upstream / n if n else float("nan"),
            "errors": max(0, h["failed"] - cut) + h["timeout"] + h["non_2xx"],
        })
        return h

    run_case(ctx, case, targets, probe, measure_one,
             lambda r: (f"{r['rps']:>10,.0f} req/s  mean {r['mean_ms']:.2f} ms  "
                        f"{r['cpu_us_per_req']:.1f} us CPU/req  proxy CPU {r['cpu_util'] * 100:.0f}%  "
                        f"upstream conns {r['upstream_conns']}  errors {r['errors']}  "
                        f"[{r['protocol']}{', ' + r['tls'] if r['tls'] else ''}; "
                        f"{r['failed']} streams cut at the end]"))
    nginx = next((t for t in targets if t.kind == "nginx" and t.best), None)
    head = ["proxy", "req/s", "mean ms", "max ms", "CPU us/req", "proxy CPU", "pool reuse", "vs nginx",
            "CPU/req vs nginx", "errors"]
    rows = []
    for t in targets:
        b = t.best
        if b is None:
            rows.append([t.name, "FAILED"] + ["-"] * (len(head) - 2))
            continue
        other = nginx is not None and t is not nginx
        rows.append([t.name, f"{b['rps']:,.0f}", f"{b['mean_ms']:.2f}", f"{b['max_ms']:.2f}",
                     f"{b['cpu_us_per_req']:.1f}", f"{b['cpu_util'] * 100:.0f}%", f"{b['pool_reuse'] * 100:.2f}%",
                     ratio(b["rps"], nginx.best["rps"]) if other else "-",
                     ratio(b["cpu_us_per_req"], nginx.best["cpu_us_per_req"], 1) if other else "-",
                     str(b["errors"])])
    what = "over TLS 1.3 with ALPN h2" if tls else "cleartext, prior knowledge (h2c)"
    title = (f"{case}: h2load -c{a.h2_clients} -m{a.h2_streams} -t{a.h2_threads} -D{a.case_duration:g}s "
             f"{what} (after a {a.case_warmup:g}s warm-up), best of {a.case_rounds} round(s); {pinning_note(ctx)}")
    notes = [f"{t.name}: req/s per round " + ", ".join(f"{r['rps']:,.0f}" for r in t.runs) for t in targets if t.runs]
    print_rows(title, head, rows, notes)
    return title, targets


# -- case ws: WebSocket echo through the proxies ------------------------------------------

def start_ws_client(ctx: Ctx, mode_args: List[str], port: int, log: Path,
                    stdin=subprocess.DEVNULL) -> Tuple[subprocess.Popen, LineReader]:
    a = ctx.args
    argv = [sys.executable, str(BENCH / "wsload.py"), "--port", str(port), "--size", str(a.ws_size)] + mode_args
    if ctx.load_cpu is not None:
        argv = ["taskset", "-c", ctx.load_cpu] + argv
    with open(log, "ab") as err:
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=err, stdin=stdin, cwd=ROOT,
                                start_new_session=True)
    _children.append(proc)
    return proc, LineReader(proc, f"the WebSocket client ({' '.join(mode_args[:1])} on port {port})", log)


def ws_result(reader: LineReader, proc: subprocess.Popen, timeout: float) -> dict:
    line = reader.expect("result ", timeout)
    try:
        proc.wait(10)
    finally:
        stop(proc)
    return json.loads(line[len("result "):])


def ws_idle_memory(ctx: Ctx, t: Target) -> dict:
    """RSS of the proxy (process tree) with ``--ws-idle`` idle tunnels open, minus before."""
    a = ctx.args
    time.sleep(0.5)
    rss0 = rss_kib(t.proc.pid)
    log = ctx.work / f"wsload-idle-{t.name.replace(' ', '').replace('(', '-').replace(')', '')}.log"
    proc, reader = start_ws_client(ctx, ["idle", "-n", str(a.ws_idle)], t.port, log, stdin=subprocess.PIPE)
    try:
        reader.expect(f"ready {a.ws_idle}", 60)
        time.sleep(1.0)    # let the proxy settle (every tunnel is open: the client saw each 101)
        rss1 = rss_kib(t.proc.pid)
        proc.stdin.close()  # the client then checks each tunnel still echoes, and closes them
        r = ws_result(reader, proc, 60)
    finally:
        stop(proc)
    errors = r["errors"] + (a.ws_idle - r["echoed_after_idle"])
    return {"idle_tunnels": a.ws_idle, "rss_before_kib": rss0, "rss_after_kib": rss1,
            "kib_per_tunnel": (rss1 - rss0) / a.ws_idle, "idle_errors": errors,
            "idle_first_error": r.get("first_error", "")}


def ws_load(ctx: Ctx, t: Target, port: int, echo: subprocess.Popen) -> dict:
    a = ctx.args
    log = ctx.work / f"wsload-{t.name.replace(' ', '').replace('(', '-').replace(')', '')}.log"
    proc, reader = start_ws_client(
        ctx, ["load", "-n", str(a.ws_connections), "--depth", str(a.ws_depth),
              "--warmup", f"{a.case_warmup:g}", "--duration", f"{a.case_duration:g}"], port, log)
    try:
        reader.expect(f"ready {a.ws_connections}", 60)
        reader.expect("measure", a.case_warmup + 30)
        pids = {"proxy": t.proc.pid if t.proc else None, "backend": echo.pid, "client": proc.pid}
        cpu0 = {k: cpu_seconds(p) for k, p in pids.items() if p}
        t0 = time.monotonic()
        line = reader.expect("result ", a.case_duration + 30)
        cpu1 = {k: cpu_seconds(p) for k, p in pids.items() if p}
        wall = time.monotonic() - t0
        proc.wait(10)
    finally:
        stop(proc)
    r = json.loads(line[len("result "):])
    rate, n = r["rate"], r["messages"]
    if not n:
        raise BenchError(f"no WebSocket message came back through {t.name} (first error: {r['first_error']})")
    out = {
        "msgs_per_s": rate,
        "messages": n,
        "seconds": r["seconds"],
        # Little's law: connections x messages in flight / throughput
        "rtt_ms": a.ws_connections * a.ws_depth / rate * 1e3,
        "backend_cpu_util": (cpu1["backend"] - cpu0["backend"]) / wall,
        "client_cpu_util": (cpu1["client"] - cpu0["client"]) / wall,
        "errors": r["errors"],
        "first_error": r["first_error"],
    }
    if "proxy" in cpu0:
        cpu = cpu1["proxy"] - cpu0["proxy"]
        out.update({"cpu_s": cpu, "cpu_us_per_msg": cpu / n * 1e6, "cpu_util": cpu / wall})
    return out


def case_ws(ctx: Ctx) -> Tuple[str, List[Target]]:
    a = ctx.args
    w = ctx.work
    echo_port, = free_ports(1)
    echo_log = w / "wsecho.log"
    echo_argv = [sys.executable, str(BENCH / "wsecho.py"), "--port", str(echo_port)]
    echo = spawn(echo_argv, echo_log, ctx.load_cpu)
    try:
        deadline = time.monotonic() + 15
        while True:
            rc, out = run_tool([sys.executable, str(BENCH / "wsload.py"), "--port", str(echo_port), "check"], 15)
            if rc == 0:
                break
            if echo.poll() is not None or time.monotonic() > deadline:
                raise BenchError(f"the WebSocket echo backend does not echo on 127.0.0.1:{echo_port}: {out.strip()}\n"
                                 f"Last lines of {echo_log}:\n{log_tail(echo_log)}")
            time.sleep(0.2)
        print(f"bench: ws: echo backend (bench/wsecho.py) on 127.0.0.1:{echo_port}")

        direct = Target("direct (no proxy)", "direct", echo_port, echo_argv, echo_log, best_key="msgs_per_s")
        targets = [direct] + case_targets(
            ctx, "ws",
            lambda port: nginx_case_conf(ctx, "ws", port, [echo_port], None, websocket=True),
            lambda port: gateway_case_toml(ctx, "ws", port, [echo_port], None))
        for t in targets:
            t.best_key = "msgs_per_s"

        def probe(t: Target) -> Optional[str]:
            try:
                rc, out = run_tool([sys.executable, str(BENCH / "wsload.py"), "--port", str(t.port), "check"], 15)
            except BenchError as e:
                return str(e)
            return None if rc == 0 else (out.strip().splitlines() or ["failed"])[-1]

        def measure_one(t: Target, rnd: int) -> dict:
            if rnd == 1 and t.proc is not None:
                # on the freshly started proxy, before any load (whose peak the allocator keeps)
                t.extra.update(ws_idle_memory(ctx, t))
                print(f"bench: ws idle   {t.name:<18} {t.extra['idle_tunnels']} idle tunnels: RSS "
                      f"{t.extra['rss_before_kib']:,} -> {t.extra['rss_after_kib']:,} KiB = "
                      f"{t.extra['kib_per_tunnel']:.1f} KiB per tunnel  errors {t.extra['idle_errors']}")
            r = ws_load(ctx, t, t.port, echo)
            if echo.poll() is not None:
                raise BenchError(f"the echo backend died (status {echo.returncode}):\n{log_tail(echo_log)}")
            return r

        def describe(r: dict) -> str:
            proxy = (f"{r['cpu_us_per_msg']:.1f} us CPU/msg  proxy CPU {r['cpu_util'] * 100:.0f}%  "
                     if "cpu_s" in r else "")
            return (f"{r['msgs_per_s']:>10,.0f} msgs/s  mean RTT {r['rtt_ms']:.2f} ms  {proxy}"
                    f"backend CPU {r['backend_cpu_util'] * 100:.0f}%  client CPU {r['client_cpu_util'] * 100:.0f}%  "
                    f"errors {r['errors']}{' (' + r['first_error'] + ')' if r['first_error'] else ''}")

        run_case(ctx, "ws", targets, probe, measure_one, describe)
    finally:
        stop(echo)

    nginx = next((t for t in targets if t.kind == "nginx" and t.best), None)
    head = ["proxy", "msgs/s", "mean RTT ms", "CPU us/msg", "proxy CPU", "backend CPU", "client CPU",
            "vs nginx", "CPU/msg vs nginx", "KiB/idle tunnel", "mem vs nginx", "errors"]
    rows = []
    for t in targets:
        b = t.best
        if b is None:
            rows.append([t.name, "FAILED"] + ["-"] * (len(head) - 2))
            continue
        other = nginx is not None and t is not nginx and t.kind != "direct"
        proxied = "cpu_s" in b
        idle = t.extra.get("kib_per_tunnel")
        rows.append([
            t.name, f"{b['msgs_per_s']:,.0f}", f"{b['rtt_ms']:.2f}",
            f"{b['cpu_us_per_msg']:.1f}" if proxied else "-",
            f"{b['cpu_util'] * 100:.0f}%" if proxied else "-",
            f"{b['backend_cpu_util'] * 100:.0f}%", f"{b['client_cpu_util'] * 100:.0f}%",
            ratio(b["msgs_per_s"], nginx.best["msgs_per_s"]) if other else "-",
            ratio(b["cpu_us_per_msg"], nginx.best["cpu_us_per_msg"], 1) if other and proxied else "-",
            f"{idle:.1f}" if idle is not None else "-",
            ratio(idle, nginx.extra.get("kib_per_tunnel"), 1) if other and idle is not None else "-",
            str(b["errors"] + t.extra.get("idle_errors", 0)),
        ])
    title = (f"ws: {a.ws_connections} WebSocket tunnels, {a.ws_depth} message(s) of {a.ws_size} bytes in flight "
             f"on each, {a.case_duration:g}s (after a {a.case_warmup:g}s warm-up), best of {a.case_rounds} "
             f"round(s); idle memory with {a.ws_idle} tunnels; {pinning_note(ctx)}")
    notes = [f"{t.name}: msgs/s per round " + ", ".join(f"{r['msgs_per_s']:,.0f}" for r in t.runs)
             for t in targets if t.runs]
    print_rows(title, head, rows, notes)
    return title, targets


# -- case http1-w2: the headline load with 2 worker processes in each proxy ---------------

W2 = 2   # worker processes of both proxies in the http1-w2 case


def probe_w2(t: Target) -> Optional[str]:
    """Ready when the proxy runs its master and 2 worker processes (the gateway: its
    master logged ``listening on … at 127.0.0.1:PORT`` and both workers logged
    ``gateway started``) and ``GET /`` is answered by a backend."""
    if t.kind == "gateway":
        log = t.log.read_text(errors="replace") if t.log.exists() else ""
        if not re.search(rf"listening on \S+ at 127\.0\.0\.1:{t.port}\b", log):
            return f"the master has not logged 'listening on … at 127.0.0.1:{t.port}' yet"
        started = log.count("gateway started:")
        if started < W2:
            return f"{started} of {W2} workers logged 'gateway started'"
    workers = len(tree_pids(t.proc.pid)) - 1
    if workers != W2:
        return f"{workers} worker processes, not {W2}"
    try:
        status, body = http_get(t.port)
    except (OSError, http.client.HTTPException) as e:
        return f"{type(e).__name__}: {e}"
    return None if status == 200 and body in BACKEND_BODIES else f"HTTP {status} {body[:200]!r}"


def case_http1_w2(ctx: Ctx) -> Tuple[str, List[Target]]:
    """The http1 load (wrk, keepalive, small response) with nginx ``worker_processes 2``
    against the gateway's ``[gateway] workers = 2`` (the first of ``--reactors``), CPU
    summed over each process tree."""
    a = ctx.args
    targets = case_targets(
        ctx, "http1-w2",
        lambda port: nginx_case_conf(ctx, "http1-w2", port, ctx.backend_ports, a.keepalive, workers=W2),
        lambda port: gateway_case_toml(ctx, "http1-w2", port, ctx.backend_ports, a.keepalive, workers=W2),
        reactors=ctx.reactors[:1])

    def measure_one(t: Target, rnd: int) -> dict:
        return measure(a, t, ctx.status_port, ctx.load_cpu, duration=a.case_duration, warmup=a.case_warmup)

    def describe(r: dict) -> str:
        return (f"{r['rps']:>10,.0f} req/s  p50 {r['p50_ms']:.2f} ms  p99 {r['p99_ms']:.2f} ms  "
                f"{r['cpu_us_per_req']:.1f} us CPU/req  proxy CPU {r['cpu_util'] * 100:.0f}%  "
                f"upstream conns {r['upstream_conns']}  errors {r['errors'] + r['non_2xx']}  "
                f"[CPU s master {r['cpu_by_process'][0]:.2f}, workers "
                f"{', '.join(f'{c:.2f}' for c in r['cpu_by_process'][1:])}]")

    run_case(ctx, "http1-w2", targets, probe_w2, measure_one, describe)
    pin = ("proxy pinned to CPU " + a.proxy_cpu + ", wrk and backends to CPU " + a.load_cpu
           if ctx.pinned else "no CPU pinning")
    title = (f"http1-w2: wrk -t{a.threads} -c{a.connections} -d{a.case_duration:g}s (keepalive, after a "
             f"{a.case_warmup:g}s warm-up), {W2} worker processes in each proxy, CPU summed over each "
             f"process tree (so up to {W2 * 100}%), best of {a.case_rounds} round(s); {pin}")
    notes = []
    for t in targets:
        b = t.best
        if b is None:
            continue
        workers = b["cpu_by_process"][1:]
        busy = sum(workers)
        split = " / ".join(f"{c / busy * 100:.0f}%" for c in workers) if busy else "-"
        notes.append(f"{t.name}: CPU over the best run: master {b['cpu_by_process'][0]:.2f} s, workers "
                     f"{' + '.join(f'{c:.2f}' for c in workers)} s (split {split})")
    print_table(a, targets, ctx.pinned, title=title, notes=tuple(notes))
    return title, targets


# -- case grpc: unary calls and bidi messages through the proxies --------------------------

GRPC_UNARY = "/demo.Echo/Unary"


def grpc_payload(size: int) -> bytes:
    return (b"bench-grpc-" * (size // 11 + 1))[:size]


def nginx_grpc_conf(ctx: Ctx, port: int, peer_port: int, keepalive: int) -> str:
    w = ctx.work
    return f"""# nginx as the reference gRPC proxy; gateway-grpc-*.toml do the same job
worker_processes {ctx.args.workers};
daemon off;
pid {w}/nginx-grpc.pid;
error_log {w}/nginx-grpc-error.log warn;
events {{ worker_connections 8192; }}
http {{
    access_log off;
    client_body_temp_path {w}/tmp-proxy;
    proxy_temp_path {w}/tmp-proxy;
    fastcgi_temp_path {w}/tmp-proxy;
    uwsgi_temp_path {w}/tmp-proxy;
    scgi_temp_path {w}/tmp-proxy;
    upstream grpc_peers {{
        server 127.0.0.1:{peer_port};
        keepalive {keepalive};   # nginx relays one call per upstream connection
    }}
    server {{
        listen 127.0.0.1:{port} http2 backlog=4096;   # h2c, prior knowledge
        keepalive_requests 10000000;   # h2load does not reconnect after a GOAWAY
        client_max_body_size 0;        # a bidi call is one long request body
        location / {{
            grpc_pass grpc://grpc_peers;
            # what the gateway adds by default (x-forwarded-for)
            grpc_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
        }}
    }}
}}
"""


def gateway_grpc_toml(ctx: Ctx, port: int, peer_port: int, front_door: bool) -> str:
    """A ``grpc_pass`` location on an h2c listener, or (``front_door``) only a
    ``[[grpc_servers]]`` front door, to the same one-peer group."""
    lines = [f"# gateway config for the benchmark's grpc case ({'[[grpc_servers]] front door' if front_door else 'grpc_pass location'}); "
             "nginx-grpc.conf does the same job", "[gateway]"]
    if ctx.args.workers != 1 and not front_door:
        lines.append(f"workers = {ctx.args.workers}")
    lines += ["access_log = false", 'shutdown_timeout = "1s"', "", "[admin]", "listen = false", "",
              "[upstreams.grpc_peers]", f'servers = [ {{ address = "127.0.0.1:{peer_port}" }} ]', ""]
    if front_door:
        lines += ["[[grpc_servers]]", f'listen = "127.0.0.1:{port}"', 'grpc_pass = "grpc://grpc_peers"']
    else:
        lines += ["[[servers]]", f'listen = ["tcp:{port}:interface=127.0.0.1"]',
                  "# http2 = true (the default): h2c with prior knowledge",
                  "keepalive_requests = 10000000   # as in nginx-grpc.conf",
                  "client_max_body_size = 0        # a bidi call is one long request body",
                  'locations = [ { path = "/", grpc_pass = "grpc://grpc_peers" } ]']
    return "\n".join(lines) + "\n"


def grpc_check(port: int) -> Optional[str]:
    """A unary and a bidi call through ``port`` (bench/grpcload.py check): None when both
    came back equal to what was sent with status OK, else what went wrong."""
    try:
        rc, out = run_tool([sys.executable, str(BENCH / "grpcload.py"), "--port", str(port), "check"], 20)
    except BenchError as e:
        return str(e)
    return None if rc == 0 else (out.strip().splitlines() or ["failed"])[-1]


def run_grpc_h2load(ctx: Ctx, port: int, body: Path, seconds: float) -> dict:
    a = ctx.args
    argv = ["h2load", f"-c{a.h2_clients}", f"-m{a.h2_streams}", f"-t{a.h2_threads}",
            "-D", f"{max(1, round(seconds * 1000))}ms", "-d", str(body),
            "-H", "content-type: application/grpc", "-H", "te: trailers",
            f"http://127.0.0.1:{port}{GRPC_UNARY}"]
    rc, out = run_tool(argv, seconds + 30, ctx.load_cpu)
    if rc != 0:
        raise BenchError(f"h2load failed (status {rc}):\n{out[-3000:]}")
    h = parse_h2load(out)
    m = re.search(r"^traffic: .*\((\d+)\) data", out, re.M)
    if not m:
        raise BenchError(f"could not find the data bytes in h2load output:\n{out[-3000:]}")
    h["data_bytes"] = int(m.group(1))
    return h


def children_cpu() -> float:
    """CPU of our reaped children so far (h2load runs to completion under us)."""
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def grpc_unary(ctx: Ctx, t: Target, peer: subprocess.Popen, body: Path) -> dict:
    """h2load POSTing one length-prefixed message to /demo.Echo/Unary over h2c."""
    a = ctx.args
    message_len = body.stat().st_size
    run_grpc_h2load(ctx, t.port, body, a.case_warmup)
    pids = {"proxy": t.proc.pid if t.proc else None, "peer": peer.pid}
    cpu0 = {k: cpu_seconds(p) for k, p in pids.items() if p}
    client0 = children_cpu()
    t0 = time.monotonic()
    h = run_grpc_h2load(ctx, t.port, body, a.case_duration)
    wall = time.monotonic() - t0
    client = children_cpu() - client0
    cpu1 = {k: cpu_seconds(p) for k, p in pids.items() if p}
    if h["protocol"] != "h2c":
        raise BenchError(f"h2load negotiated {h['protocol']!r}, not h2c")
    n = h["requests"]
    # every answered call carries exactly one echoed message (5-byte prefix + payload);
    # a gRPC error (a trailers-only 200) carries none, and h2load counts it a success
    echoed = h["data_bytes"] // message_len
    cut = a.h2_clients * a.h2_streams
    out = {
        "calls_per_s": h["rps"],
        "calls": n,
        "unary_mean_ms": h["mean_ms"],
        "unary_max_ms": h["max_ms"],
        "unary_echoed": echoed,
        "unary_cut": h["failed"],
        "unary_peer_cpu_util": (cpu1["peer"] - cpu0["peer"]) / wall,
        "unary_client_cpu_util": client / wall,
        "unary_errors": max(0, h["failed"] - cut) + h["timeout"] + h["non_2xx"] + max(0, n - echoed),
    }
    if "proxy" in cpu0:
        cpu = cpu1["proxy"] - cpu0["proxy"]
        out.update({"unary_cpu_s": cpu, "cpu_us_per_call": cpu / n * 1e6 if n else float("nan"),
                    "unary_cpu_util": cpu / wall})
    return out


def grpc_bidi(ctx: Ctx, t: Target, peer: subprocess.Popen) -> dict:
    """bench/grpcload.py load: --grpc-calls bidi calls ping-ponging one message each."""
    a = ctx.args
    log = ctx.work / f"grpcload-{re.sub(r'[^a-z0-9]+', '-', t.name.lower()).strip('-')}.log"
    argv = [sys.executable, str(BENCH / "grpcload.py"), "--port", str(t.port), "load",
            "-n", str(a.grpc_calls), "--channels", str(grpc_channels(a)), "--size", str(a.grpc_size),
            "--warmup", f"{a.case_warmup:g}", "--duration", f"{a.case_duration:g}"]
    if ctx.load_cpu is not None:
        argv = ["taskset", "-c", ctx.load_cpu] + argv
    with open(log, "ab") as err:
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=err, stdin=subprocess.DEVNULL, cwd=ROOT,
                                start_new_session=True)
    _children.append(proc)
    reader = LineReader(proc, f"the gRPC client (bidi through {t.name})", log)
    try:
        reader.expect(f"ready {a.grpc_calls}", 60)
        reader.expect("measure", a.case_warmup + 30)
        pids = {"proxy": t.proc.pid if t.proc else None, "peer": peer.pid, "client": proc.pid}
        cpu0 = {k: cpu_seconds(p) for k, p in pids.items() if p}
        t0 = time.monotonic()
        reader.expect("stop", a.case_duration + 30)
        cpu1 = {k: cpu_seconds(p) for k, p in pids.items() if p}
        wall = time.monotonic() - t0
        line = reader.expect("result ", 60)
        proc.wait(10)
    finally:
        stop(proc)
    r = json.loads(line[len("result "):])
    rate, n = r["rate"], r["messages"]
    if not n:
        raise BenchError(f"no gRPC message came back through {t.name} (first error: {r['first_error']})")
    out = {
        "msgs_per_s": rate,
        "messages": n,
        # Little's law: calls x 1 message in flight / throughput
        "bidi_rtt_ms": a.grpc_calls / rate * 1e3,
        "bidi_peer_cpu_util": (cpu1["peer"] - cpu0["peer"]) / wall,
        "bidi_client_cpu_util": (cpu1["client"] - cpu0["client"]) / wall,
        "bidi_errors": r["errors"],
        "bidi_first_error": r["first_error"],
    }
    if "proxy" in cpu0:
        cpu = cpu1["proxy"] - cpu0["proxy"]
        out.update({"bidi_cpu_s": cpu, "cpu_us_per_msg": cpu / n * 1e6, "bidi_cpu_util": cpu / wall})
    return out


def grpc_channels(a) -> int:
    """Channels (HTTP/2 connections) for the bidi calls: at most 100 calls on each, below
    both proxies' 128 concurrent streams per connection."""
    return max(1, -(-a.grpc_calls // 100))


def case_grpc(ctx: Ctx) -> Tuple[str, List[Target]]:
    a = ctx.args
    w = ctx.work
    payload = grpc_payload(a.grpc_size)
    body = w / "grpc-unary.bin"   # one gRPC message: uncompressed flag, 4-byte length, payload
    body.write_bytes(b"\x00" + len(payload).to_bytes(4, "big") + payload)
    peer_port, = free_ports(1)
    peer_log = w / "grpcecho.log"
    peer_argv = [sys.executable, str(BENCH / "grpcecho.py"), "--port", str(peer_port)]
    peer = spawn(peer_argv, peer_log, ctx.load_cpu)
    notes = []
    try:
        deadline = time.monotonic() + 15
        while True:
            why = grpc_check(peer_port)
            if why is None:
                break
            if peer.poll() is not None or time.monotonic() > deadline:
                raise BenchError(f"the gRPC echo peer does not answer on 127.0.0.1:{peer_port}: {why}\n"
                                 f"Last lines of {peer_log}:\n{log_tail(peer_log)}")
            time.sleep(0.2)
        print(f"bench: grpc: echo peer (bench/grpcecho.py, grpc.aio) on 127.0.0.1:{peer_port}")

        keepalive = max(a.keepalive, a.h2_clients * a.h2_streams, a.grpc_calls)
        direct = Target("direct (no proxy)", "direct", peer_port, peer_argv, peer_log)
        ports = free_ports(3)
        conf = w / "nginx-grpc.conf"
        conf.write_text(nginx_grpc_conf(ctx, ports[0], peer_port, keepalive))
        targets = [direct, Target("nginx", "nginx", ports[0],
                                  [ctx.nginx_bin, "-p", str(w), "-e", str(w / "nginx-grpc-error.log"),
                                   "-c", str(conf)], w / "nginx-grpc.log")]
        if ctx.reactors and "asyncio" not in ctx.reactors:
            notes.append("the gateway is left out: gRPC needs its asyncio reactor (it refuses --reactor=epoll "
                         "with grpc_pass or grpc_servers), and --reactors has no asyncio")
        elif ctx.reactors:
            for front_door, name, port in ((False, "gateway (grpc_pass)", ports[1]),
                                           (True, "gateway (grpc_servers)", ports[2])):
                if front_door and a.workers != 1:
                    notes.append("gateway (grpc_servers) is left out: the front door needs workers = 1")
                    continue
                conf = w / f"gateway-grpc-{'front-door' if front_door else 'location'}.toml"
                conf.write_text(gateway_grpc_toml(ctx, port, peer_port, front_door))
                log = w / f"gateway-grpc-{'front-door' if front_door else 'location'}.log"
                targets.append(Target(name, "gateway", port,
                                      [str(ctx.twistd), "-n", "--pidfile=", "gateway", "-c", str(conf)], log))
        for t in targets:
            t.best_key = "calls_per_s"
        for note in notes:
            print(f"bench: grpc: {note}")

        def probe(t: Target) -> Optional[str]:
            return grpc_check(t.port)

        def measure_one(t: Target, rnd: int) -> dict:
            r = grpc_unary(ctx, t, peer, body)
            r.update(grpc_bidi(ctx, t, peer))
            if peer.poll() is not None:
                raise BenchError(f"the gRPC echo peer died (status {peer.returncode}):\n{log_tail(peer_log)}")
            # status OK, unary and bidi, after the load too
            why = grpc_check(t.port)
            if why is not None:
                raise BenchError(f"after the load, a gRPC call through {t.name} failed: {why}")
            return r

        def describe(r: dict) -> str:
            unary = (f"{r['cpu_us_per_call']:.1f} us CPU/call  proxy CPU {r['unary_cpu_util'] * 100:.0f}%  "
                     if "unary_cpu_s" in r else "")
            bidi = (f"{r['cpu_us_per_msg']:.1f} us CPU/msg  proxy CPU {r['bidi_cpu_util'] * 100:.0f}%  "
                    if "bidi_cpu_s" in r else "")
            return (f"unary {r['calls_per_s']:>8,.0f} calls/s  mean {r['unary_mean_ms']:.2f} ms  {unary}"
                    f"peer CPU {r['unary_peer_cpu_util'] * 100:.0f}%  h2load CPU {r['unary_client_cpu_util'] * 100:.0f}%  "
                    f"errors {r['unary_errors']} [{r['unary_cut']} calls cut at the end]\n"
                    f"{'':>{len('bench: grpc round 1 ') + 18}} bidi  {r['msgs_per_s']:>8,.0f} msgs/s   "
                    f"mean RTT {r['bidi_rtt_ms']:.2f} ms  {bidi}peer CPU {r['bidi_peer_cpu_util'] * 100:.0f}%  "
                    f"client CPU {r['bidi_client_cpu_util'] * 100:.0f}%  errors {r['bidi_errors']}"
                    f"{' (' + r['bidi_first_error'] + ')' if r['bidi_first_error'] else ''}")

        run_case(ctx, "grpc", targets, probe, measure_one, describe)
    finally:
        stop(peer)

    nginx = next((t for t in targets if t.kind == "nginx" and t.runs), None)

    def best(t: Target, key: str) -> Optional[dict]:
        return max(t.runs, key=lambda r: r[key]) if t.runs else None

    head = ["target", "calls/s", "mean ms", "max ms", "CPU us/call", "proxy CPU", "peer CPU", "h2load CPU",
            "vs nginx", "CPU/call vs nginx", "errors"]
    rows = []
    n = best(nginx, "calls_per_s") if nginx else None
    for t in targets:
        b = best(t, "calls_per_s")
        if b is None:
            rows.append([t.name, "FAILED"] + ["-"] * (len(head) - 2))
            continue
        other = n is not None and t.kind == "gateway"
        proxied = "unary_cpu_s" in b
        rows.append([t.name, f"{b['calls_per_s']:,.0f}", f"{b['unary_mean_ms']:.2f}", f"{b['unary_max_ms']:.2f}",
                     f"{b['cpu_us_per_call']:.1f}" if proxied else "-",
                     f"{b['unary_cpu_util'] * 100:.0f}%" if proxied else "-",
                     f"{b['unary_peer_cpu_util'] * 100:.0f}%", f"{b['unary_client_cpu_util'] * 100:.0f}%",
                     ratio(b["calls_per_s"], n["calls_per_s"]) if other else "-",
                     ratio(b["cpu_us_per_call"], n["cpu_us_per_call"], 1) if other and proxied else "-",
                     str(b["unary_errors"])])
    pin = pinning_note(ctx)
    unary_title = (f"grpc unary: h2load -c{a.h2_clients} -m{a.h2_streams} -t{a.h2_threads} -D{a.case_duration:g}s "
                   f"h2c, POST {GRPC_UNARY} with one {a.grpc_size}-byte message (after a {a.case_warmup:g}s "
                   f"warm-up), best of {a.case_rounds} round(s); {pin}")
    print_rows(unary_title, head, rows,
               [f"{t.name}: calls/s per round " + ", ".join(f"{r['calls_per_s']:,.0f}" for r in t.runs)
                for t in targets if t.runs])

    head = ["target", "msgs/s", "mean RTT ms", "CPU us/msg", "proxy CPU", "peer CPU", "client CPU",
            "vs nginx", "CPU/msg vs nginx", "errors"]
    rows = []
    n = best(nginx, "msgs_per_s") if nginx else None
    for t in targets:
        b = best(t, "msgs_per_s")
        if b is None:
            rows.append([t.name, "FAILED"] + ["-"] * (len(head) - 2))
            continue
        other = n is not None and t.kind == "gateway"
        proxied = "bidi_cpu_s" in b
        rows.append([t.name, f"{b['msgs_per_s']:,.0f}", f"{b['bidi_rtt_ms']:.2f}",
                     f"{b['cpu_us_per_msg']:.1f}" if proxied else "-",
                     f"{b['bidi_cpu_util'] * 100:.0f}%" if proxied else "-",
                     f"{b['bidi_peer_cpu_util'] * 100:.0f}%", f"{b['bidi_client_cpu_util'] * 100:.0f}%",
                     ratio(b["msgs_per_s"], n["msgs_per_s"]) if other else "-",
                     ratio(b["cpu_us_per_msg"], n["cpu_us_per_msg"], 1) if other and proxied else "-",
                     str(b["bidi_errors"])])
    bidi_title = (f"grpc bidi: {a.grpc_calls} bidi calls (/demo.Echo/Bidi) on {grpc_channels(a)} connection(s), "
                  f"1 message of {a.grpc_size} bytes in flight on each, {a.case_duration:g}s (after a "
                  f"{a.case_warmup:g}s warm-up), best of {a.case_rounds} round(s); {pin}")
    print_rows(bidi_title, head, rows,
               [f"{t.name}: msgs/s per round " + ", ".join(f"{r['msgs_per_s']:,.0f}" for r in t.runs)
                for t in targets if t.runs] + notes)
    return f"{unary_title}\n{bidi_title}", targets


# -- the [gateway] workers hook ---------------------------------------------------------------

def check_gateway_workers(ctx: Ctx) -> None:
    """``--workers N`` (N > 1) runs nginx with ``worker_processes N`` and the gateway with
    ``[gateway] workers = N``: refused here, before anything starts, while the gateway's
    own ``--check`` refuses that key."""
    a = ctx.args
    if a.workers == 1 or not ctx.reactors:
        return
    conf = ctx.work / "gateway-workers-check.toml"
    conf.write_text(gateway_toml(free_ports(1)[0], ctx.backend_ports, a.keepalive, a.workers))
    try:
        r = subprocess.run([str(ctx.twistd), "-n", "--pidfile=", "gateway", "-c", str(conf), "--check"],
                           env=gateway_env(), cwd=ROOT, capture_output=True, text=True, timeout=60)
    except subprocess.TimeoutExpired:
        raise BenchError(f"--workers {a.workers}: `twistd gateway --check` did not finish") from None
    if r.returncode != 0:
        said = (r.stdout + r.stderr).strip()
        raise BenchError(
            f"--workers {a.workers}: the gateway refuses `[gateway] workers = {a.workers}` "
            f"(twistd gateway --check: {said[-500:]!r}). The gateway's workers setting is not implemented "
            f"yet; use --no-gateway to measure nginx alone with worker_processes {a.workers}.")


# -- main -------------------------------------------------------------------------------------

def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="gateway vs nginx reverse-proxy benchmark (see bench/README.md)")
    p.add_argument("--cases", default=",".join(CASES),
                   help=f"comma-separated cases to run, in this order: {', '.join(CASES)} (default: all)")
    p.add_argument("--duration", type=float, default=10, help="http1: measured seconds per run (default 10)")
    p.add_argument("--warmup", type=float, default=2, help="http1: warm-up seconds before each run (default 2)")
    p.add_argument("--rounds", type=int, default=2,
                   help="http1: alternating rounds; the best is reported (default 2)")
    p.add_argument("--case-duration", type=float, default=5,
                   help="every case but http1: measured seconds per run (default 5)")
    p.add_argument("--case-warmup", type=float, default=2,
                   help="every case but http1: warm-up seconds before each run (default 2)")
    p.add_argument("--case-rounds", type=int, default=1,
                   help="every case but http1: alternating rounds; the best is reported (default 1)")
    p.add_argument("--connections", "-c", type=int, default=50, help="http1, http1-w2, https: wrk connections")
    p.add_argument("--threads", "-t", type=int, default=2, help="http1, http1-w2, https: wrk threads")
    p.add_argument("--keepalive", type=int, default=64,
                   help="upstream keepalive (idle pool size per group) for both proxies; default 64 so the "
                        "pool covers the 50 concurrent requests (with 32 nginx opened 2-4%% of its upstream "
                        "connections anew); h2 and h2c use at least clients x streams")
    p.add_argument("--h2-clients", type=int, default=10,
                   help="h2, h2c, grpc unary: h2load connections (-c, default 10)")
    p.add_argument("--h2-streams", type=int, default=10,
                   help="h2, h2c, grpc unary: h2load concurrent streams per connection (-m, default 10)")
    p.add_argument("--h2-threads", type=int, default=1, help="h2, h2c, grpc unary: h2load threads (-t, default 1)")
    p.add_argument("--grpc-calls", type=int, default=50,
                   help="grpc bidi: concurrent bidi calls, one message in flight on each (default 50)")
    p.add_argument("--grpc-size", type=int, default=64, help="grpc: message payload bytes (default 64)")
    p.add_argument("--ws-connections", type=int, default=200, help="ws: concurrent tunnels under load (default 200)")
    p.add_argument("--ws-depth", type=int, default=1,
                   help="ws: messages in flight per tunnel (default 1: each message is its own read and "
                        "write through the proxy)")
    p.add_argument("--ws-size", type=int, default=64, help="ws: message payload bytes (default 64)")
    p.add_argument("--ws-idle", type=int, default=1000,
                   help="ws: idle tunnels opened to measure memory per tunnel (default 1000)")
    p.add_argument("--workers", type=int, default=1,
                   help="worker processes of the proxies: nginx worker_processes N, the gateway's "
                        "[gateway] workers = N (refused while the gateway does not support it); default 1")
    p.add_argument("--reactors", default="asyncio,epoll",
                   help="gateway variants to run: comma-separated 'asyncio' (the tap's default) and/or "
                        "any twistd --reactor name; empty for nginx only (default: asyncio,epoll)")
    p.add_argument("--no-gateway", action="store_true", help="benchmark nginx only")
    p.add_argument("--pin", action="store_true",
                   help="pin the proxy to --proxy-cpu and the load tools + backends to --load-cpu (off by "
                        "default: on 2 cores it made nginx's numbers bimodal)")
    p.add_argument("--proxy-cpu", default="0", help="CPU list for the proxy under test (default 0)")
    p.add_argument("--load-cpu", default="1", help="CPU list for the load tools and the backends (default 1)")
    p.add_argument("--workdir", type=Path, default=ROOT / ".bench",
                   help="configs, logs and results.json go here (default .bench/, recreated)")
    p.add_argument("--start-timeout", type=float, default=15, help="seconds a proxy gets to answer")
    args = p.parse_args(argv)
    cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    unknown = [c for c in cases if c not in CASES]
    if unknown or not cases:
        p.error(f"--cases: unknown case(s) {', '.join(unknown) or '(none given)'}; choose from {', '.join(CASES)}")
    if args.workers < 1:
        p.error("--workers must be at least 1")
    if args.grpc_calls < 1 or args.grpc_size < 1:
        p.error("--grpc-calls and --grpc-size must be at least 1")
    args.cases = ",".join(c for c in CASES if c in cases)

    sys.stdout.reconfigure(line_buffering=True)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even if started with SIGINT ignored
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGHUP, _on_signal)
    try:
        return _run(args)
    except BenchError as e:
        print(f"\nbench: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\nbench: interrupted, stopping everything", file=sys.stderr)
        return 130
    finally:
        stop_all()


def _run(args) -> int:
    cases = args.cases.split(",")
    tools = ["nginx"] + (["wrk"] if {"http1", "http1-w2", "https"} & set(cases) else []) + \
        (["h2load"] if {"h2", "h2c", "grpc"} & set(cases) else [])
    for tool in tools:
        if shutil.which(tool) is None and not (tool == "nginx" and Path("/usr/sbin/nginx").exists()):
            package = {"nginx": "nginx-light", "h2load": "nghttp2-client"}.get(tool, tool)
            raise BenchError(f"{tool} not found; install it (apt-get install {package}) or run bench/run.sh")
    nginx_bin = shutil.which("nginx") or "/usr/sbin/nginx"
    needed = (["http_ssl_module"] if {"https", "h2"} & set(cases) else []) + \
        (["http_v2_module"] if {"h2", "h2c", "grpc"} & set(cases) else [])
    if needed or "grpc" in cases:
        built = subprocess.run([nginx_bin, "-V"], capture_output=True, text=True, timeout=30).stderr
        lacking = [m for m in needed if f"--with-{m}" not in built]
        if "grpc" in cases and "--without-http_grpc_module" in built:   # built in unless left out
            lacking.append("http_grpc_module")
        if lacking:
            raise BenchError(f"{nginx_bin} was built without {', '.join(lacking)}, which the "
                             f"{args.cases} case(s) need; install Debian's nginx package, or leave those cases out")
    twistd = ROOT / ".venv" / "bin" / "twistd"
    reactors = [] if args.no_gateway else [r.strip() for r in args.reactors.split(",") if r.strip()]
    if reactors and not twistd.exists():
        raise BenchError(f"{twistd} not found: create the project venv first (make install / bench/run.sh)")

    ncpu = len(os.sched_getaffinity(0))
    pinned = args.pin and ncpu >= 2 and shutil.which("taskset") is not None
    if args.pin and not pinned:
        print("bench: warning: --pin needs 2 CPUs and taskset; running unpinned", file=sys.stderr)
    proxy_cpu = args.proxy_cpu if pinned else None
    load_cpu = args.load_cpu if pinned else None

    # the ws case holds thousands of sockets in the client and the proxies
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard if hard != resource.RLIM_INFINITY else 1 << 20, hard))
        except (ValueError, OSError):
            pass

    work = args.workdir.resolve()
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    (work / "tmp-backends").mkdir()
    (work / "tmp-proxy").mkdir()

    b1, b2, status_port, nginx_port, *gw_ports = free_ports(4 + len(reactors))
    backend_ports = [b1, b2]
    ctx = Ctx(args, work, nginx_bin, twistd, reactors, proxy_cpu, load_cpu, backend_ports, status_port, pinned)
    check_gateway_workers(ctx)
    if {"https", "h2"} & set(cases):
        ctx.certificate, ctx.key = make_certificate(work)

    # 1. backends
    print(f"bench: work dir {work}")
    load1 = os.getloadavg()[0]
    if load1 > 0.5:
        print(f"bench: note: load average {load1:.2f} before starting: other processes use CPU on this "
              f"machine, expect noisy numbers")
    (work / "backends.conf").write_text(nginx_backends_conf(work, backend_ports, status_port))
    backends_log = work / "backends.log"
    backends = spawn([nginx_bin, "-p", str(work), "-e", str(work / "backends-error.log"),
                      "-c", str(work / "backends.conf")], backends_log, load_cpu)
    for port, body in zip(backend_ports, BACKEND_BODIES):
        wait_http("the backend nginx", backends, port, backends_log, 10, expect=lambda b, body=body: b == body)
    print(f"bench: backends (nginx, 1 worker) on 127.0.0.1:{b1} and :{b2}")

    targets: List[Target] = []
    if "http1" in cases:
        targets = run_http1(ctx, nginx_port, gw_ports, backends, backends_log)
        for t in targets:  # free the CPU and memory for the other cases
            if t.proc is not None:
                stop(t.proc)

    others: Dict[str, Tuple[str, List[Target]]] = {}
    for case in cases:
        if case == "http1":
            continue
        print(f"bench: --- case {case} ---")
        if case == "http1-w2":
            others[case] = case_http1_w2(ctx)
        elif case == "grpc":
            others[case] = case_grpc(ctx)
        elif case == "https":
            others[case] = case_https(ctx)
        elif case in ("h2", "h2c"):
            others[case] = case_h2(ctx, case)
        elif case == "ws":
            others[case] = case_ws(ctx)
        if backends.poll() is not None:
            raise BenchError(f"the backend nginx died (status {backends.returncode}):\n{log_tail(backends_log)}")

    if any(t.kind == "gateway" for t in targets) or \
            any(t.kind == "gateway" for _, ts in others.values() for t in ts):
        print_summary(targets, others)

    results = {
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "pinned": pinned,
        "loadavg_at_start": load1,
        # the http1 case (the headline), as before the other cases existed
        "targets": [{"name": t.name, "argv": t.argv, "error": t.error, "runs": t.runs, "best": t.best}
                    for t in targets],
        "cases": {},
    }
    if "http1" in cases:
        results["cases"]["http1"] = {"title": "see targets", "targets": results["targets"]}
    for case, (title, ts) in others.items():
        results["cases"][case] = {
            "title": title,
            "targets": [{"name": t.name, "argv": t.argv, "error": t.error, "runs": t.runs, "best": t.best,
                         **({"idle": t.extra} if case == "ws" and t.extra else {})} for t in ts],
        }
    (work / "results.json").write_text(json.dumps(results, indent=2))
    print(f"bench: results in {work / 'results.json'}, configs and logs in {work}")
    failed = [t.name for t in targets if t.error is not None] + \
        [f"{case}: {t.name}" for case, (_, ts) in others.items() for t in ts if t.error is not None]
    if failed:
        print(f"bench: FAILED: {', '.join(failed)} (see the messages above)", file=sys.stderr)
        return 1
    return 0


def print_summary(http1: List[Target], others: Dict[str, Tuple[str, List[Target]]]) -> None:
    """One line per gateway variant and case: throughput and CPU cost against nginx."""
    print("bench: summary, gateway against nginx in the same run (throughput ratio; CPU per request, "
          "call or message ratio; for ws also memory per idle tunnel ratio)")
    cases = ([("http1", http1)] if http1 else []) + [(c, ts) for c, (_, ts) in others.items()]
    cw = max([6] + [len(c) for c, _ in cases])
    nw = max([18] + [len(t.name) for _, ts in cases for t in ts if t.kind == "gateway"])
    for case, ts in cases:
        nginx = next((t for t in ts if t.kind == "nginx" and t.best), None)
        for t in ts:
            if t.kind != "gateway":
                continue
            if t.best is None or nginx is None:
                print(f"  {case:<{cw}} {t.name:<{nw}} {'FAILED' if t.best is None else 'no nginx result'}")
                continue
            b, n = t.best, nginx.best
            if case == "ws":
                mem = ratio(t.extra.get("kib_per_tunnel", float("nan")), nginx.extra.get("kib_per_tunnel"), 1)
                print(f"  {case:<{cw}} {t.name:<{nw}} {ratio(b['msgs_per_s'], n['msgs_per_s']):>6} msgs/s   "
                      f"{ratio(b['cpu_us_per_msg'], n['cpu_us_per_msg'], 1):>6} CPU/msg   {mem:>6} KiB/idle tunnel")
            elif case == "grpc":
                u = max(t.runs, key=lambda r: r["calls_per_s"])
                nu = max(nginx.runs, key=lambda r: r["calls_per_s"])
                m = max(t.runs, key=lambda r: r["msgs_per_s"])
                nm = max(nginx.runs, key=lambda r: r["msgs_per_s"])
                print(f"  {case:<{cw}} {t.name:<{nw}} {ratio(u['calls_per_s'], nu['calls_per_s']):>6} calls/s  "
                      f"{ratio(u['cpu_us_per_call'], nu['cpu_us_per_call'], 1):>6} CPU/call (unary)")
                print(f"  {case:<{cw}} {t.name:<{nw}} {ratio(m['msgs_per_s'], nm['msgs_per_s']):>6} msgs/s   "
                      f"{ratio(m['cpu_us_per_msg'], nm['cpu_us_per_msg'], 1):>6} CPU/msg  (bidi)")
            else:
                print(f"  {case:<{cw}} {t.name:<{nw}} {ratio(b['rps'], n['rps']):>6} req/s    "
                      f"{ratio(b['cpu_us_per_req'], n['cpu_us_per_req'], 1):>6} CPU/req")
    print()


def run_http1(ctx: Ctx, nginx_port: int, gw_ports: List[int], backends: subprocess.Popen,
              backends_log: Path) -> List[Target]:
    """The headline case: wrk, HTTP/1.1 keepalive, small response (unchanged from before
    the other cases existed; its output is the same)."""
    args, work, pinned = ctx.args, ctx.work, ctx.pinned
    nginx_bin, twistd, reactors = ctx.nginx_bin, ctx.twistd, ctx.reactors
    backend_ports, status_port = ctx.backend_ports, ctx.status_port
    proxy_cpu, load_cpu = ctx.proxy_cpu, ctx.load_cpu

    # 2. proxies
    (work / "nginx-proxy.conf").write_text(
        nginx_proxy_conf(work, nginx_port, backend_ports, args.keepalive, args.workers))
    targets = [Target("nginx", "nginx", nginx_port,
                      [nginx_bin, "-p", str(work), "-e", str(work / "nginx-proxy-error.log"),
                       "-c", str(work / "nginx-proxy.conf")], work / "nginx-proxy.log")]
    for reactor, port in zip(reactors, gw_ports):
        conf = work / f"gateway-{reactor}.toml"
        conf.write_text(gateway_toml(port, backend_ports, args.keepalive, args.workers))
        argv = [str(twistd), "-n", "--pidfile="]
        if reactor != "asyncio":
            argv.append(f"--reactor={reactor}")
        argv += ["gateway", "-c", str(conf)]
        targets.append(Target(f"gateway ({reactor})", "gateway", port, argv, work / f"gateway-{reactor}.log"))

    for t in targets:
        print(f"bench: starting {t.name} on 127.0.0.1:{t.port}: {' '.join(t.argv)}")
        try:
            start_target(t, proxy_cpu, args.start_timeout)
        except BenchError as e:
            t.error = str(e)
            print(f"bench: {t.name} FAILED to start, skipping it:\n{e}\n", file=sys.stderr)
            if t.proc is not None:
                stop(t.proc)

    live = [t for t in targets if t.error is None]
    # 3. alternating measured runs
    for rnd in range(1, args.rounds + 1):
        for t in live:
            if t.error is not None:
                continue
            try:
                r = measure(args, t, status_port, load_cpu)
            except BenchError as e:
                t.error = str(e)
                print(f"bench: {t.name} FAILED during round {rnd}:\n{e}\n", file=sys.stderr)
                continue
            t.runs.append(r)
            print(f"bench: round {rnd} {t.name:<18} {r['rps']:>10,.0f} req/s  p50 {r['p50_ms']:.2f} ms  "
                  f"p99 {r['p99_ms']:.2f} ms  {r['cpu_us_per_req']:.1f} us CPU/req  "
                  f"proxy CPU {r['cpu_util'] * 100:.0f}%  upstream conns {r['upstream_conns']}  "
                  f"errors {r['errors'] + r['non_2xx']}")
    if backends.poll() is not None:
        raise BenchError(f"the backend nginx died (status {backends.returncode}):\n{log_tail(backends_log)}")

    print_table(args, targets, pinned)
    return targets


if __name__ == "__main__":
    sys.exit(main())
