"""The paper's figures rebuilt from run records (PNG and PDF).

Figures are drawn on ``matplotlib.figure.Figure`` objects, never through pyplot, so no
display or global backend is involved (PNG renders through Agg). Where the paper prints
the numbers behind a figure (Table B.2 for Figures 4 and 5) they are drawn as dashed
reference lines with hollow markers; our runs are solid lines. A figure with nothing of
ours to show says so in its panel.

* Figure 4: test BPC vs multiply-adds per token (log x), one line per kind
  (HMM, Monarch-2/3/4);
* Figure 5: test BPC vs hidden size (log2 x), same kinds;
* Figure 6: bits per token vs fraction of hidden states pruned (from ``pruning.json``);
* Figure 7: ImageNet64 test BPD vs multiply-adds per dimension, HCLT vs Monarch-HCLT.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from matplotlib.axes import Axes
from matplotlib.figure import Figure

from monarchpc.reports import paper
from monarchpc.reports.records import RunRecord, matching, select

KINDS: list[int | None] = [None, 2, 3, 4]  # dense HMM, Monarch-2/3/4
COLORS = {None: "tab:blue", 2: "tab:orange", 3: "tab:green", 4: "tab:red",
          "dense": "tab:blue", "monarch": "tab:orange"}


def _save(fig: Figure, out: str | Path, stem: str) -> list[Path]:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / f"{stem}.png", out / f"{stem}.pdf"]
    fig.savefig(paths[0], dpi=150, bbox_inches="tight")
    # no creation date: regenerated figures of unchanged runs are byte-identical
    fig.savefig(paths[1], bbox_inches="tight", metadata={"CreationDate": None})
    return paths


def _message(ax: Axes, text: str, x: float = 0.5, y: float = 0.5) -> None:
    """A boxed note at axes position (x, y) (its center)."""
    ax.text(x, y, text, transform=ax.transAxes, ha="center", va="center", fontsize=10,
            color="0.3", wrap=True, bbox={"facecolor": "white", "edgecolor": "0.7"})


def _kind_key(k: int | None) -> dict[str, object]:
    return {"block": "dense"} if k is None else {"block": "monarch", "k": k}


def our_points(records: Sequence[RunRecord], dataset: str, structure: str,
               k: int | None) -> list[RunRecord]:
    """One run per hidden size of kind ``k`` (the table's choice), sorted by size."""
    key = {"dataset": dataset, "structure": structure, **_kind_key(k)}
    sizes = sorted({r.hidden_size for r in matching(records, **key)})
    return [r for h in sizes if (r := select(records, **key, hidden_size=h)) is not None]


def _scaling(records: Sequence[RunRecord], dataset: str, out: Path, x: str) -> list[Path]:
    """Figures 4 (x = "madds") and 5 (x = "hidden")."""
    fig = Figure(figsize=(6.4, 4.6))
    ax = fig.add_subplot()
    n_ours = 0
    for k in KINDS:
        name = paper.kind_name(k)
        ref = paper.TABLE_B2[k]
        ax.plot([p[1] if x == "madds" else p[0] for p in ref], [p[2] for p in ref], "--",
                marker="o", mfc="none", color=COLORS[k], alpha=0.55,
                label=f"{name} (paper, text8)")
        runs = [r for r in our_points(records, dataset, "hmm", k)
                if x == "hidden" or r.madds_per_token]
        if runs:
            n_ours += len(runs)
            ax.plot([r.madds_per_token if x == "madds" else r.hidden_size for r in runs],
                    [r.value("test") for r in runs], "-", marker="o", color=COLORS[k],
                    label=f"{name} (ours)")
    if x == "madds":
        ax.set_xscale("log")
        ax.set_xlabel("Multiply-adds per token (log scale)")
        title, stem = "Figure 4: BPC vs multiply-adds per token", "figure4_bpc_vs_madds"
    else:
        ax.set_xscale("log", base=2)
        ax.set_xlabel("Hidden size (log scale)")
        title, stem = "Figure 5: BPC vs hidden size", "figure5_bpc_vs_hidden"
    ax.set_ylabel("Test BPC (lower is better)")
    ax.set_title(f"{title} ({dataset})")
    ax.grid(True, alpha=0.3)
    if n_ours == 0:
        _message(ax, f"no runs of ours on {dataset!r} yet:\npaper's Table B.2 only (dashed)",
                 0.3, 0.12)
    ax.legend(fontsize=8, ncol=2)
    return _save(fig, out, stem)


def figure4(records: Sequence[RunRecord], out: str | Path, dataset: str = "text8") -> list[Path]:
    """Test BPC vs multiply-adds per token, log x; paper's Table B.2 dashed."""
    return _scaling(records, dataset, Path(out), "madds")


def figure5(records: Sequence[RunRecord], out: str | Path, dataset: str = "text8") -> list[Path]:
    """Test BPC vs hidden size, log2 x; paper's Table B.2 dashed."""
    return _scaling(records, dataset, Path(out), "hidden")


def figure6(records: Sequence[RunRecord], out: str | Path) -> list[Path]:
    """Bits per token vs fraction of hidden states pruned, one line per run with a
    ``pruning.json``; the paper's claim (90% prunable) as a dotted vertical line."""
    fig = Figure(figsize=(6.4, 4.6))
    ax = fig.add_subplot()
    runs = pruning_runs(records)
    for r in runs:
        pts = sorted(r.pruning["points"], key=lambda p: p["pruned_fraction"])
        where = "all layers" if r.pruning.get("between_layers") else "transition inputs"
        ax.plot([p["pruned_fraction"] for p in pts], [p["bits_per_token"] for p in pts],
                "-", marker="o", label=f"{r.kind} h={r.hidden_size} ({r.dataset}, {where})")
    claim = paper.FIGURE6_CLAIM_PRUNED_FRACTION
    ax.axvline(claim, ls=":", color="0.4",
               label=f"paper: up to {claim:.0%} pruned without a significant drop")
    ax.set_xlabel("Fraction of hidden states pruned")
    ax.set_ylabel("Test bits per token (lower is better)")
    ax.set_title("Figure 6: likelihood under hidden-state pruning")
    ax.set_xlim(-0.02, 1.0)
    ax.grid(True, alpha=0.3)
    if not runs:
        _message(ax, "no pruning.json in any run yet:\n"
                     "python scripts/eval_pruning.py --run <run dir>")
    ax.legend(fontsize=8)
    return _save(fig, out, "figure6_pruning")


def figure7_runs(records: Sequence[RunRecord], dataset: str, transform: str | None,
                 block: str) -> list[RunRecord]:
    """Figure 7's points of one block kind: one HCLT run per hidden size, by multiply-adds."""
    key = {"dataset": dataset, "structure": "hclt", "block": block}
    found = [r for r in matching(records, **key) if r.madds_per_token
             and (transform is None or r.transform in (transform, None))]
    sizes = sorted({r.hidden_size for r in found})
    runs = [r for h in sizes
            if (r := select([f for f in found if f.hidden_size == h])) is not None]
    return sorted(runs, key=lambda r: r.madds_per_token or 0)


def figure7(records: Sequence[RunRecord], out: str | Path, dataset: str = "imagenet64",
            transform: str | None = "lossless") -> list[Path]:
    """Test BPD vs multiply-adds per dimension, dense HCLT vs Monarch-HCLT (no paper numbers
    are printed for this figure)."""
    fig = Figure(figsize=(6.4, 4.6))
    ax = fig.add_subplot()
    n = 0
    for block, name in (("dense", "HCLT"), ("monarch", "Monarch-HCLT")):
        runs = figure7_runs(records, dataset, transform, block)
        if runs:
            n += len(runs)
            ax.plot([r.madds_per_token for r in runs], [r.value("test") for r in runs], "-",
                    marker="o", color=COLORS[block], label=f"{name} (ours)")
            for r in runs:
                ax.annotate(f"h={r.hidden_size}", (r.madds_per_token, r.value("test")),
                            textcoords="offset points", xytext=(4, 4), fontsize=7)
    ax.set_xscale("log")
    ax.set_xlabel("Multiply-adds per dimension (log scale)")
    ax.set_ylabel("Test BPD (lower is better)")
    tr = f" ({transform})" if transform else ""
    ax.set_title(f"Figure 7: {dataset}{tr} BPD vs multiply-adds per dim.")
    ax.grid(True, alpha=0.3)
    if n == 0:
        _message(ax, f"no HCLT runs of ours on {dataset!r}{tr} yet\n"
                     "(the paper prints no numbers for this figure)")
    else:
        ax.legend(fontsize=8)
    return _save(fig, out, "figure7_imagenet_bpd_vs_madds")


def pruning_runs(records: Sequence[RunRecord]) -> list[RunRecord]:
    """Figure 6's lines: the runs with a ``pruning.json``."""
    return sorted((r for r in records if r.pruning and r.pruning.get("points")),
                  key=lambda r: (r.kind, r.hidden_size))


def figure_sources(records: Sequence[RunRecord], text8: str = "text8",
                   imagenet64: str = "imagenet64") -> dict[str, list[tuple[str, RunRecord]]]:
    """Figure -> [(point or line, run)]: the runs each figure of :func:`build_plots` draws."""
    scaling = [(f"{paper.kind_name(k)} h={r.hidden_size}", r) for k in KINDS
               for r in our_points(records, text8, "hmm", k)]
    return {
        "figure4_bpc_vs_madds": [(p, r) for p, r in scaling if r.madds_per_token],
        "figure5_bpc_vs_hidden": scaling,
        "figure6_pruning": [(f"{r.kind} h={r.hidden_size}", r) for r in pruning_runs(records)],
        "figure7_imagenet_bpd_vs_madds": [
            (f"{name} h={r.hidden_size}", r)
            for block, name in (("dense", "HCLT"), ("monarch", "Monarch-HCLT"))
            for r in figure7_runs(records, imagenet64, "lossless", block)],
    }


def build_plots(records: Sequence[RunRecord], out: str | Path, text8: str = "text8",
                imagenet64: str = "imagenet64") -> list[Path]:
    """Every figure; returns the files written."""
    return [*figure4(records, out, text8), *figure5(records, out, text8),
            *figure6(records, out), *figure7(records, out, imagenet64)]
