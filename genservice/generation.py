"""A generation: one task per reply, owned by the service, with the RPCs that follow it as subscribers.

A caller's cancellation ends its subscription and nothing else. Only a stop request, a failure,
the end of the model's stream, a lost lease or the service's shutdown end a generation.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field

import openai

from genservice import store
from genservice.batcher import DATABASE_ERRORS, SaveBatcher
from genservice.config import GenServiceConfig
from genservice.database import Pool
from genservice.hub import ListenerHub, Subscription
from genservice.model import ModelFailure, stream_reply
from genservice.store import Ending, MessageRecord, StartedReply, Usage
from genservice.textcut import first_unstorable

log = logging.getLogger(__name__)

SUBSCRIBER_QUEUE_LIMIT = 512
FINISH_RETRY_MAX = 2.0
CANCELLED = Ending("cancelled", "", "cancelled")
# the message was ended by another process: this one writes nothing more to it
LEASE_LOST = Ending("lease_lost")
SHUT_DOWN = Ending("error", "the service shut down before the reply finished")


class FellBehind(Exception):
    """A subscriber's queue overflowed; it goes on from Postgres."""


@dataclass(eq=False)
class _Subscriber:
    # text, the final record, or None: "go on from Postgres"
    queue: asyncio.Queue[str | MessageRecord | None] = field(
        default_factory=lambda: asyncio.Queue(SUBSCRIBER_QUEUE_LIMIT)
    )
    behind: bool = False


class Generation:
    def __init__(self, reply: StartedReply) -> None:
        self.message_id = reply.assistant.id
        self.conversation_id = reply.conversation_id
        self.model = reply.assistant.model
        self.history = reply.history
        self._parts: list[str] = []
        self.length = 0
        self.final: MessageRecord | None = None
        self._subscribers: set[_Subscriber] = set()
        self.stop_reason: Ending | None = None
        # the model's stream is over and the end is being written: nothing may interrupt that
        self.finishing = False
        self.task: asyncio.Task[None] | None = None

    @property
    def text(self) -> str:
        return "".join(self._parts)

    def append(self, text: str) -> None:
        self._parts.append(text)
        self.length += len(text)
        self._publish(text)

    def end(self, record: MessageRecord) -> None:
        self.final = record
        self._publish(record)

    def abandon(self) -> None:
        """The end is not known here (the message ended elsewhere): followers go on from Postgres."""
        for subscriber in self._subscribers:
            subscriber.behind = True
            with contextlib.suppress(asyncio.QueueFull):
                subscriber.queue.put_nowait(None)

    def _publish(self, item: str | MessageRecord) -> None:
        for subscriber in self._subscribers:
            if subscriber.behind:
                continue
            try:
                subscriber.queue.put_nowait(item)
            except asyncio.QueueFull:
                # never slow the generation: this one reads from Postgres from now on
                subscriber.behind = True

    @contextlib.contextmanager
    def _subscribed(self) -> Iterator[_Subscriber]:
        subscriber = _Subscriber()
        self._subscribers.add(subscriber)
        try:
            yield subscriber
        finally:
            self._subscribers.discard(subscriber)

    async def follow(self, offset: int) -> AsyncIterator[tuple[int, str] | MessageRecord]:
        """(offset, text) deltas after `offset` from memory, then live, then the final record.

        Raises FellBehind when this follower was too slow; what it got so far is exact.
        """
        with self._subscribed() as subscriber:
            sent = offset
            backlog = self.text[offset:]
            if backlog:
                yield sent, backlog
                sent += len(backlog)
            if self.final is not None:
                yield self.final
                return
            while True:
                if subscriber.behind and subscriber.queue.empty():
                    raise FellBehind
                item = await subscriber.queue.get()
                if item is None:
                    raise FellBehind
                if isinstance(item, MessageRecord):
                    yield item
                    return
                yield sent, item
                sent += len(item)


class Generations:
    """Every generation this process runs, the task that runs each, and their end."""

    def __init__(
        self, config: GenServiceConfig, pool: Pool, hub: ListenerHub, client: openai.AsyncOpenAI, owner: str
    ) -> None:
        self._config = config
        self._pool = pool
        self._hub = hub
        self._client = client
        self.owner = owner
        self._running: dict[str, Generation] = {}
        self.batcher = SaveBatcher(
            pool,
            owner,
            save_every_chars=config.save_every_chars,
            max_delay=config.save_max_delay,
            lease_seconds=config.lease_seconds,
            on_lease_lost=self._lease_lost,
        )
        self.accepting = True

    def get(self, message_id: str) -> Generation | None:
        return self._running.get(message_id)

    def __len__(self) -> int:
        return len(self._running)

    def launch(self, reply: StartedReply) -> Generation:
        generation = Generation(reply)
        self._running[generation.message_id] = generation
        self.batcher.track(generation.message_id)
        generation.task = asyncio.create_task(self._run(generation), name=f"generation-{generation.message_id}")
        return generation

    def _lease_lost(self, message_id: str) -> None:
        self.stop(message_id, LEASE_LOST)

    def stop(self, message_id: str, ending: Ending) -> None:
        """End a generation's model stream with `ending`, unless it is already ending."""
        generation = self._running.get(message_id)
        if generation is None or generation.task is None or generation.finishing or generation.stop_reason:
            return
        generation.stop_reason = ending
        generation.task.cancel()

    async def _run(self, generation: Generation) -> None:
        message_id = generation.message_id
        log.info("message %s: generation started (model %s)", message_id, generation.model)
        try:
            async with self._hub.subscribe(message_id) as stop_requests:
                watcher = asyncio.create_task(self._watch_for_stop(generation, stop_requests))
                try:
                    ending = await self._stream(generation)
                except asyncio.CancelledError:
                    if generation.stop_reason is None:
                        raise
                    ending = generation.stop_reason
                finally:
                    generation.finishing = True
                    watcher.cancel()
            if ending is LEASE_LOST:
                log.warning("message %s: ended elsewhere; nothing more is written", message_id)
                generation.abandon()
                return
            await self._finish(generation, ending)
        finally:
            self.batcher.forget(message_id)
            self._running.pop(message_id, None)

    async def _stream(self, generation: Generation) -> Ending:
        limit = self._config.max_reply_chars
        finish_reason = ""
        usage: Usage | None = None
        try:
            async for piece in stream_reply(
                self._client, generation.model, generation.history, self._config.model_idle_timeout
            ):
                text = piece.text
                if text:
                    room = limit - generation.length
                    if len(text) > room:
                        self._accept(generation, text[:room])
                        return Ending("error", f"the reply passed the limit of {limit} characters", "length")
                    bad = first_unstorable(text)
                    if bad is not None:
                        self._accept(generation, text[:bad])
                        return Ending("error", f"the model sent a character that cannot be stored ({text[bad]!r})")
                    self._accept(generation, text)
                finish_reason = piece.finish_reason or finish_reason
                usage = piece.usage or usage
        except ModelFailure as failure:
            log.warning("message %s: model failed: %s", generation.message_id, failure)
            return Ending("error", str(failure), finish_reason, usage)
        return Ending("complete", "", finish_reason or "stop", usage)

    def _accept(self, generation: Generation, text: str) -> None:
        if text:
            generation.append(text)
            self.batcher.add(generation.message_id, text)

    async def _watch_for_stop(self, generation: Generation, subscription: Subscription) -> None:
        self.stop(generation.message_id, await self._stop_request(generation, subscription))

    async def _stop_request(self, generation: Generation, subscription: Subscription) -> Ending:
        """A stop request, or the message ended by another process, heard wherever it was made."""
        while True:
            notices = await subscription.wait()
            if notices is None:
                with contextlib.suppress(*DATABASE_ERRORS):
                    ended, stop_requested = await store.stop_state(self._pool, generation.message_id)
                    if ended:
                        return LEASE_LOST
                    if stop_requested:
                        return CANCELLED
                continue
            if any(n.terminal for n in notices):
                return LEASE_LOST
            if any(n.cancel_requested for n in notices):
                return CANCELLED

    async def _finish(self, generation: Generation, ending: Ending) -> None:
        """Write the end, retrying through a database outage; the text is never dropped."""
        retry = 0.1
        while True:
            try:
                record = await store.finish_reply(
                    self._pool, generation.message_id, self.owner, generation.text, ending
                )
                break
            except DATABASE_ERRORS as exc:
                log.warning("message %s: saving the end failed (%s); retrying", generation.message_id, exc)
                await asyncio.sleep(retry)
                retry = min(retry * 2, FINISH_RETRY_MAX)
        if record is None:
            log.warning("message %s: lease lost before the end was saved", generation.message_id)
            generation.abandon()
            return
        log.info("message %s: ended %s, %d characters", generation.message_id, record.status, len(record.content))
        generation.end(record)

    async def drain(self, grace: float) -> None:
        """Shutdown: refuse new replies, give running ones `grace` seconds, then end the rest as ERROR."""
        self.accepting = False
        tasks = [g.task for g in self._running.values() if g.task is not None]
        if tasks:
            log.info("waiting up to %.1fs for %d running generations", grace, len(tasks))
            _done, pending = await asyncio.wait(tasks, timeout=grace)
            for generation in list(self._running.values()):
                self.stop(generation.message_id, SHUT_DOWN)
            if pending:
                await asyncio.wait(pending, timeout=max(grace, 5.0))
