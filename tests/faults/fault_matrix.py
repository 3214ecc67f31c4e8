# Copyright: Contributors to the ecrkit.images project
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The fault matrix: every fault x {pull into an OCI layout, an oci-archive, containerd; push}, many seeds.

    python tests/faults/fault_matrix.py --runs 20 [--faults drop,kill] [--targets oci,containerd,push]

Run it in the laid-out copy (``make test-faults`` does; see CONTRIBUTING.md). It needs root for the
private containerd and the tmpfs of the disk-full fault; what cannot run is reported as skipped.

Faults (seeded: each seed picks the image and the fault's parameters):

    throttle        ThrottlingException: a burst of 1-3 on the first calls of one operation, then 10-30 %
                    of all API calls
    server-error    ServerException (500), the same way
    lost-response   the call is carried out, then answered 500 (the retry meets its effect)
    drop            pull: a blob connection cut 1-3 times at a random offset; push: one API request cut
                    at a random byte (by the proxy)
    truncate        pull: blob bodies of one layer end a few bytes short, 1-4 times; push: one API answer
                    cut in half
    corrupt         pull: one flipped byte in a blob body; push: one flipped byte in an uploaded part
    corrupt-always  pull: a layer is always served with one byte wrong (the pull must fail)
    stall           pull: a blob body pauses 3 s (download_timeout=1); push: an API answer is held 4 s
                    (read timeout 2 s)
    expire          pull: blob URLs expire after 5-30 ms, 1-3 times (two connections, so mid-layer)
    kill            SIGKILL of the operation's process after a seeded delay, number of API calls or
                    of blob bytes sent, then a re-run without faults
    diskfull        pull: a tmpfs as the destination, too small (seeds 1, 4, ...), filled by another writer
                    mid-download (2, 5, ...) or big enough for the download only (3, 6, ...); then space is
                    freed and the pull runs again
    concurrent      two operations into one destination at once: of the same image (odd seeds) or of two
                    different images (even seeds)

Each run (fault, target, seed) starts from a clean state: a new layout directory or archive
directory, a new containerd namespace, or a new ECR repository. The local ECR endpoint runs as a
subprocess with per-connection pacing (so that a kill or an expiry lands mid-layer), and a small HTTP
proxy sits between the push and the endpoint to cut, truncate or stall API connections. Every
operation runs in a forked child process, exactly as the module calls it
(``pull(PullOptions.from_params(...), connect)``), so that a SIGKILL is a real kill and a hang cannot
stop the matrix.

Afterwards the destination is checked without the code under test:

- OCI layout: every file under ``blobs/sha256`` hashes to its name; every ``index.json`` entry points
  at a manifest whose config and layers are all there with their sizes; ``skopeo inspect`` and
  ``umoci stat`` accept every tag;
- oci-archive: every ``blobs/sha256`` member hashes to its name, ``index.json`` entries are complete,
  ``skopeo inspect`` accepts it; the staging layout beside it, while there, is checked as a layout;
- containerd: ``ctr images check`` says every image (but the staging name) is complete, and every
  blob of the namespace (``ctr content get``) hashes to its digest;
- push: what ECR holds under the tag is the source manifest byte for byte, every image of the
  repository has its blobs, and every layer ECR reports available hashes to its digest (downloaded
  through GetDownloadUrlForLayer, or read from the endpoint's store when no image references it).

Outcome of a run: ``completed``; ``failed cleanly`` (an EcrkitError whose message is one line for
the operator, without secret, and the destination intact); ``failed unclearly`` (an EcrkitError whose
message is not that, or an operation that hung); ``data lost`` (any integrity violation, or an
exception that is not an EcrkitError). After a completed run nothing of the operation's own may be
left behind (partial downloads, journals, temp files, staging layouts or images); what is left is
listed as a problem. The exit status is 1 when any run lost data or failed unclearly.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import dataclasses
import hashlib
import json
import multiprocessing
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import traceback
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

HERE = os.path.dirname(os.path.abspath(__file__))
TESTS_DIR = os.path.dirname(HERE)
COLLECTION_DIR = os.path.dirname(TESTS_DIR)
for _path in (os.path.join(TESTS_DIR, "emulator"), os.path.join(TESTS_DIR, "containerd")):
    if _path not in sys.path:
        sys.path.insert(0, _path)
_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(COLLECTION_DIR)))
if os.path.basename(os.path.dirname(os.path.dirname(COLLECTION_DIR))) == "ansible_collections" and _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)  # run as a script in the laid-out copy, without PYTHONPATH

# pylint: disable=wrong-import-position
import ecr_emulator  # noqa: E402
import private_containerd  # noqa: E402
import sample_images  # noqa: E402
from fixture import run_emulator  # noqa: E402

from ansible_collections.ecrkit.images.plugins.module_utils import ecr, errors, pull, push  # noqa: E402

MIB = 1024 * 1024
KIB = 1024
SOURCE_REPOSITORY = "fm/source"
STAGING_PREFIX = "ecrkit.invalid/"  # containerd image names an unfinished pull keeps its content under
CHUNK_SIZE = MIB
MAX_CONNECTIONS = 4
BANDWIDTH = "32M"  # per blob connection: a 3 MiB layer takes about 0.1 s, so kills and expiries land mid-layer
OPERATION_TIMEOUT = 240.0

COMPLETED = "completed"
FAILED_CLEANLY = "failed cleanly"
FAILED_UNCLEARLY = "failed unclearly"
DATA_LOST = "data lost"
SKIPPED = "skipped"
OUTCOMES = (COMPLETED, FAILED_CLEANLY, FAILED_UNCLEARLY, DATA_LOST)

TARGETS = ("oci", "oci-archive", "containerd", "push")
PULL_TARGETS = ("oci", "oci-archive", "containerd")

# (tag, layer count, layer size, seed): a and b share two layers, c shares none.
IMAGES = (("a", 2, 3 * MIB + 4321, "fm"), ("b", 3, 3 * MIB + 4321, "fm"), ("c", 2, 2 * MIB + 777, "fm-other"))

SECRET_PATTERNS = (
    re.compile(r"X-Amz-(?:Signature|Credential|Security-Token)=", re.IGNORECASE),
    re.compile(r"AWS4-HMAC-SHA256\s+Credential=", re.IGNORECASE),
    re.compile(re.escape(ecr_emulator.DEFAULT_SECRET_KEY)),
)


def log_nothing(line: str) -> None:  # pylint: disable=unused-argument
    """The default progress sink of :func:`run_matrix`."""


# -- small helpers ----------------------------------------------------------------------------------


def sha256_file(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for piece in iter(lambda: handle.read(MIB), b""):
            digest.update(piece)
    return "sha256:" + digest.hexdigest()


def image_blobs(image: sample_images.BuiltImage) -> List[sample_images.Descriptor]:
    """Configs and layers of a sample image, each once: what a pull downloads, a push uploads."""
    blobs: Dict[str, sample_images.Descriptor] = {}
    for platform_image in image.manifests:
        for blob in (platform_image.config, *platform_image.layers):
            blobs.setdefault(blob.digest, blob)
    return list(blobs.values())


def human(size: int) -> str:
    return f"{size / MIB:.1f} MiB"


def secret_in(text: str) -> Optional[str]:
    for pattern in SECRET_PATTERNS:
        if pattern.search(text):
            return pattern.pattern
    return None


def unclear_message(message: str) -> Optional[str]:
    """Why an error message is not one clear line for the operator, or None."""
    text = message.strip()
    if not text:
        return "an empty message"
    leaked = secret_in(text)
    if leaked:
        return f"a secret in the message ({leaked})"
    if "\n" in text:
        return "a message of several lines"
    if "Traceback" in text or 'File "' in text:
        return "a traceback in the message"
    if re.search(r"\[Errno -?\d+\]", text):
        return "a raw OSError text in the message"
    if re.search(r"object at 0x[0-9a-f]+|<class '", text):
        return "a Python repr in the message"
    if len(text) > 700:
        return f"a message of {len(text)} characters"
    if len(re.findall(r"[.!?]\s+[A-Z]", text)) > 1:
        return "a message of more than two sentences"
    return None


# -- an HTTP proxy that breaks API connections --------------------------------------------------------


@dataclasses.dataclass
class ProxyRule:
    """Break the ``nth`` request (counted from the rule being set) the proxy forwards.

    ``drop``: forward the request head and ``offset`` bytes of its body, then close both connections
    (the endpoint sees a cut request, the client no answer); ``truncate``: forward the request, then
    only half the answer's body and close (the call took effect, its answer is lost half way);
    ``stall``: hold the answer ``seconds`` before forwarding it (the client's read timeout fires).
    """

    action: str
    nth: int
    offset: int = 0
    seconds: float = 0.0


class _Reader:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = b""

    def head(self) -> Optional[bytes]:
        while b"\r\n\r\n" not in self.buffer:
            data = self.sock.recv(65536)
            if not data:
                return None
            self.buffer += data
        end = self.buffer.index(b"\r\n\r\n") + 4
        head, self.buffer = self.buffer[:end], self.buffer[end:]
        return head

    def exactly(self, size: int) -> bytes:
        while len(self.buffer) < size:
            data = self.sock.recv(max(65536, size - len(self.buffer)))
            if not data:
                break
            self.buffer += data
        body, self.buffer = self.buffer[:size], self.buffer[size:]
        return body

    def rest(self) -> bytes:
        chunks = [self.buffer]
        self.buffer = b""
        while True:
            data = self.sock.recv(65536)
            if not data:
                return b"".join(chunks)
            chunks.append(data)


def _headers(head: bytes) -> Dict[str, str]:
    lines = head.decode("latin-1").split("\r\n")
    return {name.strip().lower(): value.strip() for name, sep, value in (line.partition(":") for line in lines[1:]) if sep}


class FaultProxy:
    """HTTP/1.1 keep-alive proxy in front of the endpoint; request by request, so one call can be broken."""

    def __init__(self, upstream: Tuple[str, int]) -> None:
        self.upstream = upstream
        self.lock = threading.Lock()
        self.rule: Optional[ProxyRule] = None
        self.requests = 0
        self.fired = 0
        self.ops: collections.Counter = collections.Counter()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.closed = False
        self.thread = threading.Thread(target=self._accept, name="fault-proxy", daemon=True)
        self.thread.start()

    def set_rule(self, rule: Optional[ProxyRule]) -> None:
        with self.lock:
            self.rule = rule
            self.requests = 0
            self.fired = 0
            self.ops = collections.Counter()

    def close(self) -> None:
        self.closed = True
        with contextlib.suppress(OSError):
            self.listener.close()

    def _accept(self) -> None:
        while not self.closed:
            try:
                client, dummy = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), name="fault-proxy-conn", daemon=True).start()

    def _decide(self, operation: str) -> Optional[ProxyRule]:
        with self.lock:
            self.requests += 1
            self.ops[operation] += 1
            if self.rule is not None and self.requests == self.rule.nth:
                self.fired += 1
                return self.rule
        return None

    def _serve(self, client: socket.socket) -> None:
        try:
            upstream = socket.create_connection(self.upstream, timeout=120)
        except OSError:
            client.close()
            return
        client.settimeout(300)
        try:
            self._relay(client, upstream)
        except OSError:
            pass
        finally:
            for sock in (client, upstream):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()

    def _relay(self, client: socket.socket, upstream: socket.socket) -> None:
        from_client, from_upstream = _Reader(client), _Reader(upstream)
        while True:
            head = from_client.head()
            if head is None:
                return
            headers = _headers(head)
            body = from_client.exactly(int(headers.get("content-length") or 0))
            rule = self._decide(headers.get("x-amz-target", "").rpartition(".")[2] or head.split(b" ", 2)[0].decode("latin-1"))
            if rule is not None and rule.action == "drop":
                upstream.sendall(head + body[:min(rule.offset, max(0, len(body) - 1))])
                return
            upstream.sendall(head + body)
            answer_head = from_upstream.head()
            if answer_head is None:
                return
            answer_headers = _headers(answer_head)
            if "content-length" in answer_headers:
                answer = from_upstream.exactly(int(answer_headers["content-length"]))
            else:
                answer = from_upstream.rest()
            if rule is not None and rule.action == "stall":
                time.sleep(rule.seconds)
            if rule is not None and rule.action == "truncate":
                client.sendall(answer_head + answer[:len(answer) // 2])
                return
            client.sendall(answer_head + answer)
            if answer_headers.get("connection", "").lower() == "close":
                return


class CorruptingClient:
    """A boto3 ECR client whose ``nth`` UploadLayerPart carries one flipped byte (at ``offset`` of the
    part): bytes that went bad between the source and ECR, below the code under test."""

    def __init__(self, client: Any, nth: int, offset: int) -> None:
        self._client = client
        self._nth = nth
        self._offset = offset
        self._calls = 0
        self._lock = threading.Lock()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)

    def upload_layer_part(self, **params: Any) -> Any:
        with self._lock:
            self._calls += 1
            corrupt = self._calls == self._nth
        if corrupt:
            data = bytearray(params["layerPartBlob"])
            position = self._offset % len(data)
            data[position] ^= 0xFF
            params = dict(params, layerPartBlob=bytes(data))
        return self._client.upload_layer_part(**params)


# -- running an operation in a child process ---------------------------------------------------------


def make_client(endpoint: Dict[str, Any], read_timeout: float = 60.0) -> Any:
    """A boto3 ECR client as the module builds it: botocore's own retries off (see ecr.client_config)."""
    import boto3  # pylint: disable=import-outside-toplevel
    from botocore.config import Config  # pylint: disable=import-outside-toplevel

    return boto3.client("ecr", region_name=endpoint["region"], endpoint_url=endpoint["url"],
                        aws_access_key_id=endpoint["access_key"], aws_secret_access_key=endpoint["secret_key"],
                        config=Config(retries={"total_max_attempts": 1, "mode": "standard"}, connect_timeout=10,
                                      read_timeout=read_timeout))


def operate(spec: Dict[str, Any]) -> Dict[str, Any]:
    """Run one pull or push as the module does; return its result."""
    client = make_client(spec["endpoint"], spec.get("read_timeout", 60.0))
    if spec.get("corrupt"):
        client = CorruptingClient(client, **spec["corrupt"])
    if spec["kind"] == "pull":
        options = pull.PullOptions.from_params(**spec["params"])
        return pull.pull(options, lambda ref: ecr.EcrRepository(client, ref, options.api_retry))
    push_options = push.PushOptions.from_params(**spec["params"])
    return push.push(push_options, lambda ref: ecr.EcrRepository(client, ref, push_options.api_retry))


def describe_exception(exc: BaseException) -> Dict[str, Any]:
    frames = traceback.extract_tb(exc.__traceback__)
    ours = [frame for frame in frames if "/plugins/" in frame.filename] or frames
    where = ""
    if ours:
        frame = ours[-1]
        path = "plugins/" + frame.filename.rpartition("/plugins/")[2] if "/plugins/" in frame.filename else frame.filename
        where = f"{path}:{frame.lineno} in {frame.name}"
    return {"status": "error", "ecrkit": isinstance(exc, errors.EcrkitError), "type": type(exc).__name__,
            "mro": [cls.__name__ for cls in type(exc).__mro__], "code": getattr(exc, "code", ""), "message": str(exc),
            "where": where, "traceback": "" if isinstance(exc, errors.EcrkitError) else traceback.format_exc()}


def _child_main(conn: Any, spec: Dict[str, Any], barrier: Any) -> None:
    try:
        if barrier is not None:
            barrier.wait(60)
        report = {"status": "ok", "result": operate(spec)}
    except BaseException as exc:  # pylint: disable=broad-except
        report = describe_exception(exc)
    try:
        conn.send(json.loads(json.dumps(report, default=str)))
    finally:
        conn.close()


class Child:
    """An operation in a forked child process (``multiprocessing`` fork, as test_pull does)."""

    def __init__(self, spec: Dict[str, Any], barrier: Any = None) -> None:
        context = multiprocessing.get_context("fork")
        self.receiver, sender = context.Pipe(duplex=False)
        self.process = context.Process(target=_child_main, args=(sender, spec, barrier), daemon=True)
        self.started = time.monotonic()
        self.process.start()
        sender.close()
        self.killed = False
        self.report: Optional[Dict[str, Any]] = None

    def alive(self) -> bool:
        return self.process.is_alive() and not self.receiver.poll()

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.process.pid, signal.SIGKILL)
        self.killed = True

    def wait(self, timeout: float = OPERATION_TIMEOUT) -> Dict[str, Any]:
        if self.report is not None:
            return self.report
        report = None
        hung = False
        if self.receiver.poll(timeout):
            with contextlib.suppress(EOFError, OSError):
                report = self.receiver.recv()
        elif self.process.is_alive():
            hung = True
            self.kill()
        self.process.join(30)
        elapsed = time.monotonic() - self.started
        if report is None:
            if self.killed and not hung:
                report = {"status": "killed"}
            elif hung:
                report = {"status": "hung", "message": f"did not finish within {timeout:.0f} s"}
            else:
                report = {"status": "crash", "message": f"the process died with exit code {self.process.exitcode}"}
        report["elapsed"] = elapsed
        self.receiver.close()
        self.report = report
        return report


def run_operation(spec: Dict[str, Any]) -> Dict[str, Any]:
    return Child(spec).wait()


# -- destinations -----------------------------------------------------------------------------------


class Destination:
    """Where the operations of one run write, how to check it, what is left and what is missing."""

    target = ""
    slack = 0  # bytes a re-run after a kill may fetch again beyond what was missing

    def __init__(self, bed: "Bed", name: str) -> None:
        self.bed = bed
        self.name = name

    def spec(self, image: sample_images.BuiltImage, **overrides: Any) -> Dict[str, Any]:
        raise NotImplementedError

    def check(self, completed: Dict[str, sample_images.BuiltImage]) -> List[str]:
        """Integrity violations; ``completed`` maps the tags of operations that completed to their image."""
        raise NotImplementedError

    def leftovers(self) -> List[str]:
        """What the operations left behind that a completed run must not."""
        raise NotImplementedError

    def missing(self, images: Sequence[sample_images.BuiltImage]) -> int:
        """Bytes of the images' blobs the destination (incl. resumable partial downloads) lacks."""
        raise NotImplementedError

    def cleanup(self) -> None:
        """Free what the run used."""


def _pull_params(bed: "Bed", image: sample_images.BuiltImage, dest: str, dest_format: str, **overrides: Any) -> Dict[str, Any]:
    params = {"ref": bed.pull_ref(image.tag or ""), "dest": dest, "format": dest_format, "chunk_size": CHUNK_SIZE,
              "max_concurrent_downloads": MAX_CONNECTIONS}
    params.update(overrides)
    return params


def journaled_bytes(partial_dir: str, hexdigest: str, size: int) -> int:
    """Bytes a resume journal (``<hex>.journal``: a header line, then ``first last`` per written range) records."""
    journal = os.path.join(partial_dir, hexdigest + ".journal")
    partial = os.path.join(partial_dir, hexdigest)
    if not os.path.isfile(journal) or not os.path.isfile(partial):
        return 0
    with open(journal, "rb") as handle:
        lines = handle.read().decode("ascii", "replace").split("\n")
    covered: List[Tuple[int, int]] = []
    for line in lines[1:-1]:
        fields = line.split()
        if len(fields) == 2 and all(field.isdigit() for field in fields):
            covered.append((int(fields[0]), min(int(fields[1]) + 1, size)))
    total = 0
    end = 0
    for first, stop in sorted(covered):
        first = max(first, end)
        if stop > first:
            total += stop - first
            end = stop
    return total


class LayoutDestination(Destination):
    target = "oci"
    slack = MAX_CONNECTIONS * CHUNK_SIZE  # ranges written but not yet journaled when the process died

    def __init__(self, bed: "Bed", name: str, root: str) -> None:
        super().__init__(bed, name)
        self.root = root

    def spec(self, image: sample_images.BuiltImage, **overrides: Any) -> Dict[str, Any]:
        return self.bed.pull_spec(_pull_params(self.bed, image, self.root, "oci", **overrides))

    def check(self, completed: Dict[str, sample_images.BuiltImage]) -> List[str]:
        return check_layout(self.root, completed)

    def leftovers(self) -> List[str]:
        return layout_leftovers(self.root)

    def missing(self, images: Sequence[sample_images.BuiltImage]) -> int:
        return layout_missing(self.root, {blob.digest: blob.size for image in images for blob in image_blobs(image)})

    def cleanup(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


def layout_missing(root: str, blobs: Dict[str, int]) -> int:
    """Bytes of ``blobs`` (digest -> size) that the layout at ``root`` holds neither committed nor journaled."""
    missing = 0
    for digest, size in blobs.items():
        hexdigest = digest.split(":", 1)[1]
        path = os.path.join(root, "blobs", "sha256", hexdigest)
        if os.path.isfile(path) and os.path.getsize(path) == size:
            continue
        missing += size - journaled_bytes(os.path.join(root, ".ecrkit", "partial"), hexdigest, size)
    return missing


def check_layout(root: str, completed: Dict[str, sample_images.BuiltImage]) -> List[str]:
    """Integrity of an OCI layout, read with hashlib, json, skopeo and umoci only."""
    violations: List[str] = []
    if not os.path.exists(root):
        return [f"{root} does not exist, but the pull of {tag} completed" for tag in completed]
    blob_dir = os.path.join(root, "blobs", "sha256")
    sizes: Dict[str, int] = {}
    if os.path.isdir(blob_dir):
        for name in sorted(os.listdir(blob_dir)):
            path = os.path.join(blob_dir, name)
            if not re.fullmatch(r"[0-9a-f]{64}", name) or not os.path.isfile(path) or os.path.islink(path):
                violations.append(f"blobs/sha256/{name} is not a blob file")
                continue
            if sha256_file(path) != "sha256:" + name:
                violations.append(f"blobs/sha256/{name} does not hash to its name")
                continue
            sizes["sha256:" + name] = os.path.getsize(path)
    index_path = os.path.join(root, "index.json")
    if not os.path.exists(index_path):
        if os.path.exists(os.path.join(root, "oci-layout")) and os.listdir(blob_dir if os.path.isdir(blob_dir) else root):
            violations.append("the layout has blobs but no index.json")
        return violations + [f"index.json is missing, but the pull of {tag} completed" for tag in completed]
    try:
        with open(index_path, "rb") as handle:
            index = json.loads(handle.read().decode("utf-8"))
        entries = index["manifests"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return violations + [f"index.json cannot be read: {exc}"]
    tags: Dict[str, str] = {}
    for entry in entries:
        tag = (entry.get("annotations") or {}).get("org.opencontainers.image.ref.name")
        problem = _check_image(sizes, _read_layout_blob(root), entry)
        if problem:
            violations.append(f"index.json entry {tag or entry.get('digest')}: {problem}")
        if tag:
            if tag in tags:
                violations.append(f"index.json names {tag} twice")
            tags[tag] = entry.get("digest", "")
    for tag, image in completed.items():
        if tags.get(tag) != image.digest:
            violations.append(f"after a completed pull index.json maps {tag} to {tags.get(tag)}, not {image.digest}")
    for tag in tags:
        violations.extend(_tool_check(f"oci:{root}:{tag}", f"{root}:{tag}"))
    return violations


def _check_image(sizes: Dict[str, int], read: Callable[[str], bytes], entry: Dict[str, Any], depth: int = 0) -> str:
    """Why the image under ``entry`` is incomplete (``sizes``: the verified blobs there are), or ''."""
    digest = entry.get("digest", "")
    if sizes.get(digest) != entry.get("size"):
        return f"the manifest {digest} ({entry.get('size')} bytes) is not stored"
    document = json.loads(read(digest).decode("utf-8"))
    if "manifests" in document:
        for child in document["manifests"]:
            if depth < 2:
                problem = _check_image(sizes, read, child, depth + 1)
                if problem:
                    return problem
        return ""
    for blob in [document.get("config") or {}] + list(document.get("layers") or []):
        if sizes.get(blob.get("digest")) != blob.get("size"):
            return f"its blob {blob.get('digest')} ({blob.get('size')} bytes) is not stored"
    return ""


def _read_layout_blob(root: str) -> Callable[[str], bytes]:
    def read(digest: str) -> bytes:
        with open(os.path.join(root, "blobs", "sha256", digest.split(":", 1)[1]), "rb") as handle:
            return handle.read()
    return read


def _tool_check(skopeo_ref: str, umoci_ref: Optional[str] = None) -> List[str]:
    """``skopeo inspect`` (and ``umoci stat`` for a layout) must accept the image."""
    problems = []
    commands = []
    if shutil.which("skopeo"):
        commands.append(["skopeo", "inspect", skopeo_ref])
    if umoci_ref and shutil.which("umoci"):
        commands.append(["umoci", "stat", "--image", umoci_ref])
    for command in commands:
        done = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
        if done.returncode != 0:
            problems.append(f"{command[0]} rejects {command[-1]}: {done.stderr.strip()[-300:]}")
    return problems


def layout_leftovers(root: str) -> List[str]:
    found = []
    if not os.path.isdir(root):
        return found
    for name in os.listdir(root):
        if name not in ("oci-layout", "index.json", "blobs", ".ecrkit"):
            found.append(os.path.join(root, name))
    private = os.path.join(root, ".ecrkit")
    if os.path.isdir(private):
        for name in os.listdir(private):
            if name not in ("lock", "partial", "verified", "writers"):
                found.append(os.path.join(private, name))
        verified = os.path.join(private, "verified")  # a stamp per verified blob is kept; nothing else
        if os.path.isdir(verified):
            found.extend(os.path.join(verified, name) for name in sorted(os.listdir(verified))
                         if not re.fullmatch(r"[0-9a-f]{64}", name))
        partial = os.path.join(private, "partial")
        if os.path.isdir(partial):
            found.extend(os.path.join(partial, name) for name in sorted(os.listdir(partial)))
    blob_dir = os.path.join(root, "blobs")
    if os.path.isdir(blob_dir):
        found.extend(os.path.join(blob_dir, name) for name in os.listdir(blob_dir) if name != "sha256")
    return found


class ArchiveDestination(Destination):
    """An oci-archive file; the pull assembles it in a staging layout beside it (``.NAME.ecrkit-staging``)."""

    target = "oci-archive"
    slack = MAX_CONNECTIONS * CHUNK_SIZE

    def __init__(self, bed: "Bed", name: str, directory: str) -> None:
        super().__init__(bed, name)
        self.directory = directory
        os.makedirs(directory, exist_ok=True)
        self.path = os.path.join(directory, "image.tar")
        self.staging = os.path.join(directory, ".image.tar.ecrkit-staging")

    def spec(self, image: sample_images.BuiltImage, **overrides: Any) -> Dict[str, Any]:
        return self.bed.pull_spec(_pull_params(self.bed, image, self.path, "oci-archive", **overrides))

    def check(self, completed: Dict[str, sample_images.BuiltImage]) -> List[str]:
        violations = [f"in the staging layout: {item}" for item in check_layout(self.staging, {})] if os.path.isdir(self.staging) else []
        if not os.path.exists(self.path):
            return violations + [f"{self.path} does not exist, but the pull of {tag} completed" for tag in completed]
        return violations + check_oci_archive(self.path, completed)

    def leftovers(self) -> List[str]:
        return [os.path.join(self.directory, name) for name in sorted(os.listdir(self.directory)) if name != "image.tar"]

    def missing(self, images: Sequence[sample_images.BuiltImage]) -> int:
        blobs = {blob.digest: blob.size for image in images for blob in image_blobs(image)}
        if os.path.exists(self.path) and not check_oci_archive(self.path, {image.tag or "": image for image in images}):
            return 0
        return layout_missing(self.staging, blobs)

    def cleanup(self) -> None:
        shutil.rmtree(self.directory, ignore_errors=True)


def check_oci_archive(path: str, completed: Dict[str, sample_images.BuiltImage]) -> List[str]:
    """Integrity of an oci-archive, read with tarfile, hashlib and skopeo. A pull writes one image to the
    file, so of several pulls into one file (completed) the archive holds one."""
    violations: List[str] = []
    try:
        with tarfile.open(path) as tar:
            members = {member.name: member for member in tar.getmembers() if member.isfile()}
            sizes: Dict[str, int] = {}
            for name, member in members.items():
                if not name.startswith("blobs/sha256/"):
                    continue
                handle = tar.extractfile(member)
                assert handle is not None
                if "sha256:" + hashlib.sha256(handle.read()).hexdigest() != "sha256:" + name.rpartition("/")[2]:
                    violations.append(f"the archive member {name} does not hash to its name")
                    continue
                sizes["sha256:" + name.rpartition("/")[2]] = member.size

            def read(digest: str) -> bytes:
                handle = tar.extractfile(members["blobs/sha256/" + digest.split(":", 1)[1]])
                assert handle is not None
                return handle.read()

            index_file = tar.extractfile(members["index.json"])
            assert index_file is not None
            entries = json.loads(index_file.read().decode("utf-8"))["manifests"]
            tags = {}
            for entry in entries:
                tag = (entry.get("annotations") or {}).get("org.opencontainers.image.ref.name")
                problem = _check_image(sizes, read, entry)
                if problem:
                    violations.append(f"the archive's entry {tag or entry.get('digest')}: {problem}")
                tags[tag] = entry.get("digest")
    except (OSError, tarfile.TarError, KeyError, ValueError) as exc:
        return violations + [f"the archive {path} cannot be read: {type(exc).__name__}: {exc}"]
    if completed and not any(tags.get(tag) == image.digest for tag, image in completed.items()):
        violations.append(f"after a completed pull the archive maps {tags}, not {', '.join(f'{tag}: {image.digest}' for tag, image in completed.items())}")
    for tag in tags:
        violations.extend(_tool_check(f"oci-archive:{path}:{tag}"))
    return violations


class ContainerdDestination(Destination):
    target = "containerd"
    slack = MAX_CONNECTIONS * CHUNK_SIZE

    def __init__(self, bed: "Bed", name: str, staging: str) -> None:
        super().__init__(bed, name)
        self.staging = staging
        self.namespace = re.sub(r"[^A-Za-z0-9]+", "-", name).strip("-")
        bed.ctr("namespaces", "create", self.namespace)

    def spec(self, image: sample_images.BuiltImage, **overrides: Any) -> Dict[str, Any]:
        assert self.bed.daemon is not None
        params = _pull_params(self.bed, image, self.staging, "containerd", containerd_address=self.bed.daemon.address,
                              containerd_namespace=self.namespace, **overrides)
        return self.bed.pull_spec(params)

    def names(self, image: sample_images.BuiltImage) -> List[str]:
        return [f"{self.bed.repository_uri(SOURCE_REPOSITORY)}:{image.tag}", f"{self.bed.repository_uri(SOURCE_REPOSITORY)}@{image.digest}"]

    def images(self) -> Dict[str, Tuple[str, str]]:
        """name -> (digest, status): the status from ``ctr images check`` (``complete (n/n)``), except for the
        staging name, which may lack content by design (``staging``)."""
        found = {}
        for line in self.bed.ctr("images", "ls", namespace=self.namespace).splitlines()[1:]:
            fields = line.split()
            if len(fields) < 3:
                continue
            name, digest = fields[0], fields[2]
            if name.startswith(STAGING_PREFIX):
                found[name] = (digest, "staging")
                continue
            assert self.bed.daemon is not None
            done = subprocess.run(["ctr", "--address", self.bed.daemon.address, "--namespace", self.namespace, "images", "check",
                                   f'name=="{name}"'], capture_output=True, text=True, timeout=300, check=False)
            match = re.search(r"\s(complete|incomplete) \((\d+/\d+)\)", done.stdout)
            if done.returncode != 0 or not match:
                found[name] = (digest, f"unreadable ({done.stderr.strip()[-300:]})")
            else:
                found[name] = (digest, f"{match.group(1)} ({match.group(2)})")
        return found

    def check(self, completed: Dict[str, sample_images.BuiltImage]) -> List[str]:
        violations = []
        images = self.images()
        for name, (digest, status) in images.items():
            if status != "staging" and not status.startswith("complete"):
                violations.append(f"containerd image {name} -> {digest} is {status}")
        for digest in self.bed.ctr("content", "ls", "-q", namespace=self.namespace).split():
            actual = self.bed.content_digest(self.namespace, digest)
            if actual is None:
                continue  # collected meanwhile (the index.json an import leaves is garbage at once)
            if actual != digest:
                violations.append(f"containerd content {digest} hashes to {actual}")
        for image in completed.values():
            for name in self.names(image):
                if images.get(name, ("", ""))[0] != image.digest:
                    violations.append(f"after a completed pull containerd names {name} -> {images.get(name, ('nothing',))[0]}")
        return violations

    def leftovers(self) -> List[str]:
        found = [f"image {name}" for name in self.images() if name.startswith(STAGING_PREFIX)]
        if os.path.isdir(self.staging):
            found.extend(os.path.join(self.staging, name) for name in os.listdir(self.staging))
        active = self.bed.ctr("content", "active", namespace=self.namespace).splitlines()[1:]
        found.extend(f"active ingest {line.split()[0]}" for line in active if line.strip())
        return found

    def missing(self, images: Sequence[sample_images.BuiltImage]) -> int:
        present = set(self.bed.ctr("content", "ls", "-q", namespace=self.namespace).split())
        staged = []
        if os.path.isdir(self.staging):
            staged = [os.path.join(self.staging, name) for name in os.listdir(self.staging) if not name.endswith(".lock")]
        blobs = {blob.digest: blob.size for image in images for blob in image_blobs(image) if blob.digest not in present}
        missing = 0
        for digest, size in blobs.items():
            missing += min([size] + [layout_missing(root, {digest: size}) for root in staged])
        return missing

    def cleanup(self) -> None:
        names = self.bed.ctr("images", "ls", "-q", namespace=self.namespace).split()
        if names:
            self.bed.ctr("images", "rm", "--sync", *names, namespace=self.namespace, check=False)
        self.bed.ctr("namespaces", "rm", self.namespace, check=False)
        shutil.rmtree(self.staging, ignore_errors=True)


class EcrDestination(Destination):
    target = "push"

    def __init__(self, bed: "Bed", name: str) -> None:
        super().__init__(bed, name)
        self.repository = "fm/" + re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")

    def spec(self, image: sample_images.BuiltImage, **overrides: Any) -> Dict[str, Any]:
        params = {"ref": f"{self.bed.repository_uri(self.repository)}:{image.tag}", "src": self.bed.source,
                  "src_tag": image.tag, "create_repository": True, "max_concurrent_uploads": 3}
        client = {key: overrides.pop(key) for key in ("read_timeout", "corrupt") if key in overrides}
        params.update(overrides)
        return dict(kind="push", params=params, endpoint=self.bed.endpoint(proxied=True), **client)

    def check(self, completed: Dict[str, sample_images.BuiltImage]) -> List[str]:
        return check_ecr(self.bed, self.repository, completed)

    def leftovers(self) -> List[str]:
        return []  # ECR keeps no client state; an abandoned upload is ECR's to expire

    def missing(self, images: Sequence[sample_images.BuiltImage]) -> int:
        blobs = {blob.digest: blob.size for image in images for blob in image_blobs(image)}
        client = self.bed.client()
        try:
            answer = client.batch_check_layer_availability(repositoryName=self.repository, layerDigests=list(blobs))
        except client.exceptions.RepositoryNotFoundException:
            return sum(blobs.values())
        available = {layer["layerDigest"] for layer in answer.get("layers") or [] if layer.get("layerAvailability") == "AVAILABLE"}
        return sum(size for digest, size in blobs.items() if digest not in available)


def check_ecr(bed: "Bed", repository: str, completed: Dict[str, sample_images.BuiltImage]) -> List[str]:
    """What ECR holds in ``repository``, read through plain boto3 calls and the endpoint's store."""
    client = bed.client()
    violations: List[str] = []
    try:
        details = []
        for page in client.get_paginator("describe_images").paginate(repositoryName=repository):
            details.extend(page.get("imageDetails") or [])
    except client.exceptions.RepositoryNotFoundException:
        return [f"the repository {repository} does not exist, but the push of {tag} completed" for tag in completed]
    tags = {tag: detail["imageDigest"] for detail in details for tag in detail.get("imageTags") or []}
    referenced: Dict[str, int] = {}  # blobs the repository's images reference
    for detail in details:
        digest = detail["imageDigest"]
        answer = client.batch_get_image(repositoryName=repository, imageIds=[{"imageDigest": digest}],
                                        acceptedMediaTypes=[sample_images.OCI_MANIFEST, sample_images.DOCKER_MANIFEST,
                                                            sample_images.OCI_INDEX, sample_images.DOCKER_MANIFEST_LIST])
        raw = answer["images"][0]["imageManifest"].encode("utf-8")
        if sample_images.sha256_digest(raw) != digest:
            violations.append(f"ECR's manifest {digest} does not hash to its digest")
            continue
        document = json.loads(raw.decode("utf-8"))
        for blob in [document.get("config") or {}] + list(document.get("layers") or []):
            if blob.get("digest"):
                referenced[blob["digest"]] = blob.get("size", -1)
    for tag, image in completed.items():
        if tags.get(tag) != image.digest:
            violations.append(f"after a completed push ECR maps {tag} to {tags.get(tag)}, not {image.digest}")
            continue
        answer = client.batch_get_image(repositoryName=repository, imageIds=[{"imageTag": tag}],
                                        acceptedMediaTypes=[image.media_type])
        if answer["images"][0]["imageManifest"].encode("utf-8") != image.manifest_bytes:
            violations.append(f"ECR's manifest under {tag} is not the source manifest byte for byte")
    candidates = dict(referenced)
    for image in bed.images.values():
        candidates.update((blob.digest, blob.size) for blob in image_blobs(image))
    answer = client.batch_check_layer_availability(repositoryName=repository, layerDigests=sorted(candidates))
    available = {layer["layerDigest"]: layer.get("layerSize") for layer in answer.get("layers") or []
                 if layer.get("layerAvailability") == "AVAILABLE"}
    for digest, size in sorted(candidates.items()):
        if digest not in available:
            if digest in referenced:
                violations.append(f"an image of {repository} references the blob {digest}, which ECR lacks")
            continue
        if available[digest] != size:
            violations.append(f"ECR reports the layer {digest} with {available[digest]} bytes, not {size}")
        actual = bed.ecr_blob_digest(repository, digest)
        if actual != digest:
            violations.append(f"ECR reports the layer {digest} available, but its bytes hash to {actual}")
    return violations


# -- the test bed -----------------------------------------------------------------------------------


class Bed:
    """The endpoint (with the source images), the proxy, the private containerd, the work directory."""

    def __init__(self, workdir: str, targets: Sequence[str], keep: bool = False) -> None:
        self.workdir = workdir
        self.keep = keep
        self.stack = contextlib.ExitStack()
        self.daemon: Optional[private_containerd.PrivateContainerd] = None
        self.images: Dict[str, sample_images.BuiltImage] = {}
        self.source = os.path.join(workdir, "source")
        self.baselines: Dict[Tuple[str, str], Dict[str, Any]] = {}
        self.counter = 0
        self.targets = list(targets)
        self.ecr: Any = None
        self.proxy: Optional[FaultProxy] = None

    def __enter__(self) -> "Bed":
        try:
            self.ecr = self.stack.enter_context(run_emulator(os.path.join(self.workdir, "emulator"), mode="subprocess",
                                                             bandwidth_per_connection=BANDWIDTH))
            self.proxy = FaultProxy(("127.0.0.1", self.ecr.port))
            self.stack.callback(self.proxy.close)
            if "containerd" in self.targets:
                self.daemon = self.stack.enter_context(private_containerd.run_containerd(os.path.join(self.workdir, "ctd"), scheduled_gc=True))
            client = self.ecr.client()
            for tag, count, size, seed in IMAGES:
                image = sample_images.build_random_image(self.source, tag, count=count, size=size, seed=seed)
                sample_images.push_image(client, image, SOURCE_REPOSITORY, create_repository=True)
                self.images[tag] = image
        except BaseException:
            self.stack.close()
            raise
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.stack.close()

    # -- endpoints and clients

    def endpoint(self, proxied: bool = False) -> Dict[str, Any]:
        assert self.proxy is not None
        return {"url": self.proxy.url if proxied else self.ecr.url, "region": self.ecr.region,
                "access_key": self.ecr.access_key, "secret_key": self.ecr.secret_key}

    def client(self) -> Any:
        return self.ecr.client()

    def repository_uri(self, repository: str) -> str:
        return f"{self.ecr.account_id}.dkr.ecr.{self.ecr.region}.amazonaws.com/{repository}"

    def pull_ref(self, tag: str) -> str:
        return f"{self.repository_uri(SOURCE_REPOSITORY)}:{tag}"

    def pull_spec(self, params: Dict[str, Any]) -> Dict[str, Any]:
        return {"kind": "pull", "params": params, "endpoint": self.endpoint()}

    def ecr_blob_digest(self, repository: str, digest: str) -> str:
        """The hash of the bytes ECR serves for ``digest`` (GetDownloadUrlForLayer), or of its stored file
        when no image references the layer yet (LayerInaccessibleException)."""
        client = self.client()
        try:
            url = client.get_download_url_for_layer(repositoryName=repository, layerDigest=digest)["downloadUrl"]
        except client.exceptions.LayerInaccessibleException:
            return sha256_file(os.path.join(self.ecr.data_dir, "blobs", "sha256", digest.split(":", 1)[1]))
        status, dummy, body = self.ecr.fetch(url)
        if status != 200:
            return f"HTTP {status}"
        return "sha256:" + hashlib.sha256(body).hexdigest()

    # -- containerd

    def ctr(self, *args: str, namespace: str = "default", check: bool = True) -> str:
        assert self.daemon is not None
        return self.daemon.ctr(*args, namespace=namespace, check=check)

    def content_digest(self, namespace: str, digest: str) -> Optional[str]:
        """The hash of what ``ctr content get`` streams for ``digest``; None when containerd's garbage
        collector removed the blob after it was listed."""
        assert self.daemon is not None
        command = ["ctr", "--address", self.daemon.address, "--namespace", namespace, "content", "get", digest]
        hasher = hashlib.sha256()
        with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE) as process:
            assert process.stdout is not None and process.stderr is not None
            for piece in iter(lambda: process.stdout.read(MIB), b""):
                hasher.update(piece)
            error = process.stderr.read().decode("utf-8", "replace").strip()
        if process.returncode != 0:
            if digest not in self.ctr("content", "ls", "-q", namespace=namespace).split():
                return None
            return f"nothing: ctr content get failed ({error[-200:]})"
        return "sha256:" + hasher.hexdigest()

    # -- runs

    def destination(self, target: str, name: str, base: Optional[str] = None) -> Destination:
        self.counter += 1
        unique = re.sub(r"[^A-Za-z0-9.]+", "-", f"{name}-{self.counter}")
        run_dir = os.path.join(self.workdir, "runs", unique)
        os.makedirs(run_dir, exist_ok=True)
        if target == "oci":
            return LayoutDestination(self, unique, os.path.join(base or run_dir, "layout"))
        if target == "oci-archive":
            return ArchiveDestination(self, unique, os.path.join(base or run_dir, "archive"))
        if target == "containerd":
            return ContainerdDestination(self, unique, os.path.join(base or run_dir, "staging"))
        return EcrDestination(self, unique)

    def release(self, dest: Destination) -> None:
        """Free what a run used, unless the runs are kept for a look (the tmpfs of diskfull goes all the same)."""
        if not self.keep:
            dest.cleanup()

    def baseline(self, target: str, image: sample_images.BuiltImage) -> Dict[str, Any]:
        """A clean run of ``image`` into a fresh ``target``: its time, API calls and blob bytes."""
        key = (target, image.tag or "")
        if key not in self.baselines:
            dest = self.destination(target, f"baseline-{target}-{image.tag}")
            self.ecr.reset_stats()
            report = run_operation(dest.spec(image))
            stats = self.ecr.stats()
            if report["status"] != "ok":
                raise RuntimeError(f"the clean {target} run of {image.tag} failed: {report.get('message')}")
            self.baselines[key] = {"elapsed": report["elapsed"], "api_calls": stats["api_calls_total"],
                                   "blob_bytes": stats["blob_bytes"]}
            self.release(dest)
        return self.baselines[key]


# -- runs -------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Run:
    fault: str
    target: str
    seed: int
    outcome: str = ""
    detail: str = ""
    fired: int = 0
    retries: Optional[int] = None
    resent: Optional[int] = None  # bytes the re-run after a kill transferred
    missing: Optional[int] = None  # bytes the destination lacked before that re-run
    problems: List[str] = dataclasses.field(default_factory=list)
    violations: List[str] = dataclasses.field(default_factory=list)  # integrity violations found in the destination
    notes: List[str] = dataclasses.field(default_factory=list)  # how the fault was injected, for the log
    elapsed: float = 0.0

    def label(self) -> str:
        return f"{self.fault}/{self.target}/seed {self.seed}"


@dataclasses.dataclass
class Context:
    bed: Bed
    run: Run
    rng: random.Random

    @property
    def target(self) -> str:
        return self.run.target

    def pick_image(self) -> sample_images.BuiltImage:
        return self.bed.images[self.rng.choice(sorted(self.bed.images))]


def judge(run: Run, report: Dict[str, Any], violations: List[str], expect_error: Optional[str] = None) -> None:
    """Set the run's outcome from the operation's report and the destination's integrity violations."""
    if violations:
        run.violations = list(violations)
        run.outcome, run.detail = DATA_LOST, "; ".join(violations[:4])
        return
    status = report["status"]
    if status == "ok":
        result = report["result"]
        run.outcome = COMPLETED
        run.retries = max(run.retries or 0, int(result.get("retries", 0)))
        leaked = secret_in(json.dumps(result))
        if leaked:
            run.outcome, run.detail = FAILED_UNCLEARLY, f"a secret in the module result ({leaked})"
        return
    if status in ("hung", "killed"):
        run.outcome, run.detail = FAILED_UNCLEARLY, report.get("message", status)
        return
    if status == "crash" or not report.get("ecrkit"):
        run.outcome = DATA_LOST
        where = f" (raised at {report['where']})" if report.get("where") else ""
        run.detail = f"not an EcrkitError: {report.get('type', 'crash')}: {report.get('message')}{where}"
        if report.get("traceback"):
            run.notes.append(report["traceback"])
        return
    why = unclear_message(report["message"])
    if why:
        run.outcome, run.detail = FAILED_UNCLEARLY, f"{why}: {report['type']}: {report['message'][:400]}"
        return
    run.outcome, run.detail = FAILED_CLEANLY, f"{report['type']}: {report['message']}"
    if expect_error and expect_error not in report.get("mro", []):
        run.problems.append(f"failed with {report['type']}, not {expect_error}: {report['message']}")


def worst(runs: Sequence[Run]) -> Tuple[str, str]:
    order = {COMPLETED: 0, FAILED_CLEANLY: 1, FAILED_UNCLEARLY: 2, DATA_LOST: 3}
    chosen = max(runs, key=lambda item: order[item.outcome])
    return chosen.outcome, chosen.detail


def finish(ctx: Context, dest: Destination, report: Dict[str, Any], completed: Dict[str, sample_images.BuiltImage],
           expect_error: Optional[str] = None) -> None:
    """Check the destination, judge the run, and after a completed run look for leftovers."""
    violations = dest.check(completed if report["status"] == "ok" else {})
    judge(ctx.run, report, violations, expect_error)
    if ctx.run.outcome == COMPLETED:
        ctx.run.problems.extend(f"left behind after a completed run: {item}" for item in dest.leftovers())


def retryable_answers(stats: Dict[str, Any]) -> int:
    """How many API calls the endpoint answered with ThrottlingException or ServerException (each is one retry)."""
    return sum(codes.get("ThrottlingException", 0) + codes.get("ServerException", 0) for codes in stats["api_errors"].values())


def emulator_fault(ctx: Context, faults: List[Any], overrides: Optional[Dict[str, Any]] = None, expect_error: Optional[str] = None,
                   image: Optional[sample_images.BuiltImage] = None, count_retries: bool = False) -> None:
    """One operation with endpoint faults active."""
    bed = ctx.bed
    image = image or ctx.pick_image()
    dest = bed.destination(ctx.target, ctx.run.label())
    try:
        bed.ecr.reset_stats()
        bed.ecr.set_faults(faults)
        try:
            report = run_operation(dest.spec(image, **(overrides or {})))
        finally:
            fired = sum(fault["fired"] for fault in bed.ecr.faults())
            bed.ecr.clear_faults()
        stats = bed.ecr.stats()
        ctx.run.fired = fired
        if (overrides or {}).get("corrupt"):  # refused by ECR, then uploaded again and accepted
            ctx.run.fired = stats["api_errors"].get("CompleteLayerUpload", {}).get("InvalidLayerException", 0)
        ctx.run.notes.append(f"faults {json.dumps(faults)} {json.dumps(overrides or {})}")
        retryable = retryable_answers(stats)
        finish(ctx, dest, report, {image.tag or "": image}, expect_error)
        if count_retries and report["status"] == "ok" and report["result"].get("retries") != retryable:
            ctx.run.problems.append(f"the result reports {report['result'].get('retries')} retries, the endpoint answered "
                                    f"{retryable} calls with a retryable error (errors: {json.dumps(stats['api_errors'])})")
    finally:
        bed.release(dest)


def proxy_fault(ctx: Context, rule_for: Callable[[Dict[str, Any]], ProxyRule], overrides: Optional[Dict[str, Any]] = None) -> None:
    """A push whose API connection is broken once by the proxy."""
    bed = ctx.bed
    assert bed.proxy is not None
    image = ctx.pick_image()
    base = bed.baseline("push", image)
    rule = rule_for(base)
    ctx.run.notes.append(f"proxy {rule}")
    dest = bed.destination("push", ctx.run.label())
    try:
        bed.proxy.set_rule(rule)
        try:
            report = run_operation(dest.spec(image, **(overrides or {})))
        finally:
            ctx.run.fired = bed.proxy.fired
            bed.proxy.set_rule(None)
        finish(ctx, dest, report, {image.tag or "": image})
    finally:
        bed.release(dest)


def _layer(ctx: Context, image: sample_images.BuiltImage) -> sample_images.Descriptor:
    return ctx.rng.choice(list(image.layers))


# -- the faults -------------------------------------------------------------------------------------


def fault_throttle(ctx: Context) -> None:
    """Bursts of ThrottlingException: a run of them on one operation, then a seeded rate."""
    _api_fault(ctx, "throttle", ctx.rng.uniform(0.1, 0.3))


def fault_server_error(ctx: Context) -> None:
    """ServerException (500) on a seeded share of the API calls."""
    _api_fault(ctx, "server-error", ctx.rng.uniform(0.1, 0.3))


def fault_lost_response(ctx: Context) -> None:
    """The call is carried out, its answer lost (500): the retry meets the call's effect."""
    _api_fault(ctx, "lost-response", ctx.rng.uniform(0.1, 0.25))


PULL_OPERATIONS = ("BatchGetImage", "GetDownloadUrlForLayer")
PUSH_OPERATIONS = ("BatchGetImage", "CreateRepository", "BatchCheckLayerAvailability", "InitiateLayerUpload", "UploadLayerPart",
                   "CompleteLayerUpload", "PutImage")


def _api_fault(ctx: Context, kind: str, rate: float) -> None:
    operation = ctx.rng.choice(PUSH_OPERATIONS if ctx.target == "push" else PULL_OPERATIONS)
    faults = [{"kind": kind, "every": 1, "count": ctx.rng.randint(1, 3), "ops": [operation]},  # a burst on one operation
              {"kind": kind, "rate": round(rate, 3), "seed": ctx.rng.randrange(1 << 30)}]
    emulator_fault(ctx, faults, count_retries=True)


def fault_drop(ctx: Context) -> None:
    """A blob connection (pull) or an API connection (push) is cut at a random offset."""
    if ctx.target == "push":
        proxy_fault(ctx, lambda base: ProxyRule("drop", ctx.rng.randint(1, base["api_calls"]), offset=ctx.rng.randrange(4 * MIB)))
        return
    image = ctx.pick_image()
    fault: Dict[str, Any] = {"kind": "drop-blob", "after": ctx.rng.randrange(1, CHUNK_SIZE), "count": ctx.rng.randint(1, 3)}
    if ctx.rng.random() < 0.7:
        fault["digest"] = _layer(ctx, image).digest
    emulator_fault(ctx, [fault], image=image)


def fault_truncate(ctx: Context) -> None:
    """Bodies end a few bytes short (pull: several blob responses; push: an API answer cut in half)."""
    if ctx.target == "push":
        proxy_fault(ctx, lambda base: ProxyRule("truncate", ctx.rng.randint(1, base["api_calls"])))
        return
    image = ctx.pick_image()
    fault = {"kind": "drop-blob", "after": CHUNK_SIZE - ctx.rng.randint(1, 64 * KIB), "count": ctx.rng.randint(1, 4),
             "digest": _layer(ctx, image).digest}
    emulator_fault(ctx, [fault], image=image)


def fault_corrupt(ctx: Context) -> None:
    """One flipped byte (pull: in a blob response; push: in an uploaded part)."""
    image = ctx.pick_image()
    if ctx.target == "push":
        parts = len(image_blobs(image))
        emulator_fault(ctx, [], {"corrupt": {"nth": ctx.rng.randint(1, parts), "offset": ctx.rng.randrange(4 * MIB)}}, image=image)
        return
    fault: Dict[str, Any] = {"kind": "corrupt-blob", "seed": ctx.rng.randrange(1 << 30), "count": 1}
    if ctx.rng.random() < 0.8:
        fault["digest"] = _layer(ctx, image).digest
    emulator_fault(ctx, [fault], image=image)


def fault_corrupt_always(ctx: Context) -> None:
    """ECR serves a layer with one byte always wrong: the pull must fail, and keep nothing of it."""
    image = ctx.pick_image()
    layer = _layer(ctx, image)
    fault = {"kind": "corrupt-blob", "offset": ctx.rng.randrange(layer.size), "count": 1000, "digest": layer.digest}
    emulator_fault(ctx, [fault], image=image, expect_error="TransferError")


def fault_stall(ctx: Context) -> None:
    """A connection stalls (pull: a blob body, download_timeout=1; push: an API answer, read timeout 2 s)."""
    if ctx.target == "push":
        proxy_fault(ctx, lambda base: ProxyRule("stall", ctx.rng.randint(1, base["api_calls"]), seconds=4.0), {"read_timeout": 2.0})
        return
    image = ctx.pick_image()
    fault = {"kind": "stall-blob", "after": ctx.rng.randrange(CHUNK_SIZE), "seconds": 3, "count": 1, "digest": _layer(ctx, image).digest}
    emulator_fault(ctx, [fault], {"download_timeout": 1, "max_attempts": 4}, image=image)


def fault_expire(ctx: Context) -> None:
    """Blob URLs expire mid-layer (after a seeded fraction of a second)."""
    # two connections: a blob's third range starts once one of the first two (1 MiB, paced) is done, on the same URL
    fault = {"kind": "expire-urls", "after": round(ctx.rng.uniform(0.005, 0.03), 3), "count": ctx.rng.randint(1, 3)}
    emulator_fault(ctx, [fault], {"max_concurrent_downloads": 2})


def fault_kill(ctx: Context) -> None:
    """SIGKILL of the operation's process at a seeded moment, then a re-run without faults."""
    bed = ctx.bed
    image = ctx.pick_image()
    base = bed.baseline(ctx.target, image)
    modes = ["delay", "api-calls"] + (["blob-bytes"] if ctx.target != "push" else [])
    mode = ctx.rng.choice(modes)
    fraction = ctx.rng.uniform(0.02, 0.98)
    dest = bed.destination(ctx.target, ctx.run.label())
    try:
        bed.ecr.reset_stats()
        child = Child(dest.spec(image))
        deadline = child.started + max(0.001, fraction * base["elapsed"])
        threshold = max(1, int(fraction * base["api_calls" if mode == "api-calls" else "blob_bytes"]))
        while child.alive() and time.monotonic() - child.started < OPERATION_TIMEOUT:
            if mode == "delay" and time.monotonic() >= deadline:
                break
            if mode != "delay":
                stats = bed.ecr.stats()
                if stats["api_calls_total" if mode == "api-calls" else "blob_bytes"] >= threshold:
                    break
            time.sleep(0.003)
        if child.alive():
            child.kill()
            ctx.run.notes.append(f"killed by {mode} at {fraction:.2f} of the clean run, {time.monotonic() - child.started:.2f} s in")
        first = child.wait()
        if first["status"] != "killed":
            ctx.run.notes.append(f"the operation ended ({first['status']}) before the {mode} trigger at {fraction:.2f}")
        violations = dest.check({})
        if violations:
            judge(ctx.run, first, [f"after the kill: {item}" for item in violations])
            return
        missing = dest.missing([image])
        report = run_operation(dest.spec(image))
        finish(ctx, dest, report, {image.tag or "": image})
        if report["status"] == "ok":
            ctx.run.resent = int(report["result"].get("bytes_transferred", 0))
            ctx.run.missing = missing
            if ctx.run.resent > missing + dest.slack:
                ctx.run.problems.append(f"the re-run transferred {ctx.run.resent} bytes where {missing} were missing "
                                        f"(kill by {mode} at {fraction:.2f})")
        ctx.run.fired = 1 if first["status"] == "killed" else 0
    finally:
        bed.release(dest)


@contextlib.contextmanager
def tmpfs(path: str, size: int) -> Iterator[str]:
    os.makedirs(path, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", path], check=True, capture_output=True)
    try:
        yield path
    finally:
        done = subprocess.run(["umount", path], check=False, capture_output=True)
        if done.returncode != 0:
            subprocess.run(["umount", "-l", path], check=False, capture_output=True)


def _allocated(directory: str) -> int:
    """Bytes allocated to the files under ``directory`` (partial downloads are sparse until written)."""
    total = 0
    for root, dummy, files in os.walk(directory):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(root, name)).st_blocks * 512
    return total


def _fill(directory: str, keep: int) -> None:
    """Allocate a filler file (fallocate, 1 MiB a call, so that it lands while the pull runs) until at most
    ``keep`` bytes are left free. (A single call would be undone whole when the pull took some space meanwhile.)"""
    fd = os.open(os.path.join(directory, "filler"), os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        offset = 0
        step = MIB
        while step >= 4096:
            stats = os.statvfs(directory)
            if stats.f_bavail * stats.f_frsize <= keep:
                return
            try:
                os.posix_fallocate(fd, offset, step)
                offset += step
            except OSError:
                step //= 2
    finally:
        os.close(fd)


def fault_diskfull(ctx: Context) -> None:
    """A small tmpfs as the destination (containerd: as the staging directory): too small from the
    start, big enough for the download only, or filled by another writer once the download is under
    way; then space is freed and the pull runs again."""
    bed = ctx.bed
    image = ctx.pick_image()
    total = sum(blob.size for blob in image_blobs(image))
    mode = ("small", "filler", "tight")[(ctx.run.seed - 1) % 3]  # by seed, so that a few seeds cover all three
    if mode == "small":  # too small from the start
        size = ctx.rng.randrange(64 * KIB, total - 64 * KIB) // 4096 * 4096
    elif mode == "tight":  # room for the download, not for a second copy (an archive written from the staging layout)
        size = total + 256 * KIB + ctx.rng.randrange(total - 256 * KIB) // 4096 * 4096
    else:  # room for all, until another writer fills the disk during the download
        size = total + 4 * MIB
    mount = os.path.join(bed.workdir, "runs", f"tmpfs-{ctx.run.target}-{ctx.run.seed}")
    with tmpfs(mount, size):
        dest = bed.destination(ctx.target, ctx.run.label(), base=mount)
        try:
            bed.ecr.reset_stats()
            child = Child(dest.spec(image))
            ctx.run.notes.append(f"{mode}: tmpfs of {size} bytes for {total} bytes of blobs")
            if mode == "filler":
                threshold = ctx.rng.randrange(0, total * 3 // 5)
                while child.alive() and _allocated(mount) < threshold:
                    time.sleep(0.001)
                _fill(mount, ctx.rng.randrange(0, 256 * KIB))
                ctx.run.notes.append(f"filled at {_allocated(mount)} bytes allocated (pull still running: {child.alive()})")
            first = child.wait()
            violations = dest.check({image.tag or "": image} if first["status"] == "ok" else {})
            judge(ctx.run, first, violations, expect_error="DiskFullError")
            ctx.run.fired = 0 if first["status"] == "ok" else 1
            if ctx.run.outcome in (DATA_LOST, COMPLETED):
                if ctx.run.outcome == COMPLETED:
                    ctx.run.problems.extend(f"left behind after a completed run: {item}" for item in dest.leftovers())
                return
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(mount, "filler"))
            subprocess.run(["mount", "-o", f"remount,size={total * 2 + 16 * MIB}", mount], check=True, capture_output=True)
            again = Run(ctx.run.fault, ctx.run.target, ctx.run.seed)
            report = run_operation(dest.spec(image))
            finish(Context(bed, again, ctx.rng), dest, report, {image.tag or "": image})
            ctx.run.problems.extend(again.problems)
            ctx.run.violations.extend(again.violations)
            if again.outcome != COMPLETED:
                ctx.run.outcome = FAILED_UNCLEARLY if again.outcome == FAILED_UNCLEARLY else DATA_LOST
                ctx.run.detail = f"the run after space was freed did not complete: {again.detail}"
        finally:
            bed.release(dest)


def fault_concurrent(ctx: Context) -> None:
    """Two operations at the same moment (a barrier) into one destination: the same image, or two
    different images (sharing layers, or not)."""
    bed = ctx.bed
    first = ctx.pick_image()
    variant = ("same", "different")[ctx.run.seed % 2]
    second = first if variant == "same" else bed.images[ctx.rng.choice([tag for tag in sorted(bed.images) if tag != first.tag])]
    dest = bed.destination(ctx.target, ctx.run.label())
    try:
        barrier = multiprocessing.get_context("fork").Barrier(2)
        children = [Child(dest.spec(image), barrier) for image in (first, second)]
        reports = [child.wait() for child in children]
        completed = {image.tag or "": image for image, report in zip((first, second), reports) if report["status"] == "ok"}
        violations = dest.check(completed)
        runs = []
        for report in reports:
            part = Run(ctx.run.fault, ctx.run.target, ctx.run.seed)
            judge(part, report, violations)
            runs.append(part)
        ctx.run.outcome, ctx.run.detail = worst(runs)
        ctx.run.violations = list(violations)
        ctx.run.retries = max((part.retries or 0) for part in runs)
        ctx.run.fired = 1
        if ctx.run.outcome != COMPLETED:
            ctx.run.detail = f"{variant} images: {ctx.run.detail}"
        else:
            ctx.run.problems.extend(f"left behind after a completed run: {item}" for item in dest.leftovers())
    finally:
        bed.release(dest)


@dataclasses.dataclass(frozen=True)
class Fault:
    name: str
    run: Callable[[Context], None]
    targets: Tuple[str, ...]
    expect: Tuple[str, ...]  # the outcomes a run may have
    needs_root: bool = False
    expect_for: Tuple[Tuple[str, Tuple[str, ...]], ...] = ()  # per-target exceptions to ``expect``

    def expected(self, target: str) -> Tuple[str, ...]:
        return dict(self.expect_for).get(target, self.expect)


EITHER = (COMPLETED, FAILED_CLEANLY)
FAULTS = {fault.name: fault for fault in (
    Fault("throttle", fault_throttle, TARGETS, (COMPLETED,)),
    Fault("server-error", fault_server_error, TARGETS, (COMPLETED,)),
    Fault("lost-response", fault_lost_response, TARGETS, (COMPLETED,)),
    Fault("drop", fault_drop, TARGETS, (COMPLETED,)),
    Fault("truncate", fault_truncate, TARGETS, EITHER, expect_for=(("push", (COMPLETED,)),)),
    # a part that reached ECR with a bad byte: ECR refuses the layer at CompleteLayerUpload, and the push
    # does not upload it again (a pull fetches a blob that fails verification once more)
    Fault("corrupt", fault_corrupt, TARGETS, (COMPLETED,)),
    Fault("corrupt-always", fault_corrupt_always, PULL_TARGETS, (FAILED_CLEANLY,)),
    Fault("stall", fault_stall, TARGETS, EITHER),
    Fault("expire", fault_expire, PULL_TARGETS, (COMPLETED,)),
    Fault("kill", fault_kill, TARGETS, (COMPLETED,)),
    Fault("diskfull", fault_diskfull, PULL_TARGETS, EITHER, needs_root=True),
    Fault("concurrent", fault_concurrent, TARGETS, EITHER),
)}


def target_unavailable(target: str) -> Optional[str]:
    """Why ``target`` cannot run here, or None."""
    if target == "containerd":
        return private_containerd.available()
    return None


def fault_unavailable(fault: Fault) -> Optional[str]:
    if fault.needs_root and os.geteuid() != 0:
        return "mounting a tmpfs needs root"
    if fault.needs_root and not shutil.which("mount"):
        return "mount is not installed"
    return None


# -- the matrix -------------------------------------------------------------------------------------


@dataclasses.dataclass
class Matrix:
    runs: List[Run]
    elapsed: float

    def rows(self) -> List[Dict[str, Any]]:
        cells: Dict[Tuple[str, str], List[Run]] = {}
        for run in self.runs:
            cells.setdefault((run.fault, run.target), []).append(run)
        rows = []
        for (fault, target), runs in cells.items():
            counted = [run for run in runs if run.outcome != SKIPPED]
            resent = [run for run in counted if run.resent is not None]
            retries = [run.retries for run in counted if run.retries is not None]
            expect = FAULTS[fault].expected(target) if fault in FAULTS else OUTCOMES
            rows.append({
                "fault": fault, "target": target, "runs": len(counted),
                "skipped": len(runs) - len(counted),
                **{outcome: sum(1 for run in counted if run.outcome == outcome) for outcome in OUTCOMES},
                "fired": sum(1 for run in counted if run.fired),
                "max_retries": max(retries) if retries else None,
                "resent": sum(run.resent or 0 for run in resent) if resent else None,
                "missing": sum(run.missing or 0 for run in resent) if resent else None,
                "problems": sum(len(run.problems) for run in counted),
                "unexpected": sum(1 for run in counted if run.outcome not in expect),
            })
        return rows

    @property
    def data_lost(self) -> int:
        return sum(1 for run in self.runs if run.outcome == DATA_LOST)

    @property
    def unclear(self) -> int:
        return sum(1 for run in self.runs if run.outcome == FAILED_UNCLEARLY)

    def table(self) -> str:
        header = ["fault", "target", "runs", "completed", "failed cleanly", "failed unclearly", "data lost", "fired",
                  "max retries", "re-sent after kill (missing)", "problems"]
        lines = []
        for row in self.rows():
            if not row["runs"]:
                lines.append([row["fault"], row["target"], "0", f"skipped ({row['skipped']})", "", "", "", "", "", "", ""])
                continue
            resent = "-" if row["resent"] is None else f"{human(row['resent'])} ({human(row['missing'])})"
            lines.append([row["fault"], row["target"], str(row["runs"]), str(row[COMPLETED]), str(row[FAILED_CLEANLY]),
                          str(row[FAILED_UNCLEARLY]), str(row[DATA_LOST]), str(row["fired"]),
                          "-" if row["max_retries"] is None else str(row["max_retries"]), resent,
                          str(row["problems"]) + (f" ({row['unexpected']} unexpected)" if row["unexpected"] else "")])
        widths = [max(len(item) for item in column) for column in zip(header, *lines)]
        out = [" | ".join(item.ljust(width) for item, width in zip(header, widths)),
               "-+-".join("-" * width for width in widths)]
        out.extend(" | ".join(item.ljust(width) for item, width in zip(line, widths)) for line in lines)
        return "\n".join(out)

    def report(self) -> str:
        out = [self.table(), ""]
        notes = []
        for run in self.runs:
            expect = (FAULTS[run.fault].expected(run.target) if run.fault in FAULTS else OUTCOMES) + (SKIPPED,)
            if run.outcome not in (COMPLETED, SKIPPED) or run.outcome not in expect:
                mark = "" if run.outcome in expect else " [unexpected]"
                notes.append(f"  {run.label()}: {run.outcome}{mark}: {run.detail[:600]}")
            notes.extend(f"  {run.label()}: problem: {problem[:600]}" for problem in run.problems)
        if notes:
            out.append("Runs that did not simply complete, and problems:")
            out.extend(notes)
            out.append("")
        out.append(f"{len(self.runs)} runs in {self.elapsed:.0f} s; data lost: {self.data_lost}; failed unclearly: {self.unclear}")
        return "\n".join(out)


def run_matrix(faults: Sequence[str], targets: Sequence[str], seeds: Sequence[int], workdir: str,
               log: Callable[[str], None] = log_nothing, keep: bool = False) -> Matrix:
    """Run every (fault, target, seed) in ``workdir``; ``keep`` leaves each run's destination there."""
    started = time.monotonic()
    runs: List[Run] = []
    usable = []
    for target in targets:
        reason = target_unavailable(target)
        if reason:
            log(f"skipping target {target}: {reason}")
        else:
            usable.append(target)
    with Bed(workdir, usable, keep) as bed:
        for name in faults:
            fault = FAULTS[name]
            reason = fault_unavailable(fault)
            for target in targets:
                if target not in fault.targets:
                    continue
                for seed in seeds:
                    run = Run(name, target, seed)
                    runs.append(run)
                    if reason or target not in usable:
                        run.outcome, run.detail = SKIPPED, reason or target_unavailable(target) or ""
                        continue
                    began = time.monotonic()
                    try:
                        fault.run(Context(bed, run, random.Random(f"{name}/{target}/{seed}")))
                    except Exception:  # pylint: disable=broad-except
                        run.outcome = DATA_LOST
                        lines = traceback.format_exc().strip().splitlines()
                        run.detail = f"the fault matrix itself failed: {lines[-1]} (at {' / '.join(line.strip() for line in lines[-4:-1])})"
                    run.elapsed = time.monotonic() - began
                    log(f"{run.label()}: {run.outcome} in {run.elapsed:.1f} s{': ' + run.detail[:200] if run.detail else ''}"
                        + "".join(f"\n    {note[:300]}" for note in run.notes)
                        + "".join(f"\n    problem: {problem[:300]}" for problem in run.problems))
    return Matrix(runs, time.monotonic() - started)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--runs", type=int, default=3, help="seeds per (fault, target) (default 3; nightly 20)")
    parser.add_argument("--seed", type=int, default=1, help="first seed (default 1)")
    parser.add_argument("--faults", default=",".join(FAULTS), help=f"comma-separated, from: {', '.join(FAULTS)}")
    parser.add_argument("--targets", default=",".join(TARGETS), help=f"comma-separated, from: {', '.join(TARGETS)}")
    parser.add_argument("--workdir", help="where to work (default: a new directory under /var/tmp, removed at the end)")
    parser.add_argument("--keep", action="store_true",
                        help="keep the work directory and each run's layout or archive (containerd's state goes with its daemon)")
    parser.add_argument("--json", help="also write every run as JSON to this file")
    parser.add_argument("-q", "--quiet", action="store_true", help="print only the table")
    args = parser.parse_args(argv)
    faults = [name for name in args.faults.split(",") if name]
    targets = [name for name in args.targets.split(",") if name]
    unknown = [name for name in faults if name not in FAULTS] + [name for name in targets if name not in TARGETS]
    if unknown or args.runs < 1:
        parser.error(f"unknown fault or target: {', '.join(unknown)}" if unknown else "--runs must be at least 1")
    workdir = args.workdir or tempfile.mkdtemp(prefix="ecrkit-faults-", dir="/var/tmp" if os.path.isdir("/var/tmp") else None)
    os.makedirs(workdir, exist_ok=True)

    def log(line: str) -> None:
        if not args.quiet:
            print(line, flush=True)

    if args.keep:
        log(f"work directory: {workdir}")

    try:
        matrix = run_matrix(faults, targets, range(args.seed, args.seed + args.runs), workdir, log, keep=args.keep)
    finally:
        if not args.keep and not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)
    print()
    print(matrix.report())
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump({"runs": [dataclasses.asdict(run) for run in matrix.runs], "rows": matrix.rows()}, handle, indent=1)
    return 1 if matrix.data_lost or matrix.unclear else 0


if __name__ == "__main__":
    sys.exit(main())
