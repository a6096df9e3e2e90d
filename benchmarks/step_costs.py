"""What one training step of our model costs, taken apart in the calling process: padded token positions, each
part's seconds, FLOPs (whole, per tower, the text tower's frozen part), the text tower's step alone; and what a step
is set against: the machine's matmul peak, the data pipeline's own rate, the steps in an epoch."""

from __future__ import annotations

import statistics
import time

import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf

from lit_compclip.losses import info_nce


def padding(model, batches: list[dict]) -> dict[str, float]:
    """Token positions the text tower runs per batch, padded alike and in `model.length_groups` groups of similar
    length, against the captions' real tokens (batch means)."""
    from lit_compclip.training.module import batch_texts
    from lit_compclip.towers import length_groups

    groups = max(1, model.model.length_groups)
    totals = {"real": 0, "padded": 0, "grouped": 0}
    for batch in batches:
        lengths = model.model.text.tokenize(batch_texts(batch))["attention_mask"].sum(1)
        totals["real"] += int(lengths.sum())
        totals["padded"] += int(lengths.max()) * len(lengths)
        totals["grouped"] += sum(int(lengths[rows].max()) * len(rows) for rows in length_groups(lengths, groups))
    return {k: v / len(batches) for k, v in totals.items()} | {"groups": groups}


def cost_split(model, batch: dict, repeats: int) -> dict[str, float]:
    """Median seconds of each part of one training step, run apart: tokenising, image tower fwd+bwd, text tower
    fwd+bwd, the loss fwd+bwd (on the embeddings) and the optimizer step. The first of `repeats` is warm-up."""
    from lit_compclip.towers import encode_by_length

    optimizer = model.configure_optimizers()["optimizer"]
    model.train()
    images, captions = batch["image"], list(batch["caption"])
    parts: dict[str, list[float]] = {k: [] for k in ("tokenize", "image", "text", "loss", "optimizer")}
    for _ in range(repeats):
        optimizer.zero_grad(set_to_none=True)
        t = [time.perf_counter()]
        tokens = model.model.text.tokenize(captions)
        t.append(time.perf_counter())
        image_emb = model.encode_image(images)  # (B, D)
        image_emb.backward(torch.randn_like(image_emb))
        t.append(time.perf_counter())
        # (B, D), as encode_text without its tokenising: in the model's length groups
        text_emb = F.normalize(encode_by_length(model.model.text, tokens, model.model.length_groups), dim=-1)
        text_emb.backward(torch.randn_like(text_emb))
        t.append(time.perf_counter())
        loss = info_nce(image_emb.detach().requires_grad_(), text_emb.detach().requires_grad_(), model.logit_scale)
        loss.backward()
        t.append(time.perf_counter())
        optimizer.step()
        t.append(time.perf_counter())
        for name, a, b in zip(parts, t, t[1:]):
            parts[name].append(b - a)
    optimizer.zero_grad(set_to_none=True)
    return {name: statistics.median(times[1:] or times) for name, times in parts.items()}


def frozen_seconds(model, batch: dict, repeats: int) -> float:
    """Median seconds of the text tower's frozen part alone on this batch (what its prefix cache saves): the
    layers below the first trained one, or the whole tower when none is trained, in the model's length groups as
    its step runs them. The first repeat is warm-up."""
    from lit_compclip.towers import length_groups

    text = model.model.text
    tokens = text.tokenize(list(batch["caption"]))
    lengths = tokens["attention_mask"].sum(1)
    parts = []  # each group cut to its own longest caption, as encode_by_length cuts it
    for rows in length_groups(lengths, max(1, model.model.length_groups)):
        n = int(lengths[rows].max())
        parts.append({k: v[rows][:, :n] for k, v in tokens.items()})
    times = []
    with torch.no_grad():
        for _ in range(repeats):
            start = time.perf_counter()
            for part in parts:
                text.frozen_output(part)
            times.append(time.perf_counter() - start)
    return statistics.median(times[1:] or times)


def count_flops(model, batch: dict) -> dict[str, float]:
    """FLOPs of one training step's forward and backward (torch's FlopCounterMode: matmuls, convolutions,
    attention), in total and of each tower alone (a joint backward cannot be split between the towers)."""
    from torch.utils.flop_counter import FlopCounterMode

    def count(loss_fn) -> float:
        counter = FlopCounterMode(display=False)
        with counter:
            loss_fn().backward()
        model.zero_grad(set_to_none=True)
        return float(counter.get_total_flops())

    model.train()
    return {"total": count(lambda: model._loss(batch)[0]),
            "image": count(lambda: model.encode_image(batch["image"]).sum()),
            "text": count(lambda: model.encode_text(list(batch["caption"])).sum())}


def frozen_flops(model, batch: dict) -> float:
    """FLOPs of the text tower's frozen part on one batch (`frozen_parts`): what a warm text cache saves a step."""
    from torch.utils.flop_counter import FlopCounterMode

    parts = frozen_parts(model, batch)
    counter = FlopCounterMode(display=False)
    with counter:
        frozen_step(model)(parts)
    return float(counter.get_total_flops())


def text_step(model):
    """One training step of the text tower alone, optimizer excluded: tokenising the captions, the forward in the
    model's length groups (through its prefix cache, where it has one) and the backward."""
    def step(batch: dict) -> None:
        model.zero_grad(set_to_none=True)
        emb = model.encode_text(list(batch["caption"]))  # (B, D)
        emb.backward(torch.ones_like(emb))
    return step


def frozen_parts(model, batch: dict) -> list[dict[str, torch.Tensor]]:
    """The batch's token ids in the model's length groups, each cut to its own longest caption: what the frozen
    part of the text tower runs on in a step (tokenised here, so that timing them leaves tokenising out)."""
    from lit_compclip.towers import length_groups

    tokens = model.model.text.tokenize(list(batch["caption"]))
    mask = tokens["attention_mask"]
    lengths = mask.sum(1)
    parts = []
    for rows in length_groups(lengths, max(1, model.model.length_groups)):
        columns = mask[rows].bool().any(0)  # the group's real columns, as encode_by_length keeps them
        parts.append({k: v[rows][:, columns] for k, v in tokens.items()})
    return parts


def frozen_step(model):
    """The text tower's frozen part alone on one batch's `frozen_parts` (what its prefix cache saves)."""
    def step(parts: list[dict[str, torch.Tensor]]) -> None:
        with torch.no_grad():
            for part in parts:
                model.model.text.frozen_output(part)
    return step


def matmul_peak(n: int = 2048, dtype: torch.dtype = torch.float32, device: str = "cpu", repeats: int = 10) -> float:
    """This machine's practical peak in FLOP/s: the best of `repeats` n x n matmuls of `dtype` on `device`."""
    a = torch.randn(n, n, dtype=dtype, device=device)
    b = torch.randn(n, n, dtype=dtype, device=device)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    a @ b  # warm-up: library initialisation
    sync()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        sync()
        best = min(best, time.perf_counter() - start)
    return 2 * n ** 3 / best


def data_rate(dm, batches: int) -> dict[str, float]:
    """Samples/s the data module's real loader decodes and transforms on its own (its configured workers);
    the first batch (worker start, shuffle-buffer fill) is not counted."""
    n, start = 0, None
    for i, batch in enumerate(dm.train_dataloader()):
        if i == 0:
            start = time.perf_counter()
        else:
            n += len(batch["caption"])
        if i == batches:
            break
    if not n:
        raise ValueError("the data pipeline benchmark needs at least 2 training batches")
    seconds = time.perf_counter() - start
    return {"samples_per_s": n / seconds, "samples": n, "seconds": seconds, "num_workers": dm.num_workers}


def steps_per_epoch(cfg: DictConfig) -> int:
    """Optimizer steps in one epoch of the configured training data on one process."""
    from lit_compclip.training.run import total_steps

    one = OmegaConf.merge(cfg, {"trainer": {"max_epochs": 1, "max_steps": -1}})
    return total_steps(one)
