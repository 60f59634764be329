"""Chats as AIM reads them: every earlier user turn with an image plus the assistant's answer is a demo; the last
user turn is the query. Only validates and decodes images (no model), so it may run on any thread."""

from __future__ import annotations

from dataclasses import dataclass

from PIL import Image

from aim_icl.core.demo import Demo
from aim_icl.serve.config import DEFAULT_DEMO_TEMPLATE
from aim_icl.serve.errors import RequestError
from aim_icl.serve.images import ImagePolicy, fetch_image
from aim_icl.serve.schemas import ChatMessage

__all__ = ["DEFAULT_DEMO_TEMPLATE", "Conversation", "parse_chat"]


@dataclass
class Conversation:
    """A chat as AIM sees it: demos from the example turns, then the query (the last user turn)."""

    demos: list[Demo]
    image: Image.Image | None
    text: str


def parse_chat(
    messages: list[ChatMessage], policy: ImagePolicy, demo_template: str, max_demos: int
) -> Conversation:
    """Every earlier user turn with an image plus the assistant answer after it is one demo; the last user turn is
    the query. System (and developer) text goes before the query text."""
    if messages[-1].role != "user":
        raise RequestError("the last message must be the user's question")
    for message in messages:
        _image_urls(message)  # images only in user turns, one each
    system = [_texts(m) for m in messages if m.role in ("system", "developer")]
    turns = [m for m in messages if m.role in ("user", "assistant")]
    demos, i = [], 0
    while i < len(turns) - 1:
        user, reply = turns[i], turns[i + 1]
        if user.role != "user" or reply.role != "assistant":
            raise RequestError("earlier turns must alternate: a user example, then the assistant's answer")
        demos.append(_demo(user, reply, policy, demo_template))
        if len(demos) > max_demos:
            raise RequestError(f"too many demonstrations: at most {max_demos} per request", "too_large")
        i += 2
    query = turns[-1]
    images = _image_urls(query)
    image = fetch_image(images[0], policy) if images else None
    text = "\n".join([*[s for s in system if s], _texts(query)])
    return Conversation(demos, image, text)


def _demo(user: ChatMessage, reply: ChatMessage, policy: ImagePolicy, template: str) -> Demo:
    images = _image_urls(user)
    image = fetch_image(images[0], policy) if images else None
    return Demo(image, template.format(user=_texts(user), assistant=_texts(reply)).strip())


def _image_urls(message: ChatMessage) -> list[str]:
    if isinstance(message.content, str) or message.content is None:
        return []
    urls = [p.image_url.url for p in message.content if p.type == "image_url" and p.image_url]
    if any(p.type == "image_url" and not p.image_url for p in message.content):
        raise RequestError("an image_url part needs an image_url object with a url")
    if len(urls) > 1:
        raise RequestError("one image per user turn: a demo or the query holds a single image")
    if urls and message.role != "user":
        raise RequestError(f"only user turns may hold images, not {message.role} turns")
    return urls


def _texts(message: ChatMessage) -> str:
    if message.content is None:
        return ""
    if isinstance(message.content, str):
        return message.content
    return " ".join(p.text for p in message.content if p.type == "text" and p.text)
