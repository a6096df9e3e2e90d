"""The `compclip` command: train, synth and config, all driven by experiment YAML files and key=value overrides."""

from __future__ import annotations

import argparse
import logging
import os
import sys

from lit_compclip.config import ConfigError, load_config, split_args

USAGE = """compclip train  [EXP.yaml ...] [key=value | --key value ...]   train an experiment (defaults + files + overrides)
compclip synth  [EXP.yaml ...] [synth.key=value ...] [--overwrite]  build the synthetic world (data + probe sets)
compclip config [EXP.yaml ...] [key=value ...]                      print the resolved, checked config
compclip sweep  SPEC.yaml [--out DIR] [--jobs N] [--count N] [--dry-run] [key=value ...]
                run a W&B sweep spec's runs locally, several at once, resuming an interrupted sweep, and
                write DIR/REPORT.md (mean and std over seeds per cell, the paper's ordering checked)
compclip batch-stats [EXP.yaml ...] [key=value ...]                 how often training batches hold binding-only
                                                                    and relation-only negatives (grouped vs random)
compclip recaption INPUT_SHARDS OUTPUT_DIR --backend scene|openai|transformers [options]   (--help for options)
                write new shards whose KEY.json carries a `recaption` from a multimodal model, resumably
compclip breakdown RUN ...                                         a run's swap/replace-object by shape pair, the
                swap subsets by caption form (list or relation), VG-Relation by phrasing (synthetic world)
compclip compare RUN_OR_RESULT ... [--out DIR] [--names A,B,...]   several models' probe results: one markdown
                table and one PNG (rows models, columns benchmark subsets)
compclip probe  (--ckpt PATH | --encoder open_clip:ARCH@TAG_OR_FILE | --encoder hf:PATH_OR_NAME) [EXP.yaml ...]
                [key=value ...] [--probe NAME option=value ...] [--dump DIR] [--out DIR]
                score a checkpoint or another model (fp32): prints the table, writes probes.json, failures.md,
                encoder.json and clip_benchmark/<suite>.json (and with --dump
                one JSON-lines file of per-example results per probe subset)"""


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE)
        return 0
    command, rest = argv[0], argv[1:]
    if command not in ("train", "synth", "config", "batch-stats", "probe", "recaption", "sweep", "compare",
                       "breakdown"):
        print(f"compclip: error: unknown command {command!r}\n{USAGE}", file=sys.stderr)
        return 2
    if command == "recaption":  # its own argparse: shard paths and backend options, no experiment config
        from lit_compclip.recaption.command import main as recaption

        return recaption(rest)
    if command == "compare":  # its own argparse: run folders or probe outputs, one table and one chart
        from lit_compclip.compare import main as compare

        return compare(rest)
    if command == "breakdown":  # its own argparse: run folders' per-example probe records
        from lit_compclip.breakdown import main as breakdown

        return breakdown(rest)
    if command == "sweep":  # its own argparse: a sweep spec, runner options and overrides for every run
        from lit_compclip.sweep import main as sweep

        return sweep(rest)
    # transformers draws a "Loading weights" bar on stderr for every pretrained tower: noise around a run's lines,
    # and it would turn a one-line error into three (set HF_HUB_DISABLE_PROGRESS_BARS=0 to see it)
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    overwrite = "--overwrite" in rest
    rest = [a for a in rest if a != "--overwrite"]
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    logging.getLogger("lit_compclip").addHandler(handler)
    logging.getLogger("lit_compclip").setLevel(logging.INFO)
    try:
        if command == "probe":
            from lit_compclip.evaluate import probe_checkpoint
            from lit_compclip.train import format_table

            result = probe_checkpoint(rest)
            print("\n" + format_table(result["probes"]))
            dump = f"; per-example results in {result['dump']}" if result["dump"] else ""
            print(f"\nprobes.json and failures.md in {result['out']}{dump}  ({result['seconds']:.0f} s)")
            return 0
        files, overrides = split_args(rest)
        cfg = load_config(files, overrides)
        if command == "config":
            from omegaconf import OmegaConf

            print(OmegaConf.to_yaml(cfg), end="")
            return 0
        if command == "batch-stats":
            from lit_compclip.synth.batches import batch_stats
            from lit_compclip.synth import ensure_synth

            ensure_synth(cfg)
            print(f"fraction of samples with an in-batch negative (batch size {cfg.data.batch_size}):")
            for label, stats in batch_stats(cfg).items():
                print(f"  {label:<18} " + "  ".join(f"{k}={v:.3f}" for k, v in stats.items()))
            return 0
        if command == "synth":
            from lit_compclip.synth import build_synth

            summary = build_synth(cfg, overwrite=overwrite)
            print(f"synthetic world in {cfg.synth.out_dir}: {summary}")
            return 0
        from lit_compclip.train import format_table, train

        result = train(cfg)
    except ConfigError as e:
        print(f"compclip: error: {e}", file=sys.stderr)
        return 2
    if not result["is_global_zero"]:
        return 0  # rank 0 reports
    print("\n" + format_table(result["probes"]))
    run_dir = result["run_dir"]
    print(f"\nrun folder: {run_dir}  (config.yaml, metrics.csv, probes.json, probes.png, failures.md, "
          f"data_skips.json, run_time.json, checkpoints/last.ckpt)")
    t = result["time"]
    if t["probe_passes_s"]:
        print(f"probes took {t['probe_s']:.1f} s in {len(t['probe_passes_s'])} passes = {t['probe_fraction']:.1%} of "
              f"the run's {t['fit_s']:.0f} s of training (run_time.json)")
    chart = os.path.join(run_dir, "probes.png")
    if os.path.exists(chart):  # the run's last word: where to look first
        print(f"probe chart: {chart}  (a panel per benchmark, a line per subset over epochs, chance dashed)")
    if result["wandb_dir"]:
        hint = f"; sync with: wandb sync {result['wandb_dir']}" if result["wandb_mode"] == "offline" else ""
        print(f"W&B ({result['wandb_mode']}): {result['wandb_dir']}{hint}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
