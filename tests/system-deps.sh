#!/usr/bin/env bash
# Installs the system packages the tests and the demo use, with Debian's apt, only those missing.
#
# As root: one `apt-get update`, then `apt-get install` of the missing packages. Services that
# the packages would start on install (redis on 6379, nginx on 80, ...) are held back by a
# temporary policy-rc.d: the tests start their own servers on free loopback ports.
# As another user: say what is missing and carry on; the tests that need it skip (or fail
# under CI=true).
set -euo pipefail

# command -> Debian package
declare -A PACKAGES=(
    [docker-registry]=docker-registry
    [skopeo]=skopeo
    [redis-server]=redis-server
    [redis-sentinel]=redis-sentinel
    [nginx]=nginx
    [wrk]=wrk
)
ORDER=(docker-registry skopeo redis-server redis-sentinel nginx wrk)
PYTHON=${PYTHON:-python3}

have() {
    command -v "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ] || [ -x "/sbin/$1" ]
}

missing=()
for cmd in "${ORDER[@]}"; do
    have "$cmd" || missing+=("${PACKAGES[$cmd]}")
done

# What building the package needs: a C compiler, the Python headers and venv.
if ! have cc && ! have gcc; then
    missing+=(gcc)
fi
if have "$PYTHON"; then
    if ! "$PYTHON" -c 'import ensurepip, venv' >/dev/null 2>&1; then
        missing+=(python3-venv)
    fi
    if ! "$PYTHON" -c 'import os, sysconfig, sys; sys.exit(not os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")))' >/dev/null 2>&1; then
        missing+=(python3-dev)
    fi
else
    missing+=(python3 python3-venv python3-dev)
fi

if [ ${#missing[@]} -eq 0 ]; then
    echo "system-deps: all present (${ORDER[*]}, C compiler, Python headers)"
    exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
    echo "system-deps: missing: ${missing[*]}"
    echo "system-deps: not root, not installing; as root: apt-get install ${missing[*]}"
    if [ "${CI:-}" = "true" ]; then
        echo "system-deps: CI=true: the tests that need them will fail"
    else
        echo "system-deps: the tests that need them will skip"
    fi
    exit 0
fi

echo "system-deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
policy=/usr/sbin/policy-rc.d
own_policy=0
if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\n# held back while tests/system-deps.sh installs packages\nexit 101\n' >"$policy"
    chmod 0755 "$policy"
    own_policy=1
fi
cleanup() {
    if [ "$own_policy" = 1 ]; then rm -f "$policy"; fi
}
trap cleanup EXIT

apt_opts=(-q -o Dpkg::Use-Pty=0 -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold)
apt-get "${apt_opts[@]}" update >/dev/null
apt-get "${apt_opts[@]}" install -y --no-install-recommends "${missing[@]}" >/dev/null

# Should a service have been started anyway (an init system that ignores policy-rc.d), stop it:
# nothing installed here may keep a port.
for service in "${missing[@]}"; do
    case "$service" in redis-server | redis-sentinel | nginx | docker-registry) ;; *) continue ;; esac
    if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet "$service" 2>/dev/null; then
        systemctl stop "$service" || true
    elif [ -x "/etc/init.d/$service" ]; then
        "/etc/init.d/$service" stop >/dev/null 2>&1 || true
    fi
done

still=()
for cmd in "${ORDER[@]}"; do
    have "$cmd" || still+=("$cmd")
done
if [ ${#still[@]} -ne 0 ]; then
    echo "system-deps: still missing after apt-get install: ${still[*]}" >&2
    exit 1
fi
echo "system-deps: installed ${missing[*]}"
