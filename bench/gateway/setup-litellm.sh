#!/usr/bin/env bash
# Installs LiteLLM's proxy into target/bench-venv for the gateway benchmark
# (`cargo bench -p flotilla --bench gateway`, docs/benchmarks.md "Model gateway").
# The benchmark skips LiteLLM, saying so, when target/bench-venv/bin/litellm is absent.
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
venv="$root/target/bench-venv"
python="${PYTHON:-python3}"
if [[ ! -x "$venv/bin/python" ]]; then
    "$python" -m venv "$venv"
fi
"$venv/bin/pip" install --quiet --upgrade pip
"$venv/bin/pip" install --quiet "litellm[proxy]${LITELLM_VERSION:+==$LITELLM_VERSION}"
"$venv/bin/python" -c 'import importlib.metadata as m; print("litellm", m.version("litellm"))'
