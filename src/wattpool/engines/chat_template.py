"""Chat templates wattpool renders itself, for models whose weights carry none.

The shipped default, Gemma 3 270M, is a base model: the GGUF holds no usable chat
template, so chat requests are rendered here into Gemma's turn format and sent to
the engine as plain completions.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

GEMMA_END_OF_TURN = "<end_of_turn>"


def message_text(content: Any) -> str:
    """The text of an OpenAI message content: a string or a list of text parts."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    return "".join(
        part.get("text", "") for part in content if isinstance(part, dict)
    )


def render_gemma(messages: Sequence[dict[str, Any]]) -> str:
    """Gemma's turn format.

    Gemma has no system role: system (and developer) text is placed at the start of
    the first user turn, separated by a blank line, as Gemma's own template does.
    Assistant turns use the role name ``model``. The BOS token is not written here:
    llama.cpp adds it when it tokenizes the prompt.
    """
    system_parts: list[str] = []
    turns: list[tuple[str, str]] = []
    for message in messages:
        role = message["role"]
        text = message_text(message.get("content")).strip()
        if role in ("system", "developer"):
            system_parts.append(text)
        elif role == "assistant":
            turns.append(("model", text))
        else:  # user, and tool results shown as user text
            turns.append(("user", text))
    if system_parts:
        prefix = "\n\n".join(system_parts)
        if turns and turns[0][0] == "user":
            turns[0] = ("user", f"{prefix}\n\n{turns[0][1]}")
        else:
            turns.insert(0, ("user", prefix))
    rendered = "".join(
        f"<start_of_turn>{role}\n{text}{GEMMA_END_OF_TURN}\n" for role, text in turns
    )
    return rendered + "<start_of_turn>model\n"
