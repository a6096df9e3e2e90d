"""`compclip export RUN_OR_CKPT OUT [--format native|open_clip|sentence_transformers]`: a trained model written as a
folder another library loads, checked as it is written; bad inputs are one line and exit 2, and a failed check or a
stop signal leaves no folder."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Sequence

from lit_compclip.cli_args import Parser, UsageError, first_line
from lit_compclip.errors import ConfigError
from lit_compclip.export import FORMATS, export_model
from lit_compclip.stopping import Stopped, stop_on_signals

PROG = "compclip export"


def parse(argv: Sequence[str]) -> argparse.Namespace:
    parser = Parser(prog=PROG, description="A trained model as a folder another library loads (a model card beside "
                                           "it), loaded back and checked against the model before it is kept.")
    parser.add_argument("source", metavar="RUN_OR_CKPT",
                        help="a run folder (its checkpoints/last.ckpt), a checkpoint file or a native export")
    parser.add_argument("out", metavar="OUT", help="the export's folder: a new one, in a folder that exists")
    parser.add_argument("--format", default="native", metavar="FORMAT",
                        help=f"one of {', '.join(FORMATS)} (default: native, which lit_compclip.load reads)")
    parser.add_argument("--hf-model-name", dest="hf_model_name", metavar="ID",
                        help="open_clip: the Hugging Face id its config names for the text tower (for publishing)")
    return parser.parse_args(list(argv))  # errors raise UsageError; only --help exits


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = parse(sys.argv[1:] if argv is None else argv)
    except SystemExit as done:  # --help was printed
        return int(done.code or 0)
    except UsageError as err:
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return 2
    options = {} if args.hf_model_name is None else {"hf_model_name": args.hf_model_name}
    existed = os.path.lexists(args.out)
    try:
        with stop_on_signals():
            done = export_model(args.source, args.out, args.format, **options)
    except ConfigError as err:
        print(f"{PROG}: error: {first_line(err, 400)}", file=sys.stderr)
        return 2
    except OSError as err:  # the disk filled up, a folder vanished: the temporary folder is already gone
        print(f"{PROG}: error: cannot write the export ({err.strerror or first_line(err)}: "
              f"{err.filename or args.out}); nothing was kept", file=sys.stderr)
        return 2
    except Stopped as stopped:  # OUT appears only whole and checked (renamed at the end): a late signal keeps it
        kept = not existed and os.path.isdir(args.out)
        print(f"{PROG}: stopped by {stopped.name}; " + (f"the export was complete and is kept: {args.out}" if kept
                                                          else "nothing was kept"), file=sys.stderr)
        return int(stopped.code)
    print(f"exported {args.source} as {done['format']} to {done['out']}")
    print(f"checked on the model's own embeddings: image error {done['image_error']:.2e}, text error "
          f"{done['text_error']:.2e} (relative, per row)")
    return 0
