"""The house rules on imports, read from the source: the learning library stays a plain
library, only the named modules speak HTTP or MQTT, actors reach each other only through
messages, and nothing imports in a cycle."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent
PACKAGES = ("mliot_daemon", "actors")

# Inside the daemon, aiohttp belongs to the server's HTTP layer and surfaces (never its serving
# core) and to the peers actor; the CLI's `mliot watch` is a client and may use it too.
AIOHTTP = {"actors.server.app", "actors.server.http", "actors.server.guard", "actors.server.v1",
           "actors.server.oip", "actors.server.peer_api", "actors.server.streams",
           "actors.server.dashboard", "actors.server.actor", "actors.server.stream_api",
           "actors.server.export", "actors.server.openapi", "actors.server.bounds",
           "actors.peers",
           "mliot_daemon.commands"}
# the CLI's client commands may be MQTT clients: `mliot demo --sensors` publishes as devices do
MQTT_CLIENTS = {"mliot_daemon.demo_home"}
SERVING_CORE = {"actors.server.core", "actors.server.routing", "actors.server.serving",
                "actors.server.catalog", "actors.server.payloads", "actors.server.views",
                "actors.server.hosting", "actors.server.oip_codec", "actors.server.tables",
                "actors.server.readings", "actors.server.ranges", "actors.server.pins"}


def modules() -> dict[str, Path]:
    out = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            out[name] = path
    return out


def imports(path: Path, top_level_only: bool = False) -> set[str]:
    """Every module ``path`` imports (with ``top_level_only``, only those that run when it is
    imported: not inside functions)."""
    tree = ast.parse(path.read_text())
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    out: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            submodules = {f"{node.module}.{a.name}" for a in node.names} & set(MODULES)
            out |= submodules  # `from actors.server import views` imports the module views
            if len(submodules) < len(node.names):  # names from the module (or __init__) itself
                out.add(node.module)
    return out


def uses(found: set[str], library: str) -> bool:
    """Whether any import in ``found`` is ``library`` or one of its modules."""
    return any(m == library or m.startswith(f"{library}.") for m in found)


MODULES = modules()


def test_learn_is_a_plain_library() -> None:
    for name, path in MODULES.items():
        if name.startswith("mliot_daemon.learn"):
            found = imports(path)
            for banned in ("actors", "asyncio", "aiohttp", "aiomqtt", "uvloop"):
                assert not uses(found, banned), f"{name} imports {banned}"


def test_only_the_named_modules_speak_http_or_mqtt() -> None:
    for name, path in MODULES.items():
        found = imports(path)
        if uses(found, "aiohttp"):
            assert name in AIOHTTP, f"{name} imports aiohttp"
        if uses(found, "aiomqtt"):
            assert name.startswith("actors.mqtt") or name in MQTT_CLIENTS, \
                f"{name} imports aiomqtt"
    assert SERVING_CORE.isdisjoint(AIOHTTP)
    assert set(MODULES) >= SERVING_CORE  # the rule names modules that exist


def test_actors_reach_each_other_only_through_messages() -> None:
    def package(name: str) -> str:  # actors.server.core -> actors.server
        return ".".join(name.split(".")[:2])

    for name, path in MODULES.items():
        found = {m for m in imports(path) if m.startswith("actors.")}
        if name.startswith("actors."):
            foreign = {m for m in found if package(m) != package(name)}
            if name == "actors.scheduler":  # the placement rule is the scheduler's own module
                foreign -= {"actors.placement"}
            assert not foreign, f"{name} imports another actor's code: {sorted(foreign)}"
        elif name != "mliot_daemon.daemon":  # the composition root builds the actors
            assert not found, f"{name} (shared core) imports {sorted(found)}"


def test_no_import_cycles() -> None:
    graph = {name: {m for m in imports(path, top_level_only=True) if m in MODULES} - {name}
             for name, path in MODULES.items()}
    done: set[str] = set()

    def visit(name: str, stack: list[str]) -> None:
        if name in stack:
            raise AssertionError(f"import cycle: {' -> '.join([*stack[stack.index(name):], name])}")
        if name in done:
            return
        for dep in sorted(graph[name]):
            visit(dep, [*stack, name])
        done.add(name)

    for name in sorted(graph):
        visit(name, [])


def test_the_daemon_imports_no_learning_library() -> None:
    """Issue 20: importing the daemon (every actor) pulls in neither sklearn, scipy nor
    xgboost, seconds that a restart would spend before serving; the trainer and the monitor
    import them in a thread once the daemon serves. A fresh interpreter, as ``mliot run``."""
    code = ("import sys, mliot_daemon.daemon; "
            "print(sorted({'sklearn', 'scipy', 'xgboost'} & set(sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=ROOT)
    assert out.stdout.strip() == "[]"
