"""Atomic safetensors/JSON writes, clear errors for bad files, strict state-dict checks."""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from vidiff.io.weights import (
    CheckpointError,
    atomic_output,
    check_state_dict,
    load_safetensors,
    load_state_dict_strict,
    read_json,
    read_safetensors_metadata,
    save_safetensors_atomic,
    write_json_atomic,
)

PNG_HEADER = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x01\x00\x00\x00\x01\x08\x02\x00\x00\x00"


def _tensors() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {
        "a.weight": torch.randn(3, 4, generator=g),
        "b": torch.arange(5, dtype=torch.int64),
        "c": torch.randn(2, 2, generator=g).to(torch.bfloat16),
    }


def test_save_and_load_round_trip_bitwise_with_metadata(tmp_path: Path) -> None:
    t = _tensors()
    t["view"] = t["a.weight"][:, 1]  # a non-contiguous view of another tensor's storage
    path = tmp_path / "sub" / "w.safetensors"
    save_safetensors_atomic(t, path, metadata={"k": "v"})
    got = load_safetensors(path)
    assert got.keys() == t.keys()
    for k in t:
        assert got[k].dtype == t[k].dtype and torch.equal(got[k], t[k])
    assert read_safetensors_metadata(path)["k"] == "v"
    assert load_file(str(path)).keys() == t.keys()  # the reference reader agrees
    assert [p.name for p in path.parent.iterdir()] == ["w.safetensors"]  # no temp files left


def test_meta_load_reads_shapes_only(tmp_path: Path) -> None:
    path = tmp_path / "w.safetensors"
    save_file(_tensors(), str(path))
    got = load_safetensors(path, device="meta")
    assert {k: (tuple(v.shape), v.dtype, v.device.type) for k, v in got.items()} == {
        k: (tuple(v.shape), v.dtype, "meta") for k, v in _tensors().items()
    }


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match=r"nope\.safetensors: file not found"):
        load_safetensors(tmp_path / "nope.safetensors")


@pytest.mark.parametrize(
    "content, problem",
    [
        (PNG_HEADER + b"\x00" * 64, "not a safetensors file"),
        (bytes(range(256)) * 4, "not a safetensors file"),
        (b"abc", "not a safetensors file"),
        (struct.pack("<Q", 10) + b"[1,2,3]   ", "not a safetensors file"),
    ],
    ids=["png", "random-bytes", "tiny", "json-not-object"],
)
def test_non_safetensors_files(tmp_path: Path, content: bytes, problem: str) -> None:
    path = tmp_path / "bad.safetensors"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match=problem) as e:
        load_safetensors(path)
    assert str(path) in str(e.value)


@pytest.mark.parametrize("keep", [0.5, 0.999])
def test_truncated_file(tmp_path: Path, keep: float) -> None:
    path = tmp_path / "w.safetensors"
    save_file({"x": torch.randn(64, 64)}, str(path))
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(CheckpointError, match="truncated") as e:
        load_safetensors(path)
    assert str(path) in str(e.value)


def test_json_atomic_and_read_errors(tmp_path: Path) -> None:
    path = tmp_path / "c.json"
    write_json_atomic({"b": 1, "a": [1, 2]}, path)
    assert json.loads(path.read_text()) == {"a": [1, 2], "b": 1}
    assert read_json(path) == {"a": [1, 2], "b": 1}
    path.write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        read_json(path)
    with pytest.raises(CheckpointError, match="file not found"):
        read_json(tmp_path / "missing.json")


def test_failed_write_keeps_existing_file(tmp_path: Path) -> None:
    path = tmp_path / "w.safetensors"
    path.write_bytes(b"precious")
    with pytest.raises(TypeError):
        save_safetensors_atomic({"ok": torch.zeros(2), "bad": "not a tensor"}, path)  # type: ignore[dict-item]
    assert path.read_bytes() == b"precious"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["w.safetensors"]


@pytest.mark.parametrize("existing", ["file", "folder"])
def test_atomic_output_keeps_destination_on_failure(tmp_path: Path, existing: str) -> None:
    dst = tmp_path / "out"
    if existing == "file":
        dst.write_bytes(b"old")
    else:
        dst.mkdir()
        (dst / "inner.txt").write_text("old")
    with pytest.raises(CheckpointError, match="already exists"), atomic_output(dst):
        pass
    with pytest.raises(RuntimeError), atomic_output(dst, overwrite=True) as tmp:
        (tmp / "half.json").write_text("{}")
        raise RuntimeError("boom")
    if existing == "file":
        assert dst.read_bytes() == b"old"
    else:
        assert [p.name for p in dst.iterdir()] == ["inner.txt"] and (dst / "inner.txt").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    with atomic_output(dst, overwrite=True) as tmp:  # success replaces it
        (tmp / "new.json").write_text("{}")
    assert [p.name for p in dst.iterdir()] == ["new.json"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_check_state_dict_lists_every_kind_of_problem() -> None:
    expected = {f"layer.{i}.weight": torch.Size([4, 4]) for i in range(8)}
    got = {k: torch.zeros(4, 4) for k in expected}
    check_state_dict(expected, got, "unet")  # matching: no error
    del got["layer.0.weight"]
    got["layer.1.weight"] = torch.zeros(4, 5)
    got["extra.bias"] = torch.zeros(1)
    for i in range(2, 8):
        got[f"layer.{i}.weight_renamed"] = got.pop(f"layer.{i}.weight")
    with pytest.raises(CheckpointError) as e:
        check_state_dict(expected, got, "unet")
    msg = str(e.value)
    assert "\n" not in msg
    assert msg.startswith("unet:")
    assert "7 missing: layer.0.weight" in msg and "(2 more)" in msg
    assert "7 unexpected: extra.bias" in msg
    assert "1 with the wrong shape: layer.1.weight (expected [4, 4], got [4, 5])" in msg


def test_load_state_dict_strict_uses_module_as_reference() -> None:
    module = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.LayerNorm(4))
    sd = {k: torch.randn_like(v) for k, v in module.state_dict().items()}
    load_state_dict_strict(module, sd, "toy")
    assert torch.equal(module[0].weight, sd["0.weight"])
    bad = dict(sd)
    bad["0.weight"] = torch.zeros(4, 2)
    with pytest.raises(CheckpointError, match=r"toy: .*0\.weight \(expected \[4, 3\], got \[4, 2\]\)"):
        load_state_dict_strict(module, bad, "toy")


def test_atomic_writes_get_the_umask_mode(tmp_path: Path) -> None:
    old = os.umask(0o027)
    try:
        save_safetensors_atomic({"w": torch.zeros(2)}, tmp_path / "m.safetensors")
        with atomic_output(tmp_path / "folder") as tmp:
            (tmp / "x.json").write_text("{}")
    finally:
        os.umask(old)
    assert ((tmp_path / "m.safetensors").stat().st_mode & 0o777) == 0o640
    assert ((tmp_path / "folder").stat().st_mode & 0o777) == 0o750
