"""The serq part of a Pipecat voice agent, runnable here: audio -> Silero VAD -> serq -> print.

    pip install 'serq[pipecat]'
    serq worker &                                   # or any running deployment (SERQ_AMQP_URL, SERQ_PREFIX)
    python docs/examples/pipecat_emotions.py samples/angry-03-01-05-02-02-01-16.flac samples/calm-*.flac

Each file plays the part of one caller's microphone: its audio goes through the pipeline in
20 ms InputAudioRawFrames, as a transport delivers it, with a second of silence after each
file so the VAD hears the turn end. A real agent puts SerqEmotionProcessor between
``transport.input()`` and the STT instead (see docs/assistants.md).
"""

from __future__ import annotations

import asyncio
import sys

import numpy as np
import soundfile as sf
import soxr
from pipecat.audio.vad.silero import SileroVADAnalyzer
from pipecat.frames.frames import EndFrame, Frame, InputAudioRawFrame
from pipecat.pipeline.pipeline import Pipeline
from pipecat.pipeline.worker import PipelineParams, PipelineWorker
from pipecat.processors.audio.vad_processor import VADProcessor
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor
from pipecat.workers.runner import WorkerRunner

from serq.client.pipecat import EmotionFrame, SerqEmotionProcessor

RATE = 16000  # Silero VAD hears 8 or 16 kHz; serq takes any rate
FRAME = RATE // 50  # 20 ms


class PrintEmotions(FrameProcessor):
    """Stands in for the rest of the agent (STT, LLM, TTS): prints what serq heard."""

    async def process_frame(self, frame: Frame, direction: FrameDirection):
        await super().process_frame(frame, direction)
        if isinstance(frame, EmotionFrame):
            top = sorted(frame.probabilities.items(), key=lambda kv: -kv[1])[:3]
            print(f"{frame}  [{', '.join(f'{k} {v:.2f}' for k, v in top)}]  model {frame.model_version}", flush=True)
        await self.push_frame(frame, direction)


def microphone(path: str) -> list[InputAudioRawFrame]:
    """A file's audio as a transport would deliver it: 16-bit mono frames of 20 ms, then 1 s of silence."""
    audio, rate = sf.read(path, dtype="float32", always_2d=True)
    mono = soxr.resample(audio.mean(axis=1), rate, RATE) if rate != RATE else audio.mean(axis=1)
    pcm = np.concatenate([np.clip(mono, -1, 1) * 32767, np.zeros(RATE)]).astype("<i2")
    return [InputAudioRawFrame(audio=pcm[i:i + FRAME].tobytes(), sample_rate=RATE, num_channels=1)
            for i in range(0, len(pcm), FRAME)]


async def main(paths: list[str]) -> None:
    pipeline = Pipeline([
        VADProcessor(vad_analyzer=SileroVADAnalyzer()),
        SerqEmotionProcessor(turn_frames="vad"),  # SERQ_AMQP_URL, SERQ_PREFIX, like Client()
        PrintEmotions(),
    ])
    worker = PipelineWorker(pipeline, params=PipelineParams(audio_in_sample_rate=RATE), cancel_on_idle_timeout=False)
    frames = [frame for path in paths for frame in microphone(path)]

    @worker.event_handler("on_pipeline_started")
    async def play(worker, frame):  # processors drop frames that come before the pipeline has started
        await worker.queue_frames([*frames, EndFrame()])  # EndFrame: serq's last answer comes out before the end

    runner = WorkerRunner(handle_sigint=False)
    await runner.add_workers(worker)
    await runner.run()


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    asyncio.run(main(sys.argv[1:]))
