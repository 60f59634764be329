"""Request and response bodies (pydantic): the OpenAI chat-completions shapes plus AIM's task endpoints."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

Mode = Literal["aim", "icl", "text", "zero"]
Strategy = Literal["fixed", "random", "similarity", "text_similarity"]
MAX_STOPS = 4  # as OpenAI's API
MAX_STOP_CHARS = 256  # each stop string is looked for after every token
TASK_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"  # a safe path segment: never '.', '..', '/' or a leading '-'


class Body(BaseModel):
    """A request body (or part of one): its text fields hold Unicode text, never a lone surrogate ("\\udfff",
    which JSON can spell but UTF-8 cannot encode, so no tokenizer, hash or log line could take it)."""

    @field_validator("*")
    @classmethod
    def _encodable(cls, value: Any) -> Any:
        if _has_surrogate(value):
            raise ValueError(
                "text holds a lone surrogate (\\ud800-\\udfff), not Unicode text; send valid UTF-8"
            )
        return value


def _has_surrogate(value: Any) -> bool:
    if isinstance(value, str):
        try:
            value.encode()
        except UnicodeEncodeError:
            return True
        return False
    if isinstance(value, list | tuple):
        return any(_has_surrogate(v) for v in value)
    return False


class ImageURL(Body):
    url: str
    detail: str | None = None


class ContentPart(Body):
    type: Literal["text", "image_url"]
    text: str | None = None
    image_url: ImageURL | None = None


class ChatMessage(Body):
    model_config = ConfigDict(extra="ignore")  # clients send name, tool fields and the like

    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[ContentPart] | None = None


class StreamOptions(Body):
    include_usage: bool = False


class ChatRequest(Body):
    """OpenAI's chat-completions request; fields AIM does not use (logprobs, tools, ...) are accepted and ignored.

    Sampling fields mean what they mean in OpenAI's API. Without `temperature` the model's generation config
    decides (greedy for models that do not sample by default, as the world model and most checkpoints).
    """

    model_config = ConfigDict(extra="ignore")

    model: str | None = None
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2, allow_inf_nan=False)
    top_p: float | None = Field(None, gt=0, le=1, allow_inf_nan=False)
    n: int = Field(1, ge=1)
    seed: int | None = None
    stop: str | list[str] | None = Field(None, validate_default=True)
    stream: bool = False
    stream_options: StreamOptions | None = None
    aim_mode: Mode = "aim"  # extension: how the demos reach the model (zero/text/icl for comparison)

    def token_limit(self, default: int) -> int:
        return self.max_completion_tokens or self.max_tokens or default

    @field_validator("stop")
    @classmethod
    def _stops(cls, stop: str | list[str] | None) -> list[str]:
        stops = [stop] if isinstance(stop, str) else list(stop or [])
        if len(stops) > MAX_STOPS or any(not 0 < len(s) <= MAX_STOP_CHARS for s in stops):
            raise ValueError(f"give at most {MAX_STOPS} stop strings of 1 to {MAX_STOP_CHARS} characters")
        return stops


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int

    @classmethod
    def of(cls, prompt_tokens: int, completion_tokens: int) -> Usage:
        return cls(
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            total_tokens=prompt_tokens + completion_tokens,
        )


class AnswerMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class Choice(BaseModel):
    index: int = 0
    message: AnswerMessage
    finish_reason: Literal["stop", "length"] = "stop"


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


class TaskDemo(Body):
    image: str | None = None  # data URL or allowed local path; None for a text-only demo
    text: str = Field(min_length=1)


class TaskRequest(Body):
    """A named task: fixed demos (uploaded and/or bank keys), or `k` demos picked per query from the bank."""

    name: str = Field(pattern=TASK_NAME)
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


class TaskList(BaseModel):
    object: Literal["list"] = "list"
    data: list[TaskInfo]
    persistent: bool  # stored in the bank file (--bank): they survive a restart
    storage: str  # the bank file's name, or why they do not survive


class TaskDeleted(BaseModel):
    object: Literal["task.deleted"] = "task.deleted"
    name: str
    deleted: bool = True


class PredictRequest(Body):
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
