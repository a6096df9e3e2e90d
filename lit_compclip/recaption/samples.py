"""One sample of a shard being recaptioned: its request built from the image and the prompt fields, its new
KEY.json (the recaption or why there is none, and the provenance), and its members written byte for byte."""

from __future__ import annotations

import copy
import io
import json
import tarfile
from dataclasses import dataclass

from lit_compclip.recaption.base import Outcome, Request
from lit_compclip.recaption.prompt import placeholder, render
from lit_compclip.recaption.tars import split_name

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")  # as the data module reads them


@dataclass
class Sample:
    key: str
    members: list  # [(TarInfo, bytes)]
    meta: dict | None  # parsed KEY.json ({} when none); None when it is unreadable (the sample is then copied as is)
    request: Request | None = None
    error: str | None = None


def prepare(key: str, members: list, fields: list[str], template: str) -> Sample:
    """Parse one sample and build its request, or say why it cannot have one."""
    by_ext = {split_name(info.name)[1].lower(): data for info, data in members}
    meta = {}
    if "json" in by_ext:
        try:
            meta = json.loads(by_ext["json"])
        except (ValueError, UnicodeDecodeError) as exn:
            return Sample(key, members, None, error=f"bad KEY.json: {exn}")
        if not isinstance(meta, dict):
            return Sample(key, members, None, error=f"bad KEY.json: expected an object, got {type(meta).__name__}")
    ext = next((e for e in IMAGE_EXTS if e in by_ext), None)
    if ext is None:
        return Sample(key, members, meta, error=f"no image file ({'/'.join(IMAGE_EXTS)}); has {sorted(by_ext)}")
    values = {}
    for name in fields:
        if name == "txt":
            value = by_ext["txt"].decode("utf-8", errors="replace") if "txt" in by_ext else ""
        else:
            value = meta.get(name)
            value = "" if value is None else value if isinstance(value, str) else json.dumps(value)
        values[placeholder(name)] = value.strip()
    request = Request(key, by_ext[ext], ext, render(template, values), values, meta)
    return Sample(key, members, meta, request)


def annotate(sample: Sample, outcome: Outcome | None, provenance: dict) -> dict:
    """The new KEY.json content: original fields plus recaption (or recaption_error) and the provenance."""
    meta = dict(sample.meta)
    if "recaption" in meta:  # a recaption already in the input is kept, under another name
        meta["recaption_previous"] = meta.pop("recaption")
    meta.pop("recaption_error", None)
    if outcome is not None and outcome.text:
        meta["recaption"] = outcome.text
    else:
        meta["recaption_error"] = sample.error or (outcome.error if outcome else None) or "no answer"
    meta["recaption_provenance"] = provenance
    return meta


def write_sample(out: tarfile.TarFile, sample: Sample, meta: dict | None) -> None:
    """Every member as read; KEY.json replaced in place (keeping its member metadata) or appended when absent."""
    new = None if meta is None else json.dumps(meta, ensure_ascii=False).encode("utf-8")
    wrote_json = False
    for info, data in sample.members:
        if new is not None and split_name(info.name)[1].lower() == "json" and not wrote_json:
            info = copy.copy(info)
            info.size, data, wrote_json = len(new), new, True
        out.addfile(info, io.BytesIO(data))
    if new is not None and not wrote_json:  # metadata of the sample's first member: deterministic across runs
        info = copy.copy(sample.members[0][0])
        info.name, info.size = f"{sample.key}.json", len(new)
        out.addfile(info, io.BytesIO(new))
