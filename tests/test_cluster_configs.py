"""Every file in cluster/ loads and is what its consumer expects: KubeRay manifests carry the fields KubeRay's CRDs
require (apiVersion ray.io/v1, head + GPU worker group, the MLflow URI from a Secret, an entrypoint naming an existing
module and config), the cluster-launcher YAML passes Ray's own schema, the runtime env is a valid RuntimeEnv, and the
DeepSpeed JSONs are accepted by DeepSpeed's config parser (and by the distill job where it supports them). Every
cluster turns on Ray token authentication (and KubeRay's are fenced by a NetworkPolicy); the launcher's settings are
tried on a real `ray start --head`."""
from __future__ import annotations

import json
import re
import shlex
import time
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
    from kd.configs.pipeline import PipelineConfig

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


# ----------------------------------------------------------------------------------- Ray token authentication
# Without it anyone who reaches the dashboard (8265) submits jobs, i.e. runs code on the cluster. KubeRay (≥ 1.5.1)
# turns it on with RayClusterSpec.authOptions: it then sets RAY_AUTH_MODE=token and RAY_AUTH_TOKEN (from the Secret
# `secretName`, key auth_token) in every Ray container and the RayJob submitter, unless a container sets them itself.
KUBERAY_AUTH_FIELDS = {"mode", "secretName", "enableK8sTokenAuth"}  # KubeRay's AuthOptions (ray.io/v1)
RAY_TOKEN_FILE = "~/.ray/auth_token"  # where Ray looks for the token when RAY_AUTH_TOKEN(_PATH) is unset


def _cluster_specs() -> list[tuple[Path, dict, dict]]:
    """(file, manifest, RayClusterSpec) of every cluster a shipped KubeRay manifest creates."""
    found = [(p, d, d["spec"]) for p, d in _kuberay("RayCluster")]
    found += [(p, d, d["spec"]["rayClusterSpec"]) for p, d in _kuberay("RayJob") if "rayClusterSpec" in d["spec"]]
    return found


def _pod_templates(spec: dict) -> list[dict]:
    return [spec["headGroupSpec"]["template"]] + [g["template"] for g in spec.get("workerGroupSpecs", [])]


def _launcher_files() -> list[Path]:
    return [p for p in _yaml_files() if any("head_start_ray_commands" in d for d in _docs(p))]


def _docker_env(cfg: dict) -> dict[str, str]:
    """The `--env K=V` settings the launcher gives every container (docker.run_options)."""
    argv = shlex.split(" ".join(cfg.get("docker", {}).get("run_options", [])))
    pairs = [argv[i + 1] for i, a in enumerate(argv[:-1]) if a in ("--env", "-e")]
    pairs += [a.split("=", 1)[1] for a in argv if a.startswith("--env=")]
    return dict(p.split("=", 1) for p in pairs if "=" in p)


def test_every_shipped_cluster_config_turns_on_ray_token_auth():
    clusters = _cluster_specs()
    launchers = _launcher_files()
    starts_ray = {p for p in _yaml_files() if "ray start" in p.read_text() or _docs(p)[0].get("kind") in
                  ("RayCluster", "RayJob", "RayService")}
    assert starts_ray <= {p for p, _, _ in clusters} | set(launchers), "a cluster config this test does not check"
    assert clusters and launchers
    for path, doc, spec in clusters:
        where = f"{path.name} ({doc['kind']} {doc['metadata']['name']})"
        auth = spec.get("authOptions")
        assert auth, f"{where}: no authOptions — the dashboard accepts jobs from anyone who reaches it"
        assert set(auth) <= KUBERAY_AUTH_FIELDS, f"{where}: authOptions fields {set(auth) - KUBERAY_AUTH_FIELDS}"
        assert auth.get("mode") == "token", f"{where}: authOptions.mode must be 'token'"
        if doc["kind"] == "RayJob":
            assert not auth.get("enableK8sTokenAuth"), f"{where}: KubeRay supports K8s token auth on RayCluster only"
        major, minor = map(int, str(spec["rayVersion"]).split(".")[:2])
        assert (major, minor) >= (2, 52), f"{where}: token auth needs Ray >= 2.52 (KubeRay refuses the manifest)"
        for template in _pod_templates(spec):  # a container's own value would win over the operator's
            for c in template["spec"]["containers"]:
                names = {e["name"] for e in c.get("env", [])}
                assert not names & {"RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"}, f"{where}: {c['name']}"
        if auth.get("secretName"):  # the file says how to create the Secret it names, with KubeRay's key
            assert re.search(rf"kubectl create secret generic {re.escape(auth['secretName'])} "
                             r"--from-(file|literal)=auth_token=", path.read_text()), where
    for path in launchers:
        cfg = yaml.safe_load(path.read_text())
        assert _docker_env(cfg).get("RAY_AUTH_MODE") == "token", f"{path.name}: containers need RAY_AUTH_MODE=token"
        assert cfg.get("file_mounts", {}).get(RAY_TOKEN_FILE) == RAY_TOKEN_FILE, \
            f"{path.name}: file_mounts must copy your {RAY_TOKEN_FILE} to every node's {RAY_TOKEN_FILE}"
        commands = " ".join(cfg["head_start_ray_commands"] + cfg["worker_start_ray_commands"])
        assert "RAY_AUTH_MODE=" not in commands, f"{path.name}: a start command overrides RAY_AUTH_MODE"
        assert "ray get-auth-token --generate" in path.read_text(), f"{path.name}: say how to make the token"


def test_kuberay_manifests_limit_who_reaches_the_ray_pods():
    """A NetworkPolicy beside each cluster selects all its pods (head and workers); from outside the cluster's own
    pods only the dashboard port (8265: operator, RayJob submitter) is open, and no rule admits everyone."""
    for path, doc, spec in _cluster_specs():
        where = f"{path.name} ({doc['kind']} {doc['metadata']['name']})"
        policies = [d for d in _docs(path) if d.get("kind") == "NetworkPolicy"]
        assert policies, f"{where}: no NetworkPolicy"
        templates = _pod_templates(spec)
        for pol in policies:
            assert pol["apiVersion"] == "networking.k8s.io/v1" and "Ingress" in pol["spec"]["policyTypes"]
            selector = pol["spec"]["podSelector"]["matchLabels"]
            assert selector, f"{where}: an empty podSelector would select every pod in the namespace"
            for t in templates:
                labels = t.get("metadata", {}).get("labels", {})
                assert selector.items() <= labels.items(), f"{where}: a pod template lacks the labels {selector}"
            for rule in pol["spec"].get("ingress", []):
                assert rule.get("from"), f"{where}: an ingress rule without `from` admits every source"
                own = all(s == {"podSelector": {"matchLabels": selector}} for s in rule["from"])
                assert own or [p["port"] for p in rule.get("ports", [])] == [8265], \
                    f"{where}: sources other than the cluster's own pods may reach the dashboard (8265) only"


@pytest.mark.slow
def test_launcher_settings_lock_a_real_ray_head(tmp_path, monkeypatch):
    """A real `ray start --head` given what aws-gpu.yaml gives every container (its docker --env settings, the token
    file where file_mounts puts it): the Jobs API refuses requests without the token; without the token file Ray
    refuses to start at all instead of running open."""
    import secrets
    import urllib.error
    import urllib.request

    from ray_head import RayHead

    (path,) = [p for p in _launcher_files() if p.name == "aws-gpu.yaml"]
    cfg = yaml.safe_load(path.read_text())
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))  # the container's ~ (file_mounts expand ~ to it)
    for var in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"):
        monkeypatch.delenv(var, raising=False)
    for key, value in _docker_env(cfg).items():
        monkeypatch.setenv(key, value)
    open_head = RayHead(num_cpus=1, dashboard=True)
    try:
        with pytest.raises(RuntimeError, match="(?i)token"):
            open_head.start()
    finally:
        open_head.stop()  # only does something when it started (the failure case)
    token = secrets.token_hex(16)
    (mount,) = [dst for dst in cfg["file_mounts"] if dst == RAY_TOKEN_FILE]
    Path(mount.replace("~", str(home), 1)).parent.mkdir(parents=True)
    Path(mount.replace("~", str(home), 1)).write_text(token)

    def jobs_api(headers: dict) -> int:
        req = urllib.request.Request(f"{head.dashboard_url}/api/jobs/", headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                return r.status
        except urllib.error.HTTPError as e:
            return e.code

    with RayHead(num_cpus=1, dashboard=True) as head:
        deadline = time.monotonic() + 120
        while True:  # the dashboard may come up a little after `ray start` returns
            try:
                status = jobs_api({})
                break
            except OSError:
                assert time.monotonic() < deadline, "the dashboard never answered"
                time.sleep(1)
        assert status == 401
        assert jobs_api({"Authorization": "Bearer wrong"}) == 403
        assert jobs_api({"Authorization": f"Bearer {token}"}) == 200


# -------------------------------------------------------------------------------------------------- DeepSpeed
@pytest.mark.parametrize("stage", [1, 2, 3])
def test_deepspeed_jsons_parse_with_deepspeed(stage):
    from deepspeed.runtime.config import DeepSpeedConfig

    conf = json.loads((CLUSTER / "deepspeed" / f"zero{stage}.json").read_text())
    parsed = DeepSpeedConfig(conf)
    assert parsed.zero_optimization_stage == stage
    assert parsed.train_micro_batch_size_per_gpu == conf["train_micro_batch_size_per_gpu"]


def _distill_cfg(tmp_path, ds_file: Path):
    from kd.configs.distill import DistillConfig

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
    assert deepspeed_config(cfg, total_steps=100, bf16=True)["bf16"] == {"enabled": False}  # bf16 mode: GPUs only
    assert conf["optimizer"]["params"]["torch_adam"] is True
    assert DeepSpeedConfig(conf).zero_optimization_stage == stage


def test_distill_job_rejects_zero3_honestly(tmp_path):
    from kd.configs.errors import ConfigError
    from kd.configs.distill import DistillConfig
    from kd.configs.loader import load_config

    with pytest.raises(Exception, match=r"ZeRO stage 3 is not supported by the distill loop"):
        _distill_cfg(tmp_path, CLUSTER / "deepspeed" / "zero3.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{\"zero_optimization\": {\"stage\": 2},}")
    with pytest.raises(ConfigError, match=r"field training.deepspeed_config: .*bad.json:1: not valid JSON"):
        load_config(DistillConfig, None, ["mode=supervised", "student.architecture=bert_cat", "loss.name=ranknet",
                                          "run.name=x", f"training.deepspeed_config={bad}"])


def test_paper_scale_pipeline_config_is_valid(tmp_path, monkeypatch):
    """configs/msmarco_t2.yaml (the RayJob's entrypoint) validates once its /mnt/kd files exist, on a cluster that
    reaches the hub (its student backbone is a hub name this offline machine has not cached)."""
    from kd.configs.loader import load_config
    from kd.configs.pipeline import PipelineConfig

    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(var, raising=False)

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
