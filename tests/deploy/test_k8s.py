"""The Kubernetes manifests of ``danlu package --k8s``: valid against the Kubernetes OpenAPI
schemas (kubernetes-validate bundles them: no network), clean under danlu's own invariants, and
each invariant seen to catch the mistake it is there for."""

from __future__ import annotations

import base64
import re
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from danlu.deploy._k8s import (
    GRACE_MARGIN_SECONDS,
    PRESTOP_SECONDS,
    K8sSpec,
    check_manifests,
    k8s_name,
    kubernetes_manifests,
    label_value,
)
from danlu.deploy._k8s_check import MIN_KEY_LENGTH, drain_seconds, parse_quantity
from danlu.errors import ConfigError

KUBERNETES = "1.30"  # the oldest release the manifests are checked against; 1.37 below too

DEFAULT = K8sSpec(name="digits", image="registry.example/danlu-digits:6", model_ref="digits:6")
FIXED = K8sSpec(
    name="wine-quality",
    image="danlu-wine:3",
    model_ref="Wine_Quality:3",
    namespace="ml-serving",
    autoscale=False,
    replicas=3,
    request_timeout_s=2.5,
    threads=2,
    cpu_request="250m",
    cpu_limit="2",
    memory_request="256Mi",
    memory_limit="256Mi",
    allowed_hosts=("wine.example.com",),
)
GPU = K8sSpec(name="digits", image="danlu-digits:6-cuda", model_ref="digits:6", gpus=1)


def _objects(docs: dict[str, str]) -> dict[str, dict[str, Any]]:
    return {file: yaml.safe_load(text) for file, text in docs.items()}


def _dump(objects: dict[str, dict[str, Any]]) -> dict[str, str]:
    return {file: yaml.safe_dump(obj, sort_keys=False) for file, obj in objects.items()}


def _container(objects: dict[str, dict[str, Any]]) -> dict[str, Any]:
    return objects["deployment.yaml"]["spec"]["template"]["spec"]["containers"][0]


# -- the schemas ----------------------------------------------------------------------------------


@pytest.mark.parametrize("spec", [DEFAULT, FIXED, GPU], ids=["autoscaled", "fixed", "gpu"])
@pytest.mark.parametrize("version", [KUBERNETES, "1.37"])
def test_every_core_manifest_passes_the_kubernetes_schemas(spec: K8sSpec, version: str) -> None:
    objects = _objects(kubernetes_manifests(spec))
    core = {
        f: o for f, o in objects.items() if f not in ("servicemonitor.yaml", "kustomization.yaml")
    }
    assert {
        "deployment.yaml",
        "service.yaml",
        "pdb.yaml",
        "networkpolicy.yaml",
        "secret.yaml",
    } <= set(core)
    for file, obj in core.items():
        # strict: a field the schema does not know (a typo) is an error too
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{file}: {exc.message}")


def test_the_schema_validator_catches_a_misspelt_field_and_a_wrong_type() -> None:
    objects = _objects(kubernetes_manifests(DEFAULT))
    container = _container(objects)
    container["readinesProbe"] = container.pop("readinessProbe")
    with pytest.raises(kubernetes_validate.ValidationError, match="readinesProbe"):
        kubernetes_validate.validate(objects["deployment.yaml"], KUBERNETES, strict=True)
    hpa = _objects(kubernetes_manifests(DEFAULT))["hpa.yaml"]
    hpa["spec"]["minReplicas"] = "two"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(hpa, KUBERNETES, strict=True)


def test_the_service_monitor_scrapes_the_service_with_the_metrics_key() -> None:
    """A CRD (not in the core schemas): checked here by structure."""
    objects = _objects(kubernetes_manifests(FIXED))
    monitor, service, secret = (
        objects[f] for f in ("servicemonitor.yaml", "service.yaml", "secret.yaml")
    )
    assert (monitor["apiVersion"], monitor["kind"]) == (
        "monitoring.coreos.com/v1",
        "ServiceMonitor",
    )
    selector = monitor["spec"]["selector"]["matchLabels"]
    assert selector and selector.items() <= service["metadata"]["labels"].items()
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": ["ml-serving"]}
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] in {p["name"] for p in service["spec"]["ports"]}
    assert endpoint["path"] == "/metrics"
    credentials = endpoint["authorization"]["credentials"]
    assert endpoint["authorization"]["type"] == "Bearer"
    assert credentials["name"] == secret["metadata"]["name"] == FIXED.keys_secret
    assert credentials["key"] in secret["stringData"]
    # the key Prometheus sends is one of the keys the server accepts
    assert secret["stringData"][credentials["key"]] in secret["stringData"]["keys"].splitlines()


def test_kustomization_applies_the_core_objects_but_never_the_secret_template() -> None:
    for spec, with_hpa in ((DEFAULT, True), (FIXED, False)):
        docs = kubernetes_manifests(spec)
        kustomization = yaml.safe_load(docs["kustomization.yaml"])
        assert kustomization["kind"] == "Kustomization"
        assert set(kustomization["resources"]) <= set(docs)
        assert "secret.yaml" not in kustomization["resources"]
        assert ("hpa.yaml" in docs) is with_hpa is ("hpa.yaml" in kustomization["resources"])
        for text in docs.values():  # one document a file, each a comment-headed YAML
            assert len([d for d in yaml.safe_load_all(text) if d is not None]) == 1
            assert text.startswith("# ")
    assert (
        yaml.safe_load(kubernetes_manifests(FIXED)["kustomization.yaml"])["namespace"]
        == "ml-serving"
    )


# -- what the manifests say -----------------------------------------------------------------------


def test_the_deployment_carries_the_spec() -> None:
    objects = _objects(kubernetes_manifests(FIXED))
    deployment = objects["deployment.yaml"]
    pod = deployment["spec"]["template"]["spec"]
    container = _container(objects)
    assert deployment["spec"]["replicas"] == 3  # no autoscaler: the count is the Deployment's
    assert container["image"] == "danlu-wine:3"
    assert "command" not in container  # the image's ENTRYPOINT: danlu serve --package /app/model
    args = container["args"]
    assert args[args.index("--timeout") + 1] == "2.5"
    assert args[args.index("--threads") + 1] == "2"
    assert args[args.index("--keys-file") + 1] == "/etc/danlu/keys/keys"
    hosts = args[args.index("--allowed-hosts") + 1].split(",")
    assert {"$(POD_IP)", "wine-quality", "wine-quality.ml-serving.svc", "wine.example.com"} <= set(
        hosts
    )
    env = {e["name"]: e for e in container["env"]}
    assert env["OMP_NUM_THREADS"]["value"] == "2"
    assert env["POD_IP"]["valueFrom"]["fieldRef"]["fieldPath"] == "status.podIP"
    assert container["resources"] == {
        "requests": {"cpu": "250m", "memory": "256Mi"},
        "limits": {"cpu": "2", "memory": "256Mi"},
    }
    assert (
        pod["terminationGracePeriodSeconds"]
        == PRESTOP_SECONDS + drain_seconds(2.5) + GRACE_MARGIN_SECONDS
    )
    assert container["lifecycle"]["preStop"]["exec"]["command"] == ["sleep", str(PRESTOP_SECONDS)]
    labels = deployment["metadata"]["labels"]
    assert labels["app.kubernetes.io/version"] == "3"
    assert labels["danlu.dev/model"] == "Wine_Quality"
    assert deployment["metadata"]["annotations"]["danlu.dev/model-ref"] == "Wine_Quality:3"
    assert "app.kubernetes.io/version" not in deployment["spec"]["selector"]["matchLabels"]
    assert pod["securityContext"]["runAsUser"] == 10001
    assert {v["name"]: v for v in pod["volumes"]}["api-keys"]["secret"][
        "secretName"
    ] == "wine-quality-api-keys"
    assert {o["metadata"].get("namespace") for o in objects.values() if "metadata" in o} == {
        "ml-serving"
    }


def test_a_gpu_pod_asks_for_its_gpu_and_tolerates_gpu_nodes() -> None:
    objects = _objects(kubernetes_manifests(GPU))
    assert _container(objects)["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert _pod(objects)["tolerations"][0]["key"] == "nvidia.com/gpu"
    assert "nvidia.com/gpu" not in str(kubernetes_manifests(DEFAULT)["deployment.yaml"])


def test_the_autoscaled_deployment_leaves_the_count_to_the_autoscaler() -> None:
    objects = _objects(kubernetes_manifests(DEFAULT))
    assert "replicas" not in objects["deployment.yaml"]["spec"]  # apply must not reset it
    hpa = objects["hpa.yaml"]["spec"]
    assert (hpa["minReplicas"], hpa["maxReplicas"]) == (DEFAULT.min_replicas, DEFAULT.max_replicas)
    assert hpa["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": "digits",
    }
    assert hpa["metrics"][0]["resource"]["target"]["averageUtilization"] == 70


def test_the_secret_template_fails_closed(tmp_path: Path) -> None:
    """Its placeholders are not keys the server would take: a forgotten template stops the
    server from starting instead of serving with a key everyone can read."""
    from danlu.store._packaged import read_keys_file

    secret = _objects(kubernetes_manifests(DEFAULT))["secret.yaml"]
    lines = secret["stringData"]["keys"].splitlines()
    assert lines and all(len(line) < MIN_KEY_LENGTH for line in lines)
    assert all(
        line.startswith("<REPLACE") for line in [*lines, secret["stringData"]["metrics-key"]]
    )
    assert "TEMPLATE" in kubernetes_manifests(DEFAULT)["secret.yaml"].splitlines()[1]
    keys = tmp_path / "keys"
    keys.write_text(secret["stringData"]["keys"])
    with pytest.raises(ConfigError, match="at least 32"):
        read_keys_file(keys)


# -- danlu's invariants -----------------------------------------------------------------------------


@pytest.mark.parametrize("spec", [DEFAULT, FIXED, GPU], ids=["autoscaled", "fixed", "gpu"])
def test_the_generated_manifests_hold_every_invariant(spec: K8sSpec) -> None:
    assert check_manifests(kubernetes_manifests(spec)) == []


def _pod(o: dict[str, Any]) -> dict[str, Any]:
    return o["deployment.yaml"]["spec"]["template"]["spec"]


def _set_timeout(o: dict[str, Any], value: str) -> None:
    args = _container(o)["args"]
    args[args.index("--timeout") + 1] = value


def _no_nonroot(o: dict[str, Any]) -> None:
    _pod(o)["securityContext"]["runAsNonRoot"] = False
    del _container(o)["securityContext"]["runAsNonRoot"]


REAL_KEY = "x" * 12 + "Q9f2KbT0sLm4Nw8Rz1Yc6"  # what a key made by token_urlsafe looks like

# (what is broken, the mutation, the problem's file + kind + field, a word of its reason)
MUTATIONS: list[tuple[str, Callable[[dict[str, Any]], Any], str, str]] = [
    (
        "no readiness probe",
        lambda o: _container(o).pop("readinessProbe"),
        "deployment.yaml: Deployment digits: spec.template.spec.containers[server].readinessProbe",
        "found none",
    ),
    (
        "liveness on the readiness path",
        lambda o: _container(o)["livenessProbe"]["httpGet"].update(path="/readyz"),
        "deployment.yaml: Deployment digits: spec.template.spec.containers[server].livenessProbe",
        "/healthz",
    ),
    (
        "runAsNonRoot false and the container's absent",
        _no_nonroot,
        "deployment.yaml: Deployment digits: spec.template.spec.containers[server].securityContext.runAsNonRoot",
        "must be true",
    ),
    (
        "root user",
        lambda o: _container(o)["securityContext"].update(runAsUser=0),
        "deployment.yaml: Deployment digits: spec.template.spec.containers[server].securityContext.runAsUser",
        "root",
    ),
    (
        "privilege escalation",
        lambda o: _container(o)["securityContext"].update(allowPrivilegeEscalation=True),
        "deployment.yaml: Deployment digits: spec.template.spec.containers[server].securityContext.allowPrivilegeEscalation",
        "false",
    ),
    (
        "writable root filesystem",
        lambda o: _container(o)["securityContext"].pop("readOnlyRootFilesystem"),
        "deployment.yaml: Deployment digits: spec.template.spec.containers[server].securityContext.readOnlyRootFilesystem",
        "true",
    ),
    (
        "capabilities kept",
        lambda o: _container(o)["securityContext"].pop("capabilities"),
        "deployment.yaml: Deployment digits: spec.template.spec.containers[server].securityContext.capabilities.drop",
        "ALL",
    ),
    (
        "no memory limit",
        lambda o: _container(o)["resources"]["limits"].pop("memory"),
        "deployment.yaml: Deployment digits: spec.template.spec.containers[server].resources.limits.memory",
        "not set",
    ),
    (
        "no resources at all",
        lambda o: _container(o).pop("resources"),
        "deployment.yaml: Deployment digits: spec.template.spec.containers[server].resources.requests.cpu",
        "not set",
    ),
    (
        "request above limit",
        lambda o: _container(o)["resources"]["requests"].update(memory="2Gi"),
        "deployment.yaml: Deployment digits: spec.template.spec.containers[server].resources.requests.memory",
        "exceeds the limit",
    ),
    (
        "grace period shorter than the drain",
        lambda o: _pod(o).update(terminationGracePeriodSeconds=10),
        "deployment.yaml: Deployment digits: spec.template.spec.terminationGracePeriodSeconds",
        "is 10, shorter",
    ),
    (
        "a longer request timeout with the old grace period",
        lambda o: _set_timeout(o, "60"),
        "deployment.yaml: Deployment digits: spec.template.spec.terminationGracePeriodSeconds",
        "drain (65 s",
    ),
    (
        "no preStop pause",
        lambda o: _container(o).pop("lifecycle"),
        "deployment.yaml: Deployment digits: spec.template.spec.containers[server].lifecycle",
        "preStop is missing",
    ),
    (
        "a rollout that removes ready pods first",
        lambda o: o["deployment.yaml"]["spec"]["strategy"]["rollingUpdate"].update(
            maxUnavailable=1
        ),
        "deployment.yaml: Deployment digits: spec.strategy.rollingUpdate.maxUnavailable",
        "must be 0",
    ),
    (
        "a selector that does not match the pod labels",
        lambda o: o["deployment.yaml"]["spec"]["selector"]["matchLabels"].update(
            {"app.kubernetes.io/name": "digit"}
        ),
        "deployment.yaml: Deployment digits: spec.selector.matchLabels",
        "own no pod",
    ),
    (
        "the version in the (immutable) selector",
        lambda o: o["deployment.yaml"]["spec"]["selector"]["matchLabels"].update(
            {"app.kubernetes.io/version": "6"}
        ),
        "deployment.yaml: Deployment digits: spec.selector.matchLabels",
        "immutable",
    ),
    (
        "no /tmp under a read-only root",
        lambda o: _container(o)["volumeMounts"].pop(1),
        "deployment.yaml: Deployment digits: spec.template.spec.containers[server].volumeMounts",
        "/tmp",
    ),
    (
        "keys mounted writable",
        lambda o: _container(o)["volumeMounts"][0].update(readOnly=False),
        "deployment.yaml: Deployment digits: spec.template.spec.containers[server].volumeMounts[api-keys].readOnly",
        "must be true",
    ),
    (
        "no keys file",
        lambda o: _container(o).update(args=[a for a in _container(o)["args"] if "keys" not in a]),
        "deployment.yaml: Deployment digits: spec.template.spec.containers[server]",
        "without keys",
    ),
    (
        "the keys from another Secret",
        lambda o: _pod(o)["volumes"][0]["secret"].update(secretName="other-keys"),
        "deployment.yaml: Deployment digits: spec.template.spec.volumes[api-keys].secret.secretName",
        "'other-keys'",
    ),
    (
        "a $(VAR) the env does not define",
        lambda o: _container(o)["env"].pop(1),
        "deployment.yaml: Deployment digits: spec.template.spec.containers[server].env",
        "POD_IP",
    ),
    (
        "the service-account token mounted",
        lambda o: _pod(o).pop("automountServiceAccountToken"),
        "deployment.yaml: Deployment digits: spec.template.spec.automountServiceAccountToken",
        "must be false",
    ),
    (
        "a Service selecting other pods",
        lambda o: o["service.yaml"]["spec"].update(selector={"app.kubernetes.io/name": "wine"}),
        "service.yaml: Service digits: spec.selector",
        "does not match",
    ),
    (
        "an autoscaler scaling something else",
        lambda o: o["hpa.yaml"]["spec"]["scaleTargetRef"].update(name="wine"),
        "hpa.yaml: HorizontalPodAutoscaler digits: spec.scaleTargetRef",
        "Deployment",
    ),
    (
        "an autoscaler with min > max",
        lambda o: o["hpa.yaml"]["spec"].update(minReplicas=20),
        "hpa.yaml: HorizontalPodAutoscaler digits: spec.minReplicas",
        "exceeds",
    ),
    (
        "a network policy opening ssh",
        lambda o: o["networkpolicy.yaml"]["spec"]["ingress"][0]["ports"].append({"port": 22}),
        "networkpolicy.yaml: NetworkPolicy digits: spec.ingress[0].ports",
        "only the server's port",
    ),
    (
        "a budget for other pods",
        lambda o: o["pdb.yaml"]["spec"]["selector"].update(matchLabels={"app": "x"}),
        "pdb.yaml: PodDisruptionBudget digits: spec.selector.matchLabels",
        "does not match",
    ),
    (
        "a Secret template with a real-looking key",
        lambda o: o["secret.yaml"]["stringData"].update(keys=REAL_KEY + "\n"),
        "secret.yaml: Secret digits-api-keys: stringData.keys",
        "real key",
    ),
    (
        "a real-looking key, base64 in data",
        lambda o: o["secret.yaml"].update(
            data={"metrics-key": base64.b64encode(REAL_KEY.encode()).decode()}
        ),
        "secret.yaml: Secret digits-api-keys: data.metrics-key",
        "real key",
    ),
    (
        "a metrics key the server does not accept",
        lambda o: o["secret.yaml"]["stringData"].update({"metrics-key": "<REPLACE: other>"}),
        "secret.yaml: Secret digits-api-keys: stringData.metrics-key",
        "refuse Prometheus",
    ),
    (
        "a ServiceMonitor on a port the Service lacks",
        lambda o: o["servicemonitor.yaml"]["spec"]["endpoints"][0].update(port="web"),
        "servicemonitor.yaml: ServiceMonitor digits: spec.endpoints[0].port",
        "no port of the Service",
    ),
    (
        "a ServiceMonitor selecting no Service",
        lambda o: o["servicemonitor.yaml"]["spec"]["selector"].update(matchLabels={"app": "x"}),
        "servicemonitor.yaml: ServiceMonitor digits: spec.selector.matchLabels",
        "no Service",
    ),
    (
        "a ServiceMonitor without the key",
        lambda o: o["servicemonitor.yaml"]["spec"]["endpoints"][0].pop("authorization"),
        "servicemonitor.yaml: ServiceMonitor digits: spec.endpoints[0].authorization",
        "needs a key",
    ),
    (
        "a ServiceMonitor of the wrong group",
        lambda o: o["servicemonitor.yaml"].update(apiVersion="monitoring.example/v1"),
        "servicemonitor.yaml: ServiceMonitor digits: apiVersion",
        "monitoring.coreos.com/v1",
    ),
    (
        "a kustomization applying the Secret template",
        lambda o: o["kustomization.yaml"]["resources"].append("secret.yaml"),
        "kustomization.yaml: Kustomization ?: resources",
        "overwrite the real keys",
    ),
    (
        "a label value Kubernetes refuses",
        lambda o: o["service.yaml"]["metadata"]["labels"].update(
            {"danlu.dev/model-ref": "digits:6"}
        ),
        "service.yaml: Service digits: metadata.labels.danlu.dev/model-ref",
        "not a label value",
    ),
]


@pytest.mark.parametrize(
    ("mutate", "where", "why"), [m[1:] for m in MUTATIONS], ids=[m[0] for m in MUTATIONS]
)
def test_each_invariant_names_what_broke_it(
    mutate: Callable[[dict[str, Any]], Any], where: str, why: str
) -> None:
    objects = _objects(kubernetes_manifests(DEFAULT))
    mutate(objects)
    problems = check_manifests(_dump(objects))
    named = [p for p in problems if p.startswith(where + " ") or p.startswith(where + ".")]
    assert named, f"no problem names {where!r}: {problems}"
    assert any(why in p for p in named), named


def test_settings_the_invariants_allow() -> None:
    """The container may inherit runAsNonRoot from the pod; preStop may be the sleep action."""
    objects = _objects(kubernetes_manifests(DEFAULT))
    del _container(objects)["securityContext"]["runAsNonRoot"]
    _container(objects)["lifecycle"]["preStop"] = {"sleep": {"seconds": PRESTOP_SECONDS}}
    assert check_manifests(_dump(objects)) == []
    _container(objects)["lifecycle"]["preStop"] = {"sleep": {"seconds": 30}}  # now too long
    assert any("terminationGracePeriodSeconds" in p for p in check_manifests(_dump(objects)))


def test_manifests_that_are_not_manifests() -> None:
    assert check_manifests({"x.yaml": "a: [b"})[0].startswith("x.yaml: not YAML")
    problems = check_manifests({"x.yaml": "just: text\n"})
    assert "x.yaml: a document without apiVersion and kind." in problems
    assert "expected one Deployment; found 0." in problems


# -- names and settings ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "name"),
    [
        ("digits", "digits"),
        ("Digits_CNN.v2", "digits-cnn-v2"),
        ("  wine quality  ", "wine-quality"),
        ("a--__--b", "a-b"),
        ("3d-unet", "danlu-3d-unet"),
        ("-x-", "x"),
        ("résumé", "r-sum"),
        ("a" * 62 + "_b", "a" * 62),  # trimmed to 63, then of the '-' it ended with
        ("m" * 100, "m" * 63),
    ],
)
def test_k8s_name(model: str, name: str) -> None:
    assert k8s_name(model) == name
    assert re.fullmatch(r"[a-z]([-a-z0-9]{0,61}[a-z0-9])?", name)
    K8sSpec(name=name, image="i:1", model_ref=f"{model}:1")  # a name the spec accepts


@pytest.mark.parametrize("model", ["", "   ", "---", "模型", "@@"])
def test_k8s_name_refuses_what_leaves_nothing(model: str) -> None:
    with pytest.raises(ConfigError, match="no Kubernetes name"):
        k8s_name(model)


def test_label_value() -> None:
    assert label_value("digits:6") == "digits-6"
    assert label_value("-_x.y_-") == "x.y"
    assert len(label_value("v" * 80)) == 63
    assert label_value("::") == ""


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"replicas": 0}, "replicas"),
        ({"min_replicas": 5, "max_replicas": 3}, "min_replicas (5) must not exceed max_replicas"),
        ({"max_replicas": 0}, "max_replicas"),
        ({"cpu_request": "half"}, "cpu_request"),
        ({"memory_limit": "1GB"}, "memory_limit"),
        ({"memory_request": "0"}, "memory_request must be more than 0"),
        ({"cpu_request": "2", "cpu_limit": "1500m"}, "cpu_request (2) must not exceed cpu_limit"),
        ({"port": 70000}, "port"),
        ({"threads": 0}, "threads"),
        ({"target_cpu_percent": 0}, "target_cpu_percent"),
        ({"request_timeout_s": 0}, "request_timeout_s"),
        ({"name": "Digits"}, "name 'Digits' must be a DNS-1035 label"),
        ({"name": "1digits"}, "DNS-1035"),
        ({"image": "danlu digits:6"}, "image"),
        ({"namespace": "ML_team"}, "namespace"),
        ({"keys_secret_name": "Keys"}, "keys_secret_name"),
        ({"allowed_hosts": ("a.example,b.example",)}, "allowed_hosts"),
        ({"replicas": True}, "replicas"),
    ],
)
def test_bad_settings_are_refused_naming_the_field(changes: dict[str, Any], field: str) -> None:
    settings = {"name": "digits", "image": "danlu-digits:6", "model_ref": "digits:6", **changes}
    with pytest.raises(ConfigError) as caught:
        K8sSpec(**settings)
    assert field in str(caught.value)


def test_every_bad_setting_is_named_at_once() -> None:
    with pytest.raises(ConfigError) as caught:
        K8sSpec(name="digits", image="i:1", model_ref="d:1", replicas=0, cpu_limit="x", threads=0)
    message = str(caught.value)
    assert all(field in message for field in ("replicas", "cpu_limit", "threads"))


def test_min_above_max_is_fine_without_an_autoscaler() -> None:
    spec = K8sSpec(
        name="d", image="i:1", model_ref="d:1", autoscale=False, min_replicas=5, max_replicas=2
    )
    assert "hpa.yaml" not in kubernetes_manifests(spec)


def test_quantities_and_timings() -> None:
    assert parse_quantity("1Gi") == 2**30
    assert parse_quantity("500m") * 2 == parse_quantity("1")
    assert parse_quantity("1.5G") == parse_quantity("1500M")
    for bad in ("1GB", "-1", "one", "", "1 Gi", "0x10"):
        with pytest.raises(ConfigError, match="not a Kubernetes quantity"):
            parse_quantity(bad)
    # the server's drain: uvicorn's timeout_graceful_shutdown = int(timeout) + 5 (never longer)
    from danlu.serve._server import uvicorn_options
    from danlu.serve._types import ServeSettings

    for timeout in (1.0, 2.5, 10.0, 59.9):
        bound = uvicorn_options(ServeSettings(models=(), request_timeout_s=timeout))[
            "timeout_graceful_shutdown"
        ]
        assert drain_seconds(timeout) >= bound
        spec = K8sSpec(name="d", image="i:1", model_ref="d:1", request_timeout_s=timeout)
        assert spec.grace_seconds >= PRESTOP_SECONDS + bound
        assert spec.keys_secret == "d-api-keys"
    assert (
        K8sSpec(name="d", image="i:1", model_ref="d:1", keys_secret_name="shared-keys").keys_secret
        == "shared-keys"
    )


# -- against the server it runs -------------------------------------------------------------------


def _expanded_args(spec: K8sSpec, pod_ip: str, namespace: str) -> list[str]:
    """The command line after Kubernetes expands $(VAR), with the image's ENTRYPOINT args."""
    container = _container(_objects(kubernetes_manifests(spec)))
    expand = {"$(POD_IP)": pod_ip, "$(POD_NAMESPACE)": namespace}
    args = list(container["args"])
    for var, value in expand.items():
        args = [a.replace(var, value) for a in args]
    return ["--package", "/app/model", *args]


def test_danlu_serve_takes_the_generated_command_line() -> None:
    import typer

    from danlu.cli._app import app

    serve = typer.main.get_command(app).commands["serve"]  # type: ignore[attr-defined]
    context = serve.make_context("serve", _expanded_args(FIXED, "10.1.2.3", "ml-serving"))
    params = context.params
    assert str(params["package"]) == "/app/model"
    assert str(params["keys_file"]) == "/etc/danlu/keys/keys"
    assert (params["host"], params["port"], params["workers"]) == ("0.0.0.0", 8000, 1)
    assert (params["timeout"], params["threads"]) == (2.5, 2)
    assert "10.1.2.3" in params["allowed_hosts"].split(",")


def test_the_server_answers_the_scrape_by_pod_ip_and_the_service_names_only() -> None:
    """Prometheus scrapes a pod by its IP (Host: 10.1.2.3:8000); clients use the Service's
    names. The server's Host check (DNS rebinding) must let exactly those through."""
    from danlu.serve._guard import RequestGuard, parse_allowed_hosts

    args = _expanded_args(DEFAULT, "10.1.2.3", "default")
    hosts = parse_allowed_hosts(args[args.index("--allowed-hosts") + 1])
    guard = RequestGuard(hosts, args[args.index("--host") + 1])
    for host in (
        "10.1.2.3:8000",
        "digits",
        "digits.default.svc:8000",
        "digits.default.svc.cluster.local",
    ):
        assert guard.check("GET", "/metrics", [(b"host", host.encode())]) is None, host
    for host in ("10.1.2.4:8000", "evil.example", "digits.other.svc"):
        refused = guard.check("GET", "/metrics", [(b"host", host.encode())])
        assert refused is not None and refused.status == 400, host


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed")
def test_kubectl_kustomize_builds_the_applied_set(tmp_path: Path) -> None:
    """What `kubectl apply -k` sends (kustomize runs offline), and the image override of
    docs/kubernetes.md."""
    for file, text in kubernetes_manifests(FIXED).items():
        (tmp_path / file).write_text(text)
    with (tmp_path / "kustomization.yaml").open("a") as handle:
        handle.write("images:\n- name: danlu-wine\n  newName: registry.example.com/ml/danlu-wine\n")
    built = subprocess.run(
        ["kubectl", "kustomize", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    objects = [o for o in yaml.safe_load_all(built) if o]
    assert sorted(o["kind"] for o in objects) == [
        "Deployment",
        "NetworkPolicy",
        "PodDisruptionBudget",
        "Service",
    ]  # FIXED has no autoscaler; the Secret template and the ServiceMonitor are applied apart
    assert {o["metadata"]["namespace"] for o in objects} == {"ml-serving"}
    (deployment,) = [o for o in objects if o["kind"] == "Deployment"]
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == "registry.example.com/ml/danlu-wine:3"
    assert check_manifests({"built.yaml": built}) == []
