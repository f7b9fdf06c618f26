"""wattpool.gateway.validation: what the gateway accepts and forwards."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest

from wattpool.gateway.errors import APIError
from wattpool.gateway.validation import parse_json_object, validate_chat, validate_completion

Validator = Callable[[dict[str, Any]], tuple[str, bool, bool, dict[str, Any]]]


def chat(**extra: Any) -> dict[str, Any]:
    return {"model": "m", "messages": [{"role": "user", "content": "hi"}], **extra}


def completion(**extra: Any) -> dict[str, Any]:
    return {"model": "m", "prompt": "Once upon", **extra}


def rejected(validate: Validator, body: dict[str, Any]) -> APIError:
    with pytest.raises(APIError) as info:
        validate(body)
    err = info.value
    assert err.status == 400
    assert err.type == "invalid_request_error"
    assert err.message
    return err


def without(body: dict[str, Any], key: str) -> dict[str, Any]:
    return {k: v for k, v in body.items() if k != key}


# --- rejections ------------------------------------------------------------------


def test_missing_messages() -> None:
    err = rejected(validate_chat, without(chat(), "messages"))
    assert (err.param, err.code) == ("messages", "missing_required_parameter")


def test_missing_prompt() -> None:
    err = rejected(validate_completion, without(completion(), "prompt"))
    assert (err.param, err.code) == ("prompt", "missing_required_parameter")


@pytest.mark.parametrize("validate, body", [(validate_chat, chat()),
                                            (validate_completion, completion())])
def test_missing_model(validate: Validator, body: dict[str, Any]) -> None:
    err = rejected(validate, without(body, "model"))
    assert (err.param, err.code) == ("model", "missing_required_parameter")


@pytest.mark.parametrize("model", ["", 5, ["m"]])
def test_bad_model(model: Any) -> None:
    err = rejected(validate_chat, chat(model=model))
    assert (err.param, err.code) == ("model", "invalid_type")


@pytest.mark.parametrize(
    ("value", "code"),
    [
        (0, "integer_below_min_value"),
        (-1, "integer_below_min_value"),
        ("5", "invalid_type"),
        (True, "invalid_type"),
        (2.5, "invalid_type"),
    ],
)
@pytest.mark.parametrize("name", ["max_tokens", "max_completion_tokens"])
@pytest.mark.parametrize("validate, make", [(validate_chat, chat),
                                            (validate_completion, completion)])
def test_bad_max_tokens(validate: Validator, make: Callable[..., dict[str, Any]], name: str,
                        value: Any, code: str) -> None:
    err = rejected(validate, make(**{name: value}))
    assert (err.param, err.code) == (name, code)


@pytest.mark.parametrize(
    ("name", "value", "code"),
    [
        ("temperature", 2.5, "invalid_value"),
        ("temperature", -0.1, "invalid_value"),
        ("temperature", "hot", "invalid_type"),
        ("temperature", True, "invalid_type"),
        ("top_p", 1.5, "invalid_value"),
        ("top_p", -0.5, "invalid_value"),
        ("presence_penalty", 2.1, "invalid_value"),
        ("frequency_penalty", -3, "invalid_value"),
    ],
)
def test_bad_sampling_numbers(name: str, value: Any, code: str) -> None:
    err = rejected(validate_chat, chat(**{name: value}))
    assert (err.param, err.code) == (name, code)


@pytest.mark.parametrize(
    ("name", "value"),
    [("temperature", 0), ("temperature", 2), ("temperature", 0.7), ("top_p", 0), ("top_p", 1),
     ("presence_penalty", -2), ("frequency_penalty", 2)],
)
def test_sampling_number_bounds_are_inclusive(name: str, value: float) -> None:
    _, _, _, forwarded = validate_chat(chat(**{name: value}))
    assert forwarded[name] == value


def test_n_above_one() -> None:
    err = rejected(validate_chat, chat(n=2))
    assert (err.param, err.code) == ("n", "unsupported_value")


def test_n_equal_one_is_accepted_and_not_forwarded() -> None:
    _, _, _, forwarded = validate_chat(chat(n=1))
    assert "n" not in forwarded


def test_stop_with_five_entries() -> None:
    err = rejected(validate_chat, chat(stop=["a", "b", "c", "d", "e"]))
    assert err.param == "stop"


def test_stop_of_wrong_type() -> None:
    assert rejected(validate_chat, chat(stop=5)).param == "stop"
    assert rejected(validate_completion, completion(stop=["ok", 3])).param == "stop"


def test_stream_options_without_stream() -> None:
    err = rejected(validate_chat, chat(stream_options={"include_usage": True}))
    assert err.param == "stream_options"
    err = rejected(validate_chat, chat(stream=False, stream_options={"include_usage": True}))
    assert err.param == "stream_options"


def test_stream_options_must_be_an_object() -> None:
    err = rejected(validate_chat, chat(stream=True, stream_options="yes"))
    assert err.param == "stream_options"


def test_stream_must_be_boolean() -> None:
    err = rejected(validate_chat, chat(stream="true"))
    assert (err.param, err.code) == ("stream", "invalid_type")


@pytest.mark.parametrize("role", ["bot", "", None, "System"])
def test_bad_role(role: Any) -> None:
    body = chat(messages=[{"role": "user", "content": "ok"}, {"role": role, "content": "x"}])
    err = rejected(validate_chat, body)
    assert err.param == "messages[1].role"


@pytest.mark.parametrize("messages", [[], "hi", {"role": "user"}])
def test_messages_must_be_a_non_empty_array(messages: Any) -> None:
    assert rejected(validate_chat, chat(messages=messages)).param == "messages"


def test_message_must_be_an_object() -> None:
    assert rejected(validate_chat, chat(messages=["hi"])).param == "messages[0]"


def test_message_content_required_except_for_assistant() -> None:
    err = rejected(validate_chat, chat(messages=[{"role": "user"}]))
    assert (err.param, err.code) == ("messages[0].content", "missing_required_parameter")
    body = chat(messages=[{"role": "user", "content": "a"}, {"role": "assistant"},
                          {"role": "user", "content": "b"}])
    validate_chat(body)  # accepted


def test_non_text_content_parts_are_rejected() -> None:
    body = chat(messages=[{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "http://x"}}]}])
    err = rejected(validate_chat, body)
    assert (err.param, err.code) == ("messages[0].content", "unsupported_content")


def test_content_of_wrong_type() -> None:
    err = rejected(validate_chat, chat(messages=[{"role": "user", "content": 42}]))
    assert err.param == "messages[0].content"


@pytest.mark.parametrize("extra", [
    {"tools": [{"type": "function", "function": {"name": "f"}}]},
    {"functions": [{"name": "f"}]},
])
def test_tools_are_rejected(extra: dict[str, Any]) -> None:
    err = rejected(validate_chat, chat(**extra))
    assert (err.param, err.code) == ("tools", "unsupported_parameter")


def test_prompt_lists() -> None:
    _, _, _, forwarded = validate_completion(completion(prompt=["only one"]))
    assert forwarded["prompt"] == "only one"
    err = rejected(validate_completion, completion(prompt=["a", "b"]))
    assert (err.param, err.code) == ("prompt", "unsupported_value")
    err = rejected(validate_completion, completion(prompt=[1, 2, 3]))
    assert (err.param, err.code) == ("prompt", "unsupported_value")
    err = rejected(validate_completion, completion(prompt=7))
    assert (err.param, err.code) == ("prompt", "invalid_type")


# --- parse_json_object -------------------------------------------------------------


@pytest.mark.parametrize("raw", [
    b"{not json", b"", b'{"a": 1', b"\xff\xfe\x00garbage",
    # Not JSON by RFC 8259, though Python's json module reads them.
    b'{"temperature": NaN}', b'{"top_p": Infinity}', b'{"max_tokens": 1e999}',
    b'{"prompt": "\\ud800"}',
])
def test_invalid_json(raw: bytes) -> None:
    with pytest.raises(APIError) as info:
        parse_json_object(raw)
    assert info.value.status == 400
    assert info.value.code == "invalid_json"
    assert "JSON" in info.value.message


@pytest.mark.parametrize("raw", [b"[]", b'[{"model": "m"}]', b'"text"', b"42", b"null"])
def test_json_that_is_not_an_object(raw: bytes) -> None:
    with pytest.raises(APIError) as info:
        parse_json_object(raw)
    assert info.value.status == 400
    assert info.value.code == "invalid_json"


def test_json_object_is_returned() -> None:
    body = chat(temperature=0.2)
    assert parse_json_object(json.dumps(body).encode()) == body


# --- valid bodies -------------------------------------------------------------------


def test_valid_chat_forwards_only_known_keys() -> None:
    body = chat(
        messages=[
            {"role": "system", "content": "Be brief.", "name": "boss"},
            {"role": "user", "content": [{"type": "text", "text": "hi"}]},
        ],
        max_tokens=16,
        max_completion_tokens=12,
        temperature=0.5,
        top_p=0.9,
        stop=["\n", "END"],
        seed=7,
        presence_penalty=0.1,
        frequency_penalty=-0.2,
        stream=True,
        stream_options={"include_usage": True},
        user="someone",
        logit_bias={"1": 2},
        n=1,
        tools=[],
        metadata={"x": "y"},
    )
    model, stream, include_usage, forwarded = validate_chat(body)
    assert (model, stream, include_usage) == ("m", True, True)
    assert forwarded == {
        "max_tokens": 16,
        "max_completion_tokens": 12,
        "temperature": 0.5,
        "top_p": 0.9,
        "stop": ["\n", "END"],
        "seed": 7,
        "presence_penalty": 0.1,
        "frequency_penalty": -0.2,
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": [{"type": "text", "text": "hi"}]},
        ],
    }


def test_minimal_chat() -> None:
    model, stream, include_usage, forwarded = validate_chat(chat())
    assert (model, stream, include_usage) == ("m", False, False)
    assert forwarded == {"messages": [{"role": "user", "content": "hi"}]}


def test_null_values_are_not_forwarded() -> None:
    _, stream, _, forwarded = validate_chat(chat(temperature=None, max_tokens=None, stop=None,
                                                 stream=None))
    assert stream is False
    assert forwarded == {"messages": [{"role": "user", "content": "hi"}]}


def test_stream_without_usage() -> None:
    _, stream, include_usage, _ = validate_chat(chat(stream=True))
    assert (stream, include_usage) == (True, False)
    _, stream, include_usage, _ = validate_chat(chat(stream=True, stream_options={}))
    assert (stream, include_usage) == (True, False)


def test_valid_completion_forwards_only_known_keys() -> None:
    body = completion(max_tokens=3, stop="\n", temperature=0, echo=True, best_of=2,
                      suffix="!", stream=True)
    model, stream, include_usage, forwarded = validate_completion(body)
    assert (model, stream, include_usage) == ("m", True, False)
    assert forwarded == {"max_tokens": 3, "stop": "\n", "temperature": 0, "prompt": "Once upon"}


def test_validation_does_not_change_the_body() -> None:
    body = chat(max_tokens=4, user="u")
    snapshot = json.loads(json.dumps(body))
    validate_chat(body)
    assert body == snapshot
