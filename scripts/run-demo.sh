#!/usr/bin/env bash
# `make run`: the whole product on a demo SQLite database, everything under var/.
#   1. sendguard db upgrade + sendguard demo (seeds)
#   2. sendguard sink   (local capture SMTP server, writes a maildir)        in the background
#   3. sendguard run    (the sender, delivering to the sink)                 in the background
#   4. streamlit run dashboard.py                                            in the foreground
# Ctrl-C stops all of it. Every setting below can be overridden from the environment.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${VENV:-.venv}
VAR_DIR=${VAR_DIR:-var}
HOST=${HOST:-127.0.0.1}           # dashboard address
PORT=${PORT:-8501}                # dashboard port
SMTP_HOST=${SMTP_HOST:-127.0.0.1} # sink address
SMTP_PORT=${SMTP_PORT:-2525}      # sink port
MAILDIR=${MAILDIR:-$VAR_DIR/maildir}
export SENDGUARD_DATABASE_URL=${SENDGUARD_DATABASE_URL:-sqlite:///$VAR_DIR/demo.db}
export SENDGUARD_SMTP_URL=${SENDGUARD_SMTP_URL:-smtp://$SMTP_HOST:$SMTP_PORT}
export SENDGUARD_LOCK_FILE=${SENDGUARD_LOCK_FILE:-$VAR_DIR/sender.lock}
export PYTHONUNBUFFERED=1

SENDGUARD=("$VENV/bin/sendguard")
STREAMLIT=("$VENV/bin/streamlit")
mkdir -p "$VAR_DIR" "$MAILDIR"

pids=()
cleanup() {
    trap - EXIT INT TERM
    if ((${#pids[@]})); then
        echo
        echo "run-demo: stopping the sender and the sink..."
        kill -TERM "${pids[@]}" 2>/dev/null || true
        # The sender finishes the message in flight and releases its claims: give it a moment.
        for _ in $(seq 1 100); do
            local alive=0 pid
            for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
            ((alive)) || break
            sleep 0.1
        done
        kill -KILL "${pids[@]}" 2>/dev/null || true
        wait 2>/dev/null || true
    fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Starts "$@" in the background, logging to var/NAME.log; fails if it dies within a second.
start_bg() {
    local name=$1 log="$VAR_DIR/$1.log"
    shift
    echo "run-demo: starting $name (log: $log)"
    "$@" >>"$log" 2>&1 &
    pids+=("$!")
    sleep 1
    if ! kill -0 "$!" 2>/dev/null; then
        echo "run-demo: $name exited at once; last lines of $log:" >&2
        tail -n 20 "$log" >&2
        exit 1
    fi
}

wait_for_port() {
    "$VENV/bin/python" - "$1" "$2" <<'PY'
import socket, sys, time
host, port = sys.argv[1], int(sys.argv[2])
deadline = time.monotonic() + 15
while time.monotonic() < deadline:
    try:
        socket.create_connection((host, port), timeout=1).close()
        sys.exit(0)
    except OSError:
        time.sleep(0.2)
sys.exit(f"nothing listens on {host}:{port} after 15 s")
PY
}

echo "run-demo: database $SENDGUARD_DATABASE_URL"
"${SENDGUARD[@]}" db upgrade
"${SENDGUARD[@]}" demo

start_bg sink "${SENDGUARD[@]}" sink --host "$SMTP_HOST" --port "$SMTP_PORT" --maildir "$MAILDIR"
wait_for_port "$SMTP_HOST" "$SMTP_PORT"
start_bg sender "${SENDGUARD[@]}" run

cat <<MSG

==========================================================================
  sendguard demo is running
    dashboard : http://$HOST:$PORT
    mail sent : $MAILDIR   (captured by the local SMTP sink on $SMTP_HOST:$SMTP_PORT)
    database  : $SENDGUARD_DATABASE_URL
    logs      : $VAR_DIR/sink.log, $VAR_DIR/sender.log
  Ctrl-C stops everything.
==========================================================================

MSG

"${STREAMLIT[@]}" run dashboard.py --server.address "$HOST" --server.port "$PORT" --server.headless true
