"""GPU check of trainer.strategy=fsdp (Lightning refuses FSDP on the CPU): one FSDP step on every visible GPU must
give the loss and updated weights of one plain single-GPU step on the same global batch.

    python scripts/gpu_check_fsdp.py            # prints one PASS/FAIL line per case; exit status 1 on a failure

Cases: a tiny ViT + scratch text tower; the same with gradient checkpointing in both towers; a tiny ViT + MiniLM
with its last layer trained (frozen and trained blocks in FSDP units). fp32 throughout, dropout off, so the
comparison is exact up to reduction order. With one GPU FSDP shards nothing (NO_SHARD); use 2+ GPUs to check sharding.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile

import torch

GLOBAL_BATCH = 8
VIT = {"img_size": 32, "patch_size": 8, "depth": 2, "width": 64, "heads": 2, "augment": False}
CASES = {
    "vit+scratch": {"image": VIT, "text": {"tower": "scratch", "width": 64, "layers": 2, "heads": 2}},
    "vit+scratch, grad_checkpointing": {"image": {**VIT, "grad_checkpointing": True},
                                        "text": {"tower": "scratch", "width": 64, "layers": 2, "heads": 2,
                                                 "grad_checkpointing": True}},
    "vit+minilm(1 trained layer)": {"image": VIT, "text": {"tower": "sentence_transformers", "unfreeze_layers": 1}},
}
# A large eps makes AdamW's first step linear in the gradient, so weights compare as tightly as gradients would.
OPTIM = {"lr": 0.01, "text_lr": None, "weight_decay": 0.1, "betas": [0.9, 0.98], "eps": 1.0, "warmup_steps": 0,
         "min_lr_ratio": 0.0}


def step(case: str, fsdp: bool, out: str) -> None:
    """One training step (run in its own process: Lightning re-launches this script per rank)."""
    import lightning as L
    from torch.utils.data import DataLoader, IterableDataset

    from lit_compclip.config import load_config
    from lit_compclip.training.module import CompClip, rank_and_world
    from lit_compclip.training.run import trainer_options

    class RankSlice(IterableDataset):
        def __iter__(self):
            rank, world = rank_and_world()
            g = torch.Generator().manual_seed(1)
            images = torch.randn(GLOBAL_BATCH, 3, 32, 32, generator=g)
            captions = [f"a {c} {s}" for c, s in zip("red blue green white red blue green white".split(),
                                                     "circle square star cross star circle cross square".split())]
            n = GLOBAL_BATCH // world
            yield {"image": images[rank * n:(rank + 1) * n], "caption": captions[rank * n:(rank + 1) * n]}

    L.seed_everything(0, verbose=False)
    model = CompClip({"embed_dim": 32, "init_logit_scale": 2.0, "max_logit_scale": 100.0, **CASES[case]}, OPTIM,
                     total_steps=1)
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0  # the same forward on every rank and in the reference
    devices = torch.cuda.device_count() if fsdp else 1
    cfg = load_config(["experiments/default.yaml"], ["trainer.accelerator=gpu", f"trainer.devices={devices}", "trainer.precision=32-true",
                           f"trainer.strategy={'fsdp' if fsdp else 'auto'}"])
    options = trainer_options(cfg, model)
    trainer = L.Trainer(accelerator="gpu", devices=devices, strategy=options["strategy"], precision="32-true",
                        max_steps=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, use_distributed_sampler=False)
    trainer.fit(model, DataLoader(RankSlice(), batch_size=None))
    trainer.save_checkpoint(out)  # a full (gathered) state dict under FSDP's default state_dict_type
    if trainer.is_global_zero:
        # train/loss is the global-batch loss on every rank (the value returned by a step may be a rank's part)
        torch.save({"loss": trainer.callback_metrics["train/loss"].float().cpu()}, out + ".loss")


def compare(case: str, folder: str) -> bool:
    results = {}
    for fsdp in (False, True):
        out = os.path.join(folder, f"{len(results)}.ckpt")
        done = subprocess.run([sys.executable, __file__, "--step", case, str(int(fsdp)), out],
                              capture_output=True, text=True, timeout=600)
        if done.returncode:
            print(f"FAIL  {case}: {'fsdp' if fsdp else 'reference'} step failed:\n{done.stderr[-2000:]}")
            return False
        weights = torch.load(out, map_location="cpu", weights_only=True)["state_dict"]  # plain values only
        results[fsdp] = torch.load(out + ".loss")["loss"], weights
    (loss_ref, ref), (loss_fsdp, got) = results[False], results[True]
    bad = [k for k in ref if k not in got or not torch.allclose(ref[k].float(), got[k].float(), rtol=1e-4, atol=1e-5)]
    ok = torch.allclose(loss_ref, loss_fsdp, rtol=1e-5, atol=1e-6) and not bad and ref.keys() == got.keys()
    detail = f"loss {loss_ref.item():.6f} vs {loss_fsdp.item():.6f}" + (f"; {len(bad)} weight(s) differ, e.g. {bad[0]}"
                                                                         if bad else "")
    print(f"{'PASS' if ok else 'FAIL'}  {case} on {torch.cuda.device_count()} GPU(s): {detail}", flush=True)
    return ok


def main() -> int:
    if not torch.cuda.is_available():
        print("gpu_check_fsdp.py: no CUDA GPU here; FSDP needs one (Lightning refuses strategy=fsdp on the CPU)",
              file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as folder:
        return 0 if all([compare(case, folder) for case in CASES]) else 1


if __name__ == "__main__":
    if sys.argv[1:2] == ["--step"]:
        step(sys.argv[2], bool(int(sys.argv[3])), sys.argv[4])
    else:
        sys.exit(main())
