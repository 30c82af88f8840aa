#!/usr/bin/python3
"""bgd's benchmark. Run it through bench/run, which installs the tools and
builds the binaries; see bench/README.md for what each figure means.

Standard library only. Every process it starts is in its own session and is
stopped by its id when the benchmark ends or is interrupted. All traffic goes
to 127.0.0.1; every loop is bounded in count and time.
"""
import argparse
import bisect
import calendar
import json
import os
import platform
import re
import shutil
import signal
import socket
import urllib.request
import statistics
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
PY = "/usr/bin/python3"  # the real interpreter: a shim that forks breaks LISTEN_PID

# gunicorn as the "real app server": its default (sync) worker class, 3 workers.
GUNICORN_WORKERS = 3
GUNICORN_ARGS = ["-m", "gunicorn", "-k", "sync", "-w", str(GUNICORN_WORKERS), "--graceful-timeout", "10"]

STARTED = []  # every Popen we started, stopped at exit
BGD_PATH = ["bgd"]


def log(msg):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------- processes


def spawn(cmd, logfile, cwd=None, env=None, preexec_fn=None):
    out = open(logfile, "ab")
    p = subprocess.Popen(cmd, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                         start_new_session=True, preexec_fn=preexec_fn)
    out.close()
    STARTED.append(p)
    return p


def stop(p, sig=signal.SIGTERM, timeout=15.0, group=True):
    """Stops a process we started (its process group when group): sig, then SIGKILL."""
    if p.poll() is not None:
        return
    try:
        os.killpg(p.pid, sig) if group else p.send_signal(sig)
    except ProcessLookupError:
        pass
    try:
        p.wait(timeout)
    except subprocess.TimeoutExpired:
        log(f"pid {p.pid} did not stop within {timeout}s: SIGKILL")
    if group:
        try:
            os.killpg(p.pid, signal.SIGKILL)  # what is left of the group we just stopped, if anything
        except (ProcessLookupError, PermissionError):
            pass
    if p.poll() is None:
        p.kill()
        p.wait(5)


def stop_all():
    for p in reversed(STARTED):
        if p.poll() is not None:
            continue
        try:
            stop(p, timeout=10)
        except Exception as e:  # noqa: BLE001 - best effort at exit
            log(f"cleanup of pid {p.pid}: {e}")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_status(port, path="/healthz", timeout=2.0):
    """One GET over a new connection; the status code, or None."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
            s.sendall(f"GET {path} HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n".encode())
            data = s.recv(64)
            return int(data[9:12]) if data.startswith(b"HTTP/1.") else None
    except (OSError, ValueError):
        return None


def wait_http(port, path="/healthz", timeout=30.0, interval=0.01):
    """Polls until GET answers 2xx (how a proxy or script without a probe socket must do it)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        code = http_status(port, path)
        if code and 200 <= code < 300:
            return
        time.sleep(interval)
    raise RuntimeError(f"127.0.0.1:{port}{path} not ready within {timeout}s")


def proc_status(pid):
    d = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                k, _, v = line.partition(":")
                d[k] = v.strip()
    except OSError:
        pass
    return d


def kb(status, key):
    v = status.get(key, "0 kB").split()[0]
    return int(v)


def children(pid):
    out = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    s = f.read()
                if int(s[s.rindex(")") + 2:].split()[1]) == pid:
                    out.append(int(d))
            except (OSError, ValueError):
                pass
    return out


def descendants(pid):
    """pid and every process below it."""
    out, todo = [], [pid]
    while todo and len(out) < 1000:
        p = todo.pop()
        out.append(p)
        todo += children(p)
    return out


def task_counters(pids):
    """Summed over every thread of pids: (cpu ns from schedstat, context switches)."""
    ns = switches = 0
    for pid in pids:
        try:
            tasks = os.listdir(f"/proc/{pid}/task")
        except OSError:
            continue
        for t in tasks:
            try:
                with open(f"/proc/{pid}/task/{t}/schedstat") as f:
                    ns += int(f.read().split()[0])
                st = proc_status(f"{pid}/task/{t}")
                switches += int(st.get("voluntary_ctxt_switches", 0)) + int(st.get("nonvoluntary_ctxt_switches", 0))
            except (OSError, ValueError):
                pass
    return ns, switches


def proc_cpu_ms(pid):
    """CPU time (user + system) of the whole process from /proc/PID/stat, threads that have
    exited included (schedstat of /proc/PID/task/* loses them), in clock ticks (10 ms)."""
    with open(f"/proc/{pid}/stat") as f:
        s = f.read()
    v = s[s.rindex(")") + 2:].split()
    return (int(v[11]) + int(v[12])) * 1000.0 / os.sysconf("SC_CLK_TCK")


def cpu_busy():
    """(busy, total) jiffies of the whole machine, from /proc/stat."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    idle = v[3] + v[4]
    return sum(v[:8]) - idle, sum(v[:8])


def wait_for_quiet(ctx, what):
    """Waits (bounded) until the machine is idle apart from us: other work on a
    2-core machine (a build, a test suite) distorts every figure. Returns the
    busy fraction seen last, so the report can say a run was disturbed."""
    t_enter = time.monotonic()
    deadline = t_enter + min(ctx.quiet_wait, ctx.quiet_budget)
    while True:
        b0, t0 = cpu_busy()
        time.sleep(0.3)
        b1, t1 = cpu_busy()
        busy = (b1 - b0) / max(1, t1 - t0)
        if busy <= ctx.quiet_busy or time.monotonic() > deadline:
            if busy > ctx.quiet_busy:
                log(f"  {what}: machine {busy:.0%} busy with other work, going on anyway")
                ctx.disturbed += 1
            ctx.runs += 1
            ctx.busy.append(busy)
            ctx.quiet_budget = max(0.0, ctx.quiet_budget - (time.monotonic() - t_enter))
            return busy
        time.sleep(0.7)


# ---------------------------------------------------------------- statistics


def pct(sorted_vals, p):
    if not sorted_vals:
        return float("nan")
    k = max(0, min(len(sorted_vals) - 1, int(round(p / 100.0 * len(sorted_vals) + 0.5)) - 1))
    return sorted_vals[k]


def med(vals):
    vals = [v for v in vals if v == v]
    return statistics.median(vals) if vals else float("nan")


def fmt(v, digits=2):
    if v != v:  # nan
        return "n/a"
    if isinstance(v, int) or (digits == 0):
        return f"{v:.0f}"
    return f"{v:.{digits}f}"


def summary(vals, digits=2, unit=""):
    """median [min-max] over the repetitions."""
    vals = [v for v in vals if v == v]
    if not vals:
        return "n/a"
    if len(vals) == 1:
        return f"{fmt(vals[0], digits)}{unit}"
    return f"{fmt(med(vals), digits)}{unit} [{fmt(min(vals), digits)}-{fmt(max(vals), digits)}]"


# ---------------------------------------------------------------- the systems under test


def gunicorn_cmd(extra=()):
    return [PY] + GUNICORN_ARGS + list(extra) + ["app:application"]


def start_gunicorn(ctx, port, build, tag):
    p = spawn(gunicorn_cmd(["-b", f"127.0.0.1:{port}"]), f"{ctx.tmp}/{tag}.log", cwd=build)
    wait_http(port)
    return p


def traffic_table(ctx, mode, rest):
    """The `[traffic]` table: `mode` if given, and, for a bgd that keeps a
    standby after each swap (30 s by default since issue 25), no standby
    unless the measurement's own tables (`rest`) say otherwise: a release
    right after another would first drain the standby, and the figures
    here are about bgd's own cost, as before the default changed."""
    lines = [f"mode = {json.dumps(mode)}"] if mode else []
    if getattr(ctx, "has_standby", False) and "[traffic]" not in rest:
        lines.append('standby = "0s"')
    return "[traffic]\n" + "\n".join(lines) if lines else ""


class Bgd:
    """One bgd, its config in a temp dir, talked to over its control socket."""

    def __init__(self, ctx, name, command, health, port=None, base=None, top="", env=None, app=(), mode=None,
                 extra=""):
        """app: more `[app]` lines (drain_delay, env); mode: `traffic.mode`, None for bgd's default
        (the gate), or "shared"; extra: appended after `[health]` (more tables)."""
        self.ctx = ctx
        self.mode = mode or "gate"
        self.dir = os.path.join(base or ctx.tmp, name)
        os.makedirs(self.dir)
        self.root = os.path.join(self.dir, "root")
        self.sock = os.path.join(self.root, "bgd.sock")
        self.port = port or free_port()
        self.config = os.path.join(self.dir, "bgd.toml")
        health_line = 'http = "/healthz"' if health == "http" else "notify = true"
        q = json.dumps
        lines = [
            f"name = {q('bench-' + name)}",
            f"root = {q(self.root)}",
            top,
            traffic_table(ctx, mode, top + extra),
            "[[listen]]",
            'name = "http"',
            f"address = {q('127.0.0.1:' + str(self.port))}",
            "[app]",
            "command = [" + ", ".join(q(c) for c in command) + "]",
            'drain_timeout = "10s"',
            *app,
            "ALLOW_ROOT",
            "[health]",
            health_line,
            'timeout = "30s"',
            extra,
        ]
        text = "\n".join(lines) + "\n"
        # Running as root, the current bgd wants app.allow_root; an older one
        # does not know the key. Keep whichever `bgd --check` accepts.
        for variant in ("allow_root = true", ""):
            with open(self.config, "w") as f:
                f.write(text.replace("ALLOW_ROOT", variant if os.geteuid() == 0 else ""))
            r = subprocess.run([ctx.bgd, "--check", "--config", self.config], capture_output=True, text=True)
            if r.returncode == 0:
                break
        else:
            raise RuntimeError(f"bgd --check rejects {self.config}: {r.stderr.strip()}")
        self.log = os.path.join(self.dir, "bgd.log")
        self.proc = spawn([ctx.bgd, "--config", self.config], self.log, env=env)
        deadline = time.monotonic() + 10
        while True:
            try:
                self.request({"v": 1, "cmd": "status"})
                break
            except OSError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise RuntimeError(f"bgd did not come up; see {self.log}")
                time.sleep(0.02)

    @property
    def pid(self):
        return self.proc.pid

    def request(self, obj, timeout=120):
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(timeout)
            s.connect(self.sock)
            s.sendall((json.dumps(obj) + "\n").encode())
            buf = b""
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    raise RuntimeError(f"bgd closed the control connection early: {buf[-300:]!r}")
                buf += chunk
                while b"\n" in buf:
                    line, buf = buf.split(b"\n", 1)
                    msg = json.loads(line)
                    if msg.get("event") == "done":
                        return msg["result"]
                    if msg.get("event") == "error":
                        raise RuntimeError(f"bgd refused or failed: {msg}")

    def release(self, build):
        """Releases build; returns (t0, t1, result with ms)."""
        t0 = time.monotonic()
        res = self.request({"v": 1, "cmd": "release", "dir": os.path.abspath(build), "label": None})
        return t0, time.monotonic(), res

    def stop(self):
        stop(self.proc, timeout=30, group=False)


class Nginx:
    """nginx as a reverse proxy in front of one upstream port; reload switches it."""

    def __init__(self, ctx, upstream_port, port=None):
        self.ctx = ctx
        self.prefix = os.path.join(ctx.tmp, f"nginx-{free_port()}")
        os.makedirs(os.path.join(self.prefix, "logs"))
        self.port = port or free_port()
        self.conf = os.path.join(self.prefix, "nginx.conf")
        self.upstream = os.path.join(self.prefix, "upstream.conf")
        self.pidfile = os.path.join(self.prefix, "nginx.pid")
        user = "user root root;\n" if os.geteuid() == 0 else ""
        with open(self.conf, "w") as f:
            f.write(f"""{user}worker_processes auto;
daemon off;
master_process on;
pid {self.pidfile};
error_log {self.prefix}/logs/error.log warn;
worker_shutdown_timeout 10s;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {self.prefix}/client_body;
    proxy_temp_path {self.prefix}/proxy;
    fastcgi_temp_path {self.prefix}/fastcgi;
    uwsgi_temp_path {self.prefix}/uwsgi;
    scgi_temp_path {self.prefix}/scgi;
    keepalive_requests 100000;
    include {self.upstream};
    server {{
        listen 127.0.0.1:{self.port} backlog=4096;
        location / {{
            proxy_pass http://app;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
    }}
}}
""")
        self.write_upstream(upstream_port)
        self.proc = spawn([ctx.nginx, "-p", self.prefix, "-c", self.conf], os.path.join(self.prefix, "logs", "out.log"))
        wait_http(self.port)

    def write_upstream(self, port):
        tmp = self.upstream + ".tmp"
        with open(tmp, "w") as f:
            f.write(f"upstream app {{ server 127.0.0.1:{port}; keepalive 32; }}\n")
        os.rename(tmp, self.upstream)

    def workers(self):
        return children(self.proc.pid)

    def switch(self, port, timeout=15.0):
        """Points the upstream at port with `nginx -s reload`; returns when the old workers are gone."""
        old = set(self.workers())
        self.write_upstream(port)
        subprocess.run([self.ctx.nginx, "-p", self.prefix, "-c", self.conf, "-s", "reload"], check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not old & set(self.workers()):
                return
            time.sleep(0.01)
        log(f"nginx: old workers {sorted(old & set(self.workers()))} still there after {timeout}s")

    def stop(self):
        stop(self.proc, signal.SIGQUIT, timeout=15)


# ---------------------------------------------------------------- builds


def make_builds(ctx):
    b = os.path.join(ctx.tmp, "builds")
    ctx.build_gunicorn = [os.path.join(b, "gunicorn-v1"), os.path.join(b, "gunicorn-v2")]
    for d in ctx.build_gunicorn:
        os.makedirs(d)
        shutil.copy(os.path.join(HERE, "app.py"), d)
    ctx.build_fast = os.path.join(b, "fast")
    os.makedirs(ctx.build_fast)
    shutil.copy(os.path.join(HERE, "fastapp.py"), ctx.build_fast)


def make_big_build(ctx, base, files=10_000, total=200 * 1024 * 1024):
    """fastapp plus `files` files in 100 directories, `total` bytes of incompressible data."""
    d = os.path.join(base, "big-build", "big")
    os.makedirs(d)
    shutil.copy(os.path.join(HERE, "fastapp.py"), d)
    size = total // files
    pool = os.urandom(4 * 1024 * 1024)
    per_dir = 100
    for i in range(files):
        sub = os.path.join(d, "data", f"d{i // per_dir:03d}")
        if i % per_dir == 0:
            os.makedirs(sub)
        off = (i * 7919) % (len(pool) - size)
        with open(os.path.join(sub, f"f{i % per_dir:03d}.bin"), "wb") as f:
            f.write(pool[off:off + size])
    subprocess.run(["sync"], check=True)
    return d


def tree_size(d):
    n = b = 0
    for root, _, fs in os.walk(d):
        for f in fs:
            n += 1
            b += os.lstat(os.path.join(root, f)).st_size
    return n, b


# ---------------------------------------------------------------- 1. request path


def wrk_start(ctx, port, seconds, threads=2, conns=64):
    return subprocess.Popen([ctx.wrk, f"-t{threads}", f"-c{conns}", f"-d{seconds}s", "--latency", "--timeout", "5s",
                             f"http://127.0.0.1:{port}/"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)


def wrk_parse(out):
    def lat(label):
        m = re.search(rf"^\s+{label}%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
        if not m:
            return float("nan")
        return float(m.group(1)) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[m.group(2)]

    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    total = re.search(r"(\d+) requests in", out)
    errors = sum(int(x) for x in re.findall(r"(?:connect|read|write|timeout) (\d+)", out))
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {"rps": float(rps.group(1)) if rps else float("nan"), "p50": lat("50"), "p99": lat("99"),
            "requests": int(total.group(1)) if total else 0,
            "errors": errors + (int(non2xx.group(1)) if non2xx else 0)}


def wrk(ctx, port, seconds):
    out, _ = wrk_start(ctx, port, seconds).communicate(timeout=seconds + 30)
    return wrk_parse(out)


def wrk_pair(ctx, port_x, port_a, seconds):
    """Two wrk at once (-t1 -c32 each) on x and a: both share the cores at the same instants,
    so whatever else runs on the machine slows both alike. Returns rps_x / rps_a."""
    px, pa = wrk_start(ctx, port_x, seconds, 1, 32), wrk_start(ctx, port_a, seconds, 1, 32)
    x, a = wrk_parse(px.communicate(timeout=seconds + 30)[0]), wrk_parse(pa.communicate(timeout=seconds + 30)[0])
    return x["rps"] / a["rps"]


def bench_request_path(ctx):
    log("1. request path: starting gunicorn alone, under bgd, and behind nginx")
    direct_port = free_port()
    direct = start_gunicorn(ctx, direct_port, ctx.build_gunicorn[0], "m1-direct")
    twin_port = free_port()  # (a') an identical second gunicorn: the side-by-side method's own noise
    start_gunicorn(ctx, twin_port, ctx.build_gunicorn[0], "m1-twin")
    # gunicorn on two ports of its own: what the app sees under bgd with health.http, whose
    # probe socket is a second listener (gunicorn's sync workers then select() before each accept).
    two_port = free_port()
    two = spawn(gunicorn_cmd(["-b", f"127.0.0.1:{two_port}", "-b", f"127.0.0.1:{free_port()}"]),
                f"{ctx.tmp}/m1-two.log", cwd=ctx.build_gunicorn[0])
    wait_http(two_port)
    # (b) and (b2) run in bgd's default traffic mode, the gate: the app gets one socket per
    # address, and health.http checks it through that address. (b3) is shared mode, where
    # health.http gives the app a second listening socket (the probe socket), as (a2) has.
    bgd = Bgd(ctx, "m1-bgd", gunicorn_cmd(), "http")
    bgd.release(ctx.build_gunicorn[0])
    bgd_notify = Bgd(ctx, "m1-bgd-notify", gunicorn_cmd(), "notify")
    bgd_notify.release(ctx.build_gunicorn[0])
    wait_http(bgd_notify.port)
    bgd_shared = None
    if ctx.has_traffic:
        bgd_shared = Bgd(ctx, "m1-bgd-shared", gunicorn_cmd(), "http", mode="shared")
        bgd_shared.release(ctx.build_gunicorn[0])
    else:
        log("1. this bgd knows no traffic.mode (it predates the gate): (b) is shared mode, (b3) is left out")
    up_port = free_port()
    upstream = start_gunicorn(ctx, up_port, ctx.build_gunicorn[0], "m1-upstream")
    nginx = Nginx(ctx, up_port)
    # (key, name, port, the processes whose CPU time serves the requests)
    gate = "gate mode" if ctx.has_traffic else "bgd without traffic.mode"
    targets = [("a", "gunicorn binds its port", direct_port, [direct.pid]),
               ("a2", "gunicorn binds two ports (serves one)", two_port, [two.pid]),
               ("b", f"gunicorn under bgd, health.http, {gate}", bgd.port, [bgd.pid]),
               ("b2", f"gunicorn under bgd, health.notify, {gate}", bgd_notify.port, [bgd_notify.pid])]
    if bgd_shared:
        targets.append(("b3", "gunicorn under bgd, health.http, shared mode (probe socket)", bgd_shared.port,
                        [bgd_shared.pid]))
    targets.append(("c", "gunicorn behind nginx", nginx.port, [nginx.proc.pid, upstream.pid]))
    for _, _, port, _ in targets:
        wrk(ctx, port, 1 if ctx.quick else 2)  # warm-up, not counted
    runs = {k: [] for k, _, _, _ in targets}
    for rep in range(ctx.reps1):
        order = targets if rep % 2 == 0 else targets[::-1]  # a ... c, c ... a: cancels a steady drift
        for k, name, port, roots in order:
            wait_for_quiet(ctx, f"rep {rep + 1} ({k})")
            pids = [p for root in roots for p in descendants(root)]
            c0 = task_counters(pids)[0]
            r = wrk(ctx, port, ctx.wrk_seconds)
            c1 = task_counters(pids)[0]
            r["cpu_us"] = (c1 - c0) / 1000 / max(1, r["requests"])
            runs[k].append(r)
            log(f"  rep {rep + 1} ({k}) {name}: {r['rps']:.0f} req/s p50 {r['p50']:.2f} ms p99 {r['p99']:.2f} ms "
                f"errors {r['errors']}; server CPU {r['cpu_us']:.0f} us/request")
    # Side by side: each of a', a2, b, b2, b3 loaded at the same time as (a).
    pairs = [("a'", twin_port), ("a2", two_port), ("b", bgd.port), ("b2", bgd_notify.port)]
    if bgd_shared:
        pairs.append(("b3", bgd_shared.port))
    side = {k: [] for k, _ in pairs}
    for rep in range(ctx.reps1):
        for k, port in (pairs if rep % 2 == 0 else pairs[::-1]):
            wait_for_quiet(ctx, f"side by side rep {rep + 1} ({k})")
            side[k].append(wrk_pair(ctx, port, direct_port, ctx.wrk_seconds))
        log(f"  side by side rep {rep + 1}: " + ", ".join(f"({k})/(a) {side[k][-1]:.3f}" for k, _ in pairs))
    rows = []
    for k, name, _, _ in targets:
        rows.append({
            "setup": f"({k}) {name}",
            "rps": [r["rps"] for r in runs[k]],
            "p50": [r["p50"] for r in runs[k]],
            "p99": [r["p99"] for r in runs[k]],
            "errors": [r["errors"] for r in runs[k]],
            "rps_ratio": [r["rps"] / a["rps"] for r, a in zip(runs[k], runs["a"])],
            "p50_ratio": [r["p50"] / a["p50"] for r, a in zip(runs[k], runs["a"])],
            "p99_ratio": [r["p99"] / a["p99"] for r, a in zip(runs[k], runs["a"])],
            "cpu_us": [r["cpu_us"] for r in runs[k]],
            "cpu_ratio": [r["cpu_us"] / a["cpu_us"] for r, a in zip(runs[k], runs["a"])],
            "side": side.get(k, [1.0] if k == "a" else []),
        })
    rows.insert(1, {"setup": "(a') a second, identical gunicorn (side by side only)", "side": side["a'"]})
    nginx.stop()
    bgd.stop()
    bgd_notify.stop()
    if bgd_shared:
        bgd_shared.stop()
    return rows


# ---------------------------------------------------------------- 2. releases under load


def loadgen(ctx, port, seconds, out):
    p = subprocess.Popen([ctx.loadgen, "--addr", f"127.0.0.1:{port}", "--duration", str(seconds),
                          "--keepalive", "32", "--close", "32", "--out", out],
                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, start_new_session=True)
    STARTED.append(p)
    return p


def read_records(path):
    recs = []
    with open(path) as f:
        for line in f:
            s, lat, code, kind = line.split()
            recs.append((int(s), int(lat), int(code), kind))
    recs.sort()
    return recs


def analyse_load(recs, windows, steady_from, steady_to):
    """Splits requests into release windows (overlapping one) and steady state."""
    windows = sorted(windows)
    starts = [w[0] for w in windows]
    win_lat, steady_lat = [], []
    failed = failed_in = 0
    fail_kinds = {}
    for s_ns, lat_us, code, kind in recs:
        s = s_ns / 1e9
        e = s + lat_us / 1e6
        i = bisect.bisect_right(starts, e) - 1
        inside = i >= 0 and s < windows[i][1]
        ok = 200 <= code < 300
        if not ok:
            failed += 1
            failed_in += inside
            key = f"{kind}{code}"
            fail_kinds[key] = fail_kinds.get(key, 0) + 1
        if inside:
            if ok:
                win_lat.append(lat_us / 1000)
        elif steady_from <= s < steady_to and ok:
            steady_lat.append(lat_us / 1000)
    win_lat.sort()
    steady_lat.sort()
    return {
        "requests": len(recs), "failed": failed, "failed_in_windows": failed_in, "fail_kinds": fail_kinds,
        "p99_window": pct(win_lat, 99), "p99_steady": pct(steady_lat, 99),
        "p50_window": pct(win_lat, 50), "p50_steady": pct(steady_lat, 50),
        "window_requests": len(win_lat), "steady_requests": len(steady_lat),
    }


# bgd's quiesce waits, after the swap, until the old color's connections have ended, up to
# app.drain_delay (default 5 s) before its stop signal. The load generator's keep-alive
# clients never close a connection the server keeps open, so with an app that keeps them
# open (gthread) every release would wait the whole delay; 1 s keeps the windows short.
# gunicorn's sync workers close every connection after one answer, so for them it is moot.
DRAIN_DELAY_2 = "1s"


class BgdSystem:
    name = "(b) bgd release, gate mode"
    shared_name = "(b3) bgd release, shared mode"
    gthread_name = "(b') bgd release, gate mode, gunicorn gthread workers"

    def __init__(self, ctx, worker="sync", mode=None):
        self.ctx = ctx
        cmd = gunicorn_cmd() if worker == "sync" else [PY, "-m", "gunicorn", "-k", "gthread", "-w", "2", "--threads", "8",
                                                         "--graceful-timeout", "10", "app:application"]
        if worker != "sync":
            self.name = self.gthread_name
        elif mode == "shared":
            self.name = self.shared_name
        app = [f'drain_delay = "{DRAIN_DELAY_2}"'] if ctx.has_traffic else []
        self.bgd = Bgd(ctx, f"m2-bgd-{worker}-{mode or 'gate'}-{free_port()}", cmd, "http", app=app, mode=mode)
        self.port = self.bgd.port
        self.n = 0
        self.bgd.release(ctx.build_gunicorn[0])

    def release(self):
        self.n += 1
        t0, t1, res = self.bgd.release(self.ctx.build_gunicorn[self.n % 2])
        return t0, t1

    def stop(self):
        self.bgd.stop()


class NginxSystem:
    name = "(c) nginx upstream switch + reload"

    def __init__(self, ctx):
        self.ctx = ctx
        self.ports = [free_port(), free_port()]
        self.cur = 0
        self.app = start_gunicorn(ctx, self.ports[0], ctx.build_gunicorn[0], "m2-nginx-app")
        self.nginx = Nginx(ctx, self.ports[0])
        self.port = self.nginx.port
        self.n = 0

    def release(self):
        self.n += 1
        t0 = time.monotonic()
        new = 1 - self.cur
        app = start_gunicorn(self.ctx, self.ports[new], self.ctx.build_gunicorn[self.n % 2], "m2-nginx-app")
        self.nginx.switch(self.ports[new])
        stop(self.app, timeout=15)
        self.app, self.cur = app, new
        return t0, time.monotonic()

    def stop(self):
        self.nginx.stop()
        stop(self.app)


class NaiveSystem:
    name = "(d) naive restart in place"

    def __init__(self, ctx):
        self.ctx = ctx
        self.port = free_port()
        self.app = start_gunicorn(ctx, self.port, ctx.build_gunicorn[0], "m2-naive-app")
        self.n = 0

    def release(self):
        self.n += 1
        t0 = time.monotonic()
        stop(self.app, timeout=15)
        self.app = spawn(gunicorn_cmd(["-b", f"127.0.0.1:{self.port}"]), f"{self.ctx.tmp}/m2-naive-app.log",
                         cwd=self.ctx.build_gunicorn[self.n % 2])
        wait_http(self.port)
        return t0, time.monotonic()

    def stop(self):
        stop(self.app)


def one_load_run(ctx, system):
    out = os.path.join(ctx.tmp, f"load-{free_port()}.txt")
    total = ctx.steady_seconds + ctx.release_seconds
    lg = loadgen(ctx, system.port, total, out)
    t_start = time.monotonic()
    time.sleep(ctx.steady_seconds)
    windows = []
    deadline = t_start + total - 1.0
    while time.monotonic() < deadline and len(windows) < 200:
        if windows and time.monotonic() + (windows[-1][1] - windows[-1][0]) > t_start + total - 0.5:
            break  # the next release would outlast the load
        t0, t1 = system.release()
        windows.append((t0, t1))
        time.sleep(0.1)
    summary_line, _ = lg.communicate(timeout=total + 60)
    recs = read_records(out)
    os.unlink(out)
    # Steady state: after a 1 s warm-up, before the first release.
    a = analyse_load(recs, windows, t_start + 1.0, windows[0][0] if windows else t_start + total)
    a["releases"] = len(windows)
    a["window_s"] = med([t1 - t0 for t0, t1 in windows])
    a["window_max"] = max([t1 - t0 for t0, t1 in windows], default=float("nan"))
    return a


def bench_releases(ctx):
    systems = {
        "bgd": (BgdSystem.name, lambda: BgdSystem(ctx)),
        "bgd-shared": (BgdSystem.shared_name, lambda: BgdSystem(ctx, mode="shared")),
        "nginx": (NginxSystem.name, lambda: NginxSystem(ctx)),
        "naive": (NaiveSystem.name, lambda: NaiveSystem(ctx)),
        "bgd-gthread": (BgdSystem.gthread_name, lambda: BgdSystem(ctx, "gthread")),
    }
    chosen = ctx.systems.split(",") + (["bgd-gthread"] if ctx.gthread else [])
    if not ctx.has_traffic and "bgd-shared" in chosen:
        log("2. this bgd knows no traffic.mode (it predates the gate): bgd-shared left out")
        chosen.remove("bgd-shared")
    for c in chosen:
        if c not in systems:
            sys.exit(f"bench: --systems: unknown {c!r}; choose from {', '.join(systems)}")
    names = [systems[c][0] for c in chosen]
    makers = [systems[c][1] for c in chosen]
    runs = {n: [] for n in names}
    log(f"2. releases under load: {ctx.steady_seconds}s steady + {ctx.release_seconds}s of back-to-back releases, "
        f"c=64 (32 keep-alive + 32 new-connection clients), {ctx.reps2} repetitions")
    for rep in range(ctx.reps2):
        idx = list(range(len(makers)))
        idx = idx[rep % len(idx):] + idx[:rep % len(idx)]
        for i in idx:
            wait_for_quiet(ctx, f"rep {rep + 1} {names[i]}")
            system = makers[i]()
            try:
                a = one_load_run(ctx, system)
            finally:
                system.stop()
            runs[names[i]].append(a)
            log(f"  rep {rep + 1} {names[i]}: {a['releases']} releases, {a['failed']} failed of {a['requests']} "
                f"({a['failed_in_windows']} in windows) {a['fail_kinds']}, p99 window {a['p99_window']:.1f} ms "
                f"vs steady {a['p99_steady']:.1f} ms, window {a['window_s']:.2f}s (longest {a['window_max']:.2f}s)")
    rows = []
    for n in names:
        rs = runs[n]
        rows.append({
            "setup": n,
            "releases": [r["releases"] for r in rs],
            "failed": [r["failed"] for r in rs],
            "requests": [r["requests"] for r in rs],
            "fail_kinds": [r["fail_kinds"] for r in rs],
            "p99_steady": [r["p99_steady"] for r in rs],
            "p99_window": [r["p99_window"] for r in rs],
            "p99_ratio": [r["p99_window"] / r["p99_steady"] for r in rs],
            "window_s": [r["window_s"] for r in rs],
            "window_max": [r["window_max"] for r in rs],
        })
    return rows


# ---------------------------------------------------------------- 3. release latency


def spawn_with_socket(listen_fd, cmd, cwd, env, logfile):
    """Starts cmd as bgd would, but without bgd: posix_spawn (vfork) of a shell that
    changes to cwd, sets LISTEN_PID to its own pid and execs cmd, with listen_fd as fd 3.
    Only fds 0-3 reach it (ours are close-on-exec). Returns the pid (a session leader)."""
    extra = None
    if listen_fd == 3:  # dup2(3, 3) would leave it close-on-exec
        extra = listen_fd = os.dup(listen_fd)
    try:
        return os.posix_spawn("/bin/sh", ["/bin/sh", "-c", 'cd "$1" && shift && LISTEN_PID=$$ && export LISTEN_PID '
                                          '&& exec "$@"', "sh", cwd] + cmd, env, setsid=True, file_actions=[
            (os.POSIX_SPAWN_OPEN, 0, "/dev/null", os.O_RDONLY, 0),
            (os.POSIX_SPAWN_OPEN, 1, logfile, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644),
            (os.POSIX_SPAWN_DUP2, 1, 2),
            (os.POSIX_SPAWN_DUP2, listen_fd, 3),
        ])
    finally:
        if extra is not None:
            os.close(extra)


def app_start_to_ready(ctx, build, cmd, health, n):
    """The app's own start-to-ready time, with no bgd: spawn it on a pre-bound socket
    (and our own NOTIFY_SOCKET), time until READY=1 or the first 2xx answer."""
    times = []
    for i in range(n):
        ls = socket.socket()
        ls.bind(("127.0.0.1", 0))
        ls.listen(128)
        port = ls.getsockname()[1]
        env = dict(os.environ, LISTEN_FDS="1", LISTEN_FDNAMES="http")
        env.pop("NOTIFY_SOCKET", None)
        ns = None
        if health == "notify":
            path = os.path.join(ctx.tmp, f"notify-{i}.sock")
            ns = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            ns.bind(path)
            ns.settimeout(30)
            env["NOTIFY_SOCKET"] = path
        t0 = time.monotonic()
        pid = spawn_with_socket(ls.fileno(), cmd, build, env, os.path.join(ctx.tmp, "baseline-app.log"))
        try:
            if ns:
                while b"READY=1" not in ns.recv(4096):
                    pass
            else:
                # Like bgd's probe: the first GET waits in the queue until the app accepts.
                backoff = 0.01
                for _ in range(200):
                    code = http_status(port, timeout=30)
                    if code and 200 <= code < 300:
                        break
                    time.sleep(backoff)
                    backoff = min(backoff * 2, 0.5)
            times.append((time.monotonic() - t0) * 1000)
        finally:
            try:
                os.killpg(pid, signal.SIGKILL)  # not timed: no need for a graceful stop
            except ProcessLookupError:
                pass
            os.waitpid(pid, 0)
            ls.close()
            if ns:
                ns.close()
                os.unlink(path)
    return times


def cp_a(src, tmp, n, sync=True):
    """`cp -a` of src, n times: (cp ms list, sync-after ms list, rm ms list).
    With sync, the disk is flushed before each copy (not timed) and after it (timed apart)."""
    cps, syncs, rms = [], [], []
    for i in range(n):
        dst = os.path.join(tmp, f"cp-{i}")
        if sync:
            subprocess.run(["sync"], check=True)
        t0 = time.monotonic()
        subprocess.run(["cp", "-a", src, dst], check=True)
        t1 = time.monotonic()
        if sync:
            subprocess.run(["sync"], check=True)
        t2 = time.monotonic()
        shutil.rmtree(dst)
        t3 = time.monotonic()
        cps.append((t1 - t0) * 1000)
        syncs.append((t2 - t1) * 1000)
        rms.append((t3 - t2) * 1000)
    return cps, syncs, rms


def bench_release_latency(ctx):
    log(f"3. release latency: {ctx.reps3} repetitions of {ctx.releases3} releases per app, no load")
    apps = [
        ("fastapp, notify", ctx.build_fast, [PY, "-S", "fastapp.py"], "notify"),
        ("fastapp, HTTP probe", ctx.build_fast, [PY, "-S", "fastapp.py"], "http"),
        ("gunicorn, HTTP probe", ctx.build_gunicorn[0], gunicorn_cmd(), "http"),
    ]
    rows = []
    for name, build, cmd, health in apps:
        bgd = Bgd(ctx, f"m3-{free_port()}", cmd, health)
        bgd.release(build)
        bgd.release(build)  # both colors hold a build: every timed release replaces one
        per_rep = {k: [] for k in ("live", "total", "stage", "start", "ready", "swap", "drain", "app", "cp", "overhead",
                                   "wall", "cpu")}
        for rep in range(ctx.reps3):
            wait_for_quiet(ctx, f"rep {rep + 1} {name}")
            ms, app, cps, cpu = [], [], [], []
            # Interleaved: a release, the same app started alone, a cp -a of the build; so a
            # change in the machine's load hits the three alike.
            for _ in range(ctx.releases3):
                c0 = task_counters([bgd.pid])[0]
                t0, t1, res = bgd.release(build)
                cpu.append((task_counters([bgd.pid])[0] - c0) / 1e6)
                m = res["ms"]
                m["wall"] = (t1 - t0) * 1000
                ms.append(m)
                app += app_start_to_ready(ctx, build, cmd, health, 1)
                cps += cp_a(build, ctx.tmp, 1, sync=False)[0]
            live = [m["total"] - m["drain"] for m in ms]
            r = {
                "live": med(live), "total": med([m["total"] for m in ms]), "stage": med([m["stage"] for m in ms]),
                "start": med([m["start"] for m in ms]), "ready": med([m["ready"] for m in ms]),
                "swap": med([m["total"] - m["drain"] - m["stage"] - m["start"] - m["ready"] for m in ms]),
                "drain": med([m["drain"] for m in ms]), "wall": med([m["wall"] for m in ms]),
                "app": med(app), "cp": med(cps),
                "overhead": med([lv - a - c for lv, a, c in zip(live, app, cps)]), "cpu": med(cpu),
            }
            for k, v in r.items():
                per_rep[k].append(v)
            log(f"  rep {rep + 1} {name}: live {r['live']:.0f} ms (stage {r['stage']:.0f}, start {r['start']:.0f}, "
                f"ready {r['ready']:.0f}, swap {r['swap']:.0f}), drain {r['drain']:.0f}; app alone {r['app']:.1f}, "
                f"cp -a {r['cp']:.1f} -> bgd overhead {r['overhead']:.1f} ms; bgd CPU {r['cpu']:.2f} ms/release")
        bgd.stop()
        rows.append(dict(setup=name, **per_rep))
    return rows


def tcp_time_wait():
    """The machine's TCP sockets in TIME_WAIT (/proc/net/sockstat, this network namespace)."""
    try:
        with open("/proc/net/sockstat") as f:
            for line in f:
                if line.startswith("TCP:"):
                    v = line.split()
                    return int(v[v.index("tw") + 1])
    except (OSError, ValueError):
        pass
    return -1


def wait_time_wait(ctx, what, limit=1000, timeout=65.0):
    """Waits (bounded) until fewer than `limit` TCP sockets are in TIME_WAIT: bgd's quiesce
    reads the kernel's whole TCP table, TIME_WAIT included, so the sockets that an earlier
    measurement's short connections left (they last 60 s) would slow its drain."""
    deadline = time.monotonic() + timeout
    n = tcp_time_wait()
    if n >= limit:
        log(f"  {what}: {n} TCP sockets in TIME_WAIT; waiting up to {timeout:.0f}s for them to expire")
    while n >= limit and time.monotonic() < deadline:
        time.sleep(1)
        n = tcp_time_wait()
    return n


def make_time_wait(n, listeners=8):
    """Leaves about n more TCP sockets in TIME_WAIT for 60 s, as a busy server's short
    connections do: n connections to our own listeners, each closed by the server first.
    (Several listeners: a client port whose pair is in TIME_WAIT is reused, and that
    TIME_WAIT socket replaced, once the client's ephemeral ports wrap.)"""
    ls = [socket.create_server(("127.0.0.1", 0), backlog=128) for _ in range(listeners)]
    try:
        addrs = [x.getsockname() for x in ls]
        for i in range(n):
            c = socket.create_connection(addrs[i % listeners])
            s, _ = ls[i % listeners].accept()
            s.close()  # the server's side closes first and keeps the TIME_WAIT
            c.close()
    finally:
        for x in ls:
            x.close()


def bench_quiesce_table(ctx):
    """bgd's drain and CPU per release with few TIME_WAIT sockets on the machine, then with many;
    gate mode (which quiesces the old color) and shared mode (which does not)."""
    modes = ["gate"] + (["shared"] if ctx.has_traffic else [])
    log(f"3c. the quiesce and the TCP table: {ctx.reps3} x {ctx.releases3} releases of fastapp (health.http) per "
        f"traffic mode, with few TIME_WAIT sockets, then with about {ctx.tw_target} more")
    rows = []
    wait_time_wait(ctx, "3c")  # before bgd starts: its peak RSS is part of the figures
    bgds = {m: Bgd(ctx, f"m3c-{m}-{free_port()}", [PY, "-S", "fastapp.py"], "http",
                   mode="shared" if m == "shared" else None) for m in modes}
    try:
        for b in bgds.values():
            b.release(ctx.build_fast)
            b.release(ctx.build_fast)
        for phase in ("few", "many"):
            if phase == "many":
                make_time_wait(ctx.tw_target)
            for mode in modes:
                bgd = bgds[mode]
                r = {"mode": mode, "phase": phase, "tw": [], "drain": [], "cpu": [], "total": [], "hwm": []}
                for rep in range(ctx.reps3):
                    wait_for_quiet(ctx, f"rep {rep + 1} 3c, {mode} mode, {phase} TIME_WAIT")
                    tw = tcp_time_wait()
                    ms, cpu = [], []
                    for _ in range(ctx.releases3):
                        c0 = task_counters([bgd.pid])[0]
                        _, _, res = bgd.release(ctx.build_fast)
                        cpu.append((task_counters([bgd.pid])[0] - c0) / 1e6)
                        ms.append(res["ms"])
                    r["tw"].append((tw + tcp_time_wait()) / 2)
                    r["drain"].append(med([m["drain"] for m in ms]))
                    r["total"].append(med([m["total"] for m in ms]))
                    r["cpu"].append(med(cpu))
                    r["hwm"].append(kb(proc_status(bgd.pid), "VmHWM") / 1024)
                    log(f"  rep {rep + 1} {mode}, {phase}: {r['tw'][-1]:.0f} TIME_WAIT sockets; drain "
                        f"{r['drain'][-1]:.0f} ms, release {r['total'][-1]:.0f} ms, bgd CPU {r['cpu'][-1]:.1f} ms "
                        f"per release, VmHWM {r['hwm'][-1]:.1f} MB")
                rows.append(r)
    finally:
        for b in bgds.values():
            b.stop()
    return rows


def trash_gone(root, since, timeout=300.0):
    """Waits until bgd's root holds no `.trash-*` (a color's previous tree that bgd removes
    after the release); returns when that was, in ms after `since` (monotonic), 0 if none."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if not any(n.startswith(".trash-") for n in os.listdir(root)):
                return max(0.0, (time.monotonic() - since) * 1000)
        except OSError:
            return 0.0
        time.sleep(0.01)
    log(f"  {root}: .trash-* still there after {timeout:.0f}s")
    return float("nan")


def bench_staging(ctx, base, where, method="copy"):
    """Staging the big build vs cp -a, with bgd's root, the build and the copies all under base."""
    big = make_big_build(ctx, base, ctx.big_files, ctx.big_bytes)
    files, size = tree_size(big)
    log(f"3b. staging a {size / 1e6:.0f} MB, {files}-file build vs cp -a, on {where}, stage = {method}, "
        f"{ctx.reps3b} repetitions")
    bgd = Bgd(ctx, f"m3-big-{free_port()}", [PY, "-S", "fastapp.py"], "notify", base=base,
              top=f"stage = {json.dumps(method)}" if method != "copy" else "")
    for _ in range(2):  # both colors full: every timed release also removes an old tree, as in real use
        _, t1, _ = bgd.release(big)
        trash_gone(bgd.root, t1)
    rows = {k: [] for k in ("stage", "cp", "cp_sync", "rm", "ratio", "ratio_sync", "live", "cpu_ms", "bg_rm")}
    for rep in range(ctx.reps3b):
        wait_for_quiet(ctx, f"rep {rep + 1} staging on {where}")

        def release():
            # A bgd that removes the color's previous tree after the release (off its path)
            # is waited for before cp -a runs, so the removal does not slow the baseline; its
            # CPU counts (from /proc/PID/stat, since its thread has exited by then).
            subprocess.run(["sync"], check=True)
            c0 = proc_cpu_ms(bgd.pid)
            _, t1, res = bgd.release(big)
            bg = trash_gone(bgd.root, t1)
            return res, proc_cpu_ms(bgd.pid) - c0, bg

        if rep % 2 == 0:  # alternate which goes first
            res, cpu, bg = release()
            cps, syncs, rms = cp_a(big, base, 1)
        else:
            cps, syncs, rms = cp_a(big, base, 1)
            res, cpu, bg = release()
        stage = res["ms"]["stage"]
        rows["stage"].append(stage)
        rows["cp"].append(cps[0])
        rows["cp_sync"].append(cps[0] + syncs[0])
        rows["rm"].append(rms[0])
        rows["ratio"].append(stage / cps[0])
        rows["ratio_sync"].append(stage / (cps[0] + syncs[0]))
        rows["live"].append(res["ms"]["total"] - res["ms"]["drain"])
        rows["cpu_ms"].append(cpu)
        rows["bg_rm"].append(bg)
        log(f"  rep {rep + 1}: bgd stage {stage} ms (bgd CPU {cpu:.0f} ms; old tree gone {bg:.0f} ms after the "
            f"reply); cp -a {cps[0]:.0f} ms, then sync "
            f"{syncs[0]:.0f} ms, rm -rf {rms[0]:.0f} ms -> {stage / cps[0]:.2f}x cp -a, "
            f"{stage / (cps[0] + syncs[0]):.2f}x cp -a + sync")
    rows["hwm_kb"] = [kb(proc_status(bgd.pid), "VmHWM")]
    bgd.stop()
    rows["files"], rows["bytes"], rows["where"] = files, size, f"{where}, stage = {method}"
    shutil.rmtree(os.path.dirname(big), ignore_errors=True)
    return rows


# ---------------------------------------------------------------- 4. footprint


def bench_footprint(ctx):
    log(f"4. footprint: RSS idle and during releases; CPU and wake-ups over {ctx.reps4} x {ctx.idle_seconds}s idle, "
        "next to nginx and gunicorn's arbiter")
    rows = {k: [] for k in ("rss_idle", "anon_idle", "rss_release", "hwm", "cpu_ms", "wakeups", "threads",
                            "nginx_rss", "nginx_cpu_ms", "nginx_wakeups", "gunicorn_cpu_ms", "gunicorn_wakeups")}
    bgd = Bgd(ctx, f"m4-{free_port()}", [PY, "-S", "fastapp.py"], "notify")
    bgd.release(ctx.build_fast)
    up = free_port()
    g = start_gunicorn(ctx, up, ctx.build_gunicorn[0], "m4-gunicorn")
    nginx = Nginx(ctx, up)
    # Let tokio's idle blocking-pool thread (kept 10 s after the staging copy) go first.
    time.sleep(ctx.settle_seconds)
    ngx = [nginx.proc.pid] + nginx.workers()
    for rep in range(ctx.reps4):
        wait_for_quiet(ctx, f"idle {rep + 1}")
        st = proc_status(bgd.pid)
        rows["rss_idle"].append(kb(st, "VmRSS"))
        rows["anon_idle"].append(kb(st, "RssAnon"))
        rows["threads"].append(int(st.get("Threads", 0)))
        rows["nginx_rss"].append(sum(kb(proc_status(p), "VmRSS") for p in ngx))
        c0 = task_counters([bgd.pid]), task_counters(ngx), task_counters([g.pid])
        time.sleep(ctx.idle_seconds)
        c1 = task_counters([bgd.pid]), task_counters(ngx), task_counters([g.pid])
        per_min = 60.0 / ctx.idle_seconds
        rows["cpu_ms"].append((c1[0][0] - c0[0][0]) / 1e6 * per_min)
        rows["wakeups"].append((c1[0][1] - c0[0][1]) * per_min)
        rows["nginx_cpu_ms"].append((c1[1][0] - c0[1][0]) / 1e6 * per_min)
        rows["nginx_wakeups"].append((c1[1][1] - c0[1][1]) * per_min)
        rows["gunicorn_cpu_ms"].append((c1[2][0] - c0[2][0]) / 1e6 * per_min)
        rows["gunicorn_wakeups"].append((c1[2][1] - c0[2][1]) * per_min)
        log(f"  idle {rep + 1}: bgd RSS {rows['rss_idle'][-1] / 1024:.1f} MB ({rows['threads'][-1]} threads), "
            f"CPU {rows['cpu_ms'][-1]:.3f} ms/min, {rows['wakeups'][-1]:.0f} wake-ups/min (nginx "
            f"{rows['nginx_cpu_ms'][-1]:.2f} ms/min, {rows['nginx_wakeups'][-1]:.0f}/min; gunicorn arbiter "
            f"{rows['gunicorn_cpu_ms'][-1]:.1f} ms/min, {rows['gunicorn_wakeups'][-1]:.0f}/min)")
    for rep in range(ctx.reps4):
        # RSS during releases: sampled every millisecond, and the kernel's high-water mark.
        peak = [0]
        done = threading.Event()

        def sample():
            while not done.is_set():
                peak[0] = max(peak[0], kb(proc_status(bgd.pid), "VmRSS"))
                time.sleep(0.001)

        t = threading.Thread(target=sample)
        t.start()
        try:
            for _ in range(ctx.releases3):
                bgd.release(ctx.build_fast)
        finally:
            done.set()
            t.join()
        rows["rss_release"].append(peak[0])
        rows["hwm"].append(kb(proc_status(bgd.pid), "VmHWM"))
        log(f"  releases {rep + 1}: bgd peak RSS {peak[0] / 1024:.1f} MB, VmHWM {rows['hwm'][-1] / 1024:.1f} MB")
    nginx.stop()
    stop(g)
    bgd.stop()
    return rows


# ---------------------------------------------------------------- 5. auto-release latency

LOG_TIME = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(\.\d+)?Z\s")
# bgd's log lines, as a bgd from the traffic gate on writes them ("release 7: green is live",
# "auto-release of release 7 begins on green") and as an older one did ("green is live
# release=7", "release begins release=7").
LIVE_LINE = re.compile(r"\brelease (\d+): (?:blue|green) is live\s*$|\b(?:blue|green) is live release=(\d+)")
DONE_LINE = re.compile(r"\brelease (\d+) is live on ")
BEGIN_LINE = re.compile(r"\bof release (\d+) begins on |\brelease begins release=(\d+)")


def line_release(regex, line):
    """The release id a LIVE_LINE or BEGIN_LINE names, or None."""
    m = regex.search(line)
    return int(m.group(1) or m.group(2)) if m else None


def log_time(line):
    """Epoch seconds of a bgd log line: tracing's timestamp, RFC 3339 in UTC with microseconds."""
    m = LOG_TIME.match(line)
    if not m:
        return None
    return calendar.timegm(time.strptime(m.group(1), "%Y-%m-%dT%H:%M:%S")) + float("0" + (m.group(2) or ".0"))


def auto_release_events(path, offset, timeout=60.0):
    """Reads bgd's log from offset until one auto-release has ended (its "release N is live
    on" line); returns the epoch times of its "auto-release of" line, its swap ("COLOR is
    live release=N") and its end (after the drain)."""
    deadline = time.monotonic() + timeout
    ev = {}
    buf = b""
    with open(path, "rb") as f:
        f.seek(offset)
        while time.monotonic() < deadline:
            buf += f.read()
            lines = buf.split(b"\n")
            buf = lines.pop()  # a line bgd is still writing
            for line in lines:
                line = line.decode(errors="replace")
                t = log_time(line)
                if t is None:
                    continue
                if "auto" not in ev and "auto-release of " in line:
                    ev["auto"] = t
                elif "auto" in ev and "release" not in ev and BEGIN_LINE.search(line):
                    ev["release"] = line_release(BEGIN_LINE, line)
                elif "release" in ev and line_release(LIVE_LINE, line) == ev["release"]:
                    ev["live"] = t
                elif "release" in ev and DONE_LINE.search(line) and int(DONE_LINE.search(line).group(1)) == ev["release"]:
                    ev["done"] = t
                    return ev
                elif "auto" in ev and " ERROR " in line[:40]:
                    raise RuntimeError(f"auto-release failed: {line.strip()} (see {path})")
            time.sleep(0.005)
    raise RuntimeError(f"no auto-release ended within {timeout:.0f}s (seen: {sorted(ev)}; see {path})")


def wait_watch_idle(bgd, timeout=60.0):
    """Polls status until no release runs and the watcher is idle; returns the watcher's mode."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        st = bgd.request({"v": 1, "cmd": "status"})
        w = st.get("watch") or {}
        if st.get("release_in_progress") is None and w.get("state") == "idle":
            return w.get("mode", "?")
        time.sleep(0.01)
    raise RuntimeError(f"bgd not idle within {timeout:.0f}s: {st.get('release_in_progress')}, watch {w}")


def write_build(build, i):
    """A new build written in place, as a build tool does: fastapp.py rewritten, then a
    changed VERSION file. Returns the wall-clock time right after the last write's close."""
    shutil.copyfile(os.path.join(HERE, "fastapp.py"), os.path.join(build, "fastapp.py"))
    with open(os.path.join(build, "VERSION"), "w") as f:
        f.write(f"build {i}\n")
    return time.time()


def bench_auto_release(ctx):
    settle = ctx.settle5
    log(f"5. auto-release latency: [watch] settle = {settle * 1000:.0f}ms; {ctx.reps5} runs of {ctx.releases5} "
        f"builds per setup ({ctx.reps5} x {ctx.releases5_many} with {ctx.many_files} more files)")
    setups = [
        ("fastapp, notify", "notify", 0, ctx.releases5),
        ("fastapp, HTTP probe", "http", 0, ctx.releases5),
        (f"fastapp + {ctx.many_files} files of 1 KiB, notify", "notify", ctx.many_files, ctx.releases5_many),
    ]
    env = dict(os.environ, BGD_LOG="info")
    env.pop("JOURNAL_STREAM", None)  # log lines with timestamps, to the log file
    rows = []
    n = 0
    for name, health, files, releases in setups:
        base = os.path.join(ctx.tmp, f"m5-{free_port()}")
        build = os.path.join(base, "build")  # the watched directory; bgd also watches base
        os.makedirs(build)
        shutil.copy(os.path.join(HERE, "fastapp.py"), build)
        for i in range(files):
            sub = os.path.join(build, "data", f"d{i // 100:03d}")
            if i % 100 == 0:
                os.makedirs(sub)
            with open(os.path.join(sub, f"f{i % 100:03d}.txt"), "wb") as f:
                f.write(os.urandom(1024))
        top = f"[watch]\npath = {json.dumps(build)}\nsettle = \"{settle * 1000:.0f}ms\""
        bgd = Bgd(ctx, "bgd", [PY, "-S", "fastapp.py"], health, base=base, top=top, env=env)
        # At start bgd releases the tree (nothing is live); one more build fills the other color.
        auto_release_events(bgd.log, 0)
        wait_watch_idle(bgd)
        n += 1
        off = os.path.getsize(bgd.log)
        write_build(build, n)
        auto_release_events(bgd.log, off)
        per_rep = {k: [] for k in ("over", "auto", "live", "done", "release", "mode")}
        singles = []
        for rep in range(ctx.reps5):
            wait_for_quiet(ctx, f"rep {rep + 1} auto-release {name}")
            got = {k: [] for k in ("over", "auto", "live", "done", "release")}
            modes = set()
            for _ in range(releases):
                modes.add(wait_watch_idle(bgd))
                n += 1
                off = os.path.getsize(bgd.log)
                t_write = write_build(build, n)
                ev = auto_release_events(bgd.log, off)
                got["auto"].append((ev["auto"] - t_write) * 1000)
                got["over"].append((ev["auto"] - t_write - settle) * 1000)
                got["live"].append((ev["live"] - t_write) * 1000)
                got["done"].append((ev["done"] - t_write) * 1000)
                got["release"].append((ev["live"] - ev["auto"]) * 1000)
            modes.add(wait_watch_idle(bgd))
            singles += got["over"]
            for k, v in got.items():
                per_rep[k].append(med(v))
            per_rep["mode"].append("/".join(sorted(modes)))
            log(f"  rep {rep + 1} {name} ({per_rep['mode'][-1]}): auto-release starts {per_rep['over'][-1]:.1f} ms "
                f"after settle [{min(got['over']):.1f}-{max(got['over']):.1f}]; live {per_rep['live'][-1]:.0f} ms, "
                f"done {per_rep['done'][-1]:.0f} ms after the last write")
        bgd.stop()
        if files:
            shutil.rmtree(base, ignore_errors=True)
        rows.append(dict(setup=name, settle=settle * 1000, singles=singles, releases=releases, **per_rep))
    return rows


# ---------------------------------------------------------------- 6. flip latency

HEALTHZ_LINE = re.compile(r"bench-healthz release=(\d+) t=(\d+)")
FLIP_PACE_US = 100


def log_time_ns(line):
    """A bgd log line's timestamp in ns since the epoch (tracing writes microseconds)."""
    m = LOG_TIME.match(line)
    if not m:
        return None
    frac = (m.group(2) or ".")[1:]
    return calendar.timegm(time.strptime(m.group(1), "%Y-%m-%dT%H:%M:%S")) * 10**9 + int((frac + "0" * 9)[:9])


def read_flip(path):
    """The flip client's records: (connect start, connect end, answer, code, release or None), ns."""
    recs = []
    with open(path) as f:
        for line in f:
            cs, ce, ans, code, rel = line.split()
            recs.append((int(cs), int(ce), int(ans), int(code), int(rel) if rel.isdigit() else None))
    recs.sort()
    return recs


def analyse_flip(recs, log_path):
    """Per release the client saw whole: when its first connection landed on the new
    release, against bgd's 'is live' line and the new color's last health answer."""
    live, begin, healthz = {}, {}, {}
    with open(log_path, errors="replace") as f:
        for line in f:
            line = line.rstrip("\n")
            t = log_time_ns(line)
            if t is None:
                continue
            m = HEALTHZ_LINE.search(line)
            if m:  # the app's own line (its own clock), as bgd logged it
                healthz.setdefault(int(m.group(1)), []).append(int(m.group(2)))
                continue
            k = line_release(LIVE_LINE, line)
            if k is not None:
                live[k] = t
                continue
            k = line_release(BEGIN_LINE, line)
            if k is not None:
                begin[k] = t
    if not recs:
        raise RuntimeError("the flip client recorded no connection")
    t_first, t_last = recs[0][0], recs[-1][0]
    ok = [r for r in recs if 200 <= r[3] < 300 and r[4] is not None]
    out = []
    for k in sorted(live):
        if k not in begin or begin[k] < t_first or live[k] > t_last - 50_000_000:
            continue  # the client did not run through the whole of this release
        first = next((r for r in ok if r[4] == k), None)
        if first is None:
            raise RuntimeError(f"no connection of the flip client was answered by release {k}")
        old = [r for r in ok if r[4] == k - 1]
        last_old = max((r for r in old if r[0] < first[0]), default=None)
        ready = max((t for t in healthz.get(k, []) if t <= live[k]), default=None)
        out.append({
            "release": k,
            "from_live": (first[1] - live[k]) / 1000,
            "from_ready": (first[1] - ready) / 1000 if ready else float("nan"),
            "answer": (first[2] - live[k]) / 1000,
            "gap": (first[0] - last_old[0]) / 1000 if last_old else float("nan"),
            "overlap": sum(1 for r in old if r[0] > first[0]),
        })
    return out


def bench_flip(ctx):
    modes = ["gate"] + (["shared"] if ctx.has_traffic else [])
    if not ctx.has_traffic:
        log("6. this bgd knows no traffic.mode (it predates the gate): measuring its only mode, as 'gate'")
    log(f"6. flip latency: {ctx.reps6} x {ctx.releases6} releases of fastapp per traffic mode, a new connection "
        f"every {FLIP_PACE_US} us")
    env = dict(os.environ, BGD_LOG="info")
    env.pop("JOURNAL_STREAM", None)  # log lines with timestamps, to the log file
    app = ['env = { BENCH_HEALTHZ_LOG = "1" }'] + (['drain_delay = "1s"'] if ctx.has_traffic else [])
    rows = {m: {"flips": [], "interval": [], "interval_p99": [], "connect": [], "failed": [], "conns": [],
                "kinds": {}, "window": []} for m in modes}
    for rep in range(ctx.reps6):
        for mode in (modes if rep % 2 == 0 else modes[::-1]):
            wait_for_quiet(ctx, f"rep {rep + 1} flip, {mode} mode")
            bgd = Bgd(ctx, f"m6-{mode}-{free_port()}", [PY, "-S", "fastapp.py"], "http", env=env, app=app,
                      mode="shared" if mode == "shared" else None)
            out = os.path.join(ctx.tmp, f"flip-{free_port()}.txt")
            try:
                bgd.release(ctx.build_fast)
                bgd.release(ctx.build_fast)  # both colors have run: no first-release exception
                client = subprocess.Popen([ctx.flipclient, "--addr", f"127.0.0.1:{bgd.port}", "--pace-us",
                                           str(FLIP_PACE_US), "--duration", "300", "--out", out],
                                          stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                          start_new_session=True)
                STARTED.append(client)
                time.sleep(0.3)
                for _ in range(ctx.releases6):
                    t0, t1, _ = bgd.release(ctx.build_fast)
                    rows[mode]["window"].append((t1 - t0) * 1000)
                    time.sleep(0.2)
                client.communicate(timeout=60)  # closes its stdin: the client stops and writes its records
            finally:
                bgd.stop()
            recs = read_flip(out)
            os.unlink(out)
            flips = analyse_flip(recs, bgd.log)
            gaps = sorted((b[0] - a[0]) / 1000 for a, b in zip(recs, recs[1:]))
            r = rows[mode]
            r["flips"] += flips
            r["interval"].append(med(gaps))
            r["interval_p99"].append(pct(gaps, 99))
            r["connect"].append(med([(x[1] - x[0]) / 1000 for x in recs if x[3] != -1]))
            r["failed"].append(sum(1 for x in recs if not 200 <= x[3] < 300))
            for x in recs:
                if not 200 <= x[3] < 300:
                    r["kinds"][x[3]] = r["kinds"].get(x[3], 0) + 1
            r["conns"].append(len(recs))
            log(f"  rep {rep + 1} {mode}: {len(flips)} releases; 'is live' to the first new connection "
                + ", ".join(f"{f['from_live']:.0f}" for f in flips) + " us; old answers after it "
                + ", ".join(str(f["overlap"]) for f in flips) + f"; client interval median {r['interval'][-1]:.0f} "
                f"us (p99 {r['interval_p99'][-1]:.0f}), {r['failed'][-1]} failed of {len(recs)}")
    return [dict(mode=m, **rows[m]) for m in modes]


# ---------------------------------------------------------------- report


def machine():
    model = "?"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    with open("/proc/meminfo") as f:
        mem = int(f.readline().split()[1]) / 1024 / 1024

    def ver(cmd):
        try:
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=20)
            return (r.stdout + r.stderr).strip().splitlines()[0]
        except (OSError, IndexError, subprocess.SubprocessError):
            return "?"

    fs = "?"
    try:
        r = subprocess.run(["findmnt", "-n", "-o", "FSTYPE,SOURCE", "--target", tempfile.gettempdir()],
                           capture_output=True, text=True)
        fs = r.stdout.strip()
    except OSError:
        pass
    return [
        f"cores (nproc): {os.cpu_count()}, model: {model}",
        f"memory: {mem:.1f} GiB; kernel: {platform.release()}; temp dir filesystem: {fs}",
        f"os: {ver(['sh', '-c', '. /etc/os-release; echo $PRETTY_NAME'])}",
        f"bgd: {ver([BGD_PATH[0], '--version'])}, "
        f"{os.environ.get('BGD_SOURCE') or 'source ' + ver(['git', '-C', os.path.dirname(HERE), 'describe', '--always', '--dirty'])}"
        " (release build)",
        f"gunicorn: {ver([PY, '-m', 'gunicorn', '--version'])} (sync workers x{GUNICORN_WORKERS}); "
        f"{ver([PY, '--version'])}; {ver(['nginx', '-v'])}; {ver(['wrk', '--version'])[:24]}",
    ]


def knows(ctx, top):
    """Whether this bgd's `--check` accepts a config with `top` (keys a newer bgd added)."""
    probe = os.path.join(ctx.tmp, f"probe-{free_port()}.toml")
    try:
        for allow_root in ("allow_root = true\n", ""):  # an older bgd knows no app.allow_root
            with open(probe, "w") as f:
                f.write('name = "p"\nroot = "/nonexistent"\n' + top + '[[listen]]\nname = "http"\n'
                        # A program that exists: `--check` looks it up (issue 26).
                        'address = "127.0.0.1:1"\n[app]\ncommand = ["/bin/true"]\n' + allow_root + '[health]\nnotify = true\n')
            if subprocess.run([ctx.bgd, "--check", "--config", probe], capture_output=True).returncode == 0:
                return True
        return False
    finally:
        os.unlink(probe)


def table(header, rows):
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(out)


def verdict(ok):
    return "met" if ok else "**missed**"


def report(ctx, r1, r2, r3, r3b, r4, r5=None, r6=None, r3c=None):
    md = [f"# bgd benchmark ({'quick' if ctx.quick else 'full'} run, {time.strftime('%Y-%m-%d %H:%M %Z')})", ""]
    md += ["Machine:", ""] + [f"- {m}" for m in machine()] + [""]
    md += [f"Other work on the machine: before each run the benchmark waits up to {ctx.quiet_wait:.0f} s for the "
           f"machine to be less than {ctx.quiet_busy:.0%} busy; {ctx.disturbed} of {ctx.runs} runs started busier "
           f"(busy fraction before a run: median {med(ctx.busy):.0%}, max {max(ctx.busy, default=0):.0%}).", ""]
    md += ["Every cell is the median over the repetitions, with [min-max] after it; ratios are computed per "
           "repetition against the baseline measured next to it.", ""]
    if getattr(ctx, "tw_at", None):
        md += ["TCP sockets in TIME_WAIT on the machine when each measurement began (bgd's quiesce reads the "
               "whole TCP table; measurements 3, 4 and 5 run first and wait up to 65 s for fewer than 1,000): "
               + ", ".join(f"{k}: {v}" for k, v in ctx.tw_at.items()) + ".", ""]
    if r1:
        md += [f"## 1. Request-path overhead (wrk -t2 -c64, {ctx.wrk_seconds}s x {ctx.reps1})", ""]
        def g(r, k, *a):
            return summary(r[k], *a) if k in r else ""
        md += [table(["setup", "req/s", "ratio to (a)", "side-by-side req/s ratio to (a)", "p50 ms", "p50 ratio",
                      "p99 ms", "p99 ratio", "server CPU us/request", "CPU ratio", "errors"], [
            [r["setup"], g(r, "rps", 0), g(r, "rps_ratio", 3), g(r, "side", 3), g(r, "p50"), g(r, "p50_ratio"),
             g(r, "p99"), g(r, "p99_ratio"), g(r, "cpu_us", 0), g(r, "cpu_ratio", 3), g(r, "errors", 0)]
            for r in r1])]
        by = {r["setup"].split(")")[0] + ")": r for r in r1}
        md += ["", "'ratio to (a)': runs one after the other (wrk -t2 -c64); 'side-by-side': the setup and (a) loaded "
               "at the same time (wrk -t1 -c32 each), so other work on the machine slows both alike; (a') is that "
               "method's own noise. Server CPU: all processes serving the requests, per request.", ""]
        for k, what, goal in (("(b)", "health.http, gate mode", 0.99), ("(b2)", "health.notify, gate mode", 0.98),
                              ("(b3)", "health.http, shared mode (no goal: the probe socket's cost)", None)):
            if k not in by:
                continue
            seq, sbs, cpu = med(by[k]["rps_ratio"]), med(by[k]["side"]), med(by[k]["cpu_ratio"])
            head = f"Goal {k}/(a) throughput >= {goal}" if goal else f"{k}/(a) throughput"
            ok = f" ({verdict(sbs >= goal)})" if goal else ""
            md += [f"- {head} with {what}: one after the other {fmt(seq, 3)}, side by side "
                   f"{fmt(sbs, 3)}{ok}; CPU per request {fmt(cpu, 3)}x."]
        md += [""]
    if r2:
        md += [f"## 2. Releases under load ({ctx.steady_seconds}s steady + {ctx.release_seconds}s of back-to-back "
               f"releases, c=64: 32 keep-alive + 32 new-connection clients, x {ctx.reps2}; bgd with "
               f"app.drain_delay = \"{DRAIN_DELAY_2}\")", ""]
        md += [table(["setup", "releases", "failed requests", "of requests", "p99 steady ms", "p99 in release windows ms",
                      "ratio", "window s", "longest window s"], [
            [r["setup"], summary(r["releases"], 0), summary(r["failed"], 0), summary(r["requests"], 0),
             summary(r["p99_steady"], 1), summary(r["p99_window"], 1), summary(r["p99_ratio"]),
             summary(r["window_s"]), summary(r["window_max"])] for r in r2])]
        def kinds(r):
            total = {}
            for d in r["fail_kinds"]:
                for k, v in d.items():
                    total[k] = total.get(k, 0) + v
            return ", ".join(f"{k} {v}" for k, v in sorted(total.items(), key=lambda kv: -kv[1])) or "none"
        md += ["", "Failed requests over all repetitions, by client (k keep-alive, c new connection) and code "
               "(-1 connection refused, -3 closed or reset before an answer on a new connection, -4 the same on a "
               "reused keep-alive connection, -5 timeout, -6 wrong answer, else the HTTP status):", ""]
        md += [f"- {r['setup']}: {kinds(r)}" for r in r2]
        md += [""]
        for r in r2:
            if r["setup"] in (BgdSystem.name, BgdSystem.shared_name):
                f = max(r["failed"])
                md += [f"- Goal bgd 0 failed requests, {r['setup']}: {f} in the worst repetition, {verdict(f == 0)}."]
        md += [""]
    if r3:
        md += [f"## 3. Release latency (no load; {ctx.releases3} releases x {ctx.reps3})", ""]
        md += [table(["app", "to live ms", "stage", "start", "ready", "swap", "drain", "app alone start-to-ready",
                      "cp -a of the build", "bgd overhead ms", "bgd CPU ms per release", "goal <= 20 ms"], [
            [r["setup"], summary(r["live"], 1), summary(r["stage"], 1), summary(r["start"], 1), summary(r["ready"], 1),
             summary(r["swap"], 1), summary(r["drain"], 1), summary(r["app"], 1), summary(r["cp"], 1),
             summary(r["overhead"], 1), summary(r["cpu"]), verdict(med(r["overhead"]) <= 20)] for r in r3])]
        md += ["", "bgd overhead = (release to live) - (the same app's start-to-ready without bgd) - (cp -a of the "
               "same build), per release (each followed by one start of the app alone and one cp -a), median. "
               "'to live' = bgd's total - drain; swap = to live - stage - start - ready.", ""]
    if r3b:
        r = r3b[0]
        md += [f"### Staging a {r['bytes'] / 1e6:.0f} MB, {r['files']}-file build ({ctx.reps3b} repetitions)", ""]
        md += [table(["filesystem", "bgd stage ms", "cp -a ms", "stage / cp -a", "cp -a + sync ms",
                      "stage / (cp -a + sync)", "rm -rf of the tree ms", "old tree gone ms after reply",
                      "bgd CPU ms per release", "bgd peak RSS MB"], [[
                          r["where"], summary(r["stage"], 0), summary(r["cp"], 0), summary(r["ratio"]),
                          summary(r["cp_sync"], 0), summary(r["ratio_sync"]), summary(r["rm"], 0),
                          summary(r.get("bg_rm", []), 0), summary(r["cpu_ms"], 0),
                          summary([v / 1024 for v in r["hwm_kb"]], 1)] for r in r3b])]
        md += ["", "bgd's stage step is the copy (or hardlinks; with kept releases also the kept copy) + the flush (syncfs, or per file) + the rename exchange; a bgd older than "
               "commit 6e3c7e8 also removes the color's previous tree in it, a newer one sets that tree aside and "
               "removes it on a thread of its own once staged ('old tree gone': when it was, in ms after bgd's "
               "reply; 0 if removed within the stage step; cp -a waits for it). cp -a is the copy alone. bgd CPU "
               "includes the removal. The goal is about the default, stage = copy.", ""]
        for r in r3b:
            ratio = med(r["ratio"])
            md += [f"- Goal staging <= 1.1x cp -a on {r['where']}: {fmt(ratio)}x, {verdict(ratio <= 1.1)}."]
        md += [""]
    if r3c:
        md += [f"### The quiesce and the TCP table (fastapp, health.http; {ctx.releases3} releases x {ctx.reps3})", ""]
        md += [table(["traffic mode", "TIME_WAIT sockets on the machine", "drain ms", "release ms (request to reply)",
                      "bgd CPU ms per release", "bgd peak RSS MB (VmHWM, so far)"], [
            [r["mode"], summary(r["tw"], 0), summary(r["drain"], 0), summary(r["total"], 0), summary(r["cpu"], 1),
             summary(r["hwm"], 1)] for r in r3c])]
        md += ["", "In gate mode bgd quiesces the old color before its stop signal: it reads the kernel's TCP table "
               "(/proc/net/tcp and tcp6, every socket, TIME_WAIT included) every 20 ms until two looks in a row find "
               "none of the color's connections. The last two rows are measured right after "
               f"{ctx.tw_target} local connections, each closed by its server first, left sockets in TIME_WAIT "
               "(for 60 s; their count is in the second column), as a server's short connections do. Shared mode "
               "does not quiesce. drain = bgd's drain step (quiesce, stop signal, the old app's exit). VmHWM is "
               "the kernel's high-water mark of bgd's RSS since it started, read after each repetition.", ""]
    if r4:
        md += [f"## 4. Footprint ({ctx.reps4} x {ctx.idle_seconds}s idle, rates per minute)", ""]
        md += [table(["", "bgd", "nginx (master + workers)", "gunicorn arbiter", "goal"], [
            ["RSS idle MB", summary([v / 1024 for v in r4["rss_idle"]]), summary([v / 1024 for v in r4["nginx_rss"]]),
             "", "<= 10 MB"],
            ["RSS during releases MB (1 ms samples / VmHWM)",
             summary([v / 1024 for v in r4["rss_release"]]) + " / " + summary([v / 1024 for v in r4["hwm"]]), "", "",
             "<= 10 MB"],
            ["CPU ms per minute idle", summary(r4["cpu_ms"], 3), summary(r4["nginx_cpu_ms"], 3),
             summary(r4["gunicorn_cpu_ms"], 1), "about 0"],
            ["wake-ups (context switches) per minute idle", summary(r4["wakeups"], 0), summary(r4["nginx_wakeups"], 0),
             summary(r4["gunicorn_wakeups"], 0), "0"],
        ])]
        rss = max(max(r4["rss_idle"]), max(r4["rss_release"]), max(r4["hwm"])) / 1024
        md += ["", f"Goal RSS <= 10 MB: peak {rss:.1f} MB, {verdict(rss <= 10)}. Goal idle CPU about 0 with no polling: "
               f"{fmt(med(r4['cpu_ms']), 3)} ms/min, {fmt(med(r4['wakeups']), 0)} wake-ups/min, "
               f"{verdict(med(r4['wakeups']) <= 1)}.", ""]
    if r5:
        st = r5[0]["settle"]
        md += [f"## 5. Auto-release latency ([watch] settle = {st:.0f}ms; {ctx.reps5} runs per setup)", ""]
        md += [table(["setup", "builds per run", "watch mode", "last write to auto-release start ms",
                      "over settle ms", "over settle, single builds min-max ms", "last write to live ms",
                      "last write to release done ms", "auto-release start to live ms", "goal over settle <= 50 ms"], [
            [r["setup"], r["releases"], ", ".join(sorted(set(r["mode"]))), summary(r["auto"], 1), summary(r["over"], 1),
             f"{fmt(min(r['singles']), 1)}-{fmt(max(r['singles']), 1)}" if r["singles"] else "n/a",
             summary(r["live"], 1), summary(r["done"], 1), summary(r["release"], 1), verdict(med(r["over"]) <= 50)]
            for r in r5])]
        md += ["", f"Each build is written in place into the watched directory (fastapp.py rewritten, then a changed "
               f"VERSION file); the last write's time is time.time() right after its close. bgd's times are the "
               f"timestamps of its log lines (tracing, microseconds, same clock): 'auto-release of' (the release "
               f"begins), 'COLOR is live' (the swap) and 'release N is live on' (after the drain). over settle = "
               f"auto-release start - last write - settle; the baseline is the configured settle itself ({st:.0f} "
               f"ms), so no ratio is given. 'auto-release start to live' is the release itself, as in measurement 3. "
               f"Watch mode is status.watch.mode: inotify, or poll (a scan every second) after the inotify watch "
               f"limit was hit.", ""]
        for r in r5:
            o = med(r["over"])
            md += [f"- Goal auto-release starts <= 50 ms after settle, {r['setup']}: {fmt(o, 1)} ms "
                   f"(single builds up to {fmt(max(r['singles'], default=float('nan')), 1)} ms), {verdict(o <= 50)}."]
        md += [""]
    if r6:
        n = ctx.reps6 * ctx.releases6
        md += [f"## 6. Flip latency (fastapp, health.http; {ctx.reps6} x {ctx.releases6} releases per mode; "
               f"a new connection every {FLIP_PACE_US} us)", ""]
        md += [table(["traffic mode", "releases", "'is live' to the first new connection us",
                      "the new color's last health answer to it us", "'is live' to its answer us",
                      "last old to first new connection us", "old answers after the first new one",
                      "client interval us (median / p99)", "connect() us", "failed connections",
                      "release ms (request to reply)"], [
            [r["mode"], len(r["flips"]), summary([f["from_live"] for f in r["flips"]], 0),
             summary([f["from_ready"] for f in r["flips"]], 0), summary([f["answer"] for f in r["flips"]], 0),
             summary([f["gap"] for f in r["flips"]], 0), summary([f["overlap"] for f in r["flips"]], 0),
             f"{summary(r['interval'], 0)} / {summary(r['interval_p99'], 0)}", summary(r["connect"], 0),
             f"{sum(r['failed'])} of {sum(r['conns'])}"
             + (" (" + ", ".join(f"{k}: {v}" for k, v in sorted(r["kinds"].items())) + ")" if r["kinds"] else ""),
             summary(r["window"], 0)] for r in r6])]
        md += ["", f"Per release (median [min-max] over the {n} releases of each mode). One client thread opens a "
               f"connection every {FLIP_PACE_US} us (CLOCK_REALTIME before and after connect(), which returns once "
               "the kernel has queued the connection on a color's socket) and records which release answers it. "
               "'is live' is the timestamp of bgd's log line `release N: COLOR is live`, written just after bgd "
               "steered new connections (same clock); the new color's last health answer is the app's own "
               "timestamp when it answered bgd's last GET /healthz (bgd then records state.json, with fsync, "
               "repoints `live` and steers). The first new connection is the first one the new release answered "
               "(the time connect() returned). 'old answers after the first new one': connections opened after it "
               "that the previous release answered. The client's interval between two connections is the "
               "resolution. Failed connections by code: -1 refused, -3 closed or reset before an answer, -5 "
               "timeout. 'release ms': bgd's release from the request to its reply, the old color's drain "
               "included.", ""]
    if ctx.failures:
        md += ["## Measurements that failed", ""] + [f"- {f}" for f in ctx.failures] + [""]
    return "\n".join(md)


def bench_metrics(ctx):
    """9. What `[metrics] listen` costs: per repetition, a fresh pair of bgds side by side (started in
    alternating order), the same app, one with metrics (scraped once, so the endpoint's code is paged
    in) and one without; RSS and wake-ups while idle."""
    log(f"9. metrics: RSS and idle wake-ups with [metrics] on and off, {ctx.reps7} fresh pairs x "
        f"{ctx.idle_seconds}s idle")
    rows = {k: [] for k in ("rss_off", "rss_on", "delta", "ratio", "anon_delta", "wake_off", "wake_on",
                            "threads_off", "threads_on")}
    for rep in range(ctx.reps7):
        mport = free_port()
        pair = {}
        for which in (("off", "on") if rep % 2 == 0 else ("on", "off")):
            top = f'[metrics]\nlisten = "127.0.0.1:{mport}"' if which == "on" else ""
            pair[which] = Bgd(ctx, f"m7-{which}-{free_port()}", [PY, "-S", "fastapp.py"], "notify", top=top)
            pair[which].release(ctx.build_fast)
        off, on = pair["off"], pair["on"]
        with urllib.request.urlopen(f"http://127.0.0.1:{mport}/metrics", timeout=10) as r:
            if "bgd_releases_total" not in r.read().decode():
                raise RuntimeError("the metrics endpoint answered without bgd_releases_total")
        # Let tokio's blocking-pool threads (the staging copy, the scrape) exit first.
        time.sleep(ctx.settle_seconds)
        wait_for_quiet(ctx, f"metrics idle {rep + 1}")
        st_off, st_on = proc_status(off.pid), proc_status(on.pid)
        rows["rss_off"].append(kb(st_off, "VmRSS"))
        rows["rss_on"].append(kb(st_on, "VmRSS"))
        rows["delta"].append(rows["rss_on"][-1] - rows["rss_off"][-1])
        rows["ratio"].append(rows["rss_on"][-1] / rows["rss_off"][-1])
        rows["anon_delta"].append(kb(st_on, "RssAnon") - kb(st_off, "RssAnon"))
        rows["threads_off"].append(int(st_off.get("Threads", 0)))
        rows["threads_on"].append(int(st_on.get("Threads", 0)))
        c0 = task_counters([off.pid]), task_counters([on.pid])
        time.sleep(ctx.idle_seconds)
        c1 = task_counters([off.pid]), task_counters([on.pid])
        per_min = 60.0 / ctx.idle_seconds
        rows["wake_off"].append((c1[0][1] - c0[0][1]) * per_min)
        rows["wake_on"].append((c1[1][1] - c0[1][1]) * per_min)
        log(f"  pair {rep + 1}: RSS off {rows['rss_off'][-1]} kB, on {rows['rss_on'][-1]} kB "
            f"({rows['delta'][-1]:+d} kB, anon {rows['anon_delta'][-1]:+d} kB), wake-ups/min off "
            f"{rows['wake_off'][-1]:.0f}, on {rows['wake_on'][-1]:.0f}")
        off.stop()
        on.stop()
    return rows


def report_metrics(r7):
    if not r7:
        return ""
    md = [f"## 9. Metrics cost (`[metrics] listen` on vs off, side by side, {len(r7['delta'])} fresh pairs, idle)", "",
          "| | metrics off | metrics on | on - off | on / off |", "|---|---|---|---|---|",
          f"| RSS idle, MB | {summary([v / 1024 for v in r7['rss_off']])} | {summary([v / 1024 for v in r7['rss_on']])} "
          f"| {summary([v / 1024 for v in r7['delta']])} | {summary(r7['ratio'], 3)} |",
          f"| of which anonymous (heap, stacks), MB | | | {summary([v / 1024 for v in r7['anon_delta']])} | |",
          f"| wake-ups per minute, idle and unscraped | {summary(r7['wake_off'], 0)} | {summary(r7['wake_on'], 0)} | | |",
          f"| threads | {summary(r7['threads_off'], 0)} | {summary(r7['threads_on'], 0)} | | |", "",
          "Both bgds of a pair run the same binary and the same one-thread app after one release; the one with "
          "metrics was scraped once before the idle period (so hyper's and the encoder's code is in its RSS). Goal: at most 1 MB more, "
          "and no wake-ups that the one without metrics does not have.", ""]
    return "\n".join(md)


def main():
    ap = argparse.ArgumentParser(description="bgd benchmark")
    ap.add_argument("--quick", action="store_true", help="a ~3 minute version with shorter runs")
    ap.add_argument("--only", default="1,2,3,4,5,6,7,8,9,10,11,12",
                    help="comma-separated measurements to run (1,2,3,4,5,6,7,8,9,10,11,12)")
    ap.add_argument("--gthread", action="store_true", help="2: also bgd with gunicorn's gthread workers (keep-alive)")
    ap.add_argument("--systems", default="bgd,bgd-shared,nginx,naive",
                    help="2: which release methods to load-test (bgd, bgd-shared, nginx, naive, bgd-gthread)")
    ap.add_argument("--out", help="also write the Markdown report here")
    ap.add_argument("--bin", required=True, help="directory with bgd and bgctl")
    ap.add_argument("--loadgen", required=True)
    ap.add_argument("--keep", action="store_true", help="keep the temp dir (logs)")
    ap.add_argument("--quiet-wait", type=float, default=None,
                    help="wait up to this many seconds before each run for other work on the machine to stop "
                         "(default 10, 3 with --quick; 90 s in all, 20 with --quick)")
    ap.add_argument("--quiet-busy", type=float, default=0.10,
                    help="the machine counts as quiet below this busy fraction (default 0.10)")
    ctx = ap.parse_args()
    ctx.disturbed, ctx.runs, ctx.busy = 0, 0, []
    ctx.bgd = os.path.join(ctx.bin, "bgd")
    BGD_PATH[0] = ctx.bgd
    ctx.flipclient = os.path.join(os.path.dirname(ctx.loadgen), "flipclient")
    ctx.wrk = shutil.which("wrk")
    ctx.nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    for tool in (ctx.bgd, ctx.loadgen, ctx.flipclient, ctx.wrk, ctx.nginx, PY):
        if not tool or not os.access(tool, os.X_OK):
            sys.exit(f"bench: {tool} is missing; run bench/run, which installs and builds what is needed")
    if ctx.quiet_wait is None:
        ctx.quiet_wait = 3.0 if ctx.quick else 10.0
    ctx.quiet_budget = 20.0 if ctx.quick else 90.0  # waiting in all, so a busy machine cannot stretch the run
    if ctx.quick:
        ctx.reps1, ctx.wrk_seconds = 3, 2
        ctx.reps2, ctx.steady_seconds, ctx.release_seconds = 3, 2, 7
        ctx.reps3, ctx.releases3, ctx.reps3b = 3, 5, 3
        ctx.big_files, ctx.big_bytes = 2_500, 50 * 1024 * 1024
        ctx.reps4, ctx.idle_seconds, ctx.settle_seconds = 3, 5, 11
        ctx.reps7 = 3
        ctx.reps5, ctx.releases5, ctx.releases5_many, ctx.many_files = 3, 5, 2, 2_500
        ctx.reps6, ctx.releases6 = 1, 5
    else:
        ctx.reps1, ctx.wrk_seconds = 5, 4
        ctx.reps2, ctx.steady_seconds, ctx.release_seconds = 3, 8, 36
        ctx.reps3, ctx.releases3, ctx.reps3b = 3, 10, 3
        ctx.big_files, ctx.big_bytes = 10_000, 200 * 1024 * 1024
        ctx.reps4, ctx.idle_seconds, ctx.settle_seconds = 3, 20, 11
        ctx.reps7 = 6
        ctx.reps5, ctx.releases5, ctx.releases5_many, ctx.many_files = 3, 10, 3, 10_000
        ctx.reps6, ctx.releases6 = 2, 10
    ctx.settle5 = 0.3
    try:
        with open("/proc/sys/net/ipv4/tcp_max_tw_buckets") as f:
            ctx.tw_target = min(60_000, int(f.read()) * 3 // 4)
    except (OSError, ValueError):
        ctx.tw_target = 60_000
    only = set(ctx.only.split(","))
    ctx.tmp = tempfile.mkdtemp(prefix="bgd-bench.")
    ctx.shm = None
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    t0 = time.monotonic()
    r1 = r2 = r3 = r3b = r3c = r4 = r5 = r6 = None
    ctx.failures = []
    results = {}
    try:
        make_builds(ctx)
        ctx.has_traffic = knows(ctx, '[traffic]\nmode = "shared"\n')
        ctx.has_standby = knows(ctx, '[traffic]\nstandby = "0s"\n')

        ctx.tw_at = {}

        def measure(key, fn):
            # One measurement's failure is reported, and the others still run.
            if key in ("3", "4", "5"):
                wait_time_wait(ctx, key)  # those of an earlier run would slow every drain
            ctx.tw_at[key] = tcp_time_wait()
            try:
                results[key] = fn()
            except Exception as e:  # noqa: BLE001
                import traceback
                traceback.print_exc()
                log(f"measurement {key} failed: {e}")
                ctx.failures.append(f"{key}: {e}")
                stop_all()

        def staging():
            rows = [bench_staging(ctx, ctx.tmp, "the disk (temp dir)")]
            # stage = "hardlink" (opt-in, newer bgd): only if this bgd knows the key.
            if knows(ctx, 'stage = "hardlink"\n'):
                rows.append(bench_staging(ctx, ctx.tmp, "the disk (temp dir)", "hardlink"))
            shm = "/dev/shm"
            try:
                st = os.statvfs(shm)
                shm_ok = st.f_bavail * st.f_frsize > 2 * 1024 ** 3
            except OSError:
                shm_ok = False
            if shm_ok:
                ctx.shm = tempfile.mkdtemp(prefix="bgd-bench.", dir=shm)
                rows.append(bench_staging(ctx, ctx.shm, "tmpfs (/dev/shm)"))
            else:
                log("3b. no tmpfs with 2 GB free at /dev/shm: staging measured on the disk only")
            return rows

        # Measurements 3, 4 and 5 first: 1, 2 and 6 (and 3c on purpose) leave tens of thousands
        # of sockets in TIME_WAIT for 60 s, which slow bgd's quiesce and raise its memory.
        if "3" in only:
            measure("3", lambda: bench_release_latency(ctx))
            measure("3b", staging)
        if "4" in only:
            measure("4", lambda: bench_footprint(ctx))
        if "5" in only:
            measure("5", lambda: bench_auto_release(ctx))
        if "9" in only:
            measure("9", lambda: bench_metrics(ctx))
        if "1" in only:
            measure("1", lambda: bench_request_path(ctx))
        if "2" in only:
            measure("2", lambda: bench_releases(ctx))
        if "6" in only:
            measure("6", lambda: bench_flip(ctx))
        if "7" in only:
            import canary
            measure("7", lambda: canary.bench_canary(ctx))
        if "8" in only:
            import kept
            measure("8", lambda: kept.bench_kept(ctx))
        if "10" in only:
            import adoption
            measure("10", lambda: adoption.bench_adoption(ctx))
        if "11" in only:
            import pause
            measure("11", lambda: pause.bench_pause(ctx))
        if "12" in only:
            import clients
            measure("12", lambda: clients.bench_clients(ctx))
        if "3" in only:
            measure("3c", lambda: bench_quiesce_table(ctx))
        r1, r2, r3, r3b, r3c, r4, r5, r6 = (results.get(k) for k in ("1", "2", "3", "3b", "3c", "4", "5", "6"))
    finally:
        stop_all()
        if ctx.shm:
            shutil.rmtree(ctx.shm, ignore_errors=True)
        if not ctx.keep:
            shutil.rmtree(ctx.tmp, ignore_errors=True)
        else:
            log(f"logs and configs kept in {ctx.tmp}")
    md = report(ctx, r1, r2, r3, r3b, r4, r5, r6, r3c)
    if results.get("7"):
        import canary
        md += "\n" + "\n".join(canary.report(ctx, results["7"]))
    if results.get("8"):
        import kept
        md += "\n" + "\n".join(kept.report(ctx, results["8"]))
    md += report_metrics(results.get("9"))
    if results.get("10"):
        import adoption
        md += "\n" + "\n".join(adoption.report(ctx, results["10"]))
    if results.get("11"):
        import pause
        md += "\n" + "\n".join(pause.report(ctx, results["11"]))
    if results.get("12"):
        import clients
        md += "\n" + "\n".join(clients.report(ctx, results["12"]))
    md += f"\n(bench/run took {time.monotonic() - t0:.0f} s)\n"
    print(md)
    if ctx.out:
        with open(ctx.out, "w") as f:
            f.write(md)
        log(f"report written to {ctx.out}")
    sys.exit(1 if ctx.failures else 0)


if __name__ == "__main__":
    main()
