"""Driver for docs/RESULTS.md: every row of every table is one named step that runs the project's own jobs
(jobs.mine_triples / jobs.distill / jobs.score_teachers / jobs.evaluate) with a config from configs/experiments/.

    python experiments/run.py list                      # every row and the exact job command(s) it runs
    python experiments/run.py row f1/2l-top-bottom-s0   # one row: its training job (if any), then its evaluation
    python experiments/run.py table f1                  # every row of a table, then one evaluation of all its models
    python experiments/run.py train f1/2l-top-bottom-s0 # the training part only
    python experiments/run.py eval f1 [--models a,b]    # the evaluation part only (the models trained so far)
    python experiments/run.py report                    # = python experiments/report.py (MLflow → docs/RESULTS.md)

Options: --fresh retrains under a new run name (`<name>-rerun-<UTC time>`; the registry alias then points at the
new version, so the evaluation uses it); without it a finished training run is not retrained (jobs.distill resumes
by run.name). --dry-run prints the commands.

Environment set for every job: MLFLOW_TRACKING_URI=sqlite:///<repo>/outputs/experiments/mlflow.db (one store for all
tables; artifacts in outputs/experiments/mlartifacts), RAY_ADDRESS=local (a private local Ray per job, never someone
else's cluster) unless RAY_ADDRESS is already set, and every job runs under `nice -n 19` (shared machine).
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
CFG = "configs/experiments"
STORE = REPO / "outputs" / "experiments"
TRACKING_URI = f"sqlite:///{STORE / 'mlflow.db'}"
RUNS = STORE / "runs"
WALL = STORE / "walltimes.jsonl"


@dataclass
class Row:
    id: str                      # table/row
    table: str
    train: list[list[str]] = field(default_factory=list)   # job argv lists (without python -m)
    run_name: str | None = None  # jobs.distill run.name (for --fresh and "is it trained?")
    eval_model: str | None = None  # model name in the table's eval config
    needs: list[str] = field(default_factory=list)         # rows that must have run first
    output: str | None = None    # the file a row without a run name writes ("has it run?")
    note: str = ""


def distill(cfg: str, sets: dict) -> list[str]:
    argv = ["jobs.distill", "--config", f"{CFG}/{cfg}"]
    for k, v in sets.items():
        argv += ["--set", f"{k}={v}"]
    return argv


def _rows() -> dict[str, Row]:
    rows: list[Row] = []
    # ------------------------------------------------------------------------------------------------ shared data
    rows.append(Row("data/triples", "data", [["jobs.mine_triples", "--config", f"{CFG}/scifact_mine_n1.yaml"]],
                    output="outputs/experiments/scifact/triples.train.n1.tsv"))
    rows.append(Row("data/bm25-test", "data", [["@experiments/bm25_scifact_test.py"]],
                    output="outputs/experiments/scifact/bm25.test.top100.trec"))
    # ------------------------------------------------------------------------------------------------ finding 1
    rows.append(Row("f1/teacher", "f1", eval_model="f1-teacher-minilm-l6"))
    rows.append(Row("f1/untrained-2l-top-bottom", "f1", eval_model="f1-untrained-2l-top-bottom",
                    note="layer subset {0, 5} of the teacher, no training"))
    # the headline row's three seeds first, then the other schemes and depths
    f1 = [(2, "top-bottom", 0), (2, "top-bottom", 1), (2, "top-bottom", 2)] + [
        (n, s, 0) for n in (2, 1, 3) for s in ("top-bottom", "uniform", "bottom") if (n, s) != (2, "top-bottom")]
    for n, scheme, seed in f1:
        if (n, scheme) == (1, "bottom"):
            continue  # layer {0}: identical to 1-layer top-bottom
        name = f"results-f1-qenc-{n}l-{scheme}-s{seed}"
        rows.append(Row(f"f1/{n}l-{scheme}-s{seed}", "f1", [distill("f1_query_encoder.yaml", {
            "student.init.layers": scheme, "student.init.num_layers": n, "training.seed": seed,
            "run.name": name, "registry.name": name})], run_name=name, eval_model=f"f1-qenc-{n}l-{scheme}-s{seed}"))
    # ------------------------------------------------------------------------------------------------ finding 3
    rows.append(Row("f3/teacher-6l", "f3", [distill("f3_teacher.yaml", {})], run_name="results-f3-teacher-tinybert-6l",
                    eval_model="f3-teacher-6l", needs=["data/triples"]))
    # seed 0 of both losses first, then seeds 1 and 2 (the headline's mean ± std over 3 seeds)
    for seed in (0, 1, 2):
        for loss, short in (("standard_kd", "standard-kd"), ("simplified_tinybert", "simplified-tinybert")):
            sfx = "" if seed == 0 else f"-s{seed}"
            name = f"results-f3-student-3l-{short}{sfx}"
            sets = {"loss.name": loss, "run.name": name, "registry.name": name}
            if seed:
                sets["training.seed"] = seed
            rows.append(Row(f"f3/3l-{short}{sfx}", "f3", [distill("f3_student.yaml", sets)], run_name=name,
                            eval_model=f"f3-3l-{short}{sfx}", needs=["f3/teacher-6l"]))
    # ------------------------------------------------------------------------------------------------ finding 2
    for seed in (1, 2):
        name = f"results-f2-teacher-bert-cat-s{seed}"
        rows.append(Row(f"f2/teacher-s{seed}", "f2", [distill("f2_teacher.yaml", {
            "training.seed": seed, "run.name": name, "registry.name": name})], run_name=name,
            eval_model=f"f2-teacher-bert-cat-s{seed}", needs=["data/triples", "data/bm25-test"]))
    for t, members in (("t1", ["f2/teacher-s1"]), ("t2", ["f2/teacher-s1", "f2/teacher-s2"])):
        rows.append(Row(f"f2/score-{t}", "f2", [["jobs.score_teachers", "--config", f"{CFG}/f2_score_{t}.yaml"]],
                        needs=members, output=f"outputs/experiments/scifact/teacher_scores_{t}/teacher_scores.tsv"))
    # cheapest students first: the table is filled in this order when time runs out
    for arch in ("bert_dot", "tk", "colbert", "bert_cat", "prettr"):
        s = arch.replace("_", "-")
        for cond in ("nokd", "kd-t1", "kd-t2"):
            name = f"results-f2-{s}-{cond}"
            sets = {"student.architecture": arch, "run.name": name, "registry.name": name}
            if arch == "bert_dot":  # raw dot product: MiniLM's folder declares L2 normalisation, which caps scores
                sets.update({"student.options.pooling": "mean", "student.options.normalize": "false"})
            if cond == "nokd":
                cmd = distill("f2_student_nokd.yaml", sets)
            else:
                t = cond[-2:]
                sets = {"teacher.scores": f"outputs/experiments/scifact/teacher_scores_{t}/teacher_scores.tsv", **sets}
                cmd = distill("f2_student_kd.yaml", sets)
            needs = ["data/triples"] + ([f"f2/score-{cond[-2:]}"] if cond != "nokd" else [])
            rows.append(Row(f"f2/{s}-{cond}", "f2", [cmd], run_name=name, eval_model=f"f2-{s}-{cond}", needs=needs))
    # the headline (BERT_DOT, the paper's main student): seeds 1 and 2 of every condition, after all other rows
    # (no KD vs T2 first: the comparison the paper headlines; T1's seeds last)
    for cond, seed in (("nokd", 1), ("kd-t2", 1), ("nokd", 2), ("kd-t2", 2), ("kd-t1", 1), ("kd-t1", 2)):
        name = f"results-f2-bert-dot-{cond}-s{seed}"
        sets = {"student.architecture": "bert_dot", "run.name": name, "registry.name": name,
                "training.seed": seed, "student.options.pooling": "mean", "student.options.normalize": "false"}
        if cond == "nokd":
            cmd = distill("f2_student_nokd.yaml", sets)
        else:
            sets = {"teacher.scores": f"outputs/experiments/scifact/teacher_scores_{cond[-2:]}/teacher_scores.tsv",
                    **sets}
            cmd = distill("f2_student_kd.yaml", sets)
        needs = ["data/triples"] + ([f"f2/score-{cond[-2:]}"] if cond != "nokd" else [])
        rows.append(Row(f"f2/bert-dot-{cond}-s{seed}", "f2", [cmd], run_name=name,
                        eval_model=f"f2-bert-dot-{cond}-s{seed}", needs=needs))
    return {r.id: r for r in rows}


ROWS = _rows()
EVAL_CONFIGS = {"f1": f"{CFG}/f1_eval.yaml", "f2": f"{CFG}/f2_eval.yaml", "f3": f"{CFG}/f3_eval.yaml"}


# ------------------------------------------------------------------------------------------------------ running
def env() -> dict[str, str]:
    e = dict(os.environ)
    e.setdefault("MLFLOW_TRACKING_URI", TRACKING_URI)
    e.setdefault("RAY_ADDRESS", "local")
    e.setdefault("HF_HUB_OFFLINE", "1")
    e.setdefault("TRANSFORMERS_OFFLINE", "1")
    e.setdefault("PYTHONUNBUFFERED", "1")
    e["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), e.get("PYTHONPATH")]))
    return e


def full_argv(argv: list[str]) -> list[str]:
    if argv[0].startswith("@"):
        return ["nice", "-n", "19", sys.executable, argv[0][1:], *argv[1:]]
    return ["nice", "-n", "19", sys.executable, "-m", *argv]


def show(argv: list[str]) -> str:
    shown = [a for a in full_argv(argv)]
    shown[3] = "python"
    return " ".join(shlex.quote(a) for a in shown)


def execute(argv: list[str], label: str, dry: bool) -> None:
    print(f"\n$ {show(argv)}", flush=True)
    if dry:
        return
    STORE.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    rc = subprocess.call(full_argv(argv), cwd=REPO, env=env())
    wall = time.time() - t0
    with WALL.open("a") as f:
        f.write(json.dumps({"row": label, "cmd": show(argv), "rc": rc, "wall_s": round(wall, 1),
                            "end_utc": datetime.now(timezone.utc).isoformat(timespec="seconds")}) + "\n")
    print(f"[{label}] exit {rc} after {wall:.0f} s", flush=True)
    if rc != 0:
        raise SystemExit(f"{label}: command failed with exit code {rc}")


def trained(row: Row) -> bool:
    """Has the row's training part run? (a run name: its final.json; otherwise its output file)"""
    if row.run_name is not None:
        return (RUNS / row.run_name / "final.json").is_file()
    return row.output is None or (REPO / row.output).is_file()


def train(row: Row, fresh: bool, dry: bool) -> None:
    for argv in row.train:
        argv = list(argv)
        if fresh and row.run_name:
            stamp = datetime.now(timezone.utc).strftime("%Y%m%d%H%M")
            argv += ["--set", f"run.name={row.run_name}-rerun-{stamp}"]
        execute(argv, row.id, dry)


def eval_models(table: str, names: list[str] | None) -> list[dict]:
    cfg = yaml.safe_load((REPO / EVAL_CONFIGS[table]).read_text())
    models = cfg["models"]
    if names is not None:
        missing = set(names) - {m["name"] for m in models}
        if missing:
            raise SystemExit(f"not in {EVAL_CONFIGS[table]}: {sorted(missing)}")
        models = [m for m in models if m["name"] in names]
    return models


def evaluate(table: str, names: list[str] | None, dry: bool, label: str) -> None:
    models = eval_models(table, names)
    argv = ["jobs.evaluate", "--config", EVAL_CONFIGS[table]]
    if names is not None:
        flow = "[" + ", ".join(yaml.safe_dump(m, default_flow_style=True, width=10_000).strip() for m in models) + "]"
        argv += ["--set", f"models={flow}"]
        if table == "f1" and "f1-teacher-minilm-l6" not in names:
            argv += ["--set", "plot.enabled=false"]
    execute(argv, label, dry)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", choices=["list", "row", "train", "table", "eval", "report"])
    ap.add_argument("target", nargs="?")
    ap.add_argument("--models", help="eval: comma-separated model names (default: every trained model)")
    ap.add_argument("--fresh", action="store_true", help="retrain under a new run name")
    ap.add_argument("--dry-run", action="store_true")
    ap.add_argument("--no-eval", action="store_true", help="table: training rows only")
    ap.add_argument("--until", help="table: start no training row after this UTC time (HH:MM); then evaluate")
    args = ap.parse_args()

    if args.what == "list":
        for r in ROWS.values():
            if args.target and r.table != args.target:
                continue
            print(f"{r.id}:")
            for argv in r.train:
                print(f"    {show(argv)}")
            if r.eval_model:
                print(f"    eval: model {r.eval_model} of {EVAL_CONFIGS[r.table]}")
        return
    if args.what == "report":
        subprocess.check_call([sys.executable, "experiments/report.py"], cwd=REPO, env=env())
        return
    if args.what in ("row", "train"):
        row = ROWS.get(args.target)
        if row is None:
            raise SystemExit(f"unknown row {args.target!r}; `python experiments/run.py list` shows them")
        train(row, args.fresh, args.dry_run)
        if args.what == "row" and row.eval_model:
            evaluate(row.table, [row.eval_model], args.dry_run, f"{row.id}:eval")
        return
    table = args.target
    if table not in EVAL_CONFIGS and not (args.what == "table" and table == "data"):
        raise SystemExit(f"unknown table {table!r}; known: {sorted(EVAL_CONFIGS)}")
    if args.what == "table":
        for row in (r for r in ROWS.values() if r.table == table):
            if args.until and datetime.now(timezone.utc).strftime("%H:%M") >= args.until:
                print(f"--until {args.until}: not starting {row.id} or any later row", flush=True)
                break
            if row.train and (args.fresh or not trained(row)):
                train(row, args.fresh, args.dry_run)
        if args.no_eval or table == "data":
            return
    names = args.models.split(",") if args.models else None
    if names is None:
        rows = [r for r in ROWS.values() if r.table == table and r.eval_model]
        names = [r.eval_model for r in rows if trained(r)]
        if len(names) == len(eval_models(table, None)):
            names = None  # all of them: the config as it is
    evaluate(table, names, args.dry_run, f"{table}:eval")


if __name__ == "__main__":
    main()
