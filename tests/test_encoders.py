"""Third-party encoders in `compclip probe --encoder`: tiny random open_clip and transformers models, built here,
score every probe example exactly as a direct computation with the model's own encoders and the official rule."""

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from helpers import DEFAULT
from lit_compclip.cli import main
from lit_compclip.evaluate import default_out
from lit_compclip.probes.export import clip_benchmark_results, write_clip_benchmark

ATOL = 1e-5  # batched vs one-by-one encoding: fp32 rounding only
ARCH = "ViT-S-32-alt"  # the example: a 43M-parameter open_clip architecture, built with random weights


def probe_args(world, names=("sugarcrepe", "sugarcrepe_pp", "aro", "winoground", "whatsup", "docci")) -> list[str]:
    """`--probe` groups for the synthetic world's probe sets (only these run), 4 examples per file."""
    p = Path(world) / "probes"
    options = {"sugarcrepe": [f"annotations={p}/sugarcrepe", f"images={p}/sugarcrepe/images"],
               "sugarcrepe_pp": [f"annotations={p}/sugarcrepe_pp", f"images={p}/sugarcrepe/images"],
               "aro": [f"root={p}/aro", f"images={p}/aro/images"],
               "winoground": [f"examples={p}/winoground/examples.jsonl", f"images={p}/winoground/images"],
               "whatsup": [f"root={p}/whatsup"],
               "docci": ["type=retrieval", "format=docci", f"annotations={p}/docci/docci_descriptions.jsonlines",
                         f"images={p}/docci/images"]}
    return ["probes.limit=4"] + [a for n in names for a in ("--probe", n, *options[n])]


class Direct:
    """Embeddings computed one input at a time with the model's own functions, cached by image (and crop) and text."""

    def __init__(self, image_fn, text_fn):
        self.image_fn, self.text_fn, self.cache = image_fn, text_fn, {}

    def image(self, path, box=None) -> torch.Tensor:
        key = (path, tuple(box) if box else None)
        if key not in self.cache:
            with Image.open(path) as im:
                im = im.convert("RGB")
            self.cache[key] = F.normalize(self.image_fn(im.crop(tuple(box)) if box else im).float(), dim=-1)[0]
        return self.cache[key]

    def text(self, text) -> torch.Tensor:
        if text not in self.cache:
            self.cache[text] = F.normalize(self.text_fn(text).float(), dim=-1)[0]
        return self.cache[text]

    def sim(self, record, caption) -> float:
        return float(self.image(record["image"], record.get("box")) @ self.text(caption))


# The per-example record files the synthetic world's probe sets give (probes.limit=4): <probe>/<subset>.jsonl
PP_SUBSETS = [f"{kind}_{task}" for kind in ("swap_att", "swap_obj", "replace_att", "replace_obj", "replace_rel")
              for task in ("itt", "tot")]
RECORDS = {"sugarcrepe": {"add_att", "add_obj", "replace_att", "replace_obj", "replace_rel", "swap_att", "swap_obj"},
           "sugarcrepe_pp": set(PP_SUBSETS), "aro": {"vg_relation", "vg_attribution"}, "winoground": {"group"},
           "whatsup": {"controlled_a", "coco_qa_two"}, "docci": {"t2i"}}


def read_records(folder: Path, names) -> dict[str, dict[str, list[dict]]]:
    """Every record file of the probes run, each asserted to be there and to hold records."""
    records = {d.name: {f.stem: [json.loads(line) for line in f.read_text().splitlines()] for f in d.glob("*.jsonl")}
               for d in folder.iterdir() if d.is_dir() and d.name != "clip_benchmark"}
    assert {probe: set(subsets) for probe, subsets in records.items()} == {name: RECORDS[name] for name in names}
    assert all(rows for subsets in records.values() for rows in subsets.values())
    return records


class Verdicts:
    """The official strict rule on the direct scores, per metric; checked against each record's verdict except
    where a comparison is within rounding (there the record's verdict is counted: either is right)."""

    def __init__(self):
        self.checked, self.by_metric = 0, {}

    def add(self, metric: str, want: bool, margins: list[float], got: bool) -> bool:
        if min(abs(m) for m in margins) > 10 * ATOL:
            assert got == want, metric
            self.checked += 1
        else:
            want = got
        self.by_metric.setdefault(metric, []).append(want)
        return want

    def accuracies(self) -> dict[str, float]:
        return {metric: sum(v) / len(v) for metric, v in self.by_metric.items()}


def check_against_direct(records: dict, direct: Direct) -> Verdicts:
    """Every record's scores equal the direct computation and its verdict the official rule; returns the verdicts,
    whose accuracies the probe's own figures must equal."""
    verdicts = Verdicts()
    for probe, subsets in records.items():
        for subset, rows in subsets.items():
            metric = f"probe/{probe}/{subset}"
            for r in rows:
                if probe == "sugarcrepe_pp":  # both positives must beat the negative (ITT); caption2 first (TOT)
                    c1, c2, neg = r["all_captions"]
                    if subset.endswith("_itt"):
                        s = [direct.sim(r, c) for c in (c1, c2, neg)]
                        assert r["image_scores"] == pytest.approx(s, abs=ATOL)
                        verdicts.add(metric, s[0] > s[2] and s[1] > s[2], [s[0] - s[2], s[1] - s[2]], r["correct"])
                    else:
                        t = [float(direct.text(a) @ direct.text(b)) for a, b in ((c1, c2), (c1, neg), (c2, neg))]
                        assert r["text_scores"] == pytest.approx(t, abs=ATOL)
                        verdicts.add(metric, t[0] > t[1] and t[0] > t[2], [t[0] - t[1], t[0] - t[2]], r["correct"])
                elif probe == "winoground":  # matrix[c][i] = sim(caption c, image i)
                    m = [[float(direct.image(i) @ direct.text(c)) for i in r["images"]] for c in r["captions"]]
                    assert torch.tensor(r["matrix"]) == pytest.approx(torch.tensor(m), abs=ATOL)
                    text = verdicts.add(f"probe/{probe}/text", m[0][0] > m[1][0] and m[1][1] > m[0][1],
                                        [m[0][0] - m[1][0], m[1][1] - m[0][1]], r["text"])
                    image = verdicts.add(f"probe/{probe}/image", m[0][0] > m[0][1] and m[1][1] > m[1][0],
                                         [m[0][0] - m[0][1], m[1][1] - m[1][0]], r["image_score"])
                    assert r["correct"] == (text and image)
                    verdicts.by_metric.setdefault(f"probe/{probe}/group", []).append(text and image)
                elif probe == "docci":  # text-to-image: the own image must beat every other image of the set
                    own = direct.sim(r, r["captions"][0])
                    assert r["scores"] == pytest.approx([own], abs=ATOL)
                    assert r["rival_scores"] == pytest.approx(
                        [float(direct.image(i) @ direct.text(r["captions"][0])) for i in r["rival_images"]], abs=ATOL)
                    others = [float(direct.image(x["image"]) @ direct.text(r["captions"][0])) for x in rows
                              if x["image"] != r["image"]]
                    verdicts.add(f"probe/{probe}/t2i_r1", all(own > o for o in others), [own - o for o in others],
                                 r["correct"])
                else:  # sugarcrepe, aro, whatsup: the true caption (first) above every other option
                    s = [direct.sim(r, c) for c in r["captions"]]
                    assert r["scores"] == pytest.approx(s, abs=ATOL)
                    verdicts.add(metric, s[0] > max(s[1:]), [s[0] - x for x in s[1:]], r["correct"])
    return verdicts


def check_accuracies(out: Path, verdicts: Verdicts) -> None:
    """probes.json's accuracy of every subset recorded is the share of examples the official rule gets right."""
    probes = json.loads((out / "probes.json").read_text())
    want = verdicts.accuracies()
    assert {k: probes[k] for k in want} == pytest.approx(want, abs=1e-9)


def run_probe(args, capsys) -> None:
    """On the CPU, as the direct computation (a GPU's convolutions round differently)."""
    assert main(["probe", *args, "--device", "cpu"]) == 0, capsys.readouterr().err


def check_outputs(out: Path, spec: str, model: str, pretrained: str, names) -> dict:
    """probes.json, encoder.json and one CLIP_benchmark file per suite, whose metrics are the probe's."""
    probes = json.loads((out / "probes.json").read_text())
    info = json.loads((out / "encoder.json").read_text())
    assert info["spec"] == spec and info["dtype"] == "float32" and info["context_length"] > 0
    for name in names:
        record = json.loads((out / "clip_benchmark" / f"{name}.json").read_text())
        assert (record["dataset"], record["model"], record["pretrained"]) == (name, model, pretrained)
        assert record["task"] == ("zeroshot_retrieval" if name == "docci" else "image_caption_selection")
        assert record["metrics"] == {k.split("/", 2)[2]: v for k, v in probes.items()
                                     if k.startswith(f"probe/{name}/") and not k.endswith("/seconds")}
    return info


# ---- open_clip ----

@pytest.fixture(scope="module")
def open_clip_file(tmp_path_factory):
    """(checkpoint file, model, preprocess, tokenizer): a random ViT-S-32-alt saved with torch.save(state_dict)."""
    import open_clip

    torch.manual_seed(0)
    model, _, preprocess = open_clip.create_model_and_transforms(ARCH, pretrained=None)
    path = tmp_path_factory.mktemp("open_clip") / "vit_s_32_alt.pt"
    torch.save(model.state_dict(), path)
    return path, model.eval(), preprocess, open_clip.get_tokenizer(ARCH)


def test_open_clip_encoder_scores_every_probe_as_the_model_does(world, open_clip_file, tmp_path, capsys):
    path, model, preprocess, tokenizer = open_clip_file
    spec = f"open_clip:{ARCH}@{path}"
    run_probe(["--encoder", spec, *probe_args(world), "--dump", str(tmp_path)], capsys)
    with torch.no_grad():
        direct = Direct(lambda im: model.encode_image(preprocess(im)[None]),
                        lambda t: model.encode_text(tokenizer([t])))
        verdicts = check_against_direct(read_records(tmp_path, RECORDS), direct)
    assert verdicts.checked >= 50
    check_accuracies(tmp_path, verdicts)
    info = check_outputs(tmp_path, spec, ARCH, str(path), ("sugarcrepe", "aro", "winoground", "docci"))
    assert info["tokenizer"] == "SimpleTokenizer" and info["context_length"] == 77
    assert info["image_preprocess"]["size"] == [224, 224]
    probes = json.loads((tmp_path / "probes.json").read_text())
    assert probes["probe/docci/max_tokens"] == 77 and probes["probe/sugarcrepe/n"] == 7 * 4


def test_open_clip_reads_a_checkpoint_with_a_code_global_never(world, tmp_path, capsys):
    import os

    bad = tmp_path / "bad.pt"
    torch.save({"visual.proj": torch.zeros(1), "hook": os.getcwd}, bad)  # a function: unpickling it could run code
    assert main(["probe", "--encoder", f"open_clip:{ARCH}@{bad}", *probe_args(world, ["sugarcrepe"])]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "is refused" in err and "getcwd" in err, err


# ---- transformers ----

def tiny_tokenizer(max_length: int):
    """A CLIP byte-level BPE tokenizer with no merges (one token per character): needs no download."""
    from tokenizers import pre_tokenizers
    from transformers import CLIPTokenizer

    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for suffix in ("", "</w>"):
        vocab.update({c + suffix: len(vocab) + i for i, c in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))})
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=max_length)


def tiny_hf(folder: Path, family: str):
    """A random tiny CLIPModel or SiglipModel and its processor, saved with save_pretrained to `folder`."""
    import transformers as tf

    max_length = 77 if family == "clip" else 64
    tok = tiny_tokenizer(max_length)
    text = dict(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                max_position_embeddings=max_length, bos_token_id=0, eos_token_id=1, pad_token_id=1)
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=32,
                  patch_size=8)
    torch.manual_seed(0)
    if family == "clip":
        model = tf.CLIPModel(tf.CLIPConfig(text_config=text, vision_config=vision, projection_dim=16))
        images = tf.CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
        processor = tf.CLIPProcessor(image_processor=images, tokenizer=tok)
    else:
        model = tf.SiglipModel(tf.SiglipConfig(text_config=text, vision_config=vision))
        processor = tf.SiglipProcessor(image_processor=tf.SiglipImageProcessor(size={"height": 32, "width": 32}),
                                       tokenizer=tok)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return model.eval(), processor


@pytest.mark.parametrize("family, names, padding", [
    ("clip", ("sugarcrepe", "sugarcrepe_pp", "aro", "winoground", "whatsup", "docci"), True),
    ("siglip", ("sugarcrepe", "docci"), "max_length"),  # SigLIP reads text padded to its full 64 tokens
])
def test_hf_encoder_scores_every_probe_as_the_model_does(world, tmp_path, capsys, family, names, padding):
    model, processor = tiny_hf(tmp_path / family, family)
    spec = f"hf:{tmp_path / family}"
    out = tmp_path / "out"
    run_probe(["--encoder", spec, *probe_args(world, names), "--dump", str(out)], capsys)
    length = processor.tokenizer.model_max_length

    def text(t):
        tokens = processor(text=[t], padding=padding, truncation=True, max_length=length, return_tensors="pt")
        return model.get_text_features(**tokens).pooler_output

    with torch.no_grad():
        def image(im):
            return model.get_image_features(**processor(images=[im], return_tensors="pt")).pooler_output

        direct = Direct(image, text)
        verdicts = check_against_direct(read_records(out, names), direct)
    assert verdicts.checked >= (40 if family == "clip" else 20)
    check_accuracies(out, verdicts)
    info = check_outputs(out, spec, str(tmp_path / family), "hf", names)
    assert info["context_length"] == length and info["text_kwargs"]["padding"] == padding
    probes = json.loads((out / "probes.json").read_text())
    assert probes["probe/docci/max_tokens"] == length and probes["probe/docci/truncated_fraction"] > 0  # 1 token/char


# ---- errors, output folder, export ----

@pytest.mark.parametrize("args, message", [
    (["--encoder", "open_clip:ViT-S-32-alte@x.pt"],
     "unknown architecture 'ViT-S-32-alte' (did you mean 'ViT-S-32-alt'?)"),
    (["--encoder", f"open_clip:{ARCH}@/no/such.pt"], "not a pretrained tag of ViT-S-32-alt"),
    (["--encoder", f"open_clip:{ARCH}"], "needs @PRETRAINED"),
    (["--encoder", "open_clip:ViT-B-32@openai"], "not in the local cache"),
    (["--encoder", "hf:/no/such/folder"], "folder '/no/such/folder' not found"),
    (["--encoder", "hf:nobody/uncached-clip"], "not in the local Hugging Face cache"),
    (["--encoder", "openclip:ViT-B-32@openai"], "(did you mean 'open_clip'?)"),
    (["--encoder", "ViT-B-32"], "not of the form KIND:TARGET"),
    (["--encoder", "compclip:nowhere.ckpt"], "checkpoint 'nowhere.ckpt' not found"),
    (["--encoder", "hf:x", "--ckpt", "y.ckpt"], "not both"),
    (["--encoder", "hf:x", "--device", "gpu0"], "not a torch device"),
])
def test_bad_encoder_is_one_line_exit_2_before_the_world_is_built(tmp_path, capsys, args, message):
    world = tmp_path / "world"  # the default suites, in a world a good spec would build
    assert main(["probe", DEFAULT, f"synth.out_dir={world}", "synth.auto=true", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err, err
    assert not world.exists()


def test_default_output_folder_is_named_after_the_spec(tmp_path):
    weights = tmp_path / "my weights.pt"
    weights.write_bytes(b"")
    assert default_out(f"open_clip:{ARCH}@{weights}") == "runs/probe-open_clip_ViT-S-32-alt@my_weights.pt"
    assert default_out("open_clip:ViT-B-32@openai") == "runs/probe-open_clip_ViT-B-32@openai"
    assert default_out("hf:google/siglip-base-patch16-224") == "runs/probe-hf_google_siglip-base-patch16-224"
    assert default_out(f"hf:{tmp_path}") == f"runs/probe-hf_{tmp_path.name}"


def test_clip_benchmark_export_has_its_fields_one_file_per_suite(tmp_path):
    metrics = {"probe/sugarcrepe/swap_att": 0.5, "probe/sugarcrepe/seconds": 3.0, "probe/docci/t2i_r1": 0.25,
               "probe/docci2/t2i_r1": 1.0, "probe/winoground/group": 0.0}
    types = {"sugarcrepe": "sugarcrepe", "docci": "retrieval", "winoground": "winoground", "empty": "aro"}
    results = clip_benchmark_results(metrics, types, "ViT-B-32", "openai", {"dtype": "float32"})
    assert set(results) == {"sugarcrepe", "docci", "winoground"}  # a suite with no metrics writes nothing
    assert results["sugarcrepe"] == {"dataset": "sugarcrepe", "model": "ViT-B-32", "pretrained": "openai",
                                     "task": "image_caption_selection", "metrics": {"swap_att": 0.5},
                                     "language": "en", "probe": "sugarcrepe", "encoder": {"dtype": "float32"}}
    assert results["docci"]["task"] == "zeroshot_retrieval" and results["docci"]["metrics"] == {"t2i_r1": 0.25}
    paths = write_clip_benchmark(results, str(tmp_path / "cb"))
    assert sorted(Path(p).name for p in paths) == ["docci.json", "sugarcrepe.json", "winoground.json"]
    assert json.loads((tmp_path / "cb" / "docci.json").read_text()) == results["docci"]
