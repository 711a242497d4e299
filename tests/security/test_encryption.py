"""Encryption at rest (``danlu.store._crypt``): the AES-GCM codec, the store writing artifacts and
model files encrypted under the environment's key, loud failures for a wrong or missing key and
for damaged files, and a digits run whose encrypted model predicts what the plaintext one does."""

from __future__ import annotations

import hashlib
import json
import os
import stat
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from danlu import pipeline
from danlu.errors import ConfigError
from danlu.store import SqlStore, verify_version
from danlu.store import _crypt as crypt
from danlu.store._crypt import EncryptionError
from tests.cli._runner import danlu

KEY = crypt.generate_key()
OTHER = crypt.generate_key()
DIGITS = {
    "name": "digits-enc",
    "data": {"source": "builtin:digits", "prepare": {"scale": "minmax"}},
    "task": "classification",
    "model": {"type": "cnn", "channels": [4, 8], "hidden": 16},
    "train": {"epochs": 1, "batch_size": 64, "seed": 0},
    "register": {"name": "digits", "alias": "production"},
}


@pytest.fixture
def keyed(monkeypatch) -> crypt.EncryptionKey:
    """DANLU_ENCRYPTION_KEY set to KEY for this test."""
    monkeypatch.delenv(crypt.KEY_FILE_ENV, raising=False)
    monkeypatch.setenv(crypt.KEY_ENV, KEY)
    key = crypt.load_key()
    assert key is not None
    return key


@pytest.fixture(autouse=True)
def _no_key(monkeypatch) -> None:
    monkeypatch.delenv(crypt.KEY_ENV, raising=False)
    monkeypatch.delenv(crypt.KEY_FILE_ENV, raising=False)


# -- the codec ---------------------------------------------------------------------------------
@pytest.mark.parametrize("size", [0, 1, 4096, 3 * 1000 + 7])
def test_round_trip_small_and_multi_chunk(tmp_path, keyed, monkeypatch, size) -> None:
    monkeypatch.setattr(crypt, "CHUNK_SIZE", 1000)  # 3,007 bytes: four records, the last short
    data = os.urandom(size)
    path = crypt.write_bytes(tmp_path / "w.bin", data)
    assert crypt.is_encrypted(path)
    assert crypt.read_bytes(path) == data
    assert crypt.plaintext_size(path) == size
    assert b"".join(crypt.iter_plaintext(path)) == data
    assert crypt.plaintext_digest(path) == (hashlib.sha256(data).hexdigest(), size)
    if size >= 16:  # (a byte or two may turn up by chance)
        assert data[:16] not in path.read_bytes()
    # the same plaintext encrypts differently each time (fresh nonces)
    assert crypt.encrypt_bytes(data, keyed) != crypt.encrypt_bytes(data, keyed)


def test_plaintext_files_of_older_stores_still_read(tmp_path, keyed) -> None:
    path = tmp_path / "model.json"
    path.write_bytes(b'{"type": "mlp"}')
    assert not crypt.is_encrypted(path)
    assert crypt.read_bytes(path) == b'{"type": "mlp"}'
    assert crypt.plaintext_size(path) == 15


def test_wrong_key_names_the_file_and_says_the_key_differs(tmp_path, keyed, monkeypatch) -> None:
    path = crypt.write_bytes(tmp_path / "model.safetensors", b"weights")
    monkeypatch.setenv(crypt.KEY_ENV, OTHER)
    with pytest.raises(EncryptionError) as caught:
        crypt.read_bytes(path)
    message = str(caught.value)
    assert str(path) in message and "key differs" in message
    assert keyed.key_id in message  # the key the file needs, by id


def test_missing_key_for_an_encrypted_file_is_a_clear_error(tmp_path, keyed, monkeypatch) -> None:
    path = crypt.write_bytes(tmp_path / "model.onnx", b"graph")
    monkeypatch.delenv(crypt.KEY_ENV)
    with pytest.raises(EncryptionError, match="no encryption key is set") as caught:
        crypt.read_bytes(path)
    assert str(path) in str(caught.value) and crypt.KEY_ENV in str(caught.value)


def _records(blob: bytes, chunk: int) -> tuple[bytes, list[bytes]]:
    head, body = blob[: crypt._HEADER.size], blob[crypt._HEADER.size :]
    size = crypt._NONCE + chunk + crypt._TAG
    return head, [body[i : i + size] for i in range(0, len(body), size)]


@pytest.mark.parametrize("damage", ["flip", "truncate_record", "truncate_bytes", "reorder"])
def test_damaged_ciphertext_is_refused_never_returned(tmp_path, keyed, damage) -> None:
    blob = crypt.encrypt_bytes(os.urandom(2500), keyed, chunk_size=1000)  # three records
    head, records = _records(blob, 1000)
    assert len(records) == 3
    if damage == "flip":
        bad = bytearray(blob)
        bad[len(head) + 1500] ^= 1
        bad_blob = bytes(bad)
    elif damage == "truncate_record":  # the last record dropped: a clean cut at a boundary
        bad_blob = head + records[0] + records[1]
    elif damage == "truncate_bytes":
        bad_blob = blob[:-5]
    else:
        bad_blob = head + records[1] + records[0] + records[2]
    path = tmp_path / "model.safetensors"
    path.write_bytes(bad_blob)
    with pytest.raises(EncryptionError, match="integrity check") as caught:
        crypt.read_bytes(path)
    assert str(path) in str(caught.value)


def test_a_record_from_another_file_is_refused(tmp_path, keyed) -> None:
    one = crypt.encrypt_bytes(b"a" * 1500, keyed, chunk_size=1000)
    two = crypt.encrypt_bytes(b"b" * 1500, keyed, chunk_size=1000)
    head, records = _records(one, 1000)
    _, others = _records(two, 1000)
    with pytest.raises(EncryptionError, match="integrity check"):
        crypt.decrypt_bytes(head + others[0] + records[1], keyed, name="spliced")


# -- keys --------------------------------------------------------------------------------------
def test_bad_keys_are_config_errors_naming_the_variable(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv(crypt.KEY_ENV, "not-a-key")
    with pytest.raises(ConfigError, match=crypt.KEY_ENV):
        crypt.load_key()
    monkeypatch.setenv(crypt.KEY_FILE_ENV, str(tmp_path / "k"))
    with pytest.raises(ConfigError, match="only one"):
        crypt.load_key()
    monkeypatch.delenv(crypt.KEY_ENV)
    with pytest.raises(ConfigError, match="cannot be read"):
        crypt.load_key()


def test_key_file_is_private_and_never_overwritten(tmp_path, monkeypatch) -> None:
    path = tmp_path / "danlu.key"
    made = crypt.write_key_file(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    monkeypatch.setenv(crypt.KEY_FILE_ENV, str(path))
    assert crypt.load_key() == made
    with pytest.raises(ConfigError, match="already exists"):
        crypt.write_key_file(path)
    assert crypt.load_key() == made


def test_cli_makes_a_key(tmp_path, monkeypatch) -> None:
    printed = danlu("db", "encryption-key")
    assert printed.code == 0
    monkeypatch.setenv(crypt.KEY_ENV, printed.stdout.strip())
    assert crypt.load_key() is not None
    monkeypatch.delenv(crypt.KEY_ENV)
    written = danlu("db", "encryption-key", "--output", str(tmp_path / "k"))
    assert written.code == 0 and crypt.KEY_FILE_ENV in written.stdout
    assert stat.S_IMODE((tmp_path / "k").stat().st_mode) == 0o600
    assert danlu("db", "encryption-key", "--output", str(tmp_path / "k")).code != 0


# -- the store ---------------------------------------------------------------------------------
def test_store_refuses_to_write_without_its_key_and_writes_nothing(
    tmp_path, keyed, monkeypatch
) -> None:
    store = SqlStore(home=tmp_path)
    try:
        run = store.create_run(experiment="e", name="r")
        artifact = store.log_artifact(run.id, "model.json", b'{"a": 1}')
        assert artifact.size == 8  # the plaintext's size and hash are recorded
        assert crypt.store_key_id(tmp_path) == keyed.key_id
        assert store.run_reader(run.id)("model.json") == b'{"a": 1}'

        monkeypatch.delenv(crypt.KEY_ENV)
        with pytest.raises(EncryptionError, match="no encryption key is set") as caught:
            store.log_artifact(run.id, "weights.bin", b"plaintext weights")
        assert "weights.bin" in str(caught.value)
        assert not store.artifact_path(run.id, "weights.bin").exists()
        assert [a.name for a in store.list_artifacts(run.id)] == ["model.json"]
        with pytest.raises(EncryptionError):
            store.create_model_version(
                "m", run_id=run.id, files={"model.safetensors": b"w"}, signature={}, metrics={}
            )
        assert not (tmp_path / "models" / "m").exists() or not any(
            (tmp_path / "models" / "m").rglob("model.safetensors")
        )
        assert store.list_models() == [] or store.list_model_versions("m") == []
        # a checkpoint a stage writes itself is refused the same way
        with pytest.raises(EncryptionError):
            crypt.write_bytes(store.artifact_path(run.id, "checkpoint.safetensors"), b"ckpt")
        assert not store.artifact_path(run.id, "checkpoint.safetensors").exists()

        monkeypatch.setenv(crypt.KEY_ENV, OTHER)  # another key: refused too, reads too
        with pytest.raises(EncryptionError, match="key differs"):
            store.log_artifact(run.id, "weights.bin", b"w")
        with pytest.raises(EncryptionError, match="key differs"):
            store.run_reader(run.id)("model.json")
    finally:
        store.close()


def test_record_artifact_encrypts_a_file_a_stage_wrote(tmp_path, keyed) -> None:
    store = SqlStore(home=tmp_path)
    try:
        run = store.create_run(experiment="e", name="r")
        store.log_artifact(run.id, "a.txt", b"a")
        path = store.artifact_path(run.id, "plain.txt")
        path.write_bytes(b"written by a stage")
        artifact = store.record_artifact(run.id, "plain.txt")
        assert crypt.is_encrypted(path)
        assert artifact.size == len(b"written by a stage")
        assert crypt.read_bytes(path) == b"written by a stage"
    finally:
        store.close()


def test_checkpoint_is_written_encrypted_and_resumes(tmp_path, keyed) -> None:
    import torch

    from danlu.train import load_checkpoint, save_checkpoint

    path = tmp_path / "checkpoint.safetensors"
    save_checkpoint(path, {"epoch": 3, "model": {"w": torch.arange(6.0)}})
    assert crypt.is_encrypted(path) and b"__metadata__" not in path.read_bytes()
    state = load_checkpoint(path)
    assert state["epoch"] == 3 and torch.equal(state["model"]["w"], torch.arange(6.0))


def test_dashboard_serves_the_plaintext_of_encrypted_artifacts(tmp_path, keyed) -> None:
    from fastapi.testclient import TestClient

    from danlu.ui import create_app

    store = SqlStore(home=tmp_path)
    try:
        run = store.create_run(experiment="e", name="r")
        store.log_artifact(run.id, "notes.txt", b"hello")
        store.log_artifact(run.id, "report.html", b"<html><p>report</p></html>")
        assert crypt.is_encrypted(store.artifact_path(run.id, "notes.txt"))
        with TestClient(create_app(store)) as client:
            download = client.get(f"/runs/{run.id}/artifacts/notes.txt")
            assert download.status_code == 200 and download.content == b"hello"
            assert 'filename="notes.txt"' in download.headers["content-disposition"]
            report = client.get(f"/runs/{run.id}/report/report.html")
            assert report.status_code == 200 and report.text == "<html><p>report</p></html>"
            assert "Content-Security-Policy" in report.headers
    finally:
        store.close()


# -- a digits run, encrypted and not ------------------------------------------------------------
def _digit_rows() -> Any:
    """Eight raw digits rows (the columns ``builtin:digits`` has)."""
    from danlu.data import load_source

    raw = load_source("builtin:digits")
    return raw.frame.drop(columns=[raw.target]).head(8)


def _train(home: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, str]:
    """Run DIGITS into ``home``; the ONNX and torch outputs of the registered version on random
    inputs, ``danlu.load_model``'s predictions on raw rows, and the run id."""
    from danlu.export import load_model
    from danlu.serve._runtime import load_runtime

    store = SqlStore(home=home)
    try:
        result = pipeline.run(DIGITS, store=store, home=home)
        mv = store.resolve("digits@production")
        from danlu.models import load_bundle

        bundle = load_bundle(store.model_reader(mv), mv.ref)
        x = np.random.default_rng(0).random((16, result.schema.input_dim), dtype=np.float32)
        onnx = load_runtime(store, mv, "onnx")
        assert onnx.name == "onnx"  # the encrypted model.onnx was read, checked and served
        torch_out = load_runtime(store, mv, "torch", bundle=bundle).outputs(x)
        predicted = load_model(mv.ref, store=store).predict(_digit_rows())["prediction"]
        # signed over the plaintext: verification reads the files through the key
        assert verify_version(store, mv).ok
        return onnx.outputs(x), torch_out, predicted, result.run_id
    finally:
        store.close()


def test_encrypted_digits_run_serves_the_same_model(tmp_path, monkeypatch) -> None:
    plain_onnx, plain_torch, plain_pred, _ = _train(tmp_path / "plain")
    monkeypatch.setenv(crypt.KEY_ENV, KEY)
    home = tmp_path / "enc"
    enc_onnx, enc_torch, enc_pred, run_id = _train(home)
    np.testing.assert_allclose(enc_onnx, plain_onnx, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(enc_torch, plain_torch, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(enc_pred, plain_pred)

    # every artifact and model file is encrypted on disk; the safetensors header is not visible
    files = [p for p in (home / "artifacts" / run_id).rglob("*") if p.is_file()]
    files += [p for p in (home / "models").rglob("*") if p.is_file()]
    names = {p.name for p in files}
    assert {"model.safetensors", "model.json", "model.onnx", "preprocessing.json"} <= names
    for path in files:
        if path.name == "signature.json":  # hashes of the plaintext, signed: not secret
            continue
        assert crypt.is_encrypted(path), path
        raw = path.read_bytes()
        assert b"__metadata__" not in raw and b'"dtype"' not in raw and b"pytorch" not in raw
    assert json.loads((home / crypt.MARKER).read_text())["key_id"] == crypt.load_key().key_id

    # without the key, loading the model fails loudly, naming the file
    from danlu.export import load_model

    monkeypatch.delenv(crypt.KEY_ENV)
    store = SqlStore(home=home)
    try:
        with pytest.raises(EncryptionError, match="no encryption key is set"):
            load_model("digits@production", store=store)
    finally:
        store.close()
