"""The circuit structures, in one registry: name -> everything the package does with one.

| ``model.structure`` | model (circuits/) | fused E-step (learning/) | queries |
| --- | --- | --- | --- |
| ``hmm`` | hmm.py: a sum block over a sequence | hmm_estep.py | queries.py ``hmm_*`` |
| ``hclt`` | hclt.py: sum blocks on a Chow-Liu tree | hclt_estep.py | queries.py ``hclt_*`` |

Every decision that depends on the structure reads its :class:`Structure` here: how the
training loop builds the model and its engine, how ``load_run`` rebuilds a saved one, the
precision of evaluation, the queries of ``sample`` and ``compress``, whether circuit
multiplication applies, and the ``model.*`` settings it reads. It lives above
``circuits``, ``learning`` and ``queries`` (it names things of all three) and below
everything that decides by structure (init, run, use, config), so that no module
branches on a structure's name. Adding a structure: docs/extending.md.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from monarchpc import queries
from monarchpc.circuits.blocks import BlockSpec, SumBlocks
from monarchpc.circuits.hclt import HCLT, build_hclt, hclt_from_tree
from monarchpc.circuits.hmm import HMM
from monarchpc.errors import ConfigError
from monarchpc.learning.engines import Fused
from monarchpc.learning.hclt_estep import fused_hclt_estep, hclt_estep
from monarchpc.learning.hmm_estep import fused_estep, hmm_estep
from monarchpc.learning.precision import Precision
from monarchpc.memory import block_parameters
from monarchpc.settings import Settings, choice, integer, list_of, number, text

Generator = torch.Generator | None


@dataclass(frozen=True)
class Data:
    """What a structure may learn from when it is built: the vocabulary (of every variable,
    ``vocab_sizes`` (D,), where they differ) and the training rows (N, D)."""

    vocab_size: int
    train_rows: Tensor | None = None
    vocab_sizes: list[int] | None = None


@dataclass(frozen=True)
class Structure:
    """One circuit structure (see the module docstring).

    ``build(model_cfg, spec, data, generator)``: a randomly initialized model;
    ``load(config, state)``: the model of a saved run (``config``: the run's whole config,
    ``state``: its checkpoint's state dict), before its parameters are loaded;
    ``fused``: its fused E-step (None: autograd only);
    ``score_precision(training)``: the products' precision of evaluation, given training's;
    ``sample(model, x, generator)``: rows with every MISSING value drawn from p(missing |
    observed); ``marginals(model, x)``: p(x_i = v | the observed values other than x_i)
    (N, D, V), linear space; ``complete(model, x)``: (rows (N, D), log values (N,)): the
    most likely joint assignment of the MISSING entries and the circuit's latent states
    (hidden states and Monarch layer indices; max-product), observed values kept, and its
    log joint probability (docs/queries.md);
    ``multiply``: circuit multiplication (``init=multiply``, ``init.space_token``) applies;
    ``settings``: the ``model.*`` keys only this structure reads;
    ``parameters(spec, vocab_size, num_vars)``: how many parameters a model will hold, before
    it is built (memory estimates); ``position_views``: its autograd likelihood keeps a
    tensor view per position (memory estimates of long rows).
    """

    name: str
    build: Callable[[Any, BlockSpec, Data, Generator], nn.Module]
    load: Callable[[Any, dict[str, Tensor]], nn.Module]
    fused: Fused | None
    score_precision: Callable[[str], str]
    sample: Callable[[Any, Tensor, Generator], Tensor]
    marginals: Callable[[Any, Tensor], Tensor] | None = None
    complete: Callable[[Any, Tensor], tuple[Tensor, Tensor]] | None = None
    multiply: bool = False
    settings: Settings = field(default_factory=dict)
    parameters: Callable[[BlockSpec, int, int], int] = lambda spec, vocab, num_vars: 0
    position_views: bool = False


# ---- hmm ----------------------------------------------------------------------------------

def _build_hmm(cfg: Any, spec: BlockSpec, data: Data, generator: Generator) -> HMM:
    perturbation = float(cfg.get("perturbation", 8.0))
    return HMM(SumBlocks(spec, 1, generator, perturbation), data.vocab_size, generator,
               perturbation)


def _load_hmm(config: Any, state: dict[str, Tensor]) -> HMM:
    data = Data(int(state["emission"].shape[1]))
    return _build_hmm(config.model, BlockSpec.from_config(config.model), data, None)


def _hmm_estep(model: nn.Module, device: torch.device, trainer: Any,
               precision: Precision) -> Callable[[Tensor], Tensor]:
    return fused_estep(model, device, int(trainer.segment), precision, trainer.keep_gb,
                       trainer.cuda_graphs, trainer.get("products", "auto"))


def _hmm_score(model: nn.Module, precision: Precision) -> Callable[[Tensor], Tensor]:
    return lambda x: hmm_estep(model, x, segment=x.shape[1], precision=precision, grad=False)


HMM_STRUCTURE = Structure(
    name="hmm", build=_build_hmm, load=_load_hmm,
    fused=Fused(_hmm_estep, _hmm_score),
    # TF32 evaluation when training runs below fp32: within 0.0001 dev BPC of fp32
    # (docs/performance.md), and the speed of the largest models
    score_precision=lambda training: "fp32" if training == "fp32" else "tf32",
    sample=queries.hmm_sample, marginals=queries.hmm_marginals,
    # transition blocks, initial (h) and emission (h x V)
    parameters=lambda spec, vocab, num_vars: (
        block_parameters(spec.factors, spec.axes) + spec.hidden_size * (1 + vocab)),
    position_views=True, complete=queries.hmm_map,
    multiply=True,
    settings={"k": (integer(1, none=True), "Monarch factors; null for dense blocks")})


# ---- hclt ---------------------------------------------------------------------------------

def _build_hclt(cfg: Any, spec: BlockSpec, data: Data, generator: Generator) -> HCLT:
    if data.train_rows is None:
        raise ConfigError("model.structure=hclt learns its tree from data: pass train_rows")
    vocab = data.vocab_sizes or [data.vocab_size] * data.train_rows.shape[1]
    return build_hclt(cfg, spec, data.train_rows, list(vocab), generator)


def _load_hclt(config: Any, state: dict[str, Tensor]) -> HCLT:
    from monarchpc.data.transforms import CHANNEL_VOCABS

    parent = state["parent"]
    vocab = [CHANNEL_VOCABS[config.dataset.transform][v % 3] for v in range(len(parent))]
    return hclt_from_tree(config.model, BlockSpec.from_config(config.model), parent, vocab)


def _hclt_estep(model: nn.Module, device: torch.device, trainer: Any,
                precision: Precision) -> Callable[[Tensor], Tensor]:
    return fused_hclt_estep(model, device, precision, trainer.cuda_graphs)


def _hclt_score(model: nn.Module, precision: Precision) -> Callable[[Tensor], Tensor]:
    return lambda x: hclt_estep(model, x, precision=precision, grad=False)


HCLT_STRUCTURE = Structure(
    name="hclt", build=_build_hclt, load=_load_hclt,
    fused=Fused(_hclt_estep, _hclt_score),
    # fp32 always: TF32 scoring moved dev BPD by +0.003 (docs/performance.md), and
    # evaluation is a small cost beside training
    score_precision=lambda training: "fp32",
    sample=queries.hclt_sample,
    # D - 1 edge blocks, root (h) and D leaves (h x V: an upper bound where leaves are tied)
    parameters=lambda spec, vocab, num_vars: (
        block_parameters(spec.factors, spec.axes, max(num_vars - 1, 1))
        + spec.hidden_size * (1 + num_vars * vocab)),
    marginals=queries.hclt_marginals, complete=queries.hclt_map,
    settings={
        "monarch_layers": (integer(2), "layers of a Monarch-HCLT block"),
        "leaf_tying": (choice("channel", "none"), "leaves shared per colour channel or not"),
        "channels": (integer(1), "colour channels of the patch rows"),
        "chow_liu_rows": (integer(1), "rows sampled for the Chow-Liu tree"),
        "chow_liu_bins": (integer(2, none=True), "bins per variable; null for exact values"),
        "chow_liu_binning": (choice("quantile", "uniform"), "how values are binned"),
    })


STRUCTURES: dict[str, Structure] = {s.name: s for s in (HMM_STRUCTURE, HCLT_STRUCTURE)}

MODEL: Settings = {
    "name": (text(), "the model's name"),
    "structure": (choice(*STRUCTURES), "the circuit"),
    "block": (choice("dense", "monarch"), "the sum blocks"),
    "hidden_size": (integer(1), "hidden states per latent"),
    "factors": (list_of(integer(1), "positive integers", none=True),
                "the Monarch factors; null splits evenly"),
    "perturbation": (number(0.0), "peakedness of the random initialization"),
    "vocab_size": (integer(2, none=True), "asserted vocabulary; null follows the data"),
}
"""The ``model.*`` settings every structure reads; each adds its own ``settings``."""


def structure_of(name: str) -> Structure:
    """The registered structure ``name`` (``model.structure``), or a ConfigError."""
    if name not in STRUCTURES:
        raise ConfigError(f"unknown model.structure {name!r}; available: "
                          f"{', '.join(STRUCTURES)}")
    return STRUCTURES[name]


def model_settings(structure: str) -> Settings:
    """Every ``model.*`` setting of a structure: the common ones and its own."""
    return {**MODEL, **structure_of(structure).settings}


def build_model(cfg: Any, vocab_size: int, generator: Generator = None,
                train_rows: Tensor | None = None,
                vocab_sizes: list[int] | None = None) -> nn.Module:
    """A randomly initialized circuit from a ``model/`` config (see configs/model/).

    ``train_rows`` (N, D) is used by structures learned from data (HCLT's Chow-Liu tree);
    ``vocab_sizes`` (D,) gives each variable its own vocabulary (HCLT leaves; default:
    ``vocab_size`` for all).
    """
    structure = structure_of(cfg["structure"])
    spec = BlockSpec.from_config(cfg)
    return structure.build(cfg, spec, Data(vocab_size, train_rows, vocab_sizes), generator)


def load_model(config: Any, state: dict[str, Tensor]) -> nn.Module:
    """The circuit of a saved run (``config``: its whole config; ``state``: its checkpoint's
    state dict), with those parameters loaded."""
    model = structure_of(config.model.structure).load(config, state)
    model.load_state_dict(state)
    return model
