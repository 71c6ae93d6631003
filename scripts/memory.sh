#!/usr/bin/env bash
# Memory of the real daemon over real visits: `atm-agent run` with a replay
# camera (face-api's demo photos, looped) and a replay trigger firing VISITS
# card inserts back to back, MQTT off, a bbolt file on a temp dir. Samples
# VmRSS / RssAnon / RssFile from /proc/<pid>/status every SAMPLE_SECONDS and
# prints smaps_rollup at the end. Frames are the demo day's first 60 card
# inserts as scripts/frames renders them (faces at ATM distance in 640x480
# frames; covered and empty shots included), replayed in a loop;
# FRAMES=photos replays face-api's group photos cut to 640x480 instead. Extra environment for the agent (GOMEMLIMIT, MALLOC_ARENA_MAX, ...)
# goes in AGENT_ENV; BIN=path runs a prebuilt binary (e.g. the static one).
#
#   bash scripts/memory.sh                          # needs `make models`
#   VISITS=300 AGENT_ENV="MALLOC_ARENA_MAX=2 GOMEMLIMIT=100MiB" bash scripts/memory.sh
set -euo pipefail
cd "$(dirname "$0")/.."
VISITS=${VISITS:-300}
SAMPLE_SECONDS=${SAMPLE_SECONDS:-10}
AGENT_ENV=${AGENT_ENV:-}
METRICS_PORT=${METRICS_PORT:-19465}
. scripts/daemon-lib.sh
if [ "${FRAMES:-demo}" = photos ]; then
	go run ./scripts/frames -size 640x480 -o "$tmp/frames" "$SRC"/face-api/demo/sample*.jpg
else
	go run ./scripts/frames -demo 60 -models "$MODELS" -photos "$SRC/face-api/demo" -o "$tmp/frames"
fi
cat >"$tmp/config.yaml" <<EOF
device: {id: atm-mem, site: bench}
models: {dir: $MODELS}
camera: {source: $tmp/frames, kind: images, loop: true, burst_duration: 1ms, flush_frames: 0}
trigger:
  http: {enabled: false}
  replay: {enabled: true, interval: 1ms, count: $VISITS}
store: {path: $tmp/agent.db}
metrics: {listen: "127.0.0.1:$METRICS_PORT"}
log: {level: info}
EOF
"$tmp/atm-agent" config check "$tmp/config.yaml" >/dev/null

env $AGENT_ENV "$tmp/atm-agent" run --config "$tmp/config.yaml" 2>"$tmp/agent.log" &
pid=$!
status() {
	awk '/^(VmRSS|VmHWM|RssAnon|RssFile|Threads):/{printf "%s %s ", $1, $2}' "/proc/$pid/status"
	# The Go side: live heap and what the runtime holds from the OS.
	curl -s "http://127.0.0.1:$METRICS_PORT/metrics" 2>/dev/null |
		awk '/^go_memstats_heap_alloc_bytes /{printf "GoHeap: %.1f MB ", $2/1048576} /^go_memstats_sys_bytes /{printf "GoSys: %.1f MB ", $2/1048576}'
}
visits() { grep -c 'msg=visit ' "$tmp/agent.log" || true; }
start=$(date +%s)
echo "env: ${AGENT_ENV:-(none)}; $VISITS visits"
sleep 3
echo "t=0s models loaded: $(status)"
last=-1
while kill -0 "$pid" 2>/dev/null; do
	sleep "$SAMPLE_SECONDS"
	kill -0 "$pid" 2>/dev/null || break
	n=$(visits)
	echo "t=$(( $(date +%s) - start ))s visits=$n $(status)"
	if [ "$n" -ge "$VISITS" ]; then break; fi
	# A trigger that fires while a visit runs is coalesced (queue of one),
	# so the replay may end a visit or two short of VISITS.
	if [ "$n" -eq "$last" ]; then echo "replay finished at $n visits"; break; fi
	last=$n
done
echo "smaps_rollup:"; grep -E '^(Rss|Pss|Pss_Anon|Pss_File|Anonymous|Private_Dirty|Shared_Clean)' "/proc/$pid/smaps_rollup" | sed 's/^/  /' || true
