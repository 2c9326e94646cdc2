"""CUDA-warm spares, against a fake CUDA driver (a shared library with the driver API's
signatures, tests/fakes/fake_cuda.c): a GPU job's spare is warmed for its GPU set once the set is
free, the next job (or instance) on exactly that set gets it, no job ever gets one warmed for
other GPUs, each accounts the memory it holds, and one is dropped when memory becomes short."""

from __future__ import annotations

import logging
import shutil
import subprocess
from collections.abc import Callable, Iterable
from pathlib import Path

import pytest
from tests.helpers import class_request, eventually, function_request, make_settings, process_gone

from sandvisor.protocol.models import FunctionResponse
from sandvisor.supervisor.core import Supervisor
from sandvisor.supervisor.settings import Settings
from sandvisor.supervisor.template_process import TemplateLost, TemplateProcess

FAKE_DRIVER = Path(__file__).parent.parent / "fakes" / "fake_cuda.c"

#: What the job finds: how many primary contexts its own process retained before it ran (a warm
#: spare retained one per visible GPU), and the GPUs it was given.
SEES_WARMTH = """
import ctypes, os
def main(library):
    return [ctypes.CDLL(library).fake_retained(), os.environ["CUDA_VISIBLE_DEVICES"]]
"""

#: The same, from a class instance's actor.
PROBE = """
import ctypes, os
class Probe:
    def sees(self, library):
        return [ctypes.CDLL(library).fake_retained(), os.environ["CUDA_VISIBLE_DEVICES"]]
"""

pytestmark = pytest.mark.skipif(
    shutil.which("cc") is None, reason="the fake CUDA driver needs a C compiler (cc)"
)


class FakeDriver:
    def __init__(self, library: Path, log: Path, memory: Path, gate: Path | None = None) -> None:
        self.library = library
        self.log = log
        self.memory = memory
        self.gate = gate  # cuInit waits until this file exists (None: it never waits)

    def reports(self, *figures: tuple[int, int]) -> None:
        """What cuMemGetInfo_v2 says from now on: ``(free, total)`` MiB of GPU 0, 1, ..."""
        self.memory.write_text("".join(f"{free} {total}\n" for free, total in figures))

    def calls(self, name: str) -> list[tuple[int, str]]:
        """``(pid, detail)`` of each ``name`` call, in order."""
        if not self.log.exists():
            return []
        found = []
        for line in self.log.read_text().splitlines():
            pid, call, detail = line.split(" ", 2)
            if call == name:
                found.append((int(pid), detail))
        return found


@pytest.fixture
def fake_driver(tmp_path: Path) -> Callable[..., FakeDriver]:
    def build(fail: bool = False, gated: bool = False) -> FakeDriver:
        name = f"{'fail' if fail else 'ok'}{'-gated' if gated else ''}"
        log, library = tmp_path / f"cuda-{name}.log", tmp_path / f"libfakecuda-{name}.so"
        gate = tmp_path / f"cuda-{name}.gate" if gated else None
        memory = tmp_path / "cuda-memory"  # none: cuMemGetInfo_v2 is not supported
        defines = [f'-DFAKE_CUDA_LOG="{log}"', f'-DFAKE_CUDA_MEMORY="{memory}"']
        defines += ["-DFAKE_CUDA_FAIL"] if fail else []
        defines += [f'-DFAKE_CUDA_GATE="{gate}"'] if gate else []
        subprocess.run(
            ["cc", "-shared", "-fPIC", "-O1", *defines, "-o", str(library), str(FAKE_DRIVER)],
            check=True,
        )
        return FakeDriver(library, log, memory, gate)

    return build


def two_gpus(tmp_path: Path, driver: FakeDriver, **overrides: object) -> Settings:
    values: dict[str, object] = {
        "gpus": "0,1",
        "cuda_driver_library": str(driver.library),
        "cuda_warm_min_free_mb": 0,
    }
    return make_settings(tmp_path / "home", **(values | overrides))


async def sees(sup: Supervisor, driver: FakeDriver, gpus: int = 1) -> list[object]:
    response: FunctionResponse = await sup.run(
        function_request(SEES_WARMTH, args=[str(driver.library)], limits={"gpus": gpus})
    )
    assert response.success, response.error
    return response.json_result


def base_template(sup: Supervisor) -> TemplateProcess:
    assert sup.templates is not None
    (template,) = sup.templates.running.values()
    return template


async def test_the_next_job_on_the_same_gpus_gets_a_warm_spare(
    tmp_path: Path, fake_driver: Callable[..., FakeDriver]
) -> None:
    driver = fake_driver()
    async with Supervisor(two_gpus(tmp_path, driver)) as sup:
        assert await sees(sup, driver) == [0, "0"]  # the first one is cold
        template = base_template(sup)
        assert await eventually(lambda: "0" in template.warm_spares)
        warm_pid = template.warm_spares["0"]
        assert await sees(sup, driver) == [1, "0"]
        # The spare initialized the driver for exactly the job's GPUs, and it became the job.
        assert (warm_pid, "0") in driver.calls("cuInit")
        assert (warm_pid, "0") in driver.calls("cuDevicePrimaryCtxRetain")
        # The template itself never touched the driver.
        assert template.pid not in {pid for pid, _ in driver.calls("cuInit")}


async def test_a_job_never_gets_a_spare_warmed_for_other_gpus(
    tmp_path: Path, fake_driver: Callable[..., FakeDriver]
) -> None:
    driver = fake_driver()
    async with Supervisor(two_gpus(tmp_path, driver)) as sup:
        await sees(sup, driver)
        template = base_template(sup)
        assert await eventually(lambda: "0" in template.warm_spares)
        # Both GPUs: the spare warm for GPU 0 alone is dropped (its context would hold memory
        # on the job's GPU) and the job starts cold.
        assert await sees(sup, driver, gpus=2) == [0, "0,1"]
        assert await eventually(lambda: list(template.warm_spares) == ["0,1"])
        # One GPU again: "0,1" is not its set; dropped, cold, and "0" is warmed for the next.
        assert await sees(sup, driver) == [0, "0"]
        assert await eventually(lambda: list(template.warm_spares) == ["0"])
        retained = driver.calls("cuDevicePrimaryCtxRetain")
        assert [detail for _, detail in retained] == ["0", "0", "1", "0"]


async def test_a_failing_warm_up_is_given_up_after_a_few_tries(
    tmp_path: Path, fake_driver: Callable[..., FakeDriver]
) -> None:
    driver = fake_driver(fail=True)
    async with Supervisor(two_gpus(tmp_path, driver)) as sup:
        template = base_template(sup)
        for tries in range(1, 4):
            assert await sees(sup, driver) == [0, "0"]
            assert await eventually(lambda tries=tries: template.warm_failures["0"] == tries)
        assert await sees(sup, driver) == [0, "0"]
        assert template.warm_spares == {} and template.warm_failures["0"] == 3
        assert len(driver.calls("cuInit")) == 3


@pytest.mark.parametrize("fails", [False, True], ids=["warm-up-succeeds", "warm-up-fails"])
async def test_a_job_that_comes_while_its_spare_warms_up_runs_cold_and_loses_nothing(
    tmp_path: Path, fake_driver: Callable[..., FakeDriver], fails: bool
) -> None:
    """A spare is offered for its GPU set only once its warm-up is done: a job never waits on
    a warm-up, nor is handed to a spare whose warm-up then fails."""
    driver = fake_driver(fail=fails, gated=True)
    assert driver.gate is not None
    async with Supervisor(two_gpus(tmp_path, driver)) as sup:
        assert await sees(sup, driver) == [0, "0"]
        template = base_template(sup)
        assert await eventually(lambda: driver.calls("cuInit"))  # warming, held at the gate
        assert await sees(sup, driver) == [0, "0"]  # from the plain spare, at once
        assert template.warm_spares == {}
        driver.gate.touch()
        if fails:
            assert await eventually(lambda: template.warm_failures["0"] == 1)
            assert template.warm_spares == {}
        else:
            assert await eventually(lambda: "0" in template.warm_spares)
            assert await sees(sup, driver) == [1, "0"]


@pytest.mark.parametrize(
    "overrides", [{"cuda_warm_spares": False}, {"gpus": ""}], ids=["turned-off", "no-gpus"]
)
async def test_no_warm_spares_when_off_or_without_gpus(
    tmp_path: Path, fake_driver: Callable[..., FakeDriver], overrides: dict[str, object]
) -> None:
    driver = fake_driver()
    async with Supervisor(two_gpus(tmp_path, driver, **overrides)) as sup:
        response = await sup.run(function_request("def main():\n    return 1\n"))
        assert response.success, response.error
        response = await sup.run(function_request("def main():\n    return 1\n"))
        assert response.success and base_template(sup).warm_spares == {}
        assert driver.calls("cuInit") == []


async def test_no_warm_spare_where_gpu_memory_is_short(
    tmp_path: Path, fake_driver: Callable[..., FakeDriver]
) -> None:
    driver = fake_driver()
    settings = two_gpus(tmp_path, driver, cuda_warm_min_free_mb=4096)
    async with Supervisor(settings) as sup:
        assert sup.templates is not None
        # What NVML would say of a device another process filled (NVML is not here).
        sup.templates.warm_spares._free_memory_mb = lambda indices: dict.fromkeys(indices, 1024)
        assert await sees(sup, driver) == [0, "0"]
        assert await sees(sup, driver) == [0, "0"]
        assert base_template(sup).warm_spares == {} and driver.calls("cuInit") == []


class Nvml:
    """What NVML would say of free memory (MiB by GPU index; it is not here): the test sets it."""

    def __init__(self, free: dict[int, int]) -> None:
        self.free = free

    def __call__(self, indices: Iterable[int]) -> dict[int, int]:
        return {index: self.free[index] for index in indices if index in self.free}


async def test_a_warm_spare_accounts_the_memory_it_holds_and_goes_when_memory_is_short(
    tmp_path: Path, fake_driver: Callable[..., FakeDriver], caplog: pytest.LogCaptureFixture
) -> None:
    driver = fake_driver()
    driver.reports((39488, 81559), (40000, 81559))
    nvml = Nvml({0: 40000, 1: 40000})
    settings = two_gpus(tmp_path, driver, cuda_warm_min_free_mb=4096, cuda_warm_check_interval_s=0)
    async with Supervisor(settings) as sup:
        assert sup.templates is not None
        warm = sup.templates.warm_spares
        warm._free_memory_mb = nvml
        with caplog.at_level(logging.INFO, logger="sandvisor.supervisor.warm_spares"):
            assert await sees(sup, driver) == [0, "0"]
            template = base_template(sup)
            assert await eventually(lambda: "0" in template.warm_spares)
        warm_pid = template.warm_spares["0"]
        # Its driver said 39488 MiB free once warm; NVML said 40000 before: it holds 512.
        assert (warm_pid, "0") in driver.calls("cuMemGetInfo_v2")
        (spare,) = warm.spares
        assert spare.held_mb == {0: 512} and spare.device_mb == {0: (39488, 81559)}
        assert warm.describe() == [
            f"GPU(s) 0: pid {warm_pid} of template {template.python}, holding GPU 0: 512 MiB"
        ]
        assert f"ready (pid {warm_pid}" in caplog.text and "GPU 0: 512 MiB" in caplog.text
        nvml.free[0] = 3700  # short, but not without the spare's own 512 MiB: kept
        assert await warm.check() == []
        nvml.free[0] = 3000  # short even without it: dropped, its process killed
        assert await warm.check() == ["0"]
        assert template.warm_spares == {} and warm.spares == []
        assert await eventually(lambda: process_gone(warm_pid))
        assert await sees(sup, driver) == [0, "0"]  # cold: memory is still short


async def test_an_instance_on_the_gpus_takes_the_warm_spare_or_drops_it(
    tmp_path: Path, fake_driver: Callable[..., FakeDriver], monkeypatch: pytest.MonkeyPatch
) -> None:
    driver = fake_driver()
    async with Supervisor(two_gpus(tmp_path, driver)) as sup:
        assert await sees(sup, driver) == [0, "0"]
        template = base_template(sup)
        assert await eventually(lambda: "0" in template.warm_spares)
        warm_pid = template.warm_spares["0"]
        # An instance created on GPU 0 (the first free) is forked into that spare.
        first = await sup.run(class_request("Probe", PROBE, "sees", str(driver.library)))
        assert first.success, first.error
        assert first.json_result == [1, "0"] and first.instance_info["pid"] == warm_pid
        assert sup.templates is not None and sup.templates.warm_spares.spares == []
        # A job on GPU 1 warms a spare for it; an instance started on a fresh interpreter (its
        # template cannot start) on GPU 1 drops it, though it cannot use it.
        assert await sees(sup, driver) == [0, "1"]
        assert await eventually(lambda: "1" in template.warm_spares)
        second_pid = template.warm_spares["1"]

        async def lost(*_: object) -> TemplateProcess:
            raise TemplateLost("its template failed to start")

        monkeypatch.setattr(sup.templates, "ready", lost)
        second = await sup.run(class_request("Probe", PROBE, "sees", str(driver.library)))
        assert second.success, second.error
        assert second.json_result == [0, "1"]
        assert template.warm_spares == {} and sup.templates.warm_spares.spares == []
        assert await eventually(lambda: process_gone(second_pid))
