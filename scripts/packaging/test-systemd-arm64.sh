#!/bin/bash
# The arm64 atm-agent package under a real arm64 kernel and Debian 12's
# systemd: a full-system qemu (qemu-system-aarch64 -M virt -cpu max, TCG)
# boots an arm64 Debian 12 disk image with its own kernel and initramfs;
# the test logs in over ssh (user-mode networking, a port on 127.0.0.1),
# installs the package there with apt, configures it for a run without
# hardware (a replayed face photo, the local trigger), starts it with
# systemctl and checks the unit's sandbox as the arm64 kernel applies it:
# the system call filter on (Seccomp: 2), no new privileges, no
# capabilities, a visit through the real vision pipeline without a kill by
# the filter, /healthz, `systemd-analyze security` exposure. qemu-user (the
# chroot of test-apt and test-ops) translates system calls to the host's,
# so no arm64 seccomp filter is ever applied there. Needs root (mmdebstrap
# of an arm64 root under qemu-user, mke2fs -d of it); missing Debian
# packages are installed (apt-get; arch-test by name: mmdebstrap checks
# the foreign architecture runs with it, and it is only a Recommends of
# mmdebstrap, which the installer leaves out). docs/packaging.md "Under a real arm64
# kernel".
#   DEB        the arm64 package (default: the newest build/atm-agent_*_arm64.deb)
#   VM_CACHE   where the disk image, kernel and initramfs are kept, under a
#              key of their inputs (default build/_vm-arm64)
#   PHOTOS     the camera's face photo (default build/src/face-api/demo)
#   VM_CPUS, VM_MEM  the guest's vCPUs (default 2) and memory (default 2048 MiB)
set -euo pipefail
TEST=test-systemd-arm64
ARCH=arm64
APTROOT_REPO=no
# shellcheck source=scripts/packaging/aptroot.sh
. "$(dirname "$0")/aptroot.sh"
DEB=$(realpath -m "${DEB:-$(ls -t build/atm-agent_*_arm64.deb 2>/dev/null | head -1)}")
VM_CACHE=$(realpath -m "${VM_CACHE:-build/_vm-arm64}")
PHOTOS=$(realpath -m "${PHOTOS:-build/src/face-api/demo}")
VM_CPUS=${VM_CPUS:-2}
VM_MEM=${VM_MEM:-2048}
UNIT=atm-agent.service
t0=$SECONDS

[ "$(id -u)" = 0 ] || { log "needs root (mmdebstrap, mke2fs -d of a root-owned tree)"; exit 1; }
[ -f "$DEB" ] || { log "no arm64 package (make deb-arm64)"; exit 1; }
[ -f "$PHOTOS/sample1.jpg" ] || { log "$PHOTOS: no photos (make models)"; exit 1; }

# The host's tools, from Debian's archive, installed once (as scripts/setup.sh).
bash "$(dirname "$0")/../apt-install.sh" qemu-system-arm qemu-user-static binfmt-support mmdebstrap arch-test e2fsprogs openssh-client
[ -e /proc/sys/fs/binfmt_misc/register ] || mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
[ -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ] || update-binfmts --enable qemu-aarch64

W=$(mktemp -d "/tmp/atm-$TEST.XXXXXX")
qemu=
vm_cleanup() {
	set +e
	[ -z "$qemu" ] || { kill "$qemu" 2>/dev/null && wait "$qemu" 2>/dev/null; }
	rm -rf --one-file-system "$W"
}
trap vm_cleanup EXIT

# The guest's packages: systemd booted from its own kernel and initramfs,
# sshd to log in, curl for the checks, and the package's Depends (without
# versions; an alternative's first choice), so that apt installs the
# package in the guest without a network.
deps=$(dpkg-deb -f "$DEB" Depends | tr ',' '\n' | sed -E 's/\|.*//; s/\(.*\)//; s/[[:space:]]//g' | grep . | sort -u | paste -sd,)
INCLUDE=systemd,systemd-sysv,dbus,udev,kmod,linux-image-arm64,openssh-server,curl,$deps

# vm_image DIR: the disk image (DIR/disk.img, ext4, made with mke2fs -d from
# an mmdebstrap tree, no loop mount), the kernel and initramfs beside it, and
# the ssh key the test logs in with (a throwaway key for a guest reachable
# only from 127.0.0.1 of this machine).
vm_image() {
	local d=$1 tree=$1/tree
	rm -rf --one-file-system "$tree"
	ssh-keygen -q -t ed25519 -N '' -C "$TEST" -f "$d/id_ed25519"
	# The initramfs holds only what this guest's boot needs (virtio disk,
	# ext4): Debian's default MODULES=most took 10 min under qemu-user.
	mmdebstrap --variant=apt --architectures=arm64 --include="$INCLUDE" \
		--essential-hook='mkdir -p "$1/etc/initramfs-tools/conf.d" "$1/usr/share/initramfs-tools/modules.d"' \
		--essential-hook='echo MODULES=list >"$1/etc/initramfs-tools/conf.d/atm-vm.conf"' \
		--essential-hook='printf "virtio_pci\nvirtio_blk\next4\n" >"$1/usr/share/initramfs-tools/modules.d/atm-vm"' \
		--customize-hook='echo atm-arm64-vm >"$1/etc/hostname"' \
		--customize-hook='echo "LABEL=atmroot / ext4 rw,errors=remount-ro 0 1" >"$1/etc/fstab"' \
		--customize-hook='printf "[Match]\nName=en* eth*\n\n[Network]\nDHCP=yes\n" >"$1/etc/systemd/network/10-vm.network"' \
		--customize-hook='chroot "$1" systemctl enable systemd-networkd.service' \
		--customize-hook="mkdir -m 0700 -p \"\$1/root/.ssh\" && install -m 0600 '$d/id_ed25519.pub' \"\$1/root/.ssh/authorized_keys\"" \
		"$SUITE" "$tree" "deb $MIRROR $SUITE main" "deb $MIRROR $SUITE-updates main" \
		"deb http://deb.debian.org/debian-security $SUITE-security main" >&2
	cp "$(ls "$tree"/boot/vmlinuz-* | tail -1)" "$d/vmlinuz"
	cp "$(ls "$tree"/boot/initrd.img-* | tail -1)" "$d/initrd.img"
	mke2fs -q -F -t ext4 -L atmroot -d "$tree" "$d/disk.img" 6G
	rm -rf --one-file-system "$tree"
}
key=$( (declare -f vm_image; echo "$INCLUDE $SUITE $MIRROR") | sha256sum | cut -c1-16)
IMG=$VM_CACHE/$key
if [ ! -f "$IMG/.complete" ]; then
	log "building the arm64 disk image $IMG (mmdebstrap under qemu-user; minutes)"
	rm -rf --one-file-system "$VM_CACHE"
	mkdir -p "$IMG"
	vm_image "$IMG"
	touch "$IMG/.complete"
fi
echo "info image $IMG ($((SECONDS - t0)) s)"

# Boot. -snapshot: the guest's writes go to a temporary file in $W, the
# cached image stays clean. The serial console is kept for a failure. The
# network card without its boot ROM (romfile=: ipxe-qemu's, not needed
# with -kernel).
port=$((20000 + $$ % 20000))
while (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null; do port=$((port + 1)); done
TMPDIR=$W qemu-system-aarch64 -M virt -cpu max,pauth-impdef=on -smp "$VM_CPUS" -m "$VM_MEM" \
	-kernel "$IMG/vmlinuz" -initrd "$IMG/initrd.img" -append "root=/dev/vda rw console=ttyAMA0 panic=-1" \
	-drive "file=$IMG/disk.img,format=raw,if=virtio" -snapshot \
	-netdev "user,id=net0,hostfwd=tcp:127.0.0.1:$port-:22" -device virtio-net-pci,netdev=net0,romfile= \
	-display none -monitor none -serial "file:$W/console.log" -no-reboot </dev/null >"$W/qemu.log" 2>&1 &
qemu=$!
SSH=(ssh -F none -i "$IMG/id_ed25519" -p "$port" -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null
	-o LogLevel=ERROR -o BatchMode=yes -o ConnectTimeout=10 -o ServerAliveInterval=10 root@127.0.0.1)
# in_sys: a command in the guest (its arguments quoted for the remote
# shell), as aptroot.sh's helpers (prop, main_pid, status_has, journal_has,
# exposure) expect.
in_sys() { "${SSH[@]}" "$(printf '%q ' env LC_ALL=C.UTF-8 DEBIAN_FRONTEND=noninteractive "$@")" </dev/null; }
# until_ok SECONDS COMMAND...: COMMAND until it succeeds, at most SECONDS of
# wall time (each command here is an ssh round trip into an emulated
# machine, so aptroot.sh's wait_for, which counts tries, would wait far
# longer than it says).
not() { ! "$@"; }
until_ok() {
	local end=$((SECONDS + $1)); shift
	until "$@"; do [ "$SECONDS" -lt "$end" ] || return 1; sleep 1; done
}
to_guest() { "${SSH[@]}" "cat >$(printf '%q' "$2")" <"$1"; } # to_guest FILE PATH
console_tail() { echo "    console:"; tail -n 30 "$W/console.log" | sed 's/^/    /'; }
# Booted: sshd answers (up to 10 min; at once a failure if qemu exits).
qemu_up() { kill -0 "$qemu" 2>/dev/null; }
booted() { ! qemu_up || in_sys true 2>/dev/null; }
until_ok 600 booted || true
if ! qemu_up || ! in_sys true 2>/dev/null; then
	bad "the guest booted and answers ssh (qemu $(qemu_up && echo "still running after 10 min" || echo exited))"
	cat "$W/qemu.log"
	console_tail
	aptroot_done
fi
ok "the guest booted and answers ssh ($((SECONDS - t0)) s)"
state=$(in_sys timeout 300 systemctl is-system-running --wait 2>&1 || true)
check "systemd is PID 1 and the system is running (state \"$state\")" test "$state" = running
[ "$state" = running ] || in_sys systemctl --failed --no-pager || true
machine=$(in_sys uname -m)
echo "info guest kernel: $(in_sys uname -srm); $(in_sys systemctl --version | head -1)"
check "the guest's kernel is arm64 (uname -m $machine)" test "$machine" = aarch64
check "the guest's PID 1 is systemd" test "$(in_sys cat /proc/1/comm)" = systemd

# Install as docs/operations.md says for a package file; apt finds every
# dependency already installed.
deb=/root/$(basename "$DEB")
to_guest "$DEB" "$deb"
check "apt-get install ./$(basename "$DEB")" in_sys apt-get install -y "$deb"
ver=$(dpkg-deb -f "$DEB" Version)
check "installed version is $ver" test "$(in_sys dpkg-query -W -f='${Version}' atm-agent)" = "$ver"
[ "$fails" = 0 ] || aptroot_done

# Emulation (TCG) is slower than an arm64 controller (a visit of five
# frames took 11 s on two shared cores), and the work loop sends no
# watchdog ping during a visit: a drop-in gives the watchdog and the start
# 20 min, so that a busy host cannot fail the test by time. Every
# sandboxing line is the packaged unit's.
in_sys mkdir -p "/etc/systemd/system/$UNIT.d"
printf '[Service]\nWatchdogSec=20min\nTimeoutStartSec=20min\n' | "${SSH[@]}" "cat >/etc/systemd/system/$UNIT.d/emulation.conf"

# Configure for a run without hardware (as test-ops's editor stand-in): the
# camera an image directory with one face photo, looped, two frames a
# visit; the visit's time limit 15 min, for emulation (as compare-arch.sh
# under qemu-user); MQTT stays off.
in_sys mkdir -p /srv/atm-test/frames
for i in 1 2 3; do to_guest "$PHOTOS/sample1.jpg" "/srv/atm-test/frames/frame$i.jpg"; done
in_sys chmod -R a+rX /srv/atm-test
check "configure" in_sys sed -i -E \
	-e 's/^  id: [^ ]+ /  id: atm-arm64-vm /' -e 's/^  site: [^ ]+ /  site: arm64-vm-site /' \
	-e 's|^  source: /dev/video0 |  source: /srv/atm-test/frames |' \
	-e '/^camera:/,/^[a-z]/ s/^  loop: false /  loop: true  /' \
	-e 's/^  burst_frames: 5 /  burst_frames: 2 /' -e 's/^  flush_frames: 4 /  flush_frames: 0 /' \
	-e 's/^  visit_timeout: 10s /  visit_timeout: 15m /' /etc/atm-agent/config.yaml
edits() { test "$(in_sys grep -cE '^  (source: /srv/atm-test/frames|loop: true|burst_frames: 2|flush_frames: 0|visit_timeout: 15m) ' /etc/atm-agent/config.yaml)" = 5; }
check "the config holds the five edits" edits
check "atm-agent config check" in_sys atm-agent config check

check "systemctl enable --now atm-agent" in_sys systemctl enable --now atm-agent
check "agent sent READY=1 (active, running)" test "$(in_sys systemctl show -p ActiveState,SubState --value "$UNIT" | paste -sd,)" = active,running

# A process the filter kills: "code=killed, status=31/SYS" from systemd,
# "type=1326 ... exe=... syscall=N" (audit) from the kernel, which names the
# call. seccomp_kill PROGRAM: the kernel's line for PROGRAM.
no_kill() { ! in_sys journalctl -u "$UNIT" --no-pager | grep -E 'status=31|SIGSYS'; }
seccomp_kill() { in_sys journalctl -k --no-pager | grep "type=1326 .* exe=\"$1\""; }
# finish: the kill checks (after a failed start too), the journal's tail
# after a failure, power off, the summary line.
finish() {
	check "no SIGSYS in the unit's journal" no_kill
	check "no seccomp kill of the agent in the kernel log" not seccomp_kill /usr/bin/atm-agent
	if [ "$fails" != 0 ]; then
		echo "    journal:"
		in_sys journalctl -u "$UNIT" --no-pager | tail -n 20 | sed 's/^/    /'
	fi
	in_sys systemctl poweroff >/dev/null 2>&1 || true
	for _ in $(seq 120); do kill -0 "$qemu" 2>/dev/null || break; sleep 0.5; done
	check "the guest powered off" sh -c "! kill -0 $qemu 2>/dev/null"
	echo "info wall time $((SECONDS - t0)) s"
	aptroot_done
}
[ "$fails" = 0 ] || finish
healthz() { in_sys curl -fsS 127.0.0.1:9464/healthz; }
check "/healthz answers 200" until_ok 300 healthz

# A visit through the real vision pipeline (detection, landmarks,
# embedding: arm64 OpenCV under the filter).
visit() { in_sys journalctl -u "$UNIT" -o cat --no-pager | grep 'msg=visit '; }
found_face() { visit | head -1 | grep -q outcome=face; }
check "test card insert accepted" in_sys curl -fsS --unix-socket /run/atm-agent/trigger.sock -X POST -d '{"txn_id":"arm64-vm-1"}' http://agent/v1/visit
check "the visit is stored" until_ok 600 visit
check "the visit found a face ($(visit | grep -o 'outcome=[a-z]*' | head -1))" found_face
echo "info $(visit | head -1)"

# The sandbox as the arm64 kernel applies it.
sandbox_checks
check "still active after the visit, never restarted" test "$(prop ActiveState)/$(prop NRestarts)" = active/0
check "/healthz after the visit" healthz
exposure=$(exposure)
echo "info systemd-analyze security $UNIT: exposure $exposure"
check "exposure level $exposure below 3.0" awk -v e="${exposure:-99}" 'BEGIN { exit !(e < 3.0) }'
# Seccomp: 2 alone does not show the unit's SystemCallFilter= at work
# (SystemCallArchitectures=, LockPersonality=, RestrictNamespaces= ... load
# filters of their own). The filter as systemd resolved it for the unit,
# applied by this kernel to a probe in a transient unit: a plain program
# runs; setpriority (in @resources, which the unit refuses; arm64 numbers
# its calls unlike amd64) kills `nice` with SIGSYS.
filter=$(prop SystemCallFilter)
probe() { in_sys systemd-run --wait --pipe --collect -p "SystemCallFilter=$filter" -p SystemCallArchitectures=native -p DynamicUser=yes "$@" 2>&1; }
refused() { ! probe nice -n 5 true && seccomp_kill /usr/bin/nice; }
check "a program runs under the unit's resolved filter ($(wc -w <<<"$filter") calls)" probe true
check "setpriority under the unit's filter: killed by SIGSYS" refused
finish
