"""Model architectures: a registry of ``name → builder(spec, schema, task) → nn.Module``.

Each builder owns the pydantic spec of its options. Users plug in their own builder by import
path: ``model: {type: mypkg.models:build}``; if the function has a ``spec`` attribute (a pydantic
class) the options are validated with it, otherwise it receives them as a dict. A stored model
(whose ``model.json`` anyone with write access to the store could edit) is rebuilt only from the
built-in architectures or from builders whose module the operator allow-lists in
``DANLU_ALLOWED_BUILDERS``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from danlu.config import ConfigIssue, ModelConfig
from danlu.errors import NotFoundError
from danlu.models._anomaly import (
    AutoencoderSpec,
    DeepSVDDSpec,
    build_autoencoder,
    build_deep_svdd,
)
from danlu.models._auto import DEFAULT_CANDIDATES, AutoSpec, build_auto
from danlu.models._bundle import ModelBundle, Predictor, Rows, load_bundle, load_weights
from danlu.models._classical import SPECS as CLASSICAL_SPECS
from danlu.models._classical import build_classical
from danlu.models._cnn import CNNSpec, build_cnn
from danlu.models._cnn1d import CNN1DSpec, build_cnn1d
from danlu.models._common import ModelSpec
from danlu.models._gbdt import GBDTSpec, build_gbdt
from danlu.models._gpt import GPTSpec, build_gpt
from danlu.models._mlp import MLPSpec, build_mlp
from danlu.models._pretrained import resolve_pretrained
from danlu.models._recipe_data import prepare_recipe_data
from danlu.models._recommenders import BPRMFSpec, TwoTowerSpec, build_bpr_mf, build_two_tower
from danlu.models._text import (
    LoraSpec,
    TextCNNSpec,
    TransformerSpec,
    build_text_cnn,
    build_transformer,
    count_parameters,
    merge_adapters,
)
from danlu.models._vae import VAESpec, build_vae, sample_images, write_images
from danlu.models._window import LSTMSpec, TCNSpec, build_lstm, build_tcn
from danlu.registry import Registry

if TYPE_CHECKING:
    import torch.nn as nn

    from danlu.data import FeatureSchema
    from danlu.tasks import Task

__all__ = [
    "DEFAULT_CANDIDATES",
    "MODELS",
    "AutoSpec",
    "AutoencoderSpec",
    "CNN1DSpec",
    "CNNSpec",
    "DeepSVDDSpec",
    "GBDTSpec",
    "GPTSpec",
    "LSTMSpec",
    "LoraSpec",
    "MLPSpec",
    "ModelBundle",
    "Predictor",
    "Rows",
    "ModelSpec",
    "TCNSpec",
    "TextCNNSpec",
    "TransformerSpec",
    "VAESpec",
    "build_model",
    "check_stored_recipe",
    "check_model_config",
    "count_parameters",
    "load_bundle",
    "load_weights",
    "merge_adapters",
    "prepare_recipe_data",
    "resolve_pretrained",
    "sample_images",
    "write_images",
]

MODELS: Registry[Any] = Registry("model")
MODELS.register("mlp", spec=MLPSpec)(build_mlp)
MODELS.register("cnn", spec=CNNSpec)(build_cnn)
MODELS.register("cnn1d", spec=CNN1DSpec)(build_cnn1d)  # sequences: (channels, length) per row
MODELS.register("gbdt", spec=GBDTSpec)(build_gbdt)  # gradient-boosted trees (TreeEnsemble)
MODELS.register("auto", spec=AutoSpec)(build_auto)  # trains the candidates, ships the best
MODELS.register("transformer", spec=TransformerSpec)(build_transformer)  # pretrained or scratch
MODELS.register("text_cnn", spec=TextCNNSpec)(build_text_cnn)
MODELS.register("autoencoder", spec=AutoencoderSpec)(build_autoencoder)  # task: anomaly
MODELS.register("deep_svdd", spec=DeepSVDDSpec)(build_deep_svdd)  # task: anomaly
MODELS.register("lstm", spec=LSTMSpec)(build_lstm)  # task: forecasting (cell: lstm | gru)
MODELS.register("tcn", spec=TCNSpec)(build_tcn)  # task: forecasting: dilated causal convolutions
MODELS.register("vae", spec=VAESpec)(build_vae)  # task: generation: images, ELBO
MODELS.register("bpr_mf", spec=BPRMFSpec)(build_bpr_mf)  # task: recommendation
MODELS.register("two_tower", spec=TwoTowerSpec)(build_two_tower)  # task: recommendation
MODELS.register("gpt", spec=GPTSpec)(build_gpt)  # task: language_model: a decoder-only transformer
for _kind, _spec in CLASSICAL_SPECS.items():  # forecasting: fitted by statsmodels (affine)
    MODELS.register(_kind, spec=_spec)(build_classical)


def check_model_config(
    config: ModelConfig, *, trusted: bool = True
) -> tuple[Any, list[ConfigIssue]]:
    """Validate the model block against its builder's spec; return (options, issues).

    Issues carry key paths under ``model`` so the recipe loader can point at the YAML line.
    ``trusted=False`` (a model block read from a stored artifact) imports a builder path only
    when ``DANLU_ALLOWED_BUILDERS`` allows it (see :meth:`danlu.registry.Registry.get`).
    """
    try:
        entry = MODELS.get(config.type, trusted=trusted)
    except NotFoundError as exc:
        return None, [ConfigIssue(("model", "type"), str(exc).rstrip("."), None, "")]
    if entry.spec is None:
        return config.options(), []
    try:
        return entry.spec.model_validate(config.options()), []
    except ValidationError as exc:
        issues = []
        for err in exc.errors():
            loc = ("model", *err["loc"])
            if err["type"] == "extra_forbidden":
                from danlu.registry import did_you_mean

                valid = [k for k in entry.spec.model_fields]
                hint = did_you_mean(str(err["loc"][-1]), valid).strip()
                fix = f"{hint} Options of '{config.type}': {', '.join(valid)}.".strip()
                issues.append(ConfigIssue(loc, "unknown key", None, fix))
            else:
                issues.append(ConfigIssue(loc, err["msg"], err.get("input"), ""))
        return None, issues


def build_model(
    config: ModelConfig, schema: FeatureSchema, task: Task, *, trusted: bool = True
) -> nn.Module:
    """Build the model a recipe asks for (``trusted=False``: one a stored artifact describes).

    Example:
        >>> # build_model(recipe.model, prepared.schema, get_task(recipe.task))
    """
    from danlu.config import raise_issues

    options, issues = check_model_config(config, trusted=trusted)
    raise_issues(issues, getattr(config, "_source", None))
    return MODELS.get(config.type, trusted=trusted).builder(options, schema, task)


def check_stored_recipe(recipe: Mapping[str, Any], where: str) -> None:
    """Refuse a recipe read back from the store whose model or task is an import path the
    operator has not allow-listed (``DANLU_ALLOWED_BUILDERS``), before anything is imported.

    A recipe in the store is data anyone with write access to the store can edit; running it
    again (cross-validation of a stored run, a ``danlu tune --worker`` joining a study) must not
    import code on its say-so.

    Raises:
        NotFoundError: naming the builder or task and the variable to set.
    """
    from danlu.tasks import TASKS

    model = recipe.get("model")
    kind = model.get("type") if isinstance(model, Mapping) else None
    try:
        if isinstance(kind, str):
            MODELS.get(kind, trusted=False)
        task = recipe.get("task")
        if isinstance(task, str):
            TASKS.get(task, trusted=False)
    except NotFoundError as exc:
        raise NotFoundError(f"{where}: {exc}") from None
