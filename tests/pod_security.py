"""The Kubernetes "restricted" Pod Security Standard, every control of the baseline and restricted levels, as
the API server's PodSecurity admission checks a pod spec at its newest policy version ("latest").

No maintained checker of this standard installs from PyPI and runs offline (kubescape, kube-linter and the
admission library itself are Go), so its rules are encoded here once, each from the admission's own source:
kubernetes/pod-security-admission, policy/check_<ID>.go at commit 8f84a87c7f617f64a4ddc1aea24aeeb7a2e07cb8
(the ID of each check below is the file's). The standard in prose:
https://kubernetes.io/docs/concepts/security/pod-security-standards/. `violations(pod)` names every control
a pod template fails, with the admission's check ID; tests/test_kubernetes_security.py also feeds it one
violating pod per control, so no rule here can pass by accident.
"""

from __future__ import annotations

# check_capabilities_baseline.go: capabilities_allowed_1_0 (the container runtimes' defaults).
BASELINE_CAPABILITIES = {"AUDIT_WRITE", "CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID", "KILL", "MKNOD",
                         "NET_BIND_SERVICE", "SETFCAP", "SETGID", "SETPCAP", "SETUID", "SYS_CHROOT"}  # fmt: skip
# check_sysctls.go: sysctlsAllowedV1Dot37, the union of every version's safe set.
SAFE_SYSCTLS = {"kernel.shm_rmid_forced", "net.ipv4.ip_local_port_range", "net.ipv4.tcp_syncookies",
                "net.ipv4.ping_group_range", "net.ipv4.ip_unprivileged_port_start", "net.ipv4.ip_local_reserved_ports",
                "net.ipv4.tcp_keepalive_time", "net.ipv4.tcp_fin_timeout", "net.ipv4.tcp_keepalive_intvl",
                "net.ipv4.tcp_keepalive_probes", "net.ipv4.tcp_rmem", "net.ipv4.tcp_wmem",
                "net.ipv4.tcp_slow_start_after_idle", "net.ipv4.tcp_notsent_lowat"}  # fmt: skip
# check_seLinuxOptions.go: selinuxAllowedTypes1_31.
SELINUX_TYPES = {"", "container_t", "container_init_t", "container_kvm_t", "container_engine_t"}
# check_restrictedVolumes.go: the inline volume sources restrictedVolumes_1_0 lets through.
VOLUME_SOURCES = {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "image", "persistentVolumeClaim",
                  "projected", "secret"}  # fmt: skip
SECCOMP_TYPES = {"RuntimeDefault", "Localhost"}  # check_seccompProfile_restricted.go: validSeccomp
APPARMOR_TYPES = {"RuntimeDefault", "Localhost"}  # check_appArmorProfile.go, and its annotations:
APPARMOR_ANNOTATION = "container.apparmor.security.beta.kubernetes.io/"  # runtime/default or localhost/*
LIFECYCLE_HANDLERS = ("postStart", "preStop")


def containers(spec: dict) -> list[dict]:
    """visitor.go visitContainers: init, regular and ephemeral containers."""
    return [*spec.get("initContainers", []), *spec.get("containers", []), *spec.get("ephemeralContainers", [])]


def _context(container: dict) -> dict:
    return container.get("securityContext") or {}


def _inherited(spec: dict, field: str, good) -> list[str]:
    """Containers whose `field` is bad, or unset where the pod's is not good (runAsNonRoot, seccompProfile)."""
    pod_value = (spec.get("securityContext") or {}).get(field)
    bad = ["pod"] if pod_value is not None and not good(pod_value) else []
    for c in containers(spec):
        value = _context(c).get(field)
        if (value is not None and not good(value)) or (value is None and (pod_value is None or not good(pod_value))):
            bad.append(c["name"])
    return bad


def violations(spec: dict, annotations: dict | None = None) -> list[str]:
    """`check ID: what` for every control of the restricted level (which includes baseline) that `spec`, a
    pod spec, fails. Empty when the pod is admitted under `pod-security.kubernetes.io/enforce: restricted`."""
    found: list[str] = []
    pod = spec.get("securityContext") or {}
    user_namespace = spec.get("hostUsers") is False  # helpers.go relaxPolicyForUserNamespacePod (1.35+)

    def fail(check: str, what) -> None:
        if what:
            found.append(f"{check}: {what}")

    # Baseline.
    fail("hostNamespaces", [f for f in ("hostNetwork", "hostPID", "hostIPC") if spec.get(f)])
    fail("privileged", [c["name"] for c in containers(spec) if _context(c).get("privileged")])
    fail("hostPorts", [c["name"] for c in containers(spec) if any(p.get("hostPort") for p in c.get("ports", []))])
    fail("procMount", [c["name"] for c in containers(spec) if _context(c).get("procMount", "Default") != "Default"])
    fail("sysctls", [s["name"] for s in pod.get("sysctls", []) if s["name"] not in SAFE_SYSCTLS])
    contexts = [pod, *map(_context, containers(spec))]  # the pod's and every container's securityContext
    fail("windowsHostProcess", [1 for ctx in contexts if (ctx.get("windowsOptions") or {}).get("hostProcess")])
    selinux = [ctx.get("seLinuxOptions") or {} for ctx in contexts]
    fail("seLinuxOptions", [o for o in selinux if o.get("type", "") not in SELINUX_TYPES or o.get("user")
                            or o.get("role")])  # fmt: skip
    profiles = [ctx["appArmorProfile"]["type"] for ctx in contexts if ctx.get("appArmorProfile")]
    legacy = [v for k, v in (annotations or {}).items() if k.startswith(APPARMOR_ANNOTATION)]
    fail("appArmorProfile", [t for t in profiles if t not in APPARMOR_TYPES]
         + [v for v in legacy if v != "runtime/default" and not v.startswith("localhost/")])
    hosts = []  # check_hostProbesAndhostLifecycle.go (1.34+): no probe or hook aimed at another host
    for c in containers(spec):
        handlers = [c.get(p) or {} for p in ("livenessProbe", "readinessProbe", "startupProbe")]
        handlers += [(c.get("lifecycle") or {}).get(h) or {} for h in LIFECYCLE_HANDLERS]
        hosts += [c["name"] for h in handlers for kind in ("httpGet", "tcpSocket") if (h.get(kind) or {}).get("host")]
    fail("hostProbesAndHostLifecycle", hosts)
    adds = [a for c in containers(spec) for a in ((_context(c).get("capabilities") or {}).get("add") or [])]
    fail("capabilities_baseline", [a for a in adds if a not in BASELINE_CAPABILITIES])
    # Restricted (restrictedVolumes overrides hostPathVolumes; capabilities_restricted and
    # seccompProfile_restricted override their baseline checks).
    fail("restrictedVolumes", [v["name"] for v in spec.get("volumes", []) if not VOLUME_SOURCES & v.keys()])
    fail("allowPrivilegeEscalation",
         [c["name"] for c in containers(spec) if _context(c).get("allowPrivilegeEscalation") is not False])
    if not user_namespace:
        fail("runAsNonRoot", _inherited(spec, "runAsNonRoot", lambda v: v is True))
        fail("runAsUser", [w for w, ctx in [("pod", pod), *((c["name"], _context(c)) for c in containers(spec))]
                           if ctx.get("runAsUser") == 0])  # fmt: skip
    fail("seccompProfile_restricted", _inherited(spec, "seccompProfile", lambda v: v.get("type") in SECCOMP_TYPES))
    drops = {c["name"]: (_context(c).get("capabilities") or {}).get("drop") or [] for c in containers(spec)}
    no_drop_all = [name for name, dropped in drops.items() if "ALL" not in dropped]
    fail("capabilities_restricted", no_drop_all + [a for a in adds if a != "NET_BIND_SERVICE"])
    return found
