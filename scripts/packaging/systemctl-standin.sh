#!/bin/bash
# A stand-in for systemctl and journalctl, installed by test-ops.sh in a
# test root where systemd is not PID 1 (a chroot on a build machine), so
# that docs/operations.md's `systemctl` and `journalctl` lines run as
# written. Called as systemctl (or journalctl, by a link of that name).
#
# What it does with a unit, read from the unit file (/etc/systemd/system,
# then /lib/systemd/system):
#   start    creates StateDirectory= and RuntimeDirectory= (owner User=:Group=,
#            their *Mode=), copies LoadCredential= sources into
#            /run/credentials/UNIT (0400, owned by User=) and sets
#            CREDENTIALS_DIRECTORY, STATE_DIRECTORY, RUNTIME_DIRECTORY,
#            CONFIGURATION_DIRECTORY, Environment=, USER, HOME, INVOCATION_ID;
#            runs every ExecStartPre= (a "+" one as root) then ExecStart= as User=, Group=,
#            SupplementaryGroups= (setpriv), with UMask=, NoNewPrivileges=,
#            an empty CapabilityBoundingSet=; Type=notify gets NOTIFY_SOCKET
#            (/run/standin/notify.sock, served from outside the root by
#            test-ops.sh, which writes each message as a line of
#            /run/standin/notify.log) and WatchdogSec= WATCHDOG_USEC and
#            WATCHDOG_PID; start returns once READY=1 arrives (failing if the
#            process exits first or TimeoutStartSec= passes).
#   stop     SIGTERM to the main process (KillMode=mixed), SIGKILL after
#            TimeoutStopSec=, then to what is left of it; removes the
#            runtime and credentials directories.
#            DynamicUser=yes without User=: a user named after the unit with
#            a uid (and gid) of systemd's dynamic range 61184-65519, picked
#            from the name, with no passwd entry (HOME=/); its
#            StateDirectory= is made in place, not in /var/lib/private with
#            a link as systemd does.
#   enable/disable [--now], is-active, is-enabled, status, restart,
#   try-restart, daemon-reload, reset-failed, --version.
# Not modelled: the sandboxing (Protect*=, SystemCallFilter=, DevicePolicy=,
# MemoryMax=, ...: systemd-analyze verify and internal/e2e/seccomp_test.go
# cover the unit's filter), Restart=, the watchdog's kill, dependencies.
# Output of the services goes to /var/log/standin/UNIT.log (journalctl -u).
set -uo pipefail
S=/run/standin
L=/var/log/standin
mkdir -p "$S" "$L"
say() { echo "$(basename "$0") (test stand-in): $*" >&2; }

unit_name() { case $1 in *.*) echo "$1" ;; *) echo "$1.service" ;; esac; }
unit_file() {
	local d
	for d in /etc/systemd/system /lib/systemd/system /usr/lib/systemd/system; do
		[ -f "$d/$1" ] && { echo "$d/$1"; return 0; }
	done
	return 1
}
vals() { sed -n "s/^$1=//p" "$F"; }     # every value of a key, in order
val() { vals "$1" | tail -1; }          # the value in force
secs() { local v=${1:-$2}; v=${v%s}; echo "${v:-$2}"; }
main_pid() { cat "$S/$U.pid" 2>/dev/null; }
running() { local p; p=$(main_pid) && [ -n "$p" ] && kill -0 "$p" 2>/dev/null && [ ! -e "$S/$U.status" ]; }

# dynamic_user: "NAME UID GID" when the unit runs as a dynamic user
# (DynamicUser=yes, no User=, no passwd entry of the unit's name), else
# nothing. The uid is the same at every start (from the name's checksum).
dynamic_user() {
	local n id
	[ "$(val DynamicUser)" = yes ] && [ -z "$(val User)" ] || return 0
	n=${U%.service}
	getent passwd "$n" >/dev/null && return 0
	id=$((61184 + $(printf %s "$n" | cksum | cut -d' ' -f1) % 4336))
	while getent passwd "$id" >/dev/null || getent group "$id" >/dev/null; do id=$((id + 1)); done
	echo "$n $id $id"
}

# The command line of one Exec*= line, run as the unit's user: setpriv
# and env in front of it (printed NUL-separated for mapfile). With the
# argument root (a "+" line): env only, as root, as systemd runs it.
exec_prefix() {
	local as_root=${1:-} u g groups supp
	u=$(val User)
	g=$(val Group)
	g=${g:-$u}
	supp=$(vals SupplementaryGroups | tr '\n' ' ')
	local dname duid dgid
	read -r dname duid dgid < <(dynamic_user)
	[ -n "$dname" ] && u=$dname
	printf '%s\0' env -i
	printf '%s\0' PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8
	printf '%s\0' "INVOCATION_ID=$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')"
	[ -n "$(vals LoadCredential)" ] && printf '%s\0' "CREDENTIALS_DIRECTORY=/run/credentials/$U"
	local d
	d=$(val StateDirectory) && [ -n "$d" ] && printf '%s\0' "STATE_DIRECTORY=/var/lib/$d"
	d=$(val RuntimeDirectory) && [ -n "$d" ] && printf '%s\0' "RUNTIME_DIRECTORY=/run/$d"
	d=$(val ConfigurationDirectory) && [ -n "$d" ] && printf '%s\0' "CONFIGURATION_DIRECTORY=/etc/$d"
	if [ "$(val Type)" = notify ]; then
		printf '%s\0' "NOTIFY_SOCKET=$S/notify.sock"
	fi
	local e
	while read -r e; do
		e=${e#\"}
		e=${e%\"}
		printf '%s\0' "$e"
	done < <(vals Environment)
	if [ -n "$as_root" ]; then
		:
	elif [ -n "$duid" ]; then
		printf '%s\0' "USER=$u" "LOGNAME=$u" "HOME=/" "SHELL=/usr/sbin/nologin"
		groups=$(echo "$supp" | tr ' ' '\n' | grep -v '^$' | while read -r sg; do getent group "$sg" | cut -d: -f3; done | paste -sd,)
		printf '%s\0' setpriv --reuid="$duid" --regid="$dgid"
		if [ -n "$groups" ]; then printf '%s\0' --groups="$groups"; else printf '%s\0' --clear-groups; fi
		[ "$(val NoNewPrivileges)" = yes ] && printf '%s\0' --no-new-privs
		if vals CapabilityBoundingSet | grep -q '^$'; then
			printf '%s\0' --bounding-set=-all --inh-caps=-all
		fi
	elif [ -n "$u" ]; then
		printf '%s\0' "USER=$u" "LOGNAME=$u" "HOME=$(getent passwd "$u" | cut -d: -f6)" "SHELL=$(getent passwd "$u" | cut -d: -f7)"
		groups=$(id -Gn "$u" | tr ' ' '\n')
		groups=$(printf '%s\n%s\n' "$groups" "$(echo "$supp" | tr ' ' '\n')" | grep -v '^$' | sort -u | paste -sd,)
		printf '%s\0' setpriv --reuid="$u" --regid="$g" --groups="$groups"
		[ "$(val NoNewPrivileges)" = yes ] && printf '%s\0' --no-new-privs
		if vals CapabilityBoundingSet | grep -q '^$'; then
			printf '%s\0' --bounding-set=-all --inh-caps=-all
		fi
	fi
}

set_umask() {
	local m
	m=$(val UMask)
	[ -z "$m" ] || umask "$m"
}

prepare() {
	local u g d m src id dname duid dgid
	u=$(val User)
	g=$(val Group)
	g=${g:-$u}
	read -r dname duid dgid < <(dynamic_user)
	if [ -n "$duid" ]; then u=$duid g=$dgid; fi
	d=$(val StateDirectory)
	if [ -n "$d" ]; then
		m=$(val StateDirectoryMode)
		install -d -m "${m:-0755}" /var/lib/"$d"
		[ -n "$u" ] && chown "$u:$g" /var/lib/"$d"
	fi
	d=$(val RuntimeDirectory)
	if [ -n "$d" ]; then
		m=$(val RuntimeDirectoryMode)
		install -d -m "${m:-0755}" /run/"$d"
		[ -n "$u" ] && chown "$u:$g" /run/"$d"
	fi
	d=$(val ConfigurationDirectory)
	[ -n "$d" ] && [ ! -d /etc/"$d" ] && install -d -m 0755 /etc/"$d"
	rm -rf "/run/credentials/$U"
	if [ -n "$(vals LoadCredential)" ]; then
		install -d -m 0700 "/run/credentials/$U"
		while IFS=: read -r id src; do
			if [ ! -r "$src" ]; then
				say "$U: LoadCredential=$id:$src: cannot read $src"
				return 1
			fi
			install -m 0400 "$src" "/run/credentials/$U/$id"
			[ -n "$u" ] && chown "$u" "/run/credentials/$U/$id"
		done < <(vals LoadCredential)
		chmod 0500 "/run/credentials/$U"
		[ -n "$u" ] && chown "$u" "/run/credentials/$U"
	fi
	return 0
}

# run_exec LINE: one Exec*= line in the foreground (a leading - ignores
# its failure, a leading + runs it as root with full privileges, as
# systemd does).
run_exec() {
	local line=$1 ignore=n root=
	case $line in -*) ignore=y; line=${line#-} ;; esac
	case $line in +*) root=root; line=${line#+} ;; esac
	case $line in [@+!:-]*) say "$U: Exec prefix ${line:0:1} not modelled"; return 1 ;; esac
	local -a pre argv
	mapfile -d '' pre < <(exec_prefix $root)
	read -r -a argv <<<"$line"
	(set_umask; "${pre[@]}" "${argv[@]}") </dev/null >>"$L/$U.log" 2>&1
	local rc=$?
	[ "$ignore" = y ] || return $rc
}

start() {
	if running; then return 0; fi
	rm -f "$S/$U.pid" "$S/$U.status"
	if ! prepare; then echo failed >"$S/$U.result"; return 1; fi
	local line
	while read -r line; do
		[ -n "$line" ] || continue
		if ! run_exec "$line"; then
			echo failed >"$S/$U.result"
			rm -rf "/run/credentials/$U" # systemd removes them with the failed start
			say "Job for $U failed because the control process exited with error code (ExecStartPre=$line; journalctl -u $U)"
			return 1
		fi
	done < <(vals ExecStartPre)
	local notify=n
	if [ "$(val Type)" = notify ]; then
		notify=y
		[ -S "$S/notify.sock" ] || { say "$U: Type=notify needs $S/notify.sock (served by test-ops.sh)"; return 1; }
		: >"$S/notify.log"
	fi
	# The main process: a session of its own; the wrapper records its exit.
	setsid "$0" __main "$U" </dev/null >>"$L/$U.log" 2>&1 &
	local t0 limit p
	t0=$(date +%s)
	limit=$(secs "$(val TimeoutStartSec)" 90)
	while :; do
		p=$(main_pid)
		if [ -e "$S/$U.status" ]; then
			echo failed >"$S/$U.result"
			say "Job for $U failed: the main process exited with status $(cat "$S/$U.status") before it was ready (journalctl -u $U)"
			return 1
		fi
		if [ -n "$p" ] && { [ $notify = n ] || grep -qx 'READY=1' "$S/notify.log" 2>/dev/null; }; then
			echo running >"$S/$U.result"
			date +%s >"$S/$U.since"
			return 0
		fi
		if [ $(($(date +%s) - t0)) -ge "$limit" ]; then
			say "Job for $U failed: no READY=1 within TimeoutStartSec=${limit}s"
			stop
			echo failed >"$S/$U.result"
			return 1
		fi
		sleep 0.2
	done
}

# The wrapper of the main process (setsid "$0" __main UNIT).
main_wrapper() {
	local -a pre argv extra=()
	local line
	line=$(val ExecStart)
	mapfile -d '' pre < <(exec_prefix)
	read -r -a argv <<<"$line"
	local w
	w=$(secs "$(val WatchdogSec)" 0)
	(
		[ "$w" != 0 ] && extra=("WATCHDOG_USEC=$((w * 1000000))" "WATCHDOG_PID=$BASHPID")
		set_umask
		# env -i VAR=... [WATCHDOG_*] setpriv ... CMD: the extra variables
		# go right after env's own.
		exec "${pre[@]:0:2}" "${extra[@]}" "${pre[@]:2}" "${argv[@]}"
	) &
	echo $! >"$S/$U.pid"
	wait $!
	echo $? >"$S/$U.status"
}

# The session of a process (field 6 of /proc/PID/stat, after the command
# name in parentheses); no procps in a minimal root.
sid_of() {
	local st
	st=$(cat "/proc/$1/stat" 2>/dev/null) || return 0
	st=${st##*) }
	echo "$st" | cut -d' ' -f4
}
kill_session() {
	local p
	for p in /proc/[0-9]*; do
		[ "$(sid_of "${p#/proc/}")" = "$1" ] && kill -KILL "${p#/proc/}" 2>/dev/null
	done
	return 0
}

stop() {
	local p limit t0 sid
	p=$(main_pid)
	if [ -n "$p" ] && [ ! -e "$S/$U.status" ]; then
		sid=$(sid_of "$p")
		kill -TERM "$p" 2>/dev/null
		limit=$(secs "$(val TimeoutStopSec)" 90)
		t0=$(date +%s)
		while [ ! -e "$S/$U.status" ] && [ $(($(date +%s) - t0)) -lt "$limit" ]; do sleep 0.1; done
		if [ ! -e "$S/$U.status" ]; then
			say "$U: stop timed out after ${limit}s: SIGKILL"
			kill -KILL "$p" 2>/dev/null
			for _ in $(seq 50); do [ -e "$S/$U.status" ] && break; sleep 0.1; done
		fi
		# What is left of the unit's session (KillMode=mixed).
		[ -z "$sid" ] || kill_session "$sid"
		local st
		st=$(cat "$S/$U.status" 2>/dev/null || echo 137)
		if [ "$st" = 0 ] || [ "$st" = 143 ]; then echo inactive >"$S/$U.result"; else echo failed >"$S/$U.result"; fi
	fi
	local d
	d=$(val RuntimeDirectory) && [ -n "$d" ] && rm -rf /run/"$d"
	rm -rf "/run/credentials/$U"
	return 0
}

wanted_links() {
	local t
	vals WantedBy | tr ' ' '\n' | while read -r t; do [ -n "$t" ] && echo "/etc/systemd/system/$t.wants/$U"; done
}
enabled() {
	local l
	for l in $(wanted_links); do [ -L "$l" ] && return 0; done
	return 1
}

status() {
	local r
	r=$(cat "$S/$U.result" 2>/dev/null || echo inactive)
	running || [ "$r" != running ] || r=failed
	echo "● $U - $(val Description)"
	echo "     Loaded: loaded ($F; $(enabled && echo enabled || echo disabled))"
	case $r in
	running) echo "     Active: active (running) since $(date -d "@$(cat "$S/$U.since")")"; echo "   Main PID: $(main_pid)" ;;
	failed) echo "     Active: failed (exit status $(cat "$S/$U.status" 2>/dev/null || echo '?'))" ;;
	*) echo "     Active: inactive (dead)" ;;
	esac
	tail -n 10 "$L/$U.log" 2>/dev/null
	[ "$r" = running ]
}

journalctl_main() {
	local u="" n=""
	while [ $# -gt 0 ]; do
		case $1 in
		-u) u=$(unit_name "$2"); shift ;;
		-u*) u=$(unit_name "${1#-u}") ;;
		--unit=*) u=$(unit_name "${1#--unit=}") ;;
		-n) n=$2; shift ;;
		-n*) n=${1#-n} ;;
		--lines=*) n=${1#--lines=} ;;
		--no-pager | -b | -q | --quiet) ;;
		*) say "journalctl $1: not modelled"; return 1 ;;
		esac
		shift
	done
	[ -n "$u" ] || { say "journalctl without -u: not modelled"; return 1; }
	if [ -n "$n" ]; then tail -n "$n" "$L/$u.log" 2>/dev/null; else cat "$L/$u.log" 2>/dev/null; fi
	return 0
}

case $(basename "$0") in journalctl) journalctl_main "$@"; exit ;; esac
if [ "${1:-}" = __main ]; then
	U=$2
	F=$(unit_file "$U")
	main_wrapper
	exit
fi

now=n quiet=n cmd=
units=()
for a in "$@"; do
	case $a in
	--now) now=y ;;
	-q | --quiet) quiet=y ;;
	--system | --no-pager | --no-legend | --no-block | --) ;;
	--version) echo "systemd 252 (252-test-stand-in)"; exit 0 ;;
	-*) say "option $a not modelled"; exit 1 ;;
	*) if [ -z "$cmd" ]; then cmd=$a; else units+=("$(unit_name "$a")"); fi ;;
	esac
done
case $cmd in daemon-reload | reset-failed) exit 0 ;; esac
[ ${#units[@]} -gt 0 ] || { say "$cmd: no unit given"; exit 1; }
rc=0
for U in "${units[@]}"; do
	if ! F=$(unit_file "$U"); then
		case $cmd in
		is-active) [ $quiet = y ] || echo inactive; rc=3 ;;
		is-enabled) [ $quiet = y ] || echo not-found; rc=1 ;;
		# Units of other packages (maintainer scripts): nothing to run here.
		*) say "unit $U not found; $cmd ignored" ;;
		esac
		continue
	fi
	case $cmd in
	start) start || rc=1 ;;
	stop) stop ;;
	restart) stop; start || rc=1 ;;
	try-restart | condrestart) if running; then stop; start || rc=1; fi ;;
	is-active)
		if running; then [ $quiet = y ] || echo active; else
			[ $quiet = y ] || cat "$S/$U.result" 2>/dev/null | sed 's/running/failed/' || echo inactive
			rc=3
		fi
		;;
	is-enabled) if enabled; then [ $quiet = y ] || echo enabled; else [ $quiet = y ] || echo disabled; rc=1; fi ;;
	enable)
		for l in $(wanted_links); do
			mkdir -p "$(dirname "$l")"
			ln -sf "$F" "$l"
			[ $quiet = y ] || echo "Created symlink $l → $F."
		done
		[ $now = n ] || start || rc=1
		;;
	disable)
		for l in $(wanted_links); do [ -L "$l" ] && rm -f "$l" && { [ $quiet = y ] || echo "Removed \"$l\"."; }; done
		[ $now = n ] || stop
		;;
	status) status || rc=3 ;;
	*) say "systemctl $cmd: not modelled"; rc=1 ;;
	esac
done
exit $rc
