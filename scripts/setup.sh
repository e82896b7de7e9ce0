#!/usr/bin/env bash
# Create .venv with the pinned dependencies. Idempotent: a second run checks a stamp and returns.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3.11}
VENV=${VENV:-.venv}
stamp="$VENV/.setup-stamp"
want=$(cat requirements.txt pyproject.toml | sha256sum | cut -d' ' -f1)

if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  echo "setup: $VENV is up to date"
  exit 0
fi

if ! command -v "$PYTHON" >/dev/null; then
  echo "setup: $PYTHON not found; install Python 3.11 (or set PYTHON=/path/to/python3.11)" >&2
  exit 1
fi
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
pip_quiet() {  # drop this machine's notes about absent local index mirrors
  "$VENV/bin/python" -m pip "$@" 2>&1 | { grep -v "Location .* is ignored" || true; }
}
echo "setup: installing pinned dependencies into $VENV"
pip_quiet install -q --upgrade pip
pip_quiet install -q -r requirements.txt
pip_quiet install -q --no-deps --no-build-isolation -e .

# perf_analyzer (shipped by tritonclient) needs Debian's libb64.
if ! ldconfig -p 2>/dev/null | grep -q 'libb64.so.0d'; then
  if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
    echo "setup: installing libb64-0d (for perf_analyzer)"
    (apt-get install -y -q libb64-0d >/dev/null 2>&1 || { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q libb64-0d >/dev/null 2>&1; }) \
      || echo "setup: could not install libb64-0d; perf_analyzer needs it (apt-get install libb64-0d)" >&2
  else
    echo "setup: perf_analyzer needs libb64-0d: install it by hand (apt-get install libb64-0d); going on" >&2
  fi
fi
# The C++ CPU path of pool_cross is built with this machine's compiler (kernels/cpu_native.py).
if ! command -v c++ >/dev/null && command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
  echo "setup: installing g++ (for the C++ CPU path of pool_cross)"
  (apt-get install -y -q g++ >/dev/null 2>&1 || { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q g++ >/dev/null 2>&1; }) \
    || echo "setup: could not install g++; pool_cross will use its TorchScript CPU path" >&2
fi
"$VENV/bin/python" -m kernels.cpu_native >/dev/null 2>&1 \
  || echo "setup: the C++ CPU path of pool_cross did not build (python -m kernels.cpu_native says why); the TorchScript path stands in" >&2
echo "$want" > "$stamp"
echo "setup: done ($VENV)"
