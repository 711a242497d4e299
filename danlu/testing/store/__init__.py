"""The storage contract as a test suite: every :class:`~danlu.store.Store` backend runs it.

Subclass :class:`StoreConformance` in a test module and provide one fixture, ``open_store``: a
factory that opens a handle on the *same* fresh, empty database and home every time it is called
(``open_store(heartbeat_timeout=0.2)`` must honour the timeout). The suite derives its ``store``
fixture from it; a subclass may override ``store`` too.

Example:
    >>> # tests/store/test_my_store.py
    >>> # class TestMyStore(StoreConformance):
    >>> #     @pytest.fixture
    >>> #     def open_store(self, tmp_path):
    >>> #         return lambda **kw: MyStore(tmp_path, **kw)

This module imports pytest: it is imported only by tests, never by the library itself.
"""

from __future__ import annotations

import pytest

from danlu.store import Store
from danlu.testing.store._artifacts import ArtifactsConformance
from danlu.testing.store._common import OpenStore
from danlu.testing.store._keys import ApiKeysConformance
from danlu.testing.store._registry import RegistryConformance
from danlu.testing.store._runs import RunsConformance
from danlu.testing.store._search import SearchConformance

__all__ = ["StoreConformance"]


class StoreConformance(
    RunsConformance,
    SearchConformance,
    ArtifactsConformance,
    RegistryConformance,
    ApiKeysConformance,
):
    """What every backend must do. Subclasses provide the ``open_store`` fixture.

    The tests come in parts, one per concern of the contract (runs, search, artifacts, registry,
    API keys); a backend runs them all by subclassing this class.
    """

    @pytest.fixture
    def open_store(self) -> OpenStore:
        raise NotImplementedError(
            "A StoreConformance subclass must provide the 'open_store' fixture: a factory that "
            "opens the same fresh store on each call and accepts heartbeat_timeout=."
        )

    @pytest.fixture
    def store(self, open_store: OpenStore) -> Store:
        return open_store()
