# Copyright: Contributors to the ecrkit.images project
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""containerd's image and content stores, through containerd's own ``ctr`` client.

Why ``ctr`` and not the gRPC API from Python: ``ctr`` ships with every containerd package, is built
from the same source as the daemon it talks to (so its API version always matches), and needs no
Python dependency on the managed host; the Python gRPC bindings for containerd on PyPI are thin,
generated and unmaintained, and would add grpcio (a compiled wheel) to every fleet host. What ``ctr``
offers is enough to do the job without ever staging a whole image in a tarball:

- ``content ls -q`` says which blobs containerd has; only the others are downloaded;
- ``content ingest --expected-digest --expected-size`` stores one downloaded blob, which containerd
  checks against its digest before committing it;
- ``images import`` of an archive holding only the manifests (a few KiB) creates or moves the image
  names and sets containerd's garbage-collection labels from the manifests to their blobs, and
  unpacks the layers (already in the content store) into snapshots;
- ``content get`` streams a blob out, for a push.

What reaches ``ctr``'s command line is checked first (:func:`checked`: digests, names, namespaces,
labels, platforms; a hostile manifest or config must not pass ``--help`` as a snapshot key), and
positional arguments follow ``--``. ``ctr`` itself is looked up in the system directories only, never
through ``PATH`` (which under ``become`` may hold a directory another user can write), and every
directory on its way must be one only root (or we) can change (:func:`find_ctr`).

containerd may garbage-collect content that nothing references. So before any blob is ingested, the
manifests are imported under a staging name (:data:`STAGING_REPOSITORY`), whose GC labels already
reference the blobs still to come; the final names are created once every blob is in, then the
staging name is removed. An interrupted pull leaves the staging name holding what it stored, and
the next run picks up from there. An index keeps references to all its platforms' manifests
(:func:`index_labels`), so pulling a second platform never lets containerd collect the first.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import secrets
import stat
import subprocess
import tarfile
from dataclasses import dataclass
from typing import IO, ContextManager, Dict, Iterator, List, Optional, Sequence, Set, Tuple

from ansible_collections.ecrkit.images.plugins.module_utils import hostfs
from ansible_collections.ecrkit.images.plugins.module_utils.digest import DIGEST_RE, matches as digest_matches, of_bytes as digest_of_bytes
from ansible_collections.ecrkit.images.plugins.module_utils.errors import EcrkitError
from ansible_collections.ecrkit.images.plugins.module_utils.layout_format import IMAGE_NAME_ANNOTATION

DEFAULT_ADDRESS = "/run/containerd/containerd.sock"
DEFAULT_NAMESPACE = "default"
STAGING_REPOSITORY = "ecrkit.invalid/staging"
CONNECT_TIMEOUT = "10s"
COMMAND_TIMEOUT = 3600.0  # seconds; an ingest of a large layer from local disk
_STDERR_LIMIT = 2000
# Where ctr is looked for, in PATH's usual order; PATH itself is never used.
CTR_DIRECTORIES = ("/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin")

# What each kind of value on ctr's command line must be (always matched whole, ASCII only).
_DOMAIN_PART = r"(?:[A-Za-z0-9]|[A-Za-z0-9][A-Za-z0-9-]*[A-Za-z0-9])"
_PATH_PART = r"[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*"
_DIGEST = DIGEST_RE.pattern
# the reference grammar of container image names, with ECR's tag rule (up to 300 characters)
_IMAGE_NAME = (rf"(?:{_DOMAIN_PART}(?:\.{_DOMAIN_PART})*(?::[0-9]{{1,5}})?/)?{_PATH_PART}(?:/{_PATH_PART})*"
               rf"(?::[A-Za-z0-9_.-]{{1,300}})?(?:@{_DIGEST})?")
_PLATFORM_PART = r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}"
_RULES: Dict[str, Tuple["re.Pattern[str]", int, str]] = {
    "digest": (re.compile(_DIGEST), 71, "a sha256 digest (sha256: and 64 lowercase hexadecimal digits)"),
    "namespace": (re.compile(r"[A-Za-z0-9]+(?:[._-][A-Za-z0-9]+)*"), 76,
                  "a valid containerd namespace name (letters, digits, '.', '_' and '-')"),
    "image name": (re.compile(_IMAGE_NAME), 1024, "a valid image name such as registry.example/team/app:1.0"),
    "label key": (re.compile(r"[A-Za-z0-9][A-Za-z0-9._/-]{0,255}"), 256, "a label key (letters, digits, '.', '_', '/' and '-')"),
    "label value": (re.compile(r"[A-Za-z0-9._:/@+-]{0,1024}"), 1024, "a label value (letters, digits and '.:/@+_-')"),
    "ingest key": (re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,255}"), 256, "an ingest key (letters, digits, '.', '_', ':' and '-')"),
    "platform": (re.compile(rf"{_PLATFORM_PART}(?:/{_PLATFORM_PART}){{1,2}}"), 200,
                 "a platform such as linux/amd64 or linux/arm64/v8"),
}


class ContainerdError(EcrkitError):
    """containerd cannot be used, or refused a command."""

    code = "containerd_error"


class CtrNotFoundError(ContainerdError):
    code = "containerd_not_installed"


class SocketMissingError(ContainerdError):
    code = "containerd_socket_missing"


class SocketPermissionError(ContainerdError):
    code = "containerd_permission_denied"


class UnknownNamespaceError(ContainerdError):
    code = "containerd_unknown_namespace"


class UnknownImageError(ContainerdError):
    code = "containerd_unknown_image"


class InvalidValueError(ContainerdError):
    """A value meant for ctr's command line is not what it must be (a hostile manifest or config, a bad option)."""

    code = "containerd_invalid_value"


class UntrustedCtrError(ContainerdError):
    """The ctr found could be changed by a user other than root (or the user the task runs as)."""

    code = "containerd_ctr_untrusted"


def checked(kind: str, value: object, what: str, error: type = InvalidValueError) -> str:
    """``value`` when it is a valid ``kind`` (see ``_RULES``), else ``error`` naming it as ``what``.

    The one check of every value that reaches ctr's command line: nothing that starts with '-',
    nothing outside ASCII, no separators a filter or a label could be split on.
    """
    pattern, longest, rule = _RULES[kind]
    if isinstance(value, str) and len(value) <= longest and pattern.fullmatch(value):
        return value
    raise error(f"The {what} {_shown(value)} is not {rule}.")


def _shown(value: object) -> str:
    """A value for a message: quoted, non-ASCII escaped, cut short."""
    if not isinstance(value, str):
        return f"of type {type(value).__name__}"
    return ascii(value if len(value) <= 80 else value[:72] + "...")


@dataclass(frozen=True)
class ImageRecord:
    """An entry of containerd's image store: a name pointing at a manifest or index."""

    name: str
    media_type: str
    digest: str


class Containerd:
    """One containerd namespace, reached through ``ctr`` at ``address``."""

    def __init__(self, address: str, namespace: str, executable: str) -> None:
        self.address = address
        self.namespace = checked("namespace", namespace, "containerd namespace", UnknownNamespaceError)
        self.executable = executable
        self.commands = 0  # ctr invocations, for the result and the tests

    # -- running ctr ---------------------------------------------------------------------------

    def _argv(self, command: Sequence[str], positional: Sequence[str]) -> List[str]:
        # flag values joined with '=' and positional arguments after '--': none is ever read as a flag
        argv = [self.executable, f"--address={self.address}", f"--connect-timeout={CONNECT_TIMEOUT}",
                f"--namespace={self.namespace}", *command]
        return argv + ["--", *positional] if positional else argv

    def run(self, command: Sequence[str], positional: Sequence[str] = (), stdin: Optional[IO[bytes]] = None,
            data: Optional[bytes] = None) -> bytes:
        """Run one ctr command (subcommand words and flags, then checked positional arguments); its
        standard output, or ContainerdError in the operator's terms."""
        self.commands += 1
        args = [*command, *positional]
        try:
            done = subprocess.run(self._argv(command, positional), input=data, stdin=stdin if data is None else None,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=COMMAND_TIMEOUT,
                                  check=False)
        except OSError as exc:
            raise CtrNotFoundError(f"containerd's client {self.executable} could not be run ({exc.strerror}); "
                                   "check the containerd installation.") from None
        except subprocess.TimeoutExpired:
            raise ContainerdError(f"'ctr {args[0]} {args[1] if len(args) > 1 else ''}' did not finish within "
                                  f"{COMMAND_TIMEOUT:.0f} s; check that containerd at {self.address} is healthy.") from None
        if done.returncode != 0:
            raise self._failure(args, done.stderr)
        return done.stdout

    def _failure(self, args: Sequence[str], stderr: bytes) -> ContainerdError:
        text = stderr.decode("utf-8", "replace").strip()[:_STDERR_LIMIT]
        lowered = text.lower()
        if "permission denied" in lowered:
            return SocketPermissionError(
                f"Permission denied on the containerd socket {self.address}; run the task as root "
                "(become: true) or as a user allowed to use that socket.")
        if "connection refused" in lowered or "failed to dial" in lowered or "no such file" in lowered:
            return ContainerdError(f"containerd is not answering on {self.address} ({_last_line(text)}); "
                                   "check that it is running, or set containerd_address to its socket.")
        command = " ".join(arg for arg in args if not arg.startswith("-"))[:80]
        return ContainerdError(f"containerd refused 'ctr {command}' in namespace '{self.namespace}': {_last_line(text)}")

    @contextlib.contextmanager
    def _stream(self, command: Sequence[str], positional: Sequence[str]) -> Iterator[IO[bytes]]:
        """A running ctr command's standard output, read as a stream; its failure raised at the end."""
        self.commands += 1
        args = [*command, *positional]
        try:
            process = subprocess.Popen(self._argv(command, positional), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        except OSError as exc:
            raise CtrNotFoundError(f"containerd's client {self.executable} could not be run ({exc.strerror}); "
                                   "check the containerd installation.") from None
        stdout = process.stdout
        stderr = process.stderr
        if stdout is None or stderr is None:  # pragma: no cover - PIPE always gives both
            raise ContainerdError("ctr's output could not be read.")
        try:
            yield stdout
            leftover = stdout.read(1)  # the caller read the whole blob: ctr has nothing more to send
        except BaseException:
            process.kill()
            process.wait()
            stdout.close()
            stderr.close()
            raise
        errors = stderr.read()
        code = process.wait()
        stdout.close()
        stderr.close()
        if code != 0:
            raise self._failure(args, errors)
        if leftover:
            raise ContainerdError(f"containerd sent more bytes than expected for 'ctr {' '.join(args)}'.")

    # -- namespaces and images -----------------------------------------------------------------

    def namespaces(self) -> List[str]:
        return self.run(["namespaces", "ls", "-q"]).decode("utf-8", "replace").split()

    def image(self, name: str) -> Optional[ImageRecord]:
        """The image named exactly ``name``, or None."""
        checked("image name", name, "containerd image name")  # no quote can end the filter early
        output = self.run(["images", "ls"], [f'name=="{name}"']).decode("utf-8", "replace")
        for line in output.splitlines()[1:]:
            fields = line.split()
            if len(fields) >= 3 and fields[0] == name:
                return ImageRecord(name=fields[0], media_type=fields[1], digest=fields[2])
        return None

    def image_names(self) -> List[str]:
        return self.run(["images", "ls", "-q"]).decode("utf-8", "replace").split()

    def remove_images(self, names: Sequence[str]) -> None:
        if names:
            self.run(["images", "rm"], [checked("image name", name, "containerd image name") for name in names])

    def import_manifests(self, names: Sequence[str], top: Tuple[str, str, bytes], documents: Sequence[Tuple[str, bytes]],
                         unpack: bool, platform: Optional[str], all_platforms: bool) -> None:
        """Create (or move) ``names`` to point at ``top`` (media type, digest, bytes), from an archive that
        holds only the manifests; their configs and layers must be in the content store for ``unpack``.

        ``platform`` picks the manifest of an index that is labelled and unpacked; with
        ``all_platforms`` every manifest is labelled (and the host's one unpacked).
        """
        args = ["images", "import"]
        if all_platforms:
            args.append("--all-platforms")
        elif platform:
            args.append("--platform=" + checked("platform", platform, "platform"))
        if not unpack:
            args.append("--no-unpack")
        self.run(args, ["-"], data=manifests_archive(names, top, documents))

    # -- content -------------------------------------------------------------------------------

    def content_digests(self) -> Set[str]:
        return set(self.run(["content", "ls", "-q"]).decode("utf-8", "replace").split())

    def read_blob(self, digest: str, max_size: int) -> bytes:
        """A small blob (manifest, config), checked against its digest."""
        with self._stream(["content", "get"], [checked("digest", digest, "blob digest")]) as stream:
            data = stream.read(max_size + 1)
            if len(data) > max_size:
                raise ContainerdError(f"The blob {digest} in containerd is larger than {max_size} bytes; it is not a manifest or config.")
            stream.read()
        if not digest_matches(data, digest):
            raise ContainerdError(f"containerd returned bytes for {digest} that do not hash to it; check its content store.")
        return data

    def open_blob(self, digest: str) -> ContextManager[IO[bytes]]:
        """A blob's bytes as a stream (the caller verifies what it reads)."""
        return self._stream(["content", "get"], [checked("digest", digest, "blob digest")])

    def ingest(self, handle: IO[bytes], digest: str, size: int) -> None:
        """Store the bytes of ``handle`` (an open regular file, read from its start) as ``digest``;
        containerd refuses them unless size and digest match.

        The caller opens the file (without following a symbolic link, see ``OciLayout.open_blob``): a
        path here would be opened again and could meanwhile name another file.
        Each attempt has its own ingest key: containerd resumes a key's earlier, failed ingest at its
        offset, so reusing one would commit the old attempt's bytes again (and fail again).
        """
        checked("digest", digest, "blob digest")
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise InvalidValueError(f"The size {_shown(str(size))} of blob {digest} is not a whole number of bytes.")
        if not stat.S_ISREG(os.fstat(handle.fileno()).st_mode):
            raise ContainerdError(f"The staged blob {digest} is not a regular file; it is not given to containerd.")
        key = checked("ingest key", f"ecrkit-{digest}-{os.getpid()}-{secrets.token_hex(4)}", "ingest key")
        handle.seek(0)
        self.run(["content", "ingest", f"--expected-size={size}", f"--expected-digest={digest}"], [key], stdin=handle)

    def label_blob(self, digest: str, labels: Dict[str, str]) -> None:
        """Set ``labels`` on a blob (other labels are kept)."""
        pairs = [f"{checked('label key', key, 'label key')}={checked('label value', value, f'value of label {key}')}"
                 for key, value in sorted(labels.items())]
        self.run(["content", "label"], [checked("digest", digest, "blob digest"), *pairs])

    # -- snapshots -----------------------------------------------------------------------------

    def has_snapshot(self, key: str) -> bool:
        """Whether a committed snapshot has the chain ID ``key`` (a digest: nothing else is asked)."""
        try:
            self.run(["snapshots", "info"], [checked("digest", key, "snapshot key")])
        except ContainerdError as exc:
            if "not found" in str(exc) or "does not exist" in str(exc):
                return False
            raise
        return True


def ignored_options_warnings(format_option: str, format_value: str, **given: object) -> List[str]:
    """A warning naming the containerd options that were given (not None) although ``format_option`` is
    not containerd, so they do nothing; none when the format is containerd or none was given."""
    named = [name for name, value in given.items() if value is not None]
    if format_value == "containerd" or not named:
        return []
    return [f"{', '.join(named)} {'applies' if len(named) == 1 else 'apply'} only to {format_option} containerd and "
            f"{'was' if len(named) == 1 else 'were'} ignored ({format_option} is {format_value})."]


def connect(address: str, namespace: str, must_exist: bool, executable: Optional[str] = None) -> Containerd:
    """Check that containerd can be used at ``address`` and that ``namespace`` exists (unless
    ``must_exist`` is false and it is containerd's ``default``, which containerd creates on first use).

    ``executable`` is the ctr to use (the option containerd_ctr_path); by default :func:`find_ctr`'s.
    """
    checked("namespace", namespace, "containerd namespace", UnknownNamespaceError)
    found = find_ctr(executable)
    try:
        kind = os.stat(address).st_mode
    except PermissionError:  # a directory on the way is closed to this user
        raise SocketPermissionError(f"Permission denied on the way to the containerd socket {address}; run the task as "
                                    "root (become: true) or as a user allowed to use that socket.") from None
    except OSError:
        raise SocketMissingError(f"There is no containerd socket at {address}; start containerd, or set "
                                 "containerd_address to the socket it listens on.") from None
    if not stat.S_ISSOCK(kind):  # ctr would only say it cannot dial, as if the daemon were down
        what = "a directory" if stat.S_ISDIR(kind) else "a regular file" if stat.S_ISREG(kind) else "a device or FIFO"
        raise SocketMissingError(f"containerd_address {address} is {what}, not containerd's socket; set it to the socket "
                                 f"containerd listens on, such as {DEFAULT_ADDRESS}.")
    if not os.access(address, os.R_OK | os.W_OK):
        raise SocketPermissionError(f"Permission denied on the containerd socket {address}; run the task as root "
                                    "(become: true) or as a user allowed to use that socket.")
    client = Containerd(address, namespace, found)
    known = client.namespaces()
    if namespace not in known and (must_exist or namespace != DEFAULT_NAMESPACE):
        raise UnknownNamespaceError(
            f"containerd at {address} has no namespace '{namespace}' (it has: {', '.join(known) or 'none'}); "
            f"check containerd_namespace, or create it with 'ctr namespaces create {namespace}'.")
    return client


def find_ctr(explicit: Optional[str] = None) -> str:
    """The resolved path of the ctr to run: ``explicit`` (the option containerd_ctr_path), else the first
    ``ctr`` in :data:`CTR_DIRECTORIES`; refused unless only root (or we) can change it."""
    if explicit is not None:
        if not explicit.startswith("/"):
            raise CtrNotFoundError(f"containerd_ctr_path must be an absolute path such as /usr/bin/ctr, not {_shown(explicit)}.")
        found = _trusted_file(explicit)
        if found is None:
            raise CtrNotFoundError(f"There is no file at containerd_ctr_path {explicit}; set it to containerd's ctr client.")
        return found
    for directory in CTR_DIRECTORIES:
        found = _trusted_file(os.path.join(directory, "ctr"))
        if found is not None:
            return found
    raise CtrNotFoundError(f"containerd's client 'ctr' was not found in {', '.join(CTR_DIRECTORIES)}; install containerd "
                           "(its package ships ctr) on this host, or set containerd_ctr_path to it.")


def _trusted_file(path: str) -> Optional[str]:
    """The real path of the ctr at ``path`` (None when there is none), refused unless only root (or we)
    can change it and every directory and link on its way (:func:`hostfs.trusted_file`)."""
    try:
        found = hostfs.trusted_file(path, "containerd's client ctr")
    except hostfs.UntrustedPathError as exc:
        raise UntrustedCtrError(str(exc)) from None  # never run: set containerd_ctr_path to a ctr root keeps
    except EcrkitError as exc:
        raise CtrNotFoundError(str(exc)) from None
    if found is not None and not os.stat(found).st_mode & 0o111:
        raise CtrNotFoundError(f"containerd's client {found} is not executable; check the containerd installation.")
    return found


def manifests_archive(names: Sequence[str], top: Tuple[str, str, bytes], documents: Sequence[Tuple[str, bytes]]) -> bytes:
    """An OCI archive holding only ``top`` and ``documents`` (digest, bytes), with one ``index.json``
    entry per name, named by containerd's image-name annotation."""
    media_type, digest, raw = top
    for name in names:  # the archive's annotations become containerd's image names
        checked("image name", name, "containerd image name")
    index = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
             "manifests": [{"mediaType": media_type, "digest": digest, "size": len(raw),
                            "annotations": {IMAGE_NAME_ANNOTATION: name}} for name in names]}
    members = [("oci-layout", b'{"imageLayoutVersion":"1.0.0"}'),
               ("index.json", json.dumps(index, sort_keys=True).encode("utf-8"))]
    seen = set()
    for blob_digest, data in [(digest, raw), *documents]:
        checked("digest", blob_digest, "manifest digest")  # it becomes a member's path
        if blob_digest not in seen:
            seen.add(blob_digest)
            members.append(("blobs/" + blob_digest.replace(":", "/", 1), data))
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def index_labels(children: Sequence[str]) -> Dict[str, str]:
    """Garbage-collection references from an index to every child manifest, under keys of our own.

    ``ctr images import --platform P`` labels an index with its platform-P child only, replacing the
    ``gc.ref.content.m.N`` label an earlier pull of another platform set: containerd would then
    collect that platform's content. These keys are not touched by an import.
    """
    return {f"containerd.io/gc.ref.content.ecrkit.m.{number}": digest for number, digest in enumerate(children)}


def chain_ids(diff_ids: object) -> List[str]:
    """The chain ID of each layer (OCI image spec): the keys containerd gives committed snapshots.

    ``diff_ids`` comes from an image config, written by whoever built the image: InvalidValueError
    unless it is a list of sha256 digests.
    """
    if not isinstance(diff_ids, (list, tuple)):
        raise InvalidValueError(f"The image config's rootfs.diff_ids is {_shown(diff_ids)}, not a list of layer digests.")
    chain: List[str] = []
    for diff_id in diff_ids:
        checked("digest", diff_id, "image config's layer diff_id")
        if not chain:
            chain.append(diff_id)
        else:
            chain.append(digest_of_bytes(f"{chain[-1]} {diff_id}".encode("ascii")))
    return chain


def staging_name(digest: str) -> str:
    """The name that holds an image's content while a pull is in progress."""
    return f"{STAGING_REPOSITORY}:{digest.replace(':', '-')}"


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    line = lines[-1] if lines else "no error output"
    return line[4:].strip() if line.startswith("ctr:") else line
