"""Every value of a run's config checked before any work, each with one line naming the fix.

:func:`check_config` goes through the top-level keys and the groups ``trainer``, ``optim``,
``dataset``, ``model`` and ``logger``: every key of the configs in ``configs/`` has a rule
below (a key without one is a mistake that tests/test_config_checks.py catches). A rule
returns ``None`` for a good value, else the requirement it breaks; the
:class:`~monarchpc.errors.ConfigError` reads ``<group>.<key>=<value>: <requirement>
(<what the key means>)``. Then the builders are asked what only they know: the model's
block spec (factors of the hidden size), the ``init`` group and the engine for
``trainer.engine`` / ``trainer.precision`` on this machine.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

from omegaconf import DictConfig, OmegaConf

from monarchpc.circuits.sum_blocks import BlockSpec
from monarchpc.data import LOADERS
from monarchpc.errors import ConfigError
from monarchpc.initialize import check_init
from monarchpc.learning.em import UPDATES
from monarchpc.learning.engines import ENGINES, PRECISIONS, engine_name, select_device
from monarchpc.learning.schedules import SCHEDULES

Rule = Callable[[Any], str | None]


def integer(low: int, none: bool = False) -> Rule:
    """An int >= ``low`` (bools are not ints here); ``none``: null allowed."""
    def rule(v: Any) -> str | None:
        if (v is None and none) or (isinstance(v, int) and not isinstance(v, bool)
                                    and v >= low):
            return None
        return f"must be an integer >= {low}" + (" or null" if none else "")
    return rule


def number(low: float, high: float = float("inf"), open_low: bool = False,
           none: bool = False) -> Rule:
    """A real number in [low, high] (or (low, high] with ``open_low``); ``none``: null."""
    def rule(v: Any) -> str | None:
        if v is None and none:
            return None
        if isinstance(v, int | float) and not isinstance(v, bool) and v <= high and (
                v > low if open_low else v >= low):
            return None
        interval = f"{'(' if open_low else '['}{low}, {high}]"
        return f"must be a number in {interval}" + (" or null" if none else "")
    return rule


def choice(*options: Any) -> Rule:
    def rule(v: Any) -> str | None:
        return None if v in options and type(v) in {type(o) for o in options} else \
            f"must be one of {', '.join(map(str, options))}"
    return rule


def boolean(v: Any) -> str | None:
    return None if isinstance(v, bool) else "must be true or false"


def text(none: bool = False) -> Rule:
    """A non-empty string; ``none``: null allowed."""
    def rule(v: Any) -> str | None:
        if (v is None and none) or (isinstance(v, str) and v.strip()):
            return None
        return "must be a non-empty string" + (" or null" if none else "")
    return rule


def list_of(item: Rule, what: str, length: int | None = None, none: bool = False,
            empty: bool = False) -> Rule:
    """A list of ``length`` (default: one or more, or any with ``empty``) values each
    passing ``item``, described as ``what``; ``none``: null allowed."""
    def rule(v: Any) -> str | None:
        if v is None and none:
            return None
        if isinstance(v, list | tuple) and (empty or v) and \
                (length is None or len(v) == length) and all(item(x) is None for x in v):
            return None
        count = length or ("any number of" if empty else "one or more")
        return f"must be a list of {count} {what}" + (" or null" if none else "")
    return rule


def fractions(v: Any) -> str | None:
    ok = list_of(number(0.0, 1.0, open_low=True), "", 3)(v) is None and sum(v) <= 1.0 + 1e-9
    return None if ok else "must be 3 fractions (train, dev, test), each > 0, summing to <= 1"


def sha256(v: Any) -> str | None:
    ok = v is None or (isinstance(v, str) and re.fullmatch(r"[0-9a-f]{64}", v) is not None)
    return None if ok else "must be 64 lowercase hex digits, or null to skip the check"


def heldout_shards(v: Any) -> str | None:
    ok = v == "all" or list_of(choice(*range(50)), "")(v) is None
    return None if ok else "must be a list of shard numbers in 0..49, or all"


def device(v: Any) -> str | None:
    ok = isinstance(v, str) and re.fullmatch(r"auto|cpu|cuda(:\d+)?", v) is not None
    return None if ok else "must be auto, cpu, cuda or cuda:N"


def keep_gb(v: Any) -> str | None:
    return None if v == "auto" else number(0.0)(v)


def cuda_graphs(v: Any) -> str | None:
    return None if isinstance(v, bool) or v == "auto" else "must be auto, true or false"


def run_name(v: Any) -> str | None:
    ok = isinstance(v, str) and v.strip() and ".." not in v.split("/") and not v.startswith("/")
    return None if ok else "must be a non-empty relative name (no '..', no leading '/')"


TOP: dict[str, tuple[Rule, str]] = {
    "seed": (integer(0), "the seed of initialization, data order and sampling"),
    "resume": (boolean, "true continues the run of run_name from its checkpoint"),
    "run_name": (run_name, "the run directory is outputs/<run_name>"),
    "run_dir": (text(none=True), "set by the launcher; leave it null"),
}

TRAINER: dict[str, tuple[Rule, str]] = {
    "device": (device, "where to train"),
    "precision": (choice(*PRECISIONS), "the E-step's matrix-product precision"),
    "engine": (choice(*ENGINES), "the E-step implementation"),
    "segment": (integer(1), "time steps recomputed together by the fused E-step"),
    "keep_gb": (keep_gb, "GPU memory (GB) for kept segments; 0 recomputes all; auto: half "
                         "of the free GPU memory"),
    "cuda_graphs": (cuda_graphs, "replay the fused E-step from CUDA graphs"),
    "products": (choice("auto", "triton", "torch"), "the fused E-step's Monarch products"),
    "eval_every": (integer(1), "updates between evaluations, each with a checkpoint"),
    "eval_at_start": (boolean, "evaluate the initial model too"),
    "eval_batch_size": (integer(1), "rows per evaluation batch"),
    "eval_max_rows": (integer(1, none=True), "dev rows evaluated; null for all"),
    "long_eval": (choice("never", "final", "always"), "when to evaluate long test rows"),
    "checkpoint_every": (integer(1, none=True), "updates between checkpoints; null for "
                         "trainer.eval_every"),
    "stop_after": (integer(1, none=True), "end this invocation after this many updates; null "
                   "to train to the end"),
    "progress": (boolean, "show a progress bar"),
    "cpu_threads": (integer(1, none=True), "torch threads on the CPU; null for torch's choice"),
}

OPTIM: dict[str, tuple[Rule, str]] = {
    "schedule": (choice(*SCHEDULES), "the step-size schedule"),
    "eta0": (number(0.0, 1.0, open_low=True), "the first EM step size"),
    "eta_min": (number(0.0, 1.0), "the last EM step size, <= optim.eta0"),
    "update": (choice(*UPDATES), "the EM update: average probabilities or expected counts"),
    "pseudocount": (number(0.0), "pseudo-count per sum node; 0.1 keeps EM finite"),
    "floor": (number(0.0, 0.5), "smallest probability after an update (reference: 1e-10)"),
    "batch_size": (integer(1), "rows per micro-batch"),
    "accumulate": (integer(1), "micro-batches per EM update"),
    "epochs": (integer(1), "passes over the training rows"),
}

DATASET: dict[str, tuple[Rule, str]] = {
    "name": (choice(*LOADERS), "the data set (configs/dataset/)"),
    # text
    "paths": (list_of(text(), "file paths"), "text files to read"),
    "fractions": (fractions, "train/dev/test shares of the text"),
    "seq_len": (integer(2), "tokens per row; one token has no transition to learn"),
    "max_chars": (integer(1, none=True), "characters used; null for all"),
    "cache_dir": (text(none=True), "folder of the data caches"),
    "long_rows": (integer(1), "rows of the long test evaluation"),
    "allow_non_text": (boolean, "true trains on files that are not text (binary, not UTF-8)"),
    "path": (text(none=True), "the data file"),
    "root": (text(none=True), "the data folder"),
    "download": (boolean, "fetch the data when it is missing"),
    "url": (text(), "where to download from"),
    "zip_size": (integer(1, none=True), "expected size of the download; null skips the check"),
    "text_size": (integer(1, none=True), "expected characters; null skips the check"),
    "sha256": (sha256, "expected sha256 of the text"),
    "split": (list_of(integer(1), "positive integers", 3), "train/dev/test characters"),
    "prefix_chars": (integer(1), "leading characters of text8 used"),
    "prefix_sha256": (sha256, "expected sha256 of those characters"),
    # synthetic
    "hidden_size": (integer(1), "hidden states of the generating HMM"),
    "vocab_size": (integer(2), "vocabulary size"),
    "n_train": (integer(1), "training rows"), "n_dev": (integer(1), "dev rows"),
    "n_test": (integer(1), "test rows"),
    "block": (choice("dense", "monarch"), "the generating HMM's transition"),
    "perturbation": (number(0.0), "peakedness of the generating HMM"),
    "seed": (integer(0), "the data's seed"),
    # tokens (lm1b, lines)
    "source": (choice("auto", "tarball", "disk", "hf"), "where LM1B comes from"),
    "allow_partial": (boolean, "accept an incomplete LM1B release"),
    "hf_name": (text(), "the Hugging Face data set"),
    "hf_revision": (text(none=True), "its revision"),
    "heldout_shards": (heldout_shards, "LM1B heldout shards that make the test split"),
    "dev_sentences": (integer(1), "training sentences held out as dev"),
    "max_train_sentences": (integer(1, none=True), "cap on training sentences"),
    "model_type": (choice("unigram", "bpe"), "the SentencePiece model"),
    "character_coverage": (number(0.0, 1.0, open_low=True), "SentencePiece coverage"),
    "user_defined_symbols": (list_of(text(), "strings", empty=True), "pieces kept whole"),
    "tokenizer": (text(none=True), "an existing SentencePiece model; null trains one"),
    "tokenizer_sha256": (sha256, "expected sha256 of the SentencePiece model"),
    "add_bos": (boolean, "start every sentence with <s>"),
    "train_fraction": (number(0.0, 1.0, open_low=True), "share of lines for train"),
    "max_lines": (integer(1, none=True), "lines used; null for all"),
    # images
    "image": (text(), "the demo photograph"),
    "crop_size": (integer(1), "side of the demo's crops"),
    "transform": (choice("lossless", "lossy", "rgb"), "the colour transform"),
    "patch_size": (integer(1), "side of the patches that make the rows"),
    "train_patches": (choice("random", "all"), "training patches per image"),
    "train": (text(), "folder or tar of training images"),
    "test": (text(none=True), "folder or tar of test images; null holds some out"),
    "image_size": (integer(1), "side the images are reduced to"),
    "dev_fraction": (number(0.0, 1.0, open_low=True), "share held out as dev"),
    "test_fraction": (number(0.0, 1.0, open_low=True), "share held out as test"),
    "max_train_images": (integer(1, none=True), "cap on training images"),
    "max_test_images": (integer(1, none=True), "cap on test images"),
    "cache": (text(none=True), "folder of the decoded images"),
    "resolution": (choice(32, 64), "the downsampled ImageNet"),
    "train_batches": (list_of(choice(*range(1, 11)), "numbers 1..10", none=True),
                      "train_data_batch_i files; null for all"),
}
DATASET_SPECIFIC: dict[tuple[str, str], tuple[Rule, str]] = {
    ("lm1b", "max_chars"): (integer(1), "characters the tokenizer is trained on"),
    ("lines", "max_chars"): (integer(1), "characters the tokenizer is trained on"),
    ("lines", "path"): (text(), "the text file of sentences"),
}

MODEL: dict[str, tuple[Rule, str]] = {
    "name": (text(), "the model's name"),
    "structure": (choice("hmm", "hclt"), "the circuit"),
    "block": (choice("dense", "monarch"), "the sum blocks"),
    "hidden_size": (integer(1), "hidden states per latent"),
    "k": (integer(1, none=True), "Monarch factors; null for dense blocks"),
    "factors": (list_of(integer(1), "positive integers", none=True),
                "the Monarch factors; null splits evenly"),
    "perturbation": (number(0.0), "peakedness of the random initialization"),
    "vocab_size": (integer(2, none=True), "asserted vocabulary; null follows the data"),
    "monarch_layers": (integer(2), "layers of a Monarch-HCLT block"),
    "leaf_tying": (choice("channel", "none"), "leaves shared per colour channel or not"),
    "channels": (integer(1), "colour channels of the patch rows"),
    "chow_liu_rows": (integer(1), "rows sampled for the Chow-Liu tree"),
    "chow_liu_bins": (integer(2, none=True), "bins per variable; null for exact values"),
    "chow_liu_binning": (choice("quantile", "uniform"), "how values are binned"),
}

INIT: dict[str, tuple[Rule, str]] = {
    "name": (choice("random", "multiply"), "the initialization"),
    "factors": (list_of(integer(2), "integers >= 2", none=True),
                "dense factor sizes of init=multiply; null: the model's factors"),
    "seed": (integer(0), "factor d is trained with init.seed + d"),
    "space_token": (integer(0, none=True), "the text8 initialization's space token; null: off"),
    "renormalize": (boolean, "renormalize the product's emission rows"),
    "cache_dir": (text(), "folder of the cached factor runs"),
    "parallel": (boolean, "train the unfinished factor runs side by side, a process each"),
    "factor_runs": (list_of(text(), "run directories", none=True),
                    "finished factor runs to multiply; null trains them"),
}

LOGGER: dict[str, tuple[Rule, str]] = {
    "name": (choice("wandb", "none"), "where records are mirrored"),
    "project": (text(), "the wandb project"),
    "entity": (text(none=True), "the wandb entity; null for yours"),
    "mode": (choice("offline", "online", "disabled"), "wandb's mode"),
    "tags": (list_of(text(), "strings", empty=True), "wandb tags"),
}


RULES_BY_GROUP = {"": TOP, "trainer": TRAINER, "optim": OPTIM, "dataset": DATASET,
                  "model": MODEL, "init": INIT, "logger": LOGGER}


def settings_help() -> str:
    """Every setting of the groups with what it means, one line each (for ``--help``)."""
    lines = []
    for group, rules in RULES_BY_GROUP.items():
        lines += [f"  {group + '.' if group else ''}{key}: {meaning}"
                  for key, (_, meaning) in rules.items()]
    return "\n".join(lines)


def check_group(prefix: str, values: Mapping[str, Any],
                rules: Mapping[str, tuple[Rule, str]]) -> None:
    """Apply ``rules`` to the keys of ``values`` they name (others are left alone)."""
    for key, value in values.items():
        if key in rules:
            rule, meaning = rules[key]
            problem = rule(value)
            if problem is not None:
                raise ConfigError(f"{prefix}{key}={value!r}: {problem} ({meaning})")


def check_config(cfg: DictConfig | Mapping[str, Any]) -> BlockSpec:
    """Raise :class:`ConfigError` (one line naming the key and the fix) for the first value
    of ``cfg`` that cannot work (see the module docstring); returns the model's block spec.
    Reads nothing but ``cfg`` (and which devices this machine has)."""
    if isinstance(cfg, DictConfig):
        for key in sorted(OmegaConf.missing_keys(cfg)):
            group, _, name = key.rpartition(".")
            meaning = RULES_BY_GROUP.get(group, {}).get(name, (None, "a required setting"))[1]
            raise ConfigError(f"{key} is required ({meaning}): give it on the command line, "
                              f"e.g. {key}=... (see configs/{group or 'train'}/)")
    c = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else cfg
    check_group("", {k: v for k, v in c.items() if k in TOP}, TOP)
    for group, rules in (("trainer", TRAINER), ("optim", OPTIM), ("model", MODEL),
                         ("logger", LOGGER)):
        check_group(f"{group}.", c.get(group) or {}, rules)
    dataset = c.get("dataset") or {}
    check_group("dataset.", {"name": dataset.get("name")}, DATASET)
    name = dataset["name"]
    rules = {**DATASET, **{k: r for (n, k), r in DATASET_SPECIFIC.items() if n == name}}
    check_group("dataset.", dataset, rules)
    check_group("init.", c.get("init") or {}, INIT)
    check_relations(c)
    config = cfg if isinstance(cfg, DictConfig) else OmegaConf.create(cfg)
    spec = BlockSpec.from_config(config.model)
    check_init(config)
    engine_name(config.model.structure, config.trainer, select_device(config.trainer.device).type)
    return spec


def check_relations(c: Mapping[str, Any]) -> None:
    """Checks between values (each value is already valid on its own)."""
    o, d = c.get("optim") or {}, c.get("dataset") or {}
    if "eta_min" in o and "eta0" in o and o["eta_min"] > o["eta0"]:
        raise ConfigError(f"optim.eta_min={o['eta_min']} exceeds optim.eta0={o['eta0']}; "
                          f"lower optim.eta_min")
    side = next((k for k in ("image_size", "crop_size", "resolution") if k in d), None)
    if side and "patch_size" in d and d[side] % d["patch_size"]:
        raise ConfigError(f"dataset.patch_size={d['patch_size']} does not divide "
                          f"dataset.{side}={d[side]}; use a divisor of it (e.g. 4 or 8)")
    if "train_fraction" in d and d["train_fraction"] + d.get("dev_fraction", 0) >= 1:
        raise ConfigError(f"dataset.train_fraction + dataset.dev_fraction = "
                          f"{d['train_fraction'] + d.get('dev_fraction', 0)} leaves no test "
                          f"lines; make their sum < 1")
    if d.get("text_size") and "split" in d and sum(d["split"]) > d["text_size"]:
        raise ConfigError(f"dataset.split={d['split']} needs {sum(d['split']):,} characters, "
                          f"more than dataset.text_size={d['text_size']:,}; shrink the split")
