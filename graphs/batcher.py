"""One backbone call per graph step, however many questions are in flight.

Each question runs through the graph as its own coroutine. A node hands its requests to
the batcher and waits; once every question in flight is waiting, the batcher sends all
queued requests, of every kind, as one batched call per kind (`choose` for the LLM,
`query` for the index). Questions at different steps share a call.
"""

from __future__ import annotations

import asyncio
from typing import Callable


class StepBatcher:
    def __init__(self, handlers: dict[str, Callable[[list], list]]):
        self.handlers = handlers
        self.queues: dict[str, list] = {k: [] for k in handlers}
        self.active = 0  # questions in flight
        self.waiting = 0  # of those, waiting on a queue
        self.calls: dict[str, int] = dict.fromkeys(handlers, 0)  # batched calls made
        self._flushing = False

    async def submit(self, kind: str, items: list) -> list:
        """One question's requests; returns their results in order."""
        fut = asyncio.get_running_loop().create_future()
        self.queues[kind].append((items, fut))
        self.waiting += 1
        self._maybe_flush()
        return await fut

    def enter(self) -> None:
        self.active += 1

    def leave(self) -> None:
        self.active -= 1
        self._maybe_flush()

    def _maybe_flush(self) -> None:
        if not self._flushing and self.waiting and self.waiting >= self.active:
            self._flushing = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        """Everyone is waiting: blocking the loop for the batched call costs nothing."""
        try:
            for kind, queue in self.queues.items():
                if not queue:
                    continue
                self.queues[kind] = []
                self.waiting -= len(queue)
                try:
                    results = self.handlers[kind]([x for items, _ in queue for x in items])
                    self.calls[kind] += 1
                except Exception as e:  # every question waiting on this call gets the error
                    for _, fut in queue:
                        fut.set_exception(e)
                    continue
                i = 0
                for items, fut in queue:
                    fut.set_result(results[i : i + len(items)])
                    i += len(items)
        finally:
            self._flushing = False
