#!/usr/bin/env bash
# Run one Sanad service with its config.yml: scripts/run-service.sh registry
set -euo pipefail
cd "$(dirname "$0")/.."
svc=$1
exec "$PWD/.venv/bin/nameko" run --config "services/$svc/config.yml" "services.$svc.service:Service"
