"""Randomly initialised decoder language models of real architectures, saved as the folders users point
`model.text.model` at: a transformers folder (for `tower: transformers`) or a sentence-transformers folder (a decoder
embedding model with its pooling). Nothing is downloaded: the tokenizer is the bundled MiniLM's WordPiece vocabulary
dressed as the family's (its BOS/EOS/padding conventions), the weights are random.

They stand in for Qwen3-Embedding, gte-Qwen2, Llama or Gemma-2 where the weights cannot be fetched: in the tests, in
`make bench`'s decoder rows and in the paper configuration's dry run (experiments/paper_gemma2.yaml).
"""

from __future__ import annotations

import os

FAMILIES = ("qwen2", "qwen3", "llama", "mistral", "gemma2", "gemma3")
# the family's tokenizer conventions: whether it starts captions with BOS (Qwen tokenizers add nothing)
ADDS_BOS = {"qwen2": False, "qwen3": False, "llama": True, "mistral": True, "gemma2": True, "gemma3": True}


def random_config(family: str, layers: int = 4, width: int = 64, heads: int = 4, kv_heads: int = 2,
                  vocab_size: int = 30522, attn_implementation: str = "sdpa"):
    import transformers as t

    if family not in FAMILIES:
        raise ValueError(f"unknown decoder family {family!r}; choose one of {', '.join(FAMILIES)}")
    common = dict(vocab_size=vocab_size, hidden_size=width, intermediate_size=width * 4, num_hidden_layers=layers,
                  num_attention_heads=heads, num_key_value_heads=kv_heads, max_position_embeddings=512,
                  pad_token_id=0, bos_token_id=101, eos_token_id=102, tie_word_embeddings=True)
    head_dim = width // heads
    if family == "qwen2":
        config = t.Qwen2Config(**common)
    elif family == "qwen3":
        config = t.Qwen3Config(head_dim=head_dim, **common)
    elif family == "llama":
        config = t.LlamaConfig(**common)
    elif family == "mistral":
        config = t.MistralConfig(head_dim=head_dim, sliding_window=None, **common)
    elif family == "gemma2":  # alternating sliding-window and global layers, logit soft-capping: eager attention
        config = t.Gemma2Config(head_dim=head_dim, query_pre_attn_scalar=head_dim, sliding_window=16, **common)
        attn_implementation = "eager"
    else:
        config = t.Gemma3TextConfig(head_dim=head_dim, query_pre_attn_scalar=head_dim, sliding_window=16, **common)
    config._attn_implementation = attn_implementation
    return config


def family_tokenizer(family: str, padding_side: str = "right"):
    """The bundled MiniLM vocabulary with the family's conventions: [CLS] as BOS (added where the family adds
    one), [SEP] as EOS (never added: decoders leave it to the caller), [PAD] as padding, lower-cased WordPiece."""
    from tokenizers import Tokenizer, processors
    from transformers import PreTrainedTokenizerFast

    from lit_compclip.towers.sentence_transformers import resolve_model_path

    raw = Tokenizer.from_file(os.path.join(resolve_model_path("all-MiniLM-L6-v2"), "tokenizer.json"))
    raw.no_padding()
    raw.no_truncation()
    if ADDS_BOS[family]:
        raw.post_processor = processors.TemplateProcessing(single="[CLS] $A", pair="[CLS] $A $B",
                                                           special_tokens=[("[CLS]", 101)])
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
    lm = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    if not sentence_transformers:
        lm.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        return folder
    from sentence_transformers import SentenceTransformer, models

    inner = os.path.join(folder, "_lm")
    lm.save_pretrained(inner)
    tokenizer.save_pretrained(inner)
    word = models.Transformer(inner, max_seq_length=64)
    st = SentenceTransformer(modules=[word, models.Pooling(config.hidden_size, pooling_mode=pooling)], device="cpu")
    st.save(folder)
    import shutil

    shutil.rmtree(inner)
    return folder
