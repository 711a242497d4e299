"""The packaged server against ``danlu serve`` from the checkout, and the image's size.

``danlu package digits@production`` (the digits CNN of ``bench/serve_load.py``) writes a build
context; then, side by side under the same load (Debian's ``wrk``, one thread, single-row
predict requests, a closed loop at 1 and 32 connections, rounds interleaved so background load
hits every server alike):

- ``checkout``: ``danlu serve digits@production`` from this checkout's environment (the store);
- ``packaged``: ``danlu serve --package ctx/model`` from a fresh virtual environment made by the
  context's own ``install.sh`` (no torch, no store: what the image runs);
- ``image``: the built image itself, run with podman (``--network host``, listening on
  127.0.0.1), when podman can build and run images here (``--image``).

Every server runs on CPU 0 with one inference thread, wrk on CPU 1. The figure (issue 23): the
packaged server's requests/s equal the checkout's within noise; the CPU image is ≤ 1 GB.

Building the image needs a base with CPython of this minor version: the Dockerfile's default,
``python:3.X-slim-bookworm``, or ``--base-image`` (on a machine that cannot pull from Docker
Hub, a local one: see ``--debootstrap`` below, which builds Debian bookworm's python3 with
debootstrap and imports it into podman as ``localhost/danlu-base:bookworm``).

    python bench/package.py [--seconds 5] [--rounds 3] [--image] [--debootstrap]
        [--base-image localhost/danlu-base:bookworm] [--home DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.pop("DANLU_DB_URL", None)

from _report import machine, write  # noqa: E402
from serve_load import (  # noqa: E402
    CLIENT_CPU,
    SERVER_CPU,
    Server,
    _get,
    free_port,
    prepare_models,
    request_body,
    run_wrk,
)

NAME = "package"
DANLU = str(Path(sys.executable).parent / "danlu")
BASE = "localhost/danlu-base:bookworm"
IMAGE = "localhost/danlu-digits-bench:1"
# podman in this sandbox: runc (crun's cgroup setup fails), bounded rlimits, the host's network
PODMAN = ["podman", "--runtime", "runc"]
LIMITS = ["--ulimit", "nofile=4096:4096", "--ulimit", "nproc=4096:4096"]
TARGET_RATIO, TARGET_IMAGE_MB = 0.9, 1000


def _run(cmd: list[str], timeout: float, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        cmd, capture_output=True, text=True, timeout=timeout, check=False, **kwargs
    )
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd[:4])} ... failed:\n{(done.stdout + done.stderr)[-3000:]}")
    return done


def debootstrap_base(workdir: Path) -> None:
    """Debian bookworm (minbase) with python3 and venv, plus this machine's CA bundle (pip
    inside the build goes through the same proxy), imported into podman as BASE."""
    root = workdir / "rootfs"
    _run(
        ["debootstrap", "--variant=minbase", "--include=python3,python3-venv,ca-certificates"]
        + ["bookworm", str(root), "http://deb.debian.org/debian"],
        timeout=1800,
    )
    shutil.copyfile(
        "/etc/ssl/certs/ca-certificates.crt", root / "etc/ssl/certs/ca-certificates.crt"
    )
    for junk in (root / "var/cache/apt/archives", root / "var/lib/apt/lists"):
        shutil.rmtree(junk, ignore_errors=True)
    tar = subprocess.Popen(["tar", "-C", str(root), "-c", "."], stdout=subprocess.PIPE)
    _run([*PODMAN, "import", "-", BASE], timeout=600, stdin=tar.stdout)
    tar.wait()


def build_image(context: Path, base: str) -> dict[str, Any]:
    started = time.perf_counter()
    _run(
        [*PODMAN, "build", "--format", "docker", "--network", "host", *LIMITS]
        + ["--build-arg", f"BASE_IMAGE={base}", "-t", IMAGE, str(context)],
        timeout=1800,
    )
    seconds = time.perf_counter() - started
    inspect = json.loads(_run([*PODMAN, "image", "inspect", IMAGE], timeout=60).stdout)[0]
    base_size = json.loads(_run([*PODMAN, "image", "inspect", base], timeout=60).stdout)[0]
    return {
        "build_s": round(seconds, 1),
        "size_mb": round(inspect["Size"] / 1e6, 1),
        "base_size_mb": round(base_size["Size"] / 1e6, 1),
        "user": inspect["Config"].get("User"),
        # podman keeps it beside Config (docker inside it)
        "healthcheck": (
            inspect.get("Healthcheck") or inspect["Config"].get("Healthcheck") or {}
        ).get("Test"),
        "entrypoint": inspect["Config"].get("Entrypoint"),
    }


def run_as_shipped(keys: Path) -> dict[str, Any]:
    """The image with its own CMD (0.0.0.0:8000 inside the container, published on the host's
    127.0.0.1 only): its HEALTHCHECK run by podman, who it runs as, a key-less request refused,
    whether the model's files can be written, and the exit status after SIGTERM."""
    port, name = free_port(), f"danlu-bench-shipped-{os.getpid()}"
    _run(
        [*PODMAN, "run", "-d", "--name", name, *LIMITS, "-p", f"127.0.0.1:{port}:8000"]
        + ["-v", f"{keys}:/etc/danlu/keys/keys:ro", IMAGE],
        timeout=120,
    )
    try:
        deadline = time.monotonic() + 120
        while _get(f"http://127.0.0.1:{port}/readyz", 1.0)[0] != 200:
            if time.monotonic() > deadline:
                raise SystemExit("the image did not become ready on its own CMD")
            time.sleep(0.5)
        health = subprocess.run(
            [*PODMAN, "healthcheck", "run", name], capture_output=True, text=True, check=False
        )
        uid = _run([*PODMAN, "exec", name, "id", "-u"], timeout=60).stdout.strip()
        write = subprocess.run(
            [*PODMAN, "exec", name, "touch", "/app/model/files/x"], capture_output=True, check=False
        )
        keyless = _post(f"http://127.0.0.1:{port}", b'{"rows": []}', "")[0]
    finally:
        subprocess.run([*PODMAN, "stop", "-t", "30", name], capture_output=True, check=False)
        code = subprocess.run(
            [*PODMAN, "inspect", name, "--format", "{{.State.ExitCode}}"],
            capture_output=True,
            text=True,
            check=False,
        ).stdout.strip()
        subprocess.run([*PODMAN, "rm", name], capture_output=True, check=False)
    return {
        "healthcheck_run": "healthy" if health.returncode == 0 else f"unhealthy {health.stdout}",
        "uid": uid,
        "model_writable": write.returncode == 0,
        "keyless_status": keyless,
        "exit_code_after_sigterm": code,
    }


class ImageServer(Server):
    """The image under podman, on the host's loopback (no port mapping in the way)."""

    def __init__(self, keys: Path, home: Path, kind: str = "image", extra: tuple = ()) -> None:
        self.kind = kind
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.ready_path = "/readyz"
        self.name = f"danlu-bench-{self.port}"
        self.log = open(home / f"server-image-{self.port}.log", "wb")  # noqa: SIM115
        cmd = [
            *PODMAN, "run", "--rm", "--name", self.name, "--network", "host", *LIMITS,
            "--cpuset-cpus", SERVER_CPU, "-v", f"{keys}:/etc/danlu/keys/keys:ro", *extra,
            IMAGE, "--host", "127.0.0.1", "--port", str(self.port),
        ]  # fmt: skip
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT)

    def stop(self) -> None:
        subprocess.run([*PODMAN, "stop", "-t", "30", self.name], capture_output=True, check=False)
        super().stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="seconds per load point")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds per point")
    parser.add_argument("--connections", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--image", action="store_true", help="build and run the image (podman)")
    parser.add_argument("--debootstrap", action="store_true", help="make the local base first")
    parser.add_argument("--base-image", default=None, help="the image's base (default: BASE)")
    parser.add_argument("--home", type=Path, default=None, help="reuse (or keep) the models here")
    parser.add_argument(
        "--system-python",
        default=None,
        help="also the packaged server on this interpreter (e.g. Debian's /usr/bin/python3, the "
        "image's): tells the interpreter's share of a gap from the container's",
    )
    parser.add_argument("--out", default=NAME)
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("this benchmark needs wrk (apt-get install wrk)")
    tmp = tempfile.TemporaryDirectory(prefix="danlu-package-bench-")
    work = Path(tmp.name)
    home = (args.home or work / "home").resolve()
    home.mkdir(parents=True, exist_ok=True)
    os.environ["DANLU_HOME"] = str(home)
    store = prepare_models(home)
    _, secret = store.create_api_key("predict", name="package-bench", actor="bench")
    body = home / "body.json"
    body.write_bytes(request_body(store, "digits"))
    keys = work / "keys"
    keys.write_text(secret + "\n")
    keys.chmod(0o644)

    context = work / "ctx"
    started = time.perf_counter()
    _run([DANLU, "package", "digits@production", "--out", str(context)], timeout=600)
    package_s = time.perf_counter() - started
    venv = work / "venv"
    started = time.perf_counter()
    _run(["sh", str(context / "install.sh"), str(venv)], timeout=1800)
    install_s = time.perf_counter() - started
    venv_mb = sum(p.stat().st_size for p in venv.rglob("*") if p.is_file()) / 1e6
    system_venv = None
    if args.system_python:  # install.sh runs `python3 -m venv`: put that interpreter first
        system_venv = work / "venv-system"
        link = work / "system-bin"
        link.mkdir()
        (link / "python3").symlink_to(args.system_python)
        path = f"{link}:{os.environ.get('PATH', '')}"
        _run(
            ["sh", str(context / "install.sh"), str(system_venv)],
            timeout=1800,
            env={**os.environ, "PATH": path},
        )

    image: dict[str, Any] | None = None
    if args.image:
        if args.debootstrap:
            debootstrap_base(work)
        image = build_image(context, args.base_image or BASE)
        image.update(run_as_shipped(keys))
        print(f"image: {image}", flush=True)

    servers: dict[str, Server] = {
        "checkout": Server("checkout", [DANLU, "serve", "digits@production", "--poll", "0"],
                           "/readyz", home, True),
        "packaged": Server("packaged", [str(venv / "bin" / "danlu"), "serve", "--package",
                                        str(context / "model"), "--keys-file", str(keys)],
                           "/readyz", home, True),
    }  # fmt: skip
    if system_venv is not None:
        servers["packaged-system-python"] = Server(
            "packaged-system-python",
            [str(system_venv / "bin" / "danlu"), "serve", "--package", str(context / "model"),
             "--keys-file", str(keys)],
            "/readyz", home, True,
        )  # fmt: skip
    if image is not None:
        servers["image"] = ImageServer(keys, home)
        # the same container without podman's default seccomp filter: what the filter costs
        servers["image-unconfined"] = ImageServer(
            keys, home, "image-unconfined", ("--security-opt", "seccomp=unconfined")
        )
    points: list[dict[str, Any]] = []
    try:
        for server in servers.values():
            server.wait_ready()
        answers = {}
        for kind, server in servers.items():
            status, raw = _post(server.url, body.read_bytes(), secret)
            if status != 200:
                raise SystemExit(f"{kind} answered {status}: {raw[:300]!r}")
            answers[kind] = json.loads(raw)["probabilities"]
            run_wrk(server.url + "/v1/models/digits/predict", body, secret, 8, 2.0, True)
        for _ in range(args.rounds):
            for c in args.connections:
                for kind, server in servers.items():
                    point = run_wrk(
                        server.url + "/v1/models/digits/predict", body, secret, c, args.seconds,
                        True,
                    )  # fmt: skip
                    points.append({"server": kind, "connections": c, **point})
                    print(f"{kind:9s} c={c:3d} {point['rps']:8.1f} req/s p99 "
                          f"{point['p99_ms']:.2f} ms errors {point['errors']}", flush=True)  # fmt: skip
    finally:
        for server in servers.values():
            server.stop()
    same = all(
        max(abs(a - b) for a, b in zip(answers["checkout"][0], other[0], strict=True)) < 1e-5
        for other in answers.values()
    )
    summarise(args, points, image, same, package_s, install_s, venv_mb)
    tmp.cleanup()


def _post(url: str, body: bytes, secret: str) -> tuple[int, bytes]:
    import urllib.request

    request = urllib.request.Request(
        url + "/v1/models/digits/predict",
        data=body,
        headers={
            "Content-Type": "application/json",
            **({"Authorization": f"Bearer {secret}"} if secret else {}),
        },
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as r:  # noqa: S310 - loopback
            return r.status, r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def summarise(
    args: argparse.Namespace,
    points: list[dict[str, Any]],
    image: dict[str, Any] | None,
    same: bool,
    package_s: float,
    install_s: float,
    venv_mb: float,
) -> None:
    order = ["checkout", "packaged", "packaged-system-python", "image", "image-unconfined"]
    kinds = sorted({p["server"] for p in points}, key=order.index)
    table: list[list[Any]] = []
    medians: dict[str, dict[int, dict[str, float]]] = {}
    for c in args.connections:
        for kind in kinds:
            mine = [p for p in points if p["server"] == kind and p["connections"] == c]
            rps = statistics.median(p["rps"] for p in mine)
            p99 = statistics.median(p["p99_ms"] for p in mine)
            medians.setdefault(kind, {})[c] = {"rps": rps, "p99_ms": p99}
            ratio = rps / medians["checkout"][c]["rps"]
            errors = sum(p["errors"] for p in mine)
            table.append([kind, c, f"{rps:.0f}", f"{p99:.2f}", f"{ratio:.2f}", errors])
    ratios = {
        kind: {c: medians[kind][c]["rps"] / medians["checkout"][c]["rps"] for c in args.connections}
        for kind in kinds
    }
    met = all(r >= TARGET_RATIO for r in ratios["packaged"].values())
    payload = {
        "machine": machine(),
        "seconds": args.seconds,
        "rounds": args.rounds,
        "points": points,
        "medians": medians,
        "ratios": ratios,
        "same_answers": same,
        "package_s": round(package_s, 1),
        "install_s": round(install_s, 1),
        "venv_mb": round(venv_mb, 1),
        "image": image,
        "targets": {"ratio": TARGET_RATIO, "image_mb": TARGET_IMAGE_MB},
        "met": {
            "throughput": met,
            "image_size": None if image is None else image["size_mb"] <= TARGET_IMAGE_MB,
        },
        "loadavg": os.getloadavg(),
    }
    notes = [
        f"Medians of {args.rounds} interleaved rounds of {args.seconds:g} s (wrk, one thread on "
        f"CPU {CLIENT_CPU}; each server on CPU {SERVER_CPU}, one inference thread); the digits "
        "CNN, one row per request. ratio: requests/s over the checkout's.",
        f"`danlu package`: {package_s:.1f} s; the context's install.sh into a fresh venv: "
        f"{install_s:.1f} s, {venv_mb:.0f} MB (no torch). Same answers: {same}.",
    ]
    if image is not None:
        notes.append(
            f"Image: {image['size_mb']:.0f} MB (base {image['base_size_mb']:.0f} MB), built in "
            f"{image['build_s']:.0f} s with podman. Run as shipped (its own CMD, published on "
            f"127.0.0.1): uid {image['uid']}, HEALTHCHECK (`podman healthcheck run`) "
            f"{image['healthcheck_run']}, model files writable: {image['model_writable']}, a "
            f"request without a key: {image['keyless_status']}, exit status after SIGTERM: "
            f"{image['exit_code_after_sigterm']}. image / image-unconfined: the container on the "
            "host's network with and without podman's default seccomp filter."
        )
    path = write(
        args.out,
        payload,
        ["server", "connections", "req/s", "p99 ms", "ratio", "errors"],
        table,
        "\n\n".join(notes),
    )
    print(path.read_text())


if __name__ == "__main__":
    main()
