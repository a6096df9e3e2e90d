"""An export's model card (README.md): what the model is, how to load it in the format written, the run's final probe
table, its config and the data it was trained on as the run recorded them, and the format's own notes."""

from __future__ import annotations

import os
from typing import Any, Mapping

LOADING = {
    "native": ["```python", "import torch, lit_compclip", "from PIL import Image", "",
               'model = lit_compclip.load("FOLDER")  # this folder alone: no checkpoint, run folder or hub',
               "with torch.no_grad():", '    texts = model.encode_text(["a red square left of a blue circle"])',
               '    image = model.encode_image(model.transform(Image.open("photo.jpg").convert("RGB"))[None])',
               "scores = model.logit_scale * image @ texts.T  # unit-norm embeddings", "```"],
    # open_clip returns the model in training mode: its dropout would move every embedding
    "open_clip": ["```python", "import open_clip, torch", "from PIL import Image", "",
                  'model, _, preprocess = open_clip.create_model_and_transforms("local-dir:FOLDER")',
                  'model.eval()',
                  'tokenizer = open_clip.get_tokenizer("local-dir:FOLDER")',
                  "with torch.no_grad():",
                  '    texts = model.encode_text(tokenizer(["a red square left of a blue circle"]), normalize=True)',
                  '    image = model.encode_image(preprocess(Image.open("photo.jpg"))[None], normalize=True)', "```"],
    # the image route is lit_compclip's own module, which sentence-transformers loads only when trusted
    "sentence_transformers": ["```python", "from PIL import Image", "from sentence_transformers import "
                              "SentenceTransformer", "",
                              'model = SentenceTransformer("FOLDER", trust_remote_code=True)',
                              'texts = model.encode(["a red square left of a blue circle"])',
                              'images = model.encode([Image.open("photo.jpg")])', "```"],
}
DESCRIPTION = ("A CLIP-style dual encoder trained with lit_compclip, after *Learning Visual Composition through "
               "Improved Semantic Guidance* (Stone et al., [arXiv 2412.15396](https://arxiv.org/abs/2412.15396)): "
               "images and captions map to unit vectors in one space, where their dot product scores how well they "
               "match.")


def _count(n: Any) -> str:
    return f"{n / 1e6:.1f} M" if isinstance(n, int) and n >= 100_000 else str(n)


def towers(model: Mapping[str, Any], parameters: Mapping[str, int] | None, context: int | None) -> list[str]:
    """The towers and sizes as the model section names them; `context`: the text tower's tokens."""
    image, text = dict(model.get("image") or {}), dict(model.get("text") or {})
    sizes = ", ".join(f"{k} {image[k]}" for k in ("img_size", "patch_size", "depth", "width", "heads")
                      if image.get(k) is not None)
    shape = ", ".join(f"{k} {image[k]}" for k in ("stem", "pool") if image.get(k) is not None)
    tower = text.get("tower", "sentence_transformers")
    if tower == "scratch":
        what = f"a transformer trained from scratch (width {text.get('width')}, {text.get('layers')} layers)" + \
            (f" on the tokenizer of `{text['tokenizer']}`" if text.get("tokenizer") else "")
    else:
        trained = text.get("unfreeze_layers")
        what = f"`{text.get('model')}` ({tower}), its last {trained} layers trained" + \
            (", bidirectional" if text.get("bidirectional") else "") + \
            (f", {text['pooling']} pooling" if text.get("pooling") else "")
    counts = parameters or {}
    details = "; ".join(part for part in (sizes, shape) if part)
    lines = [f"- image tower: timm `{image.get('model')}`" + (f" ({details})" if details else "")
             + (f", {_count(counts['image'])} parameters" if "image" in counts else ""),
             f"- text tower: {what}" + (f", {_count(counts['text'])} parameters" if "text" in counts else ""),
             f"- embedding dimension: {model.get('embed_dim')}"
             + (f"; text context: {context} tokens (longer captions are cut)" if context else "")]
    return lines


def probe_table(probes: Mapping[str, Any] | None, run_dir: str | None, checkpoint: str | None = None) -> list[str]:
    """The run's final probe scores as a markdown table (counts and seconds left out), or why there is none;
    `checkpoint`: the file exported (another than last.ckpt gets a caveat)."""
    from lit_compclip.probes.report import COUNT_METRICS

    if run_dir is None:
        return ["No run folder: exported from a checkpoint file or an export alone, so no probe results came with it."]
    if not probes:
        return [f"The run folder ({os.path.basename(run_dir)}) holds no probes.json: no probe results were recorded."]
    rows = []
    for key, value in probes.items():
        suite, _, metric = key.removeprefix("probe/").partition("/")
        if not metric or metric.rsplit("/", 1)[-1] in COUNT_METRICS | {"seconds"}:
            continue
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            rows.append(f"| {suite} | {metric} | {value:.3f} |")
    if not rows:
        return ["The run's probes.json holds no probe scores."]
    other = checkpoint is not None and os.path.basename(checkpoint) != "last.ckpt"
    caveat = f" (they score the run's last checkpoint, not {os.path.basename(checkpoint)})" if other else ""
    return [f"The run's final probe results (fractions: 1.000 = every example right), from its probes.json{caveat}:",
            "", "| probe | metric | score |", "|---|---|---|", *rows]


def _pairs(mapping: Any) -> str:
    return ", ".join(f"`{k}` {v}" for k, v in mapping.items()) if isinstance(mapping, Mapping) else f"{mapping}"


def data_lines(config: Mapping[str, Any] | None, skips: Mapping[str, Any] | None) -> list[str]:
    """The training data as the run recorded it: shards, caption fields, and what data_skips.json counted."""
    if not config:
        return ["No run folder: the training data is not recorded in a checkpoint file or an export alone."]
    data = dict(config.get("data") or {})
    lines = [f"- training shards: `{data.get('train_shards')}`",
             f"- caption fields, by weight: {_pairs(data.get('caption_fields'))}"]
    if data.get("later_caption_fields"):
        lines.append(f"- from epoch {data.get('later_epoch')}: {_pairs(data['later_caption_fields'])}")
    if data.get("sentence_sample"):
        lines.append(f"- sentence sampling (at most k of a field's sentences per caption): "
                     f"{_pairs(data['sentence_sample'])}")
    if not skips:
        return lines + ["- skipped samples: the run folder holds no data_skips.json"]
    for split, what in (("train", "training samples"), ("val", "samples in the last validation pass")):
        if isinstance(skips.get(split), Mapping):
            reasons = ", ".join(f"{r} {n}" for r, n in sorted((skips[split].get("by_reason") or {}).items()))
            lines.append(f"- skipped {what}: {skips[split].get('total')}" + (f" ({reasons})" if reasons else ""))
    if skips.get("cut_shards"):
        lines.append(f"- shards found cut short: {len(skips['cut_shards'])}")
    return lines


def config_yaml(config: Mapping[str, Any] | None, model: Mapping[str, Any]) -> list[str]:
    """The run config's model and data sections as YAML (the checkpoint's model section without a run folder)."""
    import yaml

    sections = {k: config[k] for k in ("model", "data") if k in config} if config else {"model": dict(model)}
    return ["```yaml", yaml.safe_dump(sections, sort_keys=False, allow_unicode=True).rstrip(), "```"]


def model_card(info: Mapping[str, Any], fmt: str, notes: list[str]) -> str:
    """README.md of an export in format `fmt`; `notes`: the format's own lines."""
    model = info.get("model_config") or (info.get("config") or {}).get("model") or {}
    source = info.get("run_dir") or info.get("checkpoint") or info.get("source")
    loading = [line.replace("FOLDER", "path/to/this/folder") for line in LOADING.get(fmt, ["See the notes below."])]
    lines = ["---", "tags: [clip, lit_compclip, image-text, zero-shot]", "---", "",
             f"# {os.path.basename(str(source).rstrip(os.sep))} (lit_compclip, {fmt} export)", "", DESCRIPTION, "",
             "## The model", "", *towers(model, info.get("parameters"), info.get("text_context")),
             f"- exported from: `{info.get('source')}`", "",
             "## Loading it", "", *loading, "",
             "## Probe results", "", *probe_table(info.get("probes"), info.get("run_dir"), info.get("checkpoint")), "",
             "## Training data", "", *data_lines(info.get("config"), info.get("data_skips")), "",
             "## Config", "", *config_yaml(info.get("config"), model), ""]
    if notes:
        lines += ["## About this format", "", *[f"- {note}" for note in notes], ""]
    return "\n".join(lines)
