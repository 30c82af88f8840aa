#!/usr/bin/env bash
# The example, end to end: build bgd, start it on examples/hello/bgd.toml,
# release v1, then release v2 while curl requests run in a loop, and show
# that not one request failed. Needs cargo, python3 and curl; no root.
set -euo pipefail
cd "$(dirname "$0")/../.."

for tool in cargo curl; do
  command -v "$tool" >/dev/null || { echo "demo: $tool is missing: install it first" >&2; exit 1; }
done
[ -x /usr/bin/python3 ] || { echo "demo: /usr/bin/python3 is missing: apt-get install python3 (the example app is Python)" >&2; exit 1; }

cargo build --quiet --bins
bin=target/debug
cfg=examples/hello/bgd.toml
if [ "$(id -u)" = 0 ]; then
  # bgd refuses to run an app as root unless the config says so. The example
  # is harmless, so the demo runs a copy of its config that allows it.
  echo "demo: running as root: using a copy of $cfg with app.allow_root = true"
  dir=$(mktemp -d)
  sed 's/^\[app\]$/[app]\nallow_root = true/; s|^root = "state"|root = "'"$PWD"'/examples/hello/state"|; s|^control = "state/|control = "'"$PWD"'/examples/hello/state/|' "$cfg" > "$dir/bgd.toml"
  cfg=$dir/bgd.toml
fi
log=$(mktemp -t bgd-demo.XXXXXX.log)
url=http://127.0.0.1:8080/

"$bin/bgd" --config "$cfg" 2>"$log" &
bgd=$!
trap 'kill $bgd 2>/dev/null; wait $bgd 2>/dev/null; [ -z "${dir:-}" ] || rm -rf "$dir"; echo "demo: bgd log is $log"' EXIT
# Wait until bgd answers and has brought back the color a previous run left live.
for _ in $(seq 300); do
  st=$("$bin/bgctl" -c "$cfg" status --json 2>/dev/null) && ! grep -q '"state": "\(starting\|restarting\)"' <<<"$st" && break
  kill -0 $bgd 2>/dev/null || { cat "$log" >&2; exit 1; }
  sleep 0.1
done

echo "== bgctl release examples/hello/v1"
"$bin/bgctl" -c "$cfg" release examples/hello/v1 --label v1
curl -sS "$url"

echo "== curl in a loop while releasing v2"
stop=$(mktemp -u)
(ok=0 failed=0
 while [ ! -e "$stop" ]; do
   if curl -sS -o /dev/null --max-time 10 "$url"; then ok=$((ok+1)); else failed=$((failed+1)); fi
 done
 echo "$ok requests answered, $failed failed") &
loop=$!
sleep 1
"$bin/bgctl" -c "$cfg" release examples/hello/v2 --label v2
sleep 1
touch "$stop"; wait $loop; rm -f "$stop"
curl -sS "$url"

echo "== bgctl status"
"$bin/bgctl" -c "$cfg" status
