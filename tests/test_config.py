"""Configs: YAML + --set overrides, validation messages naming file and field, the import-light catalog."""
from __future__ import annotations

import subprocess
import sys

import pytest

from kd.catalog import ARCHITECTURES, LAYER_SCHEMES, LOSS_KINDS
from kd.config import ConfigError, DistillConfig, ScoreTeachersConfig, load_config, parse_overrides, to_flat_dict
from kd.training import rank_batches


def test_catalog_matches_the_registries():
    from kd.init import SCHEMES
    from kd.losses import LOSSES
    from kd.models import MODELS

    assert set(ARCHITECTURES) == set(MODELS)
    assert {n: (c.kind, c.requires_teacher) for n, c in LOSSES.items()} == LOSS_KINDS
    assert tuple(SCHEMES) == LAYER_SCHEMES


def test_validating_a_config_does_not_import_torch():
    code = "import sys, kd.config, jobs._common; print('torch' in sys.modules, 'ray' in sys.modules)"
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


def test_rank_batches_are_deterministic_disjoint_and_equal_per_rank():
    a0 = rank_batches(103, epoch=0, seed=5, rank=0, world=2, micro_batch=8)
    a1 = rank_batches(103, epoch=0, seed=5, rank=1, world=2, micro_batch=8)
    assert a0 == rank_batches(103, 0, 5, 0, 2, 8)  # same seed, same batches
    assert len(a0) == len(a1) == 6  # 51 per rank → 6 full micro-batches each
    seen0 = {i for b in a0 for i in b}
    seen1 = {i for b in a1 for i in b}
    assert not seen0 & seen1
    assert rank_batches(103, 1, 5, 0, 2, 8) != a0  # a new permutation each epoch
