"""Deployments in the store (SQLite, and PostgreSQL when DANLU_TEST_PG_URL is set): a server
registers, heartbeats, stops; readers tell live, stale and stopped apart; bad input is refused."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy import update

from danlu.errors import ConfigError, NotFoundError
from danlu.store import Deployment, DeploymentModel, SqlStore
from danlu.store import _tables as t

from .conftest import Database

WINE = {"name": "wine", "version": 2, "ref": "wine:2"}


@pytest.fixture
def store(fresh_db: Database) -> Iterator[SqlStore]:
    s = SqlStore(fresh_db.url, home=fresh_db.home)
    try:
        yield s
    finally:
        s.close()


def _register(store: SqlStore, port: int = 8000, **kw: object) -> Deployment:
    args: dict[str, object] = {
        "url": f"http://127.0.0.1:{port}",
        "host": "box",
        "port": port,
        "pid": 4242,
        "models": [WINE],
    }
    args.update(kw)
    return store.register_deployment(**args)  # type: ignore[arg-type]


def test_register_heartbeat_stop(store: SqlStore) -> None:
    d = _register(store)
    assert d.status() == "live" and d.stopped_at is None
    assert d.models == (DeploymentModel("wine", 2, "wine:2", "primary"),)
    [listed] = store.list_deployments()
    assert listed == d

    canary = {"name": "wine", "version": 3, "ref": "wine:3", "role": "canary"}
    store.heartbeat_deployment(d.id, [WINE, canary])
    [listed] = store.list_deployments()
    assert listed.heartbeat_at >= d.heartbeat_at
    assert [m.ref for m in listed.models] == ["wine:2", "wine:3"]
    assert listed.models[1].role == "canary"
    store.heartbeat_deployment(d.id)  # no models given: the list stays
    assert len(store.list_deployments()[0].models) == 2

    store.stop_deployment(d.id)
    [stopped] = store.list_deployments()
    assert stopped.status() == "stopped" and stopped.stopped_at is not None
    first = stopped.stopped_at
    store.stop_deployment(d.id)  # twice: the first time stays
    assert store.list_deployments()[0].stopped_at == first


def test_stale_and_old_stopped(store: SqlStore) -> None:
    live, silent, gone = _register(store, 8001), _register(store, 8002), _register(store, 8003)
    store.stop_deployment(gone.id)
    c = t.deployments.c
    with store.engine.begin() as conn:  # as if the process died a minute ago / stopped 2 days ago
        conn.execute(update(t.deployments).where(c.id == silent.id).values(heartbeat_at=1.0))
        conn.execute(update(t.deployments).where(c.id == gone.id).values(stopped_at=1.0))
    by_id = {d.id: d for d in store.list_deployments()}
    assert set(by_id) == {live.id, silent.id}  # the long-stopped one is left out
    assert by_id[live.id].status() == "live"
    assert by_id[silent.id].status() == "stale"
    assert len(store.list_deployments(stopped_within_s=None)) == 3
    assert [d.port for d in store.list_deployments()] == [8002, 8001]  # newest first
    assert store.prune_deployments(older_than_s=3600) == 2
    assert [d.id for d in store.list_deployments(stopped_within_s=None)] == [live.id]


def test_unknown_ids(store: SqlStore) -> None:
    with pytest.raises(NotFoundError, match="No deployment"):
        store.heartbeat_deployment("0123456789abcdef")
    with pytest.raises(NotFoundError, match="No deployment"):
        store.stop_deployment("nope")


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("url", "file:///etc/passwd", "http://HOST:PORT"),
        ("url", "http://127.0.0.1:8000/admin?x=1", "http://HOST:PORT"),
        ("url", "http://user:pw@127.0.0.1:8000", "http://HOST:PORT"),
        ("url", "http://127.0.0.1", "http://HOST:PORT"),
        ("port", 0, "1-65535"),
        ("host", "", "host"),
        ("models", "wine", "must be a list"),
        ("models", [{"name": "wine", "version": "two", "ref": "wine:2"}], r"models\[0\]"),
        ("models", [{**WINE, "role": "shadow"}], "role"),
    ],
)
def test_bad_input_is_refused(store: SqlStore, field: str, value: object, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        _register(store, **{field: value})
    assert store.list_deployments() == []
