"""A sentence-transformers folder that encodes captions and images (what `compclip export --format
sentence_transformers` writes) as a probe encoder: `sentence_transformers:FOLDER`.

Loading such a folder takes trust_remote_code, which would also run Python shipped in the folder or named by a
config's auto_map: a folder whose modules are not sentence-transformers' own or this package's, that holds .py
files, or whose configs name remote code is refused before anything is loaded, so only installed code runs."""

from __future__ import annotations

import glob
import json
import os

import torch
import torch.nn.functional as F

from lit_compclip.errors import ConfigError, first_line

TRUSTED = ("sentence_transformers.", "lit_compclip.")  # installed packages whose module classes may be imported


def module_types(folder: str) -> list[str]:
    """Every module class the folder names: modules.json's, and each Router's routes (router_config.json)."""
    types = []
    for path in [os.path.join(folder, "modules.json"),
                 *glob.glob(os.path.join(folder, "**", "router_config.json"), recursive=True)]:
        if not os.path.isfile(path):
            continue
        try:
            with open(path, encoding="utf-8") as f:
                data = json.load(f)
        except (OSError, ValueError) as e:
            raise ConfigError(f"sentence_transformers:{folder}: {path} cannot be read ({first_line(e)})") from None
        entries = data if isinstance(data, list) else list((data.get("types") or {}).values())
        types += [str(entry.get("type", "")) if isinstance(entry, dict) else str(entry) for entry in entries]
    return types


class SentenceTransformersEncoder:
    """`FOLDER`: a sentence-transformers folder whose `encode` takes captions and PIL images, in fp32."""

    @staticmethod
    def check(target: str) -> None:
        if not os.path.isfile(os.path.join(target, "modules.json")):
            raise ConfigError(f"sentence_transformers:{target}: not a sentence-transformers folder (no modules.json)")
        foreign = sorted({t for t in module_types(target) if not t.startswith(TRUSTED)})
        code = sorted(os.path.relpath(p, target) for p in glob.glob(os.path.join(target, "**", "*.py"),
                                                                     recursive=True))
        remote = sorted(os.path.relpath(p, target) for p in glob.glob(os.path.join(target, "**", "*.json"),
                                                                       recursive=True)
                        if '"auto_map"' in open(p, encoding="utf-8", errors="replace").read())
        if foreign or code or remote:
            what = "; ".join(x for x in (f"module classes {foreign}" if foreign else "",
                                         f"Python files {code[:3]}" if code else "",
                                         f"auto_map in {remote[:3]}" if remote else "") if x)
            raise ConfigError(f"sentence_transformers:{target}: refused, loading it would run code from outside "
                              f"sentence-transformers and lit_compclip ({what})")

    def __init__(self, target: str, device: str = "cpu"):
        import sentence_transformers
        from sentence_transformers import SentenceTransformer

        self.check(target)
        try:
            # trusted only to import lit_compclip's own module class: check() refused anything else
            model = SentenceTransformer(target, device=device, local_files_only=True, trust_remote_code=True)
        except Exception as e:
            raise ConfigError(f"sentence_transformers:{target} cannot be loaded ({type(e).__name__}: "
                              f"{first_line(e)})") from None
        self.model = model.float().eval()
        self.info = {"model": "sentence_transformers", "pretrained": os.path.abspath(target), "dtype": "float32",
                     "device": str(device), "sentence_transformers": sentence_transformers.__version__,
                     "max_seq_length": model.max_seq_length}

    def _encode(self, inputs: list) -> torch.Tensor:
        with torch.no_grad():
            rows = self.model.encode(inputs, convert_to_tensor=True, show_progress_bar=False)
        return F.normalize(rows.float(), dim=-1).cpu()

    def encode_image(self, images) -> torch.Tensor:
        return self._encode([im.convert("RGB") for im in images])

    def encode_text(self, texts) -> torch.Tensor:
        return self._encode(list(texts))
