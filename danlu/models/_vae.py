"""A variational autoencoder for ``task: generation`` on images (Kingma & Welling, 2014), and
the sampling API behind ``danlu generate`` for such models.

The encoder maps pixels in [0, 1] to the mean and log-variance of a diagonal Gaussian posterior
q(z|x); the decoder maps a latent z to Bernoulli pixel probabilities p(x|z); the prior is
N(0, I). The model outputs one row per image, ``(N, 3 + latent + d)``:

    [reconstruction NLL, KL(q(z|x) || p(z)), IWAE bound on -log p(x),
     latent mean μ (latent columns), reconstruction p(x|z = μ) (d columns),
     residual x - reconstruction (d columns: the report shows the originals beside them)]

In training mode the reconstruction NLL uses one reparameterised draw z = μ + σ ε, ε ~ N(0, I)
(the IWAE column then equals NLL + KL). In eval mode the draws are ``samples`` fixed ε vectors
kept in a buffer (antithetic pairs ±ε, drawn once from a seeded generator), so the outputs are
deterministic — the ONNX parity check compares them — and still average the reconstruction term
over the posterior instead of reading it at its mean (which would overstate the ELBO). The loss
(``GenerationTask.make_loss``) is NLL + β·KL with β annealed from 0 to 1.

Why Bernoulli on [0, 1] pixels: digit strokes are nearly binary (most pixels sit at 0 or at the
top of the range), Bernoulli pixels need no variance to learn (a Gaussian's σ collapses to 0 on
the always-blank border pixels, sending the likelihood to infinity), and it is the standard
choice for MNIST-like digits, so the nats compare with the literature's and with the per-pixel
Bernoulli baseline. On grey values it is not a normalised density on [0, 1] (Loaiza-Ganem &
Cunningham, 2019): the ELBO compares models under the same likelihood only.
"""

from __future__ import annotations

import math
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

from pydantic import Field

from danlu.config import ConfigIssue
from danlu.errors import ConfigError, DataError
from danlu.models._common import Activation, ModelSpec, make_activation

if TYPE_CHECKING:
    import numpy as np
    import torch
    import torch.nn as nn

    from danlu.config import Recipe
    from danlu.data import FeatureSchema
    from danlu.tasks import Task

__all__ = ["MAX_SAMPLES", "VAESpec", "build_vae", "sample_images", "write_images"]

#: The most images one call of :func:`sample_images` / :func:`write_images` makes.
MAX_SAMPLES = 10_000
# scale settings that leave pixels outside [0, 1] (the Bernoulli likelihood needs them inside)
_UNBOUNDED_SCALES = frozenset({"standard", "robust"})


class VAESpec(ModelSpec):
    latent: Annotated[int, Field(gt=0, le=1024)] = Field(
        8, description="Width of the latent code z (the prior is N(0, I) in this many dims)."
    )
    hidden: list[Annotated[int, Field(gt=0)]] = Field(
        default_factory=lambda: [128, 64],
        description="Encoder widths (an MLP on the flattened image); the decoder mirrors them.",
    )
    channels: list[Annotated[int, Field(gt=0)]] = Field(
        default_factory=list,
        description="A convolutional encoder / decoder: these output channels, one 3x3 "
        "stride-2 convolution each (the decoder mirrors them with 4x4 stride-2 transposed "
        "convolutions), before the hidden layers; [] (default): an MLP on the flattened image. "
        "The image's height and width must be divisible by 2 ** len(channels).",
    )
    activation: Activation = "relu"
    kl_anneal_epochs: Annotated[float, Field(ge=0.0)] = Field(
        10.0,
        description="β of the KL term rises linearly from 0 to 1 over this many epochs of "
        "training steps (0: β = 1 from the start); validation and test always use β = 1.",
    )
    samples: Annotated[int, Field(ge=2, le=256)] = Field(
        16,
        description="Fixed posterior draws (antithetic pairs) averaged in eval mode for the "
        "reconstruction term and the importance-weighted bound; even.",
    )

    def recipe_issues(self, recipe: Recipe) -> list[ConfigIssue]:
        """What a VAE refuses in the rest of the recipe: another task, unbounded pixels."""
        issues = []
        if recipe.task != "generation":
            issues.append(
                ConfigIssue(
                    ("model", "type"),
                    f"a VAE generates images: it trains under task: generation, not {recipe.task}",
                    "vae",
                    "Set task: generation, or choose a model for this task (mlp, cnn ...).",
                )
            )
        if recipe.data.prepare.scale in _UNBOUNDED_SCALES:
            issues.append(
                ConfigIssue(
                    ("data", "prepare", "scale"),
                    "the VAE's Bernoulli likelihood needs pixels in [0, 1]; this scaling leaves "
                    "them unbounded",
                    recipe.data.prepare.scale,
                    "Set data.prepare.scale: minmax (or none when the pixels are already in "
                    "[0, 1]).",
                )
            )
        if self.samples % 2:
            issues.append(
                ConfigIssue(
                    ("model", "samples"),
                    "the eval-mode draws come in antithetic pairs (ε, -ε): an even number",
                    self.samples,
                    f"Use {self.samples + 1}.",
                )
            )
        return issues


def build_vae(spec: VAESpec, schema: FeatureSchema, task: Task) -> nn.Module:
    """An MLP VAE on the flattened image; the task is told the model (its report draws prior
    samples from it) and the latent width.

    Example:
        >>> # build_vae(VAESpec(latent=2, hidden=[32]), prepared.schema, get_task("generation"))
    """
    import torch

    if task.name != "generation":
        raise ConfigError(
            f"model type 'vae' generates images; it needs task: generation, not '{task.name}'. "
            "Set task: generation or choose another model."
        )
    model = _vae_class()(schema.input_dim, spec, _conv_shape(spec, schema))
    generator = torch.Generator().manual_seed(0)  # the eval-mode draws: fixed, saved as a buffer
    half = torch.randn(spec.samples // 2, spec.latent, generator=generator)
    model.eps.copy_(torch.cat([half, -half]))
    bind = getattr(task, "bind_model", None)
    if callable(bind):
        bind(model)
    out: nn.Module = model
    return out


def _conv_shape(spec: VAESpec, schema: FeatureSchema) -> tuple[int, int, int] | None:
    """The image's (channels, height, width) for a convolutional VAE; None for an MLP one.

    Raises:
        ConfigError: ``channels`` on data without an image shape, or an image whose sides are
            not divisible by 2 ** len(channels).
    """
    if not spec.channels:
        return None
    shape = tuple(int(v) for v in schema.image_shape or ())
    if len(shape) != 3 or math.prod(shape) != schema.input_dim:
        raise ConfigError(
            "model.channels: a convolutional VAE needs images (data with an image shape, e.g. "
            "builtin:digits or a folder of images); these rows have none. Remove model.channels "
            "for an MLP VAE."
        )
    scale = 2 ** len(spec.channels)
    if shape[1] % scale or shape[2] % scale:
        raise ConfigError(
            f"model.channels: {len(spec.channels)} stride-2 layers need the image's sides "
            f"divisible by {scale}; the images are {shape[1]}x{shape[2]}. Use fewer channels "
            "entries."
        )
    return shape[0], shape[1], shape[2]


def _vae_class() -> Any:
    import torch
    import torch.nn as nn
    import torch.nn.functional as F

    def mlp(widths: list[int], activation: str) -> nn.Sequential:
        layers: list[nn.Module] = []
        for a, b in zip(widths, widths[1:], strict=False):
            layers += [nn.Linear(a, b), make_activation(activation)]
        return nn.Sequential(*layers)

    def convs(shape: tuple[int, int, int], spec: VAESpec) -> tuple[nn.Module, nn.Module, int]:
        """The convolutional encoder trunk (N, d) → (N, flat), the decoder's tail (N, flat) →
        (N, d) logits, and flat."""
        c, h, w = shape
        chans = [c, *spec.channels]
        down: list[nn.Module] = [nn.Unflatten(1, (c, h, w))]
        for a, b in zip(chans, chans[1:], strict=False):
            down += [nn.Conv2d(a, b, 3, stride=2, padding=1), make_activation(spec.activation)]
        scale = 2 ** len(spec.channels)
        small = (chans[-1], h // scale, w // scale)
        up: list[nn.Module] = [make_activation(spec.activation), nn.Unflatten(1, small)]
        for i, (a, b) in enumerate(zip(chans[::-1], chans[::-1][1:], strict=False)):
            up.append(nn.ConvTranspose2d(a, b, 4, stride=2, padding=1))
            if i < len(spec.channels) - 1:
                up.append(make_activation(spec.activation))
        down.append(nn.Flatten())
        up.append(nn.Flatten())
        return nn.Sequential(*down), nn.Sequential(*up), math.prod(small)

    class VAE(nn.Module):
        eps: torch.Tensor  # (S, latent) the eval-mode posterior draws

        def __init__(self, d: int, spec: VAESpec, shape: tuple[int, int, int] | None) -> None:
            super().__init__()
            self.d, self.latent = d, spec.latent
            trunk, tail, flat = convs(shape, spec) if shape else (nn.Identity(), nn.Identity(), d)
            widths = [flat, *spec.hidden]
            self.encoder = nn.Sequential(trunk, mlp(widths, spec.activation))
            self.mu = nn.Linear(widths[-1], spec.latent)
            self.logvar = nn.Linear(widths[-1], spec.latent)
            self.decoder = nn.Sequential(
                mlp([spec.latent, *widths[::-1][:-1]], spec.activation),
                nn.Linear(widths[1] if len(widths) > 1 else spec.latent, flat),
                tail,
            )
            self.register_buffer("eps", torch.zeros(spec.samples, spec.latent))

        def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            """Posterior mean and log-variance, (N, latent) each, of pixels (N, d) in [0, 1]."""
            h = self.encoder(x)
            return self.mu(h), self.logvar(h).clamp(-12.0, 8.0)

        def decode(self, z: torch.Tensor) -> torch.Tensor:
            """Bernoulli logits of the pixels, (N, d), for latents z (N, latent)."""
            out: torch.Tensor = self.decoder(z)
            return out

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            # minmax scaling fits each pixel's range on the training rows: a test pixel may pass
            # it, and Bernoulli targets must stay in [0, 1]
            x = x.flatten(1).clamp(0.0, 1.0)  # (N, d)
            mu, logvar = self.encode(x)  # (N, k)
            std = torch.exp(0.5 * logvar)
            kl = 0.5 * (mu**2 + std**2 - 1.0 - logvar).sum(dim=1)  # (N,)
            if self.training:
                z = mu + std * torch.randn_like(std)  # reparameterisation
                logits = self.decode(z)
                nll = (F.softplus(logits) - x * logits).sum(dim=1)  # (N,) -log p(x|z)
                bound = nll + kl
                recon = torch.sigmoid(logits)
            else:
                s = self.eps.shape[0]
                z = mu[:, None, :] + std[:, None, :] * self.eps[None]  # (N, S, k)
                logits = self.decode(z.reshape(-1, self.latent)).reshape(-1, s, self.d)
                nll_s = (F.softplus(logits) - x[:, None, :] * logits).sum(dim=2)  # (N, S)
                nll = nll_s.mean(dim=1)
                # log w = log p(x|z) + log p(z) - log q(z|x); the 2π terms cancel
                log_prior = -0.5 * (z**2).sum(dim=2)
                log_post = (
                    -0.5 * (self.eps[None] ** 2).sum(dim=2) - 0.5 * logvar.sum(dim=1)[:, None]
                )
                log_w = -nll_s + log_prior - log_post  # (N, S)
                bound = -(torch.logsumexp(log_w, dim=1) - math.log(s))
                recon = torch.sigmoid(self.decode(mu))
            stats = torch.stack([nll, kl, bound], dim=1)  # (N, 3)
            return torch.cat([stats, mu, recon, x - recon], dim=1)  # (N, 3 + k + 2d)

        @torch.no_grad()
        def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
            """n images (n, d): the decoder's pixel means at z ~ N(0, I)."""
            device = self.eps.device
            z = torch.randn(n, self.latent, generator=generator).to(device)
            return torch.sigmoid(self.decode(z)).float().cpu()

    return VAE


# ---- sampling API (``danlu generate`` for task: generation models) ------------------------------


def _parts(model: Any) -> tuple[Any, tuple[int, int]]:
    """The VAE module and its image's (height, width) of a ModelBundle, a run's Result, or a
    (module, schema) pair."""
    if isinstance(model, tuple):
        module, schema = model
    else:
        module, schema = getattr(model, "model", None), getattr(model, "schema", None)
    task = getattr(model, "task", None)
    if task is not None and getattr(task, "name", "generation") != "generation":
        raise ConfigError(
            f"Sampling images needs a task: generation model; this one is task: {task.name}."
        )
    if not callable(getattr(module, "sample", None)) or schema is None:
        raise ConfigError(
            "Sampling images needs a VAE (task: generation, model: {type: vae}) loaded with "
            "danlu.load_model, or a run's result."
        )
    shape = tuple(getattr(schema, "image_shape", None) or ())
    d = int(module.d)
    if len(shape) >= 2 and math.prod(shape) == d:
        return module, (int(shape[-2]), int(shape[-1]))
    side = math.isqrt(d)
    return module, ((side, side) if side * side == d else (1, d))


def sample_images(model: Any, n: int = 16, *, seed: int = 0) -> np.ndarray:
    """n images drawn from a trained VAE's prior, (n, H, W) float32 in [0, 1].

    Each image is the decoder's pixel means p(x|z) at one z ~ N(0, I) (the usual way to show a
    Bernoulli VAE's samples); the same seed gives the same images.

    Args:
        model: a ModelBundle (``danlu.load_model``), a run's Result, or ``(module, schema)``.
        n: how many images, 1 to :data:`MAX_SAMPLES`.
        seed: seeds the latent draws.

    Raises:
        ConfigError: not a VAE, or ``n`` out of range.

    Example:
        >>> # images = sample_images(danlu.load_model("digits-vae"), 16, seed=0)
        >>> # images.shape  -> (16, 8, 8)
    """
    import torch

    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= MAX_SAMPLES:
        raise ConfigError(f"The number of images must be 1 to {MAX_SAMPLES}. Got {n!r} instead.")
    module, (h, w) = _parts(model)
    was_training = module.training
    module.eval()
    try:
        flat = module.sample(n, torch.Generator().manual_seed(int(seed)))  # (n, d)
    finally:
        module.train(was_training)
    images: np.ndarray = flat.reshape(n, h, w).clamp(0.0, 1.0).numpy().astype("float32")
    return images


def write_images(
    images: np.ndarray, out: str | os.PathLike[str], *, prefix: str = "sample", zoom: int = 1
) -> list[Path]:
    """Write images (n, H, W) in [0, 1] as 8-bit greyscale PNG files ``PREFIX_0000.png`` … into
    the folder ``out`` (created when missing), each written to a temporary file and renamed,
    so a reader never sees half a file. Returns the paths, in order.

    Args:
        images: (n, H, W) floats in [0, 1] (e.g. :func:`sample_images`).
        out: the folder; it may exist (files of the same names are replaced), but not as a file.
        prefix: the file names' start: letters, digits, ``-`` and ``_``.
        zoom: each pixel becomes a zoom × zoom square (nearest neighbour), 1 to 64.

    Raises:
        DataError: ``out`` is a file or cannot be created, or the images are not (n, H, W) in
            [0, 1].
        ConfigError: a bad prefix or zoom.

    Example:
        >>> # write_images(sample_images(bundle, 16), "samples/", zoom=4)
    """
    import re

    import numpy as np
    from PIL import Image

    if not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", prefix):
        raise ConfigError(
            f"The file prefix must be 1-64 letters, digits, '-' or '_'. Got {prefix!r} instead."
        )
    if isinstance(zoom, bool) or not isinstance(zoom, int) or not 1 <= zoom <= 64:
        raise ConfigError(f"zoom must be an integer from 1 to 64. Got {zoom!r} instead.")
    arr = np.asarray(images, dtype=np.float64)
    if arr.ndim != 3 or not len(arr):
        raise DataError(f"Images must be an array (n, H, W) with n ≥ 1. Got shape {arr.shape}.")
    if not np.isfinite(arr).all() or arr.min() < 0.0 or arr.max() > 1.0:
        raise DataError("Image values must be finite and in [0, 1].")
    folder = Path(out)
    if folder.exists() and not folder.is_dir():
        raise DataError(f"The output path '{folder}' is a file; give a folder for the images.")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataError(f"Cannot create the folder '{folder}' ({exc.strerror}).") from None
    pixels = np.rint(arr * 255).astype(np.uint8)
    if zoom > 1:
        pixels = pixels.repeat(zoom, axis=1).repeat(zoom, axis=2)
    width = max(4, len(str(len(pixels) - 1)))
    paths = []
    for i, image in enumerate(pixels):
        path = folder / f"{prefix}_{i:0{width}d}.png"
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as handle:
                Image.fromarray(image).save(handle, format="PNG")
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        paths.append(path)
    return paths
