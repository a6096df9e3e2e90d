"""Decoder text towers on the CPU: the text cache in the paper's regime (26 layers, 4 trained), a decoder tower's
throughput against the shipped MiniLM, and whether open_clip's HF text tower can hold a decoder at all.

Usage: python benchmarks/bench_decoder.py [--quick] [--steps N] [--rounds R] [--width W] [--family F]
                                       [--out bench_decoder.json] [key=value ...]
The decoder is random (`lit_compclip.towers.random_lm`, nothing is downloaded) and used as `tower: transformers`.
Every ratio comes from arms timed in A B B A blocks in this one process (`benchmarks.timing.alternate`), reported
as its median over the blocks with its min-max spread. Overrides (key=value) apply to the default experiment, which
every arm starts from. docs/BENCHMARKS.md ("Decoder text towers") says what each row is.
"""

from __future__ import annotations

import datetime
import os
import shutil
import statistics
import sys
import tempfile
import time

from lit_compclip.cli_args import ScriptParser

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # random decoders and the bundled MiniLM only: never wait on the hub
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from lit_compclip.towers.random_lm import FAMILIES  # noqa: E402  (after the offline switches)

# The paper's regime: Gemma-2's architecture, 26 layers of which 4 are trained (Gemma-2-2B's). The width is cut so
# that a step takes 1-2 s on 2 CPU cores, with heads of 64 (2 key-value heads). Not qwen2 by default: under
# transformers 5 its stand-in's WordPiece tokenizer reloads as Qwen2Tokenizer, which splits captions into characters.
DECODER = {"layers": 26, "width": 384, "heads": 6, "kv_heads": 2}
TRAINED = 4
QUICK_DECODER = {"layers": 4, "width": 32, "heads": 2, "kv_heads": 1}  # --quick: the code path only
QUICK_TRAINED = 2
QUICK_IMAGE = ["model.image.width=64", "model.image.depth=1", "model.image.heads=2"]
COLLECTED = 8  # distinct batches held in memory and cycled through, at most
# In run order (then reversed); "text" times text_on, text_off and frozen on the decoder models of the step arms
ARMS = ["text", "step_on", "step_off", "minilm_on"]


def parse(argv):
    p = ScriptParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="one block, one step per run, toy decoder: a smoke test")
    p.add_argument("--steps", type=int, default=None, help="timed steps per run (default 3; quick 1)")
    p.add_argument("--rounds", type=int, default=None, help="A B B A blocks (default 3; quick 1)")
    p.add_argument("--width", type=int, default=None, help=f"decoder width (default {DECODER['width']})")
    p.add_argument("--family", default="gemma2", choices=FAMILIES, help="decoder architecture (default gemma2)")
    p.add_argument("--pooling", default="eos", choices=("eos", "mean"), help="the tower's pooling")
    p.add_argument("--out", default="bench_decoder.json")
    p.add_argument("overrides", nargs="*", help="key=value config overrides of the default experiment")
    from benchmarks import script

    return script.timing_args(p, p.parse_args(argv))


class TextArms:
    """The text tower's own step with its cache warm (`text_on`) and with its frozen layers recomputed
    (`text_off`), and that frozen part alone (`frozen`, on the batches tokenised beforehand), on the decoder models
    of two `our_loop.LoopArm`s and the batches they time; timed step by step in turn (`timing.time_interleaved`),
    as one arm of the A B B A blocks."""

    NAMES = ("text_on", "text_off", "frozen")

    def __init__(self, on, off, batches: list[dict]):
        from benchmarks import step_costs

        self.loops = {"text_on": on, "text_off": off, "frozen": off}
        self.steps = {"text_on": step_costs.text_step(on.model), "text_off": step_costs.text_step(off.model),
                      "frozen": step_costs.frozen_step(off.model)}
        self.items = {"text_on": batches, "text_off": batches,
                      "frozen": [step_costs.frozen_parts(off.model, b) for b in batches]}
        self.runs: list[dict[str, list[float]]] = []
        self.cache: list[dict] = []  # the text cache's hits and misses in each run's timed steps

    def __call__(self, first: bool) -> dict:
        from benchmarks import our_loop, timing

        start = self.loops["text_on"].start(first)  # = the others' modulo the batches: the same batches timed
        for name in self.NAMES:
            loop = self.loops[name]
            loop.model.train()
            for k in range(start - loop.start(first), start):  # warm-up; first run: also the cache-filling pass
                self.steps[name](self.items[name][k % len(self.items[name])])
        model = self.loops["text_on"].model
        before = our_loop.cache_counts(model)
        out = timing.time_interleaved(self.steps, self.items, self.loops["text_on"].steps, start)
        after = our_loop.cache_counts(model)
        self.cache.append({"hits": after[0] - before[0], "misses": after[1] - before[1]})
        self.runs.append(out)
        print("[bench]   text steps (s): " + ", ".join(f"{n} {statistics.median(out[n]):.3f}" for n in self.NAMES),
              flush=True)
        return {"intervals": out["text_on"]}

    def times(self) -> dict[str, list[list[float]]]:
        """{arm: [block 0's step seconds, ...]}, as `alternate` gives them: each block ran this arm twice."""
        return {n: [self.runs[i][n] + self.runs[i + 1][n] for i in range(0, len(self.runs), 2)] for n in self.NAMES}


def try_open_clip(folder: str, cfg) -> dict:
    """open_clip's HF text tower on the decoder folder, as `make bench` builds it on MiniLM; then one forward and
    backward. {"built", "ran", "error": the exception in one line, or None}."""
    out = {"built": False, "ran": False, "error": None}
    try:
        import torch
        from open_clip.model import CLIPTextCfg, CLIPVisionCfg, CustomTextCLIP
        from open_clip.tokenizer import HFTokenizer

        image = cfg.model.image
        vision = CLIPVisionCfg(layers=image.depth, width=image.width, head_width=image.width // image.heads,
                               patch_size=image.patch_size, image_size=image.img_size)
        text = CLIPTextCfg(context_length=64, hf_model_name=folder, hf_tokenizer_name=folder,
                           hf_model_pretrained=True, hf_proj_type="linear", hf_pooler_type="mean_pooler")
        model = CustomTextCLIP(cfg.model.embed_dim, vision, text)
        out["built"] = True
        emb = model.encode_text(HFTokenizer(folder, context_length=64)(["a red circle left of a blue square"]))
        emb.sum().backward()
        out["ran"] = bool(torch.isfinite(emb).all())
    except Exception as e:  # what open_clip raises is the finding
        out["error"] = f"{type(e).__name__}: {(str(e).splitlines() or [''])[0][:200]}"
    return out


def run(args) -> dict:
    from benchmarks import our_loop, script, step_costs, timing
    from lit_compclip.config import load_config
    from lit_compclip.config.plugins import prepare
    from lit_compclip.towers.random_lm import save_random_lm

    began, machine = time.perf_counter(), script.machine()  # the load average before the arms run
    sizes = dict(QUICK_DECODER if args.quick else DECODER)
    if args.width:
        sizes["width"] = args.width
    trained = QUICK_TRAINED if args.quick else TRAINED
    extra_image = QUICK_IMAGE if args.quick else []
    cfg = load_config(["experiments/default.yaml"], list(args.overrides) + extra_image)
    prepare(cfg)
    first = 1 if args.quick else 3  # warm-up steps of an arm's first run
    folder = tempfile.mkdtemp(prefix="bench_decoder_")
    try:
        decoder = script.timed(f"save a random {args.family} decoder", save_random_lm, os.path.join(folder, "lm"),
                               args.family, **sizes)

        def decoder_cfg(cache: bool):
            text = ["model.text.tower=transformers", f"model.text.model={decoder}",
                    f"model.text.unfreeze_layers={trained}", f"model.text.pooling={args.pooling}",
                    f"model.text.cache_dir={os.path.join(folder, 'cache') if cache else 'null'}"]
            return load_config(["experiments/default.yaml"], list(args.overrides) + extra_image + text)

        model = our_loop.build_model(cfg, 1)
        batches = script.timed("collect batches", our_loop.collect_batches, our_loop.data_module(cfg, model),
                               min(COLLECTED, args.steps + first))
        del model
        minilm = load_config(["experiments/default.yaml"], list(args.overrides) + extra_image
                             + [f"model.text.cache_dir={os.path.join(folder, 'minilm_cache')}"])
        loops = {"step_on": our_loop.LoopArm(decoder_cfg(True), batches, args.steps, first),
                 "step_off": our_loop.LoopArm(decoder_cfg(False), batches, args.steps, first),
                 "minilm_on": our_loop.LoopArm(minilm, batches, args.steps, first)}
        on, off = loops["step_on"], loops["step_off"]
        text_arms = TextArms(on, off, batches)
        arms = {**loops, "text": text_arms}
        print("[bench] 1-2. text cache, text step and whole step, and the decoder against MiniLM", flush=True)
        times = timing.alternate({name: arms[name] for name in ARMS}, args.rounds, "")["times"]
        times = {**{k: v for k, v in times.items() if k != "text"}, **text_arms.times()}
        print("[bench] 3. open_clip's HF text tower on the decoder", flush=True)
        open_clip = script.timed("open_clip", try_open_clip, decoder, cfg)
    finally:
        shutil.rmtree(folder, ignore_errors=True)

    text = timing.cache_figures(times, "text_on", "text_off", "frozen")
    step = timing.cache_figures(times, "step_on", "step_off", "frozen")
    vs_minilm = timing.spread(timing.speedups(times, "step_on", "minilm_on"))  # MiniLM's step time over the decoder's
    batch = len(batches[0]["caption"])
    spreads = {"text_step_cache_speedup": text["speedup"], "text_step_cache_bound": text["bound"],
               "text_step_speedup_over_bound": text["speedup_over_bound"],
               "train_step_cache_speedup": step["speedup"], "train_step_cache_bound": step["bound"],
               "train_step_speedup_over_bound": step["speedup_over_bound"],
               "decoder_vs_minilm_samples_per_s": vs_minilm}
    tokens = step_costs.padding(on.model, batches)
    out = {key: s["median"] for key, s in spreads.items()}
    out.update({
        "quick": args.quick, "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine, "steps_per_run": args.steps, "rounds": args.rounds, "spread": spreads,
        "open_clip": open_clip,
        "decoder": {"family": args.family, **sizes, "trained_layers": trained, "pooling": args.pooling,
                    "params": sum(p.numel() for p in on.model.model.text.lm.parameters()),
                    "attn_implementation": on.model.model.text.lm.config._attn_implementation},
        "raw": {"batch_size": batch, "text_tokens_per_batch": tokens,
                "text_step": {k: v for k, v in text.items() if k.endswith("_s")} | {"hit_rate": timing.hit_rate(
                    text_arms.cache), "optimizer": False},
                "train_step": {k: v for k, v in step.items() if k.endswith("_s")} | {"hit_rate": on.hit_rate()},
                "samples_per_s": {"decoder_cache_on": batch / step["on_s"], "decoder_cache_off": batch / step["off_s"],
                                  "minilm_cache_on": batch / timing.step_seconds(times, "minilm_on")},
                "minilm_hit_rate": loops["minilm_on"].hit_rate(),
                "arms": {name: {"step_s": timing.step_seconds(times, name), "timed_steps": sum(map(len, times[name])),
                                "block_step_s": [statistics.median(b) for b in times[name]]} for name in times}},
        "wall_s": time.perf_counter() - began,
    })
    return out


def table(r: dict) -> str:
    from benchmarks.timing import describe

    s, raw, d = r["spread"], r["raw"], r["decoder"]
    lines = [f"every ratio: median over {r['rounds']} A B B A block(s) (min-max), {r['steps_per_run']} timed steps "
             f"per run",
             f"decoder: random {d['family']}, {d['layers']} layers x {d['width']} wide ({d['heads']} heads, "
             f"{d['kv_heads']} kv), {d['params'] / 1e6:.1f} M parameters, {d['trained_layers']} trained, pooling "
             f"{d['pooling']}, attention {d['attn_implementation']}; batch {raw['batch_size']}, "
             f"{raw['text_tokens_per_batch']['real']:.0f} real tokens per batch"]
    for label, key in (("1a text-tower step (tokenise, fwd, bwd; no optimizer)", "text_step"),
                       ("1b whole training step (default image tower + decoder)", "train_step")):
        p, e = raw[key], s[key + "_speedup_over_bound"]
        lines.append(f"{label}: {p['off_s'] * 1000:.0f} ms recomputed, {p['on_s'] * 1000:.0f} ms cached, frozen "
                     f"part {p['frozen_s'] * 1000:.0f} ms; hit rate {p['hit_rate']:.2f}")
        lines.append(f"   cache speed-up {describe(s[key + '_cache_speedup'])}, bound "
                     f"{describe(s[key + '_cache_bound'])}, speed-up / bound {e['median']:.2f} ({e['min']:.2f}-"
                     f"{e['max']:.2f})")
    sps = raw["samples_per_s"]
    lines.append(f"2  samples/s, cache on both: decoder {sps['decoder_cache_on']:.1f} vs MiniLM "
                 f"{sps['minilm_cache_on']:.1f} = {describe(s['decoder_vs_minilm_samples_per_s'])} "
                 f"(decoder, cache off: {sps['decoder_cache_off']:.1f})")
    oc = r["open_clip"]
    state = ("built and ran one forward and backward" if oc["ran"] else
             f"{'built but could not run' if oc['built'] else 'could not build'} the decoder: {oc['error']}")
    lines.append(f"3  open_clip's HF text tower: {state}")
    m = r["machine"]
    lines.append(f"machine: {m['device']}, {m['cpu_count']} CPUs, {m['torch_threads']} torch threads, torch "
                 f"{m['torch']}, load average {m['load_average']:.2f} at the start; {r['date']}; "
                 f"the run took {r['wall_s']:.0f} s")
    return "\n".join(lines)


def main(argv=None) -> int:
    from benchmarks import script

    return script.script_main(argv, parse, run, table)


if __name__ == "__main__":
    sys.exit(main())
