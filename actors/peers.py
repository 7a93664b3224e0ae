"""The peers actor: the other mliot daemons this one may place serving on (aiohttp client).

With the server, the only module that speaks HTTP. For every ``[[peers]]`` entry it polls
``GET /v1/peer/profile`` once a second (speed, busy share, cores, memory, the models it holds;
the round trip of that call is the RTT), and it carries the scheduler's and the server's
requests to a peer: signed model versions (portable models: arrays and JSON, never pickles)
and batches of predictions.

A peer is down after ``DOWN_AFTER_S`` without a successful poll, or at once when a forwarded
request cannot reach it (refused, reset, timed out); one good poll brings it back. Every
change of state asks the scheduler to plan again. Calls carry the peer's secret (``[[peers]]
secret``, that daemon's ``daemon.peer_secret``), which is also the key its model archives are
signed with. Devices never hold it: they hold ``daemon.token``, which opens no peer endpoint.
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from collections import deque
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import IO, Any, assert_never
from urllib.parse import urlsplit

import aiohttp
import orjson
import structlog

from mliot_daemon import signing
from mliot_daemon.learn.persist import load_model
from mliot_daemon.learn.portable import PORTABLE_DIR, export_portable
from mliot_daemon.messages import (
    ApplyConfig,
    GetPeers,
    PeerProfile,
    PeersMsg,
    Refs,
    RemotePredict,
    Replan,
    ShipModel,
)
from mliot_daemon.runtime import Actor
from mliot_daemon.settings import PeerSettings, Settings

log = structlog.get_logger("mliot.peers")

POLL_S = 1.0
POLL_TIMEOUT_S = 2.0
DOWN_AFTER_S = 3.0  # so a dead peer is marked down well within the promised 10 s
PREDICT_TIMEOUT_S = 2.0
SHIP_TIMEOUT_S = 300.0
RTT_WINDOW = 5  # the RTT is the smallest of the last few polls: the network, not the peer's load
BATCH_BYTES = 4 * 2**20  # forwarded batches stay well under a peer's default max_body_mb
JSON_BYTES_PER_VALUE = 12  # a float32 as JSON text, roughly


class PeerError(Exception):
    """A peer could not answer; ``unreachable`` when the request did not get through."""

    def __init__(self, message: str, unreachable: bool) -> None:
        super().__init__(message)
        self.unreachable = unreachable


@dataclass
class _Peer:
    settings: PeerSettings
    profile: PeerProfile
    last_ok: float = 0.0
    rtts: deque[float] = field(default_factory=lambda: deque(maxlen=RTT_WINDOW))
    # predictions waiting for the next batch, per (app, members, probabilities)
    batches: dict[tuple[str, int | None, bool], list[RemotePredict]] = field(
        default_factory=dict)


class Peers(Actor[PeersMsg]):
    """Profiles of the peer daemons, and the client side of the peer API."""

    name = "peers"
    config_keys = frozenset({"peers", "daemon.name"})

    def __init__(self, settings: Settings, refs: Refs) -> None:
        super().__init__(refs.peers)
        self._settings = settings
        self._scheduler = refs.scheduler
        self._peers: dict[str, _Peer] = {}
        self._session: aiohttp.ClientSession | None = None
        self._tasks: set[asyncio.Task[Any]] = set()

    async def on_start(self) -> None:
        self._session = aiohttp.ClientSession(json_serialize=lambda o: orjson.dumps(
            o, option=orjson.OPT_SERIALIZE_NUMPY).decode())
        self._configure(self._settings.peers)

    async def on_stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._session is not None:
            await self._session.close()
            self._session = None

    def background(self) -> list:
        return [self._poll_forever()]

    async def handle(self, msg: PeersMsg) -> None:
        match msg:
            case ApplyConfig(settings=settings):
                self._settings = settings
                self._configure(settings.peers)
                self._replan("peers reconfigured")
            case GetPeers(reply=reply):
                if not reply.done():
                    reply.set_result(tuple(p.profile for p in self._peers.values()))
            case ShipModel():
                self._spawn(self._ship(msg))
            case RemotePredict(peer=name):
                peer = self._peers.get(name)
                if peer is None:
                    _fail(msg, PeerError(f"no peer named {name!r}", unreachable=True))
                    return
                key = (msg.app, msg.members, msg.probabilities)
                queue = peer.batches.setdefault(key, [])
                queue.append(msg)
                if len(queue) == 1:  # the first of a batch: send it on the next loop turn
                    asyncio.get_running_loop().call_soon(self._flush, peer, key)
            case _:
                assert_never(msg)

    # -- membership and polling -----------------------------------------------------------------

    def _configure(self, entries: tuple[PeerSettings, ...]) -> None:
        """Add and remove peers (a reload); an unchanged entry keeps its state."""
        old = self._peers
        self._peers = {}
        for entry in entries:
            kept = old.get(entry.name)
            if kept is not None and kept.settings == entry:
                self._peers[entry.name] = kept
            else:
                self._peers[entry.name] = _Peer(entry, PeerProfile(
                    name=entry.name, url=entry.url, up=False, error="not polled yet"))
        for gone in set(old) - set(self._peers):
            log.info("peer_removed", peer=gone)
        for entry in entries:
            host = urlsplit(entry.url).hostname or ""
            if entry.url.startswith("http://") and host not in ("127.0.0.1", "::1", "localhost"):
                # The secret is also the key model archives are signed with.
                log.warning("peer_secret_in_clear", peer=entry.name, url=entry.url,
                            advice="use https:// (a TLS proxy in front of the peer) or a "
                                   "trusted network")

    async def _poll_forever(self) -> None:
        while True:
            peers = list(self._peers.values())
            await asyncio.gather(*(self._poll(p) for p in peers))
            await asyncio.sleep(POLL_S)

    async def _poll(self, peer: _Peer) -> None:
        assert self._session is not None
        url = peer.settings.url.rstrip("/") + "/v1/peer/profile"
        start = time.perf_counter()
        try:
            async with self._session.get(url, headers=_auth(peer.settings),
                                         timeout=aiohttp.ClientTimeout(POLL_TIMEOUT_S)) as resp:
                body = await resp.json(loads=orjson.loads) if resp.status == 200 else None
                if resp.status != 200:
                    raise PeerError(f"HTTP {resp.status}{_hint(resp.status)}", False)
        except (aiohttp.ClientError, TimeoutError, ValueError, PeerError) as exc:
            error = str(exc) or type(exc).__name__
            if self._peers.get(peer.settings.name) is not peer:
                return  # removed by a reload meanwhile
            if peer.profile.up and time.monotonic() - peer.last_ok < DOWN_AFTER_S:
                return  # one missed poll is not yet a dead peer
            if peer.profile.up or peer.profile.error != error:
                self._mark_down(peer, error)
            return
        peer.rtts.append((time.perf_counter() - start) * 1000)
        peer.last_ok = time.monotonic()
        was_up = peer.profile.up
        try:
            peer.profile = PeerProfile(
                name=peer.settings.name, url=peer.settings.url, up=True,
                rtt_ms=round(min(peer.rtts), 3), speed=float(body["speed"]),
                busy=float(body["busy"]), cores=float(body["cores"]),
                cpu_percent=float(body["cpu_percent"]),
                memory_percent=float(body["memory_percent"]),
                hosted=tuple((str(k), str(v)) for k, v in dict(body["hosted"]).items()))
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            self._mark_down(peer, f"bad profile: {exc!r}")
            return
        if not was_up:
            log.info("peer_up", peer=peer.settings.name, rtt_ms=peer.profile.rtt_ms,
                     speed=peer.profile.speed)
            self._replan(f"peer {peer.settings.name} up")

    def _mark_down(self, peer: _Peer, error: str) -> None:
        peer.profile = replace(peer.profile, up=False, error=error)
        log.warning("peer_down", peer=peer.settings.name, error=error)
        self._replan(f"peer {peer.settings.name} down: {error}")

    def _replan(self, reason: str) -> None:
        self._scheduler.offer(Replan(reason=reason))

    # -- requests to peers ----------------------------------------------------------------------

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _flush(self, peer: _Peer, key: tuple[str, int | None, bool]) -> None:
        batch = [m for m in peer.batches.pop(key, []) if not m.reply.done()]  # askers left
        chunk: list[RemotePredict] = []
        size = 0
        for m in batch:  # split so that no request exceeds a peer's body limit
            n = sum(x.size for x in m.instances) * JSON_BYTES_PER_VALUE
            if chunk and size + n > BATCH_BYTES:
                self._spawn(self._predict(peer, key, chunk))
                chunk, size = [], 0
            chunk.append(m)
            size += n
        if chunk:
            self._spawn(self._predict(peer, key, chunk))

    async def _predict(self, peer: _Peer, key: tuple[str, int | None, bool],
                       batch: list[RemotePredict]) -> None:
        app, members, probabilities = key
        instances = [x for m in batch for x in m.instances]
        try:
            body = await self._call(
                peer, "POST", f"/v1/peer/models/{self._origin}/{app}/predict",
                PREDICT_TIMEOUT_S, json={"instances": instances, "members": members,
                                         "probabilities": probabilities})
            try:
                predictions = list(body["predictions"])
            except (KeyError, TypeError) as exc:
                raise PeerError(f"{peer.settings.name}: a malformed answer", False) from exc
            if len(predictions) != len(instances):
                raise PeerError("the peer answered a different number of predictions", False)
        except BaseException as exc:  # cancelled too: no asker may wait for its timeout
            for m in batch:
                _fail(m, exc if isinstance(exc, Exception) else PeerError("stopped", False))
            if not isinstance(exc, Exception):
                raise
            return
        i = 0
        for m in batch:
            part, i = predictions[i:i + len(m.instances)], i + len(m.instances)
            if not m.reply.done():
                m.reply.set_result(part)

    async def _ship(self, msg: ShipModel) -> None:
        peer = self._peers.get(msg.peer)
        try:
            if peer is None:
                raise PeerError(f"no peer named {msg.peer!r}", unreachable=True)
            archive, size = await asyncio.to_thread(
                portable_archive, Path(msg.directory), self._settings.daemon.data_path)
            with archive:
                signature = await asyncio.to_thread(
                    signing.sign_file, peer.settings.secret, self._origin, msg.app,
                    msg.version, msg.model_id, archive)
                await self._call(peer, "PUT",
                                 f"/v1/peer/models/{self._origin}/{msg.app}/{msg.version}",
                                 SHIP_TIMEOUT_S, data=archive,
                                 headers={signing.HEADER: signature,
                                          signing.MODEL_HEADER: msg.model_id,
                                          "Content-Length": str(size),
                                          "Content-Type": "application/x-tar"})
            log.info("model_shipped", peer=msg.peer, app=msg.app, version=msg.version,
                     bytes=size)
        except BaseException as exc:  # any failure, cancellation too, answers the asker
            _fail(msg, exc if isinstance(exc, Exception) else PeerError("stopped", False))
            if not isinstance(exc, Exception):
                raise
            return
        if not msg.reply.done():
            msg.reply.set_result(None)

    @property
    def _origin(self) -> str:
        return self._settings.daemon.machine_name

    async def _call(self, peer: _Peer, method: str, path: str, timeout: float,
                    headers: dict[str, str] | None = None, **kw: Any) -> Any:
        """One request to a peer; its JSON answer, or PeerError. A request that does not get
        through marks the peer down at once."""
        assert self._session is not None
        url = peer.settings.url.rstrip("/") + path
        try:
            async with self._session.request(
                    method, url, headers={**_auth(peer.settings), **(headers or {})},
                    timeout=aiohttp.ClientTimeout(timeout), **kw) as resp:
                body = await resp.read()
                status = resp.status
        except (aiohttp.ClientError, TimeoutError) as exc:
            error = str(exc) or type(exc).__name__
            if peer.profile.up and self._peers.get(peer.settings.name) is peer:
                self._mark_down(peer, error)
            raise PeerError(f"{peer.settings.name}: {error}", unreachable=True) from exc
        try:
            data = orjson.loads(body) if body else None
        except orjson.JSONDecodeError:
            data = None
        if status >= 400:
            message = data.get("error") if isinstance(data, dict) else body[:200].decode(
                errors="replace")
            raise PeerError(f"{peer.settings.name}: HTTP {status}{_hint(status)}: {message}",
                            unreachable=False)
        return data


def portable_archive(version: Path, scratch: Path) -> tuple[IO[bytes], int]:
    """A version folder as a tar of its portable model (``learn.portable``: arrays and JSON),
    and its size. The pickles of the folder never leave this machine: a peer must not have to
    trust them. Blocking (may load the version): run it in a thread."""
    saved = version / PORTABLE_DIR
    if (saved / "portable.json").is_file():  # written with the version: sent as it is
        return signing.pack(saved, scratch)
    with tempfile.TemporaryDirectory(dir=scratch, prefix=".portable-") as tmp:  # older versions
        folder = export_portable(load_model(version), Path(tmp) / "model")
        return signing.pack(folder, scratch)  # an anonymous file: outlives the folder


def _auth(peer: PeerSettings) -> dict[str, str]:
    return {"Authorization": f"Bearer {peer.secret}"} if peer.secret else {}


def _hint(status: int) -> str:
    if status in (401, 403):
        return " (the peer refused our secret: [[peers]] secret must be its daemon.peer_secret)"
    return ""


def _fail(msg: Any, exc: BaseException) -> None:
    if not msg.reply.done():
        msg.reply.set_exception(exc)
