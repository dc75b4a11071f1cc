"""Streamed timelines through the real broker and two real worker processes."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf

from serq.client.errors import ServiceError
from serq.client.timeline import TimelineStream, stream_timeline
from serq.settings import Settings
from serq.worker.engine.timeline import RATE, read_blocks, timeline_file

from conftest import ravdess_clip
from helpers.recordings import CLIPS, join, trimmed

pytestmark = [pytest.mark.broker, pytest.mark.corpus]


@pytest.fixture
def call(ravdess_dir, tmp_path):
    """Eight clips 2 s apart, plus two of them 0.6 s apart (one segment across a short pause)."""
    clips = [trimmed(ravdess_clip(actor, emotion, intensity=2)) for actor, emotion in CLIPS]
    audio, _ = join(clips + clips[:2], pause=2.0)
    short, _ = join(clips[2:4], pause=0.6)
    path = tmp_path / "call.flac"
    sf.write(path, np.concatenate([audio, short]), RATE)
    return path


def test_streamed_over_two_workers_equals_local(call, start_worker, amqp_url, prefix, monkeypatch, capsys):
    """One pair of workers for every broker path (worker start-up dominates this test's time)."""
    import json

    from serq.cli import main
    from serq.client import Client
    from serq.models.registry import load_default
    from serq.schemas import Timeline
    from serq.settings import get_settings

    local = timeline_file(call, load_default())
    start_worker()
    start_worker()
    settings = Settings(amqp_url=amqp_url, prefix=prefix)

    # Chunk by chunk: every reply says which worker answered.
    workers, early = set(), 0
    with TimelineStream(settings=settings, timeout=60) as stream:
        for block in read_blocks(call, RATE, block_s=1.5):
            reply = stream.send(block)
            workers.add(reply.worker)
            early += len(reply.segments)
        streamed = stream.close(file=str(call))
    assert workers == {"worker0", "worker1"}  # the chunks of one stream went to both workers
    assert early > len(local.segments) // 2  # segments arrive while the stream is still going
    assert len(streamed.segments) == len(local.segments) >= 10
    for a, b in zip(streamed.segments, local.segments):
        assert (a.start, a.end, a.label, a.windows, a.peak.start) == (b.start, b.end, b.label, b.windows, b.peak.start)
        assert a.probabilities == pytest.approx(b.probabilities, abs=1e-5)
    assert streamed.duration_s == local.duration_s
    assert streamed.summary.share_of_time == pytest.approx(local.summary.share_of_time, abs=1e-4)
    assert streamed.model_version == local.model_version

    # stream_timeline over a Client, with a callback per segment (other chunk size, same result).
    seen = []
    with Client(url=amqp_url, prefix=prefix) as client:
        whole = stream_timeline(client, call, seen.append, chunk_s=4.0, timeout=60)
    assert seen == whole.segments and whole.file == str(call)
    assert [(s.start, s.end, s.label) for s in whole.segments] == [(s.start, s.end, s.label) for s in local.segments]

    # The CLI's --broker path.
    monkeypatch.setenv("SERQ_AMQP_URL", amqp_url)
    monkeypatch.setenv("SERQ_PREFIX", prefix)
    get_settings.cache_clear()
    try:
        assert main(["timeline", "--broker", "--chunk", "3", "--json", str(call)]) == 0
    finally:
        get_settings.cache_clear()
    printed = Timeline.model_validate(json.loads(capsys.readouterr().out))
    assert [(s.start, s.end, s.label) for s in printed.segments] == [(s.start, s.end, s.label) for s in local.segments]

    # A client that skips a chunk gets an error reply, not a wrong timeline.
    blocks = read_blocks(call, RATE, block_s=2.0)
    with TimelineStream(settings=settings, timeout=60) as stream:
        stream.send(next(blocks))
        stream._cursor._seq += 1
        with pytest.raises(ServiceError) as err:
            stream.send(next(blocks))
    assert err.value.code == "invalid_request" and "expected chunk 1" in str(err.value)
