"""The Python API exactly as the README shows it: its one ```python block, run in a fresh
process as a script (no `__main__` guard; standard input spawns the same way and has the
same fix: no engine process is spawned) and in a notebook kernel (whose event loop is
running), with the real engine."""

import ast
import re
import subprocess
import sys

import pytest

from tests.helpers import ROOT

pytestmark = pytest.mark.slow  # starts a vLLM engine in a process of its own


def readme_example() -> str:
    (block,) = [b for b in re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
                if "Solver.from_config" in b]
    return block


def in_a_kernel(code: str) -> tuple[int, str, str]:
    """(1 if it raised else 0, what it printed on stdout, on stderr) in a fresh ipykernel."""
    from jupyter_client.manager import start_new_kernel

    km, kc = start_new_kernel(kernel_name="python3", cwd=str(ROOT))
    try:
        msg_id, said, failed = kc.execute(code), {"stdout": "", "stderr": ""}, 0
        while True:
            m = kc.get_iopub_msg(timeout=600)
            if m["parent_header"].get("msg_id") != msg_id:
                continue
            if m["msg_type"] == "stream":
                said[m["content"]["name"]] += m["content"]["text"]
            elif m["msg_type"] == "error":
                failed, said["stderr"] = 1, said["stderr"] + "\n".join(m["content"]["traceback"])
            elif m["msg_type"] == "status" and m["content"]["execution_state"] == "idle":
                return failed, said["stdout"], said["stderr"]
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)


@pytest.mark.parametrize("how", ["script", "notebook"])  # standard input spawns like a script: the same fix
def test_the_readme_example_runs_and_is_quiet(tmp_path, cache, how):
    code = readme_example()
    if how == "notebook":
        rc, stdout, stderr = in_a_kernel(code)
        r = subprocess.CompletedProcess([], rc, stdout, stderr)
    else:  # a spawned engine core would re-run the script's top level (no `__main__` guard)
        script = tmp_path / "example.py"
        script.write_text(code)
        r = subprocess.run([sys.executable, str(script)], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    said = (r.stdout + r.stderr).splitlines()
    assert len(said) == 3 and r.stderr == "", said[:60]  # its own three prints; the chatter is in the log
    letter, probs = said[0].split(" ", 1)
    assert letter in "ABC" and set(ast.literal_eval(probs)) == {"A", "B", "C"}
    assert said[1].split()[0] == "q1" and said[1].split()[1] in "ABC"
    assert said[2].split()[0] == "q2" and said[2].split()[1] in "ABCD"
    (log,) = (cache / "logs").glob("api-*.log")
    assert "vllm" in log.read_text().lower()  # the engine's chatter went there
