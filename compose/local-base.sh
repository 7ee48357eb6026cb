#!/usr/bin/env bash
# Build a base image for compose/Dockerfile without any image registry: a Debian 12 root file
# system made by debootstrap from Debian's packages, plus wheels of hapair's Python dependencies
# made by this host's pip (so `pip install` in the image needs no network), imported with
# `docker import`. Use it where Docker Hub is out of reach:
#
#   sudo compose/local-base.sh hapair-base:local
#   docker build -f compose/Dockerfile --build-arg BASE=hapair-base:local -t hapair .
#
# Needs root, debootstrap, docker and a reachable Debian mirror ($DEBIAN_MIRROR) and Python index.
set -euo pipefail
tag=${1:-hapair-base:local}
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
python=${PYTHON:-python3}
repo=$(cd "$(dirname "$0")/.." && pwd)
# What the nodes, the backends, the client and the systemd test need; Dockerfile installs the
# same list with apt on a base that lacks it.
packages=python3,python3-venv,iproute2,nftables,arping,iputils-ping,procps,util-linux,nginx
packages+=,systemd,systemd-sysv,dbus,ca-certificates

work=$(mktemp -d /tmp/hapair-base.XXXXXX)
trap 'rm -rf "$work"' EXIT
echo "local-base: debootstrap bookworm from $mirror"
debootstrap --variant=minbase --include="$packages" bookworm "$work/rootfs" "$mirror" \
  >"$work/debootstrap.log" 2>&1 || { tail -20 "$work/debootstrap.log"; exit 1; }
rm -rf "$work"/rootfs/var/lib/apt/lists/* "$work"/rootfs/var/cache/apt/archives/*.deb

echo "local-base: wheels of hapair's dependencies"
wheels="$work/rootfs/opt/wheels"
mkdir -p "$wheels"
"$python" -m pip wheel --quiet --disable-pip-version-check --wheel-dir "$wheels" \
  "$repo" setuptools wheel
rm -f "$wheels"/hapair-*.whl
# pip in the image installs only from these wheels: no index, no network.
printf '[global]\nno-index = true\nfind-links = /opt/wheels\n' >"$work/rootfs/etc/pip.conf"

echo "local-base: docker import as $tag"
tar -C "$work/rootfs" -c . | docker import \
  --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  --change 'CMD ["/bin/bash"]' \
  --message "hapair local base: debootstrap bookworm + dependency wheels" - "$tag" >/dev/null
echo "local-base: built $tag"
