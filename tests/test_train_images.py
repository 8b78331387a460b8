"""Training an HCLT on image patches through the training entry point (no download)."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from monarchpc.train import run
from tests.helpers import compose_config


def test_image_demo_run_lowers_dev_bpd(tmp_path: Path) -> None:
    run_dir = tmp_path / "image_demo"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small products: one thread is faster on a busy 2-core machine
    cfg = compose_config(["experiment=image_demo", "model.hidden_size=16",
                          "model.chow_liu_bins=8", "optim.batch_size=256", "optim.epochs=1",
                          "trainer.eval_every=5", "trainer.device=cpu"], run_dir)
    try:
        final = run(cfg)
    finally:
        torch.set_num_threads(threads)
    recs = [json.loads(ln) for ln in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert recs[0]["update"] == 0 and recs[-1]["final"] and recs[-1]["update"] == 15
    assert recs[0]["dev_bpd"] > 8.0  # a random circuit: about log2 of the vocabularies
    assert recs[-1]["dev_bpd"] < recs[0]["dev_bpd"] - 2.0
    assert final["test_bpd"] == recs[-1]["test_bpd"] < 7.0
    info = json.loads((run_dir / "run.json").read_text())
    d, h = 192, 16  # 8x8x3 variables; Monarch-HCLT over 4 x 4 with 3 layers
    assert info["structure"] == "hclt" and info["factors"] == [4, 4]
    assert info["madds_per_token"] == round(((d - 1) * h * (4 + 4 + 4) + h) / d)
    assert info["data"]["transform"] == "lossless" and info["dataset"] == "image_demo"
    # what trained it and in which precision its scores were taken (HCLTs: always fp32)
    assert (info["engine"], info["precision"], info["eval_precision"]) == (
        "autograd", "fp32", "fp32")
