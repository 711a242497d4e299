"""What the registry keeps of a MiniLM LoRA version: the adapter file, and the base stored once.

Trains MiniLM + LoRA (r = 8, the default ``target_modules: [query, value]``, alpha 16) for one
epoch on 100 short synthetic texts of 5 classes (BBC News has 5; the file's size depends on the
rank, the adapted layers and the number of classes, not on the data), registers the run twice,
and reports the version's ``model.safetensors`` size and keys, the whole network's size, and the
store's one copy of the base.

    python bench/text_registry.py

Writes bench/results/text_registry.json.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("OMP_NUM_THREADS", "1")


def main() -> dict[str, object]:
    import numpy as np
    import pandas as pd
    from safetensors import safe_open

    import danlu
    from danlu.export import register_model
    from danlu.models import count_parameters
    from danlu.store import SqlStore

    rng = np.random.default_rng(0)
    topics = [
        ["shares", "profit", "market", "bank"],
        ["film", "music", "award", "star"],
        ["minister", "election", "party", "vote"],
        ["match", "goal", "team", "cup"],
        ["phone", "software", "internet", "chip"],
    ]
    filler = ["the", "a", "said", "on", "new", "year", "after", "and"]
    rows = [
        {
            "text": " ".join(rng.permutation([*rng.choice(filler, 6), *rng.choice(words, 3)])),
            "topic": f"t{k}",
        }
        for i in range(100)
        for k, words in [(i % 5, topics[i % 5])]
    ]
    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp) / "topics.csv"
        pd.DataFrame(rows).to_csv(source, index=False)
        recipe = {
            "name": "topics",
            "data": {
                "source": str(source),
                "target": "topic",
                "features": {"text": "text"},
                "text": {"max_length": 32},
            },
            "task": "classification",
            "model": {
                "type": "transformer",
                "pretrained": "all-MiniLM-L6-v2",
                "finetune": "lora",
                "lora": {"r": 8},
            },
            "train": {"epochs": 1, "batch_size": 16, "checkpoint": {"every": 0}},
        }
        home = Path(tmp) / "home"
        result = danlu.run(recipe, home=home)
        store = SqlStore(home=home)
        for _ in range(2):
            register_model(store, result.run_id, "topics", export=False)
        weights = store.model_version_path("topics", 1, "model.safetensors")
        with safe_open(str(weights), "pt") as f:
            keys = list(f.keys())
        card = json.loads(store.model_version_path("topics", 1, "model.json").read_text())
        base = store.stored_base(card["base"]["sha256"])
        assert base is not None
        bases = [p for p in base.parent.iterdir() if not p.name.startswith(".")]
        trainable, total = count_parameters(result.model)
        out = {
            "adapter_file_bytes": weights.stat().st_size,
            "adapter_keys": len(keys),
            "lora_keys": sum(".lora_" in k for k in keys),
            "head_keys": sum(k.startswith("head.") for k in keys),
            "trainable_parameters": trainable,
            "total_parameters": total,
            "base_sha256": card["base"]["sha256"],
            "base_copies_for_2_versions": len(bases),
            "base_copy_bytes": sum(p.stat().st_size for p in base.iterdir()),
        }
    (ROOT / "bench" / "results").mkdir(exist_ok=True)
    (ROOT / "bench" / "results" / "text_registry.json").write_text(json.dumps(out, indent=1))
    print(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main()
