#!/usr/bin/env bash
# Put a prebuilt libduckdb.so (DuckDB 1.5.6, the version the `duckdb` crate
# =1.10506.1 binds) in DIR, so the `duckdb` feature links it instead of compiling
# DuckDB's C++ (~24 min on 2 cores). The library comes from the npm registry
# package @duckdb/node-bindings-linux-x64 (DuckDB's own build of the C API for its
# Node bindings); its sha256 is checked. Prints DIR.
#
#   DUCKDB_LIB_DIR="$(scripts/fetch-duckdb.sh)" cargo build --release --features duckdb
#
# Linux x86_64 only. Elsewhere build with `--features duckdb-bundled` instead.
set -euo pipefail
dir="${1:-$HOME/.cache/memhub-duckdb/1.5.6}"
package="@duckdb/node-bindings-linux-x64@1.5.6-r.1"
want="3f4962cdd266eab2b479a5b5a4a6d063d279b2954ae814ed00385d553b747633"

check() { [ -f "$dir/libduckdb.so" ] && echo "$want  $dir/libduckdb.so" | sha256sum --check --status; }

if ! check; then
  if [ "$(uname -sm)" != "Linux x86_64" ]; then
    echo "fetch-duckdb.sh: the prebuilt library is for Linux x86_64; build with --features duckdb-bundled" >&2
    exit 1
  fi
  command -v npm >/dev/null || { echo "fetch-duckdb.sh: npm is needed to fetch $package" >&2; exit 1; }
  echo "fetch-duckdb.sh: fetching libduckdb.so from the npm package $package" >&2
  tmp="$(mktemp -d)"
  trap 'rm -rf "$tmp"' EXIT
  (cd "$tmp" && npm pack --silent "$package" >/dev/null 2>&1 && tar -xzf ./*.tgz package/libduckdb.so)
  mkdir -p "$dir"
  mv "$tmp/package/libduckdb.so" "$dir/libduckdb.so"
  check || { echo "fetch-duckdb.sh: $dir/libduckdb.so does not have the expected sha256" >&2; rm -f "$dir/libduckdb.so"; exit 1; }
fi
echo "$dir"
