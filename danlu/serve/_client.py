"""A small Python client of ``danlu serve``.

Example:
    >>> # from danlu.serve import Client
    >>> # with Client("http://127.0.0.1:8000") as client:
    >>> #     client.predict("wine", [{"alcohol": 13.2, "malic_acid": 1.78, ...}])["predictions"]
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from danlu.errors import DanluError, MissingExtraError, NotFoundError

if TYPE_CHECKING:
    import httpx

__all__ = [
    "AuthError",
    "Client",
    "InvalidRequestError",
    "ModelNotFoundError",
    "ServerError",
]


class ServerError(DanluError, RuntimeError):
    """The server answered with an error (or could not be reached: ``status`` 0).

    Attributes:
        status: the HTTP status (0 when the server could not be reached).
        code: the server's error code (``invalid_input``, ``queue_full``, ``timeout`` ...).
        field: the part of the request at fault, when the server named one.
        retry_after: seconds to wait before retrying (503), when the server said.
    """

    def __init__(
        self,
        message: str,
        *,
        status: int = 0,
        code: str = "error",
        field: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.field = field
        self.retry_after = retry_after


class InvalidRequestError(ServerError, ValueError):
    """The request was refused as invalid (400, 408, 413, 422): fix ``field``."""


class AuthError(ServerError, PermissionError):
    """No key, a wrong key (401), or a key whose scope is too small (403)."""


class ModelNotFoundError(ServerError, NotFoundError):
    """The model (or route) does not exist on the server (404)."""


def _error_class(status: int) -> type[ServerError]:
    if status in (401, 403):
        return AuthError
    if status == 404:
        return ModelNotFoundError
    if status in (400, 408, 413, 422):
        return InvalidRequestError
    return ServerError


def _finite_or_none(value: Any, where: str) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        if math.isnan(value):
            return None  # a missing value
        raise InvalidRequestError(f"{where} is {value}; JSON has no infinities.", field=where)
    return value


def _series_rows(array: Any) -> dict[str, Any]:
    """A numpy array of sequences, ``(n, C, L)`` or ``(n, L)``, as ``{"rows": [{"series":
    ...}]}`` (NaN as null: a missing step)."""
    if array.ndim not in (2, 3):
        raise InvalidRequestError(
            f"A numpy array is sent as sequences: shape (rows, channels, length) or (rows, "
            f"length); got {array.shape}. Pass other rows as dicts or a DataFrame.",
            field="data",
        )
    rows = []
    for i, row in enumerate(array.tolist()):
        where = f"rows[{i}].series"
        channels = row if array.ndim == 3 else [row]
        rows.append({"series": [[_finite_or_none(v, where) for v in steps] for steps in channels]})
    return {"rows": rows}


def _payload(data: Any) -> dict[str, Any]:
    """``{"rows": [...]}`` or ``{"columns": {...}}`` from rows, columns or a DataFrame; a numpy
    array of sequences as ``{"rows": [{"series": ...}]}``."""
    if hasattr(data, "ndim") and hasattr(data, "tolist"):  # a numpy array: sequences
        return _series_rows(data)
    if hasattr(data, "to_dict") and hasattr(data, "columns"):  # a pandas DataFrame
        data = {str(c): data[c].tolist() for c in data.columns}
    if isinstance(data, Mapping):
        if set(data) == {"rows"}:  # already a request body
            return _payload(data["rows"])
        if set(data) == {"columns"} and isinstance(data["columns"], Mapping):
            data = data["columns"]
        columns = {
            str(k): [_finite_or_none(v, f"columns.{k}[{i}]") for i, v in enumerate(values)]
            for k, values in data.items()
        }
        return {"columns": columns}
    if isinstance(data, Sequence) and not isinstance(data, str | bytes):
        rows = []
        for i, row in enumerate(data):
            if not isinstance(row, Mapping):
                raise InvalidRequestError(
                    f"rows[{i}] is a {type(row).__name__}; each row is a dict of feature values.",
                    field=f"rows[{i}]",
                )
            rows.append({str(k): _finite_or_none(v, f"rows[{i}].{k}") for k, v in row.items()})
        return {"rows": rows}
    raise InvalidRequestError(
        f"Cannot send a {type(data).__name__}: pass a list of row dicts, a dict of columns or "
        "a pandas DataFrame.",
        field="data",
    )


class Client:
    """Calls a danlu inference server.

    Args:
        url: the server's address.
        key: an API key (sent as ``Authorization: Bearer``); needed for admin calls, and for
            predictions when the server has keys or listens beyond loopback.
        timeout: seconds to wait for an answer.
        transport: an ``httpx`` transport (tests: ``httpx.ASGITransport(app)``).

    Example:
        >>> client = Client("http://127.0.0.1:8000")
        >>> client.url
        'http://127.0.0.1:8000'
    """

    def __init__(
        self,
        url: str = "http://127.0.0.1:8000",
        key: str | None = None,
        timeout: float = 10.0,
        *,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.url = url.rstrip("/")
        self.key = key
        self.timeout = timeout
        self._transport = transport
        self._http: httpx.Client | None = None

    @property
    def http(self) -> httpx.Client:
        if self._http is None:
            try:
                import httpx
            except ImportError:
                raise MissingExtraError.for_package("httpx", "serve") from None
            headers = {"Authorization": f"Bearer {self.key}"} if self.key else {}
            self._http = httpx.Client(
                base_url=self.url, headers=headers, timeout=self.timeout, transport=self._transport
            )
        return self._http

    def close(self) -> None:
        if self._http is not None:
            self._http.close()
            self._http = None

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, method: str, path: str, body: Any = None) -> Any:
        import httpx

        content = None
        headers = {}
        if body is not None:
            try:
                content = json.dumps(body, allow_nan=False).encode()
            except (TypeError, ValueError) as exc:
                raise InvalidRequestError(
                    f"The request cannot be sent as JSON: {exc}", field="data"
                ) from None
            headers["Content-Type"] = "application/json"
        try:
            response = self.http.request(method, path, content=content, headers=headers)
        except httpx.TimeoutException:
            raise ServerError(
                f"{self.url} did not answer within {self.timeout:g} s.", code="timeout"
            ) from None
        except httpx.TransportError as exc:
            raise ServerError(
                f"Cannot reach the danlu server at {self.url}: {exc}", code="unreachable"
            ) from None
        if response.status_code < 400:
            return response.json()
        try:
            error = response.json()["error"]
            message, code, field = str(error["message"]), str(error["code"]), error.get("field")
        except (ValueError, KeyError, TypeError):
            message, code, field = response.text[:500] or response.reason_phrase, "error", None
        retry = response.headers.get("Retry-After")
        raise _error_class(response.status_code)(
            f"{method} {path} answered {response.status_code}: "
            + (f"{field}: {message}" if field else message),
            status=response.status_code,
            code=code,
            field=field,
            retry_after=float(retry) if retry and retry.isdigit() else None,
        )

    def predict(self, model: str, data: Any) -> dict[str, Any]:
        """Predictions for ``data``: a list of row dicts, a dict of columns, or a DataFrame; for
        a sequence model also a numpy array ``(n, channels, length)`` or ``(n, length)``, sent
        as ``{"rows": [{"series": [[...]]}]}``.

        Returns the server's answer: ``{"model", "version", "ref", "predictions", ...}`` plus
        the task's other outputs (``probabilities`` of a classifier, ``scores`` of a multi-label
        model) and, with them, ``classes``: the class each of their columns stands for.
        """
        return self._call("POST", f"/v1/models/{quote(model, safe='')}/predict", _payload(data))  # type: ignore[no-any-return]

    def predict_proba(self, model: str, data: Any) -> list[dict[Any, float]]:
        """One ``{class: probability}`` dict per row (a multi-label model: ``{label: score}``).

        Raises:
            ServerError: the model answers no per-class scores (a regression model).

        Example:
            >>> # client.predict_proba("wine", rows)[0]  # {0: 0.02, 1: 0.95, 2: 0.03}
        """
        answer = self.predict(model, data)
        classes = answer.get("classes")
        scores = next((answer[k] for k in ("probabilities", "scores") if k in answer), None)
        if not isinstance(classes, list) or scores is None:
            raise ServerError(
                f"Model {answer.get('ref', model)} answers no per-class scores (its outputs: "
                f"{', '.join(k for k in answer if k not in ('model', 'version', 'ref'))}); use "
                "predict().",
                code="no_classes",
            )
        return [dict(zip(classes, row, strict=True)) for row in scores]

    def models(self) -> list[dict[str, Any]]:
        """The served models."""
        return self._call("GET", "/v1/models")["models"]  # type: ignore[no-any-return]

    def model(self, name: str) -> dict[str, Any]:
        """One served model: signature, version, runtime, metrics, canary."""
        return self._call("GET", f"/v1/models/{quote(name, safe='')}")  # type: ignore[no-any-return]

    def drift(self, name: str) -> dict[str, Any]:
        """Input drift per feature of a served model."""
        return self._call("GET", f"/v1/models/{quote(name, safe='')}/drift")  # type: ignore[no-any-return]

    def reload(self, name: str) -> dict[str, Any]:
        """(admin) Reload a model: serve the version its reference now points at."""
        return self._call("POST", f"/v1/admin/models/{quote(name, safe='')}/reload")  # type: ignore[no-any-return]

    def load(self, ref: str) -> dict[str, Any]:
        """(admin) Serve another model: ``wine``, ``wine:3`` or ``wine@production``."""
        return self._call("POST", "/v1/admin/models", {"ref": ref})  # type: ignore[no-any-return]

    def unload(self, name: str) -> dict[str, Any]:
        """(admin) Stop serving a model."""
        return self._call("DELETE", f"/v1/admin/models/{quote(name, safe='')}")  # type: ignore[no-any-return]

    def set_alias(self, name: str, alias: str, version: int) -> dict[str, Any]:
        """(admin) Point ``alias`` at ``version`` and reload the model if it is served."""
        path = f"/v1/admin/models/{quote(name, safe='')}/alias"
        return self._call("PUT", path, {"alias": alias, "version": version})  # type: ignore[no-any-return]

    def ready(self) -> bool:
        """Whether the server is ready (models loaded, not shutting down)."""
        try:
            self._call("GET", "/readyz")
        except ServerError:
            return False
        return True
