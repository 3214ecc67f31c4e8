# Copyright: Contributors to the ecrkit.images project
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Deterministic sample container images for tests, the demo and benchmarks.

Images are built into an OCI image layout directory (``oci-layout``, ``index.json``,
``blobs/sha256/<hex>``) and are byte-for-byte reproducible from the same inputs: tar entries carry a
fixed mtime, owner and mode and come in sorted order, gzip streams carry mtime 0 and no file name, and
every JSON document is serialised with sorted keys and compact separators.

Layers are described by :class:`FilesLayer` (a mapping of path to content; a plain ``dict`` works too)
or :class:`RandomLayer` (one file of incompressible pseudo-random bytes, generated from a seed in
streaming fashion so that a layer of hundreds of MiB never sits in memory).

:func:`push_image` copies a built image into an ECR endpoint through a boto3 ECR client. It is the
independent reference that tests use to seed the local endpoint; it is deliberately simple and
sequential.

Command line (one-line JSON summary on stdout)::

    python3 tests/emulator/sample_images.py build --out DIR --tag TAG [--preset demo|random]
        [--layers N --layer-size BYTES --seed S] [--docker] [--uncompressed] [--platforms linux/amd64,linux/arm64/v8]
    python3 tests/emulator/sample_images.py push --layout DIR --tag TAG --endpoint-url URL --region R
        --repository NAME [--target-tag T ...] [--create-repository] [--ca-bundle FILE]

Only the standard library is used, except for boto3/botocore inside the push path (imported lazily).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import struct
import sys
import tarfile
import tempfile
import zlib
from dataclasses import dataclass, field
from typing import Any, BinaryIO, Callable, Dict, Iterable, Iterator, List, Mapping, Optional, Sequence, Tuple, Union

try:
    import fcntl
except ImportError:  # not on POSIX: builds into one layout are then not serialised
    fcntl = None  # type: ignore[assignment]


# Media types ---------------------------------------------------------------------------------------

OCI_LAYOUT_VERSION = "1.0.0"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_LAYER_TAR = "application/vnd.oci.image.layer.v1.tar"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"
DOCKER_LAYER_TAR = "application/vnd.docker.image.rootfs.diff.tar"

INDEX_MEDIA_TYPES = (OCI_INDEX, DOCKER_MANIFEST_LIST)
MANIFEST_MEDIA_TYPES = (OCI_MANIFEST, DOCKER_MANIFEST)
REF_NAME_ANNOTATION = "org.opencontainers.image.ref.name"

# Fixed timestamps: 2024-01-01T00:00:00Z, for tar entries and the image config.
DEFAULT_EPOCH = 1704067200
DEFAULT_CREATED = "2024-01-01T00:00:00Z"
DEFAULT_PLATFORM = "linux/amd64"
DEFAULT_ENV = ("PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",)

_CHUNK = 1 << 20  # streaming unit for generated data, hashing and copying
_RANDOM_DOMAIN = b"ecrkit.images sample random layer v1\x00"
_DEFAULT_PART_SIZE = 10 << 20  # used when InitiateLayerUpload does not say


def canonical_json(value: Any) -> bytes:
    """Serialise ``value`` the one way this module writes JSON: sorted keys, compact, UTF-8."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


# Layer specifications ------------------------------------------------------------------------------

@dataclass(frozen=True)
class FilesLayer:
    """A layer holding the given regular files (path -> content); parent directories are added.

    Paths are relative to the image root (a leading ``/`` or ``./`` is dropped). Files get mode 0644,
    directories 0755, owner root:root (0:0) and the fixed mtime.
    """

    files: Mapping[str, Union[bytes, str]]
    compress: bool = True
    compresslevel: int = 6
    description: str = ""


@dataclass(frozen=True)
class RandomLayer:
    """A layer holding one file of ``size`` incompressible pseudo-random bytes derived from ``seed``.

    The bytes are SHAKE-256 in counter mode over (seed, chunk number), so any size streams in
    constant memory. Gzip level 0 (stored deflate blocks) is the default because the data does not
    compress anyway: the result has the size any level would give, at memory-copy speed.
    """

    size: int
    seed: Union[int, str] = 0
    compress: bool = True
    compresslevel: int = 0
    path: Optional[str] = None
    description: str = ""


LayerSpec = Union[FilesLayer, RandomLayer, Mapping[str, Union[bytes, str]]]
LayersArg = Union[Sequence[LayerSpec], Mapping[str, Sequence[LayerSpec]], Callable[[str], Sequence[LayerSpec]]]


def random_bytes(size: int, seed: Union[int, str] = 0) -> Iterator[bytes]:
    """Yield ``size`` deterministic pseudo-random bytes for ``seed`` in chunks of at most 1 MiB."""
    seed_bytes = str(seed).encode("utf-8")
    prefix = _RANDOM_DOMAIN + struct.pack(">Q", len(seed_bytes)) + seed_bytes
    counter = 0
    remaining = size
    while remaining > 0:
        length = min(_CHUNK, remaining)
        yield hashlib.shake_256(prefix + struct.pack(">Q", counter)).digest(length)
        remaining -= length
        counter += 1


def _as_layer(spec: LayerSpec) -> Union[FilesLayer, RandomLayer]:
    if isinstance(spec, (FilesLayer, RandomLayer)):
        return spec
    if isinstance(spec, Mapping):
        return FilesLayer(files=dict(spec))
    raise TypeError(f"a layer is a FilesLayer, a RandomLayer or a dict of path -> bytes, not {type(spec).__name__!r}")


def _clean_path(path: str) -> str:
    parts = [part for part in path.replace("\\", "/").split("/") if part not in ("", ".")]
    if not parts or ".." in parts:
        raise ValueError(f"invalid path for a layer entry: {path!r}")
    return "/".join(parts)


# Platforms -----------------------------------------------------------------------------------------

def parse_platform(value: Union[str, Mapping[str, str]]) -> Dict[str, str]:
    """``"linux/arm64/v8"`` -> ``{"os": "linux", "architecture": "arm64", "variant": "v8"}``."""
    if isinstance(value, Mapping):
        result = {key: str(val) for key, val in value.items() if val}
        if "os" not in result or "architecture" not in result:
            raise ValueError(f"a platform needs os and architecture: {dict(value)!r}")
        return result
    parts = value.strip().split("/")
    if len(parts) not in (2, 3) or not all(parts):
        raise ValueError(f"a platform is OS/ARCH[/VARIANT], e.g. linux/arm64/v8, not {value!r}")
    result = {"os": parts[0], "architecture": parts[1]}
    if len(parts) == 3:
        result["variant"] = parts[2]
    return result


def format_platform(platform: Mapping[str, str]) -> str:
    text = f"{platform['os']}/{platform['architecture']}"
    if platform.get("variant"):
        text += "/" + platform["variant"]
    return text


# Descriptions of what was built --------------------------------------------------------------------

@dataclass(frozen=True)
class Descriptor:
    media_type: str
    digest: str
    size: int
    platform: Optional[Dict[str, str]] = None
    annotations: Optional[Dict[str, str]] = None

    @property
    def hex(self) -> str:
        return self.digest.split(":", 1)[1]

    def to_json(self) -> Dict[str, Any]:
        result: Dict[str, Any] = {"mediaType": self.media_type, "digest": self.digest, "size": self.size}
        if self.platform:
            result["platform"] = dict(self.platform)
        if self.annotations:
            result["annotations"] = dict(self.annotations)
        return result

    @classmethod
    def from_json(cls, value: Mapping[str, Any]) -> "Descriptor":
        return cls(media_type=value["mediaType"], digest=value["digest"], size=int(value["size"]),
                   platform=dict(value["platform"]) if value.get("platform") else None,
                   annotations=dict(value["annotations"]) if value.get("annotations") else None)


@dataclass(frozen=True)
class PlatformImage:
    """One image manifest: its descriptor (with ``platform``), its exact bytes, config and layers."""

    platform: Dict[str, str]
    descriptor: Descriptor
    manifest_bytes: bytes
    config: Descriptor
    config_bytes: bytes
    layers: Tuple[Descriptor, ...]
    diff_ids: Tuple[str, ...]

    @property
    def digest(self) -> str:
        return self.descriptor.digest

    @property
    def media_type(self) -> str:
        return self.descriptor.media_type

    @property
    def platform_string(self) -> str:
        return format_platform(self.platform)


@dataclass(frozen=True)
class BuiltImage:
    """An image in an OCI layout: the top manifest (image manifest or index) and what it references.

    ``manifests`` holds one :class:`PlatformImage` per platform; for a plain image manifest it holds
    exactly one, whose descriptor is the top descriptor.
    """

    layout: str
    tag: Optional[str]
    digest: str
    media_type: str
    size: int
    manifest_bytes: bytes
    manifests: Tuple[PlatformImage, ...] = field(default_factory=tuple)

    @property
    def is_index(self) -> bool:
        return self.media_type in INDEX_MEDIA_TYPES

    @property
    def descriptor(self) -> Descriptor:
        return Descriptor(self.media_type, self.digest, self.size)

    @property
    def config_digest(self) -> Optional[str]:
        """The config digest of a single-platform image; None for an index (see ``manifests``)."""
        return None if self.is_index else self.manifests[0].config.digest

    @property
    def layers(self) -> Tuple[Descriptor, ...]:
        """Layer descriptors of a single-platform image; for an index, all platforms' layers, deduplicated."""
        return tuple(_unique(desc for image in self.manifests for desc in image.layers))

    @property
    def platforms(self) -> Tuple[str, ...]:
        return tuple(image.platform_string for image in self.manifests)

    def blob_descriptors(self) -> Tuple[Descriptor, ...]:
        """Every blob of the image, each once, in push order: layers and configs, child manifests, top."""
        blobs: List[Descriptor] = []
        for image in self.manifests:
            blobs.extend(image.layers)
            blobs.append(image.config)
        if self.is_index:
            blobs.extend(image.descriptor for image in self.manifests)
        blobs.append(self.descriptor)
        return tuple(_unique(blobs))

    def blob_path(self, digest: str) -> str:
        return blob_path(self.layout, digest)

    def read_blob(self, digest: str) -> bytes:
        with open(self.blob_path(digest), "rb") as handle:
            return handle.read()

    def summary(self) -> Dict[str, Any]:
        """A JSON-friendly description (what the CLI prints)."""
        return {
            "layout": self.layout,
            "tag": self.tag,
            "digest": self.digest,
            "mediaType": self.media_type,
            "size": self.size,
            "configDigest": self.config_digest,
            "platforms": list(self.platforms),
            "manifests": [{"platform": image.platform_string, "digest": image.digest, "mediaType": image.media_type,
                           "size": image.descriptor.size, "configDigest": image.config.digest} for image in self.manifests]
            if self.is_index else [],
            "layers": [desc.to_json() for desc in self.layers],
            "totalBytes": sum(desc.size for desc in self.blob_descriptors()),
        }


def _unique(descriptors: Iterable[Descriptor]) -> Iterator[Descriptor]:
    seen = set()
    for desc in descriptors:
        if desc.digest not in seen:
            seen.add(desc.digest)
            yield desc


# The layout on disk --------------------------------------------------------------------------------

def blob_path(layout: str, digest: str) -> str:
    algorithm, sep, hexpart = digest.partition(":")
    if algorithm != "sha256" or not sep or len(hexpart) != 64 or any(ch not in "0123456789abcdef" for ch in hexpart):
        raise ValueError(f"not a sha256 digest: {digest!r}")
    return os.path.join(layout, "blobs", "sha256", hexpart)


def init_layout(layout: str) -> None:
    """Create an empty OCI layout at ``layout`` unless one is already there."""
    os.makedirs(os.path.join(layout, "blobs", "sha256"), exist_ok=True)
    marker = os.path.join(layout, "oci-layout")
    if not os.path.exists(marker):
        _atomic_write(marker, canonical_json({"imageLayoutVersion": OCI_LAYOUT_VERSION}))
    if not os.path.exists(os.path.join(layout, "index.json")):
        _atomic_write(os.path.join(layout, "index.json"), canonical_json({"schemaVersion": 2, "manifests": []}))


def _atomic_write(path: str, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path) or ".", prefix=".tmp-")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def _layout_lock(layout: str) -> Iterator[None]:
    """Serialise index.json updates between processes (flock on the layout directory itself)."""
    if fcntl is None:
        yield
        return
    fd = os.open(layout, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


class _BlobWriter:
    """Writes one blob to a temporary file in the layout, hashing as it goes; commit() files it by digest."""

    def __init__(self, layout: str) -> None:
        self._layout = layout
        fd, self._tmp = tempfile.mkstemp(dir=os.path.join(layout, "blobs", "sha256"), prefix=".tmp-")
        self._file: BinaryIO = os.fdopen(fd, "wb")
        self._hash = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> None:
        if data:
            self._hash.update(data)
            self._file.write(data)
            self.size += len(data)

    def commit(self) -> str:
        self._file.close()
        digest = "sha256:" + self._hash.hexdigest()
        final = blob_path(self._layout, digest)
        if os.path.exists(final):
            os.unlink(self._tmp)  # content-addressed: the stored blob is these very bytes
        else:
            os.chmod(self._tmp, 0o644)
            os.replace(self._tmp, final)
        return digest

    def discard(self) -> None:
        self._file.close()
        with contextlib.suppress(OSError):
            os.unlink(self._tmp)


def write_blob(layout: str, data: bytes) -> str:
    """Store ``data`` in the layout (once) and return its digest."""
    digest = sha256_digest(data)
    if not os.path.exists(blob_path(layout, digest)):
        _atomic_write(blob_path(layout, digest), data)
    return digest


# Layer tarballs ------------------------------------------------------------------------------------

class _LayerStream:
    """Receives the uncompressed tar stream: hashes it (diff_id) and passes it on, gzipped or not."""

    def __init__(self, out: _BlobWriter, compresslevel: Optional[int]) -> None:
        self._out = out
        self._diff = hashlib.sha256()
        self.uncompressed_size = 0
        self._crc = 0
        self._deflate = None
        if compresslevel is not None:
            self._deflate = zlib.compressobj(compresslevel, zlib.DEFLATED, -zlib.MAX_WBITS, 9)
            # gzip member header: no flags, mtime 0, no extra flags, OS "unknown"; no file name
            out.write(b"\x1f\x8b\x08\x00" + b"\x00\x00\x00\x00" + b"\x00\xff")

    def write(self, data: bytes) -> None:
        self._diff.update(data)
        self.uncompressed_size += len(data)
        if self._deflate is None:
            self._out.write(data)
        else:
            self._crc = zlib.crc32(data, self._crc)
            self._out.write(self._deflate.compress(data))

    def finish(self) -> str:
        if self._deflate is not None:
            self._out.write(self._deflate.flush())
            self._out.write(struct.pack("<II", self._crc & 0xFFFFFFFF, self.uncompressed_size & 0xFFFFFFFF))
        return "sha256:" + self._diff.hexdigest()


def _tar_header(name: str, size: int, is_dir: bool, mtime: int) -> bytes:
    info = tarfile.TarInfo(name + "/" if is_dir else name)
    info.type = tarfile.DIRTYPE if is_dir else tarfile.REGTYPE
    info.size = 0 if is_dir else size
    info.mode = 0o755 if is_dir else 0o644
    info.mtime = mtime
    info.uid = info.gid = 0
    info.uname = info.gname = "root"
    return info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")


def _write_tar(stream: _LayerStream, files: Mapping[str, Tuple[int, Callable[[], Iterable[bytes]]]], mtime: int) -> None:
    """Write a tar of ``files`` (path -> (size, chunk source)) with their parent directories, sorted."""
    directories = set()
    for path in files:
        parts = path.split("/")
        for depth in range(1, len(parts)):
            directories.add("/".join(parts[:depth]))
    clash = directories.intersection(files)
    if clash:
        raise ValueError("paths used both as a file and as a directory: " + ", ".join(sorted(clash)))
    written = 0
    for name in sorted(directories.union(files)):
        if name in directories:
            header = _tar_header(name, 0, True, mtime)
            stream.write(header)
            written += len(header)
            continue
        size, source = files[name]
        header = _tar_header(name, size, False, mtime)
        stream.write(header)
        written += len(header)
        produced = 0
        for chunk in source():
            stream.write(chunk)
            produced += len(chunk)
        if produced != size:
            raise AssertionError(f"entry {name} produced {produced} bytes, expected {size}")
        written += size
        padding = -size % tarfile.BLOCKSIZE
        if padding:
            stream.write(b"\0" * padding)
            written += padding
    # end-of-archive marker (two zero blocks), then pad to a whole record like tar(1) and tarfile do
    trailer = 2 * tarfile.BLOCKSIZE
    trailer += -(written + trailer) % tarfile.RECORDSIZE
    stream.write(b"\0" * trailer)


def _layer_entries(layer: Union[FilesLayer, RandomLayer]) -> Dict[str, Tuple[int, Callable[[], Iterable[bytes]]]]:
    if isinstance(layer, RandomLayer):
        if layer.size < 0:
            raise ValueError("a random layer's size must be >= 0")
        path = layer.path or f"random/{hashlib.sha256(str(layer.seed).encode('utf-8')).hexdigest()[:16]}.bin"
        return {_clean_path(path): (layer.size, lambda: random_bytes(layer.size, layer.seed))}
    entries: Dict[str, Tuple[int, Callable[[], Iterable[bytes]]]] = {}
    for path, content in layer.files.items():
        data = content.encode("utf-8") if isinstance(content, str) else bytes(content)
        name = _clean_path(path)
        if name in entries:
            raise ValueError(f"duplicate path in a layer: {path!r}")
        entries[name] = (len(data), lambda data=data: (data,))
    return entries


def write_layer(layout: str, layer: LayerSpec, docker: bool = False, mtime: int = DEFAULT_EPOCH) -> Tuple[Descriptor, str]:
    """Build one layer blob into the layout; return its descriptor and its diff_id."""
    spec = _as_layer(layer)
    writer = _BlobWriter(layout)
    try:
        stream = _LayerStream(writer, spec.compresslevel if spec.compress else None)
        _write_tar(stream, _layer_entries(spec), mtime)
        diff_id = stream.finish()
        digest = writer.commit()
    except BaseException:
        writer.discard()
        raise
    if docker:
        media_type = DOCKER_LAYER_GZIP if spec.compress else DOCKER_LAYER_TAR
    else:
        media_type = OCI_LAYER_GZIP if spec.compress else OCI_LAYER_TAR
    return Descriptor(media_type, digest, writer.size), diff_id


def _layer_description(layer: LayerSpec, number: int) -> str:
    spec = _as_layer(layer)
    if spec.description:
        return spec.description
    if isinstance(spec, RandomLayer):
        return f"ecrkit sample layer {number}: {spec.size} random bytes, seed {spec.seed}"
    return f"ecrkit sample layer {number}: {len(spec.files)} files"


# Manifests, configs and indexes --------------------------------------------------------------------

def _build_platform_image(layout: str, layers: Sequence[LayerSpec], platform: Dict[str, str], docker: bool,
                          created: str, labels: Optional[Mapping[str, str]], mtime: int) -> PlatformImage:
    descriptors: List[Descriptor] = []
    diff_ids: List[str] = []
    history = []
    for number, layer in enumerate(layers, 1):
        desc, diff_id = write_layer(layout, layer, docker=docker, mtime=mtime)
        descriptors.append(desc)
        diff_ids.append(diff_id)
        history.append({"created": created, "created_by": _layer_description(layer, number)})
    container_config: Dict[str, Any] = {"Env": list(DEFAULT_ENV)}
    if labels:
        container_config["Labels"] = dict(labels)
    config_doc: Dict[str, Any] = {
        "architecture": platform["architecture"],
        "os": platform["os"],
        "created": created,
        "config": container_config,
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": history,
    }
    if platform.get("variant"):
        config_doc["variant"] = platform["variant"]
    config_bytes = canonical_json(config_doc)
    config = Descriptor(DOCKER_CONFIG if docker else OCI_CONFIG, write_blob(layout, config_bytes), len(config_bytes))
    manifest_type = DOCKER_MANIFEST if docker else OCI_MANIFEST
    manifest_bytes = canonical_json({
        "schemaVersion": 2,
        "mediaType": manifest_type,
        "config": config.to_json(),
        "layers": [desc.to_json() for desc in descriptors],
    })
    descriptor = Descriptor(manifest_type, write_blob(layout, manifest_bytes), len(manifest_bytes), platform=dict(platform))
    return PlatformImage(platform=dict(platform), descriptor=descriptor, manifest_bytes=manifest_bytes, config=config,
                         config_bytes=config_bytes, layers=tuple(descriptors), diff_ids=tuple(diff_ids))


def _layers_for(layers: LayersArg, platform: str) -> Sequence[LayerSpec]:
    if callable(layers):
        return layers(platform)
    if isinstance(layers, Mapping):
        if platform not in layers:
            raise ValueError(f"no layers given for platform {platform}")
        return layers[platform]
    return layers


def build_image(layout: str, tag: Optional[str], layers: LayersArg, *, platform: Union[str, Mapping[str, str]] = DEFAULT_PLATFORM,
                platforms: Optional[Sequence[Union[str, Mapping[str, str]]]] = None, docker: bool = False,
                labels: Optional[Mapping[str, str]] = None, created: str = DEFAULT_CREATED, mtime: int = DEFAULT_EPOCH) -> BuiltImage:
    """Build an image into the OCI layout at ``layout`` (created if needed) and tag it in index.json.

    ``layers`` is a list of layer specs shared by all platforms, or a mapping ``"os/arch[/variant]"`` ->
    list, or a callable taking that string. Without ``platforms`` the result is a single image manifest
    for ``platform``; with ``platforms`` (even one) it is an OCI index (Docker manifest list with
    ``docker=True``) over one image manifest per platform, each child descriptor carrying ``platform``.
    With ``docker=True`` the Docker schema 2 media types are used throughout. ``tag=None`` stores the
    blobs without an index.json entry; re-using a tag replaces its entry.
    """
    init_layout(layout)
    if platforms is None:
        plat = parse_platform(platform)
        image = _build_platform_image(layout, _layers_for(layers, format_platform(plat)), plat, docker, created, labels, mtime)
        top = Descriptor(image.media_type, image.digest, image.descriptor.size)
        built = BuiltImage(layout=layout, tag=tag, digest=top.digest, media_type=top.media_type, size=top.size,
                           manifest_bytes=image.manifest_bytes, manifests=(image,))
    else:
        if not platforms:
            raise ValueError("platforms, when given, must name at least one platform")
        images = []
        for value in platforms:
            plat = parse_platform(value)
            images.append(_build_platform_image(layout, _layers_for(layers, format_platform(plat)), plat, docker, created, labels, mtime))
        index_type = DOCKER_MANIFEST_LIST if docker else OCI_INDEX
        index_bytes = canonical_json({
            "schemaVersion": 2,
            "mediaType": index_type,
            "manifests": [image.descriptor.to_json() for image in images],
        })
        digest = write_blob(layout, index_bytes)
        built = BuiltImage(layout=layout, tag=tag, digest=digest, media_type=index_type, size=len(index_bytes),
                           manifest_bytes=index_bytes, manifests=tuple(images))
    if tag is not None:
        tag_image(layout, tag, built.descriptor)
    return built


def tag_image(layout: str, tag: str, descriptor: Descriptor) -> None:
    """Point ``tag`` (org.opencontainers.image.ref.name) at ``descriptor`` in index.json, replacing any old entry."""
    if not tag:
        raise ValueError("a tag must not be empty")
    init_layout(layout)
    path = os.path.join(layout, "index.json")
    with _layout_lock(layout):
        with open(path, "rb") as handle:
            index = json.loads(handle.read().decode("utf-8"))
        kept = [entry for entry in index.get("manifests") or [] if (entry.get("annotations") or {}).get(REF_NAME_ANNOTATION) != tag]
        entry = Descriptor(descriptor.media_type, descriptor.digest, descriptor.size, annotations={REF_NAME_ANNOTATION: tag}).to_json()
        kept.append(entry)
        # untagged entries first in their old order, then tagged ones by tag: independent of build order
        kept.sort(key=lambda item: (item.get("annotations") or {}).get(REF_NAME_ANNOTATION, ""))
        index["schemaVersion"] = 2
        index["mediaType"] = OCI_INDEX
        index["manifests"] = kept
        _atomic_write(path, canonical_json(index))


def list_tags(layout: str) -> List[str]:
    with open(os.path.join(layout, "index.json"), "rb") as handle:
        index = json.loads(handle.read().decode("utf-8"))
    return [entry["annotations"][REF_NAME_ANNOTATION] for entry in index.get("manifests") or []
            if REF_NAME_ANNOTATION in (entry.get("annotations") or {})]


def _read_platform_image(layout: str, descriptor: Descriptor, manifest_bytes: bytes) -> PlatformImage:
    manifest = json.loads(manifest_bytes.decode("utf-8"))
    config = Descriptor.from_json(manifest["config"])
    with open(blob_path(layout, config.digest), "rb") as handle:
        config_bytes = handle.read()
    config_doc = json.loads(config_bytes.decode("utf-8"))
    platform = descriptor.platform or parse_platform({key: config_doc.get(key, "") for key in ("os", "architecture", "variant")})
    descriptor = Descriptor(descriptor.media_type, descriptor.digest, descriptor.size, platform=dict(platform))
    return PlatformImage(platform=dict(platform), descriptor=descriptor, manifest_bytes=manifest_bytes, config=config,
                         config_bytes=config_bytes, layers=tuple(Descriptor.from_json(item) for item in manifest.get("layers") or []),
                         diff_ids=tuple((config_doc.get("rootfs") or {}).get("diff_ids") or []))


def load_image(layout: str, tag: str) -> BuiltImage:
    """Describe the image tagged ``tag`` in an OCI layout (built here or by another tool)."""
    with open(os.path.join(layout, "index.json"), "rb") as handle:
        index = json.loads(handle.read().decode("utf-8"))
    entries = [entry for entry in index.get("manifests") or [] if (entry.get("annotations") or {}).get(REF_NAME_ANNOTATION) == tag]
    if not entries:
        raise KeyError(f"no image tagged {tag!r} in {layout} (tags: {', '.join(list_tags(layout)) or 'none'})")
    top = Descriptor.from_json(entries[-1])
    with open(blob_path(layout, top.digest), "rb") as handle:
        top_bytes = handle.read()
    if sha256_digest(top_bytes) != top.digest or len(top_bytes) != top.size:
        raise ValueError(f"blob {top.digest} in {layout} does not match its descriptor")
    if top.media_type in INDEX_MEDIA_TYPES:
        images = []
        for child in json.loads(top_bytes.decode("utf-8")).get("manifests") or []:
            desc = Descriptor.from_json(child)
            with open(blob_path(layout, desc.digest), "rb") as handle:
                images.append(_read_platform_image(layout, desc, handle.read()))
        manifests = tuple(images)
    else:
        manifests = (_read_platform_image(layout, top, top_bytes),)
    return BuiltImage(layout=layout, tag=tag, digest=top.digest, media_type=top.media_type, size=top.size,
                      manifest_bytes=top_bytes, manifests=manifests)


# Presets -------------------------------------------------------------------------------------------

def demo_layers(platform: Optional[str] = None) -> List[FilesLayer]:
    """Three small gzip layers with a few text files each (the demo image). ``platform`` adds a marker file."""
    suffix = {"etc/ecrkit-demo/platform": f"{platform}\n"} if platform else {}
    return [
        FilesLayer({
            "etc/ecrkit-demo/release": "ecrkit demo image\nversion 1\n",
            "etc/motd": "Hello from the ecrkit.images demo image.\n",
            "usr/share/doc/ecrkit-demo/README": "This image was built by tests/emulator/sample_images.py.\n",
        }, description="ecrkit demo layer 1: base files"),
        FilesLayer({
            "opt/app/config.yml": "---\ngreeting: hello\nrepeat: 3\n",
            "opt/app/run.sh": "#!/bin/sh\necho hello\n",
            "opt/app/data/words.txt": "".join(f"word-{number:04d}\n" for number in range(200)),
        }, description="ecrkit demo layer 2: application"),
        FilesLayer(dict({
            "opt/app/VERSION": "1.0.0\n",
            "etc/ecrkit-demo/build-info": f"built-by: sample_images.py\ncreated: {DEFAULT_CREATED}\n",
        }, **suffix), description="ecrkit demo layer 3: metadata"),
    ]


def random_layers(count: int, size: int, seed: Union[int, str] = 0, platform: Optional[str] = None,
                  compress: bool = True) -> List[RandomLayer]:
    """``count`` random layers of ``size`` bytes each; distinct per layer and per platform (when given)."""
    layers = []
    for number in range(count):
        layer_seed = f"{seed}/{number}" if platform is None else f"{seed}/{number}/{platform}"
        layers.append(RandomLayer(size=size, seed=layer_seed, compress=compress, path=f"data/layer-{number}.bin"))
    return layers


def build_demo_image(layout: str, tag: str = "demo", platforms: Optional[Sequence[str]] = None, docker: bool = False) -> BuiltImage:
    if platforms is None:
        return build_image(layout, tag, demo_layers(), docker=docker)
    return build_image(layout, tag, demo_layers, platforms=platforms, docker=docker)


def build_random_image(layout: str, tag: str, count: int = 2, size: int = 1 << 20, seed: Union[int, str] = 0,
                       platforms: Optional[Sequence[str]] = None, docker: bool = False, compress: bool = True) -> BuiltImage:
    if platforms is None:
        return build_image(layout, tag, random_layers(count, size, seed, compress=compress), docker=docker)
    return build_image(layout, tag, lambda plat: random_layers(count, size, seed, plat, compress), platforms=platforms, docker=docker)


# Push to ECR ---------------------------------------------------------------------------------------

def _error_code(exc: Exception) -> str:
    response = getattr(exc, "response", None) or {}
    return str((response.get("Error") or {}).get("Code", ""))


def _upload_blob(client: Any, base: Dict[str, str], path: str, desc: Descriptor) -> bool:
    """Upload one blob in parts of the size ECR asks for; False when ECR already had it."""
    from botocore.exceptions import ClientError  # pylint: disable=import-outside-toplevel

    started = client.initiate_layer_upload(**base)
    upload_id = started["uploadId"]
    part_size = int(started.get("partSize") or _DEFAULT_PART_SIZE)
    offset = 0
    with open(path, "rb") as handle:
        while True:
            part = handle.read(part_size)
            if not part:
                break
            client.upload_layer_part(uploadId=upload_id, partFirstByte=offset, partLastByte=offset + len(part) - 1,
                                     layerPartBlob=part, **base)
            offset += len(part)
    if offset != desc.size:
        raise ValueError(f"blob {desc.digest}: read {offset} bytes from {path}, the descriptor says {desc.size}")
    try:
        done = client.complete_layer_upload(uploadId=upload_id, layerDigests=[desc.digest], **base)
    except ClientError as exc:
        if _error_code(exc) == "LayerAlreadyExistsException":
            return False
        raise
    if done.get("layerDigest") not in (None, desc.digest):
        raise ValueError(f"CompleteLayerUpload answered digest {done.get('layerDigest')} for {desc.digest}")
    return True


def _put_manifest(client: Any, base: Dict[str, str], manifest_bytes: bytes, media_type: str, digest: str,
                  tag: Optional[str]) -> bool:
    """PutImage with the exact stored bytes; False when ECR says the image (with that tag) already exists."""
    from botocore.exceptions import ClientError  # pylint: disable=import-outside-toplevel

    kwargs = dict(base, imageManifest=manifest_bytes.decode("utf-8"), imageManifestMediaType=media_type, imageDigest=digest)
    if tag is not None:
        kwargs["imageTag"] = tag
    try:
        client.put_image(**kwargs)
    except ClientError as exc:
        if _error_code(exc) == "ImageAlreadyExistsException":
            return False
        raise
    return True


def push_image(client: Any, image: BuiltImage, repository: str, tags: Optional[Sequence[str]] = None,
               registry_id: Optional[str] = None, create_repository: bool = False) -> Dict[str, Any]:
    """Copy ``image`` into ECR ``repository`` through the boto3 ECR ``client``; return a summary dict.

    Blobs ECR lacks (layers and configs, per BatchCheckLayerAvailability) are uploaded in parts of the
    returned partSize, read from the layout file part by part. Then the child manifests of an index are
    put by digest without a tag, and the top manifest once per tag (``tags`` defaults to the image's
    own tag; an empty list puts it untagged). Manifests go out exactly as stored.
    """
    from botocore.exceptions import ClientError  # pylint: disable=import-outside-toplevel

    base: Dict[str, str] = {"repositoryName": repository}
    if registry_id:
        base["registryId"] = registry_id
    if tags is None:
        tags = [image.tag] if image.tag else []
    created = False
    if create_repository:
        try:
            client.create_repository(**base)
            created = True
        except ClientError as exc:
            if _error_code(exc) != "RepositoryAlreadyExistsException":
                raise

    blobs = list(_unique(desc for img in image.manifests for desc in list(img.layers) + [img.config]))
    missing: List[Descriptor] = []
    for start in range(0, len(blobs), 100):
        batch = blobs[start:start + 100]
        answer = client.batch_check_layer_availability(layerDigests=[desc.digest for desc in batch], **base)
        available = {item["layerDigest"] for item in answer.get("layers") or [] if item.get("layerAvailability") == "AVAILABLE"}
        missing.extend(desc for desc in batch if desc.digest not in available)

    uploaded, already = [], []
    for desc in missing:
        if _upload_blob(client, base, image.blob_path(desc.digest), desc):
            uploaded.append(desc.digest)
        else:
            already.append(desc.digest)

    put, unchanged = [], []
    if image.is_index:
        for child in image.manifests:
            done = _put_manifest(client, base, child.manifest_bytes, child.media_type, child.digest, None)
            (put if done else unchanged).append(child.digest)
    for tag in tags or [None]:
        done = _put_manifest(client, base, image.manifest_bytes, image.media_type, image.digest, tag)
        (put if done else unchanged).append(f"{tag}@{image.digest}" if tag else image.digest)

    return {
        "repository": repository,
        "repositoryCreated": created,
        "digest": image.digest,
        "mediaType": image.media_type,
        "tags": list(tags),
        "blobs": len(blobs),
        "present": [desc.digest for desc in blobs if desc not in missing],
        "uploaded": uploaded,
        "alreadyExisted": already,
        "uploadedBytes": sum(desc.size for desc in missing if desc.digest in uploaded),
        "manifestsPut": put,
        "manifestsUnchanged": unchanged,
    }


def make_client(endpoint_url: Optional[str], region: Optional[str], ca_bundle: Optional[str] = None) -> Any:
    """A boto3 ECR client for ``endpoint_url``; credentials come from the usual AWS environment/config."""
    import boto3  # pylint: disable=import-outside-toplevel

    kwargs: Dict[str, Any] = {"region_name": region}
    if endpoint_url:
        kwargs["endpoint_url"] = endpoint_url
    if ca_bundle:
        kwargs["verify"] = ca_bundle
    return boto3.client("ecr", **kwargs)


# Command line --------------------------------------------------------------------------------------

def _size(text: str) -> int:
    units = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
    value = text.strip().lower().rstrip("ib")
    if value and value[-1] in units:
        return int(float(value[:-1]) * units[value[-1]])
    return int(value)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sample_images.py", description="Deterministic sample images (OCI layout) and an ECR push for tests.")
    commands = parser.add_subparsers(dest="command", required=True)

    build = commands.add_parser("build", help="build an image into an OCI layout directory")
    build.add_argument("--out", required=True, help="OCI layout directory (created, or added to)")
    build.add_argument("--tag", required=True, help="tag (org.opencontainers.image.ref.name) in index.json")
    build.add_argument("--preset", choices=("demo", "random"),
                       help="demo: 3 small gzip layers of text files; random: --layers x --layer-size random bytes "
                            "(default: random when --layers or --layer-size is given, else demo)")
    build.add_argument("--layers", type=int, help="number of random layers (default 2)")
    build.add_argument("--layer-size", type=_size, help="bytes per random layer, e.g. 1048576 or 16MiB (default 1 MiB)")
    build.add_argument("--seed", default="0", help="seed of the random layers (default 0)")
    build.add_argument("--docker", action="store_true", help="Docker schema 2 media types instead of OCI")
    build.add_argument("--uncompressed", action="store_true", help="uncompressed tar layers (random preset)")
    build.add_argument("--platforms", help="comma-separated OS/ARCH[/VARIANT] list: build a multi-platform index")

    push = commands.add_parser("push", help="push an image from an OCI layout to an ECR endpoint")
    push.add_argument("--layout", required=True, help="OCI layout directory")
    push.add_argument("--tag", required=True, help="tag of the image in the layout")
    push.add_argument("--target-tag", action="append", help="tag to put in ECR (repeatable; default: --tag)")
    push.add_argument("--endpoint-url", help="ECR endpoint URL (default: AWS_ENDPOINT_URL_ECR / AWS)")
    push.add_argument("--region", help="AWS region (default: from the environment)")
    push.add_argument("--repository", required=True, help="ECR repository name")
    push.add_argument("--registry-id", help="registry (account) id")
    push.add_argument("--create-repository", action="store_true", help="create the repository when missing")
    push.add_argument("--ca-bundle", help="CA bundle to verify the endpoint's certificate")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "build":
        platforms = [item.strip() for item in args.platforms.split(",") if item.strip()] if args.platforms else None
        preset = args.preset or ("random" if args.layers is not None or args.layer_size is not None else "demo")
        if preset == "demo":
            image = build_demo_image(args.out, args.tag, platforms=platforms, docker=args.docker)
        else:
            image = build_random_image(args.out, args.tag, count=2 if args.layers is None else args.layers,
                                       size=(1 << 20) if args.layer_size is None else args.layer_size,
                                       seed=args.seed, platforms=platforms, docker=args.docker, compress=not args.uncompressed)
        print(json.dumps(image.summary(), sort_keys=True))
        return 0
    image = load_image(args.layout, args.tag)
    client = make_client(args.endpoint_url, args.region, args.ca_bundle)
    result = push_image(client, image, args.repository, tags=args.target_tag or [args.tag], registry_id=args.registry_id,
                        create_repository=args.create_repository)
    print(json.dumps(result, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
