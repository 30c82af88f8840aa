"""Measurement 8: kept releases and durable staging (issue 14).

- Keeping plus staging a 200 MB, 10,000-file build against `cp -a` of it,
  interleaved: a build whose every file is new to the kept releases (its
  kept copy and the color's copy are both written) and the same build with
  one file changed (the kept copy links all but that file).
- Staging a 1-file and a 10,000-file build while 1.5 GB of unrelated data
  sits dirty (written, never synced) on the same filesystem, against the
  same staging on a quiet filesystem (after `sync`), interleaved.
- `bgctl rollback --to` a kept release (no standby): time until the build
  is live, and how much of it is bgd's own (all but the app's readiness).

Runs inside bench.py (`bench/run --only 8`), whose helpers it uses.
"""
import os
import subprocess
import time

import __main__ as b  # bench.py: Bgd, make_big_build, cp_a, med, ...

FILES, BYTES = 10_000, 200 * 1024 * 1024
DIRTY = 1536 * 1024 * 1024


def touch_all(tree, when):
    """Gives every file in tree the mtime `when`: new to every kept release."""
    for d, _, files in os.walk(tree):
        for f in files:
            os.utime(os.path.join(d, f), (when, when))


def keep_and_stage(ctx, reps):
    big = b.make_big_build(ctx, os.path.join(ctx.tmp, "m8"), FILES, BYTES)
    bgd = b.Bgd(ctx, f"m8-keep-{b.free_port()}", [b.PY, "-S", "fastapp.py"], "notify", top="keep = 2")
    bgd.release(big)
    rows = {"new": [], "one": [], "cp": [], "cp_sync": []}
    for rep in range(reps):
        for kind in ("new", "one"):
            if kind == "new":
                touch_all(big, time.time() - 1000 + rep)
            else:
                with open(os.path.join(big, "fastapp.py"), "a") as f:
                    f.write(f"\n# rep {rep}\n")
            subprocess.run(["sync"], check=True)
            _, t1, res = bgd.release(big)
            b.trash_gone(bgd.root, t1)
            rows[kind].append(res["ms"]["stage"])
            cps, syncs, _ = b.cp_a(big, ctx.tmp, 1)
            rows["cp"].append(cps[0])
            rows["cp_sync"].append(cps[0] + syncs[0])
            b.log(f"  rep {rep + 1} {kind}: keep + stage {res['ms']['stage']} ms (made durable), cp -a {cps[0]:.0f} ms, "
                  f"cp -a + sync {cps[0] + syncs[0]:.0f} ms")
    bgd.stop()
    return rows


def dirty(ctx, path):
    """Writes DIRTY bytes to path without syncing; returns the file to remove."""
    with open(path, "wb") as f:
        chunk = os.urandom(1 << 20)
        for _ in range(DIRTY >> 20):
            f.write(chunk)
    return path


def stage_under_dirty(ctx, reps):
    big = b.make_big_build(ctx, os.path.join(ctx.tmp, "m8d"), FILES, BYTES // 20)
    rows = {}
    for name, build in (("1 file", ctx.build_fast), ("10,000 files", big)):
        bgd = b.Bgd(ctx, f"m8-dirty-{b.free_port()}", [b.PY, "-S", "fastapp.py"], "notify")
        bgd.release(build)
        quiet, loaded = [], []
        for rep in range(reps):
            touch_all(build, time.time() - 2000 + rep)  # a new kept copy each time
            subprocess.run(["sync"], check=True)
            _, t1, res = bgd.release(build)
            b.trash_gone(bgd.root, t1)
            quiet.append(res["ms"]["stage"])
            touch_all(build, time.time() - 1000 + rep)
            subprocess.run(["sync"], check=True)
            junk = dirty(ctx, os.path.join(ctx.tmp, "dirty.bin"))
            _, t1, res = bgd.release(build)
            loaded.append(res["ms"]["stage"])
            os.unlink(junk)
            b.trash_gone(bgd.root, t1)
            b.log(f"  {name} rep {rep + 1}: stage quiet {quiet[-1]} ms, with 1.5 GB dirty {loaded[-1]} ms")
        bgd.stop()
        rows[name] = {"quiet": quiet, "dirty": loaded}
    return rows


def rollback_to(ctx, reps):
    bgd = b.Bgd(ctx, f"m8-rb-{b.free_port()}", [b.PY, "-S", "fastapp.py"], "notify")
    bgd.release(ctx.build_fast)
    bgd.release(ctx.build_fast)
    rows = {"live": [], "own": [], "stage": []}
    for rep in range(reps):
        t0 = time.monotonic()
        res = bgd.request({"v": 1, "cmd": "rollback", "to": "1"})
        ms = res["ms"]
        live = ms["total"] - ms["drain"]
        rows["live"].append(live)
        rows["own"].append(live - ms["ready"])
        rows["stage"].append(ms["stage"])
        b.log(f"  rollback --to 1, rep {rep + 1}: live after {live} ms (bgd's own {live - ms['ready']} ms, of it "
              f"staging the kept copy {ms['stage']} ms); bgctl round trip {(time.monotonic() - t0) * 1000:.0f} ms")
        bgd.request({"v": 1, "cmd": "rollback", "to": "2"})
    bgd.stop()
    return rows


def bench_kept(ctx):
    reps = 3 if ctx.quick else 5
    b.log(f"8. kept releases: keep + stage of a {BYTES >> 20} MB, {FILES}-file build vs cp -a; staging beside "
          f"{DIRTY >> 20} MB of dirty data; rollback --to; {reps} repetitions")
    return {"keep": keep_and_stage(ctx, reps), "dirty": stage_under_dirty(ctx, reps), "rollback": rollback_to(ctx, reps)}


def report(ctx, r):
    m = b.med
    k = r["keep"]
    md = ["", "## 8. Kept releases", "",
          b.table(["build", "keep + stage ms", "cp -a ms", "cp -a + sync ms", "ratio to cp -a + sync"], [
              [kind, f"{m(k[key]):.0f}", f"{m(k['cp']):.0f}", f"{m(k['cp_sync']):.0f}",
               f"{m([x / c for x, c in zip(k[key], k['cp_sync'])]):.2f}x"]
              for kind, key in (("every file new", "new"), ("one file changed", "one"))]), ""]
    md += [b.table(["build", "stage ms, quiet", "stage ms, 1.5 GB dirty", "ratio (goal <= 1.2)"], [
        [name, f"{m(v['quiet']):.0f}", f"{m(v['dirty']):.0f}",
         f"{m([d / max(q, 1) for q, d in zip(v['quiet'], v['dirty'])]):.2f}x"]
        for name, v in r["dirty"].items()]), ""]
    rb = r["rollback"]
    md += [f"rollback --to a kept release (fastapp, notify): live after {m(rb['live']):.0f} ms, bgd's own "
           f"{m(rb['own']):.0f} ms (staging the kept copy {m(rb['stage']):.0f} ms), median of {len(rb['live'])}."]
    return md
