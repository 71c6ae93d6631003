#!/usr/bin/env bash
# Idle CPU of the real daemon: `atm-agent run` with a replay camera (an image
# directory) and the HTTP trigger on a Unix socket that nobody calls, so no
# visit ever starts. After a start-up settle, utime+stime from
# /proc/<pid>/stat are read IDLE_SECONDS apart; the result is % of one core.
# Then, if strace works here, the idle syscalls are counted for
# STRACE_SECONDS (what wakes the process while idle, and whether it touches
# the camera's frames: it should not).
#
#   bash scripts/idle-cpu.sh            # needs `make models`
#   BIN=build/atm-agent-static bash scripts/idle-cpu.sh   # a prebuilt binary
#   IDLE_SECONDS=60 SETTLE_SECONDS=15 STRACE_SECONDS=20 METRICS=127.0.0.1:0 bash scripts/idle-cpu.sh
set -euo pipefail
cd "$(dirname "$0")/.."
IDLE_SECONDS=${IDLE_SECONDS:-60}
SETTLE_SECONDS=${SETTLE_SECONDS:-15}
STRACE_SECONDS=${STRACE_SECONDS:-20}
METRICS=${METRICS:-}   # e.g. 127.0.0.1:19464 to include the metrics server (unscraped)
. scripts/daemon-lib.sh
mkdir -p "$tmp/frames"
cp "$SRC"/face-api/demo/sample1.jpg "$SRC"/face-api/demo/sample2.jpg "$tmp/frames/"
cat >"$tmp/config.yaml" <<EOF
device: {id: atm-idle, site: bench}
models: {dir: $MODELS}
camera: {source: $tmp/frames, kind: images, loop: true}
trigger:
  http: {enabled: true, socket: $tmp/trigger.sock}
store: {path: $tmp/agent.db}
metrics: {listen: "$METRICS"}
log: {level: info}
EOF
"$tmp/atm-agent" config check "$tmp/config.yaml"

"$tmp/atm-agent" run --config "$tmp/config.yaml" 2>"$tmp/agent.log" &
pid=$!
sleep "$SETTLE_SECONDS"
kill -0 "$pid" || { cat "$tmp/agent.log"; exit 1; }

ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
hz=$(getconf CLK_TCK)
t0=$(ticks "$pid")
s0=$(date +%s.%N)
sleep "$IDLE_SECONDS"
t1=$(ticks "$pid")
s1=$(date +%s.%N)
threads=$(awk '/^Threads:/{print $2}' "/proc/$pid/status")
rss=$(awk '/^VmRSS:/{print $2/1024 " MB"}' "/proc/$pid/status")
awk -v t="$((t1 - t0))" -v hz="$hz" -v s0="$s0" -v s1="$s1" -v th="$threads" -v rss="$rss" 'BEGIN {
	w = s1 - s0
	printf "idle %.1f s: %d ticks (CLK_TCK %d) = %.3f s CPU = %.3f%% of one core; %d threads, VmRSS %s\n", w, t, hz, t/hz, 100*t/hz/w, th, rss
}'

if [ "$STRACE_SECONDS" -gt 0 ] && command -v strace >/dev/null; then
	echo "syscalls over ${STRACE_SECONDS} s idle (strace -f -c):"
	timeout -s INT "$STRACE_SECONDS" strace -f -c -p "$pid" -o "$tmp/strace.txt" 2>/dev/null || true
	if [ -s "$tmp/strace.txt" ]; then
		cat "$tmp/strace.txt"
	else
		echo "(strace could not attach here)"
	fi
fi
echo "agent log (start-up and idle):"
sed 's/^/  /' "$tmp/agent.log"
