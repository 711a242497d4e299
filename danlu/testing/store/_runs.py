"""The store contract for runs: creation and provenance, status and heartbeats, params, tags,
metrics, deletion, and the limits on keys every backend enforces."""

from __future__ import annotations

import math
import time
from pathlib import Path

import pytest

from danlu.errors import NotFoundError, StoreError
from danlu.store import (
    RUN_STATUSES,
    MetricPoint,
    Store,
    flatten_params,
    validate_run_id,
)
from danlu.testing.store._common import OpenStore, ids


class RunsConformance:
    """Runs, their params, tags and metrics, heartbeats and deletion."""

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
        assert sorted(ids(store.search_runs("experiment = 'new-exp'"))) == sorted([a.id, b.id])
        assert ids(store.search_runs("experiment = 'other'")) == [c.id]
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
        assert ids(store.search_runs("metrics.loss > 0")) == []
        assert ids(store.search_runs("metrics.loss < 0")) == []
        assert ids(store.search_runs("metrics.grad > 1e300")) == [run.id]

    def test_delete_metrics_after(self, store: Store) -> None:
        run = store.create_run(experiment="exp", name="r")
        store.log_metrics(
            run.id,
            [MetricPoint("loss", 1.0 / s, s) for s in range(1, 11)] + [MetricPoint("late", 1.0, 8)],
        )
        store.delete_metrics_after(run.id, 5)
        assert [p.step for p in store.metric_history(run.id)] == [1, 2, 3, 4, 5]
        assert store.get_run(run.id).metrics == {"loss": 1.0 / 5}  # "late" had no step <= 5
        assert ids(store.search_runs("metrics.loss = 0.2")) == [run.id]
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
        assert ids(fast.search_runs("status = 'interrupted'")) == [silent.id]

    def test_search_expires_silent_runs_too(self, open_store: OpenStore) -> None:
        fast = open_store(heartbeat_timeout=0.2)
        silent = fast.create_run(experiment="exp", name="silent")
        time.sleep(0.4)
        assert ids(fast.search_runs("status = 'interrupted'")) == [silent.id]
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
        # a 1 s timeout: a loaded machine may take more than 0.2 s from set_status to get_run
        fast = open_store(heartbeat_timeout=1.0)
        run = fast.create_run(experiment="exp", name="r")
        time.sleep(1.2)
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
        assert run.id not in ids(store.search_runs())
        assert ids(store.search_runs("params.p = 1")) == [keep.id]
        assert ids(store.search_runs("metrics.m = 1")) == [keep.id]
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

    # -- limits ------------------------------------------------------------------------------
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
