"""The transformers backend on a tiny randomly initialised LLaVA (CLIP vision + Llama) built in a temporary folder."""

import io
import shutil

import pytest
import torch
from PIL import Image

pytest.importorskip("transformers")

from lit_compclip.recaption.base import Request  # noqa: E402
from lit_compclip.recaption.hf_backend import TransformersBackend  # noqa: E402

CHAT_TEMPLATE = (
    "{% for m in messages %}{{ m['role'] }}: {% if m['content'] is string %}{{ m['content'] }}{% else %}"
    "{% for c in m['content'] %}{% if c['type'] == 'image' %}<image>{% else %}{{ c['text'] }}{% endif %}"
    "{% endfor %}{% endif %}{{ '\\n' }}{% endfor %}{% if add_generation_prompt %}assistant:{% endif %}")


def build_tiny_llava(folder, chat_template=CHAT_TEMPLATE):
    """A byte-level BPE tokenizer trained here, a 32x32 CLIP image processor and a one-layer LLaVA: no download."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import (CLIPImageProcessor, CLIPVisionConfig, LlamaConfig, LlavaConfig,
                              LlavaForConditionalGeneration, LlavaProcessor, PreTrainedTokenizerFast)

    bpe = Tokenizer(models.BPE(unk_token="<unk>"))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    sentences = ["a red cube left of a blue sphere", "describe the image in detail", "user: assistant: a photo"]
    bpe.train_from_iterator(sentences * 4, trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<pad>", "<s>", "</s>", "<unk>", "<image>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, pad_token="<pad>", bos_token="<s>", eos_token="</s>",
                                        unk_token="<unk>", extra_special_tokens={"image_token": "<image>"})
    images = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    # CLIP adds a CLS token that the "default" strategy drops: 16 patches -> 16 image tokens.
    processor = LlavaProcessor(image_processor=images, tokenizer=tokenizer, patch_size=8, chat_template=chat_template,
                               vision_feature_select_strategy="default", num_additional_image_tokens=1)
    vision = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                              image_size=32, patch_size=8, projection_dim=32)
    text = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                       num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=256,
                       pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                       eos_token_id=tokenizer.eos_token_id)
    config = LlavaConfig(vision_config=vision, text_config=text, vision_feature_select_strategy="default",
                         image_token_index=tokenizer.convert_tokens_to_ids("<image>"), vision_feature_layer=-1)
    torch.manual_seed(0)
    LlavaForConditionalGeneration(config).save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    return str(build_tiny_llava(tmp_path_factory.mktemp("tiny_llava")))


@pytest.fixture(scope="module")
def backend(tiny_model):
    b = TransformersBackend(model=tiny_model, max_tokens=6, batch_size=2)
    yield b
    b.close()


def png(colour, size=(40, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, format="PNG")
    return buf.getvalue()


def request(key, image, prompt="describe the image", ext="png"):
    return Request(key=key, image=image, image_ext=ext, prompt=prompt, fields={"alt_text": prompt})


def test_backend_returns_one_outcome_per_request_in_order(backend):
    reqs = [request(f"k{i}", png((40 * i, 0, 0), (30 + 7 * i, 30)), "describe " + "a red cube " * i)
            for i in range(5)]  # 5 requests, batch 2: a short last batch, prompts of different lengths
    outcomes = backend.caption(reqs)
    assert len(outcomes) == 5 and len({o.text for o in outcomes}) > 1  # distinct answers, so order can be checked
    for outcome in outcomes:
        assert outcome.error is None or outcome.error == "empty answer"
        assert outcome.text is None or (isinstance(outcome.text, str) and outcome.text == outcome.text.strip())
        assert 1 <= outcome.tokens <= 6
    # Order: each request captioned alone gives the same answer as inside the batch (greedy, fp32).
    assert [backend.caption([r])[0] for r in reqs] == outcomes
    assert backend.name == "transformers" and backend.model.endswith("tiny_llava0")
    assert backend.prompt_text("describe it") == "user: <image>describe it\nassistant:"  # the chat template's


def test_a_failing_batch_is_retried_one_sample_at_a_time(backend, monkeypatch):
    reqs = [request("a", png((255, 0, 0))), request("b", png((0, 255, 0))), request("c", png((0, 0, 255)))]
    expected = backend.caption(reqs)
    generate = backend.generate

    def flaky(images, prompts):  # a batch of two runs out of memory; the green image always fails
        if len(images) > 1:
            raise RuntimeError("CUDA out of memory\nmore detail")
        if images[0].getpixel((0, 0)) == (0, 255, 0):
            raise RuntimeError("bad sample")
        return generate(images, prompts)

    monkeypatch.setattr(backend, "generate", flaky)
    outcomes = backend.caption(reqs)
    assert outcomes[0] == expected[0] and outcomes[2] == expected[2]
    assert outcomes[1].text is None and outcomes[1].error == "RuntimeError: bad sample"


def test_backend_runs_on_cpu_in_float32_when_there_is_no_gpu(backend):
    if torch.cuda.is_available():
        pytest.skip("checks the CPU default")
    assert backend.device.type == "cpu" and backend.dtype == torch.float32


def test_broken_image_is_one_failed_outcome_and_the_rest_are_captioned(backend):
    reqs = [request("good1", png((255, 0, 0))), request("bad", b"\x89PNG not really", ext="png"),
            request("good2", png((0, 0, 255)))]
    outcomes = backend.caption(reqs)
    assert outcomes[1].text is None and "unreadable png image" in outcomes[1].error
    assert outcomes[0] == backend.caption([reqs[0]])[0] and outcomes[2] == backend.caption([reqs[2]])[0]
    assert outcomes[0].tokens is not None and outcomes[2].tokens is not None


def test_empty_generation_is_an_empty_answer_error(tiny_model):
    b = TransformersBackend(model=tiny_model, max_tokens=3)
    with torch.no_grad():  # all logits equal -> greedy picks token 0, the pad token, which decodes to ""
        b._net.get_output_embeddings().weight.zero_()
    [outcome] = b.caption([request("k", png((0, 255, 0)))])
    assert outcome.text is None and outcome.error == "empty answer" and outcome.tokens == 3


def test_sampling_with_a_seed_is_reproducible_and_another_seed_samples_otherwise(tiny_model):
    reqs = [request("a", png((1, 2, 3))), request("b", png((200, 100, 0))), request("c", png((0, 90, 255)))]

    def texts(**options):
        return [o.text for o in TransformersBackend(model=tiny_model, max_tokens=8, **options).caption(reqs)]

    seed3 = texts(temperature=1.0, top_p=0.9, seed=3)
    assert texts(temperature=1.0, top_p=0.9, seed=3) == seed3  # the same seed: the same samples, in a new backend
    assert texts(temperature=1.0, top_p=0.9, seed=4) != seed3  # sampling really samples: another seed, other text
    # (greedy decoding ignores the seed, so it would fail the line above)
    assert texts(temperature=0.0, seed=3) == texts(temperature=0.0, seed=4)


def test_plain_prompt_without_chat_template_gets_the_image_token(tiny_model, tmp_path):
    folder = tmp_path / "no_template"
    shutil.copytree(tiny_model, folder)
    (folder / "chat_template.jinja").unlink()
    b = TransformersBackend(model=str(folder), max_tokens=4)
    assert not b.chat
    [outcome] = b.caption([request("k", png((9, 9, 9)))])
    assert b.prefix_image is True  # LLaVA's processor does not insert <image> itself
    assert outcome.error in (None, "empty answer") and 1 <= outcome.tokens <= 4


def test_uncached_hub_name_fails_with_one_line_offline_error():
    with pytest.raises(ValueError, match="not available offline") as info:
        TransformersBackend(model="nobody-here/definitely-not-cached-vlm")
    assert "\n" not in str(info.value) and "local folder" in str(info.value)


def test_folder_without_a_model_fails_with_one_line(tmp_path):
    with pytest.raises(ValueError, match="not a loadable model folder") as info:
        TransformersBackend(model=str(tmp_path))
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("option", [{"dtype": "float8"}, {"max_tokens": 0}, {"temperature": -1.0}])
def test_bad_options_fail_before_loading(option):
    with pytest.raises(ValueError, match="transformers backend"):
        TransformersBackend(model="never-loaded", **option)
