#!/usr/bin/env bash
# The README's test command: make a venv (once), install the project as a user would, run pytest.
#   bash tests/run.sh            # the whole suite
#   bash tests/run.sh -m "not slow" -x
#   VENV=.venv-invokeai6 REQUIREMENTS=tests/requirements-invokeai6.txt bash tests/run.sh -m smoke
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
REQUIREMENTS=${REQUIREMENTS:-requirements.txt}
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check)
if [ ! -x "$VENV/bin/python" ]; then
  "${PYTHON:-python3}" -m venv "$VENV"
fi
"${PIP[@]}" install -q -r "$REQUIREMENTS"
# Installing the package with its dependencies must change no version the requirements installed:
# that is what installing it into InvokeAI's own venv does to InvokeAI's pins. New packages (our
# own dependencies InvokeAI lacks, e.g. textual) may be added; nothing may be up- or downgraded.
before=$("${PIP[@]}" freeze --exclude-editable | grep -iv '^invokeai-ti' | sort || true)
"${PIP[@]}" install -q -e .
after=$("${PIP[@]}" freeze --exclude-editable | grep -iv '^invokeai-ti' | sort || true)
changed=$(comm -23 <(echo "$before") <(echo "$after"))
if [ -n "$changed" ]; then
  echo "installing invokeai-ti changed packages of $REQUIREMENTS (before -> after):" >&2
  diff <(echo "$before") <(echo "$after") >&2 || true
  exit 1
fi
added=$(comm -13 <(echo "$before") <(echo "$after") | tr '\n' ' ')
[ -z "$added" ] || echo "installing invokeai-ti added: $added"
# clip-anytorch only carries the real CLIP vocabulary the tiny test models use; its own
# dependencies (torchvision among them) are not wanted, so pip check passes over it alone.
if ! check=$("${PIP[@]}" check 2>&1); then
  broken=$(echo "$check" | grep -iv '^clip-anytorch ' || true)
  if [ -n "$broken" ]; then
    echo "pip check: $broken" >&2
    exit 1
  fi
fi
"${PIP[@]}" install -q --no-deps clip-anytorch==2.6.0
set +e
"$VENV/bin/python" -m pytest "$@"
status=$?
set -e
if [ "$status" -eq 5 ]; then
  echo "pytest collected no tests: that is a failure here." >&2
fi
exit "$status"
