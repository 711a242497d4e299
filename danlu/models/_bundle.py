"""A trained model from its files: the model card (JSON), safetensors weights, preprocessing
(JSON) and optional calibration (JSON) — never a pickle. Runs and registered versions both hold
these files; the store hands them over through a ``read(file)`` function."""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeAlias

from danlu.errors import DataError, MissingExtraError, NotFoundError, StoreError

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd
    import torch

    from danlu.data import FeatureSchema, Preprocessor
    from danlu.tasks import Task

__all__ = [
    "ModelBundle",
    "Predictor",
    "Rows",
    "load_bundle",
    "load_weights",
    "torch_installed",
    "weights_header",
]

#: raw rows a predictor takes: a DataFrame, dict rows, a dict of columns, an array, or raw
#: strings for a model whose one input is text.
Rows: TypeAlias = (
    "pd.DataFrame | Sequence[Mapping[str, Any]] | Mapping[str, Sequence[Any]] | np.ndarray"
    " | str | Sequence[str]"
)

#: the key of a row that sends a sequence model's whole series as one array
SERIES = "series"


def _is_series_row(row: Any) -> bool:
    return isinstance(row, Mapping) and set(row) == {SERIES}


_PICKLE_MAGIC = (b"\x80", b"PK\x03\x04")  # pickle protocol ≥ 2, and torch.save's zip archive


def load_weights(raw: bytes, where: str) -> dict[str, torch.Tensor]:
    """Tensors from safetensors bytes; a pickled file is refused, never unpickled.

    The bytes are parsed as safetensors first (which runs no code): a safetensors header of
    128 bytes begins with the same byte as a pickle (``0x80``), so the pickle test only words
    the error of a file that is not safetensors.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load as st_load

    try:
        return st_load(raw)
    except (SafetensorError, ValueError) as exc:
        if raw.startswith(_PICKLE_MAGIC):
            raise StoreError(
                f"{where} is a pickled file; danlu refuses to load pickled model files (they can run arbitrary code). Re-export the weights as safetensors."
            ) from None
        raise StoreError(f"{where} is not a valid safetensors file ({exc}).") from None


#: bytes per value of each safetensors dtype
_DTYPE_BYTES = {
    **dict.fromkeys(("BOOL", "U8", "I8", "F8_E5M2", "F8_E4M3"), 1),
    **dict.fromkeys(("U16", "I16", "F16", "BF16"), 2),
    **dict.fromkeys(("U32", "I32", "F32"), 4),
    **dict.fromkeys(("U64", "I64", "F64"), 8),
}


def _is_size(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _header(raw: bytes) -> dict[str, tuple[str, tuple[int, ...]]]:
    """The tensors a safetensors file declares; a ValueError saying what is wrong."""
    if len(raw) < 8:
        raise ValueError("shorter than the 8 bytes of its header's length")
    length = int.from_bytes(raw[:8], "little")
    if length > len(raw) - 8:
        raise ValueError(f"its header's length ({length} bytes) runs past the end of the file")
    try:
        header = json.loads(raw[8 : 8 + length])
    except (UnicodeDecodeError, ValueError) as exc:
        raise ValueError(f"its header is not JSON: {exc}") from None
    if not isinstance(header, dict):
        raise ValueError("its header is not a JSON object")
    tensors: dict[str, tuple[str, tuple[int, ...]]] = {}
    spans = []
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        entry = entry if isinstance(entry, dict) else {}
        dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
        if dtype not in _DTYPE_BYTES:
            raise ValueError(f"tensor {name!r} has an unknown dtype {dtype!r}")
        if not isinstance(shape, list) or not all(_is_size(d) for d in shape):
            raise ValueError(f"tensor {name!r} has no valid shape")
        if (
            not isinstance(offsets, list)
            or len(offsets) != 2
            or not all(_is_size(o) for o in offsets)
            or offsets[0] > offsets[1]
        ):
            raise ValueError(f"tensor {name!r} has no valid data_offsets")
        count = 1
        for d in shape:
            count *= d
        if offsets[1] - offsets[0] != count * _DTYPE_BYTES[dtype]:
            raise ValueError(
                f"tensor {name!r} of shape {shape} and dtype {dtype} needs "
                f"{count * _DTYPE_BYTES[dtype]} bytes; its offsets span {offsets[1] - offsets[0]}"
            )
        spans.append((offsets[0], offsets[1]))
        tensors[name] = (dtype, tuple(shape))
    end = 0
    for start, stop in sorted(spans):
        if start != end:
            raise ValueError("its tensors' data overlap or leave a gap")
        end = stop
    if end != len(raw) - 8 - length:
        raise ValueError(
            f"its tensors hold {end} bytes of data but the file has {len(raw) - 8 - length}"
        )
    return tensors


def weights_header(raw: bytes, where: str) -> dict[str, tuple[str, tuple[int, ...]]]:
    """``name → (dtype, shape)`` of safetensors bytes, checked without loading a tensor and
    without torch: the header's JSON, each tensor's dtype, shape and byte span, and that the
    spans tile the data exactly. A pickled file is refused, never unpickled.

    It checks the file, not that it fits a model: :func:`load_weights` into the model does that.

    Raises:
        StoreError: the bytes are pickled, or not a valid safetensors file (saying why).

    Example:
        >>> from safetensors.numpy import save
        >>> import numpy as np
        >>> weights_header(save({"w": np.zeros((3, 2), np.float32)}), "w")
        {'w': ('F32', (3, 2))}
    """
    try:
        return _header(raw)
    except ValueError as exc:
        if raw.startswith(_PICKLE_MAGIC):
            raise StoreError(
                f"{where} is a pickled file; danlu refuses to load pickled model files (they can "
                "run arbitrary code). Re-export the weights as safetensors."
            ) from None
        raise StoreError(f"{where} is not a valid safetensors file ({exc}).") from None


def torch_installed() -> bool:
    """Whether torch can be imported here, found without importing it.

    Example:
        >>> isinstance(torch_installed(), bool)
        True
    """
    import importlib.util

    try:
        return importlib.util.find_spec("torch") is not None
    except (ImportError, ValueError):  # a finder that refuses it; a broken half-import
        return False


def needs_torch(what: str) -> MissingExtraError:
    """The error for something that needs torch where it is not installed."""
    return MissingExtraError(
        f"{what} needs torch, which is not installed here. Install it (pip install torch), or "
        "package the model with torch."
    )


#: held while a lazy bundle builds its network (rare: once per bundle), so two threads asking
#: at once build it once; module-level, so a bundle stays copyable
_BUILD_LOCK = threading.RLock()


class ModelBundle:
    """A trained model with what it needs to predict raw rows: the one predictor.

    Raw rows → the saved preprocessing → the network → the task's decoding. ``Result.predict``,
    ``danlu.load_model`` and the serving runtimes all predict through this class (the server
    computes the raw outputs on its runtime and decodes them with :meth:`decode`).

    Everything but the network itself is read without torch: a bundle loaded with
    ``load_bundle(..., lazy=True)`` builds its network on the first use of :attr:`model`, so a
    server answering on ONNX Runtime (which needs only the preprocessing, the task's decoding
    and the signature) never imports torch.

    Attributes:
        model: the network, weights loaded, in eval mode (built on first use when lazy).
        task: its task, with any decoding fitted on validation (``decoding.json``).
        schema: its feature schema.
        preprocessor: the fitted preprocessing of raw rows.
        card: the model card (``model.json``): type, options, task, schema.
        temperature: the logits' temperature from ``calibration.json`` (1.0 when uncalibrated).
        version: the registered version it was loaded from (None for a run's model).

    Example:
        >>> # predictor = danlu.load_model("wine@staging")
        >>> # predictor.predict(frame)["prediction"]
    """

    def __init__(
        self,
        model: torch.nn.Module | None,
        task: Task,
        schema: FeatureSchema,
        preprocessor: Preprocessor,
        card: dict[str, Any],
        temperature: float = 1.0,
        version: Any = None,  # the store's ModelVersion, for a registered model
        *,
        build: Callable[[], torch.nn.Module] | None = None,
    ) -> None:
        if model is None and build is None:
            raise TypeError("ModelBundle needs a model, or build= to make it on first use")
        self._model = model
        self._build = build
        self.task = task
        self.schema = schema
        self.preprocessor = preprocessor
        self.card = card
        self.temperature = temperature
        self.version = version

    @property
    def model(self) -> torch.nn.Module:
        """The network, built (and its weights loaded) on first use when the bundle is lazy.

        Raises:
            MissingExtraError: torch is not installed.
            StoreError: the weights do not fit the model, or changed since they were checked.
        """
        if self._model is None:
            with _BUILD_LOCK:  # one build, whichever thread asks first
                if self._model is None:
                    if not torch_installed():
                        raise needs_torch(f"The network of {self._where()}")
                    assert self._build is not None
                    self._model = self._build()
                    self._build = None
        return self._model

    @model.setter
    def model(self, value: torch.nn.Module) -> None:
        self._model = value
        self._build = None

    @property
    def model_built(self) -> bool:
        """Whether :attr:`model` is built (always, unless loaded lazily and not used yet)."""
        return self._model is not None

    def _where(self) -> str:
        return f"model {self.version.ref}" if self.version is not None else "this model"

    @property
    def signature(self) -> dict[str, Any]:
        """The request/response contract (the version's, else the task's from the schema)."""
        if self.version is not None:
            return self.version.signature
        return self.task.signature(self.schema)

    @property
    def sequence_shape(self) -> tuple[int, int] | None:
        """``(channels, length)`` of one row when the model reads rows as sequences
        (``model.type: cnn1d``) and its raw inputs are the steps themselves (numeric, one per
        step, dimension by dimension); else None. Such a model also takes each row as one array
        (``predict`` of an ``(n, C, L)`` array, ``{"series": [[...]]}`` in a request)."""
        if self._model is not None:
            shape = getattr(self._model, "sequence_shape", None)
        elif self.card.get("type") == "cnn1d":  # what build_cnn1d reads, from the schema
            from danlu.models._cnn1d import sequence_shape

            shape = sequence_shape(self.schema)
        else:
            shape = None
        if shape is None or len(shape) != 2:
            return None
        channels, length = int(shape[0]), int(shape[1])
        features = self.schema.features
        if len(features) != channels * length or any(f.kind != "numeric" for f in features):
            return None
        return channels, length

    def __repr__(self) -> str:
        where = self.version.ref if self.version is not None else self.card.get("type", "model")
        return f"Predictor({where}, task={self.task.name}, inputs={len(self.schema.features)})"

    def frame(self, data: Rows) -> pd.DataFrame:
        """Raw rows as a DataFrame: a DataFrame, dict rows, a dict of columns, an array whose
        columns are the schema's features in order, or — for a model whose one input is a text
        column — raw strings (a string, or a list of them: one row each). A sequence model
        (:attr:`sequence_shape` ``(C, L)``) also takes an ``(n, C, L)`` array and rows
        ``{"series": [[...L numbers] × C]}`` (one channel: ``[...L numbers]`` too)."""
        import numpy as np
        import pandas as pd

        names = list(self.schema.feature_names)
        if isinstance(data, pd.DataFrame):
            return data
        if isinstance(data, str) or (
            isinstance(data, Sequence) and len(data) and all(isinstance(r, str) for r in data)
        ):
            return pd.DataFrame({self._text_input(): [data] if isinstance(data, str) else data})
        if isinstance(data, Sequence) and len(data) and all(_is_series_row(r) for r in data):
            data = np.stack(
                [self._series(r[SERIES], f"rows[{i}].series") for i, r in enumerate(data)]
            )
        if isinstance(data, np.ndarray):
            sequence = self.sequence_shape
            if sequence is not None and data.ndim == 3:
                if data.shape[1:] != sequence:
                    raise DataError(
                        f"A sequence array must have shape (rows, {sequence[0]}, {sequence[1]}) "
                        f"(rows, channels, length) for this model; got {data.shape}."
                    )
                data = data.reshape(len(data), -1)  # dimension by dimension, as the columns
            if data.ndim != 2 or data.shape[1] != len(names):
                if sequence is not None:
                    channels, length = sequence
                    raise DataError(
                        f"A sequence array must have shape (rows, {channels}, {length}) (rows, "
                        f"channels, length) or (rows, {channels * length}) for this model; got "
                        f"{data.shape}."
                    )
                more = "..." if len(names) > 5 else ""
                raise DataError(
                    f"An array input must have shape (rows, {len(names)}) with columns "
                    f"{names[:5]}{more}; got {data.shape}."
                )
            return pd.DataFrame(data, columns=names)
        if isinstance(data, Mapping):
            return pd.DataFrame(dict(data))
        return pd.DataFrame(list(data))

    def _series(self, value: Any, where: str) -> np.ndarray:
        """One row's series (``[[...L]...C]``, or ``[...L]`` for one channel) as (C·L,)."""
        import numpy as np

        sequence = self.sequence_shape
        if sequence is None:
            raise DataError(
                f"{where}: this model does not read sequences; pass rows of its features "
                f"({', '.join(map(repr, list(self.schema.feature_names)[:5]))}...)."
            )
        try:
            array = np.asarray(value, dtype=np.float64)
        except (TypeError, ValueError):  # ragged lists, strings
            raise DataError(
                f"{where}: must be {sequence[0]} list(s) of {sequence[1]} numbers."
            ) from None
        if array.ndim == 1 and sequence[0] == 1:
            array = array[None, :]
        if array.shape != sequence:
            raise DataError(
                f"{where}: expected {sequence[0]} series (channels) of {sequence[1]} steps, "
                f"shape {sequence}; got shape {array.shape}."
            )
        return array.reshape(-1)

    def _text_input(self) -> str:
        """The one feature raw strings fill; a DataError when the model takes other inputs."""
        text = [f.name for f in self.schema.features if f.kind == "text"]
        names = list(self.schema.feature_names)
        if len(text) == 1 and len(names) == 1:
            return text[0]
        raise DataError(
            f"Raw strings are rows of a model whose one input is a text column; this model takes "
            f"{', '.join(map(repr, names[:5]))}{'...' if len(names) > 5 else ''}. Pass rows as "
            "dicts ({column: value}) or a DataFrame."
        )

    def encode(self, data: Rows) -> np.ndarray:
        """Raw rows → the prepared float32 matrix the network takes, (n, input_dim)."""
        return self.preprocessor.transform(self.frame(data))

    def outputs(self, x: np.ndarray) -> np.ndarray:
        """The network's raw outputs for prepared rows, float32 (n, output_dim)."""
        model = self.model  # first: without torch, the error says so and what to install
        import torch

        model.eval()
        with torch.inference_mode():
            return model(torch.as_tensor(x)).float().numpy()

    def decode(self, outputs: np.ndarray) -> dict[str, np.ndarray]:
        """Raw outputs → the task's predictions (temperature and fitted decoding applied)."""
        return self.task.predict(outputs, self.schema, self.temperature)

    def predict(self, data: Rows) -> dict[str, np.ndarray]:
        """Predict raw rows: a DataFrame, dict rows, a dict of columns, or an array in schema
        order. Returns ``prediction`` and the task's other outputs (``probabilities``...)."""
        return self.decode(self.outputs(self.encode(data)))

    def forecast(
        self,
        history: Sequence[float] | np.ndarray,
        covariates: Mapping[str, Sequence[float]] | None = None,
    ) -> dict[str, np.ndarray]:
        """A forecasting model's next ``horizon`` values after ``history`` (original units,
        oldest first, at least the model's ``lags`` values); ``covariates`` as
        ``POST .../forecast`` takes them. Returns ``prediction`` (H,) and, with quantiles,
        ``lower`` / ``upper`` (H,) and ``quantiles`` (Q, H).

        Raises:
            ConfigError: the model does not forecast.
            DataError: a short history, NaN, or covariates missing or of the wrong length.

        Example:
            >>> # danlu.load_model("airline@production").forecast(last_24_months)["prediction"]
        """
        from danlu.data import forecast_window
        from danlu.tasks._forecasting import forecast_meta

        row = forecast_window(forecast_meta(self.schema), history, covariates)
        return {name: values[0] for name, values in self.predict([row]).items()}

    def recommend(
        self,
        user: Any,
        k: int | None = None,
        *,
        exclude_seen: bool = True,
        items: Sequence[Any] | None = None,
    ) -> dict[str, Any]:
        """A recommender's ``k`` best items for ``user`` (an id as in the data; default ``k``:
        the recipe's ``recommend.k``), as ``POST .../recommend`` answers: ``items``,
        ``scores``, ``fallback`` (``"popularity"`` / ``"item_knn"`` for a user the model was not
        trained on, else None) and ``unknown_items``. ``items``: the user's recent item ids
        (cold start); ``exclude_seen`` leaves out what the user interacted with.

        Raises:
            ConfigError: the model is not a recommender.
            ValueError: ``k`` below 1 or above the catalogue's size.

        Example:
            >>> # danlu.load_model("movielens@staging").recommend("42", k=5)["items"]
        """
        from danlu.tasks._recommendation import recommend

        chosen = list(items) if items is not None else None
        return recommend(self, user, k, exclude_seen=exclude_seen, items=chosen)


Predictor = ModelBundle  # the name the Python API uses


def _card(raw: bytes, where: str) -> dict[str, Any]:
    """The model card, its shape checked: it is data from the store, not code."""
    try:
        card = json.loads(raw)
    except ValueError as exc:
        raise StoreError(f"{where}/model.json is not valid JSON ({exc}).") from None
    expected = {"type": str, "task": str, "options": dict, "schema": dict}
    wrong = [
        key
        for key, kind in expected.items()
        if not isinstance(card, dict) or not isinstance(card.get(key), kind)
    ]
    if wrong:
        raise StoreError(
            f"{where}/model.json is not a danlu model card: {', '.join(wrong)} missing or of the "
            "wrong type. Register the run again to rewrite it."
        )
    return card


def _check_registered(card: dict[str, Any], where: str) -> Task:
    """Check the card's architecture and task against the registries before anything is built.

    The card is read from the store, so its ``type`` is never imported as it stands: only a
    built-in architecture or a builder the operator allow-lists (``DANLU_ALLOWED_BUILDERS``).
    Its ``task`` must be a registered task; tasks are never imported from a path.
    """
    from danlu.models import MODELS
    from danlu.tasks import TASKS

    try:
        MODELS.get(card["type"], trusted=False)  # refuses an unlisted import path unimported
    except NotFoundError as exc:
        raise NotFoundError(f"{where}: {exc}") from None
    if card["task"] not in TASKS:
        raise NotFoundError(
            f"{where}: unknown task {card['task']!r} in model.json; a stored model's task must be "
            f"one of {', '.join(TASKS.names())}."
        )
    return TASKS.get(card["task"]).builder()


def load_bundle(
    read: Callable[[str], bytes | None], where: str, *, lazy: bool = False
) -> ModelBundle:
    """Rebuild a model from its files; ``read(file)`` returns the bytes, or None when absent.

    A model card with a ``base`` section (a LoRA or frozen-base transformer) comes with the
    adapter and head only: the pretrained base is rebuilt from the store's copy of it
    (``read.base_dir(sha256)``, which the store's readers have) when there is one, else from
    ``resolve_pretrained`` of its name, and its sha256 must equal the card's. The stored tensors
    are then loaded strictly: each must exist in the model, and each of the model's tensors not
    stored must be part of the untouched base.

    Only built-in architectures and tasks are rebuilt, plus builders whose module the operator
    allow-lists in ``DANLU_ALLOWED_BUILDERS``: an import path in ``model.json`` is never
    imported on its own say-so.

    With ``lazy=True`` the network of a built-in architecture is built on the first use of
    :attr:`ModelBundle.model` (the base, if any, is resolved then too): the card, the
    preprocessing, the calibration, the decoding and the weights file's safetensors header
    (:func:`weights_header`) are read and checked now, without torch, so a pickled or corrupt
    weights file is still refused here; only whether the tensors fit the network waits for the
    build. The weights are read again then and must be the bytes checked now. A server
    answering on ONNX Runtime loads this way where torch is not installed.

    Raises:
        StoreError: a required file is missing or malformed, the weights are pickled or
            corrupt or do not fit the model, or the base model found has another hash than the
            card's (the message names both).
        NotFoundError: the card names an architecture or task that is neither built in nor
            allow-listed (nothing was imported).

    Example:
        >>> # bundle = load_bundle(lambda f: (run_dir / f).read_bytes(), "run 3f2a")
    """
    from danlu.data import FeatureSchema, Preprocessor

    def required(file: str) -> bytes:
        raw = read(file)
        if raw is None:
            raise StoreError(f"{where} is missing its file '{file}'.")
        return raw

    card = _card(required("model.json"), where)
    task = _check_registered(card, where)
    schema = FeatureSchema.from_dict(card["schema"])
    weights = f"{where}/model.safetensors"
    model: torch.nn.Module | None = None
    build: Callable[[], torch.nn.Module] | None = None
    if lazy and ":" not in card["type"]:  # a built-in architecture: nothing of the user's runs
        raw = required("model.safetensors")
        weights_header(raw, weights)
        digest = hashlib.sha256(raw).digest()
        del raw  # read again when built: an ONNX server never holds the torch weights

        def build() -> torch.nn.Module:
            raw = required("model.safetensors")
            if hashlib.sha256(raw).digest() != digest:
                raise StoreError(
                    f"{weights} changed since the model was loaded; load the model again."
                )
            return _network(read, where, card, schema, task, raw)

    else:
        model = _network(read, where, card, schema, task, required("model.safetensors"))
    preprocessor = Preprocessor.from_dict(json.loads(required("preprocessing.json")))
    calibration = read("calibration.json")
    temperature = float(json.loads(calibration)["temperature"]) if calibration else 1.0
    if not temperature > 0:
        raise StoreError(f"{where}/calibration.json holds a temperature ≤ 0 ({temperature}).")
    decoding = read("decoding.json")  # e.g. per-label thresholds fitted on validation
    if decoding is not None:
        try:
            task = task.with_decoding(json.loads(decoding))
        except (ValueError, KeyError, TypeError) as exc:
            raise StoreError(f"{where}/decoding.json is malformed ({exc}).") from None
    return ModelBundle(model, task, schema, preprocessor, card, temperature, build=build)


def _network(
    read: Callable[[str], bytes | None],
    where: str,
    card: dict[str, Any],
    schema: FeatureSchema,
    task: Task,
    raw: bytes,
) -> torch.nn.Module:
    """The card's network with the weights ``raw`` loaded, in eval mode (see load_bundle)."""
    from danlu.config import ModelConfig
    from danlu.models import build_model
    from danlu.models._base_weights import BASE_CARD_KEY, load_stored_state, resolve_base
    from danlu.models._compressed import COMPRESSED_CARD_KEYS, load_compressed

    options = dict(card["options"])
    separate = BASE_CARD_KEY in card  # the weights file holds the adapter and head only
    if separate:  # rebuild the base from the store's copy (else the name), its hash checked
        options["pretrained"] = str(resolve_base(card, getattr(read, "base_dir", None), where))
    config = ModelConfig.model_validate({**options, "type": card["type"]})
    model = build_model(config, schema, task, trusted=False)
    weights = f"{where}/model.safetensors"
    tensors = load_weights(raw, weights)
    if separate:
        load_stored_state(model, tensors, base_separate=True, where=weights)
    elif any(card.get(key) for key in COMPRESSED_CARD_KEYS):  # pruned, factorised, int8
        model = load_compressed(model, card, tensors, weights)
    else:
        model.load_state_dict(tensors)
    from danlu.models._trees import TreeEnsemble

    if isinstance(model, TreeEnsemble):  # trees: the library's own text / JSON model (TreeSHAP)
        from danlu.models._gbdt import NATIVE_FILES

        for library, file in NATIVE_FILES.items():
            if (native := read(file)) is not None:
                model.native_model = (library, native)
    return model.eval()
