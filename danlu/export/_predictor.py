"""Load a registered model by name and predict on raw rows.

``load_model("digits@production")`` reads the version's safetensors weights, model card and
preprocessing (JSON) — never a pickle — rebuilds the architecture from the model registry and
returns the :class:`~danlu.models.Predictor` that applies the saved preprocessing to raw input.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from danlu.models import Predictor
from danlu.store import SqlStore, Store, parse_model_ref  # parse_model_ref: re-exported

if TYPE_CHECKING:
    from danlu.store import ModelVersion

__all__ = ["Predictor", "load_model", "load_version", "parse_model_ref"]


def load_version(store: Store, mv: ModelVersion) -> Predictor:
    """The predictor of a registered version (its files read from the store).

    Where torch is not installed (a slim serving image) the network is not built: the
    predictor's preprocessing, signature and decoding work, and its first prediction says that
    it needs torch.
    """
    from danlu.models import load_bundle
    from danlu.models._bundle import torch_installed

    lazy = not torch_installed()
    predictor = load_bundle(store.model_reader(mv), f"Model {mv.ref}", lazy=lazy)
    predictor.version = mv
    return predictor


def load_model(ref: str, *, store: Store | None = None) -> Predictor:
    """Load ``NAME``, ``NAME:VERSION`` or ``NAME@ALIAS`` from the model registry.

    Example:
        >>> import danlu
        >>> predictor = danlu.load_model("wine@staging")  # doctest: +SKIP
        >>> predictor.predict(frame)["prediction"]  # doctest: +SKIP
    """
    store = store or SqlStore()
    return load_version(store, store.resolve(ref))
