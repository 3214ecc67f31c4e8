# Copyright: Contributors to the ecrkit.images project
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Scenario 4: push, ours side by side with skopeo, and against the CPU ceiling of building requests.

- The ceiling: building UploadLayerPart requests (base64 of the part, the JSON body, the SigV4 payload
  hash) through a real boto3 client whose requests are answered locally by a ``before-send`` hook (no
  network, no server competing for the CPU), from 1 thread and from 4, as bench/push_parts.py does.
- Ours: push.push from the bench's OCI layout into a fresh repository per run (create_repository) on
  the uncapped HTTP endpoint; single1g (one layer) and multi4 with 1 and 4 layers in flight
  (max_concurrent_uploads). Ours' throughput is also given per layer in flight, as a ratio to the
  ceiling.
- skopeo: ``skopeo copy --preserve-digests oci:LAYOUT:TAG docker://REGISTRY/fresh-repo:TAG`` into the
  Distribution registry (HTTP), with an empty blob-info cache so that it cannot mount the blobs from
  the repository they are already in, and uploads them like ours.
"""

from __future__ import annotations

import concurrent.futures
import os
import subprocess
from typing import Any, Callable, Dict, List

import boto3
from botocore.awsrequest import AWSResponse

import harness
from harness import MIB
from scenario_pull import BenchError, attempt, connector, registry_manifest_digest

# pylint: disable=wrong-import-position,wrong-import-order
from ansible_collections.ecrkit.images.plugins.module_utils import push, upload  # noqa: E402
from ecr_emu_model import ECR_PART_SIZE  # noqa: E402

CEILING_THREADS = (1, 4)
UPLOADS = {"single1g": (4,), "multi4": (1, 4)}  # max_concurrent_uploads per image (one layer: no choice to make)
PUSH_REPOSITORY = "bench/push"
SKOPEO_CACHE = "/var/lib/containers/cache"  # skopeo's blob-info cache when run as root

OURS = "ours (module_utils)"
SKOPEO = "skopeo copy --preserve-digests oci: -> docker:// (registry)"


# -- the CPU ceiling of building UploadLayerPart requests -------------------------------------------------------

class _Raw:
    def stream(self, **dummy: Any) -> Any:
        yield b'{"registryId":"123456789012","repositoryName":"bench/ceiling","uploadId":"u","lastByteReceived":1}'


def _answer(request: Any, **dummy: Any) -> AWSResponse:
    return AWSResponse(request.url, 200, {"content-type": "application/x-amz-json-1.1"}, _Raw())


def part_size() -> int:
    """The part size ours uploads with on the emulator (its InitiateLayerUpload partSize, clamped as ours does)."""
    return min(max(ECR_PART_SIZE, upload.ECR_MIN_PART_SIZE), upload.ECR_MAX_PART_SIZE)


def ceiling_run(threads: int, parts: int) -> Callable[[], None]:
    """Build ``parts`` UploadLayerPart requests of part_size() bytes from ``threads`` threads (one client,
    as ours shares one)."""
    size = part_size()
    client = boto3.client("ecr", region_name="us-east-1", endpoint_url="https://127.0.0.1:9",
                          aws_access_key_id="AKIDEXAMPLE", aws_secret_access_key="secret")
    client.meta.events.register("before-send.ecr.UploadLayerPart", _answer)
    data = os.urandom(size)

    def build(number: int) -> None:
        client.upload_layer_part(repositoryName="bench/ceiling", uploadId="u", partFirstByte=number * size,
                                 partLastByte=(number + 1) * size - 1, layerPartBlob=data)

    def run() -> None:
        with concurrent.futures.ThreadPoolExecutor(threads) as pool:
            list(pool.map(build, range(parts)))
    return run


# -- ours ---------------------------------------------------------------------------------------------------------

class FreshRepository:
    """A new repository name per timed run; the previous run's repository is deleted first, the last one
    when the block ends."""

    def __init__(self, handle: Any, prefix: str) -> None:
        self.client = handle.client()
        self.prefix = prefix
        self.count = 0
        self.name = ""

    def next(self) -> str:
        self.clear()
        self.count += 1
        self.name = f"{self.prefix}-{self.count}"
        os.sync()
        return self.name

    def clear(self) -> None:
        if self.name:
            try:
                self.client.delete_repository(repositoryName=self.name, force=True)
            except self.client.exceptions.RepositoryNotFoundException:
                pass

    def __enter__(self) -> "FreshRepository":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.clear()


def ours_push(handle: Any, image: harness.Image, uploads: int, repository: Callable[[], str]) -> Callable[[], Dict[str, Any]]:
    layers = [blob for blob in image.built.blob_descriptors() if blob.digest != image.digest]
    expected = sum(blob.size for blob in layers)

    def run() -> Dict[str, Any]:
        ref = f"{handle.account_id}.dkr.ecr.{handle.region}.amazonaws.com/{repository()}:{image.tag}"
        options = push.PushOptions.from_params(ref=ref, src=image.layout, src_tag=image.tag, create_repository=True,
                                               max_concurrent_uploads=uploads)
        result = push.push(options, connector(handle))
        if result["digest"] != image.digest or result["bytes_transferred"] != expected:
            raise BenchError(f"ours pushed {result['digest']} ({result['bytes_transferred']} bytes), not {image.digest} "
                             f"({expected} bytes)")
        return {"api_calls": result["api_calls"]}
    return run


def verify_pushed(handle: Any, repository: str, image: harness.Image) -> None:
    """The repository's tag points at the image and ECR has every blob of it."""
    client = handle.client()
    found = client.batch_get_image(repositoryName=repository, imageIds=[{"imageTag": image.tag}])["images"]
    if not found or found[0]["imageId"]["imageDigest"] != image.digest:
        raise BenchError(f"{repository}:{image.tag} is not {image.digest} after the push")
    digests = [blob.digest for blob in image.built.blob_descriptors() if blob.digest != image.digest]
    layers = client.batch_check_layer_availability(repositoryName=repository, layerDigests=digests)["layers"]
    missing = set(digests) - {layer["layerDigest"] for layer in layers if layer.get("layerAvailability") == "AVAILABLE"}
    if missing:
        raise BenchError(f"{repository} lacks {sorted(missing)} after the push")


# -- skopeo -------------------------------------------------------------------------------------------------------

def _private_cache_prefix() -> List[str]:
    """Run skopeo in its own mount namespace with an empty tmpfs over its blob-info cache; [] when that
    cannot be done here (then skopeo may mount blobs it has seen instead of uploading them)."""
    probe = subprocess.run(["unshare", "-m", "sh", "-c", f'mount -t tmpfs tmpfs "{SKOPEO_CACHE}"'],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False) \
        if os.path.isdir(SKOPEO_CACHE) else None
    if probe is None or probe.returncode != 0:
        return []
    return ["unshare", "-m", "sh", "-c", f'mount -t tmpfs tmpfs "{SKOPEO_CACHE}" && exec "$@"', "sh"]


def skopeo_push(registry: harness.Registry, image: harness.Image, repository: Callable[[], str],
                prefix: List[str]) -> Callable[[], None]:
    flags = registry.skopeo_flags("dest")

    def run() -> None:
        subprocess.run([*prefix, "skopeo", "copy", "--quiet", "--preserve-digests", *flags, f"oci:{image.layout}:{image.tag}",
                        f"docker://{registry.host}/{repository()}:{image.tag}"], check=True, stdin=subprocess.DEVNULL)
    return run


# -- the scenario --------------------------------------------------------------------------------------------------

def scenario_4(bench: harness.Bench) -> None:
    images = [bench.image("single1g"), bench.image("multi4")]
    handle = bench.endpoint(tls=False)
    registry = bench.registry(False)

    parts = 4 if bench.quick else 16
    case = f"UploadLayerPart request build, {part_size() // MIB} MiB parts (CPU ceiling)"
    ceilings: Dict[int, float] = {}
    for threads in CEILING_THREADS:
        tool = f"boto3, {threads} thread{'s' if threads > 1 else ''}"

        def ceiling(threads: int = threads, tool: str = tool) -> float:
            stats = bench.measure(ceiling_run(threads, parts))
            entry = bench.record("4", case, tool, stats, parts * part_size(), threads=threads, cpu_ceiling=True,
                                 reference=threads == 1)
            return entry["mib_per_s"]["median"]
        value = attempt(bench, "4", case, tool, ceiling)
        if value:
            ceilings[threads] = value

    prefix = _private_cache_prefix()
    if not prefix:
        print("[4] note: skopeo runs with its shared blob-info cache (unshare/tmpfs not possible here); it may "
              "mount blobs instead of uploading them")
    for image in images:
        case = f"push {image.name} http"
        layers = len(image.built.layers)
        for uploads in UPLOADS[image.name]:
            in_flight = max(1, min(uploads, layers))
            tool = f"{OURS}, {uploads} upload{'s' if uploads > 1 else ''} at a time"

            def measure(uploads: int = uploads, in_flight: int = in_flight, tool: str = tool) -> None:
                with FreshRepository(handle, f"{PUSH_REPOSITORY}-{image.name}-{uploads}") as fresh:
                    # no warm-up: a push of 1 GiB is long, and the ceiling rows warmed boto3's UploadLayerPart
                    stats = bench.measure(ours_push(handle, image, uploads, lambda: fresh.name), setup=fresh.next,
                                          warmup=False)
                    verify_pushed(handle, fresh.name, image)
                # the ceiling measured with as many threads as ours has layers in flight (or the nearest below)
                ceiling = next((ceilings[threads] for threads in sorted(ceilings, reverse=True) if threads <= in_flight), None)
                entry = bench.record("4", case, tool, stats, image.size, max_concurrent_uploads=uploads,
                                     layers_in_flight=in_flight, reference=uploads == 4, ceiling_mib_per_s=ceiling)
                per_layer = entry["mib_per_s"]["median"] / in_flight
                entry["per_layer_mib_per_s"] = per_layer
                if ceilings.get(1):
                    entry["per_layer_vs_serial_ceiling"] = per_layer / ceilings[1]
            attempt(bench, "4", case, tool, measure)

        counter = {"n": 0}

        def fresh_name(image: harness.Image = image) -> str:
            return f"{PUSH_REPOSITORY}-skopeo-{image.name}-{counter['n']}"

        def next_name() -> None:
            counter["n"] += 1
            os.sync()

        def skopeo(image: harness.Image = image, case: str = case) -> None:
            stats = bench.measure(skopeo_push(registry, image, fresh_name, prefix), setup=next_name, warmup=False)
            found = registry_manifest_digest(registry, fresh_name(), image.tag)
            if found != image.digest:
                raise BenchError(f"the registry holds {fresh_name()}:{image.tag} as {found}, not {image.digest}")
            bench.record("4", case, SKOPEO, stats, image.size, private_blob_info_cache=bool(prefix))
        attempt(bench, "4", case, SKOPEO, skopeo)


SCENARIOS = {"4": scenario_4}
