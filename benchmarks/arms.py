"""`make bench`'s arms and what is read off them: the arms in run order and the two arms of each ratio; open_clip's
own loop as an arm, our like-for-like arm beside open_clip's, the text cache on and off with fewer trained layers;
each ratio's spread over the blocks and each arm's summary."""

from __future__ import annotations

import statistics

from benchmarks import our_loop, step_costs, timing

# Each ratio: (the faster-expected arm, the other), both from the same block; the value is the other's median step
# time over the first's (above 1: the first is faster). The main block's arms, in run order (then reversed):
MAIN_ARMS = ["ours_shipped_one_group", "ours_shipped_no_cache", "ours_shipped", "open_clip_shipped",
             "open_clip_pad64_eval", "open_clip_like_for_like", "ours_like_for_like"]
MAIN_RATIOS = {
    "train_vs_open_clip_like_for_like": ("ours_like_for_like", "open_clip_like_for_like"),  # the loops alone
    "open_clip_padding_factor": ("open_clip_like_for_like", "open_clip_pad64_eval"),  # 64 tokens vs ours, eval both
    "open_clip_dropout_factor": ("open_clip_pad64_eval", "open_clip_shipped"),  # locked layers train vs eval mode
    "train_vs_open_clip": ("ours_like_for_like", "open_clip_shipped"),  # = the product of the three above
    "train_vs_open_clip_as_shipped": ("ours_shipped", "open_clip_shipped"),  # each as a user runs it
    "text_cache_speedup": ("ours_shipped", "ours_shipped_no_cache"),
    "length_groups_speedup": ("ours_shipped_no_cache", "ours_shipped_one_group"),
}
VIT_ARMS = ["open_clip_shipped", "open_clip_like_for_like", "ours_like_for_like", "ours_patch_dropout"]
VIT_RATIOS = {"train_vs_open_clip_vit_b16_like_for_like": ("ours_like_for_like", "open_clip_like_for_like"),
              "train_vs_open_clip_vit_b16": ("ours_like_for_like", "open_clip_shipped"),
              "patch_dropout_speedup_vit_b16": ("ours_patch_dropout", "ours_like_for_like")}
CACHE_LAYERS = (1, 0)  # trained MiniLM layers of the extra cache pairs (the default trains 2)


class OpenClip:
    """An arm of open_clip's own `train_one_epoch` on one model: fed open_clip's tokenizer (every caption padded to
    the context length) or `tokenizer`; its locked text layers in train mode (as it ships) or in eval mode."""

    def __init__(self, cfg, batches, steps: int, warmup: int, tokenizer=None, locked_eval: bool = False):
        from omegaconf import OmegaConf

        from benchmarks.open_clip_baseline import build_open_clip, locked_layers_in_eval

        self.model, self.own_tokenizer = build_open_clip(cfg)
        if locked_eval:
            locked_layers_in_eval(self.model)
        self.tokenizer = tokenizer or self.own_tokenizer
        self.batches, self.steps, self.warmup = batches, steps, warmup
        self.optim = OmegaConf.to_container(cfg.optim)
        self.runs: list[dict] = []

    def __call__(self, first: bool) -> dict:
        from benchmarks.open_clip_baseline import time_open_clip

        out = time_open_clip(self.model, self.tokenizer, self.batches, self.steps, self.warmup if first else 1,
                             self.optim)
        self.runs.append(out)
        return out

    def summary(self) -> dict:
        runs = self.runs
        return {"steps_run": sum(r["steps"] for r in runs), "timed_steps": sum(len(r["intervals"]) for r in runs),
                "changed": {k: all(r["changed"][k] for r in runs) for k in runs[0]["changed"]},
                "positions_per_batch": runs[-1]["positions_per_batch"],
                "locked_layer_training": runs[-1]["locked_layer_training"],
                "trained_layer_training": runs[-1]["trained_layer_training"]}


def open_clip_arms(cfg_like, batches, steps: int, warmup: int, names: list[str]) -> dict:
    """Our like-for-like arm and those of the three open_clip arms in `names`, each one setting away from the
    next: as shipped; 64-token padding with its locked layers in eval; our token ids with them in eval."""
    from benchmarks.open_clip_baseline import our_token_ids

    ours = our_loop.LoopArm(cfg_like, batches, steps, warmup)
    settings = {"open_clip_shipped": {}, "open_clip_pad64_eval": {"locked_eval": True},
                "open_clip_like_for_like": {"tokenizer": our_token_ids(ours.model.model.text), "locked_eval": True}}
    return {"ours_like_for_like": ours, **{name: OpenClip(cfg_like, batches, steps, warmup, **settings[name])
                                           for name in names if name in settings}}


def ratios(times, table: dict) -> dict:
    return {key: timing.spread(timing.speedups(times, fast, slow)) for key, (fast, slow) in table.items()}


def arm_summary(times, arms: dict) -> dict:
    out = {}
    for name, arm in arms.items():
        out[name] = {"step_s": timing.step_seconds(times, name), "timed_steps": sum(map(len, times[name])),
                     "block_step_s": [statistics.median(b) for b in times[name]]}
        if isinstance(arm, OpenClip):
            out[name].update(arm.summary())
        elif arm.hit_rate() is not None:
            out[name]["cache_hit_rate"] = arm.hit_rate()
    return out


def cache_pairs(cfg_for, folder: str, batches, steps: int, warmup: int, rounds: int) -> dict:
    """The text cache with fewer trained MiniLM layers (more of the tower frozen and cached): warm cache against
    the frozen layers recomputed, in A B B A blocks, with the bound no cache can beat."""
    arms = {}
    for k in CACHE_LAYERS:
        base = [f"model.text.unfreeze_layers={k}"]
        arms[f"on_{k}"] = our_loop.LoopArm(cfg_for(base + [f"model.text.cache_dir={folder}"]), batches, steps, warmup)
        arms[f"off_{k}"] = our_loop.LoopArm(cfg_for(base + ["model.text.cache_dir=null"]), batches, steps, warmup)
    times = timing.alternate({n: arms[n] for n in ("on_1", "off_1", "off_0", "on_0")}, rounds, "3. ")["times"]
    return {str(k): with_bound(times, arms, f"on_{k}", f"off_{k}", batches) for k in CACHE_LAYERS}


def with_bound(times, arms: dict, on: str, off: str, batches) -> dict:
    """A cache pair's figures: step times, the speed-up's spread, the hit rate and the bound
    `step / (step - the frozen part's own time)`."""
    off_s, on_s = timing.step_seconds(times, off), timing.step_seconds(times, on)
    model = arms[off].model
    frozen_s = step_costs.frozen_seconds(model, batches[0], 4)
    return {"off_step_s": off_s, "on_step_s": on_s, "speedup": timing.spread(timing.speedups(times, on, off)),
            "hit_rate": arms[on].hit_rate(), "frozen_part_s": frozen_s, "bound": off_s / max(1e-9, off_s - frozen_s),
            "trained_layers": model.hparams["model"]["text"]["unfreeze_layers"]}
