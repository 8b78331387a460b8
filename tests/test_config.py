"""check_config: every key of configs/ has a rule, every preset passes, and each bad value
of the issue gives one ConfigError line naming the key."""

from __future__ import annotations

import copy

import pytest
from omegaconf import OmegaConf

from monarchpc.config import GROUPS, check_config
from monarchpc.data import dataset_settings
from monarchpc.errors import ConfigError
from monarchpc.paths import REPO_ROOT
from monarchpc.run.trainer import TOP
from monarchpc.structures import model_settings
from tests.helpers import compose_config

CONFIGS = REPO_ROOT / "configs"


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONFIGS / group).glob("*.yaml"))


def test_every_key_of_the_configs_has_a_rule() -> None:
    """Each key of every option of every group has a rule in its owner's settings table
    (the dataset's own for dataset/, the structure's for model/)."""
    for group in ("trainer", "optim", "init", "logger", "paths", "dataset", "model"):
        for option in options(group):
            values = OmegaConf.load(CONFIGS / group / f"{option}.yaml")
            if group == "dataset":
                rules = dataset_settings(values["name"])
            elif group == "model":
                base = "hclt" if option == "monarch_hclt" else option  # defaults: [hclt]
                rules = model_settings(OmegaConf.load(CONFIGS / group / f"{base}.yaml")
                                       ["structure"])
            else:
                rules = GROUPS[group]
            keys = set(values) - {"defaults"} - ({"optim", "trainer"} if group == "init"
                                                 else set())
            assert keys <= set(rules), f"configs/{group}/{option}.yaml: no rule for " \
                                       f"{keys - set(rules)}"
    top = set(OmegaConf.load(CONFIGS / "train.yaml")) - {"defaults", "hydra"}
    assert top <= set(TOP)


def test_a_key_no_owner_declares_is_refused() -> None:
    """A typo or a stray key (``+optim.epoch=3``, ``+bogus_key=1``) is an error naming the
    settings that exist, not silently ignored."""
    for extra, where in [("+bogus_key=1", "bogus_key is not a setting"),
                         ("+optim.epoch=3", "optim.epoch is not a setting"),
                         ("+dataset.seq_length=9", "dataset.seq_length is not a setting of "
                                                   "dataset demo"),
                         ("+model.leaf_tying=none", "model.leaf_tying is not a setting of "
                                                    "model.structure=hmm")]:
        with pytest.raises(ConfigError, match=where):
            check_config(compose_config([extra]))


@pytest.fixture(scope="module")
def default() -> dict:
    """The default config as plain values (composed once)."""
    return OmegaConf.to_container(compose_config([]), resolve=True)


@pytest.mark.parametrize("key, value, needs", [
    ("trainer.eval_every", 0, "integer >= 1"),
    ("trainer.eval_every", -1, "integer >= 1"),
    ("trainer.eval_every", 1.5, "integer >= 1"),
    ("trainer.eval_every", True, "integer >= 1"),
    ("trainer.checkpoint_every", 0, "integer >= 1 or null"),
    ("trainer.stop_after", 0, "integer >= 1 or null"),
    ("trainer.precision", "fp8", "one of fp32"),
    ("trainer.device", "gpu", "auto, cpu, cuda or cuda:N"),
    ("trainer.keep_gb", -1, "number in [0.0, inf]"),
    ("trainer.long_eval", "sometimes", "never, final, always"),
    ("model.hidden_size", -64, "integer >= 1"),
    ("dataset.seq_len", 0, "integer >= 2"),
    ("dataset.seq_len", 1, "integer >= 2"),
    ("dataset.fractions", [0.9, 0.1, 0], "each > 0"),
    ("optim.pseudocount", -0.1, "number in [0.0, inf]"),
    ("optim.eta0", 0, "number in (0.0, 1.0]"),
    ("optim.batch_size", 0, "integer >= 1"),
    ("optim.schedule", "step", "one of linear, cosine, constant"),
    ("seed", -1, "integer >= 0"),
    ("run_name", "", "non-empty relative name"),
])
def test_bad_values_give_one_line_naming_the_key(default: dict, key: str, value, needs: str
                                                 ) -> None:
    cfg = copy.deepcopy(default)
    *groups, last = key.split(".")
    node = cfg
    for group in groups:
        node = node[group]
    node[last] = value
    with pytest.raises(ConfigError) as err:
        check_config(cfg)
    message = str(err.value)
    assert message.startswith(f"{key}={value!r}: must be") and needs in message, message
    assert "\n" not in message and message.endswith(")")  # (what the key means)


@pytest.mark.parametrize("overrides, match", [
    (["optim.eta0=0.2", "optim.eta_min=0.5"], r"optim\.eta_min=0\.5 exceeds optim\.eta0=0\.2"),
    (["dataset=image_folder", "dataset.train=i.tar", "dataset.patch_size=5"],
     r"patch_size=5 does not divide dataset\.image_size=32"),
    (["dataset=image_demo", "dataset.patch_size=64"], r"does not divide dataset\.crop_size"),
    (["dataset=image_folder", "dataset.train=i.tar", "dataset.dev_from=test"],
     r"dev_from=test holds dev out of dataset\.test, which is null"),
    (["dataset=image_folder", "dataset.train=i.tar", "dataset.dev_from=val"],
     r"dataset\.dev_from='val': must be one of train, test"),
    (["dataset=wikitext2", "dataset.path=w.txt", "dataset.train_fraction=0.95"],
     "leaves no test lines"),
    (["dataset=text8", "dataset.split=[90000000,5000000,6000000]"], "more than "
                                                                    r"dataset\.text_size"),
    (["model=hclt", "trainer.engine=autograd", "trainer.precision=bf16", "dataset=image_demo"],
     "bf16 is not available to the autograd engine of hclt"),
    (["dataset=chars", "dataset.paths=[a.txt]", "dataset.allow_non_text=yes"],
     "must be true or false"),
    (["dataset=chars"], r"dataset\.paths is required \(text files to read\)"),
    (["dataset=imagenet32", "dataset.train_batches=[0,11]"], r"numbers 1\.\.10"),
])
def test_values_that_conflict_are_named(overrides: list[str], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        check_config(compose_config(overrides))


def test_the_command_line_reaches_the_same_checks() -> None:
    with pytest.raises(ConfigError, match=r"^trainer\.eval_every=0: must be an integer >= 1"):
        check_config(compose_config(["trainer.eval_every=0"]))
