"""The FastAPI application: routes, authentication, and the engine thread's lifetime.

Routes: POST /v1/completions, POST /v1/chat/completions (grok.serving.http.generation),
GET /v1/models, GET /health (200 once the model is compiled, 503 before), GET /metrics
(Prometheus text), POST /tokenize, POST /detokenize. With an API key, /v1/* and the
tokenizer routes need `Authorization: Bearer KEY`; /health and /metrics stay open for
load balancers and scrapers.
"""

from __future__ import annotations

import contextlib
import hmac
import time
from typing import Optional

import pydantic
from fastapi import FastAPI
from starlette.requests import Request as HTTPRequest
from starlette.responses import JSONResponse, Response

from grok.serving.http.generation import build_job, respond
from grok.serving.http.chat_template import ChatTemplate
from grok.serving.http.structured_body import uses_tools
from grok.serving.http.tools import transcript
from grok.serving.http.engine_loop import Backend, EngineLoop
from grok.serving.http.errors import APIError, install_error_handlers, invalid, validation_error
from grok.serving.http.metrics import CONTENT_TYPE
from grok.serving.http.protocol import (ChatCompletionRequest, CompletionRequest,
                                        DetokenizeRequest, TokenizeRequest)

OWNER = "grok"
MAX_BODY_BYTES = 16 * 2**20     # a request body beyond this is refused (413) before parsing
ENGINE_STOP_TIMEOUT_S = 10.0    # how long shutdown waits for the engine thread to cancel


class ServerState:
    """What every route needs: the engine thread, the model's name, template, key, metrics."""

    def __init__(self, engine: EngineLoop, model_name: str, chat_template: ChatTemplate,
                 api_key: Optional[str] = None):
        self.engine = engine
        self.model_name = model_name
        self.chat_template = chat_template
        self.api_key = api_key
        self.metrics = engine.metrics
        self.started = int(time.time())

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
        body = await parse(request, model)
        self.check_model(body.model)
        return body

    def check_key(self, request: HTTPRequest) -> None:
        if self.api_key is None:
            return
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(),
                                                                 self.api_key.encode()):
            raise APIError(401, "invalid or missing API key (Authorization: Bearer KEY)",
                           code="invalid_api_key")


async def parse(request: HTTPRequest, model: type[pydantic.BaseModel]):
    """The request body as `model`; 400 naming the field when it does not validate."""
    raw = await request.body()
    if len(raw) > MAX_BODY_BYTES:
        raise APIError(413, f"request body over {MAX_BODY_BYTES} bytes")
    try:
        return model.model_validate_json(raw)
    except pydantic.ValidationError as e:
        raise validation_error(e.errors(include_url=False)) from None


def create_app(engine: EngineLoop, model_name: str, chat_template: Optional[ChatTemplate] = None,
               api_key: Optional[str] = None) -> FastAPI:
    """The app; its lifespan starts `engine` (if not started) and stops it at shutdown."""
    state = ServerState(engine, model_name, chat_template or ChatTemplate(), api_key)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        if not engine.is_alive() and engine.ident is None:
            engine.start()
        yield
        engine.stop(ENGINE_STOP_TIMEOUT_S)

    app = FastAPI(title="grok", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.server = state
    install_error_handlers(app)

    @app.post("/v1/completions")
    async def completions(request: HTTPRequest):
        body = await state.read_body(request, CompletionRequest)
        job = build_job(state, body, body.prompts(), chat=False)
        return await respond(state, job, request)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: HTTPRequest):
        body = await state.read_body(request, ChatCompletionRequest)
        prompt = state.chat_template.render(transcript(body.messages, body.tools,
                                                       uses_tools(body)))
        job = build_job(state, body, [prompt], chat=True, extra_stops=state.chat_template.stop)
        return await respond(state, job, request)

    @app.get("/v1/models")
    async def models(request: HTTPRequest):
        state.check_key(request)
        card = {"id": model_name, "object": "model", "created": state.started, "owned_by": OWNER}
        if engine.ready.is_set():
            card["max_model_len"] = engine.backend.sequence_len
        return {"object": "list", "data": [card]}

    @app.get("/health")
    async def health():
        if engine.ready.is_set() and engine.is_alive():
            return {"status": "ok"}
        status = "failed: " + engine.error if engine.error else (
            "stopped" if engine.ready.is_set() else "loading")
        return JSONResponse({"status": status}, status_code=503)

    @app.get("/metrics")
    async def metrics():
        return Response(state.metrics.render(), media_type=CONTENT_TYPE)

    _add_tokenizer_routes(app, state)
    return app


def _add_tokenizer_routes(app: FastAPI, state: ServerState) -> None:
    """POST /tokenize and /detokenize (vLLM's extra endpoints)."""

    @app.post("/tokenize")
    async def tokenize(request: HTTPRequest):
        body = await state.read_body(request, TokenizeRequest)
        backend = state.backend()
        text = body.prompt if body.prompt is not None else state.chat_template.render(
            [(m.role, m.text) for m in body.messages])
        tokens = backend.tokenizer.encode(text)
        return {"tokens": tokens, "count": len(tokens), "max_model_len": backend.sequence_len}

    @app.post("/detokenize")
    async def detokenize(request: HTTPRequest):
        body = await state.read_body(request, DetokenizeRequest)
        backend = state.backend()
        bad = [t for t in body.tokens if not 0 <= t < backend.vocab_size]
        if bad:
            raise invalid(f"tokens has ids outside the vocabulary [0, {backend.vocab_size}): "
                          f"{bad[:5]}", "tokens")
        return {"prompt": backend.tokenizer.decode(body.tokens)}
