"""Messages that cross the bus between nodes and the control plane.

Every message is a msgspec Struct with a ``v`` (protocol version) field. Decoding
ignores unknown fields, so a newer peer can add fields without breaking an older
one. Subjects are versioned too (``wp.v1.…``); the functions below are the only
place that spells them.
"""

from __future__ import annotations

from typing import Literal, TypeVar

import msgspec

PROTOCOL_VERSION = 1

# --- subjects ------------------------------------------------------------------

JOIN = "wp.v1.join"
HEARTBEAT_ALL = "wp.v1.hb.*"
CURTAIL = "wp.v1.ctl.curtail"  # operator/grid signal to every control-plane replica
REPUTATION = "wp.v1.ctl.reputation"  # audit verdicts, from the leader to every replica


def heartbeat_subject(node_id: str) -> str:
    return f"wp.v1.hb.{node_id}"


def infer_subject(node_id: str) -> str:
    return f"wp.v1.node.{node_id}.infer"


def cancel_subject(node_id: str) -> str:
    return f"wp.v1.node.{node_id}.cancel"


# --- shared shapes -----------------------------------------------------------


class Message(msgspec.Struct, kw_only=True, forbid_unknown_fields=False):
    v: int = PROTOCOL_VERSION


class Gpu(msgspec.Struct, kw_only=True):
    index: int
    name: str
    memory_total: int  # bytes
    memory_used: int = 0
    power_watts: float | None = None


class Hardware(msgspec.Struct, kw_only=True):
    cpu_count: int
    memory_total: int  # bytes
    memory_available: int  # bytes
    gpus: list[Gpu] = []

    @property
    def accelerator_memory(self) -> int:
        """Memory a model may occupy: GPU memory if there are GPUs, else RAM."""
        if self.gpus:
            return sum(g.memory_total - g.memory_used for g in self.gpus)
        return self.memory_available


InstanceState = Literal["scheduled", "loading", "ready", "failed", "stopped"]


class InstanceSpec(msgspec.Struct, kw_only=True):
    """What the control plane wants a node to run."""

    instance_id: str
    model_id: str
    engine: str  # "llamacpp" | "synthetic"
    source: str  # model spec: shipped name, local path or HF repo id
    context_length: int = 2048
    args: dict[str, str] = {}


class InstanceStatus(msgspec.Struct, kw_only=True):
    """What a node reports about one instance it runs."""

    instance_id: str
    model_id: str
    state: InstanceState
    in_flight: int = 0
    restarts: int = 0
    context_length: int = 0
    error: str | None = None


# --- join ----------------------------------------------------------------------


class JoinRequest(Message, kw_only=True):
    name: str
    hardware: Hardware
    token: str | None = None  # one-time join token (secret part), for a first join
    node_id: str | None = None  # set when a node that joined before comes back
    public_key: str | None = None  # the node's NATS nkey; its seed stays on the node
    engines: list[str] = []  # engines this node may run; empty means any


class JoinReply(Message, kw_only=True):
    accepted: bool
    node_id: str | None = None
    heartbeat_interval_s: float = 2.0
    error: str | None = None
    site: str | None = None
    # NATS user JWT for the node's public key, allowing only its own subjects.
    user_jwt: str | None = None


# --- heartbeat -----------------------------------------------------------------


class Heartbeat(Message, kw_only=True):
    node_id: str
    seq: int
    name: str = ""
    engines: list[str] = []  # engines this node may run; empty means any
    hardware: Hardware
    instances: list[InstanceStatus] = []
    in_flight: int = 0
    power_state: str = "on"  # "on" | "draining" | "curtailed"


class DesiredState(Message, kw_only=True):
    """The reply to a heartbeat: the whole desired state (level-triggered)."""

    node_id: str
    seq: int = 0  # the heartbeat this answers; a node ignores answers older than applied
    instances: list[InstanceSpec] = []
    known: bool = True  # False: the control plane does not know this node; rejoin
    # "curtailed": the site must shed its load: take no new work, move in-flight streams
    # to other sites (the gateway continues them), stop the engines. "on": run normally.
    power: str = "on"
    reason: str | None = None


# --- inference -----------------------------------------------------------------

RequestKind = Literal["chat", "completion"]

# OpenAI sampling parameters the gateway forwards and engines receive unchanged.
SAMPLING_PARAMS = ("temperature", "top_p", "stop", "seed", "presence_penalty",
                   "frequency_penalty")


class Continuation(msgspec.Struct, kw_only=True):
    """What the client already received when a stream moves to another node."""

    text: str
    tokens: int


class InferRequest(Message, kw_only=True):
    request_id: str
    instance_id: str
    kind: RequestKind
    # The validated OpenAI request body (messages or prompt, sampling params).
    body: dict[str, object]
    # Set when this request continues a stream another node started: generate what
    # comes after ``text``, at most max_tokens - ``tokens`` more tokens.
    continuation: Continuation | None = None


ChunkKind = Literal["ack", "delta", "final", "error"]


class Usage(msgspec.Struct, kw_only=True):
    prompt_tokens: int
    completion_tokens: int

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


class InferChunk(Message, kw_only=True):
    """One piece of a streamed answer. ``seq`` counts from 0 per request.

    ack   -- the node accepted the request (sent before the engine is called)
    delta -- generated text
    final -- end of stream: finish_reason and usage (of this node's call; for a
             continuation the prompt count is the original prompt's)
    error -- the request failed; ``status`` and ``error_*`` describe it, and
             ``retriable`` says whether another node may try it
    """

    request_id: str
    seq: int
    kind: ChunkKind
    text: str = ""
    tokens: int = 0  # delta: generated tokens this text holds
    finish_reason: str | None = None
    usage: Usage | None = None
    status: int = 200
    error_message: str | None = None
    error_type: str | None = None
    error_code: str | None = None
    error_param: str | None = None
    retriable: bool = False


class CancelRequest(Message, kw_only=True):
    request_id: str
    reason: str = "client disconnected"


_encoder = msgspec.json.Encoder()


def encode(message: msgspec.Struct) -> bytes:
    return _encoder.encode(message)


T = TypeVar("T")


def decode(data: bytes, type_: type[T]) -> T:
    return msgspec.json.decode(data, type=type_)


class CurtailSignal(Message, kw_only=True):
    """A site must shed its load within ``within_s`` (active) or may run again."""

    site_id: str
    site_name: str
    active: bool
    within_s: float = 60.0
    reason: str = "curtailment signal"


class ReputationUpdate(Message, kw_only=True):
    node_id: str
    score: float
    passes: int
    fails: int
