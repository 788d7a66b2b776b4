"""``--backend auto``: the best-looking backend that holds the frame rate, by a cached measurement."""

from __future__ import annotations

import json
from pathlib import Path

import aiohttp
import pytest

from engines.auto import CalibrationCache, choose_backend
from engines.registry import BackendRegistry
from stream_server.avatars import BUNDLED
from tests.conftest import StartServer


@pytest.fixture(autouse=True)
def own_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    return tmp_path / "lipsync-stream" / "calibration.json"


def test_without_musetalk_files_auto_measures_mesh_and_caches_the_figure(own_cache: Path) -> None:
    choice = choose_backend(BackendRegistry(BUNDLED["astronaut"]), fps=25)
    assert choice.backend == "mesh"
    musetalk, mesh = choice.candidates
    assert musetalk.backend == "musetalk" and not musetalk.available and "weights missing" in musetalk.note
    assert mesh.available and mesh.fps and mesh.fps > 0 and not mesh.cached
    assert "mesh" in choice.reason and f"{mesh.fps:g} fps" in choice.reason
    assert [entry["fps"] for entry in json.loads(own_cache.read_text()).values()] == [mesh.fps]

    # the next start recalls the figure without loading the backend
    registry = BackendRegistry(BUNDLED["astronaut"])
    again = choose_backend(registry, fps=25)
    assert again.backend == "mesh" and again.candidates[1].cached and again.candidates[1].fps == mesh.fps
    assert registry.loaded() == []


def test_when_nothing_holds_the_rate_the_fastest_is_chosen_and_the_reason_says_so() -> None:
    choice = choose_backend(BackendRegistry(BUNDLED["astronaut"]), fps=1000)
    assert choice.backend == "mesh"
    assert choice.reason.startswith("no backend holds 1000 fps here") and "expect repeated frames" in choice.reason


def test_a_corrupt_cache_is_measured_again(own_cache: Path) -> None:
    own_cache.parent.mkdir(parents=True)
    own_cache.write_text("{not json")
    assert CalibrationCache().get("anything") is None
    choice = choose_backend(BackendRegistry(BUNDLED["astronaut"]), fps=25)
    assert not choice.candidates[1].cached and json.loads(own_cache.read_text())


async def test_the_server_says_what_auto_chose_and_why(start_server: StartServer) -> None:
    live = await start_server(backend="auto")
    await live.server.choose_auto_backend()  # what `serve --backend auto` does at start-up
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{live.url}/backends") as response:
            body = await response.json()
    assert body["default"] == "mesh"
    assert body["auto"]["backend"] == "mesh" and "holds" in body["auto"]["reason"]
    assert [c["backend"] for c in body["auto"]["candidates"]] == ["musetalk", "mesh"]
