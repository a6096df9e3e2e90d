"""The `transformers` backend: any Hugging Face image-text-to-text model from a local folder or the local hub cache."""

from __future__ import annotations

import io
import os

import torch
from PIL import Image

from lit_compclip.recaption.base import Outcome, Request

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
          "float16": torch.float16, "fp16": torch.float16}


def pick_device(device: str) -> torch.device:
    """'auto' -> the GPU when there is one, else the CPU; anything else is passed to torch.device."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(device)
    except RuntimeError:
        raise ValueError(f"transformers backend: unknown device {device!r}; use 'auto', 'cpu', 'cuda' or 'cuda:N'")


def pick_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """'auto' -> bf16 on GPUs that support it (fp16 on older ones), fp32 on the CPU."""
    if dtype == "auto":
        if device.type != "cuda":
            return torch.float32
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if dtype not in DTYPES:
        raise ValueError(f"transformers backend: unknown dtype {dtype!r}; choose one of {['auto', *DTYPES]}")
    return DTYPES[dtype]


def open_image(data: bytes) -> Image.Image:
    """Decode the image fully now, so a truncated file fails here and not inside the processor."""
    image = Image.open(io.BytesIO(data))
    image.load()
    return image.convert("RGB")


def first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}".rstrip(": ")


def load(model: str):
    """(processor, model class, config) from a local folder or the hub cache; never downloads."""
    import transformers
    from transformers import AutoConfig, AutoModelForImageTextToText, AutoProcessor

    local = os.path.isdir(model)
    try:
        config = AutoConfig.from_pretrained(model, local_files_only=True)
        processor = AutoProcessor.from_pretrained(model, local_files_only=True)
    except (OSError, ValueError) as error:
        if local:
            raise ValueError(f"transformers backend: {model!r} is not a loadable model folder ({first_line(error)})")
        raise ValueError(f"transformers backend: model {model!r} is not a local folder and is not in the Hugging "
                         f"Face cache, so it is not available offline; pass a local folder (e.g. one made with "
                         f"`hf download {model} --local-dir DIR` on a machine with internet)") from None
    cls = AutoModelForImageTextToText
    if type(config) not in cls._model_mapping:
        # Older or unusual architectures: the class the checkpoint names itself.
        names = [n for n in (config.architectures or []) if hasattr(transformers, n)]
        if not names:
            raise ValueError(f"transformers backend: {model!r} ({type(config).__name__}) is not an image-text-to-text "
                             f"model known to transformers {transformers.__version__}")
        cls = getattr(transformers, names[0])
    return processor, cls, config


class TransformersBackend:
    """Batched `generate` with left padding; greedy when temperature is 0; returns only the new tokens, stripped."""

    name = "transformers"

    def __init__(self, model: str, max_tokens: int = 300, temperature: float = 0.0, top_p: float = 1.0,
                 batch_size: int = 8, device: str = "auto", dtype: str = "auto", seed: int = 0):
        if max_tokens < 1 or batch_size < 1:
            raise ValueError(f"transformers backend: max_tokens and batch_size must be >= 1, "
                             f"got {max_tokens} and {batch_size}")
        if temperature < 0 or not 0 < top_p <= 1:
            raise ValueError(f"transformers backend: need temperature >= 0 and 0 < top_p <= 1, "
                             f"got {temperature} and {top_p}")
        self.model = model
        self.max_tokens, self.temperature, self.top_p = max_tokens, temperature, top_p
        self.batch_size, self.seed = batch_size, seed
        self.device = pick_device(device)
        self.dtype = pick_dtype(dtype, self.device)
        self.processor, cls, config = load(model)
        self._net = cls.from_pretrained(model, config=config, dtype=self.dtype, local_files_only=True)
        self._net.to(self.device).eval()
        self.tokenizer = getattr(self.processor, "tokenizer", self.processor)
        self.tokenizer.padding_side = "left"  # generation appends on the right, so prompts must end aligned
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.encoder_decoder = bool(getattr(self._net.config, "is_encoder_decoder", False))
        self.chat = getattr(self.processor, "chat_template", None) is not None
        self.prefix_image = None  # plain prompts only: whether the image token must be written in; decided once
        eos = self._net.generation_config.eos_token_id
        eos = eos if eos is not None else self.tokenizer.eos_token_id
        self.eos = set(eos if isinstance(eos, list) else [eos]) - {None}

    def prompt_text(self, prompt: str) -> str:
        if self.chat:
            messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}]
            return self.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        if self.prefix_image:
            return f"{self.processor.image_token}\n{prompt}"
        return prompt

    def encode(self, images: list[Image.Image], prompts: list[str]):
        def process():
            return self.processor(images=images, text=[self.prompt_text(p) for p in prompts],
                                  return_tensors="pt", padding=True)

        if not self.chat and self.prefix_image is None:
            # Some processors (PaliGemma, Florence-2) insert the image token themselves, others (LLaVA) need it
            # written in the text: try the bare prompt once, and write the token in from then on if that failed.
            token_id = getattr(self.processor, "image_token_id", None)
            try:
                inputs = process()
            except ValueError:
                if token_id is None:
                    raise
                self.prefix_image = True
                try:
                    return process().to(self.device, dtype=self.dtype)
                except ValueError:
                    self.prefix_image = None  # undecided: neither worked for this batch
                    raise
            self.prefix_image = token_id is not None and not (inputs["input_ids"] == token_id).any().item()
            if not self.prefix_image:
                return inputs.to(self.device, dtype=self.dtype)
        return process().to(self.device, dtype=self.dtype)

    def count(self, row: torch.Tensor) -> int:
        """Generated tokens up to and including the first end-of-sequence token (the padding after it is not)."""
        for i, token in enumerate(row.tolist()):
            if token in self.eos:
                return i + 1
        return len(row)

    @torch.inference_mode()
    def generate(self, images: list[Image.Image], prompts: list[str]) -> list[Outcome]:
        inputs = self.encode(images, prompts)
        sampling = {"do_sample": False} if self.temperature == 0 else {
            "do_sample": True, "temperature": self.temperature, "top_p": self.top_p}
        out = self._net.generate(**inputs, max_new_tokens=self.max_tokens, pad_token_id=self.tokenizer.pad_token_id,
                                 **sampling)
        new = out if self.encoder_decoder else out[:, inputs["input_ids"].shape[1]:]  # (B, T_new)
        texts = self.processor.batch_decode(new, skip_special_tokens=True)
        outcomes = []
        for text, row in zip(texts, new):
            text, tokens = text.strip(), self.count(row[1:] if self.encoder_decoder else row)  # skip decoder start
            outcomes.append(Outcome(text=text, tokens=tokens) if text else
                            Outcome(text=None, error="empty answer", tokens=tokens))
        return outcomes

    def caption(self, requests: list[Request]) -> list[Outcome]:
        outcomes: list[Outcome | None] = [None] * len(requests)
        ready = []  # (index, image)
        for i, request in enumerate(requests):
            try:
                ready.append((i, open_image(request.image)))
            except Exception as error:  # PIL raises many types for a bad file
                outcomes[i] = Outcome(text=None, error=f"unreadable {request.image_ext} image ({first_line(error)})")
        torch.manual_seed(self.seed)  # the same requests sample the same captions on a rerun
        for start in range(0, len(ready), self.batch_size):
            batch = ready[start:start + self.batch_size]
            for (i, _), outcome in zip(batch, self.generate_or_split(batch, requests)):
                outcomes[i] = outcome
        assert all(o is not None for o in outcomes)
        return outcomes

    def generate_or_split(self, batch, requests: list[Request]) -> list[Outcome]:
        """One batch; if it fails (out of memory, one odd image), each sample alone, so one failure stays one."""
        try:
            return self.generate([im for _, im in batch], [requests[i].prompt for i, _ in batch])
        except Exception as error:
            if len(batch) == 1:
                return [Outcome(text=None, error=first_line(error))]
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
            return [self.generate_or_split([item], requests)[0] for item in batch]

    def close(self) -> None:
        self._net = None
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
