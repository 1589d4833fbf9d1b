"""A plain float32 NumPy Grok forward pass, written from spec/model.md, for cross-checks.

Takes the per-layer checkpoint tensors (ckpt path -> array or QuantizedWeight8bit) so it
shares no code with grok.model.
"""

import numpy as np


def _deq(qw):
    w = np.asarray(qw.weight, np.float32)
    s = np.asarray(qw.scales, np.float32)
    *lead, k, n = w.shape
    g = s.shape[-2]
    return (w.reshape(*lead, g, k // g, n) * s[..., :, None, :]).reshape(w.shape)


def _rms(x, scale, eps):
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * scale


def _gelu(x):
    return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x ** 3)))


def _rope(x, base):  # x [T, heads, d]
    t, _, d = x.shape
    inv = base ** (-np.arange(0, d, 2, dtype=np.float32) / d)
    phase = np.arange(t, dtype=np.float32)[:, None] * inv
    phase = np.concatenate([phase, phase], -1)[:, None, :]
    rot = np.concatenate([-x[..., d // 2:], x[..., :d // 2]], -1)
    return x * np.cos(phase) + rot * np.sin(phase)


def _attention(x, p, c, prefix, tokens, pad):
    t = x.shape[0]
    h, k, d = c.num_q_heads, c.num_kv_heads, c.key_size
    q = _rope((x @ _deq(p[prefix + "query/w"])).reshape(t, h, d), c.rope_base)
    kk = _rope((x @ _deq(p[prefix + "key/w"])).reshape(t, k, d), c.rope_base)
    v = (x @ _deq(p[prefix + "value/w"])).reshape(t, k, d)
    out = np.zeros((t, h, d), np.float32)
    visible = np.tril(np.ones((t, t), bool)) & (tokens > pad)[None, :]
    for head in range(h):
        kv = head // (h // k)
        s = q[:, head] @ kk[:, kv].T * c.attn_output_multiplier
        s = c.attn_logit_soft_cap * np.tanh(s / c.attn_logit_soft_cap)
        s = np.where(visible, s, -1e30)
        w = np.exp(s - s.max(-1, keepdims=True))
        out[:, head] = (w / w.sum(-1, keepdims=True)) @ v[:, kv]
    return out.reshape(t, h * d) @ _deq(p[prefix + "linear/w"])


def _moe(x, p, c, prefix):
    logits = x @ np.asarray(p[prefix + "router/w"], np.float32)
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    out = np.zeros_like(x)
    w_gate, w_value, w_down = (_deq(p[prefix + f"moe/{n}/w"]) for n in ("linear", "linear_v", "linear_1"))
    for m in range(x.shape[0]):
        for e in np.argsort(-probs[m], kind="stable")[:c.num_selected_experts]:
            h = _gelu(x[m] @ w_gate[e]) * (x[m] @ w_value[e])
            out[m] += probs[m, e] * (h @ w_down[e])
    return out


def forward(tensors, config, tokens):
    """Logits [T, V] for one sequence of token ids."""
    c = config.model
    p = tensors
    tokens = np.asarray(tokens)
    table = np.asarray(p["language_model/in_out_embed/embeddings"], np.float32)
    x = table[tokens] * config.embedding_multiplier_scale
    for layer in range(c.num_layers):
        pre = f"transformer/decoder_layer_{layer}/"
        norm = lambda name, v: _rms(v, np.asarray(p[pre + name + "/scale"], np.float32), c.norm_eps)
        a = _attention(norm("rms_norm", x), p, c, pre + "multi_head_attention/", tokens, config.pad_token)
        x = x + norm("rms_norm_1", a)
        x = x + norm("rms_norm_3", _moe(norm("rms_norm_2", x), p, c, pre))
    y = _rms(x, np.asarray(p["language_model/rms_norm/scale"], np.float32), c.norm_eps)
    return (y @ table.T) * config.output_multiplier_scale
