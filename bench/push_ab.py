# Copyright: Contributors to the ecrkit.images project
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""A/B of the push engine: this checkout against an earlier git revision, interleaved in one run.

A change to the upload path is judged by ratios taken side by side, since these machines drift by
10% between runs. Each round pushes the same images with the revision's module_utils, then with this
checkout's (each push a fresh process and a fresh repository), against one local ECR endpoint:
4 x 128 MiB with 4 and with 1 upload at a time, and one 512 MiB layer.

    make layout
    .venv/bin/python bench/push_ab.py --against HEAD~1 [--rounds 4]

Prints the median MiB/s of each side and their ratio. Timings are for reading, never for tests.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
CHECKOUT = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(CHECKOUT, "tests", "emulator"))

# pylint: disable=wrong-import-position
import sample_images  # noqa: E402
from fixture import run_emulator  # noqa: E402

MIB = 1024 * 1024
CASES = (("4 x 128 MiB, 4 uploads at a time", "multi", 4), ("4 x 128 MiB, 1 upload at a time", "multi", 1),
         ("1 x 512 MiB", "single", 4))


def push_once(root: str, source: str, url: str, repository: str, uploads: int, access_key: str, secret_key: str) -> float:
    """In the worker process: one push with the module_utils under ``root``; returns MiB/s."""
    sys.path.insert(0, root)
    import boto3  # pylint: disable=import-outside-toplevel
    from ansible_collections.ecrkit.images.plugins.module_utils import ecr, push  # pylint: disable=import-outside-toplevel

    client = boto3.client("ecr", region_name="us-east-1", endpoint_url=url, aws_access_key_id=access_key,
                          aws_secret_access_key=secret_key)
    options = push.PushOptions.from_params(ref=f"123456789012.dkr.ecr.us-east-1.amazonaws.com/{repository}:1",
                                           src=source, create_repository=True, max_concurrent_uploads=uploads)
    started = time.perf_counter()
    result = push.push(options, lambda ref: ecr.EcrRepository(client, ref))
    return result["bytes_transferred"] / MIB / (time.perf_counter() - started)


def revision_tree(revision: str, work: str) -> str:
    """The collection at ``revision``, laid out as ansible_collections/ecrkit/images under a new root."""
    root = os.path.join(work, "revision")
    target = os.path.join(root, "ansible_collections", "ecrkit", "images")
    os.makedirs(target)
    archive = os.path.join(work, "revision.tar")
    subprocess.run(["git", "-C", CHECKOUT, "archive", "-o", archive, revision, "plugins"], check=True)
    with tarfile.open(archive) as tar:
        tar.extractall(target, filter="data")
    return root


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", maxsplit=1)[0])
    parser.add_argument("--against", required=True, help="the git revision to compare with (e.g. HEAD~1)")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--worker", nargs=7, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        root, source, url, repository, uploads, access_key, secret_key = args.worker
        print(json.dumps(push_once(root, source, url, repository, int(uploads), access_key, secret_key)))
        return 0
    this = os.path.join(CHECKOUT, ".build")
    if not os.path.isdir(os.path.join(this, "ansible_collections")):
        parser.error("run `make layout` first: this checkout is measured from .build")
    work = tempfile.mkdtemp(prefix="ecrkit-push-ab-", dir="/var/tmp" if os.path.isdir("/var/tmp") else None)
    try:
        sides = {"this checkout": this, args.against: revision_tree(args.against, work)}
        sources = {"multi": os.path.join(work, "multi"), "single": os.path.join(work, "single")}
        sample_images.build_random_image(sources["multi"], "1", count=4, size=128 * MIB, seed="ab-multi")
        sample_images.build_random_image(sources["single"], "1", count=1, size=512 * MIB, seed="ab-single")
        figures: dict = {}
        with run_emulator(work, mode="subprocess") as endpoint:
            number = 0
            for dummy in range(args.rounds):
                for case, source, uploads in CASES:
                    for side, root in sides.items():
                        number += 1
                        out = subprocess.run(
                            [sys.executable, __file__, "--against", args.against, "--worker", root, sources[source],
                             endpoint.url, f"ab/push{number}", str(uploads), endpoint.access_key, endpoint.secret_key],
                            capture_output=True, text=True, check=True)
                        figures.setdefault((case, side), []).append(json.loads(out.stdout))
        print(f"{'case':34} {'this checkout':>16} {args.against:>16}  ratio  (median MiB/s of {args.rounds} rounds)")
        for case, dummy, dummy in CASES:
            ours = statistics.median(figures[(case, "this checkout")])
            theirs = statistics.median(figures[(case, args.against)])
            print(f"{case:34} {ours:16.1f} {theirs:16.1f}  {ours / theirs:.2f}x")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
