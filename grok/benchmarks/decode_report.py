"""The decode benchmark's ratios (measured side by side in one sweep) and its printed table.

Glossary: S sequence_len, E experts.
"""

from __future__ import annotations

import itertools
import sys
from typing import Any

SETTINGS = ("layers", "experts", "moe", "batch_size", "dtype", "sequence_len")  # one run's


def _group(runs: list[dict], varying: str) -> dict:
    """Runs grouped by every setting except `varying`."""
    groups: dict = {}
    for run in runs:
        key = tuple((k, run[k]) for k in SETTINGS if k != varying and k in run)
        groups.setdefault(key, {})[run[varying]] = run
    return groups


def comparisons(runs: list[dict]) -> list[dict]:
    """Sparse/dense decode speed; step time at the most over the fewest experts and at the
    longest over the shortest cache; compile time at the most over the fewest layers."""
    out = []
    for key, by_moe in _group(runs, "moe").items():
        if {"sparse", "dense"} <= set(by_moe):
            ratio = by_moe["sparse"]["decode_tokens_per_s"] / by_moe["dense"]["decode_tokens_per_s"]
            out.append({"what": "decode_tokens_per_s sparse / dense", **dict(key), "ratio": ratio})
    for varying, label in (("experts", "experts"), ("sequence_len", "sequence_len")):
        if not all(varying in run for run in runs):
            continue
        for key, by_value in _group(runs, varying).items():
            if len(by_value) > 1:
                most, fewest = max(by_value), min(by_value)
                out.append({"what": f"decode_step_ms {label} {most} / {fewest}", **dict(key),
                            "ratio": by_value[most]["decode_step_ms"] / by_value[fewest]["decode_step_ms"]})
    for key, by_layers in _group(runs, "layers").items():
        if len(by_layers) > 1:
            most, fewest = by_layers[max(by_layers)], by_layers[min(by_layers)]
            for timing, name in itertools.product(("compile_s", "compile_cpu_s"), most["compile_s"]):
                if name == "new_memory":  # zeros only; nothing that grows with depth
                    continue
                out.append({"what": f"{timing}[{name}] {max(by_layers)} / {min(by_layers)} layers",
                            **dict(key), "ratio": most[timing][name] / fewest[timing][name]})
    return out


def _columns(run: dict) -> list[tuple[str, Any]]:
    """(header, value) of one table row."""
    cols = [("layers", run["layers"]), ("E", run["experts"]), ("moe", run["moe"]),
            ("slots", run["batch_size"]), ("dtype", run["dtype"]), ("S", run["sequence_len"]),
            ("kv_len", run["kv_len"]), ("load s", f"{run['load_s']:.1f}")]
    cols += [(f"compile {name} s", f"{s:.1f}") for name, s in run["compile_s"].items()
             if name != "new_memory"]
    cols += [("prefill ms", f"{run['prefill_ms']:.1f}"), ("step ms", f"{run['decode_step_ms']:.2f}"),
             ("tok/s", f"{run['decode_tokens_per_s']:.2f}"), ("rss MB", f"{run['peak_rss_mb']:.0f}"),
             ("weights GB/s", f"{run['weight_read_gb_per_s']:.2f}"),
             ("useful w+KV GB/s", f"{run['useful_gb_per_s']:.2f}"),
             ("of bandwidth", f"{100 * run['of_bandwidth']:.1f}%")]
    if "hlo" in run:
        cols.append(("collectives/layer", run["hlo"]["collectives_per_layer"]))
    if "device_peak_mb" in run:
        cols.append(("dev peak MB", f"{run['device_peak_mb']:.0f}"))
    return cols


def print_report(report: dict, file=sys.stdout) -> None:
    """A plain (Markdown) table of the runs, then the ratios."""
    rows = [_columns(run) for run in report["runs"]]
    header = [h for h, _ in max(rows, key=len)]
    widths = [max(len(str(cell)) for cell in [h] + [r[i][1] for r in rows if i < len(r)])
              for i, h in enumerate(header)]
    line = lambda cells: "| " + " | ".join(str(c).rjust(w) for c, w in zip(cells, widths)) + " |"
    print(f"{report['device']}, mesh {tuple(report['mesh'])}, prompt {report['prompt_len']}, "
          f"{report['new_tokens']} timed decode steps (median); bandwidth "
          f"{report['bandwidth_gb_per_s']:.1f} GB/s ({report['bandwidth_source']})", file=file)
    print(line(header), file=file)
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|", file=file)
    for row in rows:
        print(line([v for _, v in row]), file=file)
    for c in report["comparisons"]:
        where = ", ".join(f"{k} {c[k]}" for k in SETTINGS if k in c)
        print(f"{c['what']} ({where}): {c['ratio']:.2f}x", file=file)
