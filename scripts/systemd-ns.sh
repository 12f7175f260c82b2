#!/usr/bin/env bash
# A real systemd (the host's /lib/systemd/systemd) as PID 1 of its own PID and mount namespace,
# for testing Sluice's units where the machine's PID 1 is not systemd (containers, CI VMs).
# Its /run is a fresh tmpfs (the host's is untouched); everything else is the host's file system,
# network and /sys/fs/bpf. No unit of the host is started: it boots to an empty target, and a
# test starts only the units it names.
#
#   systemd-ns.sh boot UNIT_DIR    boots it; UNIT_DIR's files (units, drop-in dirs) are copied
#                                  to /run/systemd/system first; prints the namespace's PID 1
#                                  (as the host sees it) once systemd answers
#   systemd-ns.sh ctl PID ARGS...  systemctl inside it
#   systemd-ns.sh run PID CMD...   a command inside it (its mounts and PIDs)
#   systemd-ns.sh stop PID         ends it (systemctl exit, then SIGKILL of PID 1 if need be)
set -euo pipefail
cmd=${1:?usage: systemd-ns.sh boot UNIT_DIR | ctl PID ARGS | run PID CMD | stop PID}
shift
case "$cmd" in
boot)
    units=$(realpath "${1:?unit dir}")
    log=$(mktemp /tmp/systemd-ns.XXXXXX.log)
    # The inner shell runs as PID 1 of the new namespaces until it execs systemd.
    setsid unshare --pid --fork --mount --propagation private --mount-proc --uts --ipc bash -c '
        set -e
        mount -t tmpfs -o mode=0755 tmpfs /run
        mkdir -p /run/systemd/system
        cp -r "$1"/. /run/systemd/system/
        cat > /run/systemd/system/sluice-ns.target <<UNIT
[Unit]
Description=empty boot target of systemd-ns.sh
DefaultDependencies=no
UNIT
        exec /lib/systemd/systemd --system --unit=sluice-ns.target --log-target=kmsg --log-level=notice
    ' systemd-ns "$units" >"$log" 2>&1 </dev/null &
    unshare_pid=$!
    for _ in $(seq 1 100); do
        pid=$(pgrep -P "$unshare_pid" -x systemd || true)
        if [ -n "$pid" ] && nsenter -t "$pid" -m -p systemctl is-system-running >/dev/null 2>&1; then
            echo "$pid"
            exit 0
        fi
        if [ -n "$pid" ] && [ "$(nsenter -t "$pid" -m -p systemctl is-system-running 2>/dev/null || true)" = degraded ]; then
            echo "$pid"
            exit 0
        fi
        sleep 0.1
    done
    echo "systemd did not come up in its namespace; its output:" >&2
    cat "$log" >&2
    exit 1
    ;;
ctl)
    pid=${1:?pid}
    shift
    exec nsenter -t "$pid" -m -p systemctl --no-pager "$@"
    ;;
run)
    pid=${1:?pid}
    shift
    exec nsenter -t "$pid" -m -p "$@"
    ;;
stop)
    pid=${1:?pid}
    nsenter -t "$pid" -m -p systemctl exit >/dev/null 2>&1 || true
    for _ in $(seq 1 50); do
        kill -0 "$pid" 2>/dev/null || exit 0
        sleep 0.1
    done
    kill -9 "$pid" 2>/dev/null || true
    ;;
*)
    echo "unknown command $cmd" >&2
    exit 2
    ;;
esac
