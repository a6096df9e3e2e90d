"""One probe pass encodes each distinct caption and image once, whichever probes share them, and scores as before."""

import torch
from PIL import Image

from lit_compclip.encoders.memo import PassMemo, TransformedImages, TruncationCounts


class Counting:
    """A deterministic encoder that counts what it is asked to encode."""

    def __init__(self):
        self.texts, self.images, self.truncation_calls = [], [], 0
        self.max_tokens = 7

    def encode_text(self, texts):
        self.texts += list(texts)
        return torch.stack([torch.tensor([len(t), sum(map(ord, t)) % 97, 1.0]) for t in texts])

    def encode_image(self, images):
        self.images += list(images)
        return torch.stack([torch.tensor([float(im.getpixel((0, 0))[0]), 1.0, 2.0]) for im in images])

    def count_truncated(self, texts):
        self.truncation_calls += 1
        return sum(len(t) > self.max_tokens for t in texts)


def test_each_distinct_caption_and_image_is_encoded_once_per_pass():
    inner = Counting()
    memo = PassMemo(inner)
    red, blue = Image.new("RGB", (4, 4), (200, 0, 0)), Image.new("RGB", (4, 4), (0, 0, 200))
    first = memo.encode_text(["a red circle", "a blue square", "a red circle"])
    again = memo.encode_text(["a blue square", "shapes"])  # another probe's captions
    images = memo.encode_image([red, blue, Image.new("RGB", (4, 4), (200, 0, 0))])  # equal pixels: one image
    assert inner.texts == ["a red circle", "a blue square", "shapes"] and len(inner.images) == 2
    assert torch.equal(first, inner.encode_text(["a red circle", "a blue square", "a red circle"]))
    assert torch.equal(again[0], first[1]) and torch.equal(images[0], images[2])
    assert memo.max_tokens == 7 and memo.encoded == {"texts": 3, "images": 2}


def test_truncation_counts_are_asked_once_per_caption_for_a_run():
    inner, counts = Counting(), TruncationCounts()
    texts = ["short", "a much longer caption", "tiny", "another long caption"]
    assert PassMemo(inner, counts).count_truncated(texts) == 2
    calls = inner.truncation_calls
    assert PassMemo(inner, counts).count_truncated(texts[::-1] + ["short"]) == 2  # the next pass
    assert inner.truncation_calls == calls


def test_transformed_images_are_kept_within_their_budget():
    calls = []

    def transform(image):
        calls.append(image)
        return torch.zeros(3, 8, 8)  # 768 bytes

    kept = TransformedImages(budget_mb=1000 / 2 ** 20)  # room for one
    a, b = Image.new("RGB", (4, 4), (1, 2, 3)), Image.new("RGB", (4, 4), (3, 2, 1))
    for image in (a, b, a, b):
        kept.get(image, transform)
    assert len(calls) == 3 and len(kept.tensors) == 1  # a kept; b, over the budget, transformed each time
