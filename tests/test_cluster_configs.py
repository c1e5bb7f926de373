"""Every file in cluster/ loads and is what its consumer expects: KubeRay manifests carry the fields KubeRay's CRDs
require (apiVersion ray.io/v1, head + GPU worker group, the MLflow URI from a Secret, an entrypoint naming an existing
module and config), the cluster-launcher YAML passes Ray's own schema, the runtime env is a valid RuntimeEnv, and the
DeepSpeed JSONs are accepted by DeepSpeed's config parser (and by the distill job where it supports them)."""
from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
CLUSTER = REPO / "cluster"
RAY_VERSION = re.compile(r"^2\.60\.\d+$")


def _yaml_files() -> list[Path]:
    return sorted(p for p in CLUSTER.rglob("*") if p.suffix in (".yaml", ".yml"))


def _docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def _kuberay(kind: str) -> list[tuple[Path, dict]]:
    return [(p, d) for p in _yaml_files() for d in _docs(p) if isinstance(d, dict) and d.get("kind") == kind]


def test_every_yaml_in_cluster_loads_and_is_known():
    files = _yaml_files()
    assert {p.relative_to(CLUSTER).as_posix() for p in files} >= {
        "runtime_env.yaml", "kuberay/raycluster.yaml", "kuberay/rayjob.yaml", "launcher/aws-gpu.yaml"}
    for p in files:
        docs = _docs(p)
        assert docs and all(isinstance(d, dict) for d in docs), p


# ----------------------------------------------------------------------------------------------------- KubeRay
def _check_pod_template(where: str, template: dict, *, gpu: bool) -> None:
    containers = template["spec"]["containers"]
    assert containers, f"{where}: a pod template needs containers"
    c = containers[0]
    assert c.get("name") and c.get("image"), f"{where}: container name and image are required"
    tag = c["image"].rsplit(":", 1)[-1]
    assert tag.startswith("2.60."), f"{where}: image {c['image']} does not match rayVersion 2.60"
    env = {e["name"]: e for e in c.get("env", [])}
    ref = env["MLFLOW_TRACKING_URI"]["valueFrom"]["secretKeyRef"]
    assert ref["name"] and ref["key"], f"{where}: MLFLOW_TRACKING_URI must come from a Secret"
    limits = c["resources"]["limits"]
    if gpu:
        assert int(limits["nvidia.com/gpu"]) >= 1, f"{where}: the GPU group must ask for nvidia.com/gpu"
        assert int(c["resources"]["requests"]["nvidia.com/gpu"]) == int(limits["nvidia.com/gpu"])
    else:
        assert "nvidia.com/gpu" not in limits
    mounts = {m["name"] for m in c.get("volumeMounts", [])}
    volumes = {v["name"] for v in template["spec"].get("volumes", [])}
    assert mounts <= volumes, f"{where}: mounts {mounts - volumes} have no volume"


def _check_cluster_spec(where: str, spec: dict) -> None:
    assert RAY_VERSION.match(str(spec["rayVersion"])), f"{where}: rayVersion {spec['rayVersion']}"
    head = spec["headGroupSpec"]  # required by the CRD
    # rayStartParams is map[string]string in the CRD: unquoted numbers or booleans are rejected by the API server
    assert all(isinstance(v, str) for v in head.get("rayStartParams", {}).values()), f"{where}: rayStartParams"
    _check_pod_template(f"{where}.headGroupSpec", head["template"], gpu=False)
    groups = spec["workerGroupSpecs"]
    assert groups
    names = [g["groupName"] for g in groups]  # required by the CRD
    assert len(set(names)) == len(names)
    for g in groups:
        w = f"{where}.workerGroupSpecs[{g['groupName']}]"
        assert all(isinstance(v, str) for v in g.get("rayStartParams", {}).values()), f"{w}: rayStartParams"
        assert 0 <= g["minReplicas"] <= g["replicas"] <= g["maxReplicas"], w
        _check_pod_template(w, g["template"], gpu=True)


def test_kuberay_raycluster_manifest():
    found = _kuberay("RayCluster")
    assert found, "no RayCluster manifest in cluster/"
    for path, doc in found:
        assert doc["apiVersion"] == "ray.io/v1"
        assert doc["metadata"]["name"]
        _check_cluster_spec(path.name, doc["spec"])


def _check_entrypoint(entrypoint: str, workdir: Path = REPO) -> list[str]:
    argv = shlex.split(entrypoint)
    assert argv[:2] == ["python", "-m"], f"entrypoint {entrypoint!r} should be `python -m jobs.<name> ...`"
    module = argv[2]
    assert (workdir / (module.replace(".", "/") + ".py")).is_file(), f"module {module} does not exist"
    assert "--config" in argv, entrypoint
    config = workdir / argv[argv.index("--config") + 1]
    assert config.is_file(), f"config {config} does not exist"
    return argv


def test_kuberay_rayjob_manifest():
    from kd.pipeline_config import PipelineConfig

    found = _kuberay("RayJob")
    assert found, "no RayJob manifest in cluster/"
    for path, doc in found:
        assert doc["apiVersion"] == "ray.io/v1"
        spec = doc["spec"]
        argv = _check_entrypoint(spec["entrypoint"])
        config = yaml.safe_load((REPO / argv[argv.index("--config") + 1]).read_text())
        if argv[2] == "jobs.pipeline":
            known = {f.alias or n for n, f in PipelineConfig.model_fields.items()}
            assert set(config) <= known, set(config) - known
        runtime_env = yaml.safe_load(spec["runtimeEnvYAML"])
        # the image (cluster/Dockerfile) holds the repository at the job's working_dir
        workdir = re.search(r"^WORKDIR\s+(\S+)", (CLUSTER / "Dockerfile").read_text(), re.M).group(1)
        assert runtime_env["working_dir"] == workdir
        _check_runtime_env({**runtime_env, "working_dir": str(REPO)})
        assert ("rayClusterSpec" in spec) != ("clusterSelector" in spec)
        if "rayClusterSpec" in spec:
            _check_cluster_spec(f"{path.name}.rayClusterSpec", spec["rayClusterSpec"])


# ------------------------------------------------------------------------------------------- launcher, runtime env
def test_cluster_launcher_yaml_passes_rays_schema():
    import jsonschema
    import ray.autoscaler

    schema = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())
    files = [p for p in _yaml_files() if "launcher" in p.parts]
    assert files
    for p in files:
        cfg = yaml.safe_load(p.read_text())
        jsonschema.validate(cfg, schema)
        for key in ("cluster_name", "provider", "available_node_types", "head_node_type", "max_workers"):
            assert key in cfg, f"{p.name}: {key} is required"
        types = cfg["available_node_types"]
        assert cfg["head_node_type"] in types
        gpu_types = [t for t, v in types.items() if v.get("resources", {}).get("GPU", 0) >= 1]
        assert gpu_types, f"{p.name}: no GPU node type"
        assert sum(types[t].get("max_workers", 0) for t in types if t != cfg["head_node_type"]) <= cfg["max_workers"]
        assert RAY_VERSION.match(cfg["docker"]["image"].rsplit(":", 1)[-1].split("-")[0])


def _check_runtime_env(env: dict) -> None:
    from ray.runtime_env import RuntimeEnv

    RuntimeEnv(**env)  # Ray's own validation of the fields
    assert "pip" not in env and "conda" not in env, "the image carries the dependencies (works offline)"
    excludes = set(env.get("excludes", []))
    assert {"/.git", "/outputs/"} <= excludes
    assert all(isinstance(v, str) for v in env.get("env_vars", {}).values())


def test_runtime_env_excludes_keep_the_shipped_data():
    """Ray matches `excludes` like .gitignore: what the upload would drop must not include the shipped data."""
    from ray._private.thirdparty.pathspec import PathSpec  # what Ray's packaging matches excludes with

    spec = PathSpec.from_lines("gitwildmatch", yaml.safe_load((CLUSTER / "runtime_env.yaml").read_text())
                                        ["excludes"])
    shipped = [p.relative_to(REPO).as_posix() for p in (REPO / "kd" / "resources").rglob("*") if p.is_file()
               and "__pycache__" not in p.parts]
    assert shipped and not [p for p in shipped if spec.match_file(p)]
    for dropped in (".git/HEAD", "outputs/quickstart/stages/mine.json", "mlruns/0/meta.yaml", "mlflow.db"):
        assert spec.match_file(dropped), dropped


def test_runtime_env_yaml():
    env = yaml.safe_load((CLUSTER / "runtime_env.yaml").read_text())
    assert "working_dir" not in env, "--working-dir . gives it on the command line"
    _check_runtime_env(env)
    assert {"/mlruns/", "/mlflow.db"} <= set(env["excludes"])


def test_dockerfile_matches_the_ray_version():
    base = re.search(r"^FROM\s+(\S+)", (CLUSTER / "Dockerfile").read_text(), re.M).group(1)
    assert base.startswith("rayproject/ray:2.60.")


# -------------------------------------------------------------------------------------------------- DeepSpeed
@pytest.mark.parametrize("stage", [1, 2, 3])
def test_deepspeed_jsons_parse_with_deepspeed(stage):
    from deepspeed.runtime.config import DeepSpeedConfig

    conf = json.loads((CLUSTER / "deepspeed" / f"zero{stage}.json").read_text())
    parsed = DeepSpeedConfig(conf)
    assert parsed.zero_optimization_stage == stage
    assert parsed.train_micro_batch_size_per_gpu == conf["train_micro_batch_size_per_gpu"]


def _distill_cfg(tmp_path, ds_file: Path):
    from kd.config import DistillConfig

    (tmp_path / "t.tsv").write_text("1.0\t0.5\tq\tp\tn\n")
    return DistillConfig.model_validate({
        "mode": "score_file", "student": {"architecture": "bert_dot"}, "loss": {"name": "margin_mse"},
        "teacher": {"scores": str(tmp_path / "t.tsv")},
        "data": {"queries": str(tmp_path / "t.tsv"), "passages": str(tmp_path / "t.tsv")},
        "training": {"micro_batch_size": 4, "gradient_accumulation_steps": 2, "deepspeed_config": str(ds_file)},
        "run": {"name": "x", "storage_path": str(tmp_path)},
    })


@pytest.mark.parametrize("stage", [1, 2])
def test_distill_job_merges_a_deepspeed_json(tmp_path, stage):
    """training.deepspeed_config: the file's ZeRO settings win; batch sizes, optimizer, scheduler and precision stay
    the training section's (the data loop depends on them); the merged dict parses with DeepSpeed."""
    from deepspeed.runtime.config import DeepSpeedConfig

    from kd.runtime.distill import deepspeed_config

    cfg = _distill_cfg(tmp_path, CLUSTER / "deepspeed" / f"zero{stage}.json")
    conf = deepspeed_config(cfg, total_steps=100)
    assert conf["zero_optimization"]["stage"] == stage
    assert conf["train_micro_batch_size_per_gpu"] == 4 and conf["gradient_accumulation_steps"] == 2
    assert conf["bf16"] == {"enabled": False}  # CPU config: the file's bf16 does not apply
    assert conf["optimizer"]["params"]["torch_adam"] is True
    assert DeepSpeedConfig(conf).zero_optimization_stage == stage


def test_distill_job_rejects_zero3_honestly(tmp_path):
    from kd.config import ConfigError, DistillConfig, load_config

    with pytest.raises(Exception, match=r"ZeRO stage 3 is not supported by the distill loop"):
        _distill_cfg(tmp_path, CLUSTER / "deepspeed" / "zero3.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{\"zero_optimization\": {\"stage\": 2},}")
    with pytest.raises(ConfigError, match=r"field training.deepspeed_config: .*bad.json:1: not valid JSON"):
        load_config(DistillConfig, None, ["mode=supervised", "student.architecture=bert_cat", "loss.name=ranknet",
                                          "run.name=x", f"training.deepspeed_config={bad}"])


def test_paper_scale_pipeline_config_is_valid(tmp_path):
    """configs/msmarco_t2.yaml (the RayJob's entrypoint) validates once its /mnt/kd files exist."""
    from kd.config import load_config
    from kd.pipeline_config import PipelineConfig

    text = (REPO / "configs" / "msmarco_t2.yaml").read_text().replace("/mnt/kd", str(tmp_path))
    for path in set(re.findall(re.escape(str(tmp_path)) + r"/data/[\w./-]+", text)):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text("x\n")
    (tmp_path / "c.yaml").write_text(text)
    import os

    cwd = os.getcwd()
    os.chdir(REPO)  # training.deepspeed_config is relative to the working directory (the job's working_dir)
    try:
        cfg = load_config(PipelineConfig, tmp_path / "c.yaml")
    finally:
        os.chdir(cwd)
    assert cfg.teacher_scores.endswith("bert_cat_ensemble_msmarcopassage_train_scores_ids.tsv")
    assert cfg.students[0].training.use_gpu and cfg.students[0].training.deepspeed_config.endswith("zero2.json")
