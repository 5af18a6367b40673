# Sourced by scripts/test, scripts/demo and scripts/bench: makes .venv (Python 3.11+) and installs
# dfjob into it with its extras, again whenever setup.cfg changes.
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$root/.venv"

if [ ! -x "$venv/bin/python" ]; then
  python=""
  for candidate in python3.13 python3.12 python3.11 python3; do
    if command -v "$candidate" >/dev/null 2>&1 &&
      "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
      python="$candidate"
      break
    fi
  done
  if [ -z "$python" ]; then
    echo "Error: dfjob needs Python 3.11 or newer (python3.11 or python3 on PATH)" >&2
    exit 1
  fi
  "$python" -m venv "$venv"
fi

stamp="$venv/.dfjob-installed"
if [ ! -f "$stamp" ] || [ "$root/setup.cfg" -nt "$stamp" ]; then
  echo "Installing dfjob and its test tools into .venv ..." >&2
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade pip >&2
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -e "$root[postgres,test,web]" >&2
  touch "$stamp"
fi
# An editable install compiles nothing: compile dfjob's bytecode now (only what changed), so every
# dfjob process started from here reads it even where PYTHONDONTWRITEBYTECODE is set.
"$venv/bin/python" -m compileall -q "$root/dfjob" >/dev/null
export PATH="$venv/bin:$PATH"
