"""Signed models: what signing and verification add to registering a model version.

A model is trained once (no registration); then the same run is registered again and again
through ``danlu.export.register_model`` — the path ``danlu run``, ``danlu tune`` and ``danlu
models register`` take: copy the run's files into a new version, then export it to ONNX with its
parity check — alternately with signing on and off (``DANLU_SIGNING=off``), in alternating order,
so both sides share the machine's state. Each signed version is then verified
(``verify_version``: every file read back and hashed, the Ed25519 signature checked). Reported
per model: the medians, and the ratio (signed registration + verification) / unsigned
registration. The store step alone (``create_model_version`` with the same files, no export) is
timed the same way, as the stricter ratio.

Models: the digits example's CNN (examples/digits_cnn.yaml, 1 epoch, no augmentation or
compression: registration does not depend on how long it trained) and a digits MLP with two
1,024-wide hidden layers (~4.5 MB of safetensors weights).

    python bench/signing.py [--reps 15]
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

import yaml  # noqa: E402
from _report import machine, write  # noqa: E402

from danlu import pipeline  # noqa: E402
from danlu.export import register_model  # noqa: E402
from danlu.store import SqlStore, atomic_write_bytes, verify_version  # noqa: E402
from danlu.store._signing import file_digest, sign_manifest  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def _recipes() -> dict[str, dict[str, Any]]:
    cnn = yaml.safe_load((ROOT / "examples" / "digits_cnn.yaml").read_text())
    for key in ("register", "compress", "augment"):
        cnn.pop(key, None)
        cnn["data"].pop(key, None)
    cnn["train"].update(epochs=1, checkpoint={"every": 0})
    cnn["evaluate"] = {"calibration": {"temperature": True}}  # the report and calibration files
    mlp = {
        "name": "digits-mlp",
        "data": {"source": "builtin:digits", "prepare": {"scale": "minmax"}},
        "task": "classification",
        "model": {"type": "mlp", "hidden": [1024, 1024]},
        "train": {"epochs": 1, "checkpoint": {"every": 0}, "seed": 0},
        "evaluate": {"calibration": {"temperature": True}},
    }
    return {"digits CNN (example)": cnn, "digits MLP 1024x1024": mlp}


def _timed(signed: bool, fn: Any) -> tuple[float, Any]:
    os.environ["DANLU_SIGNING"] = "on" if signed else "off"
    start = time.perf_counter()
    value = fn()
    return time.perf_counter() - start, value


def _sign_work(home: Path, files: dict[str, bytes], scratch: Path) -> None:
    """What signing adds to one registration, alone: every file hashed once, and two
    signatures made and written durably (the version's, and the one after the ONNX export is
    attached)."""
    digests = {f: file_digest(d) for f, d in files.items()}
    for _ in range(2):
        atomic_write_bytes(scratch / "signature.json", sign_manifest(home, "probe", 1, digests))


def bench_model(label: str, recipe: dict[str, Any], reps: int) -> dict[str, Any]:
    home = Path(tempfile.mkdtemp(prefix="danlu-signing-"))
    store = SqlStore(home=home)
    run_id = pipeline.run(recipe, store=store, home=home).run_id
    files = {
        p.name: p.read_bytes()
        for p in (home / "artifacts" / run_id).iterdir()
        if p.name in ("model.safetensors", "model.json", "preprocessing.json", "calibration.json")
    }
    register_model(store, run_id, "warm-up")  # imports, ONNX exporter warm-up, signing key
    final = store.get_model_version("warm-up")
    reader = store.model_reader(final)
    version_files = {f: reader(f) or b"" for f in final.files}
    scratch = Path(tempfile.mkdtemp(prefix="danlu-signing-scratch-"))
    times: dict[str, list[float]] = {"signed": [], "unsigned": [], "verify": [], "sign_work": []}
    store_times: dict[str, list[float]] = {"signed": [], "unsigned": [], "verify": []}
    for rep in range(reps):
        order = (True, False) if rep % 2 == 0 else (False, True)
        for signed in order:
            side = "signed" if signed else "unsigned"
            seconds, mv = _timed(signed, lambda s=side: register_model(store, run_id, s))
            times[side].append(seconds)
            if signed:
                seconds, result = _timed(True, lambda mv=mv: verify_version(store, mv))
                assert result.ok, result
                times["verify"].append(seconds)
                seconds, _ = _timed(True, lambda: _sign_work(home, version_files, scratch))
                times["sign_work"].append(seconds)
        for signed in order:
            side = "signed" if signed else "unsigned"
            seconds, mv = _timed(
                signed,
                lambda s=side: store.create_model_version(
                    f"store-{s}", run_id=None, files=files, signature={}, metrics={}
                ),
            )
            store_times[side].append(seconds)
            if signed:
                seconds, _ = _timed(True, lambda mv=mv: verify_version(store, mv))
                store_times["verify"].append(seconds)
    os.environ.pop("DANLU_SIGNING", None)
    mv = store.get_model_version("signed")
    sizes = {f: (home / "models" / "signed" / str(mv.version) / f).stat().st_size for f in mv.files}
    store.close()

    def summary(t: dict[str, list[float]]) -> dict[str, float]:
        med = {k: statistics.median(v) for k, v in t.items()}
        out = {
            "unsigned_s": med["unsigned"],
            "signed_s": med["signed"],
            "verify_s": med["verify"],
            "ratio": (med["signed"] + med["verify"]) / med["unsigned"],
        }
        # each rep's signed and unsigned registrations ran back to back: their ratio shares
        # the machine's state of the moment, so its median shrugs off slow stretches
        out["paired_ratio"] = statistics.median(
            (a + v) / b for a, v, b in zip(t["signed"], t["verify"], t["unsigned"], strict=True)
        )
        if "sign_work" in med:  # the signing work timed alone: a steadier estimate
            out["sign_work_s"] = med["sign_work"]
            out["ratio_from_parts"] = (med["unsigned"] + med["sign_work"] + med["verify"]) / med[
                "unsigned"
            ]
        return out

    return {
        "model": label,
        "files": len(mv.files),
        "bytes": sum(sizes.values()),
        "weights_bytes": sizes.get("model.safetensors", 0),
        "registration": summary(times),
        "store_step": summary(store_times),
        "raw": {"registration": times, "store_step": store_times},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=15)
    args = parser.parse_args()
    import torch

    torch.set_num_threads(1)
    results = [bench_model(label, r, args.reps) for label, r in _recipes().items()]
    rows = []
    for r in results:
        for what in ("registration", "store_step"):
            s = r[what]
            rows.append(
                [
                    r["model"],
                    "register_model (files + ONNX export)"
                    if what == "registration"
                    else "store step only",
                    f"{r['files']} files, {r['bytes'] / 1e6:.2f} MB",
                    f"{s['unsigned_s'] * 1e3:.1f}",
                    f"{s['signed_s'] * 1e3:.1f}",
                    f"{s['verify_s'] * 1e3:.1f}",
                    f"{s['ratio']:.3f}",
                    f"{s['paired_ratio']:.3f}",
                    f"{s['sign_work_s'] * 1e3:.1f}" if "sign_work_s" in s else "-",
                    f"{s['ratio_from_parts']:.3f}" if "ratio_from_parts" in s else "-",
                ]
            )
    worst = max(r["registration"]["ratio"] for r in results)
    worst_parts = max(r["registration"]["ratio_from_parts"] for r in results)
    spread = [
        f"{min(r['raw']['registration']['unsigned']):.1f}-"
        f"{max(r['raw']['registration']['unsigned']):.1f} s"
        for r in results
    ]
    notes = (
        f"Medians of {args.reps} registrations per side, signed and unsigned interleaved in "
        "alternating order on one machine (shared with other work: A/B ratios are noisy). "
        "ratio = (signed + verify) / unsigned, of the medians; paired ratio = the median over "
        "reps of (signed + verify) / unsigned within a rep (back to back). sign ms: the signing work alone (every file of "
        "the version hashed, two signatures made and written with fsync), timed in the same "
        "loop; ratio from parts = (unsigned + sign + verify) / unsigned. Target: signing and "
        "verification add at most 5% to registration time: worst ratio "
        f"{worst:.3f}, from parts {worst_parts:.3f}. Unsigned registrations alone ranged "
        f"{', '.join(spread)} over the reps: the machine's load, not signing."
    )
    write(
        "signing",
        {
            "reps": args.reps,
            "machine": machine(),
            "results": results,
            "worst_ratio": worst,
            "worst_ratio_from_parts": worst_parts,
            "worst_paired_ratio": max(r["registration"]["paired_ratio"] for r in results),
        },
        [
            "model",
            "timed",
            "version",
            "unsigned ms",
            "signed ms",
            "verify ms",
            "ratio",
            "paired ratio",
            "sign ms",
            "ratio from parts",
        ],
        rows,
        notes,
    )
    print((Path(__file__).parent / "results" / "signing.md").read_text())


if __name__ == "__main__":
    main()
