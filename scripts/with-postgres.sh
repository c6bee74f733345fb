#!/usr/bin/env bash
# Run a command with SENDGUARD_TEST_PG_URL pointing at a PostgreSQL admin URL.
#
#   scripts/with-postgres.sh .venv/bin/pytest -q
#
# If SENDGUARD_TEST_PG_URL is already set, the command just runs against that server.
# Otherwise, when PostgreSQL binaries exist (/usr/lib/postgresql/*/bin/initdb, highest version), a
# throwaway cluster is started (scripts/pg-cluster.sh), exported as
# SENDGUARD_TEST_PG_URL=postgresql+psycopg://postgres@127.0.0.1:PORT/postgres, and always stopped
# and deleted when the command ends. Without binaries the command runs without it (the test fixtures
# then skip PostgreSQL tests loudly, or fail them when CI or SENDGUARD_REQUIRE_PG is set).
# Exits with the command's exit code.
set -euo pipefail

[[ $# -gt 0 ]] || { echo "usage: $0 COMMAND [ARGS...]" >&2; exit 2; }
here=$(cd "$(dirname "$0")" && pwd)

if [[ -n "${SENDGUARD_TEST_PG_URL:-}" ]]; then
    echo "with-postgres: using the given SENDGUARD_TEST_PG_URL" >&2
    exec "$@"
fi
if ! "$here/pg-cluster.sh" bindir >/dev/null 2>&1; then
    echo "with-postgres: WARNING: PostgreSQL binaries not found; running without PostgreSQL" >&2
    exec "$@"
fi

pg_dir=""
cleanup() {
    if [[ -n "$pg_dir" ]]; then
        "$here/pg-cluster.sh" stop "$pg_dir" || true
        echo "with-postgres: cluster stopped and removed" >&2
    fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

out=$("$here/pg-cluster.sh" start)
while IFS='=' read -r key value; do
    case "$key" in
        SENDGUARD_TEST_PG_URL) export SENDGUARD_TEST_PG_URL="$value" ;;
        SENDGUARD_TEST_PG_DIR) pg_dir="$value" ;;
    esac
done <<<"$out"
[[ -n "$pg_dir" && -n "${SENDGUARD_TEST_PG_URL:-}" ]] || { echo "with-postgres: bad output from pg-cluster.sh: $out" >&2; exit 1; }

set +e
"$@"
rc=$?
set -e
exit "$rc"
