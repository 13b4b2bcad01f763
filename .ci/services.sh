#!/usr/bin/env bash
# Sourced by .ci/run: installs (Debian packages) and starts what the service tests need:
# a throw-away PostgreSQL server on 127.0.0.1:55432 and Chromium for the browser test.
# Exports FACECHECK_TEST_POSTGRES_URL; stops the server when the calling shell exits.
set -euo pipefail

need=()
command -v chromium >/dev/null || need+=(chromium)
ls -d /usr/lib/postgresql/*/bin >/dev/null 2>&1 || need+=(postgresql)
if ((${#need[@]})); then
    SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
    $SUDO apt-get update -q >/dev/null
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends "${need[@]}" >/dev/null
fi

PGBIN=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
PGDATA=$(mktemp -d /tmp/facecheck-pg.XXXXXX)
PGPORT=${FACECHECK_TEST_PGPORT:-55432}
AS=()
if [ "$(id -u)" = 0 ]; then  # postgres refuses to run as root
    chown postgres "$PGDATA"
    AS=(runuser -u postgres --)
fi
"${AS[@]}" "$PGBIN/initdb" -D "$PGDATA" -A trust -U postgres >/dev/null
"${AS[@]}" "$PGBIN/pg_ctl" -D "$PGDATA" -l "$PGDATA/server.log" -w \
    -o "-p $PGPORT -k $PGDATA -c listen_addresses=127.0.0.1 -c fsync=on" start >/dev/null
trap '"${AS[@]}" "$PGBIN/pg_ctl" -D "$PGDATA" -m immediate stop >/dev/null 2>&1 || true' EXIT
export FACECHECK_TEST_POSTGRES_URL="postgresql+psycopg://postgres@127.0.0.1:$PGPORT/postgres"
echo "PostgreSQL $("$PGBIN/postgres" --version | awk '{print $3}') on 127.0.0.1:$PGPORT; $(chromium --version 2>/dev/null | head -1)"
