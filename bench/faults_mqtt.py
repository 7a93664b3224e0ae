"""Part 2 of `bench faults`: the broker stopped (SIGTERM or SIGKILL) and restarted during MQTT
ingest.

A paho publisher (persistent session, QoS 1) publishes one labelled sample per message, each
with a unique first feature and its own ``batch_id``, at a steady pace, while mosquitto is
killed and restarted on the same port and persistence file. paho keeps what it could not
send and sends it again after reconnecting; the broker acknowledges a message (PUBACK) once it
holds it, and the daemon acknowledges its own copy only after the commit. Counted: published,
acknowledged by the broker, stored (once the daemon has caught up), lost (acknowledged by
the broker, never stored) and duplicated; and the daemon's reconnections.
"""

from __future__ import annotations

import json
import random
import signal
import sqlite3
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from bench.faults_env import Daemon, until

MARK = 4_000_000



def _stored(db: Path) -> Counter[int]:
    held: Counter[int] = Counter()
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        for (blob,) in conn.execute("SELECT features FROM samples WHERE app='m' AND "
                                    "source='mqtt'"):
            held[int(np.frombuffer(blob, np.float32, 1)[0]) - MARK] += 1
    return held


def broker_restarts(workdir: Path, broker: Any, restarts: int, rate_hz: float = 100.0,
                    seed: int = 0, sig: signal.Signals = signal.SIGKILL) -> dict[str, Any]:
    """Publish while the broker is stopped with ``sig`` ``restarts`` times; the counts.

    With SIGTERM mosquitto saves what it holds before it exits, so every message it
    acknowledged must reach the store; with SIGKILL a message it acknowledged in its last
    instant, before its save, is its own loss (mosquitto saves after the PUBACK is sent)."""
    import paho.mqtt.client as paho
    from paho.mqtt.enums import CallbackAPIVersion

    rng = random.Random(seed)
    d = Daemon(workdir, f'[mqtt]\nurl = "{broker.url}"\nprefix = "f"\n',
               daemon_toml='name = "faults"')
    d.start()
    published: list[Any] = []
    acks: set[int] = set()
    pub = paho.Client(CallbackAPIVersion.VERSION2, client_id="faults-publisher",
                      clean_session=False)
    try:
        assert d.request("PUT", "/v1/apps/m", {"data_type": "vector", "shape": [2]})[0] == 201
        until(lambda: "mqtt_connected" in d.tail(100_000), 30, what="daemon connected")
        # PUBACKs by message id (paho's MQTTMessageInfo raises for a message published while
        # disconnected, even once it was sent again and acknowledged); ids wrap at 65535
        pub.on_publish = lambda client, userdata, mid, rc, props: acks.add(mid)
        pub.max_queued_messages_set(0)  # keep everything while the broker is away
        pub.reconnect_delay_set(0.1, 1)
        pub.connect("127.0.0.1", broker.port)
        pub.loop_start()
        gaps = []

        def publish_for(seconds: float) -> None:
            end = time.monotonic() + seconds
            while time.monotonic() < end:
                n = len(published)
                body = {"features": [MARK + n, n % 2], "label": "ab"[n % 2], "batch_id": f"q{n}"}
                published.append(pub.publish("f/m/samples", json.dumps(body), qos=1))
                time.sleep(1.0 / rate_hz)

        publish_for(1.0)
        for _ in range(restarts):
            publish_for(rng.uniform(0.3, 2.0))
            broker.kill(sig)
            down = rng.uniform(0.3, 2.0)
            publish_for(down)  # paho queues these
            broker.start()
            gaps.append(round(down, 2))
        publish_for(1.0)
        # Caught up: every message the broker took is in, and nothing more comes.
        assert len(published) < 65_000, "message ids would repeat"
        until(lambda: len(acks) >= len(published), 60, 0.2,
              "every message acknowledged by the broker")
        last: list[int] = [-1]

        def settled() -> bool:
            n = d.request("GET", "/v1/apps/m")[1]["n_samples"]
            done = n == last[0] and n >= len(published)
            last[0] = n
            return done
        try:
            until(settled, 60, 0.5, "the daemon caught up")
        except TimeoutError:
            pass  # counted below as lost
        reconnects = d.tail(10_000_000).count('"mqtt_connected"') - 1
    finally:
        pub.loop_stop()
        pub.disconnect()
        d.stop()
    held = _stored(d.data_dir / "mliot.db")
    acked = [n for n, m in enumerate(published) if m.mid in acks]
    lost = sorted(set(acked) - set(held))
    return {"signal": sig.name, "restarts": restarts, "down_s": gaps, "rate_hz": rate_hz,
            "published": len(published), "broker_acknowledged": len(acked),
            "stored": len(held), "lost": len(lost), "lost_ids": lost[:20],
            "duplicated": sum(1 for c in held.values() if c > 1),
            "daemon_reconnects": reconnects}
