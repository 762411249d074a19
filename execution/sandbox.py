"""Run code taken from questions (hostile input) in a bubblewrap sandbox.

Every run gets fresh user/pid/net/ipc/uts/cgroup namespaces (`bwrap --unshare-all`),
read-only binds of only the toolchains, a size-capped tmpfs /tmp, an empty environment,
an unprivileged uid (if we are root the process really drops root before bwrap, so the
kernel's RLIMIT_NPROC applies) and rlimits set in the child before exec. Where the machine
allows (root, cgroup v1), each run (a compile, a program) is also a cgroup of its own
(execution/cgroups.py): its processes' memory together is capped at `memory_mb` and their
number at 64, and a run that reaches the cap is killed whole (status "killed", the reason
in its stderr, its peak in `peak_mb`). Elsewhere a run may start fewer tasks, so that
per-process caps times tasks stay within UNGROUPED_MB. Compiled
languages compile in one sandbox (the per-run folder bound read-write) and run in a
second (that folder read-only, so the program can only write the capped tmpfs). When
bwrap's init (pid 1 of the run's pid namespace) dies, the kernel kills everything left
inside; a wall timeout, an output cap or the memory cap kills bwrap's whole process group.
No bwrap, no run: status "unavailable", unless the caller asks for `unsafe=True`.
`check_only=True` compiles (or, for Python and JavaScript, parses) and runs nothing.
"""

from __future__ import annotations

import contextlib
import functools
import glob
import hashlib
import json
import os
import re
import resource
import select
import selectors
import shutil
import signal
import subprocess
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Literal

from pydantic import BaseModel

from core.cache import cache_path
from core.journal import atomic_write
from execution import cgroups

PATH = "/usr/bin:/bin"  # the only tools a run sees; /usr/local lives under /usr
ENV = {"PATH": PATH, "HOME": "/tmp", "LANG": "C.UTF-8"}
NOBODY = 65534
VERSION = 2  # part of every cache key: bump when the commands, limits or outcomes change
TMP_MB, FSIZE_MB, NOFILE, NPROC = 64, 16, 64, 64
UNGROUPED_MB = 4096  # without a cgroup: the most a run's processes may hold together (task_cap)
POLL_S = 0.05  # how often a run is checked against its time and memory limits
COMPILE_S, COMPILE_MB = 30.0, 1024  # the compiler's own budget, not the program's (ExecuteConfig's defaults)
TOOLS = {"python": ["python3"], "c": ["gcc"], "cpp": ["g++"], "java": ["javac", "java"],
         "javascript": ["node"]}
FILES = {"python": "main.py", "c": "main.c", "cpp": "main.cpp", "javascript": "main.js"}
# Java and node reserve gigabytes of address space they never touch (heap, code cache,
# V8's pointer cage), so RLIMIT_AS kills them at start. RLIMIT_DATA counts only private
# writable memory, i.e. what they really use; the VM's own heap flag keeps it in bounds.
USES_DATA = {"java", "javascript"}
JVM = ["-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1", "-XX:-UsePerfData"]  # few threads, fast start

Status = Literal["ok", "compile_error", "runtime_error", "timeout", "killed", "unavailable"]


class Result(BaseModel):
    status: Status
    stdout: str = ""
    stderr: str = ""
    exit_code: int | None = None
    seconds: float = 0.0
    truncated: bool = False  # stdout or stderr was cut at max_output (and the run killed)
    peak_mb: float | None = None  # the most memory its processes held together (None: no cgroup here)
    cached: bool = False  # read from the on-disk cache: `seconds` is the original run's


def _which(name: str) -> str | None:
    return shutil.which(name, path=PATH)


@functools.cache
def runtimes() -> dict[str, bool]:
    """Which languages this machine can run (looked up once)."""
    return {lang: all(_which(t) for t in tools) for lang, tools in TOOLS.items()}


@functools.cache
def _binds() -> tuple[str, ...]:
    """Read-only binds of what the toolchains need; merged-/usr symlinks stay symlinks."""
    paths = ["/usr", "/bin", "/lib", "/lib64", "/etc/alternatives", "/etc/ld.so.cache",
             *sorted(glob.glob("/etc/java-*"))]  # the JDK's conf/ links into /etc/java-N
    if java := _which("java"):  # a JDK outside /usr (e.g. /opt) is bound too
        home = str(Path(os.path.realpath(java)).parents[1])
        if not home.startswith("/usr/"):
            paths.append(home)
    args: list[str] = []
    for p in paths:
        if os.path.islink(p) and p.count("/") == 1:
            args += ["--symlink", os.readlink(p), p]
        elif os.path.exists(p):
            args += ["--ro-bind", p, p]
    return tuple(args)


def _bwrap(argv: list[str], work: str, writable: bool) -> list[str]:
    return ["bwrap", "--unshare-all", "--unshare-user", "--disable-userns", "--die-with-parent",
            "--new-session", *_binds(), "--proc", "/proc", "--dev", "/dev", "--remount-ro", "/dev",
            "--size", str(TMP_MB << 20), "--tmpfs", "/dev/shm", "--size", str(TMP_MB << 20),
            "--tmpfs", "/tmp", "--bind" if writable else "--ro-bind", work, "/w",
            "--chdir", "/w" if writable else "/tmp", "--uid", str(NOBODY), "--gid", str(NOBODY),
            "--clearenv", *[a for k, v in ENV.items() for a in ("--setenv", k, v)], "--", *argv]


def _tasks_of(uid: int) -> int:
    """Threads the uid already runs: RLIMIT_NPROC counts them too (and other sandboxes')."""
    n = 0
    for status in glob.glob("/proc/[0-9]*/status"):
        try:
            text = Path(status).read_text()
        except OSError:
            continue
        if int(re.search(r"^Uid:\s+(\d+)", text, re.MULTILINE)[1]) == uid:
            n += int(re.search(r"^Threads:\s+(\d+)", text, re.MULTILINE)[1])
    return n


def grouped() -> bool:
    """Whether each run gets a cgroup here (we are root, and v1 memory and pids are writable)."""
    return os.geteuid() == 0 and cgroups.roots() is not None


def task_cap(memory_mb: int, grouped: bool) -> int:
    """Processes and threads one run may start beyond what its uid already runs. In a cgroup
    the kernel caps their memory together, so 64 (the JVM and node start 15-20 threads).
    Without one only each process is capped, so their number times `memory_mb` must stay
    within UNGROUPED_MB: 8 at 512 MB (too few for Java and node, which then fail to start)."""
    return NPROC if grouped else max(1, min(NPROC, UNGROUPED_MB // memory_mb))


def _child_setup(memory_mb: int, group, use_data: bool, compiler: bool, timeout_s: float):
    """What the child runs before exec: into the run's cgroup, under its rlimits (the
    second line: `memory_mb` for each process), then nobody for good where we are root."""
    root = os.geteuid() == 0
    nproc = _tasks_of(NOBODY if root else os.getuid()) + task_cap(memory_mb, group is not None)
    mem = resource.RLIMIT_DATA if use_data else resource.RLIMIT_AS
    per_process = memory_mb * (4 if compiler and group else 1)
    cpu = int(timeout_s) + 1
    caps = [(resource.RLIMIT_CPU, (cpu, cpu + 1)), (mem, (per_process << 20,) * 2),
            (resource.RLIMIT_NPROC, (nproc, nproc)), (resource.RLIMIT_FSIZE, (FSIZE_MB << 20,) * 2),
            (resource.RLIMIT_NOFILE, (NOFILE, NOFILE)), (resource.RLIMIT_CORE, (0, 0))]
    procs = [str(p) for p in group.procs_files()] if group else []

    def limit() -> None:  # in the child, before exec: syscalls only, no lock a sibling thread
        for path in procs:  # could hold, so safe beside threads. Into the group while still root,
            fd = os.open(path, os.O_WRONLY)  # so everything it starts is in it
            os.write(fd, b"%d" % os.getpid())
            os.close(fd)
        for res, val in caps:
            resource.setrlimit(res, val)
        if root:  # then drop root for good: the kernel applies RLIMIT_NPROC to nobody
            os.setgroups([])
            os.setresgid(NOBODY, NOBODY, NOBODY)
            os.setresuid(NOBODY, NOBODY, NOBODY)

    return limit


def _spawn(argv: list[str], cwd: str, stdin: str, limit, group) -> tuple[subprocess.Popen, int]:
    """The process started, and the read end of the pipe bwrap writes its init's host pid to."""
    info_r, info_w = os.pipe()  # bwrap writes the host pid of its init (the run's pid 1) here
    boxed = argv[0] == "bwrap"
    if boxed:
        argv = [argv[0], "--info-fd", str(info_w), *argv[1:]]
    try:
        with tempfile.TemporaryFile() as fin:  # a file, so a program that never reads cannot block us
            fin.write(stdin.encode())
            fin.seek(0)
            proc = subprocess.Popen(argv, stdin=fin, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                    cwd=cwd, env=ENV, start_new_session=True, preexec_fn=limit,  # noqa: PLW1509
                                    pass_fds=(info_w,) if boxed else ())
    except BaseException:
        os.close(info_r)
        if group:
            group.close()
        raise
    finally:
        os.close(info_w)
    return proc, info_r


def _watch(proc, info_r: int, deadline: float, group, max_output: int) -> tuple[dict, str | None, int | None]:
    """Read both streams (at most max_output bytes each) and bwrap's info until they close
    or a limit is hit: (bytes per fd, why it was stopped or None, a pidfd of bwrap's init)."""
    fds = {proc.stdout.fileno(): bytearray(), proc.stderr.fileno(): bytearray(), info_r: bytearray()}
    why, init = None, None

    def limit_hit() -> str | None:
        if time.monotonic() >= deadline:
            return "timeout"
        return "memory" if group and group.hit_cap() else None

    with selectors.DefaultSelector() as sel:
        for fd in fds:
            sel.register(fd, selectors.EVENT_READ)
        while sel.get_map() and not why and not (why := limit_hit()):
            for key, _ in sel.select(max(min(deadline - time.monotonic(), POLL_S), 0)):
                chunk, buf = os.read(key.fd, 1 << 16), fds[key.fd]
                if not chunk:
                    sel.unregister(key.fd)
                buf += chunk[: max_output + 1 - len(buf)]
                if key.fd == info_r and init is None and (m := re.search(rb'"child-pid": *(\d+)\D', buf)):
                    with contextlib.suppress(OSError):  # bwrap is alive: the pid is still its child's
                        init = os.pidfd_open(int(m[1]))
                elif len(buf) > max_output and key.fd != info_r:
                    why = "output"
    while not why and proc.poll() is None and not (why := limit_hit()):  # the streams closed; not yet exited
        time.sleep(min(POLL_S, max(deadline - time.monotonic(), 0)))
    return fds, why, init


def _end(proc, init: int | None, group, why: str | None) -> None:
    """Kill whatever is left of a run stopped (or not exited), and reap it all."""
    if why or proc.poll() is None:
        if init is not None:
            signal.pidfd_send_signal(init, signal.SIGKILL)  # pid 1 dies: the kernel kills the rest
        with contextlib.suppress(ProcessLookupError):  # pid not reaped yet: the group is ours
            os.killpg(proc.pid, signal.SIGKILL)
        if group:
            group.kill()
    proc.wait()
    if init is not None:  # bwrap may exit before its init: wait until the namespace is empty
        select.select([init], [], [], 30)  # only a task stuck in the kernel takes long
        os.close(init)


def _status(rc: int, why: str | None) -> str:
    sig = -rc if rc < 0 else rc - 128 if rc > 128 else 0  # bwrap exits 128+N on signal N
    return ("timeout" if why == "timeout" or sig == signal.SIGXCPU else
            "killed" if why in ("output", "memory") or sig == signal.SIGKILL else
            "ok" if rc == 0 else "runtime_error")


def _exec(argv: list[str], cwd: str, stdin: str, timeout_s: float, memory_mb: int,
          use_data: bool, max_output: int, compiler: bool = False) -> Result:
    """Run argv in a cgroup of its own (execution/cgroups.py: `memory_mb` for all its processes
    together) under rlimits (`memory_mb` for each) and a wall clock; read at most max_output
    bytes per stream. A run whose group reaches its memory cap is killed whole. A
    compiler's rlimit is 4x its cap where the group holds it: a compiler out of address
    space fails like one that found an error, while one the group stops is `killed`."""
    group = cgroups.make(memory_mb, NPROC) if grouped() else None
    limit = _child_setup(memory_mb, group, use_data, compiler, timeout_s)
    start = time.monotonic()
    proc, info_r = _spawn(argv, cwd, stdin, limit, group)
    fds, why, init = _watch(proc, info_r, start + timeout_s, group, max_output)
    _end(proc, init, group, why)
    peak = None
    if group:
        why = why or ("memory" if group.hit_cap() else None)  # it may have died of it just now
        peak = round(group.peak_mb(), 1)
        group.close()
    out, err = (bytes(fds[f.fileno()][:max_output]).decode("utf-8", "replace")
                for f in (proc.stdout, proc.stderr))
    proc.stdout.close(), proc.stderr.close(), os.close(info_r)
    rc, seconds = proc.returncode, time.monotonic() - start
    if why == "memory":
        err += f"\n[killed: its processes together reached the run's memory cap of {memory_mb} MB]"
    return Result(status=_status(rc, why), stdout=out, stderr=err, exit_code=rc, seconds=round(seconds, 3),
                  truncated=why == "output", peak_mb=peak)


@functools.cache
def available() -> str | None:
    """The sandbox mechanism that works here ("bwrap"), or None: probed once with a real run."""
    if not _which("bwrap"):
        return None
    with tempfile.TemporaryDirectory(prefix="codemcq-exec-") as work:
        _own(work)
        r = _exec(_bwrap(["/bin/true"], work, False), work, "", 10, 256, False, 1000)
    return "bwrap" if r.status == "ok" else None


def _own(work: str) -> None:
    if os.geteuid() == 0:  # the sandbox runs as nobody: it must reach and write its folder
        for p in [work, *glob.glob(f"{work}/*")]:
            os.chown(p, NOBODY, NOBODY)


def java_class(source: str) -> str:
    """The class `java` must run: the public class, else the one with main, else Main."""
    m = (re.search(r"\bpublic\s+(?:(?:final|abstract|static)\s+)*class\s+(\w+)", source)
         or re.search(r"\bclass\s+(\w+)[^{]*\{(?:(?!\bclass\s).)*?static\s+void\s+main\b", source, re.DOTALL))
    return m[1] if m else "Main"


def _java_package(source: str) -> str:
    m = re.search(r"^\s*package\s+([\w.]+)\s*;", source, re.MULTILINE)
    return f"{m[1]}." if m else ""


def _commands(lang: str, source: str, w: str, memory_mb: int) -> tuple[str, list[str] | None, list[str]]:
    """(file name, compile argv or None, run argv); `w` is the work folder as the run sees it."""
    gcc = ["-O2", "-pipe", "-o", f"{w}/prog"]
    if lang == "java":
        name = java_class(source)
        return (f"{name}.java", ["javac", "-J-Xmx512m", *[f"-J{o}" for o in JVM], "-proc:none",
                "-encoding", "UTF-8", "-d", w, f"{w}/{name}.java"],
                ["java", f"-Xmx{memory_mb // 2}m", *JVM, "-cp", w, _java_package(source) + name])
    f = FILES[lang]
    return f, *{"python": (None, ["python3", "-I", "-S", f"{w}/{f}"]),
                "c": (["gcc", *gcc, f"{w}/{f}", "-lm"], [f"{w}/prog"]),
                "cpp": (["g++", "-std=c++17", *gcc, f"{w}/{f}"], [f"{w}/prog"]),
                "javascript": (None, ["node", f"--max-old-space-size={memory_mb // 2}", f"{w}/{f}"])}[lang]


# Parse without running: Python's compile() and node --check (the interpreters' own compilers)
CHECK = {"python": ["python3", "-I", "-S", "-c",
                    "import sys; compile(open(sys.argv[1], 'rb').read(), 'main.py', 'exec')"],
         "javascript": ["node", "--check"]}


def run(language: str, source: str, *, stdin: str = "", timeout_s: float = 5, memory_mb: int = 512,
        max_output: int = 64_000, unsafe: bool = False, check_only: bool = False,
        cache_dir: Path | None | bool = True, compile_timeout_s: float = COMPILE_S,
        compile_memory_mb: int = COMPILE_MB) -> Result:
    """Compile (if needed) and run `source`; the Result says how it ended.

    Cached on disk by (mechanism, language, source, stdin, limits), whatever the outcome,
    timeouts included: a program near its time limit may end either way, and the first
    outcome is the one every later run on this machine sees (a timeout is never evidence:
    execution/evidence.py). A compiler that times out or is killed gives that status, never
    compile_error. "unavailable" is not cached (it is the machine's, not the program's).
    `unsafe=True` runs without a sandbox (rlimits only) where bwrap is missing.
    """
    if language not in TOOLS:
        raise ValueError(f"unknown language {language!r}; one of {sorted(TOOLS)}")
    mech = available() or ("none" if unsafe else None)
    if mech is None or not runtimes()[language]:
        why = "no sandbox (bwrap) here" if mech is None else f"no {language} toolchain here"
        return Result(status="unavailable", stderr=why)
    if language in USES_DATA and not grouped():  # their VMs start 15-20 threads: more than task_cap
        return Result(status="unavailable", stderr=f"no {language} runs without a cgroup per run (root, cgroup v1)")
    key = hashlib.sha256(json.dumps([VERSION, mech, language, source, stdin, timeout_s, memory_mb, max_output,
                                     compile_timeout_s, compile_memory_mb]
                                    + (["check"] if check_only else [])).encode()).hexdigest()
    if cache_dir is True:  # the cache root's exec/ (core/cache.py)
        cache_dir = cache_path("exec")
    path = cache_dir / f"{key}.json" if cache_dir else None
    if path and path.is_file():
        return Result.model_validate_json(path.read_text()).model_copy(update={"cached": True})
    with tempfile.TemporaryDirectory(prefix="codemcq-exec-") as work:
        w = "/w" if mech == "bwrap" else work
        name, compile_argv, run_argv = _commands(language, source, w, memory_mb)
        if check_only:
            compile_argv, run_argv = compile_argv or [*CHECK[language], f"{w}/{name}"], None
        Path(work, name).write_text(source)
        _own(work)
        box = (lambda argv, writable: _bwrap(argv, work, writable)) if mech == "bwrap" else (lambda a, _: a)
        use_data = language in USES_DATA
        c = Result(status="ok")
        if compile_argv:
            c = _exec(box(compile_argv, True), work, "", compile_timeout_s, max(memory_mb, compile_memory_mb),
                      use_data, max_output, compiler=True)
        if c.status == "ok" and run_argv is None:
            r = c
        elif c.status == "ok":
            r = _exec(box(run_argv, False), work, stdin, timeout_s, memory_mb, use_data, max_output)
            r.seconds = round(r.seconds + c.seconds, 3)
        elif c.status in ("timeout", "killed"):  # the compiler ran out of its budget: no verdict on the code
            r = c.model_copy(update={"stderr": c.stderr + f"\n[compiler {c.status}]"})
        else:
            r = c.model_copy(update={"status": "compile_error"})
    if path:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, r.model_dump_json())
    return r


def run_many(jobs: list[dict], workers: int = 2) -> list[Result]:
    """run(**job) for each job, `workers` at a time; results in the jobs' order."""
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(lambda job: run(**job), jobs))


def run_jobs(jobs: list, cfg) -> list[list[Result]]:
    """Run a step's jobs (execution/recognise.py: Job) in the sandbox, `cfg.workers`
    programs at a time (`cfg`: ExecuteConfig); each job's results, in its programs' order."""
    results = iter(run_many([{"language": j.language, "source": s, "timeout_s": cfg.timeout_s,
                              "memory_mb": cfg.memory_mb, "unsafe": cfg.sandbox == "none",
                              "check_only": j.check == "compile", "compile_timeout_s": cfg.compile_timeout_s,
                              "compile_memory_mb": cfg.compile_memory_mb}
                             for j in jobs for s in j.sources], workers=cfg.workers))
    return [[next(results) for _ in j.sources] for j in jobs]
