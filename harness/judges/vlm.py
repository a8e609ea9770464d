"""A vision-language model as a success judge (transformers; Qwen2.5-VL first, any chat VLM).

Per sample, the judge shows the model ``frames`` images taken evenly from the episode (always
ending at its last frame), then asks in the model's own chat template::

    <image> ... <image>
    {prompt}                      # one of PROMPTS, with {n} and {instruction} filled in

and reads the logits of the first answer token (the position after the template's assistant
header). P(yes) = softmax over two scores, the log-sum-exp of the logits of the tokens that spell
"yes" ("yes", "Yes", " yes", ...) and of those that spell "no" — normalised over the two answers,
so the rest of the vocabulary does not matter. Sample ``k`` of ``samples`` uses a shifted frame
grid and prompt ``k mod len(PROMPTS)``; the verdict is the majority of the samples
(``vote=majority``, score = share of yes votes, a sample votes yes when its P(yes) >= 0.5) or the
mean probability (``vote=mean``). Everything is deterministic: no sampling from the model.

Weights load offline from a folder or the Hugging Face cache (``path=`` folder or repo id); a
missing checkpoint is one line saying where it was looked for and how to provide it.

Inputs: Qwen2-VL / Qwen2.5-VL are prepared with ``Qwen2VLImageProcessorPil`` directly (their
``AutoProcessor`` needs a video processor that needs torchvision, which breaks CPU torch here):
each ``<|image_pad|>`` of the template is repeated ``grid_thw.prod() // merge_size**2`` times, as
the processor would. Other models go through ``AutoProcessor`` and its ``apply_chat_template``.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from harness.errors import HarnessError, require_module

from .base import check_frames, check_threshold, sample_frame_indices

log = logging.getLogger(__name__)

DEFAULT_PATH = "Qwen/Qwen2.5-VL-3B-Instruct"

# The documented prompt template (docs/judges.md); sample k uses PROMPTS[k % len(PROMPTS)].
PROMPTS = (
    "These {n} images are frames from a video of a robot, in time order; the last image shows the end of "
    "the episode. The robot was instructed: \"{instruction}\". Did the robot complete the task? "
    "Answer with yes or no.",
    "The images show a robot trying to {instruction_lower}, from the first to the final frame. In the final "
    "frame, is the task completed? Answer with yes or no.",
    "Task: {instruction}. Here are {n} frames of the robot's attempt, ending with its final state. Was the "
    "task accomplished? Answer with yes or no.",
)
YES_WORDS = ("yes", "Yes", "YES", " yes", " Yes", " YES")
NO_WORDS = ("no", "No", "NO", " no", " No", " NO")
QWEN_FAMILY = ("qwen2_vl", "qwen2_5_vl")
VOTES = ("majority", "mean")
DTYPES = ("float32", "bfloat16", "float16")
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")

_CACHE: dict[tuple[str, str, str, int | None], VLMBackend] = {}


def format_prompt(template: str, n: int, instruction: str) -> str:
    instruction = instruction.strip().rstrip(".")
    lower = instruction[:1].lower() + instruction[1:]
    return template.format(n=n, instruction=instruction, instruction_lower=lower)


def answer_token_ids(tokenizer: Any, words: Sequence[str]) -> list[int]:
    """Ids of the single tokens that spell one of ``words`` (multi-token spellings are skipped)."""
    ids: list[int] = []
    for w in words:
        enc = tokenizer.encode(w, add_special_tokens=False)
        if len(enc) == 1 and enc[0] not in ids:
            ids.append(int(enc[0]))
    return ids


def _missing(path: str, err: Exception) -> HarnessError:
    is_repo = _REPO_ID.match(path) is not None and not Path(path).expanduser().exists()
    if is_repo:
        from huggingface_hub import constants

        where = f"{path!r} is not in the Hugging Face cache {constants.HF_HUB_CACHE}"
        how = f"run `hf download {path}` on a machine with network and copy the cache here, or pass vlm:path=DIR"
    else:
        folder = Path(path).expanduser()
        reason = "no such folder" if not folder.exists() else " ".join(str(err).split())[:160]
        where = f"not found at {str(folder)!r} ({reason})"
        how = (f"pass vlm:path=DIR with a transformers checkpoint (config.json, weights, tokenizer, "
               f"preprocessor_config.json), e.g. a copy of {DEFAULT_PATH}")
    return HarnessError(f"VLM judge weights {where}: {how}")


def _check_options(frames: Any, samples: Any, vote: Any, threshold: Any, dtype: Any, max_pixels: Any) -> None:
    if not isinstance(frames, int) or isinstance(frames, bool) or frames < 1:
        raise HarnessError(f"vlm: frames must be an integer >= 1, got {frames!r}")
    if not isinstance(samples, int) or isinstance(samples, bool) or samples < 1:
        raise HarnessError(f"vlm: samples must be an integer >= 1, got {samples!r}")
    if vote not in VOTES:
        raise HarnessError(f"vlm: vote must be one of {', '.join(VOTES)}, got {vote!r}")
    if dtype not in DTYPES:
        raise HarnessError(f"vlm: dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    if max_pixels is not None and (not isinstance(max_pixels, int) or max_pixels < 28 * 28):
        raise HarnessError(f"vlm: max_pixels must be an integer >= 784, got {max_pixels!r}")
    check_threshold(threshold, "vlm")


def _find_config(path: str) -> tuple[str, Any]:
    """(where the model loads from: a local folder or the repo id, its config), read offline
    without the weights; a missing checkpoint is one line saying how to provide it."""
    from transformers import AutoConfig

    local = str(Path(path).expanduser()) if Path(path).expanduser().exists() else path
    try:
        return local, AutoConfig.from_pretrained(local, local_files_only=True)
    except (OSError, ValueError) as err:
        raise _missing(path, err) from err


class VLMBackend:
    """A loaded model + its input preparation; shared by judges with the same path/device/dtype."""

    def __init__(self, path: str, device: str = "cpu", dtype: str = "float32", max_pixels: int | None = None):
        require_module("transformers", "transformers (VLM judge)", "models")
        import torch
        from transformers import AutoModelForImageTextToText
        from transformers.utils import logging as hf_logging

        self.path, self.device = path, torch.device(device)
        old = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()
        try:
            local, config = _find_config(path)
            self.family = config.model_type
            if self.family in QWEN_FAMILY:
                from transformers import AutoTokenizer
                from transformers.models.qwen2_vl import Qwen2VLImageProcessorPil

                kwargs = {} if max_pixels is None else {"max_pixels": int(max_pixels)}
                try:
                    self.tokenizer = AutoTokenizer.from_pretrained(local, local_files_only=True)
                    self.image_processor = Qwen2VLImageProcessorPil.from_pretrained(local, local_files_only=True, **kwargs)
                except (OSError, ValueError) as err:
                    raise _missing(path, err) from err
                self.processor = None
                self.image_token = "<|image_pad|>"
                self.merge = int(self.image_processor.merge_size)
            else:
                from transformers import AutoProcessor

                try:
                    self.processor = AutoProcessor.from_pretrained(local, local_files_only=True)
                except (OSError, ValueError, ImportError) as err:
                    raise _missing(path, err) from err
                self.tokenizer = self.processor.tokenizer
            try:
                model, info = AutoModelForImageTextToText.from_pretrained(
                    local, local_files_only=True, dtype=getattr(torch, dtype), output_loading_info=True)
            except (OSError, ValueError) as err:
                raise _missing(path, err) from err
        finally:
            hf_logging.set_verbosity(old)
        if info.get("missing_keys"):
            keys = sorted(info["missing_keys"])
            raise HarnessError(f"VLM judge: the checkpoint at {path!r} lacks {len(keys)} of the model's weights "
                               f"(e.g. {', '.join(keys[:3])}); pass vlm:path= a complete checkpoint")
        self.model = model.to(self.device).eval().requires_grad_(False)
        template = getattr(self.processor, "chat_template", None) or getattr(self.tokenizer, "chat_template", None)
        if not template:
            raise HarnessError(f"VLM judge: {path!r} has no chat template (tokenizer_config.json / chat_template.jinja); "
                               f"the judge needs an instruction-tuned chat model")
        self.yes_ids = answer_token_ids(self.tokenizer, YES_WORDS)
        self.no_ids = answer_token_ids(self.tokenizer, NO_WORDS)
        if not self.yes_ids or not self.no_ids or set(self.yes_ids) & set(self.no_ids):
            raise HarnessError(f"VLM judge: the tokenizer at {path!r} has no single-token 'yes'/'no' answers "
                               f"(yes ids {self.yes_ids}, no ids {self.no_ids})")

    def inputs(self, images: list[np.ndarray], prompt: str) -> dict[str, Any]:
        """Chat-template prompt with the images in front of the question, as model inputs."""
        messages = [{"role": "user", "content": [{"type": "image"} for _ in images] + [{"type": "text", "text": prompt}]}]
        if self.processor is None:  # Qwen2-VL family, see the module docstring
            text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            vision = self.image_processor(images=images, return_tensors="pt")
            parts = text.split(self.image_token)
            if len(parts) != len(images) + 1:
                raise HarnessError(f"VLM judge: the chat template of {self.path!r} placed {len(parts) - 1} image "
                                   f"tokens for {len(images)} images")
            counts = (vision["image_grid_thw"].prod(dim=-1) // self.merge ** 2).tolist()
            text = parts[0] + "".join(self.image_token * int(c) + p for c, p in zip(counts, parts[1:]))
            enc = self.tokenizer(text, return_tensors="pt", add_special_tokens=False)
            batch = {**enc, **vision}
        else:
            from PIL import Image

            text = self.processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            batch = dict(self.processor(text=text, images=[Image.fromarray(f) for f in images], return_tensors="pt"))
        dtype = next(self.model.parameters()).dtype
        return {k: (v.to(self.device, dtype) if v.is_floating_point() else v.to(self.device)) for k, v in batch.items()}

    def p_yes(self, images: list[np.ndarray], prompt: str) -> float:
        """P(yes) normalised over yes/no from the next-token logits after the prompt."""
        import torch

        with torch.no_grad():
            logits = self.model(**self.inputs(images, prompt)).logits[0, -1].float()
        yes = torch.logsumexp(logits[self.yes_ids], dim=0)
        no = torch.logsumexp(logits[self.no_ids], dim=0)
        return float(torch.sigmoid(yes - no))


def load_backend(path: str, device: str = "cpu", dtype: str = "float32", max_pixels: int | None = None) -> VLMBackend:
    key = (path, device, dtype, max_pixels)
    if key not in _CACHE:
        _CACHE[key] = VLMBackend(path, device, dtype, max_pixels)
    return _CACHE[key]


class VLMJudge:
    """Sampled frames + instruction -> P(success) from a chat VLM's yes/no answer logits."""

    needs_latents = False
    needs_success = False

    def __init__(self, path: str = DEFAULT_PATH, frames: int = 8, samples: int = 3, vote: str = "majority",
                 threshold: float = 0.5, device: str = "cpu", dtype: str = "float32", max_pixels: int | None = None):
        _check_options(frames, samples, vote, threshold, dtype, max_pixels)
        self.path, self.frames, self.samples, self.vote = str(path), frames, samples, vote
        self.threshold = check_threshold(threshold, "vlm")
        self.backend = load_backend(self.path, str(device), dtype, max_pixels)
        self.label = f"vlm:path={self.path}"
        self.last: dict[str, Any] = {}

    @classmethod
    def check(cls, path: str = DEFAULT_PATH, frames: int = 8, samples: int = 3, vote: str = "majority",
              threshold: float = 0.5, dtype: str = "float32", max_pixels: int | None = None, **_: Any) -> None:
        """The options, and the model's config found offline (its weights are not read), before a
        run starts: a missing checkpoint is one line saying how to provide it."""
        _check_options(frames, samples, vote, threshold, dtype, max_pixels)
        require_module("transformers", "transformers (VLM judge)", "models")
        from transformers.utils import logging as hf_logging

        old = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()
        try:
            _find_config(str(path))
        finally:
            hf_logging.set_verbosity(old)

    def score(self, frames: np.ndarray, instruction: str, latents: np.ndarray | None = None, *,
              success: Sequence[bool] | None = None) -> float:
        frames = check_frames(frames, "vlm judge")
        per_sample = []
        for k in range(self.samples):
            idx = sample_frame_indices(len(frames), self.frames, k, self.samples)
            prompt = format_prompt(PROMPTS[k % len(PROMPTS)], len(idx), instruction)
            p = self.backend.p_yes([frames[i] for i in idx], prompt)
            per_sample.append({"frames": idx, "prompt": k % len(PROMPTS), "p_yes": p})
        probs = np.array([s["p_yes"] for s in per_sample])
        votes = probs >= 0.5
        score = float(votes.mean()) if self.vote == "majority" else float(probs.mean())
        self.last = {"samples": per_sample, "mean_p_yes": float(probs.mean()), "yes_votes": int(votes.sum()),
                     "score": score}
        log.debug("vlm judge %s: %s", self.path, self.last)
        return score
