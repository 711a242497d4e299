"""Signed model versions: signed at registration (and again when files are attached), verified
by ``danlu models verify`` and by ``danlu serve --require-signed``, which names the file that
changed, went missing or was added."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import stat
import threading
from pathlib import Path

import pytest

from danlu import pipeline
from danlu.errors import StoreError
from danlu.serve._pool import ModelPool
from danlu.serve._types import ModelLoadError, ServeSettings
from danlu.store import SIGNATURE_FILE, SignatureError, SqlStore, verify_version
from danlu.store._signing import key_id, signing_key
from tests.cli._runner import danlu

WINE = {
    "name": "w",
    "data": {"source": "builtin:wine"},
    "task": "classification",
    "model": {"type": "mlp", "hidden": [16]},
    "train": {"epochs": 1, "checkpoint": {"every": 0}},
    "register": {"name": "wine", "alias": "production"},
}
ROW = {"rows": [dict.fromkeys(
    ["alcohol", "malic_acid", "ash", "alcalinity_of_ash", "magnesium", "total_phenols",
     "flavanoids", "nonflavanoid_phenols", "proanthocyanins", "color_intensity", "hue",
     "od280/od315_of_diluted_wines", "proline"], 1.0)]}  # fmt: skip


@pytest.fixture(scope="module")
def signed_home(tmp_path_factory) -> Path:
    """wine:1 and wine:2, registered (and exported to ONNX) by the pipeline: both signed."""
    home = tmp_path_factory.mktemp("signed")
    store = SqlStore(home=home)
    try:
        for _ in range(2):
            pipeline.run(WINE, store=store, home=home)
    finally:
        store.close()
    return home


@pytest.fixture
def home(signed_home, tmp_path, monkeypatch) -> Path:
    """A copy of the signed store, this test's DANLU_HOME, free to tamper with."""
    copy = tmp_path / "copy"
    shutil.copytree(signed_home, copy)
    monkeypatch.setenv("DANLU_HOME", str(copy))
    monkeypatch.delenv("DANLU_DB_URL", raising=False)
    return copy


def _nudge_weights(path: Path) -> None:
    """Change one weight a little: still valid safetensors, no longer the reviewed model."""
    from safetensors.numpy import load_file, save_file

    tensors = load_file(path)
    first = sorted(tensors)[0]
    tensors[first] = tensors[first] + 0.01
    save_file(tensors, path)


def test_registration_signs_every_file_including_the_export(home) -> None:
    store = SqlStore(home=home)
    mv = store.get_model_version("wine", 1)
    result = verify_version(store, mv)
    assert result.ok
    # the ONNX export was attached after the version was created, and re-signed
    assert {"model.safetensors", "model.json", "preprocessing.json", "model.onnx"} <= set(
        result.files
    )
    assert set(mv.files) <= set(result.files)
    document = json.loads(store.model_version_path("wine", 1, SIGNATURE_FILE).read_text())
    manifest = document["manifest"]
    assert (manifest["model"], manifest["version"]) == ("wine", 1)
    weights = store.model_version_path("wine", 1, "model.safetensors").read_bytes()
    assert manifest["files"]["model.safetensors"]["size"] == len(weights)
    assert SIGNATURE_FILE not in mv.files  # the registry's own file, not one of the model's
    key = home / "keys" / "signing.key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert (home / "keys" / "trusted" / f"{result.key_id}.pub").is_file()
    store.close()


def test_models_verify_passes_a_signed_version(home) -> None:
    outcome = danlu("models", "verify", "wine:1")
    assert outcome.code == 0, outcome.stderr
    assert "match the signature" in outcome.stdout
    outcome = danlu("models", "verify", "wine@production", "--json")
    assert outcome.code == 0 and json.loads(outcome.stdout)["ok"] is True


@pytest.mark.parametrize(
    ("tamper", "file", "says"),
    [
        (lambda d: _nudge_weights(d / "model.safetensors"), "model.safetensors", "changed"),
        (lambda d: (d / "preprocessing.json").unlink(), "preprocessing.json", "missing"),
        (lambda d: (d / "extra.onnx").write_bytes(b"x"), "extra.onnx", "added after signing"),
        (lambda d: (d / "model.onnx").write_bytes(b"onnx"), "model.onnx", "changed"),
    ],
)
def test_a_tampered_version_fails_naming_the_file(home, tamper, file, says) -> None:
    folder = home / "models" / "wine" / "1"
    tamper(folder)
    outcome = danlu("models", "verify", "wine:1")
    assert outcome.code != 0
    assert file in outcome.stderr and says in outcome.stderr
    assert "wine:1" in outcome.stderr
    report = json.loads(danlu("models", "verify", "wine:1", "--json").stdout)
    assert report["ok"] is False and says in report["files"][file]
    assert danlu("models", "verify", "wine:2").code == 0  # the other version is untouched


def test_a_forged_manifest_or_a_signature_from_elsewhere_is_refused(home) -> None:
    one = home / "models" / "wine" / "1" / SIGNATURE_FILE
    two = home / "models" / "wine" / "2" / SIGNATURE_FILE
    # the weights were swapped and the manifest "fixed" to match: the signature no longer holds
    _nudge_weights(one.parent / "model.safetensors")
    document = json.loads(one.read_text())
    import hashlib

    data = (one.parent / "model.safetensors").read_bytes()
    document["manifest"]["files"]["model.safetensors"]["sha256"] = hashlib.sha256(data).hexdigest()
    one.write_text(json.dumps(document))
    outcome = danlu("models", "verify", "wine:1")
    assert outcome.code != 0 and "manifest was changed after signing" in outcome.stderr
    # version 2's signature does not vouch for version 1's files
    shutil.copy(two, one)
    outcome = danlu("models", "verify", "wine:1")
    assert outcome.code != 0 and "signs wine:2, not wine:1" in outcome.stderr


def test_an_untrusted_signer_is_refused(home, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("DANLU_TRUSTED_KEYS", str(tmp_path / "nobody"))
    outcome = danlu("models", "verify", "wine:1")
    assert outcome.code != 0 and "not trusted" in outcome.stderr


def test_an_unsigned_version_says_so(home, monkeypatch) -> None:
    monkeypatch.setenv("DANLU_SIGNING", "off")
    store = SqlStore(home=home)
    mv = store.create_model_version(
        "hand", run_id=None, files={"w.bin": b"w"}, signature={}, metrics={}
    )
    assert not store.model_version_path("hand", mv.version, SIGNATURE_FILE).exists()
    store.close()
    outcome = danlu("models", "verify", "hand:1")
    assert outcome.code != 0 and "is unsigned" in outcome.stderr
    assert "Register it again" in outcome.stderr


def test_attaching_re_signs_and_refuses_a_forged_signature(home) -> None:
    store = SqlStore(home=home)
    mv = store.attach_model_files("wine", 2, {"notes/review.md": b"approved"})
    assert verify_version(store, mv).files["notes/review.md"] == "ok"
    assert verify_version(store, mv).ok
    path = store.model_version_path("wine", 2, SIGNATURE_FILE)
    document = json.loads(path.read_text())
    document["manifest"]["files"]["model.safetensors"]["size"] += 1
    path.write_text(json.dumps(document))
    with pytest.raises(SignatureError, match="changed after signing"):
        store.attach_model_files("wine", 2, {"report.html": b"<html>"})
    with pytest.raises(StoreError, match="signature, which the registry writes itself"):
        store.attach_model_files("wine", 1, {SIGNATURE_FILE: b"{}"})
    store.close()


def test_a_signing_key_given_by_file(home, tmp_path, monkeypatch) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

    key = ed25519.Ed25519PrivateKey.generate()
    path = tmp_path / "team.key"
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    monkeypatch.setenv("DANLU_SIGNING_KEY_FILE", str(path))
    store = SqlStore(home=home)
    mv = store.create_model_version(
        "hand", run_id=None, files={"w": b"w"}, signature={}, metrics={}
    )
    result = verify_version(store, mv)
    assert result.ok and result.key_id == key_id(key.public_key())
    path.write_bytes(
        rsa.generate_private_key(public_exponent=65537, key_size=1024).private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    with pytest.raises(StoreError, match="not Ed25519"):
        store.create_model_version("hand", run_id=None, files={"w": b"w"}, signature={}, metrics={})
    monkeypatch.setenv("DANLU_SIGNING_KEY_FILE", str(tmp_path / "absent.key"))
    with pytest.raises(StoreError, match="absent.key"):
        store.create_model_version("hand", run_id=None, files={"w": b"w"}, signature={}, metrics={})
    assert [v.version for v in store.list_model_versions("hand")] == [1]  # nothing half-made
    store.close()


def test_the_store_key_is_created_once_under_concurrency(tmp_path) -> None:
    ids: list[str] = []
    barrier = threading.Barrier(8)

    def make() -> None:
        barrier.wait()
        ids.append(key_id(signing_key(tmp_path).public_key()))

    threads = [threading.Thread(target=make) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(ids) == 8 and len(set(ids)) == 1
    assert [p.name for p in (tmp_path / "keys").iterdir()] == ["signing.key"]


def _settings(**change) -> ServeSettings:
    base = {"models": ("wine@production",), "max_wait_ms": 1.0, "poll_seconds": 0.0}
    return ServeSettings(**{**base, **change})


def test_require_signed_refuses_changed_weights_at_load_and_reload(home) -> None:
    _nudge_weights(home / "models" / "wine" / "2" / "model.safetensors")

    async def main() -> None:
        # without the flag the changed weights load (serving is unchanged) ...
        store = SqlStore(home=home)
        store.set_alias("wine", "production", 2)
        pool = ModelPool(lambda: SqlStore(home=home), _settings())
        await pool.start()
        assert pool.primary("wine").version == 2
        await pool.stop()
        # ... with it, they are refused, naming the file
        pool = ModelPool(lambda: SqlStore(home=home), _settings(require_signed=True))
        with pytest.raises(ModelLoadError, match=r"model\.safetensors: changed"):
            await pool.start()
        # a signed version serves; a hot swap to the changed one is refused and it keeps serving
        store.set_alias("wine", "production", 1)
        pool = ModelPool(lambda: SqlStore(home=home), _settings(require_signed=True))
        await pool.start()
        model = pool.route("wine")
        assert (await model.predict(model.parse(ROW, 10)))["predictions"]
        store.set_alias("wine", "production", 2)
        with pytest.raises(ModelLoadError, match=r"wine:1 keeps serving.*model\.safetensors"):
            await pool.reload("wine")
        assert pool.primary("wine").version == 1
        await pool.stop()
        store.close()

    asyncio.run(main())


def test_serve_require_signed_exits_naming_the_file(home) -> None:
    import subprocess
    import sys

    (home / "models" / "wine" / "1" / "preprocessing.json").write_text("{}")
    env = {**os.environ, "DANLU_HOME": str(home), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "danlu", "serve", "wine:1", "--require-signed", "--port", "0"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode != 0
    assert "preprocessing.json: changed" in done.stderr + done.stdout


def test_encrypted_files_are_signed_by_their_plaintext(tmp_path, monkeypatch) -> None:
    import base64

    monkeypatch.setenv("DANLU_ENCRYPTION_KEY", base64.b64encode(os.urandom(32)).decode())
    store = SqlStore(home=tmp_path / "encrypted")
    weights = b"weights" * 1000
    mv = store.create_model_version(
        "enc", run_id=None, files={"model.bin": weights}, signature={}, metrics={}
    )
    on_disk = store.model_version_path("enc", 1, "model.bin").read_bytes()
    assert on_disk != weights  # encrypted at rest ...
    result = verify_version(store, mv)  # ... and signed over what the store reads back
    assert result.ok
    document = json.loads(store.model_version_path("enc", 1, SIGNATURE_FILE).read_text())
    assert document["manifest"]["files"]["model.bin"]["size"] == len(weights)
    flipped = bytearray(on_disk)
    flipped[-1] ^= 1
    store.model_version_path("enc", 1, "model.bin").write_bytes(bytes(flipped))
    problems = verify_version(store, mv).problems
    assert list(problems) == ["model.bin"] and problems["model.bin"].startswith("unreadable")
    store.close()


def test_without_cryptography_versions_are_unsigned_and_verify_says_what_to_install(
    home, monkeypatch, caplog
) -> None:
    import sys

    from danlu.errors import MissingExtraError
    from danlu.store import _signing

    monkeypatch.setitem(sys.modules, "cryptography.hazmat.primitives.asymmetric", None)
    monkeypatch.setattr(_signing, "_warned_missing", False)
    store = SqlStore(home=home)
    with caplog.at_level("WARNING", logger="danlu"):
        mv = store.create_model_version(
            "bare", run_id=None, files={"w": b"w"}, signature={}, metrics={}
        )
    assert "registered unsigned" in caplog.text and "danlu[security]" in caplog.text
    assert not store.model_version_path("bare", mv.version, SIGNATURE_FILE).exists()
    with pytest.raises(MissingExtraError, match="security"):
        verify_version(store, store.get_model_version("wine", 1))
    store.close()
