"""Checks an OpenAI request body and returns the part the pool forwards.

Messages follow OpenAI's own wording where a client may match on them.
"""

from __future__ import annotations

from typing import Any

import msgspec

from wattpool.gateway.errors import APIError, invalid
from wattpool.protocol import SAMPLING_PARAMS

ROLES = {"system", "developer", "user", "assistant", "tool"}
FORWARDED = ("max_tokens", "max_completion_tokens", *SAMPLING_PARAMS)


# msgspec, not json.loads: one C call (the stdlib's Python layers cost ~30 us a request
# in the pool under load). It is also strict where json.loads is not: NaN, Infinity,
# numbers out of a float's range and lone surrogates are refused as invalid JSON.
_decode_json = msgspec.json.Decoder().decode


def parse_json_object(raw: bytes) -> dict[str, Any]:
    try:
        body = _decode_json(raw)
    except msgspec.DecodeError as exc:  # includes ValidationError (1e999)
        raise APIError(
            400,
            f"We could not parse the JSON body of your request ({exc}). The OpenAI API "
            "expects a JSON payload.",
            code="invalid_json",
        ) from None
    if not isinstance(body, dict):
        raise invalid("The request body must be a JSON object.", code="invalid_json")
    return body


def _number(body: dict[str, Any], name: str, low: float, high: float) -> None:
    value = body.get(name)
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise invalid(f"'{name}' must be a number, got {value!r}.", param=name,
                      code="invalid_type")
    if not low <= value <= high:
        raise invalid(
            f"{value} is not a valid value for '{name}': it must be between {low} and {high}.",
            param=name, code="invalid_value",
        )


def _positive_int(body: dict[str, Any], name: str) -> None:
    value = body.get(name)
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int):
        raise invalid(f"'{name}' must be an integer, got {value!r}.", param=name,
                      code="invalid_type")
    if value < 1:
        raise invalid(
            f"Invalid '{name}': integer below minimum value. Expected a value >= 1, but got "
            f"{value} instead.", param=name, code="integer_below_min_value",
        )


def _common(body: dict[str, Any]) -> tuple[str, bool, bool]:
    model = body.get("model")
    if model is None:
        raise invalid("you must provide a model parameter", param="model",
                      code="missing_required_parameter")
    if not isinstance(model, str) or not model:
        raise invalid("'model' must be a non-empty string.", param="model", code="invalid_type")
    _positive_int(body, "max_tokens")
    _positive_int(body, "max_completion_tokens")
    _number(body, "temperature", 0, 2)
    _number(body, "top_p", 0, 1)
    _number(body, "presence_penalty", -2, 2)
    _number(body, "frequency_penalty", -2, 2)
    n = body.get("n")
    if n is not None and n != 1:
        raise invalid("Only n=1 is supported.", param="n", code="unsupported_value")
    stop = body.get("stop")
    if stop is not None:
        stops = [stop] if isinstance(stop, str) else stop
        if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
            raise invalid("'stop' must be a string or a list of strings.", param="stop")
        if len(stops) > 4:
            raise invalid("'stop' takes at most 4 sequences.", param="stop")
    stream = body.get("stream", False)
    if stream is None:
        stream = False
    if not isinstance(stream, bool):
        raise invalid("'stream' must be a boolean.", param="stream", code="invalid_type")
    options = body.get("stream_options")
    include_usage = False
    if options is not None:
        if not stream:
            raise invalid("The 'stream_options' parameter is only allowed when 'stream' is "
                          "enabled.", param="stream_options")
        if not isinstance(options, dict):
            raise invalid("'stream_options' must be an object.", param="stream_options")
        include_usage = bool(options.get("include_usage", False))
    return model, stream, include_usage


def validate_chat(body: dict[str, Any]) -> tuple[str, bool, bool, dict[str, Any]]:
    """(model, stream, include_usage, forwarded body) of a chat completion request."""
    messages = body.get("messages")
    if messages is None:
        raise invalid("Missing required parameter: 'messages'.", param="messages",
                      code="missing_required_parameter")
    model, stream, include_usage = _common(body)
    if not isinstance(messages, list) or not messages:
        raise invalid("'messages' must be a non-empty array.", param="messages")
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise invalid(f"'messages[{i}]' must be an object.", param=f"messages[{i}]")
        role = message.get("role")
        if role not in ROLES:
            raise invalid(
                f"Invalid value for 'messages[{i}].role': {role!r}. Supported values are: "
                + ", ".join(sorted(ROLES)) + ".",
                param=f"messages[{i}].role",
            )
        content = message.get("content")
        if content is None and role != "assistant":
            raise invalid(f"Missing required parameter: 'messages[{i}].content'.",
                          param=f"messages[{i}].content", code="missing_required_parameter")
        if content is not None and not isinstance(content, str | list):
            raise invalid(f"'messages[{i}].content' must be a string or an array of parts.",
                          param=f"messages[{i}].content")
        if isinstance(content, list):
            for part in content:
                if not isinstance(part, dict) or part.get("type") != "text":
                    raise invalid(
                        f"'messages[{i}].content' may hold only text parts on this pool.",
                        param=f"messages[{i}].content", code="unsupported_content",
                    )
    if body.get("tools") or body.get("functions"):
        raise invalid("Tool calling is not supported by this pool yet.", param="tools",
                      code="unsupported_parameter")
    forwarded = {k: body[k] for k in FORWARDED if body.get(k) is not None}
    forwarded["messages"] = [
        {"role": m["role"], "content": m.get("content")} for m in messages
    ]
    return model, stream, include_usage, forwarded


def validate_completion(body: dict[str, Any]) -> tuple[str, bool, bool, dict[str, Any]]:
    """(model, stream, include_usage, forwarded body) of a legacy completion request."""
    prompt = body.get("prompt")
    if prompt is None:
        raise invalid("Missing required parameter: 'prompt'.", param="prompt",
                      code="missing_required_parameter")
    model, stream, include_usage = _common(body)
    if isinstance(prompt, list):
        if len(prompt) == 1 and isinstance(prompt[0], str):
            prompt = prompt[0]
        else:
            raise invalid("'prompt' must be a string (one prompt per request on this pool).",
                          param="prompt", code="unsupported_value")
    if not isinstance(prompt, str):
        raise invalid("'prompt' must be a string.", param="prompt", code="invalid_type")
    forwarded = {k: body[k] for k in FORWARDED if body.get(k) is not None}
    forwarded["prompt"] = prompt
    return model, stream, include_usage, forwarded


# OpenAI's ``service_tier`` names, and ours, mapped to wattpool's two classes.
SERVICE_TIERS = {"flex": "batch", "batch": "batch", "default": None, "auto": None,
                 "interactive": "interactive", "priority": "interactive"}


def priority_class(body: dict[str, Any], default: str) -> str:
    """``batch`` (cheaper, may wait and be preempted) or ``interactive``."""
    tier = body.get("service_tier")
    if tier is None:
        return default
    if tier not in SERVICE_TIERS:
        raise invalid(
            f"Invalid 'service_tier': {tier!r}. Supported values are: "
            + ", ".join(sorted(SERVICE_TIERS)) + ".", param="service_tier",
        )
    return SERVICE_TIERS[tier] or default
