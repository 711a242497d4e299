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


# client values a spreadsheet would run as formulas, and one that only looks like one
FORMULAS = ['=HYPERLINK("http://x","y")', "+1+2", "-x", "@SUM(1)", "\tTAB", "\rCR", "'=quoted"]


def _log_rows(tmp_path, rows: list[dict], predictions: list) -> tuple[bytes, pd.DataFrame]:
    """Log ``rows`` through a RequestLog; the CSV artifact's bytes, and the frame the store's
    restore reads back from it."""
    from danlu.store import csv_restore_frame

    async def main() -> str:
        log = RequestLog(lambda: SqlStore(home=tmp_path), 1.0, ["m"])
        await log.start()
        log.record("m", 1, {"rows": rows}, predictions)
        await log.stop()
        assert log.run_id is not None
        return log.run_id

    run_id = asyncio.run(main())
    store = SqlStore(home=tmp_path)
    (artifact,) = [a for a in store.list_artifacts(run_id) if a.name.startswith("requests/")]
    raw = store.artifact_path(run_id, artifact.name).read_bytes()
    return raw, csv_restore_frame(pd.read_csv(io.BytesIO(raw)))


def test_client_formulas_are_neutralised_and_read_back_as_sent(tmp_path) -> None:
    import csv

    rows = [{"a": float(i), "text": text} for i, text in enumerate(FORMULAS)]
    predictions = ["=cmd", *([["@a", "b"], []] * 3)]  # a label, and label sets (JSON text)
    raw, back = _log_rows(tmp_path, rows, predictions)
    cells = [cell for row in csv.reader(io.StringIO(raw.decode(), newline="")) for cell in row]
    assert not [c for c in cells if c.startswith(("=", "+", "-", "@", "\t", "\r"))], cells
    assert "'=HYPERLINK" in raw.decode() and "''=quoted" in raw.decode()
    assert list(back["text"]) == FORMULAS  # the exact values, CR and quote included
    assert list(back["prediction"]) == ["=cmd", *(['["@a", "b"]', "[]"] * 3)]
    assert list(back["a"]) == [float(i) for i in range(len(FORMULAS))]


def test_danlu_evaluate_reads_a_request_log_back_as_sent(tmp_path) -> None:
    """``danlu evaluate MODEL --data LOG.csv`` (its file reader) takes the quotes off again:
    the formula-like categories are the model's own, not unseen ones."""
    from types import SimpleNamespace

    import numpy as np

    from danlu.data import Preprocessor
    from danlu.evaluate._evaluator import _file_rows

    colours = ["=red", "-blue", "@green", "+x", "plain"]
    train = pd.DataFrame(
        {"size": [1.0, 2.0, 3.0, 4.0, 5.0], "colour": colours, "y": [0, 1] * 2 + [0]}
    )
    pre = Preprocessor(target="y", task="classification").fit(train)
    rows = [{"size": float(i), "colour": c} for i, c in enumerate(colours)]
    raw, _ = _log_rows(tmp_path, rows, [0] * len(rows))
    logged = pd.read_csv(io.BytesIO(raw)).drop(columns="prediction").assign(y=[0, 1, 0, 1, 0])
    path = tmp_path / "labelled.csv"  # the log with the true target added, as the docs say
    logged.to_csv(path, index=False)
    bundle = SimpleNamespace(schema=pre.schema_, preprocessor=pre)
    x, _, frame = _file_rows(path, bundle, [])  # type: ignore[arg-type]
    assert list(frame["colour"]) == colours
    np.testing.assert_array_equal(x, pre.transform(pd.DataFrame(rows)))
    assert (x[:, 1:].sum(axis=1) == 1).all()  # every colour known: one-hot, none unseen
