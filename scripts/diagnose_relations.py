"""Why relations fail: how far a checkpoint's towers tell a scene from its position-swapped twin.

Usage: python scripts/diagnose_relations.py CKPT [SHARD]   (SHARD default: data/synth/train/shard-000000.tar)
Prints mean cosine similarities (1.0 = the tower cannot tell the two apart) for images of family twins and for
caption pairs that differ only in where things are, next to pairs that differ in a colour or a shape, with the
untrained pretrained MiniLM's similarity beside the trained text tower's."""

import io
import json
import sys
import tarfile

import torch
from PIL import Image

from lit_compclip.checkpoints import load_module

TEXT_PAIRS = {
    "place (top/bottom)": ("There is a small red triangle at the bottom.", "There is a small red triangle at the top."),
    "place (left/right)": ("There is a large white diamond on the left.", "There is a large white diamond on the right."),
    "relation (order)": ("The purple cross sits above the red triangle.", "The red triangle sits above the purple cross."),
    "colour": ("There is a small red triangle.", "There is a small blue triangle."),
    "shape": ("There is a small red triangle.", "There is a small red square."),
}


def main(ckpt: str, shard: str = "data/synth/train/shard-000000.tar", n_families: int = 100) -> None:
    model = load_module(ckpt)  # read with weights_only=True: a checkpoint's pickle runs nothing
    records, images = {}, {}
    with tarfile.open(shard) as tar:
        for member in tar:
            key, ext = member.name.split(".", 1)
            data = tar.extractfile(member).read()
            if ext == "json":
                records[key] = json.loads(data)
            elif ext == "jpg":
                images[key] = Image.open(io.BytesIO(data)).convert("RGB")
    families = {}
    for key in sorted(records):
        families.setdefault(records[key]["family"], {})[records[key]["member"]] = key
    families = [f for f in families.values() if {"base", "swap_colour", "swap_position"} <= f.keys()][:n_families]
    with torch.no_grad():
        def emb(key):
            return model.encode_image(model.eval_transform(images[key])[None])[0]

        for twin in ("swap_position", "swap_colour", "other_shape_base"):  # the last: world format 5's shape twin
            if any(twin not in f for f in families):
                continue
            cos = [float(emb(f["base"]) @ emb(f[twin])) for f in families]
            print(f"image  base vs {twin:<14} mean cos {sum(cos) / len(cos):.3f}")
        other = [float(emb(a["base"]) @ emb(b["base"])) for a, b in zip(families, families[1:])]
        print(f"image  base vs another family  mean cos {sum(other) / len(other):.3f}")
        from sentence_transformers import SentenceTransformer

        from lit_compclip.towers.sentence_transformers import resolve_model_path

        before = SentenceTransformer(resolve_model_path("all-MiniLM-L6-v2"), device="cpu")  # untrained baseline
        for name, (a, b) in TEXT_PAIRS.items():
            t = model.encode_text([a, b])
            p = before.encode([a, b], convert_to_tensor=True, normalize_embeddings=True)
            print(f"text   {name:<22} cos {float(t[0] @ t[1]):.3f} (pretrained MiniLM {float(p[0] @ p[1]):.3f})"
                  f"   {a!r} vs {b!r}")


if __name__ == "__main__":
    main(*sys.argv[1:])
