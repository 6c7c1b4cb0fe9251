"""Every shipped preset loads, and flags override YAML which overrides defaults."""

from pathlib import Path

import pytest

from histoscan.config import TrainConfig, load_train_config
from histoscan.models.registry import list_models

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_every_shipped_config_loads(path: Path) -> None:
    cfg = load_train_config(path)
    assert isinstance(cfg, TrainConfig)
    assert cfg.model in list_models()


def test_presets_exist() -> None:
    assert {p.stem for p in CONFIGS} >= {"cpu-small", "gpu-full"}


def test_override_order(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("epochs: 7\nlr: 0.5\naugment:\n  hue: 0.0\n")
    cfg = load_train_config(path, lr=0.1, batch_size=None)
    assert (cfg.epochs, cfg.lr, cfg.batch_size, cfg.augment.hue) == (7, 0.1, 128, 0.0)
    assert cfg.augment.dihedral  # untouched augment settings keep their defaults


def test_unknown_setting_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("epoks: 7\n")
    with pytest.raises(ValueError, match="epoks"):
        load_train_config(path)
