"""kd.precision: bf16 autocast only on hardware with native bf16 (issue 14 part 1), and the choice reaches the user.

The hardware cases are covered by injecting the facts (CPU flags, CUDA bf16 support), so they run on any machine;
the flag sets are those /proc/cpuinfo shows on the CPUs in question.
"""
from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path

import pytest
import torch
import yaml

import kd.precision
from kd.precision import PrecisionWarning, resolve_precision, this_cpu_flags

REPO = Path(__file__).resolve().parents[1]
# the 2-core AMD EPYC: AVX2, no AVX-512, no native bf16
AVX2_ONLY = frozenset("fpu sse sse2 ssse3 sse4_1 sse4_2 popcnt aes avx f16c fma bmi1 avx2 bmi2 sha_ni".split())
# AVX-512 without bf16 (Skylake/Cascade Lake): torch reports capability "AVX512", yet bf16 is emulated
AVX512_NO_BF16 = AVX2_ONLY | {"avx512f", "avx512dq", "avx512cd", "avx512bw", "avx512vl", "avx512_vnni"}
ZEN4 = AVX512_NO_BF16 | {"avx512_bf16"}  # this project's development CPU
SAPPHIRE_RAPIDS = ZEN4 | {"amx_bf16", "amx_tile", "amx_int8"}


# ------------------------------------------------------------------------------------------------ the decision
@pytest.fixture(autouse=True)
def no_onednn_cap(monkeypatch):
    """These tests state the hardware facts themselves; a oneDNN ISA cap in the environment (one way to run the suite
    as on an AVX2-only CPU) is a fact of its own, tested in test_a_onednn_isa_cap_below_bf16_makes_auto_fp32."""
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    monkeypatch.delenv("DNNL_MAX_CPU_ISA", raising=False)


def test_auto_is_bf16_on_cuda_with_native_bf16_and_fp32_on_older_gpus():
    d = resolve_precision("auto", "cuda", cuda_bf16=True)
    assert (d.precision, d.bf16) == ("bf16", True) and "CUDA" in d.reason
    assert resolve_precision("auto", torch.device("cuda", 0), cuda_bf16=False).precision == "fp32"


@pytest.mark.parametrize("flags,flag", [(ZEN4, "avx512_bf16"), (SAPPHIRE_RAPIDS, "amx_bf16")])
def test_auto_is_bf16_on_a_cpu_with_native_bf16(flags, flag):
    d = resolve_precision("auto", "cpu", cpu_flags=flags)
    assert d.precision == "bf16" and d.reason.startswith("auto: CPU with native bf16") and flag in d.reason


@pytest.mark.parametrize("flags", [AVX2_ONLY, AVX512_NO_BF16], ids=["avx2", "avx512-no-bf16"])
def test_auto_is_fp32_on_a_cpu_without_native_bf16(flags):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # auto never warns: it picked what fits
        d = resolve_precision("auto", "cpu", cpu_flags=flags)
    assert d.precision == "fp32" and not d.bf16
    assert d.reason == "auto: CPU without native bf16 (no avx512_bf16/amx_bf16 flag)"


@pytest.mark.parametrize("cap,native", [("avx2", False), ("AVX512_CORE", False), ("AVX512_CORE_BF16", True),
                                         ("ALL", True), ("", True)])
def test_a_onednn_isa_cap_below_bf16_makes_auto_fp32(monkeypatch, cap, native):
    """ONEDNN_MAX_CPU_ISA=AVX2 makes a bf16 CPU emulate bf16 (1181 ms vs 238 ms fp32 in kd.precision's docstring):
    auto must then pick fp32 and say why."""
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", cap)
    monkeypatch.setattr(kd.precision, "this_cpu_flags", lambda: ZEN4)  # this machine's facts: flags and the cap
    d = resolve_precision("auto", "cpu")
    assert d.bf16 is native
    assert ("ONEDNN_MAX_CPU_ISA" in d.reason) is (not native)


def test_explicit_fp32_and_bf16_are_kept():
    for device, kw in (("cpu", {"cpu_flags": ZEN4}), ("cpu", {"cpu_flags": AVX2_ONLY}), ("cuda", {"cuda_bf16": True})):
        assert resolve_precision("fp32", device, **kw) == kd.precision.Decision("fp32", "fp32 requested")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # native: no warning
        assert resolve_precision("bf16", "cpu", cpu_flags=ZEN4).precision == "bf16"
        assert resolve_precision("bf16", "cuda", cuda_bf16=True).precision == "bf16"
    with pytest.raises(ValueError, match="precision must be one of"):
        resolve_precision("fp16", "cpu", cpu_flags=ZEN4)


def test_explicit_bf16_without_native_support_warns_with_the_slowdown():
    with pytest.warns(PrecisionWarning) as caught:
        d = resolve_precision("bf16", "cpu", cpu_flags=AVX2_ONLY)
    assert d.precision == "bf16"  # the user asked for it; kept, but said how slow
    msg = str(caught[0].message)
    assert "without native bf16" in msg and "8x" in msg and "3,043 ms" in msg and "375 ms" in msg
    assert "auto" in msg and "emulated" in d.reason and "8x" in d.reason


def test_this_machines_flags_agree_with_torchs_cpuinfo():
    """/proc/cpuinfo (the source) and torch's own cpuinfo probe must tell the same story on this machine."""
    probe = getattr(torch.cpu, "_is_avx512_bf16_supported", None)
    if probe is None or not Path("/proc/cpuinfo").is_file():
        pytest.skip("needs /proc/cpuinfo and torch.cpu._is_avx512_bf16_supported")
    assert ("avx512_bf16" in this_cpu_flags()) == probe()
    d = resolve_precision("auto", "cpu")
    assert d.bf16 == any(f in this_cpu_flags() for f in ("avx512_bf16", "amx_bf16"))
    assert f"torch CPU capability {torch.backends.cpu.get_cpu_capability()}" in d.reason


@pytest.mark.parametrize("flags,dtype", [(AVX2_ONLY, torch.float32), (ZEN4, torch.bfloat16)], ids=["avx2", "zen4"])
def test_evaluation_autocast_follows_the_decision(monkeypatch, flags, dtype):
    """kd.evaluation.autocast under `auto` (what every shipped config now uses) on CPU: on only with native bf16."""
    from kd.evaluation import autocast

    monkeypatch.setattr(kd.precision, "this_cpu_flags", lambda: flags)
    lin = torch.nn.Linear(8, 4)
    with torch.inference_mode(), autocast(torch.device("cpu"), "auto"):
        assert lin(torch.randn(2, 8)).dtype == dtype


# ------------------------------------------------------------------------------------------- shipped configs
def _precisions(node, where=""):
    """Every (dotted key, value) of a `precision` field anywhere in a parsed YAML document."""
    if isinstance(node, dict):
        for k, v in node.items():
            key = f"{where}.{k}" if where else str(k)
            if k == "precision":
                yield key, v
            yield from _precisions(v, key)
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _precisions(v, f"{where}[{i}]")


def test_no_shipped_config_forces_bf16():
    files = sorted({*REPO.glob("configs/**/*.yaml"), *REPO.glob("sweeps/**/*.yaml"),
                    *(REPO / "kd" / "resources").glob("**/*.yaml")})
    assert len(files) > 20 and REPO / "configs" / "quickstart.yaml" in files
    forced = [f"{f.relative_to(REPO)}: {key}: {v}" for f in files for doc in yaml.safe_load_all(f.read_text())
              for key, v in _precisions(doc) if v == "bf16"]
    assert not forced, ("precision comes from the hardware (auto), never forced in a shipped config:\n"
                        + "\n".join(forced))


# ------------------------------------------------------------------------------------ what the user sees
def _tiny_rerank_task(folder: Path) -> dict:
    """Two queries x three passages, as real files in the formats the rerank task reads."""
    folder.mkdir()
    queries = {"q1": "how long does a flea live", "q2": "cost of concrete flooring"}
    passages = {"d1": "A flea can live up to a year.", "d2": "Concrete floors cost about five dollars a foot.",
                "d3": "Fleas feed on the blood of their hosts.", "d4": "Polished concrete is popular indoors.",
                "d5": "Interior flooring prices vary.", "d6": "The flea life cycle has four stages."}
    (folder / "queries.jsonl").write_text("".join(json.dumps({"_id": q, "text": t}) + "\n" for q, t in queries.items()))
    (folder / "corpus.jsonl").write_text("".join(json.dumps({"_id": d, "title": "", "text": t}) + "\n"
                                                 for d, t in passages.items()))
    (folder / "qrels.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td1\t2\nq1\td6\t1\nq2\td2\t2\n")
    (folder / "run.trec").write_text("".join(f"{q} Q0 {d} {r + 1} {10 - r} bm25\n" for q, ds in
                                             (("q1", ("d3", "d1", "d6")), ("q2", ("d5", "d4", "d2")))
                                             for r, d in enumerate(ds)))
    return {"task": "rerank", "name": "tiny", "run": str(folder / "run.trec"), "queries": str(folder / "queries.jsonl"),
            "corpus": str(folder / "corpus.jsonl"), "qrels": str(folder / "qrels.tsv"), "top_k": 3}


def test_chosen_precision_and_why_reach_the_log_result_json_and_mlflow_params(tmp_path, minilm_path, monkeypatch,
                                                                             caplog):
    """On an AVX2-only CPU (flags injected) evaluation says `fp32` and why: in the line printed at the start, in
    the result's info (result JSON) and in the MLflow params of the evaluation run (a real sqlite-backed store)."""
    from mlflow.tracking import MlflowClient
    from mlflow.tracking._tracking_service import utils as tracking_utils

    from kd.configs.evaluate import EvalConfig
    from kd.runtime.evaluation import evaluate

    monkeypatch.setattr(kd.precision, "this_cpu_flags", lambda: AVX2_ONLY)
    monkeypatch.setattr(tracking_utils, "_tracking_uri", tracking_utils._tracking_uri)  # evaluate sets it: undo
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cfg = EvalConfig.model_validate({
        "models": [{"name": "m", "path": minilm_path, "options": {"max_query_length": 16, "max_passage_length": 32}}],
        "tasks": [_tiny_rerank_task(tmp_path / "data")], "output_dir": str(tmp_path / "out"), "show_progress": False,
        "compute": {"backend": "local", "batch_size": 8, "device": "cpu"},  # precision: auto (the default)
        "mlflow": {"tracking_uri": uri, "experiment": "precision-test"}})
    with caplog.at_level(logging.INFO, logger="kd.runtime.evaluation"):
        (res,) = evaluate(cfg)
    reason = "auto: CPU without native bf16 (no avx512_bf16/amx_bf16 flag, torch CPU capability "
    assert any(r.getMessage().startswith(f"evaluation precision: fp32 ({reason}") for r in caplog.records)
    assert res.info["precision"] == "fp32" and res.info["precision_reason"].startswith(reason)
    assert json.loads(Path(res.files["json"]).read_text())["info"]["precision"] == "fp32"
    client = MlflowClient(tracking_uri=uri)
    (run,) = client.search_runs([client.get_experiment_by_name("precision-test").experiment_id])
    assert run.data.params["info.precision"] == "fp32"
    assert run.data.params["info.precision_reason"].startswith(reason)
    assert run.data.params["compute.precision"] == "auto"
