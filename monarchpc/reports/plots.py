"""The paper's figures rebuilt from run records (PNG and PDF).

Figures are drawn on ``matplotlib.figure.Figure`` objects, never through pyplot, so no
display or global backend is involved (PNG renders through Agg). Where the paper prints
the numbers behind a figure (Table B.2 for Figures 4 and 5) they are drawn as dashed
reference lines with hollow markers; our runs are solid lines. A figure with nothing of
ours to show says so in its panel. Our test values are those of the tables: at each run's
best dev evaluation (:meth:`monarchpc.reports.records.RunRecord.value`).

* Figure 4: test BPC vs multiply-adds per token (log x), one line per kind
  (HMM, Monarch-2/3/4);
* Figure 5: test BPC vs hidden size (log2 x), same kinds;
* Figure 6: bits per token vs fraction of hidden states pruned (from ``pruning.json``);
* Figure 7: ImageNet64 test BPD vs multiply-adds per dimension, HCLT vs Monarch-HCLT;
* test BPC vs measured GPU-seconds (run.json's ``gpu_seconds``, log x), Figure 4's kinds
  and choice of runs (not in the paper);
* dev BPD vs epoch of every finished or interrupted image run, one figure per image size
  (not in the paper: shows whether training has flattened).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from matplotlib.axes import Axes
from matplotlib.figure import Figure

from monarchpc.reports import paper
from monarchpc.reports.records import RunRecord, finite, matching, select

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
                 block: str, image_size: int = 64) -> list[RunRecord]:
    """Figure 7's points of one block kind: one HCLT run of ``image_size`` pixels per hidden
    size, by multiply-adds (runs that do not record their size count as that size)."""
    key = {"dataset": dataset, "structure": "hclt", "block": block}
    found = [r for r in matching(records, **key) if r.madds_per_token
             and (transform is None or r.transform in (transform, None))
             and r.image_size in (image_size, None)]
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


def hidden_label(h: int) -> str:
    """A hidden size as plots print it: "$2^{14}$" (mathtext) for a power of two."""
    return f"$2^{{{h.bit_length() - 1}}}$" if h > 0 and h & (h - 1) == 0 else str(h)


def gpu_seconds_runs(records: Sequence[RunRecord], dataset: str,
                     k: int | None) -> list[RunRecord]:
    """The GPU-seconds figure's runs of kind ``k``: Figure 4's choice per hidden size among
    the finished runs whose run.json holds ``gpu_seconds``."""
    timed = [r for r in records if r.finished and r.gpu_seconds is not None]
    return our_points(timed, dataset, "hmm", k)


def gpu_seconds_series(records: Sequence[RunRecord], dataset: str
                       ) -> dict[int | None, list[tuple[float, float, int, int]]]:
    """Kind -> [(GPU-seconds, test BPC, hidden size, jobs per GPU)] of the GPU-seconds
    figure, by size."""
    series = {k: [(float(r.gpu_seconds or 0), float(r.value("test") or 0), r.hidden_size,
                   r.jobs_per_gpu) for r in gpu_seconds_runs(records, dataset, k)]
              for k in KINDS}
    return {k: pts for k, pts in series.items() if pts}


def gpu_seconds_left_out(records: Sequence[RunRecord], dataset: str
                         ) -> list[tuple[RunRecord, str]]:
    """[(run, why)]: the evaluated runs of the GPU-seconds figure's kinds it cannot show."""
    out = []
    for r in records:
        if (r.dataset, r.structure) != (dataset, "hmm") or r.k not in KINDS \
                or r.value("test") is None:
            continue
        if r.gpu_seconds is None:
            out.append((r, "no gpu_seconds in its run.json (lab/campaign.py measures it)"))
        elif not r.finished:
            out.append((r, f"status {r.status!r}: finished runs only"))
    return out


def one_gpu(runs: Sequence[RunRecord]) -> str:
    """"one H200" where every run's run.json names the same GPU, else "one GPU"."""
    names = {r.device for r in runs}
    name = names.pop() if len(names) == 1 else None
    return f"one {name.removeprefix('NVIDIA ')}" if name and name != "cpu" else "one GPU"


def figure_bpc_vs_gpu_seconds(records: Sequence[RunRecord], out: str | Path,
                              dataset: str = "text8") -> list[Path]:
    """Test BPC vs measured GPU-seconds of the whole run (log x), one line per kind; runs
    that shared their GPU with other jobs are hollow (their seconds are an upper bound)."""
    fig = Figure(figsize=(6.4, 4.6))
    ax = fig.add_subplot()
    series = gpu_seconds_series(records, dataset)
    for k, pts in series.items():
        ax.plot([p[0] for p in pts], [p[1] for p in pts], "-", color=COLORS[k],
                label=f"{paper.kind_name(k)} (ours)")
        for x, y, h, jobs in pts:
            ax.plot([x], [y], "o", color=COLORS[k], markerfacecolor="white" if jobs > 1
                    else COLORS[k])
            ax.annotate(hidden_label(h), (x, y), textcoords="offset points", xytext=(4, 4),
                        fontsize=7)
    shared = sorted({p[3] for pts in series.values() for p in pts if p[3] > 1})
    note = (f"hollow: {'/'.join(map(str, shared))} jobs shared the GPU\n(seconds: an upper "
            "bound)") if shared else None
    gpu = one_gpu([r for k in KINDS for r in gpu_seconds_runs(records, dataset, k)])
    ax.set_xscale("log")
    ax.set_xlabel(f"GPU-seconds ({gpu}, whole process; log scale)")
    ax.set_ylabel("Test BPC (lower is better)")
    ax.set_title(f"Test BPC vs GPU-seconds ({gpu}, whole process; {dataset})")
    ax.grid(True, alpha=0.3)
    if series:
        ax.legend(fontsize=8, title=note, title_fontsize=7)
    else:
        _message(ax, f"no finished run of ours on {dataset!r} with gpu_seconds yet\n"
                     "(lab/campaign.py measures it)")
    return _save(fig, out, "figure_bpc_vs_gpu_seconds")


def dev_curve(run: RunRecord, x: str = "epoch") -> tuple[list[float], list[float]]:
    """(``x``, dev metric) of ``run``'s evaluations after the start (the untrained model's
    value would flatten the scale), by ``x``; a repeated ``x`` keeps its last value."""
    points = {float(rec[x]): float(rec[f"dev_{run.metric}"]) for rec in run.history
              if finite(rec.get(x)) and rec[x] > 0 and finite(rec.get(f"dev_{run.metric}"))}
    xs = sorted(points)
    return xs, [points[v] for v in xs]


def curve_runs(records: Sequence[RunRecord], datasets: Sequence[str]
               ) -> dict[int, list[RunRecord]]:
    """Image size -> the finished or interrupted HCLT / Monarch-HCLT runs on ``datasets``
    with a dev curve, by kind, hidden size and name."""
    out: dict[int, list[RunRecord]] = {}
    for r in sorted(records, key=lambda r: (r.kind, r.hidden_size, r.name)):
        if r.structure == "hclt" and r.dataset in datasets and r.image_size \
                and r.status in ("finished", "interrupted") and dev_curve(r, "update")[0]:
            out.setdefault(r.image_size, []).append(r)
    return dict(sorted(out.items()))


def dev_curves(records: Sequence[RunRecord], datasets: Sequence[str]
               ) -> dict[int, tuple[str, list[tuple[str, list[float], list[float]]]]]:
    """Image size -> (x: "epoch", or "update" where an evaluation lacks its epoch,
    [(label, x, dev BPD)] one line per run of :func:`curve_runs`); a label is kind and
    hidden size, with the run's name where two share it and its status if unfinished."""
    out = {}
    for size, runs in curve_runs(records, datasets).items():
        x = "epoch" if all("epoch" in rec for r in runs for rec in r.history) else "update"
        labels = [f"{r.kind} h={hidden_label(r.hidden_size)}" for r in runs]
        labels = [(f"{lab} ({r.name})" if labels.count(lab) > 1 else lab)
                  + ("" if r.finished else f" [{r.status}]")
                  for lab, r in zip(labels, runs, strict=True)]
        out[size] = (x, [(lab, *dev_curve(r, x)) for lab, r in zip(labels, runs, strict=True)])
    return out


def figure_dev_curves(records: Sequence[RunRecord], out: str | Path,
                      datasets: Sequence[str] = ("imagenet32", "imagenet64")) -> list[Path]:
    """Dev BPD vs epoch of every image run, one figure per image size present
    (``figure_dev_curves_image<size>``); none without image runs."""
    paths = []
    for size, (x, lines) in dev_curves(records, datasets).items():
        fig = Figure(figsize=(6.4, 4.6))
        ax = fig.add_subplot()
        for label, xs, ys in lines:
            ax.plot(xs, ys, "-", marker="o", markersize=3, label=label)
        ax.set_xlabel("Epoch" if x == "epoch" else "EM update")
        ax.set_ylabel("Dev BPD (lower is better)")
        ax.set_title(f"Dev BPD during training, {size}x{size} images")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
        paths += _save(fig, out, f"figure_dev_curves_image{size}")
    return paths


def pruning_runs(records: Sequence[RunRecord]) -> list[RunRecord]:
    """Figure 6's lines: the runs with a ``pruning.json``."""
    return sorted((r for r in records if r.pruning and r.pruning.get("points")),
                  key=lambda r: (r.kind, r.hidden_size))


def figure_sources(records: Sequence[RunRecord], text8: str = "text8",
                   imagenet64: str = "imagenet64", imagenet32: str = "imagenet32"
                   ) -> dict[str, list[tuple[str, RunRecord]]]:
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
        "figure_bpc_vs_gpu_seconds": [(f"{paper.kind_name(k)} h={r.hidden_size}", r)
                                      for k in KINDS for r in gpu_seconds_runs(records, text8, k)],
        **{f"figure_dev_curves_image{size}": [(f"{r.kind} h={r.hidden_size}", r) for r in runs]
           for size, runs in curve_runs(records, (imagenet32, imagenet64)).items()},
    }


def figure_notes(records: Sequence[RunRecord], text8: str = "text8"
                 ) -> dict[str, list[tuple[RunRecord, str]]]:
    """Figure -> [(run, why)]: runs a figure names as left out (for the provenance)."""
    return {"figure_bpc_vs_gpu_seconds": gpu_seconds_left_out(records, text8)}


def build_plots(records: Sequence[RunRecord], out: str | Path, text8: str = "text8",
                imagenet64: str = "imagenet64", imagenet32: str = "imagenet32") -> list[Path]:
    """Every figure (the dev curves only where image runs exist); returns the files written."""
    return [*figure4(records, out, text8), *figure5(records, out, text8),
            *figure6(records, out), *figure7(records, out, imagenet64),
            *figure_bpc_vs_gpu_seconds(records, out, text8),
            *figure_dev_curves(records, out, (imagenet32, imagenet64))]
