"""Reading a PyTorch checkpoint that `weights_only=True` refuses, without running any of it.

The reference training script saves its progress recorders (instances of classes defined in
its own `__main__`, holding numpy arrays) beside the state dict, so `torch.load(...,
weights_only=True)` refuses the file and `weights_only=False` would execute whatever the pickle
names. This reader parses the same zip archive with an unpickler that imports nothing and
accepts an allow-list, the globals that script writes and nothing else:

- tensors, their storages, dtypes and `OrderedDict`, rebuilt by our own small functions, and
  `_codecs.encode` (how protocol 2 spells bytes), checked before use;
- the script's two recorder classes and numpy's array reconstruction (`_reconstruct`,
  `ndarray`, `dtype`, in numpy 1 and 2 spellings) become inert `Opaque` objects: calling,
  building or filling one only stores its arguments;
- any other global is refused with an error that names it (`os.system`, `builtins.eval`, a
  third-party callable such as `numpy.testing._private.utils.runstring`, another class of the
  script): a loader people trust says no to what it does not expect, rather than guessing
  what is harmless. Nothing the file names is ever imported or called.
"""

from __future__ import annotations

import _compat_pickle
import pickle
import zipfile
from collections import OrderedDict
from pathlib import Path
from typing import Any

import torch

_DTYPES = {
    "FloatStorage": torch.float32,
    "DoubleStorage": torch.float64,
    "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16,
    "LongStorage": torch.int64,
    "IntStorage": torch.int32,
    "ShortStorage": torch.int16,
    "CharStorage": torch.int8,
    "ByteStorage": torch.uint8,
    "BoolStorage": torch.bool,
    "UntypedStorage": torch.uint8,
}
# The other globals the reference training script (main_QCS_*.py, main_DCS_*.py) writes: its
# progress recorders, classes of the script run as __main__, and the numpy arrays they hold
# (numpy 1.x pickles `numpy.core`, numpy 2.x `numpy._core`). Each is read as an inert Opaque.
_REFERENCE_OBJECTS = {
    ("__main__", "RecorderMeter_loss"),
    ("__main__", "RecorderMeter_matrix"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
}


class UnsafeCheckpointError(pickle.UnpicklingError):
    """The pickle names a global outside the allow-list; nothing it names was called."""


class Opaque:
    """Stands in for an object of a class we do not load: remembers its name and arguments."""

    qualified_name = "?"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.args, self.kwargs, self.state, self.items = args, kwargs, None, []

    def __setstate__(self, state: Any) -> None:
        self.state = state

    def __setitem__(self, key: Any, value: Any) -> None:
        self.items.append((key, value))

    def append(self, value: Any) -> None:
        self.items.append(value)

    def extend(self, values: Any) -> None:
        self.items.extend(values)

    def __repr__(self) -> str:
        return f"<opaque {self.qualified_name}>"


class _Storage:
    """The raw bytes of one storage record and the dtype it was saved with."""

    def __init__(self, data: torch.Tensor, dtype: torch.dtype) -> None:
        self.data, self.dtype = data, dtype


class _StorageType:
    def __init__(self, dtype: torch.dtype) -> None:
        self.dtype = dtype


def _tensor(storage: _Storage, offset: int, size: tuple, stride: tuple, dtype: torch.dtype):
    if not isinstance(storage, _Storage):
        raise pickle.UnpicklingError("a tensor without a storage record")
    flat = storage.data.view(dtype)  # reinterprets the bytes; checks the length divides
    return flat.as_strided(tuple(size), tuple(stride), int(offset)).clone()  # bounds-checked


def _rebuild_tensor_v2(storage, offset, size, stride, requires_grad=False, hooks=None, meta=None):
    return _tensor(storage, offset, size, stride, storage.dtype)


def _rebuild_tensor_v3(storage, offset, size, stride, requires_grad, hooks, dtype, meta=None):
    if not isinstance(dtype, torch.dtype):
        raise pickle.UnpicklingError(f"not a dtype: {dtype!r}")
    return _tensor(storage, offset, size, stride, dtype)


def _rebuild_parameter(data, requires_grad=False, hooks=None, state=None):
    return data  # a Parameter's tensor is all a state dict needs


def _rebuild_from_type_v2(function, new_type, args, state):
    return function(*args)


def _codecs_encode(text: str, encoding: str = "utf-8") -> bytes:
    """How protocol-2 pickles spell bytes (numpy arrays inside the recorders use it)."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1", "utf-8"):
        raise pickle.UnpicklingError("unexpected _codecs.encode arguments")
    return text.encode(encoding)


_TORCH = {
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_tensor_v3"): _rebuild_tensor_v3,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("torch._tensor", "_rebuild_from_type_v2"): _rebuild_from_type_v2,
    ("torch.nn.parameter", "Parameter"): Opaque,
    ("torch", "Tensor"): Opaque,
    ("collections", "OrderedDict"): OrderedDict,
    ("_codecs", "encode"): _codecs_encode,
}


def _python3_name(module: str, name: str) -> tuple[str, str]:
    """Protocol-2 pickles may spell names the Python 2 way (`__builtin__`, `commands`)."""
    if (module, name) in _compat_pickle.NAME_MAPPING:
        return _compat_pickle.NAME_MAPPING[module, name]
    return _compat_pickle.IMPORT_MAPPING.get(module, module), name


class _Unpickler(pickle.Unpickler):
    def __init__(self, file: Any, archive: zipfile.ZipFile, prefix: str) -> None:
        super().__init__(file)
        self.archive, self.prefix = archive, prefix
        self.storages: dict[str, _Storage] = {}
        self.opaque: set[str] = set()

    def find_class(self, module: str, name: str) -> Any:
        module, name = _python3_name(module, name)
        if (module, name) in _TORCH:
            return _TORCH[module, name]
        if module == "torch" and name in _DTYPES:
            return _StorageType(_DTYPES[name])
        if module == "torch" and name.isidentifier() and not name.startswith("_"):
            dtype = getattr(torch, name, None)  # torch.float32 and the like, as pickled
            if isinstance(dtype, torch.dtype):
                return dtype
        if (module, name) in _REFERENCE_OBJECTS:
            self.opaque.add(f"{module}.{name}")
            return type(name, (Opaque,), {"qualified_name": f"{module}.{name}"})
        raise UnsafeCheckpointError(
            f"it names {module}.{name}, which is not among what the reference training script "
            "writes (tensors, its progress recorders, numpy arrays); nothing was called"
        )

    def persistent_load(self, pid: Any) -> _Storage:
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
            raise pickle.UnpicklingError(f"unknown persistent id {pid!r}")
        _, storage_type, key, _location, numel = pid
        if not isinstance(storage_type, _StorageType):
            raise pickle.UnpicklingError(f"unknown storage type {storage_type!r}")
        key = str(key)
        if key not in self.storages:
            record = f"{self.prefix}/data/{key}"
            itemsize = torch.empty((), dtype=storage_type.dtype).element_size()
            try:
                size = self.archive.getinfo(record).file_size
            except KeyError:
                raise pickle.UnpicklingError(f"storage record {record} missing") from None
            if size != int(numel) * itemsize:
                raise pickle.UnpicklingError(f"storage {key}: {size} bytes for {numel} elements")
            raw = torch.frombuffer(bytearray(self.archive.read(record)), dtype=torch.uint8)
            self.storages[key] = _Storage(raw, storage_type.dtype)
        return self.storages[key]


def load_restricted(path: str | Path) -> tuple[Any, list[str]]:
    """(the unpickled object, sorted names of the classes that became Opaque).

    Raises UnsafeCheckpointError for a pickle that names code, pickle.UnpicklingError for
    anything else this reader cannot make sense of (a legacy non-zip checkpoint, a big-endian
    file, a corrupt archive).
    """
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise pickle.UnpicklingError(f"not a PyTorch zip checkpoint: {exc}") from exc
    with archive:
        pickles = [n for n in archive.namelist() if n.endswith("/data.pkl")]
        if len(pickles) != 1:
            raise pickle.UnpicklingError("not a PyTorch zip checkpoint (no single data.pkl)")
        prefix = pickles[0].removesuffix("/data.pkl")
        byteorder = f"{prefix}/byteorder"
        if byteorder in archive.namelist() and archive.read(byteorder) != b"little":
            raise pickle.UnpicklingError("big-endian checkpoints are not supported")
        with archive.open(pickles[0]) as file:
            unpickler = _Unpickler(file, archive, prefix)
            try:
                obj = unpickler.load()
            except pickle.UnpicklingError:
                raise
            except Exception as exc:  # malformed opcodes, wrong argument counts, bad shapes
                raise pickle.UnpicklingError(f"{type(exc).__name__}: {exc}") from exc
    return obj, sorted(unpickler.opaque)
