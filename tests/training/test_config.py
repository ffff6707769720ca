"""TrainConfig: validation messages name the field; YAML round trip; typed overrides."""

from __future__ import annotations

from pathlib import Path

import pytest

from vidiff.training.config import ConfigError, StageConfig, TrainConfig


def _write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "c.yaml"
    p.write_text(text)
    return p


def test_yaml_round_trip_and_overrides(tmp_path: Path) -> None:
    p = _write(tmp_path, "seed: 3\noptim:\n  lr: 0.001\nstages:\n"
               "  - {name: temporal, steps: 2, trainable: ['*temporal*']}\n  - {name: all}\n")
    cfg = TrainConfig.from_yaml(p, ["--optim.lr=1e-4", "data.batch_size=3", "loss.fixed_noise=true",
                                    "optim.betas=[0.8, 0.95]", "model.init_from=/some/ckpt",
                                    "model.preset=none"])
    assert cfg.seed == 3
    assert cfg.optim.lr == pytest.approx(1e-4) and isinstance(cfg.optim.lr, float)
    assert cfg.data.batch_size == 3 and cfg.loss.fixed_noise is True
    assert cfg.optim.betas == (0.8, 0.95)
    assert cfg.model.preset is None and cfg.model.init_from == "/some/ckpt"
    assert cfg.stages == (StageConfig("temporal", ("*temporal*",), 2), StageConfig("all", ("*",), None))
    out = tmp_path / "resolved.yaml"
    cfg.to_yaml(out)
    assert TrainConfig.from_yaml(out) == cfg


@pytest.mark.parametrize(("override", "needle"), [
    ("optim.lrr=1", "optim.lrr"),
    ("nope=1", "nope"),
    ("optim.lr=abc", "optim.lr"),
    ("optim.lr=-1", "optim.lr"),
    ("data.batch_size=1.5", "data.batch_size"),
    ("loss.objective=foo", "loss.objective"),
    ("loss.ucg_rate=1.5", "loss.ucg_rate"),
    ("schedule.warmup_steps=1000", "schedule.warmup_steps"),
    ("precision=fp8", "precision"),
    ("optim.lr", "key=value"),
])
def test_errors_name_the_field(tmp_path: Path, override: str, needle: str) -> None:
    p = _write(tmp_path, "seed: 0\n")
    with pytest.raises(ConfigError, match=needle.replace(".", r"\.")):
        TrainConfig.from_yaml(p, [override])


def test_unknown_yaml_key_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"optim\.learning_rate"):
        TrainConfig.from_yaml(_write(tmp_path, "optim:\n  learning_rate: 1\n"))
    with pytest.raises(ConfigError, match="not found"):
        TrainConfig.from_yaml(tmp_path / "missing.yaml")


def test_stage_without_steps_must_be_last() -> None:
    with pytest.raises(ConfigError, match=r"stages\[a\]\.steps"):
        TrainConfig.from_dict({"stages": [{"name": "a"}, {"name": "b"}]})
