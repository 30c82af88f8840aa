#!/usr/bin/env bash
# The example, end to end: build bgd, start it on examples/hello/bgd.toml,
# release v1, then release v2 while curl requests run in a loop, then let
# auto-release put v1 back by copying it into the watched directory, and
# show that not one request failed. Needs cargo, python3 and curl; no root.
set -euo pipefail
cd "$(dirname "$0")/../.."

for tool in cargo curl; do
  command -v "$tool" >/dev/null || { echo "demo: $tool is missing: install it first" >&2; exit 1; }
done
[ -x /usr/bin/python3 ] || { echo "demo: /usr/bin/python3 is missing: apt-get install python3 (the example app is Python)" >&2; exit 1; }

# BGD_DEMO_BIN=DIR runs the bgd and bgctl in DIR instead (the test that
# runs this demo: cargo holds the build directory while tests run).
if [ -n "${BGD_DEMO_BIN:-}" ]; then
  bin=$BGD_DEMO_BIN
else
  cargo build --quiet --bins
  bin=$PWD/target/debug
fi
url=http://127.0.0.1:8080/

# The shipped config, with its state and watched directory in a temp dir so
# the demo starts clean and leaves nothing behind.
work=$(mktemp -d -t bgd-demo.XXXXXX)
trap 'rm -rf "$work"' EXIT
sed -e "s|^root = \"state\"|root = \"$work/state\"|" \
    -e "s|^control = \"state/bgd.sock\"|control = \"$work/bgd.sock\"|" \
    -e "s|^path = \"build\"|path = \"$work/build\"|" \
    -e "s|^page = \"maintenance\"|page = \"$PWD/examples/hello/maintenance\"|" \
    examples/hello/bgd.toml > "$work/bgd.toml"
if [ "$(id -u)" = 0 ]; then
  # bgd refuses to run an app as root unless the config says so.
  echo "demo: running as root, so the demo's config sets app.allow_root = true"
  sed -i 's/^\[app\]$/[app]\nallow_root = true/' "$work/bgd.toml"
fi
cfg=$work/bgd.toml
ctl() { "$bin/bgctl" -c "$cfg" "$@"; }

"$bin/bgd" --config "$cfg" 2>"$work/bgd.log" &
bgd=$!
trap 'kill $bgd 2>/dev/null; wait $bgd 2>/dev/null; rm -rf "$work"' EXIT
for _ in $(seq 100); do
  ctl status >/dev/null 2>&1 && break
  kill -0 $bgd 2>/dev/null || { cat "$work/bgd.log" >&2; exit 1; }
  sleep 0.1
done

echo "== bgctl release examples/hello/v1"
ctl release examples/hello/v1 --label v1
curl -sS "$url"

echo "== curl in a loop: bgctl release v2, then auto-release v1 from the watched directory"
(ok=0 failed=0
 while [ ! -e "$work/stop" ]; do
   if curl -sS -o /dev/null --max-time 10 "$url"; then ok=$((ok+1)); else failed=$((failed+1)); fi
 done
 echo "$ok requests answered, $failed failed" > "$work/counts") &
loop=$!
sleep 1
ctl release examples/hello/v2 --label v2
curl -sS "$url"
cp -r examples/hello/v1 "$work/build"
for _ in $(seq 100); do
  curl -sS "$url" | grep -q "hello from v1" && break
  sleep 0.1
done
curl -sS "$url"
sleep 1
touch "$work/stop"; wait $loop
cat "$work/counts"

echo "== bgctl status"
ctl status
grep -q " 0 failed" "$work/counts"
