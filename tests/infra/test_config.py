from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import pytest

from infra.config import ConfigError, config_hash, from_dict, load_config, save_config, to_dict


@dataclass(frozen=True)
class CropConfig:
    size: int = 256
    margin: float = 0.3


@dataclass(frozen=True)
class FitConfig:
    solver: Literal["fast", "reference"] = "fast"
    w_smooth: float = 1.0
    bounds: tuple[float, float] = (0.0, 1.0)
    device: str | None = None


@dataclass(frozen=True)
class JobConfig:
    crop: CropConfig = field(default_factory=CropConfig)
    fit: FitConfig = field(default_factory=FitConfig)
    extensions: tuple[str, ...] = (".mp4",)


def test_defaults_and_yaml_with_overrides(tmp_path):
    path = tmp_path / "job.yaml"
    path.write_text("crop:\n  size: 128\nfit:\n  solver: reference\n")
    cfg = load_config(JobConfig, str(path), ["fit.w_smooth=1e-4", "crop.margin=0.5", "fit.bounds=[-1, 2]"])
    assert cfg.crop == CropConfig(size=128, margin=0.5)
    assert cfg.fit.solver == "reference"
    assert cfg.fit.w_smooth == 1e-4 and isinstance(cfg.fit.w_smooth, float)
    assert cfg.fit.bounds == (-1.0, 2.0)
    assert cfg.extensions == (".mp4",)


def test_unknown_key_is_rejected_with_its_name():
    with pytest.raises(ConfigError, match=r"unknown config key 'fit\.w_smoth'"):
        from_dict(JobConfig, {"fit": {"w_smoth": 1.0}})
    with pytest.raises(ConfigError, match=r"unknown config key 'trian'"):
        load_config(JobConfig, None, ["trian.lr=1e-4"])


@pytest.mark.parametrize(
    ("data", "key"),
    [
        ({"crop": {"size": "big"}}, "crop.size"),
        ({"fit": {"w_smooth": "fast"}}, "fit.w_smooth"),
        ({"crop": {"size": 2.5}}, "crop.size"),
        ({"crop": {"size": True}}, "crop.size"),
        ({"fit": {"solver": "newton"}}, "fit.solver"),
        ({"fit": {"bounds": [0.0]}}, "fit.bounds"),
        ({"crop": 3}, "crop"),
    ],
)
def test_wrong_type_is_rejected_with_its_name(data, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        from_dict(JobConfig, data)


def test_saved_config_loads_back_identically(tmp_path):
    cfg = load_config(JobConfig, None, ["fit.device=cuda", "extensions=[.mp4, .mov]"])
    save_config(cfg, str(tmp_path / "config.yaml"))
    again = load_config(JobConfig, str(tmp_path / "config.yaml"))
    assert again == cfg
    assert config_hash(again) == config_hash(cfg)
    assert config_hash(cfg) != config_hash(JobConfig())
    assert to_dict(cfg)["extensions"] == [".mp4", ".mov"]


def test_override_needs_key_and_value():
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        load_config(JobConfig, None, ["fit.w_smooth"])
