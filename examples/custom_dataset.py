"""Add a data set: a loader, the table of its settings, one entry in the registry.

    .venv/bin/python examples/custom_dataset.py            # about a minute on 2 CPU cores
    .venv/bin/python examples/custom_dataset.py --tiny     # seconds (what CI runs)

The data set here is the Python source code of a standard-library package (no download),
normalized the text8 way, so every character model of the package applies to it. A data
set of the package is the same three pieces (docs/extending.md): the loader below would go
in monarchpc/data/<name>.py, its YAML in configs/dataset/<name>.yaml (name: and the
loader's defaults), and the entry in DATASETS in monarchpc/data/__init__.py; then
`python -m monarchpc.train dataset=<name>` runs it. This script registers the entry at run
time instead, so that it runs without touching the package.
"""

from __future__ import annotations

import argparse
import importlib.util
import math
from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from monarchpc.config import check_config
from monarchpc.data import DATASETS, DataError, Dataset, Splits
from monarchpc.data.cache import text_record
from monarchpc.data.chars import (
    char_splits,
    encode,
    fraction_sizes,
    fractions_rule,
    normalize_text8,
)
from monarchpc.errors import ConfigError
from monarchpc.paths import REPO_ROOT
from monarchpc.settings import Settings, integer
from monarchpc.train import run


# ---- 1. the loader: settings in, Splits out ----------------------------------------------
def load(package: str = "email", fractions: list[float] = (0.9, 0.05, 0.05),
         seq_len: int = 128) -> Splits:
    """The .py files of standard-library ``package`` (sorted by name), each text8-normalized
    (lower case, digits spelled out, everything else a space), joined and cut into
    consecutive train/dev/test spans by ``fractions``, each in rows of ``seq_len``.

    A loader gets the dataset.* settings as keyword arguments, raises DataError (one line
    with the fix) for data it cannot use, and returns integer rows (N, seq_len) in
    [0, vocab_size) per split; ``info["sources"]`` names what was read (recorded in the
    checkpoint, so that resume=true refuses other data).
    """
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise DataError(f"dataset.package={package!r} is not a package of this Python; "
                        f"try email, json or asyncio")
    files = sorted(Path(spec.submodule_search_locations[0]).glob("*.py"))
    text = " ".join(" ".join(normalize_text8(f.read_text(encoding="utf-8")).split())
                    for f in files)
    codes = encode(text)  # uint8: space = 0, a..z = 1..26
    info = {"name": "stdlib_source", "package": package, "files": len(files),
            "chars": int(codes.size), "sources": [text_record(package, text.encode())]}
    # char_splits also keeps the test span whole, for the "long" evaluation
    return char_splits(codes, fraction_sizes(codes.size, fractions), seq_len, info)


# ---- 2. its settings: name -> (rule, meaning); checked before any data is read ------------
def _package(value: Any) -> str | None:
    """A rule returns None for a good value, else what is wrong with it."""
    if not isinstance(value, str) or importlib.util.find_spec(value) is None:
        return "must name an importable standard-library package (email, json, ...)"
    return None


OPTIONS: Settings = {
    "package": (_package, "the standard-library package whose source is the text"),
    "fractions": (fractions_rule, "train/dev/test shares of the text"),
    "seq_len": (integer(2), "characters per row"),
}


# ---- 3. the registry entry: loader, settings table, kind ("chars": BPC, text codec) --------
DATASETS["stdlib_source"] = Dataset(f"{__name__}:load", f"{__name__}:OPTIONS", "chars")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tiny", action="store_true", help="a small package and model")
    parser.add_argument("--out", default="outputs/examples/custom_dataset",
                        help="the run directory (a fresh one each time: it is replaced)")
    args = parser.parse_args()
    run_dir = Path(args.out).resolve()

    # What configs/dataset/stdlib_source.yaml would hold. long_rows is read by the training
    # loop (the test span as that many long rows), not by the loader.
    dataset = {"name": "stdlib_source", "package": "json" if args.tiny else "email",
               "fractions": [0.9, 0.05, 0.05], "seq_len": 128, "long_rows": 4}
    overrides = ["model=monarch2_hmm", "model.hidden_size=64" if args.tiny else
                 "model.hidden_size=256", "optim.batch_size=64", "optim.accumulate=1",
                 "optim.epochs=2" if args.tiny else "optim.epochs=4", "optim.schedule=linear",
                 "trainer.eval_every=1000", "trainer.cpu_threads=1", f"run_dir={run_dir}",
                 "logger=none", "trainer.progress=false", "trainer.device=cpu"]
    with initialize_config_dir(config_dir=str(REPO_ROOT / "configs"), version_base="1.3"):
        cfg = compose("train", overrides=overrides)
    cfg.dataset = OmegaConf.create(dataset)

    # The settings table at work: a bad value stops with one line, before any data is read.
    bad = cfg.copy()
    bad.dataset.package = "no_such_package"
    try:
        check_config(bad)
        raise AssertionError("the bad setting should have been refused")
    except ConfigError as err:
        print(f"refused: {err}")

    if (run_dir / "checkpoint.pt").exists():  # an example starts afresh; a real run resumes
        for f in run_dir.iterdir():
            if f.is_file():
                f.unlink()
    final = run(cfg)
    uniform = math.log2(27)
    print(f"{dataset['package']} source: dev BPC {final['dev_bpc']:.3f}, test BPC "
          f"{final['test_bpc']:.3f} (uniform: {uniform:.3f})")
    assert final["test_bpc"] < uniform - 0.5, "EM should have learned more than uniform"


if __name__ == "__main__":
    main()
