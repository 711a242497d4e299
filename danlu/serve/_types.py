"""What the server's parts share: its settings, the errors a request can meet, and the contract
between the HTTP layer (``_app.py``, ``_routes.py``, ``_lane.py``) and the models it serves
(``_pool.py``, ``_model.py``): the HTTP layer depends on :class:`ModelPoolLike` and
:class:`ServedModelLike` only, never on the classes behind them."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, TypeAlias

from danlu.errors import DanluError, StoreError

if TYPE_CHECKING:
    import numpy as np

__all__ = [
    "BatchHook",
    "Canary",
    "ModelLoadError",
    "ModelPoolLike",
    "QueueFull",
    "RequestError",
    "ServeSettings",
    "ServedModelLike",
]

LOOPBACK = ("127.0.0.1", "::1", "localhost")
DEFAULT_MAX_BODY = 1_000_000  # bytes: the least a worked-out --max-body is


class RequestError(DanluError, ValueError):
    """A request the client must fix: answered with ``status`` and a JSON body naming ``field``.

    Example:
        >>> RequestError("rows[3].alcohol", "must be a finite number; got 'abc'").status
        422
    """

    def __init__(
        self, field: str, message: str, status: int = 422, *, code: str | None = None
    ) -> None:
        super().__init__(f"{field}: {message}" if field else message)
        self.field = field
        self.message = message
        self.status = status
        self.code = code  # the error body's code; None: the status's usual one


class ModelLoadError(StoreError):
    """A model version resolved but could not be loaded (bad files, a refused architecture, a
    failed warm-up): the admin routes answer 409, and at start-up the other models still serve."""


class QueueFull(DanluError, RuntimeError):
    """The model's request queue is full: answered 503 with ``Retry-After``."""

    def __init__(self, model: str, retry_after: float = 1.0) -> None:
        super().__init__(f"Model '{model}' is at capacity; retry in {retry_after:g} s.")
        self.retry_after = retry_after


@dataclass(frozen=True)
class Canary:
    """``--canary digits:5=10%``: send ``share`` of digits' requests to version ``ref``."""

    name: str
    ref: str
    share: float


@dataclass(frozen=True)
class ServeSettings:
    """Everything ``danlu serve`` can be told (CLI flags map one to one).

    Attributes:
        models: model references to serve: ``digits``, ``digits@production``, ``wine:3``.
        host, port, workers: where uvicorn listens and how many processes it runs.
        runtime: ``onnx`` (default; the version's parity-checked model.onnx) or ``torch``.
        max_batch_size: most rows a micro-batch holds.
        max_wait_ms: how long the first request of a batch waits for company.
        max_queue: requests waiting per model before new ones get 503.
        request_timeout_s: a request not answered by then gets 504.
        max_body_bytes: larger bodies get 413; None: large enough for ``max_rows`` rows of the
            widest model served at start-up (``danlu serve`` works it out), at least 1 MB.
        max_rows: most rows one request may carry (more: 413); a model whose rows at
            ``VALUE_BYTES`` a value would not fit ``max_body_bytes`` takes fewer.
        canaries: traffic splits.
        poll_seconds: how often aliases are checked for a move (hot swap); 0 turns it off.
        drift_window: rows per model kept for the drift estimate (PSI).
        log_sample: share of requests logged to the store for later evaluation (0..1).
        threads: ONNX Runtime / torch intra-op threads per model.
        allowed_hosts: Host names answered besides the loopback names and ``host``; ``*``: any.
        require_signed: load (and hot-swap to) only versions whose files match their signature.
        tls_certfile, tls_keyfile: PEM certificate chain and private key: serve HTTPS.
    """

    models: tuple[str, ...]
    host: str = "127.0.0.1"
    port: int = 8000
    workers: int = 1
    runtime: str = "onnx"
    max_batch_size: int = 32
    max_wait_ms: float = 2.0
    max_queue: int = 1024
    request_timeout_s: float = 10.0
    max_body_bytes: int | None = None
    max_rows: int = 1024
    canaries: tuple[Canary, ...] = ()
    poll_seconds: float = 2.0
    drift_window: int = 2000
    log_sample: float = 0.0
    threads: int = 1
    allowed_hosts: tuple[str, ...] = ()
    require_signed: bool = False
    tls_certfile: str | None = None
    tls_keyfile: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def loopback(self) -> bool:
        return self.host in LOOPBACK

    @property
    def scheme(self) -> str:
        """``https`` when serving with a TLS certificate, else ``http``."""
        return "https" if self.tls_certfile else "http"

    @property
    def body_limit(self) -> int:
        """``max_body_bytes``, or 1 MB when it was left to be worked out and was not."""
        return self.max_body_bytes or DEFAULT_MAX_BODY


class ServedModelLike(Protocol):
    """What the HTTP layer needs from one served model version (``_model.ServedModel``)."""

    name: str  # the name it is served under (the registry's, or its own: NAME=MODEL)
    version: int
    ref: str  # "digits:3"
    signature: dict[str, Any]
    metrics: dict[str, float]
    runtime_name: str  # "onnx" | "torch"

    def parse(self, payload: Any, max_rows: int) -> np.ndarray:
        """Validate a decoded JSON body ({"rows": [...]} or {"columns": {...}}) against the
        signature and preprocess it: (n, input_dim) float32. Raises RequestError naming the field
        (422; 413 for more than ``max_rows`` rows)."""
        ...

    async def predict(self, x: np.ndarray) -> dict[str, list[Any]]:
        """Queue ``x`` for the next micro-batch; ``{"predictions": [...], other outputs of the
        signature: [...]}``, one JSON value per row. Raises QueueFull when the queue is full."""
        ...

    def queue_depth(self) -> int: ...

    def drift(self) -> dict[str, Any]:
        """{"window": rows seen, "features": [{"feature", "psi", "status"}], "reference": bool}"""
        ...


#: called after every micro-batch of a served model: (the model, rows, inference seconds)
BatchHook: TypeAlias = Callable[[ServedModelLike, int, float], None]


class ModelPoolLike(Protocol):
    """What the HTTP layer needs from the models a server answers for (``_pool.ModelPool``)."""

    #: the models named at start-up that failed to load: {"name", "ref", "role", "error"}
    failed: list[dict[str, str]]
    #: called after every micro-batch; the app installs one (batch sizes) when it is None
    on_batch: BatchHook | None

    @property
    def ready(self) -> bool:
        """Every model of the settings is loaded and the pool is not stopping."""
        ...

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    def names(self) -> list[str]:
        """The served names."""
        ...

    def primary(self, name: str) -> ServedModelLike:
        """The main version served under ``name``; NotFoundError when none is."""
        ...

    def canary(self, name: str) -> ServedModelLike | None: ...

    def route(self, name: str) -> ServedModelLike:
        """The version that answers the next request for ``name`` (a canary takes its share)."""
        ...

    async def load(self, ref: str, name: str | None = None) -> ServedModelLike: ...

    async def reload(self, name: str) -> ServedModelLike: ...

    async def unload(self, name: str) -> None: ...
