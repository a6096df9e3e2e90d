"""The frozen text-prefix cache: the same outputs and gradients as recomputing, keyed exactly, shared, bounded."""

import csv
import logging
import os
import sqlite3
import subprocess
import sys

import pytest
import torch
from omegaconf import OmegaConf

from helpers import DEFAULT, TINY_MODEL, assert_close_by_norm, assert_same_tensors, close_by_norm, world_overrides
from lit_compclip.config import load_config
from lit_compclip.training.module import CompClip
from lit_compclip.text_cache import PrefixCache, token_keys
from lit_compclip.towers.sentence_transformers import SentenceTransformerTower
from lit_compclip.training.run import train

CAPTIONS = ["The blue square is under the yellow triangle. The background is grey.", "A red circle.",
            "The picture has a small triangle that is blue at the top."]
# float32 storage holds the very float32 values a recompute gives, so what differs is the rounding of other padding
# and batch shapes (~1e-7 of a tensor's norm); a tensor far smaller than the rest (a key bias: softmax ignores it)
# is judged against 1% of all gradients' norm.
RTOL, FLOOR = 1e-5, 1e-2


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
        assert_close_by_norm(out, ref_out, RTOL, attempt)
        assert_same_tensors(grads, ref_grads, RTOL, attempt, floor=FLOOR)
    stats = cached.cache_stats()
    assert stats["hits"] == len(CAPTIONS) and stats["misses"] == len(CAPTIONS) and stats["hit_rate"] == 0.5
    # the comparison can fail: another dropout mask in the trained layers is far outside the tolerance
    if unfreeze:
        assert not close_by_norm(step(cached, tokens, seed=2)[0], ref_out, 1e-3)


def default_text_models(cache_dir, **text):
    """The shipped model's text side (MiniLM, two trained layers with dropout, float16 cache, length groups) as
    CompClip encodes it, uncached and cached, with the same weights."""
    cfg = OmegaConf.to_container(load_config([DEFAULT], [f"cache_dir={cache_dir}"]), resolve=True)
    model, optim = cfg["model"], cfg["optim"]
    torch.manual_seed(0)
    plain = CompClip({**model, "text": {**model["text"], "cache_dir": None}}, optim, total_steps=1)
    cached = CompClip({**model, "text": {**model["text"], **text}}, optim, total_steps=1)
    cached.load_state_dict(plain.state_dict())
    assert cached.model.text.cache_options and cached.model.length_groups > 1 and cached.model.text.trainable
    return plain, cached


def text_step(model, captions, seed=1):
    model.train()
    model.zero_grad()
    torch.manual_seed(seed)
    out = model.encode_text(captions)
    (out * torch.arange(out.shape[1])).sum().backward()
    return out.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


DEFAULT_CAPTIONS = CAPTIONS + ["A green star left of a white cross.", "The red square is above the blue circle.",
                               "A yellow triangle.", "The white star is right of the green square. It is small.",
                               "A blue cross below a red triangle."]


def test_cached_default_model_matches_recomputing_in_output_and_gradients(tmp_path):
    plain, cached = default_text_models(tmp_path / "cache", cache_dtype="float32")
    ref_out, ref_grads = text_step(plain, DEFAULT_CAPTIONS)
    assert any(n.startswith("model.text.st.") for n in ref_grads)  # the trained MiniLM layers, dropout on
    for attempt in ("miss", "hit"):
        out, grads = text_step(cached, DEFAULT_CAPTIONS)
        assert_close_by_norm(out, ref_out, RTOL, attempt)
        assert_same_tensors(grads, ref_grads, RTOL, attempt, floor=FLOOR)
    assert cached.model.text.cache_stats()["hits"] == len(DEFAULT_CAPTIONS)


def test_default_float16_cache_reads_back_exactly_what_it_computed(tmp_path):
    plain, cached = default_text_models(tmp_path / "cache")  # as shipped: float16 storage
    assert cached.model.text.cache_options[2] == "float16"
    miss, hit = text_step(cached, DEFAULT_CAPTIONS), text_step(cached, DEFAULT_CAPTIONS)
    assert torch.equal(miss[0], hit[0])  # a fresh row is rounded as its stored copy will be: the same step
    assert miss[1].keys() == hit[1].keys() and all(torch.equal(miss[1][n], hit[1][n]) for n in miss[1])
    exact = text_step(plain, DEFAULT_CAPTIONS)[0]
    assert_close_by_norm(hit[0], exact, 2e-3, "float16 prefix")  # float16's rounding (2^-11), no more
    assert not torch.equal(hit[0], exact)


def test_cached_tower_skips_the_frozen_layers_on_a_hit(tmp_path):
    _, cached = pair(tmp_path, unfreeze=2)
    calls = []
    for i, layer in enumerate(cached.layers):  # a layer's attention runs only when the layer computes
        next(layer.children()).register_forward_hook(lambda module, args, output, i=i: calls.append(i))
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
    assert_close_by_norm(fresh, exact, 2e-3, "float16 prefix")  # float16's rounding (2^-11), no more
    assert not torch.equal(fresh, exact)  # and the prefix really went through float16 storage


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
        assert_close_by_norm(out, plain(short), RTOL)


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


def disk_bytes(folder) -> int:
    return sum(os.path.getsize(os.path.join(root, f)) for root, _, files in os.walk(folder) for f in files)


def test_the_budget_bounds_the_cache_size_and_evicts_the_oldest_stored(tmp_path):
    budget_gb = 2 / 1024  # 2 MiB
    budget = int(budget_gb * 2 ** 30)
    entry = 10 * 384 * 4  # 15 KiB a caption, so about 130 fit
    # Stated slack: SQLite's write-ahead log, checkpointed at 1/16 of the budget, its 32 KiB index, and one batch
    # written before the eviction that follows it (8 entries).
    slack = budget // 16 + 32 * 1024 + 8 * entry
    cache = PrefixCache(str(tmp_path), "space", budget_gb)
    most = 0
    for start in range(0, 800, 8):  # 800 entries (12 MiB) offered, 8 per batch as training writes them
        keys = [i.to_bytes(4, "little") for i in range(start, start + 8)]
        cache.put(keys, [torch.full((10, 384), float(i)) for i in range(start, start + 8)])
        assert cache.size_bytes() <= budget  # what diskcache counts
        most = max(most, disk_bytes(cache.path))
    assert most <= budget + slack, (most, budget, slack)  # what the disk holds
    assert cache.errors == 0
    found, missing = cache.get([i.to_bytes(4, "little") for i in range(800)], 384)
    survivors = sorted(found)
    # least-recently-stored eviction: the newest entries survive, a whole run of them, and about a budget's worth
    assert survivors == list(range(800 - len(survivors), 800))
    assert budget // 2 <= len(survivors) * entry <= budget
    assert all(torch.equal(found[i], torch.full((10, 384), float(i))) for i in survivors)


def test_reading_an_entry_does_not_save_it_from_eviction(tmp_path):
    budget_gb = 1 / 1024
    cache = PrefixCache(str(tmp_path), "space", budget_gb)
    first = (0).to_bytes(4, "little")
    cache.put([first], [torch.ones(10, 384)])
    reads = 0
    for i in range(1, 300):
        reads += 0 in cache.get([first], 384)[0]  # read all along, as every epoch would ...
        cache.put([i.to_bytes(4, "little")], [torch.ones(10, 384)])
    assert reads > 10 and cache.get([first], 384)[1] == [0]  # ... it still went first: least recently stored


def damage(cache: PrefixCache, key: bytes, how: str) -> None:
    """Damage one stored value in the cache's SQLite file: one byte flipped, or the value cut short."""
    db = sqlite3.connect(os.path.join(cache.path, "cache.db"))
    with db:
        (value,), = db.execute("SELECT value FROM Cache WHERE key = ?", (key,)).fetchall()
        value = bytes(value)
        bad = value[:100] + bytes([value[100] ^ 0x10]) + value[101:] if how == "flip" else value[:len(value) // 2 + 3]
        db.execute("UPDATE Cache SET value = ? WHERE key = ?", (bad, key))
    db.close()


@pytest.mark.parametrize("how", ["flip", "truncate"])
def test_a_damaged_entry_costs_a_recompute(tmp_path, how, caplog):
    plain, cached = pair(tmp_path, unfreeze=1)
    plain.eval(), cached.eval()
    tokens = cached.tokenize(CAPTIONS)
    with torch.no_grad():
        cached(tokens)  # all three stored
        damage(cached.cache, token_keys(tokens["input_ids"], tokens["attention_mask"])[1], how)
        caplog.set_level(logging.WARNING, logger="lit_compclip.text_cache")
        out = cached(tokens)  # nothing raises
        assert_close_by_norm(out, plain(tokens), RTOL)  # the damaged row was recomputed, not read
        stats = cached.cache_stats()
        assert stats["errors"] == 1 and stats["hits"] == 2 and stats["misses"] == 4  # 3 first, then the damaged one
        assert "text cache read failed" in caplog.text and "damaged entry" in caplog.text
        cached(tokens)  # and stored again, whole
        assert cached.cache_stats()["hits"] == 5 and cached.cache_stats()["errors"] == 1


class _Payload:
    """Unpickling this creates a marker file: what a tampered cache row could do if it were unpickled."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import pathlib
        return pathlib.Path.touch, (pathlib.Path(self.marker),)


def test_a_pickled_row_in_a_shared_cache_never_runs(tmp_path, caplog):
    import pickle

    cache = PrefixCache(str(tmp_path / "cache"), "space", 1.0)
    cache.put([b"abcd"], [torch.ones(3, 4)])
    marker = tmp_path / "MARKER"
    db = sqlite3.connect(os.path.join(cache.path, "cache.db"))
    with db:  # the row rewritten as diskcache's pickle mode (4) holding a payload
        db.execute("UPDATE Cache SET value = ?, mode = 4 WHERE key = ?", (pickle.dumps(_Payload(str(marker))), b"abcd"))
    db.close()
    assert not marker.exists()
    caplog.set_level(logging.WARNING, logger="lit_compclip.text_cache")
    found, missing = PrefixCache(str(tmp_path / "cache"), "space", 1.0).get([b"abcd"], 4)
    assert not marker.exists()  # nothing was unpickled
    assert found == {} and missing == [0] and "not raw bytes" in caplog.text  # a damaged entry: recomputed


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
        cfg = load_config([DEFAULT], world_overrides(world) + TINY_MODEL + [
            "trainer.max_steps=3", "trainer.log_every_n_steps=1", "probes.suites={}", "data.val_shards=null",
            f"run_dir={tmp_path}/{name}", f"cache_dir={tmp_path}/cache"])
        train(cfg)
        with open(tmp_path / name / "metrics.csv") as f:
            return [float(r["text_cache/hit_rate"]) for r in csv.DictReader(f) if r.get("text_cache/hit_rate")]

    first, second = run("first"), run("second")
    assert first and max(first) < 0.5  # new captions are computed (a few repeat across families)
    assert second and min(second) == 1.0  # the same seed draws the same captions: all cached


def test_a_fresh_row_is_a_float32_cpu_tensor_like_a_read_one(tmp_path):
    # On a GPU, rows read from disk (CPU) and rows just computed (GPU, bfloat16 under bf16-mixed) were joined in
    # one torch.cat and training failed (found on an H200, 2026-12-04): fresh rows now come back as read ones do.
    cache = PrefixCache(str(tmp_path), "space", 1.0, "float16")
    row = torch.randn(5, 8, dtype=torch.bfloat16)
    fresh = cache.round(row)
    assert fresh.dtype == torch.float32 and fresh.device.type == "cpu"
    cache.put([b"k"], [fresh])
    found, missing = cache.get([b"k"], 8)
    assert missing == [] and torch.equal(found[0], fresh)  # bitwise what a later step reads
    assert torch.equal(fresh, row.to(torch.float16).float())
