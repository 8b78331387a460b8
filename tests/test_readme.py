"""The README's commands, run as printed, so that the README and the code cannot drift apart.

The fast tests read every command of README.md and docs/*.md: each ``make`` target must
exist, each ``python -m monarchpc.X`` module and each script must be there, and each
training command (make targets with their ``ARGS`` too) must pass the config checks. The
slow test runs the demo path of the README as a user does, on tiny sizes: ``make demo`` and
``make image-demo`` (through make, with ``ARGS`` overrides that shrink the runs and move
``outputs/`` into a temporary folder), a second ``make demo`` (one clear line, nothing
rewritten), then every command of the README's "Using a trained model" section, with
``.venv/bin/python`` read as this interpreter. Their output must have the shape the README
prints: the same lines, samples of the length asked for (the README's lines lose a trailing
space) that keep the fixed prefix, suffix or mask characters, the same unknown positions,
the same ``wrote`` lines and score line (numbers aside).
"""

from __future__ import annotations

import importlib.util
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from monarchpc.paths import REPO_ROOT

README = REPO_ROOT / "README.md"
DOCS = [*sorted((REPO_ROOT / "docs").glob("*.md")), REPO_ROOT / "examples" / "README.md"]
VENV_PYTHON = ".venv/bin/python"
USING = "## Using a trained model"

# The tiny runs: the demos' settings with fewer, smaller updates and no logger or progress bar.
TINY = ["optim.epochs=1", "trainer.eval_every=1000", "trainer.eval_at_start=false",
        "trainer.long_eval=never", "trainer.device=cpu", "logger=none", "trainer.progress=false"]
TINY_DEMO = ["model.hidden_size=64", "dataset.fractions=[0.3,0.02,0.02]"]
TINY_IMAGE = ["model.hidden_size=16", "model.chow_liu_bins=8"]


@dataclass
class Step:
    """One ``$ command`` of a console block and the lines the README prints after it."""

    command: str
    output: list[str] = field(default_factory=list)


def fenced_blocks(text: str) -> list[tuple[str, list[str]]]:
    """(language, lines) of every fenced code block of a Markdown text."""
    return [(m.group(1), m.group(2).splitlines())
            for m in re.finditer(r"^```(\w*)\n(.*?)^```", text, re.S | re.M)]


def shell_commands(text: str) -> list[str]:
    """Every shell command of a Markdown text: bash lines (comments and continuations
    joined), ``$`` lines of console blocks, and inline code spans that start a command;
    commands joined by ``&&`` count one by one."""
    commands = []
    for lang, lines in fenced_blocks(text):
        if lang == "bash":
            joined = "\n".join(lines).replace("\\\n", " ")
            commands += [ln.split("  #")[0].strip() for ln in joined.splitlines()
                         if ln.strip() and not ln.lstrip().startswith("#")]
        elif lang == "console":
            commands += [s.command for s in console_steps(lines)]
    commands += re.findall(r"`((?:make|\.venv/bin/python) [^`]+)`", text)
    return [part.strip() for c in commands for part in c.split(" && ")]


def console_steps(lines: list[str]) -> list[Step]:
    """The steps of a console block; a here-document stays part of its command."""
    steps: list[Step] = []
    lines = list(lines)
    while lines:
        line = lines.pop(0)
        if line.startswith("$ "):
            steps.append(Step(line[2:]))
            heredoc = re.search(r"<<'?(\w+)'?", line)
            while heredoc and lines:
                body = lines.pop(0)
                steps[-1].command += "\n" + body
                if body == heredoc.group(1):
                    break
        elif steps:
            steps[-1].output.append(line)
    return steps


def section(text: str, heading: str) -> str:
    """The text of one ``## `` section of a Markdown text."""
    start = text.index(heading)
    end = text.find("\n## ", start + len(heading))
    return text[start: end if end >= 0 else len(text)]


def make_targets() -> set[str]:
    """The targets the Makefile defines."""
    names: set[str] = set()
    for m in re.finditer(r"^([a-z0-9][a-z0-9 %-]*):(?!=)", (REPO_ROOT / "Makefile").read_text(),
                         re.M):
        names.update(m.group(1).split())
    return names


# ------------------------------------------------------------------------ every command

def test_the_readme_starts_with_the_two_setup_commands() -> None:
    lang, lines = fenced_blocks(README.read_text())[0]
    assert lang == "bash"
    assert [ln.split("#")[0].strip() for ln in lines] == ["make demo", "make test"]


@pytest.mark.parametrize("doc", [README, *DOCS], ids=lambda p: p.name)
def test_every_make_target_and_module_of_the_docs_exists(doc: Path) -> None:
    targets = make_targets()
    commands = shell_commands(doc.read_text())
    assert commands, f"{doc.name}: no commands found"
    for command in commands:
        words = shlex.split(command.split("\n")[0], comments=True)
        if words and words[0] == "make":
            named = [w for w in words[1:] if "=" not in w and not w.startswith("-")]
            assert set(named) <= targets, f"{doc.name}: {command!r} names no make target"
        for module in re.findall(r"-m (monarchpc[\w.]*)", command):
            assert importlib.util.find_spec(module), f"{doc.name}: {command!r}: no {module}"
        for before, word in zip(["", *words], words, strict=False):
            if before.endswith(("python", "python3")) and word.endswith(".py"):  # a script
                assert (REPO_ROOT / word).is_file(), f"{doc.name}: {command!r}: no {word}"
            if word.startswith("experiment="):
                preset = REPO_ROOT / "configs" / "experiment" / f"{word.split('=')[1]}.yaml"
                assert preset.is_file(), f"{doc.name}: {command!r}: no {preset.name}"


def training_overrides(command: str) -> list[str] | None:
    """The overrides a training command of the docs gives ``monarchpc.train`` (a make
    target's through ``make -n``), the first value of every swept list; None if the command
    does not train."""
    words = shlex.split(command.split("\n")[0], comments=True)
    if words and words[0] == "make":
        shown = subprocess.run(["make", "-n", "-o", "install", *words[1:], "PY=python"],
                               cwd=REPO_ROOT, capture_output=True, text=True, check=True)
        lines = [ln for ln in shown.stdout.splitlines() if "monarchpc.train" in ln]
        if not lines:
            return None
        words = shlex.split(lines[0])
    if "monarchpc.train" not in words:
        return None
    args = words[words.index("monarchpc.train") + 1:]
    return [a if "[" in a else a.split(",")[0] for a in args
            if a != "-m" and not a.startswith("hydra")]


@pytest.mark.parametrize("doc", [README, *DOCS], ids=lambda p: p.name)
def test_every_training_command_of_the_docs_passes_the_config_checks(doc: Path) -> None:
    """Each ``monarchpc.train`` command (and make target with its ``ARGS``) as printed
    composes and passes every check (data files the user supplies aside)."""
    from monarchpc.config import check_config
    from tests.helpers import compose_config, with_user_data

    for command in shell_commands(doc.read_text()):
        overrides = training_overrides(command)
        if overrides is not None:
            try:
                check_config(with_user_data(compose_config(overrides)))
            except Exception as err:
                raise AssertionError(f"{doc.name}: {command!r}: {err}") from None


# ------------------------------------------------------------------------ the demo path

def run_shell(command: str, cwd: Path) -> subprocess.CompletedProcess:
    """``command`` through bash in ``cwd``, ``.venv/bin/python`` read as this interpreter."""
    env = dict(os.environ, OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")]))
    command = re.sub(rf"(?<![\w/.]){re.escape(VENV_PYTHON)}", shlex.quote(sys.executable),
                     command)
    return subprocess.run(["bash", "-c", command], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=600)


def make(target: str, out: Path, overrides: list[str]) -> subprocess.CompletedProcess:
    """``make TARGET`` as printed, with this interpreter (``PY=``; no install step) and
    ``ARGS`` overrides that shrink the run and put its directory under ``out``."""
    args = shlex.quote(" ".join([*overrides, f"paths.output_dir={out}"]))
    return run_shell(f"make -C {shlex.quote(str(REPO_ROOT))} -o install {target} "
                     f"PY={shlex.quote(sys.executable)} ARGS={args}", REPO_ROOT)


def check_output(step: Step, printed: list[str]) -> None:
    """``printed`` has the shape of the README's output of ``step``."""
    expected = [ln for ln in step.output if ln]
    assert len(printed) == len(expected), (step.command, printed)
    opts = dict(w.split("=", 1) for w in shlex.split(step.command.split("\n")[0]) if "=" in w)
    for want, got in zip(expected, printed, strict=True):
        if want.startswith("position "):  # the unknown positions, each with its top-k values
            assert got.split(":")[0] == want.split(":")[0], (want, got)
            assert got.count(", ") == want.count(", "), (want, got)
        elif want.startswith("wrote ") or re.search(r" (BPC|BPD|perplexity) ", want):
            # the same words and paths; the numbers are the tiny run's own
            pattern = re.sub(r"\d[\d,]*(\\\.\d+)?", "[0-9.,]+", re.escape(want))
            assert re.fullmatch(pattern, got), (want, got)
        else:  # a sample: its length, and every character the command fixed
            mask = opts.get("mask", "")
            length = len(mask) or int(opts.get("length", len(want)))
            assert len(got) == length and len(want.rstrip()) == len(want) <= length, (want, got)
            assert got.startswith(opts.get("prefix", "")), got
            assert got.endswith(opts.get("suffix", "")), got
            assert all(m in ("_", g) for m, g in zip(mask, got, strict=False)), (mask, got)


@pytest.mark.slow
def test_the_readme_demo_commands_run_as_printed(tmp_path: Path) -> None:
    text = README.read_text()
    outputs = tmp_path / "outputs"
    (tmp_path / "docs").symlink_to(REPO_ROOT / "docs")  # tmp_path stands for the clone

    # make demo: the run directory the README uses; a second make demo: one line, exit 2
    setup = fenced_blocks(text)[0][1]
    assert setup[0].split("#")[0].strip() == "make demo"
    done = make("demo", outputs, [*TINY, *TINY_DEMO])
    assert done.returncode == 0, done.stderr[-2000:]
    assert (outputs / "demo" / "checkpoint.pt").is_file()
    before = (outputs / "demo" / "checkpoint.pt").read_bytes()
    again = make("demo", outputs, [*TINY, *TINY_DEMO])
    assert again.returncode != 0
    assert [ln for ln in again.stderr.splitlines() if ln.startswith("monarchpc: error:")] == [
        f"monarchpc: error: {outputs / 'demo'} already holds a run (its checkpoint.pt); pass "
        f"resume=true to continue it, or choose another run_name"]
    assert (outputs / "demo" / "checkpoint.pt").read_bytes() == before
    assert "`make image-demo` (`outputs/image_demo`" in text
    done = make("image-demo", outputs, [*TINY, *TINY_IMAGE])
    assert done.returncode == 0, done.stderr[-2000:]

    # every command of "Using a trained model", in a folder laid out as the clone
    using = section(text, USING)
    python = [lines for lang, lines in fenced_blocks(using) if lang == "python"]
    assert len(python) == 1
    done = run_shell(shlex.join([VENV_PYTHON, "-c", "\n".join(python[0])]), tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    steps = [s for lang, lines in fenced_blocks(using) if lang == "console"
             for s in console_steps(lines)]
    inline = [Step(c) for c in re.findall(r"`(\.venv/bin/python -m [^`]+)`", using)]
    assert len(steps) >= 7 and inline
    for step in steps + inline:
        done = run_shell(step.command, tmp_path)
        assert done.returncode == 0, (step.command, done.stderr[-2000:])
        if step.output:  # the README prints what the command printed
            check_output(step, done.stdout.splitlines())
    for png in ("inpaint-before.png", "inpaint-after.png", "samples.png"):
        assert (outputs / "image_demo" / png).is_file()
