# Copyright: Contributors to the ecrkit.images project
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Pull destinations (module_utils/destinations.py): archives, containerd and layouts as what they hold,
what they refuse and what they leave behind, through pulls from the local ECR endpoint."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import threading

import pytest

from ansible_collections.ecrkit.images.plugins.module_utils import archive, archive_read, containerd, hostfs, layout_format, pull

TESTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "..")
for sub in ("containerd", "emulator", os.path.join("unit", "plugins", "module_utils")):
    if os.path.join(TESTS_DIR, sub) not in sys.path:
        sys.path.insert(0, os.path.join(TESTS_DIR, sub))

# pylint: disable=wrong-import-position,unused-import,redefined-outer-name
import sample_images  # noqa: E402
from fixture import ecr_endpoint  # noqa: E402,F401
from pull_support import MIB, options, run, seeded  # noqa: E402,F401
from private_containerd import private_containerd  # noqa: E402,F401


@pytest.mark.parametrize("dest_format", ["oci-archive", "docker-archive"])
def test_archives_are_written_once(seeded, tmp_path, dest_format):
    endpoint, images = seeded
    dest = tmp_path / "image.tar"
    first = run(endpoint, options(endpoint, "one", dest, format=dest_format))
    assert first["changed"] and dest.is_file()
    assert not [name for name in os.listdir(tmp_path) if name.startswith(".")]  # staging removed
    again = run(endpoint, options(endpoint, "one", dest, format=dest_format))
    assert not again["changed"] and again["api_calls"] == 1 and again["bytes_transferred"] == 0
    if shutil.which("skopeo"):
        inspected = json.loads(subprocess.run(["skopeo", "inspect", f"{dest_format}:{dest}"], check=True,
                                              capture_output=True, text=True).stdout)
        assert len(inspected["Layers"]) == 2
        if dest_format == "oci-archive":
            assert inspected["Digest"] == images["one"].digest


def test_a_symlinked_dest_is_refused_before_any_call(seeded, tmp_path):
    """An OCI layout or archive is written at the path given, never wherever a link planted there points."""
    endpoint, dummy = seeded
    real = tmp_path / "real"
    run(endpoint, options(endpoint, "one", real))
    run(endpoint, options(endpoint, "one", tmp_path / "real.tar", format="oci-archive"))
    kept = [real / "index.json", tmp_path / "real.tar"] + list((real / "blobs" / "sha256").iterdir())
    before = {str(item): (item.stat().st_mtime_ns, item.stat().st_size) for item in kept}
    (tmp_path / "link").symlink_to(real)
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    (tmp_path / "link.tar").symlink_to(tmp_path / "real.tar")
    endpoint.reset_stats()
    for dest, kwargs, error in ((tmp_path / "link", {}, layout_format.LayoutSymlinkError),
                                (tmp_path / "dangling", {}, layout_format.LayoutSymlinkError),
                                (str(tmp_path / "link") + "/", {}, layout_format.LayoutSymlinkError),
                                (tmp_path / "link", {"check_mode": True}, layout_format.LayoutSymlinkError),
                                (tmp_path / "link.tar", {"format": "oci-archive"}, archive.UnsafeArchiveError),
                                (tmp_path / "link.tar", {"format": "docker-archive"}, archive.UnsafeArchiveError)):
        with pytest.raises(error) as info:
            run(endpoint, options(endpoint, "one", dest, **kwargs))
        assert f"is a symbolic link (to {os.readlink(str(dest).rstrip('/'))})" in str(info.value)
        assert "give the real path instead" in str(info.value)
    assert endpoint.stats()["api_calls_total"] == 0
    assert not (tmp_path / "nowhere").exists()
    assert {str(item): (item.stat().st_mtime_ns, item.stat().st_size) for item in kept} == before
    assert sorted(os.listdir(real)) == [".ecrkit", "blobs", "index.json", "oci-layout"]


def test_a_symlinked_staging_layout_is_refused_before_any_download(seeded, tmp_path):
    endpoint, dummy = seeded
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (tmp_path / ".image.tar.ecrkit-staging").symlink_to(elsewhere)
    endpoint.reset_stats()
    with pytest.raises(layout_format.LayoutSymlinkError, match="is a symbolic link"):
        run(endpoint, options(endpoint, "one", tmp_path / "image.tar", format="oci-archive"))
    assert endpoint.stats()["blob_requests"] == 0
    assert not os.listdir(elsewhere) and not (tmp_path / "image.tar").exists()


def _hostile_archive(path, kind):
    with tarfile.open(path, "w") as tar:
        for name, data in (("oci-layout", b'{"imageLayoutVersion": "1.0.0"}'), ("index.json", b'{"schemaVersion": 2, "manifests": []}'),
                           ("manifest.json", b'[{"Config": "c.json", "RepoTags": [], "Layers": []}]'), ("c.json", b"{}")):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        info = tarfile.TarInfo({"dotdot": "../../evil", "absolute": "/tmp/evil", "duplicate": "./index.json",
                                "symlink": "blobs/sha256/" + "ab" * 32, "hardlink": "blobs/x"}[kind])
        if kind == "symlink":
            info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
        elif kind == "hardlink":
            info.type, info.linkname = tarfile.LNKTYPE, "../../outside"
        tar.addfile(info, io.BytesIO(b"") if info.isreg() else None)


@pytest.mark.parametrize("dest_format, kind", [("oci-archive", "dotdot"), ("docker-archive", "absolute"), ("oci-archive", "duplicate"),
                                               ("docker-archive", "symlink"), ("oci-archive", "hardlink")])
def test_a_hostile_archive_at_dest_is_replaced_and_nothing_is_written_outside(seeded, tmp_path, dest_format, kind):
    """The pull reads what is at dest to tell whether it holds the image already: a hostile archive there
    is refused whole (nothing extracted, nothing written), so the pull writes the image over it. (Every
    kind of hostile member against both readers of both formats: test_archive.py.)"""
    endpoint, images = seeded
    sandbox = tmp_path / "sandbox"
    work = sandbox / "deep" / "er"
    work.mkdir(parents=True)
    dest = work / "image.tar"
    _hostile_archive(str(dest), kind)
    with pytest.raises(archive.UnsafeArchiveError):
        archive_read.read_archive_summary(str(dest), dest_format)
    result = run(endpoint, options(endpoint, "one", dest, format=dest_format))
    assert result["changed"]
    assert sorted(str(item.relative_to(sandbox)) for item in sandbox.rglob("*")) == ["deep", "deep/er", "deep/er/image.tar"]
    summary = archive_read.read_archive_summary(str(dest), dest_format)
    if dest_format == "oci-archive":
        assert summary["manifests"][0]["digest"] == images["one"].digest
    else:
        assert summary["images"][0]["manifest_digest"] == images["one"].digest


# containerd -----------------------------------------------------------------------------------------

def into_containerd(endpoint, daemon, tag, staging, **kwargs):
    kwargs.setdefault("containerd_address", daemon.address)
    return options(endpoint, tag, staging, format="containerd", **kwargs)


def collect_garbage(daemon, some_image):
    """Make containerd run its garbage collector now: remove a throwaway name with --sync."""
    daemon.ctr("images", "tag", some_image, "example.test/throwaway:1")
    daemon.ctr("images", "rm", "--sync", "example.test/throwaway:1")


def snapshot_keys(daemon, namespace="default"):
    return [line.split()[0] for line in daemon.ctr("snapshots", "ls", namespace=namespace).splitlines()[1:]]


def test_containerd_pull_then_nothing_to_do(seeded, private_containerd, tmp_path):
    endpoint, images = seeded
    staging = tmp_path / "staging"
    first = run(endpoint, into_containerd(endpoint, private_containerd, "one", staging))
    repo = f"{endpoint.account_id}.dkr.ecr.{endpoint.region}.amazonaws.com/team/app"
    names = [f"{repo}:one", f"{repo}@{images['one'].digest}"]
    assert first["changed"] and first["format"] == "containerd" and first["digest"] == images["one"].digest
    assert first["containerd"]["images"] == names and first["containerd"]["unpacked"]
    assert first["bytes_transferred"] == sum(blob["size"] for blob in first["layers"])
    assert private_containerd.image_names() == sorted(names)  # the staging name is gone
    check = private_containerd.ctr("images", "check", f'name=="{names[0]}"')
    assert "complete (3/3)" in check and check.split()[-1] == "true"
    assert len(snapshot_keys(private_containerd)) == 2
    assert not os.listdir(staging)  # staged layers removed once containerd had them

    endpoint.reset_stats()
    again = run(endpoint, into_containerd(endpoint, private_containerd, "one", staging))
    assert not again["changed"] and again["bytes_transferred"] == 0 and again["api_calls"] == 1
    assert {layer["action"] for layer in again["layers"]} == {"present"}
    assert endpoint.stats()["api_calls_total"] == 1


def test_containerd_downloads_only_layers_it_lacks(seeded, private_containerd, tmp_path):
    endpoint, dummy = seeded
    run(endpoint, into_containerd(endpoint, private_containerd, "one", tmp_path / "staging"))
    second = run(endpoint, into_containerd(endpoint, private_containerd, "two", tmp_path / "staging"))
    actions = [layer["action"] for layer in second["layers"]]
    assert actions.count("present") == 2 and actions.count("downloaded") == 2
    assert second["bytes_transferred"] == sum(layer["size"] for layer in second["layers"] if layer["action"] == "downloaded")


def test_containerd_index_platforms(seeded, private_containerd, tmp_path):
    endpoint, images = seeded
    index = images["multi"]
    amd = run(endpoint, into_containerd(endpoint, private_containerd, "multi", tmp_path / "s"))
    assert amd["platform"] == "linux/amd64" and amd["digest"] == index.digest
    client = containerd.connect(private_containerd.address, "default", must_exist=True)
    assert client.image(amd["containerd"]["images"][0]).digest == index.digest  # the name points at the index
    arm_child = [image for image in index.manifests if "arm64" in str(image.platform)][0]
    assert arm_child.digest not in client.content_digests()
    assert not run(endpoint, into_containerd(endpoint, private_containerd, "multi", tmp_path / "s"))["changed"]

    arm = run(endpoint, into_containerd(endpoint, private_containerd, "multi", tmp_path / "s", platform="linux/arm64/v8"))
    assert arm["changed"] and arm["platform"] == "linux/arm64/v8" and arm["containerd"]["unpacked"]
    collect_garbage(private_containerd, amd["containerd"]["images"][0])
    amd_child = [image for image in index.manifests if "amd64" in str(image.platform)][0]
    assert {amd_child.digest, amd_child.config.digest} <= client.content_digests()  # the first platform is kept
    every = run(endpoint, into_containerd(endpoint, private_containerd, "multi", tmp_path / "s", all_platforms=True))
    assert every["platform"] == "all" and every["bytes_transferred"] == 0  # both platforms were there already
    assert not run(endpoint, into_containerd(endpoint, private_containerd, "multi", tmp_path / "s", all_platforms=True))["changed"]


def test_containerd_unpack_later_downloads_nothing(seeded, private_containerd, tmp_path):
    endpoint, dummy = seeded
    private_containerd.ctr("namespaces", "create", "plain")
    packed = run(endpoint, into_containerd(endpoint, private_containerd, "one", tmp_path / "s", unpack=False,
                                           containerd_namespace="plain"))
    assert packed["changed"] and not packed["containerd"]["unpacked"]
    assert not snapshot_keys(private_containerd, "plain")
    assert not run(endpoint, into_containerd(endpoint, private_containerd, "one", tmp_path / "s", unpack=False,
                                             containerd_namespace="plain"))["changed"]
    unpacked = run(endpoint, into_containerd(endpoint, private_containerd, "one", tmp_path / "s", containerd_namespace="plain"))
    assert unpacked["changed"] and unpacked["bytes_transferred"] == 0 and unpacked["containerd"]["unpacked"]
    assert len(snapshot_keys(private_containerd, "plain")) == 2


def test_containerd_check_mode_stores_nothing(seeded, private_containerd, tmp_path):
    endpoint, dummy = seeded
    planned = run(endpoint, into_containerd(endpoint, private_containerd, "one", tmp_path / "s", check_mode=True))
    assert planned["changed"] and {layer["action"] for layer in planned["layers"]} == {"download"}
    assert private_containerd.image_names() == [] and not (tmp_path / "s").exists()


def test_containerd_errors_before_any_call(seeded, private_containerd, tmp_path):
    endpoint, dummy = seeded
    endpoint.reset_stats()
    with pytest.raises(containerd.UnknownNamespaceError, match="no namespace 'k8s.io'"):
        run(endpoint, into_containerd(endpoint, private_containerd, "one", tmp_path / "s", containerd_namespace="k8s.io"))
    with pytest.raises(containerd.SocketMissingError):
        run(endpoint, into_containerd(endpoint, private_containerd, "one", tmp_path / "s", containerd_address="/nonexistent.sock"))
    assert endpoint.stats()["api_calls_total"] == 0


def test_containerd_interrupted_pull_keeps_its_blobs_from_gc_and_resumes(seeded, private_containerd, tmp_path, monkeypatch):
    """Killed after ingesting one blob: containerd's garbage collector keeps it (the staging name's
    labels reference it), nothing is named after the image yet, and the next run finishes the job."""
    endpoint, images = seeded
    real_ingest = containerd.Containerd.ingest
    calls = []

    def ingest_once_then_die(self, path, digest, size):
        if calls:
            raise KeyboardInterrupt("killed")
        calls.append(digest)
        real_ingest(self, path, digest, size)

    monkeypatch.setattr(containerd.Containerd, "ingest", ingest_once_then_die)
    with pytest.raises(KeyboardInterrupt):
        run(endpoint, into_containerd(endpoint, private_containerd, "one", tmp_path / "s"))
    monkeypatch.setattr(containerd.Containerd, "ingest", real_ingest)
    staging_name = containerd.staging_name(images["one"].digest)
    assert private_containerd.image_names() == [staging_name]
    collect_garbage(private_containerd, staging_name)
    assert calls[0] in containerd.connect(private_containerd.address, "default", must_exist=True).content_digests()

    endpoint.reset_stats()
    again = run(endpoint, into_containerd(endpoint, private_containerd, "one", tmp_path / "s"))
    assert again["changed"] and again["bytes_transferred"] == 0  # the other blobs were staged already
    assert private_containerd.image_names() == sorted(again["containerd"]["images"])
    assert not os.listdir(tmp_path / "s")


def test_containerd_unchanged_run_removes_what_a_late_kill_left(seeded, private_containerd, tmp_path, monkeypatch):
    """Killed after the image was named but before the staging name was removed: the next run finds the
    image complete (unchanged) and removes the staging name, layout and lock."""
    endpoint, images = seeded

    def killed(self, names):
        raise KeyboardInterrupt("killed")

    monkeypatch.setattr(containerd.Containerd, "remove_images", killed)
    with pytest.raises(KeyboardInterrupt):
        run(endpoint, into_containerd(endpoint, private_containerd, "one", tmp_path / "s"))
    monkeypatch.undo()
    assert containerd.staging_name(images["one"].digest) in private_containerd.image_names()
    assert os.listdir(tmp_path / "s")
    again = run(endpoint, into_containerd(endpoint, private_containerd, "one", tmp_path / "s"))
    assert not again["changed"] and again["api_calls"] == 1
    assert private_containerd.image_names() == sorted(again["containerd"]["images"])
    assert not os.listdir(tmp_path / "s")


# Another user on the host (uid 65534) lays traps where a root pull writes (issue: security review) -------

def _plant_staging_trap(as_nobody, monkeypatch, staging_roots, target):
    """As another user: staging layouts with a harmless partial directory, swapped for a link to
    ``target`` once the pull has checked it and is about to download (the race of the security review).
    Returns the list of what ``target`` held right after the download (a commit renames files away)."""
    def plant():
        for root in staging_roots:
            os.makedirs(os.path.join(root, ".ecrkit", "partial"), mode=0o777)
    assert as_nobody(plant) == "ok"

    def swap():
        for root in staging_roots:
            partial = os.path.join(root, ".ecrkit", "partial")
            if os.path.isdir(partial):
                os.rename(partial, partial + ".checked")
                os.symlink(target, partial)
    real_download = pull.download.download_blobs

    written_there = []

    def download_after_the_swap(*args, **kwargs):
        assert as_nobody(swap) == "ok"
        try:
            return real_download(*args, **kwargs)
        finally:
            written_there.extend(os.listdir(target))
    monkeypatch.setattr(pull.download, "download_blobs", download_after_the_swap)
    return written_there


def _run_with_deadline(call, seconds=60):
    """``call()`` in a thread: what it returned or raised, or "hung" (a regression must fail, not hang)."""
    outcome = []

    def target():
        try:
            outcome.append(call())
        except BaseException as exc:  # pylint: disable=broad-except
            outcome.append(exc)
    worker = threading.Thread(target=target, daemon=True)
    worker.start()
    worker.join(seconds)
    return outcome[0] if outcome else "hung"


def test_containerd_staging_without_dest_cannot_be_prepared_by_another_user(
        seeded, private_containerd, shared_tmp, tmp_path, as_nobody, monkeypatch):
    endpoint, images = seeded
    cron = tmp_path / "cron.d"
    cron.mkdir()
    monkeypatch.setenv("TMPDIR", shared_tmp)
    name = images["one"].digest.replace(":", "-")
    # the names a pull would stage under: today's private directory, and the predictable one of before
    assert as_nobody(lambda: os.mkdir(os.path.join(shared_tmp, f"ecrkit-{os.geteuid()}"), 0o777)) == "ok"
    written = _plant_staging_trap(as_nobody, monkeypatch, [
        os.path.join(shared_tmp, f"ecrkit-{os.geteuid()}", f".ecrkit-containerd-{name}"), os.path.join(shared_tmp, f".ecrkit-containerd-{name}")], cron)
    endpoint.reset_stats()
    try:
        with pytest.raises(hostfs.UntrustedPathError, match=f"ecrkit-{os.geteuid()}, where the staging area of containerd pulls is "
                                                            "kept, belongs to uid 65534"):
            run(endpoint, into_containerd(endpoint, private_containerd, "one", ""))
    finally:
        assert written == [] and os.listdir(cron) == []  # (on 008009b: the layers, written as root)
    assert endpoint.stats()["blob_requests"] == 0


def test_containerd_staging_is_private_to_the_user(seeded, private_containerd, shared_tmp, as_nobody, monkeypatch):
    endpoint, images = seeded
    monkeypatch.setenv("TMPDIR", shared_tmp)

    def killed(self, *args, **kwargs):
        raise KeyboardInterrupt("killed after the download")

    monkeypatch.setattr(containerd.Containerd, "ingest", killed)
    with pytest.raises(KeyboardInterrupt):
        run(endpoint, into_containerd(endpoint, private_containerd, "one", ""))
    monkeypatch.undo()
    monkeypatch.setenv("TMPDIR", shared_tmp)
    base = os.path.join(shared_tmp, f"ecrkit-{os.geteuid()}")
    staging = os.path.join(base, ".ecrkit-containerd-" + images["one"].digest.replace(":", "-"))
    assert os.stat(base).st_mode & 0o777 == 0o700 and os.stat(staging).st_mode & 0o777 == 0o700
    assert os.listdir(os.path.join(staging, "blobs", "sha256"))  # the downloaded layers wait there for the next run
    assert as_nobody(lambda: os.listdir(staging)).startswith("PermissionError")
    assert run(endpoint, into_containerd(endpoint, private_containerd, "one", ""))["changed"]
    assert not os.path.exists(staging)


def test_an_archive_staging_layout_prepared_by_another_user_is_refused(seeded, shared_tmp, tmp_path, as_nobody, monkeypatch):
    endpoint, dummy = seeded
    cron = tmp_path / "cron.d"
    cron.mkdir()
    written = _plant_staging_trap(as_nobody, monkeypatch, [os.path.join(shared_tmp, ".app.tar.ecrkit-staging")], cron)
    endpoint.reset_stats()
    try:
        with pytest.raises(hostfs.UntrustedPathError, match="ecrkit-staging .*belongs to uid 65534 in the shared directory"):
            run(endpoint, options(endpoint, "one", os.path.join(shared_tmp, "app.tar"), format="oci-archive"))
    finally:
        assert written == [] and os.listdir(cron) == []  # (on 008009b: the layers, written as root)
    assert endpoint.stats()["blob_requests"] == 0


def test_an_archive_lock_another_user_holds_or_made_a_fifo_fails_at_once(seeded, shared_tmp, as_nobody):
    endpoint, dummy = seeded
    assert as_nobody(lambda: os.mkfifo(os.path.join(shared_tmp, ".fifo.tar.ecrkit-lock"))) == "ok"
    fifo_options = options(endpoint, "one", os.path.join(shared_tmp, "fifo.tar"), format="oci-archive")
    outcome = _run_with_deadline(lambda: run(endpoint, fifo_options))
    assert isinstance(outcome, hostfs.UntrustedPathError) and "is not a regular file" in str(outcome)
    lock = os.path.join(shared_tmp, ".held.tar.ecrkit-lock")
    system_python = shutil.which("python3", path="/usr/local/bin:/usr/bin:/bin")  # one another user can run
    holder = subprocess.Popen([system_python, "-c", "import fcntl, sys, time; f = open(sys.argv[1], 'w'); "
                               "fcntl.flock(f, fcntl.LOCK_EX); print('held', flush=True); time.sleep(120)", lock],
                              stdout=subprocess.PIPE, user=65534, group=65534, extra_groups=[])
    try:
        assert holder.stdout.readline() == b"held\n"
        held_options = options(endpoint, "one", os.path.join(shared_tmp, "held.tar"), format="oci-archive")
        outcome = _run_with_deadline(lambda: run(endpoint, held_options))
        assert isinstance(outcome, hostfs.UntrustedPathError) and "belongs to uid 65534" in str(outcome)
    finally:
        holder.kill()
        holder.wait()


def test_an_empty_layout_directory_made_by_another_user_is_refused_before_any_call(seeded, shared_tmp, as_nobody):
    endpoint, dummy = seeded
    dest = os.path.join(shared_tmp, "images")
    assert as_nobody(lambda: os.mkdir(dest, 0o755)) == "ok"
    endpoint.reset_stats()
    with pytest.raises(hostfs.UntrustedPathError, match="belongs to uid 65534"):
        run(endpoint, options(endpoint, "one", dest))
    assert endpoint.stats()["api_calls_total"] == 0 and os.listdir(dest) == []


def test_check_mode_says_when_the_only_change_is_an_unpack(seeded, private_containerd, tmp_path):
    endpoint, dummy = seeded
    run(endpoint, into_containerd(endpoint, private_containerd, "one", tmp_path / "s", unpack=False))
    planned = run(endpoint, into_containerd(endpoint, private_containerd, "one", tmp_path / "s", check_mode=True))
    assert planned["changed"] and planned["would_unpack"] is True
    assert {layer["action"] for layer in planned["layers"]} == {"present"}
    assert run(endpoint, into_containerd(endpoint, private_containerd, "one", tmp_path / "s"))["changed"]
    settled = run(endpoint, into_containerd(endpoint, private_containerd, "one", tmp_path / "s", check_mode=True))
    assert not settled["changed"] and "would_unpack" not in settled
