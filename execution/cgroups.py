"""A kernel cap on everything one sandboxed run starts: its processes' memory together, and
their number, in a cgroup of the run's own (cgroup v1's memory and pids controllers).

Why: rlimits bound each process, not their sum. A program that forks 40 children of 400 MB
each passes every per-process cap and takes the machine, and the kernel's OOM killer then
picks the largest process: the solver with its engine. In a group the kernel charges every
page of every process (tmpfs files included) to the run, and stops it at its cap.

v1 has no "kill the group" and its OOM killer kills one process at a time, so the run
(execution/sandbox.py) watches the group's OOM kills and kills every task of the group itself
once there is one. `memory.max_usage_in_bytes` gives the run's peak. Where no group can be made
(not root, no v1 memory and pids hierarchies, as under cgroup v2 alone), `make` says None
and the sandbox falls back to rlimits with a smaller task cap (`sandbox.task_cap`).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import signal
import time
import uuid
from pathlib import Path

log = logging.getLogger(__name__)
CONTROLLERS = ("memory", "pids")


@functools.cache
def roots() -> dict[str, Path] | None:
    """Our own group in each controller's v1 hierarchy (runs go below it, so that whatever
    caps us caps them), if we may make groups there; None otherwise (said once, in the log)."""
    mounts: dict[str, Path] = {}
    with contextlib.suppress(OSError):
        for line in Path("/proc/mounts").read_text().splitlines():
            _, where, kind, opts, *_ = line.split()
            for c in CONTROLLERS:
                if kind == "cgroup" and c in opts.split(","):
                    mounts[c] = Path(where)
    ours: dict[str, str] = {}
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/cgroup").read_text().splitlines():
            _, names, path = line.split(":", 2)
            for c in names.split(","):
                ours[c] = path
    found = {c: mounts[c] / ours.get(c, "/").lstrip("/") for c in CONTROLLERS if c in mounts}
    if len(found) < len(CONTROLLERS) or not all(os.access(p, os.W_OK) for p in found.values()):
        log.info("no cgroup per run here (v1 memory and pids hierarchies: %s); rlimits only", found or "none")
        return None
    return found


class RunGroup:
    """One run's group: at most `memory_mb` of memory and `tasks` processes and threads."""

    def __init__(self, dirs: dict[str, Path], memory_mb: int, tasks: int):
        self.dirs = dirs
        mem = dirs["memory"]
        (mem / "memory.limit_in_bytes").write_text(str(memory_mb << 20))
        if (mem / "memory.memsw.limit_in_bytes").exists():  # no swapping past the cap either
            (mem / "memory.memsw.limit_in_bytes").write_text(str(memory_mb << 20))
        (dirs["pids"] / "pids.max").write_text(str(tasks))

    def procs_files(self) -> list[Path]:
        """Where a process writes its pid to join the group (the sandbox's child, before exec)."""
        return [d / "cgroup.procs" for d in self.dirs.values()]

    def hit_cap(self) -> bool:
        """Whether the kernel found the run's memory at its cap with nothing left to reclaim
        and killed one of its processes (`oom_kill`; kernels before 4.13: the cap was reached)."""
        mem = self.dirs["memory"]
        for line in (mem / "memory.oom_control").read_text().splitlines():
            if line.startswith("oom_kill "):
                return int(line.split()[1]) > 0
        return int((mem / "memory.failcnt").read_text()) > 0

    def peak_mb(self) -> float:
        return int((self.dirs["memory"] / "memory.max_usage_in_bytes").read_text()) / 2**20

    def pids(self) -> list[int]:
        return [int(p) for p in (self.dirs["pids"] / "cgroup.procs").read_text().split()]

    def kill(self, wait_s: float = 30) -> None:
        """SIGKILL every task of the group until none is left (a fork in flight adds one)."""
        deadline = time.monotonic() + wait_s
        while (left := self.pids()) and time.monotonic() < deadline:
            for pid in left:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.01)

    def close(self) -> None:
        self.kill()
        for d in self.dirs.values():
            with contextlib.suppress(OSError):  # a task stuck in the kernel keeps it: left for the next start
                d.rmdir()


def make(memory_mb: int, tasks: int) -> RunGroup | None:
    """A fresh group for one run, or None where groups cannot be made here."""
    base = roots()
    if base is None:
        return None
    name = f"codemcq-run-{uuid.uuid4().hex[:12]}"
    dirs = {c: base[c] / name for c in CONTROLLERS}
    try:
        for d in dirs.values():
            d.mkdir()
        return RunGroup(dirs, memory_mb, tasks)
    except OSError as e:
        log.warning("cgroup %s: %s; this run has rlimits only", name, e)
        for d in dirs.values():
            with contextlib.suppress(OSError):
                d.rmdir()
        return None
