"""Issue 20: faults — kill -9, a broker restart, a full disk, a stopped peer."""

from __future__ import annotations

from typing import Any

from bench.report.common import header, paragraph, table_head, verdict

INTRO = """Real processes throughout. (1) The daemon is killed with SIGKILL at random moments
(every fifth during its start) while a client process ingests samples over HTTP (retried
with their `batch_id`) and WebSocket, corrects predictions (feedback, retried) and posts a
stream app's readings (retried with their `batch_id`), and the daemon retrains and publishes;
after a last start the SQLite file is read back. (2) mosquitto is stopped (SIGTERM, and
SIGKILL) and restarted while a paho client publishes QoS-1 samples. (3) The data folder is
a small tmpfs, filled up while a training run saves versions and then during ingest, and
emptied again. (4) The peer
serving an app is SIGSTOPped while a client predicts through the app's own daemon, then
SIGCONTed."""


def _left(k: dict[str, Any]) -> str:
    """Processes a kill left behind (pool workers, forkserver)."""
    if "late_after_kill" not in k:  # the first runs counted those alive 3 s after, only
        return (f"Processes (pool workers, forkserver) still alive 3 s after a kill: "
                f"{k['orphans_after_kill']} (the harness killed them then).")
    return (f"Processes (pool workers, forkserver) still alive 3 s after a kill: "
            f"{k['late_after_kill']}; still alive 15 s after (killed then): "
            f"{k['orphans_after_kill']}.")


def _kill(k: dict[str, Any]) -> list[str]:
    if "error" in k:
        return [f"Part 1 failed: `{k['error']}`.", ""]
    seen = k["versions_seen"]
    versions = (f"version {seen[0]} served at every kill" if len(seen) == 1 else
                f"versions {seen[0]} to {seen[-1]} served at kills" if seen else "no version")
    out = [f"**1. kill -9**: {k['kills']} kills ({k['kills_during_start']} during a start, "
           f"{k['kills_in_training']} while the vector app was training; {versions}). "
           f"Restart to the first served "
           f"prediction: p50 {k['first_served_p50_s']} s, max {k['first_served_max_s']} s. "
           f"Store after the run: `{k['integrity_check']}`. " + _left(k), ""]
    out += table_head("channel", "sent", "acknowledged", "stored", "lost", "duplicated",
                      "stored, not acknowledged", "refused")
    for name, c in k["counts"].items():
        out.append(f"| {name} | {c['sent']} | {c['acknowledged']} | {c['stored']} | "
                   f"{c['lost']} | {c['duplicated']} | {c['stored_not_acknowledged']} | "
                   f"{c['rejected']} |")
    out += ["", paragraph(
        f"Predictions answered whose record had not reached the disk at the kill (their "
        f"correction got 404, nothing acknowledged): {k['predictions_unrecorded']}. A stored "
        "item that was not acknowledged is one whose commit finished but whose answer the "
        "kill cut off; the client's retry with the same `batch_id` (or prediction id) "
        "stores it once."), ""]
    return out


def _mqtt(m: dict[str, Any] | None) -> list[str]:
    if m is None:
        return []
    if "error" in m or "skipped" in m:
        return [f"**2. Broker restarts**: {m.get('error') or m.get('skipped')}.", ""]
    sig = m.get("signal", "SIGKILL")  # the first runs had SIGKILL only
    why = "" if not m["lost"] or sig != "SIGKILL" else (
        " A SIGKILLed mosquitto loses what it acknowledged after its last save (it saves "
        "after sending the PUBACK), which mliot never receives; with SIGTERM it saves all.")
    return [paragraph(
        f"**2. Broker restarts**: {m['restarts']} {sig}s of mosquitto (down "
        f"{min(m['down_s'])}–{max(m['down_s'])} s each) during QoS-1 ingest at "
        f"{m['rate_hz']:g} msg/s: {m['published']} published, {m['broker_acknowledged']} "
        f"acknowledged by the broker, {m['stored']} stored, {m['lost']} lost, "
        f"{m['duplicated']} duplicated; the daemon reconnected {m['daemon_reconnects']} "
        f"times (a restart during its back-off is one reconnection).{why}"), ""]


def _disk(d: dict[str, Any]) -> list[str]:
    if "error" in d or "skipped" in d:
        return [f"**3. Disk full**: {d.get('error') or d.get('skipped')}.", ""]
    s, i, r = d["save"], d["ingest"], d["resume"]
    err = (s["run_error"] or "none")[:120]
    return [paragraph(
        f"**3. Disk full** (a {d['tmpfs_mib']} MiB tmpfs): a run saving versions when the "
        f"disk filled ended with error `{err}`; served version {s['version_before']} → "
        f"{s['version_after']}, predictions {s['predict']}. Ingest on the full disk: "
        f"{i['accepted_before_refusal']} batch(es) of 50 samples fit in free pages, then HTTP "
        f"{i['status']} `{(i['answer'] or {}).get('error')}`; predictions {i['predict']}, "
        f"`/readyz` {i['readyz']}. `integrity_check` while full `{d['integrity_while_full']}`, "
        f"after `{d['integrity_after']}`. Filler deleted: a write accepted after "
        f"{r['write_accepted_after_s']} s, version {r['version']} published; after a restart "
        f"version {d['restart']['version']} served (predict {d['restart']['predict']}). "
        f"Files left behind: {d['leftovers'] or 'none'}."), ""]


def _peer(p: dict[str, Any]) -> list[str]:
    if "error" in p or "skipped" in p:
        return [f"**4. Stopped peer**: {p.get('error') or p.get('skipped')}.", ""]
    out = [paragraph(
        f"**4. Stopped peer**: `a` under a {p['quota_cores']}-core quota placed the app "
        f"(budget {p.get('budget_ms')} ms) on `b` "
        f"(after {p['placed_on_b_after_s']} s). SIGSTOP of `b`: marked down after "
        f"{p['marked_down_after_s']} s, app routed to `a` after {p['routed_here_after_s']} s. "
        f"SIGCONT: up again after {p['up_again_after_s']} s, app back on `b` after "
        f"{p['back_on_b_after_s']} s."), ""]
    out += table_head("phase", "predictions", "answered 200", "failed", "slowest")
    for phase in ("before_stop", "while_stopped", "after_cont"):
        c = p[phase]
        out.append(f"| {phase.replace('_', ' ')} | {c['requests']} | {c['ok']} | "
                   f"{c['failed']} | {c['slowest_s']} s |")
    return [*out, ""]


def section(r: dict[str, Any]) -> list[str]:
    out = header(r, "Faults (kill -9, broker restart, full disk, stopped peer)", INTRO)
    met = r["met"]
    out += table_head("check", "verdict")
    out += [f"| {name.replace('_', ' ')} | {verdict(ok)} |" for name, ok in met.items()]
    out.append("")
    return (out + _kill(r["kill"]) + _mqtt(r["mqtt"]) + _mqtt(r.get("mqtt_kill"))
            + _disk(r["disk"]) + _peer(r["peer"]))
