"""The dashboard under load: a store of 10,000 runs x 20 params x 5 metrics x 100 steps.

The store is written straight into its tables (SQLite through sqlite3's executemany,
PostgreSQL through COPY: through the API it would take an hour), then ``danlu ui`` runs as a
real process (uvicorn on 127.0.0.1) over it, and this measures (medians of ``--reps`` timed
requests after one warm-up):

- the runs page's time to first byte (target <= 300 ms);
- the runs page fully rendered in headless Chromium (Debian's, through Playwright):
  ``page.goto`` until ``load`` and the table's rows present (target <= 1.5 s);
- a filter + sort request, whole response (target <= 300 ms);
- a run's detail page, whole response (target <= 500 ms), and its curves' JSON;
- a live curve: a running run open in the browser, the engine logs a new epoch (through the
  store, as the tracker does) and the page's chart shows it (target <= 2 s).

    python bench/ui_load.py [--pg-url postgresql+psycopg://danlu:danlu@127.0.0.1:5432/danlu_test]
        [--runs 10000] [--steps 100] [--reps 7] [--no-browser]

PostgreSQL is measured too when ``--pg-url`` or ``$DANLU_TEST_PG_URL`` gives a server (a fresh
database is created there and dropped afterwards). Results: bench/results/ui_load.{json,md}.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _report import write  # noqa: E402
from store_bench import fresh_database  # noqa: E402

from danlu.store import MetricPoint, SqlStore  # noqa: E402

TARGETS = {"ttfb": 0.3, "render": 1.5, "filter": 0.3, "detail": 0.5, "live": 2.0}
METRICS = ("train_loss", "val_loss", "train_accuracy", "val_accuracy", "lr")
FILTER = "metrics.val_accuracy > 0.9 and params.model.type = 'cnn'"
ORDER = "-metrics.val_accuracy"
N_PARAMS = 20


def _params(rng: random.Random, i: int) -> dict[str, str]:
    values = {
        "model.type": rng.choice(["cnn", "mlp", "transformer", "lstm"]),
        "model.hidden": rng.choice(["[64]", "[128, 64]", "[256, 128]"]),
        "model.dropout": str(rng.choice([0.0, 0.1, 0.25, 0.5])),
        "model.activation": rng.choice(["relu", "gelu", "silu"]),
        "model.norm": rng.choice(["batch", "layer", "none"]),
        "train.optimizer.name": rng.choice(["adamw", "sgd"]),
        "train.optimizer.lr": f"{10 ** rng.uniform(-4, -2):.6f}",
        "train.optimizer.weight_decay": str(rng.choice([0.0, 1e-4, 1e-2])),
        "train.batch_size": str(rng.choice([32, 64, 128])),
        "train.epochs": "100",
        "train.seed": str(i),
        "train.scheduler": rng.choice(["cosine", "step", "none"]),
        "train.early_stopping.patience": str(rng.choice([5, 10, 20])),
        "train.precision": rng.choice(["fp32", "bf16"]),
        "data.source": "builtin:digits",
        "data.split.test": "0.2",
        "data.split.val": "0.1",
        "data.augment": rng.choice(["true", "false"]),
        "evaluate.bootstrap": "200",
        "register.name": rng.choice(["digits", "wine", "cancer"]),
    }
    assert len(values) == N_PARAMS
    return values


def populate(store: SqlStore, runs: int, steps: int, seed: int = 0) -> dict[str, Any]:
    """``runs`` finished runs, N_PARAMS params each, METRICS logged at ``steps`` epochs each,
    written through the database driver in bulk. Returns counts and seconds."""
    from sqlalchemy import insert, text

    from danlu.store import _tables as t

    rng = random.Random(seed)
    start = time.perf_counter()
    now = time.time() - runs * 60
    with store.engine.begin() as conn:
        experiment = conn.execute(
            insert(t.experiments).values(name="bench-ui", created_at=now)
        ).inserted_primary_key[0]  # type: ignore[index]
    pg = store.engine.dialect.name == "postgresql"
    raw = store.engine.raw_connection()
    rows = {"runs": 0, "params": 0, "latest_metrics": 0, "metrics": 0}
    try:
        cur = raw.cursor()
        for chunk in range(0, runs, 500):
            run_rows, params, latest, history = [], [], [], []
            for i in range(chunk, min(chunk + 500, runs)):
                run_id = f"20261201-000000-{i:010x}"
                created = now + i * 60
                run_rows.append(
                    (run_id, experiment, f"trial-{i}", "train", "finished", created, created,
                     created + 55, created + 55, "{}")
                )  # fmt: skip
                params += [(run_id, k, v) for k, v in _params(rng, i).items()]
                final = rng.uniform(0.5, 1.0)
                rate = rng.uniform(0.02, 0.1)
                for step in range(steps):
                    progress = 1 - (1 - rate) ** (step + 1)
                    values = (
                        1.5 * (1 - progress) + 0.05,
                        1.6 * (1 - progress) + 0.1,
                        min(1.0, final * progress + 0.02),
                        final * progress,
                        1e-3 * (1 - step / steps),
                    )
                    history += [
                        (run_id, k, v, step, step, created + step * 0.5)
                        for k, v in zip(METRICS, values, strict=True)
                    ]
                latest += [(r[0], r[1], r[2], r[3], r[5]) for r in history[-len(METRICS) :]]
            _bulk(cur, pg, "runs",
                  ("id", "experiment_id", "name", "stage", "status", "created_at", "started_at",
                   "ended_at", "heartbeat_at", "packages"), run_rows)  # fmt: skip
            _bulk(cur, pg, "params", ("run_id", "key", "value"), params)
            _bulk(cur, pg, "latest_metrics", ("run_id", "key", "value", "step", "time"), latest)
            _bulk(cur, pg, "metrics", ("run_id", "key", "value", "step", "epoch", "time"), history)
            rows["runs"] += len(run_rows)
            rows["params"] += len(params)
            rows["latest_metrics"] += len(latest)
            rows["metrics"] += len(history)
        raw.commit()
    finally:
        raw.close()
    with store.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text("ANALYZE"))  # as autovacuum (PostgreSQL) would soon after a bulk load
    return {**rows, "seconds": time.perf_counter() - start}


def _bulk(
    cur: Any, pg: bool, table: str, columns: tuple[str, ...], rows: list[tuple[Any, ...]]
) -> None:
    if pg:  # COPY: ~10x faster than INSERT for millions of rows
        with cur.copy(f"COPY {table} ({', '.join(columns)}) FROM STDIN") as copy:
            for row in rows:
                copy.write_row(row)
    else:
        marks = ", ".join("?" * len(columns))
        cur.executemany(f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({marks})", rows)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Dashboard:
    """``danlu ui`` as a real process over the store at ``url``."""

    def __init__(self, url: str, home: str, log: Path) -> None:
        import httpx

        self.port = _free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "DANLU_DB_URL": url, "DANLU_HOME": home, "OMP_NUM_THREADS": "1"}
        self._log = log.open("wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "danlu", "ui", "--host", "127.0.0.1", "--port", str(self.port)],
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(self.base + "/healthz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"danlu ui did not start:\n{log.read_text()[-3000:]}")
            time.sleep(0.1)

    def close(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
        self._log.close()


def _timed(reps: int, once: Any) -> dict[str, Any]:
    once()  # warm-up
    times = [once() for _ in range(reps)]
    return {"seconds": times, "median_s": statistics.median(times)}


def ttfb(client: Any, path: str) -> float:
    """Seconds from sending the request to the response's first body byte."""
    start = time.perf_counter()
    with client.stream("GET", path) as response:
        assert response.status_code == 200, response.status_code
        chunks = response.iter_raw()
        next(chunks)
        first = time.perf_counter() - start
        for _ in chunks:
            pass
    return first


def whole(client: Any, path: str, must: str) -> float:
    start = time.perf_counter()
    response = client.get(path)
    seconds = time.perf_counter() - start
    assert response.status_code == 200 and must in response.text, (path, response.status_code)
    return seconds


def measure_http(base: str, run_id: str, reps: int) -> dict[str, Any]:
    import httpx

    with httpx.Client(base_url=base, timeout=30) as client:
        out = {
            "ttfb": _timed(reps, lambda: ttfb(client, "/")),
            "runs_page": _timed(reps, lambda: whole(client, "/", 'id="runs"')),
            "filter": _timed(
                reps,
                lambda: whole(
                    client,
                    "/?" + httpx.QueryParams({"filter": FILTER, "order": ORDER}).__str__(),
                    "<tbody>",
                ),
            ),
            "detail": _timed(reps, lambda: whole(client, f"/runs/{run_id}", 'id="curves"')),
            "detail_curves": _timed(
                reps, lambda: whole(client, f"/api/runs/{run_id}/metrics", "val_loss")
            ),
        }
        # the filter really narrowed and sorted the table
        page = client.get("/", params={"filter": FILTER, "order": ORDER}).text
        assert "trial-" in page and "filter-error" not in page
    return out


def _browser(playwright: Any) -> Any:
    return playwright.chromium.launch(
        executable_path=shutil.which("chromium"),
        headless=True,
        args=["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-dev-shm-usage"],
    )


def measure_browser(base: str, store: SqlStore, reps: int, steps: int) -> dict[str, Any]:
    from playwright.sync_api import sync_playwright

    out: dict[str, Any] = {}
    with sync_playwright() as p:
        browser = _browser(p)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})

            def render() -> float:
                start = time.perf_counter()
                page.goto(base + "/", wait_until="load")
                page.wait_for_selector("table#runs tbody tr")
                return time.perf_counter() - start

            out["render"] = _timed(reps, render)
            out["render"]["rows"] = page.locator("table#runs tbody tr").count()

            # a live run: open it, then log epochs as the engine does and time until they show
            run = store.create_run(experiment="bench-ui-live", name="live", stage="train")
            store.log_metrics(
                run.id,
                [
                    MetricPoint("train_loss", 1.0, step=0, epoch=0),
                    MetricPoint("val_loss", 1.1, step=0, epoch=0),
                ],
            )
            page.goto(f"{base}/runs/{run.id}", wait_until="load")
            box = page.locator('.chart[data-family="Losses"]')
            box.wait_for(state="attached")
            delays = []
            for epoch in range(1, reps + 2):
                time.sleep(random.uniform(0.1, 0.9))  # at any point of the page's polling cycle
                start = time.perf_counter()
                store.log_metrics(
                    run.id,
                    [MetricPoint("train_loss", 1.0 / (epoch + 1), step=epoch, epoch=epoch),
                     MetricPoint("val_loss", 1.1 / (epoch + 1), step=epoch, epoch=epoch)],
                )  # fmt: skip
                page.wait_for_function(
                    "n => document.querySelector('.chart[data-family=\"Losses\"]')"
                    ".getAttribute('data-points') == String(n)",
                    arg=epoch + 1,
                    timeout=10_000,
                    polling=20,
                )
                delays.append(time.perf_counter() - start)
            store.set_status(run.id, "finished")
            out["live"] = {"seconds": delays[1:], "median_s": statistics.median(delays[1:])}
            out["live"]["max_s"] = max(delays[1:])
        finally:
            browser.close()
    return out


def run_backend(kind: str, args: argparse.Namespace) -> dict[str, Any]:
    result: dict[str, Any] = {"backend": kind}
    with fresh_database(kind, args.pg_url) as (url, home), SqlStore(url, home=home) as store:
        print(f"[{kind}] writing {args.runs} runs ...", flush=True)
        result["populate"] = populate(store, args.runs, args.steps)
        print(f"[{kind}] populated in {result['populate']['seconds']:.0f} s", flush=True)
        dash = Dashboard(url, home, Path(home) / "ui.log")
        try:
            run_id = f"20261201-000000-{args.runs // 2:010x}"
            result.update(measure_http(dash.base, run_id, args.reps))
            if not args.no_browser and shutil.which("chromium"):
                result.update(measure_browser(dash.base, store, args.reps, args.steps))
        finally:
            dash.close()
    for key, value in result.items():
        if isinstance(value, dict) and "median_s" in value:
            print(f"[{kind}] {key}: {value['median_s'] * 1000:.0f} ms", flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--pg-url", default=os.environ.get("DANLU_TEST_PG_URL"))
    parser.add_argument("--runs", type=int, default=10_000)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--no-browser", action="store_true")
    parser.add_argument("--no-sqlite", action="store_true")
    args = parser.parse_args()
    backends = ([] if args.no_sqlite else ["sqlite"]) + (["postgresql"] if args.pg_url else [])
    results = [run_backend(kind, args) for kind in backends]
    payload = {
        "runs": args.runs,
        "params_per_run": N_PARAMS,
        "metrics_per_run": len(METRICS),
        "steps": args.steps,
        "reps": args.reps,
        "targets_s": TARGETS,
        "filter": FILTER,
        "order": ORDER,
        "cpus": os.cpu_count(),
        "results": results,
    }
    labels = [
        ("ttfb", "runs page, first byte", "ttfb"),
        ("runs_page", "runs page, whole response", None),
        ("render", "runs page rendered in Chromium", "render"),
        ("filter", "filter + sort, whole response", "filter"),
        ("detail", "run detail page", "detail"),
        ("detail_curves", "run detail curves JSON (500 points)", None),
        ("live", "live curve: epoch logged -> on the chart", "live"),
    ]
    rows = []
    for key, label, target in labels:
        row: list[Any] = [label]
        for r in results:
            m = r.get(key)
            row.append("-" if m is None else f"{m['median_s'] * 1000:.0f} ms")
        row.append(f"<= {TARGETS[target] * 1000:.0f} ms" if target else "")
        rows.append(row)
    header = ["measure (median)", *[r["backend"] for r in results], "target"]
    pops = ", ".join(
        f"{r['backend']} {r['populate']['metrics']:,} metric rows written in "
        f"{r['populate']['seconds']:.0f} s"
        for r in results
    )
    notes = (
        f"{args.runs:,} runs x {N_PARAMS} params x {len(METRICS)} metrics x {args.steps} steps "
        f"({pops}); medians of {args.reps} after one warm-up; `danlu ui` as a process on "
        f"127.0.0.1, {os.cpu_count()} CPUs. Filter: `{FILTER}`, order `{ORDER}`. "
        "Command: `python bench/ui_load.py` (PostgreSQL with `--pg-url URL` or "
        "`$DANLU_TEST_PG_URL`)."
    )
    path = write("ui_load", payload, header, rows, notes)
    print(path.read_text())


if __name__ == "__main__":
    main()
