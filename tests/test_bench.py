"""bench/'s shared helpers (bench/_common.py: machine facts, git state, other processes' CPU share) and the pieces of
bench/training.py that turn rows into numbers: each script keeps the JSON keys its committed results in
bench/results/ were written with, and the training numbers recomputed from the committed rows are the committed ones.
The benchmarks themselves are not run here (bench/students.py has its smoke test in test_students.py)."""
from __future__ import annotations

import argparse
import copy
import importlib.util
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "bench"
RESULTS = BENCH / "results"


def _script(name: str):
    """bench/<name>.py as a module (the scripts put bench/ on sys.path themselves and import `_common` from it)."""
    spec = importlib.util.spec_from_file_location(f"kd_bench_{name}", BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def common():
    _script("training")  # puts bench/ on sys.path
    import _common

    return _common


def _committed(name: str) -> dict:
    return json.loads((RESULTS / f"{name}-cpu.json").read_text())


def test_other_load_is_the_rest_of_the_machine(common):
    # 20 busy of 20 CPU seconds in the window, 5 of them ours: the others used 15 / 20
    assert common.other_load((10.0, 100.0), (30.0, 120.0), 5.0) == {
        "machine_busy_share": 1.0, "own_cpu_s": 5.0, "other_share": 0.75}
    # ours counted more than the machine's busy time (sampling skew): never a negative share
    assert common.other_load((10.0, 100.0), (12.0, 120.0), 5.0)["other_share"] == 0.0
    none = {"machine_busy_share": None, "other_share": None}
    assert common.other_load(None, (1.0, 2.0), 1.0) == none
    assert common.other_load((1.0, 2.0), (1.0, 2.0), 0.0) == none  # an empty window
    assert common.other_load((1.0, 2.0), (3.0, 4.0), None) == none


def test_cpu_window_counts_this_process_and_the_machine(common):
    busy, total = common.proc_stat()
    assert 0 < busy < total
    with common.CpuWindow() as w:
        t0 = time.process_time()
        while time.process_time() - t0 < 0.2:  # one busy thread
            pass
    assert w.own_cpu_s >= 0.2 and w.seconds >= w.own_cpu_s * 0.95  # one thread cannot use more CPU than wall time
    assert w.load["own_cpu_s"] == round(w.own_cpu_s, 3) and w.load["machine_busy_share"] > 0
    assert 0.0 <= w.other_share <= 1.0
    assert common.CpuWindow().stop().other_share is None  # never started: nothing measured, nothing invented


def test_git_state_names_this_checkout(common):
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    state = common.git_state()
    assert state["commit"] == head and isinstance(state["dirty"], bool)


def test_each_script_keeps_the_machine_keys_of_its_committed_results(common):
    training, scoring, evaluation = _script("training"), _script("scoring"), _script("evaluation")
    committed = _committed("training")["machine"]
    # the package versions come from `packages`: training asks for every one it recorded
    packages = {"transformers", "sentence_transformers", "ray", "deepspeed", "mlflow"}
    assert set(training.PACKAGES) == packages
    got = common.machine("cpu", names=training.MACHINE_KEYS)
    assert set(committed) - packages - set(got) == set()
    assert got["driver_torch_num_threads"] >= 1 and got["memory_gib"] > 0 and got["git"]["commit"]
    assert len(got["load_average_at_start"]) == 3

    got = scoring.machine_info(__import__("torch").device("cpu"))
    assert set(_committed("scoring")["machine"]) - set(got) == set()
    assert got["device_name"] == got["cpu_model"] and got["sentence_transformers"]

    got = common.machine("cpu", names=evaluation.HOST_KEYS)
    assert set(_committed("evaluation")["host"]) - {"loadavg_end"} - set(got) == set()  # loadavg_end: added at the end

    got = common.machine("cpu")  # students: _common.machine as it is
    assert set(_committed("students")["machine"]) - {"loadavg_1m_end"} - set(got) == set()
    assert got["cpu_model"] and isinstance(got["cpu_flags"], list)


def test_training_numbers_recomputed_from_the_committed_rows_are_the_committed_ones():
    _script("training")
    from _training_report import NOTES, derive

    committed = _committed("training")
    result = copy.deepcopy({k: committed[k] for k in ("rows", "tokens", "thread_probe", "padding")})
    for row in result["rows"].values():
        row.pop("cpu_s_per_triple", None)
    result["tokens"].pop("ours_vs_peer_padded_tokens")
    result["notes"] = []
    s = committed["settings"]
    derive(argparse.Namespace(device=s["device"], steps=s["steps_timed"], precision=s["precision"]), result)
    for key in ("speedup", "scaling", "targets", "checks", "max_other_share", "contended", "diagnosis",
                "speedup_vs_st", "speedup_vs_st_same_precision", "padding_fraction_before", "padding_fraction_after"):
        assert result[key] == committed[key], key
    assert result["tokens"]["ours_vs_peer_padded_tokens"] == committed["tokens"]["ours_vs_peer_padded_tokens"]
    for name, row in committed["rows"].items():
        assert result["rows"][name].get("cpu_s_per_triple") == row.get("cpu_s_per_triple"), name
    assert result["notes"] == NOTES == committed["notes"]


def test_training_cli_flags_and_help():
    proc = subprocess.run([sys.executable, str(BENCH / "training.py"), "--help"], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    for flag in ("--steps", "--warmup", "--micro-batch", "--max-query-length", "--max-passage-length", "--lr", "--seed",
                 "--device", "--precision", "--data-dir", "--out", "--no-diagnostics", "--peer-1thread",
                 "--job-retries", "--no-two-workers", "--zero-stage", "--no-thread-probe", "--job-timeout",
                 "--keep-tmp"):
        assert flag in proc.stdout, flag
    from kd.precision import resolve_precision

    args = _script("training").parse_args(["--steps", "3", "--warmup", "0"])
    # --precision auto resolves like training.precision on this CPU, and the decision's reason is kept
    assert (args.steps, args.warmup, args.precision, args.zero_stage) == (
        3, 0, resolve_precision("auto", "cpu").precision, "auto")
    assert args.precision_requested == "auto" and args.precision_reason.startswith("auto: CPU")
    assert args.out.endswith("bench/results/training-cpu.json")
    assert _script("training").parse_args(["--precision", "fp32"]).precision == "fp32"
    with pytest.raises(SystemExit):
        _script("training").parse_args(["--precision", "fp16"])


def _gpu_sh_dry_run() -> list[list[str]]:
    """The benchmark commands `bash bench/gpu.sh --dry-run` prints (one `timeout N cmd...` line each), split."""
    proc = subprocess.run(["bash", str(BENCH / "gpu.sh"), "--dry-run"], cwd=REPO, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    return [line.split() for line in proc.stdout.splitlines() if line.startswith("timeout ")]


def test_gpu_sh_parses_and_its_dry_run_runs_each_benchmark_on_cuda_in_under_9_minutes():
    assert subprocess.run(["bash", "-n", str(BENCH / "gpu.sh")], timeout=30).returncode == 0
    steps = _gpu_sh_dry_run()
    scripts = [next(w for w in s if w.startswith("bench/")) for s in steps]
    assert scripts == ["bench/scoring.py", "bench/training.py", "bench/evaluation.py"]
    for s, script in zip(steps, scripts):
        assert s[s.index("--device") + 1] == "cuda", script
        name = Path(script).stem
        assert s[s.index("--out") + 1] == f"bench/results/{name}-gpu.json"
    assert sum(int(s[1]) for s in steps) + 3 * 5 < 9 * 60  # the step limits (+ each kill-after) fit in 9 minutes
    # every flag gpu.sh passes is one the script takes (bench/training.py and bench/evaluation.py change under it)
    for s, script in zip(steps, scripts):
        helptext = subprocess.run([sys.executable, str(REPO / script), "--help"], capture_output=True, text=True,
                                  timeout=120).stdout
        for flag in (w for w in s if w.startswith("--")):
            assert flag in helptext, f"{script} has no {flag}"


def test_scoring_unpadded_row_and_headline_keys_on_real_pairs(tmp_path):
    """bench/scoring.py end to end on 24 real DL'19 pairs (CPU): the unpadded row agrees with the padded one and the
    JSON carries the top-level speedup_vs_peer and mfu (with the FLOP formula) that bench/gpu.sh checks for."""
    scoring = _script("scoring")
    assert scoring.parse_args([]).impls == ("ours", "peer")  # CPU default: the committed rows only
    assert scoring.parse_args(["--device", "cuda"]).impls == ("ours", "ours_unpadded", "peer")
    out = tmp_path / "scoring.json"
    proc = subprocess.run(
        [sys.executable, str(BENCH / "scoring.py"), "--pairs", "24", "--batch-size", "8", "--repeats", "1",
         "--max-extra-repeats", "0", "--warmup-batches", "1", "--agreement-subset", "8", "--unpadded-row",
         "--skip-parsing", "--peak-tflops", "1", "--out", str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.loads(out.read_text())
    s = r["scoring"]
    assert set(s["implementations"]) == {"ours", "ours_unpadded", "peer"}
    assert s["unpadded_agreement"]["agree"] and s["unpadded_agreement"]["max_abs_diff"] < 1e-4
    assert s["settings"]["ours_unpadded_kernel"] in ("nested_sdpa", "loop")
    assert r["speedup_vs_peer_row"] in ("ours", "ours_unpadded")
    row = s["implementations"][r["speedup_vs_peer_row"]]
    assert r["speedup_vs_peer"] == row["pairs_per_s"]["best"] / s["implementations"]["peer"]["pairs_per_s"]["best"]
    assert 0 < r["mfu"] == row["mfu_model_best"] and "real_len^2" in r["mfu_flop_formula"]
    unp = s["implementations"]["ours_unpadded"]
    assert unp["real_tokens_per_pair"] < unp["padded_tokens_per_pair"]  # the batches it was given were padded
