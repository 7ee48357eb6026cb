#!/usr/bin/env bash
# Make sure a Docker engine answers: start dockerd by hand when none does (these machines have
# no systemd to start it). Idempotent. Needs root to start the engine.
set -euo pipefail
log=${HAPAIR_DOCKERD_LOG:-/var/log/hapair-dockerd.log}
if docker info >/dev/null 2>&1; then
  exit 0
fi
command -v dockerd >/dev/null || { echo "docker-engine: dockerd is not installed" >&2; exit 1; }
echo "docker-engine: starting dockerd (log: $log)"
# setsid: the engine outlives this script and the test run's process group.
# dockerd outlives this script: it must not inherit the caller's other descriptors (a lock
# held with `flock LOCK ./scripts/test.sh` would otherwise stay held until dockerd exits).
(
    for fd in /proc/self/fd/*; do
        fd=${fd##*/}
        [ "$fd" -gt 2 ] 2>/dev/null && eval "exec $fd>&-"
    done
    exec setsid dockerd >"$log" 2>&1 </dev/null
) &
for _ in $(seq 1 60); do
  if docker info >/dev/null 2>&1; then
    echo "docker-engine: ready ($(docker version --format '{{.Server.Version}}'))"
    exit 0
  fi
  sleep 0.5
done
echo "docker-engine: dockerd did not answer within 30 s; its log:" >&2
tail -20 "$log" >&2
exit 1
