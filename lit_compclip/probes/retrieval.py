"""Image-text retrieval recall@1/5/10 both ways on the released files of DOCCI, IIW, DCI, Urban1k, ShareGPT4V,
Karpathy COCO/Flickr or plain JSON lines, each read by its published protocol (docs/PROBES.md writes them down)."""

from __future__ import annotations

import re
from itertools import islice
from pathlib import Path
from typing import Iterable, Iterator, NamedTuple

import torch

from lit_compclip.metrics import recall_at_k
from lit_compclip.probes.base import (Encoder, ImageRef, check_common, check_images_exist, check_path, encode_images,
                                      encode_texts, field, natural_key, read_json, read_jsonl, truncation_flags)
from lit_compclip.registry import suggest

FORMATS = ("docci", "iiw", "dci", "urban1k", "sharegpt4v", "karpathy", "jsonl")
FOLDER_FORMATS = {"iiw", "dci", "urban1k"}  # their `annotations` is a folder, not a file
IIW_SUBSETS = {"DOCCI_Test": "docci", "IIW-400": "docci_aar", "DCI_Test": "dci"}  # subset -> image subfolder
SHAREGPT4V_SIZES = {"1k": 1000, "10k": 10000}  # the first N records of the ShareGPT4V caption file
SPLITS = {"docci": None, "iiw": ("all", *IIW_SUBSETS), "dci": ("all", "train", "valid", "test"),
          "sharegpt4v": (*SHAREGPT4V_SIZES, "all")}  # None: whatever the file's `split` field holds
DEFAULT_SPLIT = {"docci": "test", "iiw": "all", "dci": "all", "sharegpt4v": "1k"}
TEXT_RULES = ("none", "newlines", "sentences")
DEFAULT_TEXT_RULE = {"iiw": "sentences", "dci": "sentences", "sharegpt4v": "newlines"}  # others: "none"
MIN_SENTENCE_CHARS = 3  # sentence level drops shorter pieces (a stray quote or "It" cut off at "e.g.")


class Pair(NamedTuple):
    """One annotated image and its caption(s), as a reader found them."""

    where: str  # the record, for error messages
    key: str  # its id in the per-example records
    image: str  # path relative to the `images` folder
    captions: list[str]


def sentence_pieces(text: str) -> list[str]:
    """Split at newlines, '</s>' and every '.', each piece stripped, empty ones dropped (the LoTLIP/FLAIR split)."""
    return [p.strip() for p in re.split(r"\n|</s>|\.", text) if p.strip()]


def apply_text_rule(text: str, rule: str) -> str:
    """`sentences`: pieces re-joined with '. ' (LoTLIP, FLAIR); `newlines`: newlines to spaces (Long-CLIP)."""
    if rule == "sentences":
        return ". ".join(sentence_pieces(text))
    return text.replace("\n", " ") if rule == "newlines" else text


class Retrieval:
    """`t2i_r1/5/10`, `i2t_r1/5/10` (CLIP_benchmark rules, see metrics.recall_at_k), `n_images`, `n_texts`,
    `truncated_fraction` when the encoder has `count_truncated(texts) -> int`, and `max_tokens` (the truncation
    policy: a caption keeps its first max_tokens tokens) when it has that attribute.

    With `records`, one record per caption under "t2i": its image's score, the best rival images, its rank, and
    `truncated` when the encoder counts truncation.

    Formats (`annotations` -> what is read; `images` -> where the images are; `split`):
    docci: docci_descriptions.jsonlines {example_id, split, image_file, description}; split any (default "test").
    iiw: google/imageinwords `datasets/` folder, {IIW-400,DCI_Test,DOCCI_Test}/data.jsonl, field "IIW"; images
      in docci/, docci_aar/, dci/ subfolders; split "all" (default, the 612 images) or one subset.
    dci: DCI's densely_captioned_images/ (splits.json, annotations/*.json), short_caption + extra_caption; images
      its photos/; split "all" (default, 7805) | train | valid | test.
    urban1k: Urban1k's caption/ folder (<name>.txt, first line); images its image/ (<name>.jpg).
    sharegpt4v: ShareGPT4V's JSON list, caption conversations[1]; images the folder its `image` paths start in;
      split "1k" (default) | "10k" (its first 1,000 / 10,000 records) | "all".
    karpathy: a JSON list [{"image", "caption": [..]}]; jsonl: lines {"image", "caption": str | list}.
    `text_rule` (default "sentences" for iiw/dci, "newlines" for sharegpt4v, else "none") rewrites each caption
    as that protocol does; `sentence_level` instead makes each sentence piece a caption of its own (FLAIR's
    fine-grained IIW). Records naming the same image file are merged into one image with all their captions."""

    def __init__(self, annotations: str, images: str, format: str, split: str | None = None,
                 text_rule: str | None = None, sentence_level: bool = False, batch_size: int = 256,
                 limit: int | None = None):
        check_common("retrieval", batch_size, limit)
        if format not in FORMATS:
            raise ValueError(f"retrieval probe: unknown format {format!r}{suggest(format, FORMATS)}; "
                             f"choose one of {list(FORMATS)}")
        if split is not None and format not in SPLITS:
            raise ValueError(f"retrieval probe: option 'split' applies only to formats {list(SPLITS)}; got "
                             f"split={split!r} with format {format!r}")
        if split is not None and SPLITS[format] is not None and split not in SPLITS[format]:
            raise ValueError(f"retrieval probe: unknown {format} split {split!r}{suggest(split, SPLITS[format])}; "
                             f"choose one of {list(SPLITS[format])}")
        if text_rule is not None and text_rule not in TEXT_RULES:
            raise ValueError(f"retrieval probe: unknown text_rule {text_rule!r}{suggest(text_rule, TEXT_RULES)}; "
                             f"choose one of {list(TEXT_RULES)}")
        if not isinstance(sentence_level, bool):
            raise ValueError(f"retrieval probe: option 'sentence_level' must be true or false; got {sentence_level!r}")
        if sentence_level and text_rule is not None:
            raise ValueError(f"retrieval probe: options 'sentence_level' and 'text_rule' exclude each other; got "
                             f"text_rule={text_rule!r} with sentence_level=True")
        self.batch_size = batch_size
        self.text_rule = text_rule or DEFAULT_TEXT_RULE.get(format, "none")
        self.sentence_level = sentence_level
        path = check_path(annotations, "annotations", "retrieval", is_dir=format in FOLDER_FORMATS)
        image_dir = check_path(images, "images", "retrieval", is_dir=True)
        pairs = list(islice(READERS[format](path, split or DEFAULT_SPLIT.get(format)), limit))
        if not pairs:
            raise ValueError(f"{path}: holds no {format} records")
        self.image_refs: list[ImageRef] = []  # distinct images, first-appearance order
        self.texts: list[str] = []
        self.text_to_image: list[int] = []
        self.text_ids: list[str] = []
        index: dict[Path, int] = {}
        for pair in pairs:
            captions = self._prepare(pair)
            image_path = image_dir / pair.image
            if image_path not in index:
                index[image_path] = len(self.image_refs)
                self.image_refs.append(ImageRef(image_path, None, pair.where))
            self.texts += captions
            self.text_ids += [pair.key if len(captions) == 1 else f"{pair.key}/{j}" for j in range(len(captions))]
            self.text_to_image += [index[image_path]] * len(captions)
        check_images_exist(self.image_refs, "retrieval")

    def _prepare(self, pair: Pair) -> list[str]:
        """The pair's captions as the protocol scores them (sentence level: an image left without one is an error)."""
        if self.sentence_level:
            captions = [p for c in pair.captions for p in sentence_pieces(c) if len(p) >= MIN_SENTENCE_CHARS]
            if not captions:
                raise ValueError(f"{pair.where}: caption holds no sentence of {MIN_SENTENCE_CHARS}+ characters")
            return captions
        return [apply_text_rule(c, self.text_rule) for c in pair.captions]  # an empty one is scored, as released

    def run(self, encoder: Encoder, records: dict[str, list[dict]] | None = None) -> dict[str, float]:
        img = encode_images(encoder, self.image_refs, self.batch_size)  # (n_images, D)
        txt = encode_texts(encoder, self.texts, self.batch_size)  # (n_texts, D)
        sim = txt @ img.T  # (n_texts, n_images)
        out = recall_at_k(sim, torch.tensor(self.text_to_image))
        out["n_images"] = float(len(self.image_refs))
        out["n_texts"] = float(len(self.texts))
        count_truncated = getattr(encoder, "count_truncated", None)
        truncated = None
        if callable(count_truncated):
            distinct = list(dict.fromkeys(self.texts))
            cut = dict(zip(distinct, truncation_flags(count_truncated, distinct, self.batch_size)))
            truncated = [cut[t] for t in self.texts]
            out["truncated_fraction"] = sum(truncated) / len(self.texts)
        max_tokens = getattr(encoder, "max_tokens", None)
        if max_tokens is not None:  # the policy behind that fraction: each caption keeps its first max_tokens
            out["max_tokens"] = float(max_tokens)
        if records is not None:
            records.setdefault("t2i", []).extend(self._t2i_records(sim, truncated))
        return out

    def _t2i_records(self, sim: torch.Tensor, truncated: list[bool] | None, rivals: int = 3) -> list[dict]:
        """Per caption: its image's score, the best other images' scores, and its strict rank (ties count against
        it, a NaN score is last), the rule metrics.recall_at_k scores with."""
        targets = torch.tensor(self.text_to_image)
        idx = torch.arange(len(targets))
        own = sim[idx, targets]  # (n_texts,)
        rank = (sim >= own[:, None]).sum(dim=1)  # (n_texts,) 1-based: the own image counts itself
        rank[own.isnan()] = sim.shape[1]
        others = sim.clone()
        others[idx, targets] = float("-inf")  # an image is not its own rival
        best = others.topk(min(rivals, sim.shape[1] - 1), dim=1)  # (n_texts, <= rivals)
        rows = []
        for t, target in enumerate(self.text_to_image):
            row = {"id": self.text_ids[t], "image": str(self.image_refs[target].path), "captions": [self.texts[t]],
                   "scores": [float(own[t])], "correct": bool(rank[t] == 1), "rank": int(rank[t]),
                   "rival_images": [str(self.image_refs[i].path) for i in best.indices[t].tolist()],
                   "rival_scores": best.values[t].tolist()}
            if truncated is not None:
                row["truncated"] = truncated[t]
            rows.append(row)
        return rows


# ---- Readers: one per format, (annotations path, split) -> Pairs in file order ----------------------------------

def _docci(path: Path, split: str) -> list[Pair]:
    kept, seen = [], set()
    for lineno, record in read_jsonl(path):
        where = f"{path} line {lineno}"
        value = field(record, "split", str, where)
        seen.add(value)
        if value == split:
            where = f"{where} (example_id {record.get('example_id')!r})"
            kept.append(Pair(where, str(record.get("example_id", len(kept))), field(record, "image_file", str, where),
                             [field(record, "description", str, where)]))
    if not kept:
        raise ValueError(f"{path}: no record has split {split!r}{suggest(split, seen)}; splits present: "
                         f"{sorted(seen)}")
    return kept


def _iiw(folder: Path, split: str) -> Iterator[Pair]:
    subsets = list(IIW_SUBSETS) if split == "all" else [split]  # LoTLIP's and FLAIR's order
    files = {s: folder / s / "data.jsonl" for s in subsets}
    for s, f in files.items():  # every file checked before any is read
        check_path(f, f"annotations (IIW subset {s})", "retrieval")
    for s, f in files.items():
        for lineno, record in read_jsonl(f):
            where = f"{f} line {lineno}"
            key = "image" if isinstance(record, dict) and "image" in record else "image/key"  # DCI/DOCCI, IIW-400
            name = field(record, key, str, where)
            name = name if ".jpg" in name else f"{name}.jpg"
            yield Pair(where, f"{s}/{name.removesuffix('.jpg')}", f"{IIW_SUBSETS[s]}/{name}",
                       [field(record, "IIW", str, where)])


def _dci(folder: Path, split: str) -> Iterator[Pair]:
    splits_file = check_path(folder / "splits.json", "annotations (DCI splits.json)", "retrieval")
    splits = read_json(splits_file)
    if not isinstance(splits, dict) or not all(isinstance(v, list) for v in splits.values()):
        raise ValueError(f"{splits_file}: expected an object of split -> list of annotation file names")
    if split != "all" and split not in splits:
        raise ValueError(f"{splits_file}: no split {split!r}; splits present: {list(splits)}")
    for s in (splits if split == "all" else [split]):  # "all": the file's order, as LoTLIP and FLAIR read it
        for name in splits[s]:
            path = folder / "annotations" / str(name)
            if not path.is_file():
                raise FileNotFoundError(f"retrieval probe: DCI annotation {str(path)!r} (split {s!r} of "
                                        f"{splits_file}) not found")
            record, where = read_json(path), str(path)
            caption = f"{field(record, 'short_caption', str, where)}\n{field(record, 'extra_caption', str, where)}"
            yield Pair(where, str(name), field(record, "image", str, where), [caption])


def _urban1k(folder: Path, split: None) -> Iterator[Pair]:
    for path in sorted(folder.glob("*.txt"), key=lambda p: natural_key(p.name)):
        with open(path, encoding="utf-8") as f:
            first = f.readline()  # Long-CLIP's readlines()[0]: a blank first line is an empty caption, and scored
        if not first:
            raise ValueError(f"{path}: is empty; Urban1k's caption is the first line of its file")
        yield Pair(str(path), path.stem, f"{path.stem}.jpg", [first.strip()])


def _sharegpt4v(path: Path, split: str) -> Iterator[Pair]:
    data = read_json(path)
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected a JSON list of {{'image', 'conversations'}} records (ShareGPT4V format)")
    size = SHAREGPT4V_SIZES.get(split, len(data))
    if len(data) < size:
        raise ValueError(f"{path}: holds {len(data)} records; split {split!r} is its first {size} (split 'all' "
                         f"takes every record)")
    for i, record in enumerate(data[:size]):
        where = f"{path} record {i}"
        turns = field(record, "conversations", list, where)
        if len(turns) < 2 or not isinstance(turns[1], dict) or not isinstance(turns[1].get("value"), str):
            raise ValueError(f"{where} field 'conversations' needs a second turn with a string 'value' (the caption)")
        yield Pair(where, str(record.get("id", i)), field(record, "image", str, where), [turns[1]["value"]])


def _captioned(rows: Iterable[tuple[str, object]]) -> Iterator[Pair]:
    """Karpathy / JSON-lines records {"image", "caption": str | list}; the id is the record's index."""
    for n, (where, record) in enumerate(rows):
        captions = field(record, "caption", (str, list), where)
        captions = [captions] if isinstance(captions, str) else captions
        if not captions or not all(isinstance(c, str) for c in captions):
            raise ValueError(f"{where} field 'caption' must be a string or a non-empty list of strings")
        yield Pair(where, str(n), field(record, "image", str, where), captions)


def _karpathy(path: Path, split: None) -> Iterator[Pair]:
    data = read_json(path)
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected a JSON list of {{'image', 'caption'}} records (karpathy format)")
    return _captioned((f"{path} record {i}", r) for i, r in enumerate(data))


def _jsonl(path: Path, split: None) -> Iterator[Pair]:
    return _captioned((f"{path} line {lineno}", r) for lineno, r in read_jsonl(path))


READERS = {"docci": _docci, "iiw": _iiw, "dci": _dci, "urban1k": _urban1k, "sharegpt4v": _sharegpt4v,
           "karpathy": _karpathy, "jsonl": _jsonl}
