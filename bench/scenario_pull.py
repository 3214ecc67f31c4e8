# Copyright: Contributors to the ecrkit.images project
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Scenarios 1 and 2: pulls, ours side by side with curl, skopeo and containerd (see bench/README.md).

1. Unthrottled loopback, HTTP and HTTPS, multi4 (4 x 256 MiB) and single1g (1 x 1 GiB):
   ours through module_utils and through ansible-playbook, curl one blob after another then sha256 in
   Python, skopeo from a Distribution registry holding the same bytes; and into containerd, ours
   (format containerd) against ``ctr images pull`` from that registry (both unpack).
2. The endpoint caps each connection at 64 MiB/s: ours at 1, 2, 4, 8 and 16 connections on single1g
   against the ideal min(P x 64 MiB/s, CPU ceiling), the CPU ceiling being ours on the uncapped
   endpoint at its best P; curl (one connection) as the peer. skopeo and containerd are not in it:
   they read from the registry, which cannot cap a connection.

The helpers here (fresh scratch paths, digest checks, the registry copy, a containerd emptied between
runs, failures recorded instead of raised) are shared with scenario_push.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import ssl
import subprocess
import sys
import traceback
import urllib.error
import urllib.request
from typing import Any, Callable, Dict, List, Optional

import harness
from harness import MIB, REPOSITORY

# pylint: disable=wrong-import-position,wrong-import-order
from ansible_collections.ecrkit.images.plugins.module_utils import argspec, ecr, pull  # noqa: E402
from ecr_emu_faults import parse_bytes  # noqa: E402

CAP = "64M"  # per connection, scenario 2
CONNECTIONS = (1, 2, 4, 8, 16)  # scenario 2, ours on the capped endpoint
CEILING_CONNECTIONS = (2, 4, 8)  # scenario 2, ours on the uncapped endpoint: the best is the CPU ceiling
NAMESPACE = "bench"  # containerd namespace both tools pull into
# containerd's figures: a pull into containerd costs several times a pull into a layout, so only multi4
# (several layers, the usual shape) over HTTP (HTTPS is compared in the layout rows); add "single1g" or
# "https" here to time them too (about 2 more minutes each at --repeat 3)
CONTAINERD_PROTOCOLS = ("http",)
CONTAINERD_IMAGES = ("multi4",)
REF_NAME = "org.opencontainers.image.ref.name"
ACCEPT = ", ".join(("application/vnd.oci.image.manifest.v1+json", "application/vnd.oci.image.index.v1+json",
                    "application/vnd.docker.distribution.manifest.v2+json",
                    "application/vnd.docker.distribution.manifest.list.v2+json"))

OURS = "ours (module_utils)"
OURS_ANSIBLE = "ours (ansible-playbook)"
CURL = "curl, one blob after another, + sha256"
SKOPEO = "skopeo copy --preserve-digests docker:// -> oci: (registry)"
OURS_CONTAINERD = "ours (format containerd)"
CTR = "ctr images pull (registry)"

PLAYBOOK = """---
- name: Pull one image (bench)
  hosts: localhost
  connection: local
  gather_facts: false
  tasks:
    - name: Pull
      ecrkit.images.ecr_image_pull:
        ref: "{{ bench_ref }}"
        dest: "{{ bench_dest }}"
        endpoint_url: "{{ bench_endpoint_url }}"
        access_key: "{{ bench_access_key }}"
        secret_key: "{{ bench_secret_key }}"
        aws_ca_bundle: "{{ bench_ca_bundle | default(omit) }}"
      register: pulled

    - name: Pulled what was pushed
      ansible.builtin.assert:
        that:
          - pulled is changed
          - pulled.digest == bench_digest
        quiet: true
"""


class BenchError(RuntimeError):
    """A tool did not do what it was timed for (wrong digest, missing blob, failed command)."""


# -- running each tool's timed runs without letting one failure stop the whole bench ----------------------

def attempt(bench: harness.Bench, scenario: str, case: str, tool: str, measure: Callable[[], Any]) -> Any:
    """``measure()`` (which times and records); a failure is recorded as this row's error, not raised."""
    try:
        return measure()
    except Exception as exc:  # pylint: disable=broad-except
        message = f"{type(exc).__name__}: {exc}".strip()[:600]
        sys.stdout.write(f"[{scenario}] {case:40s} {tool:42s} FAILED: {message}\n")
        traceback.print_exc(file=sys.stderr)
        sys.stdout.flush()
        bench.results.append({"scenario": scenario, "case": case, "tool": tool, "error": message})
        return None


class Scratch:
    """A fresh path per timed run under ``work/scratch/NAME``; the previous one is removed first.

    ``next()`` (a setup) also flushes dirty pages, so the previous run's writes are not written back
    while the next one is timed. Everything is removed when the block ends.
    """

    def __init__(self, bench: harness.Bench, name: str) -> None:
        self.base = os.path.join(bench.work, "scratch", name)
        self.count = 0
        self.path = ""

    def next(self) -> str:
        self.clear()
        self.count += 1
        os.makedirs(self.base, exist_ok=True)
        self.path = os.path.join(self.base, str(self.count))
        os.sync()
        return self.path

    def clear(self) -> None:
        if self.path:
            if os.path.isdir(self.path):
                shutil.rmtree(self.path)
            elif os.path.lexists(self.path):
                os.unlink(self.path)

    def __enter__(self) -> "Scratch":
        return self

    def __exit__(self, *exc: Any) -> None:
        shutil.rmtree(self.base, ignore_errors=True)


# -- checking what a tool wrote -----------------------------------------------------------------------------

def file_sha256(path: str) -> str:
    with open(path, "rb") as handle:
        return "sha256:" + hashlib.file_digest(handle, "sha256").hexdigest()


def check_file(path: str, digest: str, size: int) -> None:
    if not os.path.isfile(path):
        raise BenchError(f"{path} is missing (blob {digest})")
    if os.path.getsize(path) != size:
        raise BenchError(f"{path} has {os.path.getsize(path)} bytes, not {size} (blob {digest})")
    found = file_sha256(path)
    if found != digest:
        raise BenchError(f"{path} hashes to {found}, not {digest}")


def verify_layout(path: str, image: harness.Image) -> None:
    """The OCI layout at ``path`` holds ``image`` under its tag, every blob byte for byte."""
    with open(os.path.join(path, "index.json"), encoding="utf-8") as handle:
        index = json.load(handle)
    entries = [entry for entry in index.get("manifests", []) if (entry.get("annotations") or {}).get(REF_NAME) == image.tag]
    if not entries:
        raise BenchError(f"{path}/index.json has no entry tagged {image.tag}")
    if entries[0]["digest"] != image.digest:
        raise BenchError(f"{path} holds {image.tag} as {entries[0]['digest']}, not {image.digest}")
    for blob in image.built.blob_descriptors():
        algorithm, hexpart = blob.digest.split(":", 1)
        check_file(os.path.join(path, "blobs", algorithm, hexpart), blob.digest, blob.size)


# -- the registry: the same bytes as the ECR endpoint ---------------------------------------------------------

_EXACT_REFS: Dict[Any, str] = {}


def registry_manifest_digest(registry: harness.Registry, repository: str, tag: str) -> Optional[str]:
    request = urllib.request.Request(f"{'https' if registry.tls else 'http'}://{registry.host}/v2/{repository}/manifests/{tag}",
                                     headers={"Accept": ACCEPT}, method="HEAD")
    context = ssl.create_default_context(cafile=registry.cert) if registry.tls else None
    try:
        with urllib.request.urlopen(request, timeout=30, context=context) as response:
            return response.headers.get("Docker-Content-Digest")
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            return None
        raise


def registry_ref(bench: harness.Bench, tls: bool, image: harness.Image) -> str:
    """A reference in the registry to exactly ``image`` (same manifest digest, so the same blobs).

    ``skopeo copy`` into a registry compresses uncompressed layers unless told --preserve-digests; when
    the harness's copy (``registry.ref``) is not byte-identical, a copy made with that flag under
    ``REPOSITORY-exact`` is used, so every peer moves the same bytes as ours.
    """
    registry = bench.registry(tls)
    key = (registry.host, image.name)
    if key not in _EXACT_REFS:
        ref = registry.ref(image)
        if registry_manifest_digest(registry, REPOSITORY, image.tag) != image.digest:
            repository = f"{REPOSITORY}-exact"
            ref = f"{registry.host}/{repository}:{image.tag}"
            subprocess.run(["skopeo", "copy", "--quiet", "--preserve-digests", *registry.skopeo_flags("dest"),
                            f"oci:{image.layout}:{image.tag}", f"docker://{ref}"], check=True)
            found = registry_manifest_digest(registry, repository, image.tag)
            if found != image.digest:
                raise BenchError(f"the registry holds {ref} as {found}, not {image.digest}")
        _EXACT_REFS[key] = ref
    return _EXACT_REFS[key]


# -- containerd, emptied between runs ------------------------------------------------------------------------

class ContainerdStore:
    """One namespace of the bench's private containerd, emptied before each timed run.

    containerd shares blobs between namespaces, so a fresh namespace would not make a fresh pull: the
    images and blobs are removed and a synchronous garbage collection (deleting a lease with --sync)
    removes them from disk, which is then checked.
    """

    def __init__(self, daemon: Any, namespace: str = NAMESPACE) -> None:
        self.daemon = daemon
        self.namespace = namespace
        if namespace not in daemon.ctr("namespaces", "ls", "-q").split():
            daemon.ctr("namespaces", "create", namespace)
        self.blobs = os.path.join(daemon.root, "io.containerd.content.v1.content", "blobs")
        self.snapshots = os.path.join(daemon.root, "io.containerd.snapshotter.v1.overlayfs", "snapshots")

    def ctr(self, *args: str) -> str:
        return self.daemon.ctr(*args, namespace=self.namespace)

    def lines(self, *args: str) -> List[str]:
        return self.ctr(*args).split()

    def empty(self, image: harness.Image) -> None:
        names = self.lines("images", "ls", "-q")
        if names:
            self.ctr("images", "rm", *names)
        digests = self.lines("content", "ls", "-q")
        if digests:
            self.ctr("content", "rm", *digests)
        for lease in self.lines("leases", "ls", "-q"):
            self.ctr("leases", "rm", lease)
        lease = self.ctr("leases", "create").split()[0]
        self.ctr("leases", "rm", "--sync", lease)
        left = [blob.digest for blob in image.built.blob_descriptors()
                if os.path.exists(os.path.join(self.blobs, *blob.digest.split(":", 1)))]
        snapshots = self.ctr("snapshots", "ls").strip().splitlines()[1:]
        if os.path.isdir(self.snapshots):
            snapshots += os.listdir(self.snapshots)
        if left or snapshots or self.lines("content", "ls", "-q"):
            raise BenchError(f"containerd still holds {left or ''} {len(snapshots)} snapshot(s) after emptying it")
        os.sync()

    def verify(self, image: harness.Image, unpacked: bool) -> None:
        """Some image name points at ``image``; containerd has every blob (it checked each digest when it
        committed it) and, with ``unpacked``, the image is unpacked."""
        records = [line.split() for line in self.ctr("images", "ls").strip().splitlines()[1:]]
        names = [fields[0] for fields in records if image.digest in fields]
        if not names:
            raise BenchError(f"no image in containerd points at {image.digest}: {records}")
        content = set(self.lines("content", "ls", "-q"))
        missing = [blob.digest for blob in image.built.blob_descriptors() if blob.digest not in content]
        if missing:
            raise BenchError(f"containerd lacks {missing}")
        if unpacked and names[0] not in self.lines("images", "check", "-q"):
            raise BenchError(f"{names[0]} is not unpacked in containerd")


# -- the tools ------------------------------------------------------------------------------------------------

def connector(handle: Any) -> Callable[[Any], ecr.EcrRepository]:
    return lambda ref: ecr.EcrRepository(handle.client(), ref, ecr.RetryPolicy())


def ours_pull(handle: Any, ref: str, image: harness.Image, dest: Callable[[], str], **params: Any) -> Callable[[], Dict[str, Any]]:
    """One pull through module_utils (what the module runs), into ``dest()``."""
    def run() -> Dict[str, Any]:
        options = pull.PullOptions.from_params(ref=ref, dest=dest(), tls_verify=handle.ca_bundle or True, **params)
        result = pull.pull(options, connector(handle))
        if result["digest"] != image.digest or not result["changed"] or result["bytes_transferred"] < image.size - 65536:
            raise BenchError(f"ours pulled {result['digest']} ({result['bytes_transferred']} bytes, changed="
                             f"{result['changed']}), not {image.digest} ({image.size} bytes)")
        return {"api_calls": result["api_calls"]}
    return run


def ansible_pull(bench: harness.Bench, handle: Any, ref: str, image: harness.Image, dest: Callable[[], str]) -> Callable[[], None]:
    """One ``ansible-playbook`` run of ecrkit.images.ecr_image_pull (the collection as laid out)."""
    base = os.path.join(bench.work, "ansible")
    os.makedirs(os.path.join(base, "tmp"), exist_ok=True)
    playbook = os.path.join(base, "pull.yml")
    with open(playbook, "w", encoding="utf-8") as out:
        out.write(PLAYBOOK)
    env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=harness.ROOT, ANSIBLE_LOCALHOST_WARNING="false",
               ANSIBLE_INVENTORY_UNPARSED_WARNING="false", ANSIBLE_LOCAL_TEMP=os.path.join(base, "tmp"),
               ANSIBLE_RETRY_FILES_ENABLED="false", ANSIBLE_NOCOLOR="1")
    executable = os.path.join(os.path.dirname(sys.executable), "ansible-playbook")
    log = os.path.join(base, "ansible.log")

    def run() -> None:
        variables = {"bench_ref": ref, "bench_dest": dest(), "bench_endpoint_url": handle.url, "bench_digest": image.digest,
                     "bench_access_key": handle.access_key, "bench_secret_key": handle.secret_key}
        if handle.ca_bundle:
            variables["bench_ca_bundle"] = handle.ca_bundle
        with open(log, "wb") as output:
            done = subprocess.run([executable, playbook, "-e", json.dumps(variables)], env=env, stdout=output,
                                  stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, check=False)
        if done.returncode != 0:
            with open(log, encoding="utf-8", errors="replace") as output:
                raise BenchError(f"ansible-playbook failed ({done.returncode}): {output.read()[-1500:]}")
    return run


def curl_pull(handle: Any, image: harness.Image, dest: Callable[[], str]) -> Callable[[], None]:
    """Resolve the tag (BatchGetImage), then each blob's URL (GetDownloadUrlForLayer) and one ``curl`` for
    them all, one after another on one connection; then sha256 of each file in Python."""
    client = handle.client()
    blobs = [blob for blob in image.built.blob_descriptors() if blob.digest != image.digest]
    tls = ["--cacert", handle.ca_bundle] if handle.ca_bundle else []

    def run() -> None:
        found = client.batch_get_image(repositoryName=REPOSITORY, imageIds=[{"imageTag": image.tag}])["images"]
        if not found or found[0]["imageId"]["imageDigest"] != image.digest:
            raise BenchError(f"BatchGetImage did not resolve {image.tag} to {image.digest}")
        directory = dest()
        os.makedirs(directory)
        argv = ["curl", "-sS", "--fail", *tls]
        for blob in blobs:
            url = client.get_download_url_for_layer(repositoryName=REPOSITORY, layerDigest=blob.digest)["downloadUrl"]
            argv += ["-o", os.path.join(directory, blob.digest.split(":", 1)[1]), url]
        subprocess.run(argv, check=True, stdin=subprocess.DEVNULL)
        for blob in blobs:
            check_file(os.path.join(directory, blob.digest.split(":", 1)[1]), blob.digest, blob.size)
    return run


def skopeo_pull(registry: harness.Registry, ref: str, image: harness.Image, dest: Callable[[], str]) -> Callable[[], None]:
    flags = registry.skopeo_flags("src")

    def run() -> None:
        # --preserve-digests: skopeo would otherwise gzip uncompressed layers on their way into an OCI layout
        subprocess.run(["skopeo", "copy", "--quiet", "--preserve-digests", *flags, f"docker://{ref}",
                        f"oci:{dest()}:{image.tag}"], check=True, stdin=subprocess.DEVNULL)
    return run


def ctr_hosts_dir(registry: harness.Registry) -> str:
    """A ``--hosts-dir`` naming the registry as HTTPS with its certificate: for a loopback host, ctr 1.6
    speaks plain HTTP unless a hosts.toml says otherwise (``--tlscacert`` alone is not enough)."""
    hosts = os.path.join(registry.work, "ctr-hosts")
    os.makedirs(os.path.join(hosts, registry.host), exist_ok=True)
    with open(os.path.join(hosts, registry.host, "hosts.toml"), "w", encoding="utf-8") as handle:
        handle.write(f'server = "https://{registry.host}"\n\n[host."https://{registry.host}"]\n'
                     f'  capabilities = ["pull", "resolve"]\n  ca = "{registry.cert}"\n')
    return hosts


def ctr_pull(daemon: Any, registry: harness.Registry, ref: str) -> Callable[[], None]:
    tls = ["--hosts-dir", ctr_hosts_dir(registry)] if registry.tls else ["--plain-http"]

    def run() -> None:
        done = subprocess.run(["ctr", "--address", daemon.address, "--namespace", NAMESPACE, "images", "pull", *tls, ref],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, check=False)
        if done.returncode != 0:
            raise BenchError(f"ctr images pull failed ({done.returncode}): {done.stderr.decode(errors='replace')[-800:]}")
    return run


# -- the scenarios ---------------------------------------------------------------------------------------------

def scenario_1(bench: harness.Bench) -> None:
    images = [bench.image("multi4"), bench.image("single1g")]
    for tls in (False, True):
        proto = "https" if tls else "http"
        handle = bench.endpoint(tls=tls)
        registry = bench.registry(tls)
        for image in images:
            _pull_to_layout(bench, handle, registry, image, f"{image.name} {proto}", tls)
            if proto in CONTAINERD_PROTOCOLS and image.name in CONTAINERD_IMAGES:
                _pull_to_containerd(bench, handle, registry, image, f"{image.name} {proto} into containerd", tls)


def _measure_layout(bench: harness.Bench, case: str, tool: str, image: harness.Image, name: str,
                    make_run: Callable[[Callable[[], str]], Callable[[], Any]], check: bool = True, warmup: bool = False,
                    **extra: Any) -> None:
    """Time ``make_run(dest)`` into a fresh path per run; check the last run's layout outside the timing.

    A warm-up run only for ours in this process (imports, boto3's models); a command starts afresh
    every run, and the sources are in the page cache since they were pushed."""
    with Scratch(bench, name) as scratch:
        run = make_run(lambda: scratch.path)
        stats = bench.measure(run, setup=scratch.next, warmup=warmup)
        if check:
            verify_layout(scratch.path, image)
        bench.record("1", case, tool, stats, image.size, **extra)


def _pull_to_layout(bench: harness.Bench, handle: Any, registry: harness.Registry, image: harness.Image, case: str,
                    tls: bool) -> None:
    ref = bench.ecr_ref(handle, image)
    attempt(bench, "1", case, OURS, lambda: _measure_layout(
        bench, case, OURS, image, "ours", lambda dest: ours_pull(handle, ref, image, dest), warmup=True, reference=True,
        connections=argspec.MAX_CONCURRENT_DOWNLOADS))
    attempt(bench, "1", case, OURS_ANSIBLE, lambda: _measure_layout(
        bench, case, OURS_ANSIBLE, image, "ansible", lambda dest: ansible_pull(bench, handle, ref, image, dest)))
    # curl's run checks every blob itself, in the timing
    attempt(bench, "1", case, CURL, lambda: _measure_layout(
        bench, case, CURL, image, "curl", lambda dest: curl_pull(handle, image, dest), check=False))
    attempt(bench, "1", case, SKOPEO, lambda: _measure_layout(
        bench, case, SKOPEO, image, "skopeo", lambda dest: skopeo_pull(registry, registry_ref(bench, tls, image), image, dest)))


def _pull_to_containerd(bench: harness.Bench, handle: Any, registry: harness.Registry, image: harness.Image, case: str,
                        tls: bool) -> None:
    daemon = bench.containerd()
    store = ContainerdStore(daemon)
    ref = bench.ecr_ref(handle, image)

    def measure(tool: str, run: Callable[[], Any], setup: Callable[[], Any], **extra: Any) -> None:
        try:
            stats = bench.measure(run, setup=setup, warmup=False)  # ours is warm from the layout pulls
            store.verify(image, unpacked=True)
            bench.record("1", case, tool, stats, image.size, **extra)
        finally:
            store.empty(image)

    with Scratch(bench, "ours-containerd") as scratch:
        def ours_setup() -> None:
            store.empty(image)
            os.makedirs(scratch.next())
        attempt(bench, "1", case, OURS_CONTAINERD, lambda: measure(
            OURS_CONTAINERD, ours_pull(handle, ref, image, lambda: scratch.path, format="containerd",
                                       containerd_address=daemon.address, containerd_namespace=NAMESPACE, unpack=True),
            ours_setup, reference=True))
    attempt(bench, "1", case, CTR, lambda: measure(
        CTR, ctr_pull(daemon, registry, registry_ref(bench, tls, image)), lambda: store.empty(image)))


def scenario_2(bench: harness.Bench) -> None:
    image = bench.image("single1g")
    cap = parse_bytes(CAP) / MIB
    # chunks small enough that the largest P has several each (the full image: the default 16 MiB)
    chunk = max(MIB, min(16 * MIB, image.size // (4 * max(CONNECTIONS)) // MIB * MIB))

    uncapped = bench.endpoint(tls=False)
    ceiling_case = f"{image.name} http uncapped (CPU ceiling)"
    best = 0.0
    with Scratch(bench, "ceiling") as scratch:
        for connections in CEILING_CONNECTIONS:
            tool = f"ours P={connections}"

            def ceiling(connections: int = connections, tool: str = tool) -> float:
                run = ours_pull(uncapped, bench.ecr_ref(uncapped, image), image, lambda: scratch.path,
                                max_concurrent_downloads=connections, chunk_size=chunk)
                stats = bench.measure(run, setup=scratch.next)
                verify_layout(scratch.path, image)
                entry = bench.record("2", ceiling_case, tool, stats, image.size, connections=connections,
                                     chunk_size=chunk, cpu_ceiling=True, reference=connections == 4)
                return entry["mib_per_s"]["median"]
            best = max(best, attempt(bench, "2", ceiling_case, tool, ceiling) or 0.0)

    capped = bench.endpoint(tls=False, cap=CAP)
    case = f"{image.name} http capped {CAP}/connection"
    ref = bench.ecr_ref(capped, image)
    with Scratch(bench, "capped") as scratch:
        attempt(bench, "2", case, CURL, lambda: _measure_capped(
            bench, case, CURL, image, scratch, curl_pull(capped, image, lambda: scratch.path), check=False,
            connections=1, ideal_mib_per_s=min(cap, best) if best else cap, peer=True, reference=True))
        for connections in CONNECTIONS:
            tool = f"ours P={connections}"
            ideal = min(connections * cap, best) if best else connections * cap
            attempt(bench, "2", case, tool, lambda connections=connections, tool=tool, ideal=ideal: _measure_capped(
                bench, case, tool, image, scratch,
                ours_pull(capped, ref, image, lambda: scratch.path, max_concurrent_downloads=connections, chunk_size=chunk),
                connections=connections, chunk_size=chunk, ideal_mib_per_s=ideal, cpu_ceiling_mib_per_s=best or None,
                cap_mib_per_s=cap))


def _measure_capped(bench: harness.Bench, case: str, tool: str, image: harness.Image, scratch: Scratch,
                    run: Callable[[], Any], check: bool = True, **extra: Any) -> None:
    stats = bench.measure(run, setup=scratch.next, warmup=False)  # ours is warm from the ceiling rows
    if check:
        verify_layout(scratch.path, image)
    bench.record("2", case, tool, stats, image.size, **extra)


SCENARIOS = {"1": scenario_1, "2": scenario_2}
