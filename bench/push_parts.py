# Copyright: Contributors to the ecrkit.images project
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Threads or processes for building UploadLayerPart requests? (issue 4)

Building one request is CPU work: base64 of the part, the JSON body, the SigV4 payload hash. This
measures exactly that, through a real boto3 client whose requests are answered locally by a
``before-send`` hook (no network, no server competing for the CPU), serially, with N threads and with
N processes. Run: ``.venv/bin/python bench/push_parts.py [--parts 16] [--workers 2]``.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import os
import time

import boto3
from botocore.awsrequest import AWSResponse

PART = 20 * 1024 * 1024


class _Raw:
    def stream(self, **dummy):
        yield b'{"registryId":"123456789012","repositoryName":"team/app","uploadId":"u","lastByteReceived":1}'


def _answer(request, **dummy):
    return AWSResponse(request.url, 200, {"content-type": "application/x-amz-json-1.1"}, _Raw())


def _client():
    client = boto3.client("ecr", region_name="us-east-1", endpoint_url="https://127.0.0.1:9",
                          aws_access_key_id="AKIDEXAMPLE", aws_secret_access_key="secret")
    client.meta.events.register("before-send.ecr.UploadLayerPart", _answer)
    return client


_CLIENT = None
_DATA = os.urandom(PART)


def build(number: int) -> int:
    global _CLIENT  # pylint: disable=global-statement
    if _CLIENT is None:
        _CLIENT = _client()
    _CLIENT.upload_layer_part(repositoryName="team/app", uploadId="u", partFirstByte=number * PART,
                              partLastByte=(number + 1) * PART - 1, layerPartBlob=_DATA)
    return PART


def run(kind: str, parts: int, workers: int) -> float:
    started = time.perf_counter()
    if kind == "serial":
        for number in range(parts):
            build(number)
    else:
        pool_class = concurrent.futures.ThreadPoolExecutor if kind == "threads" else concurrent.futures.ProcessPoolExecutor
        with pool_class(workers) as pool:
            list(pool.map(build, range(parts)))
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--parts", type=int, default=16)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    build(0)  # warm up the client
    for kind in ("serial", "threads", "processes"):
        seconds = run(kind, args.parts, args.workers)
        print(f"{kind:10s} {args.parts} x 20 MiB parts, {args.workers} workers: {seconds:6.2f} s  "
              f"{args.parts * PART / seconds / 1024 / 1024:7.1f} MiB/s")


if __name__ == "__main__":
    main()
