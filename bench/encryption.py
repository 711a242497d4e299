"""Encryption at rest: what AES-256-GCM encryption of artifacts and model files adds to a run.

1. **run**: the digits example (``examples/digits_cnn.yaml``) run whole — prepare, train,
   evaluate (the example's trust report: calibration, robustness, explanations), register and
   export to ONNX — with ``DANLU_ENCRYPTION_KEY`` set (every artifact, checkpoint and model file
   encrypted on write and decrypted on every read back) and without, alternating which goes first
   in each repeat, one store per side. Shortened to ``--epochs`` epochs (the example trains 40
   with early stopping) and without its ``compress`` block (which runs the same reads and writes
   once per variant); the time encryption adds does not depend on the number of epochs except
   through the checkpoint written each epoch, which is encrypted too. Reported: median wall time
   of each side, the ratio, each repeat's times. Target: ratio ≤ 1.10.
2. **codec**: throughput of ``write_bytes`` / ``read_bytes`` (encrypted, 4 MiB chunks) against
   plain atomic writes / reads of a 64 MiB file (a model of that size), medians.

    python bench/encryption.py [--repeats 3] [--epochs 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.pop("DANLU_DB_URL", None)
os.environ.pop("DANLU_ENCRYPTION_KEY_FILE", None)

import yaml  # noqa: E402
from _report import machine, write  # noqa: E402

from danlu import pipeline  # noqa: E402
from danlu.store import SqlStore  # noqa: E402
from danlu.store import _crypt as crypt  # noqa: E402
from danlu.store._atomic import atomic_write_bytes  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
KEY = crypt.generate_key()
CIPHER = {"seconds": 0.0, "bytes": 0}  # time inside AES-GCM itself, and the bytes it handled


class _TimedAES:
    """AES-GCM that adds the time of each encrypt / decrypt call to CIPHER."""

    def __init__(self, aes: Any) -> None:
        self.aes = aes

    def _timed(self, fn: Any, nonce: bytes, data: Any, ad: bytes) -> bytes:
        start = time.perf_counter()
        out: bytes = fn(nonce, data, ad)
        CIPHER["seconds"] += time.perf_counter() - start
        CIPHER["bytes"] += len(data)
        return out

    def encrypt(self, nonce: bytes, data: Any, ad: bytes) -> bytes:
        return self._timed(self.aes.encrypt, nonce, data, ad)

    def decrypt(self, nonce: bytes, data: Any, ad: bytes) -> bytes:
        return self._timed(self.aes.decrypt, nonce, data, ad)


_plain_aesgcm = crypt._aesgcm
crypt._aesgcm = lambda secret: _TimedAES(_plain_aesgcm(secret))  # type: ignore[assignment]


def _recipe(epochs: int) -> dict[str, Any]:
    recipe = yaml.safe_load((ROOT / "examples" / "digits_cnn.yaml").read_text())
    recipe.pop("compress", None)
    recipe["train"]["epochs"] = epochs
    return recipe


def _set_key(on: bool) -> None:
    if on:
        os.environ[crypt.KEY_ENV] = KEY
    else:
        os.environ.pop(crypt.KEY_ENV, None)


def _run(recipe: dict[str, Any], home: Path, encrypted: bool) -> dict[str, float]:
    """One run: its wall time, CPU time, and the time spent inside AES-GCM (0 for plaintext)."""
    _set_key(encrypted)
    store = SqlStore(home=home)
    CIPHER.update(seconds=0.0, bytes=0)
    try:
        start, cpu = time.perf_counter(), time.process_time()
        result = pipeline.run(recipe, store=store, home=home)
        elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
        files = list((home / "artifacts" / result.run_id).rglob("*.safetensors"))
        assert files and all(crypt.is_encrypted(f) == encrypted for f in files), files
        return {
            "wall": elapsed,
            "cpu": cpu,
            "cipher": CIPHER["seconds"],
            "mb": CIPHER["bytes"] / 1e6,
        }
    finally:
        store.close()
        _set_key(False)


def bench_run(repeats: int, epochs: int) -> dict[str, Any]:
    recipe = _recipe(epochs)
    homes = {side: Path(tempfile.mkdtemp(prefix=f"danlu-enc-{side}-")) for side in ("plain", "enc")}
    for side in ("plain", "enc"):  # warm-up: imports, ONNX exporter, the stores' databases
        _run(recipe, homes[side], side == "enc")
    runs: dict[str, list[dict[str, float]]] = {"plain": [], "enc": []}
    for rep in range(repeats):
        order = ("plain", "enc") if rep % 2 == 0 else ("enc", "plain")
        for side in order:
            runs[side].append(_run(recipe, homes[side], side == "enc"))
            print(f"  repeat {rep + 1} {side}: {runs[side][-1]}", flush=True)

    def med(side: str, key: str) -> float:
        return statistics.median(r[key] for r in runs[side])

    plain, enc = med("plain", "wall"), med("enc", "wall")
    paired = [e["wall"] / p["wall"] for p, e in zip(runs["plain"], runs["enc"], strict=True)]
    return {
        "epochs": epochs,
        "repeats": repeats,
        "plain_s": plain,
        "encrypted_s": enc,
        "ratio": enc / plain,
        "paired_ratio_median": statistics.median(paired),
        "cpu_ratio": med("enc", "cpu") / med("plain", "cpu"),
        "cipher_s": med("enc", "cipher"),
        "cipher_share": med("enc", "cipher") / enc,
        "cipher_mb": med("enc", "mb"),
        "runs": runs,
        "target_ratio": 1.10,
        "passes": enc / plain <= 1.10,
    }


def bench_codec(size_mb: int = 64, repeats: int = 5) -> dict[str, Any]:
    data = os.urandom(size_mb << 20)
    folder = Path(tempfile.mkdtemp(prefix="danlu-enc-codec-"))
    plain_path, enc_path = folder / "plain.bin", folder / "enc.bin"
    timing: dict[str, list[float]] = {k: [] for k in ("write", "write_enc", "read", "read_enc")}
    _set_key(True)
    try:
        for _ in range(repeats):
            for name, fn in (
                ("write", lambda: atomic_write_bytes(plain_path, data)),
                ("write_enc", lambda: crypt.write_bytes(enc_path, data)),
                ("read", lambda: plain_path.read_bytes()),
                ("read_enc", lambda: crypt.read_bytes(enc_path)),
            ):
                start = time.perf_counter()
                fn()
                timing[name].append(time.perf_counter() - start)
        assert crypt.read_bytes(enc_path) == data
    finally:
        _set_key(False)
    med = {k: statistics.median(v) for k, v in timing.items()}
    return {
        "size_mb": size_mb,
        "repeats": repeats,
        "median_s": med,
        "mb_per_s": {k: size_mb / v for k, v in med.items()},
        "overhead_bytes": enc_path.stat().st_size - len(data),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=5)
    args = parser.parse_args()
    run = bench_run(args.repeats, args.epochs)
    codec = bench_codec()
    payload = {"machine": machine(), "run": run, "codec": codec}
    rows = [
        [
            f"digits example, {run['epochs']} epochs (no compress)",
            f"{run['plain_s']:.2f} s",
            f"{run['encrypted_s']:.2f} s",
            f"{run['ratio']:.3f}",
            "≤ 1.10",
            "yes" if run["passes"] else "no",
        ],
        [
            "the same runs: CPU time",
            f"{statistics.median(r['cpu'] for r in run['runs']['plain']):.2f} s",
            f"{statistics.median(r['cpu'] for r in run['runs']['enc']):.2f} s",
            f"{run['cpu_ratio']:.3f}",
            "",
            "",
        ],
        [
            f"the same runs: inside AES-GCM ({run['cipher_mb']:.0f} MB a run)",
            "0",
            f"{run['cipher_s']:.3f} s",
            f"+{100 * run['cipher_share']:.2f}% of the run",
            "",
            "",
        ],
    ]
    mbs = codec["mb_per_s"]
    rows += [
        [
            f"write a {codec['size_mb']} MiB file",
            f"{mbs['write']:.0f} MB/s",
            f"{mbs['write_enc']:.0f} MB/s",
            f"{codec['median_s']['write_enc'] / codec['median_s']['write']:.2f}",
            "",
            "",
        ],
        [
            f"read a {codec['size_mb']} MiB file",
            f"{mbs['read']:.0f} MB/s",
            f"{mbs['read_enc']:.0f} MB/s",
            f"{codec['median_s']['read_enc'] / codec['median_s']['read']:.2f}",
            "",
            "",
        ],
    ]
    each = ", ".join(
        f"{p['wall']:.2f}/{e['wall']:.2f}"
        for p, e in zip(run["runs"]["plain"], run["runs"]["enc"], strict=True)
    )
    notes = (
        f"Medians of {run['repeats']} repeats, plaintext and encrypted runs alternating (which "
        f"goes first swaps each repeat), after one warm-up run each; each repeat plain/encrypted "
        f"wall time (s): {each}; median of the paired ratios "
        f"{run['paired_ratio_median']:.3f}. Encrypted: AES-256-GCM, 4 MiB chunks, {codec['overhead_bytes']} bytes "
        f"more for the {codec['size_mb']} MiB file. `python bench/encryption.py --repeats "
        f"{run['repeats']} --epochs {run['epochs']}`; {machine()['cpus']} CPUs, one thread."
    )
    path = write(
        "encryption",
        payload,
        ["what", "plaintext", "encrypted", "ratio", "target", "met"],
        rows,
        notes,
    )
    print(path.read_text())


if __name__ == "__main__":
    main()
