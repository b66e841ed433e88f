#!/usr/bin/env bash
# Make sure a RabbitMQ broker answers on AMQP_HOST:AMQP_PORT (default 127.0.0.1:5672):
# use the one that is running, else start the installed one, else install Debian's.
set -euo pipefail
host=${AMQP_HOST:-127.0.0.1}
port=${AMQP_PORT:-5672}
up() { timeout 2 bash -c "exec 3<>/dev/tcp/$host/$port" 2>/dev/null; }

if up; then echo "rabbitmq: answering on $host:$port"; exit 0; fi
if [ "$host" != 127.0.0.1 ] && [ "$host" != localhost ]; then
  echo "rabbitmq: nothing answers on $host:$port and it is not local: start it there" >&2
  exit 1
fi
if ! command -v rabbitmq-server >/dev/null 2>&1; then
  if [ "$(id -u)" != 0 ]; then
    echo "rabbitmq: not installed; run as root or install rabbitmq-server" >&2; exit 1
  fi
  echo "rabbitmq: installing Debian's rabbitmq-server"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq rabbitmq-server >/dev/null
fi
if ! up; then
  echo "rabbitmq: starting"
  if command -v service >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
    service rabbitmq-server start || true
  fi
  up || rabbitmq-server -detached >/dev/null 2>&1 || true
fi
for _ in $(seq 1 90); do
  if up; then echo "rabbitmq: answering on $host:$port"; exit 0; fi
  sleep 1
done
echo "rabbitmq: did not come up on $host:$port within 90 s" >&2
exit 1
