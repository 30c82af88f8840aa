"""Measurement 11: traffic by client (issue 23).

- New-connection throughput of the steering program with 256 tester
  networks and the client hash, against today's program (a random split),
  side by side: both programs on two reuseport groups of their own on
  loopback, one client thread alternating between them (so whatever else
  runs on the machine slows both alike), the median connection time of
  each, 20,000 connections (5,000 with --quick) per program and repetition.
  IPv4 (256 /24s, clients 127.0.2.1-254: none is a tester, so every test
  runs) and IPv6 (256 /48s, the client ::1); and today's program beside
  itself, the method's own noise.
- The spread of the client hash: the share of consecutive and random
  addresses (IPv4, and IPv6 /64s) that a 10, 30 and 50 % canary gets.

Both are Rust tests of the program itself (src/net/steer/bench.rs), run with
`cargo test --release`; they need the source tree, not BGD_BIN.
Runs inside bench.py (`bench/run --only 12`).
"""
import os
import subprocess

import __main__ as b  # bench.py: log, ...


def bench_clients(ctx):
    reps, conns = (3, 5_000) if ctx.quick else (7, 20_000)
    b.log(f"11. traffic by client: the steering program's new-connection throughput ({reps} x {conns} connections "
          "per program), and the client hash's spread")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, BENCH_REPS=str(reps), BENCH_CONNECTIONS=str(conns))
    out = subprocess.run(
        ["cargo", "test", "--release", "--quiet", "--lib", "net::steer::bench", "--",
         "--ignored", "--nocapture", "--test-threads=1"],
        cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=1800)
    if out.returncode != 0:
        raise RuntimeError(f"the steering benchmark failed: {out.stderr[-500:]}")
    tables = [line for line in out.stdout.splitlines()
              if line.startswith("|") or (line and line[0].isdigit() and "repetitions" in line)]
    for line in out.stderr.splitlines():
        if "rep " in line:
            b.log(line.strip())
    return {"lines": tables}


def report(ctx, r):
    md = ["## 11. Traffic by client: the steering program", ""]
    md += ["New-connection throughput, the program with 256 testers and the client hash against today's "
           "(a 30 % random split), alternating connection by connection. Goal: ratio >= 0.98.", ""]
    lines = r["lines"]

    def section(header):
        """The table that starts with `header`, and the note line after it."""
        start = next((i for i, l in enumerate(lines) if l.startswith(header)), None)
        if start is None:
            return []
        end = start + 1
        while end < len(lines) and lines[end].startswith("|") and not lines[end].startswith(("| program", "| addresses")):
            end += 1
        if end < len(lines) and not lines[end].startswith("|"):
            end += 1
        return lines[start:end]

    md += section("| program") + [""]
    md += ["The client hash's spread: the share of each set of addresses below a canary's share.", ""]
    md += section("| addresses") + [""]
    return md
