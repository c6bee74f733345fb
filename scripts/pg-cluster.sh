#!/usr/bin/env bash
# Throwaway PostgreSQL cluster for the tests.
#
#   scripts/pg-cluster.sh start        # prints KEY=VALUE lines on stdout:
#                                      #   SENDGUARD_TEST_PG_URL=postgresql+psycopg://postgres@127.0.0.1:PORT/postgres
#                                      #   SENDGUARD_TEST_PG_DIR=/tmp/sendguard-pg.XXXXXX
#   scripts/pg-cluster.sh stop DIR     # stops the cluster started in DIR and deletes DIR
#   scripts/pg-cluster.sh bindir       # prints the PostgreSQL bin dir used (exit 1 if none)
#
# Used by scripts/with-postgres.sh (make test, CI) and by tests/conftest.py (bare `pytest`).
# The cluster listens on 127.0.0.1 only, with trust auth, and its socket lives in DIR.
# As root (CI), initdb/pg_ctl run as the `postgres` user, who owns DIR.
# Env: PG_BINDIR (default: highest /usr/lib/postgresql/*/bin with initdb), PYTHON (for the port pick).
set -euo pipefail

MARKER=.sendguard-pg-cluster

log() { echo "pg-cluster: $*" >&2; }

find_bindir() {
    if [[ -n "${PG_BINDIR:-}" ]]; then
        [[ -x "$PG_BINDIR/initdb" ]] || { log "PG_BINDIR=$PG_BINDIR has no initdb"; return 1; }
        echo "$PG_BINDIR"
        return 0
    fi
    local best
    best=$(ls -d /usr/lib/postgresql/*/bin/initdb 2>/dev/null | sort -V | tail -n 1 || true)
    [[ -n "$best" ]] || return 1
    dirname "$best"
}

# Run a PostgreSQL binary as the cluster owner: `postgres` when we are root, else ourselves.
as_owner() {
    if [[ "$(id -u)" == 0 ]]; then
        runuser -u postgres -- "$@"
    else
        "$@"
    fi
}

free_port() {
    "${PYTHON:-python3}" - <<'PY'
import socket
s = socket.socket()
s.bind(("127.0.0.1", 0))
print(s.getsockname()[1])
s.close()
PY
}

cmd_start() {
    local bindir dir data port deadline
    bindir=$(find_bindir) || { log "no PostgreSQL binaries (/usr/lib/postgresql/*/bin/initdb)"; exit 1; }
    if [[ "$(id -u)" == 0 ]] && ! id postgres >/dev/null 2>&1; then
        log "running as root but there is no 'postgres' user (install the postgresql package)"
        exit 1
    fi
    dir=$(mktemp -d /tmp/sendguard-pg.XXXXXX)
    touch "$dir/$MARKER"
    data="$dir/data"
    if [[ "$(id -u)" == 0 ]]; then
        chown -R postgres: "$dir"
    fi
    # From here on, any failure removes what we made.
    trap 'as_owner "$bindir/pg_ctl" -D "$data" -m immediate stop >/dev/null 2>&1 || true; rm -rf "$dir"' ERR

    # --no-sync only skips initdb's final flush of the template files; the server keeps fsync=on.
    as_owner "$bindir/initdb" -D "$data" -U postgres --auth=trust -E UTF8 --no-locale --no-sync \
        >"$dir/initdb.log" 2>&1 || { log "initdb failed:"; cat "$dir/initdb.log" >&2; false; }
    # Unix socket (private dir) and 127.0.0.1 only.
    as_owner tee "$data/pg_hba.conf" >/dev/null <<'HBA'
local   all   all                 trust
host    all   all   127.0.0.1/32  trust
HBA

    local started=0 attempt
    for attempt in 1 2 3; do
        port=$(free_port)
        if as_owner "$bindir/pg_ctl" -D "$data" -l "$dir/postgres.log" -w -t 60 -o \
            "-c port=$port -c listen_addresses=127.0.0.1 -c unix_socket_directories=$dir -c max_connections=200 -c shared_buffers=128MB" \
            start >/dev/null 2>&1; then
            started=1
            break
        fi
        log "start on port $port failed (attempt $attempt); log tail:"
        tail -n 5 "$dir/postgres.log" >&2 || true
    done
    [[ $started == 1 ]] || { log "could not start PostgreSQL"; false; }

    deadline=$((SECONDS + 60))
    until "$bindir/pg_isready" -q -h 127.0.0.1 -p "$port" -U postgres -d postgres; do
        if ((SECONDS > deadline)); then
            log "PostgreSQL not ready after 60 s; log tail:"
            tail -n 20 "$dir/postgres.log" >&2 || true
            false
        fi
        sleep 0.2
    done
    trap - ERR
    log "PostgreSQL $("$bindir/postgres" --version | awk '{print $3}') on 127.0.0.1:$port (dir $dir)"
    echo "SENDGUARD_TEST_PG_URL=postgresql+psycopg://postgres@127.0.0.1:$port/postgres"
    echo "SENDGUARD_TEST_PG_DIR=$dir"
}

cmd_stop() {
    local dir=${1:?usage: pg-cluster.sh stop DIR}
    # Refuse to touch anything this script did not create.
    [[ -d "$dir" ]] || return 0
    [[ -f "$dir/$MARKER" ]] || { log "refusing to stop/delete $dir: not a cluster made by this script"; exit 1; }
    local bindir pid
    if [[ -f "$dir/data/postmaster.pid" ]]; then
        if bindir=$(find_bindir); then
            as_owner "$bindir/pg_ctl" -D "$dir/data" -m fast -w -t 30 stop >/dev/null 2>&1 \
                || as_owner "$bindir/pg_ctl" -D "$dir/data" -m immediate -w -t 30 stop >/dev/null 2>&1 \
                || true
        fi
        # Last resort: the postmaster of THIS data dir only.
        if [[ -f "$dir/data/postmaster.pid" ]]; then
            pid=$(head -n 1 "$dir/data/postmaster.pid" 2>/dev/null || true)
            if [[ "$pid" =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null; then
                kill -KILL "$pid" 2>/dev/null || true
                sleep 0.5
            fi
        fi
    fi
    rm -rf "$dir"
}

case "${1:-}" in
    start) cmd_start ;;
    stop) shift; cmd_stop "$@" ;;
    bindir) find_bindir ;;
    *) echo "usage: $0 start | stop DIR | bindir" >&2; exit 2 ;;
esac
