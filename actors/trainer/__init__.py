"""The trainer: lazy training, retraining on growth, adaptation to feedback.

It owns the fit backend (the local process pool, or the Dask client of the configured
scheduler), one training run per app, and the apps' drift detectors. Where to look:

- `actor.py`: the actor (mailbox, lifecycle) and when to train what;
- `pipeline.py`: how a run goes (quick version, prepare, reduce, fits side by side, assemble,
  publish);
- `backend.py`: the fit-backend interface; `pool.py`: the process pool and its fits;
  `cluster.py`: the Dask clients and a run's fits on a cluster;
- `adaptation.py`: feedback, drift, publish-if-not-worse (`drift.py`: the Page-Hinkley test);
- `state.py`: what the trainer knows of each app, shared by the above.

Imports: the shared core (`mliot_daemon.config`, `messages`, `runtime`, `store`, `registry`),
`mliot_daemon.learn` (the pool jobs), and `distributed` only when a Dask run connects (an
optional extra). Never aiohttp, aiomqtt or another actor's module: other actors are reached
through their refs.
"""

from actors.trainer.actor import Trainer

__all__ = ["Trainer"]
