"""A model with a text column, served on raw strings by a real ``danlu serve`` process: the same
predictions as the run, a non-string or an over-long text refused naming its field, and the
OpenAPI document describing the text as a bounded string (issue 17)."""

from __future__ import annotations

from pathlib import Path

import httpx
import numpy as np
import pandas as pd

import danlu
from danlu.serve._parse import MAX_TEXT_CHARS
from tests.serve.conftest import start_server


def _reviews(n: int = 80) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    good = ["great", "lovely", "excellent", "superb", "wonderful"]
    bad = ["awful", "terrible", "boring", "dreadful", "dull"]
    filler = ["the", "film", "plot", "was", "acting", "really", "story", "and"]
    rows = []
    for i in range(n):
        words = [*rng.choice(filler, 4), *rng.choice(good if i % 2 else bad, 2)]
        rng.shuffle(words)
        rows.append(
            {"review": " ".join(words), "stars": float(i % 2 * 2 + rng.normal()), "y": i % 2}
        )
    return pd.DataFrame(rows)


def test_a_text_model_serves_raw_strings(tmp_path: Path):
    source = tmp_path / "reviews.csv"
    _reviews().to_csv(source, index=False)
    recipe = {
        "name": "reviews",
        "data": {
            "source": str(source),
            "target": "y",
            "features": {"review": "text"},
            "text": {"max_length": 12},
        },
        "task": "classification",
        "model": {"type": "text_cnn", "embedding": 8, "channels": 8, "kernels": [2]},
        "train": {"epochs": 2, "batch_size": 16, "checkpoint": {"every": 0}},
        "register": {"name": "reviews", "alias": "production"},
    }
    home = tmp_path / "home"
    result = danlu.run(recipe, home=home)
    rows = [
        {"review": "a superb and lovely film", "stars": 2.0},
        {"review": "dull, boring and awful", "stars": 0.0},
        {"review": "", "stars": 1.0},
        {"review": None, "stars": 1.0},
    ]
    expected = result.predict(pd.DataFrame(rows))
    with (
        start_server(home, "reviews@production", log_dir=tmp_path) as server,
        httpx.Client(base_url=server.url, timeout=30) as http,
    ):
        served = http.post("/v1/models/reviews/predict", json={"rows": rows})
        assert served.status_code == 200, served.text
        answer = served.json()
        assert answer["predictions"] == list(expected["prediction"])
        np.testing.assert_allclose(
            answer["probabilities"], expected["probabilities"], rtol=1e-5, atol=1e-6
        )
        number = http.post("/v1/models/reviews/predict", json={"rows": [dict(rows[0], review=3)]})
        assert number.status_code == 422, number.text
        assert number.json()["error"]["field"] == "rows[0].review"
        long = dict(rows[0], review="word " * (MAX_TEXT_CHARS // 5 + 1))
        too_long = http.post("/v1/models/reviews/predict", json={"rows": [long]})
        assert too_long.status_code == 422 and "characters" in too_long.json()["error"]["message"]
        spec = http.get("/openapi.json").json()["components"]["schemas"]
        row = next(v for k, v in spec.items() if k.endswith("_Row"))
        review = row["properties"]["review"]
        assert {"type": "string", "maxLength": MAX_TEXT_CHARS} in review.get("anyOf", [review])
