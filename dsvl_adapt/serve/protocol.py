"""The OpenAI chat-completions request, validated strictly, and turned into the chat messages the model's template
renders (transformers' format: ``{"type": "image", "image": PIL}`` and ``{"type": "text", "text": ...}`` parts).

Fields the server does not implement are refused by name (``tools``, ``logprobs`` ...), never silently ignored; so is
sampling (``temperature`` > 0): the deployed runtimes decode greedily, as the scorecard measured them.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from ..runtimes.contract import GenerationSettings
from .limits import Limits, ServeError, decode_image


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ImageURL(_Strict):
    url: str
    detail: Literal["auto", "low", "high"] | None = None


class ContentPart(_Strict):
    type: Literal["text", "image_url"]
    text: str | None = None
    image_url: ImageURL | None = None


class Message(_Strict):
    role: Literal["system", "user", "assistant", "developer"]
    content: str | list[ContentPart]
    name: str | None = None


class StreamOptions(_Strict):
    include_usage: bool = False


class ChatRequest(_Strict):
    """The fields of ``POST /v1/chat/completions`` this server implements."""

    model: str
    messages: list[Message] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    n: int = Field(1, ge=1)
    seed: int | None = None
    stop: str | list[str] | None = None
    user: str | None = None

    @field_validator("stop")
    @classmethod
    def _no_stop(cls, value: Any) -> Any:
        if value:
            raise ValueError("stop sequences are not supported (answers end at the end-of-sentence token)")
        return value


def parse_request(body: bytes, limits: Limits) -> ChatRequest:
    """A validated request from the raw body, or a 4xx naming the problem."""
    if len(body) > limits.max_request_bytes:
        raise ServeError(413, f"the request body is {len(body):,} bytes, above the limit of "
                              f"{limits.max_request_bytes:,}", code="request_too_large")
    if not body.strip():
        raise ServeError(400, "the request body is empty; send a JSON object with 'model' and 'messages'",
                         code="invalid_json")
    try:
        raw = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        where = f" (line {exc.lineno}, column {exc.colno})" if isinstance(exc, json.JSONDecodeError) else ""
        raise ServeError(400, f"the request body is not valid JSON{where}: {getattr(exc, 'msg', exc)}",
                         code="invalid_json") from None
    if not isinstance(raw, dict):
        raise ServeError(400, f"the request body must be a JSON object, got {type(raw).__name__}",
                         code="invalid_json")
    try:
        request = ChatRequest.model_validate(raw)
    except ValidationError as exc:
        raise ServeError(400, _validation_message(exc), param=_first_param(exc), code="invalid_request") from None
    if request.n != 1:
        raise ServeError(400, f"n={request.n}: this server returns one choice per request (n=1)", param="n")
    if request.temperature not in (None, 0) or request.top_p not in (None, 1):
        raise ServeError(400, "sampling is not available: this server decodes greedily, as the scorecard measured "
                              "the model; leave temperature and top_p unset (or temperature=0)",
                         param="temperature" if request.temperature not in (None, 0) else "top_p",
                         code="unsupported_parameter")
    if len(request.messages) > limits.max_messages:
        raise ServeError(400, f"{len(request.messages)} messages, above the limit of {limits.max_messages}",
                         param="messages")
    wanted = request.max_completion_tokens or request.max_tokens
    if wanted is not None and wanted > limits.max_new_tokens:
        raise ServeError(400, f"max_tokens={wanted} is above this server's limit of {limits.max_new_tokens}",
                         param="max_tokens", code="max_tokens_too_large")
    return request


def _first_param(exc: ValidationError) -> str | None:
    errors = exc.errors()
    return ".".join(str(p) for p in errors[0]["loc"]) if errors else None


def _validation_message(exc: ValidationError) -> str:
    parts = []
    for error in exc.errors()[:5]:
        where = ".".join(str(p) for p in error["loc"]) or "body"
        if error["type"] == "extra_forbidden":
            parts.append(f"{where}: field not supported by this server (remove it)")
        elif error["type"] == "missing":
            parts.append(f"{where}: required field missing")
        else:
            parts.append(f"{where}: {error['msg']}")
    return "invalid request: " + "; ".join(parts)


@dataclass
class Conversation:
    """A request made ready for the model: messages with the image decoded, its content hash and figures."""

    messages: list[dict[str, Any]]
    image: Any  # PIL image
    image_sha256: str
    text_chars: int
    question: str  # the user's text (for the hard-case queue)
    system: str
    prompt: list[Any]  # roles and texts in order, the image as its hash: what the response cache keys on

    @property
    def pixels(self) -> int:
        return int(self.image.width * self.image.height)


def to_conversation(request: ChatRequest, limits: Limits, *, allow_local_images: bool) -> Conversation:
    """The chat messages in transformers' format, with exactly one image decoded."""
    messages: list[dict[str, Any]] = []
    images: list[tuple[Any, bytes]] = []
    chars = 0
    question, system = "", ""
    for i, message in enumerate(request.messages):
        role = "system" if message.role == "developer" else message.role
        parts: list[dict[str, Any]] = []
        content = ([ContentPart(type="text", text=message.content)] if isinstance(message.content, str)
                   else message.content)
        for j, part in enumerate(content):
            where = f"messages[{i}].content[{j}]"
            if part.type == "text":
                if part.text is None:
                    raise ServeError(400, f"{where}: a text part needs 'text'", param=where)
                chars += len(part.text)
                parts.append({"type": "text", "text": part.text})
                if role == "user":
                    question = part.text
                elif role == "system":
                    system = part.text
            else:
                if part.image_url is None:
                    raise ServeError(400, f"{where}: an image_url part needs 'image_url': {{'url': ...}}",
                                     param=where)
                if role != "user":
                    raise ServeError(400, f"{where}: images are accepted in user messages only", param=where)
                if len(images) >= limits.max_images:
                    raise ServeError(400, f"{where}: more than {limits.max_images} image(s) in the request; this "
                                          "model answers about one image per conversation", param=where,
                                     code="too_many_images")
                image, data = decode_image(part.image_url.url, limits=limits, allow_local=allow_local_images,
                                           param=f"{where}.image_url.url")
                images.append((image, data))
                parts.append({"type": "image", "image": image})
        if not parts:
            raise ServeError(400, f"messages[{i}] has no content", param=f"messages[{i}].content")
        messages.append({"role": role, "content": parts})
    if chars > limits.max_text_chars:
        raise ServeError(400, f"the messages hold {chars:,} characters of text, above the limit of "
                              f"{limits.max_text_chars:,}", param="messages", code="text_too_long")
    if not images:
        raise ServeError(400, "the request holds no image: add one user content part of type image_url with a "
                              "data URL (this vision-language model answers about an image)", param="messages",
                         code="image_missing")
    if messages[-1]["role"] != "user":
        raise ServeError(400, f"the last message has role {messages[-1]['role']!r}; the conversation must end with "
                              "the user's turn", param=f"messages[{len(messages) - 1}].role")
    image, _ = images[0]
    # The content hash is of the decoded pixels: the same picture sent as PNG or re-encoded hits the same cache entry.
    digest = hashlib.sha256(f"{image.width}x{image.height}:".encode() + image.tobytes()).hexdigest()
    prompt = [[m["role"], [p["text"] if p["type"] == "text" else f"image:{digest}" for p in m["content"]]]
              for m in messages]
    return Conversation(messages=messages, image=image, image_sha256=digest,
                        text_chars=chars, question=question, system=system, prompt=prompt)


def generation_settings(request: ChatRequest, *, default_max_tokens: int, eos_token_id: int | None,
                        pad_token_id: int | None) -> GenerationSettings:
    return GenerationSettings(max_new_tokens=request.max_completion_tokens or request.max_tokens or default_max_tokens,
                              eos_token_id=eos_token_id, pad_token_id=pad_token_id, do_sample=False,
                              seed=request.seed)


__all__ = ["ChatRequest", "Conversation", "generation_settings", "parse_request", "to_conversation"]
