"""Benchmark: an OpenAI-compatible server under load, like vLLM's benchmark_serving.

    python -m grok.bench serve                                 # starts the demo server itself
    python -m grok.bench serve --url http://127.0.0.1:8000 --model grok-1 \\
        --num-prompts 200 --request-rate 4 --input-len 512 --output-len 128 --json serve.json

Sends --num-prompts streaming /v1/completions requests, either --concurrency at a time or
arriving as a Poisson process at --request-rate per second, and measures per request:
TTFT (request sent -> first token), TPOT ((end - first token) / (tokens - 1)), the gaps
between its streamed chunks (ITL) and end to end latency; overall: requests and tokens per
second over the run (after --warmup untimed requests). Prints a table and returns (and with
--json writes) the figures.
Bounded: --num-prompts requests at most, and none sent after --max-duration seconds.

Prompts are words drawn with a fixed seed, about --input-len tokens for a byte or
SentencePiece tokenizer (prompt token counts are the server's, from `usage`); every request
asks for exactly --output-len tokens with its own seed (a model that writes EOS earlier
stops earlier; the token counts are what came back).

Without --url, a server for the demo model is started on 127.0.0.1 (a free port, the
--batch-size slots, --precompile-all so no compile falls inside the run) and stopped with
SIGTERM at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import socket
import statistics
import subprocess
import sys
import time
from typing import Optional, Sequence

import httpx

from grok.benchmarks import save_report

WORDS = ("the model of a mixture experts runs each token through two of eight feed forward "
         "networks chosen by a router while attention looks back over the cache").split()
SERVER_START_TIMEOUT_S = 300  # compile time of the demo on a slow CPU, with margin
SERVER_STOP_TIMEOUT_S = 60
PERCENTILES = (50, 99)
DEFAULT_WARMUP = 8            # one full batch of the default 8 slots


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m grok.bench serve", description=__doc__.split(
        "\n\n")[0])
    p.add_argument("--url", help="a running server (default: start the demo on 127.0.0.1)")
    p.add_argument("--model", help="model name (default: the server's first model)")
    p.add_argument("--api-key", default=os.environ.get("GROK_API_KEY"))
    p.add_argument("--num-prompts", type=int, default=64)
    load = p.add_mutually_exclusive_group()
    load.add_argument("--concurrency", type=int, help="requests in flight (default 8)")
    load.add_argument("--request-rate", type=float, help="Poisson arrivals per second")
    p.add_argument("--input-len", type=int, default=32, help="prompt tokens (about)")
    p.add_argument("--output-len", type=int, default=32, help="new tokens per request")
    p.add_argument("--max-duration", type=float, default=600.0, help="seconds: no request "
                   "is sent after this")
    p.add_argument("--warmup", type=int, default=DEFAULT_WARMUP, metavar="N", help="untimed "
                   "requests sent N at once first (compiles of new shapes fall on them)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=8, help="slots of the server this "
                   "benchmark starts (without --url)")
    p.add_argument("--tokens-per-word", type=float, help="prompt tokens per word (default: "
                   "measured with the server's /tokenize)")
    p.add_argument("--json", metavar="FILE", help="also write the results here")
    return p


def _check(args) -> None:
    if args.warmup < 0:
        raise SystemExit("--warmup must be >= 0")
    for name in ("num_prompts", "input_len", "output_len", "batch_size"):
        if getattr(args, name) < 1:
            raise SystemExit(f"--{name.replace('_', '-')} must be >= 1")
    if args.concurrency is not None and args.concurrency < 1:
        raise SystemExit("--concurrency must be >= 1")
    if args.request_rate is not None and not args.request_rate > 0:
        raise SystemExit("--request-rate must be > 0")


def make_prompts(n: int, words_each: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(max(1, words_each))) for _ in range(n)]


def _percentiles(values: Sequence[float], scale: float = 1e3) -> dict:
    if not values:
        return {"mean": None, **{f"p{q}": None for q in PERCENTILES}}
    ordered = sorted(values)
    pick = lambda q: ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]
    return {"mean": statistics.fmean(values) * scale,
            **{f"p{q}": pick(q) * scale for q in PERCENTILES}}


async def _one(client: httpx.AsyncClient, model: str, prompt: str, args, seed: int) -> dict:
    body = {"model": model, "prompt": prompt, "max_tokens": args.output_len, "stream": True,
            "temperature": 1.0, "seed": seed, "stream_options": {"include_usage": True}}
    start = time.perf_counter()
    chunk_times, usage, error = [], None, None
    try:
        async with client.stream("POST", "/v1/completions", json=body) as response:
            if response.status_code != 200:
                error = f"HTTP {response.status_code}: {(await response.aread())[:200]!r}"
            else:
                async for line in response.aiter_lines():
                    if not line.startswith("data: ") or line == "data: [DONE]":
                        continue
                    data = json.loads(line[len("data: "):])
                    if "error" in data:
                        error = data["error"]["message"]
                    elif data.get("usage"):
                        usage = data["usage"]
                    elif data["choices"] and data["choices"][0]["text"]:
                        chunk_times.append(time.perf_counter())
    except httpx.HTTPError as e:
        error = f"{type(e).__name__}: {e}"
    end = time.perf_counter()
    result = {"ok": error is None and usage is not None, "error": error, "latency": end - start}
    if result["ok"]:
        tokens = usage["completion_tokens"]
        result.update(prompt_tokens=usage["prompt_tokens"], output_tokens=tokens,
                      ttft=(chunk_times[0] - start) if chunk_times else None,
                      itl=[b - a for a, b in zip(chunk_times, chunk_times[1:])],
                      tpot=((end - chunk_times[0]) / (tokens - 1)
                            if chunk_times and tokens > 1 else None))
    return result


async def _run(url: str, args, model: str, prompts: list[str]) -> tuple[list, float]:
    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=None)
    concurrency = args.concurrency or (None if args.request_rate else 8)
    gate = asyncio.Semaphore(concurrency) if concurrency else None
    rng = random.Random(args.seed)
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=None,
                                 limits=limits) as client:
        start = time.perf_counter()
        deadline = start + args.max_duration

        async def limited(i: int, prompt: str) -> Optional[dict]:
            if gate is None:
                return await _one(client, model, prompt, args, args.seed + i)
            async with gate:
                if time.perf_counter() > deadline:
                    return None
                return await _one(client, model, prompt, args, args.seed + i)

        tasks = []
        for i, prompt in enumerate(prompts):
            if time.perf_counter() > deadline:
                break
            tasks.append(asyncio.ensure_future(limited(i, prompt)))
            if args.request_rate:
                await asyncio.sleep(rng.expovariate(args.request_rate))
        results = [r for r in await asyncio.gather(*tasks) if r is not None]
        return results, time.perf_counter() - start


def summarize(results: list, duration: float, args) -> dict:
    ok = [r for r in results if r["ok"]]
    out_tokens = sum(r["output_tokens"] for r in ok)
    in_tokens = sum(r["prompt_tokens"] for r in ok)
    return {
        "completed": len(ok), "failed": len(results) - len(ok),
        "errors": sorted({r["error"] for r in results if not r["ok"]})[:5],
        "duration_s": duration,
        "concurrency": args.concurrency or (None if args.request_rate else 8),
        "request_rate": args.request_rate,
        "input_tokens": in_tokens, "output_tokens": out_tokens,
        "request_throughput": len(ok) / duration,
        "output_token_throughput": out_tokens / duration,
        "total_token_throughput": (in_tokens + out_tokens) / duration,
        "ttft_ms": _percentiles([r["ttft"] for r in ok if r["ttft"] is not None]),
        "tpot_ms": _percentiles([r["tpot"] for r in ok if r["tpot"] is not None]),
        "itl_ms": _percentiles([gap for r in ok for gap in r["itl"]]),
        "e2e_ms": _percentiles([r["latency"] for r in ok]),
    }


def print_table(report: dict) -> None:
    load = (f"concurrency {report['concurrency']}" if report["concurrency"]
            else f"Poisson {report['request_rate']}/s")
    print(f"serving benchmark ({load}): {report['completed']} completed, {report['failed']} "
          f"failed in {report['duration_s']:.2f} s")
    print(f"  requests/s {report['request_throughput']:.2f}   output tokens/s "
          f"{report['output_token_throughput']:.1f}   total tokens/s "
          f"{report['total_token_throughput']:.1f}")
    print(f"  {'ms':<6}{'mean':>10}{'p50':>10}{'p99':>10}")
    for name in ("ttft", "tpot", "itl", "e2e"):
        row = report[f"{name}_ms"]
        cells = "".join(f"{v:>10.2f}" if v is not None else f"{'-':>10}"
                        for v in (row["mean"], row["p50"], row["p99"]))
        print(f"  {name.upper():<6}{cells}")
    for error in report["errors"]:
        print(f"  error: {error}")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_demo_server(batch_size: int, precompile_all: bool = False,
                      flags: Sequence[str] = ()) -> tuple[subprocess.Popen, str]:
    """The demo model served on 127.0.0.1 (a free port) in a child process, once healthy;
    `flags`: more `grok serve` flags."""
    port = _free_port()
    flags = (["--precompile-all"] if precompile_all else []) + list(flags)
    process = subprocess.Popen([sys.executable, "-m", "grok", "serve", "--port", str(port),
                                "--batch-size", str(batch_size)] + flags,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + SERVER_START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the demo server exited: {process.stderr.read().decode()[-2000:]}")
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                return process, url
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    process.kill()
    raise RuntimeError("the demo server did not become healthy in time")


def stop_server(process: subprocess.Popen) -> int:
    process.terminate()
    try:
        return process.wait(SERVER_STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        process.kill()
        return process.wait()


def main(argv: Optional[Sequence[str]] = None) -> dict:
    args = build_parser().parse_args(argv)
    _check(args)
    process = None
    url = args.url
    if url is None:
        process, url = start_demo_server(args.batch_size, precompile_all=True)
    try:
        headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
        model = args.model or httpx.get(url + "/v1/models", headers=headers,
                                        timeout=30).json()["data"][0]["id"]
        per_word = args.tokens_per_word
        if per_word is None:
            sample = " ".join(WORDS)
            counted = httpx.post(url + "/tokenize", json={"prompt": sample}, headers=headers,
                                 timeout=30).json()["count"]
            per_word = counted / len(WORDS)
        prompts = make_prompts(args.num_prompts, round(args.input_len / per_word), args.seed)
        if args.warmup:
            warm = argparse.Namespace(**{**vars(args), "concurrency": args.warmup,
                                         "request_rate": None, "seed": args.seed + 10**6})
            asyncio.run(_run(url, warm, model, prompts[:args.warmup]))
        results, duration = asyncio.run(_run(url, args, model, prompts))
    finally:
        if process is not None:
            stop_server(process)
    report = summarize(results, duration, args)
    report.update(model=model, url=args.url or "demo (started by the benchmark)",
                  num_prompts=args.num_prompts, input_len=args.input_len,
                  output_len=args.output_len)
    print_table(report)
    save_report(report, args.json)
    return report


if __name__ == "__main__":
    main()
