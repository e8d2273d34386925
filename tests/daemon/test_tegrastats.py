"""tegrastats read from recorded lines of several Jetson generations and releases, and a
stand-in binary that prints them; and their figures in ``/metrics``."""

from __future__ import annotations

import stat
import time
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from edgert.daemon.counts import ReplyCounts
from edgert.daemon.metrics import DaemonCollector
from edgert.daemon.tegrastats import TegraSample, Tegrastats, parse_line

# Lines as published by people running these modules (test data of datadog-agent, of
# prometheus exporters, and forum posts), one per generation or release format.
NANO = (  # Jetson Nano, L4T 32: GR3D_FREQ without a frequency, POM_ rails
    "RAM 613/3964MB (lfb 634x4MB) SWAP 0/1982MB (cached 0MB) CPU [2%@102,1%@102,0%@102,0%@102] "
    "EMC_FREQ 0% GR3D_FREQ 0% PLL@39C CPU@40.5C PMIC@100C GPU@41C AO@46C thermal@41C "
    "POM_5V_IN 900/943 POM_5V_GPU 0/0 POM_5V_CPU 123/123"
)
TX1 = (  # Jetson TX1: GR3D_FREQ with @MHz, IRAM
    "RAM 1179/3983MB (lfb 120x4MB) IRAM 0/252kB(lfb 252kB) CPU [1%@102,4%@102,0%@102,0%@102] "
    "EMC_FREQ 7%@408 GR3D_FREQ 0%@76 APE 25 AO@42.5C CPU@37.5C GPU@39C PLL@37C Tdiode@42.75C "
    "PMIC@100C Tboard@42C thermal@38.5C VDD_IN 2532/2698 VDD_CPU 76/178 VDD_GPU 19/19"
)
AGX_XAVIER = (  # AGX Xavier: mW rails
    "RAM 4181/7771MB (lfb 8x4MB) SWAP 0/3885MB (cached 0MB) CPU [10%@1190,0%@1190,1%@1190,"
    "0%@1190,5%@1190,1%@1190] EMC_FREQ 15%@1600 GR3D_FREQ 0% PLL@42.906C Tdiode@43.25C "
    "Tboard@36C GPU@41.75C BCPU@42.5C MCPU@47.5C thermal@42.425C VDD_SYS_GPU 47mW/0mW "
    "VDD_SYS_SOC 813mW/207mW VDD_4V0_WIFI 495mW/0mW VDD_IN 3539mW/1422mW VDD_SYS_CPU 125mW/104mW"
)
XAVIER_NX = (  # Xavier NX, JetPack 5.1.2: a timestamp first, GR3D_FREQ 0%@[MHz]
    "07-09-2024 13:31:31 RAM 3168/6851MB (lfb 2x4MB) SWAP 161/3426MB (cached 0MB) "
    "CPU [23%@1397,17%@1192,16%@1190,13%@1190,23%@1190,10%@1190] EMC_FREQ 2%@204 "
    "GR3D_FREQ 0%@[114] VIC_FREQ 115 APE 150 AUX@45C CPU@46.5C thermal@45.6C AO@45C "
    "GPU@45.5C PMIC@50C VDD_IN 2763mW/2846mW VDD_CPU_GPU_CV 650mW/670mW VDD_SOC 650mW/711mW"
)
ORIN_NANO = (  # Orin Nano, JetPack 6: lower-case sensors
    "10-08-2026 04:38:21 RAM 1343/7620MB (lfb 157x4MB) SWAP 165/3810MB (cached 3MB) "
    "CPU [0%@1497,0%@729,0%@729,0%@729,0%@729,0%@729] EMC_FREQ 15%@204 "
    "GR3D_FREQ 0%@[305] NVDEC off NVJPG off VIC off OFA off APE 200 "
    "cpu@48.562C soc2@46.593C soc0@48.625C gpu@49.625C tj@49.312C soc1@47.937C "
    "VDD_IN 5251mW/8535mW VDD_CPU_GPU_CV 512mW/1944mW VDD_SOC 2720mW/3659mW"
)
AGX_ORIN = (  # AGX Orin, two GPCs (@[MHz,MHz]), sensors powered down at -256C
    "04-11-2025 10:36:27 RAM 4321/62801MB (lfb 1759x4MB) SWAP 19/31400MB (cached 0MB) "
    "CPU [0%@729,0%@729,0%@729,0%@729,0%@729,0%@729,0%@729,0%@729,0%@729,0%@729,0%@729,"
    "0%@729] EMC_FREQ 0%@2133 GR3D_FREQ 37%@[624,624] VIC_FREQ 729 APE 174 CV0@-256C "
    "CPU@44.562C Tboard@32C SOC2@40.093C Tdiode@33C SOC0@41.093C CV1@-256C GPU@-256C "
    "tj@44.343C SOC1@41.25C CV2@-256C VDD_GPU_SOC 2340mW/2340mW VDD_CPU_CV 390mW/390mW "
    "VIN_SYS_5V0 4025mW/4025mW NC 0mW/0mW VDDQ_VDD2_1V8AO 301mW/301mW NC 0mW/0mW"
)
MB = 1 << 20


@pytest.mark.parametrize(
    ("line", "ram", "load", "temperatures"),
    [
        (NANO, (613, 3964), 0.0, {"gpu": 41.0, "cpu": 40.5, "pll": 39.0, "thermal": 41.0}),
        (TX1, (1179, 3983), 0.0, {"gpu": 39.0, "tdiode": 42.75, "tboard": 42.0}),
        (AGX_XAVIER, (4181, 7771), 0.0, {"gpu": 41.75, "bcpu": 42.5, "thermal": 42.425}),
        (XAVIER_NX, (3168, 6851), 0.0, {"gpu": 45.5, "aux": 45.0, "pmic": 50.0}),
        (ORIN_NANO, (1343, 7620), 0.0, {"gpu": 49.625, "tj": 49.312, "soc1": 47.937}),
        (AGX_ORIN, (4321, 62801), 0.37, {"tj": 44.343, "cpu": 44.562, "soc0": 41.093}),
    ],
)
def test_recorded_lines_of_each_generation(
    line: str, ram: tuple[int, int], load: float, temperatures: dict[str, float]
) -> None:
    sample = parse_line(line)
    assert (sample.ram_used, sample.ram_total) == (ram[0] * MB, ram[1] * MB)
    assert sample.gpu_load == load
    assert temperatures.items() <= sample.temperatures.items()
    assert all(t > -256 for t in sample.temperatures.values())  # powered-down sensors left out


def test_a_powered_down_gpu_sensor_is_left_out_and_a_line_without_fields_is_empty() -> None:
    assert "gpu" not in parse_line(AGX_ORIN).temperatures
    assert parse_line("tegrastats: permission denied\n") == TegraSample()


def test_the_binary_is_spawned_where_it_exists_and_its_lines_read(tmp_path: Path) -> None:
    assert not Tegrastats(binary=str(tmp_path / "absent")).start()
    fake = tmp_path / "tegrastats"
    # Stands in for the real binary: the recorded line every --interval milliseconds.
    fake.write_text(
        "#!/bin/sh\n"
        '[ "$1" = --interval ] || exit 2\n'
        f"while true; do echo '{ORIN_NANO}'; sleep $(( $2 / 1000 )).$(( $2 % 1000 )); done\n"
    )
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    reader = Tegrastats(interval_ms=100, binary=str(fake))
    assert reader.start()
    try:
        end = time.monotonic() + 10
        while reader.latest is None and time.monotonic() < end:
            time.sleep(0.05)
        assert reader.latest == parse_line(ORIN_NANO) and reader.running
    finally:
        reader.stop()
    assert not reader.running  # stopped with the daemon


class NoModels:
    """What the collector reads of the served models: none served."""

    def entries(self) -> list[Any]:
        return []


def test_the_last_line_s_figures_are_in_the_metrics() -> None:
    reader = Tegrastats()
    reader.latest = parse_line(AGX_ORIN)
    registry = CollectorRegistry()
    registry.register(DaemonCollector(NoModels(), ReplyCounts(), reader))  # type: ignore[arg-type]
    samples = {
        (s.name, tuple(s.labels.values())): s.value
        for family in text_string_to_metric_families(generate_latest(registry).decode())
        for s in family.samples
    }
    assert samples[("edgert_gpu_utilization", ())] == 0.37
    assert samples[("edgert_jetson_ram_used_bytes", ())] == 4321 * MB
    assert samples[("edgert_jetson_temperature_celsius", ("tj",))] == 44.343
    assert ("edgert_jetson_temperature_celsius", ("gpu",)) not in samples
