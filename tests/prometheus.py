"""Reading a Prometheus `/metrics` endpoint in tests: scrape, parse the text format, look up a labelled sample."""

from __future__ import annotations

import asyncio
import re
import socket
import time
import urllib.request
from collections.abc import Callable

Sample = tuple[str, dict[str, str], float]
_SAMPLE = re.compile(r"^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(?P<labels>.*)\})?\s+(?P<value>\S+)$")
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def parse(text: str) -> list[Sample]:
    """Prometheus text exposition as (name, labels, value) samples; comments skipped."""
    samples = []
    for line in text.splitlines():
        match = _SAMPLE.match(line)
        if line.startswith("#") or match is None:
            continue
        labels = dict(_LABEL.findall(match["labels"] or ""))
        samples.append((match["name"], labels, float(match["value"])))
    return samples


def value(samples: list[Sample], name: str, **labels: str) -> float | None:
    """The sum of `name`'s samples whose labels include `labels` (None: no such sample)."""
    found = [v for n, ls, v in samples if n == name and all(ls.get(k) == want for k, want in labels.items())]
    return sum(found) if found else None


async def scrape(port: int) -> str:
    def get() -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
            body: bytes = response.read()
            return body.decode()

    return await asyncio.to_thread(get)


async def scrape_until(
    port: int, ready: Callable[[list[Sample]], bool], timeout: float = 30.0, retry_unreachable: bool = False
) -> list[Sample]:
    """Scrape until `ready(samples)` holds (counters reach the exporter asynchronously) or the deadline passes.

    `retry_unreachable`: the endpoint belongs to a process still starting; a refused connection means "not yet".
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            samples = parse(await scrape(port))
        except OSError:
            if not retry_unreachable or time.monotonic() > deadline:
                raise
            samples = []
        if ready(samples) or time.monotonic() > deadline:
            return samples
        await asyncio.sleep(0.1)
