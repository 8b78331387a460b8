"""Train a Monarch HMM from Python, then load it and ask it exact questions.

    .venv/bin/python examples/train_and_query.py            # about a minute on 2 CPU cores
    .venv/bin/python examples/train_and_query.py --tiny     # seconds (what CI runs)

The same training loop as `python -m monarchpc.train`, driven from Python: compose the
Hydra config with overrides, hand it to `monarchpc.train.run`, get the last evaluation
back. Then `monarchpc.load_run` rebuilds the circuit from the run directory, and the
structure registry (`monarchpc.structures`) gives the queries every circuit answers
exactly: likelihoods, conditional samples and marginals of missing values.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir

from monarchpc import load_run
from monarchpc.paths import REPO_ROOT
from monarchpc.queries import MISSING
from monarchpc.structures import structure_of
from monarchpc.train import run
from monarchpc.use.codecs import text_codec


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tiny", action="store_true", help="a few updates of a small model")
    parser.add_argument("--out", default="outputs/examples/train_and_query",
                        help="the run directory (a fresh one each time: it is replaced)")
    args = parser.parse_args()
    run_dir = Path(args.out).resolve()

    # 1. The config: the demo preset (Monarch-2 HMM, h = 256 = 16 x 16, on Python's help
    #    texts), with any override a command line would take. run_dir decides where the run
    #    goes; logger=none keeps wandb out of an example.
    overrides = ["experiment=demo", f"run_dir={run_dir}", "logger=none",
                 "trainer.progress=false", "trainer.device=cpu"]
    if args.tiny:  # a smaller model on a third of the text, one epoch
        overrides += ["model.hidden_size=64", "dataset.fractions=[0.3,0.02,0.02]",
                      "optim.epochs=1", "trainer.long_eval=never"]
    with initialize_config_dir(config_dir=str(REPO_ROOT / "configs"), version_base="1.3"):
        cfg = compose("train", overrides=overrides)
    if (run_dir / "checkpoint.pt").exists():  # an example starts afresh; a real run resumes
        for f in run_dir.iterdir():
            if f.is_file():
                f.unlink()

    # 2. Train: every setting is checked first, then EM runs and the run directory fills
    #    with config.yaml, metrics.jsonl, run.json and checkpoint.pt.
    final = run(cfg)
    uniform = math.log2(27)  # bits per character of a uniform guess over space and a-z
    print(f"trained: dev BPC {final['dev_bpc']:.3f}, test BPC {final['test_bpc']:.3f} "
          f"(uniform: {uniform:.3f})")
    assert final["dev_bpc"] < uniform - 0.5, "EM should have learned more than a uniform guess"

    # 3. Load it back, as any later session would: the circuit (eval mode) and its config;
    #    the run's codec turns text into token ids and back (chars here; SentencePiece
    #    pieces for LM1B runs), as the sample and score commands do.
    model, config = load_run(run_dir)
    structure = structure_of(config.model.structure)  # "hmm": its queries, its settings
    codec = text_codec(config, run_dir)
    print(f"loaded a {config.model.name} with h = {model.hidden_size} from {run_dir.name}/")

    # 4. Likelihoods: log p(x) in nats for whole rows of token ids (N, T) -> (N,).
    x = torch.tensor([codec.encode("the function returns a list")])
    with torch.no_grad():
        bits = -float(model.log_likelihood(x)[0]) / math.log(2)
    print(f"-log2 p('the function returns a list') = {bits:.1f} bits "
          f"({bits / x.shape[1]:.2f} per character)")

    # 5. Exact conditional samples: MISSING (-1) marks what the model fills in, drawn from
    #    p(missing | everything fixed); here twelve characters between a prefix and a suffix.
    pattern = torch.tensor([codec.encode("the value ") + [MISSING] * 12
                            + codec.encode(" the list")])
    generator = torch.Generator().manual_seed(0)
    for row in structure.sample(model, pattern.expand(3, -1), generator):
        text = codec.decode(row)
        print(f"sample: {text!r}")
        assert text.startswith("the value ") and text.endswith(" the list")

    # 6. Exact marginals: p(x_t = v | every fixed character) for every position, (N, T, V).
    masked = torch.tensor([codec.encode_mask("th_ f_nction")])
    marginals = structure.marginals(model, masked)[0]
    for t in (2, 5):
        assert abs(float(marginals[t].sum()) - 1.0) < 1e-4  # a distribution over 27 values
        top = marginals[t].topk(3)
        shown = ", ".join(f"{codec.decode([int(i)])!r} {float(p):.3f}"
                          for p, i in zip(top.values, top.indices, strict=True))
        print(f"p(x_{t} | 'th_ f_nction'): {shown}")


if __name__ == "__main__":
    main()
