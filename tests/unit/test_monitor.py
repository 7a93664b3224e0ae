"""The monitor's load answers before and after it has measured the machine's speed."""

from __future__ import annotations

import asyncio

from actors.monitor import Monitor
from mliot_daemon.messages import GetLoad, Refs
from mliot_daemon.metrics import Metrics


def test_a_view_is_answered_before_the_speed_and_the_scheduler_waits_for_it() -> None:
    async def scenario() -> None:
        refs = Refs.create()
        serving = asyncio.Event()  # the speed is measured only once this is set
        monitor = Monitor(Metrics(), refs, sample_every_s=0.05, after=serving)
        task = asyncio.create_task(monitor.run())
        await monitor.started.wait()
        shown = await refs.monitor.ask(lambda f: GetLoad(reply=f, wait_for_speed=False), 2.0)
        assert shown.speed == 0.0 and shown.cores > 0  # "not measured yet", at once
        waiting = asyncio.ensure_future(refs.monitor.ask(lambda f: GetLoad(reply=f), 60.0))
        await asyncio.sleep(0.3)
        assert not waiting.done()  # no made-up speed for placement
        serving.set()
        assert (await waiting).speed > 0
        shown = await refs.monitor.ask(lambda f: GetLoad(reply=f, wait_for_speed=False), 2.0)
        assert shown.speed > 0
        monitor.request_stop()
        await task

    asyncio.run(scenario())


def test_descendants_are_the_process_tree_without_scanning_every_process() -> None:
    import subprocess
    import time

    import psutil

    from actors.monitor import descendants

    tree = subprocess.Popen(["bash", "-c", "sleep 30 & sleep 30 & wait"])  # a child, 2 grand
    try:
        root = psutil.Process(tree.pid)  # not this process: other tests leave children here
        deadline = time.monotonic() + 10
        while len(root.children(recursive=True)) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        expected = {c.pid for c in root.children(recursive=True)}
        assert len(expected) == 2
        assert set(descendants(root)) == expected
        assert tree.pid in descendants(psutil.Process())
    finally:
        for c in psutil.Process(tree.pid).children():
            c.kill()
        tree.kill()
        tree.wait(10)
