"""Safetensors and JSON files written atomically, read with clear errors, and strict state-dict checks.

Every writer here goes through :mod:`vidiff.io.atomic`: its bytes land in a temporary file next to the
destination, are fsynced and renamed into place, so a crash or an error leaves either the old file or the
new one, never half of one.
Readers raise :class:`CheckpointError` naming the file and what is wrong with it. Weights are unpickled
only from diffusers' ``.bin`` files, with ``torch.load(weights_only=True)`` (``vidiff.io.checkpoints``).
"""

from __future__ import annotations

import contextlib
import json
import os
import struct
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from vidiff.io.atomic import atomic_dir, atomic_file, give_default_mode, write_json_atomic

__all__ = [
    "CheckpointError",
    "atomic_output",
    "check_state_dict",
    "format_names",
    "give_default_mode",
    "load_safetensors",
    "load_state_dict_strict",
    "read_json",
    "read_safetensors_metadata",
    "save_safetensors_atomic",
    "write_json_atomic",
]

# The safetensors header is a little-endian u64 length followed by that many bytes of JSON.
_MAX_HEADER_BYTES = 100 * 1024 * 1024
_SHOW = 5  # how many names each kind of problem lists before "..."
_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool, "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2,
    **{f"U{b}": getattr(torch, f"uint{b}") for b in (16, 32, 64) if hasattr(torch, f"uint{b}")},
}


class CheckpointError(ValueError):
    """A checkpoint file or folder that cannot be used; the message names the path and the problem."""


# ------------------------------------------------------------------------------------------------
# writing


def save_safetensors_atomic(
    tensors: Mapping[str, torch.Tensor], path: str | os.PathLike, metadata: Mapping[str, str] | None = None
) -> None:
    """Write ``tensors`` to ``path`` as safetensors via a temporary file and ``os.replace``.

    Tensors are made contiguous; tensors sharing storage are written as separate copies.
    """
    path = Path(path)
    out: dict[str, torch.Tensor] = {}
    seen: set[tuple[int, int]] = set()
    for name, t in tensors.items():
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
        t = t.detach().to("cpu").contiguous()
        ident = (t.untyped_storage().data_ptr(), t.storage_offset()) if t.numel() else (id(t), 0)
        if ident in seen or (t.numel() and t.untyped_storage().nbytes() != t.numel() * t.element_size()):
            t = t.clone()  # safetensors refuses shared or partial storage
        seen.add((t.untyped_storage().data_ptr(), t.storage_offset()) if t.numel() else (id(t), 0))
        out[name] = t
    meta = {str(k): str(v) for k, v in (metadata or {}).items()}
    with atomic_file(path) as tmp:
        save_file(out, str(tmp), metadata=meta or None)


@contextlib.contextmanager
def atomic_output(
    path: str | os.PathLike, *, overwrite: bool = False, directory: bool = True
) -> Iterator[Path]:
    """Yield a fresh temporary folder (or file path) next to ``path``; on success it replaces ``path``.

    On failure the temporary output is removed and an existing ``path`` (file or folder) survives byte
    for byte. Without ``overwrite`` an existing ``path`` is an error raised before anything is written.
    """
    path = Path(path)
    if (path.exists() or path.is_symlink()) and not overwrite:
        raise CheckpointError(f"{path}: already exists (pass --overwrite to replace it)")
    with atomic_dir(path) if directory else atomic_file(path) as tmp:
        yield tmp


# ------------------------------------------------------------------------------------------------
# reading


def read_json(path: str | os.PathLike) -> dict[str, Any]:
    """Read a JSON object; a missing or malformed file is a :class:`CheckpointError`."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: file not found")
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: expected a JSON object, found {type(obj).__name__}")
    return obj


def _read_header(path: Path) -> dict[str, Any]:
    """Parse and sanity-check a safetensors header so that corrupt files fail with a clear message."""
    if not path.exists():
        raise CheckpointError(f"{path}: file not found")
    if not path.is_file():
        raise CheckpointError(f"{path}: not a file")
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise CheckpointError(f"{path}: not a safetensors file (only {size} bytes)")
        (n,) = struct.unpack("<Q", head)
        if n == 0 or n > _MAX_HEADER_BYTES:
            raise CheckpointError(f"{path}: not a safetensors file (implausible header length {n})")
        if n > size - 8:
            raise CheckpointError(
                f"{path}: truncated or not a safetensors file (header needs {n} bytes, file has {size - 8})"
            )
        raw = f.read(n)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise CheckpointError(f"{path}: not a safetensors file (header is not JSON)") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: not a safetensors file (header is not a JSON object)")
    end = 0
    for name, info in header.items():
        if name == "__metadata__":
            continue
        end = max(end, _check_entry(path, name, info))
    if end > size - 8 - n:
        raise CheckpointError(
            f"{path}: truncated safetensors file (tensor data needs {end} bytes, file has {size - 8 - n})"
        )
    return header


def _is_count(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and x >= 0


def _check_entry(path: Path, name: str, info: Any) -> int:
    """Check one tensor's header entry (dtype, non-negative shape, offsets spanning its bytes); return its
    end offset."""
    if not isinstance(info, dict):
        raise CheckpointError(f"{path}: not a safetensors file (bad header entry {name!r})")
    dtype, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
    if dtype not in _DTYPES:
        raise CheckpointError(f"{path}: tensor {name!r} has unsupported dtype {dtype!r}")
    if not isinstance(shape, list) or not all(_is_count(d) for d in shape):
        raise CheckpointError(f"{path}: tensor {name!r} has an invalid shape {shape!r} (needs non-negative "
                              "integers)")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(_is_count(o) for o in offsets)
            and offsets[0] <= offsets[1]):
        raise CheckpointError(f"{path}: tensor {name!r} has invalid data_offsets {offsets!r}")
    numel = 1
    for d in shape:
        numel *= d
    if offsets[1] - offsets[0] != numel * _DTYPES[dtype].itemsize:
        raise CheckpointError(f"{path}: tensor {name!r} of shape {shape} {dtype} needs "
                              f"{numel * _DTYPES[dtype].itemsize} bytes, its data_offsets span "
                              f"{offsets[1] - offsets[0]}")
    return offsets[1]


def read_safetensors_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The ``__metadata__`` string map of a safetensors file (empty if it has none)."""
    meta = _read_header(Path(path)).get("__metadata__") or {}
    return {str(k): str(v) for k, v in meta.items()}


def read_safetensors_shapes(path: str | os.PathLike) -> dict[str, tuple[int, ...]]:
    """Tensor shapes from the header alone (no tensor data is read)."""
    header = _read_header(Path(path))
    return {k: tuple(v["shape"]) for k, v in header.items() if k != "__metadata__"}


def load_safetensors(path: str | os.PathLike, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """Load every tensor of a safetensors file; corrupt, truncated or missing files raise CheckpointError.

    ``device="meta"`` returns shape-and-dtype-only tensors read from the header (no data is read).
    """
    path = Path(path)
    header = _read_header(path)
    if str(device) == "meta":  # shapes and dtypes only, from the header
        return {k: torch.empty(tuple(v["shape"]), dtype=_DTYPES[v["dtype"]], device="meta")
                for k, v in header.items() if k != "__metadata__"}
    try:
        with safe_open(str(path), framework="pt", device=str(device)) as f:
            return {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open has no __iter__)
    except CheckpointError:
        raise
    except Exception as e:  # safetensors raises its own error type for anything malformed
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise CheckpointError(f"{path}: cannot read safetensors file ({msg})") from None


# ------------------------------------------------------------------------------------------------
# strict state dicts


def format_names(names: list[str]) -> str:
    """The first few of ``names``, comma-separated, and how many more there are (for error messages)."""
    shown = ", ".join(names[:_SHOW])
    return shown + (f", ... ({len(names) - _SHOW} more)" if len(names) > _SHOW else "")


def _shape(s: Any) -> tuple[int, ...]:
    return tuple(int(d) for d in s)


def check_state_dict(
    expected: Mapping[str, torch.Size | tuple[int, ...]],
    got: Mapping[str, torch.Tensor | torch.Size | tuple[int, ...]],
    component: str,
) -> None:
    """Raise :class:`CheckpointError` if ``got`` has missing, unexpected or mis-shaped tensors.

    ``got`` may map names to tensors or to shapes. The message is one line: counts and the first few
    names of each kind of problem.
    """
    missing = sorted(k for k in expected if k not in got)
    unexpected = sorted(k for k in got if k not in expected)
    bad: list[str] = []
    for k in sorted(expected):
        if k in got:
            g = got[k]
            gs = _shape(g.shape) if isinstance(g, torch.Tensor) else _shape(g)
            es = _shape(expected[k])
            if gs != es:
                bad.append(f"{k} (expected {list(es)}, got {list(gs)})")
    if not (missing or unexpected or bad):
        return
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing: {format_names(missing)}")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected: {format_names(unexpected)}")
    if bad:
        parts.append(f"{len(bad)} with the wrong shape: {format_names(bad)}")
    raise CheckpointError(f"{component}: state dict does not match the model; " + "; ".join(parts))


def load_state_dict_strict(
    module: torch.nn.Module, state_dict: Mapping[str, torch.Tensor], component: str
) -> None:
    """Check ``state_dict`` against ``module`` (names and shapes), then load it with ``strict=True``."""
    expected = {k: v.shape for k, v in module.state_dict().items()}
    check_state_dict(expected, state_dict, component)
    module.load_state_dict(dict(state_dict), strict=True)
