"""The `compclip` command: train, probe, export, embed and the rest; training is driven by experiment YAML files and
key=value overrides."""

from __future__ import annotations

import os
import sys

from lit_compclip.cli_args import UsageError, log_to_stderr
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
compclip export RUN_OR_CKPT OUT [--format native|open_clip|sentence_transformers] [--hf-model-name ID]
                a trained model as a folder other tools load (this package's own, open_clip's, sentence-transformers'),
                checked by loading it back and comparing embeddings before the folder appears
compclip embed  MODEL (--images PATH | --texts FILE) --out FILE.npz [--batch-size N] [--device DEVICE]
                embeddings with their keys, as .npz, of an image folder, WebDataset shards or a text file (one
                caption a line), from a checkpoint, a run or export folder, or an --encoder spec (--help: the keys)
compclip probe  (--ckpt PATH_OR_EXPORT | --encoder open_clip:ARCH@TAG_OR_FILE | --encoder open_clip:local-dir:EXPORT
                 | --encoder sentence_transformers:EXPORT | --encoder hf:PATH_OR_NAME) [EXP.yaml ...]
                [key=value ...] [--probe NAME option=value ...] [--dump DIR] [--out DIR] [--device DEVICE]
                score a checkpoint or another model (fp32): prints the table, writes probes.json, failures.md,
                encoder.json and clip_benchmark/<suite>.json (and with --dump
                one JSON-lines file of per-example results per probe subset)"""
# commands with an argparse parser of their own (their --help lists the options): command -> "module:main"
OWN_PARSER = {"recaption": "lit_compclip.recaption.command:main", "compare": "lit_compclip.reports.compare:main",
              "breakdown": "lit_compclip.synth.breakdown:main", "sweep": "lit_compclip.reports.sweep:main",
              "export": "lit_compclip.export.command:main", "embed": "lit_compclip.embed:main"}
COMMANDS = ("train", "synth", "config", "batch-stats", "probe", *OWN_PARSER)


def usage_of(command: str) -> str:
    """The USAGE lines of one command: its own line and the indented ones that follow it."""
    lines, keep = [], False
    for line in USAGE.splitlines():
        if not line.startswith(" "):
            keep = line.split()[1] == command
        if keep:
            lines.append(line)
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE)
        return 0
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        from lit_compclip.registry import suggest

        print(f"compclip: error: unknown command {command!r}{suggest(command, COMMANDS)}; commands: "
              f"{', '.join(COMMANDS)} (compclip --help shows their usage)", file=sys.stderr)
        return 2
    # transformers draws a "Loading weights" bar on stderr for every pretrained tower (and a "Writing" one when an
    # export saves it): noise around a command's lines, and it would turn a one-line error into three (set
    # HF_HUB_DISABLE_PROGRESS_BARS=0 to see them)
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    if command in OWN_PARSER:  # shard paths, run folders, a sweep spec: no experiment config of their own
        import importlib

        module, name = OWN_PARSER[command].split(":")
        return getattr(importlib.import_module(module), name)(rest)
    if "-h" in rest or "--help" in rest:
        print(usage_of(command))
        return 0
    log_to_stderr()
    try:
        return run(command, rest)
    except (ConfigError, UsageError) as e:
        print(f"compclip {command}: error: {' '.join(str(e).splitlines())}", file=sys.stderr)
        return 2


def run(command: str, rest: list[str]) -> int:
    """One of train, synth, config, batch-stats and probe; bad input raises ConfigError or UsageError."""
    if command == "probe":
        from lit_compclip.evaluate import probe_checkpoint
        from lit_compclip.training.run import format_table

        result = probe_checkpoint(rest)
        print("\n" + format_table(result["probes"]))
        dump = f"; per-example results in {result['dump']}" if result["dump"] else ""
        print(f"\nprobes.json and failures.md in {result['out']}{dump}  ({result['seconds']:.0f} s)")
        return 0
    overwrite = command == "synth" and "--overwrite" in rest
    files, overrides = split_args([a for a in rest if not (command == "synth" and a == "--overwrite")])
    cfg = load_config(files, overrides)
    if command == "config":
        from omegaconf import OmegaConf

        from lit_compclip.config import check_caption_fields

        check_caption_fields(cfg)  # what train checks first: a caption field the shards do not hold
        print(OmegaConf.to_yaml(cfg), end="")
        return 0
    if command in ("synth", "batch-stats") and cfg.synth is None:
        raise ConfigError(f"compclip {command} works on the synthetic world, and this config has no `synth` section "
                          f"(experiments/default.yaml has one)")
    if command == "batch-stats":
        from lit_compclip.config.plugins import prepare
        from lit_compclip.synth.batches import batch_stats

        prepare(cfg)
        print(f"fraction of samples with an in-batch negative (batch size {cfg.data.batch_size}):")
        for label, stats in batch_stats(cfg).items():
            print(f"  {label:<18} " + "  ".join(f"{k}={v:.3f}" for k, v in stats.items()))
        return 0
    if command == "synth":
        from lit_compclip.synth.plugin import build

        summary = build(cfg, overwrite=overwrite)
        state = "already built with these arguments" if summary["skipped"] else f"built in {summary['seconds']} s"
        print(f"synthetic world in {cfg.synth.out_dir}: {state}; {summary['counts']}")
        return 0
    from lit_compclip.training.run import format_table, train

    result = train(cfg)
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
