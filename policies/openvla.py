"""OpenVLA through ``transformers``, with the checkpoint family's own image preprocessing.

``openvla:path=...,unnorm_key=...,family=libero|bridge,device=cpu|cuda,center_crop=true``

One step: the env's upright camera image -> the family's preprocessing (the Octo/RLDS resize to
224 px, and for fine-tunes trained with random-crop augmentation a 90 %-area centre crop resized
back) -> the checkpoint's pixel normalisation -> prompt
``"In: What action should the robot take to {instruction}?\\nOut:"`` -> 7 greedy tokens restricted
to the action ids -> de-tokenise and un-normalise (``policies.action_tokenizer``) -> the family's
gripper convention -> a float32 action in the env's ``Box(-1, 1, (7,))``.

``backend=harness`` (default) runs that pipeline here and uses the checkpoint only as a network
(the OpenVLA remote-code class, or any Llava-style ``transformers`` model). ``backend=remote_code``
calls the checkpoint's own processor and ``predict_action`` instead; the family's image
preprocessing and gripper convention are applied around it either way, as OpenVLA's LIBERO
evaluation does.

Orientation: OpenVLA's LIBERO fine-tunes were trained on LIBERO's raw render rotated 180 degrees,
i.e. on upright images, and their evaluation rotates the raw render before the model sees it. The
harness's envs already deliver upright images, so no rotation happens here.
"""

from __future__ import annotations

import functools
import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from harness.errors import HarnessError, require_module
from policies.action_tokenizer import (
    ActionStats,
    ActionTokenizer,
    action_stats,
    load_norm_stats,
    resolve_unnorm_key,
)
from policies.base import EnvInfo, clip_to

log = logging.getLogger(__name__)

ACTION_DIM = 7  # xyz delta, rotation delta, gripper
MODEL_SIZE = 224
PROMPT = "In: What action should the robot take to {instruction}?\nOut:"
SYSTEM_PROMPT_V01 = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)
PROMPT_V01 = SYSTEM_PROMPT_V01 + " USER: What action should the robot take to {instruction}? ASSISTANT:"
SPIECE_SPACE = "\u2581"  # SentencePiece's word boundary; Llama-2 id 29871, appended after "Out:" at training
LIBERO_SUITES = ("libero_spatial", "libero_object", "libero_goal", "libero_10")


@dataclass(frozen=True)
class Family:
    """How a checkpoint family was trained: its images and its gripper convention."""

    name: str
    render_size: int | None  # the camera size its training images were rendered at
    center_crop: bool  # trained with random-crop augmentation -> centre crop at test time
    gripper: str  # "raw" | "binarize_invert"
    crop_scale: float = 0.9  # area of the centre crop


FAMILIES: dict[str, Family] = {
    # LIBERO fine-tunes: 256 px render, crop augmentation, gripper learned as 0 = close / 1 = open.
    "libero": Family("libero", render_size=256, center_crop=True, gripper="binarize_invert"),
    # The base model on Bridge (WidowX): actions as un-normalised, gripper in [0, 1].
    "bridge": Family("bridge", render_size=None, center_crop=False, gripper="raw"),
}
BACKENDS = ("harness", "remote_code")
DTYPES = ("float32", "bfloat16", "float16")


# --- images -----------------------------------------------------------------------------------

def jpeg_roundtrip(image: np.ndarray, quality: int = 95) -> np.ndarray:
    """Encode and decode as JPEG, as the RLDS dataset builder stored every training frame."""
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=quality)
    buffer.seek(0)
    return np.asarray(Image.open(buffer).convert("RGB"))


def resize_lanczos(image: np.ndarray, size: int) -> np.ndarray:
    """Antialiased Lanczos-3 resize to size x size (the Octo/OpenVLA training resize)."""
    from PIL import Image

    if image.shape[:2] == (size, size):
        return image
    return np.asarray(Image.fromarray(image).resize((size, size), Image.Resampling.LANCZOS))


def center_crop_resize(image: np.ndarray, scale: float = 0.9, size: int = MODEL_SIZE) -> np.ndarray:
    """Crop the centre ``scale`` of the area (side sqrt(scale)) and resize it bilinearly to
    size x size, sampling as ``tf.image.crop_and_resize`` does (corner-aligned grid in the box)
    and converting back to uint8 as ``tf.image.convert_image_dtype`` does (x * 255.5, truncated)."""
    H, W, _ = image.shape
    side = float(np.clip(np.sqrt(scale), 0.0, 1.0))
    offset = (1.0 - side) / 2.0
    x = image.astype(np.float64) / 255.0

    def grid(n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        step = side * (n - 1) / (size - 1) if size > 1 else 0.0
        pos = offset * (n - 1) + np.arange(size) * step  # sample positions in input pixels
        lo = np.floor(pos).astype(np.int64)
        hi = np.minimum(np.ceil(pos).astype(np.int64), n - 1)
        return lo, hi, pos - lo

    y0, y1, fy = grid(H)
    x0, x1, fx = grid(W)
    fy, fx = fy[:, None, None], fx[None, :, None]
    top = x[y0][:, x0] * (1 - fx) + x[y0][:, x1] * fx
    bottom = x[y1][:, x0] * (1 - fx) + x[y1][:, x1] * fx
    out = np.clip(top * (1 - fy) + bottom * fy, 0.0, 1.0)
    return np.clip(out * 255.5, 0, 255).astype(np.uint8)


def preprocess_image(image: np.ndarray, *, center_crop: bool, crop_scale: float = 0.9) -> np.ndarray:
    """An upright uint8 (H, W, 3) camera image -> the uint8 (224, 224, 3) image the model saw in
    training: JPEG round trip, Lanczos resize to 224, optional centre crop resized back."""
    image = np.ascontiguousarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise HarnessError(f"OpenVLA needs a uint8 (H, W, 3) camera image, got {image.dtype} {image.shape}")
    image = resize_lanczos(jpeg_roundtrip(image), MODEL_SIZE)
    if center_crop:
        image = center_crop_resize(image, crop_scale, MODEL_SIZE)
    return image


@dataclass(frozen=True)
class PixelTransform:
    """One vision backbone's input: resize strategy, size, interpolation, normalisation."""

    size: int
    strategy: str  # "resize-naive" | "resize-crop" | "letterbox"
    resample: int  # PIL resampling filter
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    def __call__(self, image: np.ndarray) -> np.ndarray:
        from PIL import Image

        pil = Image.fromarray(image)
        if self.strategy == "letterbox":  # pad to square with the mean colour, then resize
            w, h = pil.size
            side = max(w, h)
            canvas = Image.new("RGB", (side, side), tuple(int(m * 255) for m in self.mean))
            canvas.paste(pil, ((side - w) // 2, (side - h) // 2))
            pil = canvas
        if self.strategy == "resize-crop":  # shorter side to size, then centre crop
            w, h = pil.size
            scale = self.size / min(w, h)
            pil = pil.resize((max(self.size, round(w * scale)), max(self.size, round(h * scale))), self.resample)
            w, h = pil.size
            left, top = (w - self.size) // 2, (h - self.size) // 2
            pil = pil.crop((left, top, left + self.size, top + self.size))
        elif pil.size != (self.size, self.size):
            pil = pil.resize((self.size, self.size), self.resample)
        x = np.asarray(pil, dtype=np.float32) / 255.0
        x = (x - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)
        return x.transpose(2, 0, 1)  # (3, size, size)


def read_pixel_transforms(folder: Path) -> list[PixelTransform]:
    """The checkpoint's image normalisation from preprocessor_config.json: Prismatic's (one entry
    per fused backbone; the serialised torchvision parameters win, as they do when the processor
    is loaded) or a standard ``transformers`` image processor's."""
    path = folder / "preprocessor_config.json"
    if not path.is_file():
        raise HarnessError(f"checkpoint {str(folder)!r} has no preprocessor_config.json: it is not a complete OpenVLA/Llava checkpoint folder")
    from PIL import Image

    names = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR, "nearest": Image.Resampling.NEAREST}
    try:
        cfg = json.loads(path.read_text())
        if "input_sizes" in cfg:  # PrismaticImageProcessor
            strategy = cfg.get("image_resize_strategy", "letterbox")
            out = []
            for i, shape in enumerate(cfg["input_sizes"]):
                norm = (cfg.get("tvf_normalize_params") or [None] * (i + 1))[i] or {}
                resize = (cfg.get("tvf_resize_params") or [None] * (i + 1))[i] or {}
                interp = (cfg.get("interpolations") or ["bicubic"] * (i + 1))[i]
                out.append(PixelTransform(
                    size=int(shape[-1]), strategy=strategy,
                    resample=int(resize.get("interpolation", names.get(interp, Image.Resampling.BICUBIC))),
                    mean=tuple(norm.get("mean", cfg.get("means", [[0.5] * 3] * (i + 1))[i])),
                    std=tuple(norm.get("std", cfg.get("stds", [[0.5] * 3] * (i + 1))[i])),
                ))
            return out
        size = cfg.get("size", {"height": MODEL_SIZE})
        side = (size.get("height") or size.get("shortest_edge")) if isinstance(size, dict) else size
        return [PixelTransform(int(side), "resize-naive", int(cfg.get("resample", Image.Resampling.BICUBIC)),
                               tuple(cfg.get("image_mean", [0.5] * 3)), tuple(cfg.get("image_std", [0.5] * 3)))]
    except (KeyError, TypeError, ValueError, IndexError) as exc:
        raise HarnessError(f"cannot read the image settings in {path}: {exc}") from None


def pixel_values(image: np.ndarray, transforms: list[PixelTransform]) -> np.ndarray:
    """(C * backbones, S, S) float32: fused backbones take channel-stacked inputs."""
    return np.concatenate([t(image) for t in transforms], axis=0)


# --- actions ----------------------------------------------------------------------------------

def postprocess_gripper(action: np.ndarray, mode: str) -> np.ndarray:
    """The family's gripper convention. ``binarize_invert`` (LIBERO): the model's gripper is
    0 = close .. 1 = open; map to [-1, 1], take the sign, flip it (LIBERO: -1 = open, +1 = close)."""
    action = np.array(action, dtype=np.float64)
    if mode == "binarize_invert":
        action[..., -1] = -np.sign(2.0 * action[..., -1] - 1.0)
    elif mode != "raw":
        raise ValueError(f"unknown gripper mode {mode!r}")
    return action


def build_prompt(instruction: str, v01: bool = False) -> str:
    return (PROMPT_V01 if v01 else PROMPT).format(instruction=instruction.lower())


# --- checkpoints ------------------------------------------------------------------------------

def default_repo(family: str, unnorm_key: str | None) -> str:
    """The published checkpoint for a family and key: the LIBERO fine-tunes, else the base model."""
    suite = (unnorm_key or "").removesuffix("_no_noops")
    if family == "libero" and suite in LIBERO_SUITES:
        return f"openvla/openvla-7b-finetuned-{suite.replace('_', '-')}"
    return "openvla/openvla-7b"


def resolve_checkpoint(path: str) -> Path:
    """A folder holding config.json: ``path`` itself, or the HF-cache snapshot of repo id ``path``
    (never downloaded here)."""
    local = Path(path).expanduser()
    how = "on a machine with network run `hf download {repo}` (formerly `huggingface-cli download`) and copy the folder here, then pass openvla:path=/that/folder"
    if local.is_dir():
        if not (local / "config.json").is_file():
            raise HarnessError(f"OpenVLA checkpoint folder {str(local)!r} has no config.json: point path= at the folder holding config.json and the weights")
        return local
    if not re.fullmatch(r"[A-Za-z0-9][\w.-]*/[\w.-]+", path) or path.startswith((".", "/", "~")):
        raise HarnessError(f"OpenVLA checkpoint folder {path!r} does not exist: {how.format(repo='openvla/openvla-7b')}, or give a Hugging Face repo id that is in the local cache")
    from huggingface_hub import snapshot_download
    from huggingface_hub.constants import HF_HUB_CACHE

    try:
        folder = Path(snapshot_download(repo_id=path, local_files_only=True))
    except Exception:  # LocalEntryNotFoundError, HFValidationError, OSError: all mean "not here"
        raise HarnessError(f"OpenVLA weights {path!r} are not in the Hugging Face cache ({HF_HUB_CACHE}) and no local folder {path!r} exists: {how.format(repo=path)}") from None
    if not (folder / "config.json").is_file():
        raise HarnessError(f"the cached snapshot of {path!r} ({folder}) has no config.json: the download is incomplete; {how.format(repo=path)}")
    return folder


def check_weights(folder: Path) -> None:
    for index in (folder / "model.safetensors.index.json", folder / "pytorch_model.bin.index.json"):
        if index.is_file():
            shards = sorted(set(json.loads(index.read_text()).get("weight_map", {}).values()))
            missing = [s for s in shards if not (folder / s).is_file()]
            if missing:
                raise HarnessError(f"checkpoint {str(folder)!r} lacks {len(missing)} of {len(shards)} weight shards ({missing[0]}, ...): the download is incomplete")
            return
    if not any(folder.glob("*.safetensors")) and not any(folder.glob("*.bin")):
        raise HarnessError(f"checkpoint {str(folder)!r} holds no weights (*.safetensors / *.bin): download the full repository, not only its config")


@functools.lru_cache(maxsize=1)
def load_checkpoint(folder: str, device: str, dtype: str, backend: str) -> tuple[Any, Any]:
    """(model, tokenizer or processor), cached: one 7B model serves every env of a run."""
    import torch
    import transformers

    config = json.loads((Path(folder) / "config.json").read_text())
    remote = (config.get("auto_map") or {}).get("AutoModelForVision2Seq")
    log.info("loading OpenVLA checkpoint %s on %s (%s)", folder, device, dtype)
    try:
        if remote:
            from transformers.dynamic_module_utils import get_class_from_dynamic_module

            cls = get_class_from_dynamic_module(remote, folder, local_files_only=True)
        else:
            cls = transformers.AutoModelForImageTextToText
        model = cls.from_pretrained(folder, dtype=getattr(torch, dtype), local_files_only=True)
        if backend == "remote_code":
            helper = transformers.AutoProcessor.from_pretrained(folder, trust_remote_code=True, local_files_only=True)
        else:
            helper = transformers.AutoTokenizer.from_pretrained(folder, local_files_only=True)
    except (OSError, ValueError, ImportError, KeyError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise HarnessError(f"cannot load the OpenVLA checkpoint {folder!r}: {first}") from None
    return model.to(device).eval(), helper



def generate_action_ids(model: Any, input_ids: Any, pixel_values: Any, n_tokens: int, allowed: range) -> np.ndarray:
    """Greedy decoding of ``n_tokens`` ids, each the arg-max over ``allowed`` only.

    Full forward passes without a KV cache: the same tokens as ``generate`` would pick, and it
    runs both on current ``transformers`` models and on OpenVLA's 2024 remote code, whose cached
    path expects the legacy cache of transformers 4.40. Seven passes over ~280 tokens cost about
    as much as one cached generation on a GPU."""
    import torch

    ids = input_ids
    with torch.inference_mode():
        for _ in range(n_tokens):
            out = model(input_ids=ids, attention_mask=torch.ones_like(ids), pixel_values=pixel_values, use_cache=False)
            logits = out.logits[:, -1, allowed.start:allowed.stop]  # (B, n_bins)
            ids = torch.cat([ids, logits.argmax(dim=-1, keepdim=True) + allowed.start], dim=1)
    return ids[0, -n_tokens:].cpu().numpy()


# --- what a VLA policy needs from its env (shared with the server client) ----------------------

@dataclass(frozen=True)
class VLASetup:
    family: Family
    camera: str
    center_crop: bool
    unnorm_key: str | None


def vla_setup(env_info: EnvInfo, policy: str, family: str | None, unnorm_key: str | None,
              center_crop: bool | None, camera: str | None) -> VLASetup:
    """Validate an OpenVLA policy against its env before anything is loaded."""
    dim = env_info.action_space.shape[0]
    if dim != ACTION_DIM:
        raise HarnessError(f"policy {policy!r} outputs 7-D actions (xyz, rotation, gripper) but {env_info.env_id} takes {dim}-D actions: use a 7-D env (LIBERO, CALVIN)")
    if family is None:
        if env_info.family not in FAMILIES:
            raise HarnessError(f"policy {policy!r} needs family=... on {env_info.env_id} (the data its checkpoint was trained on): one of {', '.join(FAMILIES)}")
        family = env_info.family
    if family not in FAMILIES:
        raise HarnessError(f"policy {policy!r}: unknown family {family!r}; allowed: {', '.join(FAMILIES)}")
    fam = FAMILIES[family]
    if not env_info.cameras:
        raise HarnessError(f"policy {policy!r} acts on a camera image but no camera renders ({env_info.env_id} with --camera none): name a camera")
    cam = camera if camera is not None else ("agentview" if "agentview" in env_info.cameras else env_info.cameras[0])
    if cam not in env_info.cameras:
        raise HarnessError(f"policy {policy!r}: camera {cam!r} is not rendered for {env_info.env_id}; rendered: {', '.join(env_info.cameras)}")
    if center_crop is not None and not isinstance(center_crop, bool):
        raise HarnessError(f"policy {policy!r}: center_crop must be true or false, got {center_crop!r}")
    if unnorm_key is None and fam.name == "libero":
        unnorm_key = libero_suite(env_info)  # the LIBERO evaluation's choice: the suite's own statistics
    if fam.render_size and env_info.image_size != fam.render_size:
        log.warning("OpenVLA family %r was trained on %d px renders; %s renders %d px (pass --image-size %d)",
                    fam.name, fam.render_size, env_info.env_id, env_info.image_size, fam.render_size)
    return VLASetup(fam, cam, fam.center_crop if center_crop is None else center_crop,
                    None if unnorm_key is None else str(unnorm_key))


def libero_suite(env_info: EnvInfo) -> str | None:
    """'libero/libero_spatial/3' -> 'libero_spatial'."""
    if env_info.family != "libero":
        return None
    return next((p for p in env_info.env_id.split("/") if p in LIBERO_SUITES), None)


def camera_image(observation: dict[str, Any], camera: str) -> np.ndarray:
    try:
        return np.asarray(observation["pixels"][camera])
    except (KeyError, TypeError):
        raise HarnessError(f"the observation has no image from camera {camera!r}: the env must render it") from None


def resolve_device(device: str, dtype: str | None) -> tuple[str, str]:
    require_module("torch", "PyTorch", "models")
    require_module("transformers", "transformers", "models")
    import torch

    device = str(device)
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if not re.fullmatch(r"cpu|cuda(:\d+)?|mps", device):
        raise HarnessError(f"device {device!r} is not one of auto, cpu, cuda, cuda:N, mps")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise HarnessError(f"device={device} but PyTorch sees no CUDA GPU here: use device=cpu, or serve the model on a GPU box (policy 'openvla_server')")
    dtype = dtype or ("bfloat16" if device.startswith("cuda") else "float32")  # bf16 is slow on CPUs
    if dtype not in DTYPES:
        raise HarnessError(f"dtype {dtype!r} is not one of {', '.join(DTYPES)}")
    return device, dtype


# --- the policy -------------------------------------------------------------------------------

class OpenVLAPolicy:
    """OpenVLA (or a Llava-style VLA) from a local folder or the HF cache, in this process."""

    observes: frozenset[str] = frozenset({"pixels"})

    def __init__(self, env_info: EnvInfo, path: str = "", unnorm_key: str | None = None, family: str | None = None,
                 device: str = "auto", center_crop: bool | None = None, camera: str | None = None,
                 backend: str = "harness", dtype: str | None = None):
        if backend not in BACKENDS:
            raise HarnessError(f"policy 'openvla': backend {backend!r} is not one of {', '.join(BACKENDS)}")
        fam_name = family if family is not None else (env_info.family if env_info.family in FAMILIES else "bridge")
        key_hint = unnorm_key if unnorm_key is not None else libero_suite(env_info)
        repo = str(path) if path else default_repo(str(fam_name), None if key_hint is None else str(key_hint))
        self.folder = resolve_checkpoint(repo)
        self.setup = vla_setup(env_info, "openvla", family, unnorm_key, center_crop, camera)
        self.env_info, self.backend = env_info, backend
        self.device, self.dtype = resolve_device(device, dtype)
        check_weights(self.folder)

        where = f"checkpoint {str(self.folder)!r}"
        self.config = json.loads((self.folder / "config.json").read_text())
        norm_stats = load_norm_stats(self.folder)
        self.unnorm_key = resolve_unnorm_key(norm_stats, self.setup.unnorm_key, where)
        self.stats: ActionStats = action_stats(norm_stats, self.unnorm_key, where)
        if self.stats.dim != ACTION_DIM:
            raise HarnessError(f"{where}: statistics {self.unnorm_key!r} are {self.stats.dim}-D, OpenVLA's actions are {ACTION_DIM}-D")
        self.remote = (self.config.get("auto_map") or {}).get("AutoModelForVision2Seq")
        if self.remote:
            require_module("timm", "timm (imported by OpenVLA's remote code)", "openvla")
        if backend == "remote_code" and not self.remote:
            raise HarnessError(f"backend=remote_code needs OpenVLA's own code, but the config.json of {where} names no AutoModelForVision2Seq class: use backend=harness")
        text = self.config.get("text_config") or {}
        if "vocab_size" not in text:
            raise HarnessError(f"{where}: config.json has no text_config.vocab_size, so its action tokens cannot be located")
        # OpenVLA pads the embedding to a multiple of 64; the action ids end at the tokenizer's vocabulary
        vocab = int(text["vocab_size"]) - int(self.config.get("pad_to_multiple_of", 0))
        self.tokenizer_actions = ActionTokenizer(vocab, int(self.config.get("n_action_bins", 256)))
        self.image_token = self.config.get("image_token_id", self.config.get("image_token_index"))
        if not self.remote and (self.image_token is None or not self.config.get("image_seq_length")):
            raise HarnessError(f"{where} is neither OpenVLA (remote code) nor Llava-style (image_token_id + image_seq_length in config.json)")
        self.transforms = read_pixel_transforms(self.folder) if backend == "harness" else []
        self.v01 = "v01" in str(self.folder)
        self.last_token_ids: np.ndarray | None = None
        self._instruction = ""
        self._prompt_ids: Any = None

    def _loaded(self) -> tuple[Any, Any]:
        return load_checkpoint(str(self.folder), self.device, self.dtype, self.backend)

    def prompt_ids(self, instruction: str) -> list[int]:
        """Token ids of the prompt, as OpenVLA saw them in training: BOS, (image placeholders for a
        Llava-style model, where Prismatic splices in its patches), text, and the SentencePiece
        space that followed "Out:" in every training sequence."""
        _, tokenizer = self._loaded()
        ids = list(tokenizer(build_prompt(instruction, self.v01)).input_ids)
        space = tokenizer.convert_tokens_to_ids(SPIECE_SPACE)
        if isinstance(space, int) and space != tokenizer.unk_token_id and ids[-1] != space:
            ids.append(space)
        if not self.remote:
            at = 1 if ids and ids[0] == tokenizer.bos_token_id else 0
            ids[at:at] = [int(self.image_token)] * int(self.config["image_seq_length"])
        return ids

    def reset(self, instruction: str, *, seed: int | None = None, init_state: int | None = None) -> None:
        self._instruction = instruction
        if self.backend == "harness":
            self._prompt_ids = self.prompt_ids(instruction)
        else:  # as OpenVLA's own scripts do: a fine-tune's dataset_statistics.json wins over config.json
            self._loaded()[0].norm_stats = load_norm_stats(self.folder)

    def act(self, observation: dict[str, Any]) -> np.ndarray:
        image = preprocess_image(camera_image(observation, self.setup.camera),
                                 center_crop=self.setup.center_crop, crop_scale=self.setup.family.crop_scale)
        raw = self._predict_remote(image) if self.backend == "remote_code" else self._predict(image)
        return clip_to(self.env_info.action_space, postprocess_gripper(raw, self.setup.family.gripper))

    def _predict(self, image: np.ndarray) -> np.ndarray:
        import torch

        model, _ = self._loaded()
        if self._prompt_ids is None:
            self._prompt_ids = self.prompt_ids(self._instruction)
        ids = torch.tensor([self._prompt_ids], dtype=torch.long, device=self.device)
        pixels = torch.from_numpy(pixel_values(image, self.transforms))[None].to(self.device, getattr(torch, self.dtype))
        self.last_token_ids = generate_action_ids(model, ids, pixels, ACTION_DIM, self.tokenizer_actions.token_ids)
        return self.stats.unnormalize(self.tokenizer_actions.decode(self.last_token_ids))

    def _predict_remote(self, image: np.ndarray) -> np.ndarray:
        import torch
        from PIL import Image

        model, processor = self._loaded()
        inputs = processor(build_prompt(self._instruction, self.v01), Image.fromarray(image)).to(self.device, dtype=getattr(torch, self.dtype))
        with torch.inference_mode():
            return np.asarray(model.predict_action(**inputs, unnorm_key=self.unnorm_key, do_sample=False), dtype=np.float64)
