# Copyright: Contributors to the ecrkit.images project
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""module_utils/containerd against a real, private containerd (tests/containerd/private_containerd.py)."""

from __future__ import annotations

import hashlib
import io
import json
import os
import socket
import sys
import tarfile

import pytest

from ansible_collections.ecrkit.images.plugins.module_utils import containerd

TESTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "..")
for sub in ("containerd", "emulator"):
    if os.path.join(TESTS_DIR, sub) not in sys.path:
        sys.path.insert(0, os.path.join(TESTS_DIR, sub))

# pylint: disable=wrong-import-position,unused-import,redefined-outer-name
import sample_images  # noqa: E402
from private_containerd import private_containerd  # noqa: E402,F401


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@pytest.fixture
def image(tmp_path):
    """A small single-platform OCI image: (layout, manifest digest, manifest bytes, [config+layer descriptors])."""
    built = sample_images.build_random_image(str(tmp_path / "src"), "1.0", count=2, size=256 * 1024, seed="ctd")
    raw = built.read_blob(built.digest)
    document = json.loads(raw)
    return built, built.digest, raw, [document["config"], *document["layers"]]


def ingest_all(client, built, blobs):
    for blob in blobs:
        client.ingest(built.blob_path(blob["digest"]), blob["digest"], blob["size"])


def test_connect_checks_ctr_socket_and_namespace(private_containerd, tmp_path, monkeypatch):
    address = private_containerd.address
    client = containerd.connect(address, "default", must_exist=False)  # default: created on first use
    assert client.namespaces() == []
    with pytest.raises(containerd.UnknownNamespaceError, match="has no namespace 'k8s.io' .*ctr namespaces create k8s.io"):
        containerd.connect(address, "k8s.io", must_exist=False)
    with pytest.raises(containerd.UnknownNamespaceError, match="has no namespace 'default'"):
        containerd.connect(address, "default", must_exist=True)
    with pytest.raises(containerd.UnknownNamespaceError, match="not a valid containerd namespace"):
        containerd.connect(address, "bad name", must_exist=False)
    private_containerd.ctr("namespaces", "create", "k8s.io")
    assert containerd.connect(address, "k8s.io", must_exist=True).namespace == "k8s.io"

    with pytest.raises(containerd.SocketMissingError, match="no containerd socket at /nonexistent/c.sock; start containerd"):
        containerd.connect("/nonexistent/c.sock", "default", must_exist=False)
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(containerd.CtrNotFoundError, match="'ctr' was not found on PATH; install containerd"):
        containerd.connect(address, "default", must_exist=False)


def test_a_socket_nobody_answers_on(tmp_path):
    path = str(tmp_path / "dead.sock")
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(path)
    listener.close()  # the file stays, nothing listens
    with pytest.raises(containerd.ContainerdError, match=f"containerd is not answering on {path}"):
        containerd.connect(path, "default", must_exist=False)


def connect_as_nobody(address):
    """containerd.connect() in a forked child that dropped to uid/gid 65534: [error code, message]."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: drop privileges, try, report through the pipe, never return into pytest
        report = "no error"
        try:
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
            containerd.connect(address, "default", must_exist=False)
        except containerd.ContainerdError as exc:
            report = f"{exc.code}\n{exc}"
        except BaseException as exc:  # pylint: disable=broad-except
            report = f"unexpected\n{exc!r}"
        os.write(write_end, report.encode())
        os._exit(0)  # pylint: disable=protected-access
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        lines = pipe.read().decode().splitlines()
    os.waitpid(pid, 0)
    return lines


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to drop to an unprivileged user")
def test_permission_denied_as_an_unprivileged_user(private_containerd):
    address = private_containerd.address
    lines = connect_as_nobody(address)  # pytest's temp dirs are closed to other users
    assert lines[0] == "containerd_permission_denied", lines
    assert lines[1].startswith(f"Permission denied on the way to the containerd socket {address}; run the task as root")
    # every directory open, the socket itself root's (as containerd creates it): denied at the socket
    opened = []
    directory = os.path.dirname(address)
    while directory != "/":
        mode = os.stat(directory).st_mode & 0o7777
        if mode & 0o001 == 0:
            opened.append((directory, mode))
            os.chmod(directory, mode | 0o001)
        directory = os.path.dirname(directory)
    try:
        os.chmod(address, 0o660)
        lines = connect_as_nobody(address)
    finally:
        for directory, mode in opened:
            os.chmod(directory, mode)
    assert lines[0] == "containerd_permission_denied", lines
    assert lines[1].startswith(f"Permission denied on the containerd socket {address}; run the task as root")


def test_ingest_verifies_digest_and_size(private_containerd, image, tmp_path):
    client = containerd.connect(private_containerd.address, "default", must_exist=False)
    built, dummy, dummy2, blobs = image
    layer = blobs[1]
    with pytest.raises(containerd.ContainerdError, match="containerd refused 'ctr content ingest"):
        client.ingest(built.blob_path(layer["digest"]), layer["digest"], layer["size"] + 1)
    wrong = tmp_path / "wrong"
    wrong.write_bytes(b"x" * layer["size"])
    with pytest.raises(containerd.ContainerdError):
        client.ingest(str(wrong), layer["digest"], layer["size"])
    assert layer["digest"] not in client.content_digests()
    client.ingest(built.blob_path(layer["digest"]), layer["digest"], layer["size"])
    assert layer["digest"] in client.content_digests()
    with client.open_blob(layer["digest"]) as stream:
        assert digest_of(stream.read()) == layer["digest"]


def test_read_blob_checks_size_limit_and_missing(private_containerd, image):
    client = containerd.connect(private_containerd.address, "default", must_exist=False)
    built, dummy, dummy2, blobs = image
    ingest_all(client, built, blobs)
    config = blobs[0]
    assert digest_of(client.read_blob(config["digest"], 1 << 20)) == config["digest"]
    with pytest.raises(containerd.ContainerdError, match="larger than 100 bytes"):
        client.read_blob(blobs[1]["digest"], 100)
    with pytest.raises(containerd.ContainerdError, match="not found"):
        client.read_blob("sha256:" + "0" * 64, 100)


def test_staging_then_final_import_creates_names_labels_and_snapshot(private_containerd, image):
    """The sequence a pull uses: manifests under a staging name first (GC labels for blobs still to
    come), the blobs, the final names with unpack, the staging name removed."""
    client = containerd.connect(private_containerd.address, "default", must_exist=False)
    built, digest, raw, blobs = image
    top = ("application/vnd.oci.image.manifest.v1+json", digest, raw)
    staging = containerd.staging_name(digest)
    client.import_manifests([staging], top, [], unpack=False, platform=None, all_platforms=False)
    labels = private_containerd.ctr("content", "ls")
    assert f"containerd.io/gc.ref.content.l.1={blobs[2]['digest']}" in labels  # a blob not yet stored
    ingest_all(client, built, blobs)
    names = ["example.test/team/app:1.0", f"example.test/team/app@{digest}"]
    client.import_manifests(names, top, [], unpack=True, platform="linux/amd64", all_platforms=False)
    client.remove_images([staging])
    assert private_containerd.image_names() == sorted(names)
    record = client.image(names[0])
    assert record == containerd.ImageRecord(names[0], top[0], digest)
    assert client.image("example.test/team/app:2.0") is None
    check = private_containerd.ctr("images", "check", f'name=="{names[0]}"')
    assert "complete (3/3)" in check and check.split()[-1] == "true"
    config = json.loads(built.read_blob(blobs[0]["digest"]))
    chain = containerd.chain_ids(config["rootfs"]["diff_ids"])
    assert client.has_snapshot(chain[-1])
    assert not client.has_snapshot("sha256:" + "1" * 64)


def test_manifests_archive_holds_only_the_manifests():
    raw = b'{"schemaVersion":2}'
    child = b'{"child":1}'
    digest = digest_of(raw)
    data = containerd.manifests_archive(["a:1", "a@" + digest], ("application/vnd.oci.image.index.v1+json", digest, raw),
                                        [(digest_of(child), child), (digest, raw)])
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        names = tar.getnames()
        index = json.loads(tar.extractfile("index.json").read())
    assert names == ["oci-layout", "index.json", "blobs/sha256/" + digest[7:], "blobs/sha256/" + digest_of(child)[7:]]
    assert [entry["annotations"]["io.containerd.image.name"] for entry in index["manifests"]] == ["a:1", "a@" + digest]
    assert {entry["digest"] for entry in index["manifests"]} == {digest}


def test_chain_ids_follow_the_oci_image_spec():
    diff_ids = ["sha256:" + "a" * 64, "sha256:" + "b" * 64, "sha256:" + "c" * 64]
    chain = containerd.chain_ids(diff_ids)
    second = digest_of(f"{diff_ids[0]} {diff_ids[1]}".encode())
    assert chain == [diff_ids[0], second, digest_of(f"{second} {diff_ids[2]}".encode())]
    assert containerd.chain_ids([]) == []


def test_a_failing_stream_reports_ctr_error(private_containerd):
    client = containerd.connect(private_containerd.address, "default", must_exist=False)
    with pytest.raises(containerd.ContainerdError, match="not found"):
        with client.open_blob("sha256:" + "2" * 64) as stream:
            stream.read()
    assert client.commands == 2  # namespaces ls, content get
