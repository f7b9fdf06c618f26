"""wattpool.protocol: the messages on the bus, their encoding and the subjects."""

from __future__ import annotations

import json

import msgspec
import pytest

from wattpool import protocol
from wattpool.bus.base import subject_matches
from wattpool.protocol import (
    HEARTBEAT_ALL,
    JOIN,
    PROTOCOL_VERSION,
    CancelRequest,
    CurtailSignal,
    DesiredState,
    Gpu,
    Hardware,
    Heartbeat,
    InferChunk,
    InferRequest,
    InstanceSpec,
    InstanceStatus,
    JoinReply,
    JoinRequest,
    Message,
    ReputationUpdate,
    Usage,
    cancel_subject,
    decode,
    encode,
    heartbeat_subject,
    infer_subject,
)

HARDWARE = Hardware(
    cpu_count=8,
    memory_total=32 * 2**30,
    memory_available=20 * 2**30,
    gpus=[
        Gpu(index=0, name="H200", memory_total=141 * 2**30, memory_used=3 * 2**30,
            power_watts=250.0),
        Gpu(index=1, name="H200", memory_total=141 * 2**30),
    ],
)

MESSAGES: list[Message] = [
    CurtailSignal(site_id="site_1", site_name="texas", active=True, within_s=30.0,
                  reason="grid emergency"),
    CurtailSignal(site_id="site_1", site_name="texas", active=False),
    ReputationUpdate(node_id="node-1", score=0.25, passes=3, fails=2),
    JoinRequest(name="box-1", hardware=HARDWARE, token="secret", node_id="node-9"),
    JoinRequest(name="box-2", hardware=Hardware(cpu_count=2, memory_total=4, memory_available=3)),
    JoinReply(accepted=True, node_id="node-1", heartbeat_interval_s=0.5),
    JoinReply(accepted=False, error="bad token"),
    Heartbeat(
        node_id="node-1",
        seq=42,
        hardware=HARDWARE,
        instances=[
            InstanceStatus(instance_id="i1", model_id="m1", state="ready", in_flight=3,
                           restarts=1, context_length=2048),
            InstanceStatus(instance_id="i2", model_id="m2", state="failed",
                           error="out of memory"),
        ],
        in_flight=3,
        power_state="idle",
    ),
    DesiredState(
        node_id="node-1",
        instances=[
            InstanceSpec(instance_id="i1", model_id="m1", engine="llamacpp",
                         source="org/repo:file.gguf", context_length=8192,
                         args={"n_gpu_layers": "99"}),
            InstanceSpec(instance_id="i2", model_id="m2", engine="synthetic", source="x"),
        ],
    ),
    DesiredState(node_id="ghost", known=False),
    InferRequest(
        request_id="req-1", instance_id="i1", kind="chat",
        body={"messages": [{"role": "user", "content": "hi"}], "max_tokens": 5,
              "temperature": 0.5, "stop": ["\n"]},
    ),
    InferRequest(request_id="req-2", instance_id="i1", kind="completion",
                 body={"prompt": "Once", "seed": 1}),
    InferChunk(request_id="req-1", seq=0, kind="ack"),
    InferChunk(request_id="req-1", seq=1, kind="delta", text="Hel lo ünïcode ✓"),
    InferChunk(request_id="req-1", seq=2, kind="final", finish_reason="length",
               usage=Usage(prompt_tokens=7, completion_tokens=5)),
    InferChunk(request_id="req-1", seq=3, kind="error", status=503,
               error_message="instance is loading", error_type="server_error",
               error_code="unavailable", error_param="model", retriable=True),
    CancelRequest(request_id="req-1"),
    CancelRequest(request_id="req-2", reason="deadline"),
]


def _ids(message: Message) -> str:
    return type(message).__name__


@pytest.mark.parametrize("message", MESSAGES, ids=_ids)
def test_round_trip(message: Message) -> None:
    data = encode(message)
    assert isinstance(data, bytes)
    again = decode(data, type(message))
    assert again == message
    assert type(again) is type(message)
    # Encoding is stable: the decoded message encodes to the same bytes.
    assert encode(again) == data


def test_every_message_type_is_covered() -> None:
    kinds = {
        obj for obj in vars(protocol).values()
        if isinstance(obj, type) and issubclass(obj, Message) and obj is not Message
    }
    assert kinds == {type(m) for m in MESSAGES}


@pytest.mark.parametrize("message", MESSAGES, ids=_ids)
def test_version_field_is_present(message: Message) -> None:
    obj = json.loads(encode(message))
    assert obj["v"] == PROTOCOL_VERSION == 1


@pytest.mark.parametrize("message", MESSAGES, ids=_ids)
def test_unknown_fields_are_ignored(message: Message) -> None:
    obj = json.loads(encode(message))
    obj["added_in_v2"] = {"nested": [1, 2, 3]}
    obj["another"] = "field"
    decoded = decode(json.dumps(obj).encode(), type(message))
    assert decoded == message


def test_unknown_fields_in_nested_structs_are_ignored() -> None:
    beat = next(m for m in MESSAGES if isinstance(m, Heartbeat))
    obj = json.loads(encode(beat))
    obj["hardware"]["npu_count"] = 4
    obj["hardware"]["gpus"][0]["temperature_c"] = 71
    obj["instances"][0]["queue_depth"] = 9
    assert decode(json.dumps(obj).encode(), Heartbeat) == beat


def test_newer_version_number_still_decodes() -> None:
    obj = json.loads(encode(CancelRequest(request_id="r")))
    obj["v"] = 2
    decoded = decode(json.dumps(obj).encode(), CancelRequest)
    assert decoded.v == 2
    assert decoded.request_id == "r"


def test_missing_version_defaults_to_current() -> None:
    decoded = decode(b'{"request_id": "r"}', CancelRequest)
    assert decoded.v == PROTOCOL_VERSION
    assert decoded.reason == "client disconnected"


def test_missing_required_field_is_rejected() -> None:
    with pytest.raises(msgspec.ValidationError, match="request_id"):
        decode(b'{"v": 1, "seq": 0, "kind": "ack"}', InferChunk)


def test_wrong_literal_is_rejected() -> None:
    obj = json.loads(encode(InferChunk(request_id="r", seq=0, kind="ack")))
    obj["kind"] = "bogus"
    with pytest.raises(msgspec.ValidationError):
        decode(json.dumps(obj).encode(), InferChunk)


def test_malformed_json_is_rejected() -> None:
    with pytest.raises(msgspec.DecodeError):
        decode(b"{not json", Heartbeat)


def test_mutable_defaults_are_not_shared() -> None:
    a = DesiredState(node_id="a")
    b = DesiredState(node_id="b")
    a.instances.append(InstanceSpec(instance_id="i", model_id="m", engine="e", source="s"))
    assert b.instances == []


def test_hardware_accelerator_memory() -> None:
    assert HARDWARE.accelerator_memory == (141 * 2**30 - 3 * 2**30) + 141 * 2**30
    cpu_only = Hardware(cpu_count=2, memory_total=100, memory_available=60)
    assert cpu_only.accelerator_memory == 60


def test_usage_total_tokens() -> None:
    assert Usage(prompt_tokens=7, completion_tokens=5).total_tokens == 12


# --- subjects ------------------------------------------------------------------


def test_subject_helpers() -> None:
    assert JOIN == "wp.v1.join"
    assert heartbeat_subject("n1") == "wp.v1.hb.n1"
    assert infer_subject("n1") == "wp.v1.node.n1.infer"
    assert cancel_subject("n1") == "wp.v1.node.n1.cancel"


def test_subjects_are_versioned_and_distinct_per_node() -> None:
    subjects = [JOIN, HEARTBEAT_ALL, heartbeat_subject("a"), infer_subject("a"),
                cancel_subject("a"), infer_subject("b"), cancel_subject("b")]
    assert all(s.startswith("wp.v1.") for s in subjects)
    assert len(set(subjects)) == len(subjects)


def test_heartbeat_wildcard_matches_every_node_heartbeat_only() -> None:
    assert subject_matches(HEARTBEAT_ALL, heartbeat_subject("node-1"))
    assert subject_matches(HEARTBEAT_ALL, heartbeat_subject("abc123"))
    assert not subject_matches(HEARTBEAT_ALL, infer_subject("node-1"))
    assert not subject_matches(HEARTBEAT_ALL, cancel_subject("node-1"))
    assert not subject_matches(HEARTBEAT_ALL, JOIN)
