#!/usr/bin/env bash
# Build an overlay directory holding the openpi-patched transformers that LeRobot 0.4.4's pi0 / pi05 need,
# without touching the base environment (which keeps stock transformers 4.57 for SmolVLA, X-VLA, PEFT, ...).
#
#   scripts/make_pi_env.sh [TARGET_DIR]          (default TARGET_DIR: .pi-overlay)
#   PYTHONPATH=TARGET_DIR python -m pytest tests/test_pi0_adapters.py
#
# PYTHON selects the base interpreter (default: python). Idempotent: a target that already imports the patched
# transformers is left as it is. Why an overlay works: PYTHONPATH entries come before site-packages, both for
# `import transformers` and for importlib.metadata, so LeRobot (which detects transformers by its distribution
# name) and transformers' own import-time version checks all see the overlay's packages.
set -euo pipefail

target=${1:-.pi-overlay}
python=${PYTHON:-python}

patched_ok() {
  PYTHONPATH="$target" "$python" - <<'PY' 2>/dev/null
import importlib.metadata as md
import transformers
from transformers.models.siglip import check  # only the openpi fork has this module
assert check.check_whether_transformers_replace_is_installed_correctly()
assert transformers.__version__ == md.version("transformers") == "4.53.3"
assert md.version("tokenizers").startswith("0.21.")
PY
}

if patched_ok; then
  echo "make_pi_env: $target already holds the openpi-patched transformers 4.53.3"
  exit 0
fi

mkdir -p "$target"
# 1. The regular distribution, for its `transformers` dist-info (LeRobot's `is_package_available("transformers")`)
#    and the tokenizers version transformers 4.53 accepts (<0.22; the base has 0.22).
deps=("transformers==4.53.3" "tokenizers>=0.21,<0.22")
# transformers-openpi also requires huggingface-hub<1.0; lerobot 0.4.4 pins <0.36, so the base one normally fits.
if ! "$python" -c 'import huggingface_hub as h, sys; sys.exit(int(h.__version__.split(".")[0]) >= 1)'; then
  deps+=("huggingface-hub>=0.34.2,<0.36")
fi
"$python" -m pip install --quiet --disable-pip-version-check --no-deps --upgrade --target "$target" "${deps[@]}"
# 2. The fork: a full copy of transformers 4.53.3 with the openpi patches (adaRMS Gemma, read-only KV cache,
#    PaliGemma without image scaling, models/siglip/check.py). It overwrites the `transformers/` package of step 1.
"$python" -m pip install --quiet --disable-pip-version-check --no-deps --upgrade --target "$target" \
  "transformers-openpi==4.53.3"

if ! patched_ok; then
  echo "make_pi_env: $target was built but does not import the patched transformers" >&2
  exit 1
fi
echo "make_pi_env: built $target (use PYTHONPATH=$target)"
