"""``danlu package MODEL --out DIR``: a container build context for one registered version.

Thin: ``danlu.deploy.package_version`` does the work; this checks access, shows progress and
renders what was written.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from danlu.cli._console import err, setup_logging, state
from danlu.cli._options import JsonOption
from danlu.cli._runs import human_size, open_store, print_details, print_json

__all__ = ["package_command"]


def package_command(
    model: Annotated[
        str,
        typer.Argument(
            help="The registered version: NAME, NAME:VERSION or NAME@ALIAS.", metavar="MODEL"
        ),
    ],
    out: Annotated[
        Path,
        typer.Option("--out", help="The build context folder to write.", metavar="DIR"),
    ],
    force: Annotated[
        bool,
        typer.Option("--force", help="Replace DIR when it holds an earlier build context."),
    ] = False,
    onnx_only: Annotated[
        bool,
        typer.Option(
            "--onnx-only",
            help="Refuse a version that is not ONNX-ready instead of shipping torch.",
        ),
    ] = False,
    cuda: Annotated[
        bool,
        typer.Option("--cuda", help="A GPU image: onnxruntime-gpu (and torch's CUDA build)."),
    ] = False,
    k8s: Annotated[
        bool,
        typer.Option("--k8s", help="Also write Kubernetes manifests and the monitoring files."),
    ] = False,
    image: Annotated[
        str | None,
        typer.Option(help="Image name for the manifests (default danlu-NAME:VERSION)."),
    ] = None,
    base_image: Annotated[
        str | None,
        typer.Option(help="The Dockerfile's default base (default python:3.X-slim-bookworm)."),
    ] = None,
    port: Annotated[int, typer.Option(help="Port in the container.", min=1, max=65535)] = 8000,
    threads: Annotated[int, typer.Option(help="Inference threads per model.", min=1, max=256)] = 1,
    replicas: Annotated[
        int, typer.Option(help="--k8s: replicas (and the autoscaler's minimum).", min=1)
    ] = 2,
    max_replicas: Annotated[int, typer.Option(help="--k8s: the autoscaler's maximum.", min=1)] = 10,
    cpu: Annotated[
        str, typer.Option(help="--k8s: CPU request (the limit is twice it), e.g. 500m.")
    ] = "500m",
    memory: Annotated[str, typer.Option(help="--k8s: memory request and limit, e.g. 1Gi.")] = "1Gi",
    no_autoscale: Annotated[
        bool,
        typer.Option("--no-autoscale", help="--k8s: a fixed --replicas, no autoscaler."),
    ] = False,
    target_cpu: Annotated[
        int, typer.Option(help="--k8s: the autoscaler's CPU target (%).", min=1, max=100)
    ] = 70,
    timeout: Annotated[
        float,
        typer.Option(
            help="--k8s: the server's request timeout (s); the pod's grace period covers its "
            "drain.",
            min=0.001,
        ),
    ] = 10.0,
    namespace: Annotated[
        str | None, typer.Option(help="--k8s: the namespace of the manifests.")
    ] = None,
    allowed_host: Annotated[
        list[str] | None,
        typer.Option(
            "--allowed-host",
            help="--k8s: a host name clients use (an Ingress host), besides the Service's "
            "(repeatable).",
            metavar="NAME",
        ),
    ] = None,
    danlu_wheel: Annotated[
        Path | None,
        typer.Option(
            help="Ship this danlu wheel instead of building one from the checkout.",
            metavar="WHEEL",
        ),
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Write a container build context for a registered model: Dockerfile, locked packages, the version's files, a README (and Kubernetes manifests with --k8s).

    The image serves the version with `danlu serve --package`, without a store. Example: danlu package digits@production --out build/digits --k8s
    """
    setup_logging(state["verbose"], False)
    from danlu.cli._access import allow
    from danlu.deploy import PackageOptions, k8s_resources, package_version
    from danlu.store import parse_model_ref

    options = PackageOptions(
        out=out,
        force=force,
        onnx_only=onnx_only,
        cuda=cuda,
        k8s=k8s,
        image=image,
        base_image=base_image,
        port=port,
        threads=threads,
        danlu_wheel=danlu_wheel,
        k8s_options=k8s_resources(
            replicas=replicas,
            max_replicas=max_replicas,
            cpu=cpu,
            memory=memory,
            cuda=cuda,
            autoscale=not no_autoscale,
            target_cpu=target_cpu,
            timeout=timeout,
            namespace=namespace,
            allowed_hosts=tuple(allowed_host or ()),
        ),
    )
    with open_store() as store:
        name = parse_model_ref(model)[0]
        allow(store, "register", store.model_project(name), subject=name)
        if err.is_terminal and not as_json:
            with err.status("Packaging", spinner="dots") as status:
                result = package_version(store, model, options, progress=status.update)
        else:
            result = package_version(
                store, model, options, progress=lambda message: err.print(message, highlight=False)
            )
    if as_json:
        print_json(
            {
                "out": str(result.out),
                "ref": result.ref,
                "image": result.image,
                "runtime": result.runtime,
                "locked_packages": result.locked,
                "model_bytes": result.model_bytes,
                "files": list(result.files),
                "notes": list(result.notes),
            }
        )
        return
    rows: list[tuple[str, object]] = [
        ("folder", str(result.out)),
        ("runtime", result.runtime),
        ("image", result.image),
        ("model files", human_size(result.model_bytes)),
        ("locked packages", str(result.locked)),
        ("kubernetes", "k8s/ and monitoring/" if k8s else None),
        ("build", f"docker build -t {result.image} {result.out}"),
    ]
    print_details("model", result.ref, "packaged", rows)
    for note in result.notes:
        err.print(f"[yellow]note:[/] {note}")
