"""A person's split and statistics on real shards."""

from __future__ import annotations

import pytest

from pipeline.finetune.config import SplitConfig
from pipeline.finetune.person import PersonFailed, person_data, person_statistics, training_frames
from pipeline.train.data import DataConfig

DATA = DataConfig(image_px=32, identity_frames=1, num_workers=0)


def test_split_trains_on_the_first_frames_and_holds_out_the_last(new_people_shards):
    split = SplitConfig(train_frames=30, holdout_frames=15, holdout_share=0.25)
    person = person_data(new_people_shards, "dpe_d", DATA, split)
    assert person.index.vocabulary == ("dpe_d",) and len(person.index.units) == 1
    assert person.train_rows == {0: (0, 30)} and person.holdout_rows == {0: (45, 60)}
    assert person.train_frames == 30 and person.holdout_frames == 15
    # Clips stay inside their part: training windows within rows 0-29, held-out ones within 45-59.
    assert person.train.run_first_row.tolist() == [0] and person.train.run_frames.tolist() == [30]
    assert person.holdout.run_first_row.tolist() == [45] and person.holdout.run_frames.tolist() == [15]
    # Short people: the held-out share caps the held-out frames; N is what is left.
    capped = person_data(new_people_shards, "dpe_d", DATA, SplitConfig(train_frames=500, holdout_share=0.25))
    assert capped.holdout_frames == 15 and capped.train_frames == 45
    assert capped.records[0].note == "shared test clip"  # the manifest's note travels with the person


def test_people_without_enough_frames_fail_with_a_reason(new_people_shards, tiny_shards):
    with pytest.raises(PersonFailed) as err:
        person_data(new_people_shards, "dpe_d", DATA, SplitConfig(train_frames=6, holdout_frames=15))
    assert err.value.reason == "too_few_frames" and "0 usable training frames (of 6" in str(err.value)
    with pytest.raises(PersonFailed) as err:
        person_data(new_people_shards, "dpe_d", DATA, SplitConfig(holdout_frames=5, holdout_share=0.1))
    assert err.value.reason == "too_few_frames" and "hold out" in str(err.value)
    with pytest.raises(PersonFailed) as err:
        person_data(tiny_shards, "dpe_d", DATA, SplitConfig())
    assert err.value.reason == "no_usable_video"


def test_statistics_and_training_frames(new_people_shards):
    person = person_data(new_people_shards, "liveportrait_d3", DATA, SplitConfig(train_frames=30))
    stats = person_statistics(person)
    for name in ("pitch_deg", "yaw_deg", "roll_deg", "scale"):
        low, p1, median, p99, high = stats.pose[name]
        assert low <= p1 <= median <= p99 <= high
    assert stats.expression_low.shape == stats.expression_high.shape == (53,)
    assert bool((stats.expression_low <= stats.expression_high).all())
    assert stats.identity_coefficients.shape == (100,)
    assert stats.background.shape == stats.key_frame.shape == (128, 128, 3)
    assert stats.key_mask.shape == (128, 128)
    assert stats.sources[0][0].startswith("liveportrait_d3") and stats.sources[0][3] == 60
    rgb, masks = training_frames(person, DATA)
    assert rgb.shape == (30, 3, 32, 32) and masks.shape == (30, 1, 32, 32)
    assert bool((rgb[masks.expand_as(rgb) == 0] == -1).all())  # background removed, as in training
    assert set(masks.unique().tolist()) <= {0.0, 1.0}
