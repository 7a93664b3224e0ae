"""N dashboard pages open on one app, as `bench serving --watchers N` runs them beside its
measurements: each page's watch socket at the page's rate cap (the dashboard's own
`MAX_PER_S`), and its API polling (the app and the status, every 2 s, as the app page does).

Run as `python -m bench.dashboard_load URL APP N` (its own process: the measuring client's
must not share a loop with it); it runs until terminated.
"""

from __future__ import annotations

import asyncio
import re
import sys
from pathlib import Path

import aiohttp

LIVE = Path(__file__).resolve().parent.parent / "actors/server/static/live.js"
POLL_S = 2.0


def page_rate() -> int:
    """The rate cap the dashboard's page asks for (read from its source, so they agree)."""
    match = re.search(r"const MAX_PER_S = (\d+);", LIVE.read_text())
    assert match, f"no MAX_PER_S in {LIVE}"
    return int(match.group(1))


async def page(session: aiohttp.ClientSession, url: str, app: str, rate: int) -> None:
    async def watch() -> None:
        async with session.ws_connect(f"{url}/v1/apps/{app}/stream?watch=true&max_per_s={rate}"
                                      ) as ws:
            async for _ in ws:
                pass

    async def poll() -> None:
        while True:
            for path in (f"/v1/apps/{app}", "/v1/status"):
                async with session.get(url + path) as resp:
                    await resp.read()
            await asyncio.sleep(POLL_S)

    await asyncio.gather(watch(), poll())


async def main(url: str, app: str, n: int) -> None:
    async with aiohttp.ClientSession() as session:
        await asyncio.gather(*(page(session, url, app, page_rate()) for _ in range(n)))


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3])))
