from __future__ import annotations

import pytest
import torch

from danlu.config import load_recipe
from danlu.data import prepare_data
from danlu.errors import ConfigError
from danlu.models import build_model
from danlu.store import SqlStore, StoreTracker
from danlu.tasks import get_task
from danlu.testing import wine_recipe
from danlu.train import Callback, Trainer, seed_everything

BASE = wine_recipe(epochs=3)


def setup(*overrides, base=BASE):
    recipe = load_recipe(base, list(overrides))
    data = prepare_data(recipe.data, recipe.task)
    task = get_task(recipe.task)
    seed_everything(recipe.train.seed)
    model = build_model(recipe.model, data.schema, task)
    return recipe, data, task, model


def fit(*overrides, callbacks=(), checkpoint_path=None, base=BASE):
    recipe, data, task, model = setup(*overrides, base=base)
    return Trainer(recipe.train, callbacks=callbacks, checkpoint_path=checkpoint_path).fit(
        model, task, data
    )


def test_training_learns_and_records_history():
    trainer = fit("train.epochs=15")
    assert [h["epoch"] for h in trainer.history_] == list(range(1, 16))
    assert trainer.history_[-1]["train_loss"] < trainer.history_[0]["train_loss"]
    assert trainer.history_[-1]["val_accuracy"] > 0.85
    assert set(trainer.history_[0]) >= {"train_loss", "val_loss", "val_accuracy", "lr"}


def test_same_seed_same_metrics_different_seed_different():
    a = fit("train.seed=3").history_
    b = fit("train.seed=3").history_
    c = fit("train.seed=4").history_
    assert a == b
    assert a != c


@pytest.mark.parametrize("name", ["sgd", "adam", "adamw", "rmsprop", "adagrad"])
def test_every_optimizer_trains(name):
    trainer = fit(f"train.optimizer.name={name}", "train.optimizer.lr=0.01", "train.epochs=5")
    assert trainer.history_[-1]["train_loss"] < trainer.history_[0]["train_loss"]


@pytest.mark.parametrize("name", ["adam", "adamw"])
def test_adam_takes_the_fused_step_and_matches_the_default_one(name):
    """The fused kernel (one pass per parameter) where every parameter allows it: the same
    update as torch's default loop, to float rounding."""
    import torch

    from danlu.config import OptimizerConfig
    from danlu.train._optim import build_optimizer

    torch.manual_seed(0)
    nets = [torch.nn.Linear(4, 3) for _ in range(2)]
    nets[1].load_state_dict(nets[0].state_dict())
    config = OptimizerConfig(name=name, lr=0.1, weight_decay=0.01)
    fused = build_optimizer(config, nets[0])
    assert fused.defaults["fused"] is True
    plain_cls = torch.optim.Adam if name == "adam" else torch.optim.AdamW
    plain = plain_cls(nets[1].parameters(), lr=0.1, weight_decay=0.01)
    x, start = torch.randn(8, 4), nets[0].weight.detach().clone()
    for _ in range(3):
        for net, opt in zip(nets, (fused, plain), strict=True):
            net(x).square().mean().backward()
            opt.step()
            opt.zero_grad()
    for a, b in zip(nets[0].parameters(), nets[1].parameters(), strict=True):
        assert torch.allclose(a, b, atol=1e-6)
    assert not torch.allclose(nets[0].weight, start, atol=1e-3)  # it did move
    ints = torch.nn.Module()
    ints.register_parameter("w", torch.nn.Parameter(torch.zeros(2, dtype=torch.complex64)))
    assert not build_optimizer(config, ints).defaults.get("fused")  # not every dtype allows it


@pytest.mark.parametrize(
    ("settings", "check"),
    [
        (
            [
                "train.scheduler.name=step",
                "train.scheduler.step_size=2",
                "train.scheduler.gamma=0.5",
            ],
            lambda lrs: lrs == pytest.approx([1e-3, 1e-3, 5e-4, 5e-4]),
        ),
        (
            ["train.scheduler.name=exponential", "train.scheduler.gamma=0.5"],
            lambda lrs: lrs == pytest.approx([1e-3, 5e-4, 2.5e-4, 1.25e-4]),
        ),
        (
            ["train.scheduler.name=cosine", "train.scheduler.warmup_epochs=1"],
            lambda lrs: (
                lrs[0] == pytest.approx(1e-3) and lrs[1] > lrs[2] > lrs[3] and lrs[3] < 1e-5
            ),
        ),
        (["train.scheduler.name=one_cycle"], lambda lrs: max(lrs) > 1e-3 and lrs[-1] < 1e-4),
        (
            [
                "train.scheduler.name=plateau",
                "train.scheduler.patience=0",
                "train.scheduler.factor=0.5",
                "train.optimizer.lr=1.0",
            ],
            lambda lrs: min(lrs) < 1.0,
        ),
    ],
    ids=["step", "exponential", "cosine", "one_cycle", "plateau"],
)
def test_schedulers(settings, check):
    trainer = fit("train.epochs=4", *settings)
    lrs = [h["lr"] for h in trainer.history_]
    assert check(lrs), lrs


def test_early_stopping_stops_and_restores_best():
    trainer = fit(
        "train.epochs=200",
        "train.optimizer.lr=0.05",
        "train.early_stopping.patience=3",
        "train.early_stopping.monitor=val_loss",
    )
    stop = next(cb for cb in trainer.callbacks if type(cb).__name__ == "EarlyStopping")
    assert len(trainer.history_) < 200
    assert len(trainer.history_) == stop.best_epoch + 3
    assert trainer.best_epoch == stop.best_epoch
    best = min(h["val_loss"] for h in trainer.history_)
    assert stop.best == pytest.approx(best)


def test_early_stopping_on_a_max_metric_with_auto_mode():
    trainer = fit(
        "train.epochs=50",
        "train.early_stopping.monitor=val_accuracy",
        "train.early_stopping.patience=2",
    )
    stop = trainer.callbacks[0]
    assert stop.mode == "max"


def test_grad_accumulation_and_clipping_and_l1_and_bf16_run():
    base = fit("train.epochs=2").history_
    acc = fit("train.epochs=2", "train.grad_accumulation=2").history_
    assert acc != base  # half as many optimizer steps
    sgd = ["train.epochs=2", "train.optimizer.name=sgd", "train.optimizer.lr=0.1"]
    clipped = fit(*sgd, "train.grad_clip=1e-4").history_
    assert clipped[-1]["train_loss"] > fit(*sgd).history_[-1]["train_loss"]  # tiny steps learn less
    l1 = fit("train.epochs=2", "train.l1=0.01").history_
    assert l1 != base
    bf16 = fit("train.epochs=2", "train.precision=bf16").history_
    assert bf16[-1]["train_loss"] < 2.0


def test_class_weights_change_training_and_bad_classes_are_named():
    base = fit("train.epochs=2").history_
    balanced = fit("train.epochs=2", "train.class_weight=balanced").history_
    assert balanced != base
    custom = fit("train.epochs=2", "train.class_weight={'0': 5.0}").history_
    assert custom != base
    with pytest.raises(ConfigError, match=r"\['9'\]"):
        fit("train.class_weight={'9': 2.0}")


def test_batch_size_larger_than_training_split_is_clamped(caplog):
    trainer = fit("train.batch_size=100000", "train.epochs=1")
    assert "larger than the training split" in caplog.text
    assert trainer.global_step == 1


def test_callback_hooks_are_called_in_order():
    calls = []

    class Spy(Callback):
        def on_fit_start(self, trainer):
            calls.append("fit_start")

        def on_epoch_start(self, trainer, epoch):
            calls.append(f"epoch_start{epoch}")

        def on_batch_end(self, trainer, batch, loss):
            if batch == 0:
                calls.append(f"batch{batch}")

        def on_epoch_end(self, trainer, epoch, metrics):
            calls.append(f"epoch_end{epoch}")
            if epoch == 2:
                trainer.should_stop = True

        def on_fit_end(self, trainer):
            calls.append("fit_end")

    fit("train.epochs=5", callbacks=[Spy()])
    assert calls == [
        "fit_start",
        "epoch_start1",
        "batch0",
        "epoch_end1",
        "epoch_start2",
        "batch0",
        "epoch_end2",
        "fit_end",
    ]


def test_resume_matches_an_uninterrupted_run(tmp_path):
    settings = [
        "train.epochs=6",
        "train.scheduler.name=cosine",
        "train.early_stopping.patience=50",
        "model.dropout=0.3",
    ]
    full = fit(*settings, checkpoint_path=tmp_path / "full.safetensors")

    class Crash(Callback):
        def on_epoch_end(self, trainer, epoch, metrics):
            if epoch == 3:
                raise KeyboardInterrupt

    path = tmp_path / "cut.safetensors"
    with pytest.raises(KeyboardInterrupt):
        fit(*settings, callbacks=[Crash()], checkpoint_path=path)
    recipe, data, task, model = setup(*settings)
    model = build_model(recipe.model, data.schema, task)  # a fresh, differently initialised model
    resumed = Trainer(recipe.train, checkpoint_path=path).fit(model, task, data, resume=True)
    assert [h["epoch"] for h in resumed.history_] == list(range(1, 7))
    assert resumed.history_ == full.history_
    for a, b in zip(
        resumed.model.state_dict().values(), full.model.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b)


def test_tracker_receives_every_epoch(tmp_path):
    recipe, data, task, model = setup("train.epochs=3")
    store = SqlStore(home=tmp_path)
    tracker = StoreTracker(store, store.create_run(experiment="t", name="t").id)
    Trainer(recipe.train, tracker=tracker).fit(model, task, data)
    tracker.close()
    history = store.metric_history(tracker.run_id, "train_loss")
    assert [(p.step, p.epoch) for p in history] == [(1, 1), (2, 2), (3, 3)]


def test_regression_reports_r2_in_original_units():
    base = {
        **BASE,
        "data": {"source": "builtin:diabetes"},
        "task": "regression",
        "model": {"type": "mlp", "hidden": [8]},
    }
    trainer = fit("train.epochs=20", "train.optimizer.lr=0.01", base=base)
    last = trainer.history_[-1]
    assert last["val_r2"] > 0.2
    assert 20 < last["val_mae"] < 80  # diabetes' target is in the hundreds: units were restored


def test_a_model_can_bound_the_rows_of_each_evaluation_pass():
    """A model whose rows are large inside (a GPT: context × vocabulary logits per block) names
    ``eval_chunk_rows``; evaluation then runs in passes of at most that many rows, with the
    same outputs in the same order."""
    recipe, data, task, model = setup("train.epochs=1")
    trainer = Trainer(recipe.train).fit(model, task, data)
    x = torch.as_tensor(data.x_train[:50])
    whole = trainer.predict_outputs(x)
    sizes: list[int] = []
    hook = model.register_forward_pre_hook(lambda _m, args: sizes.append(len(args[0])))
    model.eval_chunk_rows = 7
    try:
        chunked = trainer.predict_outputs(x)
    finally:
        hook.remove()
        del model.eval_chunk_rows
    assert sizes == [7] * 7 + [1]
    assert torch.allclose(chunked, whole, atol=1e-5)
