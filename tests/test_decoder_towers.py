"""Decoder language models as text towers (issue 16): tiny random Qwen2, Llama and Gemma-2 models saved in the test
as sentence-transformers folders and as plain transformers folders, checked for pooling, which layers train, what
the bidirectional tail sees, and that the frozen-prefix cache gives the outputs and gradients of recomputing."""

import contextlib
import io
import os
import re

import pytest
import torch

from helpers import DEFAULT, assert_close_by_norm, assert_same_tensors, world_overrides

from lit_compclip.cli import main
from lit_compclip.towers import build_text_tower, encode_by_length

FAMILIES = ["qwen2", "llama", "gemma2"]
KINDS = ["sentence_transformers", "transformers"]
CAPTIONS = ["a red circle", "a large blue square to the left of a small green star",
            "a white cross above a purple diamond and a yellow triangle", "shapes"]
RTOL = 1e-5  # float32 throughout: a wrong mask or position moves outputs by far more


def build(random_lm, family, kind, side="right", **options):
    folder = random_lm(family, sentence_transformers=kind == "sentence_transformers", padding_side=side)
    options = {"tower": kind, "model": folder, "unfreeze_layers": 2, "max_seq_len": 32, **options}
    if kind == "transformers":
        options.setdefault("pooling", "eos")
    torch.manual_seed(0)  # the projection head
    return build_text_tower(options, embed_dim=16)


def layer_index(name):
    found = re.search(r"layers\.(\d+)\.", name)
    return int(found.group(1)) if found else None


def first_real(mask_row):
    return int(torch.nonzero(mask_row)[0])


# -- forward and pooling ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("side", ["right", "left"])
@pytest.mark.parametrize("family", FAMILIES)
def test_sentence_transformers_decoder_pools_at_the_last_real_token(random_lm, family, side):
    tower = build(random_lm, family, "sentence_transformers", side).eval()
    tokens = tower.tokenize(CAPTIONS)
    mask = tokens["attention_mask"]
    assert bool((mask[:, -1] if side == "right" else mask[:, 0]).eq(0).any())  # padded on the folder's side
    with torch.no_grad():
        states = tower._token_states(tokens)
        pooled = tower._run(tokens)
        out = tower(tokens)
    for i, row in enumerate(mask):
        last = max(j for j in range(len(row)) if row[j])
        assert_close_by_norm(pooled[i], states[i, last], 1e-6, f"row {i}")
    assert_close_by_norm(out, tower.proj(pooled), 1e-6)
    # each caption alone (no padding) gives the same embedding: positions and masks follow the real tokens
    for i, caption in enumerate(CAPTIONS):
        with torch.no_grad():
            alone = tower(tower.tokenize([caption]))[0]
        assert_close_by_norm(out[i], alone, RTOL, caption)


@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("pooling", ["mean", "eos"])
@pytest.mark.parametrize("family", FAMILIES)
def test_left_padded_transformers_tower_gives_each_caption_its_own_embedding(random_lm, family, pooling,
                                                                             bidirectional):
    """A plain transformers folder padded on the left: a caption's embedding in a padded batch is its embedding
    alone (positions counted over its real tokens, padding masked for the causal and the bidirectional blocks)."""
    tower = build(random_lm, family, "transformers", "left", pooling=pooling, bidirectional=bidirectional).eval()
    tokens = tower.tokenize(CAPTIONS)
    assert bool(tokens["attention_mask"][:, 0].eq(0).any()) and bool(tokens["attention_mask"][:, -1].all())
    with torch.no_grad():
        batch = tower(tokens)
        for i, caption in enumerate(CAPTIONS):
            assert_close_by_norm(batch[i], tower(tower.tokenize([caption]))[0], RTOL, caption)


@pytest.mark.parametrize("pooling", ["mean", "last", "eos"])
@pytest.mark.parametrize("family", FAMILIES)
def test_transformers_tower_pools_as_asked(random_lm, family, pooling):
    tower = build(random_lm, family, "transformers", pooling=pooling).eval()
    tokens = tower.tokenize(CAPTIONS)
    ids, mask = tokens["input_ids"], tokens["attention_mask"]
    eos = tower.tokenizer.eos_token_id
    with torch.no_grad():
        states = tower.lm(input_ids=ids, attention_mask=mask).last_hidden_state  # right padding: default positions
        pooled = tower._run(tokens)
    for i, row in enumerate(mask):
        n = int(row.sum())
        assert (ids[i, n - 1] == eos) == (pooling == "eos")  # EOS appended only for eos pooling (never truncated)
        want = states[i, :n].mean(0) if pooling == "mean" else states[i, n - 1]
        assert_close_by_norm(pooled[i], want, 1e-5, f"row {i}")
    long = tower.tokenize(["word " * 80])["input_ids"][0]
    assert len(long) == 32 and (long[-1] == eos) == (pooling == "eos")


# -- which layers train -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("family", FAMILIES)
def test_only_the_last_n_layers_and_the_head_receive_gradients(random_lm, family, kind):
    tower = build(random_lm, family, kind, unfreeze_layers=2).train()
    tower(tower.tokenize(CAPTIONS)).square().sum().backward()
    n_layers = len(tower.layers)
    graded = {name for name, p in tower.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert "proj.weight" in graded
    layers = {layer_index(name) for name in graded if name != "proj.weight"}
    assert layers == {n_layers - 2, n_layers - 1}, sorted(graded)
    trainable = {name for name, p in tower.named_parameters() if p.requires_grad}
    assert all(name == "proj.weight" or layer_index(name) in layers for name in trainable)


# -- the bidirectional tail ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("family", FAMILIES)
def test_bidirectional_tail_sees_the_last_token_and_the_prefix_never_does(random_lm, family, kind, bidirectional):
    tower = build(random_lm, family, kind, bidirectional=bidirectional).eval()
    tokens = tower.tokenize(CAPTIONS[1:2])  # one caption, no padding
    changed = {**tokens, "input_ids": tokens["input_ids"].clone()}
    changed["input_ids"][0, -1] = 2003  # another word in the last position (an appended EOS, where there is one)
    with torch.no_grad():
        entry = [tower._prefix(t)[0, 0] for t in (tokens, changed)]
        after = [tower._token_states(t)[0, 0] for t in (tokens, changed)]
    assert torch.equal(entry[0], entry[1]) or (entry[0] - entry[1]).norm() <= 1e-6 * entry[0].norm()
    moved = float((after[0] - after[1]).norm() / after[0].norm())
    if bidirectional:
        assert moved > 1e-3
    else:
        assert moved <= 1e-6


@pytest.mark.parametrize("side", ["right", "left"])
def test_bidirectional_tail_never_attends_to_padding(random_lm, side):
    tower = build(random_lm, "qwen2", "sentence_transformers", side, bidirectional=True).eval()
    with torch.no_grad():
        batch = tower(tower.tokenize(CAPTIONS))
        alone = torch.cat([tower(tower.tokenize([c])) for c in CAPTIONS])
    assert_close_by_norm(batch, alone, RTOL)


def test_a_tail_that_stays_causal_is_refused_when_built(random_lm, monkeypatch):
    import transformers.masking_utils as masking

    def causal(config, inputs_embeds, attention_mask, **kwargs):  # what a version that ignored the option would do
        n = inputs_embeds.shape[1]
        return torch.ones(n, n, dtype=torch.bool).tril()[None, None].expand(len(inputs_embeds), 1, n, n)

    monkeypatch.setattr(masking, "create_bidirectional_mask", causal)
    with pytest.raises(ValueError, match="the trained blocks stayed causal") as e:
        build(random_lm, "qwen2", "transformers", bidirectional=True)
    assert "\n" not in str(e.value)


def test_bidirectional_on_an_encoder_is_refused():
    with pytest.raises(ValueError, match="already attend both ways"):
        build_text_tower({"tower": "sentence_transformers", "bidirectional": True}, embed_dim=8)


# -- the frozen-prefix cache --------------------------------------------------------------------------------------

def outputs_and_grads(tower, tokens):
    tower.zero_grad(set_to_none=True)
    out = tower(tokens)
    out.square().sum().backward()
    return out.detach(), {n: p.grad.clone() for n, p in tower.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("side", ["right", "left"])
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("family", FAMILIES)
def test_cache_gives_the_outputs_and_gradients_of_recomputing(random_lm, tmp_path, family, kind, side,
                                                              bidirectional):
    tower = build(random_lm, family, kind, side, bidirectional=bidirectional, cache_dir=str(tmp_path),
                  cache_dtype="float32").train()
    # two captions in both batches, at other rows and padded to another length: the longest caption sets the first
    # batch's, a short new one joins them in the second
    first = tower.tokenize([CAPTIONS[0], CAPTIONS[1], CAPTIONS[3]])
    second = tower.tokenize([CAPTIONS[3], "a red star", CAPTIONS[0]])
    assert first["input_ids"].shape[1] > second["input_ids"].shape[1] + 5
    options, tower.cache_options = tower.cache_options, None
    want = [outputs_and_grads(tower, t) for t in (first, second)]
    tower.cache_options = options
    got = [outputs_and_grads(tower, t) for t in (first, second)]  # three misses, then two hits and one miss
    assert tower.cache.hits == 2 and tower.cache.misses == 4
    for (out, grads), (want_out, want_grads) in zip(got, want):
        assert_close_by_norm(out, want_out, RTOL, "output")
        assert_same_tensors(grads, want_grads, RTOL, "gradient")
        assert {layer_index(n) for n in grads} == {len(tower.layers) - 2, len(tower.layers) - 1, None}


def test_length_groups_on_a_left_padded_decoder_equal_one_padded_call(random_lm):
    tower = build(random_lm, "qwen2", "sentence_transformers", "left").eval()
    tokens = tower.tokenize(CAPTIONS)
    with torch.no_grad():
        assert_close_by_norm(encode_by_length(tower, tokens, 2), tower(tokens), RTOL)


@pytest.mark.parametrize("cache", [False, True])
def test_gradient_checkpointing_changes_no_gradient(random_lm, tmp_path, cache):
    options = {"bidirectional": True, "cache_dtype": "float32"}
    folder = lambda name: str(tmp_path / name) if cache else None  # noqa: E731 (each tower a cache of its own)
    tokens = build(random_lm, "llama", "transformers").tokenize(CAPTIONS)
    plain = outputs_and_grads(build(random_lm, "llama", "transformers", cache_dir=folder("plain"), **options).train(),
                              tokens)
    checkpointed = build(random_lm, "llama", "transformers", grad_checkpointing=True, cache_dir=folder("checkpointed"),
                         **options).train()
    assert checkpointed.lm.is_gradient_checkpointing
    n = len(CAPTIONS)
    for attempt, counts in (("miss", (0, n)), ("hit", (n, n))):  # with the cache: (hits, misses) so far
        out, grads = outputs_and_grads(checkpointed, tokens)
        if cache:
            assert (checkpointed.cache.hits, checkpointed.cache.misses) == counts, attempt
        assert_close_by_norm(out, plain[0], RTOL, attempt)
        assert_same_tensors(grads, plain[1], RTOL, f"{attempt} gradient")


def test_frozen_layers_in_bfloat16_train_the_tail_in_float32(random_lm):
    tower = build(random_lm, "qwen2", "transformers", bidirectional=True, frozen_dtype="bfloat16").train()
    n = len(tower.layers)
    for name, p in tower.named_parameters():
        index = layer_index(name)
        trained = name == "proj.weight" or (index is not None and index >= n - 2) or name.startswith("lm.norm")
        assert p.dtype == (torch.float32 if trained else torch.bfloat16), name
    out = tower(tower.tokenize(CAPTIONS))
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
    out.sum().backward()
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in tower.parameters() if p.requires_grad)


# -- errors and the whole run -------------------------------------------------------------------------------------

@pytest.mark.parametrize("options, message", [
    ({"tower": "transformers", "model": "google/gemma-2-2b"}, "cannot load 'google/gemma-2-2b'.*nothing is downloaded"),
    ({"tower": "sentence_transformers", "model": "Qwen/Qwen3-Embedding-0.6B"}, "cannot load sentence-transformers"),
    ({"tower": "transformers", "pooling": "cls"}, "pooling='cls'"),
    ({"tower": "transformers", "frozen_dtype": "int8"}, "frozen_dtype='int8'"),
    ({"tower": "transformers", "padding_side": "middle"}, "padding_side='middle'"),
])
def test_bad_decoder_options_are_one_line(random_lm, options, message):
    options = {"model": random_lm("qwen2"), **options}
    with pytest.raises(ValueError, match=message) as e:
        build_text_tower(options, embed_dim=8)
    assert "\n" not in str(e.value)


def test_caching_with_every_layer_trained_is_turned_off_and_said(random_lm, tmp_path, caplog):
    tower = build(random_lm, "qwen2", "transformers", unfreeze_layers=4, cache_dir=str(tmp_path))
    assert tower.cache_options is None and "no frozen prefix to cache" in caplog.text


def test_fsdp_wraps_the_decoder_blocks(random_lm):
    from lit_compclip.config import load_config
    from lit_compclip.training.module import CompClip
    from lit_compclip.training.run import block_classes
    from omegaconf import OmegaConf

    cfg = load_config([DEFAULT], ["model.text.tower=transformers", f"model.text.model={random_lm('gemma2')}"])
    model = CompClip(OmegaConf.to_container(cfg.model), OmegaConf.to_container(cfg.optim), total_steps=1)
    assert "Gemma2DecoderLayer" in {c.__name__ for c in block_classes(model)}


def test_default_experiment_trains_with_a_decoder_folder_and_its_cache(random_lm, world, tmp_path):
    folder = random_lm("qwen2", sentence_transformers=True)
    run = tmp_path / "run"
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        code = main(["train", DEFAULT, *world_overrides(world), f"model.text.model={folder}", "trainer.max_steps=3",
                     f"cache_dir={tmp_path}/cache", f"run_dir={run}"])
    assert code == 0
    spaces = os.listdir(tmp_path / "cache" / "text")
    assert len(spaces) == 1 and spaces[0].startswith("layer2-")  # the default trains the last 2 of its 4 layers
    assert (run / "checkpoints" / "last.ckpt").exists()


def test_an_uncached_decoder_is_one_line_exit_2_and_no_run_folder(tmp_path, capsys):
    run = tmp_path / "run"
    code = main(["train", DEFAULT, "model.text.tower=transformers", "model.text.model=google/gemma-2-2b",
                 f"run_dir={run}", f"synth.out_dir={tmp_path}/world"])
    assert code == 2 and not run.exists() and not (tmp_path / "world").exists()
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "google/gemma-2-2b" in err
