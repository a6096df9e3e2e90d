"""What the test modules share (fixtures are in conftest.py): comparisons for the suite's equality claims (per tensor
and scaled to its norm, never per element near zero), the tiny model's and the shared world's overrides, tiny shards,
the probe tests' rigged encoder and image files, a malicious checkpoint, and small file and error helpers."""

from __future__ import annotations

import contextlib
import io
import json
import os
import shlex
import signal
from pathlib import Path

import torch

TINY = 1e-30  # the norm floor: two all-zero tensors are equal, a zero and a non-zero one are not


def norm_error(got, want) -> tuple[float, float]:
    """(|got - want|, |want|) in float64: the error and the scale an equality is judged by."""
    got, want = torch.as_tensor(got).detach().double(), torch.as_tensor(want).detach().double()
    assert got.shape == want.shape, f"shapes differ: {tuple(got.shape)} vs {tuple(want.shape)}"
    return float((got - want).norm()), float(want.norm())


def close_by_norm(got, want, rtol: float) -> bool:
    err, scale = norm_error(got, want)
    return err <= rtol * max(scale, TINY)


def assert_close_by_norm(got, want, rtol: float, name: str = "") -> None:
    """|got - want| <= rtol * |want| over the whole tensor: rounding spread over a tensor (another CPU, another
    summation order) stays far below it, a real difference (a wrong mask, a wrong statistic) does not."""
    err, scale = norm_error(got, want)
    assert err <= rtol * max(scale, TINY), f"{name}: |got - want| = {err:.3g} > {rtol:g} x |want| = {scale:.3g}"


def assert_same_tensors(got: dict, want: dict, rtol: float, what: str = "", floor: float = 1e-6) -> None:
    """Every tensor of `want` in `got` (same names), each close by its norm, or by `floor` x the norm of all of them
    where that is larger: a tensor whose true value is zero (an attention key's bias: softmax ignores it) holds only
    rounding noise, which no tolerance relative to itself can judge."""
    assert got.keys() == want.keys() and want, f"{what}: names differ: {sorted(set(got) ^ set(want))[:5]}"
    whole = float(torch.linalg.vector_norm(torch.stack([t.detach().double().norm() for t in want.values()])))
    for name, tensor in want.items():
        err, scale = norm_error(got[name], tensor)
        bound = rtol * max(scale, floor * whole, TINY)
        assert err <= bound, f"{what} {name}: |got - want| = {err:.3g} > {bound:.3g} (|want| = {scale:.3g})"


@contextlib.contextmanager
def default_dtype(dtype: torch.dtype):
    """Build models and tensors in `dtype` within the block; the previous default comes back after it."""
    before = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(before)


def write_json(path, data) -> None:
    """A probe's annotation file in the test's tmp folder (its parents made)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))


def write_jsonl(path, rows) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def one_line_error(excinfo, *parts) -> None:
    """A pytest.raises result whose message is one line holding every one of `parts`."""
    message = str(excinfo.value)
    assert "\n" not in message, message
    for part in parts:
        assert part in message, message


# The default experiment: the synthetic world's recipe (its world, data, curriculum and probe sets) over the schema
DEFAULT = str(Path(__file__).resolve().parents[1] / "experiments" / "default.yaml")


def user_shell_env(env: dict | None = None) -> dict:
    """The environment as a user's shell has it, not as the suite's own `make test ARGS=...` left it: make's level and
    flags (which carry ARGS=... on to every nested make) and the Makefile's own variables removed."""
    import os

    made = {"MAKELEVEL", "MAKEFLAGS", "MFLAGS", "MAKEOVERRIDES", "ARGS", "EXP", "CKPT", "SWEEP", "QUICK"}
    return {k: v for k, v in (os.environ if env is None else env).items() if k not in made}


# ---- the tiny model and the shared world (tests/conftest.py builds it) ---------------------------------------------

TINY_MODEL = ["model.image.img_size=32", "model.image.depth=1", "model.image.width=64", "model.image.heads=2",
              "model.embed_dim=32"]
# A text tower with nothing to load (MiniLM takes a second or more), where the test is not about the text tower
TINY_TEXT = "model.text={tower: scratch, width: 32, layers: 1, heads: 2, max_seq_len: 16}"


# vit_tiny_patch16_224 at its own size, its patchify stem and class token; MiniLM without the text cache
VIT_IMAGE = {"model": "vit_tiny_patch16_224", "img_size": 224, "patch_size": 16, "depth": 12, "width": 192,
             "heads": 3, "stem": "patch", "pool": "model", "pos_embed": "learn"}
VIT = [f"model.image.{k}={v}" for k, v in VIT_IMAGE.items()] + ["model.embed_dim=32", "model.text.cache_dir=null"]


def world_overrides(world) -> list[str]:
    """Train, validate and probe on a ready-made synthetic world: its shards and the default suites' probe sets."""
    p = f"{world}/probes"
    # synth.auto=false: the tests build small worlds by hand; training must not rebuild them as configured
    return [f"synth.out_dir={world}", "synth.auto=false", f"cache_dir={world}/cache",
            f"data.train_shards={world}/train", f"data.val_shards={world}/val",
            f"probes.suites.sugarcrepe.annotations={p}/sugarcrepe",
            f"probes.suites.sugarcrepe.images={p}/sugarcrepe/images",
            f"probes.suites.aro.root={p}/aro", f"probes.suites.aro.images={p}/aro/images",
            f"probes.suites.winoground.examples={p}/winoground/examples.jsonl",
            f"probes.suites.winoground.images={p}/winoground/images",
            f"probes.suites.docci.annotations={p}/docci/docci_descriptions.jsonlines",
            f"probes.suites.docci.images={p}/docci/images",
            "data.batch_size=8", "data.num_workers=0", "data.shuffle_buffer=16", "probes.limit=8",
            "wandb.mode=disabled", "trainer.enable_progress_bar=false"]


# ---- tiny WebDataset shards of good samples ------------------------------------------------------------------------

def jpeg(size=(20, 24), colour=(200, 30, 30)) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, "JPEG")
    return buf.getvalue()


def good(key, caption=None, **meta):
    return {"__key__": key, "jpg": jpeg(), "txt": caption or f"caption of {key}", "json": {"key": key, **meta}}


def write_shard(path, samples):
    import webdataset as wds

    with wds.TarWriter(str(path)) as sink:
        for sample in samples:
            sink.write(sample)
    return str(path)


def write_shards(folder, n_shards, per_shard, **meta):
    folder.mkdir(exist_ok=True)
    for s in range(n_shards):
        write_shard(folder / f"{s:06d}.tar", [good(f"s{s}_{i:03d}", **meta) for i in range(per_shard)])
    return folder


def tfm(size):
    from torchvision import transforms

    return transforms.Compose([transforms.Resize(size), transforms.CenterCrop(size), transforms.ToTensor()])


def make_dm(train, val=None, **overrides):
    """The data module on `train` (and `val`) shards, set up for fit: batches of 4, no workers, 16 px images."""
    from lit_compclip.training.datamodule import WebDataModule

    args = dict(train_shards=str(train), val_shards=None if val is None else str(val), caption_fields={"txt": 1.0},
                sentence_sample={}, batch_size=4, num_workers=0, shuffle_buffer=50, shard_shuffle=True,
                resampled=False, samples_per_epoch=None, group_key=None, seed=0,
                train_transform=tfm(16), eval_transform=tfm(12))
    args.update(overrides)
    dm = WebDataModule(**args)
    dm.setup("fit")
    return dm


# ---- the probe tests' rigged encoder and image files ---------------------------------------------------------------

RED, GREEN, BLUE, YELLOW = (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0)
PURPLE, CYAN, GREY = (128, 0, 128), (0, 255, 255), (128, 128, 128)


def solid(path, colour, size=(8, 8), mode="RGB"):
    """An image of one colour; the format from the suffix (.jpg files are real JPEGs)."""
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).convert(mode).save(path)


def top_left(image):
    return image.getpixel((0, 0))


def nearest(palette):
    """A key for Rigged: the palette colour nearest an image's top-left pixel (JPEG and WebP shift solid colours)."""
    return lambda image: min(palette, key=lambda c: sum((a - b) ** 2 for a, b in zip(c, top_left(image))))


class Rigged:
    """The probe tests' fake encoder, whose every score is known: an image (by `key(image)`, its top-left colour unless
    told otherwise) and a caption map to chosen vectors, L2-normalised. `images` and `texts` are mappings or functions
    (of the key, of the caption). With `truncates=k` its text tower keeps k words and counts the captions it cuts
    (count_truncated); with `max_tokens` it says its limit. It keeps the keys and captions of each call."""

    def __init__(self, images, texts, key=top_left, truncates: int | None = None, max_tokens: int | None = None):
        self.images, self.texts, self.key, self.max_tokens = images, texts, key, max_tokens
        self.image_batches: list[list] = []
        self.text_batches: list[list] = []
        self.truncation_calls = 0
        if truncates is not None:  # an encoder without count_truncated reports no truncation (the probes check)
            self.truncates, self.count_truncated = truncates, self._count_truncated

    @staticmethod
    def _unit(table, keys) -> torch.Tensor:
        rows = [table(k) if callable(table) else table[k] for k in keys]
        return torch.nn.functional.normalize(torch.tensor(rows, dtype=torch.float32), dim=1)

    def encode_image(self, images):
        assert all(im.mode == "RGB" for im in images)  # a probe hands the encoder RGB, whatever the file holds
        keys = [self.key(im) for im in images]
        self.image_batches.append(keys)
        return self._unit(self.images, keys)

    def encode_text(self, texts):
        self.text_batches.append(list(texts))
        return self._unit(self.texts, texts)  # a KeyError here: the probe asked for a caption no test rigged

    def _count_truncated(self, texts) -> int:
        self.truncation_calls += 1
        return sum(len(t.split()) > self.truncates for t in texts)

    def seen(self, kind: str) -> list:
        """Every image key or caption ("image", "text") encoded, in order."""
        return [x for batch in getattr(self, f"{kind}_batches") for x in batch]


# ---- a checkpoint crafted to attack its reader ---------------------------------------------------------------------

class RunsCode:
    """Unpickling this runs `touch MARKER`: what a checkpoint crafted to attack its reader holds."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.system, (f"touch {shlex.quote(self.marker)}",)


def malicious(path, marker, base: dict | None = None, zip_format: bool = True):
    """A torch file at `path` that would create `marker` when loaded with weights_only=False."""
    torch.save({**(base or {"state_dict": {}, "hyper_parameters": {}}), "payload": RunsCode(marker)}, path,
               _use_new_zipfile_serialization=zip_format)
    return str(path)


def load_script(name: str, folder: str = "benchmarks"):
    """A benchmark script (benchmarks/NAME.py), or another folder's script (scripts/NAME.py), as a module."""
    import importlib
    import importlib.util

    if folder == "benchmarks":
        return importlib.import_module(f"benchmarks.{name}")
    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), folder, f"{name}.py")
    spec = importlib.util.spec_from_file_location(f"{folder}_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ---- probes of an exported model against its checkpoint ------------------------------------------------------------

def probe_records(world, dump, model_args: list[str]) -> dict[str, list[dict]]:
    """`compclip probe MODEL_ARGS` on three examples of each of the world's SugarCrepe and Winoground files, dumped
    to `dump`: its per-example records by subset."""
    import json
    from pathlib import Path

    from lit_compclip.cli import main

    p = Path(world) / "probes"
    args = ["probe", *model_args, "probes.limit=3", "--device", "cpu", "--dump", str(dump),
            "--probe", "sugarcrepe", f"annotations={p}/sugarcrepe", f"images={p}/sugarcrepe/images",
            "--probe", "winoground", f"examples={p}/winoground/examples.jsonl", f"images={p}/winoground/images"]
    assert main(args) == 0
    return {f"{d.name}/{f.stem}": [json.loads(line) for line in f.read_text().splitlines()]
            for d in Path(dump).iterdir() if d.is_dir() and d.name != "clip_benchmark" for f in d.glob("*.jsonl")}


def assert_same_records(ours: dict, theirs: dict) -> None:
    """The same subsets, examples, similarity scores (within float32 rounding) and verdicts, example by example."""
    import torch

    assert ours.keys() == theirs.keys() and len(ours) == 8  # seven SugarCrepe subsets and Winoground
    checked = 0
    for subset, rows in ours.items():
        assert len(rows) == len(theirs[subset]) > 0
        for want, got in zip(rows, theirs[subset]):
            for key in ("scores", "matrix"):
                if key in want:
                    scores = torch.tensor(want[key])
                    assert torch.allclose(torch.tensor(got[key]), scores, atol=1e-5), (subset, key)
                    checked += scores.numel()
            assert got["correct"] == want["correct"], subset
    assert checked >= 50


# ---- a test that must not hang --------------------------------------------------------------------------------------

class Expired(BaseException):
    """Not an Exception: the data pipeline counts those as skips and goes on."""


@contextlib.contextmanager
def deadline(seconds: int):
    """Fails the test instead of hanging it (a stream that never ends, a process that never stops)."""
    def expired(signum, frame):
        raise Expired(f"still running after {seconds} s")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
