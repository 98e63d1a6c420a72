"""Every cluster file parses and carries what its reader needs: KubeRay (RayCluster, RayJob), Ray's cluster
launcher (`ray up`), Docker and Grafana; and every command they (and the README) run names an experiment that loads.
"""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
CLUSTER = ROOT / "cluster"
KUBERAY = sorted((CLUSTER / "kuberay").glob("*.yaml"))
RAY_UP = sorted((CLUSTER / "ray_up").glob("*.yaml"))
DOCKERFILE = CLUSTER / "docker" / "Dockerfile"
GRAFANA = sorted((CLUSTER / "grafana").glob("*.json"))


def _load(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def _kind(kind: str) -> list[tuple[Path, dict]]:
    return [(path, doc) for path in KUBERAY if (doc := _load(path))["kind"] == kind]


def _containers(group: dict) -> list[dict]:
    return group["template"]["spec"]["containers"]


def _dockerfile_workdir() -> str:
    return re.search(r"^WORKDIR\s+(\S+)", DOCKERFILE.read_text(), re.M).group(1)


def _check_ray_cluster_spec(spec: dict, where: str) -> None:
    head = spec["headGroupSpec"]
    assert isinstance(head["rayStartParams"], dict), where
    # KubeRay passes rayStartParams to `ray start` as strings; a YAML number here is rejected by the CRD.
    groups = [head, *spec["workerGroupSpecs"]]
    for group in groups:
        assert all(isinstance(v, str) for v in group["rayStartParams"].values()), (where, group["rayStartParams"])
        assert group["rayStartParams"].get("metrics-export-port"), f"{where}: Prometheus needs a fixed port"
        for container in _containers(group):
            assert container["image"], where
            env = {e["name"]: e for e in container.get("env", [])}
            assert env["RAY_AUTH_MODE"]["value"] == "token", f"{where}: {container['name']} without token auth"
            assert "secretKeyRef" in env["RAY_AUTH_TOKEN"]["valueFrom"], where
            mounts = {m["mountPath"] for m in container.get("volumeMounts", [])}
            assert "/mnt/runs" in mounts, f"{where}: {container['name']} lacks the shared runs volume"
    images = {c["image"] for group in groups for c in _containers(group)}
    assert len(images) == 1, f"{where}: head and workers must run one image, not {images}"
    assert spec["workerGroupSpecs"], where
    for group in spec["workerGroupSpecs"]:
        assert group["groupName"], where
        assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"], (where, group["groupName"])
        for container in _containers(group):
            assert int(container["resources"]["limits"]["nvidia.com/gpu"]) >= 1, f"{where}: {group['groupName']}"


def _gpus_per_node(spec: dict) -> int:
    return max(int(c["resources"]["limits"]["nvidia.com/gpu"]) * g["maxReplicas"]
               for g in spec["workerGroupSpecs"] for c in _containers(g))


def test_there_are_kuberay_manifests_a_ray_up_yaml_a_dockerfile_and_a_dashboard():
    assert {p.name for p in KUBERAY} >= {"raycluster.yaml", "rayjob.yaml"}
    assert RAY_UP and DOCKERFILE.is_file() and GRAFANA


@pytest.mark.parametrize("path", KUBERAY, ids=lambda p: p.name)
def test_every_kuberay_manifest_is_ray_io_v1(path):
    doc = _load(path)
    assert doc["apiVersion"] == "ray.io/v1"
    assert doc["kind"] in {"RayCluster", "RayJob"}
    assert doc["metadata"]["name"]


def test_the_raycluster_has_a_head_and_a_gpu_worker_group():
    (path, doc), = _kind("RayCluster")
    _check_ray_cluster_spec(doc["spec"], path.name)
    assert doc["spec"]["headGroupSpec"]["serviceType"] == "ClusterIP"  # reached by port-forward, not exposed


def test_the_rayjob_runs_an_experiment_and_cleans_up_after_itself():
    (path, doc), = _kind("RayJob")
    spec = doc["spec"]
    _check_ray_cluster_spec(spec["rayClusterSpec"], path.name)
    assert spec["shutdownAfterJobFinishes"] is True
    assert isinstance(spec["activeDeadlineSeconds"], int) and spec["activeDeadlineSeconds"] > 0
    assert isinstance(spec["ttlSecondsAfterFinished"], int) and spec["ttlSecondsAfterFinished"] >= 0
    runtime_env = yaml.safe_load(spec["runtimeEnvYAML"])
    # The entrypoint's relative paths (experiments/, cluster/deepspeed/) resolve in the image's project folder.
    assert runtime_env["working_dir"] == _dockerfile_workdir()
    submitter_env = {e["name"] for e in spec["submitterPodTemplate"]["spec"]["containers"][0]["env"]}
    assert {"RAY_AUTH_MODE", "RAY_AUTH_TOKEN"} <= submitter_env  # `ray job submit` needs the token too
    # Enough GPUs for the experiment's Ray Train workers.
    config = _experiment_of(spec["entrypoint"])
    assert config.train.use_gpu and _gpus_per_node(spec["rayClusterSpec"]) >= config.train.workers


def _experiment_of(command: str):
    """The experiment a `unlearn ...` command runs, loaded as the CLI would (from the repository root)."""
    import os

    from orchestrator.cli import build_parser
    from orchestrator.config import load_config

    argv = shlex.split(command)
    assert argv[0] == "unlearn", command
    args = build_parser().parse_args(argv[1:])  # its flags exist
    assert args.config and args.config.startswith("experiments/"), command
    assert (ROOT / args.config).is_file(), f"{command}: no {args.config}"
    here = os.getcwd()
    os.chdir(ROOT)  # a config's paths (train.deepspeed) are relative to the project folder, as in the image
    try:
        return load_config(args.config)
    finally:
        os.chdir(here)


def _commands() -> list[tuple[str, str]]:
    """Every `unlearn <cmd> experiments/...` a cluster file, the RayJob or the README runs."""
    found = []
    for path in [*KUBERAY, *RAY_UP, ROOT / "README.md"]:
        text = path.read_text().replace("\\\n", " ")
        for match in re.finditer(r"(unlearn (?:run|sweep|stream) experiments/[^\s`]+\.yaml(?: --?[\w-]+(?: [^\s`#'\"-][^\s`]*)?)*)",
                                 text):
            found.append((path.name, match.group(1)))
    return found


def test_every_entrypoint_names_an_experiment_that_loads():
    commands = _commands()
    assert any(name == "rayjob.yaml" for name, _ in commands)
    assert any(name == "README.md" and " sweep " in f" {c} " for name, c in commands)
    for name, command in commands:
        _experiment_of(command)


def test_every_command_that_uses_ray_takes_address():
    from orchestrator.cli import build_parser

    parser = build_parser()
    for command in ("run", "sweep", "stream"):
        assert parser.parse_args([command, "--address", "ray://head:10001"]).address == "ray://head:10001"


@pytest.mark.parametrize("path", RAY_UP, ids=lambda p: p.name)
def test_the_ray_up_yaml_is_valid_for_the_cluster_launcher(path):
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = _load(path)
    for key in ("cluster_name", "provider", "auth", "available_node_types", "head_node_type", "max_workers",
                "setup_commands"):
        assert key in config, f"{path.name}: no {key}"
    validate_config(prepare_config(config))  # Ray's own schema (ray/autoscaler/ray-schema.json), defaults filled
    types = config["available_node_types"]
    assert config["head_node_type"] in types
    workers = {name: t for name, t in types.items() if name != config["head_node_type"]}
    assert workers and sum(t.get("min_workers", 0) for t in workers.values()) <= config["max_workers"]
    assert all(re.match(r"(p[345]|g[456])", t["node_config"]["InstanceType"]) for t in workers.values()), workers
    head = " ".join(config["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head and "--metrics-export-port=" in head
    assert all("RAY_AUTH_MODE=token" in c for c in config["head_start_ray_commands"] + config["worker_start_ray_commands"]
               if "ray start" in c)
    assert "/home/ray/.ray/auth_token" in config["file_mounts"]


def test_the_dockerfile_builds_on_this_ray_with_cuda_torch_and_the_project():
    import ray

    text = DOCKERFILE.read_text()
    base = re.search(r"^ARG BASE_IMAGE=(\S+)", text, re.M).group(1)
    assert base == f"rayproject/ray:{ray.__version__}-py311-gpu"  # {Ray version}-{Python}-{platform}
    assert re.search(r"^FROM \$\{BASE_IMAGE\}", text, re.M)
    assert re.search(r"^ARG RAY_VERSION=" + re.escape(ray.__version__) + "$", text, re.M)
    assert "download.pytorch.org/whl/cu" in text and "pip install" in text
    assert re.search(r"pip install .*-e \.", text)
    for folder in ("methods", "orchestrator", "experiments", "cluster"):
        assert re.search(rf"^COPY .*\b{folder} {folder}$", text, re.M), folder


def _grafana_metric_names(dashboard: dict) -> set[str]:
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    exprs += [v["query"]["query"] for v in dashboard["templating"]["list"] if isinstance(v.get("query"), dict)]
    return {name for expr in exprs for name in re.findall(r"\bray_ray_unlearn_\w+", expr)}


@pytest.mark.parametrize("path", GRAFANA, ids=lambda p: p.name)
def test_the_grafana_dashboard_shows_every_project_metric_by_its_exported_name(path):
    from orchestrator.observe.metrics import METRICS, exported_name

    dashboard = json.loads(path.read_text())
    assert dashboard["uid"] and dashboard["title"] and isinstance(dashboard["schemaVersion"], int)
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    panels = [p for p in dashboard["panels"] if p["type"] != "row"]
    for panel in panels:
        assert panel["datasource"] == "${datasource}", panel["title"]
        assert panel["targets"] and all(t["expr"] for t in panel["targets"]), panel["title"]
        assert {"h", "w", "x", "y"} <= set(panel["gridPos"]) and panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24
    exported = {exported_name(name): name for name in METRICS}
    histogram_series = {f"{e}_{s}" for e, n in exported.items() if METRICS[n].kind == "histogram"
                        for s in ("bucket", "count", "sum")}
    used = _grafana_metric_names(dashboard)
    assert used <= set(exported) | histogram_series, f"not defined in orchestrator/observe/metrics.py: {used - set(exported)}"
    shown = {exported[u] if u in exported else u.rsplit("_", 1)[0].removeprefix("ray_") for u in used}
    assert set(METRICS) <= shown, f"metrics without a panel: {set(METRICS) - shown}"
