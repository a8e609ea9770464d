"""Client of OpenVLA's own deploy server (``vla-scripts/deploy.py`` of openvla/openvla).

``openvla_server:url=http://host:8000/act,unnorm_key=libero_spatial_no_noops,family=libero``

A user with a GPU box serves the 7B model there (``python vla-scripts/deploy.py
--openvla_path openvla/openvla-7b-finetuned-libero-spatial``, reachable e.g. through
``ssh -L 8000:localhost:8000 gpu-box``) and evaluates from here. The protocol:

- request: ``POST /act`` with a JSON object ``{"image": uint8 (H, W, 3), "instruction": str,
  "unnorm_key": str}`` (``unnorm_key`` optional), arrays written the ``json_numpy`` way:
  ``{"__numpy__": base64 of the C-order bytes, "dtype": numpy descr such as "|u1", "shape": [...]}``.
  A client without json_numpy may instead send ``{"encoded": "<that JSON as a string>"}``.
- response: the un-normalised 7-D action as a json_numpy array (a JSON string holding it when
  the request was double-encoded), or the JSON string ``"error"`` when the server failed (it logs
  the traceback on its side).

The server runs the checkpoint's processor and ``predict_action`` on the image it receives, so the
family's preprocessing (resize to 224 px, centre crop) happens here before sending, and the
family's gripper convention after receiving, exactly as OpenVLA's own evaluation scripts do.
"""

from __future__ import annotations

import base64
import json
import socket
import urllib.error
import urllib.request
from typing import Any
from urllib.parse import urlparse

import numpy as np

from harness.errors import HarnessError
from policies.base import EnvInfo, clip_to
from policies.openvla import (
    ACTION_DIM,
    camera_image,
    postprocess_gripper,
    preprocess_image,
    vla_setup,
)


def encode_array(array: np.ndarray) -> dict[str, Any]:
    """One numpy array as json_numpy writes it."""
    from numpy.lib.format import dtype_to_descr

    array = np.ascontiguousarray(array)
    return {"__numpy__": base64.b64encode(array.tobytes()).decode("ascii"),
            "dtype": dtype_to_descr(array.dtype), "shape": list(array.shape)}


def decode_hook(obj: dict[str, Any]) -> Any:
    """``json.loads(..., object_hook=decode_hook)`` turns json_numpy objects back into arrays."""
    if "__numpy__" in obj:
        from numpy.lib.format import descr_to_dtype

        flat = np.frombuffer(base64.b64decode(obj["__numpy__"]), dtype=descr_to_dtype(obj["dtype"]))
        shape = obj.get("shape") or []
        return flat.reshape(shape) if shape else flat[0]
    return obj


def _default(o: Any) -> dict[str, Any]:
    if isinstance(o, (np.ndarray, np.generic)):
        return encode_array(np.asarray(o))
    raise TypeError(f"Object of type {type(o).__name__} is not JSON serializable")


def dumps(obj: Any) -> str:
    return json.dumps(obj, default=_default)


def loads(text: str | bytes) -> Any:
    return json.loads(text, object_hook=decode_hook)


class OpenVLAServerPolicy:
    """Sends each preprocessed camera image to an OpenVLA deploy server and applies its action."""

    observes: frozenset[str] = frozenset({"pixels"})

    def __init__(self, env_info: EnvInfo, url: str = "http://127.0.0.1:8000/act", unnorm_key: str | None = None,
                 family: str | None = None, center_crop: bool | None = None, camera: str | None = None,
                 timeout: float = 60.0):
        parsed = urlparse(str(url))
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise HarnessError(f"policy 'openvla_server': url {url!r} is not an http(s) URL; write e.g. url=http://127.0.0.1:8000/act")
        if not isinstance(timeout, (int, float)) or timeout <= 0:
            raise HarnessError(f"policy 'openvla_server': timeout must be a positive number of seconds, got {timeout!r}")
        self.setup = vla_setup(env_info, "openvla_server", family, unnorm_key, center_crop, camera)
        self.url, self.timeout, self.env_info = str(url), float(timeout), env_info
        port = parsed.port or (443 if parsed.scheme == "https" else 80)
        try:  # a plain TCP connect: fail before any simulator starts when nothing listens there
            socket.create_connection((parsed.hostname, port), timeout=min(self.timeout, 10.0)).close()
        except OSError as exc:
            raise HarnessError(f"cannot reach the OpenVLA server at {self.url} ({exc.strerror or exc}): start `python vla-scripts/deploy.py --openvla_path ...` on the GPU box and forward its port (ssh -L {port}:localhost:{port} HOST)") from None
        self._instruction = ""

    def reset(self, instruction: str, *, seed: int | None = None, init_state: int | None = None) -> None:
        self._instruction = instruction

    def payload(self, observation: dict[str, Any]) -> dict[str, Any]:
        image = preprocess_image(camera_image(observation, self.setup.camera),
                                 center_crop=self.setup.center_crop, crop_scale=self.setup.family.crop_scale)
        body: dict[str, Any] = {"image": image, "instruction": self._instruction}
        if self.setup.unnorm_key is not None:
            body["unnorm_key"] = self.setup.unnorm_key
        return body

    def act(self, observation: dict[str, Any]) -> np.ndarray:
        raw = self.request(self.payload(observation))
        return clip_to(self.env_info.action_space, postprocess_gripper(raw, self.setup.family.gripper))

    def request(self, body: dict[str, Any]) -> np.ndarray:
        """POST one payload; the server's un-normalised action as float64 (7,)."""
        req = urllib.request.Request(self.url, data=dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                answer = loads(resp.read())
        except urllib.error.HTTPError as exc:
            raise HarnessError(f"OpenVLA server at {self.url} answered HTTP {exc.code} {exc.reason}: is this the /act endpoint of vla-scripts/deploy.py?") from None
        except (urllib.error.URLError, OSError) as exc:
            raise HarnessError(f"OpenVLA server at {self.url} did not answer: {getattr(exc, 'reason', exc)}") from None
        except ValueError as exc:
            raise HarnessError(f"OpenVLA server at {self.url} sent something that is not JSON: {exc}") from None
        if isinstance(answer, str):
            if answer == "error":
                raise HarnessError(f"OpenVLA server at {self.url} answered 'error' (its log has the traceback): check unnorm_key {self.setup.unnorm_key!r} against the checkpoint's statistics")
            try:  # a double-encoded answer: the action as a JSON string
                answer = loads(answer)
            except ValueError:
                raise HarnessError(f"OpenVLA server at {self.url} answered {answer[:60]!r}, not an action") from None
        action = np.asarray(answer, dtype=np.float64)
        if action.shape != (ACTION_DIM,) or not np.all(np.isfinite(action)):
            raise HarnessError(f"OpenVLA server at {self.url} answered an action of shape {action.shape}; expected ({ACTION_DIM},) finite values")
        return action
