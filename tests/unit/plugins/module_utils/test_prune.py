# Copyright: Contributors to the ecrkit.images project
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Pruning an OCI layout (module_utils/prune.py): only unreferenced blobs go, shared layers and
downloads in progress stay, and a pull writing into the layout meanwhile is never broken."""

from __future__ import annotations

import fcntl
import json
import os
import sys
import time

import pytest

from ansible_collections.ecrkit.images.plugins.module_utils.digest import digest_hex
from ansible_collections.ecrkit.images.plugins.module_utils.hostfs import LockTimeoutError
from ansible_collections.ecrkit.images.plugins.module_utils.layout import OciLayout
from ansible_collections.ecrkit.images.plugins.module_utils.layout_format import BLOB_PRESENT
from ansible_collections.ecrkit.images.plugins.module_utils.prune import prune_layout

HERE = os.path.dirname(os.path.abspath(__file__))
EMULATOR_DIR = os.path.normpath(os.path.join(HERE, "..", "..", "..", "emulator"))
for directory in (EMULATOR_DIR, HERE):  # the local ECR endpoint's image builder, the helpers beside
    if directory not in sys.path:
        sys.path.insert(0, directory)

# pylint: disable=wrong-import-position,unused-import
import sample_images as si  # noqa: E402
from layout_support import (  # noqa: E402,F401
    descriptor, fixture_layout, listing, needs_umoci, partials_of, run_worker, sha, tool, write_partial)


# pruning -----------------------------------------------------------------------------------------

def stored_digests(root):
    return {"sha256:" + name for name in os.listdir(os.path.join(root, "blobs", "sha256"))}


def image_digests(*images):
    return {blob.digest for image in images for blob in image.blob_descriptors()}


def stamp_path(root, digest):
    return os.path.join(root, ".ecrkit", "verified", digest_hex(digest))


def stamp_everything(layout):
    for name in os.listdir(os.path.join(layout.root, "blobs", "sha256")):
        info = os.stat(layout.blob_path("sha256:" + name))
        assert layout.verified_status("sha256:" + name, info.st_size) == BLOB_PRESENT


@pytest.fixture(name="moved")
def fixture_moved(tmp_path):
    """A layout whose tag web moved from old to new; side shares old's layers, multi is an index."""
    root = str(tmp_path / "layout")
    old = si.build_random_image(root, "web", count=2, size=4096, seed="web")
    side = si.build_random_image(root, "side", count=3, size=4096, seed="web")  # old's two layers, and one more
    multi = si.build_random_image(root, "multi", count=1, size=4096, seed="m", platforms=["linux/amd64", "linux/arm64/v8"])
    new = si.build_random_image(root, "web", count=1, size=4096, seed="new")
    layout = OciLayout(root)
    stamp_everything(layout)
    return layout, {"old": old, "side": side, "multi": multi, "new": new}


def test_prune_removes_only_unreferenced_blobs_and_keeps_shared_layers(moved):
    layout, images = moved
    garbage = {images["old"].digest, images["old"].config_digest}
    assert image_digests(images["old"]) - image_digests(images["side"], images["new"]) == garbage
    kept = image_digests(images["side"], images["multi"], images["new"])
    result = prune_layout(layout)
    assert not result.skipped
    assert {digest for digest, dummy in result.removed} == garbage
    assert result.bytes_freed == images["old"].size + images["old"].manifests[0].config.size
    assert stored_digests(layout.root) == kept
    for digest in garbage:
        assert not os.path.exists(stamp_path(layout.root, digest))  # the stamps of removed blobs went too
    for digest in kept:
        assert os.path.exists(stamp_path(layout.root, digest))
    for tag in ("web", "side", "multi"):  # every image is still whole
        entry = layout.find_tag(tag)
        assert layout.has_blob(entry["digest"], entry["size"], verify=True)
    for blob in (images["side"].blob_descriptors() + images["multi"].blob_descriptors() + images["new"].blob_descriptors()):
        assert layout.has_blob(blob.digest, blob.size, verify=True)
    again = prune_layout(layout)
    assert again.removed == () and again.bytes_freed == 0 and not again.skipped


def test_prune_never_touches_partials_temp_files_or_what_it_did_not_make(moved):
    layout, images = moved
    digest, partial = write_partial(layout, b"half a layer")
    with open(partial + ".journal", "w", encoding="utf-8") as handle:
        handle.write("{}")
    blobs = os.path.join(layout.root, "blobs", "sha256")
    with open(os.path.join(blobs, "README"), "w", encoding="utf-8") as handle:
        handle.write("not a blob")
    os.mkdir(os.path.join(blobs, "0" * 64))
    os.symlink("/etc/passwd", os.path.join(blobs, "1" * 64))
    orphan = stamp_path(layout.root, sha(b"gone"))
    with open(orphan, "w", encoding="utf-8") as handle:
        handle.write("1 2 3 4\n")
    result = prune_layout(layout)
    assert {digest for digest, dummy in result.removed} == {images["old"].digest, images["old"].config_digest}
    assert os.path.exists(partial) and os.path.exists(partial + ".journal")
    assert [item.digest for item in partials_of(layout)] == [digest]
    for name in ("README", "0" * 64, "1" * 64):
        assert os.path.lexists(os.path.join(blobs, name))
    assert not os.path.exists(orphan)  # a stamp without its blob is only clutter


def test_prune_in_check_mode_reports_and_removes_nothing(moved):
    layout, images = moved
    before = listing(layout.root)
    result = prune_layout(layout, check_mode=True)
    assert {digest for digest, dummy in result.removed} == {images["old"].digest, images["old"].config_digest}
    assert result.bytes_freed > 0 and listing(layout.root) == before
    # a pull in check mode: what would go once its entry replaced the one of that name (here side's, by a
    # new image that keeps one of side's layers)
    keep = {images["side"].layers[0].digest}
    would = prune_layout(layout, check_mode=True, replacing="side", keep=keep)
    side_only = image_digests(images["side"]) - image_digests(images["new"], images["multi"]) - keep
    assert {digest for digest, dummy in would.removed} == side_only | {images["old"].digest, images["old"].config_digest}
    assert listing(layout.root) == before


def test_prune_removes_nothing_when_what_an_entry_references_is_uncertain(moved):
    layout, images = moved
    child = images["multi"].manifests[0].digest
    os.rename(layout.blob_path(child), layout.blob_path(child) + ".away")  # an index whose child is missing
    result = prune_layout(layout)
    assert result.removed == () and "Nothing was pruned" in result.skipped and child in result.skipped
    assert len(result.skipped.splitlines()) == 1
    os.rename(layout.blob_path(child) + ".away", layout.blob_path(child))
    # a schema 1 manifest lists its layers in a way this collection does not read: nothing is removed
    schema1 = json.dumps({"schemaVersion": 1, "name": "x", "tag": "y", "fsLayers": []}).encode()
    layout.set_tag("old-style", {"mediaType": "application/vnd.docker.distribution.manifest.v1+prettyjws",
                                 "digest": layout.write_blob(schema1), "size": len(schema1)})
    result = prune_layout(layout)
    assert result.removed == () and "schema 1" in result.skipped


def test_prune_treats_blobs_that_are_not_manifests_as_leaves(tmp_path):
    layout = OciLayout(tmp_path / "layout", create=True)
    artifact = b"just some bytes, referenced directly by an entry"
    layout.write_blob(artifact)
    layout.set_tag("artifact", descriptor(artifact, "application/octet-stream"))
    garbage = layout.write_blob(b"nobody's")
    result = prune_layout(layout)
    assert [digest for digest, dummy in result.removed] == [garbage]
    assert layout.read_blob(sha(artifact)) == artifact


def test_a_writer_waits_for_a_prune_and_a_prune_for_writers(layout):
    fd = os.open(os.path.join(layout.root, ".ecrkit", "writers"), os.O_RDONLY | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # a prune in progress elsewhere
        with pytest.raises(LockTimeoutError, match="waiting for the pruning of the OCI layout"):
            OciLayout(layout.root).begin_writing(timeout=0.2)
        fcntl.flock(fd, fcntl.LOCK_SH)  # now a writer elsewhere
        writer = OciLayout(layout.root)
        writer.begin_writing(timeout=0.2)  # writers do not exclude each other
        writer.begin_writing(timeout=0.2)  # nor itself
        skipped = prune_layout(OciLayout(layout.root), wait=0.2)
        assert skipped.removed == () and "another run was still writing into it after 0.2 s" in skipped.skipped
        writer.end_writing()
    finally:
        os.close(fd)
    assert not prune_layout(OciLayout(layout.root), wait=0.2).skipped
    # a layout's own announcement never keeps its own prune waiting
    layout.begin_writing()
    assert not prune_layout(layout, wait=0.2).skipped and layout._writers_fd is None  # pylint: disable=protected-access


MID_PULL = """
    import hashlib, json, os, sys, time
    from ansible_collections.ecrkit.images.plugins.module_utils.layout import OciLayout
    root, ready, go = sys.argv[1], sys.argv[2], sys.argv[3]
    layout = OciLayout(root)
    layout.begin_writing()
    data = os.urandom(300000)
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    with layout.partials.claim(digest) as path:
        with open(path, "wb") as handle:
            handle.write(data)
        layout.commit_blob(path, digest, len(data))        # committed, not referenced yet
    manifest = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                           "config": {"mediaType": "application/vnd.oci.empty.v1+json", "digest": digest, "size": len(data)},
                           "layers": []}).encode()
    top = layout.write_blob(manifest)
    open(ready, "w").close()
    deadline = time.monotonic() + 60
    while not os.path.exists(go) and time.monotonic() < deadline:
        time.sleep(0.01)
    layout.set_tag("concurrent", {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": top,
                                  "size": len(manifest)})
    layout.end_writing()
    print(json.dumps([digest, top]))
"""


def test_a_pull_in_progress_in_another_process_is_never_broken_by_a_prune(moved, tmp_path):
    layout, images = moved
    ready, go = tmp_path / "ready", tmp_path / "go"
    worker = run_worker(MID_PULL, layout.root, ready, go)
    try:
        deadline = time.monotonic() + 60
        while not ready.exists():
            assert worker.poll() is None and time.monotonic() < deadline, worker.stderr.read() if worker.poll() else ""
            time.sleep(0.01)
        skipped = prune_layout(layout, wait=0.3)  # the other run's blobs are committed but not referenced yet
        assert skipped.removed == () and skipped.skipped
        assert layout.has_blob(images["old"].digest, images["old"].size)
        go.touch()
        result = prune_layout(layout, wait=60)  # waits for the other run to store its entry, then prunes
        out, err = worker.communicate(timeout=60)
        assert worker.returncode == 0, err
    finally:
        go.touch()
        if worker.poll() is None:
            worker.kill()
            worker.communicate()
    blob, top = json.loads(out)
    assert not result.skipped
    assert {digest for digest, dummy in result.removed} == {images["old"].digest, images["old"].config_digest}
    assert layout.find_tag("concurrent")["digest"] == top
    assert layout.has_blob(top, len(layout.read_blob(top)), verify=True) and layout.has_blob(blob, 300000, verify=True)


@needs_umoci
def test_umoci_reads_every_image_left_after_a_prune(moved):
    layout, dummy = moved
    assert prune_layout(layout).removed
    for tag in ("web", "side"):
        tool("umoci", "stat", "--image", f"{layout.root}:{tag}")
    left = stored_digests(layout.root)
    tool("umoci", "gc", "--layout", layout.root)
    assert stored_digests(layout.root) == left  # umoci agrees: nothing it would collect is left
