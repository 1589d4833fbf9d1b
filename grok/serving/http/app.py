"""The FastAPI application: routes, authentication, and the engine thread's lifetime.

Routes: POST /v1/completions, POST /v1/chat/completions (grok.serving.http.generation),
GET /v1/models, GET /v1/models/{id}, GET /health (200 once the model is compiled, 503
before), GET /metrics (Prometheus text), GET /openapi.json, POST /tokenize, POST /detokenize,
GET /tokenizer_info (grok.serving.http.client_routes). With API keys, every
route but /health needs `Authorization: Bearer KEY`: /metrics counts prefix-cache hits, which
would tell an outsider whether someone's prompt began like theirs. /health stays open for load
balancers.

Prefix-cache isolation: a request's `cache_salt` names its cache namespace (grok.serving.
prefix_cache); with `isolate_cache_per_key`, the key it came with is part of it too, so
clients of different keys never share cached prompts whatever salts they send.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import time
from typing import Optional

import pydantic
from fastapi import FastAPI
from starlette.requests import Request as HTTPRequest
from starlette.responses import JSONResponse, Response

from grok.serving.http.body_limit import BodyLimit
from grok.serving.http.generation import build_job, respond
from grok.serving.http.chat_template import ChatTemplate
from grok.serving.http.client_routes import add_client_routes, encode_text, model_card
from grok.serving.http.structured_body import uses_tools
from grok.serving.http.tools import transcript
from grok.serving.http.engine_loop import Backend, EngineLoop
from grok.serving.http.errors import APIError, install_error_handlers, invalid, validation_error
from grok.serving.http.metrics import CONTENT_TYPE
from grok.serving.http.protocol import (ChatCompletionRequest, CompletionRequest,
                                        DetokenizeRequest, TokenizeRequest)
from grok.serving.http.workers import WorkerPool, max_text_chars

OWNER = "grok"
ENGINE_STOP_TIMEOUT_S = 10.0    # how long shutdown waits for the engine thread to cancel


class ServerState:
    """What every route needs: the engine thread, the model's name, template, key, metrics."""

    def __init__(self, engine: EngineLoop, model_name: str, chat_template: ChatTemplate,
                 api_key: Optional[str] = None, isolate_cache_per_key: bool = False):
        self.engine = engine
        self.model_name = model_name
        self.chat_template = chat_template
        # "KEY" or "KEY1,KEY2,...": any of them is accepted
        self.api_keys = tuple(k.strip() for k in api_key.split(",") if k.strip()) \
            if api_key else ()
        self.isolate_cache_per_key = isolate_cache_per_key
        self.metrics = engine.metrics
        self.started = int(time.time())
        self.workers = WorkerPool()

    def backend(self) -> Backend:
        if not self.engine.ready.is_set():
            raise APIError(503, self.engine.error or "the model is still loading; see /health",
                           code="not_ready")
        return self.engine.backend

    def check_model(self, model: Optional[str]) -> None:
        if model is not None and model != self.model_name:
            raise APIError(404, f"the model '{model}' does not exist; this server serves "
                           f"'{self.model_name}'", "model", "model_not_found")

    async def read_body(self, request: HTTPRequest, model: type[pydantic.BaseModel]):
        """The checks every POST route makes, in order: the API key (401), the body as `model`
        (400 naming the field), the model name (404). Returns the body."""
        self.check_key(request)
        body = await self.workers.run(parse, await request.body(), model)
        self.check_model(body.model)
        return body

    def check_key(self, request: HTTPRequest) -> Optional[str]:
        """The API key the request came with (None when the server has none); 401 unless it
        is one of the server's."""
        if not self.api_keys:
            return None
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        given = given.strip().encode()
        matches = [key for key in self.api_keys if hmac.compare_digest(given, key.encode())]
        if scheme.lower() != "bearer" or not matches:
            raise APIError(401, "invalid or missing API key (Authorization: Bearer KEY)",
                           code="invalid_api_key")
        return matches[0]

    def cache_salt(self, request: HTTPRequest, salt: Optional[str]) -> Optional[str]:
        """The request's prefix-cache salt: its own `cache_salt`, and with per-key isolation
        (a hash of) its key too."""
        if not self.isolate_cache_per_key or not self.api_keys:
            return salt
        key = hashlib.sha256(self.check_key(request).encode()).hexdigest()[:32]
        return f"key:{key}/{salt or ''}"


def parse(raw: bytes, model: type[pydantic.BaseModel]):
    """The request body (bounded by BodyLimit as it arrived) as `model`; 400 naming the field
    when it does not validate."""
    try:
        return model.model_validate_json(raw)
    except pydantic.ValidationError as e:
        raise validation_error(e.errors(include_url=False)) from None


def create_app(engine: EngineLoop, model_name: str, chat_template: Optional[ChatTemplate] = None,
               api_key: Optional[str] = None, isolate_cache_per_key: bool = False) -> FastAPI:
    """The app; its lifespan starts `engine` (if not started) and stops it at shutdown."""
    state = ServerState(engine, model_name, chat_template or ChatTemplate(), api_key,
                        isolate_cache_per_key)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        if not engine.is_alive() and engine.ident is None:
            engine.start()
        yield
        engine.stop(ENGINE_STOP_TIMEOUT_S)
        state.workers.close()

    app = FastAPI(title="grok", lifespan=lifespan, docs_url=None, redoc_url=None,
                  openapi_url=None)     # served below, behind the key
    app.state.server = state
    app.add_middleware(BodyLimit)
    install_error_handlers(app)

    @app.post("/v1/completions")
    async def completions(request: HTTPRequest):
        body = await state.read_body(request, CompletionRequest)
        job = await state.workers.run(build_job, state, body, body.prompts(), chat=False,
                                      cache_salt=state.cache_salt(request, body.cache_salt))
        return await respond(state, job, request)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: HTTPRequest):
        body = await state.read_body(request, ChatCompletionRequest)
        job = await state.workers.run(_chat_job, state, body,
                                      state.cache_salt(request, body.cache_salt))
        return await respond(state, job, request)

    @app.get("/v1/models")
    async def models(request: HTTPRequest):
        state.check_key(request)
        return {"object": "list", "data": [model_card(state)]}

    @app.get("/health")
    async def health():
        if engine.ready.is_set() and engine.is_alive():
            return {"status": "ok"}
        status = "failed: " + engine.error if engine.error else (
            "stopped" if engine.ready.is_set() else "loading")
        return JSONResponse({"status": status}, status_code=503)

    @app.get("/metrics")
    async def metrics(request: HTTPRequest):
        state.check_key(request)
        return Response(state.metrics.render(), media_type=CONTENT_TYPE)

    @app.get("/openapi.json")
    async def openapi(request: HTTPRequest):
        state.check_key(request)
        return app.openapi()

    _add_tokenizer_routes(app, state)
    add_client_routes(app, state)
    return app


def _chat_job(state: ServerState, body: ChatCompletionRequest, cache_salt: Optional[str]):
    prompt = state.chat_template.render(transcript(body.messages, body.tools, uses_tools(body)))
    return build_job(state, body, [prompt], chat=True, extra_stops=state.chat_template.stop,
                     cache_salt=cache_salt)


def _add_tokenizer_routes(app: FastAPI, state: ServerState) -> None:
    """POST /tokenize and /detokenize (vLLM's extra endpoints)."""

    @app.post("/tokenize")
    async def tokenize(request: HTTPRequest):
        body = await state.read_body(request, TokenizeRequest)
        return await state.workers.run(_tokenize, state, body)

    @app.post("/detokenize")
    async def detokenize(request: HTTPRequest):
        body = await state.read_body(request, DetokenizeRequest)
        return await state.workers.run(_detokenize, state, body)


def _tokenize(state: ServerState, body: TokenizeRequest) -> dict:
    backend = state.backend()
    param = "prompt" if body.prompt is not None else "messages"
    text = body.prompt if body.prompt is not None else state.chat_template.render(
        [(m.role, m.text) for m in body.messages])
    if len(text) > max_text_chars(backend.sequence_len):
        raise invalid(f"{param} has {len(text)} characters, more than this model's context of "
                      f"{backend.sequence_len} tokens could hold", param)
    tokens = encode_text(backend.tokenizer, text, body.add_special_tokens)
    out = {"tokens": tokens, "count": len(tokens), "max_model_len": backend.sequence_len}
    if body.return_token_strs:
        out["token_strs"] = [backend.tokenizer.token_text(t) for t in tokens]
    return out


def _detokenize(state: ServerState, body: DetokenizeRequest) -> dict:
    backend = state.backend()
    bad = [t for t in body.tokens if not 0 <= t < backend.vocab_size]
    if bad:
        raise invalid(f"tokens has ids outside the vocabulary [0, {backend.vocab_size}): "
                      f"{bad[:5]}", "tokens")
    return {"prompt": backend.tokenizer.decode(body.tokens)}
