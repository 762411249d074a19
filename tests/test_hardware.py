"""backends/hardware.py: the machine's facts and the choices made from them."""

import os

from backends import hardware as hw


def test_this_cpu_is_read():
    name, flags = hw.cpu_info()
    assert name and (not os.path.exists("/proc/cpuinfo") or flags)
    line = hw.describe("float32")
    assert name in line and f"{hw.usable_cores()} cores" in line and line.endswith("dtype float32")
    assert ("no native bf16" in line) == (not hw.cpu_has_bf16())


def test_dtype_auto_follows_the_hardware():
    assert hw.pick_dtype("float16") == "float16" and hw.pick_dtype("bfloat16", "cpu") == "bfloat16"
    # on a CPU: bf16 only where it is native (AVX512-BF16 or AMX), else float32
    assert hw.pick_dtype("auto", "cpu") == ("bfloat16" if {"avx512_bf16", "amx_bf16"} & hw.cpu_info()[1] else "float32")


def test_engine_env_from_the_machine_and_the_user(monkeypatch):
    env = hw.cpu_engine_env(None)
    assert env["VLLM_CPU_OMP_THREADS_BIND"].split(",") == [str(c) for c in sorted(os.sched_getaffinity(0))]
    assert env["VLLM_CPU_KVCACHE_SPACE"] == str(hw.KV_CACHE_GB)  # fixed, never from free memory
    assert hw.cpu_engine_env(2.6)["VLLM_CPU_KVCACHE_SPACE"] == "3" and hw.kv_cache_gb(0.2) == 1
    monkeypatch.setattr(hw, "USER_ENV", {"VLLM_CPU_KVCACHE_SPACE": "5"})  # what the user exported wins
    assert hw.cpu_engine_env(1)["VLLM_CPU_KVCACHE_SPACE"] == "5"
