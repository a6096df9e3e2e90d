"""Randomly initialised decoder language models of real architectures, saved as the folders users point
`model.text.model` at: a transformers folder (for `tower: transformers`) or a sentence-transformers folder (a decoder
embedding model with its pooling). Nothing is downloaded: the tokenizer is the bundled MiniLM's WordPiece vocabulary
dressed as the family's (its BOS/EOS/padding conventions), the weights are random.

They stand in for Qwen3-Embedding, gte-Qwen2, Llama or Gemma-2 where the weights cannot be fetched: in the tests, in
`make bench`'s decoder rows and in the paper configuration's dry run (experiments/paper_gemma2.yaml).
"""

from __future__ import annotations

import functools
import os

FAMILIES = ("qwen2", "qwen3", "llama", "mistral", "gemma2", "gemma3")
# the family's tokenizer conventions: whether it starts captions with BOS (Qwen tokenizers add nothing)
ADDS_BOS = {"qwen2": False, "qwen3": False, "llama": True, "mistral": True, "gemma2": True, "gemma3": True}


def random_config(family: str, layers: int = 4, width: int = 64, heads: int = 4, kv_heads: int = 2,
                  vocab_size: int = 30522, attn_implementation: str = "sdpa", intermediate_size: int | None = None,
                  head_dim: int | None = None):
    """`intermediate_size` (default 4 x width) and `head_dim` (default width // heads) as a real model sets them,
    e.g. Gemma-2-2B's 9216 and 256 at width 2304."""
    import transformers as t

    if family not in FAMILIES:
        raise ValueError(f"unknown decoder family {family!r}; choose one of {', '.join(FAMILIES)}")
    common = dict(vocab_size=vocab_size, hidden_size=width, intermediate_size=intermediate_size or width * 4,
                  num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
                  max_position_embeddings=512, pad_token_id=0, bos_token_id=101, eos_token_id=102,
                  tie_word_embeddings=True)
    given = {"head_dim": head_dim} if head_dim else {}  # qwen2, llama: set only when given (else width // heads)
    head_dim = head_dim or width // heads
    if family == "qwen2":
        config = t.Qwen2Config(**common, **given)
    elif family == "qwen3":
        config = t.Qwen3Config(head_dim=head_dim, **common)
    elif family == "llama":
        config = t.LlamaConfig(**common, **given)
    elif family == "mistral":
        config = t.MistralConfig(head_dim=head_dim, sliding_window=None, **common)
    elif family == "gemma2":  # alternating sliding-window and global layers, logit soft-capping: eager attention
        config = t.Gemma2Config(head_dim=head_dim, query_pre_attn_scalar=head_dim, sliding_window=16, **common)
        attn_implementation = "eager"
    else:
        config = t.Gemma3TextConfig(head_dim=head_dim, query_pre_attn_scalar=head_dim, sliding_window=16, **common)
    config._attn_implementation = attn_implementation
    return config


@functools.lru_cache(maxsize=1)
def _byte_level_bpe_json() -> str:
    """A byte-level BPE (Qwen's kind of tokenizer) learnt from the bundled MiniLM vocabulary's words, in about a
    second: transformers reloads a Qwen2 folder's tokenizer as its own byte-level class, which a WordPiece
    vocabulary does not survive (captions came back split into characters)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    from lit_compclip.towers.sentence_transformers import resolve_model_path

    with open(os.path.join(resolve_model_path("all-MiniLM-L6-v2"), "vocab.txt"), encoding="utf-8") as f:
        words = [w.strip() for w in f if w.strip().isalpha()]
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=12000, special_tokens=list(SPECIAL), show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    bpe.train_from_iterator((" ".join(words[i:i + 20]) for i in range(0, len(words), 20)), trainer)
    return bpe.to_str()


SPECIAL = ("[PAD]", "[UNK]", "[CLS]", "[SEP]")  # padding, unknown, BOS, EOS


def family_tokenizer(family: str, padding_side: str = "right"):
    """A tokenizer with the family's conventions: Qwen's byte-level BPE (learnt here) adding nothing, the others
    the bundled MiniLM WordPiece vocabulary with [CLS] as BOS (added where the family adds one); [SEP] is EOS
    (never added: decoders leave it to the caller), [PAD] the padding."""
    from tokenizers import Tokenizer, processors
    from transformers import PreTrainedTokenizerFast

    from lit_compclip.towers.sentence_transformers import resolve_model_path

    if family.startswith("qwen"):
        raw = Tokenizer.from_str(_byte_level_bpe_json())
    else:
        raw = Tokenizer.from_file(os.path.join(resolve_model_path("all-MiniLM-L6-v2"), "tokenizer.json"))
    raw.no_padding()
    raw.no_truncation()
    if ADDS_BOS[family]:
        raw.post_processor = processors.TemplateProcessing(single="[CLS] $A", pair="[CLS] $A $B",
                                                           special_tokens=[("[CLS]", raw.token_to_id("[CLS]"))])
    else:
        raw.post_processor = processors.TemplateProcessing(single="$A", pair="$A $B", special_tokens=[])
    return PreTrainedTokenizerFast(tokenizer_object=raw, bos_token="[CLS]", eos_token="[SEP]", pad_token="[PAD]",
                                   unk_token="[UNK]", padding_side=padding_side, model_max_length=512)


def save_random_lm(folder: str, family: str = "qwen2", *, sentence_transformers: bool = False,
                   pooling: str = "lasttoken", padding_side: str = "right", seed: int = 0, **sizes) -> str:
    """A random `family` model in `folder` (created); `sentence_transformers=True` adds the pipeline files of a
    decoder embedding model with `pooling` ("lasttoken" as Qwen3-Embedding, "mean" as some others)."""
    import torch
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    config = random_config(family, **sizes)
    tokenizer = family_tokenizer(family, padding_side)
    config.pad_token_id, config.bos_token_id, config.eos_token_id = (
        tokenizer.pad_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id)
    lm = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    if not sentence_transformers:
        lm.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        _check_reload(folder, tokenizer)
        return folder
    from sentence_transformers import SentenceTransformer, models

    inner = os.path.join(folder, "_lm")
    lm.save_pretrained(inner)
    tokenizer.save_pretrained(inner)
    _check_reload(inner, tokenizer)
    word = models.Transformer(inner, max_seq_length=64)
    st = SentenceTransformer(modules=[word, models.Pooling(config.hidden_size, pooling_mode=pooling)], device="cpu")
    st.save(folder)
    import shutil

    shutil.rmtree(inner)
    return folder


def _check_reload(folder: str, tokenizer) -> None:
    """The saved tokenizer must read a caption as the one it was saved from (transformers may substitute a
    family's own tokenizer class on loading)."""
    from transformers import AutoTokenizer

    text = "A red circle to the left of a blue square"
    got = AutoTokenizer.from_pretrained(folder)(text)["input_ids"]
    if got != tokenizer(text)["input_ids"]:
        raise RuntimeError(f"the tokenizer saved in {folder} reloads as {type(AutoTokenizer.from_pretrained(folder))}"
                           f" and reads a caption otherwise")
