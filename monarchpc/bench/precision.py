"""Accuracy of the low-precision E-step on real text.

Trains one configuration three times, with fp32, tf32 and bf16 matrix products in the
fused E-step (evaluation always in fp32), and scores the fp32-trained model's dev split in
each precision. Prints one JSON object; the README's Performance section quotes it.

    python -m monarchpc.bench precision dataset=chars model.hidden_size=4096 optim.epochs=1
"""

from __future__ import annotations

import json
import math
import sys
import tempfile
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir

from monarchpc import checkpoint
from monarchpc.data import build_dataset
from monarchpc.learning.precision import Precision
from monarchpc.paths import REPO_ROOT
from monarchpc.run.evaluate import metric_value, total_nll
from monarchpc.structures import build_model, structure_of
from monarchpc.train import run


def main(argv: list[str] | None = None) -> None:
    """Train one preset (Hydra overrides ``argv``) in fp32, tf32 and bf16; print the dev
    metrics and the fp32 model scored in each precision (JSON)."""
    overrides = sys.argv[1:] if argv is None else argv
    out: dict = {"overrides": overrides, "train": {}, "score_fp32_model": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for precision in ("fp32", "tf32", "bf16"):
            run_dir = Path(tmp) / precision
            with initialize_config_dir(str(REPO_ROOT / "configs"), version_base="1.3"):
                cfg = compose("train", overrides=["logger=none", "trainer.progress=false",
                                                  f"run_dir={run_dir}", *overrides,
                                                  f"trainer.precision={precision}"])
            record = run(cfg)
            out["train"][precision] = {k: v for k, v in record.items() if k.startswith("dev_")}
            if precision == "fp32":
                splits = build_dataset(cfg.dataset)
                model = build_model(cfg.model, splits.vocab_size)
                model.load_state_dict(checkpoint.load(run_dir)["model"])
                model.to("cuda" if torch.cuda.is_available() else "cpu")
                dev = splits.dev[: cfg.trainer.eval_max_rows or None]
                fused = structure_of(cfg.model.structure).fused
                for p in ("fp32", "tf32", "bf16"):
                    nll, units = total_nll(fused.score(model, Precision(p)), dev, 128,
                                           next(model.parameters()).device)
                    out["score_fp32_model"][p] = metric_value(splits.metric, nll, units)
    base = out["train"]["fp32"]
    out["train_dev_diff_vs_fp32"] = {p: {k: v - base[k] for k, v in r.items()}
                                     for p, r in out["train"].items()}
    s = out["score_fp32_model"]
    out["score_diff_vs_fp32"] = {p: s[p] - s["fp32"] for p in s}
    assert all(math.isfinite(v) for v in s.values())
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
