# Copyright: Contributors to the ecrkit.images project
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""module_utils/containerd against a real, private containerd (tests/containerd/private_containerd.py)."""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shutil
import socket
import sys
import tarfile

import pytest

from ansible_collections.ecrkit.images.plugins.module_utils import containerd, destinations, layout, layout_format, pull

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


def ingest_file(client, path, digest, size):
    with open(path, "rb") as handle:
        client.ingest(handle, digest, size)


def ingest_all(client, built, blobs):
    for blob in blobs:
        ingest_file(client, built.blob_path(blob["digest"]), blob["digest"], blob["size"])


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
    monkeypatch.setenv("PATH", str(tmp_path))  # PATH does not matter: the system directories do
    assert containerd.connect(address, "default", must_exist=False).executable == containerd.find_ctr()
    monkeypatch.setattr(containerd, "CTR_DIRECTORIES", (str(tmp_path),))
    with pytest.raises(containerd.CtrNotFoundError, match=f"'ctr' was not found in {tmp_path}; install containerd"):
        containerd.connect(address, "default", must_exist=False)


def test_the_real_ctr_is_found_in_the_system_directories():
    found = containerd.find_ctr()
    assert os.path.dirname(found) in [os.path.realpath(directory) for directory in containerd.CTR_DIRECTORIES]
    assert containerd.find_ctr(found) == found


def test_a_fake_ctr_first_on_path_is_not_used(private_containerd, as_nobody, shared_tmp, monkeypatch):
    """Another user's directory on PATH (as under become) holds a 'ctr' that would run as root."""
    user_bin = os.path.join(shared_tmp, "bin")
    fake = os.path.join(user_bin, "ctr")
    marker = os.path.join(shared_tmp, "ran-as-root")

    def plant():
        os.mkdir(user_bin)
        with open(fake, "w", encoding="utf-8") as script:
            script.write(f"#!/bin/sh\ntouch {marker}\nexit 0\n")
        os.chmod(fake, 0o755)

    assert as_nobody(plant) == "ok"
    monkeypatch.setenv("PATH", f"{user_bin}:{os.environ.get('PATH', '')}")
    client = containerd.connect(private_containerd.address, "default", must_exist=False)
    assert client.namespaces() == []
    assert not os.path.exists(marker)  # the user's script never ran as root
    assert client.executable == containerd.find_ctr() and not client.executable.startswith(shared_tmp)
    # named explicitly, it is refused too: the user owns its directory
    with pytest.raises(containerd.UntrustedCtrError, match=f"{user_bin} .*belongs to uid 65534 in the shared directory {shared_tmp}"):
        containerd.connect(private_containerd.address, "default", must_exist=False, executable=fake)
    assert not os.path.exists(marker)


def test_an_explicit_ctr_path_others_could_change_is_refused(tmp_path, as_nobody, shared_tmp):
    real = containerd.find_ctr()
    owned = os.path.join(shared_tmp, "ctr")
    inner = os.path.join(shared_tmp, "inner")

    def plant():
        shutil.copyfile(real, owned)
        os.chmod(owned, 0o755)
        os.mkdir(inner)
        os.symlink(real, os.path.join(inner, "ctr"))

    assert as_nobody(plant) == "ok"
    with pytest.raises(containerd.UntrustedCtrError, match=re.escape(f"{owned} (containerd's client ctr) belongs to uid 65534 in the "
                                                                     f"shared directory {shared_tmp}; ")):
        containerd.find_ctr(owned)
    os.chmod(shared_tmp, 0o755)  # root's directory, not shared: the file alone is the user's
    with pytest.raises(containerd.UntrustedCtrError, match=re.escape(f"{owned} (containerd's client ctr) belongs to uid 65534, not to "
                                                                     "the user this module runs as (uid 0), so another user could change what runs")):
        containerd.find_ctr(owned)
    link = tmp_path / "link"  # root's link, leading through the user's directory
    os.symlink(os.path.join(inner, "ctr"), link)
    with pytest.raises(containerd.UntrustedCtrError, match=f"{inner} belongs to uid 65534"):
        containerd.find_ctr(str(link))
    os.chown(inner, 0, 0)
    os.chmod(shared_tmp, 0o1777)  # sticky, like /tmp: fine for root's entries only
    assert containerd.find_ctr(str(link)) == real

    group_writable = tmp_path / "group" / "ctr"
    group_writable.parent.mkdir()
    shutil.copyfile(real, group_writable)
    os.chmod(group_writable, 0o775)
    with pytest.raises(containerd.UntrustedCtrError, match=re.escape(f"{group_writable} (containerd's client ctr) is writable by other "
                                                                     "users (mode 0775)")):
        containerd.find_ctr(str(group_writable))
    os.chmod(group_writable, 0o755)
    assert containerd.find_ctr(str(group_writable)) == str(group_writable)  # root's, in root's directories
    os.chmod(group_writable.parent, 0o777)  # a directory others can write: they could swap the file
    with pytest.raises(containerd.UntrustedCtrError, match=re.escape(f"{group_writable.parent} is writable by other users (mode 0777)")):
        containerd.find_ctr(str(group_writable))
    with pytest.raises(containerd.CtrNotFoundError, match="containerd_ctr_path must be an absolute path such as /usr/bin/ctr, not 'ctr'"):
        containerd.find_ctr("ctr")
    with pytest.raises(containerd.CtrNotFoundError, match="There is no file at containerd_ctr_path /nonexistent/ctr"):
        containerd.find_ctr("/nonexistent/ctr")


def test_a_socket_nobody_answers_on(tmp_path):
    path = str(tmp_path / "dead.sock")
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(path)
    listener.close()  # the file stays, nothing listens
    with pytest.raises(containerd.ContainerdError, match=f"containerd is not answering on {path}"):
        containerd.connect(path, "default", must_exist=False)


def connect_as_nobody(as_nobody, address):
    """containerd.connect() as uid 65534: "ok" or "<error type>: <message>"."""
    return as_nobody(lambda: containerd.connect(address, "default", must_exist=False))


def test_permission_denied_as_an_unprivileged_user(private_containerd, as_nobody):
    address = private_containerd.address
    report = connect_as_nobody(as_nobody, address)  # pytest's temp dirs are closed to other users
    assert report.startswith(f"SocketPermissionError: Permission denied on the way to the containerd socket {address}; "
                             "run the task as root"), report
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
        report = connect_as_nobody(as_nobody, address)
    finally:
        for directory, mode in opened:
            os.chmod(directory, mode)
    assert report.startswith(f"SocketPermissionError: Permission denied on the containerd socket {address}; run the task as root"), report


def test_ingest_verifies_digest_and_size(private_containerd, image, tmp_path):
    client = containerd.connect(private_containerd.address, "default", must_exist=False)
    built, dummy, dummy2, blobs = image
    layer = blobs[1]
    with pytest.raises(containerd.ContainerdError, match="containerd refused 'ctr content ingest"):
        ingest_file(client, built.blob_path(layer["digest"]), layer["digest"], layer["size"] + 1)
    wrong = tmp_path / "wrong"
    wrong.write_bytes(b"x" * layer["size"])
    with pytest.raises(containerd.ContainerdError):
        ingest_file(client, str(wrong), layer["digest"], layer["size"])
    assert layer["digest"] not in client.content_digests()
    ingest_file(client, built.blob_path(layer["digest"]), layer["digest"], layer["size"])
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


def test_ingest_never_follows_a_link_swapped_in_for_a_staged_blob(private_containerd, image, tmp_path):
    """The staged blob is opened without following links (OciLayout.open_blob) and handed over open:
    a link put in its place after verification never feeds another file's bytes to containerd."""
    client = containerd.connect(private_containerd.address, "default", must_exist=False)
    built, dummy, dummy2, blobs = image
    layer = blobs[1]
    staging = layout.OciLayout(str(tmp_path / "staging"), create=True)
    with open(built.blob_path(layer["digest"]), "rb") as source:
        data = source.read()
    secret = tmp_path / "secret"
    secret.write_bytes(data)  # what the link points at (here the same bytes, so containerd would take them)
    path = staging.blob_path(layer["digest"])
    os.makedirs(os.path.dirname(path), exist_ok=True)
    os.symlink(str(secret), path)
    with pytest.raises(layout_format.LayoutError):
        with staging.open_blob(layer["digest"]) as handle:
            client.ingest(handle, layer["digest"], layer["size"])
    assert layer["digest"] not in client.content_digests()
    assert "ecrkit-" not in private_containerd.ctr("content", "active")
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with os.fdopen(os.open(fifo, os.O_RDWR | os.O_NONBLOCK), "rb") as handle:  # not a regular file: refused
        with pytest.raises(containerd.ContainerdError, match=f"The staged blob {layer['digest']} is not a regular file"):
            client.ingest(handle, layer["digest"], layer["size"])
    os.unlink(path)
    with open(path, "wb") as handle:
        handle.write(data)
    with staging.open_blob(layer["digest"]) as handle:
        client.ingest(handle, layer["digest"], layer["size"])
    assert layer["digest"] in client.content_digests()


HOSTILE_REF = "123456789012.dkr.ecr.us-east-1.amazonaws.com/team/hostile:1.0"


def store_image_with_diff_ids(client, built, blobs, diff_ids, tmp_path):
    """The image of ``built`` with its config's diff_ids replaced, stored in containerd under the names a
    pull of HOSTILE_REF creates, not unpacked (as a pull with unpack: false leaves it): its top digest."""
    config = json.loads(built.read_blob(blobs[0]["digest"]))
    config["rootfs"]["diff_ids"] = diff_ids
    config_raw = json.dumps(config).encode("utf-8")
    document = json.loads(built.read_blob(built.digest))
    document["config"] = {**document["config"], "digest": digest_of(config_raw), "size": len(config_raw)}
    raw = json.dumps(document).encode("utf-8")
    ingest_all(client, built, blobs[1:])
    (tmp_path / "config").write_bytes(config_raw)
    ingest_file(client, str(tmp_path / "config"), digest_of(config_raw), len(config_raw))
    top = ("application/vnd.oci.image.manifest.v1+json", digest_of(raw), raw)
    names = destinations.containerd_names(pull.parse_reference(HOSTILE_REF), top[1])
    client.import_manifests(names, top, [], unpack=False, platform=None, all_platforms=False)
    return top, names


@pytest.mark.parametrize("hostile", [["--help"], ["sha256:" + "a" * 64, "sha256:" + "\u00e4" * 64]], ids=["help", "non-ascii"])
def test_hostile_diff_ids_never_reach_ctr_nor_skip_the_unpack(private_containerd, image, tmp_path, hostile):
    """A config's diff_ids ``--help`` made 'ctr snapshots info --help' succeed (the image was reported
    unpacked, the unpack skipped); a non-ASCII one raised UnicodeEncodeError."""
    client = containerd.connect(private_containerd.address, "default", must_exist=False)
    built, dummy, dummy2, blobs = image
    top, names = store_image_with_diff_ids(client, built, blobs, hostile, tmp_path)
    options = pull.PullOptions.from_params(ref=HOSTILE_REF, dest=str(tmp_path / "staging"), format="containerd",
                                           containerd_address=private_containerd.address)
    target = destinations.ContainerdDestination(options)
    try:
        assert not target.complete(top[1])  # not unpacked: a pull goes on and unpacks (or fails)
    finally:
        target.close()
    with pytest.raises(containerd.InvalidValueError, match="The image config's layer diff_id '.*' is not a sha256 digest"):
        containerd.chain_ids(hostile)
    with pytest.raises(containerd.InvalidValueError, match="The snapshot key '--help' is not a sha256 digest"):
        client.has_snapshot("--help")
    with pytest.raises(containerd.ContainerdError, match="containerd refused 'ctr images import'"):
        client.import_manifests(names, top, [], unpack=True, platform="linux/amd64", all_platforms=False)
    assert not private_containerd.ctr("snapshots", "ls").splitlines()[1:]


def test_every_value_for_ctr_is_checked_before_it_is_run(private_containerd):
    client = containerd.connect(private_containerd.address, "default", must_exist=False)
    before = client.commands
    digest = "sha256:" + "0" * 64
    refused = [
        (lambda: client.image('a:1" || name!="x'), "containerd image name"),
        (lambda: client.remove_images(["--all"]), "containerd image name"),
        (lambda: client.read_blob("--help", 10), "blob digest"),
        (lambda: client.open_blob("sha256:" + "\u00e4" * 64).__enter__(), "blob digest"),
        (lambda: client.label_blob(digest, {"--help": digest}), "label key"),
        (lambda: client.label_blob(digest, {"a": "b c"}), "value of label a"),
        (lambda: client.import_manifests(["a:1"], ("t", digest, b"{}"), [], unpack=True, platform="--help",
                                         all_platforms=False), "platform"),
        (lambda: client.import_manifests(["-x"], ("t", digest, b"{}"), [], unpack=False, platform=None,
                                         all_platforms=False), "containerd image name"),
        (lambda: client.import_manifests(["a:1"], ("t", "../../x", b"{}"), [], unpack=False, platform=None,
                                         all_platforms=False), "manifest digest"),
        (lambda: client.ingest(io.BytesIO(b""), "--help", 0), "blob digest"),
        (lambda: containerd.chain_ids("sha256:" + "a" * 64), "rootfs.diff_ids"),
    ]
    for call, what in refused:
        with pytest.raises(containerd.InvalidValueError) as caught:
            call()
        assert what in str(caught.value) and len(str(caught.value).splitlines()) == 1
    assert client.commands == before  # none of them ran ctr
    with pytest.raises(containerd.UnknownNamespaceError, match="The containerd namespace '--help' is not a valid"):
        containerd.Containerd(private_containerd.address, "--help", containerd.find_ctr())


def test_a_directory_given_as_containerd_address_is_called_a_directory(tmp_path):
    """Issue 12: ctr cannot dial a directory, which read as a daemon that does not answer."""
    with pytest.raises(containerd.SocketMissingError) as caught:
        containerd.connect(str(tmp_path), "default", must_exist=False)
    assert str(caught.value) == (f"containerd_address {tmp_path} is a directory, not containerd's socket; set it to the socket "
                                 "containerd listens on, such as /run/containerd/containerd.sock.")
    regular = tmp_path / "containerd.sock"
    regular.write_bytes(b"")
    with pytest.raises(containerd.SocketMissingError, match=f"containerd_address {regular} is a regular file, not containerd's socket"):
        containerd.connect(str(regular), "default", must_exist=False)


def test_permission_denied_is_said_once(private_containerd, as_nobody):
    report = connect_as_nobody(as_nobody, private_containerd.address)
    assert report.lower().count("permission denied") == 1, report


def test_containerd_options_with_another_format_are_named_in_one_warning():
    warn = containerd.ignored_options_warnings
    assert warn("format", "oci", containerd_namespace=None, containerd_address=None, unpack=None) == []
    assert warn("format", "containerd", containerd_namespace="k8s.io", unpack=False) == []
    assert warn("src_format", "oci-archive", containerd_namespace="k8s.io", containerd_address=None) == [
        "containerd_namespace applies only to src_format containerd and was ignored (src_format is oci-archive)."]
    assert warn("format", "oci", containerd_address="/run/c.sock", unpack=False) == [
        "containerd_address, unpack apply only to format containerd and were ignored (format is oci)."]
