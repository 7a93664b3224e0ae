"""The trainer while its learning code loads (after /readyz): status is answered at once, and
the apps announced meanwhile are resumed once the code is in."""

from __future__ import annotations

import asyncio
from pathlib import Path

from actors.trainer import Trainer
from mliot_daemon.config import parse_settings
from mliot_daemon.messages import AppsChanged, GetTrainerStatus, Refs
from mliot_daemon.metrics import Metrics
from mliot_daemon.registry import Registry
from mliot_daemon.store import Store


def test_status_does_not_wait_for_the_learning_code(tmp_path: Path) -> None:
    settings = parse_settings({"daemon": {"data_dir": str(tmp_path)},
                               "training": {"workers": 1},
                               "apps": [{"name": "v", "data_type": "vector", "shape": [3]}]})

    async def scenario() -> None:
        refs = Refs.create()
        serving = asyncio.Event()  # the daemon sets it with the first /readyz
        store = Store(tmp_path / "mliot.db")
        trainer = Trainer(settings, store, Registry(tmp_path / "models"), refs, "m", Metrics(),
                          after=serving)
        task = asyncio.create_task(trainer.run())
        await trainer.started.wait()
        await refs.trainer.send(AppsChanged(apps=settings.apps))
        # not serving yet, so no learning code: still answered, without the app
        assert await refs.trainer.ask(lambda f: GetTrainerStatus(reply=f), 2.0) == {}
        assert not trainer.working.is_set()
        serving.set()
        await asyncio.wait_for(trainer.working.wait(), 120)
        status = await refs.trainer.ask(lambda f: GetTrainerStatus(reply=f), 5.0)
        assert list(status) == ["v"] and status["v"]["training"] is False
        trainer.request_stop()
        await task
        await store.close()

    asyncio.run(scenario())
