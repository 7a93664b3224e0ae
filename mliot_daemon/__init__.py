"""mliot: one daemon that owns the machine-learning lifecycle of IoT applications.

This package is the shared core and the composition root: ``daemon`` (the only importer of
``actors/``), ``cli`` (the ``mliot`` command; its client commands, ``client`` and
``commands``, speak to a daemon over HTTP and may use HTTP client libraries), ``runtime`` (the
actor base), ``messages`` (every message and the typed refs), ``settings`` and ``config``
(schema, parsing, reload), ``store``, ``registry``, ``errors``, ``metrics``, ``logs``,
``signals``, ``signing`` and ``sample_codec``; ``learn`` is the plain learning library. It may
import the standard library and the declared dependencies, never ``actors/`` (but ``daemon``).
"""

__version__ = "0.1.0"
