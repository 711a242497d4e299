"""The deployments half of :class:`~danlu.store.SqlStore`: the ``danlu serve`` processes that
run now (or ran), each a row it writes itself.

A server registers at start-up (its URL, host, port, pid and the model versions it serves),
refreshes ``heartbeat_at`` every few seconds (with the models it serves then: an admin may load
or reload some) and sets ``stopped_at`` on a clean shutdown. A process killed without warning
leaves its row behind with an old heartbeat: readers call it *stale* (:meth:`Deployment.status`).
The dashboard reads these rows and scrapes each live server's ``/metrics``.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from sqlalchemy import delete, insert, or_, select, update

from danlu.errors import ConfigError, NotFoundError
from danlu.store import _tables as t
from danlu.store._connection import SqlConnection

__all__ = [
    "DEPLOYMENT_STALE_S",
    "Deployment",
    "DeploymentModel",
    "SqlDeploymentsMixin",
    "check_deployment_url",
]

#: a server silent for longer than this is taken for gone (it heartbeats every ~10 s)
DEPLOYMENT_STALE_S = 30.0
_MAX_MODELS = 200
_ROLES = ("primary", "canary")


@dataclass(frozen=True)
class DeploymentModel:
    """One model version a server answers for: the name it is served under, the version, the
    registry reference (``wine:2``) and its role (``primary`` or ``canary``)."""

    name: str
    version: int
    ref: str
    role: str = "primary"


@dataclass(frozen=True)
class Deployment:
    """One ``danlu serve`` process, as it registered itself."""

    id: str
    url: str  # where its /metrics answers: http://127.0.0.1:8000
    host: str  # the machine it runs on
    port: int
    pid: int
    models: tuple[DeploymentModel, ...]
    started_at: float
    heartbeat_at: float
    stopped_at: float | None = None

    def status(self, now: float | None = None, stale_after_s: float = DEPLOYMENT_STALE_S) -> str:
        """``stopped`` (shut down cleanly), ``live`` (heartbeat within ``stale_after_s``) or
        ``stale`` (silent: killed, hung or cut off from the database).

        Example:
            >>> d = Deployment("a", "http://127.0.0.1:1", "h", 1, 1, (), 0.0, 100.0)
            >>> d.status(now=110.0), d.status(now=200.0)
            ('live', 'stale')
        """
        if self.stopped_at is not None:
            return "stopped"
        now = time.time() if now is None else now
        return "live" if now - self.heartbeat_at <= stale_after_s else "stale"


def check_deployment_url(url: object) -> str:
    """``url`` if it is an ``http(s)://host:port`` base URL (no path beyond ``/``, no query, no
    credentials); ConfigError otherwise.

    Example:
        >>> check_deployment_url("http://127.0.0.1:8000")
        'http://127.0.0.1:8000'
    """
    if not isinstance(url, str) or len(url) > 500:
        raise ConfigError(f"A deployment URL must be text of at most 500 characters; got {url!r}.")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        parts, port = None, None
    if (
        parts is None
        or parts.scheme not in ("http", "https")
        or not parts.hostname
        or port is None
        or parts.username is not None
        or parts.password is not None
        or parts.path not in ("", "/")
        or parts.query
        or parts.fragment
    ):
        raise ConfigError(
            f"A deployment URL must read http://HOST:PORT (or https://), nothing more; got "
            f"{url[:80]!r}. Set DANLU_SERVE_URL to the address clients reach the server at."
        )
    return url.rstrip("/")


def _models(models: Sequence[Mapping[str, Any] | DeploymentModel]) -> list[dict[str, Any]]:
    if isinstance(models, str | bytes) or not isinstance(models, Sequence):
        raise ConfigError(f"A deployment's models must be a list; got {type(models).__name__}.")
    if len(models) > _MAX_MODELS:
        raise ConfigError(f"A deployment lists at most {_MAX_MODELS} models; got {len(models)}.")
    out = []
    for i, m in enumerate(models):
        d = m.__dict__ if isinstance(m, DeploymentModel) else m
        try:
            name, ref, role = str(d["name"]), str(d["ref"]), str(d.get("role", "primary"))
            version = int(d["version"])
        except (KeyError, TypeError, ValueError):
            raise ConfigError(
                f"A deployment's models[{i}] needs name, version (an integer) and ref; got {d!r}."
            ) from None
        if role not in _ROLES or not name or len(name) > 200 or len(ref) > 300:
            raise ConfigError(
                f"A deployment's models[{i}] is malformed ({d!r}): a name of 1-200 characters, "
                f"a ref of at most 300 and a role among {', '.join(_ROLES)}."
            )
        out.append({"name": name, "version": version, "ref": ref, "role": role})
    return out


def _deployment(row: Any) -> Deployment:
    try:
        models = tuple(DeploymentModel(**m) for m in json.loads(row.models or "[]"))
    except (TypeError, ValueError):  # a row written by hand: show the server, not its models
        models = ()
    return Deployment(
        id=row.id,
        url=row.url,
        host=row.host,
        port=row.port,
        pid=row.pid,
        models=models,
        started_at=row.started_at,
        heartbeat_at=row.heartbeat_at,
        stopped_at=row.stopped_at,
    )


class SqlDeploymentsMixin(SqlConnection):
    """Deployment methods of the SQL store (mixed into ``SqlStore``)."""

    def register_deployment(
        self,
        *,
        url: str,
        host: str,
        port: int,
        pid: int,
        models: Sequence[Mapping[str, Any] | DeploymentModel],
    ) -> Deployment:
        """Record a server that has started: a new row, live from now.

        Raises ConfigError for a URL that is not ``http(s)://host:port``, a port outside
        1-65535 or a malformed models list.

        Example:
            >>> import tempfile
            >>> from danlu.store import SqlStore
            >>> store = SqlStore(home=tempfile.mkdtemp())
            >>> d = store.register_deployment(url="http://127.0.0.1:8000", host="h", port=8000,
            ...     pid=1, models=[{"name": "wine", "version": 2, "ref": "wine:2"}])
            >>> [x.models[0].ref for x in store.list_deployments()]
            ['wine:2']
        """
        url = check_deployment_url(url)
        if not isinstance(port, int) or not 0 < port < 65536:
            raise ConfigError(f"A deployment's port must be 1-65535; got {port!r}.")
        if not isinstance(host, str) or not 0 < len(host) <= 255:
            raise ConfigError(f"A deployment's host must be 1-255 characters; got {host!r}.")
        listed = json.dumps(_models(models))
        now = time.time()
        deployment_id = secrets.token_hex(8)
        with self._write() as conn:
            conn.execute(
                insert(t.deployments).values(
                    id=deployment_id,
                    url=url,
                    host=host,
                    port=port,
                    pid=int(pid),
                    models=listed,
                    started_at=now,
                    heartbeat_at=now,
                    stopped_at=None,
                )
            )
            row = conn.execute(
                select(t.deployments).where(t.deployments.c.id == deployment_id)
            ).one()
        return _deployment(row)

    def heartbeat_deployment(
        self,
        deployment_id: str,
        models: Sequence[Mapping[str, Any] | DeploymentModel] | None = None,
    ) -> None:
        """Refresh a server's heartbeat (and the models it serves now, when given). Raises
        NotFoundError for an unknown id (its row was pruned: register again)."""
        values: dict[str, Any] = {"heartbeat_at": time.time()}
        if models is not None:
            values["models"] = json.dumps(_models(models))
        with self._write() as conn:
            done = conn.execute(
                update(t.deployments).where(t.deployments.c.id == deployment_id).values(**values)
            )
            if done.rowcount == 0:
                raise NotFoundError(f"No deployment with id {str(deployment_id)[:40]!r}.")

    def stop_deployment(self, deployment_id: str) -> None:
        """Mark a server stopped (a clean shutdown). Stopping twice keeps the first time."""
        c = t.deployments.c
        with self._write() as conn:
            exists = conn.execute(select(c.id).where(c.id == deployment_id)).first()
            if exists is None:
                raise NotFoundError(f"No deployment with id {str(deployment_id)[:40]!r}.")
            conn.execute(
                update(t.deployments)
                .where(c.id == deployment_id, c.stopped_at.is_(None))
                .values(stopped_at=time.time())
            )

    def list_deployments(
        self, *, stopped_within_s: float | None = 86_400.0, limit: int = 200
    ) -> list[Deployment]:
        """Servers newest first: every one not stopped (live or stale) and those stopped within
        ``stopped_within_s`` seconds (None: all of them); at most ``limit``."""
        c = t.deployments.c
        query = select(t.deployments).order_by(c.started_at.desc(), c.id).limit(max(1, limit))
        if stopped_within_s is not None:
            since = time.time() - stopped_within_s
            query = query.where(or_(c.stopped_at.is_(None), c.stopped_at >= since))
        with self._read() as conn:
            rows = conn.execute(query).all()
        return [_deployment(r) for r in rows]

    def prune_deployments(self, *, older_than_s: float = 7 * 86_400.0) -> int:
        """Delete rows of servers stopped, or silent, for longer than ``older_than_s``; the
        number deleted."""
        c = t.deployments.c
        before = time.time() - older_than_s
        with self._write() as conn:
            done = conn.execute(
                delete(t.deployments).where(or_(c.stopped_at < before, c.heartbeat_at < before))
            )
        return int(done.rowcount or 0)
