"""jobs/pipeline.py without Ray: the composed config is validated whole (errors name the pipeline field), the plan,
the skip rule, the summary table, and the quickstart's shipped data (small, real, self-consistent, reproducible).

The pipeline itself runs end to end in tests/test_job_submit.py (under `ray job submit`) and as the README's main
command (`python -m jobs.quickstart`, the first step of .ci/run)."""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from kd.configs.errors import ConfigError
from kd.configs.loader import load_config
from kd.configs.pipeline import PipelineConfig
from kd.configs.catalog import resources_dir

REPO = Path(__file__).resolve().parents[1]
QUICKSTART = REPO / "configs" / "quickstart.yaml"
SMOKE = REPO / "configs" / "smoke.yaml"
DATA = resources_dir() / "quickstart"


def _load(path=QUICKSTART, overrides=()):
    return load_config(PipelineConfig, path, list(overrides))


def test_quickstart_and_smoke_configs_validate_without_torch_or_ray():
    code = ("import sys, time; t = time.perf_counter(); from kd.configs import load_config; "
            "from kd.configs import PipelineConfig; "
            f"[load_config(PipelineConfig, p) for p in ({str(QUICKSTART)!r}, {str(SMOKE)!r})]; "
            "print('torch' in sys.modules, 'ray' in sys.modules, 'mlflow' in sys.modules, time.perf_counter() - t)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO).stdout
    torch, ray, mlflow, seconds = out.split()
    assert (torch, ray, mlflow) == ("False", "False", "False")
    assert float(seconds) < 2.0


def test_quickstart_config_is_packaged_identically():
    from kd.quickstart import config_path

    packaged = DATA / "quickstart.yaml"
    assert packaged.read_text() == QUICKSTART.read_text(), "keep kd/resources/quickstart/quickstart.yaml a copy"
    assert config_path() == QUICKSTART


# A pipeline config of this file's own (the quickstart's YAML is the lead's to tune): the given members BM25 and the
# all-MiniLM-L6-v2 bi-encoder, one 2-layer BERT_DOT student with its no-KD twin, the shipped SciFact / DL'19 data.
R = "${KD_RESOURCES}/quickstart"
BASE = {
    "name": "pt", "mlflow": {"enabled": False},
    "data": {"queries": f"{R}/scifact/queries.jsonl", "passages": f"{R}/scifact/corpus.jsonl.gz"},
    "mine": {"beir": f"{R}/scifact", "split": "train", "run": f"{R}/scifact/runs/bm25.train.trec", "top_k": 10},
    "validation": {"run": f"{R}/scifact/runs/bm25.dev.trec", "qrels": f"{R}/scifact/qrels/dev.tsv",
                   "queries": f"{R}/scifact/queries.jsonl", "passages": f"{R}/scifact/corpus.jsonl.gz",
                   "top_k": 10, "max_queries": 10},
    "teachers": {"given": [{"name": "bm25", "kind": "bm25"},
                           {"name": "minilm", "kind": "bi", "path": "sentence-transformers/all-MiniLM-L6-v2"}]},
    "students": [{"name": "dot", "nokd_twin": True,
                  "student": {"architecture": "bert_dot", "init": {"num_layers": 2},
                              "options": {"max_query_length": 30, "max_passage_length": 200}},
                  "loss": {"name": "margin_mse"},
                  "training": {"micro_batch_size": 8, "lr": 2.0e-5, "seed": 3},
                  "registry": {"name": "pt-dot", "dataset_tag": "scifact"}}],
    "evaluate": {"tasks": [
        {"task": "run", "name": "scifact-bm25", "run": f"{R}/scifact/runs/bm25.test.trec",
         "qrels": f"{R}/scifact/qrels/test.tsv"},
        {"task": "rerank", "name": "scifact-test", "run": f"{R}/scifact/runs/bm25.test.trec",
         "queries": f"{R}/scifact/queries.jsonl", "corpus": f"{R}/scifact/corpus.jsonl.gz",
         "qrels": f"{R}/scifact/qrels/test.tsv", "top_k": 20},
        {"task": "efficiency", "name": "efficiency", "queries": f"{R}/dl19/queries.jsonl",
         "passages": f"{R}/dl19/corpus.jsonl.gz", "run": f"{R}/dl19/runs/BM25.top100.trec", "batch_sizes": [1, 8]}],
        "compute": {"backend": "local"}},
    "register": {"name": "pt-kd", "alias": "current"},
}


def _own(tmp_path, overrides=(), base=None):
    """BASE (or `base`) as a YAML file in tmp_path, loaded with --set overrides like a job does."""
    import yaml

    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump({**(base or BASE), "output_dir": str(tmp_path / "out")}))
    return load_config(PipelineConfig, path, list(overrides))


def test_quickstart_config_composes_every_stage():
    cfg = _load()
    assert cfg.data.passages == str(DATA / "scifact" / "corpus.jsonl.gz")
    e = cfg.eval_config()
    roles = cfg.model_roles()
    assert [m.name for m in e.models if m.name.startswith("student-")] == \
        [f"student-{n}" for n, _, _ in cfg.trained_students()]
    assert {roles[m.name] for m in e.models} <= {"teacher", "student_kd", "student_nokd"}
    assert e.output_dir.endswith("eval") and e.mlflow.experiment == cfg.mlflow.experiment
    again = PipelineConfig.model_validate(cfg.model_dump())  # as the runtime re-validates it: same composition
    assert again.student_config(0, scores=str(QUICKSTART)).validation == \
        cfg.student_config(0, scores=str(QUICKSTART)).validation


def _made(cfg):
    """The folders earlier stages leave (evaluation's ModelSpec and the ensemble's members check they exist)."""
    for folder in (cfg.ensemble_dir(), *(cfg.student_dir(n) for n, _, _ in cfg.trained_students()),
                   *(cfg.teacher_dir(t.name) for t in cfg.teachers.given + cfg.teachers.train)):
        folder.mkdir(parents=True, exist_ok=True)
    return cfg


def test_given_members_of_every_kind_make_one_ensemble(tmp_path):
    from kd.teachers import ENSEMBLE_DIR

    cfg = _own(tmp_path, ["teachers.combine=mean", "teachers.given.0.k1=1.2"])
    bm25, minilm = cfg.ensemble()
    assert bm25.kind == "bm25" and bm25.path is None and bm25.k1 == 1.2
    assert bm25.corpus == cfg.data.passages and bm25.use_title == cfg.data.use_title  # defaults: data.passages
    assert minilm.kind == "bi" and minilm.path == "sentence-transformers/all-MiniLM-L6-v2"  # not materialized
    sc = cfg.score_config(triples=str(QUICKSTART), teachers=cfg.ensemble())
    assert sc.combine == "mean" and [t.name for t in sc.teachers] == ["bm25", "minilm"]
    assert cfg.ensemble_dir() == cfg.scores_dir() / ENSEMBLE_DIR  # where the scoring job saves the ensemble
    e = _made(cfg).eval_config()
    assert [(m.name, m.path) for m in e.models] == [
        ("teacher", str(cfg.ensemble_dir())), ("student-dot", str(cfg.student_dir("dot"))),
        ("student-dot-nokd", str(cfg.student_dir("dot-nokd")))]
    assert cfg.model_roles() == {"teacher": "teacher", "student-dot": "student_kd", "student-dot-nokd": "student_nokd"}
    assert cfg.nokd_twins() == {"student-dot": "student-dot-nokd"}
    assert _own(tmp_path).score_config(triples=str(QUICKSTART), teachers=cfg.ensemble()).combine == "zscore"
    assert _own(tmp_path, ["evaluate.teachers=false"]).eval_config(_placeholder_folders=True).models[0].name == \
        "student-dot"


def test_materialized_touches_hub_cross_encoders_only(tmp_path, minilm_path):
    from kd.configs.score_teachers import TeacherSpec
    from kd.models import build_student
    from kd.configs.pipeline_stages import materialized

    kd_folder = tmp_path / "cat"
    build_student("bert_cat", minilm_path).save_pretrained(kd_folder)
    assert materialized(TeacherSpec(name="hub", kind="cross", path="cross-encoder/ms-marco-MiniLM-L-6-v2"))
    assert not materialized(TeacherSpec(name="kd", kind="cross", path=str(kd_folder)))
    assert not materialized(TeacherSpec(name="bi", kind="bi", path=minilm_path))
    assert not materialized(TeacherSpec(name="lex", kind="bm25", corpus=str(DATA / "scifact" / "corpus.jsonl.gz")))
    base = {**BASE, "teachers": {"given": [{"name": "hub", "path": "cross-encoder/ms-marco-MiniLM-L-6-v2"},
                                           {"name": "kd", "path": str(kd_folder)}, BASE["teachers"]["given"][0]],
                                 "train": [{"name": "cat", "weight": 2.0}]}}
    cfg = _own(tmp_path, base=base)
    from kd.runtime.pipeline import Pipeline

    assert [s.name for s in Pipeline(cfg).plan()][:4] == ["mine", "teacher-hub", "teacher-cat", "score"]
    hub, kd, lex, cat = _made(cfg).ensemble()
    assert hub.path == str(cfg.teacher_dir("hub")) and kd.path == str(kd_folder) and lex.path is None
    assert (cat.kind, cat.path, cat.weight) == ("cross", str(cfg.teacher_dir("cat")), 2.0)
    t = cfg.teacher_config(0, triples=str(DATA / "scifact" / "qrels" / "train.tsv"))
    assert t.mode == "supervised" and t.student.architecture == "bert_cat" and t.loss.name == "ranknet"
    assert t.run.name == "pt-teacher-cat" and t.mlflow.run_name == "pt/teacher-cat"


def test_the_nokd_twin_is_the_kd_student_but_for_its_loss_and_names(tmp_path):
    from kd.configs.base import to_flat_dict
    from kd.training import run_fields

    cfg = _own(tmp_path)
    scores = str(QUICKSTART)
    kd, twin = (cfg.student_config(0, scores=scores, twin=t) for t in (False, True))
    assert (kd.loss.name, twin.loss.name) == ("margin_mse", "ranknet")
    assert twin.mode == kd.mode == "score_file" and twin.teacher.scores == kd.teacher.scores == scores
    a, b = to_flat_dict(kd), to_flat_dict(twin)
    differ = sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))
    assert differ == ["loss.name", "mlflow.run_name", "registry.dataset_tag", "registry.name", "run.name"]
    assert (twin.run.name, twin.mlflow.run_name, twin.registry.name) == ("pt-student-dot-nokd", "pt/student-dot-nokd",
                                                                         None)
    # what defines a run (init, options, data, training, seed, validation): the loss alone
    ra, rb = run_fields(kd), run_fields(twin)
    assert sorted(k for k in ra.keys() | rb.keys() if ra.get(k) != rb.get(k)) == ["loss.name"]
    from kd.runtime.pipeline import Pipeline

    stages = [s.name for s in Pipeline(cfg).plan()]
    assert stages == ["mine", "score", "student-dot", "student-dot-nokd", "evaluate", "register"]
    scaled = _own(tmp_path, ["students.0.loss.student_scale=10"])  # the same student's scores: the same scale
    assert [scaled.student_config(0, scores=scores, twin=t).loss.student_scale for t in (False, True)] == [10, 10]


@pytest.mark.parametrize("override, message", [
    ("students.0.loss.name=nope", r"field students\.0\.loss\.name: unknown loss 'nope'"),
    ("students.0.training.lr=-1", r"field students\.0\.training\.lr: Input should be greater than 0"),
    ("students.0.trainin.lr=1", r"field students\.0\.trainin: Extra inputs are not permitted"),
    ("students.0.training.micro_batch_size=0", r"field students\.0\.nokd_twin\.training\.micro_batch_size|"
                                               r"field students\.0\.training\.micro_batch_size"),
    ("students.0.loss.name=ranknet", r"field students\.0\.nokd_twin: loss 'ranknet' uses no teacher already"),
    ("evaluate.tasks.1.top_k=0", r"field evaluate\.tasks\.1\.rerank\.top_k: Input should be greater than or equal"),
    ("mine.run=missing.trec", r"field mine\.run: file not found: missing.trec"),
    ("triples=" + str(QUICKSTART), r"field mine: give either `mine`"),
    ("register.select_by=nope", r"field register\.select_by: expected '<dataset>:<metric>'"),
    ("students.0.registry.name=null", r"field students\.0\.registry\.name: the register stage needs"),
    ("validation.run=nowhere.trec", r"field students\.0\.validation\.run: file not found"),
    ("teachers.combine=median", r"field teachers\.combine: Input should be 'mean' or 'zscore'"),
    ("score.combine=mean", r"field score\.combine: Extra inputs are not permitted"),
    ("teachers.given.0.path=/tmp", r"teacher 'bm25' \(kind bm25\): path '/tmp' is for cross/bi members"),
    ("teachers.given.1.kind=cross", r"teacher 'minilm' \(kind cross\).*use kind: bi"),
    ("teachers.given.0.name=minilm", r"field teachers: names must be unique"),
])
def test_errors_name_the_pipeline_field(tmp_path, override, message):
    with pytest.raises(ConfigError, match=message):
        _own(tmp_path, [override])


def test_only_a_student_and_its_twin_are_grouped_and_the_field_needs_a_twin(tmp_path):
    from kd.runtime.pipeline import Pipeline, _groups

    p = Pipeline(_own(tmp_path, ["students.0.nokd_twin_concurrent=true", "students.0.training.cpus_per_worker=1"]))
    groups = [[s.name for s in g] for g in _groups(p.plan())]
    assert groups == [["mine"], ["score"], ["student-dot", "student-dot-nokd"], ["evaluate"], ["register"]]
    stages = {s.name: s for s in p.plan()}
    assert stages["student-dot"].needs == stages["student-dot-nokd"].needs == {"CPU": 1}
    assert all(stages[n].abort is not None for n in ("student-dot", "student-dot-nokd"))
    plain = Pipeline(_own(tmp_path))
    assert [len(g) for g in _groups(plain.plan())] == [1] * 6
    assert [s.fingerprint for s in plain.plan()][2] == [s.fingerprint for s in Pipeline(_own(
        tmp_path, ["students.0.nokd_twin_concurrent=true"])).plan()][2], "old markers stay valid"
    with pytest.raises(ConfigError, match=r"field students\.0\.nokd_twin_concurrent: needs nokd_twin: true"):
        _own(tmp_path, ["students.0.nokd_twin=false", "students.0.nokd_twin_concurrent=true"])


def test_a_twin_name_taken_and_a_dense_task_for_the_ensemble_are_refused(tmp_path, shared_data):
    other = {**BASE["students"][0], "name": "dot-nokd", "nokd_twin": False, "registry": {"name": "x"}}
    with pytest.raises(ConfigError, match=r"field students: names must be unique .* repeated: \['dot-nokd'\]"):
        _own(tmp_path, base={**BASE, "students": [*BASE["students"], other]})
    dense = {"task": "dense", "name": "sf", "beir": str(shared_data / "beir" / "scifact"), "split": "test"}
    with pytest.raises(ConfigError, match=r"field evaluate\.teachers: the teacher is an ensemble .* \['sf'\]"):
        _own(tmp_path, base={**BASE, "evaluate": {**BASE["evaluate"], "tasks": [*BASE["evaluate"]["tasks"], dense]}})


def test_a_member_that_cannot_score_stops_the_job_before_ray(tmp_path):
    """Through the job's entrypoint in a fresh process: exit code 2, the member named, Ray never imported."""
    cfg = tmp_path / "p.yaml"
    import yaml

    cfg.write_text(yaml.safe_dump({**BASE, "output_dir": str(tmp_path / "out")}))
    code = ("import sys; from jobs.pipeline import main; rc = main(sys.argv[1:]); "
            "print('ray' in sys.modules, 'torch' in sys.modules); sys.exit(rc)")
    proc = subprocess.run([sys.executable, "-c", code, "--config", str(cfg), "--set",
                           "teachers.given.0.corpus=nope.tsv"], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "teacher 'bm25' (kind bm25): corpus file not found: nope.tsv" in proc.stderr
    assert proc.stdout.split()[0] == "False"


def test_a_given_teacher_file_skips_mining_teachers_and_scoring(tmp_path):
    from kd.runtime.pipeline import Pipeline

    scores = tmp_path / "t2.tsv"
    scores.write_text("1.0\t0.5\t1\t2\t3\n")
    cfg = _own(tmp_path, ["mine=null", "teachers.given=[]", f"teacher_scores={scores}"])
    assert [s.name for s in Pipeline(cfg).plan()] == ["student-dot", "student-dot-nokd", "evaluate", "register"]
    assert cfg.scores_file() == str(scores)
    assert cfg.student_config(0, scores=cfg.scores_file(), twin=True).teacher.scores == str(scores)
    # no scoring stage: no ensemble to evaluate
    assert "teacher" not in [m.name for m in cfg.eval_config(_placeholder_folders=True).models]
    with pytest.raises(ConfigError, match=r"field teachers: not used with a given teacher_scores file"):
        _own(tmp_path, ["mine=null", f"teacher_scores={scores}"])


def test_plan_order_and_the_skip_rule(tmp_path):
    from kd.runtime.pipeline import Pipeline
    from kd.teachers import ENSEMBLE_FILE

    p = Pipeline(_own(tmp_path))
    stages = {s.name: s for s in p.plan()}
    assert [s.needs_ray for s in stages.values()] == [False, True, True, True, False, False]
    mine = stages["mine"]
    assert not p.done(mine)
    p.marker("mine").parent.mkdir(parents=True)
    p.marker("mine").write_text("{}")
    assert not p.done(mine), "a marker without the output is not done"
    mine.output.parent.mkdir(parents=True)
    mine.output.write_text("1\t2\t3\n")
    assert p.done(mine)
    score = stages["score"]  # done only with the combined file AND the ensemble folder evaluation reads
    p.marker("score").write_text("{}")
    score.output.parent.mkdir(parents=True)
    score.output.write_text("1.0\t0.5\t1\t2\t3\n")
    assert not p.done(score)
    (p.cfg.ensemble_dir()).mkdir()
    (p.cfg.ensemble_dir() / ENSEMBLE_FILE).write_text("{}")
    assert p.done(score)


def _complete(p, rows):
    """Every stage's marker and output, as a finished run leaves them."""
    for stage in p.plan():
        for out in (stage.output, *stage.also):
            out.parent.mkdir(parents=True, exist_ok=True)
            if not out.exists():
                out.mkdir() if stage.name.startswith(("teacher", "student")) else out.write_text("{}")
        body = {"model_uri": "models:/pt-kd@current", "student": "dot"} if stage.name == "register" else {}
        if stage.name == "evaluate":
            body = {"results": rows}
        p.marker(stage.name).parent.mkdir(parents=True, exist_ok=True)
        p.marker(stage.name).write_text(json.dumps(body))


def test_resume_prints_skipped_runs_nothing_and_writes_the_summary(tmp_path, capsys):
    """Every stage complete: the pipeline skips them all (no Ray started), prints the table, writes summary.json."""
    from kd.runtime.pipeline import Pipeline

    p = Pipeline(_own(tmp_path))
    _complete(p, _rows())
    out = p.run()
    printed = capsys.readouterr().out
    assert printed.count("skipped (output exists: ") == 6 and not p.ray_started
    assert out["model_uri"] == "models:/pt-kd@current"
    assert "mlflow ui" in printed and "registered model: models:/pt-kd" in printed
    summary = json.loads(p.cfg.summary_file().read_text())
    assert summary == out["summary"] and summary["registered"] == "models:/pt-kd@current"
    assert summary["kd_student"] == "student-dot" and summary["nokd_twin"] == "student-dot-nokd"
    assert "KD gained (nDCG@10, student-dot minus its no-KD twin student-dot-nokd): scifact-test +0.0500" in printed


def _rows() -> list[dict]:
    """The evaluate stage's result rows (TaskResult.to_dict()) for BM25, the ensemble, the twin and the KD student."""
    def r(model, task, dataset, metrics, arch=None, **info):
        return {"model": model, "task": task, "dataset": dataset, "metrics": metrics,
                "info": {"architecture": arch, **info} if arch else info, "files": {}}

    bf16 = {"precision": "bf16", "precision_reason": "auto: CPU with native bf16 (avx512_bf16)"}
    return [
        r(None, "run", "scifact-bm25", {"ndcg@10": 0.70, "mrr@10": 0.6}),
        r("teacher", "rerank", "scifact-test", {"ndcg@10": 0.60}, "ensemble", **bf16),
        r("teacher", "efficiency", "efficiency", {"eff_rerank_bs1_qps": 0.2, "eff_rerank_bs8_qps": 0.5}, "ensemble"),
        r("student-dot", "rerank", "scifact-test", {"ndcg@10": 0.66}, "bert_dot", **bf16),
        r("student-dot", "efficiency", "efficiency", {"eff_rerank_bs1_qps": 0.8, "eff_rerank_bs8_qps": 2.0,
                                                      "eff_query_encode_bs8_qps": 100.0}, "bert_dot"),
        r("student-dot-nokd", "rerank", "scifact-test", {"ndcg@10": 0.61}, "bert_dot", **bf16),
        r("student-dot-nokd", "efficiency", "efficiency", {"eff_rerank_bs1_qps": 0.9}, "bert_dot", contended=True),
    ]


def test_summary_json_keys_and_values(tmp_path):
    """summary.json is what users script against: its keys, roles, gains, ratios and speed-ups."""
    from kd.pipeline_summary import build_summary
    from kd.precision import this_cpu_flags

    cfg = _own(tmp_path)
    s = build_summary(cfg.evaluate, _rows(), cfg.model_roles(), cfg.nokd_twins(), registered="models:/pt-kd@current",
                      registered_student="student-dot")
    assert set(s) == {"models", "datasets", "teacher", "kd_student", "nokd_twin", "kd_gain", "ratio_to_teacher",
                      "registered", "machine"}
    assert [(m["name"], m["role"]) for m in s["models"]] == [
        ("BM25 (first stage)", "bm25"), ("teacher", "teacher"), ("student-dot-nokd", "student_nokd"),
        ("student-dot", "student_kd")]
    for m in s["models"]:
        assert {"name", "role", "ndcg@10", "rerank_qps", "speedup_vs_teacher"} <= set(m)
    bm25, teacher, nokd, kd = s["models"]
    assert bm25["ndcg@10"] == {"scifact-test": 0.70} and bm25["rerank_qps"] is None  # the run re-ranked there
    assert (teacher["rerank_qps"], teacher["speedup_vs_teacher"]) == (0.5, 1.0)
    assert kd["rerank_qps"] == 2.0 and kd["speedup_vs_teacher"] == pytest.approx(4.0)  # both at bs8
    assert nokd["speedup_vs_teacher"] == pytest.approx(0.9 / 0.2)  # the largest batch size both measured: bs1
    assert (nokd["timing_contended"], kd["timing_contended"], bm25["timing_contended"]) == (True, None, None)
    assert s["kd_gain"] == {"scifact-test": pytest.approx(0.05)} == kd["kd_gain"]
    assert s["ratio_to_teacher"] == {"scifact-test": pytest.approx(1.1)}
    assert s["datasets"] == ["scifact-test"] and s["registered"] == "models:/pt-kd@current"
    m = s["machine"]
    assert (m["precision"], m["precision_reason"]) == ("bf16", "auto: CPU with native bf16 (avx512_bf16)")
    assert set(m["cpu_flags"]) <= this_cpu_flags() and isinstance(m["cpu_model"], str)
    assert json.loads(json.dumps(s)) == s  # plain JSON


def test_summary_table_puts_bm25_teacher_and_both_students_side_by_side(tmp_path):
    from kd.pipeline_summary import build_summary, format_table

    cfg = _own(tmp_path)
    table = format_table(build_summary(cfg.evaluate, _rows(), cfg.model_roles(), cfg.nokd_twins(), machine={}),
                         rerank_depth=100)
    lines = table.splitlines()
    cells = [re.split(r"\s{2,}", line) for line in lines[:6]]
    assert cells[0] == ["model", "role", "nDCG@10 scifact-test", "re-rank q/s", "speed-up vs teacher"]
    assert cells[2:] == [["BM25 (first stage)", "bm25", "0.7000", "-", "-"],
                         ["teacher", "teacher", "0.6000", "0.5 (bs8)", "1.00x"],
                         ["student-dot-nokd", "student_nokd", "0.6100", "0.9 (bs1)*", "4.50x"],
                         ["student-dot", "student_kd", "0.6600", "2 (bs8)", "4.00x"]]
    assert lines[6] == "KD gained (nDCG@10, student-dot minus its no-KD twin student-dot-nokd): scifact-test +0.0500"
    assert lines[7] == "student-dot keeps of the teacher's nDCG@10: scifact-test 110.0%"
    assert lines[-1].startswith("* timed while other processes used over 10% of the CPU")


# ---------------------------------------------------------------------------------------------- shipped data
def test_shipped_quickstart_data_is_small_and_consistent():
    from kd.data import load_passages, load_queries, read_qrels, read_trec_run

    files = [p for p in DATA.rglob("*") if p.is_file() and p.suffix not in (".py", ".pyc")]
    total = sum(p.stat().st_size for p in files)
    assert total < 4_000_000, f"shipped data is {total / 1e6:.1f} MB"
    sci = DATA / "scifact"
    queries = load_queries(sci / "queries.jsonl")
    corpus = load_passages(sci / "corpus.jsonl.gz", show_progress=False)
    qrels = {s: read_qrels(sci / "qrels" / f"{s}.tsv") for s in ("train", "dev", "test")}
    assert not set(qrels["train"]) & set(qrels["dev"]) and not set(qrels["test"]) & (set(qrels["train"]) |
                                                                                       set(qrels["dev"]))
    for split, q in qrels.items():
        run = read_trec_run(sci / "runs" / f"bm25.{split}.trec")
        assert set(run) <= set(q) and set(q) <= set(queries), split
        assert all(d in corpus for docs in run.values() for d in docs), f"{split}: a candidate without text"
        assert all(d in corpus for docs in q.values() for d in docs), f"{split}: a judged abstract without text"
    dl = DATA / "dl19"
    run = read_trec_run(dl / "runs" / "BM25.top100.trec")
    passages = load_passages(dl / "corpus.jsonl.gz", show_progress=False)
    assert len(run) == 43 and all(len(v) == 100 for v in run.values())
    assert {d for v in run.values() for d in v} == set(passages)
    assert set(run) <= set(load_queries(dl / "queries.jsonl")) and set(run) <= set(read_qrels(dl / "qrels" /
                                                                                               "test.tsv"))


def test_shipped_dl19_bm25_matches_the_reference(shared_data):
    from kd.data import read_qrels, read_trec_run
    from kd.metrics import evaluate

    res = evaluate(read_trec_run(DATA / "dl19" / "runs" / "BM25.top100.trec"),
                   read_qrels(DATA / "dl19" / "qrels" / "test.tsv"), metrics=("ndcg@10",), relevance_level=2)
    assert abs(res["ndcg@10"] - 0.5058) < 5e-4


def test_build_script_reproduces_the_shipped_files(tmp_path, shared_data):
    proc = subprocess.run([sys.executable, str(DATA / "build.py"), "--data", str(shared_data), "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    built = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.is_file())
    for rel in built:
        assert (DATA / rel).read_bytes() == (tmp_path / rel).read_bytes(), f"{rel} differs from a fresh build"


def test_ensure_ray_does_not_restate_the_submitted_jobs_env_vars(monkeypatch):
    """Under `ray job submit --runtime-env-json '{"env_vars": {"MLFLOW_TRACKING_URI": ...}}'` the driver sees that
    variable too; handing it to ray.init again would make Ray refuse to merge the two runtime envs."""
    from kd.runtime.cluster import forwarded_env

    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow:5000")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("RAY_JOB_CONFIG_JSON_ENV_VAR", raising=False)
    assert forwarded_env()["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
    monkeypatch.setenv("RAY_JOB_CONFIG_JSON_ENV_VAR", json.dumps(
        {"runtime_env": {"env_vars": {"MLFLOW_TRACKING_URI": "http://mlflow:5000"}}, "metadata": {}}))
    env = forwarded_env()
    assert "MLFLOW_TRACKING_URI" not in env and env["HF_HUB_OFFLINE"] == "1"
    assert env["MALLOC_TRIM_THRESHOLD_"] == "4294967296", "the workers' allocator keeps freed memory"
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "0")
    assert forwarded_env()["MALLOC_TRIM_THRESHOLD_"] == "0", "a value the user set wins"
