"""Comparisons for the suite's equality claims (per tensor and scaled to its norm, never per element near zero),
and the small file and error helpers the probe tests share."""

from __future__ import annotations

import contextlib
import json

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
DEFAULT = str(__import__("pathlib").Path(__file__).resolve().parents[1] / "experiments" / "default.yaml")


def user_shell_env(env: dict | None = None) -> dict:
    """The environment as a user's shell has it, not as the suite's own `make test ARGS=...` left it: make's level and
    flags (which carry ARGS=... on to every nested make) and the Makefile's own variables removed."""
    import os

    made = {"MAKELEVEL", "MAKEFLAGS", "MFLAGS", "MAKEOVERRIDES", "ARGS", "EXP", "CKPT", "SWEEP", "QUICK"}
    return {k: v for k, v in (os.environ if env is None else env).items() if k not in made}
