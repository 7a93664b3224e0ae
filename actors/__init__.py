"""The actors: one module or package per actor (``monitor``, ``trainer``, ``scheduler`` with its
rule ``placement``, ``peers``, ``mqtt``, ``server``), each owning its state and reached only
through its typed ref (``mliot_daemon.messages.Refs``).

An actor may import the shared core (``mliot_daemon``) and the learning library, never another
actor's code; only ``server`` (its HTTP layer and surfaces) and ``peers`` import aiohttp, only
``mqtt`` imports aiomqtt. ``tests/unit/test_imports.py`` holds these rules.
"""
