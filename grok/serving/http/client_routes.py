"""Routes and helpers for what third-party clients ask besides generating.

- `GET /v1/models/{id}` (OpenAI's `models.retrieve`): the model card, or 404 naming the model
  served.
- `GET /tokenizer_info` (vLLM's; lm-evaluation-harness's `local-completions` looks for it to
  tokenize through the server instead of needing a local copy of the tokenizer): the special
  tokens' texts and the context length.
- `encode_text`: a text as POST /tokenize gives its ids. The special tokens' own texts
  ("[BOS]", "[EOS]" for Grok-1; "<s>", "</s>", "<pad>" for the byte tokenizer) are read as
  those tokens, as vLLM's Hugging Face tokenizers do, so a client that finds the EOS id by
  tokenizing `tokenizer_info`'s `eos_token` gets the real id. Completion prompts are not
  read this way: a user's text never turns into control tokens.
"""

from __future__ import annotations

import re

from fastapi import FastAPI
from starlette.requests import Request as HTTPRequest

OWNER = "grok"


def model_card(state) -> dict:
    """The one model this server serves, as OpenAI lists it (plus vLLM's max_model_len once
    the model is loaded)."""
    card = {"id": state.model_name, "object": "model", "created": state.started,
            "owned_by": OWNER}
    if state.engine.ready.is_set():
        card["max_model_len"] = state.engine.backend.sequence_len
    return card


def encode_text(tokenizer, text: str, add_special_tokens: bool = False) -> list[int]:
    """`text` as token ids with special tokens' texts read as them (see the module docstring);
    `add_special_tokens` puts BOS first."""
    specials = {piece: token for token, piece in tokenizer.special_tokens.values()}
    ids = [tokenizer.special_tokens["bos"][0]] if (
        add_special_tokens and "bos" in tokenizer.special_tokens) else []
    if not specials:
        return ids + list(tokenizer.encode(text))
    pattern = re.compile("|".join(re.escape(p) for p in sorted(specials, key=len, reverse=True)))
    at = 0
    for match in pattern.finditer(text):
        if match.start() > at:
            ids += tokenizer.encode(text[at:match.start()])
        ids.append(specials[match.group()])
        at = match.end()
    if at < len(text):
        ids += tokenizer.encode(text[at:])
    return ids


def tokenizer_info(tokenizer, sequence_len: int) -> dict:
    """GET /tokenizer_info's body (vLLM's field names)."""
    special = {role: piece for role, (_, piece) in tokenizer.special_tokens.items()}
    return {"tokenizer_class": type(tokenizer).__name__,
            "bos_token": special.get("bos"), "eos_token": special.get("eos"),
            "pad_token": special.get("pad"), "vocab_size": tokenizer.vocab_size,
            "model_max_length": sequence_len, "add_bos_token": False, "chat_template": None}


def add_client_routes(app: FastAPI, state) -> None:
    """GET /v1/models/{id} and GET /tokenizer_info on `app` (state: the app's ServerState)."""

    @app.get("/v1/models/{model_id:path}")
    async def retrieve_model(model_id: str, request: HTTPRequest):
        state.check_key(request)
        state.check_model(model_id)
        return model_card(state)

    @app.get("/tokenizer_info")
    async def get_tokenizer_info(request: HTTPRequest):
        state.check_key(request)
        backend = state.backend()
        return tokenizer_info(backend.tokenizer, backend.sequence_len)
