"""One backbone call per graph step, however many questions are in flight.

Each question runs through the graph as its own coroutine, and its nodes may run side by
side (the vote's fan-out). A node hands its requests to the batcher and waits. Once every
question in flight is blocked, that is, each of its running nodes waits on the batcher,
the batcher sends all queued requests, to every handler, as one batched call per handler
(`achoose` for each backbone, `query` for the index). Questions at different steps share
a call. A handler may be a coroutine function: the calls of several served backbones
then overlap.

A question between two nodes runs no node and so is not blocked: its next node may yet
ask, and the batcher waits for it.

What shares a call is a function of the questions alone, never of timing: a flush waits
until every question in flight is blocked, so each call holds every question's next
requests of its handler, and they go in the order of the questions (not of their arrival,
which a sandbox run in a thread or a served backbone's reply can change). In bf16 a
prompt's numbers depend on its call-mates; this is what makes a rerun write the same letters.
"""

from __future__ import annotations

import asyncio
import contextvars
import inspect
import itertools
from contextlib import contextmanager
from typing import Callable

_QUESTION: contextvars.ContextVar[int] = contextvars.ContextVar("question")


class StepBatcher:
    def __init__(self, handlers: dict[str, Callable[[list], list]]):
        self.handlers = handlers
        self.queues: dict[str, list] = {k: [] for k in handlers}
        self.flight: dict[int, list[int]] = {}  # question -> [nodes running, of those queued]
        self.calls: dict[str, int] = dict.fromkeys(handlers, 0)  # batched calls made
        self._ids = itertools.count()
        self._flushing = False

    @contextmanager
    def question(self, position: int | None = None):
        """Marks the current task (and the node tasks it starts) as one question in flight;
        `position` (default: order of entry) orders its requests within a call."""
        qid = next(self._ids) if position is None else position
        self.flight[qid] = [0, 0]
        token = _QUESTION.set(qid)
        try:
            yield
        finally:
            _QUESTION.reset(token)
            del self.flight[qid]
            self._maybe_flush()

    def node(self, fn):
        """A graph node that counts as running while it runs."""

        async def run(state):
            counts = self.flight[_QUESTION.get()]
            counts[0] += 1
            try:
                return await fn(state)
            finally:
                counts[0] -= 1

        run.__name__ = getattr(getattr(fn, "func", fn), "__name__", "node")  # a partial: its function's
        return run

    async def submit(self, handler: str, items: list) -> list:
        """One node's requests; returns their results in order."""
        fut = asyncio.get_running_loop().create_future()
        qid = _QUESTION.get()
        self.queues[handler].append((qid, items, fut, self.flight[qid]))
        self.flight[qid][1] += 1
        self._maybe_flush()
        return await fut

    def _blocked(self) -> bool:
        return all(running and queued == running for running, queued in self.flight.values())

    def _maybe_flush(self) -> None:
        if not self._flushing and any(self.queues.values()) and self._blocked():
            self._flushing = True
            asyncio.get_running_loop().call_soon(lambda: asyncio.ensure_future(self._flush()))

    async def _call(self, handler: str, queue: list) -> None:
        try:
            results = self.handlers[handler]([x for _, items, _, _ in queue for x in items])
            if inspect.isawaitable(results):
                results = await results
            self.calls[handler] += 1
        except Exception as e:  # every question waiting on this call gets the error
            for _, _, fut, _ in queue:
                fut.set_exception(e)
            return
        i = 0
        for _, items, fut, _ in queue:
            fut.set_result(results[i : i + len(items)])
            i += len(items)

    async def _flush(self) -> None:
        """Everyone is blocked: one call per handler, side by side."""
        try:
            if not self._blocked():  # a node started since the flush was scheduled
                return
            queues = {name: queue for name, queue in self.queues.items() if queue}
            for name, queue in queues.items():
                self.queues[name] = []
                queue.sort(key=lambda entry: entry[0])  # by question; stable within one
                for *_, counts in queue:
                    counts[1] -= 1
            await asyncio.gather(*(self._call(name, queue) for name, queue in queues.items()))
        finally:
            self._flushing = False
            self._maybe_flush()
