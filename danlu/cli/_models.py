"""``danlu models``: the model registry — list, inspect, register, alias and delete versions.

Every change is checked against the acting user's role on the model's project and recorded in
the registry's audit log with the actor (docs/access.md): the user of ``$DANLU_API_KEY``, else
the OS user (``$DANLU_ACTOR`` or the login name). A model is named ``NAME`` (its latest version), ``NAME:3`` or ``NAME@production``.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Column, Table
from rich.text import Text

from danlu.cli._access import DEFAULT_PROJECT, allow
from danlu.cli._console import cell, err, out
from danlu.cli._options import JsonOption
from danlu.cli._runs import (
    HEADLINE_METRICS,
    confirm_deletion,
    human_size,
    local_time,
    number,
    open_store,
    print_details,
    print_json,
    print_table,
)
from danlu.errors import ConfigError

if TYPE_CHECKING:
    from danlu.store import AuditEntry, ModelVersion, Store

__all__ = ["ModelRef", "actor", "models_app", "parse_model_ref"]

models_app = typer.Typer(
    help="The model registry: versions, aliases and their audit log.",
    no_args_is_help=True,
    context_settings={"help_option_names": ["-h", "--help"]},
)
alias_app = typer.Typer(
    help="Point an alias (production, staging, ...) at a version, or remove it.",
    no_args_is_help=True,
    context_settings={"help_option_names": ["-h", "--help"]},
)
models_app.add_typer(alias_app, name="alias")

_REF_FORMS = "NAME, NAME:VERSION or NAME@ALIAS, e.g. digits, digits:3 or digits@production"

YesOption = Annotated[bool, typer.Option("--yes", "-y", help="Delete without asking.")]


@dataclass(frozen=True)
class ModelRef:
    """A parsed model reference: the latest version, a version number, or an alias."""

    name: str
    version: int | None = None
    alias: str | None = None

    def __str__(self) -> str:
        if self.version is not None:
            return f"{self.name}:{self.version}"
        return f"{self.name}@{self.alias}" if self.alias is not None else self.name

    def resolve(self, store: Store) -> ModelVersion:
        return store.resolve(str(self))


def parse_model_ref(text: str, *, allow_alias: bool = True) -> ModelRef:
    """Parse ``NAME``, ``NAME:VERSION`` or ``NAME@ALIAS``.

    Example:
        >>> parse_model_ref("digits@production")
        ModelRef(name='digits', version=None, alias='production')
    """
    from danlu.store import parse_model_ref as parse  # the one parser of model references

    name, version, alias = parse(text.strip())
    if version is not None and version < 1:
        raise ConfigError(
            f"Invalid model reference {text!r}: versions start at 1; write {_REF_FORMS}."
        )
    if alias is not None and not allow_alias:
        raise ConfigError(
            f"Name the model or one version, not an alias: write NAME or NAME:VERSION, e.g. {name} or {name}:3 (got {text!r})."
        )
    return ModelRef(name, version, alias)


def actor() -> str:
    """Who is changing the registry: ``$DANLU_ACTOR``, else the login name."""
    from danlu.store import current_actor

    return current_actor()


def _metric_keys(versions: list[ModelVersion]) -> list[str]:
    """Headline metrics first, then a few others, so the table stays readable."""
    keys = sorted({k for v in versions for k in v.metrics})
    headline = [k for k in HEADLINE_METRICS if k in keys]
    others = [k for k in keys if k not in headline and not k.endswith("_loss")]
    return (headline + others)[:4]


def _audit_table(entries: list[AuditEntry]) -> Table:
    table = Table("time", "actor", "action", Column("version", justify="right"), "detail")
    table.title = "audit log"
    table.title_justify = "left"
    for e in entries:
        detail = ", ".join(f"{k}={v}" for k, v in e.detail.items() if v is not None)
        table.add_row(
            local_time(e.time, seconds=True),
            cell(e.actor),
            cell(e.action),
            "-" if e.version is None else str(e.version),
            cell(detail),
        )
    return table


@models_app.command("ls")
def list_models(as_json: JsonOption = False) -> None:
    """List registered models with their latest version and aliases."""
    with open_store() as store:
        models = store.list_models()
    if as_json:
        print_json([asdict(m) for m in models])
        return
    if not models:
        err.print("No registered models. Register a run with: danlu models register RUN_ID NAME")
        return
    table = Table("name", Column("latest", justify="right"), "aliases", "created")
    for m in models:
        aliases = ", ".join(f"{a}→{v}" for a, v in m.aliases.items())
        table.add_row(cell(m.name), str(m.latest_version), cell(aliases), local_time(m.created_at))
    print_table(table)


@models_app.command("show")
def show_model(
    ref: Annotated[str, typer.Argument(help="NAME, NAME:VERSION or NAME@ALIAS.", metavar="MODEL")],
    as_json: JsonOption = False,
) -> None:
    """A model's versions, or one version's signature, metrics, files and tags; plus its audit log."""
    parsed = parse_model_ref(ref)
    whole = parsed.version is None and parsed.alias is None
    with open_store() as store:
        versions = store.list_model_versions(parsed.name) if whole else [parsed.resolve(store)]
        audit = store.audit_log(parsed.name)
        if as_json:
            shown = (
                {"versions": [asdict(v) for v in versions]}
                if whole
                else {"version": asdict(versions[0])}
            )
            print_json({"name": parsed.name, **shown, "audit": [asdict(e) for e in audit]})
            return
        if whole:
            print_table(_versions_table(parsed.name, versions))
        else:
            _print_version(store, versions[0])
    print_table(_audit_table(audit))


def _versions_table(name: str, versions: list[ModelVersion]) -> Table:
    metrics = _metric_keys(versions)
    table = Table(
        Column("version", justify="right"),
        "run",
        "created",
        "aliases",
        *(Column(cell(m), justify="right") for m in metrics),
        title=Text(f"model {name}"),
        title_justify="left",
    )
    for v in versions:
        table.add_row(
            str(v.version),
            cell(v.run_id),
            local_time(v.created_at),
            cell(", ".join(v.aliases)),
            *(number(v.metrics[m]) if m in v.metrics else "-" for m in metrics),
        )
    return table


def _print_version(store: Store, mv: ModelVersion) -> None:
    print_details(
        "model",
        mv.ref,
        f"from run {mv.run_id or '-'}",
        [
            ("created", local_time(mv.created_at, seconds=True)),
            ("aliases", cell(", ".join(mv.aliases) or "-")),
            ("task", cell(mv.signature.get("task", "-"))),
        ],
    )
    inputs = mv.signature.get("inputs")
    if isinstance(inputs, list) and inputs:
        table = Table("input", "kind", "categories", title="signature", title_justify="left")
        for field in inputs:
            field = field if isinstance(field, dict) else {"name": field}
            categories = field.get("categories")
            table.add_row(
                cell(field.get("name")),
                cell(field.get("kind", "-")),
                cell(", ".join(map(str, categories)) if categories else "-"),
            )
        print_table(table)
    outputs = mv.signature.get("outputs")
    if isinstance(outputs, dict) and outputs:
        table = Table("output", "spec")
        for key, spec in outputs.items():
            table.add_row(cell(key), cell(json.dumps(spec)))
        print_table(table)
    if mv.metrics:
        table = Table("metric", Column("value", justify="right"), title="metrics")
        table.title_justify = "left"
        for key in sorted(mv.metrics):
            table.add_row(cell(key), number(mv.metrics[key]))
        print_table(table)
    table = Table("file", Column("size", justify="right"), title="files", title_justify="left")
    for file in mv.files:
        path = store.model_version_path(mv.name, mv.version, file)
        table.add_row(cell(file), human_size(path.stat().st_size) if path.is_file() else "missing")
    print_table(table)
    if mv.tags:
        table = Table("tag", "value", title="tags", title_justify="left")
        for key in sorted(mv.tags):
            table.add_row(cell(key), cell(mv.tags[key]))
        print_table(table)


@models_app.command("register")
def register_model(
    run_id: Annotated[str, typer.Argument(help="A finished run (see `danlu runs ls`).")],
    name: Annotated[str, typer.Argument(help="The model's name, e.g. digits.")],
    alias: Annotated[
        str | None, typer.Option("--alias", "-a", help="Also point this alias at the new version.")
    ] = None,
    project: Annotated[
        str | None,
        typer.Option(
            "--project",
            "-p",
            help="The project of a new model (default: default); an existing model keeps its own.",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Register a finished run's model as the next version of NAME."""
    from danlu.export import register_model as register_and_export
    from danlu.store import check_project

    with open_store() as store:
        known = any(m.name == name for m in store.list_models())
        where = store.model_project(name) if known else check_project(project or DEFAULT_PROJECT)
        who = allow(store, "register", where, subject=name)
        if alias is not None:
            allow(store, "alias", where, subject=name, alias=alias)
        mv = register_and_export(store, run_id, name, alias, actor=who.actor)
        if not known and where != store.model_project(name):
            store.set_model_project(name, where, actor=who.actor)
        aliases = f" (alias {', '.join(mv.aliases)})" if mv.aliases else ""
        out.print(Text(f"registered run {run_id} as model {mv.ref}{aliases}"))


@alias_app.command("set")
def set_alias(
    name: Annotated[str, typer.Argument(help="The model's name.")],
    alias: Annotated[str, typer.Argument(help="The alias, e.g. production.")],
    version: Annotated[int, typer.Argument(help="The version it points at.", min=1)],
) -> None:
    """Point ALIAS of model NAME at VERSION (moving it if it pointed elsewhere)."""
    with open_store() as store:
        who = allow(store, "alias", store.model_project(name), subject=name, alias=alias)
        store.set_alias(name, alias, version, actor=who.actor)
        out.print(Text(f"{name}@{alias} → version {version}"))


@alias_app.command("rm")
def remove_alias(
    name: Annotated[str, typer.Argument(help="The model's name.")],
    alias: Annotated[str, typer.Argument(help="The alias to remove.")],
) -> None:
    """Remove ALIAS from model NAME (the version itself stays)."""
    with open_store() as store:
        who = allow(store, "alias", store.model_project(name), subject=name, alias=alias)
        store.delete_alias(name, alias, actor=who.actor)
        out.print(Text(f"removed alias {name}@{alias}"))


@models_app.command("rm")
def remove_model(
    ref: Annotated[
        str, typer.Argument(help="NAME (every version) or NAME:VERSION.", metavar="MODEL")
    ],
    yes: YesOption = False,
) -> None:
    """Delete one version of a model, or the whole model with every version."""
    parsed = parse_model_ref(ref, allow_alias=False)
    with open_store() as store:
        who = allow(store, "delete", store.model_project(parsed.name), subject=parsed.name)
        if parsed.version is None:
            count = len(store.list_model_versions(parsed.name))
            what = f"model {parsed.name} with its {count} version{'s' if count != 1 else ''}"
        else:
            parsed.resolve(store)  # a clear error for a missing version before asking
            what = f"model version {parsed}"
        if not confirm_deletion(f"Delete {what}?", yes=yes, what=what):
            err.print("Nothing deleted.")
            raise typer.Exit(1)
        store.delete_model(parsed.name, parsed.version, actor=who.actor)
        out.print(Text(f"deleted {what}"))


@models_app.command("project")
def move_model(
    name: Annotated[str, typer.Argument(help="The model's name.")],
    project: Annotated[str, typer.Argument(help="The project it moves to.")],
) -> None:
    """Move model NAME to PROJECT (admin of both projects): who may change it follows."""
    with open_store() as store:
        store.get_model_version(name)  # a clear error for an unknown model
        who = allow(store, "alias", store.model_project(name), subject=name, project_to=project)
        allow(store, "alias", project, subject=name)
        store.set_model_project(name, project, actor=who.actor)
    out.print(Text(f"model {name} is now in project {project}"))


@models_app.command("verify")
def verify_model(
    ref: Annotated[str, typer.Argument(help="NAME, NAME:VERSION or NAME@ALIAS.", metavar="MODEL")],
    as_json: JsonOption = False,
) -> None:
    """Check a version's files against its signature: exit 1 naming every file that changed,
    went missing or was added after signing, and for an unsigned version."""
    from danlu.store import SignatureError, verify_version

    with open_store() as store:
        mv = parse_model_ref(ref).resolve(store)
        try:
            result = verify_version(store, mv)
        except SignatureError as exc:
            if not as_json:
                raise
            print_json({"ref": mv.ref, "ok": False, "error": str(exc), "files": {}})
            raise typer.Exit(1) from None
    if as_json:
        print_json({"ref": mv.ref, "ok": result.ok, **asdict(result)})
        if not result.ok:
            raise typer.Exit(1)
        return
    table = Table("file", "status", title=f"signature of {mv.ref}", title_justify="left")
    for file, status in result.files.items():
        table.add_row(cell(file), Text(status, style="green" if status == "ok" else "red"))
    print_table(table)
    result.raise_for_problems()
    out.print(
        Text(
            f"{mv.ref}: all {len(result.files)} files match the signature of key "
            f"{result.key_id} ({local_time(result.signed_at, seconds=True)})"
        )
    )
