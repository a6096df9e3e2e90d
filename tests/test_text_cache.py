"""The frozen text-prefix cache: the same outputs and gradients as recomputing, keyed exactly, shared, bounded."""

import csv
import os
import subprocess
import sys

import pytest
import torch

from lit_compclip.config import load_config
from lit_compclip.text_cache import PrefixCache, token_keys
from lit_compclip.towers.sentence_transformers import SentenceTransformerTower
from lit_compclip.train import train
from test_train import TINY_MODEL, world, world_overrides  # noqa: F401 (world is a fixture)

CAPTIONS = ["The blue square is under the yellow triangle. The background is grey.", "A red circle.",
            "The picture has a small triangle that is blue at the top."]


def pair(cache_dir, unfreeze=2, dtype="float32", **options):
    """An uncached tower and a cached one with the same weights."""
    torch.manual_seed(0)
    plain = SentenceTransformerTower(16, unfreeze_layers=unfreeze, **options)
    cached = SentenceTransformerTower(16, unfreeze_layers=unfreeze, cache_dir=str(cache_dir), cache_dtype=dtype,
                                      **options)
    cached.load_state_dict(plain.state_dict())
    return plain, cached


def step(tower, tokens, seed=1):
    """Train-mode forward (dropout on in the trained layers) and backward; returns output and gradients."""
    tower.train()
    tower.zero_grad()
    torch.manual_seed(seed)
    out = tower(tokens)
    (out * torch.arange(out.shape[1])).sum().backward()
    return out.detach(), {n: p.grad.clone() for n, p in tower.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("unfreeze", [2, 0])
def test_cached_tower_matches_recomputing_in_output_and_gradients(tmp_path, unfreeze):
    plain, cached = pair(tmp_path, unfreeze)
    tokens = plain.tokenize(CAPTIONS)
    ref_out, ref_grads = step(plain, tokens)
    for attempt in ("miss", "hit"):  # the first pass fills the cache, the second reads it
        out, grads = step(cached, tokens)
        assert torch.allclose(out, ref_out, atol=1e-5), attempt
        assert grads.keys() == ref_grads.keys() and grads, attempt
        for name, grad in ref_grads.items():
            assert torch.allclose(grads[name], grad, atol=1e-5), (attempt, name)
    stats = cached.cache_stats()
    assert stats["hits"] == len(CAPTIONS) and stats["misses"] == len(CAPTIONS) and stats["hit_rate"] == 0.5


def test_cached_tower_skips_the_frozen_layers_on_a_hit(tmp_path):
    _, cached = pair(tmp_path, unfreeze=2)
    calls = []
    for i, layer in enumerate(cached.layers):
        layer.register_forward_hook(lambda module, args, output, i=i: calls.append(i))
    tokens = cached.tokenize(CAPTIONS)
    cached(tokens)
    assert calls == [0, 1, 2, 3, 4, 5]  # prefix computed once (stopped before layer 4), then the trained layers
    calls.clear()
    cached(tokens)
    assert calls == [4, 5]


def test_float16_storage_gives_the_same_result_fresh_and_cached(tmp_path):
    plain, cached = pair(tmp_path, unfreeze=2, dtype="float16")
    cached.eval()
    plain.eval()
    tokens = plain.tokenize(CAPTIONS)
    with torch.no_grad():
        fresh, again, exact = cached(tokens), cached(tokens), plain(tokens)
    assert torch.equal(fresh, again)  # a fresh row is rounded as its stored copy will be
    assert torch.allclose(fresh, exact, atol=2e-3) and not torch.equal(fresh, exact)


def test_a_caption_hits_whatever_batch_and_padding_it_comes_in(tmp_path):
    plain, cached = pair(tmp_path, unfreeze=1)
    cached.eval()
    plain.eval()
    with torch.no_grad():
        cached(cached.tokenize(CAPTIONS))
        before = cached.cache_stats()["hits"]
        short = cached.tokenize([CAPTIONS[1], "A red circle and a green star."])  # padded to another length
        out = cached(short)
        assert cached.cache_stats()["hits"] == before + 1
        assert torch.allclose(out, plain(short), atol=1e-5)


def test_keys_are_the_real_tokens_only():
    ids = torch.tensor([[101, 7, 8, 102, 0, 0], [101, 7, 8, 102, 5, 0]])
    mask = torch.tensor([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 0]])
    a, b = token_keys(ids, mask)
    assert a == token_keys(ids[:1, :4], mask[:1, :4])[0]  # padding never enters a key
    assert a != b


def test_another_truncation_length_or_other_frozen_weights_use_another_namespace(tmp_path):
    _, base = pair(tmp_path, unfreeze=2)
    base(base.tokenize(CAPTIONS))
    _, shorter = pair(tmp_path, unfreeze=2, max_seq_len=8)
    shorter(shorter.tokenize(CAPTIONS))
    _, changed = pair(tmp_path, unfreeze=2)
    with torch.no_grad():
        changed.layers[0].attention.self.query.weight.add_(0.01)  # as another checkpoint's frozen layers would be
    changed(changed.tokenize(CAPTIONS))
    paths = {base.cache.path, shorter.cache.path, changed.cache.path}
    assert len(paths) == 3
    assert shorter.cache_stats()["hits"] == 0 and changed.cache_stats()["hits"] == 0


def test_the_budget_bounds_the_cache_size(tmp_path):
    budget_gb = 0.25 / 1024  # 256 KiB
    cache = PrefixCache(str(tmp_path), "space", budget_gb)
    for i in range(200):  # 200 x 15 KiB = 3 MiB offered
        cache.put([i.to_bytes(4, "little")], [torch.randn(10, 384)])
    assert cache.size_bytes() <= 2 * budget_gb * 2 ** 30
    found, missing = cache.get([i.to_bytes(4, "little") for i in range(200)], 384)
    assert 0 < len(found) < 200 and 199 in found  # the oldest entries went first


def test_the_cache_is_shared_between_processes(tmp_path):
    code = ("import sys, torch; from lit_compclip.text_cache import PrefixCache; "
            "c = PrefixCache(sys.argv[1], 'space', 1.0); c.put([b'abcd'], [torch.ones(3, 4)])")
    subprocess.run([sys.executable, "-c", code, str(tmp_path)], check=True, timeout=60,
                   env=dict(os.environ, PYTHONPATH=os.getcwd()))
    found, missing = PrefixCache(str(tmp_path), "space", 1.0).get([b"abcd", b"efgh"], 4)
    assert missing == [1] and torch.equal(found[0], torch.ones(3, 4))


def test_an_unusable_cache_folder_is_one_clear_error(tmp_path):
    (tmp_path / "file").write_text("not a folder")
    with pytest.raises(ValueError, match="cannot open the text cache.*cache_dir"):
        PrefixCache(str(tmp_path / "file"), "space", 1.0)
    with pytest.raises(ValueError, match="cache_budget_gb"):
        SentenceTransformerTower(16, cache_dir=str(tmp_path), cache_budget_gb=0)


def test_a_second_run_with_the_same_seed_reads_every_caption_from_the_cache(world, tmp_path):
    def run(name):
        cfg = load_config([], world_overrides(world) + TINY_MODEL + [
            "trainer.max_steps=3", "trainer.log_every_n_steps=1", "probes.suites={}", "data.val_shards=null",
            f"run_dir={tmp_path}/{name}", f"cache_dir={tmp_path}/cache"])
        train(cfg)
        with open(tmp_path / name / "metrics.csv") as f:
            return [float(r["text_cache/hit_rate"]) for r in csv.DictReader(f) if r.get("text_cache/hit_rate")]

    first, second = run("first"), run("second")
    assert first and max(first) < 0.5  # new captions are computed (a few repeat across families)
    assert second and min(second) == 1.0  # the same seed draws the same captions: all cached
