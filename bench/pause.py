"""Measurement 11: a pause for database work (issue 24).

Under 200 new connections a second (open loop: one new connection every
5 ms, whatever the server does, each with a 40 s timeout), a 10 s window
in which no app process runs, done two ways, interleaved:

- bgd: `bgctl pause` (new connections wait in the kernel, the app drains
  and stops), the 10 s window, then `bgctl release` of the next build.
- stop and start (what users do today): gunicorn bound to its own port is
  stopped (SIGTERM, waited for), the 10 s window, then the next build's
  gunicorn is started on the same port.

Each run reports the requests made, the failed ones, the longest wait, the
longest the connections in the queue held (bgd: `paused.waiting` in
status, read every 100 ms), and, for bgd, how long the release took. The
goals: 0 failed; the longest wait at most the pause plus the app's start.

Runs inside bench.py (`bench/run --only 11`), whose helpers it uses.
"""
import asyncio
import os
import resource
import signal
import threading
import time

import __main__ as b  # bench.py: Bgd, free_port, spawn, ...

RATE = 200  # new connections a second
WINDOW = 10.0  # seconds with no app process
TIMEOUT = 40.0  # each client's deadline, connect included
BEFORE, AFTER = 3.0, 5.0  # seconds of load before the window and after it ends


async def one(port, results, t_start):
    t0 = time.monotonic()
    try:
        r, w = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), TIMEOUT)
        try:
            w.write(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            await w.drain()
            left = TIMEOUT - (time.monotonic() - t0)
            data = await asyncio.wait_for(r.read(), max(left, 0.1))
        finally:
            w.close()
        ok = data.startswith(b"HTTP/1.1 200") or data.startswith(b"HTTP/1.0 200")
        what = "ok" if ok else f"answer {data[:40]!r}"
    except asyncio.TimeoutError:
        what = "timeout"
    except ConnectionRefusedError:
        what = "refused"
    except ConnectionResetError:
        what = "reset"
    except OSError as e:
        what = f"error {e.errno}"
    results.append((t0 - t_start, time.monotonic() - t0, what))


async def open_loop(port, seconds, results):
    """One new connection every 1/RATE s for `seconds`; waits for all."""
    t_start = time.monotonic()
    tasks = []
    n = 0
    while True:
        due = t_start + n / RATE
        if due - t_start >= seconds:
            break
        delay = due - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(port, results, t_start)))
        n += 1
    await asyncio.gather(*tasks)


def load_thread(port, seconds):
    results = []
    t = threading.Thread(target=lambda: asyncio.run(open_loop(port, seconds, results)))
    t.start()
    return t, results


def summarize(results, extra):
    failed = [w for _, _, w in results if w != "ok"]
    kinds = {}
    for w in failed:
        kinds[w] = kinds.get(w, 0) + 1
    row = {
        "requests": len(results),
        "failed": len(failed),
        "kinds": kinds,
        "longest_s": max((lat for _, lat, _ in results), default=0.0),
    }
    row.update(extra)
    return row


def run_bgd(ctx, i):
    bgd = b.Bgd(ctx, f"pause-{i}-{b.free_port()}", b.gunicorn_cmd(), "http")
    bgd.release(ctx.build_gunicorn[0])
    t, results = load_thread(bgd.port, BEFORE + WINDOW + AFTER)
    time.sleep(BEFORE)
    peak = [0]
    polling = [True]

    def poll():
        while polling[0]:
            try:
                p = bgd.request({"v": 1, "cmd": "status"}, timeout=5).get("paused")
                if p:
                    peak[0] = max(peak[0], p["waiting"])
            except (OSError, RuntimeError):
                pass
            time.sleep(0.1)

    poller = threading.Thread(target=poll)
    poller.start()
    t0 = time.monotonic()
    bgd.request({"v": 1, "cmd": "pause"})
    stopped_s = time.monotonic() - t0
    time.sleep(max(0.0, WINDOW - (time.monotonic() - t0)))
    r0, r1, res = bgd.release(ctx.build_gunicorn[1])
    polling[0] = False
    poller.join()
    t.join()
    bgd.stop()
    return summarize(results, {"queue_peak": peak[0], "stop_s": stopped_s,
                               "release_ms": (r1 - r0) * 1000, "pause_s": r1 - t0})


def run_naive(ctx, i):
    port = b.free_port()
    app = b.start_gunicorn(ctx, port, ctx.build_gunicorn[0], f"pause-naive-{i}-v1")
    t, results = load_thread(port, BEFORE + WINDOW + AFTER)
    time.sleep(BEFORE)
    t0 = time.monotonic()
    b.stop(app, sig=signal.SIGTERM, timeout=30)
    stopped_s = time.monotonic() - t0
    time.sleep(max(0.0, WINDOW - (time.monotonic() - t0)))
    r0 = time.monotonic()
    app = b.start_gunicorn(ctx, port, ctx.build_gunicorn[1], f"pause-naive-{i}-v2")
    r1 = time.monotonic()
    t.join()
    b.stop(app)
    return summarize(results, {"queue_peak": None, "stop_s": stopped_s,
                               "release_ms": (r1 - r0) * 1000, "pause_s": r1 - t0})


def bench_pause(ctx):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 8192)), hard))
    reps = 1 if ctx.quick else 3
    rows = {"bgd": [], "naive": []}
    for i in range(reps):
        for name, fn in (("bgd", run_bgd), ("naive", run_naive)):
            b.wait_for_quiet(ctx, f"11. pause {name} {i + 1}/{reps}")
            r = fn(ctx, i)
            b.log(f"11. {name} {i + 1}/{reps}: {r}")
            rows[name].append(r)
    return rows


def report(ctx, r):
    md = [f"## 11. A {WINDOW:.0f} s pause for database work under {RATE} new connections a second", ""]
    heads = ["method", "requests", "failed", "how they failed", "longest wait, s",
             "queue held at most", "window (pause to release done), s", "release or start, ms"]
    rows = []
    for name, label in (("bgd", "bgd: `bgctl pause`, then `bgctl release`"),
                        ("naive", "stop the app, then start the new build")):
        runs = r[name]
        kinds = {}
        for run in runs:
            for k, n in run["kinds"].items():
                kinds[k] = kinds.get(k, 0) + n
        peaks = [x["queue_peak"] for x in runs if x["queue_peak"] is not None]
        rows.append([
            label,
            b.summary([x["requests"] for x in runs], 0),
            b.summary([x["failed"] for x in runs], 0),
            ", ".join(f"{k} {n}" for k, n in sorted(kinds.items())) or "-",
            b.summary([x["longest_s"] for x in runs], 1),
            b.summary(peaks, 0) if peaks else "-",
            b.summary([x["pause_s"] for x in runs], 1),
            b.summary([x["release_ms"] for x in runs], 0),
        ])
    md += [b.table(heads, rows), ""]
    return md
