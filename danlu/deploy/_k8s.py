"""Kubernetes manifests for a packaged model version, and the checks that keep them safe.

``danlu package NAME@ALIAS --out DIR --k8s`` writes ``DIR/k8s/*.yaml`` from a :class:`K8sSpec`:

- ``deployment.yaml``: the server (non-root, read-only root filesystem, every capability
  dropped), its probes (startup and liveness on ``/healthz``, readiness on ``/readyz``), resource
  requests and limits, a ``preStop`` pause and a grace period longer than the server's drain, a
  rolling update that never takes a ready pod away first, and pods spread over nodes.
- ``service.yaml`` (ClusterIP, port ``http``), ``hpa.yaml`` (CPU), ``pdb.yaml`` (one pod away
  at a time during node drains), ``networkpolicy.yaml`` (ingress to ``http`` only).
- ``secret.yaml``: a *template* for the API keys, with placeholders the server refuses (shorter
  than a key may be), so a forgotten template fails closed instead of serving with a known key.
- ``servicemonitor.yaml``: the Prometheus Operator's scrape, with the metrics key as a bearer
  token (``/metrics`` needs a key off loopback).
- ``kustomization.yaml``: ``kubectl apply -k`` applies everything but the Secret template (which
  would overwrite the real Secret) and the ServiceMonitor (a CRD not every cluster has).

Why the timings (see ``danlu/serve/_server.py``): on SIGTERM the server turns readiness off and
stops accepting connections at once, then lets requests in flight finish for at most
``timeout + 5`` seconds. Endpoints are removed from Services asynchronously, so the ``preStop``
pause keeps the pod answering for a few seconds while the cluster stops sending it traffic; the
grace period covers pause + drain + a margin, so the kubelet never kills a draining server.

:func:`check_manifests` holds danlu's own invariants (probes, non-root, limits, timings,
selectors, no real key in the template); the generated files pass it, and so must any edit.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from danlu.deploy._k8s_check import (
    KEYS_DIR,
    KEYS_ITEM,
    METRICS_KEY_ITEM,
    MIN_KEY_LENGTH,
    PACKAGE_PATH,
    PORT_NAME,
    VERSION_LABEL,
    check_manifests,
    drain_seconds,
    parse_quantity,
)
from danlu.errors import ConfigError

__all__ = [
    "K8sSpec",
    "check_manifests",
    "k8s_name",
    "kubernetes_manifests",
    "label_value",
    "parse_quantity",
]

RUN_AS = 10001  # the image's non-root user
PRESTOP_SECONDS = 5  # long enough for kube-proxy and ingresses to drop the endpoint
GRACE_MARGIN_SECONDS = 5  # the pool stopping after the last request, the process exiting
GPU_RESOURCE = "nvidia.com/gpu"
_DNS_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
_DNS_1123 = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_PLACEHOLDER = "<REPLACE: {what}>"


def k8s_name(model_name: str) -> str:
    """The Kubernetes name of a model's app: a DNS-1035 label (what a Service name must be).

    Lower-cased; every character other than ``a-z``, ``0-9`` and ``-`` becomes ``-`` (runs of
    them one); ``danlu-`` is put in front of a name that does not start with a letter; trimmed
    to 63 characters and of ``-`` at both ends.

    Raises:
        ConfigError: nothing usable is left (an empty name, or only punctuation).

    Example:
        >>> k8s_name("Digits_CNN.v2"), k8s_name("3d-unet")
        ('digits-cnn-v2', 'danlu-3d-unet')
    """
    name = re.sub(r"[^a-z0-9-]+", "-", model_name.strip().lower())
    name = re.sub(r"-{2,}", "-", name).strip("-")
    if not name:
        raise ConfigError(
            f"The model name {model_name!r} gives no Kubernetes name: it needs at least one "
            "letter or digit."
        )
    if not name[0].isalpha():
        name = f"danlu-{name}"
    return name[:63].rstrip("-")


def label_value(text: str) -> str:
    """``text`` as a valid label value: other characters than ``A-Za-z0-9-_.`` become ``-``,
    at most 63 characters, beginning and ending with a letter or digit (may be empty).

    Example:
        >>> label_value("digits:6"), label_value("résumé@prod")
        ('digits-6', 'r-sum-prod')
    """
    value = re.sub(r"[^A-Za-z0-9_.-]+", "-", text)[:63]
    return re.sub(r"^[^A-Za-z0-9]+|[^A-Za-z0-9]+$", "", value)


@dataclass(frozen=True)
class K8sSpec:
    """What the Kubernetes manifests of one packaged model version are made from.

    Args:
        name: the app's name, a DNS-1035 label (make it with :func:`k8s_name`).
        image: the image the build context builds, e.g. ``registry.example/danlu-digits:6``.
        model_ref: the version served, e.g. ``digits:6`` (labels and annotations).
        port: the server's port in the container.
        replicas: the fixed number of pods when ``autoscale`` is off.
        cpu_request, cpu_limit, memory_request, memory_limit: Kubernetes quantities.
        request_timeout_s: ``danlu serve --timeout``; the drain after SIGTERM is bounded by
            this + 5 s, and the grace period is worked out from it.
        autoscale: write a HorizontalPodAutoscaler (CPU) from ``min_replicas`` to
            ``max_replicas`` and leave the Deployment's replica count to it.
        min_replicas, max_replicas, target_cpu_percent: the autoscaler's settings.
        namespace: put every object in this namespace (None: the one ``kubectl`` uses).
        keys_secret_name: the Secret holding the API keys (default ``{name}-api-keys``).
        threads: inference threads (``--threads`` and ``OMP_NUM_THREADS``).
        allowed_hosts: more Host names clients use (an Ingress's host); the Service's names
            and the pod's IP are always allowed.
        command: the container's command; empty (the default): the image's ENTRYPOINT,
            ``danlu serve --package /app/model``. When set, ``--package`` leads the args.
        startup_seconds: how long the server may take to start answering (model loading).
        gpus: NVIDIA GPUs per pod (``nvidia.com/gpu``; the image of ``danlu package --cuda``),
            with a toleration of the usual ``nvidia.com/gpu`` taint.

    Raises:
        ConfigError: naming every field with a bad value, all at once.

    Example:
        >>> spec = K8sSpec(name=k8s_name("digits"), image="danlu-digits:6", model_ref="digits:6")
        >>> spec.keys_secret, spec.grace_seconds
        ('digits-api-keys', 25)
    """

    name: str
    image: str
    model_ref: str
    port: int = 8000
    replicas: int = 2
    cpu_request: str = "500m"
    cpu_limit: str = "1"
    memory_request: str = "512Mi"
    memory_limit: str = "1Gi"
    request_timeout_s: float = 10.0
    autoscale: bool = True
    min_replicas: int = 2
    max_replicas: int = 10
    target_cpu_percent: int = 70
    namespace: str | None = None
    keys_secret_name: str | None = None
    threads: int = 1
    allowed_hosts: tuple[str, ...] = ()
    command: tuple[str, ...] = ()
    startup_seconds: int = 120
    gpus: int = 0

    def __post_init__(self) -> None:
        problems = _spec_problems(self)
        if problems:
            raise ConfigError(
                "The Kubernetes settings are invalid:\n" + "\n".join(f"- {p}" for p in problems)
            )

    @property
    def keys_secret(self) -> str:
        """The name of the Secret holding the API keys."""
        return self.keys_secret_name or f"{self.name}-api-keys"

    @property
    def drain_seconds(self) -> int:
        """The most seconds the server drains after SIGTERM."""
        return drain_seconds(self.request_timeout_s)

    @property
    def grace_seconds(self) -> int:
        """``terminationGracePeriodSeconds``: the preStop pause + the drain + a margin."""
        return PRESTOP_SECONDS + self.drain_seconds + GRACE_MARGIN_SECONDS

    @property
    def selector_labels(self) -> dict[str, str]:
        """The labels that pick this app's pods (never the version: selectors are immutable)."""
        return {"app.kubernetes.io/name": self.name, "app.kubernetes.io/instance": self.name}

    @property
    def labels(self) -> dict[str, str]:
        """Every object's labels."""
        model, _, version = self.model_ref.partition(":")
        labels = {
            **self.selector_labels,
            "app.kubernetes.io/component": "model-server",
            "app.kubernetes.io/part-of": "danlu",
            "app.kubernetes.io/managed-by": "danlu",
            "danlu.dev/model": label_value(model),
        }
        if version:
            labels[VERSION_LABEL] = label_value(version)
            labels["danlu.dev/model-ref"] = label_value(self.model_ref)
        return labels


_INTEGERS = {  # field: (lowest, highest)
    "port": (1, 65535),
    "replicas": (1, 1000),
    "min_replicas": (1, 1000),
    "max_replicas": (1, 1000),
    "target_cpu_percent": (1, 1000),
    "threads": (1, 256),
    "startup_seconds": (1, 3600),
    "gpus": (0, 16),
}


def _spec_problems(spec: K8sSpec) -> list[str]:
    return _name_problems(spec) + _number_problems(spec) + _quantity_problems(spec)


def _name_problems(spec: K8sSpec) -> list[str]:
    problems = []
    if not _DNS_LABEL.match(spec.name) or len(spec.name) > 63:
        problems.append(
            f"name {spec.name!r} must be a DNS-1035 label (a-z, 0-9 and '-', starting with a "
            "letter, at most 63 characters); make it with k8s_name(model_name)."
        )
    if not spec.image or re.search(r"\s", spec.image):
        problems.append(f"image {spec.image!r} must be an image reference without spaces.")
    if not spec.model_ref.strip():
        problems.append("model_ref must name the version served, e.g. digits:6.")
    if spec.namespace is not None and not _DNS_1123.match(spec.namespace):
        problems.append(f"namespace {spec.namespace!r} must be a DNS-1123 label.")
    secret = spec.keys_secret_name
    if secret is not None and not all(_DNS_1123.match(part) for part in secret.split(".")):
        problems.append(f"keys_secret_name {secret!r} must be a DNS-1123 name.")
    for host in spec.allowed_hosts:
        if not host or "," in host or re.search(r"\s", host):
            problems.append(f"allowed_hosts: {host!r} must be one host name.")
    return problems


def _number_problems(spec: K8sSpec) -> list[str]:
    problems = []
    for key, (low, high) in _INTEGERS.items():
        value = getattr(spec, key)
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            problems.append(f"{key} must be an integer from {low} to {high}; got {value!r}.")
    low, high = spec.min_replicas, spec.max_replicas
    if spec.autoscale and isinstance(low, int) and isinstance(high, int) and low > high:
        problems.append(f"min_replicas ({low}) must not exceed max_replicas ({high}).")
    timeout = spec.request_timeout_s
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not timeout > 0:
        problems.append(f"request_timeout_s must be a number of seconds > 0; got {timeout!r}.")
    return problems


def _quantity_problems(spec: K8sSpec) -> list[str]:
    problems = []
    for request_key, limit_key in (
        ("cpu_request", "cpu_limit"),
        ("memory_request", "memory_limit"),
    ):
        parsed = {}
        for key in (request_key, limit_key):
            try:
                parsed[key] = parse_quantity(getattr(spec, key))
            except ConfigError as exc:
                problems.append(f"{key}: {exc}")
                continue
            if parsed[key] <= 0:
                problems.append(f"{key} must be more than 0; got {getattr(spec, key)!r}.")
        if len(parsed) == 2 and parsed[request_key] > parsed[limit_key]:
            problems.append(
                f"{request_key} ({getattr(spec, request_key)}) must not exceed {limit_key} "
                f"({getattr(spec, limit_key)})."
            )
    return problems


# -- writing ------------------------------------------------------------------------------------


def _metadata(spec: K8sSpec, name: str | None = None) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name or spec.name}
    if spec.namespace:
        meta["namespace"] = spec.namespace
    meta["labels"] = spec.labels
    meta["annotations"] = {"danlu.dev/model-ref": spec.model_ref}
    return meta


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def _server_args(spec: K8sSpec) -> list[str]:
    namespace = spec.namespace or "$(POD_NAMESPACE)"
    # The server answers only the Host names it knows (DNS rebinding): the Service's names, and
    # the pod's IP, which Prometheus scrapes by. Kubernetes expands $(VAR) from the env below.
    hosts = [
        "$(POD_IP)",
        spec.name,
        f"{spec.name}.{namespace}",
        f"{spec.name}.{namespace}.svc",
        f"{spec.name}.{namespace}.svc.cluster.local",
        *spec.allowed_hosts,
    ]
    # The image's ENTRYPOINT is `danlu serve --package /app/model`; these replace its CMD.
    package = [] if not spec.command else ["--package", PACKAGE_PATH]
    return [
        *package,
        "--host", "0.0.0.0",
        "--port", str(spec.port),
        "--keys-file", f"{KEYS_DIR}/{KEYS_ITEM}",
        "--timeout", _number(spec.request_timeout_s),
        "--threads", str(spec.threads),
        "--workers", "1",  # scale with pods, not processes: one process per CPU limit
        "--allowed-hosts", ",".join(hosts),
    ]  # fmt: skip


def _deployment(spec: K8sSpec) -> dict[str, Any]:
    def probe(path: str, period: int, timeout: int, failures: int) -> dict[str, Any]:
        return {
            "httpGet": {"path": path, "port": PORT_NAME},
            "periodSeconds": period,
            "timeoutSeconds": timeout,
            "failureThreshold": failures,
        }

    container: dict[str, Any] = {
        "name": "server",
        "image": spec.image,
        "imagePullPolicy": "IfNotPresent",
        **({"command": list(spec.command)} if spec.command else {}),
        "args": _server_args(spec),
        "ports": [{"name": PORT_NAME, "containerPort": spec.port, "protocol": "TCP"}],
        "env": [
            {"name": "OMP_NUM_THREADS", "value": str(spec.threads)},
            {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
            {
                "name": "POD_NAMESPACE",
                "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}},
            },
        ],
        "resources": {
            "requests": {"cpu": spec.cpu_request, "memory": spec.memory_request},
            "limits": {
                "cpu": spec.cpu_limit,
                "memory": spec.memory_limit,
                **({GPU_RESOURCE: spec.gpus} if spec.gpus else {}),  # requests follow limits
            },
        },
        # Slow model loads: liveness waits until the process answers at all.
        "startupProbe": probe("/healthz", 2, 2, max(1, math.ceil(spec.startup_seconds / 2))),
        "livenessProbe": probe("/healthz", 10, 5, 3),
        # Off the Service within ~10 s of not being ready (loading, or draining after SIGTERM).
        "readinessProbe": {**probe("/readyz", 5, 2, 2), "successThreshold": 1},
        "lifecycle": {"preStop": {"exec": {"command": ["sleep", str(PRESTOP_SECONDS)]}}},
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": RUN_AS,
            "runAsGroup": RUN_AS,
            "allowPrivilegeEscalation": False,
            "privileged": False,
            "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "volumeMounts": [
            {"name": "api-keys", "mountPath": KEYS_DIR, "readOnly": True},
            {"name": "tmp", "mountPath": "/tmp"},
        ],
    }
    pod_spec: dict[str, Any] = {
        "automountServiceAccountToken": False,  # the server never talks to the API server
        "enableServiceLinks": False,  # no *_SERVICE_HOST variables for every Service around
        "terminationGracePeriodSeconds": spec.grace_seconds,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": RUN_AS,
            "runAsGroup": RUN_AS,
            "fsGroup": RUN_AS,  # the Secret's files readable by the server's group (mode 0440)
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "affinity": {
            "podAntiAffinity": {
                "preferredDuringSchedulingIgnoredDuringExecution": [
                    {
                        "weight": 100,
                        "podAffinityTerm": {
                            "topologyKey": "kubernetes.io/hostname",
                            "labelSelector": {"matchLabels": spec.selector_labels},
                        },
                    }
                ]
            }
        },
        **(
            {"tolerations": [{"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"}]}
            if spec.gpus
            else {}
        ),
        "containers": [container],
        "volumes": [
            {
                "name": "api-keys",
                "secret": {
                    "secretName": spec.keys_secret,
                    "items": [{"key": KEYS_ITEM, "path": KEYS_ITEM}],
                    "defaultMode": 0o440,
                    "optional": False,  # no Secret, no pod: never a server without keys
                },
            },
            {"name": "tmp", "emptyDir": {"sizeLimit": "256Mi"}},
        ],
    }
    deployment_spec: dict[str, Any] = {}
    if not spec.autoscale:  # with an autoscaler, it owns the count (apply must not reset it)
        deployment_spec["replicas"] = spec.replicas
    deployment_spec |= {
        "revisionHistoryLimit": 5,
        "selector": {"matchLabels": spec.selector_labels},
        "strategy": {
            "type": "RollingUpdate",
            "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1},
        },
        "template": {
            "metadata": {
                "labels": spec.labels,
                "annotations": {
                    "danlu.dev/model-ref": spec.model_ref,
                    # Annotation-based discovery cannot send the bearer token /metrics needs:
                    # see docs/kubernetes.md (a scrape job with credentials, or the ServiceMonitor).
                    "prometheus.io/scrape": "true",
                    "prometheus.io/port": str(spec.port),
                    "prometheus.io/path": "/metrics",
                    "prometheus.io/scheme": "http",
                },
            },
            "spec": pod_spec,
        },
    }
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _metadata(spec),
        "spec": deployment_spec,
    }


def _service(spec: K8sSpec) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(spec),
        "spec": {
            "type": "ClusterIP",
            "selector": spec.selector_labels,
            "ports": [
                {"name": PORT_NAME, "port": spec.port, "targetPort": PORT_NAME, "protocol": "TCP"}
            ],
        },
    }


def _hpa(spec: K8sSpec) -> dict[str, Any]:
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": _metadata(spec),
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": spec.name},
            "minReplicas": spec.min_replicas,
            "maxReplicas": spec.max_replicas,
            "metrics": [
                {
                    "type": "Resource",
                    "resource": {
                        "name": "cpu",
                        "target": {
                            "type": "Utilization",
                            "averageUtilization": spec.target_cpu_percent,
                        },
                    },
                }
            ],
            "behavior": {  # up quickly, down slowly (no flapping on bursty traffic)
                "scaleUp": {"stabilizationWindowSeconds": 0},
                "scaleDown": {"stabilizationWindowSeconds": 300},
            },
        },
    }


def _pdb(spec: K8sSpec) -> dict[str, Any]:
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": _metadata(spec),
        "spec": {"maxUnavailable": 1, "selector": {"matchLabels": spec.selector_labels}},
    }


def _network_policy(spec: K8sSpec) -> dict[str, Any]:
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": _metadata(spec),
        "spec": {
            "podSelector": {"matchLabels": spec.selector_labels},
            "policyTypes": ["Ingress"],
            # Only the server's port, from anywhere: add `from:` (namespaceSelector /
            # podSelector) to narrow the callers; see docs/kubernetes.md.
            "ingress": [{"ports": [{"port": PORT_NAME, "protocol": "TCP"}]}],
        },
    }


def _secret(spec: K8sSpec) -> dict[str, Any]:
    client = _PLACEHOLDER.format(what="client key")
    metrics = _PLACEHOLDER.format(what="metrics key")
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": _metadata(spec, spec.keys_secret),
        "type": "Opaque",
        "stringData": {KEYS_ITEM: f"{client}\n{metrics}\n", METRICS_KEY_ITEM: metrics},
    }


def _service_monitor(spec: K8sSpec) -> dict[str, Any]:
    monitor_spec: dict[str, Any] = {"selector": {"matchLabels": spec.selector_labels}}
    if spec.namespace:
        monitor_spec["namespaceSelector"] = {"matchNames": [spec.namespace]}
    monitor_spec["endpoints"] = [
        {
            "port": PORT_NAME,
            "path": "/metrics",
            "scheme": "http",
            "interval": "30s",
            "scrapeTimeout": "10s",
            "authorization": {
                "type": "Bearer",
                "credentials": {"name": spec.keys_secret, "key": METRICS_KEY_ITEM},
            },
        }
    ]
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "ServiceMonitor",
        "metadata": _metadata(spec),
        "spec": monitor_spec,
    }


def _kustomization(spec: K8sSpec, files: Sequence[str]) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
    }
    if spec.namespace:
        doc["namespace"] = spec.namespace
    doc["resources"] = list(files)
    return doc


_HEADERS = {
    "deployment.yaml": "The model server: probes, limits, non-root, preStop + grace period "
    "covering the drain.",
    "service.yaml": "ClusterIP Service; port 'http'.",
    "hpa.yaml": "Autoscaling on CPU (needs the metrics server).",
    "pdb.yaml": "At most one pod away at a time during voluntary disruptions (node drains).",
    "networkpolicy.yaml": "Ingress to port 'http' only; add `from:` to narrow the callers.",
    "secret.yaml": "TEMPLATE - do not apply as is. The placeholders are shorter than a key\n"
    f"# may be ({MIN_KEY_LENGTH} characters), so the server refuses to start with them. Fill "
    "it, or create\n# the Secret with kubectl (docs/kubernetes.md):\n"
    "#   kubectl create secret generic {secret} \\\n"
    "#     --from-file=keys=keys.txt --from-file=metrics-key=metrics-key.txt\n"
    "# 'keys' holds one key a line; 'metrics-key' (what Prometheus sends) must be one of them.",
    "servicemonitor.yaml": "Prometheus Operator scrape with the metrics key as bearer token.\n"
    "# Apply on its own: kubectl apply -f servicemonitor.yaml",
    "kustomization.yaml": "kubectl apply -k DIR applies these; the Secret (template) and the\n"
    "# ServiceMonitor (a CRD) are applied on their own.",
}


def kubernetes_manifests(spec: K8sSpec) -> dict[str, str]:
    """The manifests of ``spec``: file name → YAML text (one document each).

    ``hpa.yaml`` is written only with ``autoscale``. Every file passes :func:`check_manifests`
    and the Kubernetes OpenAPI schemas.

    Example:
        >>> spec = K8sSpec(name="digits", image="danlu-digits:6", model_ref="digits:6")
        >>> docs = kubernetes_manifests(spec)
        >>> sorted(docs)[:3], check_manifests(docs)
        (['deployment.yaml', 'hpa.yaml', 'kustomization.yaml'], [])
    """
    import yaml

    objects: dict[str, dict[str, Any]] = {
        "deployment.yaml": _deployment(spec),
        "service.yaml": _service(spec),
    }
    if spec.autoscale:
        objects["hpa.yaml"] = _hpa(spec)
    objects["pdb.yaml"] = _pdb(spec)
    objects["networkpolicy.yaml"] = _network_policy(spec)
    applied = list(objects)
    objects["secret.yaml"] = _secret(spec)
    objects["servicemonitor.yaml"] = _service_monitor(spec)
    objects["kustomization.yaml"] = _kustomization(spec, applied)

    class Dumper(yaml.SafeDumper):
        """safe_dump's dumper, writing a string of several lines as a ``|`` block."""

    def represent_str(dumper: yaml.SafeDumper, text: str) -> yaml.Node:
        style = "|" if "\n" in text else None
        return dumper.represent_scalar("tag:yaml.org,2002:str", text, style=style)

    Dumper.add_representer(str, represent_str)
    docs = {}
    for file, obj in objects.items():
        header = _HEADERS[file].replace("{secret}", spec.keys_secret)
        body = yaml.dump(obj, Dumper=Dumper, sort_keys=False, default_flow_style=False, width=100)
        docs[file] = f"# {file} - written by danlu for {spec.model_ref}.\n# {header}\n{body}"
    return docs
