# -*- coding: utf-8 -*-
# Copyright: Contributors to the ecrkit.images project
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Tests for plugins/module_utils/tararchive.py: a tar read in place through the archives' readers.

Compressed archives read through an anonymous temporary copy (and zstd refused), links followed inside
the archive, truncated, malformed and tampered tars, hostile members (absolute names, ``..``, links
leaving the archive, duplicates, devices, FIFOs, sparse files) refused whole as a push reads its source
and as a pull reads its destination, fuzzed damage and member names, non-regular files refused without
waiting, decompression bombs bounded by the tar's headers and the free space, oversized extended headers,
and any failure of a scan turned into one ArchiveError sentence.
"""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
import os
import shutil
import socket
import stat
import sys
import tarfile
import tempfile
import zlib

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ansible_collections.ecrkit.images.plugins.module_utils import archive as archive_module
from ansible_collections.ecrkit.images.plugins.module_utils import tararchive
from ansible_collections.ecrkit.images.plugins.module_utils.archive import (
    DOCKER_ARCHIVE,
    FORMATS,
    OCI_ARCHIVE,
    ArchiveFormatError,
    UnsafeArchiveError,
    write_docker_archive,
    write_oci_archive,
)
from ansible_collections.ecrkit.images.plugins.module_utils.archive_read import open_docker_archive, open_oci_archive, read_archive_summary
from ansible_collections.ecrkit.images.plugins.module_utils.errors import EcrkitError
from ansible_collections.ecrkit.images.plugins.module_utils.layout_format import BLOB_DIGEST_MISMATCH, BLOB_PRESENT

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:  # the helpers beside this file
    sys.path.insert(0, HERE)

# pylint: disable=wrong-import-position
from archive_support import (  # noqa: E402,F401  pylint: disable=unused-import
    add_file, add_link, docker_manifest, fixture_images, one_sentence, read_as_push_source, release_fifo, sha, valid_members,
    within_deadline,
)


# compressed archives -----------------------------------------------------------------------------

@pytest.mark.parametrize("compression", ["gzip", "bzip2", "xz"])
def test_compressed_archives_are_read_through_a_temporary_copy(images, tmp_path, compression):
    layout, built = images
    plain = str(tmp_path / "single.tar")
    write_oci_archive(layout, "single", plain)
    packed = str(tmp_path / ("single.tar." + compression))
    opener = {"gzip": gzip.open, "bzip2": bz2.open, "xz": lzma.open}[compression]
    with open(plain, "rb") as source, opener(packed, "wb") as target:
        shutil.copyfileobj(source, target)
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    with open_oci_archive(packed, tmpdir=str(scratch)) as archive:
        assert archive.compression == compression
        assert archive.find_tag("single")["digest"] == built["single"].digest
        for desc in built["single"].blob_descriptors():
            assert archive.has_blob(desc.digest, desc.size, verify=True)
        assert os.listdir(scratch) == []  # an anonymous file: nothing to clean up, even after a crash
    with pytest.raises(ArchiveFormatError, match=f"is compressed \\({compression}\\); it is not decompressed here"):
        read_archive_summary(packed, OCI_ARCHIVE)  # a pull rewrites it: it never decompresses to compare


def test_unreadable_compressions(tmp_path):
    (tmp_path / "a.tar.zst").write_bytes(b"\x28\xb5\x2f\xfd" + b"\x00" * 100)
    with pytest.raises(ArchiveFormatError, match=r"compressed with zstd, which cannot be read here; decompress it first \(zstd -d\)"):
        open_oci_archive(str(tmp_path / "a.tar.zst"))
    (tmp_path / "a.tar.gz").write_bytes(gzip.compress(b"x" * 10000)[:-20])
    with pytest.raises(ArchiveFormatError, match="is not a valid gzip file"):
        open_docker_archive(str(tmp_path / "a.tar.gz"))
    with pytest.raises(ArchiveFormatError, match="There is no archive at"):
        open_docker_archive(str(tmp_path / "none.tar"))
    with pytest.raises(ArchiveFormatError, match="not a regular file"):
        open_docker_archive(str(tmp_path))


# links, truncated and tampered tars --------------------------------------------------------------

def test_links_inside_the_archive_are_followed(tmp_path):
    path = str(tmp_path / "links.tar")
    with tarfile.open(path, "w") as tar:
        valid_members(tar)
        add_link(tar, "legacy/layer.tar", "../layer.tar")
        add_link(tar, "hard.tar", "layer.tar", tarfile.LNKTYPE)
        add_link(tar, "chain.tar", "legacy/layer.tar")
        add_file(tar, "manifest.json", docker_manifest(["legacy/layer.tar", "hard.tar", "./chain.tar"]))
    with open_docker_archive(path) as archive:
        for name in archive.manifest[0]["Layers"]:
            with archive.open_member(name) as handle:
                assert handle.read() == b"layer"
        assert archive.config_digest(archive.manifest[0]) == sha(b"{}")


def test_truncated_and_malformed_tars(images, tmp_path):
    layout, dummy = images
    good = str(tmp_path / "good.tar")
    write_docker_archive(layout, "plain", good, ["a:1"])
    with open(good, "rb") as handle:
        data = handle.read()
    for name, content, message in (("cut.tar", data[:len(data) // 2], "truncated|not a readable tar"),
                                   ("empty.tar", b"", "not a readable tar archive"),
                                   ("noise.tar", os.urandom(4096), "not a readable tar archive")):
        (tmp_path / name).write_bytes(content)
        with pytest.raises(ArchiveFormatError, match=message):
            open_docker_archive(str(tmp_path / name))


def test_tampered_blob_in_an_oci_archive(images, tmp_path):
    layout, built = images
    image = built["single"]
    path = str(tmp_path / "x.tar")
    write_oci_archive(layout, "single", path)
    with tarfile.open(path) as tar:
        offset = tar.getmember("blobs/sha256/" + image.layers[0].hex).offset_data
    with open(path, "r+b") as handle:
        handle.seek(offset + 3)
        handle.write(b"\xff")
    with open_oci_archive(path) as archive:
        assert archive.blob_status(image.layers[0].digest, image.layers[0].size) == BLOB_PRESENT
        assert archive.blob_status(image.layers[0].digest, image.layers[0].size, verify=True) == BLOB_DIGEST_MISMATCH


# hostile archives of both kinds, as a push reads its source and as a pull reads what is at its dest ---

def _pax_path(tar, name):
    """A member whose ustar name is harmless but whose PAX header renames it (readers apply the header)."""
    info = tarfile.TarInfo("innocent")
    info.size = 1
    info.pax_headers = {"path": name}
    tar.addfile(info, io.BytesIO(b"x"))


BLOB_NAME = "blobs/sha256/" + "ab" * 32
UNSAFE = {
    "dotdot": (lambda tar: add_file(tar, "../evil"), "path leaves the archive"),
    "dotdot deep": (lambda tar: add_file(tar, "blobs/sha256/../../../evil"), "path leaves the archive"),
    "dotdot in a PAX header": (lambda tar: _pax_path(tar, "../../evil"), "path leaves the archive"),
    "absolute in a PAX header": (lambda tar: _pax_path(tar, "/tmp/evil"), "absolute path"),
    "absolute": (lambda tar: add_file(tar, "/etc/evil"), "absolute path"),
    "absolute long name": (lambda tar: add_file(tar, "/" + "a" * 300), "absolute path"),
    "symlink to absolute": (lambda tar: add_link(tar, BLOB_NAME, "/etc/passwd"), "to an absolute path (/etc/passwd)"),
    "symlink escaping": (lambda tar: add_link(tar, BLOB_NAME, "../../../outside"), "pointing outside the archive"),
    "symlink escaping once normalised": (lambda tar: add_link(tar, "a", "b/../../c"), "pointing outside the archive"),
    "symlink to the archive root": (lambda tar: add_link(tar, "blobs/root", ".."), "pointing outside the archive"),
    "hardlink escaping": (lambda tar: add_link(tar, BLOB_NAME, "../outside", tarfile.LNKTYPE), "pointing outside the archive"),
    "hardlink to absolute": (lambda tar: add_link(tar, BLOB_NAME, "/etc/shadow", tarfile.LNKTYPE), "to an absolute path"),
    "duplicate index.json": (lambda tar: add_file(tar, "./index.json", b'{"schemaVersion": 2, "manifests": []}'),
                             "holds index.json more than once"),
    "duplicate blob": (lambda tar: (add_file(tar, BLOB_NAME, b"one"), add_file(tar, BLOB_NAME, b"two")), "more than once"),
    "device": (lambda tar: add_file(tar, "blobs/sda", b"", type=tarfile.CHRTYPE), "device, FIFO or sparse"),
    "fifo": (lambda tar: add_file(tar, "blobs/pipe", b"", type=tarfile.FIFOTYPE), "device, FIFO or sparse"),
    "line break in a name": (lambda tar: add_file(tar, "../a\nTraceback (most recent call last):"),
                             "leaves the archive (../a\\nTraceback (most recent call last):)"),
    "undecodable link target": (lambda tar: add_link(tar, "blobs/l", "../../\udcff"), "pointing outside the archive (../../\\udcff)"),
    "NUL in a PAX name": (lambda tar: _pax_path(tar, "blobs/a\x00/../../evil"), "NUL byte|leaves the archive"),
}


def _layout_members(tar, archive_format):
    """What makes the archive look like one of ``archive_format``, before the hostile member."""
    add_file(tar, "oci-layout", b'{"imageLayoutVersion": "1.0.0"}')
    add_file(tar, "index.json", b'{"schemaVersion": 2, "manifests": []}')
    if archive_format == DOCKER_ARCHIVE:
        valid_members(tar)
        add_file(tar, "manifest.json", docker_manifest(["layer.tar"]))


@pytest.mark.parametrize("reader", [read_as_push_source, read_archive_summary], ids=["push source", "pull summary"])
@pytest.mark.parametrize("archive_format", [OCI_ARCHIVE, DOCKER_ARCHIVE])
@pytest.mark.parametrize("case", sorted(UNSAFE))
def test_unsafe_archives_are_refused_whole_and_nothing_is_written(tmp_path, case, archive_format, reader):
    build, message = UNSAFE[case]
    outside = tmp_path / "outside"
    outside.write_bytes(b"untouched")
    work = tmp_path / "work"
    work.mkdir()
    path = str(work / "hostile.tar")
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT if "PAX" in case else tarfile.GNU_FORMAT) as tar:
        _layout_members(tar, archive_format)
        build(tar)
    before = {str(item): item.stat().st_mtime_ns for item in tmp_path.rglob("*")}
    with pytest.raises(UnsafeArchiveError) as caught:
        reader(path, archive_format)
    text = str(caught.value)
    assert any(part in text for part in message.split("|")), text
    assert text.endswith(".") and "\n" not in text and path in text
    assert {str(item): item.stat().st_mtime_ns for item in tmp_path.rglob("*")} == before  # nothing written anywhere
    assert outside.read_bytes() == b"untouched"


def _small_archive(archive_format):
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        _layout_members(tar, archive_format)
        add_link(tar, "legacy/layer.tar", "../layer.tar")
    return buffer.getvalue()


SMALL_ARCHIVES = {archive_format: _small_archive(archive_format) for archive_format in FORMATS}


@settings(max_examples=100, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(sorted(FORMATS)),
       st.lists(st.tuples(st.integers(min_value=0), st.binary(min_size=1, max_size=8)), min_size=1, max_size=6),
       st.booleans())
def test_damaged_archives_raise_only_archive_errors(archive_format, edits, truncate):
    """Bytes of a small valid archive overwritten here and there (headers, sizes, names, checksums), or
    cut short: reading it raises an EcrkitError with a one-line message, or reads it; never anything else."""
    data = bytearray(SMALL_ARCHIVES[archive_format])
    for position, chunk in edits:
        position %= len(data)
        data[position:position + len(chunk)] = chunk
    if truncate:
        data = data[:edits[0][0] % len(data)]
    with tempfile.TemporaryDirectory() as directory:
        path = os.path.join(directory, "damaged.tar")
        with open(path, "wb") as handle:
            handle.write(bytes(data))
        for reader in (read_as_push_source, read_archive_summary):
            try:
                reader(path, archive_format)
            except EcrkitError as exc:
                assert str(exc) and "\n" not in str(exc) and "Traceback" not in str(exc)
        assert os.listdir(directory) == ["damaged.tar"]


_NAME_PARTS = st.sampled_from(["blobs", "sha256", "ab" * 32, "..", ".", "", "layer.tar", "manifest.json", "index.json", "oci-layout",
                               "a", "/", "\\", "~", "\u00e9", " ", "\n", "\udcff", "x" * 300])
_MEMBER_NAMES = st.lists(_NAME_PARTS, min_size=1, max_size=5).map("/".join)
_MEMBERS = st.lists(st.tuples(st.sampled_from([tarfile.REGTYPE, tarfile.REGTYPE, tarfile.DIRTYPE, tarfile.SYMTYPE, tarfile.LNKTYPE,
                                               tarfile.FIFOTYPE, tarfile.CHRTYPE]),
                              _MEMBER_NAMES, _MEMBER_NAMES, st.binary(max_size=4)), max_size=6)


@settings(max_examples=250, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(sorted(FORMATS)), _MEMBERS)
def test_archives_of_any_members_are_read_safely_or_refused(archive_format, members):
    """Members of every kind with names and link targets built from '..', '/', '.', real names: an archive
    that opens has only relative, '..'-free names, and every link leads to a member; else an EcrkitError."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        _layout_members(tar, archive_format)
        for kind, name, target, data in members:
            info = tarfile.TarInfo(name)
            info.type = kind
            if kind in (tarfile.SYMTYPE, tarfile.LNKTYPE):
                info.linkname = target
            info.size = len(data) if kind == tarfile.REGTYPE else 0
            tar.addfile(info, io.BytesIO(data) if kind == tarfile.REGTYPE else None)
    with tempfile.TemporaryDirectory() as directory:
        path = os.path.join(directory, "members.tar")
        with open(path, "wb") as handle:
            handle.write(buffer.getvalue())
        opener = open_oci_archive if archive_format == OCI_ARCHIVE else open_docker_archive
        try:
            with opener(path) as archive:
                for name in archive.names():
                    assert not name.startswith("/") and ".." not in name.split("/") and name
                    if archive.has_member(name):
                        assert archive.member_size(name) >= 0
                read_archive_summary(path, archive_format)
        except EcrkitError as exc:
            text = str(exc)
            assert text.endswith(".") and "\n" not in text and len(text) < 1000 + len(path)
            text.encode("utf-8")  # no undecodable name shows through as a lone surrogate
        assert os.listdir(directory) == ["members.tar"]


# FIFOs and other non-regular files are refused without waiting on them ---------------------------

def test_non_regular_sources_are_refused_without_waiting(tmp_path):
    fifo = str(tmp_path / "pipe.tar")
    os.mkfifo(fifo)
    os.symlink(fifo, tmp_path / "link-to-pipe.tar")
    listening = socket.socket(socket.AF_UNIX)
    listening.bind(str(tmp_path / "sock.tar"))
    cases = {fifo: "a FIFO", str(tmp_path / "link-to-pipe.tar"): "a FIFO", str(tmp_path / "sock.tar"): "a socket",
             str(tmp_path): "a directory"}
    if os.geteuid() == 0:
        os.mknod(tmp_path / "null.tar", stat.S_IFCHR | 0o600, os.makedev(1, 3))
        cases[str(tmp_path / "null.tar")] = "a character device"
    try:
        for path, kind_text in cases.items():
            for opener in (open_oci_archive, open_docker_archive):
                kind, result = within_deadline(lambda p=path, o=opener: o(p).close(), release_fifo(fifo))
                assert kind == "raised" and isinstance(result, ArchiveFormatError), (path, kind, result)
                assert f"is {kind_text}, not a regular file, so it is not an image archive" in one_sentence(result)
    finally:
        listening.close()


# decompression bombs: bounded by the tar's own headers and by the free space; never for a summary ---

BOMB_SIZE = 256 << 20


def compress_stream(compression, pieces):
    """Compress an iterable of byte strings as one stream, without holding the whole input."""
    compressor = {"gzip": lambda: zlib.compressobj(9, zlib.DEFLATED, 31), "bzip2": lambda: bz2.BZ2Compressor(9),
                  "xz": lambda: lzma.LZMACompressor(preset=1)}[compression]()
    out = [compressor.compress(piece) for piece in pieces]
    out.append(compressor.flush())
    return b"".join(out)


def zeros(count):
    chunk = bytes(1 << 20)
    for dummy in range(count // len(chunk)):
        yield chunk


@pytest.fixture(name="zero_bombs", scope="module")
def fixture_zero_bombs(tmp_path_factory):
    """256 MiB of zeros, compressed each way (from 208 bytes to 255 KiB)."""
    directory = tmp_path_factory.mktemp("bombs")
    bombs = {}
    for compression in ("gzip", "bzip2", "xz"):
        path = directory / f"zeros.tar.{compression}"
        path.write_bytes(compress_stream(compression, zeros(BOMB_SIZE)))
        bombs[compression] = str(path)
    return bombs


@pytest.fixture(name="temp_copies")
def fixture_temp_copies(tmp_path, monkeypatch):
    """A private TMPDIR, and every temporary file the code makes there, kept open so that its size can be
    read after the code dropped it (the copies are anonymous files: a directory listing would not show them)."""
    private = tmp_path / "tmpdir"
    private.mkdir()
    monkeypatch.setenv("TMPDIR", str(private))
    monkeypatch.setattr(tempfile, "tempdir", str(private))
    kept = []
    real = tempfile.TemporaryFile

    def recording(*args, **kwargs):
        handle = real(*args, **kwargs)
        kept.append(os.dup(handle.fileno()))
        return handle

    monkeypatch.setattr(tempfile, "TemporaryFile", recording)

    class Copies:
        directory = private

        @staticmethod
        def largest():
            assert os.listdir(private) == []
            return max((os.fstat(fd).st_size for fd in kept), default=0)

        @staticmethod
        def count():
            return len(kept)

    yield Copies
    for fd in kept:
        os.close(fd)


@pytest.mark.parametrize("compression", ["gzip", "bzip2", "xz"])
def test_a_compressed_bomb_at_the_destination_is_not_decompressed(zero_bombs, temp_copies, compression):
    for archive_format in FORMATS:
        with pytest.raises(ArchiveFormatError, match=f"is compressed \\({compression}\\); it is not decompressed here") as caught:
            read_archive_summary(zero_bombs[compression], archive_format)
        one_sentence(caught.value)
    assert temp_copies.count() == 0


@pytest.mark.parametrize("compression", ["gzip", "bzip2", "xz"])
def test_a_compressed_bomb_as_a_push_source_stops_where_its_tar_ends(zero_bombs, temp_copies, compression):
    for opener in (open_oci_archive, open_docker_archive):
        with pytest.raises(ArchiveFormatError, match="has no oci-layout|has no manifest.json"):
            opener(zero_bombs[compression])
    assert temp_copies.largest() < 1 << 20  # the first zero block ends the tar: nothing after it is decompressed


@pytest.mark.parametrize("compression", ["gzip", "xz"])
def test_data_after_the_end_of_a_compressed_tar_is_not_decompressed(images, tmp_path, temp_copies, compression):
    layout, built = images
    plain = tmp_path / "single.tar"
    write_oci_archive(layout, "single", str(plain))
    packed = tmp_path / ("single.tar." + compression)
    packed.write_bytes(compress_stream(compression, [plain.read_bytes()] + list(zeros(BOMB_SIZE))))
    with open_oci_archive(str(packed)) as archive:
        for desc in built["single"].blob_descriptors():
            assert archive.has_blob(desc.digest, desc.size, verify=True)
    assert temp_copies.largest() <= plain.stat().st_size


def tar_header(name, size, kind=tarfile.REGTYPE):
    """One ustar header block, its size in base-256 when octal cannot hold it (as GNU tar writes it)."""
    block = bytearray(tarfile.BLOCKSIZE)
    block[0:len(name)] = name.encode()
    block[100:108] = b"0000644\x00"
    block[108:116] = block[116:124] = b"0000000\x00"
    if size < 8 ** 11:
        block[124:136] = b"%011o\x00" % size
    else:
        block[124:136] = b"\x80" + size.to_bytes(11, "big")
    block[136:148] = b"00000000000\x00"
    block[156:157] = kind
    block[257:265] = b"ustar\x0000"
    block[148:156] = b"        "
    block[148:156] = b"%06o\x00 " % sum(block)
    return bytes(block)


def pax_header(records):
    payload = b""
    for key, value in records.items():
        record = f" {key}={value}\n".encode()
        length = len(record) + len(str(len(record)))
        length += len(str(length)) - len(str(len(record)))
        payload += str(length).encode() + record
    return tar_header("PaxHeader", len(payload), tarfile.XHDTYPE) + payload + bytes(-len(payload) % tarfile.BLOCKSIZE)


def test_a_member_declared_larger_than_the_free_space_is_refused_before_decompressing(tmp_path, temp_copies):
    data = pax_header({"size": 2 ** 60}) + tar_header("blobs/sha256/" + "ab" * 32, 0)
    path = tmp_path / "huge.tar.gz"
    path.write_bytes(compress_stream("gzip", [data] + list(zeros(64 << 20))))
    with pytest.raises(archive_module.ArchiveTooLargeError, match=r"declares at least \d+ bytes, more than the \d+ bytes that "
                       + f"{temp_copies.directory} can spare for decompressing it") as caught:
        open_oci_archive(str(path))
    one_sentence(caught.value)
    assert temp_copies.largest() < 1 << 20


def test_decompression_stops_at_the_free_space_less_a_reserve(tmp_path, temp_copies, monkeypatch):
    budget = []
    real = tararchive._decompression_budget  # pylint: disable=protected-access

    def small(fd):
        budget.append(real(fd))
        return 2 << 20

    monkeypatch.setattr(tararchive, "_decompression_budget", small)
    path = tmp_path / "big.tar.xz"
    path.write_bytes(compress_stream("xz", [tar_header("layer.tar", 4 << 20)] + list(zeros(4 << 20)) + [bytes(1024)]))
    with pytest.raises(archive_module.ArchiveTooLargeError, match="more than the 2097152 bytes"):
        open_docker_archive(str(path))
    assert temp_copies.largest() <= 2 << 20
    info = os.statvfs(temp_copies.directory)
    assert 0 <= budget[0] <= info.f_bavail * info.f_frsize  # the real budget: what is free, less a reserve


# any failure of a scan is one ArchiveError sentence; PAX headers are bounded before tarfile reads them ---

HUGE_HEADERS = {
    "PAX header of 2**46 bytes": tar_header("PaxHeader", 2 ** 46, tarfile.XHDTYPE) + bytes(2048),
    "global PAX header of 2**46 bytes": tar_header("GlobalHead", 2 ** 46, tarfile.XGLTYPE) + bytes(2048),
    "GNU long name of 2**46 bytes": tar_header("././@LongLink", 2 ** 46, tarfile.GNUTYPE_LONGNAME) + bytes(2048),
    "PAX header after a member": tar_header("oci-layout", 0) + tar_header("PaxHeader", 2 ** 46, tarfile.XHDTYPE) + bytes(2048),
}


@pytest.mark.parametrize("compressed", [False, True], ids=["tar", "tar.gz"])
@pytest.mark.parametrize("case", sorted(HUGE_HEADERS))
def test_a_huge_extended_header_is_refused_in_one_sentence(tmp_path, temp_copies, case, compressed):
    data = HUGE_HEADERS[case]
    path = tmp_path / ("hostile.tar.gz" if compressed else "hostile.tar")
    path.write_bytes(gzip.compress(data) if compressed else data)
    readers = [read_as_push_source] + ([] if compressed else [read_archive_summary])
    for reader in readers:
        for archive_format in FORMATS:
            with pytest.raises(ArchiveFormatError, match=r"The extended tar header at offset \d+ of the archive .* declares 70368744177664 bytes, "
                               "more than the 1048576 an image archive could need; the archive is refused") as caught:
                reader(str(path), archive_format)
            one_sentence(caught.value)
    assert temp_copies.largest() < 1 << 20


def test_sparse_members_are_refused_before_tarfile_reads_their_map(tmp_path):
    data = (pax_header({"GNU.sparse.major": 1, "GNU.sparse.minor": 0, "GNU.sparse.name": "layer.tar", "GNU.sparse.realsize": 10})
            + tar_header("GNUSparseFile.0/layer.tar", 1024) + b"99999999999999\n" + b"1\n" * 504 + bytes(1024))
    (tmp_path / "sparse.tar").write_bytes(data)
    with pytest.raises(UnsafeArchiveError, match="has a sparse member at offset 0 of the archive"):
        open_docker_archive(str(tmp_path / "sparse.tar"))


SCAN_FAILURES = [MemoryError(), OverflowError("int too large to convert"), ValueError("bad"), EOFError(), RecursionError("deep"),
                 zlib.error("Error -3 while decompressing"), lzma.LZMAError("Corrupt input data"), OSError("no errno")]


@pytest.mark.parametrize("failure", SCAN_FAILURES, ids=[type(failure).__name__ for failure in SCAN_FAILURES])
def test_any_failure_while_scanning_is_one_archive_error_sentence(images, tmp_path, monkeypatch, failure):
    layout, dummy = images
    path = str(tmp_path / "single.tar")
    write_oci_archive(layout, "single", path)
    packed = str(tmp_path / "single.tar.gz")
    with open(path, "rb") as source, gzip.open(packed, "wb") as target:
        shutil.copyfileobj(source, target)

    def fail(*args, **kwargs):
        raise failure

    with monkeypatch.context() as patch:
        patch.setattr(tararchive.TarArchive, "_add_member", fail)
        for reader in (read_as_push_source, read_archive_summary):
            with pytest.raises(ArchiveFormatError, match=f"{path} is not a readable tar archive") as caught:
                reader(path, OCI_ARCHIVE)
            one_sentence(caught.value)
    with monkeypatch.context() as patch:
        patch.setattr(gzip.GzipFile, "read", fail)
        with pytest.raises(ArchiveFormatError, match=f"{packed} (is not a valid gzip file|could not be decompressed as gzip)") as caught:
            open_oci_archive(packed)
        one_sentence(caught.value)
