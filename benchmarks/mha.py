"""Row 2: our MultiHeadAttention vs torch.nn.MultiheadAttention, same shapes and weights."""

from __future__ import annotations

import torch

from benchmarks.common import paired_median_seconds
from benchmarks.markdown import table, verdict
from training.nn.attention import MultiHeadAttention

SHAPES = [(32, 128, 64, 4), (16, 512, 128, 8)]  # (B, T, D, H)
QUICK_SHAPES = [(8, 32, 32, 4)]


def paired(d_model: int, n_heads: int, device: str) -> tuple[MultiHeadAttention, torch.nn.MultiheadAttention]:
    torch.manual_seed(0)
    ours = MultiHeadAttention(d_model=d_model, n_heads=n_heads).to(device)
    reference = torch.nn.MultiheadAttention(d_model, n_heads, batch_first=True).to(device)
    with torch.no_grad():
        reference.in_proj_weight.copy_(ours.in_proj.weight)
        reference.in_proj_bias.copy_(ours.in_proj.bias)
        reference.out_proj.weight.copy_(ours.out_proj.weight)
        reference.out_proj.bias.copy_(ours.out_proj.bias)
    return ours, reference


def run(quick: bool = False, device: str = "cpu") -> list[dict]:
    rows = []
    for B, T, D, H in QUICK_SHAPES if quick else SHAPES:
        ours, reference = paired(D, H, device)
        x = torch.randn(B, T, D, device=device)
        lengths = torch.randint(T // 2, T + 1, (B,), device=device)
        padding = torch.arange(T, device=device)[None, :] >= lengths[:, None]  # True = ignore (torch's convention)

        def ours_step():
            ours(x, x, x, lengths)[0].sum().backward()

        def reference_step():
            reference(x, x, x, key_padding_mask=padding, need_weights=False)[0].sum().backward()

        ours.eval(), reference.eval()
        with torch.inference_mode():
            inference = paired_median_seconds(
                lambda: ours(x, x, x, lengths), lambda: reference(x, x, x, key_padding_mask=padding, need_weights=False)
            )
        ours.train(), reference.train()
        training = paired_median_seconds(ours_step, reference_step)
        for mode, times in (("inference", inference), ("training step", training)):
            rows.append(
                {
                    "device": device,
                    "shape": f"B{B} T{T} D{D} H{H}",
                    "mode": mode,
                    "ours_ms": times[0] * 1e3,
                    "torch_ms": times[1] * 1e3,
                    "ratio": times[0] / times[1],
                }
            )
    return rows


def section(rows: list[dict]) -> str:
    out = [
        "## 2. Multi-head attention: ours vs `torch.nn.MultiheadAttention`",
        "",
        "Same shapes and weights, self-attention with a key-padding mask; median time per call, the two "
        "measured in alternating rounds.",
        "",
    ]
    out.append(
        table(
            ["device", "shape", "mode", "ours ms", "torch ms", "ratio"],
            [[r["device"], r["shape"], r["mode"], r["ours_ms"], r["torch_ms"], r["ratio"]] for r in rows],
        )
    )
    worst = max(r["ratio"] for r in rows)
    out += ["", f"Target: ≤ 1.0× — worst ratio {worst:.2f}× {verdict(worst <= 1.0)}."]
    return "\n".join(out)
