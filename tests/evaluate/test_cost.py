from __future__ import annotations

import copy
import dataclasses
import math

import pytest
import torch

from danlu.config import CostConfig
from danlu.evaluate import _cost
from danlu.evaluate._cost import cost_section

FAST = CostConfig(batch=32, repeats=5)
RUN_METRICS = {"train_seconds": 42.0, "train_cpu_seconds": 40.0, "energy_joules": 44280.0}
RUN_TAGS = {"energy_method": "estimate", "energy_detail": "CPU time × 15 W per core (estimate)"}


@pytest.fixture
def data(make_eval_data):
    return make_eval_data()


def test_parameters_and_trainable(data):
    model = copy.deepcopy(data.model)  # the trained model is shared by other tests
    first = next(model.parameters())
    first.requires_grad_(False)
    section = cost_section(dataclasses.replace(data, model=model), FAST)
    total = sum(p.numel() for p in model.parameters())
    assert section.key == "cost" and section.title == "Cost"
    assert section.data["parameters"] == total
    assert section.data["trainable"] == total - first.numel()


def test_sizes_come_from_the_stored_files(data):
    files = {"model.safetensors": 190_123, "model.onnx": 201_456}
    section = cost_section(dataclasses.replace(data, files=files), FAST)
    assert section.data["size_bytes"] == files
    assert "190 KB" in section.summary


def test_size_without_files_is_the_in_memory_safetensors(data, tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "model.safetensors"
    save_file({k: v.contiguous() for k, v in data.model.state_dict().items()}, path)
    section = cost_section(data, FAST)
    size = section.data["size_bytes"]["model.safetensors"]
    assert size == pytest.approx(path.stat().st_size, rel=0.01)
    assert any("in memory" in note for note in section.notes)


def test_latency_throughput_and_inference_energy_are_positive(data):
    section = cost_section(data, FAST)
    latency = section.data["latency_ms"]["batch_1"]
    assert 0 < latency["median"] <= latency["p90"] < math.inf
    throughput = section.data["throughput"]
    assert throughput["batch"] == 32
    assert 0 < throughput["rows_per_second"] < math.inf
    energy = section.data["inference_energy"]
    assert 0 <= energy["joules_per_1000"] < math.inf
    assert energy["wh_per_1000"] == pytest.approx(energy["joules_per_1000"] / 3600)
    assert energy["method"] == "estimate"
    assert section.data["device"] == "cpu"
    assert section.data["threads"] == torch.get_num_threads()


def test_repeats_and_batch_are_honoured(data):
    small = dataclasses.replace(data, x=data.x[:3])  # fewer rows than the batch: repeated
    sizes: list[int] = []
    handle = data.model.register_forward_hook(lambda m, args, out: sizes.append(len(args[0])))
    try:
        section = cost_section(small, CostConfig(batch=16, repeats=7))
    finally:
        handle.remove()
    warmup = _cost._WARMUP
    assert sizes.count(1) == warmup + 7
    assert sizes.count(16) == warmup + 7
    assert len(sizes) == 2 * (warmup + 7)
    assert section.data["latency_calls"] == 7
    assert section.data["throughput"]["calls"] == 7


def test_measurement_stops_early_over_budget(data, monkeypatch):
    monkeypatch.setattr(_cost, "_BUDGET_SECONDS", 0.0)
    section = cost_section(data, CostConfig(repeats=50))
    assert section.data["latency_calls"] == _cost._MIN_CALLS
    assert section.data["throughput"]["calls"] == _cost._MIN_CALLS
    assert any("stopped after 3 of 50" in note for note in section.notes)


def test_training_block_from_the_run(data):
    recorded = dataclasses.replace(data, run_metrics=RUN_METRICS, run_tags=RUN_TAGS)
    section = cost_section(recorded, FAST)
    training = section.data["training"]
    assert training == {
        "seconds": 42.0,
        "cpu_seconds": 40.0,
        "energy_joules": 44280.0,
        "energy_wh": pytest.approx(12.3),
        "method": "estimate",
        "detail": RUN_TAGS["energy_detail"],
    }
    assert "parameters" in section.summary
    assert section.summary.endswith("12.3 Wh to train (estimate)")


def test_training_block_is_none_when_not_recorded(data):
    section = cost_section(data, FAST)
    assert section.data["training"] is None
    assert any("not recorded" in note for note in section.notes)
    assert "parameters" in section.summary
    assert "train" not in section.summary


def test_tdp_changes_the_inference_energy_rule(data):
    section = cost_section(data, CostConfig(repeats=3, batch=8, tdp_watts=1000.0))
    assert "1000 W TDP" in section.data["inference_energy"]["detail"]


def test_no_rows_times_zeros(data):
    empty = dataclasses.replace(data, x=data.x[:0])
    section = cost_section(empty, FAST)
    assert section.data["latency_ms"]["batch_1"]["median"] > 0
    assert any("no evaluation rows" in note for note in section.notes)


def test_image_model(make_eval_data):
    data = make_eval_data("builtin:digits", model={"type": "cnn", "channels": [8], "hidden": 16})
    section = cost_section(data, FAST)
    assert section.data["parameters"] == sum(p.numel() for p in data.model.parameters())
    assert section.data["throughput"]["rows_per_second"] > 0


def test_section_is_json_serialisable(data):
    import json

    section = cost_section(dataclasses.replace(data, run_metrics=RUN_METRICS), FAST)
    back = json.loads(json.dumps(section.to_dict()))
    assert back["training"]["method"] is None
    assert isinstance(back["latency_ms"]["batch_1"]["median"], float)


@pytest.mark.parametrize(
    ("value", "text"),
    [(950, "950"), (47_213, "47k"), (1_320_000, "1.3M"), (2.1e9, "2.1B")],
)
def test_counts_read_like_people_say_them(value, text):
    assert _cost._count(value) == text


@pytest.mark.parametrize(
    ("value", "text"), [(512, "512 B"), (190_123, "190 KB"), (1_320_000, "1.3 MB")]
)
def test_sizes_read_like_people_say_them(value, text):
    assert _cost._bytes(value) == text


def test_energy_units():
    phrase = _cost._training_phrase
    assert phrase({"energy_joules": 15.04, "method": "rapl"}) == "15 J to train (RAPL counters)"
    assert phrase({"energy_joules": 5e7, "method": "nvml"}) == "13.9 kWh to train (NVML)"
    assert phrase({"energy_joules": None, "seconds": 90.0}) == "1.5 min to train"
