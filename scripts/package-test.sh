#!/usr/bin/env bash
# The package, end to end on this machine: build it (scripts/package.sh), install it with apt,
# start both units under a real systemd, program a meeting with `sluicectl apply`, see it with
# `sluicectl` and on both daemons' /metrics (checked by `promtool check metrics`), stop the units,
# remove the package. CI runs it from scripts/test.sh.
#
# Where the machine's PID 1 is not systemd (containers, this CI's VMs) the units run under the
# host's systemd booted as PID 1 of its own PID and mount namespace (scripts/systemd-ns.sh), with
# one drop-in per unit: DefaultDependencies=no (the namespace boots no sysinit.target), and
# LimitNOFILE/LimitMEMLOCK lowered to this machine's hard limits when they are below the unit's
# (raising a hard limit needs CAP_SYS_RESOURCE, which a container may not give its root).
# Everything else (User=sluice, the capabilities, Type=notify, WatchdogSec, the sandboxing) is the
# unit as packaged.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
step() { printf '\n== %s\n' "$*"; }
fail() { printf 'FAIL: %s\n' "$*" >&2; exit 1; }

if dpkg-query -W -f='${Status}' sluice 2>/dev/null | grep -q 'ok installed'; then
    fail "the sluice package is installed on this machine: this test installs, starts and removes its own (and clears its state); run it on a machine without"
fi

step "build the package"
deb=${SLUICE_DEB:-$(./scripts/package.sh)}
[ -f "$deb" ] || fail "no package at '$deb'"
deb=$(realpath "$deb")
dpkg-deb --info "$deb" | sed -n '/Package:/,/Description:/p'
dpkg-deb --contents "$deb" | awk '{print $6}' | sort > /tmp/sluice-package-contents.$$
for f in ./usr/bin/sluice-dataplane ./usr/bin/sluice-controlplane ./usr/bin/sluicectl \
         ./etc/sluice/dataplane.toml ./etc/sluice/controlplane.toml \
         ./usr/lib/systemd/system/sluice-dataplane.service ./usr/lib/systemd/system/sluice-controlplane.service \
         ./usr/lib/sysusers.d/sluice.conf ./usr/lib/tmpfiles.d/sluice.conf ./usr/share/doc/sluice/grafana/sluice.json; do
    grep -qx "$f" /tmp/sluice-package-contents.$$ || fail "the package lacks $f"
done
grep -q '^./usr/share/man/man8/sluice-dataplane.8' /tmp/sluice-package-contents.$$ || fail "no man page"
rm -f /tmp/sluice-package-contents.$$

step "install it"
DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$deb" >/dev/null
id sluice || fail "the package made no sluice user"
[ "$(stat -c %U /var/lib/sluice)" = sluice ] || fail "/var/lib/sluice is not the sluice user's"
/usr/bin/sluice-dataplane --config /etc/sluice/dataplane.toml --check-config
/usr/bin/sluice-controlplane --config /etc/sluice/controlplane.toml --check-config

units=$(mktemp -d /tmp/sluice-units.XXXXXX)
pid=""
cleanup() {
    if [ -n "$pid" ]; then "$root/scripts/systemd-ns.sh" stop "$pid"; fi
    rm -rf "$units"
    if [ "${KEEP_PACKAGE:-0}" != 1 ]; then
        DEBIAN_FRONTEND=noninteractive apt-get purge -y -q sluice >/dev/null 2>&1 || true
        # The test's meeting (purge keeps /var/lib/sluice: on a real node it is acknowledged state).
        rm -rf /var/lib/sluice/controlplane
    fi
}
trap cleanup EXIT
nofile=$(ulimit -Hn)
memlock=$(ulimit -Hl)
for unit in sluice-dataplane sluice-controlplane; do
    mkdir -p "$units/$unit.service.d"
    {
        printf '[Unit]\nDefaultDependencies=no\n[Service]\n'
        [ "$nofile" != unlimited ] && [ "$nofile" -lt 1048576 ] && printf 'LimitNOFILE=%s\n' "$nofile"
        [ "$memlock" != unlimited ] && printf 'LimitMEMLOCK=%sK\n' "$memlock"
        true
    } > "$units/$unit.service.d/10-namespace.conf"
done

step "start both units under systemd"
if [ -d /run/systemd/system ] && [ "$(ps -p 1 -o comm=)" = systemd ]; then
    fail "this machine runs systemd as PID 1: run the units there (not implemented: CI machines do not)"
fi
pid=$("$root/scripts/systemd-ns.sh" boot "$units")
ctl() { "$root/scripts/systemd-ns.sh" ctl "$pid" "$@"; }
inside() { "$root/scripts/systemd-ns.sh" run "$pid" "$@"; }
ctl start systemd-journald.service
# The namespace's /run is fresh: what the package's tmpfiles entry makes at boot.
inside systemd-tmpfiles --create sluice.conf || true
ctl start sluice-dataplane.service sluice-controlplane.service
for unit in sluice-dataplane sluice-controlplane; do
    state=$(ctl show -p ActiveState --value $unit.service)
    [ "$state" = active ] || { inside journalctl -u $unit --no-pager | tail -20; fail "$unit is $state"; }
    main=$(ctl show -p MainPID --value $unit.service)
    # MainPID is the namespace's: read its /proc from inside.
    user=$(inside ps -o user= -p "$main")
    caps=$(inside grep CapEff "/proc/$main/status" | awk '{print $2}')
    echo "$unit: active (ready), PID $main, user $user, CapEff $caps, status: $(ctl show -p StatusText --value $unit.service)"
    [ "$user" = sluice ] || fail "$unit runs as $user"
done
dp_caps=$(inside grep CapEff "/proc/$(ctl show -p MainPID --value sluice-dataplane.service)/status" | awk '{print $2}')
cp_caps=$(inside grep CapEff "/proc/$(ctl show -p MainPID --value sluice-controlplane.service)/status" | awk '{print $2}')
# CAP_NET_ADMIN 12, CAP_NET_RAW 13, CAP_IPC_LOCK 14, CAP_PERFMON 38, CAP_BPF 39.
[ "$dp_caps" = 000000c000007000 ] || fail "dataplane capabilities $dp_caps"
[ "$cp_caps" = 0000000000000000 ] || fail "control plane capabilities $cp_caps"

step "program a meeting with sluicectl"
for _ in $(seq 1 50); do
    sluicectl status --json 2>/dev/null | grep -q '"dataplane_connected": true' && break
    sleep 0.1
done
sluicectl status
sluicectl apply /usr/share/doc/sluice/examples/meeting.json
sluicectl sessions | tee /tmp/sluice-sessions.$$
grep -q demo-meeting /tmp/sluice-sessions.$$ || fail "the meeting is not listed"
rm -f /tmp/sluice-sessions.$$
if sluicectl top --help >/dev/null 2>&1; then
    sluicectl top --once | tee /tmp/sluice-top.$$
    grep -q demo-meeting /tmp/sluice-top.$$ || fail "sluicectl top does not show the meeting"
    rm -f /tmp/sluice-top.$$
fi

step "/metrics of both daemons"
# Workers publish their counters every 250 ms: wait for the applied generation to show.
for _ in $(seq 1 30); do
    dp=$(curl -fsS http://127.0.0.1:9311/metrics)
    echo "$dp" | grep -qE '^sluice_table_generation\{worker="0"\} [1-9]' && break
    sleep 0.1
done
cp=$(curl -fsS http://127.0.0.1:9312/metrics)
echo "$dp" | promtool check metrics
echo "$cp" | promtool check metrics
echo "$dp" | grep -E '^sluice_table_generation'
echo "$cp" | grep -E '^sluice_cp_(sessions|legs|subscriptions|dataplane_connected) '
echo "$cp" | grep -qx 'sluice_cp_sessions 1' || fail "the control plane's /metrics does not count the meeting"
echo "$cp" | grep -qx 'sluice_cp_dataplane_connected 1' || fail "the control plane is not connected to the dataplane"
echo "$dp" | grep -qE '^sluice_table_generation\{worker="0"\} [1-9]' || fail "the dataplane has not installed the meeting's tables"

step "stop both units"
ctl stop sluice-controlplane.service sluice-dataplane.service
for unit in sluice-dataplane sluice-controlplane; do
    r=$(ctl show -p Result --value $unit.service)
    s=$(ctl show -p ActiveState --value $unit.service)
    echo "$unit: $s, result $r"
    [ "$s" = inactive ] && [ "$r" = success ] || { inside journalctl -u $unit --no-pager | tail -20; fail "$unit stopped as $s/$r"; }
done
inside journalctl -u sluice-dataplane --no-pager | grep -q 'stopped cleanly' || fail "the dataplane did not drain"
echo
echo "package test passed: $deb"
