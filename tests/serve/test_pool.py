"""The model pool: routing and canaries, hot swap under load, failed loads, the alias watcher."""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from danlu import pipeline
from danlu.errors import ConfigError, NotFoundError, StoreError
from danlu.serve._pool import ModelPool, served_models
from danlu.serve._types import Canary, ModelLoadError, ServeSettings
from danlu.store import SqlStore, Store

WINE = {
    "name": "w",
    "data": {"source": "builtin:wine"},
    "task": "classification",
    "model": {"type": "mlp", "hidden": [16]},
    "train": {"epochs": 1, "checkpoint": {"every": 0}},
    "register": {"name": "wine"},
}


@pytest.fixture(scope="module")
def home(tmp_path_factory) -> Path:
    """wine:1 and wine:2 load; wine:3's weights were corrupted on disk after registration, and
    wine:4's model.json names ``builtins:print`` as its architecture."""
    import json

    home = tmp_path_factory.mktemp("pool")
    store = SqlStore(home=home)
    for _ in range(4):
        pipeline.run(WINE, store=store, home=home)
    store.model_version_path("wine", 3, "model.safetensors").write_bytes(b"not safetensors")
    card_path = store.model_version_path("wine", 4, "model.json")
    card = json.loads(card_path.read_text())
    card_path.write_text(json.dumps({**card, "type": "builtins:print"}))
    return home


def _settings(**change: Any) -> ServeSettings:
    base: dict[str, Any] = {
        "models": ("wine@production",),
        "max_wait_ms": 1.0,
        "poll_seconds": 0.0,
    }
    return ServeSettings(**{**base, **change})


def _pool(home: Path, version: int = 1, **change: Any) -> tuple[ModelPool, Store]:
    store = SqlStore(home=home)
    store.set_alias("wine", "production", version)
    return ModelPool(lambda: SqlStore(home=home), _settings(**change)), store


ROWS = {"rows": [dict.fromkeys(
    ["alcohol", "malic_acid", "ash", "alcalinity_of_ash", "magnesium", "total_phenols",
     "flavanoids", "nonflavanoid_phenols", "proanthocyanins", "color_intensity", "hue",
     "od280/od315_of_diluted_wines", "proline"], 1.0)]}  # fmt: skip


async def _ask(pool: ModelPool) -> int:
    """One request as the HTTP layer makes it; the version that answered."""
    model = pool.route("wine")
    out = await model.predict(model.parse(ROWS, 10))
    assert len(out["predictions"]) == 1
    return model.version


def test_start_route_and_unknown_names(home) -> None:
    pool, _ = _pool(home)

    async def main() -> None:
        assert not pool.ready
        await pool.start()
        assert pool.ready and pool.names() == ["wine"]
        assert pool.primary("wine").version == 1 and pool.canary("wine") is None
        assert await _ask(pool) == 1
        with pytest.raises(NotFoundError, match="served models: wine"):
            pool.route("digits")
        with pytest.raises(NotFoundError):
            await pool.reload("digits")
        await pool.stop()
        assert not pool.ready

    asyncio.run(main())


def test_canary_takes_its_share(home) -> None:
    pool, _ = _pool(home, canaries=(Canary("wine", "wine:2", 0.1),))

    async def main() -> Counter[int]:
        await pool.start()
        assert pool.canary("wine") is not None and pool.canary("wine").version == 2
        counts = Counter(pool.route("wine").version for _ in range(2000))
        assert await _ask(pool) in (1, 2)
        await pool.stop()
        return counts

    counts = asyncio.run(main())
    assert 140 <= counts[2] <= 260 and counts[1] + counts[2] == 2000


def test_a_bad_canary_is_a_config_error(home) -> None:
    async def main(canary: Canary) -> None:
        pool, _ = _pool(home, canaries=(canary,))
        try:
            await pool.start()
        finally:
            await pool.stop()

    with pytest.raises(ConfigError, match="between 0 and 1"):
        asyncio.run(main(Canary("wine", "2", 1.5)))
    with pytest.raises(ConfigError, match="another model"):
        asyncio.run(main(Canary("wine", "iris:2", 0.1)))
    with pytest.raises(ConfigError, match="needs 'digits'"):
        asyncio.run(main(Canary("digits", "digits:2", 0.1)))


def test_reload_swaps_under_load_without_a_failed_request(home) -> None:
    pool, store = _pool(home)

    async def main() -> tuple[list[int], list[int]]:
        await pool.start()
        old = pool.primary("wine")
        answered: list[int] = []
        failures: list[BaseException] = []
        swapped = asyncio.Event()

        async def client() -> None:
            for i in range(60):  # bounded: 8 clients x 60 requests
                try:
                    answered.append(await _ask(pool))
                except Exception as exc:  # any failure is a test failure
                    failures.append(exc)
                if i == 10:
                    await swapped.wait()  # keep requests coming across the swap

        async def swap() -> None:
            while len(answered) < 40:
                await asyncio.sleep(0.001)
            await asyncio.to_thread(store.set_alias, "wine", "production", 2)
            new = await pool.reload("wine")
            assert new.version == 2 and pool.primary("wine") is new
            swapped.set()

        await asyncio.gather(swap(), *(client() for _ in range(8)))
        assert not failures, failures
        assert old.queue_depth() == 0
        assert await pool.reload("wine") is pool.primary("wine")  # alias unchanged: no swap
        after = [await _ask(pool) for _ in range(5)]
        await pool.stop()
        return answered, after

    answered, after = asyncio.run(main())
    assert len(answered) == 480
    assert set(answered) == {1, 2} and after == [2] * 5


def test_a_version_that_fails_to_load_leaves_the_old_one_serving(home) -> None:
    pool, store = _pool(home)

    async def main() -> None:
        await pool.start()
        store.set_alias("wine", "production", 3)
        with pytest.raises(
            StoreError, match=r"version 3 .*failed to load, so wine:1 keeps serving"
        ):
            await pool.reload("wine")
        assert pool.primary("wine").version == 1 and pool.ready
        assert await _ask(pool) == 1
        with pytest.raises(StoreError):  # an explicit load of it fails the same way
            await pool.load("wine:3")
        assert pool.primary("wine").version == 1
        await pool.stop()

    asyncio.run(main())


def test_load_and_unload(home) -> None:
    pool, _ = _pool(home, models=())

    async def main() -> None:
        await pool.start()
        assert pool.ready and pool.names() == []
        model = await pool.load("wine:2")
        assert model.version == 2 and pool.names() == ["wine"]
        assert await _ask(pool) == 2
        assert (await pool.load("wine:1")).version == 1  # a served name switches by hot swap
        with pytest.raises(NotFoundError):
            await pool.load("wine:99")
        assert pool.primary("wine").version == 1
        await pool.unload("wine")
        assert pool.names() == []
        with pytest.raises(NotFoundError):
            await pool.unload("wine")
        await pool.stop()

    asyncio.run(main())


def test_the_watcher_follows_an_alias_and_survives_a_bad_version(home, caplog) -> None:
    pool, store = _pool(home, poll_seconds=0.02)

    async def wait_for_version(version: int) -> None:
        for _ in range(500):  # bounded: at most ~10 s
            if pool.primary("wine").version == version:
                return
            await asyncio.sleep(0.02)
        raise AssertionError(f"the watcher did not move to version {version}")

    async def main() -> None:
        await pool.start()
        await asyncio.to_thread(store.set_alias, "wine", "production", 2)
        await wait_for_version(2)
        with caplog.at_level(logging.WARNING, logger="danlu"):
            await asyncio.to_thread(store.set_alias, "wine", "production", 3)
            for _ in range(500):
                if "failed to load" in caplog.text:
                    break
                await asyncio.sleep(0.02)
        assert "failed to load" in caplog.text
        assert pool.primary("wine").version == 2 and await _ask(pool) == 2
        await asyncio.to_thread(store.set_alias, "wine", "production", 1)
        await wait_for_version(1)  # the watcher is still alive
        await pool.stop()

    asyncio.run(main())


def test_a_pinned_version_is_not_watched(home) -> None:
    pool, store = _pool(home, models=("wine:1",))

    async def main() -> list[str]:
        await pool.start()
        store.set_alias("wine", "production", 2)
        moved = await pool.check_aliases()
        await pool.stop()
        return moved

    assert asyncio.run(main()) == []


def test_whatever_the_loader_raises_is_a_model_load_error(home) -> None:
    """An architecture the loader refuses (a NotFoundError from it) is a failed load — not an
    unknown model — and so is a corrupt file, under a new name or the name of a served model."""
    pool, _ = _pool(home)

    async def main() -> None:
        await pool.start()
        for ref, name, words in (
            ("wine:4", "wine-four", "builtins:print"),
            ("wine:4", None, "keeps serving"),
            ("wine:3", "wine-three", "safetensors"),
        ):
            with pytest.raises(ModelLoadError, match=rf"version \d .*failed to load.*{words}"):
                await pool.load(ref, name=name)
        assert pool.names() == ["wine"] and pool.primary("wine").version == 1
        await pool.stop()

    asyncio.run(main())


def test_two_versions_serve_under_names_of_their_own(home) -> None:
    pool, _ = _pool(home, models=("wine:1", "wine-two=wine:2"), canaries=(Canary("wine-two", "1", 0.5),))  # fmt: skip

    async def main() -> None:
        await pool.start()
        assert sorted(pool.names()) == ["wine", "wine-two"]
        assert pool.primary("wine").version == 1 and pool.primary("wine-two").version == 2
        assert pool.primary("wine-two").name == "wine-two"  # metrics and logs use it
        assert pool.canary("wine-two") is not None and pool.canary("wine-two").ref == "wine:1"
        await pool.stop()

    asyncio.run(main())
    with pytest.raises(ConfigError, match=r"both be served as 'wine'.*NAME=MODEL.*wine-2=wine:2"):
        served_models(["wine:1", "wine:2"])
    with pytest.raises(ConfigError, match="not a name"):
        served_models(["../x=wine:1"])
    assert served_models(["wine@production", "w2=wine:2"]) == [
        ("wine", "wine@production"),
        ("w2", "wine:2"),
    ]


def test_a_model_that_fails_at_start_up_is_listed_and_the_others_serve(home, caplog) -> None:
    pool, _ = _pool(home, models=("wine:1", "bad=wine:3"), canaries=(Canary("wine", "wine:4", 0.1),))  # fmt: skip

    async def main() -> None:
        with caplog.at_level(logging.ERROR, logger="danlu"):
            await pool.start()
        assert pool.ready and pool.names() == ["wine"] and pool.canary("wine") is None
        assert [(f["name"], f["role"]) for f in pool.failed] == [("bad", "model"), ("wine", "canary")]  # fmt: skip
        with pytest.raises(NotFoundError, match="failed to load at start-up"):
            pool.route("bad")
        assert await _ask(pool) == 1
        await pool.load("wine:2", name="bad")  # a version that works takes the name
        assert [f["name"] for f in pool.failed] == ["wine"] and pool.ready
        await pool.stop()

    asyncio.run(main())
    assert "Model 'bad': version 3 (from 'wine:3') failed to load" in caplog.text
    assert "The others serve" in caplog.text and "serves without its canary" in caplog.text


def test_when_no_model_loads_start_up_fails_saying_which_and_why(home) -> None:
    async def main(*models: str) -> None:
        pool, _ = _pool(home, models=models)
        try:
            await pool.start()
        finally:
            await pool.stop()

    with pytest.raises(ModelLoadError, match=r"^Model 'wine': version 3 .*safetensors"):
        asyncio.run(main("wine:3"))
    with pytest.raises(ModelLoadError, match="None of the models could be loaded.*version 3.*version 4"):  # fmt: skip
        asyncio.run(main("wine:3", "w4=wine:4"))
