# Copyright: Contributors to the ecrkit.images project
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""What a digest is, and checking bytes against one."""

from __future__ import annotations

import hashlib
import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ansible_collections.ecrkit.images.plugins.module_utils import digest

HELLO = "sha256:" + hashlib.sha256(b"hello").hexdigest()


def test_only_lowercase_sha256_with_64_hex_digits_is_a_digest():
    assert digest.is_digest(HELLO) and digest.digest_hex(HELLO) == HELLO[7:]
    for bad in (HELLO.upper(), HELLO[:-1], "sha256:../../etc/passwd", None, 7, "md5:" + "0" * 32):
        assert not digest.is_digest(bad)
        with pytest.raises(digest.InvalidDigestError):
            digest.digest_hex(bad)


def test_another_algorithm_is_named_as_unsupported():
    with pytest.raises(digest.InvalidDigestError, match="uses an algorithm this collection does not support"):
        digest.digest_hex("sha512:" + "0" * 128)
    with pytest.raises(digest.InvalidDigestError, match="is not a valid digest"):
        digest.digest_hex("not a digest at all")


def test_bytes_and_files_hash_the_same(tmp_path):
    data = os.urandom(3 * (1 << 20) + 7)
    path = tmp_path / "blob"
    path.write_bytes(data)
    fd = os.open(path, os.O_RDONLY)
    try:
        os.lseek(fd, 5, os.SEEK_SET)
        assert digest.of_fd(fd) == digest.of_bytes(data) and os.lseek(fd, 0, os.SEEK_CUR) == 5
    finally:
        os.close(fd)
    assert digest.matches(b"hello", HELLO) and not digest.matches(b"hello!", HELLO)


def test_of_bytes():
    assert digest.of_bytes(b"") == "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    assert digest.of_bytes(memoryview(b"abc")) == digest.of_bytes(b"abc")


@settings(max_examples=300, deadline=None, derandomize=True)
@given(st.text(max_size=80) | st.builds(lambda hexpart: "sha256:" + hexpart, st.text(alphabet="0123456789abcdefABCDEF./\\\n", max_size=66)))
def test_any_digest_text_is_refused_or_names_a_file_in_blobs(text):
    blobs = os.path.join("/layout", "blobs", "sha256")
    try:
        hexpart = digest.digest_hex(text)
    except digest.InvalidDigestError as exc:
        assert str(exc).endswith(".")
        return
    assert os.path.dirname(os.path.join(blobs, hexpart)) == blobs and len(hexpart) == 64
