"""open_clip models as probe encoders: `open_clip:ARCH@PRETRAINED`, PRETRAINED a pretrained tag or a local file, and
`open_clip:local-dir:FOLDER` (or `open_clip:FOLDER`), a folder in open_clip's hub layout (what `compclip export
--format open_clip` writes).

The weights are read weights-only by lit_compclip.checkpoints (or from safetensors) into a model open_clip builds
without any, so nothing in a checkpoint can run code (a folder's weights open_clip reads itself, weights-only too);
preprocessing, tokenizer and context length are open_clip's own for that architecture and tag, or that folder, in
fp32."""

from __future__ import annotations

import contextlib
import glob
import json
import logging
import os

import torch
import torch.nn.functional as F

from lit_compclip.errors import first_line
from lit_compclip.errors import ConfigError
from lit_compclip.registry import suggest


@contextlib.contextmanager
def _quiet():
    """open_clip logs on the root logger; its 'initialized randomly' warning is false here (we load the weights)."""
    logging.disable(logging.WARNING)
    try:
        yield
    finally:
        logging.disable(logging.NOTSET)


def read_weights(path: str) -> dict[str, torch.Tensor]:
    """A state_dict from a torch file (weights-only reader) or a .safetensors file, unwrapped to name -> tensor."""
    if str(path).endswith(".safetensors"):
        from safetensors.torch import load_file

        try:
            state = load_file(path, device="cpu")
        except Exception as e:
            raise ConfigError(f"open_clip weights {path!r} cannot be read ({type(e).__name__}: "
                              f"{first_line(e, 160)})") from None
    else:
        from lit_compclip.checkpoints import read_checkpoint_file

        state = read_checkpoint_file(path)
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]  # open_clip_train's checkpoints keep the weights under state_dict
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ConfigError(f"open_clip weights {path!r} hold no state_dict (a mapping of names to tensors)")
    if all(k.startswith("module.") for k in state):  # saved from a DDP-wrapped model
        state = {k.removeprefix("module."): v for k, v in state.items()}
    return state


def load_weights(model, state: dict[str, torch.Tensor], path: str) -> None:
    """Load `state` strictly, after the format fixes open_clip's own loader applies (old text layout, scalar logit
    scale, resized position embeddings)."""
    from open_clip.convert import convert_state_dict
    from open_clip.model import convert_to_custom_text_state_dict, resize_pos_embed, resize_text_pos_embed

    state = convert_state_dict(model, dict(state))
    if "positional_embedding" in state and not hasattr(model, "positional_embedding"):
        state = convert_to_custom_text_state_dict(state)
    for key in ("logit_scale", "logit_bias"):
        own = getattr(model, key, None)
        if key in state and own is not None and own.ndim != state[key].ndim:
            state[key] = state[key].reshape(own.shape)
    state.pop("text.transformer.embeddings.position_ids", None)
    resize_pos_embed(state, model)
    resize_text_pos_embed(state, model)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
        raise ConfigError(f"open_clip weights {path!r} do not fit {type(model).__name__}: "
                          f"{' '.join(lines[1:3])[:200] or lines[0][:200]}") from None


LOCAL_DIR = "local-dir:"  # open_clip's own prefix for a model folder
FOLDER_CONFIG = "open_clip_config.json"


def folder_target(target: str) -> str | None:
    """The folder a target names: `local-dir:PATH`, an existing folder, or a path (a slash before any '@'); else
    None (an ARCH@PRETRAINED)."""
    if target.startswith(LOCAL_DIR):
        return target[len(LOCAL_DIR):]
    if os.path.isdir(target) or ("/" in target.partition("@")[0] and not target.startswith("hf-hub:")):
        return target
    return None


def check_folder(folder: str) -> tuple[dict, str]:
    """(its open_clip_config.json, its weights file) of an open_clip model folder, or a one-line ConfigError."""
    if not folder or not os.path.isdir(folder):
        raise ConfigError(f"open_clip: folder {folder!r} not found")
    path = os.path.join(folder, FOLDER_CONFIG)
    if not os.path.isfile(path):
        raise ConfigError(f"open_clip: folder {folder!r} holds no {FOLDER_CONFIG}, so it is not an open_clip model "
                          f"folder (`compclip export RUN OUT --format open_clip` writes one)")
    try:
        with open(path) as f:
            config = json.load(f)
    except (OSError, ValueError) as e:
        raise ConfigError(f"open_clip: {path!r} cannot be read ({type(e).__name__}: {first_line(e, 120)})") from None
    if not isinstance(config, dict) or not isinstance(config.get("model_cfg"), dict):
        raise ConfigError(f"open_clip: {path!r} has no model_cfg")
    weights = sorted(w for ext in ("safetensors", "bin", "pth") for w in glob.glob(os.path.join(folder, f"*.{ext}")))
    if not weights:
        raise ConfigError(f"open_clip: folder {folder!r} holds no weights (open_clip_model.safetensors)")
    preferred = os.path.join(folder, "open_clip_model.safetensors")
    return config, preferred if preferred in weights else weights[0]


def _resolves(name: str) -> bool:
    """Whether transformers finds `name`'s config here (a folder, or the Hugging Face cache) without the hub."""
    from transformers import AutoConfig

    try:
        AutoConfig.from_pretrained(name, local_files_only=True)
    except Exception:
        return False
    return True


class OpenClipEncoder:
    """`ARCH@PRETRAINED`: ARCH one of open_clip.list_models(), PRETRAINED a tag of it (open_clip.list_pretrained,
    read from the local cache or downloaded by open_clip) or a state_dict file (torch.save(model.state_dict())).
    `local-dir:FOLDER` or `FOLDER`: a folder open_clip builds itself (create_model_and_transforms("local-dir:...")).
    """

    @classmethod
    def check(cls, target: str) -> tuple[str, str, str, dict]:
        """(arch, pretrained, weights file, the tag's config or {}); a tag's weights come from the cache (or are
        downloaded, where that is possible) here, before anything else. A folder: ("local-dir", folder, weights
        file, its open_clip_config.json)."""
        folder = folder_target(target)
        if folder is not None:
            config, weights = check_folder(folder)
            return "local-dir", folder, weights, config
        import open_clip

        arch, sep, pretrained = target.partition("@")
        if arch not in open_clip.list_models():
            raise ConfigError(f"open_clip: unknown architecture {arch!r}{suggest(arch, open_clip.list_models())}; "
                              f"see open_clip.list_models()")
        tags = open_clip.list_pretrained_tags_by_model(arch)
        if not sep or not pretrained:
            raise ConfigError(f"open_clip:{arch} needs @PRETRAINED: a tag ({tags or 'none for this architecture'}) "
                              f"or a state_dict file")
        tag_cfg = open_clip.get_pretrained_cfg(arch, pretrained)
        if tag_cfg:
            return arch, pretrained, cls._cached(tag_cfg, arch, pretrained), tag_cfg
        if os.path.isfile(pretrained):
            return arch, pretrained, pretrained, {}
        raise ConfigError(f"open_clip:{arch}@{pretrained}: not a pretrained tag of {arch} "
                          f"({tags or 'it has none'}) nor an existing file")

    def __init__(self, target: str, device: str = "cpu"):
        import open_clip

        arch, pretrained, path, tag_cfg = self.check(target)
        if arch == "local-dir":
            self._from_folder(pretrained, tag_cfg, path, device)
            return
        quick_gelu = bool(tag_cfg.get("quick_gelu", False))  # weights trained with QuickGELU need it to score right
        try:
            with _quiet():
                model, _, preprocess = open_clip.create_model_and_transforms(
                    arch, pretrained=None, precision="fp32", device="cpu", force_quick_gelu=quick_gelu,
                    pretrained_image=False, pretrained_text=False, image_mean=tag_cfg.get("mean"),
                    image_std=tag_cfg.get("std"), image_interpolation=tag_cfg.get("interpolation"),
                    image_resize_mode=tag_cfg.get("resize_mode"))
                tokenizer = open_clip.get_tokenizer(arch)
        except Exception as e:  # an HF text tower or tokenizer the cache lacks, ...
            raise ConfigError(f"open_clip:{arch} cannot be built ({type(e).__name__}: "
                              f"{first_line(e)})") from None
        load_weights(model, read_weights(path), path)
        self.model = model.to(device).eval()
        self.preprocess, self.tokenizer, self.device = preprocess, tokenizer, torch.device(device)
        self.context_length = int(getattr(tokenizer, "context_length", None) or model.context_length)
        self.info = {"model": arch, "pretrained": pretrained, "weights": os.path.abspath(path), "dtype": "float32",
                     "device": str(device), "quick_gelu": quick_gelu,
                     "image_preprocess": dict(getattr(model.visual, "preprocess_cfg", {})),
                     "image_transform": str(preprocess), "tokenizer": type(tokenizer).__name__,
                     "context_length": self.context_length, "open_clip": open_clip.__version__}

    def _from_folder(self, folder: str, config: dict, weights: str, device: str) -> None:
        """open_clip's own load of the folder: its config, weights, preprocess and tokenizer. A text tower whose
        hf_model_name only the hub has (a published export, offline here) is built from the folder's config.json,
        which the export writes: open_clip reads nothing else from that name."""
        import open_clip

        folder = os.path.abspath(folder)
        text_cfg = dict(config["model_cfg"].get("text_cfg") or {})
        name, kwargs = text_cfg.get("hf_model_name"), {}
        hf_config = name
        if name and not _resolves(name) and os.path.isfile(os.path.join(folder, "config.json")):
            kwargs["text_cfg"], hf_config = {**text_cfg, "hf_model_name": folder}, os.path.join(folder, "config.json")
        try:
            with _quiet():
                model, _, preprocess = open_clip.create_model_and_transforms(LOCAL_DIR + folder, precision="fp32",
                                                                             device="cpu", **kwargs)
                tokenizer = open_clip.get_tokenizer(LOCAL_DIR + folder)
        except Exception as e:  # a model open_clip cannot build, a text tower neither here nor in the cache, ...
            raise ConfigError(f"open_clip:{LOCAL_DIR}{folder} cannot be built ({type(e).__name__}: "
                              f"{first_line(e)})") from None
        self.model = model.to(device).eval()
        self.preprocess, self.tokenizer, self.device = preprocess, tokenizer, torch.device(device)
        self.context_length = int(getattr(tokenizer, "context_length", None) or model.context_length)
        self.info = {"model": LOCAL_DIR + folder, "pretrained": os.path.abspath(weights),
                     "weights": os.path.abspath(weights), "dtype": "float32", "device": str(device),
                     "hf_model_name": name, "hf_config": hf_config,
                     "image_preprocess": dict(getattr(model.visual, "preprocess_cfg", {})),
                     "image_transform": str(preprocess), "tokenizer": type(tokenizer).__name__,
                     "context_length": self.context_length, "open_clip": open_clip.__version__}

    @staticmethod
    def _cached(tag_cfg: dict, arch: str, tag: str) -> str:
        from open_clip.pretrained import download_pretrained

        try:
            with _quiet():
                path = download_pretrained(tag_cfg)
        except Exception as e:
            where = tag_cfg.get("hf_hub") or tag_cfg.get("url") or "?"
            raise ConfigError(f"open_clip:{arch}@{tag}: weights {where} are not in the local cache and cannot be "
                              f"downloaded here ({type(e).__name__}); fetch them once online or pass a file") from None
        if not path or not os.path.isfile(path):
            raise ConfigError(f"open_clip:{arch}@{tag}: no weights file found ({path!r})")
        return path

    @torch.no_grad()
    def encode_image(self, images) -> torch.Tensor:
        x = torch.stack([self.preprocess(im.convert("RGB")) for im in images]).to(self.device)  # (N, 3, H, W)
        return F.normalize(self.model.encode_image(x).float(), dim=-1).cpu()

    @torch.no_grad()
    def encode_text(self, texts) -> torch.Tensor:
        tokens = self.tokenizer(list(texts)).to(self.device)  # (N, context_length)
        return F.normalize(self.model.encode_text(tokens).float(), dim=-1).cpu()

    @property
    def max_tokens(self) -> int:
        """Captions keep their first `max_tokens` tokens, start and end tokens included."""
        return self.context_length

    def count_truncated(self, texts) -> int:
        """How many of `texts` the tokenizer cuts at the context length."""
        tok = self.tokenizer
        if hasattr(tok, "sot_token_id"):  # open_clip's BPE: start + BPE tokens + end
            return sum(len(tok.encode(t)) + 2 > self.context_length for t in texts)
        clean = getattr(tok, "clean_fn", lambda t: t)
        ids = tok.tokenizer([clean(t) for t in texts])["input_ids"]  # an HF tokenizer, its special tokens included
        return sum(len(i) > self.context_length for i in ids)
