"""The storage contract as a test suite: every :class:`~danlu.store.Store` backend runs it.

Subclass :class:`StoreConformance` in a test module and provide one fixture, ``open_store``: a
factory that opens a handle on the *same* fresh, empty database and home every time it is called
(``open_store(heartbeat_timeout=0.2)`` must honour the timeout). The suite derives its ``store``
fixture from it; a subclass may override ``store`` too.

Example:
    >>> # tests/store/test_my_store.py
    >>> # class TestMyStore(StoreConformance):
    >>> #     @pytest.fixture
    >>> #     def open_store(self, tmp_path):
    >>> #         return lambda **kw: MyStore(tmp_path, **kw)

This module imports pytest: it is imported only by tests, never by the library itself.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from danlu.errors import ConfigError, NotFoundError, StoreError
from danlu.store import (
    API_KEY_SCOPES,
    KEYS_AUDIT_SUBJECT,
    RUN_STATUSES,
    MetricPoint,
    Run,
    Store,
    atomic_write_bytes,
    flatten_params,
    validate_run_id,
)

__all__ = ["StoreConformance"]

OpenStore = Callable[..., Store]

# Five runs a..e (see ``StoreConformance.population``) and what each filter must find.
FILTER_CASES: list[tuple[str, str]] = [
    ("metrics.test_accuracy > 0.9", "ac"),
    ("metrics.test_accuracy >= 0.95", "ac"),
    ("metrics.test_accuracy < 0.9", "b"),
    ("metrics.test_accuracy <= 0.85", "b"),
    ("metrics.test_accuracy = 0.97", "c"),
    ("metrics.test_accuracy != 0.97", "ab"),
    ("metrics.missing > 0", ""),
    ("params.model.type = 'cnn'", "abe"),
    ("params.model.type != 'cnn'", "cd"),
    ("params.train.lr = 0.001", "ac"),
    ("params.train.lr = '0.1'", "e"),
    ("params.model.type like 'c%'", "abe"),
    ("tags.group = 'x'", "ac"),
    ("tags.group != 'x'", "be"),
    ("tags.group like '_'", "abce"),
    ("status = 'finished'", "ab"),
    ("status != 'running'", "abc"),
    ("stage = 'tune'", "c"),
    ("experiment = 'other'", "e"),
    ("name = 'digits-d'", "d"),
    ("name like 'digits-%'", "abcde"),
    ("name like '%-b'", "b"),
    ("metrics.test_accuracy > 0.9 and params.model.type = 'cnn'", "a"),
    ("params.model.type = 'cnn' and tags.group = 'x' and status = 'finished'", "a"),
    ("name = 'nobody'", ""),
]

# Sort orders and the resulting order of runs a..e.
ORDER_CASES: list[tuple[list[str], str]] = [
    (["metrics.test_accuracy"], "baced"),  # missing and NaN last; ties newest first
    (["-metrics.test_accuracy"], "cabed"),
    (["metrics.test_accuracy desc"], "cabed"),
    (["params.train.lr"], "cabed"),  # text order: '0.001' < '0.01' < '0.1'
    (["-params.train.lr"], "ebcad"),
    (["tags.group desc"], "ebcad"),
    (["name"], "abcde"),
    (["-name"], "edcba"),
    (["status", "-metrics.test_accuracy"], "cabed"),
    (["created_at asc"], "abcde"),
]

MEDIA_CASES: list[tuple[str, str | None, str]] = [
    ("model.safetensors", None, "application/vnd.safetensors"),
    ("model.onnx", None, "application/onnx"),
    ("recipe.yaml", None, "application/yaml"),
    ("log.jsonl", None, "application/jsonl"),
    ("report.html", None, "text/html"),
    ("blob.unknownext", None, "application/octet-stream"),
    ("notes.html", "text/plain", "text/plain"),
]


def _ids(runs: list[Run]) -> list[str]:
    return [r.id for r in runs]


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class StoreConformance:
    """What every backend must do. Subclasses provide the ``open_store`` fixture."""

    @pytest.fixture
    def open_store(self) -> OpenStore:
        raise NotImplementedError(
            "A StoreConformance subclass must provide the 'open_store' fixture: a factory that "
            "opens the same fresh store on each call and accepts heartbeat_timeout=."
        )

    @pytest.fixture
    def store(self, open_store: OpenStore) -> Store:
        return open_store()

    # -- runs ----------------------------------------------------------------------------------
    def test_create_run_starts_running(self, store: Store) -> None:
        before = time.time()
        run = store.create_run(experiment="exp", name="first")
        assert validate_run_id(run.id) == run.id
        assert (run.experiment, run.name, run.stage, run.status) == (
            "exp",
            "first",
            "train",
            "running",
        )
        assert before - 1 <= run.created_at <= time.time() + 1
        assert run.started_at is not None and run.heartbeat_at is not None
        assert run.ended_at is None and run.error is None and run.parent_id is None
        assert (run.params, run.metrics, run.tags, run.packages) == ({}, {}, {}, {})
        assert store.get_run(run.id) == run

    def test_create_run_records_provenance(self, store: Store) -> None:
        parent = store.create_run(experiment="exp", name="sweep", stage="tune")
        recipe = {"name": "digits", "model": {"type": "cnn", "channels": [8, 16]}, "seed": 0}
        run = store.create_run(
            experiment="exp",
            name="trial-1",
            stage="train",
            parent_id=parent.id,
            recipe=recipe,
            recipe_hash="ab" * 32,
            data_fingerprint="cd" * 32,
            git_commit="0123abcd",
            git_dirty=True,
            packages={"torch": "2.13.0", "danlu": "0.1.0"},
            host="node-1",
            tags={"owner": "ana", "priority": 3},  # type: ignore[dict-item]
        )
        got = store.get_run(run.id)
        assert got.parent_id == parent.id and got.stage == "train"
        assert got.recipe == recipe
        assert (got.recipe_hash, got.data_fingerprint) == ("ab" * 32, "cd" * 32)
        assert (got.git_commit, got.git_dirty, got.host) == ("0123abcd", True, "node-1")
        assert got.packages == {"torch": "2.13.0", "danlu": "0.1.0"}
        assert got.tags == {"owner": "ana", "priority": "3"}  # tag values are text
        clean = store.create_run(experiment="exp", name="clean", git_dirty=False)
        assert store.get_run(clean.id).git_dirty is False

    def test_run_ids_are_unique(self, store: Store) -> None:
        ids = {store.create_run(experiment="exp", name=f"r{i}").id for i in range(30)}
        assert len(ids) == 30

    def test_experiment_is_created_on_first_use(self, store: Store) -> None:
        a = store.create_run(experiment="new-exp", name="a")
        b = store.create_run(experiment="new-exp", name="b")
        c = store.create_run(experiment="other", name="c")
        assert sorted(_ids(store.search_runs("experiment = 'new-exp'"))) == sorted([a.id, b.id])
        assert _ids(store.search_runs("experiment = 'other'")) == [c.id]
        assert store.get_run(b.id).experiment == "new-exp"

    def test_unknown_parent_is_not_found(self, store: Store) -> None:
        with pytest.raises(NotFoundError, match="no-such-parent"):
            store.create_run(experiment="exp", name="x", parent_id="no-such-parent")
        assert store.search_runs() == []

    def test_unknown_run_is_not_found(self, store: Store) -> None:
        with pytest.raises(NotFoundError, match="20000101-000000-abcdef"):
            store.get_run("20000101-000000-abcdef")
        for call in (
            lambda: store.set_status("missing", "finished"),
            lambda: store.log_params("missing", {"a": 1}),
            lambda: store.log_metrics("missing", [MetricPoint("loss", 1.0)]),
            lambda: store.metric_history("missing"),
            lambda: store.delete_metrics_after("missing", 0),
            lambda: store.set_tags("missing", {"a": "b"}),
            lambda: store.delete_run("missing"),
            lambda: store.list_artifacts("missing"),
        ):
            with pytest.raises(NotFoundError, match="missing"):
                call()

    @pytest.mark.parametrize("status", ["finished", "failed", "interrupted"])
    def test_status_lifecycle(self, store: Store, status: str) -> None:
        run = store.create_run(experiment="exp", name="r")
        error = "boom" if status == "failed" else None
        store.set_status(run.id, status, error=error, data_fingerprint="f" * 64)
        ended = store.get_run(run.id)
        assert (ended.status, ended.error, ended.data_fingerprint) == (status, error, "f" * 64)
        assert ended.ended_at is not None and ended.started_at is not None
        assert ended.ended_at >= ended.started_at
        assert ended.duration is not None and ended.duration >= 0
        store.set_status(run.id, "running")  # resume
        resumed = store.get_run(run.id)
        assert (resumed.status, resumed.ended_at, resumed.error) == ("running", None, None)
        assert resumed.data_fingerprint == "f" * 64  # kept when not given

    def test_invalid_status_is_refused(self, store: Store) -> None:
        run = store.create_run(experiment="exp", name="r")
        with pytest.raises(ValueError, match="status must be one of"):
            store.set_status(run.id, "done")
        assert store.get_run(run.id).status == "running"
        assert set(RUN_STATUSES) == {"running", "finished", "failed", "interrupted", "pruned"}

    # -- params, tags --------------------------------------------------------------------------
    def test_params_are_text_and_json(self, store: Store) -> None:
        run = store.create_run(experiment="exp", name="r")
        tree = {
            "model": {"type": "cnn", "channels": [32, 64], "extra": {}},
            "train": {"optimizer": {"lr": 0.001}, "epochs": 30, "amp": True, "clip": None},
        }
        store.log_params(run.id, flatten_params(tree))
        assert store.get_run(run.id).params == {
            "model.type": "cnn",
            "model.channels": "[32, 64]",
            "model.extra": "{}",
            "train.optimizer.lr": "0.001",
            "train.epochs": "30",
            "train.amp": "true",
            "train.clip": "null",
        }
        store.log_params(run.id, {"train.epochs": 5, "new": "x"})  # overwrite one, add one
        params = store.get_run(run.id).params
        assert (params["train.epochs"], params["new"], params["model.type"]) == ("5", "x", "cnn")
        assert len(params) == 8
        store.log_params(run.id, {})
        assert store.get_run(run.id).params == params

    def test_tags_merge_and_overwrite(self, store: Store) -> None:
        run = store.create_run(experiment="exp", name="r", tags={"a": "1", "b": "2"})
        store.set_tags(run.id, {"b": "two", "c": "3"})
        store.set_tags(run.id, {})
        assert store.get_run(run.id).tags == {"a": "1", "b": "two", "c": "3"}

    # -- metrics -------------------------------------------------------------------------------
    def test_metric_history_order_and_fields(self, store: Store) -> None:
        run = store.create_run(experiment="exp", name="r")
        store.log_metrics(
            run.id,
            [
                MetricPoint("val_loss", 0.9, step=2, epoch=2, time=1000.5),
                MetricPoint("loss", 0.8, step=2, epoch=2, time=1000.5),
                MetricPoint("loss", 1.0, step=1, epoch=1, time=1000.0),
            ],
        )
        store.log_metrics(run.id, [MetricPoint("loss", 0.7, step=3)])
        history = store.metric_history(run.id)
        assert [(p.key, p.step, p.value, p.epoch) for p in history] == [
            ("loss", 1, 1.0, 1),
            ("loss", 2, 0.8, 2),
            ("loss", 3, 0.7, None),
            ("val_loss", 2, 0.9, 2),
        ]
        assert [p.time for p in history[:2]] == [1000.0, 1000.5]
        assert history[2].time > 1000.5  # time 0 means "now"
        assert [p.step for p in store.metric_history(run.id, "loss")] == [1, 2, 3]
        assert store.metric_history(run.id, "nothing") == []
        store.log_metrics(run.id, [])  # an empty batch is a no-op
        assert len(store.metric_history(run.id)) == 4

    def test_latest_metric_is_the_highest_step(self, store: Store) -> None:
        run = store.create_run(experiment="exp", name="r")
        store.log_metrics(run.id, [MetricPoint("acc", 0.5, 5), MetricPoint("acc", 0.1, 1)])
        assert store.get_run(run.id).metrics == {"acc": 0.5}
        store.log_metrics(run.id, [MetricPoint("acc", 0.3, 3)])  # an older step, logged late
        assert store.get_run(run.id).metrics == {"acc": 0.5}
        store.log_metrics(run.id, [MetricPoint("acc", 0.6, 5)])  # same step again: latest wins
        assert store.get_run(run.id).metrics == {"acc": 0.6}
        store.log_metrics(run.id, [MetricPoint("acc", 0.9, 6), MetricPoint("loss", 2.0, 0)])
        assert store.get_run(run.id).metrics == {"acc": 0.9, "loss": 2.0}

    def test_nan_and_inf_round_trip(self, store: Store) -> None:
        run = store.create_run(experiment="exp", name="r")
        points = [
            MetricPoint("loss", math.nan, 1),
            MetricPoint("grad", math.inf, 1),
            MetricPoint("low", -math.inf, 1),
        ]
        store.log_metrics(run.id, points)
        latest = store.get_run(run.id).metrics
        assert math.isnan(latest["loss"])
        assert (latest["grad"], latest["low"]) == (math.inf, -math.inf)
        values = {p.key: p.value for p in store.metric_history(run.id)}
        assert math.isnan(values["loss"]) and values["grad"] == math.inf
        assert _ids(store.search_runs("metrics.loss > 0")) == []
        assert _ids(store.search_runs("metrics.loss < 0")) == []
        assert _ids(store.search_runs("metrics.grad > 1e300")) == [run.id]

    def test_delete_metrics_after(self, store: Store) -> None:
        run = store.create_run(experiment="exp", name="r")
        store.log_metrics(
            run.id,
            [MetricPoint("loss", 1.0 / s, s) for s in range(1, 11)] + [MetricPoint("late", 1.0, 8)],
        )
        store.delete_metrics_after(run.id, 5)
        assert [p.step for p in store.metric_history(run.id)] == [1, 2, 3, 4, 5]
        assert store.get_run(run.id).metrics == {"loss": 1.0 / 5}  # "late" had no step <= 5
        assert _ids(store.search_runs("metrics.loss = 0.2")) == [run.id]
        store.log_metrics(run.id, [MetricPoint("loss", 0.01, 6)])  # the resumed run re-logs
        assert store.get_run(run.id).metrics == {"loss": 0.01}
        store.delete_metrics_after(run.id, 0)
        assert store.metric_history(run.id) == [] and store.get_run(run.id).metrics == {}

    def test_delete_metrics_after_keeps_highest_step_as_latest(self, store: Store) -> None:
        run = store.create_run(experiment="exp", name="r")
        store.log_metrics(run.id, [MetricPoint("acc", 0.9, 10)])
        store.log_metrics(run.id, [MetricPoint("acc", 0.4, 4)])  # an older step, logged late
        assert store.get_run(run.id).metrics == {"acc": 0.9}
        store.delete_metrics_after(run.id, 100)  # deletes nothing
        assert store.get_run(run.id).metrics == {"acc": 0.9}

    # -- search --------------------------------------------------------------------------------
    @pytest.fixture
    def population(self, store: Store) -> dict[str, str]:
        """Five runs, created in order a..e (so newest first is e..a)."""
        rows: dict[str, dict[str, Any]] = {
            "a": {"acc": 0.95, "type": "cnn", "lr": 0.001, "tag": "x", "status": "finished"},
            "b": {"acc": 0.85, "type": "cnn", "lr": 0.01, "tag": "y", "status": "finished"},
            "c": {"acc": 0.97, "type": "mlp", "lr": 0.001, "tag": "x", "status": "failed"},
            "d": {"acc": None, "type": "mlp", "lr": None, "tag": None, "status": "running"},
            "e": {"acc": math.nan, "type": "cnn", "lr": 0.1, "tag": "z", "status": "running"},
        }
        ids: dict[str, str] = {}
        for name, row in rows.items():
            run = store.create_run(
                experiment="sweep" if name != "e" else "other",
                name=f"digits-{name}",
                stage="tune" if name == "c" else "train",
            )
            ids[name] = run.id
            params: dict[str, Any] = {"model.type": row["type"]}
            if row["lr"] is not None:
                params["train.lr"] = row["lr"]
            store.log_params(run.id, params)
            if row["acc"] is not None:
                store.log_metrics(run.id, [MetricPoint("test_accuracy", row["acc"], 1)])
            if row["tag"] is not None:
                store.set_tags(run.id, {"group": row["tag"]})
            if row["status"] != "running":
                store.set_status(run.id, row["status"])
            time.sleep(0.002)  # distinct created_at
        return ids

    def test_search_filters(self, store: Store, population: dict[str, str]) -> None:
        wrong = {}
        for text, expected in FILTER_CASES:
            found = sorted(_ids(store.search_runs(text)))
            if found != sorted(population[c] for c in expected):
                names = {v: k for k, v in population.items()}
                wrong[text] = f"expected {expected!r}, got {''.join(names[i] for i in found)!r}"
        assert wrong == {}

    def test_search_by_id_parent_and_time(self, store: Store, population: dict[str, str]) -> None:
        child = store.create_run(experiment="sweep", name="child", parent_id=population["a"])
        assert _ids(store.search_runs(f"run_id = '{population['b']}'")) == [population["b"]]
        assert _ids(store.search_runs(f"parent_id = '{population['a']}'")) == [child.id]
        cutoff = store.get_run(population["c"]).created_at
        newer = store.search_runs(f"created_at > {cutoff!r}")
        assert sorted(_ids(newer)) == sorted([population["d"], population["e"], child.id])

    def test_search_returns_full_runs(self, store: Store, population: dict[str, str]) -> None:
        (run,) = store.search_runs("name = 'digits-a'")
        assert run == store.get_run(population["a"])
        assert run.params == {"model.type": "cnn", "train.lr": "0.001"}
        assert run.metrics == {"test_accuracy": 0.95} and run.tags == {"group": "x"}

    def test_search_default_order_is_newest_first(
        self, store: Store, population: dict[str, str]
    ) -> None:
        assert _ids(store.search_runs()) == [population[c] for c in "edcba"]

    def test_search_order(self, store: Store, population: dict[str, str]) -> None:
        names = {v: k for k, v in population.items()}
        got = {
            " ".join(order_by): "".join(
                names[i] for i in _ids(store.search_runs(order_by=order_by))
            )
            for order_by, _ in ORDER_CASES
        }
        assert got == {" ".join(order_by): expected for order_by, expected in ORDER_CASES}

    def test_search_limit_and_offset(self, store: Store, population: dict[str, str]) -> None:
        everything = _ids(store.search_runs(order_by=["name"]))
        pages = [
            _ids(store.search_runs(order_by=["name"], limit=2, offset=o)) for o in (0, 2, 4, 6)
        ]
        assert [len(p) for p in pages] == [2, 2, 1, 0]
        assert sum(pages, []) == everything
        assert _ids(store.search_runs("params.model.type = 'cnn'", limit=1)) == [population["e"]]

    def test_bad_filters_raise(self, store: Store, population: dict[str, str]) -> None:
        for text in (
            "metrics.test_accuracy >",
            "bogus = 1",
            "name = 'a' or name = 'b'",
            "metrics.test_accuracy > 'high'",
            "tags.group > 'x'",
        ):
            with pytest.raises((ConfigError, StoreError)):
                store.search_runs(text)

    def test_filter_value_of_the_wrong_type_is_a_config_error(
        self, store: Store, population: dict[str, str]
    ) -> None:
        for text in ("status = 5", "created_at > 'yesterday'", "created_at like '1%'"):
            with pytest.raises(ConfigError):
                store.search_runs(text)

    def test_like_ignores_case(self, store: Store, population: dict[str, str]) -> None:
        assert len(store.search_runs("name like 'DIGITS-%'")) == 5
        assert len(store.search_runs("params.model.type like 'CNN'")) == 3

    def test_bad_order_raises(self, store: Store) -> None:
        with pytest.raises(ConfigError):
            store.search_runs(order_by=["metrics.acc sideways"])
        with pytest.raises(ConfigError):
            store.search_runs(order_by=["runs.id"])

    # -- heartbeats ----------------------------------------------------------------------------
    def test_silent_run_is_interrupted(self, open_store: OpenStore) -> None:
        fast = open_store(heartbeat_timeout=0.2)
        silent = fast.create_run(experiment="exp", name="silent")
        done = fast.create_run(experiment="exp", name="done")
        fast.set_status(done.id, "finished")
        time.sleep(0.4)
        got = fast.get_run(silent.id)
        assert got.status == "interrupted"
        assert got.ended_at is not None and got.error and "heartbeat" in got.error
        assert fast.get_run(done.id).status == "finished"  # only running runs expire
        assert _ids(fast.search_runs("status = 'interrupted'")) == [silent.id]

    def test_search_expires_silent_runs_too(self, open_store: OpenStore) -> None:
        fast = open_store(heartbeat_timeout=0.2)
        silent = fast.create_run(experiment="exp", name="silent")
        time.sleep(0.4)
        assert _ids(fast.search_runs("status = 'interrupted'")) == [silent.id]
        assert fast.search_runs("status = 'running'") == []

    def test_heartbeating_run_stays_running(self, open_store: OpenStore) -> None:
        fast = open_store(heartbeat_timeout=0.2)
        alive = fast.create_run(experiment="exp", name="alive")
        silent = fast.create_run(experiment="exp", name="silent")
        for _ in range(10):  # 0.5 s in all: well past the timeout
            time.sleep(0.05)
            fast.heartbeat(alive.id)
            assert fast.get_run(alive.id).status == "running"
        assert fast.get_run(silent.id).status == "interrupted"

    def test_set_status_running_revives(self, open_store: OpenStore) -> None:
        fast = open_store(heartbeat_timeout=0.2)
        run = fast.create_run(experiment="exp", name="r")
        time.sleep(0.4)
        assert fast.get_run(run.id).status == "interrupted"
        fast.set_status(run.id, "running")
        revived = fast.get_run(run.id)
        assert (revived.status, revived.ended_at, revived.error) == ("running", None, None)

    def test_default_timeout_keeps_runs_running(self, store: Store) -> None:
        run = store.create_run(experiment="exp", name="r")
        time.sleep(0.3)
        assert store.get_run(run.id).status == "running"

    # -- delete_run ----------------------------------------------------------------------------
    def test_delete_run_removes_rows_and_files(self, store: Store) -> None:
        run = store.create_run(experiment="exp", name="doomed", tags={"a": "b"})
        keep = store.create_run(experiment="exp", name="keep")
        child = store.create_run(experiment="exp", name="child", parent_id=run.id)
        for r in (run, keep):
            store.log_params(r.id, {"p": 1})
            store.log_metrics(r.id, [MetricPoint("m", 1.0, 1)])
            store.log_artifact(r.id, "plots/a.txt", b"data")
        version = store.create_model_version(
            "made-by-doomed", run_id=run.id, files={"w.bin": b"w"}, signature={}, metrics={}
        )
        folder = store.artifact_path(run.id, "plots/a.txt").parent.parent
        assert folder.is_dir()
        store.delete_run(run.id)
        assert not folder.exists()
        with pytest.raises(NotFoundError):
            store.get_run(run.id)
        with pytest.raises(NotFoundError):
            store.metric_history(run.id)
        with pytest.raises(NotFoundError):
            store.list_artifacts(run.id)
        assert run.id not in _ids(store.search_runs())
        assert _ids(store.search_runs("params.p = 1")) == [keep.id]
        assert _ids(store.search_runs("metrics.m = 1")) == [keep.id]
        assert store.search_runs("tags.a = 'b'") == []
        assert store.get_run(child.id).parent_id is None  # the child outlives its parent
        assert store.metric_history(keep.id) != []
        assert store.artifact_path(keep.id, "plots/a.txt").read_bytes() == b"data"
        kept = store.get_model_version("made-by-doomed", version.version)
        assert kept.run_id is None  # a registered model outlives the run that made it
        assert store.model_version_path("made-by-doomed", 1, "w.bin").read_bytes() == b"w"

    def test_delete_run_with_a_linked_folder_deletes_nothing(
        self, store: Store, tmp_path: Path
    ) -> None:
        run = store.create_run(experiment="exp", name="linked")
        store.log_params(run.id, {"p": 1})
        store.log_artifact(run.id, "a.txt", b"data")
        folder = store.artifact_path(run.id, "a.txt").parent
        outside = tmp_path / "outside"
        folder.rename(outside)  # the run's files now live outside the store, behind a link
        folder.symlink_to(outside, target_is_directory=True)
        with pytest.raises(StoreError, match="symbolic link.*nothing was deleted"):
            store.delete_run(run.id)
        assert store.get_run(run.id).params == {"p": "1"}  # the rows are all there
        assert [a.name for a in store.list_artifacts(run.id)] == ["a.txt"]
        assert folder.is_symlink() and (outside / "a.txt").read_bytes() == b"data"
        folder.unlink()  # the fix the message asks for, then deleting works
        folder.mkdir()
        store.delete_run(run.id)
        with pytest.raises(NotFoundError):
            store.get_run(run.id)
        assert (outside / "a.txt").read_bytes() == b"data"  # never followed

    def test_delete_model_with_a_linked_folder_deletes_nothing(
        self, store: Store, tmp_path: Path
    ) -> None:
        store.create_model_version(
            "linked", run_id=None, files={"w.bin": b"w"}, signature={}, metrics={}
        )
        folder = store.model_version_path("linked", 1, "w.bin").parent
        outside = tmp_path / "outside"
        folder.rename(outside)
        folder.symlink_to(outside, target_is_directory=True)
        with pytest.raises(StoreError, match="symbolic link.*nothing was deleted"):
            store.delete_model("linked", 1)
        assert store.get_model_version("linked", 1).files == ("w.bin",)
        assert (outside / "w.bin").read_bytes() == b"w"
        store.delete_model("linked")  # its folder is real: the link in it goes, not its target
        assert not folder.is_symlink() and not folder.parent.exists()
        assert (outside / "w.bin").read_bytes() == b"w"  # and what it points at stays

    # -- artifacts -----------------------------------------------------------------------------
    def test_log_artifact(self, store: Store) -> None:
        run = store.create_run(experiment="exp", name="r")
        data = b'{"accuracy": 0.97}'
        artifact = store.log_artifact(run.id, "reports/metrics.json", data)
        assert (artifact.run_id, artifact.name, artifact.size) == (
            run.id,
            "reports/metrics.json",
            len(data),
        )
        assert (artifact.sha256, artifact.media_type) == (_sha(data), "application/json")
        path = store.artifact_path(run.id, "reports/metrics.json")
        assert path.read_bytes() == data
        assert store.list_artifacts(run.id) == [artifact]
        empty = store.log_artifact(run.id, "empty.bin", b"")
        assert (empty.size, empty.sha256) == (0, _sha(b""))
        assert [a.name for a in store.list_artifacts(run.id)] == [
            "empty.bin",
            "reports/metrics.json",
        ]

    def test_artifact_media_types(self, store: Store) -> None:
        run = store.create_run(experiment="exp", name="r")
        got = {
            (name, given): store.log_artifact(run.id, name, b"x", media_type=given).media_type
            for name, given, _ in MEDIA_CASES
        }
        assert got == {(name, given): media for name, given, media in MEDIA_CASES}

    def test_artifact_overwrite(self, store: Store) -> None:
        run = store.create_run(experiment="exp", name="r")
        store.log_artifact(run.id, "weights.bin", b"old")
        new = store.log_artifact(run.id, "weights.bin", b"newer")
        assert store.list_artifacts(run.id) == [new]
        assert (new.size, new.sha256) == (5, _sha(b"newer"))
        assert store.artifact_path(run.id, "weights.bin").read_bytes() == b"newer"
        folder = store.artifact_path(run.id, "weights.bin").parent
        assert sorted(p.name for p in folder.iterdir()) == ["weights.bin"]  # no temp files

    def test_record_artifact(self, store: Store) -> None:
        run = store.create_run(experiment="exp", name="r")
        path = store.artifact_path(run.id, "ckpt/last.safetensors")
        assert not path.exists()  # artifact_path does not create anything
        atomic_write_bytes(path, b"\x00" * 1000)
        artifact = store.record_artifact(run.id, "ckpt/last.safetensors")
        assert (artifact.size, artifact.sha256) == (1000, _sha(b"\x00" * 1000))
        assert artifact.media_type == "application/vnd.safetensors"
        atomic_write_bytes(path, b"\x01" * 10)  # rewritten by the stage, recorded again
        again = store.record_artifact(run.id, "ckpt/last.safetensors", media_type="x/y")
        assert (again.size, again.media_type) == (10, "x/y")
        assert store.list_artifacts(run.id) == [again]
        with pytest.raises(NotFoundError, match="never-written"):
            store.record_artifact(run.id, "never-written.bin")

    def test_artifact_of_unknown_run(self, store: Store) -> None:
        path = store.artifact_path("20000101-000000-abcdef", "a.txt")
        with pytest.raises(NotFoundError):
            store.log_artifact("20000101-000000-abcdef", "a.txt", b"x")
        assert not path.exists() and not path.parent.exists()

    # -- model registry ------------------------------------------------------------------------
    def _register(self, store: Store, name: str = "digits", n: int = 1, **kw: Any) -> list[int]:
        versions = []
        for i in range(n):
            version = store.create_model_version(
                name,
                run_id=kw.get("run_id"),
                files={"model.safetensors": f"weights-{i}".encode(), "card/README.md": b"card"},
                signature={"inputs": [{"name": "x", "shape": [-1, 64]}]},
                metrics={"accuracy": 0.9 + i / 100},
                tags={"i": str(i)},
                actor=kw.get("actor", "danlu"),
            )
            versions.append(version.version)
        return versions

    def test_versions_increment_and_files_land(self, store: Store) -> None:
        run = store.create_run(experiment="exp", name="r")
        assert self._register(store, n=3, run_id=run.id) == [1, 2, 3]
        v2 = store.get_model_version("digits", 2)
        assert (v2.name, v2.version, v2.run_id, v2.ref) == ("digits", 2, run.id, "digits:2")
        assert v2.files == ("card/README.md", "model.safetensors")
        assert v2.signature == {"inputs": [{"name": "x", "shape": [-1, 64]}]}
        assert (v2.metrics, v2.tags, v2.aliases) == ({"accuracy": 0.91}, {"i": "1"}, ())
        for version in (1, 2, 3):
            weights = store.model_version_path("digits", version, "model.safetensors")
            assert weights.read_bytes() == f"weights-{version - 1}".encode()
            assert store.model_version_path("digits", version, "card/README.md").is_file()
        assert store.get_model_version("digits").version == 3  # latest
        assert [v.version for v in store.list_model_versions("digits")] == [1, 2, 3]
        self._register(store, name="other")
        models = store.list_models()
        assert [(m.name, m.latest_version) for m in models] == [("digits", 3), ("other", 1)]

    def test_aliases_set_move_delete(self, store: Store) -> None:
        self._register(store, n=3)
        store.set_alias("digits", "staging", 1)
        store.set_alias("digits", "production", 1)
        assert store.get_model_version("digits", alias="staging").version == 1
        assert store.get_model_version("digits", 1).aliases == ("production", "staging")
        store.set_alias("digits", "staging", 2)  # move
        assert store.get_model_version("digits", alias="staging").version == 2
        assert store.get_model_version("digits", 1).aliases == ("production",)
        assert store.list_models()[0].aliases == {"production": 1, "staging": 2}
        store.delete_alias("digits", "staging")
        with pytest.raises(NotFoundError, match="staging"):
            store.get_model_version("digits", alias="staging")
        assert store.list_models()[0].aliases == {"production": 1}
        with pytest.raises(NotFoundError):
            store.delete_alias("digits", "staging")

    def test_alias_errors(self, store: Store) -> None:
        self._register(store)
        with pytest.raises(StoreError, match="version number"):
            store.set_alias("digits", "2", 1)
        with pytest.raises(NotFoundError, match="version 9"):
            store.set_alias("digits", "staging", 9)
        with pytest.raises(StoreError):
            store.set_alias("digits", "../prod", 1)
        with pytest.raises(NotFoundError):
            store.set_alias("nomodel", "staging", 1)
        assert store.list_models()[0].aliases == {}

    def test_not_found_messages(self, store: Store) -> None:
        self._register(store, n=2)
        store.set_alias("digits", "staging", 1)
        with pytest.raises(NotFoundError, match=r"No registered model 'digit'.*'digits'"):
            store.get_model_version("digit")
        with pytest.raises(NotFoundError, match=r"no alias 'stagin'.*'staging'"):
            store.get_model_version("digits", alias="stagin")
        with pytest.raises(NotFoundError, match="no version 7"):
            store.get_model_version("digits", 7)
        with pytest.raises(NotFoundError, match="digit"):
            store.list_model_versions("digit")
        with pytest.raises(NotFoundError):
            store.delete_model("digits", 7)
        with pytest.raises(NotFoundError):
            store.delete_model("digit")

    def test_resolve_reads_every_form_of_reference(self, store: Store) -> None:
        self._register(store, n=3)
        store.set_alias("digits", "staging", 2)
        assert store.resolve("digits") == store.get_model_version("digits")  # the latest
        assert store.resolve("digits:1") == store.get_model_version("digits", 1)
        assert store.resolve("digits@staging") == store.get_model_version("digits", 2)

    def test_resolve_gives_the_same_errors_for_a_bad_reference(self, store: Store) -> None:
        self._register(store, n=2)
        store.set_alias("digits", "staging", 1)
        for bad in ("", "digits:x", "digits@", "digits:1@staging", "../digits", "digits:-1"):
            with pytest.raises(ConfigError, match="not a model reference.*NAME@ALIAS"):
                store.resolve(bad)
        with pytest.raises(NotFoundError, match=r"No registered model 'digit'.*'digits'"):
            store.resolve("digit")
        with pytest.raises(NotFoundError, match=r"no alias 'stagin'.*'staging'"):
            store.resolve("digits@stagin")
        with pytest.raises(NotFoundError, match="no version 7"):
            store.resolve("digits:7")

    def test_model_reader_reads_a_versions_files(self, store: Store) -> None:
        self._register(store, n=2)
        read = store.model_reader(store.resolve("digits:1"))
        assert read("model.safetensors") == b"weights-0"
        assert read("card/README.md") == b"card"
        assert read("missing.json") is None
        with pytest.raises(StoreError):
            read("../2/model.safetensors")  # names are validated, never followed out

    def test_run_reader_reads_a_runs_artifacts(self, store: Store) -> None:
        run = store.create_run(experiment="exp", name="r")
        store.log_artifact(run.id, "ckpt/model.safetensors", b"weights")
        read = store.run_reader(run.id)
        assert read("ckpt/model.safetensors") == b"weights"
        assert read("missing.json") is None
        with pytest.raises(StoreError):
            read("/etc/passwd")

    def test_register_with_unknown_run_creates_nothing(self, store: Store) -> None:
        with pytest.raises(NotFoundError):
            store.create_model_version(
                "digits", run_id="nope", files={"w.bin": b"w"}, signature={}, metrics={}
            )
        assert store.list_models() == [] and store.audit_log() == []
        assert not store.model_version_path("digits", 1, "w.bin").parent.exists()

    def test_attach_files_adds_reports_but_never_replaces_weights(self, store: Store) -> None:
        self._register(store, n=2)
        mv = store.attach_model_files("digits", 1, {"report.html": b"<html>", "report.json": b"{}"})
        assert mv.files == ("card/README.md", "model.safetensors", "report.html", "report.json")
        assert store.model_version_path("digits", 1, "report.html").read_bytes() == b"<html>"
        store.attach_model_files("digits", 1, {"report.html": b"<html>2"})  # a newer report
        assert store.model_version_path("digits", 1, "report.html").read_bytes() == b"<html>2"
        assert store.get_model_version("digits", 1).files == mv.files
        assert store.get_model_version("digits", 2).files == ("card/README.md", "model.safetensors")
        with pytest.raises(StoreError, match="model.safetensors"):
            store.attach_model_files("digits", 1, {"model.safetensors": b"evil"})
        with pytest.raises(StoreError):
            store.attach_model_files("digits", 1, {"../escape.html": b""})
        with pytest.raises(NotFoundError):
            store.attach_model_files("digits", 9, {"report.html": b""})
        weights = store.model_version_path("digits", 1, "model.safetensors")
        assert weights.read_bytes() == b"weights-0"
        assert store.audit_log("digits")[-1].action == "attach_files"

    def test_register_with_invalid_names_creates_nothing(self, store: Store) -> None:
        for name, files in (("../evil", {"w.bin": b""}), ("digits", {"../w.bin": b""})):
            with pytest.raises(StoreError):
                store.create_model_version(name, run_id=None, files=files, signature={}, metrics={})
        assert store.list_models() == []

    def test_delete_version(self, store: Store) -> None:
        self._register(store, n=3)
        store.set_alias("digits", "staging", 3)
        path3 = store.model_version_path("digits", 3, "model.safetensors")
        store.delete_model("digits", 3)
        assert not path3.exists() and not path3.parent.exists()
        assert store.get_model_version("digits").version == 2
        assert store.get_model_version("digits", 1).aliases == ()
        assert store.list_models()[0].aliases == {}  # the alias went with its version
        assert [v.version for v in store.list_model_versions("digits")] == [1, 2]
        assert store.model_version_path("digits", 2, "model.safetensors").is_file()
        with pytest.raises(NotFoundError):
            store.get_model_version("digits", 3)

    def test_delete_whole_model(self, store: Store) -> None:
        self._register(store, n=2)
        self._register(store, name="other")
        root = store.model_version_path("digits", 1, "model.safetensors").parent.parent
        assert root.is_dir()
        store.delete_model("digits")
        assert not root.exists()
        assert [m.name for m in store.list_models()] == ["other"]
        with pytest.raises(NotFoundError):
            store.get_model_version("digits")
        assert store.model_version_path("other", 1, "model.safetensors").is_file()
        assert self._register(store) == [1]  # the name can be registered afresh

    def test_deleted_version_numbers_are_never_reused(self, store: Store) -> None:
        assert self._register(store, n=3) == [1, 2, 3]
        store.delete_model("digits", 3)
        store.delete_model("digits", 2)
        assert self._register(store) == [4]  # "digits:3" never names other weights
        assert [v.version for v in store.list_model_versions("digits")] == [1, 4]

    def test_model_without_versions_lists_none(self, store: Store) -> None:
        self._register(store)
        store.delete_model("digits", 1)
        assert [(m.name, m.latest_version) for m in store.list_models()] == [("digits", 0)]
        assert store.list_model_versions("digits") == []

    def test_audit_log_is_append_only_and_ordered(self, store: Store) -> None:
        self._register(store, n=2, actor="ana")
        self._register(store, name="other", actor="bo")
        store.set_alias("digits", "staging", 1, actor="ana")
        store.set_alias("digits", "staging", 2, actor="ana")
        snapshot = store.audit_log()
        store.delete_alias("digits", "staging", actor="cy")
        store.delete_model("digits", 1, actor="cy")
        store.delete_model("digits", actor="cy")
        log = store.audit_log()
        assert log[: len(snapshot)] == snapshot  # earlier entries never change
        assert [(e.action, e.model, e.version, e.actor) for e in log] == [
            ("create_model", "digits", None, "ana"),
            ("create_version", "digits", 1, "ana"),
            ("create_version", "digits", 2, "ana"),
            ("create_model", "other", None, "bo"),
            ("create_version", "other", 1, "bo"),
            ("set_alias", "digits", 1, "ana"),
            ("set_alias", "digits", 2, "ana"),
            ("delete_alias", "digits", 2, "cy"),
            ("delete_version", "digits", 1, "cy"),
            ("delete_model", "digits", None, "cy"),
        ]
        assert [e.id for e in log] == sorted({e.id for e in log})
        assert [e.time for e in log] == sorted(e.time for e in log)
        assert log[6].detail == {"alias": "staging", "previous": 1}
        assert log[5].detail == {"alias": "staging", "previous": None}
        assert [e.model for e in store.audit_log("other")] == ["other", "other"]
        assert store.audit_log("nobody") == []

    # -- API keys ------------------------------------------------------------------------------
    def test_api_key_create_verify_list(self, store: Store) -> None:
        before = time.time()
        key, secret = store.create_api_key("predict", name="web app", actor="ana")
        assert (key.name, key.scope, key.created_by) == ("web app", "predict", "ana")
        assert key.active and key.revoked_at is None and key.last_used_at is None
        assert before - 1 <= key.created_at <= time.time() + 1
        assert secret.startswith(f"dl_{key.id}_") and key.prefix == secret[:8]
        assert len(secret) - len(f"dl_{key.id}_") >= 43  # at least 32 random bytes, base64
        verified = store.verify_api_key(secret)
        assert verified is not None and verified.id == key.id and verified.scope == "predict"
        assert verified.last_used_at is not None and verified.active
        admin, admin_secret = store.create_api_key("admin")
        assert (admin.name, admin.created_by) == ("", "danlu")
        assert secret != admin_secret and key.id != admin.id
        listed = store.list_api_keys()
        assert [k.id for k in listed] == [key.id, admin.id]  # oldest first
        assert listed[0].last_used_at == verified.last_used_at
        assert all(secret not in repr(k) and admin_secret not in repr(k) for k in listed)

    def test_api_key_last_use_is_written_at_most_once_a_minute(
        self, store: Store, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        key, secret = store.create_api_key("predict")
        first = store.verify_api_key(secret)
        assert first is not None and first.last_used_at is not None
        for _ in range(3):  # within the minute: no write
            again = store.verify_api_key(secret)
            assert again is not None and again.last_used_at == first.last_used_at
        assert store.list_api_keys()[0].last_used_at == first.last_used_at
        later = time.time() + 61
        monkeypatch.setattr(time, "time", lambda: later)
        moved = store.verify_api_key(secret)
        assert moved is not None and moved.last_used_at == later
        assert store.list_api_keys()[0].last_used_at == later

    def test_api_key_wrong_and_malformed_secrets_are_refused_quietly(self, store: Store) -> None:
        key, secret = store.create_api_key("admin")
        random_part = secret[len(f"dl_{key.id}_") :]
        flipped = random_part[:-1] + ("A" if random_part[-1] != "A" else "B")
        other_id = "0123456789abcdef" if key.id != "0123456789abcdef" else "fedcba9876543210"
        bad: list[Any] = [
            "",
            "dl_",
            "dl__",
            f"dl_{key.id}",
            f"dl_{key.id}_",
            f"dl_{key.id}_{flipped}",  # wrong secret, right id
            f"dl_{other_id}_{random_part}",  # right random part, unknown id
            f"dl_{key.id.upper()}_{random_part}",
            secret + "x",
            secret[:-1],
            secret + "\n",
            " " + secret,
            secret.upper(),
            f"xx_{key.id}_{random_part}",
            secret[:-1] + "é",
            secret[:-1] + "\udcff",  # a lone surrogate cannot even be encoded
            secret[:-1] + "\x00",
            f"dl_{key.id}_" + "ü" * 43,
            "é" * 63,
            "x" * 1_000_000,
            secret + "x" * 100_000,
            f"dl_../../{key.id}_{random_part}",
            f"dl_{key.id}' OR '1'='1_{random_part}",
            None,
            b"bytes",
            12,
        ]
        for candidate in bad:
            assert store.verify_api_key(candidate) is None, repr(candidate)[:80]
        assert store.verify_api_key(secret) is not None  # the real one still works

    def test_api_key_revoke(self, open_store: OpenStore) -> None:
        store, other = open_store(), open_store()  # two handles on one database
        key, secret = store.create_api_key("predict")
        keep, keep_secret = store.create_api_key("predict")
        assert other.verify_api_key(secret) is not None
        revoked = store.revoke_api_key(key.id, actor="bo")
        assert revoked.id == key.id and not revoked.active and revoked.revoked_at is not None
        assert other.verify_api_key(secret) is None  # at once, in every process
        assert store.verify_api_key(secret) is None
        assert other.verify_api_key(keep_secret) is not None
        again = store.revoke_api_key(key.id)  # harmless, and the first revocation stands
        assert again.revoked_at == revoked.revoked_at
        assert [(k.id, k.active) for k in store.list_api_keys()] == [
            (key.id, False),
            (keep.id, True),
        ]
        for unknown in ("0123456789abcdef", "nope", "", "../x", "x" * 1000, key.id.upper()):
            if unknown == key.id:
                continue
            with pytest.raises(NotFoundError, match="danlu keys ls"):
                store.revoke_api_key(unknown)

    def test_has_api_keys_by_scope(self, store: Store) -> None:
        def state() -> tuple[bool, bool, bool]:
            return (
                store.has_api_keys(),
                store.has_api_keys("predict"),
                store.has_api_keys("admin"),
            )

        assert state() == (False, False, False)
        predict, _ = store.create_api_key("predict")
        assert state() == (True, True, False)
        admin, _ = store.create_api_key("admin")
        assert state() == (True, True, True)
        store.revoke_api_key(predict.id)
        assert state() == (True, True, True)  # an admin key may call predict routes too
        store.revoke_api_key(admin.id)
        assert state() == (False, False, False)  # revoked keys do not count

    def test_api_key_scope_is_validated(self, store: Store) -> None:
        for scope in ("read", "", "Admin", "predict,admin", None):
            with pytest.raises(ConfigError, match="predict, admin") as info:
                store.create_api_key(scope)  # type: ignore[arg-type]
            assert "predict, admin" in str(info.value)
        with pytest.raises(ConfigError, match="predict, admin"):
            store.has_api_keys("write")
        with pytest.raises(ConfigError):
            store.create_api_key("predict", name="n" * 300)
        assert store.list_api_keys() == [] and store.audit_log() == []
        assert API_KEY_SCOPES == ("predict", "admin")

    def test_api_key_changes_are_audited_without_secrets(self, store: Store) -> None:
        self._register(store)
        key, secret = store.create_api_key("admin", name="ops", actor="ana")
        store.revoke_api_key(key.id, actor="bo")
        keys_log = store.audit_log(KEYS_AUDIT_SUBJECT)
        assert [(e.action, e.model, e.version, e.actor) for e in keys_log] == [
            ("create_key", KEYS_AUDIT_SUBJECT, None, "ana"),
            ("revoke_key", KEYS_AUDIT_SUBJECT, None, "bo"),
        ]
        assert keys_log[0].detail == {"key": key.id, "scope": "admin", "name": "ops"}
        assert [e.model for e in store.audit_log("digits")] == ["digits", "digits"]
        assert len(store.audit_log()) == 4
        assert all(secret not in repr(e) for e in store.audit_log())

    def test_api_key_secret_is_never_stored(self, store: Store) -> None:
        """Read every table raw (SQL backends) and every file under the home folder: neither
        the secret nor its random part appears anywhere."""
        key, secret = store.create_api_key("predict", name="web")
        assert store.verify_api_key(secret) is not None
        store.revoke_api_key(key.id)
        random_part = secret[len(f"dl_{key.id}_") :]
        engine = getattr(store, "engine", None)
        if engine is not None:
            from sqlalchemy import MetaData, select

            tables = MetaData()
            tables.reflect(engine)
            cells: list[str] = []
            with engine.connect() as conn:
                for table in tables.sorted_tables:
                    for row in conn.execute(select(table)):
                        cells.extend(str(value) for value in row)
            assert any(key.id in c for c in cells)  # the dump is not vacuous
            assert not any(random_part in c or secret in c for c in cells)
        home = getattr(store, "home", None)
        if home is not None:
            for path in Path(home).rglob("*"):
                if path.is_file():
                    assert random_part.encode() not in path.read_bytes(), path

    # -- validation ----------------------------------------------------------------------------
    def test_paths_are_validated(self, store: Store) -> None:
        run = store.create_run(experiment="exp", name="r")
        for bad in ("../x", "/abs", "a\x00b", "x" * 300, "a/../../b", "%2e%2e%2fx"):
            calls: list[tuple[Callable[..., object], tuple[object, ...]]] = [
                (store.artifact_path, (run.id, bad)),
                (store.artifact_path, (bad, "a.txt")),
                (store.model_version_path, (bad, 1, "w.bin")),
                (store.model_version_path, ("digits", 1, bad)),
                (store.get_run, (bad,)),
            ]
            for method, args in calls:
                with pytest.raises(StoreError):
                    method(*args)

    def test_overlong_keys_are_refused_on_every_backend(self, store: Store) -> None:
        run = store.create_run(experiment="exp", name="r")
        for call in (
            lambda: store.create_run(experiment="exp", name="n" * 300),
            lambda: store.create_run(experiment="e" * 300, name="n"),
            lambda: store.log_metrics(run.id, [MetricPoint("k" * 300, 1.0)]),
            lambda: store.log_params(run.id, {"a" * 300: 1, "a" * 250 + "b": 2}),
            lambda: store.set_tags(run.id, {"t" * 300: "v"}),
        ):
            with pytest.raises(StoreError, match="longer than"):
                call()
        assert store.get_run(run.id).metrics == {} and store.get_run(run.id).params == {}
