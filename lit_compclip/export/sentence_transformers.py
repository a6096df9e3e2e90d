"""The sentence-transformers export: one folder whose `SentenceTransformer(OUT, trust_remote_code=True).encode` takes
captions and PIL images and gives this project's normalised embeddings. A Router sends each input by its modality:
text through the text tower's own sentence-transformers modules and the projection as a bias-free Dense, images
through this package's CompClipImage (export/st_modules.py) and its own projection Dense; a Normalize ends both."""

from __future__ import annotations

import json
import os

from lit_compclip.errors import ConfigError

OPTIONS: dict[str, str] = {}
# The exported routes run the tower's own modules and ImageTower's own forward: a caption or image alone gives the
# model's embedding exactly (measured: 0.0). Only padding differs: sentence-transformers sorts and batches captions its
# own way, and float32 matrix products over other padded lengths round otherwise. The model itself moves a caption's
# embedding by up to 1.0e-6 between a padded batch and alone, and the export differed from the model by up to 1.3e-6
# on 200 captions of 1-70 words (MiniLM; images: 0.0); so 3e-6, far below what a wrong mask, pooling or projection
# changes (1e-2 and more).
TOLERANCE = 3e-6

FORMAT = "sentence_transformers export"
TYPE = "lit_compclip.export.st_modules.CompClipImage"


def check(model, options: dict) -> None:
    """A one-line ConfigError for a text tower no sentence-transformers pipeline holds; any ImageTower is held."""
    from lit_compclip.towers.sentence_transformers import SentenceTransformerTower

    text = model.text
    if not isinstance(text, SentenceTransformerTower):
        tower = {"ScratchTextTower": "the scratch text tower (this package's own transformer, which no "
                                     "sentence-transformers module holds)",
                 "TransformersTower": "the transformers text tower (a plain language model with this package's "
                                      "pooling and tokenization, not a sentence-transformers pipeline)"}
        what = tower.get(type(text).__name__, f"text tower {type(text).__name__}")
        raise ConfigError(f"{FORMAT}: {what} cannot be exported: this format holds a sentence_transformers "
                          f"text tower (model.text.tower=sentence_transformers); export this model as native")
    if text.bidirectional:
        raise ConfigError(f"{FORMAT}: the text tower's trained blocks attend both ways (model.text.bidirectional), "
                          f"which a sentence-transformers Transformer module cannot hold; export this model as native")
    if text.frozen_dtype:
        raise ConfigError(f"{FORMAT}: the text tower's frozen layers are in {text.frozen_dtype} "
                          f"(model.text.frozen_dtype) and its trained ones in float32, which a sentence-transformers "
                          f"Transformer module cannot hold; export this model as native")
    # The tower counts a decoder's positions from each caption's first token, sentence-transformers from the first
    # padding token: the same for right padding, and for left padding the same up to rounding where positions enter
    # as rotations (rotary embeddings see only differences of positions: Qwen, Llama, Gemma), not otherwise.
    if text.causal and text.st.tokenizer.padding_side == "left" and not has_rotary_positions(text.lm):
        raise ConfigError(f"{FORMAT}: the text tower is a decoder without rotary positions that pads on the left: "
                          f"sentence-transformers would count each caption's positions from its padding, the tower "
                          f"from its first token; export this model as native")


def has_rotary_positions(lm) -> bool:
    return any("Rotary" in type(m).__name__ for m in lm.modules())


def write(model, folder: str, info: dict, options: dict) -> list[str]:
    """The Router pipeline saved into `folder` (config JSON and safetensors only), and the model card's notes."""
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers import __version__ as st_version
    from sentence_transformers.base.modules import Dense, Normalize, Router

    import lit_compclip
    from lit_compclip.export.st_modules import CompClipImage

    image = CompClipImage(info["model_config"].get("image", {}))  # the options the source model was built with
    trunk = {k: v for k, v in model.image.state_dict().items() if not k.startswith("proj.")}
    try:
        image.tower.load_state_dict(trunk)
    except RuntimeError as e:
        raise ConfigError(f"{FORMAT}: the source's image options do not build this model's image tower "
                          f"({str(e).splitlines()[0]})") from None

    def projection(proj: torch.nn.Linear) -> Dense:  # bias-free, no activation: the Linear itself
        return Dense(proj.in_features, proj.out_features, bias=False, activation_function=torch.nn.Identity(),
                     init_weight=proj.weight.detach().clone())

    routes = {"text": list(model.text.st) + [projection(model.text.proj)],  # MiniLM: Transformer, Pooling, Normalize
              "image": [image, projection(model.image.proj)]}
    router = Router(routes, default_route="text", route_mappings={(None, "text"): "text", (None, "image"): "image"})
    pipeline = SentenceTransformer(modules=[router, Normalize()], device="cpu", local_files_only=True)
    pipeline.save(folder, create_model_card=False)  # the framework writes README.md

    # sentence-transformers checks these before it loads any module: without lit_compclip, one line says to install it
    path = os.path.join(folder, "config_sentence_transformers.json")
    with open(path, encoding="utf8") as f:
        config = json.load(f)
    config["requirements"] = {"lit_compclip": {"specifier": f">={lit_compclip.__version__}", "reason": (
        f"the image route's module {TYPE} (the eval transform, the timm trunk and its pooling) is lit_compclip's")}}
    with open(path, "w", encoding="utf8") as f:
        json.dump(config, f, indent=2, sort_keys=True)

    steps = " -> ".join(type(m).__name__ for m in model.text.st)
    return [
        f"`pip install lit_compclip` is needed, and `SentenceTransformer(FOLDER, trust_remote_code=True)`: the image "
        f"route's module ({TYPE}: this project's eval transform, timm trunk and pooling) has no standard "
        f"sentence-transformers equivalent, and sentence-transformers (6 and later) imports a module class from "
        f"outside its own package only when trusted. The text route is standard modules only.",
        f"`model.encode(captions)` and `model.encode(pil_images)` route each input by its modality (a Router): "
        f"captions through the text tower's own modules ({steps}), images through the image tower; the projection "
        f"into the joint space is a bias-free Dense on each route, and a Normalize ends both, so embeddings have "
        f"length 1 and `texts @ images.T` is the cosine. A caption that is the path of an existing image file is "
        f"taken for an image: pass `modality=\"text\"`.",
        f"Made with sentence-transformers {st_version}; the training's logit scale (the temperature of the "
        f"similarities) is {float(model.logit_scale.detach()):.4f}.",
    ]


class Loaded:
    """An exported folder as sentence-transformers loads and runs it."""

    def __init__(self, folder: str):
        from sentence_transformers import SentenceTransformer

        self.model = SentenceTransformer(folder, device="cpu", local_files_only=True, trust_remote_code=True)

    def _encode(self, inputs: list):
        return self.model.encode(list(inputs), convert_to_tensor=True, show_progress_bar=False).float().cpu()

    def encode_texts(self, texts: list[str]):
        return self._encode(texts)  # (N, D), unit rows: the folder's own Normalize

    def encode_images(self, images: list):
        return self._encode(images)  # (N, D)


def load_back(folder: str) -> Loaded:
    return Loaded(folder)
