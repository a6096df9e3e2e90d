"""The open_clip export: the folder `open_clip.create_model_and_transforms("local-dir:OUT")` builds a model from
(open_clip_config.json, open_clip_model.safetensors, the tokenizer's files), for what open_clip can hold: a stock timm
image tower at its own size with its own stem and pooling, and a BERT-family sentence-transformers text tower with mean
pooling. Anything else is refused with one line before a file is written."""

from __future__ import annotations

import json
import math
import os

import torch

from lit_compclip.errors import ConfigError, first_line
from lit_compclip.towers.sentence_transformers import BUNDLED, SentenceTransformerTower, resolve_model_path

OPTIONS = {"hf_model_name": "where open_clip reads the text tower's architecture (config.json only): default the "
                            "tower's own model folder, found offline here; a hub id (sentence-transformers/"
                            "all-MiniLM-L6-v2) to publish"}
# Measured on vit_tiny_patch16_224 at 224 px + MiniLM, three seeds, relative per row: image rows differ by 0 (the
# same timm trunk, the same torchvision ops), text rows by at most 1.2e-6 (open_clip pads every caption to the context
# length: float32 rounding of longer sums). 1e-5 leaves room for another CPU's summation order and stays far below any
# real difference (dropout left on: 0.2; another pooling or a caption cleaned otherwise: 0.1 and more).
TOLERANCE = 1e-5

CONFIG = "open_clip_config.json"  # the names open_clip's factory looks for in a local-dir: or hf-hub: folder
WEIGHTS = "open_clip_model.safetensors"
PREFIX = "open_clip export: "
TOKENIZER_NOTE = ("open_clip's tokenizer cleans each caption before tokenizing it (ftfy.fix_text, HTML entities "
                  "unescaped twice, runs of whitespace collapsed): a caption holding an HTML entity (`&amp;`), curly "
                  "quotes, ligatures or mojibake is encoded as its cleaned text, where this project's tokenizer reads "
                  "it as written; every other caption gives the same embedding.")


def _plain_attributes(module: torch.nn.Module) -> dict[str, object]:
    """A module's sizes and switches (numbers, strings, tuples of them): what its forward computes with beyond its
    weights (a ViT attention's num_heads, a patch embedding's img_size)."""
    skip = {"training", "grad_checkpointing"}  # how it runs, not what it computes
    plain = (bool, int, float, str, tuple, type(None))
    return {k: v for k, v in vars(module).items()
            if not k.startswith("_") and k not in skip and isinstance(v, plain)}


def _stock_trunk(name: str) -> torch.nn.Module:
    """timm's own `name` with no size overrides, as open_clip's TimmModel builds it (without memory where timm can)."""
    import timm

    try:
        with torch.device("meta"):
            return timm.create_model(name, num_classes=0)
    except Exception:  # a model whose constructor reads tensor values: built for real
        return timm.create_model(name, num_classes=0)


def timm_name(image) -> str:
    return image.trunk.pretrained_cfg["architecture"]  # the name without its weights' tag


def _size_difference(trunk, stock: torch.nn.Module) -> str | None:
    """Where `trunk` differs from timm's stock model of its name (a module, a size, a head count), or None."""
    theirs_by_path, ours_by_path = dict(stock.named_modules()), dict(trunk.named_modules())
    for path, module in ours_by_path.items():
        theirs, where = theirs_by_path.get(path), path or "the trunk"
        if theirs is None or type(theirs) is not type(module):
            return f"{where} is {type(module).__name__}, timm's {type(theirs).__name__ if theirs else 'nothing'}"
        a, b = _plain_attributes(module), _plain_attributes(theirs)
        diff = next((k for k in sorted(a.keys() | b.keys()) if a.get(k) != b.get(k)), None)
        if diff is not None:
            return f"{where}.{diff} = {a.get(diff)!r}, timm's {b.get(diff)!r}"
    missing = next((p for p in theirs_by_path if p not in ours_by_path), None)
    return f"it lacks timm's {missing}" if missing is not None else None


def _check_image(image) -> None:
    name, lacks = timm_name(image), []
    stock = _stock_trunk(name)
    stem = type(getattr(image.trunk, "patch_embed", None)).__name__
    if stem == "HybridEmbed" and type(getattr(stock, "patch_embed", None)).__name__ != stem:
        lacks.append(f"the conv stem (model.image.stem=conv: it builds {name} with timm's own patchify stem)")
    if image.pool != "model":
        lacks.append(f"{image.pool} pooling (model.image.pool={image.pool}: it pools the tokens {name}'s own way "
                     f"before the projection)")
    if lacks:
        raise ConfigError(f"{PREFIX}open_clip's timm image tower cannot hold {' nor '.join(lacks)}; export a run "
                          f"with model.image.stem=patch and model.image.pool=model")
    diff = _size_difference(image.trunk, stock)
    if diff is not None:
        raise ConfigError(f"{PREFIX}open_clip's timm image tower builds {name} at timm's own size, with no overrides, "
                          f"and this one differs ({diff}); export a run whose model.image sizes (img_size, "
                          f"patch_size, depth, width, heads) are {name}'s own or null")


def _check_text(text) -> None:
    from open_clip.hf_configs import arch_dict

    kind = type(text).__name__
    if kind == "ScratchTextTower":
        raise ConfigError(f"{PREFIX}open_clip cannot hold the scratch text tower (model.text.tower=scratch): its own "
                          f"text transformer has CLIP's tokenizer and layout; open_clip holds a sentence-transformers "
                          f"encoder (tower=sentence_transformers, e.g. all-MiniLM-L6-v2)")
    if not isinstance(text, SentenceTransformerTower):
        raise ConfigError(f"{PREFIX}open_clip's Hugging Face text tower is exported from a sentence-transformers "
                          f"encoder with mean pooling (model.text.tower=sentence_transformers), not from a {kind}")
    config = text.lm.config
    if text.causal or getattr(config, "is_decoder", False):
        raise ConfigError(f"{PREFIX}open_clip's Hugging Face text tower cannot hold a decoder language model "
                          f"({text.model_name!r}, {config.model_type}): it runs an encoder over the whole caption and "
                          f"mean-pools it")
    if config.model_type not in arch_dict or getattr(config, "is_encoder_decoder", False):
        known = ", ".join(sorted(k for k in arch_dict if k not in ("mt5", "m2m_100")))
        raise ConfigError(f"{PREFIX}open_clip's Hugging Face text tower knows the encoder types {known} "
                          f"(open_clip.hf_configs), not {config.model_type!r} ({text.model_name!r})")
    names = [type(m).__name__ for m in text.st]
    mode = getattr(text.st[1], "pooling_mode", None) if len(names) > 1 else None
    if names[:2] != ["Transformer", "Pooling"] or mode not in ("mean", ("mean",), ["mean"]):
        raise ConfigError(f"{PREFIX}open_clip's Hugging Face text tower mean-pools the encoder's tokens; "
                          f"{text.model_name!r} pools with {mode or names[1:2]!r}")
    extra = [n for n in names[2:] if n != "Normalize"]  # Normalize only rescales a row: our final L2 norm undoes it
    if extra:
        raise ConfigError(f"{PREFIX}open_clip's Hugging Face text tower has a mean pooling and one bias-free "
                          f"projection, nothing between them: {text.model_name!r} adds {', '.join(extra)}")
    pad = text.st.tokenizer.pad_token_id
    if pad is None or pad != config.pad_token_id:
        raise ConfigError(f"{PREFIX}open_clip masks the padding by the model config's pad_token_id "
                          f"({config.pad_token_id}), but {text.model_name!r}'s tokenizer pads with {pad}")


# ---- the text tower's Hugging Face name ----------------------------------------------------------------------

ARCHITECTURE_KEYS = ("model_type", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
                     "vocab_size", "max_position_embeddings", "type_vocab_size", "hidden_act", "layer_norm_eps",
                     "pad_token_id", "position_embedding_type")


def _local_config(name: str):
    """`name`'s transformers config if it is a folder or in the Hugging Face cache; None if only the hub has it."""
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(name, local_files_only=True)
    except Exception as e:
        if os.path.isdir(name) or os.path.isabs(name) or name.startswith("."):
            raise ConfigError(f"{PREFIX}hf_model_name {name!r} is not a transformers model folder "
                              f"({type(e).__name__}: {first_line(e, 120)})") from None
        return None


def hf_model_name(text, options: dict) -> tuple[str, bool]:
    """(the name open_clip_config.json gives open_clip, whether it resolves here); a resolvable name must hold the
    tower's own architecture."""
    path = resolve_model_path(text.model_name)  # the default: the tower's own folder (or its cached hub name)
    name = str(options.get("hf_model_name") or (os.path.abspath(path) if os.path.isdir(path) else path))
    config = _local_config(name)
    if config is None:
        return name, False
    own = text.lm.config
    diff = next((k for k in ARCHITECTURE_KEYS if getattr(config, k, None) != getattr(own, k, None)), None)
    if diff is not None:
        raise ConfigError(f"{PREFIX}hf_model_name {name!r} is not this text tower's architecture ({diff}: "
                          f"{getattr(config, diff, None)!r}, the tower's {getattr(own, diff, None)!r})")
    return name, True


# ---- image preprocessing -------------------------------------------------------------------------------------

def _sample_images():
    """A few images of the sizes and shapes preprocessing treats differently (square, wide, tall, tiny)."""
    from PIL import Image

    g = torch.Generator().manual_seed(0)
    return [Image.fromarray(torch.randint(0, 256, (h, w, 3), generator=g, dtype=torch.uint8).numpy())
            for h, w in ((224, 224), (200, 300), (410, 97), (23, 17))]


def _short(values) -> list[float]:
    """float32 values as the shortest decimals that are the same float32 (0.485, not 0.48500001430511475)."""
    v = torch.as_tensor(values, dtype=torch.float32)
    return [next(float(f"{x:.{d}g}") for d in range(4, 10) if torch.tensor(float(f"{x:.{d}g}")).float() == x)
            for x in v.tolist()]


def preprocess_cfg(transform) -> tuple[dict, float]:
    """(open_clip's preprocess_cfg closest to our eval transform, the largest per-pixel difference between the two
    on a few images: 0 when open_clip expresses it exactly). Ours is timm's eval transform at crop_pct 1: resize
    the shorter side, centre crop, normalise, which open_clip's resize_mode 'shortest' is for square sizes."""
    from open_clip.transform import PreprocessCfg, image_transform_v2

    steps = {type(t).__name__: t for t in getattr(transform, "transforms", [])}
    crop, norm = steps.get("CenterCrop"), steps.get("Normalize")
    resize = steps.get("Resize") or steps.get("ResizeKeepRatio")
    if crop is None or norm is None or resize is None:
        raise ConfigError(f"{PREFIX}the image transform ({', '.join(steps)}) is not a resize, centre crop and "
                          f"normalisation, which open_clip's preprocessing is")
    size = tuple(int(s) for s in crop.size)
    mode = getattr(resize, "interpolation", "bicubic")
    interpolation = getattr(mode, "value", str(mode))
    if interpolation not in ("bicubic", "bilinear"):
        raise ConfigError(f"{PREFIX}open_clip's preprocessing resizes bicubic or bilinear, not {interpolation!r} "
                          f"(the timm model's own interpolation)")
    cfg = {"size": size[0] if size[0] == size[1] else list(size), "mode": "RGB", "mean": _short(norm.mean),
           "std": _short(norm.std), "interpolation": interpolation, "resize_mode": "shortest"}
    theirs = image_transform_v2(PreprocessCfg(**cfg), is_train=False)
    diff = max(float((transform(im) - theirs(im)).abs().max()) for im in _sample_images())
    return cfg, diff


# ---- the format ----------------------------------------------------------------------------------------------

def check(model, options: dict) -> None:
    try:
        import open_clip  # noqa: F401  (the export is checked by loading it with open_clip)
    except ImportError:
        raise ConfigError("the open_clip format needs open_clip: pip install 'lit_compclip[export]'") from None
    _check_image(model.image)
    _check_text(model.text)
    preprocess_cfg(model.transform)
    hf_model_name(model.text, options)


def open_clip_config(model, options: dict) -> tuple[dict, list[str]]:
    """(open_clip_config.json's contents, the model card's notes)."""
    text, image = model.text, model.image
    (name, resolves), (pp, diff) = hf_model_name(text, options), preprocess_cfg(model.transform)
    size = pp["size"]
    clean = "lower" if getattr(text.st[0], "do_lower_case", False) else "whitespace"  # what sentence-transformers does
    model_cfg = {
        "embed_dim": int(image.proj.out_features),
        # timm_pool "": the timm model's own pooling (a ViT's class token); then one bias-free linear projection
        "vision_cfg": {"timm_model_name": timm_name(image), "timm_model_pretrained": False, "timm_pool": "",
                       "timm_proj": "linear", "timm_proj_bias": False, "timm_drop": 0.0, "image_size": size},
        "text_cfg": {"hf_model_name": name, "hf_tokenizer_name": name, "hf_model_pretrained": False,
                     "hf_proj_type": "linear", "hf_pooler_type": "mean_pooler", "context_length": int(text.max_seq_len),
                     "tokenizer_kwargs": {"clean": clean}},
        "custom_text": True,
    }
    notes = [TOKENIZER_NOTE]
    if diff > 0:
        notes.append(f"open_clip's preprocessing (resize_mode 'shortest', {pp['interpolation']}, size {size}) is the "
                     f"closest it has to this model's eval transform, not the same: up to {diff:.3g} apart per "
                     f"normalised pixel on the export's test images.")
    if resolves and os.path.isdir(name):
        hub = "sentence-transformers/all-MiniLM-L6-v2" if text.model_name in BUNDLED else "the model's hub id"
        notes.append(f"open_clip_config.json names the text tower's architecture by the local folder {name!r} "
                     f"(open_clip reads its config.json only): to use this folder elsewhere, set "
                     f"model_cfg.text_cfg.hf_model_name and hf_tokenizer_name to {hub} (or export with "
                     f"hf_model_name={hub}), or to this folder itself, which holds the same config.json.")
    elif not resolves:
        notes.append(f"open_clip reads the text tower's architecture from the hub model {name!r}; it was not "
                     f"available where this was exported, so the export was checked with the same architecture "
                     f"from this folder's config.json.")
    if not getattr(getattr(image.trunk, "pos_embed", None), "requires_grad", True):
        notes.append("The image tower's position embedding is the fixed 2-D sin-cos table, stored as weights: "
                     "open_clip would train it if it fine-tuned this model.")
    return {"model_cfg": model_cfg, "preprocess_cfg": pp}, notes


def open_clip_state(model) -> dict[str, torch.Tensor]:
    """Our weights under open_clip's names (CustomTextCLIP with a TimmModel and an HFTextEncoder), in float32."""
    state = {f"visual.trunk.{k}": v for k, v in model.image.trunk.state_dict().items()}
    state["visual.head.proj.weight"] = model.image.proj.weight
    lm = model.text.lm
    pooler = "pooler." if getattr(lm, "pooler", None) is not None else None  # BERT's own pooler: mean pooling skips it
    state.update({f"text.transformer.{k}": v for k, v in lm.state_dict().items()
                  if not (pooler and k.startswith(pooler))})
    state["text.proj.weight"] = model.text.proj.weight
    state["logit_scale"] = torch.tensor(math.log(float(model.logit_scale.detach())))  # exp'd by open_clip, unclamped
    return {k: v.detach().to("cpu", torch.float32).contiguous().clone() for k, v in state.items()}


def write(model, folder: str, info: dict, options: dict) -> list[str]:
    from safetensors.torch import save_file

    config, notes = open_clip_config(model, options)
    save_file(open_clip_state(model), os.path.join(folder, WEIGHTS))
    model.text.st.tokenizer.save_pretrained(folder)
    model.text.lm.config.to_json_file(os.path.join(folder, "config.json"))  # the architecture, for hf_model_name
    with open(os.path.join(folder, CONFIG), "w") as f:
        json.dump(config, f, indent=2)
    return notes


class OpenClipFolder:
    """A folder as open_clip builds it (encoders.open_clip: create_model_and_transforms("local-dir:" + folder), its
    preprocess and tokenizer), under the export framework's method names."""

    def __init__(self, folder: str):
        from lit_compclip.encoders.open_clip import OpenClipEncoder

        self.encoder = OpenClipEncoder("local-dir:" + folder)

    def encode_images(self, images) -> torch.Tensor:
        return self.encoder.encode_image(images)

    def encode_texts(self, texts) -> torch.Tensor:
        return self.encoder.encode_text(texts)


def load_back(folder: str) -> OpenClipFolder:
    return OpenClipFolder(folder)
