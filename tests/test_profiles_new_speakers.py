"""`serq evaluate --speaker-profiles` on speakers the models never heard: the models as they are, no refit.

TurEV's speakers (Turkish, evaluation only) are new to both shipped models, so 1 to 4
of them are scored directly: the plain model and its speaker-normalised counterpart,
no folds. RAVDESS speakers the models trained on still go through the refit by fold.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from helpers import REPO
from helpers.corpus import turev_clips, write_manifest
from serq.models.registry import load_default, load_speaker_model
from serq.settings import Settings
from serq.worker.training.evaluation import evaluate_model
from serq.worker.training.new_speakers import evaluate_speaker_profiles

pytestmark = pytest.mark.corpus

#: TurEV speakers with clips of all four emotions (1157 has only angry and sad).
SPEAKERS = ("1234", "1358", "1984", "6783")
PER_EMOTION = 4  # 16 clips per speaker


@pytest.fixture(scope="module")
def settings(tmp_path_factory) -> Settings:
    root = tmp_path_factory.mktemp("new-speakers")
    return Settings(model_dir=root / "models", cache_dir=root / "cache")


@pytest.mark.parametrize("count", [1, 2, 3, 4])
def test_enroll_scores_the_shipped_models_on_1_to_4_new_speakers(count, turev_dir, tmp_path, settings):
    data = str(write_manifest(tmp_path / "new.csv", turev_clips(turev_dir, SPEAKERS[:count], per_emotion=PER_EMOTION)))
    plain = load_default()
    reports = evaluate_speaker_profiles(plain, data, settings, "enroll:4")
    clips = count * 4 * PER_EMOTION
    spk, same, everything = reports["speaker_profiles"], reports["plain_same_clips"], reports["plain"]
    assert everything.n == clips and spk.n == same.n == clips - 4 * count  # the enrolment clips are not scored
    assert spk.protocol.startswith(f"held-out data: {count} speaker") and "none seen in training" in spk.protocol
    assert spk.speaker_independent and "no refit" in spk.speaker_profiles
    assert load_speaker_model(settings.model_dir).version in spk.speaker_profiles
    # No refit: the plain figures are the shipped model's own, as `serq evaluate` scores it.
    direct = evaluate_model(plain, data, settings)
    assert everything.confusion_matrix == direct.confusion_matrix
    assert sum(map(sum, spk.confusion_matrix)) == spk.n


def test_online_mode_and_the_cli_on_one_new_speaker(turev_dir, tmp_path, settings):
    data = str(write_manifest(tmp_path / "one.csv", turev_clips(turev_dir, SPEAKERS[:1], per_emotion=PER_EMOTION)))
    online = evaluate_speaker_profiles(load_default(), data, settings, "online")
    assert online["speaker_profiles"].n == online["plain"].n == 16  # online scores every clip
    assert "online" in online["speaker_profiles"].speaker_profiles
    env = os.environ | {"SERQ_MODEL_DIR": str(settings.model_dir), "SERQ_CACHE_DIR": str(settings.cache_dir)}
    out = subprocess.run([sys.executable, "-m", "serq", "evaluate", "--data", data, "--speaker-profiles", "enroll:2",
                          "--json"], env=env, capture_output=True, text=True, timeout=300, cwd=REPO)
    assert out.returncode == 0, out.stderr
    reports = json.loads(out.stdout)
    assert reports["speaker_profiles"]["n"] == 14 and "no refit" in reports["speaker_profiles"]["speaker_profiles"]
    text = subprocess.run([sys.executable, "-m", "serq", "evaluate", "--data", data, "--speaker-profiles", "enroll:2"],
                          env=env, capture_output=True, text=True, timeout=300, cwd=REPO)
    assert text.returncode == 0 and text.stdout.startswith("the models as they are, no refit"), text.stderr


def test_a_speaker_with_no_clip_left_after_enrolment_is_counted_not_scored(turev_dir, tmp_path, settings):
    clips = turev_clips(turev_dir, SPEAKERS[:1], per_emotion=PER_EMOTION) + turev_clips(turev_dir, SPEAKERS[1:2], per_emotion=1)
    data = str(write_manifest(tmp_path / "uneven.csv", clips))
    reports = evaluate_speaker_profiles(load_default(), data, settings, "enroll:4")
    assert reports["speaker_profiles"].n == 12
    assert sum(v for k, v in reports["speaker_profiles"].skipped.items() if "enroll:4 leaves none" in k) == 4


def test_speakers_the_models_trained_on_still_go_through_the_refit(ravdess_dir, tmp_path, settings):
    from serq.errors import DatasetError

    subset = tmp_path / "Actor_01"  # RAVDESS names its speakers as the models' training data does
    subset.mkdir()
    for p in sorted((ravdess_dir / "Actor_01").glob("*.flac")):
        (subset / p.name).symlink_to(p)
    with pytest.raises(DatasetError, match="at least 5 speakers"):  # refit by speaker-grouped 5-fold
        evaluate_speaker_profiles(load_default(), str(subset), settings, "enroll:2")


def test_a_speaker_model_given_as_model_is_scored_beside_the_active_plain_model(turev_dir, tmp_path):
    import shutil

    from serq.models.registry import DEFAULT_SPEAKER_DIR, Registry, default_metadata, read_metadata

    settings = Settings(model_dir=tmp_path / "models", cache_dir=tmp_path / "cache")
    version = read_metadata(DEFAULT_SPEAKER_DIR).version
    shutil.copytree(DEFAULT_SPEAKER_DIR, settings.model_dir / "versions" / version)
    speaker = Registry(settings.model_dir).load(version)
    data = str(write_manifest(tmp_path / "one.csv", turev_clips(turev_dir, SPEAKERS[1:2], per_emotion=PER_EMOTION)))
    reports = evaluate_speaker_profiles(speaker, data, settings, "enroll:4")
    assert f"speaker model {version}, no refit" in reports["speaker_profiles"].speaker_profiles
    assert default_metadata().version in reports["plain"].protocol and reports["speaker_profiles"].n == 12
