from __future__ import annotations

import os
from pathlib import Path

import pytest

from danlu.errors import ConfigError, NotFittedError
from danlu.train._energy import (
    DEFAULT_WATTS_PER_CORE,
    TDP_ENV,
    EnergyMeter,
    EnergyReading,
    watts_per_core,
)

CORES = os.cpu_count() or 1


def _burn(seconds: float = 0.05) -> None:
    """Spend at least ``seconds`` of CPU time in this process."""
    import time

    start = time.process_time()
    total = 0
    while time.process_time() - start < seconds:
        total += sum(i * i for i in range(1000))


def _zone(root: Path, name: str, energy: int, max_range: int = 10**9, label: str = "") -> Path:
    zone = root / name
    zone.mkdir(parents=True)
    (zone / "energy_uj").write_text(f"{energy}\n")
    (zone / "max_energy_range_uj").write_text(f"{max_range}\n")
    (zone / "name").write_text(label or f"package-{name.rsplit(':', 1)[-1]}")
    return zone


def _set(zone: Path, energy: int) -> None:
    (zone / "energy_uj").write_text(f"{energy}\n")


@pytest.fixture
def no_rapl(tmp_path):
    return tmp_path / "no-powercap"


@pytest.fixture(autouse=True)
def _no_tdp_env(monkeypatch):
    monkeypatch.delenv(TDP_ENV, raising=False)


def test_rapl_counters_give_the_energy_delta(tmp_path):
    root = tmp_path / "powercap"
    p0 = _zone(root, "intel-rapl:0", 1_000_000)
    p1 = _zone(root, "intel-rapl:1", 5_000_000)
    core = _zone(root, "intel-rapl:0:0", 0, label="core")  # a subzone: already in the package
    meter = EnergyMeter(powercap_root=root, poll_seconds=0).start()
    _set(p0, 3_500_000)
    _set(p1, 6_000_000)
    _set(core, 900_000_000)
    reading = meter.stop()
    assert reading.method == "rapl"
    assert reading.joules == pytest.approx(2.5 + 1.0)
    assert "other processes" in reading.detail


def test_rapl_handles_a_wrap_around(tmp_path):
    root = tmp_path / "powercap"
    zone = _zone(root, "intel-rapl:0", 999_000_000, max_range=1_000_000_000)
    meter = EnergyMeter(powercap_root=root, poll_seconds=0).start()
    _set(zone, 2_000_000)  # wrapped: 1 J before the wrap, 2 J after
    assert meter.stop().joules == pytest.approx(3.0)


def test_rapl_polling_counts_several_wraps(tmp_path):
    root = tmp_path / "powercap"
    zone = _zone(root, "intel-rapl:0", 0, max_range=10_000_000)
    meter = EnergyMeter(powercap_root=root, poll_seconds=0).start()
    for value in (8_000_000, 4_000_000, 9_000_000, 1_000_000):  # wraps twice between reads
        _set(zone, value)
        meter.read()
    assert meter.stop().joules == pytest.approx(8 + 6 + 5 + 2)


def test_background_thread_polls_and_stops(tmp_path):
    root = tmp_path / "powercap"
    zone = _zone(root, "intel-rapl:0", 0, max_range=10_000_000)
    meter = EnergyMeter(powercap_root=root, poll_seconds=0.01).start()
    thread = meter._thread
    assert thread is not None and thread.is_alive()
    _set(zone, 5_000_000)
    thread.join(timeout=0.5)  # still running: it polls until stop()
    assert thread.is_alive()
    _set(zone, 7_000_000)
    assert meter.stop().joules == pytest.approx(7.0)
    assert not thread.is_alive()


def test_psys_zone_is_not_added_to_the_packages(tmp_path):
    root = tmp_path / "powercap"
    package = _zone(root, "intel-rapl:0", 0)
    psys = _zone(root, "intel-rapl:1", 0, label="psys")
    meter = EnergyMeter(powercap_root=root, poll_seconds=0).start()
    _set(package, 4_000_000)
    _set(psys, 9_000_000)
    assert meter.stop().joules == pytest.approx(4.0)


def test_unreadable_rapl_falls_back_to_the_estimate(tmp_path):
    root = tmp_path / "powercap"
    zone = _zone(root, "intel-rapl:0", 0)
    _zone(root, "intel-rapl:1", 0)
    (zone / "energy_uj").unlink()
    (zone / "energy_uj").mkdir()  # reading it fails (IsADirectoryError), as root-only files do
    reading = EnergyMeter(powercap_root=root).start().stop()
    assert reading.method == "estimate"


def test_rapl_lost_mid_run_falls_back_to_the_estimate(tmp_path):
    root = tmp_path / "powercap"
    zone = _zone(root, "intel-rapl:0", 0)
    meter = EnergyMeter(powercap_root=root, poll_seconds=0).start()
    _set(zone, 1_000_000)
    (zone / "energy_uj").write_text("garbage")
    _burn()
    reading = meter.stop()
    assert reading.method == "estimate"
    assert reading.joules == pytest.approx(reading.cpu_seconds * DEFAULT_WATTS_PER_CORE)


def test_estimate_is_cpu_seconds_times_watts_per_core(no_rapl):
    meter = EnergyMeter(powercap_root=no_rapl).start()
    _burn()
    reading = meter.stop()
    assert reading.method == "estimate"
    assert reading.cpu_seconds >= 0.05
    assert reading.seconds > 0
    assert reading.joules == pytest.approx(reading.cpu_seconds * DEFAULT_WATTS_PER_CORE)
    assert reading.detail == "CPU time × 15 W per core (estimate: no power counter readable)"


def test_tdp_environment_variable_is_respected(no_rapl, monkeypatch):
    monkeypatch.setenv(TDP_ENV, str(CORES * 4.0))
    meter = EnergyMeter(powercap_root=no_rapl).start()
    _burn()
    reading = meter.stop()
    assert reading.joules == pytest.approx(reading.cpu_seconds * 4.0)
    assert TDP_ENV in reading.detail


def test_tdp_argument_wins_over_the_environment(no_rapl, monkeypatch):
    monkeypatch.setenv(TDP_ENV, str(CORES * 4.0))
    meter = EnergyMeter(tdp_watts=CORES * 30.0, powercap_root=no_rapl).start()
    _burn()
    reading = meter.stop()
    assert reading.joules == pytest.approx(reading.cpu_seconds * 30.0)
    assert "TDP" in reading.detail


@pytest.mark.parametrize("value", ["abc", "0", "-5", "nan"])
def test_a_bad_tdp_environment_variable_is_a_config_error(monkeypatch, value):
    monkeypatch.setenv(TDP_ENV, value)
    with pytest.raises(ConfigError, match=TDP_ENV):
        watts_per_core()


def test_a_bad_tdp_argument_is_a_config_error():
    with pytest.raises(ConfigError, match="tdp_watts"):
        watts_per_core(0.0)


def test_context_manager(no_rapl):
    with EnergyMeter(powercap_root=no_rapl) as meter:
        _burn()
    reading = meter.reading
    assert reading is not None
    assert reading.cpu_seconds >= 0.05
    assert reading.joules == pytest.approx(reading.cpu_seconds * DEFAULT_WATTS_PER_CORE)


def test_cuda_without_nvml_says_the_gpu_is_not_measured(no_rapl, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "pynvml", None)  # import pynvml raises ImportError
    reading = EnergyMeter(device="cuda", powercap_root=no_rapl).start().stop()
    assert reading.method == "estimate"
    assert "GPU energy not measured" in reading.detail


def test_reading_before_start_is_an_error():
    with pytest.raises(NotFittedError, match="start"):
        EnergyMeter().stop()


def test_metrics_tags_and_round_trip():
    reading = EnergyReading(3.0, 2.0, 30.0, "estimate", "CPU time × 15 W per core")
    assert reading.to_metrics() == {
        "train_seconds": 3.0,
        "train_cpu_seconds": 2.0,
        "energy_joules": 30.0,
    }
    assert reading.to_tags() == {"energy_method": "estimate", "energy_detail": reading.detail}
    assert EnergyReading.from_run(reading.to_metrics(), reading.to_tags()) == reading
    assert EnergyReading.from_run({"train_seconds": 1.0}) is None


def test_add_sums_and_keeps_the_weaker_method():
    rapl = EnergyReading(10.0, 8.0, 500.0, "rapl", "RAPL package counters")
    nvml = EnergyReading(1.0, 1.0, 100.0, "nvml", "GPU energy counter (NVML)")
    estimate = EnergyReading(5.0, 4.0, 60.0, "estimate", "CPU time × 15 W per core")
    both = rapl.add(estimate)
    assert (both.seconds, both.cpu_seconds, both.joules) == (15.0, 12.0, 560.0)
    assert both.method == "estimate"
    assert estimate.add(rapl).method == "estimate"
    assert rapl.add(nvml).method == "nvml"
    assert rapl.add(rapl).method == "rapl"
    assert rapl.add(rapl).detail == rapl.detail  # same method: detail not repeated
    assert "RAPL" in both.detail and "CPU time" in both.detail
    assert both.add(estimate).detail == both.detail


class _FakeNvml:
    """Stands in for pynvml: one energy counter per physical GPU, in millijoules."""

    def __init__(self) -> None:
        self.energy = {3: 1_000_000, 5: 2_000_000}
        self.shut = False

    def nvmlInit(self) -> None:
        pass

    def nvmlShutdown(self) -> None:
        self.shut = True

    def nvmlDeviceGetHandleByIndex(self, index: int) -> int:
        return index

    def nvmlDeviceGetTotalEnergyConsumption(self, handle: int) -> int:
        return self.energy[handle]


def test_nvml_counts_the_gpu_plus_the_host_estimate(no_rapl, monkeypatch):
    import sys

    fake = _FakeNvml()
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")  # cuda:1 is physical GPU 5
    meter = EnergyMeter(device="cuda:1", powercap_root=no_rapl).start()
    fake.energy[5] += 250_000  # 250 J on the GPU
    fake.energy[3] += 999_000  # another GPU: not ours
    _burn()
    reading = meter.stop()
    assert reading.method == "nvml"
    host = reading.cpu_seconds * DEFAULT_WATTS_PER_CORE
    assert reading.joules == pytest.approx(250.0 + host)
    assert "NVML" in reading.detail and "CPU time" in reading.detail
    assert fake.shut
