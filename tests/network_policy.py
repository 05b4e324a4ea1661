"""Which connections a set of NetworkPolicies lets through, by the API's rules (NetworkPolicySpec, networking.k8s.io/v1:
https://kubernetes.io/docs/concepts/services-networking/network-policies/), so the tests can ask "can this pod reach
that port" of rendered manifests instead of reading fields.

- A pod selected by a policy with Ingress (Egress) in `policyTypes` is isolated that way: only what some such policy
  allows gets through; policies only add. A pod no policy selects is open.
- A peer: `podSelector` alone means pods of the policy's namespace; `namespaceSelector` alone, every pod of the
  namespaces it selects; both, the pods it selects in those namespaces. Rules without `from`/`to` (`ports`) match
  every peer (port). A named port is the destination pod's container port of that name and protocol.
- A connection needs the source's egress and the destination's ingress. Traffic from the pod's own node (kubelet
  probes) is always allowed and not modelled.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Pod:
    namespace: str
    labels: dict
    ports: dict = field(default_factory=dict)  # {name: (number, protocol)} of its containers
    namespace_labels: dict = field(default_factory=dict)  # beyond kubernetes.io/metadata.name, set by the API server

    @property
    def all_namespace_labels(self) -> dict:
        return {"kubernetes.io/metadata.name": self.namespace, **self.namespace_labels}


def matches(selector: dict, labels: dict) -> bool:
    assert set(selector) <= {"matchLabels"}, f"only matchLabels is modelled: {selector}"
    return selector.get("matchLabels", {}).items() <= labels.items()


def _peer_matches(peer: dict, policy_namespace: str, other: Pod) -> bool:
    assert "ipBlock" not in peer, "ipBlock peers are not modelled"
    if "namespaceSelector" in peer:
        in_namespace = matches(peer["namespaceSelector"], other.all_namespace_labels)
    else:
        in_namespace = other.namespace == policy_namespace
    return in_namespace and matches(peer.get("podSelector", {}), other.labels)


def _port_matches(rule_ports: list | None, port: int, protocol: str, destination: Pod) -> bool:
    if not rule_ports:
        return True
    for entry in rule_ports:
        if entry.get("protocol", "TCP") != protocol:
            continue
        wanted = entry.get("port")
        if wanted is None or wanted == port or destination.ports.get(wanted) == (port, protocol):
            return True
    return False


def _allows(policies: list[dict], direction: str, pod: Pod, other: Pod, port: int, protocol: str,
            destination: Pod) -> bool:  # fmt: skip
    kind, rules_key, peers_key = {"in": ("Ingress", "ingress", "from"), "out": ("Egress", "egress", "to")}[direction]
    selecting = [p for p in policies if p["metadata"]["namespace"] == pod.namespace
                 and matches(p["spec"]["podSelector"], pod.labels) and kind in p["spec"]["policyTypes"]]  # fmt: skip
    if not selecting:
        return True  # not isolated
    for policy in selecting:
        for rule in policy["spec"].get(rules_key) or []:
            peers = rule.get(peers_key)
            if (not peers or any(_peer_matches(peer, pod.namespace, other) for peer in peers)) and \
                    _port_matches(rule.get("ports"), port, protocol, destination):  # fmt: skip
                return True
    return False


def connects(policies: list[dict], source: Pod, destination: Pod, port: int, protocol: str = "TCP") -> bool:
    """Whether `source` can open a connection to `destination`'s `port`."""
    assert all("namespace" in p["metadata"] for p in policies), "give each policy the namespace it is applied to"
    return _allows(policies, "out", source, destination, port, protocol, destination) and \
        _allows(policies, "in", destination, source, port, protocol, destination)  # fmt: skip
