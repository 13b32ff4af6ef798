#!/usr/bin/env bash
# The README's test command: make a venv (once), install the project as a user would, run pytest.
#   bash tests/run.sh            # the whole suite
#   bash tests/run.sh -m "not slow" -x
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
if [ ! -x "$VENV/bin/python" ]; then
  "${PYTHON:-python3}" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install -q --disable-pip-version-check -r requirements.txt
# clip-anytorch only carries the real CLIP vocabulary the tiny test models use; its own
# dependencies (torchvision among them) are not wanted.
"$VENV/bin/python" -m pip install -q --disable-pip-version-check --no-deps clip-anytorch==2.6.0
"$VENV/bin/python" -m pip install -q --disable-pip-version-check --no-deps -e .
set +e
"$VENV/bin/python" -m pytest "$@"
status=$?
set -e
if [ "$status" -eq 5 ]; then
  echo "pytest collected no tests: that is a failure here." >&2
fi
exit "$status"
