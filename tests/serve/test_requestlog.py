"""Sampled request logging: rows and predictions land in the store as CSV artifacts."""

from __future__ import annotations

import asyncio
import io

import pandas as pd
import pytest

from danlu.serve._requestlog import RequestLog
from danlu.store import SqlStore


def _logged(store: SqlStore, run_id: str) -> dict[str, pd.DataFrame]:
    return {
        a.name: pd.read_csv(io.BytesIO(store.artifact_path(run_id, a.name).read_bytes()))
        for a in store.list_artifacts(run_id)
        if a.name.startswith("requests/")
    }


def test_every_request_is_logged_with_its_predictions(tmp_path) -> None:
    rows = {"rows": [{"a": 1.0, "b": "x"}, {"a": 2.5, "b": "y"}]}
    columns = {"columns": {"a": [3.0], "b": ["z"]}}

    async def main() -> str:
        log = RequestLog(lambda: SqlStore(home=tmp_path), 1.0, ["m@production"], flush_rows=2)
        await log.start()
        assert log.record("m", 2, rows, ["no", "yes"])
        assert log.record("m", 2, columns, ["no"])
        assert log.record("m", 3, rows, ["yes", "yes"])
        await asyncio.sleep(0.1)  # the full buffer is written in the background
        await log.stop()
        assert log.logged == 5
        assert log.run_id is not None
        return log.run_id

    run_id = asyncio.run(main())
    store = SqlStore(home=tmp_path)
    run = store.get_run(run_id)
    assert (run.stage, run.status, run.tags["log_sample"]) == ("serve", "finished", "1")
    frames = _logged(store, run_id)
    v2 = pd.concat([f for name, f in sorted(frames.items()) if "-v2-" in name])
    assert v2.to_dict("records") == [
        {"a": 1.0, "b": "x", "prediction": "no"},
        {"a": 2.5, "b": "y", "prediction": "yes"},
        {"a": 3.0, "b": "z", "prediction": "no"},
    ]
    (v3,) = [f for name, f in frames.items() if "-v3-" in name]
    assert list(v3["prediction"]) == ["yes", "yes"]


def test_only_the_share_is_kept(tmp_path) -> None:
    async def main() -> int:
        log = RequestLog(lambda: SqlStore(home=tmp_path), 0.1, ["m"], seed=0)
        await log.start()
        kept = sum(log.record("m", 1, {"rows": [{"a": float(i)}]}, [0]) for i in range(2000))
        await log.stop()
        assert log.logged == kept
        return kept

    assert 140 <= asyncio.run(main()) <= 260


@pytest.mark.parametrize("share", [0.0, -0.1, 1.5])
def test_a_share_outside_0_1_is_refused(share: float) -> None:
    with pytest.raises(ValueError, match="share"):
        RequestLog(SqlStore, share, ["m"])
