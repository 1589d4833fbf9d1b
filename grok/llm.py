"""The one-call Python API: `LLM(checkpoint).generate(prompts, SamplingParams(...))`.

    import grok
    llm = grok.LLM("checkpoints")                    # DIR holding ckpt-0/ (and config.json)
    for out in llm.generate(["Hello", "The answer is"], grok.SamplingParams(max_tokens=32)):
        print(out.text, out.finish_reason)

`generate` returns one `Completion` per prompt, in order (a str: its text, with request_id,
prompt_ids, output_ids, finish_reason, error, logprobs, ...); a prompt that cannot be served
comes back with finish_reason "error" and the others still run. Many prompts show a progress
bar. Underneath is the reference's generator protocol, still there as `llm.runner.run()`.
Model discovery (DIR/config.json, the tokenizer, the demo when checkpoint is None) is the
command line's too: see grok.loading.
"""

from __future__ import annotations

import dataclasses
import itertools
import sys
from typing import Any, Iterable, Optional, Sequence, Union

from grok.loading import DEFAULT_MAX_SLOTS, ModelOptions, StartupTimes, load_model
from grok.serving.requests import DEFAULT_MAX_TOKENS, Cancel, Request, RequestError, request_seed
from grok.serving.results import Completion, TokenEvent, error_completion

Prompt = Union[str, Sequence[int]]
PROGRESS_BAR_MIN_PROMPTS = 2        # one prompt needs no progress bar
DEFAULT_SEED = 0                    # base of the per-request seeds when SamplingParams.seed is None
# Request field -> the SamplingParams field that fills it (where the names differ).
_PARAM_OF_FIELD = {"stop_tokens": "stop_token_ids", "echo": "prompt_logprobs"}


@dataclasses.dataclass(frozen=True)
class SamplingParams:
    """How to sample one request (vLLM's names).

    temperature 0 is greedy; top_p (nucleus) and top_k (0 = off) narrow the choice; seed None
    gives each request its own seed (distinct across calls of this LLM, the same in every run
    of the same program); stop strings end the text (not included), as do stop_token_ids and
    EOS; logprobs adds per-token logprobs and the top alternatives; prompt_logprobs scores the
    prompt. json_schema / regex / choice / grammar (at most one) constrain the output (a bad
    one is a ValueError naming the field); logit_bias, min_p, the penalties and min_tokens
    process the logits (see grok.serving.structured.fields).
    """

    max_tokens: int = DEFAULT_MAX_TOKENS
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    seed: Optional[int] = None
    stop: Sequence[str] = ()
    stop_token_ids: Sequence[int] = ()
    logprobs: bool = False
    prompt_logprobs: bool = False
    # Structured outputs (at most one) and logit processing, as Request's (same names)
    json_schema: Optional[Union[str, dict]] = None
    regex: Optional[str] = None
    choice: Optional[Sequence[str]] = None
    grammar: Optional[str] = None
    logit_bias: Optional[dict] = None
    min_p: float = 0.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    min_tokens: int = 0

    def __post_init__(self):
        for name in ("stop", "stop_token_ids"):   # a generator is read once, here
            object.__setattr__(self, name, _materialised(getattr(self, name)))
        # Every field checked by the Request it makes (a RequestError naming SamplingParams'
        # field); `stop` kept as the Request normalises it.
        object.__setattr__(self, "stop", self.request("x", "check", 0).stop)

    def request(self, prompt: Prompt, request_id: str, seed: int) -> Request:
        """The Request for `prompt` (`seed` when self.seed is None); a bad field is a
        RequestError whose message names `SamplingParams.<field>` (its `.field` is the
        Request's)."""
        try:
            return Request(prompt=prompt, request_id=request_id, max_tokens=self.max_tokens,
                           temperature=self.temperature, top_p=self.top_p, top_k=self.top_k,
                           seed=seed if self.seed is None else self.seed,
                           stop_tokens=self.stop_token_ids, stop=self.stop, logprobs=self.logprobs,
                           echo=self.prompt_logprobs, json_schema=self.json_schema,
                           regex=self.regex, choice=self.choice, grammar=self.grammar,
                           logit_bias=self.logit_bias, min_p=self.min_p,
                           presence_penalty=self.presence_penalty,
                           frequency_penalty=self.frequency_penalty,
                           repetition_penalty=self.repetition_penalty,
                           min_tokens=self.min_tokens)
        except RequestError as e:
            if e.field == "prompt":
                raise
            raise e.named(f"SamplingParams.{_PARAM_OF_FIELD.get(e.field, e.field)}") from None


def _materialised(value: Any) -> Any:
    """An iterable (a generator, a set, a range) as a tuple, so it is read exactly once; a
    string or anything else as it is (the Request check refuses what is not a sequence)."""
    if isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
        return value
    return tuple(value)


class LLM:
    """A loaded model serving lists of prompts (see the module docstring).

    Every runtime choice the command line has: checkpoint, a directory holding ckpt-0/ (None:
    ./checkpoints if it has one, else the embedded demo); config: a config JSON (default
    DIR/config.json, else Grok-1); tokenizer: a SentencePiece file or "bytes" (default:
    DIR/tokenizer.model, or bytes for a byte-vocab model); max_slots: requests decoded together
    (--batch-size); mesh: the local (data, model) device mesh; hosts: the between-hosts mesh;
    dtype: "auto", "bfloat16" or "float32"; moe: "sparse" or "dense"; pad_sizes: prompt
    buckets; prefix_cache_tokens: prompt KV positions kept for reuse (0: no prefix cache).
    """

    def __init__(self, checkpoint: Optional[str] = None, *, config: Optional[str] = None,
                 tokenizer: Optional[str] = None, max_slots: int = DEFAULT_MAX_SLOTS,
                 mesh: Optional[tuple] = None, hosts: tuple = (1, 1), dtype: str = "auto",
                 moe: Optional[str] = None, pad_sizes: Optional[Sequence[int]] = None,
                 prefix_cache_tokens: Optional[int] = None, quiet: bool = False,
                 speculative_tokens: int = 0, speculative_method: str = "ngram",
                 compile_cache: Optional[str] = None, max_model_len: Optional[int] = None):
        """speculative_tokens: drafted tokens verified per step (0 = off; the same tokens
        either way, see grok.serving.speculation); speculative_method: "ngram";
        compile_cache: a folder for compiled programs, "off", or None (the default folder,
        grok.compile_cache); max_model_len: the context in tokens (default: the config's
        sequence_len; at most that for trained weights)."""
        options = ModelOptions(checkpoint=checkpoint, config=config, tokenizer=tokenizer,
                               dtype=dtype, moe=moe, mesh=None if mesh is None else tuple(mesh),
                               hosts=tuple(hosts), slots=max_slots, quiet=quiet,
                               pad_sizes=None if pad_sizes is None else tuple(pad_sizes),
                               prefix_cache_tokens=prefix_cache_tokens,
                               speculative_tokens=speculative_tokens,
                               speculative_method=speculative_method,
                               compile_cache=compile_cache, max_model_len=max_model_len,
                               prebuild_grammar_tokenizer=True)   # response_format may come
        self.runner, self.startup_times = load_model(options)   # StartupTimes
        self.quiet = quiet
        self._gen = None
        self._requests = itertools.count()   # numbers every request of this LLM

    @property
    def tokenizer(self):
        return self.runner.tokenizer

    def _generator(self):
        if self._gen is None or self._gen.gi_frame is None:   # first use, or interrupted
            self._gen = self.runner.run()
            next(self._gen)
        return self._gen

    def generate(self, prompts: Union[Prompt, Sequence[Prompt]],
                 sampling_params: Union[SamplingParams, Sequence[SamplingParams], None] = None,
                 *, use_tqdm: bool = True) -> list[Completion]:
        """One Completion per prompt, in order. `prompts`: a string, a list of token ids, or a
        list of either; `sampling_params`: one for all, or one per prompt (default
        SamplingParams())."""
        if isinstance(prompts, str) or (isinstance(prompts, (list, tuple)) and prompts
                                        and isinstance(prompts[0], int)):
            prompts = [prompts]
        prompts = list(prompts)
        params = sampling_params if sampling_params is not None else SamplingParams()
        params = list(params) if isinstance(params, (list, tuple)) else [params] * len(prompts)
        if len(params) != len(prompts):
            raise ValueError(f"{len(prompts)} prompts but {len(params)} SamplingParams")
        requests, index = [], {}
        results: list = [None] * len(prompts)
        for i, (prompt, p) in enumerate(zip(prompts, params)):
            number = next(self._requests)
            try:
                request = p.request(prompt, f"llm-{number}", request_seed(DEFAULT_SEED, number))
            except ValueError as e:    # this prompt alone fails; the others run
                results[i] = error_completion(f"llm-{number}", str(e))
                continue
            requests.append(request)
            index[request.request_id] = i
        bar = self._progress_bar(len(requests), use_tqdm)
        gen = self._generator()
        try:
            out = gen.send(requests) if requests else None
            while out is not None:
                if isinstance(out, Completion) and out.request_id in index:
                    i = index[out.request_id]
                    results[i] = out
                    if bar is not None:
                        bar.update(1)
                        bar.set_postfix_str(f"{sum(len(r.output_ids) for r in results if r)} "
                                            "tokens")
                elif not isinstance(out, (Completion, TokenEvent)):
                    raise RuntimeError(f"unexpected result from the generator: {out!r}")
                out = next(gen)
        except KeyboardInterrupt:   # leave no request of this call running in the generator
            self._cancel([r.request_id for r in requests if results[index[r.request_id]] is None])
            raise
        finally:
            if bar is not None:
                bar.close()
        return results

    def _cancel(self, request_ids: list) -> None:
        gen = self._gen
        if gen is None or gen.gi_frame is None:
            return   # the interrupt ended the generator; the next call starts a fresh one
        try:
            for request_id in request_ids:
                gen.send(Cancel(request_id))
            while gen.send(None) is not None:   # drain what the cancels produced
                pass
        except KeyboardInterrupt:
            self._gen = None

    def _progress_bar(self, total: int, use_tqdm: bool):
        if not use_tqdm or self.quiet or total < PROGRESS_BAR_MIN_PROMPTS:
            return None
        from tqdm import tqdm

        return tqdm(total=total, desc="generate", unit="prompt", file=sys.stderr)


__all__ = ["LLM", "SamplingParams", "StartupTimes"]
