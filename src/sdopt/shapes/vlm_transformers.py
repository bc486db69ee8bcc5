"""The VLM judge over a local transformers vision-language model folder (nothing downloaded)."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from PIL import Image

from sdopt.errors import SdoptError, exception_line
from sdopt.shapes.scenes import ShapeObject
from sdopt.shapes.vlm import MAX_TOKENS, SEND_SIZE, AnswerError, QuestionJudge, answer_schema, parse_answer, question


class TransformersJudge(QuestionJudge):
    """Asks a local transformers vision-language model folder (loaded on first use, greedy decoding).

    The model is loaded with ``AutoProcessor`` and ``AutoModelForImageTextToText`` from
    ``model_path`` only (never a hub). Without a response format, the prompt asks for the JSON
    and ``parse_answer`` finds it in the reply; a reply without one is an ``SdoptError``
    (greedy decoding would give the same reply again, so there is no retry).
    """

    def __init__(self, model_path: str | os.PathLike, *, device: str | None = None, max_new_tokens: int = MAX_TOKENS, image_size: int = SEND_SIZE):
        self.model_path = Path(model_path)
        self.device = device
        self.max_new_tokens = max_new_tokens
        self.image_size = image_size
        self._processor = None
        self._model = None

    def __repr__(self) -> str:
        return f"TransformersJudge(model_path={str(self.model_path)!r})"

    def prompt(self, obj: ShapeObject) -> str:
        schema = json.dumps(answer_schema(obj), separators=(",", ":"))
        return f"{question(obj)}\nReply with only the JSON object, matching this JSON schema: {schema}"

    def _ask(self, picture: Image.Image, obj: ShapeObject) -> dict:
        reply = self._generate(picture, self.prompt(obj))
        try:
            return parse_answer(reply)
        except AnswerError as e:
            raise SdoptError(f"VLM judge {self.model_path}: {e}") from None

    def _generate(self, picture: Image.Image, prompt: str) -> str:
        """The model's greedy reply to ``prompt`` about ``picture`` (the one place that runs the model)."""
        processor, model = self._load()
        import torch

        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}]
        try:
            text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        except (ValueError, AttributeError) as e:
            raise SdoptError(f"VLM judge {self.model_path}: the processor has no usable chat template ({e})") from None
        inputs = processor(text=[text], images=[picture], return_tensors="pt").to(model.device)
        with torch.inference_mode():
            out = model.generate(**inputs, do_sample=False, max_new_tokens=self.max_new_tokens)
        new_tokens = out[:, inputs["input_ids"].shape[1] :]
        return processor.batch_decode(new_tokens, skip_special_tokens=True)[0]

    def _load(self):
        if self._model is not None:
            return self._processor, self._model
        if not (self.model_path / "config.json").is_file():
            raise SdoptError(
                f"no transformers model folder at {self.model_path} (no config.json): pass model_path, "
                "the folder of a vision-language model saved with save_pretrained (e.g. a downloaded Qwen2.5-VL)"
            )
        try:
            import torch
            import transformers
        except ImportError:
            raise SdoptError("the transformers judge needs the Python packages transformers and torch: pip install transformers torch") from None
        auto_model = getattr(transformers, "AutoModelForImageTextToText", None)
        if auto_model is None:
            raise SdoptError(f"transformers {transformers.__version__} has no AutoModelForImageTextToText: pip install -U transformers")
        version = tuple(int(p) for p in re.findall(r"\d+", transformers.__version__)[:2])
        dtype_option = "dtype" if version >= (4, 56) else "torch_dtype"  # renamed in 4.56
        try:
            processor = transformers.AutoProcessor.from_pretrained(self.model_path, local_files_only=True)
            model = auto_model.from_pretrained(self.model_path, local_files_only=True, **{dtype_option: "auto"})
        except (OSError, ValueError, KeyError) as e:
            raise SdoptError(f"cannot load a vision-language model from {self.model_path}: {exception_line(e)}") from None
        device = self.device or ("cuda" if torch.cuda.is_available() else "cpu")
        self._processor, self._model = processor, model.to(device).eval()
        return self._processor, self._model
