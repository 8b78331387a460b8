"""Which runs fed which table or figure, and why every other run was left out.

The report scripts write this beside their outputs (``provenance_tables.md``,
``provenance_plots.md``) and print its summary, so a table is never silently built from
no run, or from another run than the one meant.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from monarchpc.reports.records import RunRecord

Sources = Mapping[str, Sequence[tuple[str, RunRecord]]]
"""Output name -> [(row or point, run)], as tables' ``sources`` / ``plots.figure_sources``."""
Notes = Mapping[str, Sequence[tuple[RunRecord, str]]]
"""Output name -> [(run, why the output leaves it out)], as ``plots.figure_notes``."""


def where(run: RunRecord) -> str:
    """The run's directory relative to the current directory (or its wandb source)."""
    if run.path is None:
        return run.source
    path = Path(run.path)
    try:
        return os.path.relpath(path)
    except ValueError:  # another drive
        return str(path)


def _setting(r: RunRecord) -> tuple:
    return (r.dataset, r.structure, r.block, r.k, r.transform)


def skip_reason(run: RunRecord, used: Sequence[RunRecord], datasets: Mapping[str, str]) -> str:
    """Why ``run`` appears in no output, given the runs ``used`` and the data set name each
    kind of output reads (``datasets``: e.g. {"text8 tables": "text8", ...})."""
    if run.dataset not in datasets.values():
        reads = ", ".join(f"{what}: {name!r}" for what, name in datasets.items())
        return (f"its dataset {run.dataset!r} is not one the outputs read ({reads}); "
                f"name it with the script's --*-dataset options")
    if run.value("test") is None:
        return "it has no test metric yet (never evaluated)"
    same = [u for u in used if _setting(u) == _setting(run)
            and (u.hidden_size, u.init) == (run.hidden_size, run.init)]
    if same:
        return (f"{same[0].name} fills the rows of the same setting (finished runs first, "
                f"then scores free of the TF32 truncation, then the most training images, "
                f"then the lowest dev metric)")
    larger = [u for u in used if _setting(u) == _setting(run) and u.hidden_size > run.hidden_size]
    if larger:
        return (f"the outputs of its kind show the largest hidden size "
                f"({larger[0].name}, h={larger[0].hidden_size})")
    return "no row or point of the outputs takes its setting (kind, size, init or transform)"


def provenance(records: Sequence[RunRecord], sources: Sources,
               datasets: Mapping[str, str], title: str,
               notes: Notes | None = None) -> tuple[str, list[str]]:
    """(Markdown document, short printed summary) of which runs fed which output, and the
    runs an output names as left out (``notes``)."""
    used_ids = {id(r) for rows in sources.values() for _, r in rows}
    used = [r for r in records if id(r) in used_ids]
    lines = [f"# {title}", "", f"{len(records)} runs read; data sets read: "
             + ", ".join(f"{what} = {name!r}" for what, name in datasets.items()), ""]
    summary = []
    for output, rows in sources.items():
        lines += [f"## {output}", ""]
        if not rows:
            lines += ["no run of ours: only the paper's numbers", ""]
            summary.append(f"{output}: no run of ours")
        else:
            lines += [f"- {label}: {r.name} ({where(r)})" for label, r in rows] + [""]
            names = sorted({r.name for _, r in rows})
            summary.append(f"{output}: {len(names)} run(s): {', '.join(names)}")
        left = (notes or {}).get(output) or []
        if left:
            lines += ["Left out:", ""] + [f"- {r.name} ({where(r)}): {why}" for r, why in left]
            lines.append("")
            names = [r.name for r, _ in left]
            summary.append(f"{output}: {len(left)} run(s) left out: {', '.join(names[:5])}"
                           + (", ..." if len(names) > 5 else ""))
    skipped = [r for r in records if id(r) not in used_ids]
    lines += [f"## Runs not used ({len(skipped)})", ""]
    lines += [f"- {r.name} ({where(r)}): {skip_reason(r, used, datasets)}" for r in skipped]
    if skipped:
        summary.append(f"{len(skipped)} run(s) not used:")
        summary += [f"  {r.name}: {skip_reason(r, used, datasets)}" for r in skipped[:10]]
        if len(skipped) > 10:
            summary.append(f"  ... and {len(skipped) - 10} more")
    return "\n".join(lines).rstrip() + "\n", summary


def write_provenance(path: str | Path, records: Sequence[RunRecord], sources: Sources,
                     datasets: Mapping[str, str], title: str,
                     notes: Notes | None = None) -> list[str]:
    """Write the provenance document to ``path``; returns the lines to print."""
    text, summary = provenance(records, sources, datasets, title, notes)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return [*summary, f"wrote {path} (which runs fed which output, and why others did not)"]
