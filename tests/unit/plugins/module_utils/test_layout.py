# -*- coding: utf-8 -*-
# Copyright: Contributors to the ecrkit.images project
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Tests for plugins/module_utils/layout.py: the OCI layout blob store, its index and its locks.

Real tools (skopeo, umoci) read what is written; each such test is skipped only when its binary is
missing. Concurrency is tested with real processes.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import sys
import threading
import time

import pytest

from ansible_collections.ecrkit.images.plugins.module_utils import layout as layout_mod
from ansible_collections.ecrkit.images.plugins.module_utils.digest import InvalidDigestError
from ansible_collections.ecrkit.images.plugins.module_utils.errors import DiskFullError, EcrkitError, NotWritableError
from ansible_collections.ecrkit.images.plugins.module_utils.hostfs import LockTimeoutError
from ansible_collections.ecrkit.images.plugins.module_utils.layout import OciLayout
from ansible_collections.ecrkit.images.plugins.module_utils.layout_format import (
    BLOB_DIGEST_MISMATCH,
    BLOB_MISSING,
    BLOB_NOT_A_FILE,
    BLOB_PRESENT,
    BLOB_SIZE_MISMATCH,
    REF_NAME_ANNOTATION,
    BlobMismatchError,
    BlobNotFoundError,
    CorruptIndexError,
    InvalidDescriptorError,
    LayoutError,
    LayoutSymlinkError,
    NotALayoutError,
    translate_os_error,
)

EMULATOR_DIR = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "..", "emulator"))
for directory in (EMULATOR_DIR, os.path.dirname(os.path.abspath(__file__))):  # the endpoint, the helpers beside
    if directory not in sys.path:
        sys.path.insert(0, directory)

import sample_images as si  # noqa: E402  pylint: disable=wrong-import-position
from layout_support import (  # noqa: E402  pylint: disable=wrong-import-position,unused-import
    COLLECTIONS_ROOT, MANIFEST_TYPE, descriptor, fixture_layout, listing, needs_skopeo, needs_umoci, partials_of, run_worker,
    sha, tool, write_partial,
)


# opening and creating ----------------------------------------------------------------------------

def test_create_makes_a_valid_empty_layout(tmp_path):
    root = tmp_path / "new" / "layout"
    layout = OciLayout(root, create=True)
    assert layout.root == str(root)
    with open(root / "oci-layout", "rb") as handle:
        assert json.loads(handle.read()) == {"imageLayoutVersion": "1.0.0"}
    assert layout.read_index()["manifests"] == []
    assert (root / "blobs" / "sha256").is_dir()
    # opening it again, with or without create, changes nothing
    before = listing(root)
    OciLayout(root)
    OciLayout(root, create=True)
    assert listing(root) == before


def test_open_missing_directory_without_create(tmp_path):
    with pytest.raises(NotALayoutError, match="does not exist"):
        OciLayout(tmp_path / "absent")
    assert not (tmp_path / "absent").exists()


def test_open_a_file_is_refused(tmp_path):
    (tmp_path / "file").write_bytes(b"x")
    with pytest.raises(NotALayoutError, match="is not a directory"):
        OciLayout(tmp_path / "file", create=True)


def test_foreign_directory_is_refused_and_left_alone(tmp_path):
    root = tmp_path / "home"
    root.mkdir()
    (root / "notes.txt").write_text("mine")
    (root / "blobs").mkdir()
    with pytest.raises(NotALayoutError, match=r"not empty and is not an OCI image layout \(it holds notes.txt\)") as info:
        OciLayout(root, create=True)
    assert isinstance(info.value, EcrkitError)
    assert listing(root) == ["blobs", "notes.txt"]
    with pytest.raises(NotALayoutError, match="no oci-layout file"):
        OciLayout(root)


def test_empty_directory_and_interrupted_initialisation_are_completed(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    OciLayout(empty, create=True)
    assert (empty / "oci-layout").exists()
    residue = tmp_path / "residue"  # what a crash before the marker was written leaves
    (residue / "blobs" / "sha256").mkdir(parents=True)
    (residue / "index.json").write_text('{"schemaVersion":2,"manifests":[]}')
    OciLayout(residue, create=True)
    assert (residue / "oci-layout").exists()


def test_wrong_layout_version_and_corrupt_index(tmp_path):
    root = tmp_path / "layout"
    OciLayout(root, create=True)
    (root / "index.json").write_text("{not json")
    with pytest.raises(CorruptIndexError, match="index.json is not valid JSON"):
        OciLayout(root)
    (root / "index.json").write_text('{"schemaVersion": 1, "manifests": []}')
    with pytest.raises(CorruptIndexError, match="schemaVersion 1"):
        OciLayout(root)
    (root / "index.json").write_text('{"schemaVersion": 2, "manifests": {}}')
    with pytest.raises(CorruptIndexError, match="list of JSON objects"):
        OciLayout(root)
    (root / "index.json").write_text('{"schemaVersion": 2, "manifests": []}')
    (root / "oci-layout").write_text('{"imageLayoutVersion": "2.0.0"}')
    with pytest.raises(NotALayoutError, match="version 1.x"):
        OciLayout(root)


def test_missing_index_is_recreated_only_with_create(tmp_path):
    root = tmp_path / "layout"
    OciLayout(root, create=True)
    (root / "index.json").unlink()
    with pytest.raises(NotALayoutError, match="has no index.json"):
        OciLayout(root)
    assert OciLayout(root, create=True).read_index()["manifests"] == []


def test_symlinked_root_is_refused_unless_followed(tmp_path):
    real = tmp_path / "real"
    OciLayout(real, create=True)
    link = tmp_path / "link"
    link.symlink_to(real)
    with pytest.raises(LayoutSymlinkError, match=f"{link} is a symbolic link to {real}") as info:
        OciLayout(link, create=True)
    assert "give the real directory" in str(info.value)
    layout = OciLayout(link, follow_symlink=True)
    assert layout.root == str(real)  # resolved once: a link swapped later does not redirect writes
    dangling = tmp_path / "dangling"
    dangling.symlink_to(tmp_path / "nowhere")
    with pytest.raises(LayoutSymlinkError):
        OciLayout(dangling, create=True)
    assert not (tmp_path / "nowhere").exists()


@pytest.mark.parametrize("name", ["blobs", "blobs/sha256", "index.json", "oci-layout", ".ecrkit", ".ecrkit/partial"])
def test_symlinks_inside_the_layout_are_refused(tmp_path, name):
    root = tmp_path / "layout"
    OciLayout(root, create=True)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    target = root / name
    if target.is_dir():
        shutil.rmtree(target)
    else:
        shutil.copy(target, elsewhere / target.name)
        target.unlink()
    target.symlink_to(elsewhere / target.name if target.name in ("index.json", "oci-layout") else elsewhere)
    with pytest.raises(LayoutSymlinkError, match="symbolic link"):
        OciLayout(root)


def test_not_writable_directory(tmp_path, monkeypatch):
    root = tmp_path / "layout"
    OciLayout(root, create=True)
    if os.geteuid() == 0:
        # root writes anywhere; stand in for a directory this user may not write to
        monkeypatch.setattr(layout_mod.os, "access", lambda path, mode: False)
    else:
        os.chmod(root, 0o555)
    try:
        with pytest.raises(NotWritableError, match=f"The OCI layout directory {root} is not writable"):
            OciLayout(root, create=True)
        OciLayout(root)  # reading needs no write permission
    finally:
        os.chmod(root, 0o755)


def test_os_errors_are_translated(tmp_path):
    full = translate_os_error(OSError(28, "No space left on device"), "committing blob X", str(tmp_path))
    assert isinstance(full, DiskFullError) and full.code == "disk_full"
    assert str(tmp_path) in str(full) and "while committing blob X; free space there" in str(full)
    assert isinstance(translate_os_error(OSError(30, "Read-only file system"), "x", "/p"), NotWritableError)
    assert isinstance(translate_os_error(PermissionError(13, "Permission denied"), "x", "/p"), NotWritableError)
    other = translate_os_error(OSError(5, "Input/output error"), "reading", "/p")
    assert not isinstance(other, (DiskFullError, NotWritableError, LayoutSymlinkError))
    assert str(other) == "Failed while reading /p: Input/output error; check that the path exists and is usable."
    loop = translate_os_error(OSError(40, "Too many levels of symbolic links"), "opening", "/p")
    assert isinstance(loop, LayoutSymlinkError)


# digests -----------------------------------------------------------------------------------------

HOSTILE_DIGESTS = [
    "sha256:../../../../etc/passwd",
    "sha256:" + "0" * 63 + "/",
    "sha256:" + "A" * 64,
    "sha256:" + "0" * 63,
    "sha256:" + "0" * 65,
    "sha256:" + "0" * 64 + "\n",
    "sha256/" + "0" * 64,
    "../" + "0" * 64,
    "0" * 64,
    "",
    None,
    64,
]


@pytest.mark.parametrize("digest", HOSTILE_DIGESTS)
def test_hostile_digests_never_become_paths(layout, digest):
    for call in (lambda: layout.blob_path(digest), lambda: layout.has_blob(digest, 1), lambda: layout.open_blob(digest),
                 lambda: layout.partials.path(digest), lambda: layout.commit_blob(__file__, digest, 1),
                 lambda: layout.write_blob(b"x", expected_digest=digest if digest is not None else ""),
                 lambda: layout.set_tag("t", {"mediaType": MANIFEST_TYPE, "digest": digest, "size": 1})):
        with pytest.raises(InvalidDigestError, match="not a valid digest|only sha256"):
            call()
    assert listing(layout.root) == listing(OciLayout(layout.root).root)


def test_other_algorithms_are_named(layout):
    with pytest.raises(InvalidDigestError, match=r"Digest 'sha512:0+'\.\.\. uses an algorithm this collection does not support; only sha256 is\."):
        layout.blob_path("sha512:" + "0" * 128)


def test_sizes_must_be_byte_counts(layout):
    digest = sha(b"x")
    for size in (-1, 1.0, "1", True, None):
        with pytest.raises(InvalidDescriptorError, match="whole number of bytes"):
            layout.has_blob(digest, size)


# blobs -------------------------------------------------------------------------------------------

def test_write_blob_and_read_it_back(layout):
    digest = layout.write_blob(b'{"hello": 1}')
    assert digest == sha(b'{"hello": 1}')
    assert layout.blob_path(digest) == os.path.join(layout.root, "blobs", "sha256", digest[7:])
    assert layout.has_blob(digest, 12, verify=True)
    assert layout.read_blob(digest) == b'{"hello": 1}'
    with layout.open_blob(digest) as handle:
        assert handle.read() == b'{"hello": 1}'
    assert layout.write_blob(b'{"hello": 1}', expected_digest=digest) == digest
    assert partials_of(layout) == [] and os.listdir(os.path.join(layout.root, ".ecrkit", "partial")) == []


def test_write_blob_with_wrong_expected_digest_writes_nothing(layout):
    before = listing(layout.root)
    with pytest.raises(BlobMismatchError, match=r"Refusing to store a blob as sha256:0{64}: its 5 bytes hash to sha256:"):
        layout.write_blob(b"hello", expected_digest="sha256:" + "0" * 64)
    assert listing(layout.root) == before


def test_missing_blob(layout):
    digest = sha(b"absent")
    assert layout.blob_status(digest, 6) == BLOB_MISSING
    with pytest.raises(BlobNotFoundError, match=f"Blob {digest} is not in the OCI layout {layout.root}"):
        layout.open_blob(digest)


def test_tampered_blob_is_detected(layout):
    data = b"layer bytes " * 1000
    digest = layout.write_blob(data)
    path = layout.blob_path(digest)
    with open(path, "r+b") as handle:  # same size, one byte changed
        handle.seek(100)
        handle.write(b"X")
    assert layout.has_blob(digest, len(data))  # the cheap check cannot see it...
    assert layout.blob_status(digest, len(data), verify=True) == BLOB_DIGEST_MISMATCH  # ...the verifying one does
    assert not layout.has_blob(digest, len(data), verify=True)
    with pytest.raises(BlobMismatchError, match="does not hash to its digest"):
        layout.read_blob(digest)
    with open(path, "ab") as handle:
        handle.write(b"more")
    assert layout.blob_status(digest, len(data)) == BLOB_SIZE_MISMATCH
    # the pull fetches it again and the commit replaces the damaged file
    dummy, partial = write_partial(layout, data)
    layout.commit_blob(partial, digest, len(data))
    assert layout.blob_status(digest, len(data), verify=True) == BLOB_PRESENT


def test_blob_that_is_a_symlink_is_not_a_blob(layout, tmp_path):
    data = b"secret elsewhere"
    (tmp_path / "elsewhere").write_bytes(data)
    digest = sha(data)
    os.makedirs(os.path.dirname(layout.blob_path(digest)), exist_ok=True)
    os.symlink(tmp_path / "elsewhere", layout.blob_path(digest))
    assert layout.blob_status(digest, len(data), verify=True) == BLOB_NOT_A_FILE
    with pytest.raises(LayoutSymlinkError):
        layout.open_blob(digest)
    dummy, partial = write_partial(layout, data)
    layout.commit_blob(partial, digest, len(data))  # replaces the link itself, not its target
    assert layout.blob_status(digest, len(data), verify=True) == BLOB_PRESENT
    assert (tmp_path / "elsewhere").read_bytes() == data


# partials and commits ----------------------------------------------------------------------------

def test_commit_is_the_only_way_a_blob_becomes_visible(layout):
    data = b"0123456789" * 100
    digest = sha(data)
    partial = layout.partials.path(digest)
    with open(partial, "wb") as handle:  # an interrupted download (or a crash before the rename)
        handle.write(data[:500])
    with open(partial + ".journal", "w", encoding="utf-8") as handle:
        handle.write("{}")
    assert layout.blob_status(digest, len(data)) == BLOB_MISSING
    assert not os.path.exists(layout.blob_path(digest))
    assert [(p.digest, p.size, p.journal) for p in partials_of(layout)] == [(digest, 500, True)]
    with pytest.raises(BlobMismatchError, match=f"Refusing to commit blob {digest}: .* holds 500 bytes where 1000 were expected"):
        layout.commit_blob(partial, digest, len(data))
    assert not os.path.exists(layout.blob_path(digest)) and os.path.exists(partial)
    with open(partial, "ab") as handle:  # resumed and completed
        handle.write(data[500:])
    assert layout.commit_blob(partial, digest, len(data)) == layout.blob_path(digest)
    assert layout.has_blob(digest, len(data), verify=True)
    assert not os.path.exists(partial) and not os.path.exists(partial + ".journal")
    assert partials_of(layout) == []


def test_commit_errors(layout, tmp_path):
    digest = sha(b"x")
    with pytest.raises(BlobNotFoundError, match="is not there"):
        layout.commit_blob(os.path.join(layout.root, ".ecrkit", "partial", "nothing"), digest, 1)
    os.mkdir(tmp_path / "adir")
    with pytest.raises(BlobMismatchError, match="not a regular file"):
        layout.commit_blob(str(tmp_path / "adir"), digest, 1)
    (tmp_path / "target").write_bytes(b"x")
    os.symlink(tmp_path / "target", tmp_path / "link")
    with pytest.raises(LayoutSymlinkError):
        layout.commit_blob(str(tmp_path / "link"), digest, 1)
    assert not os.path.exists(layout.blob_path(digest))


def test_commit_without_fsync(layout):
    digest, partial = write_partial(layout, b"quick")
    layout.commit_blob(partial, digest, 5, fsync=False)
    assert layout.has_blob(digest, 5, verify=True)


# index.json --------------------------------------------------------------------------------------

def test_set_tag_find_tag(layout):
    one, two = b'{"image": 1}', b'{"image": 2}'
    layout.write_blob(one)
    layout.write_blob(two)
    assert layout.find_tag("v1") is None
    assert layout.set_tag("v1", descriptor(one)) is None
    assert layout.set_tag("v2", dict(descriptor(two), platform={"os": "linux", "architecture": "arm64"})) is None
    assert layout.find_tag("v1") == dict(descriptor(one), annotations={REF_NAME_ANNOTATION: "v1"})
    assert layout.find_tag("v2")["platform"] == {"os": "linux", "architecture": "arm64"}
    previous = layout.set_tag("v1", descriptor(two))
    assert previous["digest"] == sha(one)
    assert layout.find_tag("v1")["digest"] == sha(two)
    assert layout.list_tags() == ["v1", "v2"]  # replaced in place, order kept
    index = layout.read_index()
    assert index["schemaVersion"] == 2 and index["mediaType"] == "application/vnd.oci.image.index.v1+json"


def test_set_tag_keeps_foreign_entries_and_fields(layout):
    data = b'{"image": 1}'
    layout.write_blob(data)
    foreign = {
        "schemaVersion": 2,
        "annotations": {"made.by": "someone else"},
        "manifests": [
            {"mediaType": MANIFEST_TYPE, "digest": "sha512:" + "a" * 128, "size": 3, "future": [1, 2]},
            {"mediaType": MANIFEST_TYPE, "digest": sha(b"other"), "size": 5,
             "annotations": {REF_NAME_ANNOTATION: "theirs", "x": "y"}},
            {"mediaType": MANIFEST_TYPE, "digest": sha(b"old"), "size": 3, "annotations": {REF_NAME_ANNOTATION: "mine"}},
            {"mediaType": MANIFEST_TYPE, "digest": sha(b"older"), "size": 5, "annotations": {REF_NAME_ANNOTATION: "mine"}},
        ],
    }
    with open(os.path.join(layout.root, "index.json"), "w", encoding="utf-8") as handle:
        json.dump(foreign, handle)
    assert layout.find_tag("mine")["digest"] == sha(b"old")  # the first entry, as skopeo picks it
    assert layout.set_tag("mine", descriptor(data))["digest"] == sha(b"old")
    index = layout.read_index()
    assert index["annotations"] == foreign["annotations"]
    assert index["manifests"][:2] == foreign["manifests"][:2]
    assert index["manifests"][2:] == [dict(descriptor(data), annotations={REF_NAME_ANNOTATION: "mine"})]


def test_set_tag_refuses_a_manifest_that_is_not_stored(layout):
    before = layout.read_index()
    with pytest.raises(BlobNotFoundError, match=f"Cannot tag v1 in {layout.root}: manifest sha256:.* is not stored there"):
        layout.set_tag("v1", descriptor(b"never written"))
    assert layout.read_index() == before


def test_set_tag_unchanged_does_not_rewrite(layout):
    data = b'{"image": 1}'
    layout.write_blob(data)
    layout.set_tag("v1", descriptor(data))
    before = os.stat(os.path.join(layout.root, "index.json"))
    layout.set_tag("v1", descriptor(data))
    after = os.stat(os.path.join(layout.root, "index.json"))
    assert (before.st_ino, before.st_mtime_ns) == (after.st_ino, after.st_mtime_ns)


@pytest.mark.parametrize("tag", ["", "a\nb", "nul\x00", None])
def test_bad_tags(layout, tag):
    with pytest.raises(LayoutError, match="cannot be used as a tag"):
        layout.find_tag(tag)


def test_bad_descriptors(layout):
    for value, message in (([], "must be a JSON object"), ({"digest": sha(b"x"), "size": 1}, "has no mediaType"),
                           ({"mediaType": "x", "digest": sha(b"x"), "size": -1}, "whole number of bytes"),
                           ({"mediaType": "x", "digest": sha(b"x"), "size": 1, "annotations": []}, "annotations")):
        with pytest.raises(InvalidDescriptorError, match=message):
            layout.set_tag("t", value)
    with open(os.path.join(layout.root, "index.json"), "w", encoding="utf-8") as handle:
        json.dump({"schemaVersion": 2, "manifests": [{"mediaType": MANIFEST_TYPE, "digest": "sha256:../../x", "size": 1,
                                                      "annotations": {REF_NAME_ANNOTATION: "evil"}}]}, handle)
    with pytest.raises(InvalidDigestError, match="not a valid digest"):
        layout.find_tag("evil")


def test_lock_times_out_with_a_clear_message_and_is_reentrant(layout):
    other = OciLayout(layout.root, lock_timeout=0.2)
    with layout.lock():
        with layout.lock():  # re-entrant in one object
            with pytest.raises(LockTimeoutError, match=r"Timed out after 0.2 s waiting for the lock of .*index.json"):
                other.set_tag("t", descriptor(b"x"))
    with other.lock():
        pass


# concurrency -------------------------------------------------------------------------------------

WRITER = """
    import json, os, sys, time
    from ansible_collections.ecrkit.images.plugins.module_utils.layout import OciLayout
    root, worker, count, go = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    while not os.path.exists(go):
        time.sleep(0.001)
    layout = OciLayout(root, create=True)   # all of them create the same layout at once
    for number in range(count):
        data = json.dumps({"worker": worker, "number": number}).encode()
        desc = {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": layout.write_blob(data), "size": len(data)}
        layout.set_tag("w%d-%d" % (worker, number), desc)
        layout.set_tag("shared", desc)
"""

READER = """
    import json, os, sys, time
    root, stop = sys.argv[1], sys.argv[2]
    reads, most = 0, 0
    while not os.path.exists(stop):
        try:
            with open(os.path.join(root, "index.json"), "rb") as handle:
                data = handle.read()
        except FileNotFoundError:
            continue
        entries = len(json.loads(data)["manifests"])   # raises on a torn file
        assert entries >= most, (entries, most)        # an entry never disappears
        most = entries
        reads += 1
    print(reads)
"""


def test_concurrent_writers_keep_every_entry(tmp_path):
    root, go, stop = tmp_path / "layout", tmp_path / "go", tmp_path / "stop"
    os.mkdir(root)
    workers, count = 5, 12
    writers = [run_worker(WRITER, root, worker, count, go) for worker in range(workers)]
    reader = None
    try:
        time.sleep(0.3)  # let the interpreters start, so that they really race
        go.touch()
        while not (root / "index.json").exists():
            time.sleep(0.001)
        reader = run_worker(READER, root, stop)
        for writer in writers:
            out, err = writer.communicate(timeout=60)
            assert writer.returncode == 0, err
        stop.touch()
        out, err = reader.communicate(timeout=30)
        assert reader.returncode == 0, err
    finally:
        stop.touch()
        for proc in writers + ([reader] if reader else []):
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    assert int(out) > 0
    layout = OciLayout(root)
    tags = layout.list_tags()
    expected = {f"w{worker}-{number}" for worker in range(workers) for number in range(count)}
    assert set(tags) == expected | {"shared"} and len(tags) == len(expected) + 1
    shared = layout.find_tag("shared")
    assert json.loads(layout.read_blob(shared["digest"]))["number"] == count - 1  # some worker's last word
    for tag in tags:
        entry = layout.find_tag(tag)
        assert layout.has_blob(entry["digest"], entry["size"], verify=True)
    assert layout.partials.cleanup() == []  # no temp file left behind


def test_creating_a_layout_waits_for_a_concurrent_initialiser(tmp_path):
    root = tmp_path / "layout"
    (root / ".ecrkit").mkdir(parents=True)
    fd = os.open(root / ".ecrkit" / "lock", os.O_RDWR | os.O_CREAT)
    result = {}
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # another process is initialising this directory
        thread = threading.Thread(target=lambda: result.update(layout=OciLayout(root, create=True)))
        thread.start()
        time.sleep(0.2)
        assert thread.is_alive() and not (root / "index.json").exists()
        # the other process finishes: a complete layout with a tagged image
        built = si.build_image(str(root), "first", si.demo_layers())
    finally:
        os.close(fd)
    thread.join(10)
    assert result["layout"].find_tag("first")["digest"] == built.digest


DOWNLOADER = """
    import hashlib, os, sys, time
    from ansible_collections.ecrkit.images.plugins.module_utils.layout import OciLayout
    root, size, go = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    data = bytes(range(256)) * (size // 256)
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    layout = OciLayout(root)
    while not os.path.exists(go):
        time.sleep(0.001)
    with layout.partials.claim(digest) as path:
        if layout.has_blob(digest, len(data)):
            print("present")
            sys.exit(0)
        with open(path, "wb") as handle:
            for start in range(0, len(data), 4096):
                handle.write(data[start:start + 4096])
                time.sleep(0.0005)
        layout.commit_blob(path, digest, len(data))
        print("downloaded")
"""


def test_concurrent_downloads_of_one_blob_write_it_once(tmp_path):
    root, go = tmp_path / "layout", tmp_path / "go"
    layout = OciLayout(root, create=True)
    procs = [run_worker(DOWNLOADER, root, 256 * 256, go) for dummy in range(4)]
    time.sleep(0.3)
    go.touch()
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
        results.append(out.strip())
    assert sorted(results) == ["downloaded", "present", "present", "present"]
    data = bytes(range(256)) * 256
    assert layout.has_blob(sha(data), len(data), verify=True)
    assert os.listdir(os.path.join(root, ".ecrkit", "partial")) == []


# real tools --------------------------------------------------------------------------------------

def sample_layout_with_partials(tmp_path):
    """A layout built by sample_images (blobs only), tagged by set_tag, with downloads in progress."""
    root = str(tmp_path / "layout")
    built = si.build_image(root, None, si.demo_layers())
    layout = OciLayout(root)
    layout.set_tag("v1", built.descriptor.to_json())
    dummy, partial = write_partial(layout, b"half a layer")
    with open(partial + ".journal", "w", encoding="utf-8") as handle:
        handle.write("{}")
    with open(layout.partials.path(sha(b"another")), "wb") as handle:
        handle.write(b"an")
    return layout, built


@needs_skopeo
def test_skopeo_reads_and_writes_a_layout_with_partials(tmp_path):
    layout, built = sample_layout_with_partials(tmp_path)
    with layout.partials.claim(sha(b"another")):  # even while a download holds its claim
        inspected = json.loads(tool("skopeo", "inspect", f"oci:{layout.root}:v1"))
    assert inspected["Digest"] == built.digest
    assert inspected["Layers"] == [desc.digest for desc in built.layers]
    copy_root = str(tmp_path / "copy")
    tool("skopeo", "copy", "--quiet", f"oci:{layout.root}:v1", f"oci:{copy_root}:v1")
    assert OciLayout(copy_root).find_tag("v1")["digest"] == built.digest
    # skopeo writing into our layout keeps our tag, partials and lock, and we read its tag
    tool("skopeo", "copy", "--quiet", f"oci:{copy_root}:v1", f"oci:{layout.root}:v2")
    reopened = OciLayout(layout.root)
    assert reopened.find_tag("v1")["digest"] == built.digest and reopened.find_tag("v2")["digest"] == built.digest
    assert len(partials_of(reopened)) == 2


@needs_umoci
def test_umoci_reads_a_layout_with_partials_and_gc_leaves_them(tmp_path):
    layout, built = sample_layout_with_partials(tmp_path)
    assert tool("umoci", "ls", "--layout", layout.root).split() == ["v1"]
    bundle = str(tmp_path / "bundle")
    tool("umoci", "unpack", "--rootless", "--image", f"{layout.root}:v1", bundle)
    with open(os.path.join(bundle, "rootfs", "etc", "motd"), encoding="utf-8") as handle:
        assert handle.read() == "Hello from the ecrkit.images demo image.\n"
    tool("umoci", "gc", "--layout", layout.root)
    assert len(partials_of(layout)) == 2
    for desc in built.blob_descriptors():
        assert layout.has_blob(desc.digest, desc.size, verify=True)


def test_verified_status_hashes_only_what_changed_since_it_matched(tmp_path):
    store = OciLayout(str(tmp_path / "layout"), create=True)
    data = os.urandom(100000)
    digest = store.write_blob(data)  # verified as written: a stamp is kept
    stamp = tmp_path / "layout" / ".ecrkit" / "verified" / digest.split(":")[1]
    assert stamp.is_file()
    assert store.verified_status(digest, len(data)) == BLOB_PRESENT
    with open(store.blob_path(digest), "r+b") as handle:  # same size, one byte changed
        handle.seek(500)
        handle.write(bytes([data[500] ^ 1]))
    assert store.verified_status(digest, len(data)) == BLOB_DIGEST_MISMATCH
    with open(store.blob_path(digest), "r+b") as handle:  # put back: it matches again, and is stamped anew
        handle.seek(500)
        handle.write(bytes([data[500]]))
    stamp.unlink()
    assert store.verified_status(digest, len(data), record=False) == BLOB_PRESENT and not stamp.exists()
    assert store.verified_status(digest, len(data)) == BLOB_PRESENT and stamp.is_file()
    assert store.verified_status(digest, len(data) + 1) == BLOB_SIZE_MISMATCH


def test_a_torn_stamp_only_costs_a_hash_and_stamping_leaves_no_other_file(tmp_path, monkeypatch):
    store = OciLayout(str(tmp_path / "layout"), create=True)
    data = os.urandom(100000)
    digest = store.write_blob(data)
    verified = tmp_path / "layout" / ".ecrkit" / "verified"
    stamp = verified / digest.split(":")[1]
    whole = stamp.read_bytes()
    stamp.write_bytes(whole[:len(whole) // 2])  # a kill in the middle of writing it
    hashed = []
    real = layout_mod.OciLayout.blob_status

    def counting(self, digest, size, verify=False):
        hashed.append(verify)
        return real(self, digest, size, verify)

    monkeypatch.setattr(layout_mod.OciLayout, "blob_status", counting)
    assert store.verified_status(digest, len(data)) == BLOB_PRESENT and hashed == [False, True]
    assert stamp.read_bytes() == whole and os.listdir(verified) == [stamp.name]
    hashed.clear()
    assert store.verified_status(digest, len(data)) == BLOB_PRESENT and hashed == [False]
