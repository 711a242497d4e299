"""Load a registered model by name and predict on raw rows.

``load_model("digits@production")`` reads the version's safetensors weights, model card and
preprocessing (JSON) — never a pickle — rebuilds the architecture from the model registry and
returns a :class:`Predictor` that applies the saved preprocessing to raw input.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from danlu.errors import DataError
from danlu.store import ModelVersion, SqlStore, Store, parse_model_ref

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd
    import torch

__all__ = ["Predictor", "load_model", "parse_model_ref"]


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
        temperature: float = 1.0,
    ) -> None:
        self.version = version
        self.model = model.eval()
        self.task = task
        self.schema = schema
        self.preprocessor = preprocessor
        self.temperature = temperature  # from calibration.json (temperature scaling), else 1

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
        if self.task.name == "classification":
            outputs = outputs / self.temperature
        return self.task.predict(outputs, self.schema)


def load_model(ref: str, *, store: Store | None = None) -> Predictor:
    """Load ``NAME``, ``NAME:VERSION`` or ``NAME@ALIAS`` from the model registry.

    Example:
        >>> import danlu
        >>> predictor = danlu.load_model("wine@staging")  # doctest: +SKIP
    """
    from danlu.models import load_bundle

    name, version, alias = parse_model_ref(ref)
    store = store or SqlStore()
    mv = store.get_model_version(name, version, alias=alias)

    def read(file: str) -> bytes | None:
        path = store.model_version_path(mv.name, mv.version, file)
        return path.read_bytes() if path.is_file() else None

    bundle = load_bundle(read, f"Model {mv.ref}")
    return Predictor(
        mv, bundle.model, bundle.task, bundle.schema, bundle.preprocessor, bundle.temperature
    )
