#!/usr/bin/env bash
# Set up and run the whole test suite: lint, types, unit, and (as root) the netns lab tests.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
.venv/bin/ruff check hapair tests bench
.venv/bin/ruff format --check hapair tests bench
.venv/bin/mypy hapair
if [ "$(id -u)" != 0 ]; then
  echo "test: not root: the network-namespace and container tests will be skipped (run with sudo)"
elif [ "${HAPAIR_WITH_DOCKER:-1}" = 1 ]; then
  ./scripts/docker-engine.sh
  # A container test that cannot reach the engine fails instead of skipping.
  export HAPAIR_REQUIRE_DOCKER=1
fi
exec .venv/bin/pytest -q "$@"
