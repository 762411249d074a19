"""The sandbox really runs code, and hostile code neither escapes nor outlives its run."""

from __future__ import annotations

import glob
import os
import socket
import tempfile
import threading
import time
import uuid
from pathlib import Path

import pytest

from execution import sandbox

ROOT = Path(__file__).resolve().parents[1]
HELLO = {
    "python": 'print("ok")',
    "c": '#include <stdio.h>\nint main(void) { puts("ok"); return 0; }',
    "cpp": '#include <iostream>\nint main() { std::cout << "ok" << std::endl; }',
    "java": 'public class Hello {\n  public static void main(String[] a) { System.out.println("ok"); }\n}',
    "javascript": 'console.log("ok")',
}
BROKEN = {"c": "int main(void) { return x; }", "cpp": "int main() { undeclared(); }",
          "java": "public class Main { void f() { int x = \"s\"; } }"}


@pytest.fixture(scope="module", autouse=True)
def bwrap():
    """Skip the module where bubblewrap does not work (`make setup` installs it where it can)."""
    if sandbox.available() is None:
        pytest.skip("no working bubblewrap (bwrap missing, or user namespaces disabled here)")


def need(lang: str) -> None:
    if not sandbox.runtimes()[lang]:
        pytest.skip(f"no {lang} toolchain on this machine")


def procs(marker: str) -> list[str]:
    """Host processes of a sandbox: bwrap itself, a program under /w/, or the marker."""
    found = []
    for cmd in glob.glob("/proc/[0-9]*/cmdline"):
        try:
            argv = Path(cmd).read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if argv.startswith("bwrap ") or "/w/main" in argv or "/w/prog" in argv or marker in argv:
            found.append(f"{cmd}: {argv[:120]}")
    return found


def hostile(source: str, timeout_s: float = 2, **kw) -> sandbox.Result:
    """Run a hostile Python program; it must end in time and leave nothing behind."""
    marker = kw.pop("marker", "codemcq-no-marker")
    before = set(glob.glob(f"{tempfile.gettempdir()}/codemcq-exec-*"))
    t = time.monotonic()
    r = sandbox.run("python", source, timeout_s=timeout_s, cache_dir=None, **kw)
    assert time.monotonic() - t < timeout_s + 10, "the run did not end in time"  # slack: a loaded CI
    assert procs(marker) == [], "a process outlived its run"
    assert set(glob.glob(f"{tempfile.gettempdir()}/codemcq-exec-*")) <= before, "work folder left"
    assert not [g for d in (sandbox.cgroups.roots() or {}).values() for g in d.glob("codemcq-run-*")], "cgroup left"
    return r


@pytest.mark.parametrize("lang", sorted(HELLO))
def test_hello(lang):
    need(lang)
    r = sandbox.run(lang, HELLO[lang], cache_dir=None)
    assert (r.status, r.stdout, r.exit_code) == ("ok", "ok\n", 0), r.stderr


@pytest.mark.parametrize("lang", sorted(BROKEN))
def test_compile_error(lang):
    need(lang)
    r = sandbox.run(lang, BROKEN[lang], cache_dir=None)
    assert r.status == "compile_error" and "error" in r.stderr and r.stdout == ""


@pytest.mark.parametrize("lang", ["python", "java", "javascript"])
def test_check_only_compiles_and_never_runs(lang, tmp_path):
    need(lang)
    ok = HELLO[lang]
    bad = {"python": "print('ok'", "java": BROKEN["java"], "javascript": "console.log('ok'"}[lang]
    r = sandbox.run(lang, ok, check_only=True, cache_dir=tmp_path)
    assert (r.status, r.stdout) == ("ok", ""), r.stderr  # compiled, and nothing ran
    assert sandbox.run(lang, bad, check_only=True, cache_dir=tmp_path).status == "compile_error"
    assert sandbox.run(lang, ok, cache_dir=tmp_path).stdout == "ok\n"  # a check is cached apart from a run


def test_java_class_names():
    assert sandbox.java_class("public final class Foo { }") == "Foo"
    assert sandbox.java_class("class A {}\nclass B { public static void main(String[] a) {} }") == "B"
    assert sandbox.java_class("interface I {}") == "Main"


def test_java_package_and_class_without_public(tmp_path):
    need("java")
    src = "package a.b;\nclass Foo { public static void main(String[] x) { System.out.println(\"ok\"); } }"
    r = sandbox.run("java", src, cache_dir=tmp_path)
    assert (r.status, r.stdout) == ("ok", "ok\n"), r.stderr
    assert sandbox.run("java", BROKEN["java"], cache_dir=tmp_path).status == "compile_error"
    assert len(list(tmp_path.glob("*.json"))) == 2  # compile errors are cached too


def test_stdin_runtime_error_and_cache(tmp_path):
    r = sandbox.run("python", "import sys; print(sys.stdin.read().upper())", stdin="abc",
                    cache_dir=tmp_path)
    assert (r.status, r.stdout) == ("ok", "ABC\n")
    assert len(list(tmp_path.glob("*.json"))) == 1
    again = sandbox.run("python", "import sys; print(sys.stdin.read().upper())", stdin="abc",
                        cache_dir=tmp_path)
    assert again.cached and not r.cached  # from the cache: the same result, seconds included
    assert again.model_copy(update={"cached": False}) == r
    bad = sandbox.run("python", "raise SystemExit(3)", cache_dir=None)
    assert (bad.status, bad.exit_code) == ("runtime_error", 3)


def test_run_many_keeps_order():
    jobs = [{"language": "python", "source": f"print({i})", "cache_dir": None} for i in range(4)]
    assert [r.stdout for r in sandbox.run_many(jobs)] == [f"{i}\n" for i in range(4)]


def test_no_sandbox_no_run(monkeypatch, tmp_path):
    monkeypatch.setattr(sandbox, "available", lambda: None)
    flag = tmp_path / "ran"
    r = sandbox.run("python", f"open({str(flag)!r}, 'w')", cache_dir=None)
    assert r.status == "unavailable" and not flag.exists()
    assert sandbox.run("python", 'print("ok")', unsafe=True, cache_dir=None).stdout == "ok\n"


def test_runs_as_unprivileged_uid():
    """Outside the namespaces the program's real uid is not root (so RLIMIT_NPROC bites)."""
    marker = f"codemcq-uid-{uuid.uuid4().hex[:8]}"
    src = f"import os; os.execv('/usr/bin/sleep', [{marker!r}, '1.5'])"
    th = threading.Thread(target=hostile, args=(src, 3), kwargs={"marker": "codemcq-none"})
    th.start()
    uids = None
    for _ in range(100):
        if hits := [p for p in procs(marker) if marker in p]:
            status = Path(hits[0].split(":")[0].replace("cmdline", "status")).read_text()
            uids = next(ln for ln in status.splitlines() if ln.startswith("Uid:")).split()[1:]
            break
        time.sleep(0.03)
    th.join()
    assert uids and "0" not in uids, uids


def test_nproc_caps_forks():
    src = ("import os, time\nn = 0\nwhile n < 500:\n    try:\n        pid = os.fork()\n"
           "    except OSError as e:\n        print('capped', n, e.errno); break\n"
           "    if pid == 0:\n        time.sleep(5); os._exit(0)\n    n += 1\n")
    already = sandbox._tasks_of(65534 if os.geteuid() == 0 else os.getuid())
    r = hostile(src, timeout_s=3)
    assert r.stdout.startswith("capped") and r.stdout.split()[2] == "11", r  # EAGAIN
    assert int(r.stdout.split()[1]) <= sandbox.NPROC + already, r


def test_writes_stay_inside(tmp_path):
    targets = [tmp_path / "escaped", Path("/root") / f"escaped-{uuid.uuid4().hex}",
               ROOT / f"escaped-{uuid.uuid4().hex}", Path("/usr/escaped"), Path("/w/escaped")]
    src = (f"for p in {[str(t) for t in targets]!r}:\n"
           "    try:\n        open(p, 'w').write('x'); print('WROTE', p)\n"
           "    except OSError as e:\n        print('refused', p, e.errno)\n")
    r = hostile(src)
    assert r.status == "ok" and "WROTE" not in r.stdout, r.stdout
    assert not any(t.exists() for t in targets)


def test_no_network():
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        listener.settimeout(0.5)
        port = listener.getsockname()[1]
        src = (f"import socket\nfor addr in [('127.0.0.1', {port}), ('1.1.1.1', 53)]:\n"
               "    try:\n        socket.create_connection(addr, timeout=1); print('CONNECTED', addr)\n"
               "    except OSError as e:\n        print('refused', addr, e)\n"
               "print(open('/proc/net/dev').read())\n")
        r = hostile(src, timeout_s=3)
        with pytest.raises(TimeoutError):
            listener.accept()
    assert r.status == "ok" and "CONNECTED" not in r.stdout, r.stdout
    interfaces = [ln.split(":")[0].strip() for ln in r.stdout.splitlines() if ":" in ln and "|" not in ln]
    assert interfaces == ["lo"], interfaces  # the namespace's own loopback, nothing else


def test_secrets_in_home_and_env_stay_out(tmp_path, monkeypatch):
    token = uuid.uuid4().hex
    monkeypatch.setenv("CODEMCQ_TEST_SECRET", token)
    files = [tmp_path / "secret.txt", Path.home() / f".codemcq-secret-{token[:8]}"]
    try:
        for f in files:
            f.write_text(token)
        src = (f"import os, glob\nfor p in {[str(f) for f in files]!r} + glob.glob('/root/*') "
               "+ glob.glob('/home/*/*'):\n    try:\n        print(open(p).read())\n"
               "    except OSError as e:\n        print('refused', p, e.errno)\n"
               "print(dict(os.environ))\nfor p in ['/proc/self/environ', '/proc/1/environ']:\n"
               "    try:\n        print(open(p, 'rb').read())\n"
               "    except OSError as e:\n        print('refused', p, e.errno)\n")
        r = hostile(src)
    finally:
        for f in files:
            f.unlink(missing_ok=True)
    assert r.status == "ok" and "refused" in r.stdout
    assert token not in r.stdout + r.stderr
    env = eval(next(ln for ln in r.stdout.splitlines() if ln.startswith("{")))
    assert set(env) <= {"PATH", "HOME", "LANG", "PWD"}, env  # bwrap --chdir sets PWD


def test_fork_bomb_ends():
    r = hostile("import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n")
    assert r.status == "timeout"


def test_endless_loop_times_out():
    r = hostile("while True: pass")
    assert r.status == "timeout"


@pytest.mark.parametrize("lang,src", [
    ("python", "x = []\nwhile True: x.append(bytearray(50 << 20))"),
    ("javascript", "const x = []; while (true) x.push(new Array(1e6).fill(1.5));"),
])
def test_memory_hog_dies_alone(lang, src):
    need(lang)
    r = sandbox.run(lang, src, timeout_s=5, memory_mb=256, cache_dir=None)
    assert r.status in ("runtime_error", "killed"), r
    assert procs("codemcq-no-marker") == []


def test_disk_fill_is_bounded():
    """One file stops at RLIMIT_FSIZE (16 MB); many files stop at the tmpfs size (64 MB)."""
    src = ("import os\nchunk = b'x' * (1 << 20)\n"
           "def fill(name, files):\n    for i in range(200):\n        try:\n"
           "            with open(f'{name}{i // files}', 'ab') as f: f.write(chunk)\n"
           "        except OSError as e:\n            return f'{name} {i} MB: {e.strerror}'\n"
           "print(fill('/tmp/one', 200))\nfor n in os.listdir('/tmp'): os.remove('/tmp/' + n)\n"
           "print(fill('/tmp/many', 8))\nprint(fill('/dev/shm/many', 8))\nprint(fill('/w/x', 8))\n")
    r = hostile(src, timeout_s=3)
    one, many, shm, work = r.stdout.splitlines()
    assert "File too large" in one and int(one.split()[1]) <= 16, r
    assert "No space left" in many and int(many.split()[1]) <= 64, r
    assert "No space left" in shm and "Read-only" in work, r


def test_daemon_dies_with_run():
    marker = f"codemcq-daemon-{uuid.uuid4().hex[:8]}"
    src = ("import os, sys\nif os.fork() == 0:\n    os.setsid()\n    if os.fork() == 0:\n"
           "        print('daemon', os.getpid(), flush=True)\n"
           f"        os.execv('/usr/bin/sleep', [{marker!r}, '30'])\n    os._exit(0)\n"
           "os.wait()\nprint('parent done')\n")
    r = hostile(src, timeout_s=3, marker=marker)
    assert r.status == "ok" and "parent done" in r.stdout, r  # not "timeout": no wait on the daemon


def test_killing_parents_hits_only_the_sandbox():
    me, parent = os.getpid(), os.getppid()
    src = (f"import os, subprocess\nfor pid in [os.getppid(), 1, {me}, {parent}]:\n"
           "    try:\n        os.kill(pid, 9); print('sent', pid)\n"
           "    except OSError as e:\n        print('refused', pid, e.errno)\n"
           "subprocess.run(['/bin/kill', '-9', '-1'])\nos.kill(-1, 9)\nprint('still here')\n")
    r = hostile(src)
    assert os.getpid() == me and os.getppid() == parent  # we (and our parent) are alive
    assert r.status in ("ok", "killed", "runtime_error"), r


def test_gigabytes_of_output_are_cut():
    r = hostile("import sys\nb = 'x' * (1 << 20)\nwhile True: sys.stdout.write(b)", timeout_s=3)
    assert r.status == "killed" and r.truncated and len(r.stdout) == 64_000, r  # cut, not timed out


# Memory taken together: forked children, threads, and orphans that fork again, each filling
# memory. The run's cgroup caps the sum (MB below); where none can be made, fewer tasks.
CAP = 256
FILL = "bytearray(b'\\x01' * (100 << 20))"  # 100 MB, touched
CHILDREN = ("import os, time\nfork = getattr(os, 'fork')\nkids = []\nfor i in range(12):\n"
            "    pid = fork()\n    if pid == 0:\n"
            "        b = " + FILL + "\n        time.sleep(20)\n        os._exit(0)\n"
            "    kids.append(pid)\nfor k in kids: os.waitpid(k, 0)\nprint('all done')\n")
THREADS = ("import threading, time\nheld = []\ndef fill():\n    try:\n        held.append(" + FILL + ")\n"
           "    except MemoryError:\n        pass\n    time.sleep(1)\n"
           "ts = [threading.Thread(target=fill) for _ in range(12)]\nfor t in ts: t.start()\nfor t in ts: t.join()\n")
ORPHANS = ("import os, signal, time\nfork = getattr(os, 'fork')\nif fork() == 0:\n    if fork() == 0:\n"
           "        time.sleep(0.2)  # its parent is dead by now\n        for i in range(6):\n"
           "            if fork() == 0:\n                b = " + FILL + "\n                time.sleep(20)\n"
           "        time.sleep(20)\n    os.kill(os.getpid(), signal.SIGKILL)\ntime.sleep(30)\n")


@pytest.mark.parametrize("src", [CHILDREN, THREADS, ORPHANS], ids=["children", "threads", "orphans"])
def test_memory_of_a_whole_run_is_capped(src):
    if not sandbox.grouped():
        pytest.skip("no cgroup per run here (needs root and cgroup v1 memory and pids)")
    r = hostile(src, timeout_s=8, memory_mb=CAP)  # ended in time, no process left
    assert r.peak_mb is not None and r.peak_mb <= CAP + 1, r  # +1: the counter's page rounding
    if src is not THREADS:  # threads share one address space: its rlimit stops them first
        assert r.status == "killed" and f"memory cap of {CAP} MB" in r.stderr, r
    assert "all done" not in r.stdout


def test_without_a_cgroup_fewer_tasks_keep_the_sum_in_budget(monkeypatch):
    assert sandbox.task_cap(512, grouped=True) == sandbox.NPROC
    for mb in (16, 256, 512, 2048, 8192):
        assert (1 <= sandbox.task_cap(mb, grouped=False)
                and sandbox.task_cap(mb, False) * mb <= max(sandbox.UNGROUPED_MB, mb))
    monkeypatch.setattr(sandbox.cgroups, "roots", lambda: None)
    src = ("import os, signal\nn = 0\nfor i in range(40):\n    try:\n        pid = getattr(os, 'fork')()\n"
           "    except OSError:\n        break\n    if pid == 0:\n        signal.pause()\n"
           "    n += 1\nprint('forked', n)\n")
    r = hostile(src, timeout_s=8, memory_mb=CAP)
    assert r.status == "ok" and r.peak_mb is None, r
    assert 0 < int(r.stdout.split()[1]) < sandbox.task_cap(CAP, grouped=False)  # the main process is one of them


def test_a_compiler_out_of_memory_is_killed_not_a_compile_error(tmp_path):
    need("cpp")
    if not sandbox.grouped():
        pytest.skip("no cgroup per run here")
    src = "#include <bits/stdc++.h>\nint main() { std::vector<int> v{1}; std::cout << v[0]; }\n"
    # g++ needs ~150 MB for bits/stdc++.h
    r = sandbox.run("cpp", src, memory_mb=32, check_only=True, cache_dir=tmp_path, compile_memory_mb=32)
    assert r.status == "killed" and "memory cap of 32 MB" in r.stderr, r
