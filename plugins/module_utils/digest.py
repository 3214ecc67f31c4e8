# Copyright: Contributors to the ecrkit.images project
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Content digests: the one place that says what a digest is and how bytes are checked against one.

Only sha256 is supported, in the OCI image spec's form ``sha256:`` + 64 lowercase hex digits (ECR's
``imageDigest`` is "the sha256 digest of the image manifest"). A digest becomes a file name
(``blobs/sha256/<hex>``) only through :func:`digest_hex`, so a hostile one cannot name a path.
"""

from __future__ import annotations

import hashlib
import os
import re
from typing import Any, BinaryIO

from ansible_collections.ecrkit.images.plugins.module_utils.errors import EcrkitError

ALGORITHM = "sha256"
DIGEST_RE = re.compile(r"sha256:[0-9a-f]{64}")
HEX_RE = re.compile(r"[0-9a-f]{64}")
"""The hex part of a digest: how blob, partial and stamp files are named."""
ANY_DIGEST_RE = re.compile(r"(?P<algorithm>[a-z0-9]+(?:[+._-][a-z0-9]+)*):[A-Za-z0-9=_-]+")
"""The OCI grammar of a digest of any algorithm: told apart from a malformed one in messages."""
_CHUNK = 1 << 20


class InvalidDigestError(EcrkitError):
    """A digest that is not ``sha256:`` followed by 64 lowercase hexadecimal digits."""

    code = "invalid_digest"


def is_digest(value: Any) -> bool:
    """Whether ``value`` is ``sha256:`` and 64 lowercase hex digits."""
    return isinstance(value, str) and bool(DIGEST_RE.fullmatch(value))


def digest_hex(digest: Any) -> str:
    """The hex part of a valid digest; :class:`InvalidDigestError` in one sentence otherwise."""
    if is_digest(digest):
        return digest[len(ALGORITHM) + 1:]
    shown = repr(digest) if not isinstance(digest, str) or len(digest) <= 100 else repr(digest[:100]) + "..."
    if isinstance(digest, str) and ANY_DIGEST_RE.fullmatch(digest) and not digest.startswith(ALGORITHM + ":"):
        raise InvalidDigestError(f"Digest {shown} uses an algorithm this collection does not support; only sha256 is.")
    raise InvalidDigestError(f"{shown} is not a valid digest: expected sha256: followed by 64 lowercase hex digits.")


def of_bytes(data: bytes) -> str:
    """The digest of ``data``."""
    return f"{ALGORITHM}:{hashlib.sha256(data).hexdigest()}"


class Hasher:
    """The digest of bytes that arrive in pieces (a stream hashed while it is copied or sent)."""

    def __init__(self) -> None:
        self._sha = hashlib.new(ALGORITHM)

    def update(self, data: bytes) -> None:
        """Add the next piece."""
        self._sha.update(data)

    def digest(self) -> str:
        """The digest of every piece so far."""
        return f"{ALGORITHM}:{self._sha.hexdigest()}"


def of_fd(fd: int) -> str:
    """The digest of everything in the open file ``fd`` (read with pread: its offset is left alone)."""
    hasher = Hasher()
    offset = 0
    while True:
        chunk = os.pread(fd, _CHUNK, offset)
        if not chunk:
            return hasher.digest()
        hasher.update(chunk)
        offset += len(chunk)


def of_stream(stream: BinaryIO) -> str:
    """The digest of what is left to read in ``stream``."""
    hasher = Hasher()
    for chunk in iter(lambda: stream.read(_CHUNK), b""):
        hasher.update(chunk)
    return hasher.digest()


def matches(data: bytes, digest: str) -> bool:
    """Whether ``data`` hashes to ``digest``."""
    return of_bytes(data) == digest
