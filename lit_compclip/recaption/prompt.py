"""The grounded recaptioning prompt: a default template, loading a user's template, filling it, its version hash."""

from __future__ import annotations

import hashlib
import string
from pathlib import Path

DEFAULT_FIELDS = ("txt", "title")  # KEY.txt (the alt-text) and the page title when img2dataset saved one
TXT_PLACEHOLDER = "alt_text"  # the `txt` field (KEY.txt) fills {alt_text}; a KEY.json field NAME fills {NAME}

DEFAULT_TEMPLATE = """\
Describe this image in one dense paragraph for training an image-text model.
Name every visible object and bind its attributes to it (colour, size, material, texture, count: "a small red \
mug", not "red, small, a mug"). State where each object is in the picture and the spatial relations between \
objects ("the dog is to the left of the bench", "a lamp stands on the table"). Mention any legible text.
The web page gave this alt-text and title. Use them only as hints for names of things, places or brands you can \
confirm in the image; ignore anything in them the image does not show, and do not mention them.
Alt-text: {alt_text}
Title: {title}
Answer with the description only."""


def placeholder(field: str) -> str:
    """The template placeholder a prompt field fills."""
    return TXT_PLACEHOLDER if field == "txt" else field


def placeholders(template: str) -> list[str]:
    """Names used as {name} in `template`; a malformed template raises ValueError."""
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as exn:
        raise ValueError(f"prompt template is malformed ({exn}); write placeholders as {{name}} and braces as {{{{ }}}}")
    names = []
    for _, name, spec, conv in parsed:
        if name is None:
            continue
        if not name.isidentifier() or spec or conv:
            raise ValueError(f"prompt template placeholder {{{name}}} must be a plain field name like {{alt_text}}")
        names.append(name)
    return names


def load_template(path: str | None, fields: list[str]) -> str:
    """The template in `path` (the default when None), checked to use only the placeholders `fields` fill."""
    if path is None:
        template, where = DEFAULT_TEMPLATE, "the default prompt"
    else:
        p = Path(path)
        if not p.is_file():
            raise FileNotFoundError(f"prompt template {path!r} is not a file")
        where = f"prompt template {path!r}"
        try:
            template = p.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exn:
            raise ValueError(f"{where} cannot be read as UTF-8 text ({type(exn).__name__}: {exn})") from None
        if not template.strip():
            raise ValueError(f"{where} is empty; write the instruction for the model, with {{alt_text}} and the "
                             f"other fields as placeholders where wanted")
    given = [placeholder(f) for f in fields]
    unknown = [n for n in placeholders(template) if n not in given]
    if unknown:
        raise ValueError(f"{where} uses {{{unknown[0]}}} but --fields {','.join(fields)} fills only "
                         f"{['{' + g + '}' for g in given]}; add the field or edit the template")
    return template


def prompt_version(template: str) -> str:
    """A short hash of the template text, written into every recaption's provenance."""
    return hashlib.sha256(template.encode("utf-8")).hexdigest()[:12]


def render(template: str, values: dict[str, str]) -> str:
    """The template filled with the prompt fields' values (keyed by placeholder name)."""
    return template.format_map(values)
