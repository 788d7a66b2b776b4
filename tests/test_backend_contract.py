"""Adding a backend is one folder and one registry line: ``doctor``, ``--backend auto`` and
``export`` learn about it from the backend class alone (its ``files()``, ``quality_rank`` and
``export``), and their source names no backend."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Sequence

import numpy as np
import pytest

from engines import registry
from engines.auto import CalibrationCache, choose_backend, ranked
from engines.base import Avatar, Backend, BackendExport, BackendFile, BackendFiles, FrameJob
from engines.registry import BackendRegistry
from stream_server import cli, doctor
from stream_server.avatars import BUNDLED

REPO = Path(__file__).resolve().parents[1]
HERE = __name__


class ExportProblem(RuntimeError):
    """What the throwaway export raises for a models directory that does not exist."""


def export_throwaway(models_dir: Path | None, out_dir: Path | None) -> None:
    """The throwaway backend's export: writes one file, or refuses a missing models directory."""
    if models_dir is None or not models_dir.is_dir():
        raise ExportProblem(f"no models directory {models_dir}: create it first")
    out = out_dir or models_dir / "out"
    out.mkdir(parents=True, exist_ok=True)
    (out / "exported.txt").write_text("ok")


class Throwaway(Backend):
    """A backend that returns the base frame; the classes below add what the contract is about."""

    name = "throwaway"

    def prepare_avatar(self, name: str, image: np.ndarray | None) -> Avatar:
        return Avatar(name=name, image=image)

    def generate(self, jobs: Sequence[FrameJob]) -> list[np.ndarray]:
        return [job.base_frame for job in jobs]


class Sharp(Throwaway):
    """Looks best, but its file is missing here."""

    name = "sharp"
    quality_rank = 9
    export = BackendExport(
        entry=f"{HERE}:export_throwaway", help="the sharp files to ONNX", models_dir_help="where they are",
        out_help="where the ONNX goes", errors=(ExportProblem,), needs=("json",),
    )

    @classmethod
    def unavailable_reason(cls) -> str | None:
        return "sharp.bin is missing"

    @classmethod
    def files(cls) -> BackendFiles:
        root = Path("/nonexistent/models")
        return BackendFiles(root, "SHARP_DIR", (
            BackendFile("sharp-weights", (), (str(root / "sharp.bin"),), "https://example.org/sharp"),
            BackendFile("sharp-extra", (root / "extra.bin",), (str(root / "extra.bin"),), "https://example.org/extra",
                        optional=True, state="sharper teeth"),
        ), ("sharp note: nothing exported",))


class Plain(Throwaway):
    """Looks worse, runs anywhere, needs no files and has no export."""

    name = "plain"
    quality_rank = 1


class Needy(Throwaway):
    """Never chosen by auto (no rank); its export needs a module that is not installed."""

    name = "needy"
    export = BackendExport(entry=f"{HERE}:export_throwaway", help="needs more", models_dir_help="", out_help="",
                           needs=("no_such_module_for_the_contract_test",))


@pytest.fixture
def throwaways(monkeypatch: pytest.MonkeyPatch) -> None:
    """The registry holds only the throwaway backends, for this test."""
    monkeypatch.setattr(registry, "BACKENDS", {cls.name: f"{HERE}:{cls.__name__}" for cls in (Plain, Sharp, Needy)})


def test_doctor_lists_a_new_backends_files(throwaways: None, capsys: pytest.CaptureFixture[str]) -> None:
    data = doctor.report()
    sharp = next(b for b in data["backends"] if b["name"] == "sharp")
    assert not sharp["available"] and sharp["reason"] == "sharp.bin is missing"
    assert sharp["files"]["files"][0] == {
        "name": "sharp-weights", "found": None, "optional": False, "looked_at": ["/nonexistent/models/sharp.bin"],
        "published": "https://example.org/sharp", "state": "",
    }
    assert next(b for b in data["backends"] if b["name"] == "plain")["files"] is None
    doctor.print_report(data)
    out = capsys.readouterr().out
    assert "sharp files (models directory /nonexistent/models; set SHARP_DIR to change it):" in out
    assert ("  sharp-weights: not found (looked for /nonexistent/models/sharp.bin; published at https://example.org/sharp)"
            in out)
    assert "  sharp-extra (optional): /nonexistent/models/extra.bin, sharper teeth" in out
    assert "  sharp note: nothing exported" in out and "plain files" not in out


def test_auto_ranks_a_new_backend_by_its_quality_rank(throwaways: None, tmp_path: Path) -> None:
    assert ranked() == ["sharp", "plain"]  # needy has no rank: never a candidate
    choice = choose_backend(BackendRegistry(BUNDLED["astronaut"]), fps=1, cache=CalibrationCache(tmp_path / "calibration.json"))
    assert [(c.backend, c.available) for c in choice.candidates] == [("sharp", False), ("plain", True)]
    assert choice.backend == "plain" and choice.candidates[0].note == "sharp.bin is missing"


def test_the_cli_offers_export_for_the_backends_that_have_one(throwaways: None, tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    parser = cli.build_parser()
    args = parser.parse_args(["export", "sharp", "--models-dir", str(tmp_path), "--out", str(tmp_path / "onnx")])
    assert args.model == "sharp" and args.out == tmp_path / "onnx"
    with pytest.raises(SystemExit):
        parser.parse_args(["export", "plain"])  # no export: not offered
    assert capsys.readouterr().err.count("invalid choice: 'plain'") == 1
    assert cli.main(["export", "sharp", "--models-dir", str(tmp_path)]) == 0
    assert (tmp_path / "out" / "exported.txt").read_text() == "ok"
    assert cli.main(["export", "sharp", "--models-dir", str(tmp_path / "nowhere")]) == 2
    assert f"error: no models directory {tmp_path / 'nowhere'}: create it first" in capsys.readouterr().err
    assert cli.main(["export", "needy"]) == 2
    err = capsys.readouterr().err
    assert f"error: {cli.EXPORT_EXTRA}: No module named 'no_such_module_for_the_contract_test'" in err


@pytest.mark.parametrize("path", ["stream_server/doctor.py", "engines/auto.py", "stream_server/cli.py"])
def test_doctor_auto_and_the_cli_name_no_backend(path: str) -> None:
    """They learn about backends from the registry; the default backend comes in as
    ``DEFAULT_BACKEND``, never spelt out."""
    source = (REPO / path).read_text()
    for name in registry.BACKENDS:
        assert not re.search(rf"\b{re.escape(name)}\b", source, re.IGNORECASE), f"{path} names the backend {name!r}"
