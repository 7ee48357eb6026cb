#!/usr/bin/env bash
# Set up and run the whole test suite: lint, types, unit, and (as root) the netns lab tests.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
.venv/bin/ruff check hapair tests bench
.venv/bin/ruff format --check hapair tests bench
.venv/bin/mypy hapair
if [ "$(id -u)" != 0 ]; then
  echo "test: not root: the network-namespace tests will be skipped (run with sudo for all)"
fi
exec .venv/bin/pytest -q "$@"
