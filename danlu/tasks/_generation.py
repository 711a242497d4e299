"""Generation: a generative model of images (``model: {type: vae}``), scored by its ELBO.

The model's outputs, one row per image, are ``(N, 3 + latent + 2d)``: the reconstruction NLL
(nats, Bernoulli pixels), KL(q(z|x) || p(z)), an importance-weighted bound on -log p(x), the
latent mean μ, the reconstruction p(x|z = μ) and the residual x - reconstruction (so the report,
which sees outputs only, can show the originals; see ``danlu.models._vae``). The loss is
NLL + β·KL averaged over the batch, β rising linearly from 0 to 1 over the model's
``kl_anneal_epochs`` of training steps (KL annealing, Bowman et al. 2016: the decoder learns to
use z before the KL term pulls the posterior onto the prior); the loss counts the steps it sees
with gradients, and validation (no gradients) always uses β = 1, so ``val_loss`` is the held-out
negative ELBO per image. (A resumed run restarts the annealing.)

Metrics: the held-out ELBO (headline, nats per image, larger is better), the negative ELBO per
image and per pixel, the reconstruction NLL, the KL, the importance-weighted bound on -log p(x),
and the number of active latent units. Baseline in the same units: independent Bernoulli pixels
whose means are fitted on the training images. (PCA / probabilistic PCA model Gaussian pixels:
their likelihood is not comparable with Bernoulli nats, so they are left out.) The report adds
test images beside their reconstructions, samples from the prior and the latent means in 2-D
(their PCA when latent > 2), coloured by the label when ``data.target`` names one. Served per
row: ``prediction`` (the image's ELBO), ``reconstruction_nll``, ``kl``, ``latent_mean`` and
``reconstruction``.

The label column is optional (``data.target: null``: unlabelled images, see
``danlu.config._generation``); pixels must be in [0, 1] (``data.prepare.scale: minmax``).
"""

from __future__ import annotations

import io
import math
import re
import weakref
from typing import TYPE_CHECKING, Any

from danlu.tasks._base import Explained, ExtraSection, Task

if TYPE_CHECKING:
    import numpy as np
    import torch

    from danlu.config import ConfigIssue, LossConfig, Recipe
    from danlu.data import FeatureSchema, PreparedData

__all__ = ["GenerationTask"]

_PROLOGUE = re.compile(r"^.*?(?=<svg)", re.S)
_STATS = 3  # reconstruction NLL, KL, importance-weighted bound
_SHOWN = 10  # test images shown with their reconstructions
_PRIOR_SAMPLES = 32


class GenerationTask(Task):
    """Learns a generative model of images; scores each image by its ELBO.

    Args:
        anneal_steps: training steps over which β rises from 0 to 1 (0: β = 1 throughout),
            set by :meth:`configure` from the model's ``kl_anneal_epochs``.
    """

    name = "generation"
    input_kinds = frozenset({"numeric", "image"})
    target_kind = "label_sets"  # the optional label, one-hot: only colours the latent plot
    target_dtype = "float32"
    epoch_metrics = ("elbo", "reconstruction_nll", "kl")
    headline = "elbo"
    headline_mode = "max"
    headline_label = "ELBO (nats/image)"
    row_score_label = "each test image's ELBO (nats)"
    report_metrics = ("elbo", "reconstruction_nll", "kl", "elbo_per_pixel")
    smaller_is_better = Task.smaller_is_better | {
        "neg_elbo",
        "neg_elbo_per_pixel",
        "reconstruction_nll",
        "kl",
        "nll_iw",
    }

    def __init__(self, anneal_steps: int = 0) -> None:
        self.anneal_steps = anneal_steps
        self._model: weakref.ReferenceType[torch.nn.Module] | None = None

    def bind_model(self, model: torch.nn.Module) -> None:
        """Remember the model built for this task (weakly): the report draws prior samples
        from its decoder. The VAE's builder calls it."""
        self._model = weakref.ref(model)

    @property
    def model(self) -> torch.nn.Module | None:
        """The model bound by :meth:`bind_model`, if it is still alive."""
        return self._model() if self._model is not None else None

    # ---- recipe --------------------------------------------------------------------------------

    def check_recipe(self, recipe: Recipe) -> list[ConfigIssue]:
        from danlu.config import ConfigIssue

        issues = super().check_recipe(recipe)
        model = recipe.model.type
        if ":" not in model and model != "vae":  # another built-in: its outputs are no ELBO
            issues.append(
                ConfigIssue(
                    ("model", "type"),
                    "task: generation needs a generative model; this one does not output an ELBO",
                    model,
                    "Use model: {type: vae, latent: 8}.",
                )
            )
        if isinstance(recipe.data.target, list):
            issues.append(
                ConfigIssue(
                    ("data", "target"),
                    "task: generation takes at most one label column (it colours the latent plot)",
                    recipe.data.target,
                    "Name one column, or set data.target: null for unlabelled images.",
                )
            )
        if recipe.data.stream is not None:
            issues.append(
                ConfigIssue(
                    ("data", "stream"),
                    "task: generation keeps its images in memory (the report reads them back)",
                    "stream",
                    "Remove data.stream.",
                )
            )
        return issues

    def configure(self, recipe: Recipe, data: PreparedData) -> GenerationTask:
        """This task with its annealing length in steps, once the pixels are checked.

        Raises:
            ConfigError: a feature that is not numeric (text, categories, dates), or training
                pixels outside [0, 1] (naming ``data.prepare.scale`` and the fix).
        """
        import numpy as np

        from danlu.config import ConfigIssue, raise_issues

        issues = []
        kinds = {f.name: f.kind for f in data.schema.features}
        other = sorted(n for n, k in kinds.items() if k not in self.input_kinds)
        if other:
            issues.append(
                ConfigIssue(
                    ("data", "source"),
                    "task: generation models images (numeric pixel columns); these columns are "
                    f"not numeric: {', '.join(other[:10])}" + (" …" if len(other) > 10 else ""),
                    recipe.data.source if isinstance(recipe.data.source, str) else "DataFrame",
                    "Give pixel columns only, or drop the others with data.features: "
                    "{COLUMN: ignore}.",
                )
            )
        x = np.asarray(data.x_train)
        if not issues and len(x) and (x.min() < 0.0 or x.max() > 1.0):
            scale = recipe.data.prepare.scale
            issues.append(
                ConfigIssue(
                    ("data", "prepare", "scale"),
                    "the Bernoulli likelihood needs pixels in [0, 1]; with this scaling the "
                    f"training pixels range over [{x.min():g}, {x.max():g}]",
                    scale,
                    "Set data.prepare.scale: minmax (each pixel scaled to [0, 1] by its "
                    "training range).",
                )
            )
        if issues:
            raise_issues(issues, recipe._source)
        epochs = float(recipe.model.options().get("kl_anneal_epochs", 10.0))
        batches = max(1, math.ceil(len(x) / recipe.train.batch_size))
        return GenerationTask(anneal_steps=math.ceil(epochs * batches))

    # ---- engine --------------------------------------------------------------------------------

    def output_dim(self, schema: FeatureSchema) -> int:
        latent = getattr(self.model, "latent", 0)
        return _STATS + int(latent) + 2 * schema.input_dim

    def make_loss(
        self, class_weights: torch.Tensor | None = None, loss: LossConfig | None = None
    ) -> torch.nn.Module:
        import torch

        anneal = self.anneal_steps

        class AnnealedELBO(torch.nn.Module):
            """Mean of NLL + β·KL per image; β = min(1, steps / anneal) while training
            (outputs with gradients), 1 otherwise (validation: the negative ELBO)."""

            def __init__(self) -> None:
                super().__init__()
                self.steps = 0

            @property
            def beta(self) -> float:
                return 1.0 if anneal <= 0 else min(1.0, self.steps / anneal)

            def forward(self, outputs: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
                beta = 1.0
                if outputs.requires_grad:
                    self.steps += 1
                    beta = self.beta
                return (outputs[:, 0] + beta * outputs[:, 1]).mean()

        return AnnealedELBO()

    def quick_metrics(
        self, outputs: torch.Tensor, y: torch.Tensor, schema: FeatureSchema
    ) -> dict[str, float]:
        nll, kl = outputs[:, 0].double(), outputs[:, 1].double()
        return {
            "elbo": -(nll + kl).mean().item(),
            "reconstruction_nll": nll.mean().item(),
            "kl": kl.mean().item(),
        }

    # ---- metrics and predictions ---------------------------------------------------------------

    def metrics(self, outputs: np.ndarray, y: np.ndarray, schema: FeatureSchema) -> dict[str, Any]:
        import numpy as np

        out = np.asarray(outputs, dtype=np.float64)
        if not len(out):
            return {"images": 0}
        nll, kl, bound = out[:, 0], out[:, 1], out[:, 2]
        neg = float((nll + kl).mean())
        mu = _columns(out, schema)[0]
        d = schema.input_dim
        return {
            "elbo": -neg,
            "neg_elbo": neg,
            "elbo_per_pixel": -neg / d,
            "neg_elbo_per_pixel": neg / d,
            "reconstruction_nll": float(nll.mean()),
            "kl": float(kl.mean()),
            "nll_iw": float(bound.mean()),
            "active_units": float((mu.var(axis=0) > 0.01).sum()) if len(mu) > 1 else 0.0,
            "images": len(out),
        }

    def metric(self, name: str, outputs: np.ndarray, y: np.ndarray, schema: FeatureSchema) -> float:
        import numpy as np

        if name == "elbo":
            if not len(outputs):
                raise ValueError("the ELBO is undefined without images")
            out = np.asarray(outputs, dtype=np.float64)
            return float(-(out[:, 0] + out[:, 1]).mean())
        return super().metric(name, outputs, y, schema)

    def row_scores(self, outputs: np.ndarray, y: np.ndarray, schema: FeatureSchema) -> np.ndarray:
        """Each image's ELBO (nats): their mean is the headline."""
        import numpy as np

        out = np.asarray(outputs, dtype=np.float64)
        result: np.ndarray = -(out[:, 0] + out[:, 1])
        return result

    def row_losses(self, outputs: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Each image's negative ELBO (membership inference reads it)."""
        import numpy as np

        out = np.asarray(outputs, dtype=np.float64)
        result: np.ndarray = out[:, 0] + out[:, 1]
        return result

    def predict(
        self, outputs: np.ndarray, schema: FeatureSchema, temperature: float = 1.0
    ) -> dict[str, np.ndarray]:
        import numpy as np

        out = np.asarray(outputs, dtype=np.float64)
        mu, recon, _ = _columns(out, schema)
        return {
            "prediction": -(out[:, 0] + out[:, 1]),
            "reconstruction_nll": out[:, 0],
            "kl": out[:, 1],
            "latent_mean": mu,
            "reconstruction": recon,
        }

    # ---- trust report --------------------------------------------------------------------------

    def baselines(self, seed: int) -> dict[str, Any]:
        from sklearn.dummy import DummyRegressor

        class UniformPixels(DummyRegressor):  # type: ignore[misc]
            """Every pixel 1 or 0 with probability 1/2 (d · log 2 nats per image): the
            reference of no model."""

            def fit(self, x: np.ndarray, y: Any = None) -> UniformPixels:
                import numpy as np

                self.means_ = np.full(np.asarray(x).reshape(len(x), -1).shape[1], 0.5)
                return self

        return {
            "uniform pixels (dummy)": UniformPixels(),
            "independent Bernoulli pixels": PixelBernoulli(),
        }

    def baseline_outputs(self, estimator: Any, x: np.ndarray, schema: FeatureSchema) -> np.ndarray:
        """The baseline's NLL per image, no KL (it has no latent), its means as the
        reconstruction and zeros as the latent mean, in the model's output layout."""
        import numpy as np

        x = np.clip(np.asarray(x, dtype=np.float64).reshape(len(x), -1), 0.0, 1.0)
        p = estimator.means_  # (d,)
        nll = -(x * np.log(p) + (1 - x) * np.log1p(-p)).sum(axis=1)  # (n,)
        d, latent = x.shape[1], int(getattr(self.model, "latent", 0))
        out = np.zeros((len(x), _STATS + latent + 2 * d))
        out[:, 0] = out[:, 2] = nll
        out[:, _STATS + latent : _STATS + latent + d] = p
        out[:, _STATS + latent + d :] = x - p
        return out

    def explain(
        self, outputs: np.ndarray, y: np.ndarray, schema: FeatureSchema, temperature: float = 1.0
    ) -> Explained:
        import numpy as np

        elbo = self.row_scores(outputs, y, schema)
        labels = _labels(y, schema)
        return Explained(
            targets=np.zeros(len(elbo), dtype=np.int64),
            confidence=elbo,
            predictions=[round(float(v), 3) for v in elbo],
            truths=labels if labels is not None else [None] * len(elbo),
            what="the image's reconstruction NLL (nats)",
            notes=[
                "Rows are ranked by ELBO: 'most confident' are the images the model finds most "
                "typical; attributions say which pixels drive the reconstruction error."
            ],
        )

    def report_sections(
        self,
        outputs: np.ndarray,
        y: np.ndarray,
        schema: FeatureSchema,
        model: torch.nn.Module | None = None,
    ) -> list[ExtraSection]:
        import numpy as np

        out = np.asarray(outputs, dtype=np.float64)
        shape = _image_shape(schema)
        mu, recon, residual = _columns(out, schema)
        labels = _labels(y, schema)
        model = model if model is not None else self.model  # the report's, else the bound one
        section = ExtraSection(
            "generation",
            "Reconstructions, samples and latent space",
            data={
                "latent": int(mu.shape[1]),
                "active_units": int((mu.var(axis=0) > 0.01).sum()) if len(mu) > 1 else 0,
                "image_shape": list(shape),
            },
        )
        shown = min(_SHOWN, len(out))
        originals = recon[:shown] + residual[:shown]
        section.figures["Test images (top row) and their reconstructions (bottom row)"] = _grid(
            np.concatenate([originals, recon[:shown]]), shape, shown
        )
        sample: Any = getattr(model, "sample", None)
        if model is not None and callable(sample):
            import torch

            was_training = model.training
            model.eval()
            try:
                samples = sample(_PRIOR_SAMPLES, torch.Generator().manual_seed(0))
            finally:
                model.train(was_training)
            section.figures["Samples from the prior (decoder means at z ~ N(0, I), seed 0)"] = (
                _grid(samples.numpy().astype(np.float64), shape, 8)
            )
            section.data["prior_samples"] = _PRIOR_SAMPLES
        else:
            section.notes.append(
                "Prior samples need the trained model; it was not available to this report."
            )
        if len(mu) > 1:
            section.figures[_latent_caption(mu.shape[1], labels is not None)] = _latent_plot(
                mu, labels
            )
        section.summary = (
            f"{len(out)} test images; {section.data['active_units']} of {mu.shape[1]} latent "
            "units active"
        )
        section.notes.append(
            "Reconstructions are the decoder's pixel means at the latent mean z = μ; samples are "
            "its pixel means at z drawn from the prior. An active unit is a latent dimension "
            "whose mean varies over the test images (variance > 0.01): the others collapsed "
            "onto the prior."
        )
        if len(mu) > 1 and section.data["active_units"] == 0:
            section.flags.append(
                "no latent unit is active: the posterior collapsed onto the prior and the "
                "decoder ignores z (train longer, or anneal the KL term over more epochs: "
                "model.kl_anneal_epochs)"
            )
        return [section]

    # ---- signature -----------------------------------------------------------------------------

    def output_signature(self, schema: FeatureSchema) -> dict[str, Any]:
        latent = int(getattr(self.model, "latent", 0)) or None
        d = schema.input_dim
        number = {"type": "number"}
        return {
            "prediction": {
                "type": "float",
                "description": "the image's ELBO in nats (a lower bound on log p(x)): larger "
                "is more typical of the training images",
                "json_schema": number,
            },
            "reconstruction_nll": {
                "type": "float",
                "description": "-log p(x|z) in nats, averaged over posterior draws",
                "json_schema": number,
            },
            "kl": {
                "type": "float",
                "description": "KL(q(z|x) || N(0, I)) in nats (≥ 0)",
                "json_schema": number,  # plain: batch prediction writes it as a column
            },
            "latent_mean": {
                "type": "float",
                "shape": [latent] if latent else None,
                "description": "the posterior mean μ of the latent code",
                "json_schema": {"type": "array", "items": number}
                | ({"minItems": latent, "maxItems": latent} if latent else {}),
            },
            "reconstruction": {
                "type": "float",
                "shape": [d],
                "description": "the decoder's pixel means at z = μ, flattened, in [0, 1]",
                "json_schema": {
                    "type": "array",
                    "items": {"type": "number", "minimum": 0, "maximum": 1},
                    "minItems": d,
                    "maxItems": d,
                },
            },
        }


class PixelBernoulli:
    """Independent Bernoulli pixels: each pixel's mean over the training images (clipped to
    [1e-3, 1 - 1e-3] so an always-blank pixel costs a finite NLL)."""

    means_: np.ndarray

    def fit(self, x: np.ndarray, y: Any = None) -> PixelBernoulli:
        import numpy as np

        x = np.clip(np.asarray(x, dtype=np.float64).reshape(len(x), -1), 0.0, 1.0)
        self.means_ = np.clip(x.mean(axis=0), 1e-3, 1 - 1e-3)
        return self


def _image_shape(schema: FeatureSchema) -> tuple[int, int]:
    shape = tuple(schema.image_shape or ())
    d = schema.input_dim
    if len(shape) >= 2 and math.prod(shape) == d:
        return int(shape[-2]), int(shape[-1])
    side = math.isqrt(d)
    return (side, side) if side * side == d else (1, d)


def _labels(y: np.ndarray, schema: FeatureSchema) -> list[str] | None:
    """Each row's label (its one-hot column's class), or None for unlabelled images."""
    import numpy as np

    from danlu.config import UNLABELLED_TARGET

    classes = list(schema.classes or ())
    y = np.asarray(y)
    if schema.target == UNLABELLED_TARGET or len(classes) < 2 or y.ndim != 2 or not len(y):
        return None
    return [str(classes[i]) for i in y.argmax(axis=1)]


def _columns(out: np.ndarray, schema: FeatureSchema) -> tuple[np.ndarray, ...]:
    """The latent means (n, k), reconstructions (n, d) and residuals (n, d) of outputs."""
    d = schema.input_dim
    k = out.shape[1] - _STATS - 2 * d
    if k < 0:
        raise ValueError(
            f"generation outputs need {_STATS} + latent + 2 × {d} columns; got {out.shape[1]}"
        )
    return (
        out[:, _STATS : _STATS + k],
        out[:, _STATS + k : _STATS + k + d],
        out[:, _STATS + k + d :],
    )


def _svg(fig: Any) -> str:
    import matplotlib.pyplot as plt

    try:
        buffer = io.StringIO()
        fig.savefig(buffer, format="svg", bbox_inches="tight", metadata={"Date": None})
    finally:
        plt.close(fig)
    return _PROLOGUE.sub("", buffer.getvalue(), count=1)


def _grid(images: np.ndarray, shape: tuple[int, int], columns: int) -> str:
    """Images (n, H·W) in [0, 1] as a grid of grey squares, inline SVG (matplotlib on Agg, as
    the evaluator's figures: the task layer cannot import ``danlu.evaluate._plots``)."""
    import matplotlib
    import numpy as np

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(images)
    columns = max(1, min(columns, n))
    rows = max(1, math.ceil(n / columns))
    fig, axes = plt.subplots(rows, columns, figsize=(0.7 * columns, 0.7 * rows), squeeze=False)
    for i, ax in enumerate(axes.ravel()):
        ax.set_axis_off()
        if i < n:
            image = np.clip(images[i], 0.0, 1.0).reshape(shape)
            ax.imshow(image, cmap="gray_r", vmin=0.0, vmax=1.0, interpolation="nearest")
    fig.subplots_adjust(wspace=0.05, hspace=0.05)
    return _svg(fig)


def _latent_caption(latent: int, labelled: bool) -> str:
    where = "the latent means" if latent <= 2 else "the first two principal components of"
    of = "" if latent <= 2 else " the latent means"
    return f"Test images in latent space: {where}{of}" + (", coloured by label" if labelled else "")


def _latent_plot(mu: np.ndarray, labels: list[str] | None) -> str:
    """The latent means in 2-D (their PCA when latent > 2; latent 1: against zero)."""
    import matplotlib
    import numpy as np

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if mu.shape[1] > 2:
        from sklearn.decomposition import PCA

        xy = PCA(n_components=2, random_state=0).fit_transform(mu)
        names = ("PC 1", "PC 2")
    elif mu.shape[1] == 2:
        xy, names = mu, ("z₁", "z₂")
    else:
        xy, names = np.column_stack([mu[:, 0], np.zeros(len(mu))]), ("z₁", "")
    fig, ax = plt.subplots(figsize=(5.2, 4.2))
    if labels is None:
        ax.scatter(xy[:, 0], xy[:, 1], s=8, alpha=0.7, color="#4c78a8")
    else:
        cmap = plt.get_cmap("tab10" if len(set(labels)) <= 10 else "tab20")
        for i, label in enumerate(sorted(set(labels))):
            rows = np.asarray([value == label for value in labels])
            ax.scatter(
                xy[rows, 0], xy[rows, 1], s=8, alpha=0.7, color=cmap(i % cmap.N), label=label
            )
        ax.legend(frameon=False, loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=7)
    ax.set_xlabel(names[0])
    ax.set_ylabel(names[1])
    return _svg(fig)
