# Copyright: Contributors to the ecrkit.images project
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The task pool: results, cancellation on the first failure, interruption, and no thread left behind."""

from __future__ import annotations

import os
import signal
import sys
import threading
import time

import pytest

from ansible_collections.ecrkit.images.plugins.module_utils.blobhttp import BlobHttpError
from ansible_collections.ecrkit.images.plugins.module_utils.download import download_blobs
from ansible_collections.ecrkit.images.plugins.module_utils.pool import TransferCancelled, TransferPool

HERE = os.path.dirname(os.path.abspath(__file__))
EMULATOR_DIR = os.path.join(HERE, "..", "..", "..", "emulator")
for directory in (HERE, EMULATOR_DIR):  # the helpers beside this file, the local ECR endpoint
    if directory not in sys.path:
        sys.path.insert(0, directory)

# pylint: disable=wrong-import-position
from transfer_support import CHUNK, blob_bytes, job_for, pool, transfer_threads  # noqa: E402


def run_all(workers, call, items):
    """``[call(item) for item in items]`` on the workers, as one group."""
    group = workers.group()
    tasks = [group.submit(call, item) for item in items]
    group.wait()
    return [task.result() for task in tasks]


def test_results_come_in_order_and_threads_stay_bounded():
    running = []
    peak = []
    lock = threading.Lock()

    def work(item):
        with lock:
            running.append(item)
            peak.append(len(running))
        time.sleep(0.005)
        with lock:
            running.remove(item)
        return item * item

    with TransferPool(3) as workers:
        assert run_all(workers, work, list(range(20))) == [item * item for item in range(20)]
        assert len(transfer_threads()) <= 3
    assert max(peak) <= 3
    assert not transfer_threads()


def test_first_error_cancels_the_rest_and_no_thread_survives():
    with TransferPool(2) as workers:
        group = workers.group()
        started = threading.Event()

        def sleeper():
            started.set()
            group.sleep(60)

        def failer():
            started.wait(10)
            raise ValueError("boom")

        sleeping = group.submit(sleeper)
        failing = group.submit(failer)
        queued = [group.submit(sleeper) for dummy in range(5)]
        with pytest.raises(ValueError, match="boom"):
            group.wait()
        assert group.cancelled
        with pytest.raises(TransferCancelled):
            sleeping.result()
        with pytest.raises(ValueError):
            failing.result()
        for task in queued:
            assert task.done()
        # the pool stays usable for another group
        assert run_all(workers, lambda item: item + 1, [1, 2]) == [2, 3]
    assert not transfer_threads()


def test_tasks_can_submit_more_tasks_to_their_group():
    results = []
    with TransferPool(2) as workers:
        group = workers.group()

        def spawn(depth):
            results.append(depth)
            if depth < 5:
                group.submit(spawn, depth + 1)

        group.submit(spawn, 0)
        group.wait()
    assert sorted(results) == [0, 1, 2, 3, 4, 5]


def test_a_task_raising_keyboard_interrupt_surfaces_in_the_waiting_thread():
    with TransferPool(2) as workers:
        group = workers.group()
        group.submit(group.sleep, 60)

        def interrupted():
            raise KeyboardInterrupt()

        group.submit(interrupted)
        with pytest.raises(KeyboardInterrupt):
            group.wait()
    assert not transfer_threads()


@pytest.mark.skipif(threading.current_thread() is not threading.main_thread(), reason="needs the main thread")
def test_ctrl_c_while_waiting_cancels_the_group_and_joins_the_workers(blob_server, tmp_path):
    blob = blob_server.add(blob_bytes(8 * CHUNK), hold_from=0)  # every request hangs
    main = threading.main_thread().ident
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pool(2) as workers:
            timer = threading.Timer(0.3, signal.pthread_kill, (main, signal.SIGINT))
            timer.start()
            with pytest.raises(KeyboardInterrupt):
                download_blobs(workers, [job_for(blob, tmp_path)], chunk_size=CHUNK)
            timer.join()
    finally:
        signal.signal(signal.SIGINT, previous)
    assert not transfer_threads()
    # nothing was written, so nothing is left behind
    assert not os.listdir(tmp_path)


def test_a_failing_blob_aborts_a_transfer_blocked_in_a_read(blob_server, tmp_path):
    hung = blob_server.add(blob_bytes(2 * CHUNK), hold_from=0)
    missing = blob_server.add(blob_bytes(100), status=404)
    outcome = []

    def run():
        with pool(3, read_timeout=120) as workers:
            try:
                download_blobs(workers, [job_for(hung, tmp_path), job_for(missing, tmp_path)], chunk_size=CHUNK)
            except BlobHttpError as exc:
                outcome.append(exc)

    runner = threading.Thread(target=run)
    runner.start()
    runner.join(30)  # a hang detector, far below the read timeout: the blocked read must be aborted
    alive = runner.is_alive()
    blob_server.release()
    runner.join(30)
    assert not alive
    assert outcome and outcome[0].status == 404 and outcome[0].digest == missing.digest
