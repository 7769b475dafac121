#!/usr/bin/env bash
# `make check-prod-install`: the production install has every import it needs.
# It builds the virtualenv the Dockerfile builds (`uv sync --frozen --no-dev --no-editable`:
# the locked runtime dependencies, the workspace packages installed as wheels, no dev
# tools) in a temporary directory, then, with that interpreter only (-I: no PYTHONPATH, no
# user site, not the working directory):
#   - every workspace package (libs/*/src/*, services/*/src/*) is installed, from the venv;
#   - every service's entry point (services/*/src/*/main.py) imports;
#   - every other module of every package imports too, so an import a command makes only
#     when it runs (`paystream migrate`, `paystream bench ...`) is checked as well;
#   - `paystream --help` runs.
# A dependency that only the dev group brings (or that no pyproject.toml declares) fails
# here with the module that needs it.
# Usage: scripts/check_prod_install.sh [ROOT]  (ROOT: the repository to check; default this
# one). uv: $UV, else `uv` on PATH, else .tools/bin/uv (make install bootstraps it).
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
root=$(cd "${1:-$here}" && pwd)
uv=${UV:-$(command -v uv || echo "$here/.tools/bin/uv")}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# uv caches the wheel it built of a workspace package by its pyproject.toml, so an edited
# module would be checked from a stale wheel: every workspace package is rebuilt (seconds).
rebuild=()
for manifest in "$root"/libs/*/pyproject.toml "$root"/services/*/pyproject.toml; do
    rebuild+=(--reinstall-package "$(sed -n 's/^name = "\(.*\)"$/\1/p' "$manifest" | head -1)")
done
echo "== uv sync --frozen --no-dev --no-editable (into a temporary virtualenv)"
UV_PROJECT_ENVIRONMENT=$tmp/venv "$uv" sync --quiet --frozen --no-dev --no-editable \
    "${rebuild[@]}" --project "$root"

packages=$(cd "$root" && for d in libs/*/src/paystream_* services/*/src/paystream_*; do
    [ -f "$d/__init__.py" ] && basename "$d"; done | sort | tr '\n' ' ')
mains=$(cd "$root" && for f in services/*/src/paystream_*/main.py; do
    f=${f%.py}; echo "${f#services/*/src/}" | tr / .; done | sort | tr '\n' ' ')

echo "== imports, with the production virtualenv only"
cd "$tmp"  # nothing of the checkout is importable from here
env -u PYTHONPATH "$tmp/venv/bin/python" -I - "$packages" "$mains" <<'PY'
import importlib
import pkgutil
import sys
import traceback

packages, mains = sys.argv[1].split(), sys.argv[2].split()
failed: list[str] = []


def load(name: str) -> None:
    if name in failed:  # an entry point reported already
        return
    try:
        importlib.import_module(name)
    except BaseException:  # a SystemExit or KeyboardInterrupt at import is a failure too
        failed.append(name)
        # The innermost frame is the import that failed, in the module that makes it.
        print(f"FAILED import {name}:\n{traceback.format_exc(limit=-1)}", file=sys.stderr)


for name in mains:
    load(name)
print(f"entry points: {len(mains) - len(failed)}/{len(mains)} import")
count = 0
for top in packages:
    try:
        package = importlib.import_module(top)
    except BaseException:
        failed.append(top)
        print(f"FAILED: {top} is not installed:\n{traceback.format_exc()}", file=sys.stderr)
        continue
    if not (package.__file__ or "").startswith(sys.prefix):
        failed.append(top)
        print(f"FAILED: {top} comes from {package.__file__}, not {sys.prefix}", file=sys.stderr)
    modules = pkgutil.walk_packages(package.__path__, f"{top}.", onerror=failed.append)
    for module in modules:
        count += 1
        load(module.name)
print(f"modules: {count} in {len(packages)} packages")
if failed:
    sys.exit(f"check-prod-install: FAILED: {' '.join(sorted(set(failed)))}")
PY

echo "== paystream --help"
"$tmp/venv/bin/paystream" --help >/dev/null
echo "check-prod-install: all passed"
