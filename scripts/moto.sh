#!/usr/bin/env bash
# moto's HTTP server, standing in for SSM Parameter Store and Secrets Manager on 127.0.0.1.
#   scripts/moto.sh start | stop | status
# Environment: MOTO_PORT (4566), MOTO_DATA_DIR (.run/moto-PORT), PYTHON_BIN (.venv/bin).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PORT="${MOTO_PORT:-4566}"
DATA_DIR="${MOTO_DATA_DIR:-$ROOT/.run/moto-$PORT}"
PID_FILE="$DATA_DIR/moto.pid"
BIN="${PYTHON_BIN:-$ROOT/.venv/bin}"
say() { echo "moto: $*" >&2; }

running_pid() {
  [ -f "$PID_FILE" ] || return 1
  local pid; pid="$(cat "$PID_FILE")"
  if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null && grep -q "moto" "/proc/$pid/cmdline" 2>/dev/null; then
    echo "$pid"; return 0
  fi
  say "removing stale PID file $PID_FILE"; rm -f "$PID_FILE"; return 1
}

start() {
  local pid
  if pid="$(running_pid)"; then say "already running (pid $pid) on http://127.0.0.1:$PORT"; return 0; fi
  mkdir -p "$DATA_DIR"
  setsid "$BIN/moto_server" -H 127.0.0.1 -p "$PORT" >"$DATA_DIR/moto.log" 2>&1 < /dev/null &
  echo $! > "$PID_FILE"
  for _ in $(seq 1 100); do
    if "$BIN/python" -c "import urllib.request,sys; urllib.request.urlopen('http://127.0.0.1:$PORT/moto-api/', timeout=1)" 2>/dev/null; then
      say "ready on http://127.0.0.1:$PORT (pid $(cat "$PID_FILE"))"; return 0
    fi
    kill -0 "$(cat "$PID_FILE")" 2>/dev/null || { say "exited during start:"; tail -n 20 "$DATA_DIR/moto.log" >&2; rm -f "$PID_FILE"; exit 1; }
    sleep 0.2
  done
  say "not ready after 20s; see $DATA_DIR/moto.log"; exit 1
}

stop() {
  local pid
  if ! pid="$(running_pid)"; then say "not running"; return 0; fi
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || { rm -f "$PID_FILE"; say "stopped"; return 0; }; sleep 0.1; done
  kill -KILL "$pid" 2>/dev/null || true; rm -f "$PID_FILE"
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) if pid="$(running_pid)"; then echo "running pid $pid on http://127.0.0.1:$PORT"; else echo "not running"; exit 1; fi ;;
  *) echo "usage: $0 {start|stop|status}" >&2; exit 2 ;;
esac
