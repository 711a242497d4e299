"""``model.base`` of a language model, read from the store (fine-tuning, e.g. LoRA).

The task layer (:mod:`danlu.tasks._language_model`) needs the base's tokenizer to tokenize the
corpus and its weights to start the model from, but sits below the store; this module registers
the loader it calls (:func:`~danlu.tasks._language_model.set_base_loader`) when ``danlu.train``
is imported. ``model.base`` is ``NAME@ALIAS``, ``NAME:VERSION``, ``NAME`` (its latest version) or
a run id, in the default store (``$DANLU_HOME``; :func:`use_store` points it at another).
The base's LoRA adapters are merged if it was itself fine-tuned, so its weights are a plain
GPT's.

Example:
    >>> # recipe: model: {type: gpt, base: bbc-lm@production, finetune: lora, lora: {r: 8}}
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from danlu.errors import ConfigError, NotFoundError, StoreError
from danlu.tasks._language_model import set_base_loader

if TYPE_CHECKING:
    from danlu.store import Store

__all__ = ["load_base_model", "use_store"]

_KEY = "model.base"
_STORE: list[Store] = []


@contextlib.contextmanager
def use_store(store: Store) -> Iterator[None]:
    """Read ``model.base`` from ``store`` inside the block (default: ``$DANLU_HOME``'s)."""
    _STORE.append(store)
    try:
        yield
    finally:
        _STORE.pop()


def _store() -> Store:
    if _STORE:
        return _STORE[-1]
    from danlu.store import SqlStore

    return SqlStore()


def load_base_model(ref: str) -> dict[str, Any]:
    """The base model ``ref``: ``{ref, task, options, state, preprocessor}`` (``state``: a
    plain GPT state dict, adapters merged).

    Raises:
        ConfigError: ``ref`` is neither a run nor a registered model of the store, or its files
            do not load (the message names model.base).
    """
    from danlu.models import load_bundle, merge_adapters

    store = _store()
    try:
        if ":" not in ref and "@" not in ref and _is_run(store, ref):
            bundle, source = load_bundle(store.run_reader(ref), f"Run {ref}"), f"run {ref}"
        else:
            version = store.resolve(ref)
            bundle = load_bundle(store.model_reader(version), f"Model {version.ref}")
            source = f"model {version.ref}"
    except (NotFoundError, StoreError) as exc:
        raise ConfigError(
            f"{_KEY}: {ref!r} is neither a run of this store nor a registered model that loads "
            f"({exc}). Name NAME@ALIAS, NAME:VERSION or a run id (see danlu models, danlu runs)."
        ) from None
    model = merge_adapters(bundle.model)
    return {
        "ref": source,
        "task": bundle.task.name,
        "options": dict(bundle.card.get("options") or {}),
        "state": {k: v.detach().clone() for k, v in model.state_dict().items()},
        "preprocessor": bundle.preprocessor,
    }


def _is_run(store: Store, ref: str) -> bool:
    try:
        store.get_run(ref)
    except (NotFoundError, StoreError):
        return False
    return True


set_base_loader(load_base_model)
