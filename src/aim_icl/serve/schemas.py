"""Request and response bodies (pydantic): the OpenAI chat-completions shapes plus AIM's task endpoints."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

Mode = Literal["aim", "icl", "text", "zero"]
Strategy = Literal["fixed", "random", "similarity", "text_similarity"]


class ImageURL(BaseModel):
    url: str
    detail: str | None = None


class ContentPart(BaseModel):
    type: Literal["text", "image_url"]
    text: str | None = None
    image_url: ImageURL | None = None


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")  # clients send name, tool fields and the like

    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[ContentPart] | None = None


class StreamOptions(BaseModel):
    include_usage: bool = False


class ChatRequest(BaseModel):
    """OpenAI's chat-completions request; fields AIM does not use (temperature, top_p, ...) are accepted."""

    model_config = ConfigDict(extra="ignore")

    model: str | None = None
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    aim_mode: Mode = "aim"  # extension: how the demos reach the model (zero/text/icl for comparison)

    def token_limit(self, default: int) -> int:
        return self.max_completion_tokens or self.max_tokens or default


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class AnswerMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class Choice(BaseModel):
    index: int = 0
    message: AnswerMessage
    finish_reason: str = "stop"


class AIMInfo(BaseModel):
    """Extension: what AIM did with the demos of this request."""

    demos: int
    bank_hits: int
    cached_prompt_tokens: int = 0


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[Choice]
    usage: Usage
    aim_mode: Mode
    aim: AIMInfo


class TaskDemo(BaseModel):
    image: str | None = None  # data URL or allowed local path; None for a text-only demo
    text: str = Field(min_length=1)


class TaskRequest(BaseModel):
    """A named task: fixed demos (uploaded and/or bank keys), or `k` demos picked per query from the bank."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    demos: list[TaskDemo] = []
    demo_keys: list[str] = []
    strategy: Strategy = "fixed"
    k: int | None = Field(None, ge=0)
    mode: Mode = "aim"
    template: str = "{question}"  # the query text; must hold {question}


class TaskInfo(BaseModel):
    name: str
    mode: Mode
    strategy: Strategy
    k: int
    template: str
    demo_keys: list[str]
    prefix_cache: bool


class PredictRequest(BaseModel):
    image: str | None = None
    question: str
    max_tokens: int | None = Field(None, ge=1)


class Prediction(BaseModel):
    task: str
    answer: str
    mode: Mode
    usage: Usage
    aim: AIMInfo
    demo_keys: list[str]
