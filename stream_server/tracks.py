"""The outgoing WebRTC tracks: each asks the stream's pipeline for its next frame."""

from __future__ import annotations

import av
from aiortc import MediaStreamTrack
from aiortc.mediastreams import MediaStreamError

from stream_server.pipeline import LivePipeline


class _PipelineTrack(MediaStreamTrack):
    """An outgoing track that asks a pipeline for every frame; cut loose when the stream ends."""

    def __init__(self, pipeline: LivePipeline) -> None:
        super().__init__()
        self._pipeline: LivePipeline | None = pipeline

    def release(self) -> None:
        self._pipeline = None
        self.remove_all_listeners()

    def _live_pipeline(self) -> LivePipeline:
        if self.readyState != "live" or self._pipeline is None:
            raise MediaStreamError
        return self._pipeline


class SlotVideoTrack(_PipelineTrack):
    kind = "video"

    async def recv(self) -> av.VideoFrame:
        return await self._live_pipeline().next_video_frame()


class DelayedAudioTrack(_PipelineTrack):
    kind = "audio"

    async def recv(self) -> av.AudioFrame:
        return await self._live_pipeline().next_audio_frame()
