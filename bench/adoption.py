"""Measurement 10: what bgd's death costs now that the app outlives it
(issue 13).

- Adoption time: from starting a new bgd (after a SIGKILL of the old one)
  to its status answering with the live color adopted, against a bgd that
  starts the same app from scratch (what a crash meant before), side by
  side, fastapp and gunicorn.
- The relay each running color keeps: its RSS.

Runs inside bench.py (`bench/run --only 10`), whose helpers it uses.
"""
import os
import signal
import time

import __main__ as b  # bench.py: Bgd, free_port, spawn, ...


def wait_live(bgd, pid=None, timeout=60.0):
    """ms until status shows blue live (with `pid`, if given)."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        try:
            st = bgd.request({"v": 1, "cmd": "status"}, timeout=5)
            if st["blue"]["state"] == "live" and (pid is None or st["blue"]["pid"] == pid):
                return (time.monotonic() - t0) * 1000, st
        except (OSError, RuntimeError):
            pass
        time.sleep(0.001)
    raise RuntimeError("blue did not come up")


def restart(bgd):
    """Starts bgd again on its config; returns (ms to blue live, status)."""
    t0 = time.monotonic()
    bgd.proc = b.spawn([bgd.ctx.bgd, "--config", bgd.config], bgd.log)
    ms, st = wait_live(bgd)
    return (time.monotonic() - t0) * 1000, st


def relay_rss_kb(ctx):
    """RSS of the relays of the bgd under test, in KiB."""
    out = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if b"__bgd_relay" not in f.read():
                    continue
            if os.path.realpath(f"/proc/{pid}/exe") != os.path.realpath(ctx.bgd):
                continue
            out.append(b.kb(b.proc_status(int(pid)), "VmRSS"))
        except OSError:
            pass
    return out


def bench_adoption(ctx):
    reps = 3 if ctx.quick else 7
    b.log(f"10. adoption: {reps} SIGKILLs of bgd per app, adopting against starting afresh")
    apps = [
        ("fastapp", ctx.build_fast, [b.PY, "-S", "fastapp.py"]),
        ("gunicorn", ctx.build_gunicorn[0], b.gunicorn_cmd()),
    ]
    rows = []
    relays = []
    for name, build, cmd in apps:
        adopt = b.Bgd(ctx, f"m10-a-{b.free_port()}", cmd, "http")
        fresh = b.Bgd(ctx, f"m10-f-{b.free_port()}", cmd, "http")
        for x in (adopt, fresh):
            x.release(build)
        relays += relay_rss_kb(ctx)
        r = {"adopt": [], "fresh": [], "ratio": []}
        for rep in range(reps):
            b.wait_for_quiet(ctx, f"rep {rep + 1} {name} adoption")
            app = adopt.request({"v": 1, "cmd": "status"})["blue"]["pid"]
            adopt.proc.send_signal(signal.SIGKILL)
            adopt.proc.wait()
            ms_a, st = restart(adopt)
            if st["blue"]["pid"] != app:
                raise RuntimeError(f"{name}: the app was not adopted: {st['blue']}")
            # Afresh: the app goes with bgd, as before issue 13.
            old = fresh.request({"v": 1, "cmd": "status"})["blue"]["pid"]
            fresh.proc.send_signal(signal.SIGKILL)
            fresh.proc.wait()
            os.killpg(old, signal.SIGKILL)
            gone_by = time.monotonic() + 10
            while os.path.exists(f"/proc/{old}") and time.monotonic() < gone_by:
                with open(f"/proc/{old}/stat") as f:
                    if f.read().rsplit(")", 1)[1].split()[0] in ("Z", "X"):
                        break
                time.sleep(0.005)
            ms_f, _ = restart(fresh)
            r["adopt"].append(ms_a)
            r["fresh"].append(ms_f)
            r["ratio"].append(ms_a / ms_f)
            b.log(f"  rep {rep + 1} {name}: adopted in {ms_a:.1f} ms, started afresh in {ms_f:.0f} ms")
        adopt.stop()
        fresh.stop()
        rows.append(dict(setup=name, **r))
    return {"rows": rows, "relays": relays}


def report(ctx, r):
    md = ["## 10. Adoption after bgd's death (SIGKILL, then a new bgd)", ""]
    md += [b.table(["app", "new bgd start to live color adopted, ms", "start afresh (the app killed with bgd), ms",
                    "ratio"], [
        [row["setup"], b.summary(row["adopt"], 1), b.summary(row["fresh"], 0), b.summary(row["ratio"], 3)]
        for row in r["rows"]
    ])]
    rss = r["relays"]
    if rss:
        md += ["", f"A running color's relay: {b.summary([k / 1024 for k in rss], 2)} MB RSS each "
               f"({len(rss)} relays measured).", ""]
    return md
