"""The benchmarks (``python -m monarchpc.bench TOOL``) on the CPU: small cases, their checks
against autograd, and the JSON lines they print."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from monarchpc.paths import REPO_ROOT

BENCH = [sys.executable, "-m", "monarchpc.bench"]
pytestmark = pytest.mark.slow  # each runs a benchmark in a subprocess


def test_benchmark_runs_on_the_cpu_and_prints_json() -> None:
    result = subprocess.run(
        [*BENCH, "hmm", "--tiny", "--cases", "0,1", "--precision", "fp32", "--out", ""],
        capture_output=True, text=True, timeout=300, cwd=REPO_ROOT,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)})  # this checkout, not an install
    assert result.returncode == 0, result.stderr
    rows = [json.loads(ln) for ln in result.stdout.splitlines() if ln.startswith("{")]
    checks = [r for r in rows if "check" in r]
    cases = [r for r in rows if "case" in r]
    assert checks and checks[0]["fp32_ll_rel_err"] < 1e-4 and checks[0]["fp32_flow_rel_err"] < 1e-3
    assert [r["case"] for r in cases] == ["dense 64", "monarch2 2^8"]
    assert all(r["estep_tokens_per_s"] > 0 and r["device"] == "cpu" for r in cases)
    assert all(r["products"] == "torch" for r in cases)  # auto: cuBLAS-style twins on a CPU
    for r in cases:  # the timed configuration checked against autograd in the same run
        c = r["timed_check"]
        assert c["rows"] == 4 and c["ok"] and c["band"] == {"ll": 1e-5, "flows": 1e-4}
        assert c["ll_rel_err"] < 1e-5 and c["flow_rel_err"] < 1e-4
        assert set(c["flow_rel_err_by_param"]) == {"initial", "emission"} | {
            f"transition.layers.{i}" for i in range(len(r["factors"]))}
    assert "| case |" in result.stdout and "| model | h | reference" in result.stdout


@pytest.mark.kernel
def test_product_benchmark_checks_and_times_variants_on_the_cpu() -> None:
    result = subprocess.run(
        [*BENCH, "kernels", "--tiny", "--cases", "1", "--variants", "torch,triton",
         "--out", ""],
        capture_output=True, text=True, timeout=300, cwd=REPO_ROOT,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)})
    assert result.returncode == 0, result.stderr
    rows = [json.loads(ln) for ln in result.stdout.splitlines() if ln.startswith("{")]
    assert [r["variant"] for r in rows] == ["torch", "triton"]
    assert all(r["ok"] and r["forward_ms"] > 0 and r["grad_ms"] > 0 for r in rows)
    assert len(rows[1]["forward_layer_ms"]) == 2 and "| case | variant |" in result.stdout


@pytest.mark.kernel
def test_element_kernel_benchmark_checks_and_times_on_the_cpu() -> None:
    result = subprocess.run(
        [*BENCH, "elements", "--tiny", "--out", ""],
        capture_output=True, text=True, timeout=300, cwd=REPO_ROOT,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)})
    assert result.returncode == 0, result.stderr
    rows = [json.loads(ln) for ln in result.stdout.splitlines() if ln.startswith("{")]
    assert [r["kernel"] for r in rows] == ["copy", "emit", "post", "post flows only",
                                           "post out only", "emit torch", "post torch",
                                           "product", "product, emit", "emit_product",
                                           "grad (per step)", "grad_flows (per step)"]
    assert all(r["ok"] and r["us"] > 0 and r["tb_per_s"] > 0 for r in rows)
    assert rows[0]["of_copy"] == 1.0 and "| case | kernel |" in result.stdout


def test_hclt_benchmark_runs_on_the_cpu_and_prints_json() -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}  # this checkout's monarchpc
    result = subprocess.run([*BENCH, "hclt", "--tiny", "--floor", "--out", ""],
                            capture_output=True, text=True, timeout=300, cwd=REPO_ROOT, env=env)
    assert result.returncode == 0, result.stderr
    lines = [json.loads(ln) for ln in result.stdout.splitlines() if ln.startswith("{")]
    checks = [r for r in lines if "check" in r]
    cases = [r for r in lines if "samples_per_s" in r]
    floor = [r for r in cases if r["engine"] == "fused-no-blocks"]
    assert [r["block"] for r in floor] == ["monarch"]  # Monarch cases only, once per precision
    assert checks and all(c["fp32_ll_rel_err"] < 1e-5 and c["fp32_flow_rel_err"] < 1e-4
                          for c in checks)
    assert {(r["block"], r["peer"]) for r in cases} == {("dense", "monarchpc"),
                                                        ("monarch", "monarchpc")}
    # PyJuice cannot run on a CPU: its rows (dense cases, both constructions) say why
    peers = [r for r in lines if r.get("peer") == "pyjuice"]
    assert [(r["construction"], r["engine"]) for r in peers] == [
        ("our-tree", "pyjuice"), ("pyjuice-hclt", "pyjuice"), ("pyjuice-hclt", "pyjuice-graphs")]
    assert all(r["skipped"] in ("pyjuice not installed", "pyjuice needs a CUDA GPU (its "
                                "compile asks torch.cuda for the device)") for r in peers)
    for r in cases:
        assert r["structure"] == "hclt" and r["samples_per_s"] > 0 and r["device"] == "cpu"
        assert {"hidden_size", "batch", "peak_memory_gb", "precision", "madds_per_sample"} <= set(r)
    assert "| block |" in result.stdout


def test_precision_flows_bench_bounds_bf16_errors_on_the_cpu() -> None:
    # on the CPU, tf32 runs exact fp32 products (no tensor cores): its errors are zero; bf16
    # operands move log p and the flows by a little, never by nothing or by much
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    result = subprocess.run([*BENCH, "flows", "--cases", "monarch-16-16", "--device", "cpu",
                             "--out", ""],
                            capture_output=True, text=True, timeout=300, cwd=REPO_ROOT, env=env)
    assert result.returncode == 0, result.stderr
    rows = {r["precision"]: r for r in map(json.loads, result.stdout.splitlines())}
    errors = [k for k in rows["bf16"] if k.endswith(("_l1_rel", "_max_abs_nats"))]
    assert len(errors) == 6 and all(rows["tf32"][k] == 0.0 for k in errors)
    assert all(0.0 < rows["bf16"][k] < 0.1 for k in errors)
    assert abs(rows["bf16"]["ll_bias_nats"]) < 0.05

