"""Episode videos: cameras side by side, the instruction on top, the verdict below; and
simulator | world model side by side for matched runs."""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

import numpy as np

MIN_HEIGHT = 256  # small renders are upscaled (nearest) so the text stays legible
GREEN, RED, WHITE = (60, 200, 60), (230, 60, 60), (255, 255, 255)


def compose_frame(images: list[np.ndarray]) -> np.ndarray:
    """Cameras side by side (a shorter one padded below with black, as CALVIN's 84 px gripper view
    beside its 200 px static one), upscaled by an integer factor to at least MIN_HEIGHT."""
    height = max(img.shape[0] for img in images)
    row = np.concatenate([img if img.shape[0] == height else
                          np.pad(img, ((0, height - img.shape[0]), (0, 0), (0, 0))) for img in images], axis=1)
    factor = max(1, -(-MIN_HEIGHT // row.shape[0]))
    if factor > 1:
        row = row.repeat(factor, axis=0).repeat(factor, axis=1)
    return row


def _banner(width: int, lines: list[str], color: tuple[int, int, int], scale: float) -> np.ndarray:
    import cv2

    line_h = int(22 * scale) + 6
    img = np.zeros((line_h * len(lines) + 6, width, 3), np.uint8)
    for i, line in enumerate(lines):
        cv2.putText(img, line, (6, line_h * (i + 1)), cv2.FONT_HERSHEY_SIMPLEX, 0.6 * scale, color, 1, cv2.LINE_AA)
    return img


def annotate(frames: list[np.ndarray], instruction: str, verdict: str, success: bool, label: str) -> list[np.ndarray]:
    """Add the instruction banner on top and a status line (label, step, verdict) below."""
    if not frames:
        return frames
    width = frames[0].shape[1]
    chars = max(20, width // 11)
    top = _banner(width, textwrap.wrap(instruction, chars)[:3] or [""], WHITE, 1.0)
    out = []
    for t, frame in enumerate(frames):
        status = f"{label}  t={t}  {verdict}"
        bottom = _banner(width, [status[:chars]], GREEN if success else RED, 1.0)
        out.append(np.concatenate([top, frame, bottom], axis=0))
    return out


def side_by_side(sim_frames: list[np.ndarray], wm_frames: list[np.ndarray], instruction: str,
                 sim: tuple[str, bool], wm: tuple[str, bool], label: str) -> list[np.ndarray]:
    """Simulator (left) | world model (right), one row per control step, the instruction on
    top and each side's verdict (text, success) below it. The shorter rollout holds its last
    frame. Both sides are shown at the simulator's frame size."""
    import cv2

    if not sim_frames or not wm_frames:
        return []
    h, w = sim_frames[0].shape[:2]
    T = max(len(sim_frames), len(wm_frames))
    rows = []
    for t in range(T):
        a = sim_frames[min(t, len(sim_frames) - 1)]
        b = wm_frames[min(t, len(wm_frames) - 1)]
        if b.shape[:2] != (h, w):
            b = cv2.resize(b, (w, h), interpolation=cv2.INTER_LINEAR)
        rows.append(compose_frame([a, np.full((h, 2, 3), 255, np.uint8), b]))
    width = rows[0].shape[1]
    chars = max(20, width // 11)
    top = _banner(width, [f"{label}: {line}" if i == 0 else line
                          for i, line in enumerate(textwrap.wrap(instruction, chars)[:3] or [""])], WHITE, 1.0)
    half = width // 2
    out = []
    for t, row in enumerate(rows):
        left = _banner(half, [f"t={t} {sim[0]}"[: half // 11]], GREEN if sim[1] else RED, 1.0)
        right = _banner(width - half, [wm[0][: (width - half) // 11]], GREEN if wm[1] else RED, 1.0)
        out.append(np.concatenate([top, row, np.concatenate([left, right], axis=1)], axis=0))
    return out


def write_video(path: str | os.PathLike, frames: list[np.ndarray], fps: int = 30) -> None:
    """H.264 mp4 through imageio-ffmpeg (bundled ffmpeg); written to a temp name, then renamed."""
    import imageio.v2 as imageio

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp.mp4")
    writer = imageio.get_writer(tmp, fps=fps, codec="libx264", macro_block_size=1, quality=7,
                                ffmpeg_log_level="error", pixelformat="yuv420p")
    try:
        for frame in frames:
            h, w = frame.shape[:2]  # yuv420p needs even sides: pad by one edge row/column
            if h % 2 or w % 2:
                frame = np.pad(frame, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge")
            writer.append_data(frame)
    finally:
        writer.close()
    os.replace(tmp, path)
