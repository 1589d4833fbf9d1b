"""grok.engine.sampling: greedy, temperature, top-k, the reference's nucleus rule, PRNG determinism."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from grok.engine.sampling import (DISALLOWED_LOGIT, NUM_ALTERNATIVES, NUM_CANDIDATES, SampleSettings,
                                  _candidates, _gumbel_at, _nucleus_filter, sample_token,
                                  token_logprobs)

ROWS, VOCAB = 16, 50
LOGITS = (np.random.default_rng(0).normal(size=(ROWS, VOCAB)) * 3).astype(np.float32)
sample = jax.jit(sample_token)


def settings(rows: int, temperature=1.0, nucleus_p=1.0, top_k=0) -> SampleSettings:
    full = lambda value, dtype: jnp.broadcast_to(jnp.asarray(value, dtype), (rows,))
    return SampleSettings(full(temperature, jnp.float32), full(nucleus_p, jnp.float32),
                          full(top_k, jnp.int32), jnp.ones((rows,), bool))


def keys(rows: int, seed: int = 0) -> jax.Array:
    return jax.random.split(jax.random.PRNGKey(seed), rows)


def tokens(logits, rows_settings, rows_keys) -> np.ndarray:
    return np.asarray(sample(jnp.asarray(logits), rows_settings, rows_keys).token_id)


GREEDY = LOGITS.argmax(axis=-1)


@pytest.mark.parametrize("seed", [0, 1])
def test_temperature_zero_is_argmax(seed):
    np.testing.assert_array_equal(tokens(LOGITS, settings(ROWS, 0.0), keys(ROWS, seed)), GREEDY)


@pytest.mark.parametrize("temperature", [0.3, 1.0, 5.0])
def test_top_k_one_is_greedy(temperature):
    for seed in range(3):
        got = tokens(LOGITS, settings(ROWS, temperature, top_k=1), keys(ROWS, seed))
        np.testing.assert_array_equal(got, GREEDY)


@pytest.mark.parametrize("nucleus_p", [1e-3, 1e-6, 1e-9])
def test_tiny_nucleus_is_greedy(nucleus_p):
    # 1e-9: 1 - p rounds to 1.0 in float32, which the float32 cumsum may never reach.
    for seed in range(3):
        got = tokens(LOGITS, settings(ROWS, 2.0, nucleus_p=nucleus_p), keys(ROWS, seed))
        np.testing.assert_array_equal(got, GREEDY)


def test_tiny_temperature_is_greedy():
    """Logits above 34 divided by 1e-37 overflow float32; several +inf would tie."""
    logits = LOGITS * 10
    assert ((logits > 34).sum(axis=-1) > 1).all()
    got = tokens(logits, settings(ROWS, 1e-37), keys(ROWS, 4))
    np.testing.assert_array_equal(got, GREEDY)


def test_fixed_key_is_deterministic_and_keys_matter():
    s = settings(ROWS, 1.5)
    first = tokens(LOGITS, s, keys(ROWS, 7))
    np.testing.assert_array_equal(tokens(LOGITS, s, keys(ROWS, 7)), first)
    assert (tokens(LOGITS, s, keys(ROWS, 8)) != first).any()
    assert (first != GREEDY).any()


def test_rows_do_not_depend_on_each_other():
    """A row's token depends only on its logits, settings and key (not on its neighbours)."""
    s = SampleSettings(jnp.asarray([0.0, 0.7, 1.0, 2.0] * 4, jnp.float32),
                       jnp.asarray([1.0, 0.9, 0.5, 1.0] * 4, jnp.float32),
                       jnp.asarray([0, 0, 3, 10] * 4, jnp.int32), jnp.ones((ROWS,), bool))
    k = keys(ROWS, 3)
    batched = tokens(LOGITS, s, k)
    for row in range(ROWS):
        one = SampleSettings(*(a[row:row + 1] for a in s))
        assert tokens(LOGITS[row:row + 1], one, k[row:row + 1])[0] == batched[row]


def nucleus_reference(row: np.ndarray, p: float) -> tuple[np.ndarray, float]:
    """spec/model.md "Sampling" step 3 in float64: (kept mask, distance of the cumsum to 1-p)."""
    ascending = np.sort(row.astype(np.float64))
    probs = np.exp(ascending - ascending.max())
    cumulative = np.cumsum(probs / probs.sum())
    first = int(np.argmax(cumulative >= 1 - p))
    return row >= ascending[first], float(np.min(np.abs(cumulative - (1 - p))))


@pytest.mark.parametrize("nucleus_p", [0.05, 0.3, 0.5, 0.8, 0.9, 0.99])
def test_nucleus_filter_matches_reference_rule(nucleus_p):
    logits = (np.random.default_rng(1).normal(size=(64, VOCAB)) * 2).astype(np.float32)
    filtered = np.asarray(_nucleus_filter(jnp.asarray(logits), jnp.full((64,), nucleus_p)))
    checked = 0
    for row, out in zip(logits, filtered):
        kept, margin = nucleus_reference(row, nucleus_p)
        if margin < 1e-5:        # float32 vs float64 rounding could go either way here
            continue
        checked += 1
        np.testing.assert_array_equal(out != DISALLOWED_LOGIT, kept)
        np.testing.assert_array_equal(out[kept], row[kept])
    assert checked >= 60


def test_nucleus_samples_stay_in_the_nucleus():
    p, rows = 0.5, 256
    logits = np.repeat(LOGITS[:1], rows, axis=0)
    kept, _ = nucleus_reference(LOGITS[0], p)
    got = tokens(logits, settings(rows, 1.0, nucleus_p=p), keys(rows, 5))
    assert kept[got].all()
    assert len(set(got.tolist())) > 1 and kept.sum() > 1


THREE = np.log(np.asarray([0.2, 0.3, 0.5], np.float32))


@pytest.mark.parametrize("temperature,top_k,nucleus_p,expected", [
    (1.0, 0, 1.0, [0.2, 0.3, 0.5]),
    (2.0, 0, 1.0, np.sqrt([0.2, 0.3, 0.5]) / np.sqrt([0.2, 0.3, 0.5]).sum()),
    (0.5, 0, 1.0, np.square([0.2, 0.3, 0.5]) / np.square([0.2, 0.3, 0.5]).sum()),
    (1.0, 2, 1.0, [0.0, 0.375, 0.625]),
    (1.0, 0, 0.6, [0.0, 0.375, 0.625]),   # ascending cumsum 0.2, 0.5, 1.0: reaches 0.4 at 0.3
    (1.0, 0, 0.3, [0.0, 0.0, 1.0]),       # reaches 0.7 at 0.5 only
])
def test_sample_frequencies(temperature, top_k, nucleus_p, expected):
    rows = 8000
    logits = np.broadcast_to(THREE, (rows, 3))
    got = tokens(logits, settings(rows, temperature, nucleus_p, top_k), keys(rows, 11))
    frequencies = np.bincount(got, minlength=3) / rows
    np.testing.assert_allclose(frequencies, expected, atol=0.02)   # ~4 standard deviations


def test_reported_logprobs_are_the_models():
    out = sample(jnp.asarray(LOGITS), settings(ROWS, 1.7, nucleus_p=0.9, top_k=5), keys(ROWS, 2))
    logprobs = np.asarray(jax.nn.log_softmax(LOGITS, axis=-1))
    token = np.asarray(out.token_id)
    np.testing.assert_allclose(out.logprob, logprobs[np.arange(ROWS), token], rtol=1e-6, atol=1e-6)
    top_ids = np.asarray(out.top_k_token_ids)
    assert top_ids.shape == (ROWS, NUM_ALTERNATIVES)
    np.testing.assert_array_equal(top_ids, np.argsort(-logprobs, axis=-1)[:, :NUM_ALTERNATIVES])
    np.testing.assert_allclose(out.top_k_logprobs, np.take_along_axis(logprobs, top_ids, -1),
                               rtol=1e-6, atol=1e-6)
    assert (np.diff(np.asarray(out.top_k_logprobs), axis=-1) <= 0).all()


def test_top_k_beyond_vocabulary_keeps_everything():
    s_all, s_big = settings(ROWS, 1.0), settings(ROWS, 1.0, top_k=VOCAB + 5)
    for seed in range(3):
        np.testing.assert_array_equal(tokens(LOGITS, s_big, keys(ROWS, seed)),
                                      tokens(LOGITS, s_all, keys(ROWS, seed)))


def test_token_logprobs():
    logits = jnp.asarray(LOGITS.reshape(2, 8, VOCAB))
    targets = np.random.default_rng(2).integers(0, VOCAB, size=(2, 8))
    got = np.asarray(token_logprobs(logits, jnp.asarray(targets)))
    logprobs = np.asarray(jax.nn.log_softmax(logits, axis=-1))
    np.testing.assert_allclose(got, np.take_along_axis(logprobs, targets[..., None], -1)[..., 0],
                               rtol=1e-6, atol=1e-6)


# ---- candidate-set sampling vs the full-sort implementation it replaced -----------------------
# The reference below is the previous grok.engine.sampling (a full sort per row for top-k and
# top-p, then jax.random.categorical over the whole row), kept verbatim as the oracle.
def _reference_top_k_filter(logits, top_k):
    v = logits.shape[-1]
    k = jnp.where(top_k > 0, jnp.minimum(top_k, v), v)
    kth = jnp.take_along_axis(jnp.sort(logits, axis=-1), (v - k)[:, None], axis=-1)
    return jnp.where(logits >= kth, logits, DISALLOWED_LOGIT)


def _reference_nucleus_filter(logits, nucleus_p):
    ascending = jnp.sort(logits, axis=-1)
    cumulative = jnp.cumsum(jax.nn.softmax(ascending, axis=-1), axis=-1)
    reached = cumulative >= (1.0 - nucleus_p)[:, None]
    last = ascending.shape[-1] - 1
    first = jnp.where(jnp.any(reached, axis=-1), jnp.argmax(reached, axis=-1), last)
    threshold = jnp.take_along_axis(ascending, first[:, None], axis=-1)
    return jnp.where(logits >= threshold, logits, DISALLOWED_LOGIT)


@jax.jit
def reference_tokens(logits, settings, keys):
    logits = logits.astype(jnp.float32)
    greedy = settings.temperature <= 0
    shifted = logits - jnp.max(logits, axis=-1, keepdims=True)
    scaled = shifted / jnp.where(greedy, 1.0, settings.temperature)[:, None]
    scaled = jax.lax.cond(jnp.any(settings.top_k > 0),
                          lambda s: _reference_top_k_filter(s, settings.top_k), lambda s: s, scaled)
    scaled = jax.lax.cond(jnp.any(settings.top_p < 1),
                          lambda s: _reference_nucleus_filter(s, settings.top_p), lambda s: s, scaled)
    argmax = jnp.argmax(logits, axis=-1)
    sampled = jax.lax.cond(jnp.all(greedy), lambda: argmax,
                           lambda: jax.vmap(jax.random.categorical)(keys, scaled))
    return jnp.where(greedy, argmax, sampled).astype(jnp.int32)


CANDIDATES = 16           # small, so that rows fall on both sides of the candidate set
WIDE_VOCAB, WIDE_ROWS = 512, 24
sample_few = jax.jit(functools.partial(sample_token, num_candidates=CANDIDATES))
candidates = jax.jit(_candidates, static_argnums=2)


def _logit_families(rng) -> dict:
    """[rows, WIDE_VOCAB] logits: peaked (Zipf-2), flat, and coarse (many exact ties)."""
    ranks = np.stack([rng.permutation(WIDE_VOCAB) for _ in range(WIDE_ROWS)]) + 1
    peaked = -2.0 * np.log(ranks) + rng.normal(size=ranks.shape) * 0.05
    flat = rng.normal(size=ranks.shape) * 1.5
    coarse = np.round(rng.normal(size=ranks.shape) * 2) * 0.5 + np.where(ranks <= 4, 6.0, 0.0)
    return {name: x.astype(np.float32) for name, x in
            (("peaked", peaked), ("flat", flat), ("coarse", coarse))}


def _nucleus_margin(logits, s: SampleSettings) -> np.ndarray:
    """Per row, float64: how close the reference's ascending cumsum comes to 1 - p, where
    float32 rounding could tip its threshold either way (inf: no nucleus)."""
    margins = []
    for row, temperature, p, top_k in zip(logits, *map(np.asarray, s[:3])):
        if p >= 1 or temperature <= 0:
            margins.append(np.inf)
            continue
        row = ((row - row.max()) / temperature).astype(np.float64)
        if 0 < top_k < len(row):
            row = np.where(row >= np.sort(row)[len(row) - top_k], row, -np.inf)
        ascending = np.sort(row)
        probs = np.exp(ascending - ascending.max())
        cumulative = np.cumsum(probs / probs.sum())
        # the reference compares with 1 - p in float32; the last rank (cumsum 1) keeps only
        # the max whether or not the float32 cumsum reaches 1 - p there, so it is never close
        target = float(np.float32(1) - p)
        margins.append(np.min(np.abs(cumulative[:-1] - target)))
    return np.asarray(margins)


EDGE_SETTINGS = [  # (temperature, nucleus_p, top_k)
    (0.0, 0.9, 5), (1.0, 1.0, 0), (0.7, 1.0, 0), (1.0, 0.9, 0), (1.3, 0.5, 0), (1.0, 0.99, 0),
    (1.0, 1e-9, 0), (2.0, 1e-3, 0), (1.0, 1.0, 1), (1.0, 1.0, 5), (1.0, 1.0, CANDIDATES),
    (1.0, 1.0, CANDIDATES + 1), (1.0, 0.9, CANDIDATES + 1), (1.0, 0.8, 10), (0.5, 0.95, 3),
    (1.0, 1.0, WIDE_VOCAB + 5), (1e-37, 0.9, 0), (1e-37, 1.0, 7), (1e-3, 0.99, 0), (4.0, 0.3, 0),
]


def test_same_tokens_as_full_sort_implementation():
    """Every family x edge setting x seed: the candidate path and the fallback give the
    reference's token wherever the nucleus decision is not within float32 rounding."""
    rng = np.random.default_rng(21)
    checked = skipped = 0
    settled_seen = set()
    for family, logits in _logit_families(rng).items():
        mixed = [(0.0, 1.0, 0), (1.0, 0.9, 0), (0.8, 1.0, 7), (1.0, 0.6, 4)] * (WIDE_ROWS // 4)
        for s in [settings(WIDE_ROWS, *setting) for setting in EDGE_SETTINGS] + [
                SampleSettings(*(jnp.asarray(column, dtype) for column, dtype in
                                 zip(zip(*mixed), (jnp.float32, jnp.float32, jnp.int32))),
                               jnp.ones((WIDE_ROWS,), bool))]:
            margin = _nucleus_margin(logits, s)
            temperature = np.asarray(s.temperature)[:, None]
            scaled = (logits - logits.max(-1, keepdims=True)) / np.where(temperature > 0, temperature, 1)
            settled = candidates(jnp.asarray(scaled), s, CANDIDATES).draw_settled
            settled_seen.update(np.asarray(settled).tolist())
            for seed in range(2):
                k = keys(WIDE_ROWS, seed)
                got = np.asarray(sample_few(jnp.asarray(logits), s, k).token_id)
                want = np.asarray(reference_tokens(jnp.asarray(logits), s, k))
                sure = margin > 1e-5
                np.testing.assert_array_equal(got[sure], want[sure],
                                              err_msg=f"{family} {s}")
                checked += sure.sum()
                skipped += (~sure).sum()
    assert settled_seen == {True, False}      # both the candidate draw and the fallback ran
    assert skipped < 0.01 * checked, (checked, skipped)


def test_gumbel_at_candidates_is_jax_random_gumbel():
    vocab, rows = 1024, 4
    ids = jnp.asarray(np.random.default_rng(3).integers(0, vocab, size=(rows, 64)), jnp.int32)
    for k in (keys(rows, 9), jax.random.split(jax.random.key(9), rows)):   # raw and typed keys
        full = jax.vmap(lambda key: jax.random.gumbel(key, (vocab,)))(k)
        np.testing.assert_array_equal(np.asarray(jax.jit(_gumbel_at)(k, ids)),
                                      np.take_along_axis(np.asarray(full), np.asarray(ids), -1))


def test_default_candidates_settle_a_peaked_nucleus():
    """NUM_CANDIDATES: a peaked (Zipf-2) row's p=0.99 nucleus is settled by the candidates (no
    sort) and gives the reference's tokens; a flat row's spans more than C of its 512 tokens,
    falls back to the full sort and gives them too."""
    families = _logit_families(np.random.default_rng(5))
    s = settings(WIDE_ROWS, 1.0, 0.99, 0)
    for family, settled in (("peaked", True), ("flat", False)):
        logits = jnp.asarray(families[family])
        scaled = logits - jnp.max(logits, axis=-1, keepdims=True)     # temperature 1
        assert (np.asarray(candidates(scaled, s, NUM_CANDIDATES).draw_settled) == settled).all()
        for seed in range(2):
            k = keys(WIDE_ROWS, seed)
            np.testing.assert_array_equal(sample(logits, s, k).token_id, reference_tokens(logits, s, k))


def test_inactive_rows_take_the_argmax_and_change_nothing_else():
    s = settings(ROWS, 1.0, 0.9, 0)._replace(active=jnp.asarray([True, False] * (ROWS // 2)))
    got = tokens(LOGITS, s, keys(ROWS, 6))
    np.testing.assert_array_equal(got[1::2], GREEDY[1::2])
    np.testing.assert_array_equal(got[::2], tokens(LOGITS, settings(ROWS, 1.0, 0.9, 0), keys(ROWS, 6))[::2])


def test_num_candidates_must_be_positive():
    with pytest.raises(ValueError, match="num_candidates"):
        sample_token(jnp.asarray(LOGITS), settings(ROWS), keys(ROWS), num_candidates=0)


def test_sampling_benchmark_runs_every_case(capsys):
    from grok.benchmarks import sampling as bench
    # the shape of the test above, so the compiled sample_token is reused
    result = bench.main(["--vocab", str(WIDE_VOCAB), "--slots", str(WIDE_ROWS), "--iters", "1"])
    assert set(result["ms_per_call"]) == {name for name, _, _ in bench.CASES}
    assert result["ratio_to_greedy"]["greedy"] == 1.0
    assert all(ms > 0 for ms in result["ms_per_call"].values())
    assert "all top-p" in capsys.readouterr().out
    with pytest.raises(ValueError, match="--slots"):
        bench.main(["--slots", "0"])
