"""smol-vl card's figures and derived tables: example pages with the model's answers, accuracy by set, by key
style and by pixel shift (95 % Wilson intervals), all drawn from the stored evaluation (`weights/model_card.json`).

The example pages are regenerated from the card's seed (the first sample of each held-out set), so the figure
needs the stored answers only, never the model.
"""
from __future__ import annotations

from pathlib import Path

from ocrheads_lib.metrics import wilson_interval

FIGURE_DIR = Path(__file__).resolve().parents[3] / "book" / "figures" / "smolvl"
EXAMPLE_SETS = {"key_aligned": "key alone, aligned", "key_unaligned": "key alone, off the grid",
                "key_words_unaligned": "words, off the grid", "page_book": "pass key in a paragraph page",
                "niah_book": "needle in a haystack (page 1 of 2)"}
STYLE_NAMES = {"digits": "digits (3-6)", "paper": "numbers 1-10000", "char": "one character",
               "alnum": "letters + digits", "words": "1-3 words"}


def style_accuracy(sets: dict, results: dict, names: tuple[str, ...] = ("key_aligned", "key_unaligned")) -> dict:
    """{set: {style: {n, correct, accuracy, wilson95}}} from the per-sample hits of `results` and the key style
    each example of `sets` was drawn with (`meta["style"]`)."""
    out: dict[str, dict] = {}
    for name in names:
        if name not in results or "hits" not in results[name]:
            continue
        counts: dict[str, list[int]] = {}
        for example, hit in zip(sets[name], results[name]["hits"]):
            tally = counts.setdefault(example.meta.get("style", "?"), [0, 0])
            tally[0] += 1
            tally[1] += hit == "1"
        out[name] = {style: {"n": n, "correct": k, "accuracy": round(k / n, 4),
                             "wilson95": [round(x, 4) for x in wilson_interval(k, n)]}
                     for style, (n, k) in sorted(counts.items())}
    return out


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _errorbar(ax, xs, result_list, **kwargs):
    acc = [100 * r["accuracy"] for r in result_list]
    lo = [100 * (r["accuracy"] - r["wilson95"][0]) for r in result_list]
    hi = [100 * (r["wilson95"][1] - r["accuracy"]) for r in result_list]
    return ax.errorbar(xs, acc, yerr=[lo, hi], capsize=3, **kwargs)


def plot_accuracy(card: dict, path: Path) -> Path:
    """Three panels: accuracy per held-out set (target marked), per key style, and per pixel shift."""
    plt = _pyplot()
    results = card.get("results", {})
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.6), dpi=100, gridspec_kw={"width_ratios": [1.3, 1, 1]})
    names = [n for n in results if n != "text_passkey_smollm2"]
    ax = axes[0]
    _errorbar(ax, range(len(names)), [results[n] for n in names], fmt="o", color="tab:blue", label="smol-vl")
    if "text_passkey_smollm2" in results and "text_passkey" in names:
        _errorbar(ax, [names.index("text_passkey") + 0.25], [results["text_passkey_smollm2"]], fmt="s",
                  color="tab:gray", label="SmolLM2 alone")
    ax.set_xticks(range(len(names)), [n.replace("_", "\n") for n in names], fontsize=7)
    ax.set_ylim(-3, 103)
    ax.set_ylabel("accuracy, % (95 % Wilson)")
    ax.set_title(f"held-out sets (n = {card.get('n')} each)", fontsize=9)
    ax.legend(fontsize=7, loc="lower left")
    ax = axes[1]
    styles = card.get("styles", {})
    for offset, (name, color) in zip((-0.12, 0.12), (("key_aligned", "tab:blue"), ("key_unaligned", "tab:orange"))):
        rows = styles.get(name, {})
        keys = sorted(rows)
        if keys:
            _errorbar(ax, [i + offset for i in range(len(keys))], [rows[k] for k in keys], fmt="o", color=color,
                      label=name.replace("key_", ""))
            ax.set_xticks(range(len(keys)), [f"{STYLE_NAMES.get(k, k)}\n(n={rows[k]['n']})" for k in keys], fontsize=6)
    ax.set_ylim(-3, 103)
    ax.set_title("keys alone, by what the key is", fontsize=9)
    ax.legend(fontsize=7, loc="lower left")
    ax = axes[2]
    shift = card.get("shift")
    if shift:
        res, shifts = shift["results"], list(shift["shifts"])
        for axis, color in (("x", "tab:blue"), ("y", "tab:red")):
            series = [res["x0"] if s == 0 else res[f"{axis}{s}"] for s in shifts]
            _errorbar(ax, shifts, series, fmt="-o", color=color, label="right" if axis == "x" else "down")
        ax.set_xticks(shifts)
        ax.set_xlabel("shift off the 28-px grid (px)")
        ax.set_title(f"the same {shift['n']} keys, moved", fontsize=9)
        ax.legend(fontsize=7, loc="lower left")
    ax.set_ylim(-3, 103)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, metadata={"Software": None})
    plt.close(fig)
    return path


def plot_examples(card: dict, path: Path) -> Path:
    """The first page of each image set of the card's evaluation with the question, the gold answer and
    smol-vl's answer."""
    from ocrheads_lib.embedded.smolvl.train import heldout_sets

    plt = _pyplot()
    results = card.get("results", {})
    sets = heldout_sets(1, card["seed"])
    names = [n for n in EXAMPLE_SETS if n in results and results[n].get("first")]
    if not names:
        raise ValueError("the stored evaluation keeps no answers per set ('first'): re-run "
                         "`python -m ocrheads_lib.embedded.smolvl.card` to measure them")
    fig, axes = plt.subplots(len(names), 1, figsize=(7, 1.75 * len(names)), dpi=100)
    for ax, name in zip(axes if len(names) > 1 else [axes], names):
        example, shown = sets[name][0], results[name]["first"][0]
        ax.imshow(example.pages[0])
        ax.set_xticks([])
        ax.set_yticks([])
        verdict = "right" if shown["gold"] in shown["prediction"] else "wrong"
        ax.set_title(f"{EXAMPLE_SETS[name]}: \"{example.prompt[:60]}\"\ngold {shown['gold']!r}, smol-vl "
                     f"{shown['prediction']!r} ({verdict})", fontsize=8, loc="left")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, metadata={"Software": None})
    plt.close(fig)
    return path
