#!/usr/bin/env bash
# The local MongoDB-compatible store (nx-27017) for `make run`, in the foreground.
# Production points MONGO_URI at a real MongoDB replica set instead.
set -euo pipefail
cd "$(dirname "$0")/.."
port=${MONGO_PORT:-27017}
data=${SANAD_DATA_DIR:-$PWD/.data}/store
mkdir -p "$data"
pid_file="$data/nx.pid"
if [ -f "$pid_file" ] && ! kill -0 "$(cat "$pid_file")" 2>/dev/null; then
  rm -f "$pid_file"  # left by a killed run; nx-27017 refuses to start while it exists
fi
if timeout 1 bash -c "exec 3<>/dev/tcp/127.0.0.1/$port" 2>/dev/null; then
  echo "store: something already answers on 127.0.0.1:$port; using it (make stop ends ours)"
  exec sleep infinity
fi
echo "store: nx-27017 on 127.0.0.1:$port, data in $data, log in $data/nx.log"
# Its shutdown on Ctrl-C prints an asyncio traceback; keep stderr in a file and say
# so only when the store ends with an error. Its own session: honcho signals each
# process group on Ctrl-C, and the store must outlive the services (trap below).
setsid .venv-store/bin/nx-27017 --host 127.0.0.1 -p "$port" --data-dir "$data" \
  --log-file "$data/nx.log" --pid-file "$pid_file" 2>"$data/nx.stderr" &
store=$!
# On Ctrl-C every process group gets the signal at once: the store stays until this checkout's
# services have exited (their last writes, and timers still running, need it), at most
# 4.5 s: honcho kills stragglers after 5 s.
services="$PWD/[.]venv/bin/python -m services[.]common[.]run"
trap 'for _ in $(seq 45); do pgrep -f "$services" >/dev/null || break; sleep 0.1; done
      kill -TERM "$store" 2>/dev/null; wait "$store"; echo "store: stopped"; exit 0' INT TERM
if wait "$store"; then exit 0; fi
echo "store: exited with an error; see $data/nx.stderr" >&2
tail -5 "$data/nx.stderr" >&2
exit 1
