"""The training section: curves and the lowest validation loss from a run's history."""

from __future__ import annotations

import dataclasses

from danlu.evaluate._training import training_section


def history(val_loss: list[float] | None) -> list[dict[str, float]]:
    rows = []
    for i in range(len(val_loss or [0.5] * 6)):
        row = {"epoch": i + 1, "train_loss": 1.0 / (i + 1), "lr": 1e-3}
        if val_loss is not None:
            row.update(val_loss=val_loss[i], val_accuracy=0.5 + 0.05 * i)
        rows.append(row)
    return rows


def test_curves_and_the_epoch_of_lowest_validation_loss(make_eval_data) -> None:
    data = dataclasses.replace(make_eval_data(), history=history([0.9, 0.6, 0.4, 0.45, 0.5, 0.6]))
    section = training_section(data)
    assert section.data["epochs"] == 6
    assert section.data["lowest_val_loss"] == {"epoch": 3, "value": 0.4}
    assert section.summary == "trained 6 epochs, lowest validation loss 0.4 at epoch 3"
    assert any("over-fitted after its best epoch" in note for note in section.notes)
    (caption, markup), *_ = section.figures.items()
    assert caption == "Loss and validation metric per epoch"
    assert "<svg" in markup and "Accuracy per epoch" in markup and "Loss per epoch" in markup


def test_without_a_validation_split_the_training_loss_is_shown(make_eval_data) -> None:
    section = training_section(dataclasses.replace(make_eval_data(), history=history(None)))
    assert section.summary == "trained 6 epochs (no validation split), final training loss 0.1667"
    assert "lowest_val_loss" not in section.data and not section.notes[:-1]
    assert "Accuracy per epoch" not in next(iter(section.figures.values()))


def test_no_history_is_a_note(make_eval_data) -> None:
    section = training_section(make_eval_data())  # EvalData without a history
    assert "skipped" in section.data and not section.figures and section.summary is None
