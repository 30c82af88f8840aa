"""Measurement 7: the warm standby and canaries (issue 12).

- Rollback: from starting `bgctl rollback` to the first new connection
  answered by the previous build, with `traffic.standby` (a switch to the
  running standby) against the same rollback without it (a start, readiness
  check and swap), interleaved, with gunicorn (3 sync workers).
- The memory a standby keeps: the RSS of its process tree, gunicorn and
  the one-process fastapp.
- Canary accuracy: the share of 10,000 new connections (3,000 with --quick)
  that reach a 10 % and a 50 % canary.

Runs inside bench.py (`bench/run --only 7`), whose helpers it uses.
"""
import os
import socket
import subprocess
import time

import __main__ as b  # bench.py: Bgd, free_port, descendants, ...


def release_of(port):
    """The release that answers one GET / on a new connection."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        data = b""
        while True:
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
    for word in data.split():
        if word.startswith(b"release="):
            return int(word[len(b"release="):])
    raise RuntimeError(f"no release in the answer {data[-200:]!r}")


def bgd_with(ctx, name, cmd, health, traffic):
    return b.Bgd(ctx, f"{name}-{b.free_port()}", cmd, health, app=(), top="", extra=traffic)


def time_rollback(ctx, bgd, want):
    """ms from starting `bgctl rollback` to the first new connection answered by release `want`."""
    bgctl = os.path.join(ctx.bin, "bgctl")
    t0 = time.monotonic()
    p = subprocess.Popen([bgctl, "--socket", bgd.sock, "rollback"], stdout=subprocess.DEVNULL,
                         stderr=subprocess.PIPE)
    deadline = t0 + 60
    while release_of(bgd.port) != want:
        if time.monotonic() > deadline:
            raise RuntimeError("the rollback did not reach the previous build in 60 s")
    ms = (time.monotonic() - t0) * 1000
    _, err = p.communicate(timeout=120)
    if p.returncode != 0:
        raise RuntimeError(f"bgctl rollback failed: {err.decode()[-300:]}")
    return ms


def time_status(ctx, bgd):
    """ms for a `bgctl status` started the same way: bgctl's own round trip."""
    bgctl = os.path.join(ctx.bin, "bgctl")
    t0 = time.monotonic()
    subprocess.run([bgctl, "--socket", bgd.sock, "status"], stdout=subprocess.DEVNULL, check=True)
    return (time.monotonic() - t0) * 1000


def bench_canary(ctx):
    reps = 3 if ctx.quick else 10
    conns = 3_000 if ctx.quick else 10_000
    b.log(f"7. standby and canary: {reps} rollbacks with and without a standby (gunicorn), the standby's memory, "
          f"canary shares over {conns} new connections")
    cmd = b.gunicorn_cmd()
    warm = bgd_with(ctx, "m7-warm", cmd, "http", '[traffic]\nstandby = "10m"')
    cold = bgd_with(ctx, "m7-cold", cmd, "http", "")
    v1, v2 = ctx.build_gunicorn
    times = {"warm": [], "cold": [], "bgctl": []}
    memory = {}
    for bgd in (warm, cold):
        bgd.release(v1)
    for rep in range(reps):
        b.wait_for_quiet(ctx, f"rep {rep + 1} rollback")
        for kind, bgd in (("warm", warm), ("cold", cold)):
            bgd.release(v2 if rep % 2 == 0 else v1)
            st = bgd.request({"v": 1, "cmd": "status"})
            previous = st["blue" if st["live"] == "green" else "green"]
            if kind == "warm" and "gunicorn" not in memory:
                memory["gunicorn"] = sum(b.kb(b.proc_status(p), "VmRSS") for p in b.descendants(previous["pid"]))
            want = previous["release"]
            times[kind].append(time_rollback(ctx, bgd, want))
            if kind == "warm":
                times["bgctl"].append(time_status(ctx, bgd))
        b.log(f"  rep {rep + 1}: rollback to the first answer of the previous build: with a standby "
              f"{times['warm'][-1]:.1f} ms, without {times['cold'][-1]:.0f} ms")
    warm.stop()
    cold.stop()

    fast = bgd_with(ctx, "m7-fast", [b.PY, "-S", "fastapp.py"], "http", '[traffic]\nstandby = "10m"')
    fast.release(ctx.build_fast)
    fast.release(ctx.build_fast)
    st = fast.request({"v": 1, "cmd": "status"})
    standby = st["blue" if st["live"] == "green" else "green"]["pid"]
    memory["fastapp"] = sum(b.kb(b.proc_status(p), "VmRSS") for p in b.descendants(standby))
    fast.stop()

    shares = []
    # The shares of a random split: every connection comes from 127.0.0.1,
    # which a split by client (the default since issue 23) puts on one side.
    per_connection = '[traffic]\ncanary_by = "connection"'
    canary = bgd_with(ctx, "m7-canary", cmd, "http",
                      per_connection if b.knows(ctx, per_connection + "\n") else "")
    canary.release(v1)
    for percent in (10, 50):
        res = canary.request({"v": 1, "cmd": "release", "dir": os.path.abspath(v2), "canary": percent})
        new = res["release"]
        b.wait_for_quiet(ctx, f"canary {percent}%")
        got = sum(release_of(canary.port) == new for _ in range(conns))
        shares.append((percent, got, conns))
        b.log(f"  canary {percent}%: {got} of {conns} new connections ({100 * got / conns:.2f} %)")
        canary.request({"v": 1, "cmd": "abort"})
    canary.stop()
    ratios = [w / c for w, c in zip(times["warm"], times["cold"])]
    return {"warm": times["warm"], "cold": times["cold"], "bgctl": times["bgctl"], "ratio": ratios,
            "memory": memory, "shares": shares}


def report(ctx, r):
    reps = len(r["warm"])
    md = [f"## 7. Warm standby and canary (gunicorn, {reps} rollbacks each, interleaved)", ""]
    md += [b.table(["rollback", "to the first answer of the previous build, ms", "ratio to a rollback without standby"], [
        ["with `standby` (a switch: nothing starts)", b.summary(r["warm"], 1), b.summary(r["ratio"], 3)],
        ["without (start, readiness, swap)", b.summary(r["cold"], 0), "1"],
    ])]
    md += ["", "Measured from starting `bgctl rollback` (its own start included) to the first new connection, "
           "opened one after another, that the previous build answers. Goal: <= 5 ms with a standby. "
           f"For scale, a `bgctl status` started the same way takes {b.summary(r['bgctl'], 1)} ms.", ""]
    md += ["Memory a standby keeps running (RSS of its process tree): "
           + ", ".join(f"{k} {v / 1024:.1f} MB" for k, v in r["memory"].items()) + ".", ""]
    md += [b.table(["canary asked", "new connections to it", "share"], [
        [f"{p} %", f"{got} of {n}", f"{100 * got / n:.2f} %"] for p, got, n in r["shares"]
    ]), ""]
    return md
