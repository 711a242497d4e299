"""What danlu requires of a model server's Kubernetes manifests, beyond the Kubernetes schemas.

:func:`check_manifests` reads a set of manifests (file name → YAML text, as
:func:`danlu.deploy.kubernetes_manifests` writes them, or as a team edited them) and returns one
sentence per broken invariant, naming the file, the object (kind and name) and the field:

- the pods: readiness on ``/readyz``, liveness on ``/healthz``; CPU and memory requests and
  limits (requests not above limits); non-root, no privilege escalation, a read-only root with a
  writable ``/tmp``, every capability dropped, the runtime's seccomp profile; no service-account
  token; a ``preStop`` pause and a grace period that covers it and the server's drain; a rollout
  that keeps ready pods; the API keys mounted read-only from the Secret;
- the selectors: the Deployment's (matching its pods, never the version: selectors are
  immutable), the Service's, the autoscaler's target, the disruption budget's, the network
  policy's, the ServiceMonitor's (a Service, and a port of it);
- the Secret template: placeholders only, the metrics key one of the keys;
- the kustomization: the files it lists exist, and the Secret template is not one of them.
"""

from __future__ import annotations

import base64
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from danlu.errors import ConfigError

__all__ = ["check_manifests", "drain_seconds", "parse_quantity"]

PACKAGE_PATH = "/app/model"  # where the image holds the packaged version
KEYS_DIR = "/etc/danlu/keys"  # the Secret's mount; the server reads KEYS_DIR/keys
KEYS_ITEM = "keys"  # one API key a line
METRICS_KEY_ITEM = "metrics-key"  # the key Prometheus sends (also a line of KEYS_ITEM)
KEYS_FILE_ENV = "DANLU_API_KEYS_FILE"
MIN_KEY_LENGTH = 32  # the server refuses shorter keys; the template's placeholders are shorter
PORT_NAME = "http"
VERSION_LABEL = "app.kubernetes.io/version"
DEFAULT_TIMEOUT_S = 10.0  # danlu serve --timeout

_QUANTITY = re.compile(
    r"^(?P<num>[0-9]+(\.[0-9]*)?|\.[0-9]+)"
    r"(?P<suffix>Ki|Mi|Gi|Ti|Pi|Ei|[numkMGTPE]|[eE][+-]?[0-9]+)?$"
)
_BINARY = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60}
_DECIMAL = {"n": "1e-9", "u": "1e-6", "m": "1e-3", "k": "1e3", "M": "1e6", "G": "1e9"}
_DECIMAL |= {"T": "1e12", "P": "1e15", "E": "1e18"}
_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")


def parse_quantity(text: str) -> Decimal:
    """A Kubernetes quantity (``500m``, ``1``, ``512Mi``, ``1.5G``, ``1e3``) as a number.

    Raises:
        ConfigError: ``text`` is not a quantity.

    Example:
        >>> [float(parse_quantity(q)) for q in ("500m", "1Ki", "2e3", "1.5G")]
        [0.5, 1024.0, 2000.0, 1500000000.0]
    """
    match = _QUANTITY.match(str(text).strip())
    if match is None:
        raise ConfigError(
            f"{text!r} is not a Kubernetes quantity; write it like 500m, 1, 512Mi or 2Gi."
        )
    number, suffix = Decimal(match.group("num")), match.group("suffix") or ""
    if suffix in _BINARY:
        return number * _BINARY[suffix]
    if suffix in _DECIMAL:
        return number * Decimal(_DECIMAL[suffix])
    return number * Decimal(f"1{suffix}") if suffix else number  # an exponent, e.g. e3


def drain_seconds(request_timeout_s: float) -> int:
    """The most seconds the server takes to drain after SIGTERM: its uvicorn
    ``timeout_graceful_shutdown`` (the request timeout + 5 s), the timeout rounded up.

    Example:
        >>> drain_seconds(10.0), drain_seconds(2.5)
        (15, 8)
    """
    return math.ceil(request_timeout_s) + 5


@dataclass
class _Doc:
    file: str
    obj: dict[str, Any]

    @property
    def kind(self) -> str:
        return str(self.obj.get("kind", "?"))

    @property
    def name(self) -> str:
        return str(_get(self.obj, "metadata.name") or "?")

    def where(self, path: str) -> str:
        return f"{self.file}: {self.kind} {self.name}: {path}"


def _get(obj: Any, path: str) -> Any:
    for part in path.split("."):
        if not isinstance(obj, Mapping):
            return None
        obj = obj.get(part)
    return obj


def _items(obj: Any, path: str) -> list[Mapping[str, Any]]:
    """The mappings of the list at ``path`` (none when it is absent or not a list)."""
    value = _get(obj, path)
    return [item for item in value if isinstance(item, Mapping)] if isinstance(value, list) else []


def _subset(selector: Any, labels: Any) -> bool:
    """Whether a non-empty ``selector`` picks objects labelled ``labels``."""
    if not isinstance(selector, Mapping) or not selector:
        return False
    labels = labels if isinstance(labels, Mapping) else {}
    return all(labels.get(key) == value for key, value in selector.items())


def _arg(args: Sequence[Any], option: str) -> str | None:
    for i, item in enumerate(args):
        if item == option and i + 1 < len(args):
            return str(args[i + 1])
        if isinstance(item, str) and item.startswith(option + "="):
            return item.partition("=")[2]
    return None


def _load(docs: Mapping[str, str], problems: list[str]) -> list[_Doc]:
    import yaml

    loaded = []
    for file, text in docs.items():
        try:
            objects = [o for o in yaml.safe_load_all(text) if o is not None]
        except yaml.YAMLError as exc:
            problems.append(f"{file}: not YAML ({exc}).")
            continue
        for obj in objects:
            if not isinstance(obj, dict) or not obj.get("kind") or not obj.get("apiVersion"):
                problems.append(f"{file}: a document without apiVersion and kind.")
                continue
            loaded.append(_Doc(file, obj))
    return loaded


# -- the pods -----------------------------------------------------------------------------------


def _check_probes(doc: _Doc, at: str, c: Mapping[str, Any]) -> list[str]:
    problems = []
    for probe, path in (("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")):
        got = _get(c, f"{probe}.httpGet.path")
        if got != path:
            problems.append(
                doc.where(f"{at}.{probe}")
                + f" must be an HTTP GET of {path}; found {'none' if got is None else got}."
            )
    return problems


def _check_resources(doc: _Doc, at: str, c: Mapping[str, Any]) -> list[str]:
    problems = []
    for resource in ("cpu", "memory"):
        parsed = {}
        for kind in ("requests", "limits"):
            value = _get(c, f"resources.{kind}.{resource}")
            where = doc.where(f"{at}.resources.{kind}.{resource}")
            if value is None:
                problems.append(where + " is not set.")
                continue
            try:
                parsed[kind] = parse_quantity(str(value))
            except ConfigError:
                problems.append(where + f" {value!r} is not a quantity.")
        if len(parsed) == 2 and parsed["requests"] > parsed["limits"]:
            problems.append(
                doc.where(f"{at}.resources.requests.{resource}") + " exceeds the limit."
            )
    return problems


def _check_security(doc: _Doc, at: str, c: Mapping[str, Any], pod: Mapping[str, Any]) -> list[str]:
    def setting(key: str) -> Any:  # the container's setting wins over the pod's
        own = _get(c, f"securityContext.{key}")
        return own if own is not None else _get(pod, f"securityContext.{key}")

    where = f"{at}.securityContext"
    wrong = []
    if setting("runAsNonRoot") is not True:
        wrong.append(("runAsNonRoot", "must be true"))
    if setting("runAsUser") == 0:
        wrong.append(("runAsUser", "must not be 0 (root)"))
    if _get(c, "securityContext.allowPrivilegeEscalation") is not False:
        wrong.append(("allowPrivilegeEscalation", "must be false"))
    if _get(c, "securityContext.readOnlyRootFilesystem") is not True:
        wrong.append(("readOnlyRootFilesystem", "must be true"))
    if _get(c, "securityContext.privileged") is True:
        wrong.append(("privileged", "must not be true"))
    if "ALL" not in (_get(c, "securityContext.capabilities.drop") or []):
        wrong.append(("capabilities.drop", "must hold ALL"))
    if setting("seccompProfile.type") not in ("RuntimeDefault", "Localhost"):
        wrong.append(("seccompProfile.type", "must be RuntimeDefault"))
    return [doc.where(f"{where}.{key}") + f" {what}." for key, what in wrong]


def _check_container(doc: _Doc, c: Mapping[str, Any], pod: Mapping[str, Any]) -> list[str]:
    at = f"spec.template.spec.containers[{c.get('name', '?')}]"
    problems = _check_probes(doc, at, c) + _check_resources(doc, at, c)
    problems += _check_security(doc, at, c, pod)
    if "/tmp" not in {m.get("mountPath") for m in _items(c, "volumeMounts")}:
        problems.append(
            doc.where(f"{at}.volumeMounts")
            + " has no /tmp (an emptyDir): the root filesystem is read-only."
        )
    if not any(p.get("name") == PORT_NAME for p in _items(c, "ports")):
        problems.append(doc.where(f"{at}.ports") + f" has no port named {PORT_NAME!r}.")
    # $(VAR) in the command line is expanded only from the container's own env.
    defined = {e.get("name") for e in _items(c, "env")}
    words = [*(c.get("command") or []), *(c.get("args") or [])]
    used = set(re.findall(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", " ".join(map(str, words))))
    for var in sorted(used - defined):
        problems.append(
            doc.where(f"{at}.env") + f" does not define {var}, which the command line uses."
        )
    return problems


def _prestop_seconds(container: Mapping[str, Any]) -> int | None:
    """The pause of the ``preStop`` hook (a ``sleep`` action or an ``exec`` of sleep); None
    when there is no hook, 0 for a hook that does not pause."""
    pre = _get(container, "lifecycle.preStop")
    if not isinstance(pre, Mapping):
        return None
    if isinstance(pre.get("sleep"), Mapping):
        return int(pre["sleep"].get("seconds", 0))
    for item in reversed(_get(pre, "exec.command") or []):
        match = re.search(r"sleep\s+(\d+)", str(item)) or re.fullmatch(r"(\d+)", str(item))
        if match:
            return int(match.group(1))
    return 0


def _check_timing(doc: _Doc, pod: Mapping[str, Any], server: Mapping[str, Any]) -> list[str]:
    """preStop pause + the server's drain must fit in the grace period."""
    problems = []
    pause = _prestop_seconds(server)
    if pause is None:
        problems.append(
            doc.where(f"spec.template.spec.containers[{server.get('name', '?')}].lifecycle")
            + ".preStop is missing: pods would get SIGTERM while still listed as endpoints."
        )
        pause = 0
    timeout = _arg(server.get("args") or [], "--timeout")
    try:
        drain = drain_seconds(float(timeout) if timeout is not None else DEFAULT_TIMEOUT_S)
    except ValueError:
        problems.append(
            doc.where("spec.template.spec.containers[0].args")
            + f" --timeout {timeout!r} is not a number."
        )
        drain = drain_seconds(DEFAULT_TIMEOUT_S)
    grace = pod.get("terminationGracePeriodSeconds", 30)  # Kubernetes' default
    if not isinstance(grace, int) or grace < pause + drain:
        problems.append(
            doc.where("spec.template.spec.terminationGracePeriodSeconds")
            + f" is {grace}, shorter than the preStop pause ({pause} s) + the server's drain "
            f"({drain} s: --timeout + 5); the kubelet would kill requests in flight."
        )
    return problems


def _check_keys_mount(
    doc: _Doc, pod: Mapping[str, Any], server: Mapping[str, Any], secrets: Mapping[str, _Doc]
) -> list[str]:
    """The API keys: a Secret mounted read-only, the server pointed at a file in it."""
    problems = []
    at = f"spec.template.spec.containers[{server.get('name', '?')}]"
    secret_volumes = {
        v.get("name"): _get(v, "secret.secretName")
        for v in _items(pod, "volumes")
        if _get(v, "secret.secretName")
    }
    mounts = [m for m in _items(server, "volumeMounts") if m.get("name") in secret_volumes]
    keys_file = _arg(server.get("args") or [], "--keys-file") or next(
        (e.get("value") for e in _items(server, "env") if e.get("name") == KEYS_FILE_ENV), None
    )
    if not keys_file or not any(str(keys_file).startswith(str(m.get("mountPath"))) for m in mounts):
        problems.append(
            doc.where(at)
            + " reads no API keys from a mounted Secret (a secret volume + --keys-file): the "
            "server refuses to listen beyond loopback without keys."
        )
    for mount in mounts:
        if mount.get("readOnly") is not True:
            problems.append(doc.where(f"{at}.volumeMounts[{mount.get('name')}].readOnly")
                            + " must be true.")  # fmt: skip
        name = secret_volumes[mount.get("name")]
        if secrets and name not in secrets:
            problems.append(
                doc.where(f"spec.template.spec.volumes[{mount.get('name')}].secret.secretName")
                + f" is {name!r}, but the Secret is named {', '.join(sorted(secrets))}."
            )
    return problems


def _check_deployment(doc: _Doc, secrets: Mapping[str, _Doc]) -> list[str]:
    problems = []
    spec = doc.obj.get("spec") or {}
    pod = _get(spec, "template.spec") or {}
    selector = _get(spec, "selector.matchLabels")
    if not _subset(selector, _get(spec, "template.metadata.labels")):
        problems.append(
            doc.where("spec.selector.matchLabels")
            + " does not match spec.template.metadata.labels: the Deployment would own no pod."
        )
    elif VERSION_LABEL in selector:
        problems.append(
            doc.where("spec.selector.matchLabels")
            + f" holds {VERSION_LABEL}: a selector is immutable, so the next version could not "
            "be applied."
        )
    if _get(spec, "strategy.rollingUpdate.maxUnavailable") not in (0, "0%"):
        problems.append(
            doc.where("spec.strategy.rollingUpdate.maxUnavailable")
            + " must be 0 (a rollout never takes a ready pod away before its successor is ready)."
        )
    if pod.get("hostNetwork") is True:
        problems.append(doc.where("spec.template.spec.hostNetwork") + " must not be true.")
    if pod.get("automountServiceAccountToken") is not False:
        problems.append(
            doc.where("spec.template.spec.automountServiceAccountToken")
            + " must be false (the server never calls the API server)."
        )
    containers = _items(pod, "containers")
    if not containers:
        return [*problems, doc.where("spec.template.spec.containers") + " is empty."]
    for container in containers:
        problems += _check_container(doc, container, pod)
    problems += _check_timing(doc, pod, containers[0])
    return problems + _check_keys_mount(doc, pod, containers[0], secrets)


# -- the other objects --------------------------------------------------------------------------


def _secret_items(doc: _Doc) -> list[tuple[str, str, str]]:
    """(item, its text, where it is): ``data`` (base64-decoded) first, then ``stringData``."""
    items = []
    for key, value in (doc.obj.get("data") or {}).items():
        try:
            text = base64.b64decode(str(value), validate=True).decode("utf-8", "replace")
        except ValueError:
            text = str(value)
        items.append((key, text, f"data.{key}"))
    for key, value in (doc.obj.get("stringData") or {}).items():
        items.append((key, str(value), f"stringData.{key}"))
    return items


def _secret_values(doc: _Doc) -> dict[str, tuple[str, str]]:
    """item → (its text, where): stringData wins over data, as in the API."""
    return {key: (text, where) for key, text, where in _secret_items(doc)}


def _accepted_as_key(line: str) -> bool:
    """Whether the server would take ``line`` of a keys file as a key (danlu.store's
    ``read_keys_file``): one word of at least 32 characters, not a ``#`` comment."""
    key = line.strip()
    return len(key) >= MIN_KEY_LENGTH and not key.startswith("#") and not re.search(r"\s", key)


def _check_secret(doc: _Doc) -> list[str]:
    problems = []
    values = _secret_values(doc)
    if KEYS_ITEM not in values:
        problems.append(doc.where(f"stringData.{KEYS_ITEM}") + " is missing (one key a line).")
    for _, value, where in _secret_items(doc):
        if any(_accepted_as_key(line) for line in value.splitlines()):
            problems.append(
                doc.where(where)
                + " holds what looks like a real key; the template must hold placeholders only "
                "(create the real Secret with kubectl create secret)."
            )
    metrics, where = values.get(METRICS_KEY_ITEM, ("", ""))
    keys = {line.strip() for line in values.get(KEYS_ITEM, ("", ""))[0].splitlines()}
    if metrics.strip() and metrics.strip() not in keys:
        problems.append(
            doc.where(where)
            + f" is not one of the lines of {KEYS_ITEM}: the server would refuse Prometheus."
        )
    return problems


def _check_service(doc: _Doc, pod_labels: Any, container_ports: set[Any]) -> list[str]:
    problems = []
    if not _subset(_get(doc.obj, "spec.selector"), pod_labels):
        problems.append(doc.where("spec.selector") + " does not match the Deployment's pods.")
    http = [p for p in _items(doc.obj, "spec.ports") if p.get("name") == PORT_NAME]
    if not http:
        problems.append(doc.where("spec.ports") + f" has no port named {PORT_NAME!r}.")
    for port in http:
        if port.get("targetPort", port.get("port")) not in {PORT_NAME, *container_ports}:
            problems.append(
                doc.where(f"spec.ports[{PORT_NAME}].targetPort") + " is not the server's port."
            )
    return problems


def _check_hpa(doc: _Doc, deployment: _Doc | None) -> list[str]:
    problems = []
    target = _get(doc.obj, "spec.scaleTargetRef") or {}
    wanted = ("Deployment", deployment.name if deployment else None)
    if (target.get("kind"), target.get("name")) != wanted:
        problems.append(doc.where("spec.scaleTargetRef") + " does not name the Deployment.")
    low, high = _get(doc.obj, "spec.minReplicas") or 1, _get(doc.obj, "spec.maxReplicas")
    if not isinstance(high, int) or not isinstance(low, int) or low > high:
        problems.append(doc.where("spec.minReplicas") + " exceeds spec.maxReplicas.")
    return problems


def _check_network_policy(doc: _Doc, pod_labels: Any, container_ports: set[Any]) -> list[str]:
    problems = []
    if not _subset(_get(doc.obj, "spec.podSelector.matchLabels"), pod_labels):
        problems.append(
            doc.where("spec.podSelector.matchLabels") + " does not match the Deployment's pods."
        )
    if "Ingress" not in (_get(doc.obj, "spec.policyTypes") or []):
        problems.append(doc.where("spec.policyTypes") + " must hold Ingress.")
    for i, rule in enumerate(_items(doc.obj, "spec.ingress")):
        ports = [p.get("port") for p in _items(rule, "ports")]
        if not ports or any(p not in {PORT_NAME, *container_ports} for p in ports):
            problems.append(
                doc.where(f"spec.ingress[{i}].ports")
                + f" must open only the server's port ({PORT_NAME})."
            )
    return problems


def _check_service_monitor(
    doc: _Doc, services: Sequence[_Doc], secrets: Mapping[str, _Doc]
) -> list[str]:
    problems = []
    if doc.obj.get("apiVersion") != "monitoring.coreos.com/v1":
        problems.append(doc.where("apiVersion") + " must be monitoring.coreos.com/v1.")
    selector = _get(doc.obj, "spec.selector.matchLabels")
    matched = [s for s in services if _subset(selector, _get(s.obj, "metadata.labels"))]
    if not matched:
        problems.append(doc.where("spec.selector.matchLabels") + " matches no Service's labels.")
    port_names = {p.get("name") for s in matched for p in _items(s.obj, "spec.ports")}
    endpoints = _items(doc.obj, "spec.endpoints")
    if not endpoints:
        problems.append(doc.where("spec.endpoints") + " is empty.")
    for i, endpoint in enumerate(endpoints):
        at = f"spec.endpoints[{i}]"
        if matched and endpoint.get("port") not in port_names:
            problems.append(
                doc.where(f"{at}.port") + f" {endpoint.get('port')!r} is no port of the Service."
            )
        if endpoint.get("path", "/metrics") != "/metrics":
            problems.append(doc.where(f"{at}.path") + " must be /metrics.")
        credentials = _get(endpoint, "authorization.credentials") or {}
        if not credentials.get("name"):
            problems.append(
                doc.where(f"{at}.authorization")
                + " is missing: /metrics needs a key beyond loopback."
            )
        elif secrets and credentials.get("key") not in _secret_values(
            secrets.get(credentials["name"], _Doc("", {}))
        ):
            problems.append(
                doc.where(f"{at}.authorization.credentials")
                + f" names {credentials['name']}/{credentials.get('key')}, which no Secret here "
                "holds."
            )
    return problems


def _check_kustomization(doc: _Doc, docs: Mapping[str, str], secret_files: set[str]) -> list[str]:
    problems = []
    for resource in doc.obj.get("resources") or []:
        if resource not in docs:
            problems.append(doc.where("resources") + f" lists {resource}, which is missing.")
        elif resource in secret_files:
            problems.append(
                doc.where("resources")
                + f" lists {resource}: applying the template would overwrite the real keys."
            )
    return problems


def _check_metadata(loaded: Sequence[_Doc]) -> list[str]:
    problems = []
    for doc in loaded:
        for key, value in (_get(doc.obj, "metadata.labels") or {}).items():
            if not isinstance(value, str) or len(value) > 63 or not _LABEL_VALUE.match(value):
                problems.append(
                    doc.where(f"metadata.labels.{key}")
                    + f" {value!r} is not a label value (63 characters of A-Z a-z 0-9 - _ .)."
                )
    namespaces = {_get(d.obj, "metadata.namespace") for d in loaded if d.kind != "Kustomization"}
    if len(namespaces) > 1:
        listed = ", ".join(sorted(str(n) for n in namespaces))
        problems.append(f"the objects are in different namespaces: {listed}.")
    return problems


def check_manifests(docs: Mapping[str, str]) -> list[str]:
    """danlu's invariants on a set of manifests (file name → YAML text): ``[]`` when they hold.

    Each problem names the file, the kind and name of the object, and the field (the module's
    docstring lists what is checked).

    Example:
        >>> from danlu.deploy._k8s import K8sSpec, kubernetes_manifests
        >>> docs = kubernetes_manifests(K8sSpec("digits", "danlu-digits:6", "digits:6"))
        >>> check_manifests(docs)
        []
        >>> docs["deployment.yaml"] = docs["deployment.yaml"].replace("/readyz", "/healthz")
        >>> print(check_manifests(docs)[0])  # doctest: +NORMALIZE_WHITESPACE
        deployment.yaml: Deployment digits: spec.template.spec.containers[server].readinessProbe
        must be an HTTP GET of /readyz; found /healthz.
    """
    problems: list[str] = []
    loaded = _load(docs, problems)
    by_kind: dict[str, list[_Doc]] = {}
    for doc in loaded:
        by_kind.setdefault(doc.kind, []).append(doc)
    deployments = by_kind.get("Deployment", [])
    if len(deployments) != 1:
        problems.append(f"expected one Deployment; found {len(deployments)}.")
    secrets = {d.name: d for d in by_kind.get("Secret", [])}
    for doc in deployments:
        problems += _check_deployment(doc, secrets)
    deployment = deployments[0] if deployments else None
    pod_labels = _get(deployment.obj, "spec.template.metadata.labels") if deployment else None
    server = _items(deployment.obj, "spec.template.spec.containers")[:1] if deployment else []
    ports = {p.get("containerPort") for c in server for p in _items(c, "ports")}
    for doc in by_kind.get("Service", []):
        problems += _check_service(doc, pod_labels, ports)
    for doc in by_kind.get("HorizontalPodAutoscaler", []):
        problems += _check_hpa(doc, deployment)
    for doc in by_kind.get("PodDisruptionBudget", []):
        if not _subset(_get(doc.obj, "spec.selector.matchLabels"), pod_labels):
            problems.append(
                doc.where("spec.selector.matchLabels") + " does not match the Deployment's pods."
            )
    for doc in by_kind.get("NetworkPolicy", []):
        problems += _check_network_policy(doc, pod_labels, ports)
    for doc in secrets.values():
        problems += _check_secret(doc)
    for doc in by_kind.get("ServiceMonitor", []):
        problems += _check_service_monitor(doc, by_kind.get("Service", []), secrets)
    for doc in by_kind.get("Kustomization", []):
        problems += _check_kustomization(doc, docs, {d.file for d in secrets.values()})
    return problems + _check_metadata(loaded)
