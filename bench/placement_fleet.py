"""The simulated fleet and workload of ``python -m bench placement``: the paper's Table-3
machines, their speeds and round trips, and the paper's three apps with their latencies,
budgets and request rates. The assumptions live here, each with its reasoning; the scenarios,
the simulation and the checks are ``bench/placement.py``'s.

The fleet. The daemon runs on the NUC (M2, ``local``); the Raspberry Pi (M1) is a peer on the
same LAN, and the three cloud VMs (M3-M5) are peers. The paper gives RTTs from the client, not
from the NUC. A star model converts them: rtt(client, X) = a_client + a_X, so
rtt(NUC, X) = rtt(client, X) + rtt(client, NUC) - 2 a_client. With a_client = half the
client-Pi RTT (1.5 ms), that is the client's RTT plus 11 ms. The triangle inequality bounds
it between |rtt(client, X) - rtt(client, NUC)| and their sum; the sensitivity runs use both
bounds. The client-NUC hop (14 ms) is paid by every request whichever machine serves it. The
latency budget does not count it (DESIGN: "time in mliot on the machine that serves it, plus
the round trip to a peer").

Speeds. ``speed`` is a single-thread factor against the reference machine. This machine's
factor is measured; each Table-3 machine gets an assumed ratio to this machine (see
``RATIO_BASIS``). The absolute factor cancels out of every prediction: latency_ref = measured x
s_here, and service on m = latency_ref / (ratio_m x s_here). Only the ratios matter.

Apps. For each of the paper's three apps, this repo's measured stand-in from table4: audio
(espeak digits, log-mel front end), sensors (seglearn watch) and MNIST. The best-effort app
serves the best-effort ensemble. Its k-member latency is that of its k highest-weighted
members (weights rise with validation accuracy, so the same order). The low-latency app serves
the low-latency ensemble. Measured: k = 1 (the top member alone) and k = n (the whole). Between
them, linear interpolation (the daemon splits the whole by the members' own latencies, which
table4 does not record). Request rates: one prediction per 0.96 s audio patch per microphone,
one per 1 s sensor window per board, one image per second per camera. Budgets come from the
paper's Table 4, plus "tight" budgets near the NUC's own service time to show trimming and
refusals.
"""

from __future__ import annotations

from typing import Any

from actors.placement import AppDemand, MachineView

LOCAL = "m2-nuc"
CLIENT_ACCESS_MS = 1.5  # a_client: half of the client-Pi RTT (3 ms), see the module docstring

# Single-thread speed of each Table-3 machine against THIS machine (a 2-vCPU KVM cloud VM,
# Intel Xeon family 6 model 207 = 5th-gen Xeon Scalable). Assumed, with the reasoning in
# RATIO_BASIS; the sensitivity runs halve and double them.
NUC_RATIO = 0.45
PI_RATIO = 0.15
CLOUD_RATIO = 1.0
RATIO_BASIS = {
    "m2-nuc": (
        "i5-5250U: Broadwell-U, 2 cores / 4 threads, 1.6-2.7 GHz (notebookcheck.com). A "
        "published single-thread score for the same Broadwell-U core at 3.1 GHz turbo: "
        "i5-5257U, Geekbench 6 single-core 901 (cputronic.com). Scaled to the 5250U's 2.7 GHz, "
        "about 785. No published score was found for this VM's CPU. A 5th-gen Xeon core at "
        "3-4 GHz turbo is assumed to score about 1750, hence 0.45. Vectorised kernels (BLAS, "
        "kernel SVMs, distances) gain more from AVX-512, so the true ratio for these models may "
        "be lower."),
    "m1-pi4": (
        "Raspberry Pi 4: Cortex-A72 at 1.5 GHz (magpi.raspberrypi.com). Clock 1.5 / 2.7 GHz "
        "= 0.56 of the NUC. Per clock, the A72 is assumed to do 0.6 of Broadwell's work, and "
        "128-bit NEON against 256-bit AVX2 in numeric code. About 1/3 of the NUC: 0.15."),
    "cloud": (
        "the paper does not name the VMs' CPUs. This machine is itself a 2-vCPU cloud VM (an "
        "M3-class machine), so every cloud vCPU gets its measured speed: ratio 1.0"),
}
SOURCES = [
    "https://www.notebookcheck.com/Intel-Core-i5-5250U-Notebook-Prozessor.127306.0.html "
    "(i5-5250U: 2 cores, Hyper-Threading, 1.6-2.7 GHz)",
    "https://cputronic.com/en/cpu/intel-core-i5-5257u (Broadwell-U i5-5257U, 3.1 GHz turbo: "
    "Geekbench 6 single-core 901)",
    "https://magpi.raspberrypi.com/articles/raspberry-pi-4-specs-benchmarks (Raspberry Pi 4: "
    "BCM2711, 4x Cortex-A72 @ 1.5 GHz)",
]

FLEET: list[dict[str, Any]] = [
    {"name": "m1-pi4", "table3": "M1", "hardware": "Raspberry Pi 4, 4x Cortex-A72 1.5 GHz",
     "cores": 4, "memory_gb": 4, "client_rtt_ms": 3.0, "ratio": PI_RATIO},
    {"name": "m2-nuc", "table3": "M2", "hardware": "Intel NUC, Core i5-5250U (2 cores / 4 "
     "threads; the paper's \"4x\")", "cores": 2, "memory_gb": 8, "client_rtt_ms": 14.0,
     "ratio": NUC_RATIO},
    {"name": "m3-vm2", "table3": "M3", "hardware": "cloud VM, 2 cores", "cores": 2,
     "memory_gb": 4, "client_rtt_ms": 128.0, "ratio": CLOUD_RATIO},
    {"name": "m4-vm8", "table3": "M4", "hardware": "cloud VM, 8 cores", "cores": 8,
     "memory_gb": 16, "client_rtt_ms": 64.0, "ratio": CLOUD_RATIO},
    {"name": "m5-vm16", "table3": "M5", "hardware": "cloud VM, 16 cores", "cores": 16,
     "memory_gb": 32, "client_rtt_ms": 84.0, "ratio": CLOUD_RATIO},
]

MODES = ("best_effort", "low_latency")
SHORT = {"best_effort": "be", "low_latency": "ll"}
APPS: list[dict[str, Any]] = [
    {"app": "audio", "paper": "microphone audio, 96x64 log-mel patches, 14 classes",
     "row": "audio_espeak", "stream_hz": 1 / 0.96, "stream": "microphone (one 0.96 s patch)",
     "budget": {"best_effort": 100.0, "low_latency": 60.0},
     "tight": {"best_effort": 2.0, "low_latency": 2.0},
     "budget_source": "Table 4, audio: best effort 0.10 s, low latency 0.06 s"},
    {"app": "sensors", "paper": "Mites multimodal sensors, 1 s windows, 16 classes",
     "row": "sensor_watch", "stream_hz": 1.0, "stream": "sensor board (one 1 s window)",
     "budget": {"best_effort": 90.0, "low_latency": 40.0},
     "tight": {"best_effort": 0.3, "low_latency": 0.25},
     "budget_source": "Table 4, multimodal sensors: best effort 0.09 s, low latency 0.04 s"},
    {"app": "mnist", "paper": "MNIST 28x28 images, 10 classes", "row": "mnist",
     "stream_hz": 1.0, "stream": "camera (one image a second, assumed)",
     "budget": {"best_effort": 100.0, "low_latency": 60.0},
     "tight": {"best_effort": 2.5, "low_latency": 0.5},
     "budget_source": "no MNIST latency in our summary of Table 4: the audio budgets reused"},
]
# The scaled-up workload: SITES copies of the six apps, each app serving STREAMS streams.
SITES = 24
STREAMS = {"audio": 24, "sensors": 60, "mnist": 12}

def rtt_from_local(client_rtt: float, local_client_rtt: float, model: str = "star") -> float:
    """Round trip from the local daemon to a peer, from the two client-measured RTTs."""
    if model == "low":
        return abs(client_rtt - local_client_rtt)
    if model == "high":
        return client_rtt + local_client_rtt
    return client_rtt + local_client_rtt - 2 * CLIENT_ACCESS_MS


def ladders(table4: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    """(app, mode) -> members in weight order and the latency (ms, this machine) of 1..n."""
    rows = {r["dataset"]: r for r in table4["rows"]}
    out = {}
    for spec in APPS:
        r = rows[spec["row"]]
        val = r["member_val_accuracy"]
        for mode, key in (("best_effort", "ensemble"), ("low_latency", "low_latency")):
            members = sorted(r[f"{key}_members"], key=lambda f: -val[f])
            whole = r[f"{key}_latency_ms"]
            top = members[0]
            if len(members) == 1:
                first, how = whole, "measured (one member)"
            elif top == r["best_member"]:
                first, how = r["best_member_latency_ms"], "k=1 and k=n measured"
            elif r["low_latency_members"] == [top]:
                first, how = r["low_latency_latency_ms"], "k=1 and k=n measured"
            else:  # the top member's own latency was not measured: an even split
                first, how = whole / len(members), "k=n measured, even split"
            n = len(members)
            lat = [first + (whole - first) * i / (n - 1) for i in range(n)] if n > 1 else [whole]
            out[(spec["app"], mode)] = {"members": members, "latency_ms": lat, "basis": how,
                                        "p99_whole_ms": r["latency_p99_ms"][
                                            "best_effort" if key == "ensemble" else key]}
    return out


def fleet_views(s_here: float, busy: dict[str, float], down: set[str],
                ratio_scale: dict[str, float] | None = None, rtt_model: str = "star"
                ) -> list[MachineView]:
    """The five machines as the rule sees them, with ``busy`` loads and ``down`` peers;
    ``ratio_scale`` and ``rtt_model`` are the sensitivity runs' other assumptions."""
    local_rtt = next(f["client_rtt_ms"] for f in FLEET if f["name"] == LOCAL)
    views = []
    for f in FLEET:
        scale = (ratio_scale or {}).get(f["name"], 1.0)
        views.append(MachineView(
            name=f["name"], local=f["name"] == LOCAL, up=f["name"] not in down,
            speed=f["ratio"] * scale * s_here, busy=busy.get(f["name"], 0.0),
            rtt_ms=0.0 if f["name"] == LOCAL else round(
                rtt_from_local(f["client_rtt_ms"], local_rtt, rtt_model), 3)))
    return views


def demands(lad: dict[tuple[str, str], dict[str, Any]], s_here: float, budgets: str,
            sites: int = 0) -> list[AppDemand]:
    """The six apps once (``sites`` = 0, one stream each), or ``sites`` copies of them."""
    out = []
    for spec in APPS:
        for mode in MODES:
            ref = tuple(v * s_here for v in lad[(spec["app"], mode)]["latency_ms"])
            budget = spec[budgets][mode]
            if not sites:
                out.append(AppDemand(f"{spec['app']}_{SHORT[mode]}", mode, budget, ref,
                                     rate_hz=spec["stream_hz"]))
                continue
            for s in range(sites):
                out.append(AppDemand(f"{spec['app']}_{SHORT[mode]}_s{s:02d}", mode, budget, ref,
                                     rate_hz=spec["stream_hz"] * STREAMS[spec["app"]]))
    return out


def machine_rows(views: list[MachineView], s_here: float) -> list[dict[str, Any]]:
    """The fleet as the result file reports it: each machine, its speed and why."""
    out = []
    for f, m in zip(FLEET, views, strict=True):
        key = f["name"] if f["name"] in RATIO_BASIS else "cloud"
        out.append({**{k: f[k] for k in ("name", "table3", "hardware", "cores", "memory_gb",
                                        "client_rtt_ms")},
                    "local": m.local, "rtt_ms": m.rtt_ms, "ratio_to_this_machine": f["ratio"],
                    "speed": round(m.speed, 4), "ratio_basis": RATIO_BASIS[key]})
    return out
