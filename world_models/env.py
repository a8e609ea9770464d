"""The world model behind the simulator's Gymnasium interface.

``WorldModelEnv`` mirrors one simulator env: the same action space, and the simulator's
observation space restricted to what the world model predicts (the camera it was trained on, at
the simulator's image size). It does not invent proprioception: a policy that needs ``state``
cannot run inside a pixel world model. ``reset(options={"context": frames})`` starts from real
frames taken from the simulator's reset, so both start from the same initial state; ``step``
returns decoded pixels with the latent in ``info["latent"]``. Success comes from an attached
judge (``judge(frames, latents, instruction) -> bool``), if any. ``decode_dtype`` and
``predict_dtype`` torch.bfloat16 run the pixel decoder and the transition network in bf16;
``decoder="distilled"`` shows the predictions through the cheap decoder distilled from the full
one (``harness distill-decoder``, world_models/distill.py).

A world model trained with ``frameskip`` f predicts one frame per f control steps from the f
actions between: the env collects f actions and then predicts, and in between returns the last
predicted frame, like a camera running at 1/f of the control rate.

``WorldModelVectorEnv`` steps a batch of episodes (or CEM candidates) in one model call.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import gymnasium as gym
import numpy as np
import torch
import torch.nn.functional as F

from .world_model import WorldModel

Judge = Callable[[np.ndarray, np.ndarray, str], bool]


def mirrored_spaces(world_model: WorldModel, sim_observation_space: gym.spaces.Space | None, camera: str,
                    image_size: int | None, action_dim: int) -> tuple[gym.spaces.Dict, gym.spaces.Box]:
    size = image_size
    if size is None and isinstance(sim_observation_space, gym.spaces.Dict) and "pixels" in sim_observation_space.spaces:
        pix = sim_observation_space["pixels"]
        if camera in pix.spaces:
            size = pix[camera].shape[0]
    size = size or world_model.image_size
    obs = gym.spaces.Dict({"pixels": gym.spaces.Dict({camera: gym.spaces.Box(0, 255, (size, size, 3), np.uint8)})})
    act = gym.spaces.Box(-1.0, 1.0, (action_dim,), np.float32)
    return obs, act


class LatentRollout:
    """Batched world-model state: the last ``history`` latents of each episode."""

    def __init__(self, world_model: WorldModel, image_size: int, decode_dtype: torch.dtype | None = None,
                 predict_dtype: torch.dtype | None = None, decoder: str = "full"):
        self.wm = world_model
        self.image_size = image_size
        self.decode_dtype = decode_dtype  # torch.bfloat16: decode pixels at reduced precision
        self.predict_dtype = predict_dtype  # torch.bfloat16: run the transition network in bf16
        self.decoder = decoder  # "full" | "distilled"
        if decoder == "distilled":
            world_model.distilled_decoder()  # absent: one clear line now, not at the first step
        self.context: torch.Tensor | None = None  # (B, H, N, D) raw latents
        self.generator: torch.Generator | list[torch.Generator] = torch.Generator()

    def reset(self, frames: np.ndarray, seed: int | list[int] | None) -> tuple[np.ndarray, torch.Tensor]:
        """frames uint8 (B, T, H, W, 3) real context -> (pixels of the last frame, its latent).
        ``seed``: one for the batch, or one per episode (each episode then draws its own noise,
        the same in a batch of any size)."""
        if isinstance(seed, (list, tuple)):
            if len(seed) != len(frames):
                raise ValueError(f"{len(seed)} seeds for {len(frames)} episodes")
            self.generator = [torch.Generator().manual_seed(int(s)) for s in seed]
        else:
            self.generator = torch.Generator().manual_seed(0 if seed is None else int(seed))
        z = self.wm.encode(frames)  # (B, T, N, D)
        self.context = z[:, -self.wm.history:]

        self.pending: list[np.ndarray] = []
        self.last = (self.render(z[:, -1:])[:, 0], z[:, -1])
        return self.last

    def step(self, actions: np.ndarray) -> tuple[np.ndarray, torch.Tensor]:
        """One control step for each episode: actions (B, A)."""
        self.pending.append(np.asarray(actions, dtype=np.float32).reshape(self.context.shape[0], -1))
        if len(self.pending) < self.wm.frameskip:
            return self.last
        a = torch.as_tensor(np.concatenate(self.pending, axis=1))[:, None]  # (B, 1, f * A)
        self.pending = []
        z = self.wm.predict(self.context, a, generator=self.generator, dtype=self.predict_dtype)  # (B, 1, N, D)
        self.context = torch.cat([self.context, z], dim=1)[:, -self.wm.history:]
        self.last = (self.render(z)[:, 0], z[:, 0])
        return self.last

    def keep(self, rows: list[int]) -> None:
        """Go on with these episodes only (in this order): the others ended or failed."""
        index = torch.as_tensor(rows, dtype=torch.long)
        self.context = self.context[index]
        self.pending = [p[rows] for p in self.pending]
        self.last = (self.last[0][rows], self.last[1][index])
        if isinstance(self.generator, list):
            self.generator = [self.generator[i] for i in rows]

    def render(self, z: torch.Tensor) -> np.ndarray:
        frames = self.wm.decode(z, dtype=self.decode_dtype, decoder=self.decoder)  # (B, T, S, S, 3) uint8
        B, T, S = frames.shape[:3]
        if S != self.image_size:
            # bilinear on the uint8 frames directly: within one intensity level of resizing in
            # float and rounding, and 30x cheaper (64 frames 64 -> 128 px: 0.8 vs 24 ms, one core)
            x = frames.reshape(B * T, S, S, 3).permute(0, 3, 1, 2)
            x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bilinear", align_corners=False)
            frames = x.permute(0, 2, 3, 1).reshape(B, T, self.image_size, self.image_size, 3)
        return np.ascontiguousarray(frames.numpy())


def _as_context(frames: Any, batch: int | None) -> np.ndarray:
    """(H, W, 3) | (T, H, W, 3) | (B, T, H, W, 3) -> uint8 (B, T, H, W, 3)."""
    x = np.asarray(frames)
    if x.dtype != np.uint8:
        raise ValueError(f"context frames must be uint8 images, got {x.dtype}")
    if x.ndim == 3:
        x = x[None, None]
    elif x.ndim == 4:
        x = x[None] if batch in (None, 1) else x[:, None]
    if x.ndim != 5 or x.shape[-1] != 3:
        raise ValueError(f"context frames must be (H, W, 3), (T, H, W, 3) or (B, T, H, W, 3), got {np.shape(frames)}")
    return x


class WorldModelEnv(gym.Env):
    metadata = {"render_modes": ["rgb_array"], "render_fps": 20}

    def __init__(self, world_model: WorldModel, camera: str, *, sim_observation_space: gym.spaces.Space | None = None,
                 image_size: int | None = None, max_episode_steps: int | None = None, instruction: str = "",
                 judge: Judge | None = None, context: np.ndarray | None = None, render_mode: str | None = "rgb_array",
                 decode_dtype: torch.dtype | None = None, predict_dtype: torch.dtype | None = None,
                 decoder: str = "full"):
        self.wm, self.camera, self.instruction, self.judge = world_model, camera, instruction, judge
        self.observation_space, self.action_space = mirrored_spaces(world_model, sim_observation_space, camera,
                                                                    image_size, world_model.env_action_dim)
        self.image_size = self.observation_space["pixels"][camera].shape[0]
        self.max_episode_steps = max_episode_steps
        self.render_mode = render_mode
        self.default_context = context
        self._rollout = LatentRollout(world_model, self.image_size, decode_dtype, predict_dtype, decoder)
        self._frames: list[np.ndarray] = []
        self._latents: list[np.ndarray] = []
        self._t = 0

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        context = (options or {}).get("context", self.default_context)
        if context is None:
            raise ValueError("WorldModelEnv.reset needs real context frames: reset(options={'context': frames}) "
                             "with frames from the simulator's reset (a world model cannot invent the scene)")
        self.instruction = (options or {}).get("instruction", self.instruction)
        pixels, z = self._rollout.reset(_as_context(context, 1), seed)
        self._t = 0
        self._frames, self._latents = [pixels[0]], [z[0].numpy()]
        return self._obs(), self._info()

    def step(self, action):
        if self._rollout.context is None:
            raise RuntimeError("call reset() before step()")
        a = np.clip(np.asarray(action, dtype=np.float32).reshape(1, -1), -1.0, 1.0)
        pixels, z = self._rollout.step(a)
        self._t += 1
        self._frames.append(pixels[0])
        self._latents.append(z[0].numpy())
        info = self._info()
        terminated = bool(info.get("success", False))
        truncated = self.max_episode_steps is not None and self._t >= self.max_episode_steps
        return self._obs(), float(terminated), terminated, truncated, info

    def render(self):
        return self._frames[-1] if self._frames else None

    def _obs(self) -> dict[str, Any]:
        return {"pixels": {self.camera: self._frames[-1]}}

    def _info(self) -> dict[str, Any]:
        info: dict[str, Any] = {"latent": self._latents[-1], "instruction": self.instruction, "step": self._t}
        if self.judge is not None:
            info["success"] = bool(self.judge(np.stack(self._frames), np.stack(self._latents), self.instruction))
        return info


class WorldModelVectorEnv(gym.vector.VectorEnv):
    """``num_envs`` world-model episodes stepped in one batched call. Episodes start and end
    together (no autoreset): reset with a batch of contexts, step until truncation."""

    metadata = {"autoreset_mode": None}

    def __init__(self, world_model: WorldModel, camera: str, num_envs: int, *, image_size: int | None = None,
                 sim_observation_space: gym.spaces.Space | None = None, max_episode_steps: int | None = None,
                 decode_dtype: torch.dtype | None = None, predict_dtype: torch.dtype | None = None,
                 decoder: str = "full"):
        self.wm, self.camera, self.num_envs = world_model, camera, num_envs
        self.single_observation_space, self.single_action_space = mirrored_spaces(
            world_model, sim_observation_space, camera, image_size, world_model.env_action_dim)
        self.observation_space = gym.vector.utils.batch_space(self.single_observation_space, num_envs)
        self.action_space = gym.vector.utils.batch_space(self.single_action_space, num_envs)
        self.image_size = self.single_observation_space["pixels"][camera].shape[0]
        self.max_episode_steps = max_episode_steps
        self._rollout = LatentRollout(world_model, self.image_size, decode_dtype, predict_dtype, decoder)
        self._t = 0

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        context = (options or {}).get("context")
        if context is None:
            raise ValueError("WorldModelVectorEnv.reset needs options={'context': frames (B, T, H, W, 3)}")
        ctx = _as_context(context, self.num_envs)
        if ctx.shape[0] == 1 and self.num_envs > 1:
            ctx = np.repeat(ctx, self.num_envs, axis=0)
        if ctx.shape[0] != self.num_envs:
            raise ValueError(f"context holds {ctx.shape[0]} episodes for {self.num_envs} envs")
        pixels, z = self._rollout.reset(ctx, seed)
        self._t = 0
        return {"pixels": {self.camera: pixels}}, {"latent": z.numpy()}

    def step(self, actions):
        a = np.clip(np.asarray(actions, dtype=np.float32).reshape(self.num_envs, -1), -1.0, 1.0)
        pixels, z = self._rollout.step(a)
        self._t += 1
        done = self.max_episode_steps is not None and self._t >= self.max_episode_steps
        zeros = np.zeros(self.num_envs)
        return ({"pixels": {self.camera: pixels}}, zeros, zeros.astype(bool), np.full(self.num_envs, done),
                {"latent": z.numpy()})
