"""Every generation this process runs: launching each as a task of the service's, and writing its end.

Only a stop request, a failure, the end of the model's stream, a lost lease or the service's
shutdown end a generation; a caller that goes away only stops listening.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterator

import openai

from genservice.batcher import SaveBatcher
from genservice.config import GenServiceConfig
from genservice.generation import Generation, StopReason
from genservice.loop_lag import LoopLag
from genservice.model import ModelFailure, stream_reply
from genservice.pacing import Ticker
from genservice.replies import queries
from genservice.replies.backoff import Backoff
from genservice.replies.database import DATABASE_ERRORS, Pool
from genservice.replies.errors import Unavailable
from genservice.replies.listener import ListenerHub, Subscription
from genservice.replies.notices import Notice
from genservice.replies.records import Status, Usage
from genservice.textcut import first_unstorable
from genservice.writes import Ending, StartedReply, finish_reply

log = logging.getLogger(__name__)

STOP_ENDINGS = {
    StopReason.CANCELLED: Ending(Status.CANCELLED, "", "cancelled"),
    StopReason.SHUTDOWN: Ending(Status.ERROR, "the service shut down before the reply finished"),
}
CAPACITY_RETRY_SECONDS = 2
UNEXPECTED_FAILURE = Ending(
    Status.ERROR, "the generation failed unexpectedly (an internal error); the text so far is kept"
)


def _ends_or_stops(notice: Notice) -> bool:
    return notice.terminal or notice.cancel_requested


class Generations:
    def __init__(
        self,
        config: GenServiceConfig,
        pool: Pool,
        writer: Pool,
        hub: ListenerHub,
        client: openai.AsyncOpenAI,
        batcher: SaveBatcher,
        owner: str,
        owner_addr: str,
        lag: LoopLag,
    ) -> None:
        self._config = config
        self._lag = lag
        self._pool = pool
        # the ends' own connections, apart from request traffic
        self._writer = writer
        self._hub = hub
        self._client = client
        self._batcher = batcher
        self.owner = owner
        # where gateways dial this process for its replies' live text
        self.owner_addr = owner_addr
        self._running: dict[str, Generation] = {}
        self._ticker = Ticker(self._pace)
        self._tasks: set[asyncio.Task[None]] = set()
        self.accepting = True
        # set once the drain stopped waiting for admitted starts: a start launched later is not waited for
        self._drained_admissions = False
        # starts admitted and not yet launched (or refused); the drain waits for them
        self._admitted = 0
        self._no_admitted = asyncio.Event()
        self._no_admitted.set()

    def get(self, message_id: str) -> Generation | None:
        return self._running.get(message_id)

    @contextlib.contextmanager
    def admission(self) -> Iterator[None]:
        """Room for one more reply, held while it is written and launched; refused before anything is written.

        The drain waits for every admitted start, so none launches after it unseen.
        """
        if not self.accepting:
            raise Unavailable("the service is shutting down; retry on another replica", retry_after=1)
        limit = self._config.max_active_replies
        if len(self._running) + self._admitted >= limit:
            raise Unavailable(
                f"this replica is running {limit} replies, its limit; retry shortly", retry_after=CAPACITY_RETRY_SECONDS
            )
        if self._config.max_loop_lag and self._lag.seconds > self._config.max_loop_lag:
            raise Unavailable(
                f"this replica is past its capacity (running {len(self._running)} replies, its work"
                f" {self._lag.seconds * 1000:.0f} ms behind); retry shortly",
                retry_after=CAPACITY_RETRY_SECONDS,
            )
        self._admitted += 1
        self._no_admitted.clear()
        try:
            yield
        finally:
            self._admitted -= 1
            if self._admitted == 0:
                self._no_admitted.set()

    def launch(self, reply: StartedReply) -> Generation:
        generation = Generation(reply, self._ticker)
        if self._drained_admissions:
            # admitted before the drain began, launched after it stopped waiting: end it now, as the drain would
            generation.request_stop(StopReason.SHUTDOWN)
        self._running[generation.message_id] = generation
        self._batcher.track(generation.message_id, lambda: generation.request_stop(StopReason.LEASE_LOST))
        task = asyncio.create_task(self._run(generation), name=f"generation-{generation.message_id}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return generation

    def _pace(self) -> float:
        """Seconds between publishes of new text: none (at once) unless this process runs more than BUSY_REPLIES."""
        return self._config.busy_delta_interval if len(self._running) > self._config.busy_replies else 0.0

    def running_ids(self) -> list[str]:
        return list(self._running)

    async def _run(self, generation: Generation) -> None:
        """The one supervisor of a generation: whatever fails, the message is ended and its followers told."""
        message_id = generation.message_id
        log.info("message %s: generation started (model %s)", message_id, generation.model)
        try:
            try:
                ending = await self._generate(generation)
            except Exception:
                log.exception("message %s: the generation failed unexpectedly; ending it with its text", message_id)
                ending = UNEXPECTED_FAILURE
            if ending is None:
                log.warning("message %s: ended elsewhere; nothing more is written", message_id)
                generation.abandon()
                return
            await self._finish(generation, ending)
        except Exception:
            # the end could not be written: followers go on from Postgres, where this process's sweeper ends it
            log.exception("message %s: writing the end failed; the sweeper ends it from its saves", message_id)
            generation.abandon()
        finally:
            self._batcher.forget(message_id)
            self._running.pop(message_id, None)

    async def _generate(self, generation: Generation) -> Ending | None:
        # a save's notice says nothing a stop needs: only an end or a stop request wakes the watcher
        async with self._hub.subscribe(generation.message_id, _ends_or_stops) as stop_requests:
            watcher = asyncio.create_task(self._watch_for_stop(generation, stop_requests))
            try:
                return await self._stream_until_stopped(generation)
            finally:
                watcher.cancel()

    async def _stream_until_stopped(self, generation: Generation) -> Ending | None:
        """The model's stream to its end, or until a stop; None when the lease was lost."""
        streaming = asyncio.create_task(self._stream(generation))
        stop = asyncio.create_task(generation.stopped())
        try:
            await asyncio.wait((streaming, stop), return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop.cancel()
            if not streaming.done():
                streaming.cancel()
                # the model's response closes in its own finally; wait() does not raise the child's cancellation
                await asyncio.wait((streaming,))
        if not streaming.cancelled():
            return streaming.result()
        assert generation.stop_reason is not None
        return STOP_ENDINGS.get(generation.stop_reason)

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
                        return Ending(Status.ERROR, f"the reply passed the limit of {limit} characters", "length")
                    bad = first_unstorable(text)
                    if bad is not None:
                        self._accept(generation, text[:bad])
                        return Ending(Status.ERROR, f"the model sent a character that cannot be stored ({text[bad]!r})")
                    self._accept(generation, text)
                finish_reason = piece.finish_reason or finish_reason
                usage = piece.usage or usage
        except ModelFailure as failure:
            log.warning("message %s: model failed: %s", generation.message_id, failure)
            return Ending(Status.ERROR, str(failure), finish_reason, usage)
        return Ending(Status.COMPLETE, "", finish_reason or "stop", usage)

    def _accept(self, generation: Generation, text: str) -> None:
        if text:
            generation.append(text)
            self._batcher.add(generation.message_id, text)

    async def _watch_for_stop(self, generation: Generation, subscription: Subscription) -> None:
        generation.request_stop(await self._stop_request(generation, subscription))

    async def _stop_request(self, generation: Generation, subscription: Subscription) -> StopReason:
        """A stop request, or the message ended by another process, heard wherever it was made.

        A notice is only a reason to look: what Postgres says decides, so a forged one stops nothing.
        """
        while True:
            await subscription.wait()
            try:
                ended, stop_requested = await queries.stop_state(self._pool, generation.message_id)
            except DATABASE_ERRORS:
                continue
            except Exception:
                log.exception("message %s: reading its stop state failed", generation.message_id)
                continue
            if ended:
                return StopReason.LEASE_LOST
            if stop_requested:
                return StopReason.CANCELLED

    async def _finish(self, generation: Generation, ending: Ending) -> None:
        """Write the end, retrying through a database outage; the text is never dropped."""
        backoff = Backoff()
        while True:
            try:
                record = await finish_reply(self._writer, generation.message_id, self.owner, generation.text, ending)
                break
            except DATABASE_ERRORS as exc:
                log.warning("message %s: saving the end failed (%s); retrying", generation.message_id, exc)
                await backoff.wait()
        if record is None:
            log.warning("message %s: lease lost before the end was saved", generation.message_id)
            generation.abandon()
            return
        log.info("message %s: ended %s, %d characters", generation.message_id, record.status, len(record.content))
        generation.end(record)

    async def drain(self, grace: float) -> None:
        """Shutdown: refuse new replies, give running ones `grace` seconds, then end the rest as ERROR."""
        self.accepting = False
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(grace):
                await self._no_admitted.wait()
        self._drained_admissions = True
        tasks = set(self._tasks)
        if not tasks:
            return
        log.info("waiting up to %.1fs for %d running generations", grace, len(tasks))
        _done, pending = await asyncio.wait(tasks, timeout=grace)
        for generation in list(self._running.values()):
            generation.request_stop(StopReason.SHUTDOWN)
        if pending:
            await asyncio.wait(pending, timeout=max(grace, 5.0))
