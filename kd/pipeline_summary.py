"""The pipeline's result, from the evaluate stage's rows: `summary.json` (what users script against) and the table
the job prints — BM25 | teacher | student without KD | student with KD (Ray-free; kd/runtime/pipeline.py writes it).

summary.json:

    {"models": [{"name", "role", "ndcg@10": {dataset: value}, "rerank_qps", "rerank_batch_size",
                 "speedup_vs_teacher", "timing_contended", "architecture"}, ...],      # in the table's order
     "datasets": [...], "teacher": "teacher" | null,
     "kd_student": "student-<s>" | null, "nokd_twin": "student-<s>-nokd" | null,
     "kd_gain": {dataset: nDCG@10(KD student) − nDCG@10(its no-KD twin)},
     "ratio_to_teacher": {dataset: nDCG@10(KD student) / nDCG@10(teacher)},
     "registered": "models:/name@alias" | null,
     "machine": {"cpu_model", "cpu_flags", "cpu_count", "precision", "precision_reason"}}

Roles (PipelineConfig.model_roles): `bm25` (the first-stage runs, one row; `first_stage` when a run is not named
BM25), `teacher` (the ensemble), `student_nokd`, `student_kd`, `model` (listed in evaluate.models). nDCG@10 columns
are the rerank/dense datasets; a first-stage run sits in the column of the task that re-ranks the same run file.
Re-rank q/s is the efficiency task's figure at its largest batch size; the speed-up over the teacher divides two
figures at the same batch size (the largest both measured); `timing_contended` is the efficiency result's own
flag (other processes used over 10% of the CPU while it was timed), marked `*` in the table. `kd_student` is the registered student when there is one,
else the first KD student with a twin, else the first KD student; every student_kd row with a twin also carries its
own `kd_gain`.
`machine`: this driver's CPU (model name and the flags that decide the speed of bf16 and fp32 kernels) and the
precision evaluation chose (the results' info.precision / precision_reason, from the KD student's rows first).
"""
from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any

ROLE_ORDER = ("bm25", "first_stage", "model", "teacher", "student_nokd", "student_kd")
FIRST_STAGE = {"bm25": "BM25 (first stage)", "first_stage": "first stage (run)"}
# the x86 flags that say which kernels a CPU runs (fp32 AVX2/AVX-512, native bf16) — the rest of /proc/cpuinfo's
# list does not change the numbers
CPU_FLAGS = ("avx", "avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_tile", "amx_bf16")
METRIC = "ndcg@10"


def datasets_of(ev) -> tuple[list[str], dict[str, str]]:
    """(nDCG@10 columns, first-stage run task → the column it belongs to) for an EvalStage/EvalConfig."""
    datasets = [t.name for t in ev.tasks if t.task in ("rerank", "dense")]
    column: dict[str, str] = {}
    for t in ev.tasks:
        if t.task == "run":
            match = [r.name for r in ev.tasks if r.task in ("rerank", "dense") and getattr(r, "run", None) == t.run]
            column[t.name] = match[0] if match else t.name
            if not match:
                datasets.append(t.name)
    return datasets, column


def _rerank_qps(metrics: dict) -> dict[int, float]:
    """Batch size → re-rank queries/s of one efficiency result (keys eff_rerank_bs<N>_qps)."""
    head, tail = "eff_rerank_bs", "_qps"
    return {int(k[len(head):-len(tail)]): float(v) for k, v in metrics.items()
            if k.startswith(head) and k.endswith(tail) and k[len(head):-len(tail)].isdigit()}


def build_summary(ev, rows: list[dict], roles: dict[str, str], twins: dict[str, str], *,
                  registered: str | None = None, registered_student: str | None = None,
                  machine: dict | None = None) -> dict:
    """summary.json from the evaluate stage's result rows (TaskResult.to_dict()); see the module docstring."""
    datasets, column = datasets_of(ev)
    runs = [t.name for t in ev.tasks if t.task == "run"]
    first_role = "bm25" if runs and all("bm25" in n.lower() for n in runs) else "first_stage"
    models: dict[str | None, dict] = {}
    eff: dict[str, dict[int, float]] = {}
    for r in rows:
        name = r["model"]
        if name not in models:
            models[name] = {"name": FIRST_STAGE[first_role] if name is None else name,
                            "role": first_role if name is None else roles.get(name, "model"), METRIC: {},
                            "rerank_qps": None, "rerank_batch_size": None, "speedup_vs_teacher": None,
                            "timing_contended": None, "architecture": None}
        m = models[name]
        m["architecture"] = m["architecture"] or (r.get("info") or {}).get("architecture")
        if r["task"] == "efficiency":
            m["timing_contended"] = (r.get("info") or {}).get("contended")
            eff[name] = _rerank_qps(r["metrics"])
            if eff[name]:
                m["rerank_batch_size"] = max(eff[name])
                m["rerank_qps"] = eff[name][m["rerank_batch_size"]]
            continue
        col = column.get(r["dataset"], r["dataset"]) if name is None else r["dataset"]
        if METRIC in r["metrics"] and col in datasets:
            m[METRIC][col] = float(r["metrics"][METRIC])
    teacher = next((n for n in models if n is not None and models[n]["role"] == "teacher"), None)
    if teacher is not None and eff.get(teacher):
        for n, qps in eff.items():
            common = set(qps) & set(eff[teacher])
            if common and eff[teacher][max(common)] > 0:
                models[n]["speedup_vs_teacher"] = qps[max(common)] / eff[teacher][max(common)]
    for kd_name, twin in twins.items():
        if kd_name in models and twin in models:
            models[kd_name]["nokd_twin"] = twin
            models[kd_name]["kd_gain"] = _gain(models[kd_name][METRIC], models[twin][METRIC])
    ordered = sorted(models.values(), key=lambda m: ROLE_ORDER.index(m["role"]) if m["role"] in ROLE_ORDER
                     else len(ROLE_ORDER))  # stable: evaluation order within a role
    kd_students = [n for n in models if n is not None and models[n]["role"] == "student_kd"]
    kd = registered_student if registered_student in kd_students else next(
        (n for n in kd_students if "nokd_twin" in models[n]), kd_students[0] if kd_students else None)
    kd_row = models[kd] if kd is not None else {METRIC: {}}
    teacher_ndcg = models[teacher][METRIC] if teacher is not None else {}
    return {
        "models": ordered, "datasets": datasets, "teacher": teacher, "kd_student": kd,
        "nokd_twin": kd_row.get("nokd_twin"), "kd_gain": kd_row.get("kd_gain", {}),
        "ratio_to_teacher": {d: v / teacher_ndcg[d] for d, v in kd_row[METRIC].items() if teacher_ndcg.get(d)},
        "registered": registered,
        "machine": {**(machine if machine is not None else machine_facts()), **precision_of(rows, kd)},
    }


def _gain(kd: dict[str, float], nokd: dict[str, float]) -> dict[str, float]:
    return {d: kd[d] - nokd[d] for d in kd if d in nokd}


def precision_of(rows: list[dict], prefer: str | None) -> dict[str, Any]:
    """The precision evaluation ran in (info.precision / precision_reason), from `prefer`'s rows when it has them."""
    found = [r for r in rows if (r.get("info") or {}).get("precision")]
    found.sort(key=lambda r: r["model"] != prefer)
    info = found[0]["info"] if found else {}
    return {"precision": info.get("precision"), "precision_reason": info.get("precision_reason")}


def cpu_model() -> str | None:
    """The CPU's model name (/proc/cpuinfo on Linux, else platform.processor())."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or None


def machine_facts() -> dict[str, Any]:
    """This machine's CPU: model, the flags of CPU_FLAGS it has (kd.precision.this_cpu_flags) and the core count."""
    from kd.precision import this_cpu_flags

    flags = this_cpu_flags()
    return {"cpu_model": cpu_model(), "cpu_flags": [f for f in CPU_FLAGS if f in flags], "cpu_count": os.cpu_count()}


def format_table(summary: dict, *, rerank_depth: int = 100) -> str:
    """The printed table: model | role | nDCG@10 per dataset | re-rank q/s | speed-up over the teacher, then what KD
    gained and the KD student's share of the teacher's nDCG@10."""
    datasets = summary["datasets"]
    head = ["model", "role", *[f"nDCG@10 {d}" for d in datasets], "re-rank q/s", "speed-up vs teacher"]
    body = []
    for m in summary["models"]:
        star = "*" if m["timing_contended"] else ""
        qps = f"{m['rerank_qps']:.3g} (bs{m['rerank_batch_size']}){star}" if m["rerank_qps"] is not None else "-"
        speed = f"{m['speedup_vs_teacher']:.2f}x" if m["speedup_vs_teacher"] is not None else "-"
        body.append([m["name"], m["role"], *(f"{m[METRIC][d]:.4f}" if d in m[METRIC] else "-" for d in datasets),
                     qps, speed])
    widths = [max(len(h), *(len(r[i]) for r in body)) if body else len(h) for i, h in enumerate(head)]
    line = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()  # noqa: E731
    out = [line(head), line(["-" * w for w in widths]), *(line(r) for r in body)]
    for m in summary["models"]:
        if m.get("kd_gain"):
            gains = ", ".join(f"{d} {v:+.4f}" for d, v in m["kd_gain"].items())
            out.append(f"KD gained (nDCG@10, {m['name']} minus its no-KD twin {m['nokd_twin']}): {gains}")
    kd = summary["kd_student"]
    if kd and summary["ratio_to_teacher"]:
        shares = ", ".join(f"{d} {100 * v:.1f}%" for d, v in summary["ratio_to_teacher"].items())
        out.append(f"{kd} keeps of the teacher's nDCG@10: {shares}")
    out.append(f"re-rank q/s: queries re-ranked per second, each query = its top-{rerank_depth} candidates scored on "
               "the fly (a dual encoder encodes the passages too); speed-up: that figure over the teacher's.")
    if any(m["timing_contended"] for m in summary["models"]):
        out.append("* timed while other processes used over 10% of the CPU: not a reliable speed; rerun evaluate on "
                   "an idle machine")
    return "\n".join(out)


def rerank_depth(ev) -> int:
    return next((t.rerank_depth for t in ev.tasks if t.task == "efficiency"), 100)
