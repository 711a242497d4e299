"""Load a registered model by name and predict on raw rows.

``load_model("digits@production")`` reads the version's safetensors weights, model card and
preprocessing (JSON) — never a pickle — rebuilds the architecture from the model registry and
returns a :class:`Predictor` that applies the saved preprocessing to raw input.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from danlu.errors import ConfigError, DataError, StoreError
from danlu.store import ModelVersion, SqlStore, Store

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd
    import torch

__all__ = ["Predictor", "load_model", "parse_model_ref"]

_REF = re.compile(
    r"^(?P<name>[A-Za-z0-9][A-Za-z0-9._-]{0,99}?)(?::(?P<version>\d+)|@(?P<alias>[A-Za-z][A-Za-z0-9._-]*))?$"
)
_PICKLE_MAGIC = (b"\x80", b"PK\x03\x04")  # pickle protocol ≥ 2, and torch.save's zip archive


def parse_model_ref(ref: str) -> tuple[str, int | None, str | None]:
    """``"digits"`` (latest), ``"digits:3"`` or ``"digits@production"`` → (name, version, alias).

    Example:
        >>> parse_model_ref("digits@production")
        ('digits', None, 'production')
    """
    match = _REF.match(ref or "")
    if not match:
        raise ConfigError(
            f"'{ref}' is not a model reference; use NAME (latest), NAME:VERSION (e.g. digits:3) or NAME@ALIAS (e.g. digits@production)."
        )
    version = match.group("version")
    return match.group("name"), int(version) if version else None, match.group("alias")


def _load_weights(raw: bytes, where: str) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load as st_load

    if raw.startswith(_PICKLE_MAGIC):
        raise StoreError(
            f"{where} is a pickled file; danlu refuses to load pickled model files (they can run arbitrary code). Re-export the weights as safetensors."
        )
    try:
        return st_load(raw)
    except (SafetensorError, ValueError) as exc:
        raise StoreError(f"{where} is not a valid safetensors file ({exc}).") from None


class Predictor:
    """A registered model ready to predict raw rows.

    Example:
        >>> # model = danlu.load_model("wine@staging")
        >>> # model.predict(frame)["prediction"]
    """

    def __init__(
        self,
        version: ModelVersion,
        model: torch.nn.Module,
        task: Any,
        schema: Any,
        preprocessor: Any,
    ) -> None:
        self.version = version
        self.model = model.eval()
        self.task = task
        self.schema = schema
        self.preprocessor = preprocessor

    @property
    def signature(self) -> dict[str, Any]:
        return self.version.signature

    def __repr__(self) -> str:
        return f"Predictor({self.version.ref}, task={self.task.name}, inputs={len(self.schema.features)})"

    def _frame(
        self,
        data: pd.DataFrame | Sequence[Mapping[str, Any]] | Mapping[str, Sequence[Any]] | np.ndarray,
    ) -> pd.DataFrame:
        import numpy as np
        import pandas as pd

        names = [f.name for f in self.schema.features]
        if isinstance(data, pd.DataFrame):
            return data
        if isinstance(data, np.ndarray):
            if data.ndim != 2 or data.shape[1] != len(names):
                raise DataError(
                    f"An array input must have shape (rows, {len(names)}) with columns {names[:5]}{'...' if len(names) > 5 else ''}; got {data.shape}."
                )
            return pd.DataFrame(data, columns=names)
        if isinstance(data, Mapping):
            return pd.DataFrame(dict(data))
        return pd.DataFrame(list(data))

    def predict(
        self,
        data: pd.DataFrame | Sequence[Mapping[str, Any]] | Mapping[str, Sequence[Any]] | np.ndarray,
    ) -> dict[str, np.ndarray]:
        """Predict raw rows: a DataFrame, dict rows, a dict of columns, or an array in schema order.

        Returns ``prediction`` (labels or values) and, for classification, ``probabilities``.
        """
        import torch

        x = torch.as_tensor(self.preprocessor.transform(self._frame(data)))
        with torch.inference_mode():
            outputs = self.model(x).float().numpy()
        return self.task.predict(outputs, self.schema)


def load_model(ref: str, *, store: Store | None = None) -> Predictor:
    """Load ``NAME``, ``NAME:VERSION`` or ``NAME@ALIAS`` from the model registry.

    Example:
        >>> import danlu
        >>> predictor = danlu.load_model("wine@staging")  # doctest: +SKIP
    """
    from danlu.config import ModelConfig
    from danlu.data import FeatureSchema, Preprocessor
    from danlu.models import build_model
    from danlu.tasks import get_task

    name, version, alias = parse_model_ref(ref)
    store = store or SqlStore()
    mv = store.get_model_version(name, version, alias=alias)

    def read(file: str) -> bytes:
        path = store.model_version_path(mv.name, mv.version, file)
        if not path.is_file():
            raise StoreError(f"Model {mv.ref} is missing its file '{file}' in the registry.")
        return path.read_bytes()

    card = json.loads(read("model.json"))
    schema = FeatureSchema.from_dict(card["schema"])
    task = get_task(card["task"])
    model = build_model(ModelConfig(type=card["type"], **card["options"]), schema, task)
    model.load_state_dict(_load_weights(read("model.safetensors"), f"'{mv.ref}/model.safetensors'"))
    preprocessor = Preprocessor.from_dict(json.loads(read("preprocessing.json")))
    return Predictor(mv, model, task, schema, preprocessor)
