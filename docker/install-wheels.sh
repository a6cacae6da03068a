#!/usr/bin/env bash
# Install the patched megatron-core and primus-runtime wheels into the image's Python, keeping the
# image's own torch (a ROCm or CUDA build), then check that the runtime sees the patched build.
#
# Run by the Dockerfiles' second stage, and by tests/docker/test_docker_steps.py in a fresh venv.
#
# Environment:
#   PYTHON   the image's interpreter (python3)
#   WHEELS   the folder of the two wheels (/opt/primus/build/wheels)
set -euo pipefail

PYTHON=${PYTHON:-python3}
WHEELS=${WHEELS:-/opt/primus/build/wheels}
# the image's torch lives in its system Python: installing there is the point
export PIP_BREAK_SYSTEM_PACKAGES=${PIP_BREAK_SYSTEM_PACKAGES:-1}

# pin the torch the image has, so that no dependency resolution swaps it for a PyPI build; a torch
# older than megatron-core asks for then fails here instead of being replaced
constraints=$(mktemp)
trap 'rm -f "$constraints"' EXIT
"$PYTHON" -c 'from importlib.metadata import version; print("torch==" + version("torch"))' > "$constraints"

shopt -s failglob
"$PYTHON" -m pip install --no-cache-dir --quiet --constraint "$constraints" \
    "$WHEELS"/megatron_core-*.whl "$WHEELS"/primus_runtime-*.whl

"$PYTHON" - <<'PY'
from primus_runtime.wheel_info import installed_megatron_core

info = installed_megatron_core()
if not info.patched:
    raise SystemExit(f"megatron-core {info.version} is installed, but not a primus-rewriter build")
print(f"megatron-core {info.version}: patchset {info.patchset_version}, {len(info.flags)} flags")
PY
