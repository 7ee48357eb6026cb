#!/usr/bin/env bash
# Set up everything and run a complete failover drill in a network-namespace lab (as root).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
exec .venv/bin/hapair lab drill "${1:-crash}" "${@:2}"
