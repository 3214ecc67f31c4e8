# Copyright: Contributors to the ecrkit.images project
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""What every benchmark scenario shares: the services, the images, timing and the result record.

    with Bench(work_dir, repeat=3) as bench:
        endpoint = bench.endpoint(tls=False)                 # local ECR endpoint (subprocess), started once
        capped = bench.endpoint(tls=False, cap="64M")        # another one, each connection paced
        registry = bench.registry(tls=True)                  # Debian's docker-registry (Distribution)
        daemon = bench.containerd()                          # a private containerd
        image = bench.image("multi4")                        # built once, pushed to every endpoint/registry
        stats = bench.measure(lambda: ..., setup=lambda: ...) # median/min/max of bench.repeat runs
        bench.record("1", "pull multi4 http", "ours (module_utils)", stats, image.size)

Every service listens on 127.0.0.1 and is stopped when the block ends. Images are generated
deterministically (seeded random bytes, incompressible) so every peer moves the same bytes.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional

HERE = os.path.dirname(os.path.abspath(__file__))
COLLECTION = os.path.dirname(HERE)
for sub in ("tests/emulator", "tests/containerd"):
    sys.path.insert(0, os.path.join(COLLECTION, sub))
# The collection imports as ansible_collections.ecrkit.images: from the laid-out copy, the directory
# above .../ansible_collections; from the checkout, the copy `make layout` builds in .build.
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(COLLECTION)))
if os.path.basename(os.path.dirname(os.path.dirname(COLLECTION))) != "ansible_collections":
    ROOT = os.path.join(COLLECTION, ".build")
sys.path.insert(0, ROOT)

# pylint: disable=wrong-import-position
import sample_images  # noqa: E402
from fixture import make_self_signed_cert, run_emulator  # noqa: E402
from private_containerd import run_containerd  # noqa: E402

MIB = 1024 * 1024
GIB = 1024 * MIB

# name -> (layer count, layer size); the full-size set and a small one for a quick smoke run
IMAGES = {
    "multi4": (4, 256 * MIB),      # 1 GiB in 4 layers
    "single1g": (1, 1 * GIB),      # 1 GiB in one layer
    "layer256": (1, 256 * MIB),    # memory scenario
    "layer2g": (1, 2 * GIB),       # memory scenario
}
QUICK_IMAGES = {
    "multi4": (4, 16 * MIB),
    "single1g": (1, 64 * MIB),
    "layer256": (1, 32 * MIB),
    "layer2g": (1, 128 * MIB),
}
REPOSITORY = "bench/images"


@dataclass
class Stats:
    median: float
    minimum: float
    maximum: float
    samples: List[float]
    extra: Dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> Dict[str, Any]:
        return {"median": self.median, "min": self.minimum, "max": self.maximum, "samples": self.samples, **self.extra}


@dataclass
class Image:
    name: str
    layout: str
    tag: str
    built: Any  # sample_images.BuiltImage

    @property
    def size(self) -> int:
        """Bytes of the config and layers (what a pull moves)."""
        return sum(blob.size for blob in self.built.blob_descriptors())

    @property
    def digest(self) -> str:
        return self.built.digest


class Registry:
    """Debian's docker-registry (CNCF Distribution 2.8) on loopback."""

    def __init__(self, work: str, tls: bool) -> None:
        self.work = work
        self.tls = tls
        self.process: Optional[subprocess.Popen] = None
        self.host = ""
        self.cert = ""

    def start(self) -> "Registry":
        os.makedirs(self.work, exist_ok=True)
        port = _free_port()
        self.host = f"127.0.0.1:{port}"
        tls = ""
        if self.tls:
            self.cert, key = make_self_signed_cert(os.path.join(self.work, "tls"))
            tls = f"  tls:\n    certificate: {self.cert}\n    key: {key}\n"
        config = os.path.join(self.work, "config.yml")
        with open(config, "w", encoding="utf-8") as handle:
            handle.write(f"version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {self.work}/data\n"
                         f"  delete:\n    enabled: true\nhttp:\n  addr: {self.host}\n{tls}")
        with open(os.path.join(self.work, "registry.log"), "ab") as log:
            self.process = subprocess.Popen(["docker-registry", "serve", config], stdout=log, stderr=log,
                                            stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"docker-registry exited; see {self.work}/registry.log")
            with contextlib.suppress(OSError):
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    return self
            time.sleep(0.1)
        raise RuntimeError("docker-registry did not start within 30 s")

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=30)

    def skopeo_flags(self, side: str) -> List[str]:
        """skopeo's TLS flags for this registry as the ``src`` or the ``dest``."""
        if self.tls:
            certs = os.path.join(self.work, "certs.d")
            os.makedirs(certs, exist_ok=True)
            shutil.copy(self.cert, os.path.join(certs, "ca.crt"))
            return [f"--{side}-cert-dir", certs]
        return [f"--{side}-tls-verify=false"]

    def ref(self, image: Image) -> str:
        return f"{self.host}/{REPOSITORY}:{image.tag}"


class Bench:
    def __init__(self, work: str, repeat: int = 3, quick: bool = False) -> None:
        self.work = os.path.abspath(work)
        self.repeat = repeat
        self.quick = quick
        self.results: List[Dict[str, Any]] = []
        self._stack = contextlib.ExitStack()
        self._endpoints: Dict[Any, Any] = {}
        self._registries: Dict[bool, Registry] = {}
        self._containerd: Any = None
        self._images: Dict[str, Image] = {}
        self.layout = os.path.join(self.work, "images")

    def __enter__(self) -> "Bench":
        os.makedirs(self.work, exist_ok=True)
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stack.close()

    # -- services ------------------------------------------------------------------------------

    def endpoint(self, tls: bool = False, cap: str = "0") -> Any:
        """A local ECR endpoint (own process), with every image pushed to it once built."""
        key = (tls, cap)
        if key not in self._endpoints:
            name = f"ecr-{'https' if tls else 'http'}-{cap}"
            handle = self._stack.enter_context(run_emulator(os.path.join(self.work, name), mode="subprocess", tls=tls,
                                                            bandwidth_per_connection=cap))
            self._endpoints[key] = handle
            for image in self._images.values():
                self._push_to_endpoint(handle, image)
        return self._endpoints[key]

    def registry(self, tls: bool = False) -> Registry:
        if tls not in self._registries:
            registry = Registry(os.path.join(self.work, f"registry-{'https' if tls else 'http'}"), tls).start()
            self._stack.callback(registry.stop)
            self._registries[tls] = registry
            for image in self._images.values():
                self._push_to_registry(registry, image)
        return self._registries[tls]

    def containerd(self) -> Any:
        if self._containerd is None:
            self._containerd = self._stack.enter_context(run_containerd(os.path.join(self.work, "containerd")))
        return self._containerd

    # -- images --------------------------------------------------------------------------------

    def image(self, name: str) -> Image:
        """The named image (see IMAGES), built once and pushed to every endpoint and registry started."""
        if name not in self._images:
            count, size = (QUICK_IMAGES if self.quick else IMAGES)[name]
            built = sample_images.build_random_image(self.layout, name, count=count, size=size, seed=f"bench-{name}",
                                                     compress=False)
            image = Image(name=name, layout=self.layout, tag=name, built=built)
            self._images[name] = image
            for handle in self._endpoints.values():
                self._push_to_endpoint(handle, image)
            for registry in self._registries.values():
                self._push_to_registry(registry, image)
        return self._images[name]

    @staticmethod
    def _push_to_endpoint(handle: Any, image: Image) -> None:
        sample_images.push_image(handle.client(), image.built, REPOSITORY, create_repository=True)

    @staticmethod
    def _push_to_registry(registry: Registry, image: Image) -> None:
        # --preserve-digests: the registry holds the very bytes ECR holds (skopeo would gzip the layers otherwise)
        subprocess.run(["skopeo", "copy", "--quiet", "--preserve-digests", *registry.skopeo_flags("dest"), f"oci:{image.layout}:{image.tag}",
                        f"docker://{registry.ref(image)}"], check=True)

    def ecr_ref(self, handle: Any, image: Image) -> str:
        return f"{handle.account_id}.dkr.ecr.{handle.region}.amazonaws.com/{REPOSITORY}:{image.tag}"

    # -- measuring -----------------------------------------------------------------------------

    def measure(self, run: Callable[[], Any], setup: Optional[Callable[[], Any]] = None, warmup: bool = True) -> Stats:
        """Wall seconds of ``run`` over ``repeat`` runs (``setup`` before each, untimed)."""
        if warmup:
            if setup:
                setup()
            run()
        samples = []
        extra: Dict[str, List[Any]] = {}
        for dummy in range(self.repeat):
            if setup:
                setup()
            started = time.perf_counter()
            outcome = run()
            samples.append(time.perf_counter() - started)
            if isinstance(outcome, dict):
                for key, value in outcome.items():
                    extra.setdefault(key, []).append(value)
        return Stats(statistics.median(samples), min(samples), max(samples), samples,
                     {key: statistics.median(values) if all(isinstance(v, (int, float)) for v in values) else values
                      for key, values in extra.items()})

    def record(self, scenario: str, case: str, tool: str, stats: Stats, size: Optional[int] = None,
               **extra: Any) -> Dict[str, Any]:
        """Keep one result; with ``size`` (bytes moved) throughput is derived from the wall times."""
        entry: Dict[str, Any] = {"scenario": scenario, "case": case, "tool": tool, "seconds": stats.to_json(), **extra}
        if size:
            entry["mib_per_s"] = {"median": size / MIB / stats.median, "min": size / MIB / stats.maximum,
                                  "max": size / MIB / stats.minimum}
            entry["bytes"] = size
        self.results.append(entry)
        shown = f"{entry['mib_per_s']['median']:8.0f} MiB/s" if size else f"{stats.median:8.3f} s"
        sys.stdout.write(f"[{scenario}] {case:40s} {tool:42s} {shown}\n")
        sys.stdout.flush()
        return entry


def machine() -> Dict[str, Any]:
    """What the run ran on, for the report."""
    model = ""
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            model = next((line.split(":", 1)[1].strip() for line in handle if line.startswith("model name")), "")
    with open("/proc/meminfo", encoding="utf-8") as handle:
        memory = int(handle.readline().split()[1]) * 1024
    return {"cpus": os.cpu_count(), "cpu_model": model, "memory_gib": round(memory / GIB, 1),
            "kernel": os.uname().release, "python": sys.version.split()[0]}


# Runs ARGV[2:] as its child and writes the child's own peak RSS (bytes) to ARGV[1]. A process forked
# straight from the bench starts with the bench's resident pages counted against it (fork copies the RSS
# counters and exec keeps the high-water mark in ru_maxrss), so the bench would report its own RSS for
# any smaller child; this launcher (python -I -S, ~7 MiB) is that floor instead.
_LAUNCHER = r"""
import os, sys
pid = os.fork()
if pid == 0:
    try:
        os.execvp(sys.argv[2], sys.argv[2:])
    finally:
        os._exit(127)
dummy, status, usage = os.wait4(pid, 0)
with open(sys.argv[1], "w") as handle:
    handle.write(str(usage.ru_maxrss * 1024))
sys.exit(os.waitstatus_to_exitcode(status))
"""


def peak_rss_of(argv: List[str], env: Optional[Dict[str, str]] = None) -> int:
    """Run ``argv`` to completion; its own peak resident set size in bytes."""
    with tempfile.NamedTemporaryFile(prefix="peak-rss-") as out:
        done = subprocess.run([sys.executable, "-I", "-S", "-c", _LAUNCHER, out.name, *argv], env=env, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"{argv[0]} failed with {done.returncode}")
        with open(out.name, encoding="ascii") as handle:
            return int(handle.read())


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def write_json(path: str, data: Any) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path + ".tmp", "w", encoding="utf-8") as handle:
        json.dump(data, handle, indent=2, sort_keys=True)
    os.replace(path + ".tmp", path)
