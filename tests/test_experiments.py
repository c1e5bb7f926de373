"""docs/RESULTS.md's driver: every row's job command must validate against its job's config model, so a typo in
configs/experiments/ or experiments/run.py fails here rather than an hour into a table. On a fresh clone the
outputs of upstream rows (triples, teachers, teacher scores) do not exist yet; the only error allowed is a missing
file under outputs/experiments/."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from kd.configs.errors import ConfigError
from kd.configs.distill import DistillConfig
from kd.configs.mine import MineTriplesConfig
from kd.configs.score_teachers import ScoreTeachersConfig
from kd.configs.loader import load_config
from kd.configs.evaluate import EvalConfig

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
pytestmark = pytest.mark.skipif(not (SHARED / "beir" / "scifact").is_dir(), reason="needs ../shared/data")

_spec = importlib.util.spec_from_file_location("kd_experiments_run", REPO / "experiments" / "run.py")
driver = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = driver  # dataclasses resolve their module through sys.modules
_spec.loader.exec_module(driver)

CONFIGS = {"jobs.distill": DistillConfig, "jobs.mine_triples": MineTriplesConfig,
           "jobs.score_teachers": ScoreTeachersConfig, "jobs.evaluate": EvalConfig}


def _commands():
    for row in driver.ROWS.values():
        for argv in row.train:
            if not argv[0].startswith("@"):
                yield pytest.param(argv, id=row.id)
    for table, cfg in driver.EVAL_CONFIGS.items():
        yield pytest.param(["jobs.evaluate", "--config", cfg], id=f"{table}:eval")


def _load(argv: list[str]):
    cls = CONFIGS[argv[0]]
    config = argv[argv.index("--config") + 1]
    sets = [argv[i + 1] for i, a in enumerate(argv) if a == "--set"]
    return load_config(cls, config, sets)


@pytest.mark.parametrize("argv", list(_commands()))
def test_row_command_validates(argv, monkeypatch):
    monkeypatch.chdir(REPO)
    try:
        cfg = _load(argv)
    except ConfigError as e:  # an upstream row has not run on this checkout
        assert "outputs/experiments/" in str(e), str(e)
        return
    assert cfg is not None


def test_rows_are_complete():
    """Every eval model named by a row exists in its table's eval config, and every `needs` is a row."""
    for row in driver.ROWS.values():
        assert all(n in driver.ROWS for n in row.needs), row.id
        if row.eval_model:
            names = {m["name"] for m in driver.eval_models(row.table, None)}
            assert row.eval_model in names, (row.id, row.eval_model)
    # headline rows have >= 3 seeds (issue: mean ± std over >= 3 seeds)
    assert {f"f1/2l-top-bottom-s{s}" for s in (0, 1, 2)} <= set(driver.ROWS)
    assert {"f3/3l-simplified-tinybert", "f3/3l-simplified-tinybert-s1", "f3/3l-simplified-tinybert-s2"} <= set(driver.ROWS)
    assert {"f2/bert-dot-kd-t2", "f2/bert-dot-kd-t2-s1", "f2/bert-dot-kd-t2-s2"} <= set(driver.ROWS)


def test_figure_points_average_seeds(tmp_path):
    """The figures draw one point per condition: seeds (-s<N>) averaged with their std as error bar; each teacher
    stays its own point; a model missing a metric is left out rather than drawn at 0."""
    spec = importlib.util.spec_from_file_location("kd_experiments_report", REPO / "experiments" / "report.py")
    report = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(report)
    pts = {p["label"]: p for p in report.seed_points([
        ("f2-bert-dot-nokd", 1.0, 0.50, False), ("f2-bert-dot-nokd-s1", 3.0, 0.60, True),
        ("f2-teacher-bert-cat", 0.5, 0.40, False), ("f2-teacher-bert-cat-s1", 0.5, 0.30, False),
        ("f2-tk-nokd", None, 0.45, False)])}
    assert set(pts) == {"f2-bert-dot-nokd (2 seeds)", "f2-teacher-bert-cat", "f2-teacher-bert-cat-s1"}
    p = pts["f2-bert-dot-nokd (2 seeds)"]
    assert (p["x"], p["y"], p["contended"]) == (2.0, pytest.approx(0.55), True)
    assert p["yerr"] == pytest.approx(0.0707, abs=1e-4)
    assert pts["f2-teacher-bert-cat"]["yerr"] is None
