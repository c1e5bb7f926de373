"""Helpers the benchmark scripts share (imported as `_common`: scripts run as `python bench/<name>.py`).

One place for what every benchmark records beside its numbers: the machine it ran on (`machine`), the git state
of the checkout (`git_state`), and how busy the rest of the machine was while a timed block ran (`proc_stat`,
`other_load`, `CpuWindow`: the one /proc/stat reader of bench/).
"""
from __future__ import annotations

import importlib
import os
import platform
import subprocess
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def quiet_hf() -> None:
    """No transformers / huggingface_hub logging or progress bars inside timed code."""
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    try:
        from huggingface_hub.utils import disable_progress_bars

        disable_progress_bars()
    except Exception:  # pragma: no cover
        pass


def default_data_dir(marker: str) -> Path:
    """../shared/data beside the project (or /work/shared/data) when it holds `marker`, e.g. "trec-dl-2019"."""
    for cand in (ROOT.parent / "shared" / "data", Path("/work/shared/data")):
        if (cand / marker).is_dir():
            return cand
    return ROOT.parent / "shared" / "data"


def fmt(x, spec: str = ".2f") -> str:
    """`x` formatted with `spec`, or "-" when it was not measured (None)."""
    return "-" if x is None else format(x, spec)


# ------------------------------------------------------------------------------------------------- machine, git
def cpu_model() -> str:
    """kd.pipeline_summary.cpu_model (the one /proc/cpuinfo reader), else the machine type."""
    from kd.pipeline_summary import cpu_model as kd_cpu_model

    return kd_cpu_model() or platform.machine()


def git_state() -> dict:
    """{"commit": HEAD (kd.runtime.tracking.git_commit), "dirty": whether tracked files differ from it}; either is
    None when git cannot tell (no git, not a checkout)."""
    from kd.runtime.tracking import git_commit

    try:
        status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                                capture_output=True, text=True, timeout=10)
        dirty = bool(status.stdout.strip()) if status.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        dirty = None
    return {"commit": git_commit(), "dirty": dirty}


THREAD_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "TOKENIZERS_PARALLELISM")


def machine(device: str = "cpu", *, packages: tuple[str, ...] = (), names: dict[str, str] | None = None) -> dict:
    """What a benchmark ran on, from the project's own readers where it has them: CPU model, the precision-relevant
    flags it has and the core count (kd.pipeline_summary.machine_facts, what summary.json records), torch threads,
    the 1-minute load average and the GPU name (kd.evaluation.machine_info); plus host name, platform, Python, CPU
    affinity, memory, the three load averages, torch's interop threads, the thread variables of the environment
    (env_<NAME>), the git state, the versions of torch and of each module in `packages`, and on CUDA the GPU count,
    CUDA version, memory and SM count.

    `names` renames keys ({key here: key in this script's JSON}), so each script's JSON keeps the keys its committed
    results have always used (bench/results/*.json stay readable the same way)."""
    import torch

    from kd.evaluation import machine_info
    from kd.pipeline_summary import machine_facts

    info = {**machine_facts(), **machine_info(device), "cpu_model": cpu_model(), "hostname": platform.node(),
            "platform": platform.platform(), "python": platform.python_version(),
            "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
            "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
            "loadavg": list(os.getloadavg()), "torch_interop_threads": torch.get_num_interop_threads(),
            **{f"env_{k}": os.environ.get(k) for k in THREAD_ENV}, "git": git_state(), "torch": torch.__version__,
            **{p: importlib.import_module(p).__version__ for p in packages}}
    if str(device).startswith("cuda") and torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info.update(gpu_count=torch.cuda.device_count(), cuda=torch.version.cuda,
                    gpu_memory_gib=round(props.total_memory / 2**30, 1), gpu_sm_count=props.multi_processor_count)
    return {(names or {}).get(k, k): v for k, v in info.items()}


# ------------------------------------------------------------------------------------------- other processes' load
def proc_stat() -> tuple[float, float] | None:
    """(busy, total) CPU seconds of the whole machine since boot, summed over cores (/proc/stat; None elsewhere)."""
    try:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return None
    tck = os.sysconf("SC_CLK_TCK")
    total = sum(fields[:8])
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return (total - idle) / tck, total / tck


def other_load(stat0, stat1, own_cpu_s: float | None) -> dict:
    """Share of the machine's CPU capacity that processes other than the measured ones used between two proc_stat
    readings, given the measured processes' own CPU seconds in that window:
    other_share = max(busy − own, 0) / total (0 = a quiet machine), machine_busy_share = busy / total."""
    if stat0 is None or stat1 is None or own_cpu_s is None:
        return {"machine_busy_share": None, "other_share": None}
    busy, total = stat1[0] - stat0[0], stat1[1] - stat0[1]
    if total <= 0:
        return {"machine_busy_share": None, "other_share": None}
    return {"machine_busy_share": round(busy / total, 4), "own_cpu_s": round(own_cpu_s, 3),
            "other_share": round(max(busy - own_cpu_s, 0.0) / total, 4)}


class CpuWindow:
    """One timed window in this process: wall seconds, this process's CPU seconds (time.process_time: every thread)
    and other_load over it. A `with` block, or start() / stop() where the window does not fit one block (a loop
    whose timed steps begin after its warm-up). Before stop(), and where /proc/stat cannot be read, the fields are
    None."""

    seconds: float | None = None
    own_cpu_s: float | None = None
    load: dict = {"machine_busy_share": None, "other_share": None}

    def start(self) -> "CpuWindow":
        self._start = (proc_stat(), time.process_time(), time.perf_counter())
        return self

    def stop(self) -> "CpuWindow":
        if getattr(self, "_start", None) is None:
            return self
        stat0, cpu0, t0 = self._start
        self.seconds, self.own_cpu_s = time.perf_counter() - t0, time.process_time() - cpu0
        self.load = other_load(stat0, proc_stat(), self.own_cpu_s)
        return self

    @property
    def other_share(self) -> float | None:
        return self.load["other_share"]

    def __enter__(self) -> "CpuWindow":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
