# Copyright: Contributors to the ecrkit.images project
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Smoke benchmark of the transfer engine against the local ECR endpoint.

Pushes one blob of ``--size`` bytes (random, incompressible) to an emulator running as its own
process, then downloads it with ``download_blobs`` at each ``--connections`` value and, for
comparison, with one plain urllib3 GET that hashes and writes as it reads. Prints MiB/s (median of
``--repeat`` runs) and the client's CPU seconds per GiB. ``--bandwidth-per-connection 64M`` paces
each connection like S3's per-connection cap, which is where parallel ranges pay off;
``--first-byte-latency 0.03`` delays every blob answer's first byte (the emulator's stall-blob
fault), the cost each extra range request pays in AWS.

    make layout
    cd .build/ansible_collections/ecrkit/images
    ../../../../.venv/bin/python bench/transfer_smoke.py [--size 256M] [--connections 1,2,4,8]
        [--chunk-size 16M] [--bandwidth-per-connection 0] [--first-byte-latency 0] [--repeat 3] [--tls]

Timings are for reading, never for test assertions.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import statistics
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
COLLECTION = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(COLLECTION, "tests", "emulator"))
# The collection imports as ansible_collections.ecrkit.images: from the laid-out copy, the directory
# above .../ansible_collections; from the checkout, the copy `make layout` builds in .build.
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(COLLECTION)))
sys.path.insert(0, ROOT if os.path.basename(os.path.dirname(os.path.dirname(COLLECTION))) == "ansible_collections"
                else os.path.join(COLLECTION, ".build"))

# pylint: disable=wrong-import-position
from ansible_collections.ecrkit.images.plugins.module_utils import download  # noqa: E402
from ansible_collections.ecrkit.images.plugins.module_utils.pool import TransferPool  # noqa: E402

import urllib3  # noqa: E402

import sample_images  # noqa: E402
from ecr_emu_faults import parse_bytes  # noqa: E402
from fixture import run_emulator  # noqa: E402

MIB = 1024 * 1024
REPOSITORY = "bench/transfer"


def measure(run, repeat):
    """Median wall seconds and median client CPU seconds of ``repeat`` runs."""
    walls, cpus = [], []
    for dummy in range(repeat):
        wall, cpu = time.perf_counter(), time.process_time()
        run()
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    return statistics.median(walls), statistics.median(cpus)


def engine_run(url_for, desc, out, connections, chunk_size, verify):
    def run():
        path = os.path.join(out, "engine.partial")
        with TransferPool(connections, verify=verify) as pool:
            result, = download.download_blobs(pool, [download.BlobJob(desc.digest, desc.size, path, url_for)],
                                              chunk_size=chunk_size)
        assert result.bytes_transferred == desc.size
        os.unlink(path)
    return run


def single_stream_run(url_for, desc, out, verify):
    ca_certs = verify if isinstance(verify, str) else None
    manager = urllib3.PoolManager(ca_certs=ca_certs, cert_reqs="CERT_REQUIRED" if verify else "CERT_NONE")

    def run():
        path = os.path.join(out, "single.partial")
        digest = hashlib.sha256()
        response = manager.request("GET", url_for(False), preload_content=False)
        with open(path, "wb") as handle:
            for piece in response.stream(1 * MIB):
                digest.update(piece)
                handle.write(piece)
        response.release_conn()
        assert "sha256:" + digest.hexdigest() == desc.digest
        os.unlink(path)
    return run


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", maxsplit=1)[0])
    parser.add_argument("--size", default="256M")
    parser.add_argument("--connections", default="1,2,4,8")
    parser.add_argument("--chunk-size", default="16M")
    parser.add_argument("--bandwidth-per-connection", default="0")
    parser.add_argument("--first-byte-latency", type=float, default=0.0)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--tls", action="store_true")
    args = parser.parse_args(argv)
    size = parse_bytes(args.size)
    chunk_size = parse_bytes(args.chunk_size)
    work = tempfile.mkdtemp(prefix="ecrkit-bench-")
    try:
        with run_emulator(work, mode="subprocess", tls=args.tls,
                          bandwidth_per_connection=args.bandwidth_per_connection) as endpoint:
            client = endpoint.client()
            image = sample_images.build_random_image(os.path.join(work, "layout"), "bench", count=1, size=size,
                                                     seed="bench")
            sample_images.push_image(client, image, REPOSITORY, create_repository=True)
            desc = image.layers[0]
            if args.first_byte_latency:
                endpoint.set_faults(f"stall-blob:after=0,seconds={args.first_byte_latency},count=1000000000")
            out = os.path.join(work, "out")
            os.mkdir(out)
            verify = endpoint.ca_bundle if args.tls else True

            def url_for(refresh):  # pylint: disable=unused-argument
                return client.get_download_url_for_layer(repositoryName=REPOSITORY, layerDigest=desc.digest)["downloadUrl"]

            mib = desc.size / MIB
            rows = [("urllib3 single GET + sha256 + write", single_stream_run(url_for, desc, out, verify))]
            rows += [(f"download_blobs P={count} chunk={chunk_size // MIB}M",
                      engine_run(url_for, desc, out, int(count), chunk_size, verify))
                     for count in args.connections.split(",")]
            sys.stdout.write(f"blob {desc.size} bytes, {'https' if args.tls else 'http'} loopback, bandwidth per "
                             f"connection {args.bandwidth_per_connection}, first-byte latency "
                             f"{args.first_byte_latency:g} s, median of {args.repeat}\n")
            for name, run in rows:
                run()  # warm the page cache and the connection
                wall, cpu = measure(run, args.repeat)
                sys.stdout.write(f"{name:40s} {mib / wall:8.0f} MiB/s   {cpu / (mib / 1024):5.2f} CPU s/GiB\n")
                sys.stdout.flush()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
