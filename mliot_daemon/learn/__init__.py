"""mliot's learning core: a plain synchronous library (no asyncio, actors or web code).

Process-pool workers, ``mliot evaluate`` and notebooks call it; see README.md beside this file
for the API a caller uses. Modules:

- ``frontends``: per data type feature extraction (image, audio log-mel, sensor, vector).
- ``families``: the seven model families and their search spaces.
- ``features``: ``FeatureSet``, folds and the shared PCA.
- ``search``: the search's time budget (default, halving plan).
- ``fit``: one family on prepared features (PCA decision, budgeted search, validation, profile).
- ``ensemble``: policies and ensemble selection.
- ``fast``: the numpy fast predictor the server calls.
- ``gate``: the two-stage background gate.
- ``plan``: lazy-training order.
- ``pipeline``: ``prepare``/``fit_all``/``assemble``/``train`` and ``TrainedModel``.
- ``persist``: versioned model directories.
- ``portable``: a version as arrays and JSON (no pickles): what crosses to a peer.
- ``evaluate``: the ``mliot evaluate`` command.
- ``dataset``: training samples read straight from the daemon's SQLite file.
- ``jobs``: the trainer's process-pool entry points.
- ``decode``: big WebSocket messages decoded in a child process (the server's).
- ``shipping``: fits shipped to a Dask cluster and their results written back.

It may import numpy, scipy, scikit-learn, XGBoost, threadpoolctl and ``mliot_daemon``'s
``sample_codec`` (how the store keeps a sample); never ``actors/``, asyncio, aiohttp or aiomqtt.
"""
