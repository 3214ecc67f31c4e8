# Copyright: Contributors to the ecrkit.images project
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Which paths the collection writes through on a shared host; each trap is laid by another user (uid 65534)."""

from __future__ import annotations

import os
import pathlib
import stat
import threading

import pytest

from ansible_collections.ecrkit.images.plugins.module_utils import hostfs

# pylint: disable=redefined-outer-name


@pytest.fixture
def shared(shared_tmp):
    return pathlib.Path(shared_tmp)


def test_a_chain_of_root_owned_directories_is_trusted_and_its_real_path_returned(tmp_path):
    (tmp_path / "real").mkdir()
    os.symlink(tmp_path / "real", tmp_path / "link")  # a link the operator made, in a directory of theirs
    assert hostfs.verify_directory(str(tmp_path / "link"), "the OCI layout") == str(tmp_path / "real")


def test_missing_directories_are_made_with_the_mode_asked(tmp_path):
    path = tmp_path / "a" / "b"
    assert hostfs.verify_directory(str(path), "the OCI layout", create=True, mode=0o700) == str(path)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o700
    with pytest.raises(hostfs.StorageError, match="does not exist"):
        hostfs.verify_directory(str(tmp_path / "c"), "the OCI layout")


def test_another_users_directory_in_a_shared_directory_is_refused(shared, as_nobody):
    trap = shared / "dest"
    assert as_nobody(lambda: os.mkdir(trap, 0o777)) == "ok"
    with pytest.raises(hostfs.UntrustedPathError, match=f"{trap} .*belongs to uid 65534 in the shared directory"):
        hostfs.verify_directory(str(trap / "layout"), "the OCI layout", create=True)
    assert not (trap / "layout").exists()
    with pytest.raises(hostfs.UntrustedPathError, match="belongs to uid 65534"):
        hostfs.verify_directory(str(trap), "the OCI layout")


def test_a_directory_others_can_write_without_the_sticky_bit_is_refused(tmp_path):
    open_dir = tmp_path / "open"
    open_dir.mkdir()
    os.chmod(open_dir, 0o777)
    with pytest.raises(hostfs.UntrustedPathError, match=r"is writable by other users \(mode 0777\)"):
        hostfs.verify_directory(str(open_dir / "layout"), "the OCI layout", create=True)
    with pytest.raises(hostfs.UntrustedPathError, match="chmod go-w"):
        hostfs.verify_directory(str(open_dir), "the OCI layout")


def test_a_shared_sticky_directory_is_accepted_only_where_asked(shared):
    with pytest.raises(hostfs.UntrustedPathError, match="writable by other users"):
        hostfs.verify_directory(str(shared), "the directory of the archive")
    assert hostfs.verify_directory(str(shared), "the directory of the archive", shared=True) == str(shared)
    mine = shared / "mine"
    mine.mkdir()
    assert hostfs.verify_directory(str(mine), "the OCI layout") == str(mine)


def test_a_link_planted_in_a_shared_directory_is_never_followed(shared, tmp_path, as_nobody):
    target = tmp_path / "etc"
    target.mkdir()
    assert as_nobody(lambda: os.symlink(target, shared / "dest")) == "ok"
    with pytest.raises(hostfs.UntrustedPathError, match="belongs to uid 65534"):
        hostfs.verify_directory(str(shared / "dest"), "the OCI layout", create=True)
    assert not os.listdir(target)


def test_a_private_directory_is_made_0700_and_one_of_ours_is_closed(tmp_path):
    path = hostfs.private_directory(str(tmp_path), "staging", "staging")
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o700
    os.chmod(path, 0o755)  # as an earlier version left it
    hostfs.private_directory(str(tmp_path), "staging", "staging")
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o700


def test_a_private_directory_prepared_by_another_user_is_refused(shared, tmp_path, as_nobody):
    assert as_nobody(lambda: os.mkdir(shared / "ecrkit-0", 0o777)) == "ok"
    with pytest.raises(hostfs.UntrustedPathError, match="belongs to uid 65534, not to the user this module runs as"):
        hostfs.private_directory(str(shared), "ecrkit-0", "the staging area")
    assert as_nobody(lambda: os.symlink(tmp_path, shared / "ecrkit-1")) == "ok"
    with pytest.raises(hostfs.UntrustedPathError, match="a link or a file was put there"):
        hostfs.private_directory(str(shared), "ecrkit-1", "the staging area")


def test_open_regular_refuses_links_fifos_hard_links_and_other_users_files(tmp_path, shared, as_nobody):
    precious = tmp_path / "precious"
    precious.write_bytes(b"secret")
    private = shared / "private"
    private.mkdir()
    os.symlink(precious, private / "link")
    os.link(precious, private / "hard")
    os.mkfifo(private / "fifo")
    flags = os.O_RDWR | os.O_CREAT
    for name, message in (("link", "is a symbolic link"), ("hard", "has other names"), ("fifo", "is not a regular file")):
        result = []
        worker = threading.Thread(target=lambda n=name: result.append(_refusal(str(private / n), flags)), daemon=True)
        worker.start()
        worker.join(10)
        assert not worker.is_alive(), f"opening the {name} blocked"
        assert message in result[0]
    assert precious.read_bytes() == b"secret"
    os.chmod(private, 0o777)
    assert as_nobody(lambda: (private / "theirs").write_bytes(b"x")) == "ok"
    with pytest.raises(hostfs.UntrustedPathError, match="belongs to uid 65534"):
        hostfs.open_regular(str(private / "theirs"), os.O_RDWR, "a lock file", owner=os.geteuid())
    fd = hostfs.open_regular(str(private / "new"), flags, "a new file", owner=os.geteuid())
    try:
        assert os.get_blocking(fd) and stat.S_IMODE(os.fstat(fd).st_mode) & 0o077 == 0
    finally:
        os.close(fd)


def _refusal(path: str, flags: int) -> str:
    try:
        os.close(hostfs.open_regular(path, flags, "a partial download"))
    except hostfs.UntrustedPathError as exc:
        return str(exc)
    return "opened"
