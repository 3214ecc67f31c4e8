# Copyright: Contributors to the ecrkit.images project
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Benchmark callback: how long every task took on every host, as JSON (bench/scenario_ansible.py).

Enabled with ANSIBLE_CALLBACK_PLUGINS=bench/callback_plugins and ANSIBLE_CALLBACKS_ENABLED=task_times;
the file is named by ECRKIT_BENCH_TASK_TIMES and written when the playbook ends (also after a failed task).
"""

from __future__ import annotations

DOCUMENTATION = """
    name: task_times
    type: aggregate
    short_description: Write per-task, per-host durations and key result fields to a JSON file
    description:
      - One record per task result, with the seconds from the task's start (as the controller announces
        it) to that host's result, the seconds from the worker's start for the host, and changed/failed
        and a few result fields the benchmark checks (api_calls, bytes_transferred, elapsed, containerd).
      - The file named by E(ECRKIT_BENCH_TASK_TIMES) is written when the playbook ends.
    requirements:
      - enabled in the configuration (callbacks_enabled)
"""

import json
import os
import time

from ansible.plugins.callback import CallbackBase

OUTPUT_ENV = "ECRKIT_BENCH_TASK_TIMES"
KEPT_FIELDS = ("api_calls", "retries", "bytes_transferred", "elapsed", "digest", "msg")


class CallbackModule(CallbackBase):
    """Collects a record per task result; writes them all when the playbook ends."""

    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "aggregate"
    CALLBACK_NAME = "task_times"
    CALLBACK_NEEDS_ENABLED = True

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.output = os.environ.get(OUTPUT_ENV, "")
        self.origin = time.perf_counter()
        self.task_started = {}  # task uuid -> seconds since origin
        self.host_started = {}  # (task uuid, host) -> seconds since origin
        self.records = []
        self.written = False

    def _now(self):
        return time.perf_counter() - self.origin

    def v2_playbook_on_task_start(self, task, is_conditional):
        self.task_started[task._uuid] = self._now()  # pylint: disable=protected-access

    def v2_playbook_on_handler_task_start(self, task):
        self.v2_playbook_on_task_start(task, False)

    def v2_runner_on_start(self, host, task):
        self.host_started[(task._uuid, host.get_name())] = self._now()  # pylint: disable=protected-access

    def _record(self, result, status):
        end = self._now()
        task = getattr(result, "task", None) or result._task  # pylint: disable=protected-access
        host = (getattr(result, "host", None) or result._host).get_name()  # pylint: disable=protected-access
        data = getattr(result, "result", None)
        if data is None:
            data = result._result  # pylint: disable=protected-access
        uuid = task._uuid  # pylint: disable=protected-access
        start = self.task_started.get(uuid, end)
        host_start = self.host_started.get((uuid, host), start)
        record = {
            "task": task.get_name(),
            "action": task.action,
            "host": host,
            "status": status,
            "start": round(start, 6),
            "end": round(end, 6),
            "seconds": round(end - start, 6),
            "host_seconds": round(end - host_start, 6),
            "changed": bool(data.get("changed", False)),
            "failed": status in ("failed", "unreachable"),
        }
        for name in KEPT_FIELDS:
            if name in data:
                record[name] = data[name]
        if isinstance(data.get("containerd"), dict):
            record["containerd_commands"] = data["containerd"].get("commands")
        self.records.append(record)

    def v2_runner_on_ok(self, result):
        self._record(result, "ok")

    def v2_runner_on_failed(self, result, ignore_errors=False):
        self._record(result, "failed")

    def v2_runner_on_unreachable(self, result):
        self._record(result, "unreachable")

    def v2_runner_on_skipped(self, result):
        self._record(result, "skipped")

    def v2_playbook_on_stats(self, stats):
        self._write()

    def _write(self):
        if self.written or not self.output:
            return
        self.written = True
        with open(self.output + ".tmp", "w", encoding="utf-8") as handle:
            json.dump({"records": self.records, "seconds": round(self._now(), 6)}, handle, indent=1)
        os.replace(self.output + ".tmp", self.output)
