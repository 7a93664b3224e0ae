"""Where each app is served: the scheduler's decision rule, as plain functions.

A prediction's latency on machine m is modelled as

    service = ensemble latency at reference speed / speed_m
    predicted = service / (1 - u_m) + rtt_m

where ``u_m`` is the share of m's serving capacity already in use (its measured busy fraction
plus what the apps placed there by this plan add: request rate x service time). The factor
``1 / (1 - u)`` is the mean response time of a single-server queue (M/M/1): a machine at 50 %
answers in twice its idle latency, at 90 % in ten times.

An app goes where its budget holds. ``best_effort`` keeps the most members first (the whole
ensemble on a peer beats a trimmed one here) and then prefers this machine (no network in the
way), then where it is now, then the fastest; ``low_latency`` takes the fastest. Both stay
where they are unless the move gains more than 10 % (no flapping on noisy measurements).
An ensemble that fits nowhere whole is trimmed to its best-weighted members, but never below
the fewest that keep the app's ``min_accuracy`` on validation data (``min_members``).
Admission control: a machine takes an app only if every app already on it still meets its
budget with the added load. When nothing holds, an app not yet placed is refused with the
numbers that say why; one already placed stays (or fails over to this machine when its
machine is gone) rather than be dropped because load rose.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

MAX_UTILISATION = 0.9  # beyond this the queueing estimate is meaningless: treat as full
STAY_MARGIN = 1.1  # low_latency: keep the current machine unless another is >10 % faster


@dataclass(frozen=True, slots=True)
class MachineView:
    """A machine as the scheduler sees it."""

    name: str
    local: bool
    up: bool
    speed: float  # relative to the reference machine (1.0)
    busy: float  # share of its serving capacity in use, 0-1
    rtt_ms: float = 0.0


@dataclass(frozen=True, slots=True)
class AppDemand:
    """What one app asks of a machine.

    ``latency_ref_ms[k-1]`` is the latency of the ensemble trimmed to its k best members, at
    reference speed (measured latency x the speed of the machine that measured it).
    """

    name: str
    mode: str  # best_effort | low_latency
    budget_ms: float
    latency_ref_ms: tuple[float, ...]
    rate_hz: float = 0.0
    current: str | None = None
    exclude: frozenset[str] = frozenset()  # machines it may not use now (no model there yet)
    min_members: int = 1  # trimmed no further: fewer would miss the app's min_accuracy

    @property
    def n_members(self) -> int:
        return len(self.latency_ref_ms)

    @property
    def fewest(self) -> int:
        """The fewest members it may be served with."""
        return min(max(self.min_members, 1), self.n_members)


@dataclass(frozen=True, slots=True)
class Decision:
    """Where an app is served (None: refused), with how many members, and why."""

    app: str
    serving: str | None
    members: int | None
    reason: str
    predicted_ms: dict[str, float] = field(default_factory=dict)  # whole ensemble, per machine


def predicted_ms(app: AppDemand, k: int, m: MachineView, busy: float) -> float:
    """The modelled latency of ``app`` trimmed to ``k`` members on ``m`` at utilisation ``busy``."""
    if busy >= MAX_UTILISATION:
        return float("inf")
    return app.latency_ref_ms[k - 1] / m.speed / (1.0 - busy) + m.rtt_ms


def plan(apps: Iterable[AppDemand], machines: Sequence[MachineView]) -> dict[str, Decision]:
    """Place every app; the tightest budgets are placed first."""
    up = [m for m in machines if m.up and m.speed > 0]
    busy = {m.name: min(max(m.busy, 0.0), 1.0) for m in up}
    placed: dict[str, list[tuple[AppDemand, int]]] = {m.name: [] for m in up}  # with members
    out: dict[str, Decision] = {}
    for app in sorted(apps, key=lambda a: (a.budget_ms, a.name)):
        whole = {m.name: round(predicted_ms(app, app.n_members, m, busy[m.name]), 3) for m in up}
        usable = [m for m in up if m.name not in app.exclude]
        decision = _choose(app, usable, busy, placed, whole)
        out[app.name] = decision
        if decision.serving is not None:
            m = next(x for x in up if x.name == decision.serving)
            k = decision.members or app.n_members
            busy[m.name] += _added_load(app, k, m)
            placed[m.name].append((app, k))
    return out


def _added_load(app: AppDemand, k: int, m: MachineView) -> float:
    """Utilisation ``app`` adds to ``m``; none where it runs already (it is in ``m.busy``)."""
    if app.current == m.name:
        return 0.0
    return app.rate_hz * app.latency_ref_ms[k - 1] / m.speed / 1000.0


def _fits(app: AppDemand, k: int, m: MachineView, busy: dict[str, float],
          placed: dict[str, list[tuple[AppDemand, int]]]) -> tuple[float, bool, str | None]:
    """(predicted latency, whether ``app`` with ``k`` members may go on ``m``, and the reason
    when admission control says no)."""
    after = busy[m.name] + _added_load(app, k, m)
    mine = predicted_ms(app, k, m, after)
    if mine > app.budget_ms:
        return mine, False, None
    for other, members in placed[m.name]:
        theirs = predicted_ms(other, members, m, after)
        if theirs > other.budget_ms:
            return mine, False, (f"{m.name} is full: {other.name} would take {theirs:.3g} ms "
                                 f"(budget {other.budget_ms:g} ms)")
    return mine, True, None


def _choose(app: AppDemand, up: list[MachineView], busy: dict[str, float],
            placed: dict[str, list[tuple[AppDemand, int]]], whole: dict[str, float]
            ) -> Decision:
    if not up:
        return Decision(app.name, None, None, "no machine is up", whole)
    if not app.latency_ref_ms:
        return Decision(app.name, None, None, "no model yet", whole)
    full: list[str] = []
    for k in range(app.n_members, app.fewest - 1, -1):  # the whole ensemble, then trimmed
        ok: list[tuple[float, MachineView]] = []
        for m in up:
            ms, fits, why = _fits(app, k, m, busy, placed)
            if fits:
                ok.append((ms, m))
            elif why:
                full.append(why)
        if ok:
            ms, m = _pick(app, ok)
            trimmed = f", trimmed to {k} of {app.n_members} members" if k < app.n_members else ""
            reason = (f"{'local' if m.local else 'peer'} {m.name}: {ms:.3g} ms predicted, "
                      f"budget {app.budget_ms:g} ms{trimmed}")
            return Decision(app.name, m.name, k, reason, whole)

    if app.current is not None:
        return _keep(app, up, whole, full)

    def with_own_load(m: MachineView) -> float:
        return predicted_ms(app, app.fewest, m, busy[m.name] + _added_load(app, app.fewest, m))

    best = min(up, key=with_own_load)
    fastest = with_own_load(best)
    if fastest == float("inf"):
        reason = (f"no machine meets the {app.budget_ms:g} ms budget: this app's load would "
                  f"push every machine that is up past {MAX_UTILISATION:.0%} busy")
    else:
        reason = (f"no machine meets the {app.budget_ms:g} ms budget: the fastest is "
                  f"{fastest:.3g} ms on {best.name} with {app.fewest} of {app.n_members} "
                  "members" + (" (fewer would miss its min_accuracy)" if app.fewest > 1 else ""))
    if full:
        reason += "; " + full[0]
    return Decision(app.name, None, None, reason, whole)


def _keep(app: AppDemand, up: list[MachineView], whole: dict[str, float], full: list[str]
          ) -> Decision:
    """An app already placed is not refused because load rose: it stays where it is (or,
    when that machine is gone, comes here), with as many members as fit the budget there
    when idle. Refusal is for apps no machine could take (the paper's admission control
    stops *more* work; it does not drop what runs)."""
    m = next((x for x in up if x.name == app.current), None) \
        or next((x for x in up if x.local), None) or up[0]
    k = max([j for j in range(app.fewest, app.n_members + 1)
             if predicted_ms(app, j, m, 0.0) <= app.budget_ms] or [app.fewest])
    reason = (f"no machine meets the {app.budget_ms:g} ms budget under the present load "
              f"({whole.get(m.name, float('inf')):.3g} ms predicted on {m.name}); kept on "
              f"{m.name} with {k} of {app.n_members} members rather than refused")
    if full:
        reason += "; " + full[0]
    return Decision(app.name, m.name, k, reason, whole)


def _pick(app: AppDemand, ok: list[tuple[float, MachineView]]) -> tuple[float, MachineView]:
    fastest = min(ok, key=lambda t: (t[0], t[1].name))
    current = next((t for t in ok if t[1].name == app.current), None)
    if app.mode == "low_latency":
        if current is not None and current[0] <= fastest[0] * STAY_MARGIN:
            return current
        return fastest
    local = next((t for t in ok if t[1].local), None)
    if current is not None and not current[1].local and local is not None \
            and local[0] * STAY_MARGIN > app.budget_ms:
        return current  # back home only with a margin: noise must not move it to and fro
    return local or current or fastest
