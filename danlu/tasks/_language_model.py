"""Language modelling: next-token prediction on packed blocks of byte-level BPE tokens.

The task prepares its own rows (:meth:`LanguageModelTask.prepare_data`, see
:mod:`danlu.data._lm`): each ``x`` row is a block of ``context + 1`` token ids, each ``y`` row the
UTF-8 bytes of the block's ``context`` target tokens (0: padding). The model (``model: {type:
gpt}``) returns the negative log-likelihood in nats of each target token, (N, T); the loss is
their mean over the targets with ``y > 0``. Metrics: perplexity ``exp(mean NLL)`` (the headline,
smaller is better), bits per byte ``sum NLL / ln 2 / sum bytes`` (comparable across
tokenizers), the mean NLL and the token count. Baselines (unigram, interpolated Kneser-Ney
n-gram on the same tokens) and generated samples are the report's language-model section
(``danlu.evaluate._lm_report``). Served: ``POST /v1/models/{name}/generate`` (a ``prompt`` in,
generated ``text`` out); ``/predict`` scores a text by its mean NLL per token.

Fine-tuning (``model.base: NAME@ALIAS``): the base's tokenizer tokenizes the corpus and its
weights initialise the model; the base is read from the store through a loader that the
training layer registers (:func:`set_base_loader`): this layer cannot open the store itself.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from danlu.errors import ConfigError
from danlu.tasks._base import Explained, Task

if TYPE_CHECKING:
    import numpy as np
    import torch

    from danlu.config import ConfigIssue, LossConfig, Recipe
    from danlu.data import FeatureSchema, PreparedData

__all__ = ["DEFAULT_CONTEXT", "BaseLM", "LanguageModelTask", "load_base", "set_base_loader"]

#: ``model.context``'s default (the GPT's block size), read here without importing the model.
DEFAULT_CONTEXT = 128
#: The architecture keys of ``model: {type: gpt}`` a fine-tuned model must share with its base.
ARCHITECTURE = ("layers", "heads", "width", "context", "tie_weights")
_ARCH_DEFAULTS: dict[str, Any] = {
    "layers": 4, "heads": 4, "width": 256, "context": DEFAULT_CONTEXT, "tie_weights": True,
}  # fmt: skip
LN2 = math.log(2.0)

#: What a base loader returns for ``model.base``: a mapping with ``ref`` (what it resolved to),
#: ``task`` (the base's task name), ``options`` (its model options), ``state`` (its weights as a
#: plain GPT state dict, adapters merged) and ``preprocessor`` (its fitted Preprocessor).
BaseLM = Mapping[str, Any]
_BASE_LOADER: list[Callable[[str], BaseLM]] = []


def set_base_loader(loader: Callable[[str], BaseLM]) -> None:
    """Register how ``model.base`` references are loaded (the training layer does, on import).

    Example:
        >>> # set_base_loader(lambda ref: {...})
    """
    _BASE_LOADER[:] = [loader]


def load_base(ref: str) -> BaseLM:
    """The registered base model ``ref`` (``NAME@ALIAS``, ``NAME:VERSION`` or a run id).

    Raises:
        ConfigError: no loader is registered, ``ref`` does not resolve, or it is not a
            language model (the message names ``model.base``).
    """
    if not _BASE_LOADER:
        raise ConfigError(
            f"model.base: {ref!r} is read from the store by the training stages; import "
            "danlu.train (danlu train / danlu run do) before preparing this recipe's data."
        )
    base = _BASE_LOADER[0](ref)
    if base.get("task") != "language_model":
        raise ConfigError(
            f"model.base: {ref!r} ({base.get('ref', ref)}) is a {base.get('task')} model, not a "
            "language model. Name a model trained with task: language_model."
        )
    return base


def _context(recipe: Recipe) -> int:
    value = recipe.model.options().get("context", DEFAULT_CONTEXT)
    return int(value) if isinstance(value, int) and value >= 2 else DEFAULT_CONTEXT


def _nll_weight(outputs: Any, y: Any) -> tuple[Any, Any]:
    """(NLL, weight) as float64 numpy arrays, weight 1 where the target is real (y > 0)."""
    import numpy as np

    nll = np.asarray(outputs, dtype=np.float64)
    weight = (np.asarray(y, dtype=np.float64) > 0).astype(np.float64)
    return nll.reshape(weight.shape), weight


class LanguageModelTask(Task):
    """Next-token prediction on packed token blocks; perplexity and bits per byte.

    Args:
        base_state: the base model's weights (a plain GPT state dict) when fine-tuning, set by
            :meth:`configure`; the GPT builder starts from them. Not saved with the model.
        base_ref: what ``model.base`` resolved to.
    """

    name = "language_model"
    input_kinds = frozenset({"text"})
    target_kind = "values"
    target_dtype = "float32"
    epoch_metrics = ("perplexity",)
    headline = "perplexity"
    headline_mode = "min"
    headline_label = "perplexity"
    row_score_label = "minus each block's mean negative log-likelihood per token"
    report_metrics = ("perplexity", "bits_per_byte", "nll")
    smaller_is_better = frozenset({"loss", "perplexity", "bits_per_byte", "nll"})
    report_skips = {
        "baselines": "the generic baselines fit feature columns; a language model's baselines "
        "(a unigram and a Kneser-Ney n-gram on the same tokens) are the 'Language-model "
        "baselines' section",
        "explain": "attributing a block's per-token losses to its token ids is not wired for "
        "a language model (the 'Generated samples' section shows what it learned)",
        "robustness": "perturbing a block's text perturbs the very tokens it is scored on, so "
        "the perplexity change would not measure robustness",
        "membership": "the audit's reference is a row baseline, and a language model's "
        "baselines are n-gram models of token streams",
        "fairness": "token blocks have no group column",
        "cross_validation": "folds of token blocks would cut documents across folds",
    }

    def __init__(self, base_state: Mapping[str, Any] | None = None, base_ref: str = "") -> None:
        self.base_state, self.base_ref = base_state, base_ref

    # ---- recipe --------------------------------------------------------------------------------

    def check_recipe(self, recipe: Recipe) -> list[ConfigIssue]:
        """What makes no sense for a language model, each with the key and a fix: class
        weights, imbalance methods, the focal loss (no classes); ``data.augment``,
        ``data.reduce``, ``data.stream``, ``data.target`` (the text column is
        ``language_model.text``); adversarial training (token ids have no input gradient),
        DP-SGD and distillation (not supported for this task); a vocabulary under 257; an
        ``eval_stride`` over the context; LoRA without ``model.base``."""
        from danlu.config import ConfigIssue
        from danlu.data._lm import MIN_VOCAB

        issues = super().check_recipe(recipe)
        data, train, config = recipe.data, recipe.train, recipe.language_model

        def refuse(loc: tuple[str, ...], problem: str, found: Any, fix: str) -> None:
            issues.append(ConfigIssue(loc, problem, found, fix))

        if recipe.model.type != "gpt":
            refuse(("model", "type"), "a language model is a GPT", recipe.model.type,
                   "Use model: {type: gpt}.")  # fmt: skip
        if data.augment:
            refuse(("data", "augment"), "augmentation transforms feature columns; a language "
                   "model's rows are token ids", "augment", "Remove data.augment.")  # fmt: skip
        if data.reduce is not None:
            refuse(("data", "reduce"), "feature selection / PCA does not apply to token ids",
                   "reduce", "Remove data.reduce.")  # fmt: skip
        if data.stream is not None:
            refuse(("data", "stream"), "task: language_model reads its documents into memory",
                   "stream", "Remove data.stream.")  # fmt: skip
        if data.target is not None:
            refuse(("data", "target"), "a language model has no target column: it predicts "
                   "the text itself", data.target,
                   "Remove data.target; name the text column in language_model.text.")  # fmt: skip
        if data.split.by != "random" or data.split.group is not None:
            refuse(("data", "split", "by"), "documents are split at random (seeded) by "
                   "document", data.split.by,
                   "Remove data.split.by / group (val, test and seed are read).")  # fmt: skip
        if train.adversarial is not None:
            refuse(("train", "adversarial"), "adversarial training perturbs input features "
                   "along the loss's gradient; token ids have none", "adversarial",
                   "Remove train.adversarial.")  # fmt: skip
        if train.privacy is not None:
            refuse(("train", "privacy"), "DP-SGD is not supported for task: language_model "
                   "(per-example gradients through the GPT are not wired)", "privacy",
                   "Remove train.privacy.")  # fmt: skip
        if train.distill is not None:
            refuse(("train", "distill"), "distillation matches a teacher's class or value "
                   "outputs; a language model's outputs are per-token losses", "distill",
                   "Remove train.distill.")  # fmt: skip
        if config is not None and config.vocab_size < MIN_VOCAB:
            refuse(("language_model", "vocab_size"), "a byte-level vocabulary needs the 256 "
                   f"bytes and the end-of-document token ({MIN_VOCAB}) at least",
                   config.vocab_size, f"Set language_model.vocab_size to {MIN_VOCAB} or more "
                   "(e.g. 4096).")  # fmt: skip
        options = recipe.model.options()
        if (
            config is not None
            and config.eval_stride is not None
            and not options.get("base")
            and config.eval_stride > _context(recipe)
        ):
            refuse(("language_model", "eval_stride"), "held-out blocks cannot slide by more "
                   f"than the model's context ({_context(recipe)} tokens)", config.eval_stride,
                   f"Set language_model.eval_stride to {_context(recipe)} or less (default: "
                   "half the context).")  # fmt: skip
        if options.get("finetune") == "lora" and not options.get("base"):
            refuse(("model", "finetune"), "LoRA adapts a trained model, and model.base names "
                   "none", "lora", "Set model.base: NAME@ALIAS (a registered language model), "
                   "or remove finetune.")  # fmt: skip
        return issues

    def prepare_data(self, recipe: Recipe, frame: Any = None) -> PreparedData:
        """The recipe's documents as packed token blocks (``danlu.data._lm``): tokenized with a
        byte-level BPE trained on the training documents, or with ``model.base``'s tokenizer.

        Raises:
            ConfigError: ``model.base`` is not a language model, or its context differs.
            RecipeDataError: see :func:`danlu.data._lm.prepare_lm_data`.
        """
        from danlu.config import LanguageModelConfig
        from danlu.data._lm import lm_tokenizer, prepare_lm_data

        config = recipe.language_model or LanguageModelConfig()
        context, tokenizer = _context(recipe), None
        ref = recipe.model.options().get("base")
        if isinstance(ref, str) and ref:
            base = load_base(ref)
            self._check_architecture(recipe, base)
            tokenizer = lm_tokenizer(base["preprocessor"])
        return prepare_lm_data(
            recipe.data,
            config,
            context=context,
            frame=frame,
            tokenizer=tokenizer,
            base=ref if isinstance(ref, str) and ref else None,
        )

    @staticmethod
    def _check_architecture(recipe: Recipe, base: BaseLM) -> None:
        """A fine-tuned model has its base's shape: each architecture key the recipe gives
        (or leaves at its default) must equal the base's."""
        from danlu.config import ConfigIssue, raise_issues

        options, theirs = recipe.model.options(), dict(base.get("options") or {})
        issues = []
        for key in ARCHITECTURE:
            mine = options.get(key, _ARCH_DEFAULTS[key])
            have = theirs.get(key, _ARCH_DEFAULTS[key])
            if mine != have:
                issues.append(
                    ConfigIssue(
                        ("model", key),
                        f"the base model {base.get('ref', '')} has {key} {have}; a model "
                        "fine-tuned from it keeps its shape",
                        mine,
                        f"Set model.{key}: {have}.",
                    )
                )
        raise_issues(issues, recipe._source)

    def configure(self, recipe: Recipe, data: PreparedData) -> LanguageModelTask:
        """With ``model.base``: this task carrying the base's weights for the builder."""
        ref = recipe.model.options().get("base")
        if not (isinstance(ref, str) and ref):
            return self
        base = load_base(ref)
        vocab = data.schema.features[0].vocab_size if data.schema.features else 0
        embedding = next((v for k, v in base["state"].items() if k.endswith("embed.weight")), None)
        if embedding is not None and vocab and int(embedding.shape[0]) != vocab:
            raise ConfigError(
                f"model.base: {ref!r} has a vocabulary of {int(embedding.shape[0])} tokens but "
                f"the data was tokenized to {vocab}; this is a bug, please report it."
            )
        return LanguageModelTask(base_state=base["state"], base_ref=str(base.get("ref", ref)))

    # ---- engine --------------------------------------------------------------------------------

    def output_dim(self, schema: FeatureSchema) -> int:
        """The tokenizer's vocabulary size (the GPT's vocabulary)."""
        for feature in schema.features:
            if feature.kind == "text" and feature.vocab_size:
                return int(feature.vocab_size)
        raise ConfigError(
            "task: language_model needs its own prepared data (token blocks); this schema "
            "has no tokenizer. Prepare the data with the recipe's task: language_model."
        )

    def make_loss(
        self, class_weights: torch.Tensor | None = None, loss: LossConfig | None = None
    ) -> torch.nn.Module:
        import torch

        if loss is not None and loss.name != "default":
            raise ConfigError(
                f"train.loss '{loss.name}' does not apply to task: language_model, which "
                "trains on the next-token negative log-likelihood. Remove train.loss."
            )

        class _MeanNLL(torch.nn.Module):
            """The mean NLL over real target tokens (y > 0; padding is ignored)."""

            def forward(self, outputs: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
                weight = (y > 0).to(outputs.dtype)  # (N, T)
                return (outputs * weight).sum() / weight.sum().clamp_min(1.0)

        return _MeanNLL()

    def quick_metrics(
        self, outputs: torch.Tensor, y: torch.Tensor, schema: FeatureSchema
    ) -> dict[str, float]:
        weight = (y > 0).double()
        tokens = weight.sum().item()
        if not tokens:
            return {"perplexity": float("nan")}
        nll = (outputs.double() * weight).sum().item() / tokens
        return {"perplexity": math.exp(min(nll, 700.0))}

    # ---- metrics and predictions ---------------------------------------------------------------

    def metrics(self, outputs: np.ndarray, y: np.ndarray, schema: FeatureSchema) -> dict[str, Any]:
        import numpy as np

        nll, weight = _nll_weight(outputs, y)
        tokens = float(weight.sum())
        total_bytes = float(np.asarray(y, dtype=np.float64).sum())
        if not tokens:
            return {"tokens": 0.0}
        total = float((nll * weight).sum())
        return {
            "perplexity": math.exp(min(total / tokens, 700.0)),
            "bits_per_byte": total / LN2 / max(total_bytes, 1.0),
            "nll": total / tokens,
            "tokens": tokens,
            "bytes": total_bytes,
        }

    def metric(self, name: str, outputs: np.ndarray, y: np.ndarray, schema: FeatureSchema) -> float:
        value = self.metrics(outputs, y, schema).get(name)
        if not isinstance(value, float):
            raise ValueError(f"{name} is undefined on these rows (no target token)")
        return value

    def predict(
        self, outputs: np.ndarray, schema: FeatureSchema, temperature: float = 1.0
    ) -> dict[str, np.ndarray]:
        """Each row's mean negative log-likelihood per token (nats): how likely the model finds
        the text, padded to ``context + 1`` tokens with the end-of-document token (which counts)
        (``/predict`` scores text; ``/generate`` writes it)."""
        import numpy as np

        nll = np.asarray(outputs, dtype=np.float64)
        return {"prediction": nll.reshape(len(nll), -1).mean(axis=1)}

    def row_scores(self, outputs: np.ndarray, y: np.ndarray, schema: FeatureSchema) -> np.ndarray:
        """Minus each block's mean NLL per real target token (larger is better; a block with
        none scores 0)."""
        import numpy as np

        nll, weight = _nll_weight(outputs, y)
        counts = weight.sum(axis=1)
        return -(nll * weight).sum(axis=1) / np.maximum(counts, 1.0)

    def row_losses(self, outputs: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Each block's mean NLL per real target token (membership inference would read it)."""
        return -self.row_scores(outputs, y, None)  # type: ignore[arg-type]

    # ---- trust report --------------------------------------------------------------------------

    def baselines(self, seed: int) -> dict[str, Any]:
        """None on the rows: the n-gram baselines fit whole token streams
        (``danlu.evaluate._lm_report``)."""
        return {}

    def baseline_outputs(self, estimator: Any, x: np.ndarray, schema: FeatureSchema) -> np.ndarray:
        """Never reached through danlu: :meth:`baselines` fits no row estimator (the n-gram
        baselines score token streams in ``danlu.evaluate._lm_report``)."""
        raise TypeError(
            f"task: language_model fits no row baselines, so it cannot score with a "
            f"{type(estimator).__name__}; its baselines are the report's n-gram models"
        )

    def explain(
        self, outputs: np.ndarray, y: np.ndarray, schema: FeatureSchema, temperature: float = 1.0
    ) -> Explained:
        import numpy as np

        scores = self.row_scores(outputs, y, schema)
        return (
            Explained(
                targets=None,
                confidence=scores,
                predictions=[float(math.exp(min(-s, 700.0))) for s in scores],
                truths=[None] * len(scores),
                what="each block's mean negative log-likelihood",
                notes=["Rows are token blocks; 'most confident' are the best-predicted blocks."],
            )
            if len(scores)
            else Explained(None, np.zeros(0), [], [], "nothing")
        )

    # ---- signature -----------------------------------------------------------------------------

    def signature(self, schema: FeatureSchema) -> dict[str, Any]:
        """``/predict`` scores a text (``prompt``, its first ``context + 1`` tokens) by its
        mean negative log-likelihood per token; ``generate`` describes
        ``POST /v1/models/{name}/generate``: a prompt in, generated text out."""
        signature = super().signature(schema)
        context = next((f.max_length - 1 for f in schema.features if f.kind == "text"), 0)
        signature["context"] = context
        signature["generate"] = {
            "inputs": {
                "prompt": {
                    "type": "string",
                    "description": f"the text to continue (its last {context} tokens are read)",
                }
            },
            "outputs": {
                "text": {
                    "type": "string",
                    "description": "the generated continuation of the prompt",
                    "json_schema": {"type": "string"},
                }
            },
        }
        return signature

    def output_signature(self, schema: FeatureSchema) -> dict[str, Any]:
        return {
            "prediction": {
                "type": "float",
                "description": "the text's mean negative log-likelihood per token (nats; "
                "exp of it is the perplexity); generated text comes from /generate",
                "json_schema": {"type": "number"},
            }
        }
