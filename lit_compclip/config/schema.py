"""The config schema: structured dataclasses whose defaults are the default experiment's values."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from omegaconf import MISSING


FSDP_SHARDING = ("FULL_SHARD", "SHARD_GRAD_OP", "NO_SHARD", "HYBRID_SHARD")
# torch.compile's modes (model.compile_mode); None is torch's default
COMPILE_MODES = (None, "default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
# optim.implementation -> torch.optim.AdamW's switch: None leaves torch's own choice (the plain per-tensor loop on the
# CPU, foreach on CUDA); "fused" runs the whole update as one kernel per dtype and device (a speed lever on GPUs).
ADAMW_IMPLEMENTATIONS = {None: {}, "for_loop": {"foreach": False}, "foreach": {"foreach": True},
                         "fused": {"fused": True}}


@dataclass
class HardNegativesConfig:
    source: Optional[str] = None  # None: off; scene: false captions from the json scene graph; rules: word swaps
    per_sample: int = 1  # false captions per training sample (fewer where the source cannot make that many)


@dataclass
class DataConfig:
    # a folder, a brace pattern, a URL, or several joined with '::' (img2dataset's layout: KEY.jpg, KEY.txt, KEY.json)
    train_shards: str = MISSING
    val_shards: Optional[str] = None
    caption_fields: Dict[str, float] = field(default_factory=lambda: {"txt": 1.0})  # 'txt' or KEY.json's fields
    # A caption curriculum: from epoch `later_epoch` (1-based) on, training reads these sources instead (null: never).
    later_caption_fields: Optional[Dict[str, float]] = None
    later_epoch: int = 2
    # field -> k: train on a random subset of at most k of that field's sentences (the paper's refinement); fields not
    # named keep their whole caption
    sentence_sample: Dict[str, int] = field(default_factory=dict)
    batch_size: int = 64
    num_workers: int = 1
    shuffle_buffer: int = 1000
    shard_shuffle: bool = True
    resampled: bool = False
    samples_per_epoch: Optional[int] = None
    group_key: Optional[str] = None  # a KEY.json field: samples sharing its value are kept in one batch
    # Training JPEGs decoded by Pillow at 1/2, 1/4 or 1/8 scale while both sides stay >= this many pixels (null: at
    # full size). ceil(img_size / sqrt(crop_scale[0])) never upsamples the smallest crop: 237 at 224 px with crops
    # down to 0.9. make bench-data measures its speed-up and pixel difference (docs/BENCHMARKS.md).
    jpeg_draft: Optional[int] = None
    hard_negatives: HardNegativesConfig = field(default_factory=HardNegativesConfig)  # extra image->text negatives


@dataclass
class ImageConfig:
    model: str = "vit_tiny_patch16_224"
    pretrained: bool = False
    img_size: Optional[int] = 64
    patch_size: Optional[int] = 8
    depth: Optional[int] = 4
    width: Optional[int] = 128
    heads: Optional[int] = 4
    pos_embed: str = "learn"  # or "sincos": fixed 2-D sin-cos (ViTs only)
    # "flatten" projects all patch tokens, so where an object sits shapes the embedding from the first step (ViTs
    # only); "model": the trunk's own pooling (a ViT's class token must first learn to carry place).
    pool: str = "flatten"
    stem: str = "conv"  # 3x3 convolutions of stride 2 (shapes are told apart sooner); "patch": the ViT's own patchify
    stem_norm: str = "group"  # the conv stem's norm: GroupNorm per image, or "batch" (BatchNorm: depends on the batch)
    stem_groups: int = 8  # GroupNorm's groups (1: one mean and variance per image)
    # 3x3 stride-1 convolutions after each of the conv stem's halvings (one count per halving of patch_size). [0, 1, 1]:
    # tokens see 39 px, past a whole object (19-26 px); it fixed the held-out relation phrasings and lifted
    # swap-object in the runs that chose it (docs/RESEARCH_LOG.md, stem convolutions).
    stem_convs: List[int] = field(default_factory=lambda: [0, 1, 1])
    augment: bool = True
    crop_scale: List[float] = field(default_factory=lambda: [0.9, 1.0])
    grad_checkpointing: bool = False  # recompute the trunk's blocks in backward: less memory, ~30% more compute
    channels_last: bool = False  # NHWC trunk and batch: faster convolutions on GPU (CNN trunks, a ViT's patch conv)
    # FLIP's patch dropout: the fraction of patch tokens each training image drops before the ViT's blocks (none in
    # evaluation; class token kept); fewer tokens, a cheaper step. ViTs with pool=model only; 0: off.
    patch_dropout: float = 0.0


@dataclass
class ModelConfig:
    embed_dim: int = 256
    init_logit_scale: float = math.log(1 / 0.07)
    max_logit_scale: float = 100.0
    local_loss: bool = True  # each process scores only its own rows of the global-batch loss: O(b x B) memory
    # Captions are encoded in this many groups of similar length, each padded only to its own longest (1: one
    # padded batch): 1.30x faster steps on the synthetic world (`make bench`); the embeddings are the same.
    length_groups: int = 2
    compile: bool = False  # torch.compile the image trunk and the text tower; the first steps (and new lengths) compile
    # torch.compile's mode for them: null (torch's default), max-autotune-no-cudagraphs (inductor tries several kernels
    # per matmul and keeps the fastest: a longer first compile), max-autotune or reduce-overhead (with CUDA graphs)
    compile_mode: Optional[str] = None
    image: ImageConfig = field(default_factory=ImageConfig)
    # `tower` picks the registry entry; every other key goes to that tower's constructor and is checked there.
    # The frozen layers' output is cached on disk and shared by runs (lit_compclip/text_cache.py); null = off.
    text: Dict[str, Any] = field(default_factory=lambda: {"tower": "sentence_transformers",
                                                          "model": "all-MiniLM-L6-v2", "unfreeze_layers": 2,
                                                          "cache_dir": "${cache_dir}/text", "cache_dtype": "float16"})


@dataclass
class OptimConfig:
    lr: float = 1e-3
    # Learning rate of the pretrained text layers (None = lr): 5e-4, half the fresh image tower's 1e-3, lifted
    # VG-Attribution and retrieval and kept the relations in the runs that chose it (docs/RESEARCH_LOG.md, format 7).
    text_lr: Optional[float] = 5e-4
    weight_decay: float = 0.1
    betas: List[float] = field(default_factory=lambda: [0.9, 0.98])
    eps: float = 1e-6
    warmup_steps: int = 50
    text_frozen_steps: int = 0  # pretrained text layers untrained for the first N steps, then warmed up
    min_lr_ratio: float = 0.0
    # GradCache: encode each process's data.batch_size samples this many at a time, the loss still over the whole
    # (global) batch; one extra forward pass per step. null (or >= data.batch_size): the whole batch at once.
    micro_batch_size: Optional[int] = None
    # AdamW's update: null, torch's own choice (the per-tensor loop on the CPU, foreach on CUDA); foreach; fused (one
    # kernel per dtype and device, a speed lever on GPUs); for_loop. Each trains as the others (tests/test_optim_impl.py).
    implementation: Optional[str] = None


@dataclass
class FSDPConfig:
    # Used when trainer.strategy=fsdp (GPUs only): each transformer block of both towers is one FSDP unit.
    sharding_strategy: str = "FULL_SHARD"  # or SHARD_GRAD_OP, NO_SHARD, HYBRID_SHARD
    cpu_offload: bool = False  # parameters (and their gradients) live in CPU memory between uses
    state_dict_type: str = "full"  # checkpoints: "full" (one file, rank 0) or "sharded" (a folder, every rank)


@dataclass
class TrainerConfig:
    max_epochs: int = 2
    max_steps: int = -1
    accelerator: str = "auto"
    devices: Any = 1
    num_nodes: int = 1
    strategy: str = "auto"  # or ddp, fsdp (see trainer.fsdp), or any Lightning strategy name
    fsdp: FSDPConfig = field(default_factory=FSDPConfig)
    precision: Optional[str] = None  # None: bf16-mixed on GPU, 32-true on CPU
    log_every_n_steps: int = 10
    gradient_clip_val: Optional[float] = None
    fast_dev_run: Any = False
    limit_train_batches: Optional[float] = None
    limit_val_batches: Any = None  # batches per validation (an int), a fraction of them (a float <= 1.0), null: all
    enable_progress_bar: bool = True
    deterministic: bool = False
    checkpoint_every_n_steps: Optional[int] = None  # also save checkpoints/last.ckpt every N steps (resumable)


@dataclass
class ProbesConfig:
    every_n_epochs: int = 1
    limit: Optional[int] = None  # score only the first N examples of each probe file (quick runs, tests)
    dump: bool = True  # at the end of fit, per-example results to <run>/probe_records/<probe>/<subset>.jsonl
    failures: int = 8  # worst failures per subset shown in <run>/failures.md and the W&B tables
    # name -> options; `type` picks the probe (default: the name itself); the rest goes to the probe's constructor.
    suites: Dict[str, Dict[str, Any]] = field(default_factory=dict)


@dataclass
class WandbConfig:
    mode: str = "auto"  # auto: online if an API key is configured, else offline; or online / offline / disabled
    project: str = "lit_compclip"
    entity: Optional[str] = None
    tags: List[str] = field(default_factory=list)


@dataclass
class Config:
    name: str = "default"
    seed: int = 0
    run_dir: Optional[str] = None  # default runs/<name>
    cache_dir: str = "data/cache"  # derived data shared by runs: the text tower's frozen-layer outputs
    init_from: Optional[str] = None  # a checkpoint to start from: its weights only (fresh optimizer, schedule, step)
    # Continue a run exactly (step, epoch, optimizer, schedule, data position) in its own folder: a checkpoint path,
    # last (the run's checkpoints/last.ckpt) or auto (last when there is one, else a fresh run: for requeued jobs).
    resume: Optional[str] = None
    synth: Optional[Any] = None  # the synthetic world's section (lit_compclip/synth/plugin.py); absent on real data
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    probes: ProbesConfig = field(default_factory=ProbesConfig)
    wandb: WandbConfig = field(default_factory=WandbConfig)
