# Copyright: Contributors to the ecrkit.images project
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Scenario 3, memory: peak RSS of a pull, by layer size, chunk size and connections.

Every pull runs in a fresh Python process (:data:`DRIVER`, run with ``python -c``) that does what the
module does without Ansible around it: import the collection, build the boto3 client, ``pull()`` into
a new OCI layout directory. Its peak RSS is what ``wait4`` reports when it exits, read by the small
launcher process ``harness.peak_rss_of`` puts between the bench and the driver (a process forked
straight from the bench would report the bench's own RSS for anything smaller).

The baseline, the "idle module process", is the same driver pulling into a destination that already
holds the image (the last pull's): imports, the client, the BatchGetImage that resolves the tag, the
layout read, and no download. ``excess`` is a pull's peak over that baseline; the goal is at most 2 MiB per connection
(``goal = idle + 2 MiB x P``), whatever the layer and chunk sizes.

The peer, for context: ``skopeo copy`` of the same image from Distribution (HTTP) into an OCI layout,
with ``skopeo inspect`` of it as its own idle baseline.

Seconds in these rows are the wall time of the whole process (interpreter start included), not a
throughput figure: scenario 1 times pulls. There is no warm-up run: a peak RSS does not depend on
warm caches, and a 2 GiB pull is not cheap.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
import tempfile
import traceback
from typing import Any, Callable, Dict, List, Optional

import harness

MIB = harness.MIB
CHUNK_SIZES = (8 * MIB, 64 * MIB)
CONNECTIONS = (4, 16)
IMAGES = ("layer256", "layer2g")
GOAL_PER_CONNECTION = 2 * MIB
TOOL = "ours (module_utils, own process)"
TITLE = "Memory of a pull (peak RSS of a fresh process per pull; reference: ours, idle)"

# argv: RESULT_FILE COMMAND...; runs COMMAND, writes its ru_maxrss in bytes, exits with its status

# argv: ROOT REF DEST CHUNK_SIZE CONNECTIONS EXPECT(changed|unchanged) RESULT_FILE
DRIVER = r"""
import json, os, sys
root, ref, dest, chunk_size, connections, expect, out = sys.argv[1:8]
sys.path.insert(0, root)
import boto3
from botocore.config import Config
from ansible_collections.ecrkit.images.plugins.module_utils import ecr, pull

def connect(image_ref):
    client = boto3.client("ecr", region_name=image_ref.region, endpoint_url=os.environ["AWS_ENDPOINT_URL_ECR"],
                          config=Config(**ecr.client_config(image_ref)))
    return ecr.EcrRepository(client, image_ref)

options = pull.PullOptions.from_params(ref=ref, dest=dest, format="oci", max_concurrent_downloads=int(connections),
                                       chunk_size=int(chunk_size))
result = pull.pull(options, connect)
if result["changed"] != (expect == "changed"):
    sys.exit(f"expected the pull to be {expect}, it reported changed={result['changed']}")
summary = {key: result[key] for key in ("changed", "digest", "bytes_transferred", "api_calls", "elapsed")}
with open("/proc/self/status", encoding="ascii") as status:  # this exec's own high-water mark
    summary["vm_hwm"] = [int(line.split()[1]) * 1024 for line in status if line.startswith("VmHWM:")][0]
with open(out, "w", encoding="utf-8") as handle:
    json.dump(summary, handle)
"""


def _mib(value: float) -> float:
    return round(value / MIB, 1)


class _Driver:
    """Runs the driver for one image against one endpoint; every destination lives under ``work``."""

    def __init__(self, bench: harness.Bench, handle: Any, image: harness.Image, work: str) -> None:
        self.ref = bench.ecr_ref(handle, image)
        self.image = image
        self.work = work
        self.env = dict(os.environ, **handle.env())
        self.result_file = os.path.join(work, "result.json")

    def run(self, dest: str, chunk_size: int, connections: int, expect: str) -> Dict[str, Any]:
        argv = [sys.executable, "-c", DRIVER, harness.ROOT, self.ref, dest, str(chunk_size), str(connections), expect,
                self.result_file]
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.result_file)
        peak = _peak_rss(argv, self.env)
        with open(self.result_file, encoding="utf-8") as handle:
            result = json.load(handle)
        if result["digest"] != self.image.digest:
            raise RuntimeError(f"pulled {result['digest']}, expected {self.image.digest}")
        layers = sum(layer.size for layer in self.image.built.layers)
        if expect == "changed" and result["bytes_transferred"] < layers:
            raise RuntimeError(f"a fresh pull moved {result['bytes_transferred']} bytes, the layers hold {layers}")
        return {"peak_rss_mib": _mib(peak), "vm_hwm_mib": _mib(result["vm_hwm"]),
                "bytes_transferred": result["bytes_transferred"], "api_calls": result["api_calls"]}


def _peaks(bench: harness.Bench, run: Any, setup: Any = None) -> harness.Stats:
    """``bench.measure`` of ``run`` (which returns peak_rss_mib), with the max of the peaks kept too."""
    peaks: List[float] = []

    def sample() -> Dict[str, Any]:
        outcome = run()
        peaks.append(outcome["peak_rss_mib"])
        return outcome

    stats = bench.measure(sample, setup=setup, warmup=False)
    stats.extra["peak_rss_max_mib"] = max(peaks)
    stats.extra["peak_rss_samples_mib"] = list(peaks)
    return stats


def memory(bench: harness.Bench) -> None:
    handle = bench.endpoint(tls=False)
    for name in IMAGES:
        image = bench.image(name)
        work = tempfile.mkdtemp(prefix=f"memory-{name}-", dir=bench.work)
        case = f"pull {image.name}: peak RSS"
        try:
            attempt(bench, "3", case, TOOL, lambda: _ours(bench, handle, image, work))
            attempt(bench, "3", case, "skopeo copy (registry)", lambda: _skopeo(bench, image, work))
        finally:
            shutil.rmtree(work, ignore_errors=True)


def attempt(bench: harness.Bench, scenario: str, case: str, tool: str, measure: Callable[[], Any]) -> Any:
    """``measure()`` (which records its rows); a failure is printed and recorded as an error row of
    ``case``/``tool`` instead of stopping the whole bench."""
    try:
        return measure()
    except Exception as exc:  # pylint: disable=broad-except
        message = f"{type(exc).__name__}: {exc}".strip()[:600]
        sys.stdout.write(f"[{scenario}] {case:40s} {tool:42s} FAILED: {message}\n")
        sys.stdout.flush()
        traceback.print_exc(file=sys.stderr)
        bench.results.append({"scenario": scenario, "case": case, "tool": tool, "error": message})
        return None


def _record(bench: harness.Bench, image: harness.Image, tool: str, stats: harness.Stats, **extra: Any) -> None:
    """One row of the case ``pull IMAGE: peak RSS``, whose reference is ours' idle process."""
    bench.record("3", f"pull {image.name}: peak RSS", tool, stats, scenario_title=TITLE,
                 peak_rss_mib=stats.extra["peak_rss_mib"], peak_rss_max_mib=stats.extra["peak_rss_max_mib"],
                 image_mib=_mib(image.size), **extra)


def _ours(bench: harness.Bench, handle: Any, image: harness.Image, work: str) -> None:
    driver = _Driver(bench, handle, image, work)
    dest = os.path.join(work, "dest")
    cases = []
    for chunk_size in CHUNK_SIZES:
        for connections in CONNECTIONS:
            stats = _peaks(bench, lambda c=chunk_size, p=connections: driver.run(dest, c, p, "changed"),
                           setup=lambda: shutil.rmtree(dest, ignore_errors=True))
            cases.append((chunk_size, connections, stats))
    # the idle process: the same pull into the destination the last run filled, so it downloads nothing
    idle = _peaks(bench, lambda: driver.run(dest, CHUNK_SIZES[0], CONNECTIONS[0], "unchanged"))
    shutil.rmtree(dest, ignore_errors=True)
    idle_mib = idle.extra["peak_rss_mib"]
    _record(bench, image, f"{TOOL}: idle, no download", idle, reference=True)
    _show(f"idle module process: {idle_mib} MiB (max {idle.extra['peak_rss_max_mib']})")
    for chunk_size, connections, stats in cases:
        peak = stats.extra["peak_rss_mib"]
        goal = round(idle_mib + _mib(GOAL_PER_CONNECTION * connections), 1)
        excess = round(peak - idle_mib, 1)
        met = stats.extra["peak_rss_max_mib"] <= goal
        _record(bench, image, f"{TOOL}: chunk {chunk_size // MIB}M, P={connections}", stats, idle_rss_mib=idle_mib,
                excess_mib=excess, goal_mib=goal, within_goal=met, goal="met" if met else "MISSED",
                chunk_mib=chunk_size // MIB, connections=connections)
        _show(f"peak {peak} MiB (max {stats.extra['peak_rss_max_mib']}), idle {idle_mib}, excess {excess}, "
              f"goal <= {goal} MiB (idle + 2 MiB x {connections}): {'met' if met else 'MISSED'}")


def _skopeo(bench: harness.Bench, image: harness.Image, work: str) -> None:
    missing = [tool for tool in ("skopeo", "docker-registry") if not shutil.which(tool)]
    if missing:
        _show(f"{' and '.join(missing)} not installed: no peer figure")
        return
    registry = bench.registry(tls=False)
    source = f"docker://{registry.ref(image)}"
    dest = os.path.join(work, "skopeo")

    def inspect() -> Dict[str, Any]:
        argv = ["skopeo", "inspect", "--raw", "--tls-verify=false", source]
        return {"peak_rss_mib": _mib(_peak_rss(argv, quiet=True))}

    def copy() -> Dict[str, Any]:
        argv = ["skopeo", "copy", "--quiet", "--preserve-digests", *registry.skopeo_flags("src"), source, f"oci:{dest}:{image.tag}"]
        return {"peak_rss_mib": _mib(_peak_rss(argv, quiet=True))}

    idle = _peaks(bench, inspect)
    idle_mib = idle.extra["peak_rss_mib"]
    _record(bench, image, "skopeo inspect (registry): idle, no download", idle, peer=True)
    stats = _peaks(bench, copy, setup=lambda: shutil.rmtree(dest, ignore_errors=True))
    peak = stats.extra["peak_rss_mib"]
    _record(bench, image, "skopeo copy (registry)", stats, peer=True, idle_rss_mib=idle_mib,
            excess_mib=round(peak - idle_mib, 1))
    _show(f"skopeo: copy {peak} MiB, inspect {idle_mib} MiB, excess {round(peak - idle_mib, 1)}")
    shutil.rmtree(dest, ignore_errors=True)


def _peak_rss(argv: List[str], env: Optional[Dict[str, str]] = None, quiet: bool = False) -> int:
    """Peak RSS in bytes of ``argv`` (see harness.peak_rss_of);
    ``quiet`` sends its standard output to /dev/null."""
    if quiet:
        argv = ["sh", "-c", 'exec "$@" >/dev/null', "sh", *argv]  # sh execs it: the same process
    return harness.peak_rss_of(argv, env)


def _show(line: str) -> None:
    sys.stdout.write(f"      {line}\n")
    sys.stdout.flush()


SCENARIOS = {"3": memory}
