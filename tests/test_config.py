"""Configs: YAML + --set overrides, validation messages naming file and field, the import-light catalog."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from kd.configs.catalog import ARCHITECTURES, LAYER_SCHEMES, LOSS_KINDS
from kd.configs.errors import ConfigError
from kd.configs.distill import DistillConfig
from kd.configs.score_teachers import ScoreTeachersConfig
from kd.configs.loader import load_config, parse_overrides
from kd.configs.base import to_flat_dict
from kd.training import rank_batches

REPO = Path(__file__).resolve().parents[1]


def test_catalog_matches_the_registries():
    from kd.init import SCHEMES
    from kd.losses import LOSSES
    from kd.models import MODELS

    assert set(ARCHITECTURES) == set(MODELS)
    assert {n: (c.kind, c.requires_teacher) for n, c in LOSSES.items()} == LOSS_KINDS
    assert tuple(SCHEMES) == LAYER_SCHEMES


def test_validating_a_config_does_not_import_torch():
    code = "import sys, kd.configs.distill, jobs._common; print('torch' in sys.modules, 'ray' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False", "False"]


def test_overrides_parse_yaml_values_and_index_lists(tmp_path, shared_data):
    assert parse_overrides(["a.b=3", "c=[0, 5]", "d=null", "e=text", "f=true"]) == [
        ("a.b", 3), ("c", [0, 5]), ("d", None), ("e", "text"), ("f", True)]
    scifact = shared_data / "beir" / "scifact"
    (tmp_path / "t.tsv").write_text("1\t2\t3\n")
    (tmp_path / "teacher").mkdir()
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text(
        f"input: {tmp_path / 't.tsv'}\ntext: {{queries: {scifact / 'queries.jsonl'}, passages: {scifact / 'corpus.jsonl'}}}\n"
        f"teachers: [{{name: a, path: {tmp_path / 'teacher'}}}, {{name: b, path: {tmp_path / 'teacher'}}}]\n"
        f"output_dir: {tmp_path / 'out'}\n")
    cfg = load_config(ScoreTeachersConfig, cfg_file, ["teachers.1.name=c", "batch_size=7"])
    assert [t.name for t in cfg.teachers] == ["a", "c"] and cfg.batch_size == 7
    assert to_flat_dict(cfg)["batch_size"] == 7
    with pytest.raises(ConfigError, match=r"c.yaml: invalid config\n  field teachers: .*unique.*\['a'\]"):
        load_config(ScoreTeachersConfig, cfg_file, ["teachers.1.name=a"])
    with pytest.raises(ConfigError, match="no item '5' in a list of 2"):
        load_config(ScoreTeachersConfig, cfg_file, ["teachers.5.name=x"])
    with pytest.raises(ConfigError, match=r"field bach_size: Extra inputs are not permitted"):
        load_config(ScoreTeachersConfig, cfg_file, ["bach_size=7"])


def test_yaml_errors_name_file_and_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("mode: score_file\nstudent: [unclosed\n")
    with pytest.raises(ConfigError, match=r"bad.yaml:\d+: not valid YAML"):
        load_config(DistillConfig, bad)
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(DistillConfig, tmp_path / "missing.yaml")


def test_distill_config_cross_field_checks(tmp_path):
    base = ["mode=embedding", "student.architecture=bert_dot", "loss.name=embedding_alignment", "run.name=x"]
    with pytest.raises(ConfigError) as e:
        load_config(DistillConfig, None, base)
    msg = str(e.value)
    assert "field data.query_files: embedding mode needs at least one query file" in msg
    assert "field teacher.model: mode 'embedding' runs a teacher model inside the step" in msg
    with pytest.raises(ConfigError, match="field student.init.num_layers: scheme 'uniform' needs num_layers"):
        load_config(DistillConfig, None, base + ["student.init.strategy=teacher_layers", "student.init.layers=uniform"])
    with pytest.raises(ConfigError, match=r"field student.init.layers: unknown scheme 'top\+bottom'"):
        load_config(DistillConfig, None, base + ["student.init.layers=top+bottom"])


def test_training_precision_and_the_older_bf16_switch(tmp_path):
    """training.precision (auto | fp32 | bf16, auto by default); the older `bf16: true|false` still loads as auto|fp32,
    both together or a non-boolean bf16 are refused naming the field."""
    base = ["mode=supervised", "student.architecture=bert_dot", "loss.name=ranknet", "run.name=x",
            "data.queries=q.jsonl", "data.passages=p.jsonl", "data.triples=t.tsv"]
    for name in ("q.jsonl", "p.jsonl", "t.tsv"):
        (tmp_path / name).write_text("")
    base = [b.replace("=q", f"={tmp_path}/q").replace("=p", f"={tmp_path}/p").replace("=t", f"={tmp_path}/t")
            for b in base]
    assert load_config(DistillConfig, None, base).training.precision == "auto"
    assert load_config(DistillConfig, None, base + ["training.bf16=false"]).training.precision == "fp32"
    assert load_config(DistillConfig, None, base + ["training.bf16=true"]).training.precision == "auto"
    assert load_config(DistillConfig, None, base + ["training.precision=bf16"]).training.precision == "bf16"
    with pytest.raises(ConfigError, match="field training: .*not both"):
        load_config(DistillConfig, None, base + ["training.bf16=true", "training.precision=fp32"])
    with pytest.raises(ConfigError, match="field training: .*bf16: true or false"):
        load_config(DistillConfig, None, base + ["training.bf16=yes please"])
    with pytest.raises(ConfigError, match="field training.precision"):
        load_config(DistillConfig, None, base + ["training.precision=fp16"])


def test_rank_batches_are_deterministic_disjoint_and_equal_per_rank():
    a0 = rank_batches(103, epoch=0, seed=5, rank=0, world=2, micro_batch=8)
    a1 = rank_batches(103, epoch=0, seed=5, rank=1, world=2, micro_batch=8)
    assert a0 == rank_batches(103, 0, 5, 0, 2, 8)  # same seed, same batches
    assert len(a0) == len(a1) == 6  # 51 per rank → 6 full micro-batches each
    seen0 = {i for b in a0 for i in b}
    seen1 = {i for b in a1 for i in b}
    assert not seen0 & seen1
    assert rank_batches(103, 1, 5, 0, 2, 8) != a0  # a new permutation each epoch


# ------------------------------------------------------------------------ names, options, metrics, models (issue 14)
def _distill(tmp_path, *sets):
    """A score_file DistillConfig on placeholder files (only their existence is checked), plus `sets`."""
    for name in ("scores.tsv", "queries.tsv", "passages.tsv"):
        (tmp_path / name).write_text("")
    base = ["mode=score_file", "student.architecture=bert_dot", "loss.name=margin_mse", "run.name=r",
            f"teacher.scores={tmp_path / 'scores.tsv'}", f"data.queries={tmp_path / 'queries.tsv'}",
            f"data.passages={tmp_path / 'passages.tsv'}"]
    return load_config(DistillConfig, None, base + list(sets))


def test_filter_literal_finds_exactly_the_named_run_in_a_real_store(tmp_path):
    import mlflow

    from kd.runtime.tracking import filter_literal

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = client.create_experiment("names")
    crafted = "b' and tags.`kd.job` != 'x"  # pasted into '...', this matches run b
    names = ["it's", "it", "its", "b", crafted, 'say "hi"']
    ids = {n: client.create_run(exp, tags={"kd.run_name": n, "kd.job": "distill"}).info.run_id for n in names}

    def find(literal: str) -> list[str]:
        found = client.search_runs([exp], f"tags.`kd.run_name` = {literal} and tags.`kd.job` = 'distill'")
        return [r.info.run_id for r in found]

    assert find(f"'{crafted}'") == [ids["b"]]  # the old, unquoted paste: another run
    with pytest.raises(mlflow.exceptions.MlflowException):
        find("'it's'")  # the old paste of `it's`: the search itself fails
    for name in names:
        assert find(filter_literal(name)) == [ids[name]], name
    for bad in ("a'b\"c", "back\\slash"):  # not expressible in MLflow's filter grammar: refused, never pasted
        with pytest.raises(ValueError, match="cannot be used in an MLflow filter"):
            filter_literal(bad)


@pytest.mark.parametrize("bad", ["it's", "", "../x", ".hidden", "a b", "x" * 101, "a/b"])
def test_run_and_registry_names_are_a_safe_character_set(tmp_path, bad):
    assert _distill(tmp_path, "run.name=a-Z_0.9", "registry.name=m.1").run.name == "a-Z_0.9"
    for field in ("run.name", "registry.name"):
        with pytest.raises(ConfigError, match=rf"field {field}: .*(empty name|letters, digits)"):
            _distill(tmp_path, f"{field}={bad!r}" if bad else f"{field}=''")


def test_evaluation_model_and_task_names_cannot_leave_the_output_folder(tmp_path, shared_data):
    from kd.configs.evaluate import EvalConfig

    scifact = shared_data / "beir" / "scifact"
    sets = [f"tasks=[{{task: dense, name: scifact, beir: {scifact}}}]", f"models=[{{name: m, path: {tmp_path}}}]"]
    assert load_config(EvalConfig, None, sets).models[0].name == "m"
    for field, value, shown in (("models.0.name", "../x", "models.0.name"), ("models.0.name", "..", "models.0.name"),
                                ("tasks.0.name", "..", "tasks.0.dense.name")):
        with pytest.raises(ConfigError, match=rf"field {shown}: '{re.escape(value)}': a name is"):
            load_config(EvalConfig, None, sets + [f"{field}={value}"])


def test_pipeline_names_are_checked_by_the_same_rule():
    from kd.configs.pipeline import PipelineConfig

    with pytest.raises(ConfigError, match=r"field name: \"it's\": a name is"):
        load_config(PipelineConfig, REPO / "configs" / "smoke.yaml", ["name=it's"])
    with pytest.raises(ConfigError, match=r"field students: name \"it's\": a name is"):
        load_config(PipelineConfig, REPO / "configs" / "smoke.yaml", ["students.0.name=it's"])


def test_validation_metric_is_one_kd_metrics_computes(tmp_path):
    assert _distill(tmp_path, "validation.metric=NDCG@10").validation.metric == "ndcg@10"  # the results' key
    assert _distill(tmp_path, "validation.metric=mrr@100").validation.metric == "mrr@100"
    with pytest.raises(ConfigError, match=r"field validation.metric: unknown metric 'ndcg@ten'"):
        _distill(tmp_path, "validation.metric=ndcg@ten")


def test_catalog_options_match_the_constructor_signatures():
    import inspect

    from kd.configs.catalog import ARCHITECTURE_OPTIONS, LOSS_OPTIONS
    from kd.losses import LOSSES
    from kd.models import MODELS

    def taken(init, kinds):
        return tuple(p.name for p in inspect.signature(init).parameters.values() if p.kind in kinds and p.name != "self")

    keyword = (inspect.Parameter.KEYWORD_ONLY,)
    assert {n: taken(c.__init__, keyword) for n, c in MODELS.items()} == ARCHITECTURE_OPTIONS
    named = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    assert {n: taken(c.__init__, named) for n, c in LOSSES.items()} == LOSS_OPTIONS


def test_unknown_student_and_loss_options_are_refused_naming_key_and_allowed(tmp_path):
    cfg = _distill(tmp_path, "student.options={pooling: mean, max_passage_length: 64}", "loss.name=kl",
                   "loss.options={temperature: 2.0}")
    assert cfg.student.options["pooling"] == "mean" and cfg.loss.options == {"temperature": 2.0}
    with pytest.raises(ConfigError) as e:
        _distill(tmp_path, "student.options.pooling_mode=mean", "loss.name=kl", "loss.options.temprature=2")
    msg = str(e.value)
    assert "field student.options.pooling_mode: 'bert_dot' has no option 'pooling_mode'; its options: ['pooling'," in msg
    assert "field loss.options.temprature: 'kl' has no option 'temprature'; its options: ['temperature']" in msg
    with pytest.raises(ConfigError, match=r"field loss.options.margin: 'margin_mse' has no option 'margin'; it takes no"):
        _distill(tmp_path, "loss.options.margin=1")
    with pytest.raises(ConfigError, match=r"field student.options.max_query_length: 'tinybert_cat' has no option"):
        _distill(tmp_path, "mode=in_loop", "student.architecture=tinybert_cat", "loss.name=standard_kd",
                 f"teacher.model={tmp_path}", f"data.triples={tmp_path / 'scores.tsv'}",
                 "student.options.max_query_length=30")
    with pytest.raises(ConfigError, match=r"field student.options: teacher_layers init copies the teacher's options"):
        _distill(tmp_path, f"teacher.model={tmp_path}", "student.init={strategy: teacher_layers, layers: [0]}",
                 "student.options.pooling=mean")


def _fake_hub_cache(root, repo_id: str):
    """The layout huggingface_hub writes: models--org--name/{refs/main, snapshots/<commit>/config.json}."""
    folder = root / f"models--{repo_id.replace('/', '--')}"
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text("0" * 40)
    (folder / "snapshots" / ("0" * 40)).mkdir(parents=True)
    (folder / "snapshots" / ("0" * 40) / "config.json").write_text("{}")


def test_a_backbone_that_cannot_resolve_is_refused_at_validation(tmp_path, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    _fake_hub_cache(tmp_path / "hub", "org/cached-model")
    for ok in ("sentence-transformers/all-MiniLM-L6-v2", str(tmp_path), "org/cached-model"):
        assert _distill(tmp_path, f"student.backbone={ok}").student.backbone == ok
    for bad, message in (("./no/such/folder", "model folder not found: ./no/such/folder"),
                         ("outputs/runs/x/final_model", "model folder not found: outputs/runs/x/final_model \\(nor"),
                         ("org/not-cached", "'org/not-cached' is not a local folder, and HF_HUB_OFFLINE is set")):
        with pytest.raises(ConfigError, match=rf"field student.backbone: {message}"):
            _distill(tmp_path, f"student.backbone={bad}")
    with pytest.raises(ConfigError, match=r"field teacher.model: model folder not found: ./no/teacher"):
        _distill(tmp_path, "teacher.model=./no/teacher")
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    assert _distill(tmp_path, "student.backbone=org/not-cached").student.backbone == "org/not-cached"  # online



# ------------------------------------------------------------------------------ the kd.configs package (issue 16)
def test_every_configs_module_is_import_light():
    modules = ["kd.configs." + p.stem for p in sorted((REPO / "kd" / "configs").glob("*.py")) if p.stem != "__init__"]
    code = ("import sys, kd, kd.configs; light = 'pydantic' not in sys.modules; "
            f"[__import__(m) for m in {modules!r}]; "
            "print(light, *(m in sys.modules for m in ('torch', 'mlflow', 'ray', 'deepspeed', 'transformers')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO).stdout
    assert out.split() == ["True", "False", "False", "False", "False", "False"]  # kd.configs loads names on use


@pytest.mark.parametrize("old", ["kd.config", "kd.eval_config", "kd.sweep_config", "kd.pipeline_config", "kd.catalog"])
def test_the_configs_live_in_one_package_and_the_old_module_paths_are_gone(old):
    import importlib

    import kd.configs
    from kd.configs import catalog

    with pytest.raises(ModuleNotFoundError):
        importlib.import_module(old)
    assert catalog.resources_dir() == REPO / "kd" / "resources"
    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        kd.configs.Nope


def test_error_lines_put_a_stage_prefix_in_front_of_every_field(tmp_path):
    from pydantic import ValidationError

    from kd.configs.errors import error_lines

    with pytest.raises(ValidationError) as e:
        DistillConfig.model_validate({"mode": "embedding", "student": {"architecture": "bert_dot"},
                                      "loss": {"name": "embedding_alignment"}, "run": {"name": "r"}})
    cross_field = error_lines(e.value)  # a model validator's lines already name their fields
    assert "field data.query_files: embedding mode needs at least one query file" in cross_field
    assert "field students.0.data.query_files: embedding mode needs at least one query file" in \
        error_lines(e.value, "students.0")
    with pytest.raises(ValidationError) as e:
        DistillConfig.model_validate({"mode": "embedding", "student": {}, "loss": {"name": "x"}, "run": {"name": "r"}})
    assert error_lines(e.value, "base") == ["field base.student.architecture: Field required"]
    assert error_lines(ValueError("teacher 'a' (kind bm25): no corpus"), "score") == \
        ["score: teacher 'a' (kind bm25): no corpus"]


def test_a_planned_file_counts_as_existing_only_in_its_validation_context(tmp_path):
    from kd.configs.fields import planned_context

    (tmp_path / "q.tsv").write_text("")
    data = {"input": str(tmp_path / "later" / "triples.tsv"), "output_dir": str(tmp_path / "out"),
            "text": {"queries": str(tmp_path / "q.tsv"), "passages": str(tmp_path / "q.tsv")},
            "teachers": [{"name": "t", "path": str(tmp_path / "later" / "teacher")}]}
    with pytest.raises(ValueError) as e:
        ScoreTeachersConfig.model_validate(data)
    assert "file not found" in str(e.value) and "teacher folder not found" in str(e.value)
    context = planned_context([tmp_path / "later" / "triples.tsv", tmp_path / "later" / "teacher"])
    cfg = ScoreTeachersConfig.model_validate(data, context=context)
    assert cfg.input == data["input"] and cfg.teachers[0].path == str(tmp_path / "later" / "teacher")
    data["text"]["passages"] = str(tmp_path / "missing.tsv")  # not planned: still refused
    with pytest.raises(ValueError, match=r"text.passages\n.*file not found: .*missing.tsv"):
        ScoreTeachersConfig.model_validate(data, context=context)


def test_the_pipeline_validates_later_stages_on_their_real_paths(tmp_path):
    from kd.configs.pipeline import PipelineConfig

    out = tmp_path / "abs-out"  # an absolute output_dir: its folders look local, so they must be planned
    cfg = load_config(PipelineConfig, REPO / "configs" / "smoke.yaml", [f"output_dir={out}"])
    planned = cfg.planned_outputs()
    assert cfg.triples_path() in planned and cfg.scores_file() in planned and str(cfg.ensemble_dir()) in planned
    assert all(not Path(p).exists() for p in planned)
    ec = cfg.eval_config(planned=True)
    assert [m.path for m in ec.models] == [str(cfg.ensemble_dir())] + \
        [str(cfg.student_dir(n)) for n, _, _ in cfg.trained_students()]
    with pytest.raises(ValueError, match="model folder not found"):  # at run time the folders must be there
        cfg.eval_config()
    sc = cfg.score_config(triples=cfg.triples_path(), teachers=cfg.ensemble(), planned=True)
    assert [t.path for t in sc.teachers if t.kind == "cross"] == [str(cfg.teacher_dir(t.name))
                                                                  for t in cfg.teachers.train]
    assert cfg.student_config(0, scores=cfg.scores_file(), planned=True).teacher.scores == cfg.scores_file()


def test_evaluation_tasks_carry_their_resolved_metrics_and_relevance(tmp_path, shared_data):
    from kd.configs.evaluate import EvalConfig

    scifact, dl19 = shared_data / "beir" / "scifact", shared_data / "trec-dl-2019"
    run, qrels = dl19 / "runs" / "BM25.top100.trec", dl19 / "qrels" / "test.tsv"
    cfg = load_config(EvalConfig, None, [
        f"tasks=[{{task: dense, name: sf, beir: {scifact}}}, {{task: run, name: dl, run: {run}, qrels: {qrels}}}, "
        f"{{task: run, name: own, run: {run}, qrels: {qrels}, relevance_level: 3, metrics: [map]}}]",
        f"models=[{{name: m, path: {tmp_path}}}]", "metrics=[ndcg@10, mrr@10]", "relevance_level=2"])
    assert [(t.relevance_level, t.metrics) for t in cfg.tasks] == [
        (1, ["ndcg@10", "mrr@10"]), (2, ["ndcg@10", "mrr@10"]), (3, ["map"])]  # BEIR qrels are binary: 1
    assert [(cfg.relevance_for(t), cfg.metrics_for(t)) for t in cfg.tasks] == \
        [(t.relevance_level, t.metrics) for t in cfg.tasks]
    again = EvalConfig.model_validate(cfg.model_dump())
    assert again.tasks == cfg.tasks


def test_search_space_points_are_the_discrete_grid_with_ranges_at_both_ends():
    from kd.configs.search_space import Dimension, checked_points

    space = {"a": Dimension(grid=[1, 2]), "b": Dimension(choice=["x"]), "lr": Dimension(loguniform=[1e-5, 1e-3])}
    assert checked_points(space) == [{"a": 1, "b": "x", "lr": 1e-5}, {"a": 2, "b": "x", "lr": 1e-5},
                                     {"a": 1, "b": "x", "lr": 1e-3}]
    with pytest.raises(ValueError, match="low must be < high"):
        Dimension(uniform=[2, 1])


def test_student_scale_multiplies_the_students_scores_before_the_loss(tmp_path, minilm_path):
    """loss.student_scale α: the loss sees α·s (Margin-MSE of α-scaled margins), the twin-free modes only."""
    import torch

    from kd.models import BertDot
    from kd.training import DistillStep

    with pytest.raises(ConfigError, match="field loss.student_scale: Input should be greater than 0"):
        _distill(tmp_path, "loss.student_scale=0")
    with pytest.raises(ConfigError, match="field loss.student_scale: scales ranking scores; mode 'embedding'"):
        load_config(DistillConfig, None, ["mode=embedding", "student.architecture=bert_dot", "run.name=x",
                                          "loss.name=embedding_alignment", "loss.student_scale=5",
                                          f"teacher.model={minilm_path}", f"data.query_files=[{tmp_path}/q.tsv]"])
    torch.manual_seed(0)
    student = BertDot.from_backbone(minilm_path, max_passage_length=32).eval()
    batch = {"query": ["what causes tides", "insulin"], "pos": ["the moon's gravity pulls the ocean", "a hormone"],
             "neg": ["stock markets fell", "a river delta"], "t_pos": torch.tensor([3.0, 2.0]),
             "t_neg": torch.tensor([-1.0, 0.5])}
    with torch.no_grad():
        s_pos, s_neg = student.score_triples(batch["query"], batch["pos"], batch["neg"])
        expected = ((10 * (s_pos - s_neg) - (batch["t_pos"] - batch["t_neg"])) ** 2).mean()
        got = DistillStep.from_config(_distill(tmp_path, "loss.student_scale=10"), student)(batch)
        plain = DistillStep.from_config(_distill(tmp_path), student)(batch)
    assert torch.allclose(got, expected, atol=1e-5) and not torch.allclose(got, plain, atol=1e-3)


def test_a_run_saved_before_a_field_existed_resumes_at_its_default():
    from kd.training import changed_fields

    new = {"loss.name": "margin_mse", "loss.student_scale": 1.0, "training.group_by_length": 0}
    assert changed_fields({"loss.name": "margin_mse"}, new) == []  # trained with what the defaults compute
    assert changed_fields({"loss.name": "margin_mse"}, {**new, "loss.student_scale": 5.0}) == [
        "loss.student_scale: 1.0 → 5.0"]
    assert changed_fields({"loss.name": "margin_mse", "x": 1}, new) == ["x: 1 → (absent)"]
