#!/usr/bin/env python3
"""Side-by-side benchmark: the gateway (asyncio and epoll reactors) against nginx.

Run it through ``bench/run.sh`` (``make bench``); see bench/README.md for what is measured
and how to read the table. Standard library only, so it runs with any Python 3.11.

Layout (every address is 127.0.0.1, ports chosen free at start):

    wrk ──► proxy under test ──► two upstream "backends": one nginx instance serving a
            (nginx, or the gateway       small fixed 200 on two ports, plus a stub_status
             on each reactor)             port used to count upstream connections

All proxies are started first and stay up; the measured runs then alternate between them
(round 1: every proxy, round 2: every proxy) so slow drift of the machine affects each
alike, and the better of the rounds is reported.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import http.client
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional

ROOT = Path(__file__).resolve().parent.parent
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


def cpu_seconds(pid: int) -> float:
    """utime + stime of ``pid`` and its live descendants, in seconds."""
    total = 0
    for p in tree_pids(pid):
        try:
            with open(f"/proc/{p}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rindex(b")") + 2:].split()
        total += int(fields[11]) + int(fields[12])  # fields 14 and 15 of proc(5)
    return total / CLK_TCK


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


def nginx_proxy_conf(work: Path, port: int, backend_ports: List[int], keepalive: int) -> str:
    servers = "\n".join(f"        server 127.0.0.1:{p};" for p in backend_ports)
    return f"""# nginx as the reference proxy: the same job as the gateway's bench config
worker_processes 1;
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


def gateway_toml(port: int, backend_ports: List[int], keepalive: int) -> str:
    servers = ", ".join(f'{{ address = "127.0.0.1:{p}" }}' for p in backend_ports)
    return f"""# gateway config for the benchmark (CONFIG.md); the nginx proxy config does the same job
[gateway]
access_log = false
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


def run_wrk(args, port: int, seconds: float, cpu: Optional[str]) -> WrkResult:
    argv = ["wrk", f"-t{args.threads}", f"-c{args.connections}", f"-d{seconds:g}s", "--latency",
            f"http://127.0.0.1:{port}/"]
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

    @property
    def best(self) -> Optional[dict]:
        return max(self.runs, key=lambda r: r["rps"]) if self.runs else None


def upstream_accepts(status_port: int) -> int:
    """Connections the backends have accepted so far (nginx stub_status ``accepts``)."""
    status, body = http_get(status_port, "/status")
    m = re.search(rb"server accepts handled requests\s+(\d+)", body)
    if status != 200 or not m:
        raise BenchError(f"unexpected stub_status answer: {status} {body!r}")
    return int(m.group(1))


def measure(args, target: Target, status_port: int, wrk_cpu: Optional[str]) -> dict:
    run_wrk(args, target.port, args.warmup, wrk_cpu)
    accepts0 = upstream_accepts(status_port)
    cpu0 = cpu_seconds(target.proc.pid)
    t0 = time.monotonic()
    w = run_wrk(args, target.port, args.duration, wrk_cpu)
    wall = time.monotonic() - t0
    cpu1 = cpu_seconds(target.proc.pid)
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
    }


def start_target(t: Target, cpu: Optional[str], timeout: float) -> None:
    env = None
    if t.kind == "gateway":
        # benchmark the checkout (also finds twisted/plugins/gateway_plugin.py uninstalled)
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(
            [str(ROOT)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
    t.proc = spawn(t.argv, t.log, cpu, env=env)
    try:
        wait_http(t.name, t.proc, t.port, t.log, timeout,
                  expect=lambda body: body in BACKEND_BODIES)
    except BenchError as e:
        hint = ""
        log = t.log.read_text(errors="replace") if t.log.exists() else ""
        if "Unknown command: gateway" in log:
            hint = ("\n  hint: twistd does not know the gateway plugin: install the project into .venv "
                    "(make install, or .venv/bin/pip install -e .)")
        elif "No module named" in log:
            hint = "\n  hint: a module is missing: is the project (and its dependencies) installed into .venv?"
        raise BenchError(f"{e}{hint}") from None
    # a few requests must reach both backends (round robin over two equal peers)
    seen = set()
    for _ in range(6):
        seen.add(http_get(t.port)[1])
    if seen != set(BACKEND_BODIES):
        print(f"  warning: {t.name} sent 6 requests to {sorted(seen)}, expected both backends",
              file=sys.stderr)


def fmt_row(cols, widths):
    return "  ".join(str(c).rjust(w) if i else str(c).ljust(w) for i, (c, w) in enumerate(zip(cols, widths)))


def print_table(args, targets: List[Target], pinned: bool) -> None:
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
    print(f"wrk -t{args.threads} -c{args.connections} -d{args.duration:g}s (keepalive, after a "
          f"{args.warmup:g}s warm-up), best of {args.rounds} alternating rounds; "
          f"{'proxy pinned to CPU ' + args.proxy_cpu + ', wrk and backends to CPU ' + args.load_cpu if pinned else 'no CPU pinning'}")
    print(fmt_row(head, widths))
    print(fmt_row(["-" * w for w in widths], widths))
    for r in rows:
        print(fmt_row(r, widths))
    for t in targets:
        if t.runs:
            print(f"  {t.name}: req/s per round " + ", ".join(f"{r['rps']:,.0f}" for r in t.runs))
    print()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="gateway vs nginx reverse-proxy benchmark (see bench/README.md)")
    p.add_argument("--duration", type=float, default=10, help="measured seconds per run (default 10)")
    p.add_argument("--warmup", type=float, default=2, help="warm-up seconds before each run (default 2)")
    p.add_argument("--rounds", type=int, default=2, help="alternating rounds; the best is reported (default 2)")
    p.add_argument("--connections", "-c", type=int, default=50)
    p.add_argument("--threads", "-t", type=int, default=2)
    p.add_argument("--keepalive", type=int, default=64,
                   help="upstream keepalive (idle pool size per group) for both proxies; default 64 so the "
                        "pool covers the 50 concurrent requests (with 32 nginx opened 2-4%% of its upstream "
                        "connections anew)")
    p.add_argument("--reactors", default="asyncio,epoll",
                   help="gateway variants to run: comma-separated 'asyncio' (the tap's default) and/or "
                        "any twistd --reactor name; empty for nginx only (default: asyncio,epoll)")
    p.add_argument("--no-gateway", action="store_true", help="benchmark nginx only")
    p.add_argument("--pin", action="store_true",
                   help="pin the proxy to --proxy-cpu and wrk + backends to --load-cpu (off by default: "
                        "on 2 cores it made nginx's numbers bimodal)")
    p.add_argument("--proxy-cpu", default="0", help="CPU list for the proxy under test (default 0)")
    p.add_argument("--load-cpu", default="1", help="CPU list for wrk and the backends (default 1)")
    p.add_argument("--workdir", type=Path, default=ROOT / ".bench",
                   help="configs, logs and results.json go here (default .bench/, recreated)")
    p.add_argument("--start-timeout", type=float, default=15, help="seconds a proxy gets to answer")
    args = p.parse_args(argv)

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
    for tool in ("nginx", "wrk"):
        if shutil.which(tool) is None and not (tool == "nginx" and Path("/usr/sbin/nginx").exists()):
            raise BenchError(f"{tool} not found; install it (apt-get install nginx-light wrk) or run bench/run.sh")
    nginx_bin = shutil.which("nginx") or "/usr/sbin/nginx"
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

    work = args.workdir.resolve()
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    (work / "tmp-backends").mkdir()
    (work / "tmp-proxy").mkdir()

    b1, b2, status_port, nginx_port, *gw_ports = free_ports(4 + len(reactors))
    backend_ports = [b1, b2]

    # 1. backends
    print(f"bench: work dir {work}")
    (work / "backends.conf").write_text(nginx_backends_conf(work, backend_ports, status_port))
    backends_log = work / "backends.log"
    backends = spawn([nginx_bin, "-p", str(work), "-e", str(work / "backends-error.log"),
                      "-c", str(work / "backends.conf")], backends_log, load_cpu)
    for port, body in zip(backend_ports, BACKEND_BODIES):
        wait_http("the backend nginx", backends, port, backends_log, 10, expect=lambda b, body=body: b == body)
    print(f"bench: backends (nginx, 1 worker) on 127.0.0.1:{b1} and :{b2}")

    # 2. proxies
    (work / "nginx-proxy.conf").write_text(nginx_proxy_conf(work, nginx_port, backend_ports, args.keepalive))
    targets = [Target("nginx", "nginx", nginx_port,
                      [nginx_bin, "-p", str(work), "-e", str(work / "nginx-proxy-error.log"),
                       "-c", str(work / "nginx-proxy.conf")], work / "nginx-proxy.log")]
    for reactor, port in zip(reactors, gw_ports):
        conf = work / f"gateway-{reactor}.toml"
        conf.write_text(gateway_toml(port, backend_ports, args.keepalive))
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
    results = {
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "pinned": pinned,
        "targets": [{"name": t.name, "argv": t.argv, "error": t.error, "runs": t.runs, "best": t.best}
                    for t in targets],
    }
    (work / "results.json").write_text(json.dumps(results, indent=2))
    print(f"bench: results in {work / 'results.json'}, configs and logs in {work}")
    failed = [t.name for t in targets if t.error is not None]
    if failed:
        print(f"bench: FAILED: {', '.join(failed)} (see the messages above)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
