"""What a user sees of `solver run`: a few lines of ours; the libraries' chatter in a log file."""

import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import SAMPLE

pytestmark = pytest.mark.slow  # starts a vLLM engine or server, or runs the CLI in its own process


def test_run_is_quiet_and_names_its_log(tmp_path, cache):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("backbone: {max_model_len: 2048, kv_cache_gb: 1}\n")
    out = tmp_path / "sub.csv"
    r = subprocess.run([sys.executable, "-m", "solver.cli", "run", "-i", str(SAMPLE), "-o", str(out), "-c", str(cfg),
                        "--limit", "4"], cwd=tmp_path, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    said = (r.stdout + r.stderr).splitlines()
    assert len(said) <= 10 and not [line for line in said if "WARNING" in line or "Warning" in line], said
    assert any(line.startswith("wrote ") for line in said)
    assert any(line.startswith("on ") and "cores" in line for line in said)  # the machine and the dtype that ran
    log = Path(said[-1].removeprefix("log: "))
    assert said[-1].startswith("log: ") and log.parent == cache / "logs" and log.is_file()  # under the cache root
    assert "vllm" in log.read_text().lower()  # the engine's chatter went there
    assert len(out.read_text().splitlines()) == 5
