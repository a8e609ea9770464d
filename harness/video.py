"""Episode videos: cameras side by side, the instruction on top, the verdict below."""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

import numpy as np

MIN_HEIGHT = 256  # small renders are upscaled (nearest) so the text stays legible
GREEN, RED, WHITE = (60, 200, 60), (230, 60, 60), (255, 255, 255)


def compose_frame(images: list[np.ndarray]) -> np.ndarray:
    """Cameras side by side, upscaled by an integer factor to at least MIN_HEIGHT."""
    row = np.concatenate(images, axis=1)
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
