# Copyright: Contributors to the ecrkit.images project
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""A private containerd for tests: its own root, state directory and socket under one directory.

It never touches a system containerd: the config names every path, the CRI plugin is disabled (no
Kubernetes here), and the daemon is stopped (SIGTERM, then SIGKILL) when the block ends.

    from private_containerd import run_containerd

    with run_containerd(str(tmp_path / "containerd")) as daemon:
        daemon.ctr("images", "ls")            # ctr bound to this daemon's socket
        daemon.address                        # the socket path

As a command (used by scripts/with-emulator.sh):

    python3 private_containerd.py start DIR   # prints the socket path once it answers; daemon keeps running
    python3 private_containerd.py stop DIR
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from typing import Iterator, List, Optional

READY_TIMEOUT = 30.0

CONFIG = """version = 2
root = "{root}"
state = "{state}"
disabled_plugins = ["io.containerd.grpc.v1.cri"]

[grpc]
  address = "{socket}"

[ttrpc]
  address = "{socket}.ttrpc"

[debug]
  address = "{socket}.debug"
  level = "warn"

[metrics]
  address = ""
{gc}"""

# Unit tests make containerd collect garbage when they mean to (`ctr images rm --sync` waits for a
# collection); one at a moment of the daemon's choosing (100 ms after start, or after 100 changes) raced
# with tests that ingest content before anything references it, and made them fail now and then under
# load. The fault matrix keeps containerd's own schedule: a collection at any moment is one of its faults.
ON_DEMAND_GC = """
[plugins."io.containerd.gc.v1.scheduler"]
  startup_delay = "24h"
  deletion_threshold = 0
  mutation_threshold = 1000000
"""


def available() -> Optional[str]:
    """Why a private containerd cannot run here, or None when it can."""
    for binary in ("containerd", "ctr"):
        if not shutil.which(binary):
            return f"{binary} is not installed (apt-get install containerd)"
    if os.geteuid() != 0:
        return "containerd needs root"
    return None


class PrivateContainerd:
    def __init__(self, directory: str, scheduled_gc: bool = False) -> None:
        self.directory = os.path.abspath(directory)
        self.scheduled_gc = scheduled_gc
        # unix socket paths are limited to 108 bytes: keep the socket short, in its own temp dir if needed
        self.address = os.path.join(self.directory, "c.sock")
        if len(self.address) > 100:
            self.address = os.path.join("/tmp", f"ecrkit-ctd-{os.getpid()}-{abs(hash(self.directory)) % 10**8}.sock")
        self.root = os.path.join(self.directory, "root")
        self.state = os.path.join(self.directory, "state")
        self.config = os.path.join(self.directory, "config.toml")
        self.log = os.path.join(self.directory, "containerd.log")
        self.pid_file = os.path.join(self.directory, "containerd.pid")
        self.process: Optional[subprocess.Popen] = None

    def start(self) -> "PrivateContainerd":
        os.makedirs(self.directory, exist_ok=True)
        with open(self.config, "w", encoding="utf-8") as handle:
            handle.write(CONFIG.format(root=self.root, state=self.state, socket=self.address,
                                       gc="" if self.scheduled_gc else ON_DEMAND_GC))
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(["containerd", "--config", self.config], stdout=log, stderr=log,
                                            stdin=subprocess.DEVNULL, start_new_session=True)
        with open(self.pid_file, "w", encoding="utf-8") as handle:
            handle.write(str(self.process.pid))
        deadline = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"containerd exited with {self.process.returncode}; see {self.log}")
            if os.path.exists(self.address) and self._answers():
                return self
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"containerd did not answer on {self.address} within {READY_TIMEOUT:.0f} s; see {self.log}")

    def _answers(self) -> bool:
        done = subprocess.run(["ctr", "--address", self.address, "version"], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, timeout=10, check=False)
        return done.returncode == 0

    def ctr(self, *args: str, namespace: str = "default", check: bool = True) -> str:
        """Run ctr against this daemon; return its standard output."""
        done = subprocess.run(["ctr", "--address", self.address, "--namespace", namespace, *args],
                              capture_output=True, text=True, timeout=300, check=False)
        if check and done.returncode != 0:
            raise RuntimeError(f"ctr {' '.join(args)} failed ({done.returncode}): {done.stderr.strip()}")
        return done.stdout

    def image_names(self, namespace: str = "default") -> List[str]:
        return sorted(self.ctr("images", "ls", "-q", namespace=namespace).split())

    def stop(self) -> None:
        pid = self.process.pid if self.process else _read_pid(self.pid_file)
        if pid:
            _terminate(pid)
        if self.process:
            self.process.wait(timeout=30)
        _unmount_under(self.directory)
        for path in (self.address, f"{self.address}.ttrpc", f"{self.address}.debug"):
            with contextlib.suppress(OSError):
                os.unlink(path)

    def remove(self) -> None:
        _unmount_under(self.directory)
        shutil.rmtree(self.directory, ignore_errors=True)


def _read_pid(path: str) -> Optional[int]:
    try:
        with open(path, encoding="utf-8") as handle:
            return int(handle.read().strip())
    except (OSError, ValueError):
        return None


def _terminate(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        with contextlib.suppress(ChildProcessError):
            if os.waitpid(pid, os.WNOHANG)[0] == pid:
                return
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def _unmount_under(directory: str) -> None:
    """Unmount whatever the daemon left mounted below ``directory`` (overlay snapshots, tmpmounts)."""
    try:
        with open("/proc/self/mounts", encoding="utf-8") as handle:
            points = [line.split()[1] for line in handle]
    except OSError:
        return
    for point in sorted((p for p in points if p.startswith(directory + os.sep)), key=len, reverse=True):
        subprocess.run(["umount", "-l", point], check=False, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


@contextlib.contextmanager
def run_containerd(directory: str, scheduled_gc: bool = False) -> Iterator[PrivateContainerd]:
    daemon = PrivateContainerd(directory, scheduled_gc).start()
    try:
        yield daemon
    finally:
        daemon.stop()
        daemon.remove()


def main(argv: List[str]) -> int:
    if len(argv) != 2 or argv[0] not in ("start", "stop"):
        print(__doc__, file=sys.stderr)
        return 2
    daemon = PrivateContainerd(argv[1])
    if argv[0] == "start":
        reason = available()
        if reason:
            print(f"cannot start a private containerd: {reason}", file=sys.stderr)
            return 1
        daemon.start()
        daemon.process = None  # keep it running after this command returns
        print(daemon.address)
        return 0
    daemon.stop()
    daemon.remove()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))


try:
    import pytest
except ImportError:  # only the fixture needs pytest
    pytest = None

if pytest is not None:
    @pytest.fixture
    def private_containerd(tmp_path):
        """A private containerd for one test (function scope, like the ECR endpoint fixture). Where it
        cannot run the test is skipped, except under CI (CI set), where the suite must not skip it."""
        reason = available()
        if reason:
            if os.environ.get("CI"):
                pytest.fail(f"a private containerd is required in CI: {reason}")
            pytest.skip(reason)
        with run_containerd(str(tmp_path / "containerd")) as daemon:
            yield daemon
