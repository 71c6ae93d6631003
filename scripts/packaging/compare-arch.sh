#!/bin/bash
# Run the same inputs through a native binary and an arm64 binary under
# qemu-aarch64-static, and fail unless every identity decision is the same.
# Run from the repository root, after `make models` (models + face-api photos).
#   NATIVE   native binary (default build/atm-agent-static)
#   ARM64    arm64 binary (default build/atm-agent-static-arm64)
#   QEMU_LD  library root for a dynamically linked ARM64 (e.g. build/sysroot-arm64);
#            empty for the static one
#   MODELS   default build/models
#   PHOTOS   default build/src/face-api/demo
#   EXTRA    more folders for the cluster check (e.g. a labelled dataset)
#
# 1. `atm-tools cluster` of PHOTOS (and EXTRA): every image's folder
#    (person_NNNN / singletons / noface) and mask state must match.
#    Distances are compared only for the report (last float bits differ).
# 2. A replayed visit run: `atm-agent run` with an image-directory camera
#    and the local HTTP trigger; nine card inserts (the six sample photos,
#    then three of them again); each visit's outcome, identity (renamed by
#    first appearance) and mask must match.
set -euo pipefail
NATIVE=${NATIVE:-build/atm-agent-static}
ARM64=${ARM64:-build/atm-agent-static-arm64}
# The cluster check runs the offline tools binary built beside each daemon.
NATIVE_TOOLS=${NATIVE_TOOLS:-${NATIVE/atm-agent/atm-tools}}
ARM64_TOOLS=${ARM64_TOOLS:-${ARM64/atm-agent/atm-tools}}
QEMU_LD=${QEMU_LD:-}
MODELS=$(realpath "${MODELS:-build/models}")
PHOTOS=$(realpath "${PHOTOS:-build/src/face-api/demo}")
EXTRA=${EXTRA:-}
log() { echo "compare-arch: $*" >&2; }

if ! command -v qemu-aarch64-static >/dev/null; then
	[ "$(id -u)" = 0 ] || { log "apt-get install qemu-user-static (as root)"; exit 1; }
	DEBIAN_FRONTEND=noninteractive apt-get install -y -q qemu-user-static >&2
fi
for t in jq curl; do command -v $t >/dev/null || { log "$t missing (apt-get install $t)"; exit 1; }; done
for f in "$NATIVE" "$ARM64" "$MODELS/manifest.yaml" "$PHOTOS/sample1.jpg"; do
	[ -e "$f" ] || { log "$f missing (make models, make static, make static-arm64)"; exit 1; }
done
NATIVE=$(realpath "$NATIVE") ARM64=$(realpath "$ARM64")
qemu=(qemu-aarch64-static)
[ -n "$QEMU_LD" ] && qemu+=(-L "$(realpath "$QEMU_LD")")
cmd_native=("$NATIVE")
cmd_arm64=("${qemu[@]}" "$ARM64")
run_native() { "${cmd_native[@]}" "$@"; }
run_arm64() { "${cmd_arm64[@]}" "$@"; }
tools_native() { "$(realpath "$NATIVE_TOOLS")" "$@"; }
tools_arm64() { "${qemu[@]}" "$(realpath "$ARM64_TOOLS")" "$@"; }

W=$(mktemp -d /tmp/atm-compare-arch.XXXXXX)
apid=
trap '[ -n "$apid" ] && kill "$apid" 2>/dev/null; rm -rf "$W"' EXIT
kind() { file -b "$1" | grep -oE '^[^,]*, [^,]*|(statically|static-pie|dynamically) linked' | paste -sd, -; }
log "native: $(kind "$NATIVE")"
log "arm64:  $(kind "$ARM64") via ${qemu[*]}"
fail=0

# --- 1. batch clustering
i=0
for dir in "$PHOTOS" $EXTRA; do
	i=$((i + 1))
	for a in native arm64; do
		t0=$(date +%s.%N)
		# --no-cache: the embedding cache (~/.cache/atm-tools) is keyed by the
		# models, not the architecture, so the second run would read the
		# first one's embeddings instead of computing its own.
		"tools_$a" cluster "$dir" -o "$W/cl$i-$a" --models-dir "$MODELS" --workers 1 --threads 1 \
			--thumb -1 --copy --no-cache >"$W/cl$i-$a.log" 2>&1 || { cat "$W/cl$i-$a.log" >&2; exit 1; }
		echo "$(date +%s.%N) - $t0" | bc >"$W/cl$i-$a.time"
		jq -r '.images[] | [.path, .folder, (.face.mask // "-")] | @tsv' "$W/cl$i-$a/report.json" >"$W/cl$i-$a.tsv"
	done
	n=$(wc -l <"$W/cl$i-native.tsv")
	dmax=$(jq -s -r '[.[0].images, .[1].images] | transpose
		| map(select(.[0].face and .[1].face) | (.[0].face.distance - .[1].face.distance) | fabs) | max // 0' \
		"$W/cl$i-native/report.json" "$W/cl$i-arm64/report.json")
	counts=$(jq -c '.counts | {images, faces, people, singletons, noface}' "$W/cl$i-native/report.json")
	if diff -u "$W/cl$i-native.tsv" "$W/cl$i-arm64.tsv" >"$W/cl$i.diff"; then
		log "cluster $dir: $n images, same folder and mask for every one ($counts; max |distance diff| $dmax; native $(cut -c1-5 "$W/cl$i-native.time") s, qemu $(cut -c1-5 "$W/cl$i-arm64.time") s)"
	else
		log "cluster $dir: DECISIONS DIFFER"
		cat "$W/cl$i.diff" >&2
		fail=1
	fi
done

# --- 2. replayed visits through the daemon
seq=(1 2 3 4 5 6 1 3 5)
frames=$W/frames
mkdir -p "$frames"
# The camera reads one probe frame when it opens: a filler that sorts first.
cp "$PHOTOS/sample1.jpg" "$frames/000_0.jpg"
for k in "${!seq[@]}"; do
	for f in 1 2 3 4 5; do
		cp "$PHOTOS/sample${seq[$k]}.jpg" "$frames/$(printf '%03d_%d' "$k" "$f").jpg"
	done
done
replay() { # replay ARCH -> $W/replay-ARCH.tsv
	local a=$1 d=$W/run-$1
	mkdir -p "$d"
	cat >"$d/config.yaml" <<EOF
device: {id: compare-atm, site: compare-site}
models: {dir: $MODELS}
camera: {source: $frames, kind: images, loop: false, burst_frames: 5, burst_duration: 100ms, flush_frames: 0}
trigger:
  http: {enabled: true, socket: $d/trigger.sock}
store: {path: $d/agent.db}
metrics: {listen: ""}
mqtt: {enabled: false}
log: {level: info, format: text}
agent: {visit_timeout: 30m} # emulation is ~100x slower; decisions do not depend on time
EOF
	local -n cmd=cmd_$a
	"${cmd[@]}" run --config "$d/config.yaml" >"$d/log" 2>&1 & # $! is the agent (or qemu)
	local pid=$! t0 v
	apid=$pid
	for _ in $(seq 600); do [ -S "$d/trigger.sock" ] && break; sleep 0.2; done
	[ -S "$d/trigger.sock" ] || { log "$a: no trigger socket"; cat "$d/log" >&2; kill "$pid"; return 1; }
	t0=$(date +%s.%N)
	for k in "${!seq[@]}"; do
		curl -sf --unix-socket "$d/trigger.sock" -X POST -d "{\"txn_id\":\"t$k\"}" http://agent/v1/visit >/dev/null
		for _ in $(seq 18000); do # 30 min
			v=$(grep -c 'msg=visit ' "$d/log" || true)
			[ "$v" -gt "$k" ] && break
			sleep 0.1
		done
		[ "$v" -gt "$k" ] || { log "$a: visit $k not logged"; tail "$d/log" >&2; kill "$pid"; return 1; }
	done
	echo "$(date +%s.%N) - $t0" | bc >"$W/replay-$a.time"
	kill -TERM "$pid"
	wait "$pid" || { log "$a: exit status $? after SIGTERM"; tail "$d/log" >&2; return 1; }
	apid=
	# n, outcome, identity renamed by first appearance (P1, P2...; - for none), mask
	grep 'msg=visit ' "$d/log" | sed -E 's/.* outcome=([^ ]*) identity=([^ ]*) mask=([^ ]*) .* ms=([0-9]+).*/\1 \2 \3 \4/' |
		awk '{id=$2; if (id=="" || id=="\"\"") id="-"; else { if (!(id in n)) n[id]="P" ++c; id=n[id] }
			print NR, $1, id, $3 > "'"$W/replay-$a.tsv"'"; print $4 > "'"$W/replay-$a.ms"'" }'
}
replay native
replay arm64
if diff -u "$W/replay-native.tsv" "$W/replay-arm64.tsv" >"$W/replay.diff"; then
	ms() { sort -n "$1" | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
	log "replay: ${#seq[@]} visits, same outcome, identity and mask for every one; median visit ms native $(ms "$W/replay-native.ms"), qemu $(ms "$W/replay-arm64.ms")"
	sed 's/^/    /' "$W/replay-native.tsv" >&2
else
	log "replay: DECISIONS DIFFER"
	cat "$W/replay.diff" >&2
	fail=1
fi
[ $fail = 0 ] && log "PASS: identical identity decisions" || log "FAIL"
exit $fail
