#!/usr/bin/env bash
# Sanad needs CPython 3.11 with venv support (Debian: python3 + python3-venv).
set -euo pipefail
py=${1:-python3}
if ! command -v "$py" >/dev/null 2>&1; then
  echo "python: $py not found; install Python 3.11" >&2; exit 1
fi
ver=$("$py" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
if [ "$ver" != 3.11 ]; then
  echo "python: $py is $ver; Sanad needs 3.11 (make PYTHON=python3.11 ...)" >&2; exit 1
fi
if ! "$py" -c 'import ensurepip, venv' >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv
  else
    echo "python: venv support missing (Debian: apt-get install python3-venv)" >&2; exit 1
  fi
fi
