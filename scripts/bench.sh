#!/usr/bin/env bash
# Runs the speed benchmarks whose numbers docs/benchmarks.md reports: every
# network per forward at 1 and 2 OpenCV threads, each detector on a 640x480
# frame, one visit (5-frame 640x480 burst) through the default pipeline, the
# store commit, and the identity engine at 1k..100k visits. Run on an idle
# machine after `make models`; prints the load average with the results.
set -euo pipefail
cd "$(dirname "$0")/.."
export ATM_MODELS_DIR=$PWD/build/models ATM_MODEL_SRC=$PWD/build/src
uptime
go test -run '^$' -bench 'FaceAPI|Human' -benchtime 30x ./models/golden/ | grep -E 'Benchmark|ok'
go test -run '^$' -bench 'Detect640|PerceiveBurst' -benchtime 20x ./agent/vision/ | grep -E 'Benchmark|ok'
go test -run '^$' -bench 'CommitVisit' -benchtime 300x ./store/ | grep -E 'Benchmark|ok'
go test -run '^$' -bench 'Assign' -benchtime 300x ./agent/identity/ | grep -E 'Benchmark|ok'
uptime
