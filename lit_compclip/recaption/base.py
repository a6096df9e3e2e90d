"""What a recaptioning backend receives and returns; backends are chosen by name from recaption.BACKENDS."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol


@dataclass(frozen=True)
class Request:
    """One sample to recaption."""

    key: str  # the sample's key in its shard
    image: bytes  # the original image file, byte for byte
    image_ext: str  # its extension in the shard: "jpg", "png", "webp", ...
    prompt: str  # the prompt template filled with `fields`
    fields: dict[str, str]  # the prompt fields' values (alt_text, title, ...), "" where the sample lacks one
    meta: dict[str, Any] = field(default_factory=dict)  # the sample's parsed KEY.json ({} when it has none)


@dataclass(frozen=True)
class Outcome:
    """A recaption, or why there is none. Backends never raise for one sample's failure: they return its reason."""

    text: str | None  # the recaption, stripped; None on failure
    error: str | None = None  # e.g. "HTTP 503 after 4 tries", "timeout after 4 tries", "empty answer", "refused"
    tokens: int | None = None  # generated tokens, when the backend knows


class Backend(Protocol):
    name: str  # registry name, written into the provenance
    model: str  # model name or path, written into the provenance

    def caption(self, requests: list[Request]) -> list[Outcome]:
        """One Outcome per request, same order. Raises only for errors that doom every request (bad config)."""
        ...

    def close(self) -> None: ...
