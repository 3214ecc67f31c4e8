# Copyright: Contributors to the ecrkit.images project
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Paths on a host that other users share: which ones this collection may write through, and how.

The modules usually run as root, on hosts where other users can create files in shared directories
(``/tmp``, ``/var/tmp``, a group's project directory). A path such a user could have prepared or can
still change is hostile: a directory planted at a predictable name, a symbolic or hard link swapped in
between a check and a write, a FIFO that blocks an ``open``, a lock held for ever.

The rule here: before a directory is written to, every component of its path is checked from ``/``
down, one ``openat`` with ``O_NOFOLLOW`` at a time, links resolved by hand (:func:`verify_directory`).
A component is acceptable when its parent is *trusted* (owned by root or by the effective user,
writable by nobody else but root's group), or when the parent is a shared sticky directory (``/tmp``)
and the component itself is ours or root's. Nobody else can then rename, replace or re-point any
component, so the real path stays what was checked and plain path operations below it are safe; the
callers use that real path from then on. A directory that
fails is refused in one sentence that says whose it is and what to do.

Private working directories (staging layouts, partial downloads, journals, locks, stamps) are created
with mode 0700 by :func:`private_directory`, or verified to be ours and closed to everyone else (a
directory of ours that is more open, as earlier versions made them, is tightened). Files in them are
opened by :func:`open_regular`: ``O_NOFOLLOW | O_NONBLOCK``, then ``fstat`` must show a regular file
with one name that belongs to us, so neither a link nor a FIFO planted there is ever used.

The primitives every writer shares live here too: bounded ``flock`` waits on such files
(:func:`flock`, :func:`try_flock`), new files under random names (:func:`create_temp`), and the
directory fsync that makes a rename durable (:func:`fsync_dir`).
"""

from __future__ import annotations

import errno
import fcntl
import os
import secrets
import stat
import time
from typing import FrozenSet, List, Optional, Tuple

from ansible_collections.ecrkit.images.plugins.module_utils.errors import EcrkitError, StorageError, storage_error

PRIVATE_MODE = 0o700
_MAX_LINKS = 40  # as the kernel's own limit on links in one path
_DIR_FLAGS = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | os.O_CLOEXEC | os.O_NOFOLLOW


class UntrustedPathError(StorageError):
    """A path another user controls (owns, or can write to), where this run would write or lock."""

    code = "untrusted_path"


class PathMissingError(StorageError):
    """A directory on the way to a path that must exist does not."""

    code = "path_missing"


def trusted_uids() -> FrozenSet[int]:
    """The owners whose directories this process may rely on: root and the effective user."""
    return frozenset((0, os.geteuid()))


def is_trusted(info: os.stat_result) -> bool:
    """Whether a directory with ``info`` can only be changed by root or by this user."""
    if info.st_uid not in trusted_uids():
        return False
    if info.st_mode & stat.S_IWOTH:
        return False
    return not (info.st_mode & stat.S_IWGRP) or info.st_gid == 0


def is_shared_sticky(info: os.stat_result) -> bool:
    """``/tmp`` and its kind: writable by others, but an entry can only be renamed or removed by its owner."""
    return bool(info.st_mode & stat.S_ISVTX) and info.st_uid in trusted_uids()


def _whose(info: os.stat_result) -> str:
    return "root" if info.st_uid == 0 else f"uid {info.st_uid}"


def untrusted_reason(info: os.stat_result) -> str:
    if info.st_uid not in trusted_uids():
        return f"belongs to {_whose(info)}, not to the user this module runs as (uid {os.geteuid()})"
    return "is writable by other users (mode {:04o})".format(stat.S_IMODE(info.st_mode))


def verify_directory(path: str, what: str, create: bool = False, mode: int = 0o777, shared: bool = False) -> str:
    """Check that only root and this user can change where ``path`` leads; return its real path.

    Each component is opened with ``O_NOFOLLOW`` relative to its parent. A component whose parent
    another user can write to is accepted only in a sticky directory and only when it is ours (or
    root's). A symbolic link is followed only when nobody else could have put it there or changed it,
    and its target is checked the same way. The directory itself must be trusted (:func:`is_trusted`),
    or with ``shared`` may also be a sticky shared directory such as ``/tmp`` (the caller then uses
    only entries of its own in it, :func:`private_directory` and :func:`open_regular` with ``owner``).
    With ``create``, missing components are made (the last one with ``mode``, less the umask).
    ``what`` names the directory for the operator ("the OCI layout", "the directory of the archive").
    """
    pending = [name for name in os.path.abspath(path).split("/") if name]
    resolved: List[str] = []
    links = 0
    fd = _open_resolved(resolved, what)
    try:
        info = os.fstat(fd)
        while pending:
            name = pending.pop(0)
            if name in (".", ".."):
                if name == ".." and resolved:
                    resolved.pop()
                    os.close(fd)
                    fd = -1
                    fd = _open_resolved(resolved, what)
                    info = os.fstat(fd)
                continue
            parent, parent_shown = info, "/" + "/".join(resolved)
            shown = os.path.join(parent_shown, name)
            entry = _entry(fd, name, shown, what, create, mode if not pending else 0o777)
            if not is_trusted(parent):
                if not is_shared_sticky(parent):
                    raise UntrustedPathError(
                        f"The directory {parent_shown}, on the way to {what} at {path}, {untrusted_reason(parent)}, so "
                        "another user could swap what this run writes; use a path whose directories only root and "
                        "this user can change.", parent_shown)
                if entry.st_uid not in trusted_uids():
                    raise UntrustedPathError(
                        f"{shown} (on the way to {what} at {path}) belongs to {_whose(entry)} in the shared directory "
                        f"{parent_shown}; remove it, or choose another path.", shown)
            if stat.S_ISLNK(entry.st_mode):
                links += 1
                if links > _MAX_LINKS:
                    raise StorageError(f"{path} leads through more than {_MAX_LINKS} symbolic links.", path)
                target = os.readlink(name, dir_fd=fd)
                pending = [part for part in target.split("/") if part] + pending
                if target.startswith("/"):
                    resolved = []
                    os.close(fd)
                    fd = -1
                    fd = _open_resolved(resolved, what)
                    info = os.fstat(fd)
                continue
            child = _open_child(fd, name, shown, path, what)
            os.close(fd)
            fd = child
            info = os.fstat(fd)
            resolved.append(name)
            if (info.st_dev, info.st_ino) != (entry.st_dev, entry.st_ino):
                raise UntrustedPathError(
                    f"{shown} (on the way to {what} at {path}) was replaced while it was being checked; check who "
                    "else writes there, then run again.", shown)
        if not is_trusted(info) and not (shared and is_shared_sticky(info)):
            raise UntrustedPathError(
                f"{what[:1].upper() + what[1:]} at {path} {untrusted_reason(info)}, so another user could change "
                "what this run writes there; give it to this user and close it to others (chown, chmod go-w), or "
                "choose another path.", path)
        return "/" + "/".join(resolved)
    finally:
        if fd >= 0:
            os.close(fd)


def trusted_file(path: str, what: str) -> Optional[str]:
    """The real path of the regular file ``path`` when only root and this user can change it and every
    directory and link leading to it (as :func:`verify_directory`, a sticky shared directory only for an
    entry of root's or ours); None when nothing is there. ``what`` names the file for the operator."""
    for dummy in range(_MAX_LINKS):
        try:
            directory = verify_directory(os.path.dirname(os.path.abspath(path)), f"the directory of {what}", shared=True)
            info = os.lstat(os.path.join(directory, os.path.basename(path)))
        except (PathMissingError, FileNotFoundError):
            return None
        except OSError as exc:
            raise storage_error(exc, f"checking {what}", path) from None
        real = os.path.join(directory, os.path.basename(path))
        if not is_trusted(os.stat(directory)) and info.st_uid not in trusted_uids():
            raise UntrustedPathError(f"{real} ({what}) belongs to {_whose(info)} in the shared directory {directory}; "
                                     "remove it, or name one in a directory of root's.", real)
        if stat.S_ISLNK(info.st_mode):
            path = os.path.join(directory, os.readlink(real))
            continue
        if not stat.S_ISREG(info.st_mode):
            return None
        if info.st_uid not in trusted_uids() or info.st_mode & 0o022:
            raise UntrustedPathError(f"{real} ({what}) {untrusted_reason(info)}, so another user could change what "
                                     "runs; give it to root and close it to others (chown, chmod go-w), or name another.",
                                     real)
        return real
    raise StorageError(f"{path} leads through more than {_MAX_LINKS} symbolic links.", path)


def _open_resolved(names: List[str], what: str) -> int:
    """Open ``/names...``, a path of real directories already checked, without following links."""
    shown = "/"
    try:
        fd = os.open("/", _DIR_FLAGS)
    except OSError as exc:
        raise storage_error(exc, f"checking {what}", shown) from None
    for name in names:
        shown = os.path.join(shown, name)
        try:
            child = _open_child(fd, name, shown, shown, what)
        finally:
            os.close(fd)
        fd = child
    return fd


def _open_child(fd: Optional[int], name: str, shown: str, path: str, what: str, refusal: str = "") -> int:
    """Open the directory ``name`` (relative to ``fd``) without following a link; ``refusal`` is the
    sentence for a link or a non-directory there."""
    try:
        return os.open(name, _DIR_FLAGS, dir_fd=fd)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            raise UntrustedPathError(refusal or (
                f"{shown} (on the way to {what} at {path}) is not a directory, or changed while it was being "
                "checked; check who else writes there, then run again."), shown) from None
        raise storage_error(exc, f"opening {what}", shown) from None


def _entry(fd: int, name: str, shown: str, what: str, create: bool, mode: int) -> os.stat_result:
    """lstat ``name`` in the directory ``fd``, making it first when ``create`` and it is missing."""
    try:
        return os.stat(name, dir_fd=fd, follow_symlinks=False)
    except FileNotFoundError:
        if not create:
            raise PathMissingError(f"{shown} does not exist (it is on the way to {what}).", shown) from None
    except OSError as exc:
        raise storage_error(exc, f"checking {what}", shown) from None
    _make_directory(name, mode, what, shown, fd)
    return os.stat(name, dir_fd=fd, follow_symlinks=False)


def _make_directory(path: str, mode: int, what: str, shown: str, dir_fd: Optional[int] = None) -> None:
    """mkdir, where one made meanwhile (by another run or another user) is judged like any existing entry."""
    try:
        os.mkdir(path, mode, dir_fd=dir_fd)
    except FileExistsError:
        pass
    except OSError as exc:
        raise storage_error(exc, f"creating {what}", shown) from None


def private_directory(parent: str, name: str, what: str) -> str:
    """``parent/name`` as a directory only this user can enter (made with mode 0700); return its path.

    ``parent`` must be a directory already checked (:func:`verify_directory`) or itself private. An
    existing one must be a real directory of ours: a link, someone else's directory or a file is
    refused; one of ours that others may enter is closed to them.
    """
    path = os.path.join(parent, name)
    _make_directory(path, PRIVATE_MODE, what, path)
    fd = _open_child(None, path, path, path, what, f"{path}, where {what} is kept, is not a directory of this collection "
                     "(a link or a file was put there); remove it and run again.")
    try:
        info = os.fstat(fd)
        if info.st_uid != os.geteuid():
            raise UntrustedPathError(
                f"{path}, where {what} is kept, belongs to {_whose(info)}, not to the user this module runs as "
                f"(uid {os.geteuid()}); remove it and run again.", path)
        if stat.S_IMODE(info.st_mode) & 0o077:
            os.fchmod(fd, PRIVATE_MODE)
    except OSError as exc:
        raise storage_error(exc, f"securing {what}", path) from None
    finally:
        os.close(fd)
    return path


def public_directory(path: str, mode: int, what: str) -> str:
    """Make (or check) the directory ``path``, readable by others but changeable only by this user or
    root, inside a directory already verified; return it."""
    try:
        os.mkdir(path, mode)
    except FileExistsError:
        pass
    except OSError as exc:
        raise storage_error(exc, f"creating a directory of {what}", path) from None
    info = os.lstat(path)
    if not stat.S_ISDIR(info.st_mode):
        raise UntrustedPathError(f"{path} is not a plain directory, so {what} cannot be kept there; remove it, then run again.", path)
    if not is_trusted(info):
        raise UntrustedPathError(
            f"{path} {untrusted_reason(info)}, so another user could change {what}; give it to this user and close "
            "it to others (chown, chmod go-w).", path)
    return path


def open_regular(path: str, flags: int, what: str, mode: int = 0o600, owner: Optional[int] = None) -> int:
    """Open ``path`` (flags as for ``os.open``) only if it is a regular file with one name; return the fd.

    Never follows a symbolic link (ELOOP becomes :class:`UntrustedPathError`) and never blocks on a FIFO
    (``O_NONBLOCK`` until ``fstat`` shows a regular file). With ``owner`` (a uid), the file must belong
    to it. A file created here gets ``mode`` less the umask.
    """
    try:
        fd = os.open(path, flags | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, mode)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise UntrustedPathError(
                f"{path}, {what}, is a symbolic link; this collection never makes one there, so nothing is read or "
                "written through it: remove it (and find out who put it there), then run again.", path) from None
        if exc.errno == errno.ENXIO:  # a FIFO opened for writing with no reader
            raise UntrustedPathError(f"{path}, {what}, is not a regular file (a FIFO); remove it, then run again.",
                                     path) from None
        raise
    try:
        info = os.fstat(fd)
        problem = ""
        if not stat.S_ISREG(info.st_mode):
            problem = "is not a regular file"
        elif info.st_nlink > 1:
            problem = "has other names (hard links)"
        elif owner is not None and info.st_uid != owner:
            problem = f"belongs to {_whose(info)}"
        if problem:
            raise UntrustedPathError(
                f"{path}, {what}, {problem}; this collection never makes such a file there, so it is not used: "
                "remove it, then run again.", path)
        fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_NONBLOCK)
    except BaseException:
        os.close(fd)
        raise
    return fd


# small primitives every writer on the host uses ---------------------------------------------------


class LockTimeoutError(EcrkitError):
    """Another process held a lock for longer than the timeout."""

    code = "lock_timeout"


def fsync_dir(path: str) -> None:
    """fsync a directory so that a rename in it survives a crash (ignored where unsupported)."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF):
            raise
    finally:
        os.close(fd)


def create_temp(directory: str, prefix: str, suffix: str = "", mode: int = 0o600) -> Tuple[int, str]:
    """Create a new file with a random name (``O_EXCL``: never an existing file, link or FIFO) and
    ``mode`` less the umask (private by default: nobody reads an image while it is written); return
    (fd, path)."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    while True:
        path = os.path.join(directory, prefix + secrets.token_hex(8) + suffix)
        try:
            return os.open(path, flags, mode), path
        except FileExistsError:
            continue


def unlink_quiet(path: str) -> bool:
    """Remove ``path``; whether it was there (other errors are raised)."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        return False
    return True


def flock(path: str, timeout: float, what: str, shared: bool = False) -> int:
    """Open (creating) ``path`` and take an exclusive (with ``shared``, a shared) flock on it; return the fd.

    ``timeout`` 0 tries once; every wait is bounded (:class:`LockTimeoutError`). The lock file must be
    a regular file of this user (a link, a FIFO or another user's file planted there is refused, never
    waited on). The lock file may be unlinked by its holder (a finished claim) or by cleanup; a lock
    taken on a file that is no longer at ``path`` is dropped and taken again on the new one.
    """
    deadline = time.monotonic() + max(0.0, timeout)
    delay = 0.002
    while True:
        try:
            fd = open_regular(path, os.O_RDONLY | os.O_CREAT, f"the lock file of {what}", owner=os.geteuid())
        except OSError as exc:
            raise storage_error(exc, f"locking {what}", path) from None
        try:
            while True:
                try:
                    fcntl.flock(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        raise LockTimeoutError(
                            f"Timed out after {timeout:g} s waiting for {what} (lock file {path}), which another "
                            "process is holding; let it finish, or raise the timeout.") from None
                    time.sleep(delay)
                    delay = min(delay * 2, 0.05)
            try:
                current = os.lstat(path)
            except FileNotFoundError:
                current = None
            held = os.fstat(fd)
            if current is not None and (current.st_ino, current.st_dev) == (held.st_ino, held.st_dev):
                return fd
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)


def try_flock(path: str) -> Optional[int]:
    """flock an existing file without waiting; the fd, or None when it is missing or held elsewhere."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd
