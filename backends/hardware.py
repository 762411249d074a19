"""The machine a model runs on: its CPU and ISA flags, the cores and memory we may use,
and the one place that turns `dtype: auto` into a dtype.

Why: bf16 is fast only where the hardware computes it. On an AVX2-only CPU (and on
AVX-512 CPUs without AVX512-BF16) it is emulated and 3-6x slower than float32; on an
old GPU (compute capability < 8.0, e.g. a T4) it is not supported at all.
"""

from __future__ import annotations

import os
import platform
from contextlib import contextmanager
from functools import cache
from pathlib import Path

# The flags that decide float32 speed and whether bf16 is native, in the order printed.
FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16")
NATIVE_BF16 = ("avx512_bf16", "amx_bf16")
DTYPES = ("auto", "float32", "bfloat16", "float16")
# What the user set for vLLM's CPU engine before we set anything: theirs wins; ours is
# set per engine (an in-process engine's settings must not leak into the next one's).
ENGINE_VARS = ("VLLM_CPU_OMP_THREADS_BIND", "VLLM_CPU_KVCACHE_SPACE")
USER_ENV = {k: os.environ[k] for k in ENGINE_VARS if k in os.environ}
# What the libraries are told when the solver runs (CLI, Python API, tests, benchmarks alike):
# the vLLM engine core in this process, not a spawned one (a spawn re-imports the caller's
# main module, which breaks a script without a __main__ guard, standard input and a
# notebook, and a spawned core outlives a killed run), and libraries quiet about the rest.
# (How much vLLM logs follows from where its log goes: solver/console.py.)
LIBRARY_DEFAULTS = {"VLLM_ENABLE_V1_MULTIPROCESSING": "0", "TRANSFORMERS_VERBOSITY": "error",
                    "TOKENIZERS_PARALLELISM": "false"}


def library_defaults() -> None:
    """Set LIBRARY_DEFAULTS where the user has not set the variable: theirs wins."""
    for key, value in LIBRARY_DEFAULTS.items():
        os.environ.setdefault(key, value)


@cache
def cpu_info() -> tuple[str, frozenset[str]]:
    """(the CPU's model name, its flags), from /proc/cpuinfo; (platform name, {}) elsewhere."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        text = ""
    fields: dict[str, str] = {}
    for line in text.splitlines():  # the first CPU's entry is everyone's
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    return fields.get("model name") or platform.machine(), frozenset(fields.get("flags", "").split())


def cpu_has_bf16() -> bool:
    """Whether this CPU does bf16 matmuls natively (AVX512-BF16 or AMX)."""
    return any(f in cpu_info()[1] for f in NATIVE_BF16)


def cuda_capability() -> tuple[int, int] | None:
    """The first CUDA GPU's compute capability; None without one (or without CUDA torch)."""
    import torch

    return torch.cuda.get_device_capability(0) if torch.cuda.is_available() else None


def pick_dtype(requested: str = "auto", device: str | None = None) -> str:
    """`requested` unless it is auto; auto: bfloat16 where the hardware computes it natively
    (a CUDA GPU of capability >= 8.0, a CPU with AVX512-BF16/AMX), float16 on older GPUs,
    float32 on other CPUs. `device` None: CUDA if there is one, else the CPU."""
    if requested != "auto":
        return requested
    cap = cuda_capability() if device in (None, "cuda") else None
    if cap is not None:
        return "bfloat16" if cap >= (8, 0) else "float16"
    return "bfloat16" if cpu_has_bf16() else "float32"


def cores() -> list[int]:
    """The cores this process may run on (its affinity mask, which cgroup cpusets set)."""
    return sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else list(range(os.cpu_count() or 1))


def usable_cores() -> int:
    return len(cores())


def available_gb() -> float:
    """Memory free for new allocations (MemAvailable), in GiB."""
    import psutil

    return psutil.virtual_memory().available / 2**30


KV_CACHE_GB = 4  # the CPU engine's KV-cache space unless the config sets one


def kv_cache_gb(requested: float | None) -> int:
    """The CPU engine's KV-cache space in whole GiB (what vLLM reads): `requested`, or 4.
    Fixed by the config, never sized from the memory free at start: the space decides how
    the engine schedules a long call (which prompts wait, which are preempted), and so, in
    bf16, its numbers."""
    return max(1, round(KV_CACHE_GB if requested is None else requested))


def cpu_engine_env(kv_gb: float | None) -> dict[str, str]:
    """Environment for a vLLM CPU engine, set from this machine: its OpenMP threads, one
    per core we may use, bound to those cores (not vLLM's guess, which may reserve one of
    two cores for its scheduler), and its KV-cache space. A variable the user set wins."""
    env = {"VLLM_CPU_OMP_THREADS_BIND": ",".join(map(str, cores())), "VLLM_CPU_KVCACHE_SPACE": str(kv_cache_gb(kv_gb))}
    return env | USER_ENV


def describe(dtype: str | None = None) -> str:
    """One line for reports and benchmarks: CPU model, cores, the flags that matter, dtype."""
    return f"{machine()}; dtype {dtype}" if dtype else machine()


@cache
def machine() -> str:
    """The GPU (if any), the CPU model, its usable cores and the flags that matter."""
    name, flags = cpu_info()
    have = [f for f in FLAGS if f in flags]
    bf16 = "native bf16" if cpu_has_bf16() else "no native bf16"
    line = f"{name}, {usable_cores()} cores ({' '.join(have) or 'no AVX flags'}; {bf16})"
    cap = cuda_capability()
    if cap is not None:
        import torch

        line = f"{torch.cuda.get_device_name(0)} (capability {cap[0]}.{cap[1]}); host {line}"
    return line


@contextmanager
def environ(values: dict[str, str]):
    """These environment variables for the duration (vLLM reads its own as an engine starts),
    then each back as it was."""
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
