# Copyright: Contributors to the ecrkit.images project
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""What the tests of layout.py, partial.py and prune.py share: small blobs and descriptors, a listing of a
layout, a worker process that runs a script against a layout, partial downloads on disk, a fresh layout."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import re
import textwrap
from dataclasses import dataclass

import pytest

from ansible_collections.ecrkit.images.plugins.module_utils import layout as layout_mod
from ansible_collections.ecrkit.images.plugins.module_utils.layout import OciLayout

# the directory holding ansible_collections/, for worker processes
COLLECTIONS_ROOT = os.path.abspath(os.path.join(os.path.dirname(layout_mod.__file__), *[".."] * 5))
needs_skopeo = pytest.mark.skipif(shutil.which("skopeo") is None, reason="skopeo is not installed")
needs_umoci = pytest.mark.skipif(shutil.which("umoci") is None, reason="umoci is not installed")
MANIFEST_TYPE = "application/vnd.oci.image.manifest.v1+json"


def sha(data):
    return "sha256:" + hashlib.sha256(data).hexdigest()


def descriptor(data, media_type=MANIFEST_TYPE):
    return {"mediaType": media_type, "digest": sha(data), "size": len(data)}


def listing(root):
    result = []
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            result.append(os.path.relpath(os.path.join(dirpath, name), root))
    return sorted(result)


def run_worker(script, *args):
    env = dict(os.environ, PYTHONPATH=COLLECTIONS_ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(script)] + [str(arg) for arg in args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@dataclass(frozen=True)
class Partial:
    """A download in progress found on disk."""

    digest: str
    path: str
    size: int
    journal: bool


def partials_of(layout):
    """The partial downloads in ``layout``, sorted by digest: what a test looks for after a pull or a cleanup."""
    directory = layout.partials.directory
    names = set(os.listdir(directory)) if os.path.isdir(directory) else set()
    return [Partial("sha256:" + name, os.path.join(directory, name), os.path.getsize(os.path.join(directory, name)),
                    name + ".journal" in names)
            for name in sorted(names) if re.fullmatch(r"[0-9a-f]{64}", name) and os.path.isfile(os.path.join(directory, name))]


def write_partial(layout, data):
    digest = sha(data)
    path = layout.partials.path(digest)
    with open(path, "wb") as handle:
        handle.write(data)
    return digest, path


@pytest.fixture(name="layout")
def fixture_layout(tmp_path):
    return OciLayout(tmp_path / "layout", create=True)


def tool(*argv):
    result = subprocess.run(list(argv), capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, f"{argv}: {result.stderr}"
    return result.stdout
