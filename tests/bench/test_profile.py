"""python -m monarchpc.bench profile on the CPU: tiny HMMs (dense, Monarch-3) and a tiny HCLT."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

CASES = [  # (argv, case, hidden size, factors)
    (["--structure", "hmm", "--case", "dense 64", "--batch", "4", "--length", "8"],
     "dense 64", 64, [64]),
    (["--structure", "hmm", "--case", "monarch3 2^18", "--hidden", "512", "--batch", "4",
      "--length", "8", "--segment", "4"], "monarch3 2^18", 512, [8, 8, 8]),
    (["--structure", "hclt", "--case", "dense-8-16"], "dense-8-16", 8, [8]),
]


def test_profile_estep_writes_a_consistent_record_per_case(tmp_path: Path, monkeypatch,
                                                           capsys) -> None:
    from monarchpc.bench import profile as profile_estep

    out = tmp_path / "profile" / "p.jsonl"
    for argv, *_ in CASES:
        profile_estep.main([*argv, "--device", "cpu", "--precision", "fp32", "--warmup", "1",
                            "--steps", "1", "--top", "8", "--out", str(out)])
    assert "ms/step" in capsys.readouterr().out  # the human table
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(records) == len(CASES)  # one line per run, appended
    for r, (argv, case, hidden, factors) in zip(records, CASES, strict=True):
        assert (r["case"], r["hidden_size"], r["factors"]) == (case, hidden, factors)
        assert r["structure"] == argv[1] and r["device"] == "cpu"
        assert (r["precision"], r["steps"], r["graphs"]) == ("fp32", 1, False)
        assert r["batch"] == (4 if argv[1] == "hmm" else 16) and r["peak_memory_gb"] is None
        total, fams = r["total_self_ms_per_step"], {f["family"]: f for f in r["families"]}
        unit = "tokens" if argv[1] == "hmm" else "samples"
        assert total > 0 and r["step_ms"] > 0 and r[f"{unit}_per_s"] > 0
        assert sum(f["ms_per_step"] for f in fams.values()) == pytest.approx(total, abs=1e-3)
        assert sum(f["share"] for f in fams.values()) == pytest.approx(1.0, abs=2e-3)
        assert fams["monarch layer products"]["ms_per_step"] > 0  # aten::bmm on a CPU
        assert fams["weight gradients"]["ms_per_step"] > 0  # aten::baddbmm_
        assert 0 < len(r["top"]) <= 8
        assert all(op["calls_per_step"] >= 1 and op["ms_per_step"] >= 0 and op["name"]
                   and op["family"] in fams for op in r["top"])
        times = [op["ms_per_step"] for op in r["top"]]
        assert times == sorted(times, reverse=True) and sum(times) <= total + 1e-3


def test_gpu_kernels_are_grouped_by_name_then_by_the_op_that_launched_them(monkeypatch) -> None:
    """The GPU branch on made-up events: a cuBLAS kernel counts as a product through its
    aten::bmm, a copy kernel inside aten::matmul as a copy (the innermost op decides)."""
    from torch.autograd import DeviceType

    from monarchpc.bench import profile as profile_estep

    def event(name: str, id: int = 0, parent: object = None, link: int = 0, us: float = 0.0,
              cpu: bool = False) -> SimpleNamespace:
        return SimpleNamespace(name=name, id=id, cpu_parent=parent, linked_correlation_id=link,
                               device_time_total=us, is_async=False, is_user_annotation=False,
                               device_type=DeviceType.CPU if cpu else DeviceType.CUDA)

    matmul = event("aten::matmul", 1, cpu=True)
    bmm, copy = event("aten::bmm", 2, matmul, cpu=True), event("aten::copy_", 3, matmul, cpu=True)
    events = [matmul, bmm, copy,
              event("void cutlass::Kernel2<gemm_bf16_64x64>(Params)", link=2, us=400.0),
              event("void at::native::elementwise_kernel<128, 4>(int, F)", link=3, us=200.0),
              event("_emit_kernel", us=120.0), event("_grad_kernel", us=80.0),
              event("_emit_kernel", us=120.0), event("_backward_kernel", us=40.0),
              event("_layer_rows_kernel", us=100.0), event("Memset (Device)", us=40.0)]
    result = profile_estep.breakdown(SimpleNamespace(events=lambda: events), 2, True, 10)
    fams = {f["family"]: f["ms_per_step"] for f in result["families"]}
    assert result["total_self_ms_per_step"] == 0.55
    assert fams == {"monarch layer products": 0.25, "copies": 0.1, "weight gradients": 0.04,
                    "backward steps (gradient + transposed product)": 0.02,
                    "element-wise (emit/post/normalize)": 0.12, "other": 0.02}
    top = {r["name"]: r for r in result["top"]}
    assert top["cutlass::Kernel2<gemm_bf16_64x64>"]["op"] == "aten::bmm"
    assert top["_emit_kernel"]["calls_per_step"] == 1 and \
        top["_emit_kernel"]["share"] == round(0.12 / 0.55, 4)
