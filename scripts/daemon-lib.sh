# Shared by the scripts that run the real daemon (memory.sh, idle-cpu.sh):
# a temp dir removed on exit, the agent stopped with SIGTERM on exit, and the
# agent binary (BIN=path to use a prebuilt one, else built from the tree).
# Source it after `cd` to the repository root; sets $tmp and uses $pid.
export PATH=$PATH:/usr/local/go/bin
MODELS=${ATM_MODELS_DIR:-$PWD/build/models}
SRC=${ATM_MODEL_SRC:-$PWD/build/src}

tmp=$(mktemp -d)
pid=
cleanup() {
	if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
		kill -TERM "$pid" 2>/dev/null || true
		wait "$pid" 2>/dev/null || true
	fi
	rm -rf "$tmp"
}
trap cleanup EXIT

if [ -n "${BIN:-}" ]; then
	cp "$BIN" "$tmp/atm-agent"
else
	go build -o "$tmp/atm-agent" ./cmd/atm-agent
fi
