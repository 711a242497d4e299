"""VAE on the 8x8 digits (``task: generation``): held-out ELBO against independent Bernoulli
pixels, and a sample-quality proxy.

Each seed trains ``examples/digits_vae.yaml``'s model through ``danlu.run`` (its own split and
initialisation; pixels minmax-scaled on the training split) and reads the report's baselines
section: the model's test ELBO (nats per image, Bernoulli pixels, posterior averaged over 16
fixed draws) beside the uniform-pixel dummy and independent Bernoulli pixels fitted on the same
training images. The importance-weighted bound (16 draws) on -log p(x) is reported too.

Sample-quality proxy (a simple one, not a standard metric such as FID): a logistic regression
trained on the REAL training digits (same split, same scaling) labels 1,000 images drawn from
the VAE's prior (decoder pixel means, ``danlu.models.sample_images``, seed 0); we report the
mean of its max class probability over the samples (target ≥ 0.80), the histogram of the labels
it gives them, and, for reference, the same mean on the real test digits and its test accuracy.
Figures are medians over the seeds.

    python bench/vae.py [--seeds 0 1 2] [--jobs 2]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _report import machine, write  # noqa: E402

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "digits_vae.yaml"
SAMPLES = 1000
BASELINES = ("uniform pixels (dummy)", "independent Bernoulli pixels")


def recipe(seed: int) -> dict[str, Any]:
    import yaml

    base = yaml.safe_load(EXAMPLE.read_text())
    base["data"]["split"]["seed"] = seed
    base["train"]["seed"] = seed
    base.pop("register", None)
    base["evaluate"] = {  # the baselines section only: the rest is not measured here
        "bootstrap": 0,
        "robustness": False,
        "explain": False,
        "membership": False,
        "cost": False,
        "training": False,
    }
    return base


def classifiers(seed: int) -> dict[str, Any]:
    """The digit classifiers of the proxy, trained on the real training digits."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.neural_network import MLPClassifier

    return {
        "logistic regression": LogisticRegression(max_iter=5000),
        "MLP (128)": MLPClassifier((128,), max_iter=1000, random_state=seed),
    }


def one(seed: int) -> dict[str, Any]:
    import os
    import tempfile

    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import warnings

    import numpy as np

    import danlu
    from danlu.config import load_recipe
    from danlu.models import prepare_recipe_data, sample_images

    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as home:
        result = danlu.run(recipe(seed), home=home)
    seconds = time.perf_counter() - start
    rows = {row["model"]: row for row in result.report.section("baselines").data["rows"]}
    data = prepare_recipe_data(load_recipe(recipe(seed)))  # the same split and scaling
    classes = [int(c) for c in data.schema.classes or ()]
    y_train = np.asarray(classes)[data.y_train.argmax(axis=1)]
    y_test = np.asarray(classes)[data.y_test.argmax(axis=1)]
    images = sample_images(result, SAMPLES, seed=0).reshape(SAMPLES, -1)
    proxy = {}
    for name, clf in classifiers(seed).items():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            clf.fit(data.x_train, y_train)
        proba = clf.predict_proba(images)
        labels = clf.classes_[proba.argmax(axis=1)]
        real = clf.predict_proba(np.clip(data.x_test, 0, 1))
        proxy[name] = {
            "samples_mean_max_probability": float(proba.max(axis=1).mean()),
            "samples_label_histogram": {int(c): int((labels == c).sum()) for c in clf.classes_},
            "real_test_mean_max_probability": float(real.max(axis=1).mean()),
            "test_accuracy": float((clf.classes_[real.argmax(axis=1)] == y_test).mean()),
        }
    return {
        "seed": seed,
        "elbo": {
            "model": rows["danlu model"]["elbo"],
            **{b: rows[b]["elbo"] for b in BASELINES},
        },
        "test": {
            k: result.metrics[k]
            for k in ("elbo", "elbo_per_pixel", "reconstruction_nll", "kl", "nll_iw")
        },
        "active_units": result.metrics["active_units"],
        "proxy": proxy,
        "epochs": len(result.history),
        "seconds": seconds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--jobs", type=int, default=2)
    args = parser.parse_args()
    start = time.perf_counter()
    with ProcessPoolExecutor(args.jobs) as pool:
        done = list(pool.map(one, args.seeds))
    wall = time.perf_counter() - start

    def med(values: list[float]) -> float:
        return float(statistics.median(values))

    elbo = {who: med([r["elbo"][who] for r in done]) for who in ("model", *BASELINES)}
    test = {k: med([r["test"][k] for r in done]) for k in done[0]["test"]}
    proxy = {
        name: {
            "samples_mean_max_probability": med(
                [r["proxy"][name]["samples_mean_max_probability"] for r in done]
            ),
            "samples_label_histogram_median": {
                str(c): med([r["proxy"][name]["samples_label_histogram"].get(c, 0) for r in done])
                for c in range(10)
            },
            "real_test_mean_max_probability": med(
                [r["proxy"][name]["real_test_mean_max_probability"] for r in done]
            ),
            "test_accuracy": med([r["proxy"][name]["test_accuracy"] for r in done]),
        }
        for name in done[0]["proxy"]
    }
    summary = {
        "elbo_nats_per_image": elbo,
        "test": test,
        "active_units": med([r["active_units"] for r in done]),
        "proxy": proxy,
        "epochs": med([r["epochs"] for r in done]),
        "seconds_per_run": med([r["seconds"] for r in done]),
    }
    payload = {
        "what": "VAE on builtin:digits (examples/digits_vae.yaml): held-out ELBO vs per-pixel "
        "baselines, and a sample-quality proxy (classifiers trained on real digits label 1,000 "
        "prior samples)",
        "seeds": args.seeds,
        "samples": SAMPLES,
        "summary": summary,
        "runs": done,
        "wall_seconds": wall,
        "machine": machine(),
    }
    rows = [[who, f"{elbo[who]:.2f}", f"{elbo[who] / 64:.4f}"] for who in ("model", *BASELINES)]
    rows[0][0] = "VAE (danlu, latent 8)"
    lines = [
        f"- {name}: mean max-probability on the samples **{p['samples_mean_max_probability']:.3f}**"
        f" (on the real test digits {p['real_test_mean_max_probability']:.3f}; test accuracy "
        f"{p['test_accuracy']:.3f}); labels of the samples (median count per digit): "
        + ", ".join(f"{c}: {v:g}" for c, v in p["samples_label_histogram_median"].items())
        for name, p in proxy.items()
    ]
    notes = (
        f"Medians over seeds {args.seeds}; test split 0.2 (360 images); ELBO in nats per image "
        "(Bernoulli pixels on minmax-scaled [0, 1] pixels; larger is better). VAE: "
        f"reconstruction NLL {test['reconstruction_nll']:.2f}, KL {test['kl']:.2f}, "
        f"importance-weighted bound on -log p(x) {test['nll_iw']:.2f} nats (16 draws), "
        f"{summary['active_units']:g} of 8 latent units active, {summary['epochs']:g} epochs, "
        f"{summary['seconds_per_run']:.0f} s per run.\n\n"
        "Sample-quality proxy (a simple proxy, not a standard metric such as FID): classifiers "
        "trained on the real training digits (same split and scaling) label 1,000 prior samples "
        "(decoder pixel means, seed 0); target: mean max-probability ≥ 0.80.\n\n" + "\n".join(lines)
    )
    path = write("vae", payload, ["model", "ELBO (nats/image)", "ELBO (nats/pixel)"], rows, notes)
    print(path.read_text())


if __name__ == "__main__":
    main()
