"""A bundle loaded with ``lazy=True`` (what a server without torch does): the weights file is
checked without torch at load (:func:`weights_header`: pickles and corrupt files refused, as
torch's loader refuses them), the network is built on first use from the same bytes, and where
torch is missing that first use is a clear error — never an ImportError traceback."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from danlu.errors import MissingExtraError, StoreError
from danlu.models import _bundle as bundle_module
from danlu.models import load_bundle, load_weights
from danlu.models._bundle import weights_header
from danlu.testing import wine_recipe

pytestmark = pytest.mark.filterwarnings("error")


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    """The files of a registered wine MLP."""
    from danlu.pipeline import register_run
    from danlu.store import SqlStore
    from danlu.train import run_training

    home = tmp_path_factory.mktemp("lazy")
    store = SqlStore(home=home)
    try:
        mv = register_run(store, run_training(wine_recipe(epochs=1), store=store).run_id, "wine")
        read = store.model_reader(mv)
        return {f: raw for f in mv.files if (raw := read(f)) is not None}
    finally:
        store.close()


def _corruptions(raw: bytes) -> dict[str, bytes]:
    length = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8 : 8 + length])
    name = next(k for k in header if k != "__metadata__")
    shifted = dict(header)
    start, stop = header[name]["data_offsets"]
    shifted[name] = {**header[name], "data_offsets": [start + 4, stop + 4]}
    text = json.dumps(shifted).encode()
    return {
        "pickled": b"\x80\x04\x95" + raw[3:64],
        "torch zip": b"PK\x03\x04" + raw[4:64],
        "truncated": raw[:-4],
        "too short": raw[:5],
        "header past the end": (len(raw)).to_bytes(8, "little") + raw[8:],
        "header not JSON": raw[:8] + b"\xff" * length + raw[8 + length :],
        "offsets leave a gap": len(text).to_bytes(8, "little") + text + raw[8 + length :],
    }


def test_weights_header_refuses_what_the_torch_loader_refuses(files: dict[str, bytes]) -> None:
    raw = files["model.safetensors"]
    header = weights_header(raw, "w")
    tensors = load_weights(raw, "w")
    assert header == {k: ("F32", tuple(v.shape)) for k, v in tensors.items()}
    for case, bad in _corruptions(raw).items():
        with pytest.raises(StoreError, match="is (a pickled|not a valid safetensors) file") as ours:
            weights_header(bad, "w")
        with pytest.raises(StoreError) as torch_s:
            load_weights(bad, "w")
        pickled = "pickled" in str(torch_s.value)
        assert ("pickled" in str(ours.value)) == pickled, case


def test_a_lazy_bundle_reads_everything_but_the_network(files: dict[str, bytes]) -> None:
    lazy = load_bundle(files.get, "wine:1", lazy=True)
    eager = load_bundle(files.get, "wine:1")
    assert not lazy.model_built and eager.model_built
    x = eager.encode(np.ones((3, 13)))
    np.testing.assert_array_equal(lazy.encode(np.ones((3, 13))), x)  # no network needed
    assert not lazy.model_built
    np.testing.assert_array_equal(lazy.outputs(x), eager.outputs(x))
    assert lazy.model_built


def test_a_lazy_load_still_refuses_pickled_weights_at_once(files: dict[str, bytes]) -> None:
    pickled = {**files, "model.safetensors": b"\x80\x04\x95" + files["model.safetensors"][3:]}
    with pytest.raises(StoreError, match="refuses to load pickled"):
        load_bundle(pickled.get, "wine:1", lazy=True)


def test_weights_changed_after_a_lazy_load_are_refused(files: dict[str, bytes]) -> None:
    from safetensors.numpy import load, save

    changed = dict(files)
    bundle = load_bundle(changed.get, "wine:1", lazy=True)
    tensors = load(files["model.safetensors"])
    changed["model.safetensors"] = save({k: v + 1 for k, v in tensors.items()})
    with pytest.raises(StoreError, match="changed since the model was loaded"):
        _ = bundle.model


def test_weights_of_another_shape_fail_at_load_eagerly_and_at_first_use_lazily(
    files: dict[str, bytes],
) -> None:
    from safetensors.numpy import load, save

    tensors = load(files["model.safetensors"])
    name = next(iter(tensors))
    wrong = {**files, "model.safetensors": save({**tensors, name: tensors[name][:1]})}
    with pytest.raises(RuntimeError, match="size mismatch"):
        load_bundle(wrong.get, "wine:1")
    bundle = load_bundle(wrong.get, "wine:1", lazy=True)  # the file itself is valid
    with pytest.raises(RuntimeError, match="size mismatch"):
        _ = bundle.model


def test_without_torch_the_network_is_a_clear_error(
    files: dict[str, bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(bundle_module, "torch_installed", lambda: False)
    bundle = load_bundle(files.get, "wine:1", lazy=True)
    bundle.version = SimpleNamespace(ref="wine:1")
    with pytest.raises(MissingExtraError, match=r"model wine:1 needs torch.*pip install torch"):
        _ = bundle.model


def test_generate_without_torch_is_a_501_saying_so(
    files: dict[str, bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    from danlu.serve._generate import _language_model
    from danlu.serve._types import RequestError

    monkeypatch.setattr(bundle_module, "torch_installed", lambda: False)
    bundle = load_bundle(files.get, "lm:1", lazy=True)
    language = SimpleNamespace(bundle=bundle, signature={"task": "language_model"})
    with pytest.raises(RequestError, match="torch, which is not installed") as error:
        _language_model(language, "lm")
    assert error.value.status == 501
    other = SimpleNamespace(bundle=bundle, signature={"task": "classification"})
    with pytest.raises(RequestError, match="not a language model") as error:
        _language_model(other, "wine")
    assert error.value.status == 422 and not bundle.model_built


def test_a_bundle_needs_a_model_or_a_builder(tmp_path: Path) -> None:
    from danlu.models import ModelBundle

    with pytest.raises(TypeError, match="needs a model"):
        ModelBundle(None, None, None, None, {})  # type: ignore[arg-type]
