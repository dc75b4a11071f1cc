"""Dataset readers: labels and speakers from each corpus's naming scheme, and CSV manifests.

The readers only look at names, so the files here are tiny placeholders.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from serq.errors import DatasetError
from serq.labels import EMOTIONS
from serq.worker.training.datasets import parse_name, read_manifest, scan


def touch(root: Path, *names: str) -> None:
    for name in names:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"RIFF")


def labels_by_name(dataset) -> dict[str, tuple[str, str, str]]:
    return {c.path.name: (c.label, c.speaker, c.corpus) for c in dataset.clips}


def test_ravdess_every_emotion_code(tmp_path):
    names = [f"Actor_07/03-01-{code:02d}-01-01-01-07.wav" for code in range(1, 9)]
    touch(tmp_path, *names)
    got = labels_by_name(scan(tmp_path))
    for code, emotion in enumerate(EMOTIONS, start=1):
        assert got[f"03-01-{code:02d}-01-01-01-07.wav"] == (emotion, "ravdess:07", "ravdess")


def test_ravdess_unknown_emotion_code_is_not_guessed(tmp_path):
    touch(tmp_path, "03-01-09-01-01-01-07.wav", "03-01-03-02-02-01-12.flac")
    dataset = scan(tmp_path)
    assert labels_by_name(dataset) == {"03-01-03-02-02-01-12.flac": ("happy", "ravdess:12", "ravdess")}
    assert sum(dataset.skipped.values()) == 1


def test_crema_d(tmp_path):
    codes = {"ANG": "angry", "DIS": "disgust", "FEA": "fearful", "HAP": "happy", "NEU": "neutral", "SAD": "sad"}
    touch(tmp_path, *(f"1001_DFA_{code}_XX.wav" for code in codes), "1091_IEO_SAD_HI.wav")
    got = labels_by_name(scan(tmp_path))
    for code, emotion in codes.items():
        assert got[f"1001_DFA_{code}_XX.wav"] == (emotion, "crema-d:1001", "crema-d")
    assert got["1091_IEO_SAD_HI.wav"] == ("sad", "crema-d:1091", "crema-d")


def test_tess(tmp_path):
    touch(tmp_path, "OAF_angry/OAF_back_angry.wav", "YAF_pleasant_surprised/YAF_dog_ps.wav",
          "OAF_Fear/OAF_bite_fear.wav", "YAF_neutral/YAF_youth_neutral.wav", "YAF_disgust/YAF_bath_disgust.wav")
    got = labels_by_name(scan(tmp_path))
    assert got["OAF_back_angry.wav"] == ("angry", "tess:OAF", "tess")
    assert got["YAF_dog_ps.wav"] == ("surprised", "tess:YAF", "tess")
    assert got["OAF_bite_fear.wav"] == ("fearful", "tess:OAF", "tess")
    assert got["YAF_youth_neutral.wav"] == ("neutral", "tess:YAF", "tess")
    assert got["YAF_bath_disgust.wav"] == ("disgust", "tess:YAF", "tess")


def test_turev_labels_come_from_the_folder(tmp_path):
    touch(tmp_path, "Angry/1157_kz_acik.flac", "Calm/1234_er_bugu.flac", "Happy/6783_kz_cay.flac",
          "Sad/7895_er_beste.flac", "Bored/1157_kz_acik.flac", "1157_kz_acik.flac")
    dataset = scan(tmp_path)
    got = {(c.path.parent.name, c.path.name): (c.label, c.speaker, c.corpus) for c in dataset.clips}
    assert got == {("Angry", "1157_kz_acik.flac"): ("angry", "turev:1157", "turev"),
                   ("Calm", "1234_er_bugu.flac"): ("calm", "turev:1234", "turev"),
                   ("Happy", "6783_kz_cay.flac"): ("happy", "turev:6783", "turev"),
                   ("Sad", "7895_er_beste.flac"): ("sad", "turev:7895", "turev")}
    assert sum(dataset.skipped.values()) == 2  # no emotion folder: never guessed


def test_emodb_with_boredom_skipped_and_counted(tmp_path):
    letters = {"W": "angry", "E": "disgust", "A": "fearful", "F": "happy", "T": "sad", "N": "neutral"}
    touch(tmp_path, *(f"03a01{letter}a.wav" for letter in letters), "03a01La.wav", "16b10Lb.wav", "16b10Wb.wav")
    dataset = scan(tmp_path)
    got = labels_by_name(dataset)
    for letter, emotion in letters.items():
        assert got[f"03a01{letter}a.wav"] == (emotion, "emodb:03", "emodb")
    assert got["16b10Wb.wav"] == ("angry", "emodb:16", "emodb")
    # Boredom has no counterpart among serq's 8: never mislabelled, always counted.
    assert "03a01La.wav" not in got and "16b10Lb.wav" not in got
    assert dataset.skipped == {"unmapped label: boredom": 2}
    assert dataset.summary()["skipped"] == {"unmapped label: boredom": 2}


def test_mixed_corpora_and_unrecognised_names(tmp_path):
    touch(tmp_path, "a/03-01-05-01-01-01-01.wav", "b/1001_DFA_ANG_XX.wav", "c/OAF_back_angry.wav",
          "d/03a01Wa.wav", "e/recording.wav", "e/readme.txt")
    dataset = scan(tmp_path)
    summary = dataset.summary()
    assert summary["clips"] == 4 and summary["speakers"] == 4
    assert summary["corpora"] == {"ravdess": 1, "crema-d": 1, "tess": 1, "emodb": 1}
    assert summary["labels"] == {"angry": 4}
    assert dataset.skipped == {"unrecognised file name": 1}  # non-audio files are not even considered


def test_parse_name_speakers_are_namespaced_by_corpus():
    # Speaker "01" of RAVDESS and speaker "01"-ish ids elsewhere must never be merged.
    assert parse_name(Path("03-01-01-01-01-01-01.wav"))[1] == "ravdess:01"
    assert parse_name(Path("01a01Na.wav"))[1] == "emodb:01"
    assert parse_name(Path("whatever.wav")) is None


def test_csv_manifest(tmp_path):
    touch(tmp_path, "clips/one.wav", "clips/two.ogg", "clips/three.mp3", "clips/four.wav")
    manifest = tmp_path / "data.csv"
    manifest.write_text(
        "path,label,speaker\n"
        "clips/one.wav,angry,alice\n"
        "clips/two.ogg,Sad,bob\n"
        "clips/three.mp3,boredom,bob\n"
        "clips/four.wav,happy,\n"
    )
    dataset = scan(manifest)
    got = {c.path: (c.label, c.speaker, c.corpus) for c in dataset.clips}
    root = tmp_path.resolve()
    assert got == {
        root / "clips/one.wav": ("angry", "manifest:alice", "manifest"),
        root / "clips/two.ogg": ("sad", "manifest:bob", "manifest"),
        root / "clips/four.wav": ("happy", "manifest:file:four.wav", "manifest"),  # no speaker: one per file
    }
    assert dataset.skipped == {"unmapped label: boredom": 1}


def test_manifest_without_speaker_column(tmp_path):
    manifest = tmp_path / "m.csv"
    manifest.write_text("path,label\na.wav,calm\n")
    touch(tmp_path, "a.wav")
    (clip,) = read_manifest(manifest).clips
    assert (clip.label, clip.speaker) == ("calm", "manifest:file:a.wav")


def test_manifest_without_header_is_refused(tmp_path):
    manifest = tmp_path / "m.csv"
    manifest.write_text("a.wav,angry\nb.wav,sad\n")
    with pytest.raises(DatasetError, match="header"):
        scan(manifest)


def test_missing_and_empty_datasets_are_refused(tmp_path):
    with pytest.raises(DatasetError, match="not found"):
        scan(tmp_path / "nowhere")
    touch(tmp_path, "x/recording.wav", "x/03a01La.wav")
    with pytest.raises(DatasetError, match="no labelled audio") as info:
        scan(tmp_path / "x")
    assert info.value.code == "dataset_error"
    assert "boredom" in str(info.value) and "unrecognised" in str(info.value)  # says why


def test_restrict_and_only_speakers_count_what_they_drop(tmp_path):
    touch(tmp_path, *(f"03-01-{e:02d}-01-01-01-{a:02d}.wav" for e in (1, 5, 6) for a in (1, 2, 3)))
    dataset = scan(tmp_path)
    assert dataset.speakers == ["ravdess:01", "ravdess:02", "ravdess:03"]
    angry_sad = dataset.restrict(("angry", "fearful"))
    assert len(angry_sad.clips) == 6 and angry_sad.skipped["emotion not selected"] == 3
    two = dataset.only_speakers(["01", "ravdess:03"])
    assert two.speakers == ["ravdess:01", "ravdess:03"] and two.skipped["speaker not selected"] == 3


def test_the_corpus_reads_as_20_actors_8_emotions(ravdess_dir):
    dataset = scan(ravdess_dir)
    summary = dataset.summary()
    assert summary["speakers"] == len({p.name for p in ravdess_dir.glob("Actor_*")})
    assert set(summary["labels"]) == set(EMOTIONS)
    assert not dataset.skipped


def test_labels_in_canonical_order_and_emotion_parsing():
    from serq.labels import in_canonical_order, parse_emotions

    assert in_canonical_order(["sad", "boredom", "neutral", "sad", "angry"]) == ["neutral", "sad", "angry", "boredom"]
    assert parse_emotions("sad, Angry,neutral") == ("neutral", "sad", "angry")
    assert parse_emotions(None) == EMOTIONS
    with pytest.raises(ValueError, match="boredom"):
        parse_emotions("sad,boredom")
