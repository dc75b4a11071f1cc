"""`serq train --data A --data B:W`: several labelled sources, weights, figures per source."""

from __future__ import annotations

import numpy as np
import pytest

from helpers.corpus import make_subset, write_manifest
from serq.schemas import DataSource, Hyperparameters, TrainRequest
from serq.settings import Settings
from serq.worker.training.fit import fit
from serq.worker.training.job import run_training
from serq.worker.training.sources import source_names

#: A quick recipe: these tests check plumbing, not accuracy.
QUICK = {"hidden_layers": [32], "max_iter": 30, "augment_speeds": []}


@pytest.mark.parametrize("text, dataset, weight", [
    ("mine.csv:5", "mine.csv", 5.0), ("mine.csv", "mine.csv", 1.0), ("a:b:2.5", "a:b", 2.5),
    ("C:\\data", "C:\\data", 1.0), ("dir:name", "dir:name", 1.0),
])
def test_a_source_is_a_path_with_an_optional_weight(text, dataset, weight):
    assert DataSource.parse(text) == DataSource(dataset=dataset, weight=weight)


@pytest.mark.parametrize("text", ["mine.csv:0", "mine.csv:-1", "mine.csv:5000"])
def test_a_weight_out_of_range_is_refused(text):
    with pytest.raises(ValueError, match="weight"):
        DataSource.parse(text)


def test_the_cli_sends_one_dataset_or_a_list_of_sources():
    from serq.cli.commands.train import build_request

    def args(*data):  # what `serq train --data ...` parses to
        from serq.cli import build_parser

        return build_parser().parse_args(["train", *[f"--data={d}" for d in data]])

    one = build_request(args("ravdess"), "default")
    assert one.dataset == "ravdess" and one.sources is None
    assert build_request(args(), "default").dataset == "default"
    many = build_request(args("ravdess", "mine.csv:10"), "default")
    assert many.dataset is None and [(s.dataset, s.weight) for s in many.sources] == [("ravdess", 1), ("mine.csv", 10)]
    assert build_request(args("mine.csv:3"), "default").sources == [DataSource(dataset="mine.csv", weight=3)]
    assert TrainRequest.model_validate_json(many.model_dump_json()) == many  # what travels over the queue


def test_source_names_are_short_and_unique():
    assert source_names([DataSource(dataset="/x/ravdess/"), DataSource(dataset="/y/ravdess"),
                         DataSource(dataset="mine.csv")]) == ["ravdess", "ravdess#2", "mine.csv"]


def test_sample_weights_reach_the_network():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(80, 5))
    y = np.where(X[:, 0] + 0.5 * rng.normal(size=80) > 0, "happy", "sad")
    hp = Hyperparameters(hidden_layers=[8], max_iter=100, augment_speeds=[])
    plain = fit(X, y, hp)
    again = fit(X, y, hp, sample_weight=np.ones(80))
    heavy = fit(X, y, hp, sample_weight=np.where(y == "happy", 20.0, 1.0))
    probe = rng.normal(size=(200, 5))
    assert np.allclose(plain.predict_proba(probe), again.predict_proba(probe))
    assert (heavy.predict(probe) == "happy").mean() > (plain.predict(probe) == "happy").mean()


@pytest.mark.corpus
def test_a_local_two_source_training_reports_each_source_with_its_speakers_grouped(ravdess_dir, tmp_path):
    root = tmp_path / "data"
    make_subset(root, ravdess_dir, [1, 2], "two")
    emotions = {1: "neutral", 3: "happy", 4: "sad", 5: "angry"}
    mine = [(p, emotions[e], who) for who, actor in (("me", 3), ("partner", 4)) for e in emotions
            for p in sorted((ravdess_dir / f"Actor_{actor:02d}").glob(f"03-01-{e:02d}-*.flac"))[:3]]
    write_manifest(root / "mine.csv", mine)
    settings = Settings(model_dir=tmp_path / "models", cache_dir=tmp_path / "cache")
    request = TrainRequest(sources=[{"dataset": str(root / "two")}, {"dataset": str(root / "mine.csv"), "weight": 4}],
                           emotions=list(emotions.values()), folds=2, hyperparameters=QUICK, activate="never")
    result = run_training(request, settings, n_jobs=1)
    assert result.ok, result.error
    assert result.dataset["sources"] == [{"name": "two", "weight": 1.0, "clips": 2 * 28, "speakers": 2},
                                         {"name": "mine.csv", "weight": 4.0, "clips": 24, "speakers": 2}]
    assert {"manifest:me", "manifest:partner", "ravdess:01", "ravdess:02"} == set(result.dataset["speaker_ids"])
    per_source = result.metrics.sources
    assert list(per_source) == ["two", "mine.csv"]
    assert per_source["mine.csv"].n == 24 and per_source["two"].n == result.metrics.n - 24
    assert per_source["mine.csv"].speaker_independent and "source mine.csv" in per_source["mine.csv"].protocol
    total = np.array(per_source["two"].confusion_matrix) + np.array(per_source["mine.csv"].confusion_matrix)
    assert total.tolist() == result.metrics.confusion_matrix  # the same out-of-fold predictions, split

    refused = run_training(request.model_copy(update={"speaker_normalisation": True}), settings, n_jobs=1)
    assert not refused.ok and refused.error.code == "dataset_error" and "weights" in refused.error.message
    empty = request.model_copy(update={"sources": [*request.sources, DataSource(dataset=str(root / "two"))],
                                       "speakers": ["me"]})
    failed = run_training(empty, settings, n_jobs=1)
    assert not failed.ok and "source 'two'" in failed.error.message
