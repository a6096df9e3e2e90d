"""Every `compclip ...` and `make ...` command written in README.md and docs/*.md (code blocks and inline code) parses,
so a documented command cannot break silently. No model is loaded and nothing runs:

- make: the target exists, every VAR=value names a variable the Makefile reads, and `make -n` (a dry run) accepts it
  (a variable the target does not read is refused); each `compclip` command the dry run prints is checked as below,
  split as the shell would split it.
- train, config, synth, batch-stats: the experiment files and overrides pass the config check (load_config).
- probe: its command line, the config check, and each named probe's type and options (no probe files are read).
- recaption: its parser, and the options its backend takes; sweep: `--dry-run`; compare and breakdown: their
  parsers; export and embed: their parsers.

Placeholders stand for what a reader fills in: EXP / EXP.yaml / FILE -> experiments/default.yaml, SPEC.yaml -> a
sweep spec, key=VALUE in capitals -> the key's default, `<...>`, `...`, `key=value` and $VARIABLES -> dropped or 1,
a run's own runs/NAME/config.yaml -> experiments/default.yaml. Paths such as /data/web are only strings to the parsers. A `compclip` text that is a message (`compclip train:
error: ...`) or a list of commands (`compclip train | probe`) is not a command."""

import functools
import glob
import inspect
import os
import re
import shlex
import subprocess
import sys

import pytest
from helpers import DEFAULT, user_shell_env

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = ["README.md", *sorted(os.path.relpath(p, REPO) for p in glob.glob(os.path.join(REPO, "docs", "*.md")))]
MAKE = ["make", "-n", "-s", "-f", os.path.join(REPO, "Makefile"), "-o", os.path.join(sys.prefix,
                                                                                    ".lit_compclip-installed"),
        f"VENV={sys.prefix}"]
PLACEHOLDER_FILES = {"EXP": "experiments/default.yaml", "EXP.yaml": "experiments/default.yaml",
                     "FILE": "experiments/default.yaml", "SPEC.yaml": "experiments/sweeps/ablation.yaml"}
PLACEHOLDER_VALUE = re.compile(r"^[A-Z][A-Z0-9_]*$")  # seed=S, run_dir=DIR, --seed=N
GENERIC = {"key=value", "--key=value", "...", "[key=value", "...]"}
# A dated log of what was run: its commands may name experiment and sweep files removed since (it says so). There a
# missing file is passed over; everything else in its commands must still parse.
HISTORY = {"docs/RESEARCH_LOG.md"}


def documented() -> list[tuple[str, str]]:
    """(where, command) for each `compclip ...` / `make ...` in a code block line (backslash continuations joined,
    comments dropped, `&&` and `;` splitting commands) or an inline code span."""
    found = []
    for doc in DOCS:
        text = open(os.path.join(REPO, doc), encoding="utf-8").read()
        blocks = list(re.finditer(r"^```[^\n]*\n(.*?)^```", text, re.S | re.M))
        for block in blocks:
            first = text[:block.start()].count("\n") + 2
            for offset, line in enumerate(block.group(1).replace("\\\n", " ").splitlines()):
                for part in re.split(r"&&|;", line):
                    match = re.match(r"\s*(?:\$ )?(?:\S*/)?((?:compclip|make) .*)", part)
                    if match:
                        found.append((f"{doc}:{first + offset}", match.group(1)))
        prose = text
        for block in reversed(blocks):  # blank the blocks out, keeping line numbers
            prose = prose[:block.start()] + "\n" * block.group(0).count("\n") + prose[block.end():]
        for match in re.finditer(r"(?<!`)`((?:compclip|make) [^`]*)`(?!`)", prose):
            line = prose[:match.start()].count("\n") + 1
            found.append((f"{doc}:{line}", " ".join(match.group(1).split())))
    return found


def makefile_targets_and_variables() -> tuple[set[str], set[str]]:
    text = open(os.path.join(REPO, "Makefile")).read()
    targets = set(re.findall(r"^([a-z][\w-]*):", text, re.M))
    variables = set(re.findall(r"\$\((\w+)\)", text)) | set(re.findall(r"^\s*(?:ifdef\s+)?(\w+)\s*(?:\?=|:=|=)",
                                                                         text, re.M))
    variables |= set(re.findall(r"^ifdef\s+(\w+)", text, re.M))
    return targets, variables


@functools.lru_cache(maxsize=1)
def defaults():
    from lit_compclip.config import load_config

    return load_config([DEFAULT], [])


def fill_placeholders(args: list[str]) -> list[str]:
    """The arguments with the reader's placeholders filled in or dropped (see the module's docstring)."""
    from omegaconf import OmegaConf

    out = []
    for arg in args:
        if arg in GENERIC or re.fullmatch(r"<[^>]*>", arg):
            continue
        if arg.startswith("$"):
            out.append("1")
            continue
        if arg in PLACEHOLDER_FILES:
            out.append(PLACEHOLDER_FILES[arg])
            continue
        if re.fullmatch(r"runs/[^/]+/config\.yaml", arg):  # a run's own config.yaml: the file that run was made from
            out.append(PLACEHOLDER_FILES["EXP"])
            continue
        key, eq, value = arg.partition("=")
        if eq and (PLACEHOLDER_VALUE.match(value) or "..." in value):
            if key.lstrip("-") == "experiment":
                value = PLACEHOLDER_FILES["FILE"]
            else:
                found = OmegaConf.select(defaults(), key.lstrip("-"), default=None)
                value = "null" if found is None else str(found)
            out.append(f"{key}={value}")
            continue
        out.append(arg)
    return out


def check_compclip(args: list[str]) -> None:
    """Raise (ValueError, SystemExit, ...) if `compclip ARGS` would not parse; a bare `compclip COMMAND` names one."""
    from lit_compclip.cli import COMMANDS

    command, rest = args[0], fill_placeholders(args[1:])
    assert command in COMMANDS, f"unknown command {command!r}"
    if not rest:
        return
    if command in ("train", "config", "synth", "batch-stats"):
        from lit_compclip.config import load_config, split_args

        load_config(*split_args([a for a in rest if not (command == "synth" and a == "--overwrite")]))
    elif command == "probe":
        from lit_compclip.evaluate import parse_args, probe_config
        from lit_compclip.probes import PROBES
        from lit_compclip.registry import resolve

        parsed = parse_args(rest)
        probe_config(parsed)
        for name, options in parsed["probes"].items():
            options = dict(options)
            takes = inspect.signature(resolve(PROBES, options.pop("type", name), "probe")).parameters
            unknown = set(options) - set(takes)
            assert not unknown, f"probe {name!r} takes no option {sorted(unknown)}"
    elif command == "recaption":
        from lit_compclip.recaption.command import backend_options, parse

        backend_options(parse(rest), parse(rest).backend)
    elif command == "sweep":
        from lit_compclip.reports.sweep import main

        assert main([*rest, "--dry-run"]) == 0, "compclip sweep --dry-run failed"
    elif command == "export":
        from lit_compclip.export.command import parse

        parse(rest)
    elif command == "embed":
        from lit_compclip.embed import parser

        parser().parse_args(rest)
    elif command == "compare":
        from lit_compclip.reports.compare import parse

        parse(rest)
    elif command == "breakdown":
        import lit_compclip.synth.breakdown as breakdown

        real, breakdown.breakdown = breakdown.breakdown, lambda run: {}  # parse only: read no run folder
        try:
            assert breakdown.main(rest) == 0, "compclip breakdown's parser refused it"
        finally:
            breakdown.breakdown = real


def check_make(args: list[str]) -> None:
    """The target and variables exist, `make -n` accepts them, and every compclip command it would run parses."""
    targets, variables = makefile_targets_and_variables()
    target, *assignments = args
    assert target in targets, f"no target {target!r} in the Makefile"
    for assignment in assignments:
        name, eq, _ = assignment.partition("=")
        assert eq and name in variables, f"{assignment!r}: the Makefile reads no variable {name!r}"
    dry = subprocess.run([*MAKE, *args], cwd=REPO, capture_output=True, text=True, timeout=60, env=user_shell_env())
    assert dry.returncode == 0, dry.stderr.strip()
    for line in dry.stdout.splitlines():
        if "-m lit_compclip.cli " in line:  # as the shell splits it: an unquoted ARGS value is split on spaces
            check_compclip(shlex.split(line.split("-m lit_compclip.cli ", 1)[1]))


def removed_files(command: str) -> list[str]:
    """The experiment and sweep files a command names that are not in the repository."""
    named = re.findall(r"(?:^|[\s=])(experiments/[\w/.-]+\.ya?ml)", command)
    return [path for path in named if not os.path.isfile(os.path.join(REPO, path))]


def problem(command: str, history: bool = False) -> str | None:
    """Why a documented command would fail, or None; a message or a list of commands is no command (None). With
    `history`, a command naming a file removed since is passed over."""
    if re.match(r"compclip( [\w-]+)?: ", command) or re.match(r"compclip \S+ \| ", command):
        return None
    if history and removed_files(command):
        return None
    try:
        args = shlex.split(command, comments=True)
        if args[0] == "make":
            check_make(args[1:])
        else:
            check_compclip(args[1:])
    except SystemExit as e:  # argparse's --help
        return None if not e.code else f"exit {e.code}"
    except Exception as e:  # ValueError, ConfigError, UsageError, AssertionError, ...
        return f"{type(e).__name__}: {e}"
    return None


@pytest.fixture(scope="module", autouse=True)
def in_the_repository():
    """Documented paths (experiments/...) are relative to the repository's root."""
    before = os.getcwd()
    os.chdir(REPO)
    yield
    os.chdir(before)


def test_every_documented_command_parses(capsys):
    commands = documented()
    assert len(commands) > 100 and any(c.startswith("make ") for _, c in commands)
    failed, checked = {}, {}
    for where, command in commands:
        history = where.split(":")[0] in HISTORY
        if (command, history) not in checked:  # `make seeds` is named 69 times
            checked[command, history] = problem(command, history)
        if checked[command, history]:
            failed[f"{where}: {command}"] = checked[command, history]
    capsys.readouterr()  # what the dry runs printed
    assert not failed, "\n".join(f"{k}\n    {v}" for k, v in failed.items())


@pytest.mark.parametrize("command, why", [
    # docs/REAL_DATA.md before issue 34: the openai backend takes no --batch-size
    ("compclip recaption /data/web /data/recap --backend openai --base-url http://localhost:8000/v1 "
     "--model Qwen/Qwen2-VL-7B-Instruct --concurrency 64 --batch-size 256 --fields txt,title", "--batch-size"),
    ("compclip train data.batchsize=3", "data.batchsize"),
    ("compclip trian seed=1", "trian"),
    ("compclip probe --ckpt x.ckpt --probe sugarcrepe imgs=/bench", "imgs"),
    ("compclip sweep experiments/sweeps/ablation.yaml --count 0", "--count"),
    ("make trian", "trian"),
    ("make train EPOCHS=3", "EPOCHS"),
    ("make finetune EXP=experiments/alt_text.yaml", "EXP"),
    ("make train EXP=experiments/no_such.yaml", "no_such.yaml"),
    # the shell splits an unquoted ARGS value with spaces: make passes it on in pieces
    ('make train ARGS="data.later_caption_fields={recaption: 0.5, plain_list: 0.5}"', "0.5,"),
])
def test_a_broken_command_is_caught(command, why, capsys):
    found = problem(command)
    capsys.readouterr()
    assert found and why in found, found
