#!/usr/bin/env bash
# Set up a machine for hapair: the system tools it drives (when missing) and a virtualenv.
# Idempotent; safe to run again. Needs root for apt-get (skipped when everything is present).
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v ip >/dev/null || need+=(iproute2)
command -v ping >/dev/null || need+=(iputils-ping)
command -v arping >/dev/null || need+=(arping)
command -v nft >/dev/null || [ -x /usr/sbin/nft ] || need+=(nftables)
# The engines of the proxy and redirect balancers.
command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || need+=(nginx)
command -v haproxy >/dev/null || [ -x /usr/sbin/haproxy ] || need+=(haproxy)
command -v setpriv >/dev/null || need+=(util-linux)
# journald and systemd-analyze: the journal sink and the units are tested against the real ones.
[ -x /lib/systemd/systemd-journald ] && command -v systemd-analyze >/dev/null || need+=(systemd)
# The balancer benchmark's load generators and reference DNS server.
if [ "${HAPAIR_WITH_BENCH:-0}" = 1 ]; then
  command -v wrk >/dev/null || need+=(wrk)
  command -v dnsperf >/dev/null || need+=(dnsperf)
  command -v dnsmasq >/dev/null || [ -x /usr/sbin/dnsmasq ] || need+=(dnsmasq-base)
fi
# The container tests (compose lab, docker drills, the unit under a real systemd); as root only.
if [ "${HAPAIR_WITH_DOCKER:-1}" = 1 ] && [ "$(id -u)" = 0 ]; then
  command -v dockerd >/dev/null || need+=(docker.io)
  command -v docker-compose >/dev/null || need+=(docker-compose)
  command -v debootstrap >/dev/null || [ -x /usr/sbin/debootstrap ] || need+=(debootstrap)
fi
if [ "${HAPAIR_WITH_KEEPALIVED:-0}" = 1 ] && ! command -v keepalived >/dev/null \
   && [ ! -x /usr/sbin/keepalived ]; then
  need+=(keepalived)
fi
if [ ${#need[@]} -gt 0 ]; then
  echo "setup: installing ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

py=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$py" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
.venv/bin/python -m pip install -q -e '.[dev]'
echo "setup: ready ($(.venv/bin/python --version), $(.venv/bin/hapair --version))"
