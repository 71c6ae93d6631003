#!/usr/bin/env bash
# Records what an MQTT dashboard sees from a real agent (docs/mqtt.md, "A
# recorded session"): Debian's mosquitto on 127.0.0.1:18830, the built
# daemon (build/atm-agent, models in build/models) with one face photo as
# its camera, four card inserts through the trigger socket, and a
# subscriber (mosquitto_sub, package mosquitto-clients) that starts late.
# Prints the subscriber's lines: "<retained 0|1> <topic> <payload>".
#   go build -o build/atm-agent ./cmd/atm-agent && scripts/record-mqtt.sh
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
D=$(mktemp -d)
trap 'kill $SUB $AG $MQ 2>/dev/null || true; rm -rf "$D"' EXIT
go run ./scripts/frames -size 640x480 -o "$D/frames" build/src/face-api/demo/sample2.jpg
printf 'listener 18830 127.0.0.1\nallow_anonymous true\npersistence false\nuser root\n' > "$D/mosquitto.conf"
cat > "$D/config.yaml" <<CFG
device: {id: atm-0042, site: lyon-07}
models: {dir: $REPO/build/models}
camera: {source: $D/frames, kind: images, loop: true, burst_frames: 5, burst_duration: 100ms}
trigger:
  http: {enabled: true, socket: $D/trigger.sock}
alerts:
  rules:
    - {name: same-face-repeat, kind: visits, threshold: 3, window: 1h, cooldown: 1h}
    - {name: multiple-cards, kind: distinct_cards, threshold: 2, window: 1h, cooldown: 1h}
store: {path: $D/agent.db}
mqtt:
  enabled: true
  brokers: [tcp://127.0.0.1:18830]
  status_interval: 30s
  home_assistant: {enabled: true}
agent: {summary_interval: 15s}
metrics: {listen: ""}
CFG
/usr/sbin/mosquitto -c "$D/mosquitto.conf" > "$D/mosquitto.log" 2>&1 & MQ=$!
sleep 0.5
build/atm-agent run --config "$D/config.yaml" > "$D/agent.log" 2>&1 & AG=$!
SUB=
for _ in $(seq 1 100); do [ -S "$D/trigger.sock" ] && break; sleep 0.1; done
visit() { curl -s --unix-socket "$D/trigger.sock" -d "{\"txn_id\":\"$1\",\"card_hash\":\"$2\"}" http://localhost/v1/visit >&2; echo >&2; }
H1=$(printf card-one | sha256sum | cut -c1-64); H2=$(printf card-two | sha256sum | cut -c1-64)
# Before any dashboard subscribes: three visits of the same face with card
# one (the third raises same-face-repeat), then the first summary.
visit T-1001 "$H1"; sleep 1.5; visit T-1002 "$H1"; sleep 1.5; visit T-1003 "$H1"
sleep 17
# The dashboard starts: retained messages first, then live ones.
mosquitto_sub -h 127.0.0.1 -p 18830 -t 'atm/#' -t 'homeassistant/#' -v -F '%r %t %p' > "$D/sub.log" 2>&1 & SUB=$!
sleep 1
# Live: the same face with a second card (multiple-cards), a summary, the
# status at status_interval, then a clean stop.
visit T-1004 "$H2"
sleep 16
kill -TERM $AG; wait $AG || true
sleep 0.5
cat "$D/sub.log"
