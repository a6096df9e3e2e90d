"""The benchmark's baseline: open_clip's own model, loss and training loop (`open_clip_train.train.train_one_epoch`)
sized like our configured model and fed our data module's batches."""

from __future__ import annotations

import inspect
import math
import time
from types import SimpleNamespace
from typing import Any

import torch
from omegaconf import DictConfig


def _tower_option(text: dict, name: str):
    """A sentence-transformers tower option as our tower would see it (the config, else its constructor default)."""
    from lit_compclip.towers.sentence_transformers import SentenceTransformerTower

    if name in text:
        return text[name]
    return inspect.signature(SentenceTransformerTower).parameters[name].default


def build_open_clip(cfg: DictConfig):
    """open_clip's CustomTextCLIP with our sizes: its own (timm-free) ViT of the configured width, depth, heads,
    patch and image size, and its HF text tower on the same sentence-transformers folder (mean pooling, linear
    projection, all but the last `unfreeze_layers` layers locked). Returns (model, tokenizer)."""
    from open_clip.hf_configs import arch_dict
    from open_clip.model import CLIPTextCfg, CLIPVisionCfg, CustomTextCLIP
    from open_clip.tokenizer import HFTokenizer

    from lit_compclip.towers.sentence_transformers import resolve_model_path

    image = cfg.model.image
    sizes = {k: image[k] for k in ("img_size", "patch_size", "depth", "width", "heads")}
    unset = [k for k, v in sizes.items() if v is None]
    if unset:
        raise ValueError(f"the open_clip baseline needs explicit ViT sizes: set model.image.{unset[0]}")
    text = dict(cfg.model.text)
    if text.get("tower", "sentence_transformers") != "sentence_transformers":
        raise ValueError(f"the open_clip baseline mirrors the sentence_transformers text tower, not "
                         f"model.text.tower={text['tower']!r}")
    path = resolve_model_path(_tower_option(text, "model"))
    context = _tower_option(text, "max_seq_len")
    vision = CLIPVisionCfg(layers=sizes["depth"], width=sizes["width"], head_width=sizes["width"] // sizes["heads"],
                           patch_size=sizes["patch_size"], image_size=sizes["img_size"])
    text_cfg = CLIPTextCfg(context_length=context, hf_model_name=path, hf_tokenizer_name=path,
                           hf_model_pretrained=True, hf_proj_type="linear", hf_pooler_type="mean_pooler")
    model = CustomTextCLIP(cfg.model.embed_dim, vision, text_cfg, init_logit_scale=cfg.model.init_logit_scale,
                           output_dict=True)
    # open_clip's table of HF architectures lacks BERT's layer names, so its lock() fails on a BERT-family
    # tower such as MiniLM; these are BertModel's attribute names (as its RoBERTa entry has them).
    names = arch_dict.get(model.text.config.model_type, {}).get("config_names", {})
    names.setdefault("layer_attr", "layer")
    names.setdefault("token_embeddings_attr", "embeddings")
    model.lock_text_tower(unlocked_layers=_tower_option(text, "unfreeze_layers"), freeze_layer_norm=True)
    return model, HFTokenizer(path, context_length=context)


class TimedLoader:
    """What train_one_epoch iterates: our batches as (images, token ids), tokenised on the fly (our loop tokenises
    inside its step too), with the time each batch is asked for (the previous step's end) and the token positions
    each batch hands the text tower."""

    def __init__(self, batches: list[dict], n: int, tokenizer, device: str = "cpu"):
        self.batches, self.num_batches, self.tokenizer = batches, n, tokenizer
        self.cuda = device.startswith("cuda")
        self.num_samples = n * len(batches[0]["caption"])
        self.requests: list[float] = []
        self.positions: list[int] = []

    def __len__(self) -> int:
        return self.num_batches

    def __iter__(self):
        for i in range(self.num_batches):
            if self.cuda:
                torch.cuda.synchronize()  # the previous step's kernels are queued, not done
            self.requests.append(time.perf_counter())
            batch = self.batches[i % len(self.batches)]
            ids = self.tokenizer(list(batch["caption"]))  # (B, context), or (B, longest) with our token ids
            self.positions.append(ids.numel())
            yield batch["image"], ids  # (B, 3, H, W), (B, L)


class _Data:
    """The `data["train"]` open_clip_train expects (its DataInfo needs pandas, which open_clip does not)."""

    def __init__(self, dataloader: TimedLoader):
        self.dataloader = dataloader

    def set_epoch(self, epoch: int) -> None:
        pass


def our_token_ids(text_tower):
    """A tokenizer for open_clip's loop that gives our text tower's token ids: padded to the batch's longest caption
    (open_clip's HF tower masks by the pad id, so its attention mask is ours too)."""
    return lambda captions: text_tower.tokenize(captions)["input_ids"]


def same_token_ids(tokenizer, ours, batches: list[dict]) -> bool:
    """Whether open_clip's tokenizer gives our ids on these batches, only padded further (its pad id past our
    longest caption): then the two differ in padding alone."""
    pad = tokenizer.tokenizer.pad_token_id
    for batch in batches:
        theirs, mine = tokenizer(list(batch["caption"])), ours(list(batch["caption"]))  # (B, context), (B, L)
        n = mine.shape[1]
        if theirs.shape[1] < n or not torch.equal(theirs[:, :n], mine) or not (theirs[:, n:] == pad).all():
            return False
    return True


def locked_layers_in_eval(model) -> None:
    """Make `model.train()` leave open_clip's locked text layers (the embeddings and every layer with no trained
    weight) in eval mode, as our tower keeps its frozen ones: no dropout in them, the trained ones unchanged."""
    transformer = model.text.transformer
    trained = [m for m in transformer.encoder.layer if any(p.requires_grad for p in m.parameters())]

    def train(mode: bool = True):
        type(model).train(model, mode)
        transformer.eval()
        for layer in trained:
            layer.train(mode)
        return model

    model.train = train  # an instance attribute: train_one_epoch's model.train() calls it


def _optimizer(model, optim: dict) -> torch.optim.Optimizer:
    """AdamW as open_clip_train builds it: no weight decay on gains, biases and the temperature."""
    plain = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    exclude = [p for n, p in plain if p.ndim < 2 or "bn" in n or "ln" in n or "bias" in n or "logit_scale" in n]
    excluded = {id(p) for p in exclude}
    rest = [p for _, p in plain if id(p) not in excluded]
    return torch.optim.AdamW([{"params": exclude, "weight_decay": 0.0}, {"params": rest, "weight_decay":
                              optim["weight_decay"]}], lr=optim["lr"], betas=tuple(optim["betas"]), eps=optim["eps"])


def _watched(model) -> dict[str, torch.Tensor]:
    """A few weights whose change after training shows what was trained: each tower's projection, the last
    (unlocked) and the first (locked) text layer."""
    layers = model.text.transformer.encoder.layer
    return {"image_proj": model.visual.proj, "text_proj": model.text.proj.weight,
            "text_unlocked_layer": layers[-1].output.dense.weight, "text_locked_layer": layers[0].output.dense.weight}


def time_open_clip(model, tokenizer, batches: list[dict], steps: int, warmup: int, optim: dict,
                   device: str = "cpu", precision: str = "fp32") -> dict[str, Any]:
    """Train `model` with open_clip_train's train_one_epoch for warmup + steps batches; returns {"intervals":
    steady step seconds, "samples_per_s", "changed": which watched weights moved}."""
    from open_clip import ClipLoss
    from open_clip_train.scheduler import cosine_lr
    from open_clip_train.train import train_one_epoch

    from benchmarks.timing import median_rate, steady

    total = warmup + steps
    batch_size = len(batches[0]["caption"])
    model.to(device)
    before = {k: v.detach().clone() for k, v in _watched(model).items()}
    loader = TimedLoader(batches, total, tokenizer, device)
    optimizer = _optimizer(model, optim)
    scheduler = cosine_lr(optimizer, optim["lr"], optim["warmup_steps"], total)
    # The fields train_one_epoch reads; log_every_n_steps past the end keeps its logging to the first and last step.
    args = SimpleNamespace(device=device, precision=precision, distill=False, accum_freq=1, skip_scheduler=False,
                           grad_clip_norm=None, horovod=False, log_every_n_steps=total + 1, batch_size=batch_size,
                           world_size=1, wandb=False, rank=0, local_rank=0)
    train_one_epoch(model, {"train": _Data(loader)}, ClipLoss(), 0, optimizer, None, scheduler, None, args)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    ends = loader.requests[1:] + [time.perf_counter()]
    intervals = steady([b - a for a, b in zip(loader.requests, ends)], warmup)
    changed = {k: not torch.equal(before[k], v.detach()) for k, v in _watched(model).items()}
    assert math.isfinite(model.logit_scale.item()), "open_clip training diverged"
    layers = model.text.transformer.encoder.layer
    return {"intervals": intervals, "samples_per_s": median_rate(intervals, batch_size), "changed": changed,
            "steps": len(loader.requests), "positions_per_batch": sum(loader.positions) / len(loader.positions),
            # the modes train_one_epoch ran in: dropout in the first (locked) and the last (trained) text layer
            "locked_layer_training": layers[0].training, "trained_layer_training": layers[-1].training}
