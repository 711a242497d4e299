"""``task: generation`` on the task contract: the annealed ELBO loss, metrics and baselines in
nats, the decoded outputs, unlabelled images, bad input, and the whole lifecycle on the digits
(train, report with reconstructions / samples / latent plot, register, ONNX parity, load_model,
a real server answering each image's ELBO)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

import danlu
from danlu.config import UNLABELLED_TARGET, load_recipe
from danlu.data import FeatureSchema, load_source
from danlu.errors import ConfigError
from danlu.store import SqlStore
from danlu.tasks import GenerationTask, get_task

D, K = 4, 2  # pixels, latent width of the fake outputs


def _schema(classes=("3", "7"), target="target") -> FeatureSchema:
    return FeatureSchema(
        features=(),
        target=target,
        task="generation",
        classes=classes,
        input_dim=D,
        encoded_names=tuple(f"p{j}" for j in range(D)),
        target_kind="label_sets",
        image_shape=(1, 2, 2),
    )


def _outputs(n=6, seed=0):
    """Fake model outputs (n, 3 + K + 2D) and one-hot labels (n, 2)."""
    rng = np.random.default_rng(seed)
    nll, kl = rng.uniform(1, 3, n), rng.uniform(0, 1, n)
    mu = rng.normal(size=(n, K))
    recon = rng.uniform(0.1, 0.9, (n, D))
    x = rng.integers(0, 2, (n, D)).astype(float)
    out = np.column_stack([nll, kl, nll + kl - 0.1, mu, recon, x - recon])
    y = np.eye(2, dtype=np.float32)[rng.integers(0, 2, n)]
    return out, y


def test_kl_weight_rises_from_zero_to_one_over_the_training_steps_only():
    loss = GenerationTask(anneal_steps=4).make_loss()
    outputs = torch.tensor([[2.0, 1.0], [4.0, 3.0]])  # NLL, KL per row
    seen = []
    for _ in range(6):
        trained = outputs.clone().requires_grad_(True)
        seen.append(round(loss(trained, torch.zeros(2)).item(), 4))
    # β = 1/4, 2/4, 3/4, 1, 1, 1: mean NLL 3 + β · mean KL 2
    assert seen == [3.5, 4.0, 4.5, 5.0, 5.0, 5.0]
    fresh = GenerationTask(anneal_steps=100).make_loss()
    assert fresh(outputs, torch.zeros(2)).item() == 5.0  # no gradients (validation): β = 1
    assert fresh.beta == 0.0  # ... and no step counted
    assert (
        GenerationTask(anneal_steps=0).make_loss()(outputs.requires_grad_(True), None).item() == 5.0
    )


def test_metrics_are_the_elbo_in_nats_per_image_and_pixel():
    task, schema = GenerationTask(), _schema()
    out, y = _outputs()
    neg = out[:, 0] + out[:, 1]
    m = task.metrics(out, y, schema)
    assert m["elbo"] == pytest.approx(-neg.mean()) and m["neg_elbo"] == pytest.approx(neg.mean())
    assert m["elbo_per_pixel"] == pytest.approx(-neg.mean() / D)
    assert m["reconstruction_nll"] == pytest.approx(out[:, 0].mean())
    assert m["kl"] == pytest.approx(out[:, 1].mean())
    assert m["nll_iw"] == pytest.approx((neg - 0.1).mean())
    assert task.row_scores(out, y, schema).mean() == pytest.approx(m["elbo"])
    assert task.metric("elbo", out, y, schema) == pytest.approx(m["elbo"])
    assert task.monitor_mode("val_elbo") == "max" and task.monitor_mode("val_kl") == "min"
    quick = task.quick_metrics(torch.as_tensor(out), torch.as_tensor(y), schema)
    assert quick["elbo"] == pytest.approx(m["elbo"])


def test_served_outputs_split_the_row_into_elbo_latent_mean_and_reconstruction():
    task, schema = GenerationTask(), _schema()
    out, _ = _outputs(3)
    got = task.predict(out, schema)
    assert np.allclose(got["prediction"], -(out[:, 0] + out[:, 1]))
    assert got["latent_mean"].shape == (3, K) and np.allclose(got["latent_mean"], out[:, 3:5])
    assert np.allclose(got["reconstruction"], out[:, 5 : 5 + D])
    assert set(task.output_signature(schema)) == set(got)


def test_baselines_score_independent_pixels_in_the_same_nats():
    task, schema = GenerationTask(), _schema()
    x = np.array([[1, 0, 1, 0], [1, 0, 0, 0], [1, 1, 0, 0], [0.5, 0, 1, 0]], dtype=float)
    estimators = task.baselines(0)
    pixels = estimators["independent Bernoulli pixels"].fit(x, None)
    p = np.clip(x.mean(axis=0), 1e-3, 1 - 1e-3)
    out = task.baseline_outputs(pixels, x, schema)
    expected = -(x * np.log(p) + (1 - x) * np.log1p(-p)).sum(axis=1)
    assert np.allclose(out[:, 0], expected) and np.allclose(out[:, 1], 0.0)
    assert task.metrics(out, np.zeros((4, 2)), schema)["elbo"] == pytest.approx(-expected.mean())
    dummy = estimators["uniform pixels (dummy)"].fit(x, None)
    flat = task.baseline_outputs(dummy, x, schema)
    assert np.allclose(flat[:, 0], D * np.log(2))  # a coin per pixel


def test_report_shows_originals_reconstructions_samples_and_a_latent_plot():
    from danlu.models import VAESpec, build_vae

    task, schema = GenerationTask(), _schema()
    model = build_vae(VAESpec(latent=K, hidden=[8]), schema, task)  # binds itself to the task
    out, y = _outputs(12)
    [section] = task.report_sections(out, y, schema)
    captions = list(section.figures)
    assert any("reconstructions" in c for c in captions)
    assert any("prior" in c for c in captions)
    assert any("coloured by label" in c for c in captions)
    assert all(svg.lstrip().startswith("<svg") for svg in section.figures.values())
    assert section.data["latent"] == K and section.data["prior_samples"] == 32
    assert model.training  # the report put it back as it was
    unlabelled = GenerationTask().report_sections(
        out, np.ones((12, 1)), _schema(("normal",), UNLABELLED_TARGET)
    )[0]
    assert not any("label" in c for c in unlabelled.figures)
    assert not any("prior" in c for c in unlabelled.figures)  # no model bound: said so
    assert any("need the trained model" in n for n in unlabelled.notes)


def test_a_null_target_means_unlabelled_images_and_a_builtin_keeps_its_labels():
    base = {"name": "g", "task": "generation", "model": {"type": "vae"}}
    null = load_recipe({**base, "data": {"source": "builtin:digits", "target": None}})
    assert null.data.target == UNLABELLED_TARGET
    kept = load_recipe({**base, "data": {"source": "builtin:digits"}})
    assert kept.data.target is None  # the built-in's own label column
    file = load_recipe({**base, "data": {"source": "images.csv"}})
    assert file.data.target == UNLABELLED_TARGET  # a file names no label unless told
    other = load_recipe({**base, "task": "regression", "data": {"source": "x.csv"}})
    assert other.data.target is None


def _recipe(epochs=6, **data):
    return {
        "name": "digits-vae",
        "data": {
            "source": "builtin:digits",
            "split": {"test": 0.2, "val": 0.1, "seed": 0},
            "prepare": {"scale": "minmax"},
            **data,
        },
        "task": "generation",
        "model": {"type": "vae", "latent": 2, "hidden": [32], "kl_anneal_epochs": 2},
        "train": {"epochs": epochs, "batch_size": 128, "optimizer": {"lr": 3e-3}, "seed": 0},
        "evaluate": {
            "bootstrap": 0,
            "robustness": False,
            "explain": False,
            "membership": False,
            "cost": False,
        },
    }


def test_pixels_outside_zero_one_and_non_numeric_columns_are_refused(tmp_path):
    with pytest.raises(ConfigError) as info:  # digits are 0..16 unscaled
        danlu.run(_recipe(prepare={"scale": "none"}), home=tmp_path)
    assert "data.prepare.scale" in str(info.value) and "[0, 16]" in str(info.value)
    assert "minmax" in str(info.value)
    frame = load_source("builtin:digits").frame.head(60).drop(columns=["target"])
    frame["note"] = ["a", "b", "c"] * 20
    with pytest.raises(ConfigError, match="not numeric: note"):
        danlu.run(_recipe(), data=frame, home=tmp_path)


def test_digits_vae_trains_reports_exports_and_serves_each_images_elbo(tmp_path):
    import httpx

    from tests.serve.conftest import start_server

    home = tmp_path / "home"
    recipe = {**_recipe(), "register": {"name": "digits-vae", "alias": "staging"}}
    result = danlu.run(recipe, home=home)
    assert result.metrics["elbo"] < 0 and result.metrics["kl"] > 0
    rows = {r["model"]: r for r in result.report.section("baselines").data["rows"]}
    assert rows["danlu model"]["elbo"] > rows["uniform pixels (dummy)"]["elbo"]  # learnt
    section = result.report.section("generation")
    assert section is not None and len(section.figures) == 3
    store = SqlStore(home=home)
    mv = store.get_model_version("digits-vae", alias="staging")
    export = json.loads(
        store.model_version_path("digits-vae", mv.version, "export.json").read_text()
    )
    assert export["status"] == "ok" and export["parity"]["passed"], export
    bundle = danlu.load_model("digits-vae@staging", store=store)
    frame = load_source("builtin:digits").frame.drop(columns=["target"]).head(3)
    expected = bundle.predict(frame)
    assert expected["latent_mean"].shape == (3, 2)
    from danlu.models import sample_images

    assert sample_images(bundle, 4, seed=1).shape == (4, 8, 8)
    from danlu.export import predict_file

    frame.to_csv(tmp_path / "rows.csv", index=False)  # batch prediction: a column per number
    predict_file("digits-vae@staging", tmp_path / "rows.csv", tmp_path / "out.csv", store=store)
    written = pd.read_csv(tmp_path / "out.csv")
    assert list(written.columns) == ["prediction", "reconstruction_nll", "kl"]
    assert np.allclose(written["prediction"], expected["prediction"], rtol=1e-4)
    body = [{k: float(v) for k, v in row.items()} for row in frame.to_dict("records")]
    with start_server(home, "digits-vae@staging", log_dir=tmp_path) as server:
        with httpx.Client(base_url=server.url, timeout=30) as http:
            answer = http.post("/v1/models/digits-vae/predict", json={"rows": body})
    assert answer.status_code == 200, answer.text
    served = answer.json()
    assert np.allclose(served["predictions"], expected["prediction"], rtol=1e-4)
    assert np.allclose(served["latent_mean"], expected["latent_mean"], atol=1e-4)


def test_unlabelled_images_train_and_report_without_colours(tmp_path):
    frame = load_source("builtin:digits").frame.drop(columns=["target"]).head(400)
    frame = pd.DataFrame(frame)
    result = danlu.run(
        _recipe(epochs=2, source="unused.csv", target=None), data=frame, home=tmp_path
    )
    assert result.schema.target == UNLABELLED_TARGET
    section = result.report.section("generation")
    assert section is not None and not any("label" in c for c in section.figures)
    assert get_task("generation").name == "generation"
