"""The messages between a worker's supervisor and its runner processes, and their framing.

Each message is one class; `encode` and `FrameReader` are the one encode/decode pair both
sides use. A frame is a two-byte magic, a four-byte length and a JSON object naming its type.
The supervisor reads frames without ever blocking (`FrameReader.feed` takes whatever bytes have
arrived); a frame with the wrong magic, over `max_frame` bytes, not valid JSON, of an unknown
type, or left half-written for `STALL_SECONDS` is a protocol error, which fails the attempt and
replaces the runner: a flow that writes to the runner's pipe can never stall the supervisor.

Times are `time.monotonic()` values: the clock is shared by every process on the host, and the
supervisor turns them into database time (the runner does not know the database's clock).
"""

from __future__ import annotations

import json
import struct
import time
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar

MAGIC = b"\xdf\x01"
HEADER = struct.Struct(">2sI")
STALL_SECONDS = 5.0


class ProtocolError(Exception):
    """A runner sent something that is not a well-formed message."""


@dataclass(frozen=True)
class Message:
    type: ClassVar[str]


@dataclass(frozen=True)
class Job:
    """Everything a runner needs to run one attempt."""

    job_id: int
    run_id: int
    data_flow_id: int
    data_flow_name: str
    class_path: str
    configuration: dict[str, Any]
    params: dict[str, Any]
    attempt: int
    max_attempts: int
    timeout_seconds: int | None = None
    # ISO 8601 in UTC, or None for a plain trigger.
    scheduled_for: str | None = None
    triggered_by: str = "trigger"


# -- supervisor to runner ------------------------------------------------------------------------


@dataclass(frozen=True)
class Run(Message):
    """Run this attempt; stop it by `fence` (monotonic) unless a `Renew` moves that on."""

    type: ClassVar[str] = "run"
    job: Job
    fence: float


@dataclass(frozen=True)
class Renew(Message):
    """The leases of everything this runner holds were renewed: the new stop-by time."""

    type: ClassVar[str] = "renew"
    fence: float


@dataclass(frozen=True)
class Withdraw(Message):
    """Give back these attempts if they have not started (they were queued behind another)."""

    type: ClassVar[str] = "withdraw"
    run_ids: list[int]


# -- runner to supervisor ------------------------------------------------------------------------


@dataclass(frozen=True)
class Ready(Message):
    """Imports done; jobs may come."""

    type: ClassVar[str] = "ready"


@dataclass(frozen=True)
class Started(Message):
    """`run()` of this attempt begins now."""

    type: ClassVar[str] = "started"
    run_id: int
    at: float


@dataclass(frozen=True)
class Log(Message):
    """Lines the attempt wrote: [seq, at, stream, text, part] each (part: `head` or `tail`); tail
    lines before `drop_tail_before` fell out of the kept window; totals of what is kept and cut."""

    type: ClassVar[str] = "log"
    run_id: int
    lines: list[list[Any]]
    drop_tail_before: int | None = None
    log_bytes: int = 0
    dropped_bytes: int = 0


@dataclass(frozen=True)
class Ended(Message):
    """How the attempt ended. `leftovers`: processes it started are still running."""

    type: ClassVar[str] = "ended"
    run_id: int
    status: str
    at: float
    result: dict[str, Any] | None = None
    error_message: str | None = None
    error_backtrace: str | None = None
    retry: str = "normal"
    leftovers: bool = False
    cpu_seconds: float | None = None
    max_rss_kb: int | None = None


@dataclass(frozen=True)
class Withdrawn(Message):
    """These attempts were queued here and will not be started by this runner: withdrawn as
    asked, or found with their fence already passed when their turn came."""

    type: ClassVar[str] = "withdrawn"
    run_ids: list[int]


@dataclass(frozen=True)
class Fenced(Message):
    """Sent just before the runner kills its own process group: the attempt's lease would have
    run out unrenewed (`lease`), or its timeout passed (`timeout`)."""

    type: ClassVar[str] = "fenced"
    run_id: int
    reason: str
    at: float
    detail: str = ""


MESSAGES: dict[str, type[Message]] = {
    cls.type: cls for cls in (Run, Renew, Withdraw, Ready, Started, Log, Ended, Withdrawn, Fenced)
}


def _plain(message: Message | Job) -> dict[str, Any]:
    """A message's fields as JSON-ready values (a shallow walk: `asdict` deep-copies everything)."""
    return {
        item.name: _plain(value) if isinstance(value := getattr(message, item.name), Job) else value
        for item in fields(message)
    }


def encode(message: Message) -> bytes:
    """One frame holding `message`."""
    body = json.dumps({"type": message.type, **_plain(message)}, separators=(",", ":"), allow_nan=False).encode()
    return HEADER.pack(MAGIC, len(body)) + body


def _decode(body: bytes) -> Message:
    try:
        data = json.loads(body)
        cls = MESSAGES[data.pop("type")]
        if cls is Run:
            data["job"] = Job(**data["job"])
        names = {item.name for item in fields(cls)}
        return cls(**{key: value for key, value in data.items() if key in names})
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ProtocolError(f"malformed message: {type(exc).__name__}") from None


@dataclass
class FrameReader:
    """Turns bytes as they arrive into messages, never waiting for more."""

    max_frame: int
    _buffer: bytearray = field(default_factory=bytearray)
    _partial_since: float | None = None

    def feed(self, data: bytes, now: float | None = None) -> list[Message]:
        self._buffer += data
        messages = []
        while len(self._buffer) >= HEADER.size:
            magic, length = HEADER.unpack_from(self._buffer)
            if magic != MAGIC:
                raise ProtocolError("a frame does not start with the protocol's magic bytes")
            if length > self.max_frame:
                raise ProtocolError(f"a frame of {length} bytes is over the limit of {self.max_frame}")
            end = HEADER.size + length
            if len(self._buffer) < end:
                break
            messages.append(_decode(bytes(self._buffer[HEADER.size : end])))
            del self._buffer[:end]
        if not self._buffer:
            self._partial_since = None
        elif messages or self._partial_since is None:
            self._partial_since = time.monotonic() if now is None else now
        return messages

    def stalled(self, now: float) -> bool:
        """A frame was begun and has not been completed for `STALL_SECONDS`."""
        return self._partial_since is not None and now - self._partial_since > STALL_SECONDS
