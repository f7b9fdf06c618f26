"""wattpool.engines.chat_template: Gemma's turn format, rendered by wattpool."""

from __future__ import annotations

from typing import Any

import pytest

from wattpool.engines.chat_template import message_text, render_gemma

GEN = "<start_of_turn>model\n"


def turn(role: str, text: str) -> str:
    return f"<start_of_turn>{role}\n{text}<end_of_turn>\n"


def test_single_user_turn_exact() -> None:
    rendered = render_gemma([{"role": "user", "content": "Hello"}])
    assert rendered == "<start_of_turn>user\nHello<end_of_turn>\n<start_of_turn>model\n"


def test_system_is_folded_into_first_user_turn_with_a_blank_line() -> None:
    rendered = render_gemma([
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Hi"},
    ])
    assert rendered == turn("user", "You are terse.\n\nHi") + GEN
    assert "<start_of_turn>system" not in rendered


def test_assistant_becomes_model() -> None:
    rendered = render_gemma([
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!"},
    ])
    assert rendered == turn("user", "Hi") + turn("model", "Hello!") + GEN
    assert "assistant" not in rendered


def test_multi_turn() -> None:
    messages = [
        {"role": "system", "content": "Be kind."},
        {"role": "user", "content": "One"},
        {"role": "assistant", "content": "Two"},
        {"role": "user", "content": "Three"},
        {"role": "assistant", "content": "Four"},
        {"role": "user", "content": "Five"},
    ]
    assert render_gemma(messages) == (
        turn("user", "Be kind.\n\nOne")
        + turn("model", "Two")
        + turn("user", "Three")
        + turn("model", "Four")
        + turn("user", "Five")
        + GEN
    )


def test_system_only_goes_to_first_user_turn_not_a_later_one() -> None:
    rendered = render_gemma([
        {"role": "user", "content": "first"},
        {"role": "assistant", "content": "ok"},
        {"role": "system", "content": "late system"},
        {"role": "user", "content": "second"},
    ])
    assert rendered == (
        turn("user", "late system\n\nfirst") + turn("model", "ok") + turn("user", "second") + GEN
    )


def test_list_of_parts_content() -> None:
    rendered = render_gemma([
        {"role": "user", "content": [{"type": "text", "text": "Hello "},
                                     {"type": "text", "text": "world"}]},
    ])
    assert rendered == turn("user", "Hello world") + GEN


def test_list_of_parts_in_system_and_assistant() -> None:
    rendered = render_gemma([
        {"role": "system", "content": [{"type": "text", "text": "Sys"}]},
        {"role": "user", "content": "Q"},
        {"role": "assistant", "content": [{"type": "text", "text": "A"}]},
        {"role": "user", "content": "Q2"},
    ])
    assert rendered == turn("user", "Sys\n\nQ") + turn("model", "A") + turn("user", "Q2") + GEN


def test_developer_is_treated_like_system() -> None:
    as_developer = render_gemma([
        {"role": "developer", "content": "Rules."},
        {"role": "user", "content": "Go"},
    ])
    as_system = render_gemma([
        {"role": "system", "content": "Rules."},
        {"role": "user", "content": "Go"},
    ])
    assert as_developer == as_system == turn("user", "Rules.\n\nGo") + GEN


def test_several_system_messages_are_joined_with_blank_lines() -> None:
    rendered = render_gemma([
        {"role": "system", "content": "A"},
        {"role": "developer", "content": "B"},
        {"role": "user", "content": "C"},
    ])
    assert rendered == turn("user", "A\n\nB\n\nC") + GEN


def test_system_only() -> None:
    rendered = render_gemma([{"role": "system", "content": "Only a system prompt"}])
    assert rendered == turn("user", "Only a system prompt") + GEN


def test_system_before_assistant_first_gets_its_own_user_turn() -> None:
    rendered = render_gemma([
        {"role": "system", "content": "S"},
        {"role": "assistant", "content": "I start"},
        {"role": "user", "content": "U"},
    ])
    assert rendered == turn("user", "S") + turn("model", "I start") + turn("user", "U") + GEN


def test_text_is_stripped() -> None:
    rendered = render_gemma([{"role": "user", "content": "  \n padded \n\n"}])
    assert rendered == turn("user", "padded") + GEN


def test_assistant_without_content() -> None:
    rendered = render_gemma([
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": None},
        {"role": "user", "content": "Again"},
    ])
    assert rendered == turn("user", "Hi") + turn("model", "") + turn("user", "Again") + GEN


def test_tool_results_are_shown_as_user_text() -> None:
    rendered = render_gemma([{"role": "tool", "content": "42"}])
    assert rendered == turn("user", "42") + GEN


def test_empty_conversation_still_prompts_the_model() -> None:
    assert render_gemma([]) == GEN


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (None, ""),
        ("plain", "plain"),
        ([{"type": "text", "text": "a"}, {"type": "text", "text": "b"}], "ab"),
        ([{"type": "text"}, "not a dict", {"type": "text", "text": "x"}], "x"),
        ([], ""),
    ],
)
def test_message_text(content: Any, expected: str) -> None:
    assert message_text(content) == expected
