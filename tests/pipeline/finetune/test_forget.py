"""Forgetting a person in a training run: their row of W zeroed and their name scrubbed, nothing else."""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

from pipeline.finetune.forget import FORGOTTEN, Forgotten, forget_training
from pipeline.train.checkpoint import list_checkpoints, load_checkpoint
from pipeline.train.clip_index import vocabulary_from_json
from pipeline.train.loop import IDENTITIES_FILE, PREVIEWS_DIR

W = ("image_discriminator", "projection.W")


def test_forgetting_a_person_in_a_training_run_zeroes_only_their_row(tiny_trained_run, tmp_path):
    run_dir = str(shutil.copytree(tiny_trained_run[0], tmp_path / "run"))
    uris = [uri for _, uri in list_checkpoints(run_dir)]
    before = {uri: load_checkpoint(uri) for uri in uris}
    identities = before[uris[0]].identities
    row, identity = 1, identities[1]
    report = Forgotten()
    forget_training(run_dir, identity, report)
    assert uris and report.checkpoints_scrubbed == uris
    for uri in uris:
        old, new = before[uri], load_checkpoint(uri)
        assert new.identities == tuple(FORGOTTEN if n == identity else n for n in identities)
        w_old, w_new = old.networks[W[0]][W[1]], new.networks[W[0]][W[1]]
        assert w_old[row].any() and not w_new[row].any()
        others = [r for r in range(len(w_old)) if r != row]
        assert torch.equal(w_new[others], w_old[others])
        for network, state in old.networks.items():  # every other weight as it was
            for key, value in state.items():
                if (network, key) != W:
                    assert torch.equal(new.networks[network][key], value), (network, key)
    vocabulary = vocabulary_from_json((Path(run_dir) / IDENTITIES_FILE).read_text())
    assert identity not in vocabulary and vocabulary.count(FORGOTTEN) == 1
    assert not (Path(run_dir) / PREVIEWS_DIR).exists()
