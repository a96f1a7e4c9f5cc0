# Sourced by the scripts in scripts/: make .venv if missing and install botyard
# into it (editable) with the extras given, e.g. `ensure_venv dev`.
#
# The install is skipped when pyproject.toml is unchanged since the last one with
# these extras: an editable install already follows every change to the sources,
# and pip takes seconds even when there is nothing to do. The stamp is a file in
# .venv holding pyproject.toml's hash; delete it (or .venv) to force an install.
ensure_venv() {
  local python=${PYTHON:-python3}
  local stamp=".venv/.botyard-installed-$1"
  local wanted
  if [ ! -x .venv/bin/python ]; then
    "$python" -m venv .venv
  fi
  wanted=$(.venv/bin/python -c 'import hashlib, sys; print(hashlib.sha256(open("pyproject.toml", "rb").read()).hexdigest())')
  if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$wanted" ]; then
    return 0
  fi
  echo "installing botyard and its dependencies into .venv (once; again when pyproject.toml changes)" >&2
  rm -f "$stamp"
  .venv/bin/python -m pip install --quiet --disable-pip-version-check --upgrade pip
  .venv/bin/python -m pip install --quiet --disable-pip-version-check -e ".[$1]"
  echo "$wanted" > "$stamp"
}
