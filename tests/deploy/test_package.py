"""``danlu package`` and ``danlu serve --package``: a build context per version, and a server
that answers from it without the store — what the container image runs."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import httpx
import numpy as np
import pytest

from tests.cli._runner import danlu
from tests.serve.conftest import start_server

KEY = "k" * 40  # a packaged server's key: any word of 32+ characters
_WINE = {
    "name": "w",
    "data": {"source": "builtin:wine"},
    "task": "classification",
    "model": {"type": "mlp", "hidden": [16]},
    "train": {"epochs": 2, "checkpoint": {"every": 0}},
    "register": {"name": "wine", "alias": "production"},
}


class Registry(NamedTuple):
    home: Path
    context: Path  # wine@production, packaged
    rows: list[dict[str, float]]
    expected: dict[str, object]  # what the store's model answers for rows


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    from danlu import load_model, pipeline
    from danlu.deploy import PackageOptions, package_version
    from danlu.store import SqlStore

    home = tmp_path_factory.mktemp("package-home") / "home"
    store = SqlStore(home=home)
    try:
        pipeline.run(_WINE, store=store, home=home)
        pipeline.run(_WINE, store=store, home=home)  # version 2: the alias stays on 1
        store.set_alias("wine", "production", 1)
        inputs = store.get_model_version("wine", 1).signature["inputs"]
        rows = [{f["name"]: 0.5 + i for f in inputs} for i in range(3)]
        context = tmp_path_factory.mktemp("package-out") / "wine"
        package_version(store, "wine@production", PackageOptions(out=context))
        expected = load_model("wine@production", store=store).predict(rows)
    finally:
        store.close()
    yield Registry(home, context, rows, {"probabilities": expected["probabilities"].tolist()})


def _home(monkeypatch: pytest.MonkeyPatch, home: Path) -> None:
    monkeypatch.setenv("DANLU_HOME", str(home))
    monkeypatch.delenv("DANLU_DB_URL", raising=False)
    monkeypatch.delenv("DANLU_API_KEY", raising=False)


# -- the build context --------------------------------------------------------------------------
def test_the_context_holds_the_version_its_hashes_and_a_lock_without_torch(
    registry: Registry,
) -> None:
    ctx = registry.context
    manifest = json.loads((ctx / "model" / "package.json").read_text())
    assert manifest["model"]["name"] == "wine" and manifest["model"]["version"] == 1
    assert "production" in manifest["model"]["aliases"]
    assert manifest["runtime"] == "onnx"
    for file, digest in manifest["files"].items():  # every listed file, byte for byte
        data = (ctx / "model" / "files" / file).read_bytes()
        assert hashlib.sha256(data).hexdigest() == digest
    assert {"model.onnx", "preprocessing.json", "model.json"} <= set(manifest["files"])
    lock = [
        line
        for line in (ctx / "requirements.lock").read_text().splitlines()
        if line and not line.startswith("#")
    ]
    names = {line.split("==")[0] for line in lock}
    assert all("==" in line for line in lock), lock  # exact versions, nothing open
    assert {"onnxruntime", "fastapi", "uvicorn", "numpy", "scikit-learn"} <= names
    assert not names & {"torch", "optuna", "lightgbm", "captum", "matplotlib", "danlu"}
    assert len(list((ctx / "wheels").glob("danlu-*.whl"))) == 1
    assert not (ctx / "k8s").exists()


def test_the_dockerfile_runs_as_a_user_with_a_healthcheck_and_serves_the_package(
    registry: Registry,
) -> None:
    text = (registry.context / "Dockerfile").read_text()
    lines = [line.strip() for line in text.splitlines()]
    assert f"ARG BASE_IMAGE=python:{sys.version_info.major}.{sys.version_info.minor}-slim" in text
    assert "FROM ${BASE_IMAGE}" in lines
    user = next(line for line in lines if line.startswith("USER "))
    assert user.split()[1].split(":")[0] not in ("0", "root")
    # the user is switched to after everything is installed and copied
    assert lines.index(user) > max(i for i, line in enumerate(lines) if line.startswith("COPY"))
    assert "HEALTHCHECK" in text and "/healthz" in text
    entry = next(line for line in lines if line.startswith("ENTRYPOINT"))
    assert json.loads(entry.removeprefix("ENTRYPOINT "))[1:] == [
        "serve",
        "--package",
        "/app/model",
    ]
    # where it listens is environment, not CMD: arguments appended to `docker run IMAGE` add
    # to it instead of replacing it; the HEALTHCHECK reads the same DANLU_PORT
    assert "ENV DANLU_HOST=0.0.0.0 DANLU_PORT=8000 DANLU_THREADS=1" in lines
    check = next(i for i, line in enumerate(lines) if line.startswith("HEALTHCHECK"))
    assert [i for i, line in enumerate(lines) if line.startswith("CMD [")] == [check + 1]
    assert "os.environ.get('DANLU_PORT'" in text.split("HEALTHCHECK", 2)[2]
    assert "chmod -R a-w /app/model" in text  # the model's files are read-only in the image
    assert "install.sh" in text
    install = (registry.context / "install.sh").read_text()
    assert "--no-deps" in install and "requirements.lock" in install
    assert (registry.context / ".dockerignore").read_text().split() == [
        "k8s/",
        "monitoring/",
        "README.md",
    ]


def test_an_existing_folder_is_refused_without_force_and_replaced_with_it(
    registry: Registry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _home(monkeypatch, registry.home)
    out = tmp_path / "ctx"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    refused = danlu("package", "wine@production", "--out", str(out))
    assert refused.code != 0 and "not empty" in refused.stderr and "--force" in refused.stderr
    forced = danlu("package", "wine@production", "--out", str(out), "--force")
    assert forced.code != 0 and "will not delete" in forced.stderr
    assert (out / "notes.txt").read_text() == "mine"  # untouched

    ctx = tmp_path / "ctx2"
    first = danlu("package", "wine:2", "--out", str(ctx), "--json")
    assert first.code == 0, first.stderr
    assert json.loads(first.stdout)["ref"] == "wine:2"
    again = danlu("package", "wine@production", "--out", str(ctx), "--force", "--json")
    assert again.code == 0, again.stderr
    assert json.loads((ctx / "model" / "package.json").read_text())["model"]["version"] == 1
    assert not list(tmp_path.glob(".ctx2*"))  # no staging or old folder left behind


def test_a_missing_alias_is_named(
    registry: Registry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _home(monkeypatch, registry.home)
    outcome = danlu("package", "wine@canary", "--out", str(tmp_path / "x"))
    assert outcome.code != 0
    assert "canary" in outcome.stderr and "Traceback" not in outcome.stderr
    assert not (tmp_path / "x").exists()


def test_a_version_without_onnx_ships_torch_or_is_refused_with_onnx_only(
    registry: Registry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from danlu.store import SqlStore

    _home(monkeypatch, registry.home)
    store = SqlStore(home=registry.home)
    try:
        failed = {"format": "onnx", "status": "failed", "error": "an operator has no ONNX form"}
        store.attach_model_files("wine", 2, {"export.json": json.dumps(failed).encode()})
    finally:
        store.close()
    refused = danlu("package", "wine:2", "--out", str(tmp_path / "a"), "--onnx-only")
    assert refused.code != 0
    assert "not ONNX-ready" in refused.stderr and "no ONNX form" in refused.stderr
    assert not (tmp_path / "a").exists()
    shipped = danlu("package", "wine:2", "--out", str(tmp_path / "b"), "--json")
    assert shipped.code == 0, shipped.stderr
    assert json.loads(shipped.stdout)["runtime"] == "torch"
    lock = (tmp_path / "b" / "requirements.lock").read_text()
    torch = [line for line in lock.splitlines() if line.startswith("torch==")]
    assert len(torch) == 1 and torch[0].endswith("+cpu")  # the CPU build, not CUDA's GBs
    assert "--extra-index-url https://download.pytorch.org/whl/cpu" in lock


# -- the packaged store -------------------------------------------------------------------------
def test_a_changed_missing_or_extra_file_is_refused(registry: Registry, tmp_path: Path) -> None:
    from danlu.errors import StoreError
    from danlu.store import PackagedStore

    def copy() -> Path:
        folder = tmp_path / f"m{len(list(tmp_path.iterdir()))}"
        shutil.copytree(registry.context / "model", folder)
        return folder

    good = PackagedStore(copy(), keys=[KEY])
    assert good.resolve("wine@production").ref == "wine:1"
    assert good.resolve("wine:1").ref == "wine:1"

    changed = copy()
    (changed / "files" / "preprocessing.json").write_bytes(
        (changed / "files" / "preprocessing.json").read_bytes() + b" "
    )
    with pytest.raises(StoreError, match="preprocessing.json.*sha256"):
        PackagedStore(changed)
    missing = copy()
    (missing / "files" / "model.onnx").unlink()
    with pytest.raises(StoreError, match="missing 'files/model.onnx'"):
        PackagedStore(missing)
    extra = copy()
    (extra / "files" / "evil.py").write_text("import os")
    with pytest.raises(StoreError, match="evil.py"):
        PackagedStore(extra)
    linked = copy()
    (linked / "files" / "model.onnx").unlink()
    (linked / "files" / "model.onnx").symlink_to(
        registry.context / "model" / "files" / "model.onnx"
    )
    with pytest.raises(StoreError, match="symbolic link"):
        PackagedStore(linked)


def test_the_packaged_store_is_read_only_and_serves_one_version(registry: Registry) -> None:
    from danlu.errors import NotFoundError, StoreError
    from danlu.store import PackagedStore, Principal

    store = PackagedStore(registry.context / "model", keys=[KEY])
    with pytest.raises(NotFoundError, match="version 1"):
        store.resolve("wine:2")
    with pytest.raises(NotFoundError, match="only"):
        store.resolve("digits")
    with pytest.raises(StoreError, match="read-only"):
        store.set_alias("wine", "production", 1)
    with pytest.raises(StoreError, match="read-only"):
        store.create_run("x")
    key = store.verify_api_key(KEY)
    assert key is not None and key.role == "predictor"
    assert store.verify_api_key(KEY + "x") is None
    assert store.has_api_keys() and not store.has_api_keys("admin")
    principal = store.key_principal(key)
    assert store.check_access(principal, "predict", "default") is principal
    from danlu.errors import AccessDeniedError

    with pytest.raises(AccessDeniedError):
        store.check_access(Principal("k", key_id="1", key_role="predictor"), "serve", "default")


# -- danlu serve --package ----------------------------------------------------------------------
def test_the_packaged_server_answers_like_the_store_without_one(
    registry: Registry, tmp_path: Path
) -> None:
    keys = tmp_path / "keys"
    keys.write_text(f"# clients\n{KEY}\n")
    empty_home = tmp_path / "no-store"  # nothing there: the package is all it reads
    with start_server(
        empty_home,
        "--package",
        str(registry.context / "model"),
        "--keys-file",
        str(keys),
        log_dir=tmp_path,
    ) as server:
        with httpx.Client(base_url=server.url, timeout=10) as http:
            body = {"rows": registry.rows}
            assert http.post("/v1/models/wine/predict", json=body).status_code == 401
            answer = http.post(
                "/v1/models/wine/predict", json=body, headers={"Authorization": f"Bearer {KEY}"}
            )
            assert answer.status_code == 200, answer.text
            got = answer.json()
            assert got["ref"] == "wine:1"
            np.testing.assert_allclose(
                got["probabilities"], registry.expected["probabilities"], atol=1e-4
            )
            metrics = http.get("/metrics", headers={"X-API-Key": KEY})
            assert metrics.status_code == 200 and "danlu_requests_total" in metrics.text
            admin = http.post(
                "/v1/admin/models",
                json={"ref": "wine:2"},
                headers={"Authorization": f"Bearer {KEY}"},
            )
            assert admin.status_code in (401, 403)
    assert not empty_home.exists()  # no store was created


def test_serving_a_package_refuses_what_needs_a_store(
    registry: Registry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _home(monkeypatch, tmp_path / "home")
    model = str(registry.context / "model")
    cases = [
        (("serve", "--package", model, "--canary", "wine:2=10%"), "--canary"),
        (("serve", "--package", model, "--log-sample", "0.5"), "--log-sample"),
        (("serve", "--package", model, "digits"), "holds wine:1 only"),
        (("serve", "--keys-file", str(tmp_path / "k"), "wine"), "packaged server"),
        (("serve",), "--package"),
        (("serve", "--package", str(tmp_path)), "package.json"),
    ]
    for args, message in cases:
        outcome = danlu(*args)
        assert outcome.code != 0, args
        assert message in outcome.stderr, (args, outcome.stderr)
        assert "Traceback" not in outcome.stderr


def test_beyond_loopback_a_packaged_server_needs_keys(registry: Registry, tmp_path: Path) -> None:
    short = tmp_path / "short"
    short.write_text("too-short\n")
    model = str(registry.context / "model")
    env = {**os.environ, "DANLU_HOME": str(tmp_path / "h"), "OMP_NUM_THREADS": "1"}
    for extra, message in (((), "no API keys"), (("--keys-file", str(short)), "32 characters")):
        done = subprocess.run(
            [sys.executable, "-m", "danlu", "serve", "--package", model]
            + ["--host", "0.0.0.0", "--port", "0", *extra],
            capture_output=True,
            text=True,
            env=env,
            timeout=120,
            check=False,
        )  # refused before it binds: nothing listens beyond loopback
        assert done.returncode != 0
        assert message in done.stderr, done.stderr[-2000:]


def _healthcheck(context: Path, python: Path) -> list[str]:
    """The Dockerfile's HEALTHCHECK command, run by ``python`` instead of the image's."""
    text = (context / "Dockerfile").read_text()
    line = text.split("HEALTHCHECK", 2)[2].split("CMD ", 1)[1].splitlines()[0]
    command = json.loads(line)
    assert command[0].endswith("/bin/python"), command
    return [str(python), *command[1:]]


def test_the_install_steps_as_written_give_a_server_without_torch(
    registry: Registry, tmp_path: Path, free_tcp_port: int
) -> None:
    """install.sh, exactly as the Dockerfile runs it, into a fresh virtual environment; then the
    packaged server from that environment, started as the image starts it (the entrypoint, and
    where to listen from the environment: here loopback and a free port), answers what the
    store's model answers, and the image's HEALTHCHECK finds it on the port the variable names."""
    import signal

    from tests.serve.conftest import SHUTDOWN_S, _wait_for_port, _wait_until_ready

    venv = tmp_path / "venv"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VIRTUAL_ENV", "PYTHONPATH"))}
    done = subprocess.run(
        ["sh", str(registry.context / "install.sh"), str(venv)],
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
        check=False,
    )
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    python = venv / "bin" / "python"
    probe = subprocess.run(
        [str(python), "-c", "import importlib.util as u; print(u.find_spec('torch') is None)"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert probe.stdout.strip() == "True"  # torch is not in the environment at all
    log_path = tmp_path / "server.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [str(venv / "bin" / "danlu"), "serve", "--package", str(registry.context / "model")],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**env, "DANLU_HOME": str(tmp_path / "h"), "OMP_NUM_THREADS": "1",
                 "DANLU_HOST": "127.0.0.1", "DANLU_PORT": str(free_tcp_port)},
        )  # fmt: skip
    try:
        assert _wait_for_port(process, log_path) == free_tcp_port
        url = f"http://127.0.0.1:{free_tcp_port}"
        _wait_until_ready(process, url, log_path)
        check = _healthcheck(registry.context, python)
        for port, healthy in ((free_tcp_port, True), (free_tcp_port + 1, False)):
            probe = subprocess.run(
                check, env={**env, "DANLU_PORT": str(port)}, capture_output=True, timeout=30
            )
            assert (probe.returncode == 0) == healthy, (port, probe.stderr[-1000:])
        answer = httpx.post(
            f"{url}/v1/models/wine/predict", json={"rows": registry.rows}, timeout=10
        )
        assert answer.status_code == 200, answer.text
        np.testing.assert_allclose(
            answer.json()["probabilities"], registry.expected["probabilities"], atol=1e-4
        )
        assert "onnx runtime" in log_path.read_text()
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=SHUTDOWN_S) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10)


def test_k8s_writes_manifests_sized_by_the_options_and_the_monitoring_files(
    registry: Registry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import yaml

    from danlu.deploy import check_manifests

    _home(monkeypatch, registry.home)
    out = tmp_path / "ctx"
    args = ["--k8s", "--cpu", "250m", "--memory", "768Mi", "--max-replicas", "4"]
    outcome = danlu("package", "wine@production", "--out", str(out), *args, "--timeout", "20")
    assert outcome.code == 0, outcome.stderr
    manifests = {p.name: p.read_text() for p in (out / "k8s").glob("*.yaml")}
    assert {"deployment.yaml", "service.yaml", "hpa.yaml", "secret.yaml"} <= set(manifests)
    assert check_manifests(manifests) == []
    deployment = yaml.safe_load(manifests["deployment.yaml"])
    pod = deployment["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["image"] == "danlu-wine:1"
    assert container["resources"]["requests"] == {"cpu": "250m", "memory": "768Mi"}
    assert container["resources"]["limits"] == {"cpu": "500m", "memory": "768Mi"}
    assert container["args"][container["args"].index("--timeout") + 1] == "20"
    assert pod["terminationGracePeriodSeconds"] >= 20 + 5
    assert yaml.safe_load(manifests["hpa.yaml"])["spec"]["maxReplicas"] == 4
    assert {p.name for p in (out / "monitoring").iterdir()} >= {
        "alerts.yml",
        "grafana-dashboard.json",
        "prometheus.yml",
    }
    refused = danlu("package", "wine@production", "--out", str(tmp_path / "b"), "--cpu", "lots")
    assert refused.code != 0 and "--cpu" in refused.stderr


def test_a_signed_version_is_packaged_with_its_signature_and_verifies_against_trusted_keys(
    registry: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    from danlu.store import PackagedStore, SignatureError, verify_version

    files = registry.context / "model" / "files"
    assert (files / "signature.json").is_file()
    store = PackagedStore(registry.context / "model")
    mv = store.resolve("wine@production")
    monkeypatch.setenv("DANLU_TRUSTED_KEYS", str(registry.home / "keys" / "trusted"))
    verify_version(store, mv).raise_for_problems()  # the registry's key vouches for it
    monkeypatch.setenv("DANLU_TRUSTED_KEYS", str(registry.home / "nobody"))
    with pytest.raises(SignatureError, match="not trusted"):
        verify_version(store, mv).raise_for_problems()


def test_cuda_installs_onnxruntime_gpu_and_asks_kubernetes_for_a_gpu(
    registry: Registry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import yaml

    _home(monkeypatch, registry.home)
    out = tmp_path / "gpu"
    outcome = danlu("package", "wine@production", "--out", str(out), "--cuda", "--k8s")
    assert outcome.code == 0, outcome.stderr
    lock = (out / "requirements.lock").read_text().splitlines()
    assert not [line for line in lock if line.startswith(("onnxruntime==", "torch=="))]
    install = (out / "install.sh").read_text()
    from importlib import metadata

    assert f"onnxruntime-gpu=={metadata.version('onnxruntime')}" in install
    deployment = yaml.safe_load((out / "k8s" / "deployment.yaml").read_text())
    limits = deployment["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert limits["nvidia.com/gpu"] == 1
