"""python -m monarchpc.bench recipe on the CPU: the preset's loop at tiny size, its record."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from monarchpc.bench import recipe


def test_recipe_times_the_presets_updates_in_the_training_loop(tmp_path: Path, capsys) -> None:
    out = tmp_path / "speed.json"
    recipe.main(["--tiny", "--warmup", "1", "--updates", "2", "--out", str(out)])
    r = json.loads(out.read_text())
    s = r["settings"]
    # the preset's settings (configs/experiment/text8_monarch2.yaml) with the tiny overrides
    assert (s["precision"], s["keep_gb"], s["engine"], s["accumulate"]) == ("bf16", "auto",
                                                                          "fused", 2)
    assert (s["hidden_size"], s["factors"], s["batch_size"], s["seq_len"]) == (256, [16, 16], 8,
                                                                               32)
    assert s["vocab_size"] == 27 and s["world_size"] == 1 and r["device"] == "cpu"
    assert "init=random" in r["overrides"] and "trainer.stop_after=3" in r["overrides"]
    # one warm-up and two timed updates, each of accumulate x batch x seq_len tokens
    assert [u["update"] for u in r["warmup_updates"]] == [1]
    assert [u["update"] for u in r["timed_updates"]] == [2, 3]
    assert all(u["tokens"] == 2 * 8 * 32 and u["micro_batches"] == 2
               for u in r["warmup_updates"] + r["timed_updates"])
    assert r["tokens_per_update"] == 512
    steady = r["steady"]
    assert steady["tokens"] == 1024 and steady["updates"] == 2
    assert steady["seconds"] == pytest.approx(sum(u["seconds"] for u in r["timed_updates"]))
    assert r["tokens_per_s"] == pytest.approx(1024 / steady["seconds"])
    assert all(0 < u["estep_seconds"] <= u["seconds"] for u in r["timed_updates"])
    assert r["peak_gpu_memory_gb"] is None and r["rank_divergence"] == 0.0
    assert "synthetic" in r["data"] and "projected_hours_20_epochs" not in r  # tiny: none
    assert "steady state:" in capsys.readouterr().out
    assert r["command"] == "python -m monarchpc.bench recipe --tiny --warmup 1 --updates 2"
    assert not any(Path(recipe.REPO_ROOT / "outputs" / "bench" / "recipe_runs").glob(
        "text8_monarch2-*/checkpoint.pt"))  # the run directory is removed


def test_recipe_refuses_a_bad_override_in_one_line(tmp_path: Path, capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        recipe.main(["--tiny", "--out", str(tmp_path / "x.json"), "trainer.precision=fp8"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("monarchpc: error:") and "trainer.precision" in err
    assert not (tmp_path / "x.json").exists()
