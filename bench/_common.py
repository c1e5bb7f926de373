"""Helpers the benchmark scripts share (imported as `_common`: scripts run as `python bench/<name>.py`)."""
from __future__ import annotations

import platform
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


def cpu_model() -> str:
    """kd.pipeline_summary.cpu_model (the one /proc/cpuinfo reader), else the machine type."""
    from kd.pipeline_summary import cpu_model as kd_cpu_model

    return kd_cpu_model() or platform.machine()


def machine(device: str = "cpu") -> dict:
    """What a benchmark ran on, from the project's own readers: CPU model, the precision-relevant flags it has and
    the core count (kd.pipeline_summary.machine_facts, what summary.json records), torch threads and the 1-minute
    load average (kd.evaluation.machine_info), plus platform, Python and torch versions."""
    import torch

    from kd.evaluation import machine_info
    from kd.pipeline_summary import machine_facts

    return {**machine_facts(), **machine_info(device), "platform": platform.platform(),
            "python": platform.python_version(), "torch": torch.__version__}
