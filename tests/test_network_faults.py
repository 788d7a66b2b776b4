"""Network faults on loopback: 5% loss and up to 50 ms of extra delay (reordering) in both
directions, through a UDP relay (this kernel has no netem). The session survives, the A/V offset
stays within ITU-R BT.1359's bounds, and it does not drift once the faults stop.

The suite runs 14 s of faults; the one-minute run is ``python -m benchmarks.netfaults``."""

from __future__ import annotations

from pathlib import Path

import aiohttp

from benchmarks.netfaults import AUDIO_EARLY_S, AUDIO_LATE_S, run_netfaults
from benchmarks.netshim import Faults
from tests.conftest import Live
from tests.media import shared_media

ONE_FRAME_MS = 40.0


async def test_loss_and_jitter_neither_break_the_session_nor_shift_lip_sync(live: Live, tmp_path: Path) -> None:
    shared_media("video", "pcavs_vox2_00086.mp4")  # fails clearly when the clip is missing
    options = {"backend": "passthrough", "avatar": "camera", "fps": 25, "width": 224, "height": 224}
    result = await run_netfaults(live.url, 5.0, 14.0, 9.0, Faults(loss=0.05, jitter_s=0.05), options, tmp_path)
    phases = result["phases"]
    print(result["relay"], result["drift_ms"])
    for name, phase in phases.items():
        print(name, phase)
    assert result["relay"]["dropped"] > 0.03 * (result["relay"]["forwarded"] + result["relay"]["dropped"]) * (14 / 28)
    # no crash: the session ran to its normal end and the server is still serving
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{live.url}/healthz") as response:
            assert response.status == 200 and (await response.json())["sessions"] == 0
    for phase in phases.values():
        assert phase["frames_with_offset"] > 30, phases
    # video kept coming under the faults and after (lost packets cost frames, not the stream)
    assert phases["faults"]["fps_received"] >= 0.6 * phases["before"]["fps_received"], phases
    assert phases["after"]["fps_received"] >= 0.8 * phases["before"]["fps_received"], phases
    # lip sync holds, and comes back to where it was (camera frames are placed by the peer's RTCP
    # sender reports; placing them by arrival left a -200 ms shift after the faults)
    offsets = {name: phase["av_offset_ms"]["median"] for name, phase in phases.items()}
    for name, value in offsets.items():
        assert AUDIO_LATE_S * 1000 <= value <= AUDIO_EARLY_S * 1000, (name, offsets)
    assert abs(result["drift_ms"]) <= ONE_FRAME_MS, (result["drift_ms"], offsets)
