"""Training leaves no global state behind: the determinism settings and the cuBLAS variable come back after
a run (also a failed one), the data loader writes nothing onto the dataset, the library warns instead of
printing, and DDP is told to look for unused parameters only when a trainable one gets no gradient."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from vidiff.training import distributed as D
from vidiff.training.config import TrainConfig
from vidiff.training.data import MovingShapesDataset
from vidiff.training.loop import EpochFetcher, deterministic_mode, train
from vidiff.training.model import build_dataset, build_models, prepare_batch
from vidiff.training.objectives import DiffusionObjective, sample_draws
from vidiff.training.stages import apply_trainable, matches

from .conftest import TINY_CONFIG

CUBLAS = "CUBLAS_WORKSPACE_CONFIG"


def _config(out: Path, *overrides: str) -> TrainConfig:
    return TrainConfig.from_yaml(TINY_CONFIG, [
        f"output_dir={out}", "progress=false", "data.num_samples=2", "data.batch_size=1", "data.height=8",
        "data.width=8", "schedule.max_steps=1", "schedule.warmup_steps=0", "checkpoint.export=false", *overrides])


@pytest.fixture
def nondeterministic():
    saved = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(False)
    yield
    torch.use_deterministic_algorithms(saved[0], warn_only=saved[1])


def test_deterministic_training_restores_the_settings(tmp_path: Path, nondeterministic: None,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    # one pattern of the stage matches nothing: a warning, not a print
    with pytest.warns(UserWarning, match="no_such_layer"):
        result = train(_config(tmp_path / "ok", "deterministic=true",
                               "stages=[{name: s, trainable: ['*conv*', '*no_such_layer*']}]"))
    assert len(result.losses) == 1
    assert capsys.readouterr().out == ""
    assert not torch.are_deterministic_algorithms_enabled()

    empty = tmp_path / "no_videos"
    empty.mkdir()
    with pytest.raises((ValueError, FileNotFoundError)):  # fails while building the dataset, inside the run
        train(_config(tmp_path / "bad", "deterministic=true", "data.dataset=video_folder", f"data.root={empty}"))
    assert not torch.are_deterministic_algorithms_enabled()

    torch.use_deterministic_algorithms(True, warn_only=True)  # a caller's own setting survives a run
    train(_config(tmp_path / "warn", "deterministic=true"))
    assert torch.are_deterministic_algorithms_enabled() and torch.is_deterministic_algorithms_warn_only_enabled()


@pytest.mark.parametrize("before", [None, ":16:8"])
def test_cuda_determinism_variable_is_restored(monkeypatch: pytest.MonkeyPatch, nondeterministic: None,
                                               before: str | None) -> None:
    if before is None:
        monkeypatch.delenv(CUBLAS, raising=False)
    else:
        monkeypatch.setenv(CUBLAS, before)
    benchmark = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = True
    try:
        with pytest.raises(RuntimeError, match="inside"), deterministic_mode(True, torch.device("cuda")):
            assert os.environ[CUBLAS] == (before or ":4096:8")
            assert torch.are_deterministic_algorithms_enabled() and not torch.backends.cudnn.benchmark
            raise RuntimeError("inside")
        assert os.environ.get(CUBLAS) == before
        assert not torch.are_deterministic_algorithms_enabled() and torch.backends.cudnn.benchmark
    finally:
        torch.backends.cudnn.benchmark = benchmark


def test_fetching_writes_nothing_onto_the_dataset() -> None:
    ds = MovingShapesDataset(num_samples=4, num_frames=2, size=(8, 8), seed=0)
    names = set(vars(ds))
    fetch = EpochFetcher(ds)
    items = [fetch(0, 1), fetch(1, 1), fetch(1, 2)]
    assert set(vars(ds)) == names
    fresh = MovingShapesDataset(num_samples=4, num_frames=2, size=(8, 8), seed=0)
    fresh.set_epoch(1)
    assert torch.equal(torch.as_tensor(items[1]["video"]), torch.as_tensor(fresh[1]["video"]))
    assert torch.equal(torch.as_tensor(items[2]["video"]), torch.as_tensor(fresh[2]["video"]))


def test_unused_parameters_are_exactly_the_one_token_cross_attention_query_side() -> None:
    cfg = _config(Path("unused"))
    bundle = build_models(cfg.model, cfg.data, seed=0)
    module = DiffusionObjective(bundle.unet, cfg.loss)
    ds = build_dataset(cfg.data, seed=0)
    x0, cond_fn, image_shape = prepare_batch(bundle, [ds[0], ds[1]], torch.device("cpu"))
    draws = sample_draws(cfg.loss, seed=0, step=0, positions=[0, 1], image_shape=image_shape,
                         latent_shape=tuple(x0.shape[1:]), device=torch.device("cpu"))
    cond = cond_fn(draws)

    def loss() -> torch.Tensor:
        return module(x0, cond, draws)["loss"].sum()

    # one context token: softmax over one key is 1, so the query projection, the key projection and the
    # norm in front of the query get no gradient; every other weight does
    query_side = ["*attn2.to_q.*", "*attn2.to_k.*", "*transformer_blocks.*.norm2.*"]
    apply_trainable(module, ["*"])
    unused = D.unused_parameters(module, loss)
    assert set(unused) == {n for n, _ in module.named_parameters() if matches(n, query_side)}
    assert len(unused) > 0 and all(p.grad is None for p in module.parameters())
    apply_trainable(module, ["*conv*", "*temporal_res_block*"])  # a stage without them needs no search
    assert D.unused_parameters(module, loss) == []
