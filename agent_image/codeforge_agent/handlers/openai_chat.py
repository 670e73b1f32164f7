"""The `openai` handler: one chat completion against any OpenAI-compatible endpoint.

Messages come from the task payload:
- `{"messages": [{"role": ..., "content": ...}, ...]}` is sent as is;
- `{"prompt": "..."}` becomes one user message;
- any other payload is sent as one user message holding its JSON.
The configured system prompt (if any) is put first unless the messages already start with one. Payload
keys `model`, `temperature`, `max_tokens` override the agent's defaults per task.

The result is `{"content", "model", "finish_reason", "usage"}`, `usage` being the provider's (prompt and
completion tokens) plus `cost` when the provider gives none and prices are configured
(`CODEFORGE_OPENAI_INPUT_PRICE` / `CODEFORGE_OPENAI_OUTPUT_PRICE`, per million tokens). A 429 raises
RateLimitedError (README, "Rate limits and budgets"). The API key comes from
`CODEFORGE_OPENAI_API_KEY` or the file in `CODEFORGE_OPENAI_API_KEY_FILE` (a mounted Secret); when it is
missing every task fails with that message and the agent keeps running.
"""

from __future__ import annotations

import json
from typing import Any, TypeGuard

from codeforge.api.task import Task
from codeforge_agent.handlers.base import HandlerError, TaskContext, ensure_json
from codeforge_agent.handlers.http_post import SessionOwner, post_json

PER_TASK_OVERRIDES = ("model", "temperature", "max_tokens")


def build_messages(payload: Any, system_prompt: str | None) -> list[dict[str, Any]]:
    if isinstance(payload, dict) and "messages" in payload:
        messages = payload["messages"]
        if not isinstance(messages, list) or not all(
            isinstance(m, dict) and "role" in m and "content" in m for m in messages
        ):
            raise HandlerError(
                "openai handler: payload.messages must be a list of {role, content} objects", retryable=False
            )
        messages = list(messages)
    elif isinstance(payload, dict) and isinstance(payload.get("prompt"), str):
        messages = [{"role": "user", "content": payload["prompt"]}]
    elif isinstance(payload, str):
        messages = [{"role": "user", "content": payload}]
    else:
        messages = [{"role": "user", "content": json.dumps(payload)}]
    if system_prompt and not (messages and messages[0].get("role") == "system"):
        messages.insert(0, {"role": "system", "content": system_prompt})
    return messages


class OpenAIHandler(SessionOwner):
    kind = "openai"

    def __init__(
        self,
        *,
        base_url: str,
        model: str,
        api_key: str | None,
        api_key_error: str | None = None,
        system_prompt: str | None = None,
        temperature: float | None = None,
        max_tokens: int | None = None,
        input_price: float | None = None,
        output_price: float | None = None,
    ) -> None:
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.model = model
        self.api_key = api_key
        self.api_key_error = api_key_error or (
            "openai handler: no API key: set CODEFORGE_OPENAI_API_KEY, or mount the Secret and set "
            "CODEFORGE_OPENAI_API_KEY_FILE to its file"
        )
        self.system_prompt = system_prompt
        self.defaults: dict[str, Any] = {"temperature": temperature, "max_tokens": max_tokens}
        self.prices = (input_price or 0.0, output_price or 0.0)

    async def __call__(self, task: Task, context: TaskContext) -> Any:
        if not self.api_key:
            raise HandlerError(self.api_key_error, retryable=False)
        payload = task.payload
        body: dict[str, Any] = {"model": self.model, "messages": build_messages(payload, self.system_prompt)}
        body.update({k: v for k, v in self.defaults.items() if v is not None})
        if isinstance(payload, dict):
            body.update({k: payload[k] for k in PER_TASK_OVERRIDES if k in payload})
        response = await post_json(
            self,
            self.url,
            body,
            headers={"Authorization": f"Bearer {self.api_key}"},
            timeout=context.timeout,
            who="openai handler",
        )
        try:
            choice = response["choices"][0]
            content = choice["message"]["content"]
        except (KeyError, IndexError, TypeError):
            raise HandlerError(
                f"openai handler: {self.url} answered without choices[0].message.content: "
                f"{json.dumps(response)[:300]}",
                retryable=False,
            ) from None
        result = {
            "content": content,
            "model": response.get("model", body["model"]),
            "finish_reason": choice.get("finish_reason"),
            "usage": self._usage(response.get("usage")),
        }
        return ensure_json(result, "openai handler")

    def _usage(self, usage: Any) -> Any:
        """The provider's usage, with `cost` from the configured prices when it names none."""
        if not isinstance(usage, dict) or usage.get("cost") is not None or not any(self.prices):
            return usage
        tokens_in, tokens_out = usage.get("prompt_tokens"), usage.get("completion_tokens")
        if not (_tokens(tokens_in) and _tokens(tokens_out)):
            return usage
        cost = (tokens_in * self.prices[0] + tokens_out * self.prices[1]) / 1_000_000
        return {**usage, "cost": round(cost, 9)}


def _tokens(value: Any) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0
