"""Running the command line as a user does, for the tests."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import wave
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def cli(*args: str, env: dict[str, str] | None = None, timeout: float = 400) -> subprocess.CompletedProcess[str]:
    """``python -m stream_server ARGS`` in the repository, with ``env`` added to the environment."""
    return subprocess.run([sys.executable, "-m", "stream_server", *args], cwd=REPO, env={**os.environ, **(env or {})},
                          capture_output=True, text=True, timeout=timeout)


def render_musetalk_second(models: Path, tmp_path: Path) -> tuple[dict[str, Any], Path]:
    """``render --backend musetalk`` of one second of gated tone on the bundled portrait (256 px)
    with the models in ``models``; returns the printed summary and the MP4."""
    speech = tmp_path / "speech.wav"
    pcm = (np.sin(np.arange(16000) * 0.05) * 8000 * (np.arange(16000) % 4000 < 2000)).astype(np.int16)
    with wave.open(str(speech), "wb") as out:
        out.setnchannels(1), out.setsampwidth(2), out.setframerate(16000), out.writeframes(pcm.tobytes())
    video = tmp_path / "musetalk.mp4"
    result = cli("render", "--backend", "musetalk", "--avatar", "astronaut", "--audio", str(speech),
                 "-o", str(video), "--width", "256", "--height", "256", env={"LIPSYNC_MODELS_DIR": str(models)})
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1]), video


def render_arguments(monkeypatch, *args: str) -> tuple[int, dict[str, Any]]:
    """``python -m stream_server render ARGS`` in this process with ``render`` itself replaced:
    the exit code and the keyword arguments the command line passed to it."""
    import stream_server.render as render_module
    from stream_server import cli as server_cli

    seen: dict[str, Any] = {}

    def fake_render(*positional: object, **kwargs: object) -> object:
        seen.update(kwargs)
        raise render_module.RenderError("stopped here")

    monkeypatch.setattr(render_module, "render", fake_render)
    return server_cli.main(["render", *args]), seen
