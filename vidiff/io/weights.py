"""Safetensors and JSON files written atomically, read with clear errors, and strict state-dict checks.

Every writer here puts its bytes in a temporary file next to the destination, fsyncs it and renames it
into place, so a crash or an error leaves either the old file or the new one, never half of one.
Readers raise :class:`CheckpointError` naming the file and what is wrong with it. Weights are never
unpickled: ``torch.load`` is not used anywhere in ``vidiff.io``.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import struct
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

__all__ = [
    "CheckpointError",
    "atomic_output",
    "check_state_dict",
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
}


class CheckpointError(ValueError):
    """A checkpoint file or folder that cannot be used; the message names the path and the problem."""


# ------------------------------------------------------------------------------------------------
# writing


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):  # not every filesystem lets a directory be opened
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def give_default_mode(path: Path) -> None:
    """``mkstemp`` / ``mkdtemp`` create owner-only entries (0600 / 0700); give ``path`` the mode a plain
    ``open`` or ``mkdir`` would (0666 / 0777 less the umask), so outputs renamed into place are shareable."""
    mask = os.umask(0)
    os.umask(mask)
    os.chmod(path, (0o777 if path.is_dir() else 0o666) & ~mask)


@contextlib.contextmanager
def _temp_file_next_to(path: Path) -> Iterator[Path]:
    """Yield a temporary path in ``path``'s directory; rename it onto ``path`` if the block succeeds."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        give_default_mode(tmp)  # after the write: a writer may have replaced the file
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    finally:
        if tmp.exists():
            tmp.unlink()


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
    with _temp_file_next_to(path) as tmp:
        save_file(out, str(tmp), metadata=meta or None)


def write_json_atomic(obj: Any, path: str | os.PathLike) -> None:
    """Write ``obj`` as indented, key-sorted JSON (with a final newline) atomically."""
    path = Path(path)
    text = json.dumps(obj, indent=2, sort_keys=True) + "\n"
    with _temp_file_next_to(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


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
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    give_default_mode(tmp)
    target = tmp if directory else tmp / path.name
    try:
        yield target
        if not directory:
            with open(target, "rb+") as f:
                os.fsync(f.fileno())
        backup = None
        if path.exists() or path.is_symlink():
            backup = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".old", dir=path.parent))
            backup.rmdir()
            os.replace(path, backup)
        try:
            os.replace(target, path)
        except BaseException:
            if backup is not None:
                os.replace(backup, path)
            raise
        _fsync_dir(path.parent)
        if backup is not None:
            if backup.is_dir() and not backup.is_symlink():
                shutil.rmtree(backup)
            else:
                backup.unlink()
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


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
        try:
            end = max(end, int(info["data_offsets"][1]))
        except (TypeError, KeyError, IndexError, ValueError):
            raise CheckpointError(f"{path}: not a safetensors file (bad header entry {name!r})") from None
    if end > size - 8 - n:
        raise CheckpointError(
            f"{path}: truncated safetensors file (tensor data needs {end} bytes, file has {size - 8 - n})"
        )
    return header


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
        out = {}
        for k, v in header.items():
            if k == "__metadata__":
                continue
            if v.get("dtype") not in _DTYPES:
                raise CheckpointError(f"{path}: tensor {k!r} has unsupported dtype {v.get('dtype')!r}")
            out[k] = torch.empty(tuple(v["shape"]), dtype=_DTYPES[v["dtype"]], device="meta")
        return out
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


def _fmt_names(names: list[str]) -> str:
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
        parts.append(f"{len(missing)} missing: {_fmt_names(missing)}")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected: {_fmt_names(unexpected)}")
    if bad:
        parts.append(f"{len(bad)} with the wrong shape: {_fmt_names(bad)}")
    raise CheckpointError(f"{component}: state dict does not match the model; " + "; ".join(parts))


def load_state_dict_strict(
    module: torch.nn.Module, state_dict: Mapping[str, torch.Tensor], component: str
) -> None:
    """Check ``state_dict`` against ``module`` (names and shapes), then load it with ``strict=True``."""
    expected = {k: v.shape for k, v in module.state_dict().items()}
    check_state_dict(expected, state_dict, component)
    module.load_state_dict(dict(state_dict), strict=True)
