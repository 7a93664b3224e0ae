"""Every message that crosses an actor boundary, grouped by the actor that receives it.

Commands are imperative, events past tense, queries are ``Query[R]``s (they carry the future
their ``R`` answer is set on). Messages are frozen and hold only immutable values (tuples,
frozensets), never arrays someone else keeps. ``Refs`` is every actor's ref, made before the
actors and handed to their constructors.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, TypeAlias

from mliot_daemon.runtime import ActorRef, Query
from mliot_daemon.settings import AppSpec, Settings

# -- sent to every actor ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class ApplyConfig:
    """A reload changed these keys; the actor takes what concerns it from ``settings``."""

    settings: Settings
    changed: frozenset[str]
    version: int


# -- monitor ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class MachineLoad:
    """This process and this machine, as the monitor last sampled them."""

    process_cpu_percent: float  # the daemon's main process (its event loop)
    process_rss_mib: float
    daemon_cpu_percent: float  # the daemon and its pool workers
    busy: float  # share of this daemon's serving capacity in use, 0-1 (see monitor)
    cpu_percent: float  # the whole host
    memory_percent: float
    cores: float  # usable by this daemon: the host's, or fewer under a cgroup CPU quota
    memory_mib: float
    loop_lag_p50_ms: float
    loop_lag_p99_ms: float
    mailboxes: tuple[tuple[str, int], ...]
    # this machine against the reference one (a short standard benchmark); 0.0 until measured
    speed: float


@dataclass(frozen=True, slots=True, kw_only=True)
class GetLoad(Query[MachineLoad]):
    """Query: the latest MachineLoad. The speed is measured once the daemon serves: asked
    before then, the answer waits for it, or (``wait_for_speed=False``, for views that only
    show it) comes at once with speed 0.0, "not measured yet"."""

    wait_for_speed: bool = True


MonitorMsg: TypeAlias = GetLoad


# -- trainer ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class AppsChanged:
    """The full set of apps now known (after start, PUT, DELETE or a reload)."""

    apps: tuple[AppSpec, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class SamplesAdded:
    """Labelled samples were committed for an app (telemetry: the trainer also polls)."""

    app: str
    n_samples: int


@dataclass(frozen=True, slots=True, kw_only=True)
class FeedbackAdded:
    """A correction (or confirmation) was committed; ``wrong`` if it disagreed."""

    app: str
    wrong: bool
    sample_id: int
    label: str
    predicted: str


@dataclass(frozen=True, slots=True, kw_only=True)
class RunFinished:
    """A training run of the trainer's own ended (sent by its child task)."""

    app: str
    n_samples: int
    error: str | None
    generation: int


@dataclass(frozen=True, slots=True, kw_only=True)
class LoadFailed:
    """The server could not load an app's current version (e.g. pickles of an older
    library): train again from the stored samples."""

    app: str
    version: int


@dataclass(frozen=True, slots=True, kw_only=True)
class GetTrainerStatus(Query[dict[str, Any]]):
    """Query: per-app training state."""


TrainerMsg: TypeAlias = (ApplyConfig | AppsChanged | SamplesAdded | FeedbackAdded | RunFinished
                         | LoadFailed | GetTrainerStatus)


# -- server -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class VersionPublished:
    """A new model version of an app is current: load it and serve it."""

    app: str
    version: int


@dataclass(frozen=True, slots=True, kw_only=True)
class TrainingEvent:
    """Training progress for WebSocket clients (telemetry)."""

    app: str
    kind: str  # model_fitted, version_published, retraining_started, retraining_finished
    data: tuple[tuple[str, Any], ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class GetServerStatus(Query[dict[str, Any]]):
    """Query: per-app status as the server sees it."""


# Requests from other channels (MQTT) go through the server, which owns the catalog and the
# served models: they are the serving core's operations, as HTTP calls them. Inputs are typed;
# the values inside (features, labels) are the JSON a device sent, handed over by their only
# holder. A failure comes back as a domain error (``mliot_daemon.errors``) on the reply.


@dataclass(frozen=True, slots=True, kw_only=True)
class SamplesIn:
    """Labelled samples to store: ``items`` are ``{"features", "label"}`` objects; a repeated
    ``batch_id`` is stored once."""

    items: tuple[Any, ...]
    batch_id: Any = None  # checked by the core: a string of 1 to 128 characters


@dataclass(frozen=True, slots=True, kw_only=True)
class FeedbackIn:
    """A correction (or confirmation) of a served prediction."""

    prediction_id: Any  # checked by the core: a string
    label: Any


@dataclass(frozen=True, slots=True, kw_only=True)
class IngestSamples(Query[dict[str, Any]]):
    """Query: check and commit samples; the answer is the acknowledgement
    (``{"accepted", "n_samples", "duplicate"}``), after the commit."""

    app: str
    samples: SamplesIn
    source: str  # http, ws, mqtt, file


@dataclass(frozen=True, slots=True, kw_only=True)
class Predict(Query[list[dict[str, Any]]]):
    """Query: predictions (the API's prediction objects) for these instances."""

    app: str
    instances: tuple[Any, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class SubmitFeedback(Query[dict[str, Any]]):
    """Query: commit a correction; the answer is the API's feedback acknowledgement."""

    app: str
    feedback: FeedbackIn


@dataclass(frozen=True, slots=True, kw_only=True)
class Correct(Query[dict[str, Any]]):
    """Query: a person's correction (``label``) or confirmation (None) of what they were
    shown: ``prediction_id``, else the app's open label query, else its latest prediction."""

    app: str
    label: str | None
    prediction_id: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class IngestReadings(Query[dict[str, Any]]):
    """Query: commit a stream app's readings (``{"t", "channel", "value"}`` items)."""

    app: str
    items: tuple[dict[str, Any], ...]
    source: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Happening(Query[dict[str, Any]]):
    """Query: "what is happening" on a stream app: a class opens a time-range label (closing
    the open one), ``none`` closes it."""

    app: str
    label: str


@dataclass(frozen=True, slots=True, kw_only=True)
class AppFacts:
    """What the scheduler needs of one app the server serves."""

    name: str
    version: int
    mode: str
    budget_ms: float
    latencies_ms: tuple[float, ...]  # trimmed to 1..n members, as measured on this machine
    min_members: int  # trimmed no further: fewer would fall below the app's min_accuracy
    measured_speed: float | None  # this machine's speed when it measured them
    predictions: int  # served so far (the scheduler derives the request rate)
    directory: str  # the version's folder, for shipping it to a peer
    model_id: str  # registry.model_id: "<lineage>:<manifest hash>"


@dataclass(frozen=True, slots=True, kw_only=True)
class GetServingFacts(Query[tuple[AppFacts, ...]]):
    """Query: an AppFacts per app with a loaded model."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Route:
    """Where an app's predictions go: this machine, a peer, or nowhere (refused)."""

    app: str
    serving: str | None  # a machine name
    members: int | None  # serve the best k members (None: all)
    reason: str
    predicted_ms: tuple[tuple[str, float], ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class Placed:
    """The scheduler's current plan, and the machines it was made for (for /v1/status)."""

    routes: tuple[Route, ...]
    machines: tuple[tuple[tuple[str, Any], ...], ...]  # each machine's status fields
    planned_at: float  # time.monotonic() when the plan's inputs were read


ServerMsg: TypeAlias = (ApplyConfig | VersionPublished | TrainingEvent | GetServerStatus
                        | IngestSamples | Predict | SubmitFeedback | Correct | GetServingFacts
                        | Placed | IngestReadings | Happening)


# -- peers --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class PeerProfile:
    """A peer daemon as last polled."""

    name: str
    url: str
    up: bool
    rtt_ms: float | None = None
    speed: float | None = None
    busy: float | None = None
    cores: float | None = None
    cpu_percent: float | None = None
    memory_percent: float | None = None
    hosted: tuple[tuple[str, str], ...] = ()  # ("origin/app", model id) held there
    error: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class GetPeers(Query[tuple[PeerProfile, ...]]):
    """Query: every configured peer's latest profile."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ShipModel(Query[None]):
    """Query: send one model version to a peer, signed; the reply comes once it is loaded
    there (or is the error)."""

    peer: str
    app: str
    version: int
    model_id: str
    directory: str


@dataclass(frozen=True, slots=True, kw_only=True)
class RemotePredict(Query[list[dict[str, Any]]]):
    """Query: predictions from the app's model on a peer (the HTTP API's prediction fields,
    without ids)."""

    peer: str
    app: str
    members: int | None
    probabilities: bool
    instances: tuple[Any, ...]  # samples (numpy arrays)


PeersMsg: TypeAlias = ApplyConfig | GetPeers | ShipModel | RemotePredict


# -- scheduler ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Replan:
    """Something placement depends on changed (a peer up or down, a model loaded)."""

    reason: str


SchedulerMsg: TypeAlias = ApplyConfig | Replan


# -- mqtt ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Predicted:
    """Telemetry: the latest prediction of an app, from any channel (Home Assistant state)."""

    app: str
    label: str
    prediction_id: str
    confidence: float
    margin: float
    at: float  # unix time


@dataclass(frozen=True, slots=True, kw_only=True)
class QueryChanged:
    """An app's open label query (its JSON), or None: none is open."""

    app: str
    query: dict[str, Any] | None


@dataclass(frozen=True, slots=True, kw_only=True)
class ActivityChanged:
    """A stream app's debounced activity changed: ``label`` since ``since`` (unix time)."""

    app: str
    label: str
    since: float


MqttMsg: TypeAlias = ApplyConfig | Predicted | QueryChanged | ActivityChanged


# -- the refs -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Refs:
    """Every actor's mailbox, typed by what it accepts; made once, before the actors."""

    monitor: ActorRef[MonitorMsg]
    trainer: ActorRef[TrainerMsg]
    scheduler: ActorRef[SchedulerMsg]
    peers: ActorRef[PeersMsg]
    mqtt: ActorRef[MqttMsg]
    server: ActorRef[ServerMsg]

    @classmethod
    def create(cls) -> Refs:
        # mailbox sizes: peers carries one message per forwarded prediction
        return cls(monitor=ActorRef("monitor", 64), trainer=ActorRef("trainer", 256),
                   scheduler=ActorRef("scheduler", 256), peers=ActorRef("peers", 1024),
                   mqtt=ActorRef("mqtt", 256), server=ActorRef("server", 256))

    def all(self) -> tuple[ActorRef[Any], ...]:
        return (self.monitor, self.trainer, self.scheduler, self.peers, self.mqtt, self.server)
