#!/usr/bin/env bash
# Build the patched megatron-core wheel and the primus-runtime wheel for this image's Python.
#
# Run by the Dockerfiles' first stage (FROM the same base image as the training image), and by
# tests/docker/test_docker_steps.py in a fresh venv. The compiler runs from its own venv, made
# from the image's interpreter: same ABI, so the wheel's compiled helper (helpers_cpp) is for the
# image's Python, while libcst, GitPython and the rest never reach the training image.
#
# Environment (defaults are the Dockerfiles' layout):
#   PYTHON        the image's interpreter (python3)
#   SRC           the primus-rewriter checkout (the folder above this script)
#   OUT           where everything goes: OUT/build (wheel, manifest, report, diffs), OUT/wheels (/out)
#   BUILD_VENV    the compiler's venv (/opt/primus-rewriter)
#   UPSTREAM_SHA  upstream commit to build (empty: the pin in vendor/upstream.yaml)
#   PATCHSET      patchset version (empty: the newest)
set -euo pipefail

PYTHON=${PYTHON:-python3}
SRC=${SRC:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}
OUT=${OUT:-/out}
BUILD_VENV=${BUILD_VENV:-/opt/primus-rewriter}
UPSTREAM_SHA=${UPSTREAM_SHA:-}
PATCHSET=${PATCHSET:-}

for tool in git c++; do
    if ! command -v "$tool" >/dev/null; then
        echo "error: build-wheels.sh needs '$tool' in the image (git imports the upstream sdist, c++ compiles its helper)" >&2
        exit 1
    fi
done

"$PYTHON" -m venv "$BUILD_VENV"
"$BUILD_VENV/bin/python" -m pip install --no-cache-dir --quiet "$SRC"

args=(build --root "$SRC" --out "$OUT/build" --no-cache)
if [ -n "$UPSTREAM_SHA" ]; then args+=(--upstream "$UPSTREAM_SHA"); fi
if [ -n "$PATCHSET" ]; then args+=(--patchset "$PATCHSET"); fi
(cd "$SRC" && "$BUILD_VENV/bin/python" -m rewriter "${args[@]}")

mkdir -p "$OUT/wheels"
cp "$OUT"/build/megatron_core-*.whl "$OUT/wheels/"
"$BUILD_VENV/bin/python" -m pip wheel --no-cache-dir --quiet --no-deps --no-build-isolation \
    -w "$OUT/wheels" "$SRC/primus-runtime"
ls "$OUT/wheels"
