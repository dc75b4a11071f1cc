"""Timelines of recordings made from RAVDESS clips of known emotion, with the real model.

Each recording joins clips trimmed to their speech (frames within 25 dB of the
clip's loudest) with quiet noise between them, so the joins are where segments
should start and end.
"""

from __future__ import annotations

import json
import tracemalloc

import pytest
import soundfile as sf

from serq.schemas import Timeline
from serq.worker.engine.timeline import RATE, timeline_file

from conftest import ravdess_clip
from helpers.recordings import CLIPS, gap, join, stretches, trimmed, write_recording

pytestmark = pytest.mark.corpus

@pytest.fixture(scope="module")
def model():
    from serq.models.registry import load_default

    return load_default()


@pytest.fixture(scope="module")
def joined(ravdess_dir, tmp_path_factory):
    """The main recording (8 clips, 2 s apart) as a FLAC file, with the clips' spans and files."""
    clips = [trimmed(ravdess_clip(actor, emotion, intensity=2)) for actor, emotion in CLIPS]
    return write_recording(tmp_path_factory.mktemp("timeline"), clips)


def test_segments_land_on_the_joins_and_match_each_clip_alone(joined, model):
    from serq.settings import Settings
    from serq.worker.engine.inference import classify

    path, spans, files = joined
    timeline = timeline_file(path, model)
    found = stretches(timeline)
    assert len(found) == len(spans), [(round(a, 2), round(b, 2)) for a, b, _ in found]
    for (start, end, _), (j0, j1) in zip(found, spans):
        assert abs(start - j0) <= 0.5 and abs(end - j1) <= 0.5, (start, end, j0, j1)
    alone = [classify(f, model, Settings()).label for f in files]
    ours = [max(labels, key=labels.get) for _, _, labels in found]
    agree = sum(a == b for a, b in zip(alone, ours))
    assert agree >= 6, list(zip(alone, ours))  # "in most cases": smoothing and windows may differ on a clip or two
    assert timeline.duration_s == pytest.approx(sf.info(path).duration, abs=1e-3)


def test_a_pause_under_a_second_does_not_split_a_segment(ravdess_dir, model, tmp_path):
    clips = [trimmed(ravdess_clip(3, 4, intensity=2, statement=s)) for s in (1, 2)]
    audio, spans = join(clips, pause=0.6)
    path = tmp_path / "pause.wav"
    sf.write(path, audio, RATE, subtype="FLOAT")
    found = stretches(timeline_file(path, model))
    assert len(found) == 1
    assert abs(found[0][0] - spans[0][0]) <= 0.5 and abs(found[0][1] - spans[1][1]) <= 0.5


def test_ten_minutes_in_bounded_memory(ravdess_dir, model, tmp_path):
    """A 10-minute WAV, written block by block, is analysed with a peak far below its decoded size."""
    clips = [trimmed(ravdess_clip(actor, emotion, intensity=2)) for actor, emotion in CLIPS[:4]]
    path, every, total = tmp_path / "ten.wav", 20.0, 600.0
    joins = []
    with sf.SoundFile(path, "w", RATE, 1, subtype="PCM_16") as out:
        t, i = 0.0, 0
        while t + every <= total:
            clip = clips[i % len(clips)]
            out.write(gap(1.0, i))
            out.write(clip)
            out.write(gap(every - 1.0 - len(clip) / RATE, i + 1000))
            joins.append(t + 1.0)
            t, i = t + every, i + 1
    decoded_bytes = int(total * RATE) * 4  # what decoding the whole file as float32 would take

    tracemalloc.start()
    try:
        timeline = timeline_file(path, model, block_s=1.0)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert timeline.duration_s == pytest.approx(total, abs=0.01)
    found = stretches(timeline)
    assert len(found) == len(joins)
    assert all(abs(start - j) <= 0.5 for (start, _, _), j in zip(found, joins))
    assert peak < decoded_bytes / 3, f"peak {peak / 1e6:.1f} MB vs {decoded_bytes / 1e6:.1f} MB decoded"


def test_cli_json_and_strip_chart(joined, model, capsys, isolated_env):
    from serq.cli import main

    path, spans, _ = joined
    assert main(["timeline", str(path), "--json"]) == 0
    printed = Timeline.model_validate(json.loads(capsys.readouterr().out))
    assert printed.model_dump(exclude={"file"}) == timeline_file(path, model).model_dump(exclude={"file"})
    png = isolated_env / "t.png"
    assert main(["timeline", str(path), "--png", str(png)]) == 0
    text = capsys.readouterr().out
    assert f"{len(printed.segments)} speech segment(s)" in text and "share of speech" in text
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_bot_view_renders_what_the_cli_prints(joined, capsys, isolated_env):
    from serq.cli import main
    from serq.cli.timeline_view import show_timeline

    path, _, _ = joined
    assert main(["timeline", str(path)]) == 0
    printed = capsys.readouterr().out.rstrip("\n")
    png = isolated_env / "bot.png"
    assert show_timeline(path, png=png) == printed + f"\n  wrote {png}"
    assert png.stat().st_size > 1000


def test_cli_errors(capsys, tmp_path):
    from serq.cli import main

    assert main(["timeline", str(tmp_path / "missing.wav")]) == 2
    assert "[not_found]" in capsys.readouterr().err
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"RIFF nonsense")
    assert main(["timeline", str(bad)]) == 2
    assert "[unsupported_format]" in capsys.readouterr().err
