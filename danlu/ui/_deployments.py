"""The deployments page: every ``danlu serve`` process registered in the store (live, stale or
recently stopped) with the model versions it serves, and for each live one what its Prometheus
endpoint says: requests/s, latency percentiles, error rate, queue depth and input drift.

The dashboard scrapes ``/metrics`` itself (server-side, with httpx, a short timeout, no
redirects, a bounded body), only at the URLs the servers registered in the store, and shows
numbers parsed from the answer, never the answer itself. Whoever can write the store can
therefore make the dashboard send a GET to an address of their choosing: the store is trusted,
as it is for the models it serves. ``DANLU_UI_SCRAPE=0`` turns scraping off;
``DANLU_UI_SCRAPE_KEY`` is a predict key sent to servers that listen beyond loopback (their
``/metrics`` needs one).

Rates come from two scrapes: the dashboard keeps each server's previous scrape, so a page that
polls every few seconds shows the last interval's requests/s, latency and error rate; the first
scrape of a server shows them over its whole life (counters since it started), and so do the
latency and error rate of an interval without requests.
"""

from __future__ import annotations

import asyncio
import math
import os
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from danlu.errors import ConfigError
from danlu.store import DEPLOYMENT_STALE_S, Deployment, check_deployment_url
from danlu.ui._app import render

if TYPE_CHECKING:
    from fastapi.responses import Response

__all__ = ["Scrape", "parse_prometheus", "quantile", "router", "summarise"]

router = APIRouter()

SCRAPE_TIMEOUT_S = 1.5
SCRAPE_MAX_BYTES = 4_000_000
SCRAPE_ENV = "DANLU_UI_SCRAPE"
SCRAPE_KEY_ENV = "DANLU_UI_SCRAPE_KEY"
SCRAPE_CA_ENV = "DANLU_UI_SCRAPE_CA"
MAX_SCRAPED = 50  # live servers scraped per page view
WINDOW_MAX_S = 120.0  # an older previous scrape is not used for a rate
# Population stability index bands (danlu.data's PSI_MODERATE / PSI_MAJOR; Siddiqi 2006)
PSI_MODERATE, PSI_MAJOR = 0.1, 0.25
QUANTILES = (0.5, 0.95, 0.99)

Sample = tuple[str, dict[str, str], float]
_SAMPLE = re.compile(r"([a-zA-Z_:][a-zA-Z0-9_:]*)(\{.*\})?\s+(\S+)(?:\s+\S+)?\s*$")
_LABEL = re.compile(r'\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*=\s*"((?:[^"\\]|\\.)*)"\s*,?')


def parse_prometheus(text: str) -> list[Sample]:
    """(name, labels, value) of every sample in Prometheus text exposition; lines that do not
    parse are skipped (a scrape shows what it can).

    Example:
        >>> parse_prometheus('# HELP x y\\nx_total{model="a\\\\"b",code="200"} 3.0\\n')
        [('x_total', {'model': 'a"b', 'code': '200'}, 3.0)]
    """
    samples: list[Sample] = []
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        match = _SAMPLE.match(line)
        if match is None:
            continue
        name, raw_labels, raw_value = match.groups()
        try:
            value = float(raw_value)
        except ValueError:
            continue
        labels: dict[str, str] = {}
        if raw_labels:
            body = raw_labels[1:-1]
            for label in _LABEL.finditer(body):
                labels[label.group(1)] = (
                    label.group(2).replace("\\n", "\n").replace('\\"', '"').replace("\\\\", "\\")
                )
        samples.append((name, labels, value))
    return samples


def quantile(q: float, buckets: dict[float, float]) -> float | None:
    """The ``q`` quantile of a cumulative histogram ({upper bound: count}), interpolated
    linearly inside the bucket as Prometheus' ``histogram_quantile`` does; None when empty.

    Example:
        >>> quantile(0.5, {0.1: 10.0, 0.2: 30.0, math.inf: 30.0})
        0.15
    """
    bounds = sorted(buckets)
    if not bounds or buckets[bounds[-1]] <= 0:
        return None
    total = buckets[bounds[-1]]
    rank = q * total
    previous_bound, previous_count = 0.0, 0.0
    for bound in bounds:
        count = buckets[bound]
        if count >= rank:
            if math.isinf(bound):  # beyond the last finite bucket: its bound is all we know
                return previous_bound
            if count == previous_count:
                return bound
            return previous_bound + (bound - previous_bound) * (rank - previous_count) / (
                count - previous_count
            )
        previous_bound, previous_count = bound, count
    return bounds[-1]


@dataclass
class Scrape:
    """One server's counters at one time, per model: requests by status, latency buckets,
    queue depth, drift (the largest PSI and its feature)."""

    time: float
    requests: dict[str, dict[str, float]] = field(default_factory=dict)  # model -> code -> n
    buckets: dict[str, dict[float, float]] = field(default_factory=dict)  # model -> le -> n
    queue: dict[str, float] = field(default_factory=dict)
    drift: dict[str, tuple[float, str]] = field(default_factory=dict)  # model -> (psi, feature)

    @classmethod
    def of(cls, samples: Iterable[Sample], at: float) -> Scrape:
        scrape = cls(time=at)
        for name, labels, value in samples:
            model = labels.get("model", "")
            if name == "danlu_requests_total":
                codes = scrape.requests.setdefault(model, {})
                code = labels.get("code", "")
                codes[code] = codes.get(code, 0.0) + value
            elif name == "danlu_request_seconds_bucket":
                try:
                    le = float(labels.get("le", "nan"))
                except ValueError:
                    continue
                buckets = scrape.buckets.setdefault(model, {})
                buckets[le] = buckets.get(le, 0.0) + value  # summed over versions
            elif name == "danlu_queue_depth":
                scrape.queue[model] = scrape.queue.get(model, 0.0) + value
            elif name == "danlu_drift_psi" and not math.isnan(value):
                if value > scrape.drift.get(model, (-1.0, ""))[0]:
                    scrape.drift[model] = (value, labels.get("feature", ""))
        return scrape


def _minus(now: dict[Any, float], before: dict[Any, float] | None) -> dict[Any, float]:
    before = before or {}
    return {k: max(0.0, v - before.get(k, 0.0)) for k, v in now.items()}


def _drift_status(psi: float) -> str:
    return "shifted" if psi >= PSI_MAJOR else "moderate" if psi >= PSI_MODERATE else "stable"


def summarise(now: Scrape, before: Scrape | None, started_at: float) -> dict[str, Any]:
    """Per model and in total: requests (since start), requests/s, error rate, p50/p95/p99
    latency in ms, queue depth, drift. Over the interval since ``before`` when it is recent and
    no counter went backwards (a restart), else over the server's life."""
    usable = (
        before is not None
        and 0 < now.time - before.time <= WINDOW_MAX_S
        and all(
            sum(codes.values()) >= sum(before.requests.get(m, {}).values())
            for m, codes in now.requests.items()
        )
    )
    prior = before if usable else None
    seconds = now.time - prior.time if prior is not None else max(now.time - started_at, 1e-3)
    models: dict[str, dict[str, Any]] = {}
    names = sorted(set(now.requests) | set(now.queue) | set(now.drift))
    total_all = window_all = errors_all = 0.0
    buckets_all: dict[float, float] = {}
    for model in names:
        codes = now.requests.get(model, {})
        window = _minus(codes, prior.requests.get(model) if prior else None)
        buckets = _minus(now.buckets.get(model, {}), prior.buckets.get(model) if prior else None)
        n = sum(window.values())
        errors = sum(v for c, v in window.items() if not c.startswith(("1", "2", "3")))
        total = sum(codes.values())
        if not n:  # a quiet interval: latency and errors over the server's life instead
            buckets = now.buckets.get(model, {})
            errors = sum(v for c, v in codes.items() if not c.startswith(("1", "2", "3")))
        psi = now.drift.get(model)
        total_all, window_all, errors_all = (
            total_all + total,
            window_all + (n or total),
            errors_all + errors,
        )
        for le, count in buckets.items():
            buckets_all[le] = buckets_all.get(le, 0.0) + count
        models[model] = {
            "requests": int(total),
            "rps": n / seconds,
            "error_rate": errors / (n or total) if (n or total) else None,
            "latency_ms": _latencies(buckets),
            "queue": now.queue.get(model),
            "drift": None
            if psi is None
            else {"psi": psi[0], "feature": psi[1], "status": _drift_status(psi[0])},
        }
    return {
        "window_s": seconds,
        "since_start": prior is None,
        "requests": int(total_all),
        "rps": sum(m["rps"] for m in models.values()),
        "error_rate": errors_all / window_all if window_all else None,
        "latency_ms": _latencies(buckets_all),
        "models": models,
    }


def _latencies(buckets: dict[float, float]) -> dict[str, float | None]:
    out: dict[str, float | None] = {}
    for q in QUANTILES:
        value = quantile(q, buckets)
        out[f"p{round(q * 100)}"] = None if value is None else value * 1000.0
    return out


def _scrape_verify() -> Any:
    """How https servers' certificates are checked: against ``$DANLU_UI_SCRAPE_CA`` (a PEM file
    of the CA, or the self-signed certificate, that ``danlu serve --tls-cert`` uses) when set,
    else against the system's CA bundle."""
    import ssl

    bundle = os.environ.get(SCRAPE_CA_ENV)
    if not bundle:
        return True
    try:
        return ssl.create_default_context(cafile=bundle)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(
            f"{SCRAPE_CA_ENV}={bundle!r} cannot be read as PEM certificates ({exc}); point it at "
            "the CA (or self-signed certificate) of your danlu serve --tls-cert, or unset it."
        ) from None


class Scraper:
    """Scrapes servers' ``/metrics`` and keeps each one's previous scrape (for rates)."""

    def __init__(self) -> None:
        self.previous: dict[str, Scrape] = {}
        self.lock = asyncio.Lock()

    async def stats(self, deployments: list[Deployment]) -> dict[str, dict[str, Any]]:
        """{deployment id: summary or {"error": why}} for the live ``deployments``."""
        import httpx

        headers = {"Accept": "text/plain"}
        key = os.environ.get(SCRAPE_KEY_ENV)
        if key:
            headers["Authorization"] = f"Bearer {key}"
        try:
            verify = _scrape_verify()
        except ConfigError as exc:  # every row says why, the page still renders
            return {d.id: {"error": str(exc)} for d in deployments}
        async with httpx.AsyncClient(
            timeout=SCRAPE_TIMEOUT_S,
            follow_redirects=False,
            headers=headers,
            trust_env=False,
            verify=verify,
        ) as client:
            results = await asyncio.gather(*(self._one(client, d) for d in deployments))
        return dict(zip((d.id for d in deployments), results, strict=True))

    async def _one(self, client: Any, deployment: Deployment) -> dict[str, Any]:
        import httpx

        try:
            url = check_deployment_url(deployment.url) + "/metrics"
        except ConfigError:
            return {"error": "its registered URL is not http(s)://host:port; not scraped"}
        try:
            async with client.stream("GET", url) as response:
                if response.status_code != 200:
                    return {"error": f"/metrics answered HTTP {response.status_code}"}
                body = bytearray()
                async for chunk in response.aiter_bytes():
                    body += chunk
                    if len(body) > SCRAPE_MAX_BYTES:
                        return {"error": "/metrics answered more than 4 MB; not read"}
        except httpx.TimeoutException:
            return {"error": f"/metrics did not answer within {SCRAPE_TIMEOUT_S} s"}
        except httpx.HTTPError as exc:
            return {"error": f"/metrics could not be reached ({type(exc).__name__})"}
        now = Scrape.of(parse_prometheus(body.decode("utf-8", "replace")), time.time())
        async with self.lock:
            before = self.previous.get(deployment.id)
            self.previous[deployment.id] = now
        return summarise(now, before, deployment.started_at)


def _one_per_server(
    deployments: list[Deployment], now: float
) -> tuple[list[Deployment], dict[str, list[int]]]:
    """``danlu serve --workers N`` registers each worker process: N live rows with one URL and
    their own pids. Those become one row (the first listed worker's, scraped once) and
    {its id: every worker's pid}; stale and stopped rows stay as they are."""
    first: dict[str, Deployment] = {}
    pids: dict[str, list[int]] = {}
    kept: list[Deployment] = []
    for d in deployments:
        if d.status(now) != "live":
            kept.append(d)
            continue
        lead = first.get(d.url)
        if lead is None:
            first[d.url] = d
            pids[d.id] = [d.pid]
            kept.append(d)
        else:
            pids[lead.id].append(d.pid)
    return kept, {i: sorted(p) for i, p in pids.items() if len(p) > 1}


def _scraper(request: Request) -> Scraper:
    state = request.app.state
    scraper = getattr(state, "deployments_scraper", None)
    if scraper is None:
        scraper = state.deployments_scraper = Scraper()
    return scraper


async def _view(request: Request) -> list[dict[str, Any]]:
    """Each listed deployment as a dict for the page and the JSON route."""
    store = request.app.state.store
    deployments: list[Deployment] = await asyncio.to_thread(store.list_deployments)
    now = time.time()
    deployments, workers = _one_per_server(deployments, now)
    live = [d for d in deployments if d.status(now) == "live"][:MAX_SCRAPED]
    stats: dict[str, dict[str, Any]] = {}
    if live and os.environ.get(SCRAPE_ENV, "1") != "0":
        stats = await _scraper(request).stats(live)
    rows = []
    for d in deployments:
        status = d.status(now)
        pids = workers.get(d.id, [d.pid])
        rows.append(
            {
                "id": d.id,
                "url": d.url,
                "host": d.host,
                "port": d.port,
                "pid": d.pid,
                "pids": pids,
                "workers": len(pids),
                "status": status,
                "started_at": d.started_at,
                "heartbeat_at": d.heartbeat_at,
                "heartbeat_age_s": max(0.0, now - d.heartbeat_at),
                "stopped_at": d.stopped_at,
                "models": [m.__dict__ for m in d.models],
                "stats": stats.get(d.id),
            }
        )
    return rows


@router.get("/deployments")
async def deployments_page(request: Request) -> Response:
    rows = await _view(request)
    return render(
        request,
        "deployments.html",
        deployments=rows,
        live=sum(r["status"] == "live" for r in rows),
        stale_after=DEPLOYMENT_STALE_S,
        scraping=os.environ.get(SCRAPE_ENV, "1") != "0",
    )


@router.get("/api/deployments")
async def deployments_json(request: Request) -> Response:
    return JSONResponse({"time": time.time(), "deployments": await _view(request)})
