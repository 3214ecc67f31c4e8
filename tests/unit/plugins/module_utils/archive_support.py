# -*- coding: utf-8 -*-
# Copyright: Contributors to the ecrkit.images project
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""What the tests of archive.py, archive_read.py and tararchive.py share: a layout of sample images, skopeo,
members added to a hand-made tar, a docker-archive's manifest.json, reading an archive as a push source,
and a call run against a deadline that fails a test instead of hanging it."""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import threading

import pytest

from ansible_collections.ecrkit.images.plugins.module_utils.archive import OCI_ARCHIVE
from ansible_collections.ecrkit.images.plugins.module_utils.archive_read import open_docker_archive, open_oci_archive
from ansible_collections.ecrkit.images.plugins.module_utils.layout import OciLayout

EMULATOR_DIR = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "..", "emulator"))
if EMULATOR_DIR not in sys.path:
    sys.path.insert(0, EMULATOR_DIR)

# pylint: disable=wrong-import-position
import sample_images as si  # noqa: E402


needs_skopeo = pytest.mark.skipif(shutil.which("skopeo") is None, reason="skopeo is not installed")
PLATFORMS = ["linux/amd64", "linux/arm64/v8"]


def sha(data):
    return "sha256:" + hashlib.sha256(data).hexdigest()


def tool(*argv):
    result = subprocess.run(list(argv), capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, f"{argv}: {result.stderr}"
    return result.stdout


@pytest.fixture(name="images", scope="module")
def fixture_images(tmp_path_factory):
    """One layout holding several images that share layers."""
    root = str(tmp_path_factory.mktemp("images") / "layout")
    built = {
        "single": si.build_image(root, "single", si.demo_layers()),
        "multi": si.build_demo_image(root, "multi", platforms=PLATFORMS),
        "docker": si.build_demo_image(root, "docker", docker=True),
        "plain": si.build_random_image(root, "plain", count=2, size=96 * 1024, seed=3, compress=False),
    }
    return OciLayout(root), built


def add_file(tar, name, data=b"x", **fields):
    info = tarfile.TarInfo(name)
    info.size = len(data)
    for key, value in fields.items():
        setattr(info, key, value)
    tar.addfile(info, io.BytesIO(data))


def add_link(tar, name, target, kind=tarfile.SYMTYPE):
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = target
    tar.addfile(info)


def docker_manifest(layers, config="config.json"):
    return json.dumps([{"Config": config, "RepoTags": ["a:1"], "Layers": layers}]).encode()


def valid_members(tar):
    add_file(tar, "config.json", b"{}")
    add_file(tar, "layer.tar", b"layer")


def read_as_push_source(path, archive_format):
    opener = open_oci_archive if archive_format == OCI_ARCHIVE else open_docker_archive
    with opener(path):
        pass


def within_deadline(action, release=None, timeout=30):
    """``action()`` in a thread: ("returned", value) or ("raised", exception); ("hung", None) when it is
    still running after ``timeout`` seconds, after which ``release()`` unblocks it, so a regression fails
    the test instead of hanging it."""
    outcome = []

    def run():
        try:
            outcome.append(("returned", action()))
        except BaseException as exc:  # pylint: disable=broad-except
            outcome.append(("raised", exc))

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        if release is not None:
            release()
        thread.join(timeout)
        return ("hung", None)
    return outcome[0]


def release_fifo(path):
    """Unblock whoever waits to open the FIFO at ``path`` for reading."""
    def release():
        try:
            os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))
        except OSError:
            pass
    return release


def one_sentence(exc):
    text = str(exc)
    assert text.endswith(".") and "\n" not in text and "Traceback" not in text, text
    return text
