"""``danlu package``: one registered version → a self-contained container build context.

The context holds everything the image needs and nothing else::

    DIR/
      Dockerfile          slim Python base, non-root user, HEALTHCHECK on /healthz,
                          `danlu serve --package /app/model` as the entrypoint
      install.sh          the install steps the Dockerfile runs (run it yourself to check them)
      requirements.lock   the exact packages serving needs, pinned to the versions installed here
      wheels/             danlu's own wheel (installed without dependencies)
      model/              package.json: the version (name, number, aliases, metrics) and every
                          file's sha256; files/: the version's files as registered (and
                          signed), read-only in the image
      README.md           how to build, run and deploy it
      k8s/, monitoring/   with --k8s: manifests, Prometheus rules, the Grafana dashboard

The server in the image reads ``model/`` directly (:class:`~danlu.store.PackagedStore`): no
database, no registry. A version whose ONNX export passed its parity check is served by ONNX
Runtime, and torch is left out of the image; any other version needs torch (the CPU build unless
``cuda``), or is refused with ``onnx_only``.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from danlu.deploy._lock import SERVER_EXTRAS, lock_text, locked_packages
from danlu.errors import ConfigError, StoreError
from danlu.logging import get_logger

if TYPE_CHECKING:
    from danlu.store import ModelVersion, Store

__all__ = ["PackageOptions", "PackageResult", "k8s_resources", "package_version"]

logger = get_logger(__name__)

APP_MODEL = "/app/model"
VENV = "/opt/danlu/venv"
KEYS_FILE = "/etc/danlu/keys/keys"
UID = 10001
MARKER = "Dockerfile"  # with model/package.json: what --force may replace


@dataclass(frozen=True)
class PackageOptions:
    """How to package a version (the options of ``danlu package``).

    Attributes:
        out: the build context folder to write.
        force: replace ``out`` when it exists and is not empty.
        onnx_only: refuse a version that is not ONNX-ready instead of packaging torch.
        cuda: a GPU image: onnxruntime-gpu and torch's CUDA build instead of the CPU ones.
        k8s: also write Kubernetes manifests and the monitoring files.
        image: the image name the README and manifests use (default ``danlu-NAME:VERSION``).
        base_image: the Dockerfile's default base (``python:3.X-slim-bookworm`` for this
            Python).
        port: where the server listens in the container.
        threads: inference threads per model (and ``OMP_NUM_THREADS``).
        danlu_wheel: a danlu wheel to ship instead of building one from this checkout.
        k8s_options: ``replicas``, ``cpu``, ``memory`` ... for the manifests.
    """

    out: Path
    force: bool = False
    onnx_only: bool = False
    cuda: bool = False
    k8s: bool = False
    image: str | None = None
    base_image: str | None = None
    port: int = 8000
    threads: int = 1
    danlu_wheel: Path | None = None
    k8s_options: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class PackageResult:
    """What was written: the folder, the version, its runtime and the files of the context."""

    out: Path
    ref: str
    image: str
    runtime: str  # onnx | torch
    files: tuple[str, ...]
    locked: int  # packages in the lock
    notes: tuple[str, ...] = ()
    model_bytes: int = 0


def package_version(
    store: Store,
    ref: str,
    options: PackageOptions,
    *,
    progress: Callable[[str], None] | None = None,
) -> PackageResult:
    """Write the build context of version ``ref`` of ``store`` into ``options.out``.

    The folder is built beside ``out`` and moved into place at the end, so a failure leaves no
    half-written context (and, with ``force``, the previous one untouched).

    Raises:
        NotFoundError: no such model, version or alias.
        ConfigError: ``out`` exists and is not empty (without ``force``), or is not a folder
            ``force`` may replace; ``onnx_only`` for a version that is not ONNX-ready; a
            package serving needs is not installed here.
        StoreError: the version's files are missing, or its signature does not match.

    Example:
        >>> # package_version(store, "digits@production", PackageOptions(Path("build/digits")))
    """
    say = progress or (lambda _message: None)
    mv = store.resolve(ref)
    out = options.out.resolve()
    _check_out(out, options.force, store)
    runtime, notes = _runtime(store, mv, options.onnx_only)
    from danlu.store._signing import SIGNATURE_FILE, verify_version

    signed = store.model_reader(mv)(SIGNATURE_FILE) is not None
    if signed:  # never package a version whose files changed since it was signed
        verify_version(store, mv).raise_for_problems()
    image = options.image or f"danlu-{mv.name.lower()}:{mv.version}"
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    staging.chmod(0o755)  # mkdtemp makes it private; the context is for others to build
    try:
        roots, torch = _requirements(store, mv, runtime, options.cuda)
        say(f"Copying {mv.ref}'s files")
        model_bytes = _write_model(store, mv, staging / "model", (runtime, torch), ref, signed)
        say("Locking the packages serving needs")
        pins = locked_packages(roots)
        _write(staging / "requirements.lock", lock_text(pins, torch=torch, cuda=options.cuda))
        say("Building danlu's wheel")
        wheel = _danlu_wheel(staging / "wheels", options.danlu_wheel)
        _write(staging / "install.sh", _install_script(options.cuda, torch))
        _write(staging / "Dockerfile", _dockerfile(mv, options, image))
        _write(staging / ".dockerignore", "k8s/\nmonitoring/\nREADME.md\n")
        if options.k8s:
            say("Writing the Kubernetes manifests and monitoring files")
            _write_k8s(staging, mv, image, options)
        _write(
            staging / "README.md",
            _readme(mv, image, runtime, options, len(pins), wheel.name, notes),
        )
        _swap_in(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    files = tuple(sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()))
    return PackageResult(
        out=out,
        ref=mv.ref,
        image=image,
        runtime=runtime,
        files=files,
        locked=len(pins),
        notes=tuple(notes),
        model_bytes=model_bytes,
    )


def k8s_resources(
    *,
    replicas: int = 2,
    max_replicas: int = 10,
    cpu: str = "500m",
    memory: str = "1Gi",
    cuda: bool = False,
    autoscale: bool = True,
    target_cpu: int = 70,
    timeout: float = 10.0,
    namespace: str | None = None,
    allowed_hosts: tuple[str, ...] = (),
) -> dict[str, Any]:
    """The manifests' sizing from ``danlu package``'s options: the CPU limit is twice the
    request (room for bursts), memory's limit equals its request (no overcommit).

    Example:
        >>> k8s_resources(cpu="500m")["cpu_limit"], k8s_resources(cpu="2")["cpu_limit"]
        ('1000m', '4')
    """
    import re

    match = re.fullmatch(r"([0-9]+(?:\.[0-9]+)?)(m?)", cpu.strip())
    if match is None:
        raise ConfigError(
            f"--cpu {cpu!r} is not a CPU quantity; write cores (1, 0.5) or millicores (500m)."
        )
    amount, milli = float(match.group(1)), match.group(2)
    doubled = amount * 2
    limit = f"{doubled:g}{milli}" if milli or doubled != int(doubled) else str(int(doubled))
    if autoscale and replicas > max_replicas:
        raise ConfigError(
            f"--replicas {replicas} is more than --max-replicas {max_replicas}; the autoscaler "
            "scales between them."
        )
    return {
        "replicas": replicas,
        "min_replicas": replicas,
        "max_replicas": max_replicas,
        "cpu_request": cpu.strip(),
        "cpu_limit": limit,
        "memory_request": memory.strip(),
        "memory_limit": memory.strip(),
        "autoscale": autoscale,
        "target_cpu_percent": target_cpu,
        "request_timeout_s": timeout,
        "namespace": namespace,
        "allowed_hosts": tuple(allowed_hosts),
        "gpus": 1 if cuda else 0,
    }


# -- checks -------------------------------------------------------------------------------------
def _check_out(out: Path, force: bool, store: Store) -> None:
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file; give a folder for the build context.")
    if out.is_dir() and any(out.iterdir()):
        if not force:
            raise ConfigError(
                f"--out {out} exists and is not empty. Give a new folder, or --force to replace "
                "it (only a folder danlu package wrote: a Dockerfile and model/package.json)."
            )
        if not ((out / MARKER).is_file() and (out / "model" / "package.json").is_file()):
            raise ConfigError(
                f"--out {out} is not a build context danlu package wrote (no Dockerfile and "
                "model/package.json), so --force will not delete it. Give another folder."
            )
    home = getattr(store, "home", None)
    protected = [Path.cwd().resolve(), Path.home().resolve()]
    if home is not None:
        protected.append(Path(home).resolve())
    for folder in protected:
        if out == folder or folder.is_relative_to(out):
            raise ConfigError(
                f"--out {out} holds {folder}; give a folder of its own for the build context."
            )


def _runtime(store: Store, mv: ModelVersion, onnx_only: bool) -> tuple[str, list[str]]:
    """``onnx`` when the version's export passed its parity check, else ``torch`` (with why)."""
    from danlu.export._onnx import onnx_ready, read_export

    if onnx_ready(store, mv):
        return "onnx", []
    try:
        export = read_export(store, mv) or {}
    except StoreError as exc:
        export = {"error": str(exc)}
    why = (
        export.get("error")
        or export.get("reason")
        or (
            "it was never exported"
            if not export
            else f"its export status is {export.get('status')!r}"
        )
    )
    if onnx_only:
        raise ConfigError(
            f"Model {mv.ref} is not ONNX-ready ({why}), and --onnx-only refuses to package torch. "
            f"Export it (danlu export {mv.ref}) and package again, or drop --onnx-only to ship "
            "the torch runtime (a larger image)."
        )
    note = f"{mv.ref} is not ONNX-ready ({why}): the image serves it with torch (a larger image)."
    logger.warning(note)
    return "torch", [note]


# -- the model folder ---------------------------------------------------------------------------
def _write_model(
    store: Store,
    mv: ModelVersion,
    folder: Path,
    serving: tuple[str, bool],
    ref: str,
    signed: bool,
) -> int:
    """Copy the version's files (decrypted, through the store's reader) with its signature
    and, when the image has torch, the pretrained base it keeps only an adapter of; write
    package.json."""
    from danlu.store import PACKAGE_MANIFEST, SIGNATURE_FILE

    runtime, torch = serving  # the runtime that serves it; whether the image has torch
    folder.mkdir(parents=True)
    read = store.model_reader(mv)
    digests: dict[str, str] = {}
    total = 0
    for file in [*mv.files, *([SIGNATURE_FILE] if signed else [])]:
        data = read(file)
        if data is None:
            raise StoreError(f"Model {mv.ref} lists '{file}', which is missing from the store.")
        _write_bytes(folder / "files" / file, data)
        digests[file] = hashlib.sha256(data).hexdigest()
        total += len(data)
    bases: dict[str, dict[str, str]] = {}
    base = _base_sha(read)
    if base is not None and torch:
        source = store.stored_base(base)
        if source is not None:
            files: dict[str, str] = {}
            for path in sorted(p for p in source.rglob("*") if p.is_file()):
                rel = str(path.relative_to(source))
                data = path.read_bytes()
                _write_bytes(folder / "bases" / base / rel, data)
                files[rel] = hashlib.sha256(data).hexdigest()
                total += len(data)
            bases[base] = files
    alias = ref.split("@", 1)[1] if "@" in ref else None
    manifest = {
        "format": "danlu.package",
        "format_version": 1,
        "packaged_at": time.time(),
        "danlu_version": _danlu_version(),
        "runtime": runtime,
        "model": {
            "name": mv.name,
            "version": mv.version,
            "run_id": mv.run_id,
            "created_at": mv.created_at,
            "signature": mv.signature,
            "metrics": mv.metrics,
            "tags": mv.tags,
            "aliases": sorted({*mv.aliases, *([alias] if alias else [])}),
        },
        "files": digests,
        "bases": bases,
    }
    _write(folder / PACKAGE_MANIFEST, json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return total


def _base_sha(read: Callable[[str], bytes | None]) -> str | None:
    raw = read("model.json")
    if raw is None:
        return None
    base = json.loads(raw).get("base")
    return base.get("sha256") if isinstance(base, dict) else None


def _requirements(
    store: Store, mv: ModelVersion, runtime: str, cuda: bool
) -> tuple[list[str], bool]:
    """The requirement roots of the lock, and whether torch is among them."""
    from danlu.serve import SERVING_BASE, serving_requirements

    # a language model's image also answers /generate, which runs on torch
    needs = serving_requirements(store.model_reader(mv), runtime=runtime, generate=True)
    torch = runtime == "torch" or "torch" in needs
    roots = sorted({*SERVING_BASE, *needs, *SERVER_EXTRAS} - {"torch"})
    if torch:
        roots.append("torch")
    if cuda:  # installed by install.sh with their CUDA libraries
        roots = [r for r in roots if r not in ("onnxruntime", "torch")]
    return roots, torch


def _danlu_version() -> str:
    from importlib import metadata

    try:
        return metadata.version("danlu")
    except metadata.PackageNotFoundError:
        return "unknown"


def _danlu_wheel(folder: Path, given: Path | None) -> Path:
    """danlu's wheel in ``folder``: ``given``, or built from the checkout danlu runs from."""
    folder.mkdir(parents=True)
    if given is not None:
        if not (given.is_file() and given.name.startswith("danlu-") and given.suffix == ".whl"):
            raise ConfigError(f"--danlu-wheel {given} is not a danlu wheel file (danlu-*.whl).")
        target = folder / given.name
        shutil.copyfile(given, target)
        return target
    import danlu

    source = Path(danlu.__file__).resolve().parent.parent
    if not (source / "pyproject.toml").is_file():
        raise ConfigError(
            "danlu is not installed from a source checkout, so its wheel cannot be built here. "
            "Give the wheel you installed it from: --danlu-wheel PATH/danlu-*.whl."
        )
    with tempfile.TemporaryDirectory(prefix="danlu-wheel-") as tmp:
        copy = Path(tmp) / "src"  # build from a copy: the checkout gets no build/ folder
        copy.mkdir()
        for name in ("pyproject.toml", "README.md", "LICENSE"):
            if (source / name).is_file():
                shutil.copyfile(source / name, copy / name)
        shutil.copytree(
            source / "danlu", copy / "danlu", ignore=shutil.ignore_patterns("__pycache__")
        )
        # with this environment's setuptools (fast, offline); if it is missing or too old for
        # pyproject.toml, in pip's isolated build environment (which fetches setuptools)
        for isolation in (["--no-build-isolation"], []):
            result = subprocess.run(
                [sys.executable, "-m", "pip", "wheel", "--no-deps", *isolation, "-q"]
                + ["-w", str(folder), str(copy)],
                capture_output=True,
                text=True,
                check=False,
                env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"},
            )
            if result.returncode == 0:
                break
    wheels = sorted(folder.glob("danlu-*.whl"))
    if result.returncode != 0 or len(wheels) != 1:
        raise ConfigError(
            "Building danlu's wheel failed (pip wheel): "
            f"{(result.stderr or result.stdout).strip()[-800:]}"
        )
    return wheels[0]


# -- the files of the context -------------------------------------------------------------------
def _install_script(cuda: bool, torch: bool) -> str:
    pip = '"$VENV/bin/pip" install --no-cache-dir --disable-pip-version-check'
    lines = [
        "#!/bin/sh",
        "# Installs the packaged server into the virtual environment VENV: the Dockerfile runs",
        "# it, and so can you, to check the install steps outside a container:",
        "#   sh install.sh /tmp/danlu-venv",
        "set -eu",
        'VENV="${1:?usage: install.sh VENV}"',
        'HERE="$(cd "$(dirname "$0")" && pwd)"',
        'python3 -m venv "$VENV"',
        f'{pip} --no-deps --only-binary=:all: -r "$HERE/requirements.lock"',
    ]
    if cuda:  # the CUDA libraries come with these, resolved by pip at build time
        gpu = [f"onnxruntime-gpu=={_installed('onnxruntime')}"]  # the CPU one's version
        if torch:
            gpu.append(f"torch=={_installed('torch').split('+', 1)[0]}")
        lines.append(f"{pip} --only-binary=:all: {' '.join(gpu)}")
    lines += [
        f'{pip} --no-deps --no-index "$HERE"/wheels/danlu-*.whl',
        # the server's imports, checked at build time rather than at the first request
        '"$VENV/bin/python" -c "import danlu.serve, danlu.store, fastapi, onnxruntime, uvicorn"',
    ]
    return "\n".join(lines) + "\n"


def _installed(name: str) -> str:
    from importlib import metadata

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        raise ConfigError(
            f"{name} is not installed here, so its version cannot be pinned for --cuda. Install "
            "it and package again."
        ) from None


def _dockerfile(mv: ModelVersion, options: PackageOptions, image: str) -> str:
    python = f"{sys.version_info.major}.{sys.version_info.minor}"
    base = options.base_image or f"python:{python}-slim-bookworm"
    # the port the server listens on: DANLU_PORT, which `danlu serve` reads too (docker run
    # -e DANLU_PORT=9000 moves both)
    healthz = (
        "import os, urllib.request; "
        "urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('DANLU_PORT', "
        f"'{options.port}') + '/healthz', timeout=2)"
    )
    return f"""\
# {mv.ref}, packaged by danlu {_danlu_version()}: `danlu package` wrote this build context.
#   docker build -t {image} .
#   podman build --format docker -t {image} .   (the OCI format would drop the HEALTHCHECK)
# The base must have CPython {python} (the lock is for it); another: --build-arg BASE_IMAGE=...
ARG BASE_IMAGE={base}
FROM ${{BASE_IMAGE}}

ENV PYTHONDONTWRITEBYTECODE=1 \\
    PYTHONUNBUFFERED=1 \\
    OMP_NUM_THREADS={options.threads} \\
    DANLU_HOME=/tmp/danlu \\
    DANLU_API_KEYS_FILE={KEYS_FILE}

# a user of its own, without a login or a home: the server never runs as root
RUN groupadd --system --gid {UID} danlu \\
 && useradd --system --uid {UID} --gid {UID} --no-create-home --shell /usr/sbin/nologin danlu

# the exact packages of requirements.lock, then danlu without dependencies (no torch for ONNX)
COPY requirements.lock install.sh /opt/danlu/
COPY wheels/ /opt/danlu/wheels/
RUN sh /opt/danlu/install.sh {VENV} && rm -rf /opt/danlu/wheels

# the version's files, owned by root and read-only: package.json holds every file's sha256,
# checked when the server starts
COPY model/ {APP_MODEL}/
RUN chmod -R a-w {APP_MODEL}

USER {UID}:{UID}
# how `danlu serve` runs, as environment (not CMD: arguments appended to `docker run IMAGE`
# would replace it); the HEALTHCHECK probes DANLU_PORT too: -e DANLU_PORT=9000 moves both
ENV DANLU_HOST=0.0.0.0 DANLU_PORT={options.port} DANLU_THREADS={options.threads}
EXPOSE {options.port}
HEALTHCHECK --interval=15s --timeout=3s --start-period=60s --retries=3 \\
    CMD ["{VENV}/bin/python", "-c", "{healthz}"]
# beyond loopback the server refuses to start without API keys: mount a file with one key per
# line at {KEYS_FILE} (or point DANLU_API_KEYS_FILE elsewhere)
ENTRYPOINT ["{VENV}/bin/danlu", "serve", "--package", "{APP_MODEL}"]
"""


def _write_k8s(staging: Path, mv: ModelVersion, image: str, options: PackageOptions) -> None:
    from danlu.deploy._k8s import K8sSpec, check_manifests, k8s_name, kubernetes_manifests
    from danlu.deploy._monitoring import monitoring_files

    spec = K8sSpec(
        name=k8s_name(mv.name),
        image=image,
        model_ref=mv.ref,
        port=options.port,
        threads=options.threads,
        **dict(options.k8s_options),
    )
    manifests = kubernetes_manifests(spec)
    problems = check_manifests(manifests)
    if problems:  # danlu's own invariants: a bug here, never shipped
        raise StoreError("The generated manifests break danlu's rules: " + "; ".join(problems))
    for file, text in manifests.items():
        _write(staging / "k8s" / file, text)
    for file, data in monitoring_files().items():
        _write_bytes(staging / "monitoring" / file, data)


def _readme(
    mv: ModelVersion,
    image: str,
    runtime: str,
    options: PackageOptions,
    locked: int,
    wheel: str,
    notes: list[str],
) -> str:
    headline = ", ".join(f"{k} {v:.4g}" for k, v in sorted(mv.metrics.items())[:6]) or "none"
    runtime_line = (
        "ONNX Runtime (the export passed its parity check; torch is not installed)"
        if runtime == "onnx"
        else "torch (" + " ".join(notes) + ")"
    )
    k8s = (
        "\n## Kubernetes\n\n`k8s/` holds the Deployment, Service, HorizontalPodAutoscaler,\n"
        "NetworkPolicy, a Secret template for the API keys and a ServiceMonitor. Fill the\n"
        "Secret, push the image, then `kubectl apply -k k8s/` (docs/kubernetes.md).\n"
        "`monitoring/` holds the Prometheus scrape config and alerting rules and the Grafana\n"
        "dashboard (docs/monitoring.md).\n"
        if options.k8s
        else ""
    )
    return f"""\
# {mv.ref}, packaged

A build context for a container that serves **{mv.ref}** with `danlu serve`, made by
`danlu package` (danlu {_danlu_version()}). It needs no danlu store: the server reads `model/`.

- Runtime: {runtime_line}.
- Registry metrics: {headline}.
- `requirements.lock`: {locked} packages at exact versions; `wheels/{wheel}`: danlu itself.
- `model/package.json`: the version and the sha256 of each file; the server refuses a
  changed, missing or extra file.

## Build and run

```sh
docker build -t {image} .       # or: podman build --format docker -t {image} .
python -c "import secrets; print(secrets.token_urlsafe(32))" > keys   # one key per line
docker run --rm -p {options.port}:{options.port} -v "$PWD/keys:{KEYS_FILE}:ro" {image}
curl -s localhost:{options.port}/readyz
curl -s -H "Authorization: Bearer $(head -1 keys)" -H 'Content-Type: application/json' \\
     -d '{{"rows": [...]}}' localhost:{options.port}/v1/models/{mv.name}/predict
```

The container runs as user {UID} (not root), listens on 0.0.0.0:{options.port} and refuses
to start without API keys. `GET /healthz` is the liveness check (and the image's
HEALTHCHECK), `GET /readyz` the readiness check (false while loading and while draining on
SIGTERM), `GET /metrics` the Prometheus metrics (a key is needed, as for predictions).
Clients that reach it by a name other than localhost need `--allowed-hosts NAME` appended to
the run command (requests with any other Host header get 400: DNS rebinding). Another port:
`docker run -e DANLU_PORT=9000 -p 9000:9000 ...` (the HEALTHCHECK follows the variable).

Check the install steps without a container: `sh install.sh /tmp/danlu-venv`.
{k8s}"""


# -- writing ------------------------------------------------------------------------------------
def _write(path: Path, text: str) -> None:
    _write_bytes(path, text.encode())


def _write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def _swap_in(staging: Path, out: Path) -> None:
    """Move the finished context to ``out``; a previous one is removed only afterwards."""
    old = None
    if out.exists():
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        out.rename(old)
    staging.rename(out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
