# Copyright: Contributors to the ecrkit.images project
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Verification stamps: which stored blobs are known to hash to their digest, so that a run that
changes nothing reads no layer.

A stamp (``<directory>/<hex>``) holds one line, the inode, size, mtime and ctime of the blob file when
its bytes were last known to match (at commit, or after a check hashed them). A file whose stamp still
matches is not read again; any write to it, a replacement or a ``touch`` changes its ctime or inode, and
it is hashed again, so a tampered blob is found on the next run. Stamps are a cache: one that is
missing, damaged or not ours only costs a hash.
"""

from __future__ import annotations

import contextlib
import os
from typing import Callable

from ansible_collections.ecrkit.images.plugins.module_utils import hostfs
from ansible_collections.ecrkit.images.plugins.module_utils.digest import HEX_RE, digest_hex
from ansible_collections.ecrkit.images.plugins.module_utils.errors import EcrkitError


def stamp_line(info: os.stat_result) -> bytes:
    """What a stamp holds for a file with this ``lstat``."""
    return f"{info.st_ino} {info.st_size} {info.st_mtime_ns} {info.st_ctime_ns}\n".encode("ascii")


class VerifiedStamps:
    """The stamps of one blob store. ``directory`` is where they live; ``make`` creates it when missing
    (checking that it can be trusted) and returns it, before a stamp is written."""

    def __init__(self, directory: str, make: Callable[[], str]) -> None:
        self.directory = directory
        self._make = make

    def matches(self, digest: str, info: os.stat_result) -> bool:
        """Whether the stamp of ``digest`` says that a file with this ``lstat`` was verified."""
        path = os.path.join(self.directory, digest_hex(digest))
        try:
            with os.fdopen(hostfs.open_regular(path, os.O_RDONLY, "a verification stamp"), "rb") as handle:
                return handle.read(200) == stamp_line(info)
        except (OSError, EcrkitError):
            return False  # no stamp (yet), or not one of ours: hash it

    def record(self, digest: str, blob_path: str, info: os.stat_result | None = None) -> None:
        """Stamp the blob file ``blob_path`` as verified; best effort (a stamp that cannot be written only
        means the blob is hashed again next time).

        Written in place, not through a temp file a kill could leave behind: a torn or interleaved stamp
        never equals a blob's stat line, so the worst it costs is that hash."""
        try:
            if info is None:
                info = os.lstat(blob_path)
            fd = hostfs.open_regular(os.path.join(self._make(), digest_hex(digest)), os.O_WRONLY | os.O_CREAT,
                                     "a verification stamp", owner=os.geteuid())
            try:
                os.ftruncate(fd, 0)  # after the checks: O_TRUNC would cut a file before they ran
                os.write(fd, stamp_line(info))
            finally:
                os.close(fd)
        except (OSError, EcrkitError):
            pass

    def remove_orphans(self, blob_path: Callable[[str], str]) -> None:
        """Remove the stamps whose blob (at ``blob_path(digest)``) is gone: a stamp is only worth its blob."""
        try:
            names = os.listdir(self.directory)
        except OSError:
            return  # none yet; or unreadable, and then left as it is: a stale stamp costs nothing but space
        for name in names:
            if HEX_RE.fullmatch(name) and not os.path.lexists(blob_path("sha256:" + name)):
                with contextlib.suppress(OSError):
                    hostfs.unlink_quiet(os.path.join(self.directory, name))
