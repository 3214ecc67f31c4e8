#!/usr/bin/env bash
# Lay the checkout out as DEST (…/ansible_collections/ecrkit/images) for ansible-test, which refuses to
# run anywhere else, and put amazon.aws (bundled by the `ansible` package in the venv) beside it.
# Usage: scripts/layout.sh DEST VENV_PYTHON
set -euo pipefail
dest=$1
python=$2
src=$(cd "$(dirname "$0")/.." && pwd)

mkdir -p "$dest"
cd "$src"
list=$(mktemp)
trap 'rm -f "$list" "$list.old"' EXIT
if git rev-parse --is-inside-work-tree >/dev/null 2>&1; then
    # tracked files plus new ones that .gitignore does not exclude, as in the working tree
    git ls-files -z --cached --others --exclude-standard | while IFS= read -r -d '' f; do
        [ -e "$f" ] && printf '%s\0' "$f"
    done > "$list"
else
    find . \( -path ./.venv -o -path ./.build -o -path ./.git -o -path ./tests/output \) -prune -o -type f -print0 |
        sed -z 's|^\./||' > "$list"
fi
# Refresh in place (others may be running tests in the copy): drop files that are gone, copy the rest.
if [ -d "$dest/.git" ]; then
    git -C "$dest" ls-files -z --cached --others --exclude-standard > "$list.old"
    comm -z -23 <(sort -z "$list.old") <(sort -z "$list") | (cd "$dest" && xargs -0 -r rm -f)
fi
tar --null -T "$list" -cf - | tar -xf - -C "$dest"

# The copy sits inside this (ignored) checkout; its own git repository keeps ansible-test from listing
# files through the outer one, where everything under .build is ignored.
git -C "$dest" init -q

site=$("$python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
# ansible-test bootstraps pip in its sanity virtualenvs with a downloaded get-pip.py; give it the
# offline stand-in under the name it looks for.
pip_version=$("$python" - <<'PY'
import re, ansible_test
from pathlib import Path
source = Path(ansible_test.__file__).parent.joinpath("_internal", "python_requirements.py").read_text()
print(re.search(r"pip='([0-9.]+)'", source).group(1))
PY
)
mkdir -p "$HOME/.ansible/test/cache"
cp "$src/scripts/pip_bootstrap.py" "$HOME/.ansible/test/cache/get_pip_${pip_version//./_}.py"

root=$(dirname "$(dirname "$dest")")
mkdir -p "$root/amazon"
ln -sfn "$site/ansible_collections/amazon/aws" "$root/amazon/aws"
