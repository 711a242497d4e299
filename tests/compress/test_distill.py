"""Distillation as a compression method (danlu/compress/_distill.py): a student trained on the
teacher's soft targets in a child run, loadable from its card."""

from __future__ import annotations

import json
from typing import Any

import pytest
import torch
from safetensors.torch import save as st_save

from danlu.compress import CompressJob
from danlu.compress._distill import distill_recipe, distill_variants
from danlu.config import load_recipe
from danlu.errors import ConfigError
from danlu.models import load_bundle
from danlu.store import SqlStore
from danlu.train import run_training

WINE: dict[str, Any] = {
    "name": "wine-kd",
    "data": {"source": "builtin:wine", "split": {"test": 0.2, "val": 0.1, "seed": 0}},
    "task": "classification",
    "model": {"type": "mlp", "hidden": [64, 64]},
    "train": {"epochs": 4, "batch_size": 32, "device": "cpu", "optimizer": {"lr": 0.01}},
    "register": {"name": "wine"},
}


def _job(
    store: SqlStore, result, data: dict[str, Any] | None = None, **distill: Any
) -> CompressJob:
    from danlu.train._run import prepare_recipe_data

    card = json.loads(store.artifact_path(result.run_id, "model.json").read_text())
    recipe = load_recipe(
        {**WINE, "data": data or WINE["data"], "compress": {"quantize": False, "distill": distill}}
    )
    assert recipe.compress is not None
    return CompressJob(
        config=recipe.compress,
        recipe=recipe,
        model=result.model.cpu().eval(),
        card=card,
        task=result.task,
        data=prepare_recipe_data(recipe, result.task),
        store=store,
        run_id=result.run_id,
    )


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    store = SqlStore(home=tmp_path_factory.mktemp("home"))
    yield store, run_training(WINE, store=store)
    store.close()


def test_the_student_trains_in_a_child_run_and_loads_from_its_card(trained):
    store, teacher = trained
    job = _job(store, teacher, student={"type": "mlp", "hidden": [8]}, epochs=3, alpha=0.8)
    job.card = {**job.card, "low_rank": {"3": 4}}  # as if the parent were factorised
    [variant] = distill_variants(job)
    assert (variant.name, variant.method, variant.runtime, variant.status) == (
        "distilled",
        "distill",
        "onnx",
        "ok",
    )
    run = store.get_run(variant.run_id)
    assert run.parent_id == teacher.run_id and run.tags["compression"] == "distilled"
    assert run.tags["distill_teacher"] == f"run {teacher.run_id}"
    assert run.recipe["model"] == {"type": "mlp", "hidden": [8]}
    assert run.recipe["train"]["epochs"] == 3 and run.recipe.get("compress") is None
    assert run.recipe["train"]["distill"]["alpha"] == 0.8
    details = variant.details
    assert details["teacher"] == f"run {teacher.run_id}"
    assert details["student_parameters"] == sum(p.numel() for p in variant.model.parameters())
    assert details["teacher_parameters"] == sum(p.numel() for p in job.model.parameters())
    assert details["parameter_ratio"] < 0.25 and details["epochs_run"] == 3
    assert variant.card["type"] == "mlp" and variant.card["options"]["hidden"] == [8]
    assert variant.card["low_rank"] is None  # the parent's reshaping is not the student's
    # what the stage registers: the parent's card updated with the variant's, the state dict
    files = {
        "model.json": json.dumps({**job.card, **variant.card}).encode(),
        "model.safetensors": st_save(variant.model.state_dict()),
        "preprocessing.json": store.artifact_path(
            teacher.run_id, "preprocessing.json"
        ).read_bytes(),
    }
    bundle = load_bundle(files.get, "distilled")
    x = torch.as_tensor(job.data.x_test)
    with torch.inference_mode():
        assert torch.equal(bundle.model(x), variant.model(x))
    assert job.model.training is False  # the teacher is not changed


def test_a_registered_teacher_by_version(trained):
    store, teacher = trained
    files = {
        f: store.artifact_path(teacher.run_id, f).read_bytes()
        for f in ("model.json", "model.safetensors", "preprocessing.json")
    }
    mv = store.create_model_version(
        "wine-teacher", run_id=teacher.run_id, files=files, signature={}, metrics={}
    )
    augmented = {**WINE["data"], "augment": [{"noise": 0.05}]}
    job = _job(
        store, teacher, augmented, student={"type": "mlp", "hidden": [4]}, teacher=mv.ref, epochs=1
    )
    assert distill_recipe(job)["train"]["distill"]["teacher"] == mv.ref
    assert distill_recipe(job)["data"]["augment"][0]["noise"] == 0.05
    job.config.distill.augment = False  # the student on the rows as prepared
    [variant] = distill_variants(job)
    assert variant.details["teacher"] == f"model {mv.ref}" and not variant.details["augment"]
    run = store.get_run(variant.run_id)
    assert run.tags["distill_teacher"] == f"model {mv.ref}" and run.recipe["data"]["augment"] == []


def test_a_student_the_recipe_cannot_build_names_the_compress_key(trained):
    store, teacher = trained
    job = _job(store, teacher, student={"type": "mlp", "hiden": [8]}, epochs=1)
    with pytest.raises(ConfigError, match=r"compress\.distill\.student"):
        distill_variants(job)


def test_an_unknown_teacher_names_the_compress_key(trained):
    store, teacher = trained
    job = _job(store, teacher, student={"type": "mlp", "hidden": [8]}, teacher="nope:3")
    with pytest.raises(ConfigError, match=r"compress\.distill\.teacher: 'nope:3'"):
        distill_variants(job)
