"""A sum block of your own: factors and the axis each layer mixes, then an HMM and EM on it.

    .venv/bin/python examples/custom_block.py            # about a minute on 2 CPU cores
    .venv/bin/python examples/custom_block.py --tiny     # seconds (what CI runs)

Every block of the package is one kind of object (monarchpc/circuits/blocks.py): a
row-stochastic h x h matrix M = L_0 L_1 ... L_(m-1) over a multi-index h = b_0 x ... x
b_(k-1), where layer l mixes one axis with one small stochastic block per value of the other
axes. A `BlockSpec` is the list of factors and the axis of each layer: dense is one factor,
Monarch-k is k layers over k axes, and anything else is one line away. Here: h = 64 = 4 x 4
x 4 with four layers, axes (0, 1, 2, 0), a Monarch-3 with one more mixing of the first
axis. The script checks that it is a distribution, builds an HMM with it, trains it by the
package's stochastic EM in a loop of a dozen lines, and sets it beside a Monarch-3 and a
dense block of the same size. (The loop is autograd's, which takes any block; the HMM's
fused GPU E-step takes Monarch-k patterns only: docs/extending.md.)
"""

from __future__ import annotations

import argparse
import itertools
import math

import torch
from torch import Tensor, nn

from monarchpc.circuits.blocks import BlockSpec, SumBlocks
from monarchpc.circuits.hmm import HMM
from monarchpc.data.demo import load as load_demo
from monarchpc.learning.em import EM, accumulate_flows


def bits_per_char(model: nn.Module, rows: Tensor, batch: int = 256) -> float:
    """Mean -log2 p per character of token rows (N, T), in batches."""
    with torch.no_grad():
        nll = sum(-model.log_likelihood(rows[i:i + batch].long()).sum().item()
                  for i in range(0, len(rows), batch))
    return nll / rows.numel() / math.log(2)


def train_em(model: nn.Module, train: Tensor, epochs: int, batch: int, seed: int = 0) -> None:
    """Stochastic mini-batch EM, as the training loop does it: the flows of a batch
    (theta * dlogL/dtheta, by autograd) feed one update; step size linear from 1 to 0."""
    em = EM("probs", pseudocount=0.1)
    order = torch.Generator().manual_seed(seed)
    total = epochs * (len(train) // batch)
    for update in range(total):
        if update % (len(train) // batch) == 0:
            perm = torch.randperm(len(train), generator=order)
        i = update % (len(train) // batch) * batch
        accumulate_flows(model, train[perm[i:i + batch]].long())  # flows into .grad
        em.step(model, eta=1.0 - update / total)  # the EM update; clears the flows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tiny", action="store_true", help="less text, one epoch")
    args = parser.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(1)  # small models: one thread beats several waiting on a busy CPU

    # 1. The block: four layers over 4 x 4 x 4, the last applied first (layer m-1 first).
    spec = BlockSpec.monarch([4, 4, 4], axes=[0, 1, 2, 0])
    block = SumBlocks(spec, num_blocks=1, generator=torch.Generator().manual_seed(1))
    print(f"custom block: h = {spec.hidden_size}, factors {list(spec.factors)}, axes "
          f"{list(spec.axes)}: {spec.madds} multiply-adds per vector "
          f"(dense: {spec.hidden_size ** 2})")
    # Its materialized matrix is row-stochastic: every sum node's weights add up to 1 ...
    matrix = block.dense()[0]
    assert torch.allclose(matrix.sum(-1), torch.ones(spec.hidden_size), atol=1e-5)
    # ... and applying it layer by layer is the same as multiplying by that matrix.
    y = torch.rand(5, spec.hidden_size)
    assert torch.allclose(block(y), y @ matrix.T, atol=1e-5)

    # 2. An HMM with it as its transition is a normalized distribution: over a vocabulary
    #    of 3 and sequences of length 4, the probabilities of all 81 sequences add up to 1.
    small = HMM(SumBlocks(spec, 1, torch.Generator().manual_seed(2)), vocab_size=3,
                generator=torch.Generator().manual_seed(3))
    every = torch.tensor(list(itertools.product(range(3), repeat=4)))
    with torch.no_grad():
        total = small.log_likelihood(every).logsumexp(0).exp().item()
    print(f"sum of p(x) over all {len(every)} sequences: {total:.6f}")
    assert abs(total - 1.0) < 1e-4

    # 3. Trained on text by EM, beside a Monarch-3 (no extra layer) and a dense block.
    splits = load_demo(fractions=[0.2, 0.05, 0.05] if args.tiny else [0.9, 0.05, 0.05],
                       seq_len=128)
    epochs = 1 if args.tiny else 3
    specs = {"custom (axes 0,1,2,0)": spec, "Monarch-3 (axes 0,1,2)": BlockSpec.monarch(
        [4, 4, 4]), "dense": BlockSpec.dense(64)}
    uniform = math.log2(27)
    for name, s in specs.items():
        g = torch.Generator().manual_seed(0)
        model = HMM(SumBlocks(s, 1, g), vocab_size=splits.vocab_size, generator=g)
        before = bits_per_char(model, splits.dev)
        train_em(model, splits.train, epochs=epochs, batch=64)
        after = bits_per_char(model, splits.dev)
        print(f"{name:24s} {s.madds:5d} multiply-adds: dev BPC {before:.3f} -> {after:.3f} "
              f"(uniform {uniform:.3f})")
        assert after < before - 0.5 and after < uniform - 0.5


if __name__ == "__main__":
    main()
