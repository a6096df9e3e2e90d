"""Model FLOP utilisation as the field reports it: model FLOPs per step / step time / the card's dense bf16 peak
from its data sheet; the best large bf16 matmul measured in the run beside it as a second figure; and an analytic
FLOP count of a ViT step to cross-check the counted one."""

from __future__ import annotations

import re

# Dense bf16 tensor-core peaks in FLOP/s from NVIDIA's data sheets (the sparsity figures halved), matched as whole
# words in torch.cuda.get_device_name, case-insensitively; first match wins, so the variants come before the family
# (torch names the H100 SXM "NVIDIA H100 80GB HBM3", the PCIe card "NVIDIA H100 PCIe", the A100 "A100-SXM4-80GB").
DATASHEET_BF16_DENSE = [
    ("H200 NVL", 835e12), ("H200", 989e12),  # H200 SXM: 1,979 TFLOPS with sparsity
    ("GH200", 989e12),  # its Hopper GPU is the H100 SXM's
    ("H100 NVL", 835e12), ("H100 PCIe", 756e12), ("H100", 989e12),  # SXM: 1,979 with sparsity
    ("A100", 312e12),  # SXM and PCIe alike
    ("L40S", 362e12), ("L40", 181e12), ("L4", 121e12), ("A10", 125e12),  # "A10" does not match "A10G" (a word of its own)
]


def datasheet_peak(card: str) -> float | None:
    """The card's dense bf16 peak from `DATASHEET_BF16_DENSE`; None for a card not listed."""
    for name, peak in DATASHEET_BF16_DENSE:
        if re.search(rf"(?<![\w]){re.escape(name)}(?![\w])", card, re.IGNORECASE):
            return peak
    return None


def utilisation(flops_per_step: float, step_s: float, peak: float | None, measured: float | None) -> dict:
    """`mfu` by the convention (FLOP rate over `peak`, the data sheet's; None where the card is not listed) and
    `mfu_of_measured_matmul_peak`, the same rate over the matmul peak measured in the run (None if not measured)."""
    rate = flops_per_step / step_s
    return {"mfu": rate / peak if peak else None, "mfu_of_measured_matmul_peak": rate / measured if measured else None}


def peak_record(card: str, measured: float) -> dict:
    """What a GPU benchmark's JSON says of its peaks: the card, its data-sheet peak (with the reason where MFU is
    omitted) and the measured matmul peak."""
    peak = datasheet_peak(card)
    out = {"card": card, "datasheet_bf16_dense_peak_per_s": peak, "bf16_matmul_peak_per_s": measured,
           "mfu_convention": "model FLOPs per step / step time / the card's dense bf16 peak from its data sheet"}
    if peak is None:
        out["mfu_note"] = f"MFU omitted: no data-sheet bf16 peak for {card!r} in benchmarks/peaks.py"
    return out


def peak_line(record: dict) -> str:
    """One line under a GPU benchmark's table: both peaks, or why MFU is omitted."""
    measured = f"measured bf16 matmul {record['bf16_matmul_peak_per_s'] / 1e12:.0f} TFLOP/s"
    if record["datasheet_bf16_dense_peak_per_s"] is None:
        return f"{record['mfu_note']}; {measured} on {record['card']}"
    return (f"MFU: over the data sheet's dense bf16 peak, {record['datasheet_bf16_dense_peak_per_s'] / 1e12:.0f} "
            f"TFLOP/s; 'of measured': over the {measured} on {record['card']}")


def percent(x: float | None) -> str:
    """A utilisation for a table; '-' where it was omitted."""
    return "-" if x is None else f"{x:.1%}"


def transformer_forward_flops(tokens: int, layers: int, width: int, mlp_width: int) -> float:
    """Forward FLOPs of `layers` pre-norm transformer blocks on one sequence of `tokens`: 2 per multiply-add of the
    q, k, v and output projections (4 width^2), the MLP (2 width x mlp_width) and attention's two batched products
    (QK^T and the weighted sum of V, 2 tokens^2 width). Norms, softmax, GELU, biases and residual adds are left out
    (elementwise; FlopCounterMode does not count them either)."""
    per_layer = 2 * tokens * (4 * width ** 2 + 2 * width * mlp_width) + 4 * tokens ** 2 * width
    return float(layers * per_layer)


def vit_train_flops(batch: int, img_size: int, patch_size: int, layers: int, width: int, mlp_width: int,
                    embed_dim: int, prefix_tokens: int = 1, channels: int = 3,
                    kept_patches: int | None = None) -> float:
    """FLOPs of one training step (forward and backward) of a ViT image tower with a patchify stem and a linear
    projection to `embed_dim` on `batch` images: the forward (patch embedding, blocks on the kept patches (all of
    them unless patch dropout keeps `kept_patches`) + prefix tokens, projection of the pooled token) x3, since the
    backward runs two matmuls (input and weight gradients) per forward one, except the patch embedding's x2 (the
    images need no gradient). Elementwise work (norms, softmax, GELU, biases, residuals) is left out."""
    patches = (img_size // patch_size) ** 2
    stem = 2 * patches * channels * patch_size ** 2 * width
    rest = (transformer_forward_flops((patches if kept_patches is None else kept_patches) + prefix_tokens, layers,
                                      width, mlp_width) + 2 * width * embed_dim)
    return batch * (2 * stem + 3 * rest)


def vit_tower_train_flops(tower, batch: int) -> float | None:
    """`vit_train_flops` of an `ImageTower` in its current mode, read from its modules; None where the analytic
    count does not apply (not a timm ViT with a patchify stem pooled by its class token)."""
    from timm.layers import PatchEmbed

    trunk = tower.trunk
    embed = getattr(trunk, "patch_embed", None)
    if (tower.pool != "model" or not isinstance(embed, PatchEmbed) or getattr(trunk, "global_pool", None) != "token"
            or not hasattr(trunk, "blocks")):
        return None
    patches = (embed.img_size[0] // embed.patch_size[0]) ** 2
    drop = getattr(getattr(trunk, "patch_drop", None), "prob", 0.0)
    # timm's PatchDropout keeps max(1, int(N * (1 - prob))) patch tokens in training, all of them in evaluation
    kept = max(1, int(patches * (1 - drop))) if drop and trunk.training else None
    return vit_train_flops(batch, embed.img_size[0], embed.patch_size[0], len(trunk.blocks), trunk.embed_dim,
                           trunk.blocks[0].mlp.fc1.out_features, tower.proj.out_features, trunk.num_prefix_tokens,
                           embed.proj.in_channels, kept)


def image_flops_check(tower, batch: int, counted: float) -> dict:
    """The counted image-tower FLOPs of a step beside the analytic count (`counted_vs_analytic` near 1 when the
    counter sees the model's matmuls, attention included); a note instead where the analytic count does not apply."""
    analytic = vit_tower_train_flops(tower, batch)
    if analytic is None:
        return {"analytic": None, "note": "no analytic count: not a timm ViT with a patchify stem and class token"}
    return {"analytic": analytic, "counted": counted, "counted_vs_analytic": counted / analytic}
