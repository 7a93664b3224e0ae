"""Serving: mliot against MLServer 1.7 and a hand-written aiohttp server, and the issue 5 and 8
latency and throughput targets."""

from __future__ import annotations

from typing import Any

from bench.report.common import header, plt, save_plot, table_head, verdict

INTRO = """Digits, one row per request, HTTP keep-alive, client on the same machine: the lean
client of `bench/lean_client.py` (prebuilt requests, a busy-polled socket, so the figure is the
server's, not the client's wake-up); the aiohttp column is what a Python client on aiohttp sees.
mliot serves a 7-member ensemble ({digits7}) and the low-latency choice ({digits3}); MLServer
(mlserver-sklearn, V2 protocol, `parallel_workers: 0`) and the hand-written server serve ONE
RandomForest(100). Throughput: 8 concurrent keep-alive clients. RSS: server process
(+ children) after the load."""
APPS = (("digits7", "mliot, 7-member ensemble"), ("digits3", "mliot, low latency"))
COMPETITORS = (("mlserver", "MLServer 1.7, RF(100)"),
               ("handmade", "hand-written aiohttp, RF(100)"))


def section(r: dict[str, Any]) -> list[str]:
    members = r["members"]
    out = header(r, "Serving — mliot vs MLServer 1.7 vs a hand-written aiohttp server",
                 INTRO.format(digits7=", ".join(members["digits7"]),
                              digits3=", ".join(members["digits3"])))
    out += table_head("server", "p50 ms", "p99 ms", "p50 ms, aiohttp client",
                      "req/s (8 clients)", "RSS MiB")
    for app, label in APPS:
        a = r[app]
        aio = a.get("aiohttp_client", {}).get("http_ms", {}).get("p50")
        out.append(f"| {label} | {a['http_ms']['p50']:.3f} | {a['http_ms']['p99']:.3f} | "
                   f"{'—' if aio is None else f'{aio:.3f}'} | "
                   f"{a['http_throughput_per_s']} | {r['mliot_rss']['main_mib']} (+ pool "
                   f"{r['mliot_rss']['children_mib']}) |")
    for k, label in COMPETITORS:
        a = r[k]
        out.append(f"| {label} | {a['http_ms']['p50']:.3f} | {a['http_ms']['p99']:.3f} | — | "
                   f"{a['throughput_per_s']} | {a['rss_mib']} |")
    out += ["", "WebSocket (mliot): " + "; ".join(
        f"{app} p50 {r[app]['ws_ms']['p50']:.3f} ms, p99 {r[app]['ws_ms']['p99']:.3f} ms, "
        f"pipelined {r[app]['ws_pipelined_per_s']}/s" for app, _ in APPS) + ".",
        f"A new digits app first serves {r['first_serve_s']} s after its training set is "
        f"acknowledged; loop lag p99 while it trains: {r['loop_lag_p99_ms_while_training']} ms.",
        ""]
    if "forest_predict_inprocess_ms" in r:
        f = r["forest_predict_inprocess_ms"]
        out.append(f"The forest's own `predict` on one row, in-process without any server: "
                   f"p50 {f['p50']:.3f} ms, p99 {f['p99']:.3f} ms — scikit-learn's per-call "
                   f"overhead plus 100 trees walked one by one; it sets the floor under both "
                   f"competitors, while mliot's fast predictor walks all trees of its forest "
                   f"member in one call.")
        out.append("")
    out += _targets(r)
    out += ["", _plot(r), ""]
    return out


def _split(r: dict[str, Any], app: str, channel: str) -> tuple[float, float, float] | None:
    """(transport floor, predictor as served, mliot's own path) of an app's p50, in ms."""
    floor, pred = r.get("floor"), r.get("predictor", {}).get(app)
    if floor is None or pred is None:
        return None
    total = r[app][f"{channel}_ms"]["p50"]
    f, p = floor[f"{channel}_ms"]["p50"], pred["idle_0.3ms_ms"]
    return f, p, total - f - p


def _where_time_goes(floor: dict[str, Any], pred: dict[str, Any]) -> list[str]:
    """The p50 split into transport floor, predictor and mliot's own path: what a miss of the
    latency targets can be blamed on."""
    aio = floor.get("aiohttp_client")
    return [f"Where the time goes (p50): the transport floor — the same clients against "
            f"a uvloop + aiohttp server answering a constant (`bench/handmade_server.py "
            f"-`), just before and just after each of mliot's runs — is "
            f"{floor['http_ms']['p50']:.3f} ms over HTTP and "
            f"{floor['ws_ms']['p50']:.3f} ms over WebSocket with the lean client"
            + (f" ({aio['http_ms']['p50']:.3f} and {aio['ws_ms']['p50']:.3f} ms with "
               "an aiohttp client)" if aio else "")
            + ". The served predictor alone (`ServedModel.predict`, one row, in a child "
              "process) takes "
            + "; ".join(f"{app} {p['back_to_back_ms']:.3f} ms back to back, "
                        f"{p['idle_0.3ms_ms']:.3f} ms after 0.3 ms idle"
                        for app, p in pred.items())
            + ". The second figure is the one that applies as served: between two round "
              "trips the core sleeps and comes back to cold caches. The rest is mliot's "
              "own path (routing, body limit, JSON, feature checks, the prediction id and "
              "record, metrics, the response).", ""]


def _targets(r: dict[str, Any]) -> list[str]:
    """Issue 5 and 8 targets, each with its verdict and, when missed, the measured reason."""
    out = ["**Targets** (issue 5: single-row p50 over HTTP ≤ 0.5 ms and over WebSocket "
           "≤ 0.25 ms, ≥ 10,000 pipelined predictions/s, p99 ≤ 2 ms; issue 8: 7-member p50 "
           "≥ 8x lower than MLServer's):", ""]
    floor, pred = r.get("floor"), r.get("predictor")
    if floor and pred:
        out += _where_time_goes(floor, pred)
    for app, _ in APPS:
        a = r[app]
        for channel, limit in (("http", 0.5), ("ws", 0.25)):
            p50 = a[f"{channel}_ms"]["p50"]
            line = (f"- {app} {'HTTP' if channel == 'http' else 'WebSocket'} p50 "
                    f"{p50:.3f} ms (≤ {limit}): {verdict(p50 <= limit)}")
            split = _split(r, app, channel)
            if split is not None:
                f, p, own = split
                line += (f" — floor {f:.3f} + predictor {p:.3f} + mliot's own path "
                         f"{own:.3f} ms")
            if "aiohttp_client" in a:
                line += (f"; with an aiohttp client "
                         f"{a['aiohttp_client'][f'{channel}_ms']['p50']:.3f} ms")
            out.append(line + ".")
        rate = a["ws_pipelined_per_s"]
        out.append(f"- {app} WebSocket pipelined {rate}/s (≥ 10,000): {verdict(rate >= 10000)}.")
        worst = max(a["http_ms"]["p99"], a["ws_ms"]["p99"])
        out.append(f"- {app} p99 (worse of HTTP and WebSocket) {worst:.3f} ms (≤ 2): "
                   f"{verdict(worst <= 2.0)}.")
    out.append("")
    ratio = r["mlserver_over_mliot_p50"]
    ok = ratio >= 8.0
    out.append(f"Issue 8: 7-member ensemble p50 ≥ 8x lower than MLServer serving one forest — "
               f"measured {ratio}x (both with the lean client): {verdict(ok)}.")
    if not ok:
        need = r["mlserver_p50_ms"] / 8
        out.append(f"For 8x, mliot's 7-member p50 would have to be ≤ {need:.3f} ms "
                   f"(MLServer {r['mlserver_p50_ms']:.3f} ms / 8); it is "
                   f"{r['mliot_p50_ms']:.3f} ms.")
    out.append("")
    return out


def _plot(r: dict[str, Any]) -> str:
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    names = ["mliot 7", "mliot 3", "MLServer RF", "aiohttp RF"]
    p50 = [r["digits7"]["http_ms"]["p50"], r["digits3"]["http_ms"]["p50"],
           r["mlserver_p50_ms"], r["handmade_p50_ms"]]
    p99 = [r["digits7"]["http_ms"]["p99"], r["digits3"]["http_ms"]["p99"],
           r["mlserver_p99_ms"], r["handmade_p99_ms"]]
    x = range(4)
    axes[0].bar([v - 0.2 for v in x], p50, 0.4, label="p50")
    axes[0].bar([v + 0.2 for v in x], p99, 0.4, label="p99")
    axes[0].set_ylabel("ms per request")
    axes[0].legend()
    axes[1].bar(x, [r["digits7"]["http_throughput_per_s"], r["digits3"]["http_throughput_per_s"],
                    r["mlserver_throughput_per_s"], r["handmade_throughput_per_s"]])
    axes[1].set_ylabel("requests/s, 8 clients")
    for ax in axes:
        ax.set_xticks(list(x), names, fontsize=8)
    return save_plot(fig, "serving")
