"""Zero-shot classification of an ImageFolder: each image against prompt-ensembled class-name embeddings."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from lit_compclip.metrics import choice_correct
from lit_compclip.probes.base import (Encoder, ImageRef, check_common, check_path, choice_record, encode_images,
                                      encode_texts, read_json)

EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp")
# A handful of CLIP-style prompts; pass `templates` for the full 80-prompt ImageNet ensemble.
TEMPLATES = ("a photo of a {c}.", "a blurry photo of a {c}.", "a photo of the large {c}.",
             "a photo of the small {c}.", "a cropped photo of a {c}.", "a drawing of a {c}.")


def class_embeddings(text: Tensor) -> Tensor:
    """(C, T, D) prompt embeddings -> (C, D): mean of the L2-normalised prompts per class, renormalised."""
    return torch.nn.functional.normalize(torch.nn.functional.normalize(text, dim=-1).mean(dim=1), dim=-1)


def true_rank(logits: Tensor, labels: Tensor) -> Tensor:
    """(N,) number of other classes scoring >= the true one (ties and NaN rivals rank ahead; a NaN truth ranks last)."""
    n, c = logits.shape
    true = logits[torch.arange(n), labels]  # (N,)
    others = torch.ones_like(logits, dtype=torch.bool).scatter(1, labels[:, None], False)  # (N, C) not the true class
    rank = (((logits >= true[:, None]) | logits.isnan()) & others).sum(dim=1)
    return torch.where(true.isnan(), torch.full_like(rank, c), rank)


class ZeroShot:
    """`top1`, `top5` (k capped at the class count), exact top-1 `ties` and `n` images scored.

    Strict rule, as in the other probes: an image is right at top-k only if fewer than k other classes score
    >= its true class, so a tie with the true class for first place counts wrong (and in `ties`). Classes are
    the sorted non-hidden subfolders of `images`; their images are found recursively, hidden entries skipped."""

    def __init__(self, images: str, classnames: str, templates: str | None = None, batch_size: int = 256,
                 limit: int | None = None):
        check_common("zeroshot", batch_size, limit)
        self.batch_size = batch_size
        root = check_path(images, "images", "zeroshot", is_dir=True)
        self.folders = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
        if len(self.folders) < 2:
            raise ValueError(f"zeroshot probe: option 'images': {str(root)!r} needs one subfolder per class, at "
                             f"least two; found {self.folders}")
        self.names = self._read_names(check_path(classnames, "classnames", "zeroshot"), self.folders)
        self.templates = (self._read_templates(check_path(templates, "templates", "zeroshot"))
                          if templates is not None else list(TEMPLATES))
        # list of (image, label index, id = path relative to the root), class-major as ImageFolder orders them
        self.examples = []
        for label, folder in enumerate(self.folders):
            # Skip hidden entries: macOS "._x.jpg" forks and notebook checkpoints are not images of the class.
            files = sorted((p for p in (root / folder).rglob("*") if p.suffix.lower() in EXTENSIONS and p.is_file()
                            and not any(part.startswith(".") for part in p.relative_to(root).parts)),
                           key=lambda p: p.relative_to(root).parts)
            if not files:
                raise ValueError(f"zeroshot probe: class folder {str(root / folder)!r} holds no {list(EXTENSIONS)} "
                                 f"images")
            self.examples += [(ImageRef(p, None, f"class {folder!r} of {root}"), label,
                               p.relative_to(root).as_posix()) for p in files]
        self.examples = self.examples[:limit]

    @staticmethod
    def _read_names(path: Path, folders: list[str]) -> list[str]:
        """Class names in folder order: from a JSON {folder: name} object or one name per line in folder order."""
        if path.suffix.lower() == ".json":
            data = read_json(path)
            if not isinstance(data, dict) or not all(isinstance(v, str) and v.strip() for v in data.values()):
                raise ValueError(f"{path}: expected a JSON object mapping class folder names to non-empty names")
            missing, extra = sorted(set(folders) - set(data)), sorted(set(data) - set(folders))
            if missing or extra:
                raise ValueError(f"{path}: keys do not match the class folders; folders without a name: "
                                 f"{missing[:5]}{' ...' if len(missing) > 5 else ''}, names without a folder: "
                                 f"{extra[:5]}{' ...' if len(extra) > 5 else ''}")
            return [data[f].strip() for f in folders]
        lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
        while lines and not lines[-1]:
            lines.pop()
        if "" in lines:
            raise ValueError(f"{path}: line {lines.index('') + 1} is blank; expected one class name per line")
        if len(lines) != len(folders):
            raise ValueError(f"{path}: holds {len(lines)} class names but there are {len(folders)} class folders "
                             f"(one name per line, in sorted folder order: {folders[:3]}...)")
        return lines

    @staticmethod
    def _read_templates(path: Path) -> list[str]:
        """One prompt per non-blank line, each holding the `{c}` placeholder."""
        lines = [(i, line.strip()) for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)]
        templates = [(i, t) for i, t in lines if t]
        if not templates:
            raise ValueError(f"{path}: holds no templates; expected one prompt per line such as 'a photo of a {{c}}.'")
        for i, t in templates:
            if "{c}" not in t:
                raise ValueError(f"{path}: line {i} {t!r} lacks the class placeholder '{{c}}'")
        return [t for _, t in templates]

    def run(self, encoder: Encoder, records: dict[str, list[dict]] | None = None) -> dict[str, float]:
        c, t = len(self.names), len(self.templates)
        # replace, not format: a prompt may hold other braces.
        prompts = [tpl.replace("{c}", name) for name in self.names for tpl in self.templates]
        classes = class_embeddings(encode_texts(encoder, prompts, self.batch_size).view(c, t, -1))  # (C, D)
        img = encode_images(encoder, [ref for ref, _, _ in self.examples], self.batch_size)  # (N, D)
        logits = img @ classes.T  # (N, C)
        labels = torch.tensor([label for _, label, _ in self.examples])  # (N,)
        rank = true_rank(logits, labels)  # (N,)
        rivals = logits.scatter(1, labels[:, None], float("-inf"))  # (N, C) the true class can't be its own rival
        correct, tied = choice_correct(logits[torch.arange(len(labels)), labels], rivals.max(dim=1).values)
        out = {"top1": (rank < 1).float().mean().item(), "top5": (rank < min(5, c)).float().mean().item(),
               "ties": float(tied.sum()), "n": float(len(labels))}
        assert torch.equal(correct, rank < 1), "top-1 rule and rank disagree"
        if records is not None:
            order = rivals.sort(dim=1, descending=True, stable=True).indices[:, :min(4, c - 1)]  # (N, <=4)
            rows = records.setdefault("zeroshot", [])
            for i, (ref, label, key) in enumerate(self.examples):
                shown = [label] + order[i].tolist()
                # Strict rule: a rival tying the truth for first place is the prediction.
                predicted = label if correct[i] else shown[1]
                rows.append(choice_record(key, ref, [self.names[j] for j in shown], [logits[i, j] for j in shown],
                                          correct[i], label=self.folders[label], predicted=self.folders[predicted]))
        return out
