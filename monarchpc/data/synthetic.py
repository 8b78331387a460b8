"""Sequences sampled from a known random HMM: a data set whose true likelihood is known."""

from __future__ import annotations

import math

import torch

from monarchpc.circuits.blocks import BlockSpec, SumBlocks
from monarchpc.circuits.hmm import HMM
from monarchpc.data import Splits
from monarchpc.settings import Settings, choice, integer, number


def true_model(hidden_size: int, vocab_size: int, seed: int, block: str = "dense",
               perturbation: float = 8.0) -> HMM:
    """The generating HMM: random, with peaked distributions so that it is learnable."""
    g = torch.Generator().manual_seed(seed)
    spec = BlockSpec.from_config({"block": block, "hidden_size": hidden_size})
    transition = SumBlocks(spec, 1, generator=g, perturbation=perturbation)
    return HMM(transition, vocab_size, generator=g, perturbation=perturbation)


def load(hidden_size: int = 8, vocab_size: int = 6, seq_len: int = 32, n_train: int = 2048,
         n_dev: int = 256, n_test: int = 256, seed: int = 1234, block: str = "dense",
         perturbation: float = 8.0) -> Splits:
    """Rows sampled from :func:`true_model`; ``info['true_test_bpc']`` is the generator's BPC."""
    model = true_model(hidden_size, vocab_size, seed, block, perturbation)
    g = torch.Generator().manual_seed(seed + 1)
    dtype = torch.uint8 if vocab_size <= 256 else torch.int16
    data = model.sample(n_train + n_dev + n_test, seq_len, generator=g).to(dtype)
    train, dev, test = data[:n_train], data[n_train:n_train + n_dev], data[n_train + n_dev:]
    with torch.no_grad():
        true_bpc = float(-model.log_likelihood(test.long()).sum() / (test.numel() * math.log(2)))
    info = {"name": "synthetic", "true_hidden_size": hidden_size, "seed": seed,
            "true_test_bpc": true_bpc}
    return Splits(train=train, dev=dev, test=test, vocab_size=vocab_size, metric="bpc",
                  test_stream=test.reshape(-1).clone(), info=info)


OPTIONS: Settings = {
    "hidden_size": (integer(1), "hidden states of the generating HMM"),
    "vocab_size": (integer(2), "vocabulary size"),
    "seq_len": (integer(2), "tokens per row"),
    "n_train": (integer(1), "training rows"),
    "n_dev": (integer(1), "dev rows"),
    "n_test": (integer(1), "test rows"),
    "seed": (integer(0), "the data's seed"),
    "block": (choice("dense", "monarch"), "the generating HMM's transition"),
    "perturbation": (number(0.0), "peakedness of the generating HMM"),
}
"""The settings of ``dataset=synthetic`` (configs/dataset/synthetic.yaml)."""
