#!/usr/bin/env bash
# Refresh constraints.txt, the tested versions scripts/setup.sh installs, from ./.venv.
#   bash scripts/lock.sh             # pin what .venv holds now
#   bash scripts/lock.sh --upgrade   # first move .venv to the newest releases pip resolves (torch stays 2.13.0)
# Run the tests before committing a new constraints.txt: tests/test_install.py fails while
# the venv and the file disagree, so no upstream release changes a result unnoticed.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${VENV:-.venv}/bin/python
export PIP_DISABLE_PIP_VERSION_CHECK=1
if [ "${1:-}" = "--upgrade" ]; then
  "$PY" -m pip install -q --upgrade -e ".[dev]" "torch==2.13.0"
fi
"$PY" scripts/lock.py > constraints.txt.new
mv constraints.txt.new constraints.txt
echo "wrote constraints.txt ($(grep -c '==' constraints.txt) pins)"
