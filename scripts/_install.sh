# Shared by scripts/demo and scripts/test: create .venv and install prefixgate into it.
# Usage: source scripts/_install.sh EXTRAS   (e.g. "local" or "local,dev")
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PYTHON=${PYTHON:-python3}
if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
  echo "prefixgate needs Python 3.11 or newer (found $("$PYTHON" --version 2>&1))" >&2
  exit 1
fi
if [ ! -x .venv/bin/python ]; then
  echo "==> creating .venv"
  "$PYTHON" -m venv .venv
fi
echo "==> installing prefixgate[$1] into .venv (the first build of llama.cpp takes 15-20 minutes on 2 cores; pip caches it)"
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e ".[$1]"
