# Copyright: Contributors to the ecrkit.images project
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Scenarios 5 and 6: the modules as Ansible runs them, through ``ansible-playbook``.

5. Idempotent re-run. bench/playbooks/idempotent.yml runs rounds of: ``ansible.builtin.ping`` (the
   floor: the cost of any module task), ``ecr_image_pull`` into an OCI layout that already holds the
   image, ``ecr_image_push`` of an image the repository already holds, and (when a private containerd
   can run) ``ecr_image_pull`` into containerd that already holds it. Every task of every round is its
   own task, timed by bench/callback_plugins/task_times.py from the task's start to its result. A pull
   or push that reports changed fails the scenario. Figures: the median over every round of the
   ``bench.repeat`` runs (no warm-up run), and apart the median of each run's first round
   (``first_round_s``), which also pays for building the module's AnsiballZ payload, as a real re-run
   does once per module. The goal: the pull task within 1.5x the ping task, and one API call
   (BatchGetImage) per unchanged pull. The endpoint counts the calls of every run; they should add up
   to what the tasks report and be BatchGetImage only (else a WARNING line and
   ``endpoint_calls_unaccounted``).

6. Fleet. bench/playbooks/fleet.yml pulls one small image (2 layers, made here) onto 20 inventory
   hosts (``ansible_connection=local``, a destination directory each) with ``--forks 10``: wall time
   of ``ansible-playbook`` and the endpoint's API calls, for the first run (everything downloads), a
   second run (nothing changes) and the same play's ping task alone (the floor).

Each ``ansible-playbook`` runs with an empty ansible.cfg (defaults: no pipelining), its temp
directories and output under the scenario's scratch directory; its output is shown only on failure.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any, Callable, Dict, List, Optional, Tuple

import harness
import sample_images
from private_containerd import available as containerd_unavailable
from scenario_memory import attempt

from ansible_collections.ecrkit.images.plugins.module_utils import ecr, pull  # pylint: disable=wrong-import-order

MIB = harness.MIB
HERE = os.path.dirname(os.path.abspath(__file__))
PLAYBOOKS = os.path.join(HERE, "playbooks")
CALLBACKS = os.path.join(HERE, "callback_plugins")
TIMES_ENV = "ECRKIT_BENCH_TASK_TIMES"

ROUNDS, QUICK_ROUNDS = 3, 2
GOAL_RATIO = 1.5
GOAL_PULL_CALLS = 1
FLEET_HOSTS, FLEET_FORKS = 20, 10
FLEET_IMAGE = (2, 8 * MIB)  # layers x bytes, in both full and quick runs
TITLE_5 = "Ansible: a re-run that changes nothing (seconds per task; reference: the ping task)"
TITLE_6 = "Ansible: one image onto a fleet (ansible-playbook wall time; reference: the same play's ping)"


# -- running ansible-playbook --------------------------------------------------------------------

class Playbook:
    """``ansible-playbook`` against the laid-out collection, the endpoint's credentials and the timing callback."""

    def __init__(self, handle: Any, work: str) -> None:
        self.work = work
        os.makedirs(work, exist_ok=True)
        config = os.path.join(work, "ansible.cfg")
        with open(config, "w", encoding="utf-8") as out:
            out.write("# empty: ansible-core's defaults\n[defaults]\n")
        self.times = os.path.join(work, "task_times.json")
        self.log = os.path.join(work, "ansible-playbook.log")
        self.env = dict(os.environ, **handle.env())
        self.env.update({
            "ANSIBLE_CONFIG": config,
            "ANSIBLE_COLLECTIONS_PATH": harness.ROOT,
            "ANSIBLE_CALLBACK_PLUGINS": CALLBACKS,
            "ANSIBLE_CALLBACKS_ENABLED": "task_times",
            TIMES_ENV: self.times,
            "ANSIBLE_LOCAL_TEMP": os.path.join(work, "tmp-local"),
            "ANSIBLE_REMOTE_TEMP": os.path.join(work, "tmp-remote"),
            "ANSIBLE_LOCALHOST_WARNING": "false",
            "ANSIBLE_INVENTORY_UNPARSED_WARNING": "false",
            "ANSIBLE_NOCOLOR": "1",
        })
        self.binary = os.path.join(os.path.dirname(sys.executable), "ansible-playbook")

    def run(self, playbook: str, variables: Dict[str, Any], *args: str) -> Tuple[float, List[Dict[str, Any]]]:
        """Run one playbook; (wall seconds, the callback's records). A failed run raises with its output."""
        extra = os.path.join(self.work, "vars.json")
        harness.write_json(extra, variables)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.times)
        argv = [self.binary, os.path.join(PLAYBOOKS, playbook), "-e", f"@{extra}", *args]
        with open(self.log, "wb") as log:
            started = time.perf_counter()
            done = subprocess.run(argv, env=self.env, cwd=self.work, stdout=log, stderr=subprocess.STDOUT,
                                  stdin=subprocess.DEVNULL, check=False)
            wall = time.perf_counter() - started
        records = []
        if os.path.exists(self.times):
            with open(self.times, encoding="utf-8") as handle:
                records = json.load(handle)["records"]
        failed = [record for record in records if record["failed"]]
        if done.returncode != 0 or failed:
            with open(self.log, encoding="utf-8", errors="replace") as handle:
                tail = handle.read()[-6000:]
            raise RuntimeError(f"ansible-playbook {playbook} {' '.join(args)} failed ({done.returncode}); "
                               f"failed tasks: {[(r['task'], r['host'], r.get('msg')) for r in failed]}\n{tail}")
        return wall, records


def _stats(samples: List[float]) -> harness.Stats:
    return harness.Stats(statistics.median(samples), min(samples), max(samples), list(samples))


def _median(values: List[Any]) -> Any:
    numbers = [value for value in values if isinstance(value, (int, float))]
    return round(statistics.median(numbers), 4) if numbers else None


def _show(line: str) -> None:
    sys.stdout.write(f"      {line}\n")
    sys.stdout.flush()


def _connect(handle: Any) -> Callable[[Any], ecr.EcrRepository]:
    return lambda ref: ecr.EcrRepository(handle.client(), ref)


def _prime(handle: Any, ref: str, dest: str, **params: Any) -> Dict[str, Any]:
    """Pull with module_utils (untimed), so the playbook's pulls find the image already there."""
    return pull.pull(pull.PullOptions.from_params(ref=ref, dest=dest, **params), _connect(handle))


# -- scenario 5: idempotent re-run ---------------------------------------------------------------

ECR_TASKS = ("pull oci", "push oci", "pull containerd")
CONTAINERD_TOOL = "ecr_image_pull task, format containerd"


def idempotent(bench: harness.Bench) -> None:
    handle = bench.endpoint(tls=False)
    image = bench.image("multi4")
    ref = bench.ecr_ref(handle, image)
    work = tempfile.mkdtemp(prefix="ansible-idempotent-", dir=bench.work)
    try:
        attempt(bench, "5", f"re-run changing nothing, {image.name}", "ansible-playbook",
                lambda: _idempotent(bench, handle, image, ref, work))
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _idempotent(bench: harness.Bench, handle: Any, image: harness.Image, ref: str, work: str) -> None:
    dest = os.path.join(work, "dest")
    _prime(handle, ref, dest=dest)
    variables: Dict[str, Any] = {"bench_ref": ref, "bench_dest": dest, "bench_src": image.layout,
                                 "bench_src_tag": image.tag, "bench_containerd_address": "",
                                 "bench_rounds": QUICK_ROUNDS if bench.quick else ROUNDS}
    args: List[str] = []
    why_not = containerd_unavailable()
    if why_not is None:

        def prime_containerd() -> str:
            daemon = bench.containerd()
            _prime(handle, ref, dest=os.path.join(work, "containerd-staging"), format="containerd",
                   containerd_address=daemon.address)
            return daemon.address

        variables["bench_containerd_address"] = attempt(bench, "5", f"re-run changing nothing, {image.name}",
                                                        CONTAINERD_TOOL, prime_containerd) or ""
    else:
        _show(f"no containerd task: {why_not}")
    if not variables["bench_containerd_address"]:
        args = ["--skip-tags", "containerd"]
    playbook = Playbook(handle, os.path.join(work, "ansible"))

    runs: List[Dict[str, List[Dict[str, Any]]]] = []  # per run: task name -> its records
    endpoint_runs: List[Dict[str, Any]] = []

    def run() -> Dict[str, Any]:
        handle.reset_stats()
        dummy, records = playbook.run("idempotent.yml", variables, *args)
        calls = handle.stats()
        by_task: Dict[str, List[Dict[str, Any]]] = {}
        for record in records:
            by_task.setdefault(record["task"], []).append(record)
        for name in ECR_TASKS:
            changed = [record for record in by_task.get(name, []) if record["changed"]]
            if changed:
                raise RuntimeError(f"scenario 5: the '{name}' task changed something on a re-run "
                                   f"({len(changed)} of {len(by_task[name])}): {changed[0]}")
        reported = sum(record.get("api_calls", 0) for name in ECR_TASKS for record in by_task.get(name, []))
        runs.append(by_task)
        endpoint_runs.append({"total": calls["api_calls_total"], "ops": calls["api_calls"], "reported": reported})
        return {"api_calls_endpoint": calls["api_calls_total"], "api_calls_reported": reported}

    # no warm-up run: the rounds of a run are the repeats, and the first round's figure is kept apart
    bench.measure(run, warmup=False)
    rounds = variables["bench_rounds"]

    def samples(name: str, field: str = "seconds") -> List[Any]:
        return [record.get(field) for by_task in runs for record in by_task.get(name, [])]

    def first_rounds(name: str) -> Optional[float]:
        return _median([by_task[name][0]["seconds"] for by_task in runs if by_task.get(name)])

    case = f"re-run changing nothing, {image.name}"
    ping = _stats(samples("ping"))
    ping_first = first_rounds("ping")
    bench.record("5", case, "ansible.builtin.ping task (floor)", ping, reference=True, scenario_title=TITLE_5,
                 rounds=rounds, runs=len(runs), first_round_s=ping_first)
    ops: Dict[str, int] = {}
    for entry in endpoint_runs:
        for operation, count in entry["ops"].items():
            ops[operation] = ops.get(operation, 0) + count
    unaccounted = sum(entry["total"] - entry["reported"] for entry in endpoint_runs)
    tasks = sum(len(samples(name)) for name in ECR_TASKS)
    _show(f"endpoint: {sum(e['total'] for e in endpoint_runs)} API calls for {tasks} pull/push tasks over {len(runs)} "
          f"runs {ops}; reported by the tasks: {sum(e['reported'] for e in endpoint_runs)}")
    if unaccounted:
        _show(f"WARNING: the endpoint counted {unaccounted} more API calls than the tasks reported")
    if set(ops) - {"BatchGetImage"}:
        _show(f"WARNING: re-runs made other calls than BatchGetImage: {ops}")

    tools = (("pull oci", "ecr_image_pull task, format oci"), ("push oci", "ecr_image_push task, src_format oci"),
             ("pull containerd", CONTAINERD_TOOL))
    for name, tool in tools:
        seconds = samples(name)
        if not seconds:
            continue
        stats = _stats(seconds)
        ratio = round(stats.median / ping.median, 2)
        calls = max((n for n in samples(name, "api_calls") if n is not None), default=None)
        first = first_rounds(name)
        extra: Dict[str, Any] = {
            "ratio_to_ping": ratio, "api_calls": calls, "module_elapsed_s": _median(samples(name, "elapsed")),
            "first_round_s": first, "first_round_ratio_to_ping": round(first / ping_first, 2) if first and ping_first else None,
            "rounds": rounds, "runs": len(runs), "endpoint_calls_unaccounted": unaccounted, "endpoint_ops": ops,
        }
        if name.startswith("pull"):
            met = ratio <= GOAL_RATIO and calls == GOAL_PULL_CALLS and not unaccounted
            extra.update(goal_ratio=GOAL_RATIO, goal_api_calls=GOAL_PULL_CALLS, within_goal=met,
                         goal="met" if met else "MISSED")
        if name == "pull containerd":
            extra["ctr_commands"] = max((n for n in samples(name, "containerd_commands") if n is not None), default=None)
        bench.record("5", case, tool, stats, **extra)
        verdict = ""
        if "within_goal" in extra:
            verdict = f" (goal <= {GOAL_RATIO}x and {GOAL_PULL_CALLS} call: {extra['goal']})"
        _show(f"{ratio}x the ping task ({extra['first_round_ratio_to_ping']}x in a run's first round), {calls} API call(s) "
              f"a task at most, module's own elapsed {extra['module_elapsed_s']} s"
              + (f", {extra['ctr_commands']} ctr commands" if "ctr_commands" in extra else "") + verdict)


# -- scenario 6: fleet ---------------------------------------------------------------------------

def fleet(bench: harness.Bench) -> None:
    handle = bench.endpoint(tls=False)
    work = tempfile.mkdtemp(prefix="ansible-fleet-", dir=bench.work)
    try:
        attempt(bench, "6", f"{FLEET_HOSTS} hosts, --forks {FLEET_FORKS}", "ansible-playbook",
                lambda: _fleet(bench, handle, work))
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _fleet_image(bench: harness.Bench, handle: Any) -> harness.Image:
    count, size = FLEET_IMAGE
    built = sample_images.build_random_image(bench.layout, "fleet", count=count, size=size, seed="bench-fleet",
                                             compress=False)
    sample_images.push_image(handle.client(), built, harness.REPOSITORY, create_repository=True)
    return harness.Image(name="fleet", layout=bench.layout, tag="fleet", built=built)


def _fleet(bench: harness.Bench, handle: Any, work: str) -> None:
    image = _fleet_image(bench, handle)
    ref = bench.ecr_ref(handle, image)
    dests = os.path.join(work, "hosts")
    hosts = {f"node{number:02d}": {"fleet_dest": os.path.join(dests, f"node{number:02d}")}
             for number in range(1, FLEET_HOSTS + 1)}
    inventory = os.path.join(work, "inventory.json")  # JSON is YAML: the yaml inventory plugin reads it
    harness.write_json(inventory, {"fleet": {"hosts": hosts, "vars": {
        "ansible_connection": "local", "ansible_python_interpreter": sys.executable}}})
    playbook = Playbook(handle, os.path.join(work, "ansible"))
    args = ["-i", inventory, "--forks", str(FLEET_FORKS)]
    variables = {"fleet_ref": ref}
    layers = len(image.built.blob_descriptors()) - 1  # config and layers: what a first pull asks URLs for

    def play(tag: str, expect_changed: Optional[bool]) -> Callable[[], Dict[str, Any]]:
        def run() -> Dict[str, Any]:
            handle.reset_stats()
            dummy, records = playbook.run("fleet.yml", variables, *args, "--tags", tag)
            calls = handle.stats()
            results = [record for record in records if record["task"] == tag]
            if len(results) != FLEET_HOSTS:
                raise RuntimeError(f"scenario 6: {len(results)} results for the '{tag}' task, expected {FLEET_HOSTS}")
            if expect_changed is not None:
                wrong = [record["host"] for record in results if record["changed"] != expect_changed]
                if wrong:
                    raise RuntimeError(f"scenario 6: expected changed={expect_changed} on every host; not on {wrong}")
            span = max(record["end"] for record in results) - min(record["start"] for record in results)
            return {"api_calls": calls["api_calls_total"], "task_span_s": span,
                    "api_calls_reported": sum(record.get("api_calls", 0) for record in results),
                    "BatchGetImage": calls["api_calls"].get("BatchGetImage", 0),
                    "GetDownloadUrlForLayer": calls["api_calls"].get("GetDownloadUrlForLayer", 0)}
        return run

    case = f"{FLEET_HOSTS} hosts, --forks {FLEET_FORKS}, {image.name} ({round(image.size / MIB)} MiB)"
    runs = (
        ("ansible.builtin.ping (floor)", "ping", None, None, {"reference": True}),
        ("ecr_image_pull, first run (downloads)", "pull", True, lambda: shutil.rmtree(dests, ignore_errors=True),
         {"goal_api_calls": FLEET_HOSTS * (1 + layers)}),
        ("ecr_image_pull, second run (unchanged)", "pull", False, None, {"goal_api_calls": FLEET_HOSTS}),
    )

    def measure(tool: str, tag: str, expect: Optional[bool], setup: Optional[Callable[[], Any]],
                goals: Dict[str, Any]) -> None:
        # one warm-up run in all (the first, a ping): the first pull run's setup empties the hosts anyway,
        # and the second pull run's state is what the first run's last repeat left
        stats = bench.measure(play(tag, expect), setup=setup, warmup=tag == "ping")
        extra = dict(goals, **stats.extra)
        if "goal_api_calls" in goals:
            extra["within_goal"] = stats.extra["api_calls"] <= goals["goal_api_calls"]
        bench.record("6", case, tool, stats, scenario_title=TITLE_6, hosts=FLEET_HOSTS, forks=FLEET_FORKS,
                     image_mib=round(image.size / MIB, 1), **extra)
        _show(f"task span {stats.extra['task_span_s']:.2f} s, {stats.extra['api_calls']} API calls "
              f"({stats.extra['BatchGetImage']} BatchGetImage, {stats.extra['GetDownloadUrlForLayer']} GetDownloadUrlForLayer)"
              + (f", goal <= {goals['goal_api_calls']}" if "goal_api_calls" in goals else ""))

    for tool, tag, expect, setup, goals in runs:
        attempt(bench, "6", case, tool, lambda t=tool, g=tag, e=expect, s=setup, o=goals: measure(t, g, e, s, o))


SCENARIOS = {"5": idempotent, "6": fleet}
