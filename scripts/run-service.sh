#!/usr/bin/env bash
# Run one Sanad service with its config (services/<name>/config.yml over
# services/common/base.yml): scripts/run-service.sh registry
set -euo pipefail
cd "$(dirname "$0")/.."
exec "$PWD/.venv/bin/python" -m services.common.run "$1"
