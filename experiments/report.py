"""docs/RESULTS.md from the MLflow store of experiments/run.py — no number in it is typed by hand.

    python experiments/report.py [--tracking-uri sqlite:///outputs/experiments/mlflow.db] [--out docs/RESULTS.md]

Every table cell comes from an MLflow run (the newest run of each (model, dataset) in the table's evaluation
experiment; the training run found by its kd.run_name tag); each row names its config, its re-run command and its
MLflow run ids. Rows without runs are listed as "not run yet" with their commands. Verdicts ("reproduced" or not)
are computed from the same numbers. Also draws docs/results_rerankers_efficiency_effectiveness.png (re-rankers of
findings 2 and 3) with kd.evaluation.plot_tradeoff; and docs/results_f1_efficiency_effectiveness.png (finding 1).
"""
from __future__ import annotations

import argparse
import math
import re
import statistics
import sys
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "experiments")]

import run as driver  # noqa: E402  (experiments/run.py: the rows and their commands)
from report_verdicts import f1_verdict, f2_verdicts, f3_verdicts  # noqa: E402

F1_EVAL, F2_EVAL, F3_EVAL = ("results-f1-query-encoder-eval", "results-f2-margin-mse-eval", "results-f3-tinybert-eval")
F1_TRAIN, F2_TRAIN, F3_TRAIN = ("results-f1-query-encoder-train", "results-f2-margin-mse-train",
                                "results-f3-tinybert-train")
LAYERS = {(1, "top-bottom"): "{0}", (1, "uniform"): "{2}", (2, "top-bottom"): "{0, 5}", (2, "uniform"): "{1, 4}",
          (2, "bottom"): "{0, 1}", (3, "top-bottom"): "{0, 1, 5}", (3, "uniform"): "{0, 2, 4}",
          (3, "bottom"): "{0, 1, 2}"}


class Store:
    def __init__(self, uri: str):
        from mlflow import MlflowClient

        self.c = MlflowClient(tracking_uri=uri)
        self._eval: dict[str, dict] = {}

    def eval_runs(self, experiment: str) -> dict[tuple[str, str], object]:
        """(kd.model, kd.dataset) → newest evaluate run of the experiment."""
        if experiment not in self._eval:
            exp = self.c.get_experiment_by_name(experiment)
            out: dict = {}
            if exp is not None:
                runs = self.c.search_runs([exp.experiment_id], "tags.`kd.job` = 'evaluate'",
                                          order_by=["attributes.start_time DESC"], max_results=5000)
                for r in runs:
                    key = (r.data.tags.get("kd.model", ""), r.data.tags.get("kd.dataset", ""))
                    out.setdefault(key, r)
            self._eval[experiment] = out
        return self._eval[experiment]

    def all_runs(self, experiment: str) -> list:
        exp = self.c.get_experiment_by_name(experiment)
        if exp is None:
            return []
        return list(self.c.search_runs([exp.experiment_id], "tags.`kd.job` = 'evaluate'", max_results=5000))

    def get(self, experiment: str, model: str, dataset: str):
        return self.eval_runs(experiment).get((model, dataset))

    def train_run(self, experiment: str, run_name: str):
        exp = self.c.get_experiment_by_name(experiment)
        if exp is None:
            return None
        runs = self.c.search_runs([exp.experiment_id], f"tags.`kd.run_name` LIKE '{run_name}%'",
                                  order_by=["attributes.start_time DESC"], max_results=50)
        runs = [r for r in runs if r.data.tags.get("kd.run_name") == run_name
                or r.data.tags.get("kd.run_name", "").startswith(f"{run_name}-rerun-")]
        finished = [r for r in runs if r.info.status == "FINISHED"]
        return (finished or runs or [None])[0]


def m(run, key: str) -> float | None:
    if run is None:
        return None
    v = run.data.metrics.get(key)
    return None if v is None or (isinstance(v, float) and math.isnan(v)) else float(v)


def num(v: float | None, digits: int = 2) -> str:
    return "–" if v is None else f"{v:.{digits}f}"


def f4(v: float | None) -> str:
    return "–" if v is None else f"{v:.4f}"


def pct(v: float | None) -> str:
    return "–" if v is None else f"{100 * v:.1f}%"


def rid(run) -> str:
    return "–" if run is None else f"`{run.info.run_id[:8]}`"


def wall(run) -> str:
    if run is None or not run.info.end_time:
        return "–"
    return f"{(run.info.end_time - run.info.start_time) / 1000:.0f} s"


def cmd(row_id: str) -> str:
    return f"`python experiments/run.py row {row_id}`"


def contended(store: Store, experiment: str, model: str, dataset: str) -> bool:
    r = store.get(experiment, model, dataset)
    return bool(r is not None and r.data.params.get("info.contended") == "True")


def mean_std(xs: list[float]) -> tuple[float, float]:
    return statistics.mean(xs), (statistics.stdev(xs) if len(xs) > 1 else float("nan"))


# ======================================================================================================== F1
def f1_speed(store: Store, t_eff):
    """(speed, speeds): speed(model) gives a model's query-encoding speed-up cells over the teacher at batch sizes
    1 / 16 / 64, each against the teacher timed by the same evaluate job ("n/a†" where either timing was contended);
    speeds collects the distilled students' speed-ups by (depth, batch size)."""
    teacher_effs = sorted((r for r in store.all_runs(F1_EVAL) if r.data.tags.get("kd.model") == "f1-teacher-minilm-l6"
                           and r.data.tags.get("kd.dataset") == "f1-efficiency"), key=lambda r: r.info.start_time)
    speeds: dict[tuple[int, int], list[float]] = {}

    def same_job_teacher(e):
        """The teacher's timing from the same evaluate job: the newest teacher efficiency run started before `e`
        (the job times the teacher first, then each model in turn)."""
        before = [r for r in teacher_effs if e is not None and r.info.start_time <= e.info.start_time]
        return before[-1] if before else t_eff

    def speed(model: str) -> list[str]:
        e = store.get(F1_EVAL, model, "f1-efficiency")
        te = same_job_teacher(e)
        out = []
        loaded = any(r is not None and r.data.params.get("info.contended") == "True" for r in (e, te))
        for b in (1, 16, 64):
            s, t = m(e, f"eff_query_encode_bs{b}_qps"), m(te, f"eff_query_encode_bs{b}_qps")
            if s is not None and t is not None and loaded:
                out.append("n/a†")  # one of the two timed while other processes used > 10% of the CPU
            else:
                out.append("–" if s is None or t is None else f"{s / t:.2f}×")
                if s is not None and t is not None and model.startswith("f1-qenc-"):
                    depth = int(model.split("-")[2][0])
                    speeds.setdefault((depth, b), []).append(s / t)
        return out

    return speed, speeds


def f1_student_rows(store: Store, not_run: list[str], speed, t_ndcg: float | None) -> tuple[list[str], dict]:
    """The distilled query encoders' table rows (1-3 layers x top-bottom / uniform / bottom; 3 seeds of the headline
    2-layer top-bottom) and their stats {(layers, scheme, seed): (nDCG@10, share of the teacher's)}."""
    lines, stats = [], {}
    for n in (1, 2, 3):
        for scheme in ("top-bottom", "uniform", "bottom"):
            seed_rows = [0, 1, 2] if (n, scheme) == (2, "top-bottom") else [0]
            for seed in seed_rows:
                if (n, scheme) == (1, "bottom"):
                    lines.append(f"| 1 layer bottom | {{0}} | = 1 layer top-bottom (same layer {{0}}, same run) | | | | | | | |")
                    continue
                rowid = f"f1/{n}l-{scheme}-s{seed}"
                model = f"f1-qenc-{n}l-{scheme}-s{seed}"
                ev = store.get(F1_EVAL, model, "scifact-test")
                ee = store.get(F1_EVAL, model, "f1-efficiency")
                tr = store.train_run(F1_TRAIN, f"results-{model}")
                nd = m(ev, "ndcg_at_10")
                if ev is None:
                    not_run.append(rowid)
                ratio = nd / t_ndcg if nd is not None and t_ndcg else None
                stats[(n, scheme, seed)] = (nd, ratio)
                label = f"{n} layer{'s' if n > 1 else ''} {scheme}" + (f", seed {seed}" if seed_rows != [0] else "")
                qps1 = m(ee, "eff_query_encode_bs1_qps")
                lines.append(f"| {label} | {LAYERS[(n, scheme)]} | {f4(nd)} | {pct(ratio)} | {' / '.join(speed(model))} | "
                             f"{'–' if qps1 is None else f'{qps1:.0f}'} | {f4(m(tr, 'val_ndcg_at_10'))} | {wall(tr)} | "
                             f"{cmd(rowid)} | {rid(ev)} / {rid(tr)} |")
    return lines, stats


def f1_eval_repro(store: Store) -> tuple[int, float] | None:
    """Reproducibility of the evaluation: (models evaluated by more than one job, the largest spread of their SciFact
    nDCG@10), or None when no model was evaluated twice."""
    by_model: dict = {}
    for r in store.all_runs(F1_EVAL):
        if r.data.tags.get("kd.dataset") == "scifact-test" and "ndcg_at_10" in r.data.metrics:
            by_model.setdefault(r.data.tags.get("kd.model"), []).append(r.data.metrics["ndcg_at_10"])
    multi = {k: v for k, v in by_model.items() if len(v) > 1}
    return (len(multi), max(max(v) - min(v) for v in multi.values())) if multi else None


def f1_headline(store: Store, stats: dict, t_ndcg: float | None) -> str:
    """The headline under the table (2 layers top-bottom over its seeds, against the goal and the paper); fills
    stats["headline"] and stats["contended_any"]. Empty while no seed has been evaluated."""
    heads = [stats.get((2, "top-bottom", s)) for s in (0, 1, 2)]
    heads = [h for h in heads if h and h[0] is not None]
    if not heads:
        return ""
    mn, sd = mean_std([h[0] for h in heads])
    rm, rs = mean_std([h[1] for h in heads])
    stats["headline"] = (mn, sd, rm, rs, len(heads))
    verdict = ("**met**" if rm >= 0.95 else "**not met**")
    effs = [store.get(F1_EVAL, f"f1-qenc-2l-top-bottom-s{s}", "f1-efficiency") for s in (0, 1, 2)]
    cont = [bool(r is not None and r.data.params.get("info.contended") == "True") for r in effs]
    stats["contended_any"] = any(cont) or contended(store, F1_EVAL, "f1-teacher-minilm-l6", "f1-efficiency")
    return (f"**Headline (2 layers top-bottom {{0, 5}}, {len(heads)} seeds): nDCG@10 {mn:.4f} ± {sd:.4f} "
            f"(mean ± sample std), {100 * rm:.1f}% ± {100 * rs:.1f}% of the teacher's {t_ndcg:.4f}.** "
            f"Goal ≥ 95% of the teacher: {verdict}. Paper (BERT-base teacher, 12 → 2 layers {{0, 11}}): SciFact "
            f"91.6% (.557 / .608), 92.5% on average over BEIR.")


def finding1(store: Store, not_run: list[str]) -> tuple[str, dict]:
    teacher = store.get(F1_EVAL, "f1-teacher-minilm-l6", "scifact-test")
    t_eff = store.get(F1_EVAL, "f1-teacher-minilm-l6", "f1-efficiency")
    t_ndcg = m(teacher, "ndcg_at_10")
    speed, speeds = f1_speed(store, t_eff)
    lines = ["| row | layers kept (of 6) | SciFact nDCG@10 | % of teacher | q-enc speed-up bs1 / bs16 / bs64 | "
             "q-enc queries/s bs1 (raw, see †) | DL'19 val nDCG@10 (end of training, BM25 top-10, 20 q) | train wall | re-run | MLflow eval run / train run |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    lines.append(f"| teacher all-MiniLM-L6-v2 | all 6 | {f4(t_ndcg)} | {'100%' if teacher else '–'} | "
                 f"{'1.00× / 1.00× / 1.00×' if t_eff else '– / – / –'} | "
                 f"{num(m(t_eff, 'eff_query_encode_bs1_qps'), 0)} | – | – | "
                 f"{cmd('f1/teacher')} | {rid(teacher)} / – |")
    if teacher is None:
        not_run.append("f1/teacher")
    u = store.get(F1_EVAL, "f1-untrained-2l-top-bottom", "scifact-test")
    ue = store.get(F1_EVAL, "f1-untrained-2l-top-bottom", "f1-efficiency")
    if u is None:
        not_run.append("f1/untrained-2l-top-bottom")
    lines.append(f"| 2 layers top-bottom, **not distilled** | {{0, 5}} | {f4(m(u, 'ndcg_at_10'))} | "
                 f"{pct(m(u, 'ndcg_at_10') / t_ndcg if u and t_ndcg else None)} | {' / '.join(speed('f1-untrained-2l-top-bottom'))} | "
                 f"{num(m(ue, 'eff_query_encode_bs1_qps'), 0)} | – | – | "
                 f"{cmd('f1/untrained-2l-top-bottom')} | {rid(u)} / – |")
    stats: dict = {"teacher": t_ndcg}
    rows, students = f1_student_rows(store, not_run, speed, t_ndcg)
    lines += rows
    stats.update(students)
    if (repro := f1_eval_repro(store)) is not None:
        stats["eval_repro"] = repro
    stats["speeds"] = speeds
    head = f1_headline(store, stats, t_ndcg)
    return "\n".join(lines) + ("\n\n" + head if head else ""), stats


# ======================================================================================================== F3
def finding3(store: Store, not_run: list[str]) -> tuple[str, dict]:
    models = [("f3/teacher-6l", "f3-teacher-6l", "teacher, 6 layers (supervised RankNet)", "results-f3-teacher-tinybert-6l"),
              ("f3/3l-standard-kd", "f3-3l-standard-kd", "student 3 layers, standard KD (0.5 soft + 0.5 hard)",
               "results-f3-student-3l-standard-kd"),
              ("f3/3l-simplified-tinybert", "f3-3l-simplified-tinybert",
               "student 3 layers, Simplified TinyBERT (att + hid + soft + hard)", "results-f3-student-3l-simplified-tinybert")]
    for seed in (1, 2):
        for short, what in (("standard-kd", "standard KD"), ("simplified-tinybert", "Simplified TinyBERT")):
            models.append((f"f3/3l-{short}-s{seed}", f"f3-3l-{short}-s{seed}", f"student 3 layers, {what}, seed {seed}",
                           f"results-f3-student-3l-{short}-s{seed}"))
    aggs = ["maxp", "firstp", "sump", "avgp", "top2"]
    lines = ["| row | DL'19 BM25 top-20 re-rank nDCG@10 | SciFact doc MaxP | FirstP | SumP | AvgP | top-2 mean | "
             "re-rank queries/s bs64 | train wall | re-run | MLflow eval runs (DL'19 / MaxP) / train run |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    stats = {}
    for rowid, model, label, run_name in models:
        dl = store.get(F3_EVAL, model, "dl19-top20")
        docs = {a: store.get(F3_EVAL, model, f"scifact-doc-{a}") for a in aggs}
        eff = store.get(F3_EVAL, model, "f3-efficiency")
        tr = store.train_run(F3_TRAIN, run_name)
        if dl is None:
            not_run.append(rowid)
        stats[model] = {"dl19": m(dl, "ndcg_at_10"), **{a: m(docs[a], "ndcg_at_10") for a in aggs}}
        q = m(eff, "eff_rerank_bs64_qps")
        lines.append(f"| {label} | {f4(m(dl, 'ndcg_at_10'))} | " + " | ".join(f4(m(docs[a], 'ndcg_at_10')) for a in aggs)
                     + f" | {'–' if q is None else f'{q:.2f}'} | {wall(tr)} | {cmd(rowid)} | "
                       f"{rid(dl)} / {rid(docs['maxp'])} / {rid(tr)} |")
    heads = []
    for short, what in (("standard-kd", "standard KD"), ("simplified-tinybert", "Simplified TinyBERT")):
        seeds = [stats.get(f"f3-3l-{short}{sfx}") for sfx in ("", "-s1", "-s2")]
        seeds = [v for v in seeds if v and v.get("dl19") is not None]
        if len(seeds) < 2:
            continue
        cells = []
        for key, label in (("dl19", "DL'19 nDCG@10"), ("maxp", "SciFact MaxP"), ("firstp", "SciFact FirstP")):
            xs = [v[key] for v in seeds if v.get(key) is not None]
            if len(xs) == len(seeds):
                mn, sd = mean_std(xs)
                stats.setdefault("mean", {}).setdefault(short, {})[key] = (mn, sd, len(xs))
                cells.append(f"{label} {mn:.4f} ± {sd:.4f}")
        heads.append(f"**{what}, {len(seeds)} seeds (mean ± sample std):** " + ", ".join(cells) + ".")
    return "\n".join(lines) + ("\n\n" + "<br>\n".join(heads) if heads else ""), stats


# ======================================================================================================== F2
def finding2(store: Store, not_run: list[str]) -> tuple[str, dict]:
    lines = ["| row | SciFact BM25 top-10 re-rank nDCG@10 | DL'19 BM25 top-20 re-rank nDCG@10 | re-rank queries/s bs64 | "
             "train wall | re-run | MLflow eval runs (SciFact / DL'19) / train run |",
             "|---|---|---|---|---|---|---|"]
    stats = {}
    b1 = store.get(F2_EVAL, "", "scifact-bm25")
    b2 = store.get(F2_EVAL, "", "dl19-bm25")
    lines.append(f"| BM25 (first stage) | {f4(m(b1, 'ndcg_at_10'))} | {f4(m(b2, 'ndcg_at_10'))} | – | – | "
                 f"`python experiments/run.py eval f2` | {rid(b1)} / {rid(b2)} / – |")
    for seed in (1, 2):
        model = f"f2-teacher-bert-cat-s{seed}"
        rowid = f"f2/teacher-s{seed}"
        a, b = store.get(F2_EVAL, model, "scifact-bm25-top10"), store.get(F2_EVAL, model, "dl19-top20")
        e = store.get(F2_EVAL, model, "f2-efficiency")
        tr = store.train_run(F2_TRAIN, f"results-{model}")
        if a is None:
            not_run.append(rowid)
        stats[model] = (m(a, "ndcg_at_10"), m(b, "ndcg_at_10"))
        q = m(e, "eff_rerank_bs64_qps")
        lines.append(f"| teacher BERT_CAT member s{seed}{' (= T1)' if seed == 1 else ''} | {f4(m(a, 'ndcg_at_10'))} | "
                     f"{f4(m(b, 'ndcg_at_10'))} | {'–' if q is None else f'{q:.2f}'} | {wall(tr)} | {cmd(rowid)} | "
                     f"{rid(a)} / {rid(b)} / {rid(tr)} |")
    conds = (("nokd", "no teacher (RankNet)"), ("kd-t1", "Margin-MSE, T1"), ("kd-t2", "Margin-MSE, T2"))

    def student_row(model: str, rowid: str, label: str, key: tuple) -> None:
        a, b = store.get(F2_EVAL, model, "scifact-bm25-top10"), store.get(F2_EVAL, model, "dl19-top20")
        if a is None:
            not_run.append(rowid)
            return
        e = store.get(F2_EVAL, model, "f2-efficiency")
        tr = store.train_run(F2_TRAIN, f"results-{model}")
        stats[key] = (m(a, "ndcg_at_10"), m(b, "ndcg_at_10"))
        q = m(e, "eff_rerank_bs64_qps")
        lines.append(f"| {label} | {f4(m(a, 'ndcg_at_10'))} | {f4(m(b, 'ndcg_at_10'))} | "
                     f"{'–' if q is None else f'{q:.2f}'} | {wall(tr)} | {cmd(rowid)} | {rid(a)} / {rid(b)} / {rid(tr)} |")

    for arch in ("bert_cat", "bert_dot", "colbert", "prettr", "tk"):
        s = arch.replace("_", "-")
        for cond, what in conds:
            student_row(f"f2-{s}-{cond}", f"f2/{s}-{cond}", f"{arch.upper()} — {what}", (arch, cond))
    for seed in (1, 2):
        for cond, what in conds:
            student_row(f"f2-bert-dot-{cond}-s{seed}", f"f2/bert-dot-{cond}-s{seed}", f"BERT_DOT — {what}, seed {seed}",
                        ("bert_dot", cond, seed))
    heads = []
    for cond, what in (("nokd", "no teacher"), ("kd-t1", "Margin-MSE T1"), ("kd-t2", "Margin-MSE T2")):
        seeds = [stats.get(("bert_dot", cond))] + [stats.get(("bert_dot", cond, sd)) for sd in (1, 2)]
        seeds = [v for v in seeds if v and v[0] is not None and v[1] is not None]
        if len(seeds) < 2:
            continue
        (sm, ss), (dm, ds) = mean_std([v[0] for v in seeds]), mean_std([v[1] for v in seeds])
        stats.setdefault("bert_dot_mean", {})[cond] = ((sm, ss), (dm, ds), len(seeds))
        heads.append(f"**BERT_DOT, {what}, {len(seeds)} seeds (mean ± sample std):** SciFact {sm:.4f} ± {ss:.4f}, "
                     f"DL'19 {dm:.4f} ± {ds:.4f}.")
    return "\n".join(lines) + ("\n\n" + "<br>\n".join(heads) if heads else ""), stats


# ======================================================================================================== plot
def seed_points(runs: list[tuple[str, float | None, float | None, bool]]) -> list[dict]:
    """(model, x, y, contended) per evaluated model → plot points, one per condition: the seeds of a condition
    (names ending -s<N>) share a point at their mean with the std as error bar; teachers stay apart (each is a
    different model; T2 is their mean). Models missing either metric are left out."""
    groups: dict[str, list[tuple[float, float, bool]]] = {}
    for model, x, y, busy in runs:
        if x is not None and y is not None:
            base = model if "teacher" in model else re.sub(r"-s\d+$", "", model)
            groups.setdefault(base, []).append((x, y, busy))
    pts = []
    for base, g in sorted(groups.items()):
        y, std = mean_std([r[1] for r in g])
        pts.append({"label": base + (f" ({len(g)} seeds)" if len(g) > 1 else ""),
                    "x": statistics.mean(r[0] for r in g), "y": y, "yerr": std if len(g) > 1 else None,
                    "contended": any(r[2] for r in g)})
    return pts


def draw(runs: list[tuple[str, float | None, float | None, bool]], out: Path, **labels) -> str | None:
    """seed_points(runs) drawn by kd.evaluation.plot_tradeoff(points, out, **labels) (xlabel, ylabel, title); the
    figure's path relative to the repository, or None (nothing drawn) when no run has both metrics."""
    from kd.evaluation import plot_tradeoff

    pts = seed_points(runs)
    if not pts:
        return None
    plot_tradeoff(pts, out, **labels)
    return str(out.relative_to(REPO))


def rerank_plot(store: Store, out: Path) -> str | None:
    runs = []
    for exp, prefix in ((F3_EVAL, "f3-"), (F2_EVAL, "f2-")):
        for (model, ds), r in store.eval_runs(exp).items():
            if model.startswith(prefix) and ds == "dl19-top20":
                runs.append((model, m(r, "eff_rerank_bs64_qps"), m(r, "ndcg_at_10"),
                             contended(store, exp, model, f"{prefix}efficiency")))
    return draw(runs, out, xlabel="re-ranking queries/s (100 candidates, batch 64, CPU bf16)",
                ylabel="nDCG@10 (DL'19, BM25 top-20 re-ranked)",
                title="Re-rankers of findings 2 and 3 (CPU, 2 cores; seeds: mean ± std)")


def f1_plot(store: Store, out: Path) -> str | None:
    """Finding 1's figure from MLflow: SciFact nDCG@10 vs query-encoding queries/s at batch 64 (steadier than batch 1
    on a 2-core VM), one point per condition (seeds averaged), hollow when timed under load."""
    runs = []
    for (model, ds), r in store.eval_runs(F1_EVAL).items():
        if ds == "scifact-test":
            runs.append((model.removeprefix("f1-"), m(store.get(F1_EVAL, model, "f1-efficiency"),
                                                      "eff_query_encode_bs64_qps"),
                         m(r, "ndcg_at_10"), contended(store, F1_EVAL, model, "f1-efficiency")))
    return draw(runs, out, xlabel="query encoding queries/s (batch 64, CPU bf16, 2 cores)",
                ylabel="nDCG@10 (SciFact test, teacher's index)",
                title="Finding 1: distilled query encoders vs the teacher (seeds: mean ± std)")


# ======================================================================================================== page
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--tracking-uri", default=driver.TRACKING_URI)
    ap.add_argument("--out", default=str(REPO / "docs" / "RESULTS.md"))
    args = ap.parse_args()
    store = Store(args.tracking_uri)
    not_run: list[str] = []
    t1, s1 = finding1(store, not_run)
    t3, s3 = finding3(store, not_run)
    t2, s2 = finding2(store, not_run)
    missing_steps = [r.id for r in driver.ROWS.values() if r.output and not (REPO / r.output).is_file()]
    not_run[:] = [r for r in missing_steps if r.startswith("data/")] + not_run + \
        [r for r in missing_steps if not r.startswith("data/")]
    fig2 = rerank_plot(store, REPO / "docs" / "results_rerankers_efficiency_effectiveness.png")
    fig1 = f1_plot(store, REPO / "docs" / "results_f1_efficiency_effectiveness.png")

    page = TEMPLATE.read_text() if (TEMPLATE := REPO / "experiments" / "RESULTS.template.md").is_file() else ""
    f1_h = s1.get("headline")
    values = {
        "generated": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "tracking_uri": "sqlite:///outputs/experiments/mlflow.db",
        "table_f1": t1, "table_f2": t2, "table_f3": t3,
        "f2_verdicts": f2_verdicts(s2),
        "f3_verdicts": f3_verdicts(s3),
        "f1_verdict": f1_verdict(s1),
        "fig_f1": ("![finding 1: efficiency vs effectiveness](results_f1_efficiency_effectiveness.png)" if fig1
                   else "_(not drawn yet: `python experiments/run.py eval f1`)_"),
        "fig_rerank": (f"![re-rankers: efficiency vs effectiveness](results_rerankers_efficiency_effectiveness.png)"
                       if fig2 else "_(no re-ranker evaluated yet)_"),
        "not_run": not_run_section(not_run),
        "f3_status": status("f3", not_run), "f2_status": status("f2", not_run),
    }
    for k, v in values.items():
        page = page.replace("{{" + k + "}}", str(v))
    Path(args.out).write_text(page)
    print(f"wrote {args.out} ({len(not_run)} rows not run yet)")


def status(table: str, not_run: list[str]) -> str:
    rows = [r for r in driver.ROWS.values() if r.table == table and r.eval_model]
    missing = [r for r in rows if r.id in not_run]
    if not missing:
        return ""
    if len(missing) == len(rows):
        return ("**Not run yet: no row of this table has runs in the MLflow store, so it shows no numbers.** In this "
                "session the 2 shared CPU cores were oversubscribed by other sessions' tests and benchmarks while finding 1 "
                "trained), and finding 1 — the priority — used the whole time budget. Every config and command is ready "
                "(see *Not run yet* below; `python experiments/run.py table data` first, then "
                f"`python experiments/run.py table {table}`).")
    return (f"**Partly run: {len(missing)} of {len(rows)} rows have no runs yet** (listed under *Not run yet* with their "
            "commands); their cells are empty.")


def not_run_section(rows: list[str]) -> str:
    if not rows:
        return "Every row above has its runs."
    out = ["| row | command(s) it runs |", "|---|---|"]
    for r in rows:
        row = driver.ROWS[r]
        cmds = "<br>".join(f"`{driver.show(a)}`" for a in row.train) or "(evaluation only)"
        ev = f"<br>then the evaluation: model `{row.eval_model}` of `{driver.EVAL_CONFIGS[row.table]}`" if row.eval_model else ""
        needs = f"<br>needs first: {', '.join(row.needs)}" if row.needs else ""
        out.append(f"| `{r}` | {cmds}{ev}{needs} |")
    return "\n".join(out)


if __name__ == "__main__":
    main()
