"""Read torch pickles that ``weights_only`` loading refuses, without running code from the file.

The released AGW weights are whole pickled modules (``modeling.baseline.Baseline`` ...). A pickle
names the callables it wants run when it is loaded, so the unpickler here resolves names against
a fixed allowlist only:

* tensor rebuilders of ``torch._utils`` and ``torch.nn.Parameter`` -> plain CPU tensors;
* storage types (``torch.FloatStorage``, ``torch.cuda.FloatStorage``, ...) -> dtype markers;
* ``collections.OrderedDict``, ``set``, ``frozenset``, ``copyreg._reconstructor`` and
  ``_codecs.encode`` (latin-1 only) -> their plain-data meaning;
* numpy's array and scalar reconstruction (``_reconstruct``, ``scalar`` of ``numpy.core.multiarray``
  in files of numpy 1 and ``numpy._core.multiarray`` of numpy 2, ``numpy.ndarray``, ``numpy.dtype``)
  for numeric dtypes only: the AGW cross-modality checkpoints store ``cmc`` and ``mINP`` as numpy values;
* nn.Module classes (``torch.nn.*`` classes already imported, and any ``modeling.*`` name of
  the reference code) -> inert :class:`ModuleRecord` classes that only store the pickled
  attribute dict; nothing of the named class is imported or run.

Any other name (``os.system``, ``builtins.eval``, ``subprocess.*`` ...) raises
:class:`CheckpointError` before anything is called. Both torch layouts are read: the zip archive
(torch >= 1.6) and the legacy stream (magic number, pickles, raw storages).
"""
import _compat_pickle
import io
import pickle
import struct
import sys
import zipfile
from collections import OrderedDict

import numpy as np
import torch
from torch import nn

from .errors import CheckpointError

LEGACY_MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL_VERSION = 1001
MODULE_RECORD_PREFIXES = ("modeling.",)

STORAGE_DTYPES = {
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
}


class ModuleRecord:
    """Inert stand-in for a pickled module: keeps the attribute dict, has no behaviour."""

    pickled_name = "?"

    def __setstate__(self, state):
        if isinstance(state, tuple) and len(state) == 2 and state[1] is None:
            state = state[0]
        if not isinstance(state, dict):
            raise pickle.UnpicklingError(f"{self.pickled_name}: expected an attribute dict")
        self.attributes = state

    def __repr__(self):
        return f"<record of {self.pickled_name}>"


class StorageType:
    """What a pickled storage class stands for: only its element type."""

    def __init__(self, name, dtype):
        self.name = name
        self.dtype = dtype


class Storage:
    """A flat CPU tensor standing for one serialized storage."""

    def __init__(self, flat):
        self.flat = flat


def _rebuild_tensor(storage, storage_offset, size, stride, *unused):
    """The tensor ``storage[storage_offset + sum(i_k * stride_k)]`` of shape ``size``.

    ``storage_offset`` counts from the start of ``storage``, which may itself be a view into a
    larger storage (legacy files of torch <= 0.3): its own offset is added, and the tensor must
    stay inside it. Tensors of one storage share memory, as with ``torch.load``.
    """
    if not isinstance(storage, Storage):
        raise pickle.UnpicklingError("tensor rebuilt from something that is not a storage")
    try:
        size = tuple(int(n) for n in size)
        stride = tuple(int(s) for s in stride)
        offset = int(storage_offset)
    except (TypeError, ValueError):
        raise pickle.UnpicklingError("tensor with a non-integer size, stride or offset") from None
    flat = storage.flat
    if len(size) != len(stride) or offset < 0 or min(size + stride, default=0) < 0:
        raise pickle.UnpicklingError(
            f"tensor with size {size}, stride {stride} and offset {offset} is malformed"
        )
    if 0 in size:
        return torch.empty(size, dtype=flat.dtype)
    last = offset + sum((n - 1) * s for n, s in zip(size, stride))
    if last >= flat.numel():
        raise pickle.UnpicklingError(
            f"tensor with size {size}, stride {stride} and offset {offset} reaches element {last} "
            f"of a storage of {flat.numel()} elements"
        )
    return flat.as_strided(size, stride, flat.storage_offset() + offset)


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad, backward_hooks, metadata=None):
    if metadata:
        raise pickle.UnpicklingError(f"tensor with python metadata {sorted(metadata)} is not supported")
    return _rebuild_tensor(storage, storage_offset, size, stride)


def _rebuild_parameter(data, requires_grad=True, backward_hooks=None, state=None):
    if not isinstance(data, torch.Tensor):
        raise pickle.UnpicklingError("parameter rebuilt from something that is not a tensor")
    return data


def _latin1_encode(text, encoding="latin1"):
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError("_codecs.encode is only allowed for latin-1 text")
    return text.encode("latin1")


def _reconstructor(cls, base, state):
    if not (isinstance(cls, type) and issubclass(cls, ModuleRecord)) or base is not object:
        raise pickle.UnpicklingError("copyreg._reconstructor is only allowed for module records")
    return cls.__new__(cls)


def _plain_set(items=()):
    return set(_plain_items(items))


def _plain_frozenset(items=()):
    return frozenset(_plain_items(items))


def _plain_items(items):
    items = list(items)
    for item in items:
        if not isinstance(item, (str, bytes, int, float, bool, tuple, type(None))):
            raise pickle.UnpicklingError(f"set of {type(item).__name__} is not plain data")
    return items


def _ordered_dict(items=()):
    return OrderedDict(items)


NUMERIC_DTYPE_KINDS = "biufc"  # bool, signed, unsigned, float, complex: no objects, no structured records
_NUMPY_RECONSTRUCT = np.ndarray.__reduce__(np.zeros(1))[0]
_NUMPY_SCALAR = np.float64(0).__reduce__()[0]


def _numeric_dtype(spec, align=False, copy=False):
    """``numpy.dtype(spec, align, copy)`` for a numeric type code such as 'f4' or 'i8', nothing else."""
    if not isinstance(spec, str):
        raise pickle.UnpicklingError(f"numpy dtype from {type(spec).__name__}, expected a type code")
    dtype = np.dtype(spec, bool(align), bool(copy))
    if dtype.kind not in NUMERIC_DTYPE_KINDS or dtype.fields is not None or dtype.subdtype is not None:
        raise pickle.UnpicklingError(f"numpy dtype {spec!r} is not a plain numeric type")
    return dtype


class NumpyArrayClass:
    """What ``numpy.ndarray`` resolves to: only an argument of ``_reconstruct``, never called itself."""


def _numpy_reconstruct(cls, shape, typecode):
    if cls is not NumpyArrayClass:
        raise pickle.UnpicklingError("numpy _reconstruct is only allowed for numpy.ndarray")
    return _NUMPY_RECONSTRUCT(np.ndarray, shape, typecode)


def _numpy_scalar(dtype, data=None):
    if not isinstance(dtype, np.dtype) or dtype.kind not in NUMERIC_DTYPE_KINDS or not isinstance(data, bytes):
        raise pickle.UnpicklingError("numpy scalar is only allowed for numeric dtypes and raw bytes")
    return _NUMPY_SCALAR(dtype, data)


# module -> {name: what the unpickler calls instead}: the only globals a checkpoint may name.
_SAFE_BY_MODULE = {
    "torch._utils": {"_rebuild_tensor": _rebuild_tensor, "_rebuild_tensor_v2": _rebuild_tensor_v2,
                     "_rebuild_parameter": _rebuild_parameter, "_rebuild_parameter_with_state": _rebuild_parameter},
    "torch.nn.parameter": {"Parameter": _rebuild_parameter},
    "collections": {"OrderedDict": _ordered_dict},
    "builtins": {"set": _plain_set, "frozenset": _plain_frozenset},
    "copyreg": {"_reconstructor": _reconstructor},
    "_codecs": {"encode": _latin1_encode},
    "numpy": {"ndarray": NumpyArrayClass, "dtype": _numeric_dtype},
}
SAFE_GLOBALS = {(module, name): target for module, names in _SAFE_BY_MODULE.items() for name, target in names.items()}
for _module in ("numpy.core.multiarray", "numpy._core.multiarray"):  # numpy 1 and numpy 2 names
    SAFE_GLOBALS[(_module, "_reconstruct")] = _numpy_reconstruct
    SAFE_GLOBALS[(_module, "scalar")] = _numpy_scalar


def _is_torch_module_class(module, name):
    """True for a torch.nn class that is an nn.Module and whose module is already imported."""
    if not module.startswith("torch.nn.") or not name.isidentifier():
        return False
    owner = sys.modules.get(module)
    candidate = owner.__dict__.get(name) if owner is not None else None
    return isinstance(candidate, type) and issubclass(candidate, nn.Module)


class RefusedGlobal(pickle.UnpicklingError):
    """A pickle named a global outside the allowlist."""

    def __init__(self, qualified_name):
        super().__init__(qualified_name)
        self.qualified_name = qualified_name


def python3_name(module, name):
    """Undo the Python 2 renaming that protocol <= 2 pickles apply ('__builtin__', 'commands')."""
    if (module, name) in _compat_pickle.NAME_MAPPING:
        return _compat_pickle.NAME_MAPPING[(module, name)]
    return _compat_pickle.IMPORT_MAPPING.get(module, module), name


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that resolves only allowlisted names; see the module docstring."""

    def __init__(self, stream, storage_reader=None):
        super().__init__(stream, encoding="utf-8")
        self._storage_reader = storage_reader
        self._record_classes = {}

    def find_class(self, module, name):
        module, name = python3_name(module, name)
        if (module, name) in SAFE_GLOBALS:
            return SAFE_GLOBALS[(module, name)]
        if module in ("torch", "torch.cuda") and name in STORAGE_DTYPES:
            return StorageType(f"{module}.{name}", STORAGE_DTYPES[name])
        is_reference_module = module.startswith(MODULE_RECORD_PREFIXES) and name.isidentifier()
        if is_reference_module or _is_torch_module_class(module, name):
            return self._record_class(f"{module}.{name}")
        raise RefusedGlobal(f"{module}.{name}")

    def _record_class(self, qualified_name):
        if qualified_name not in self._record_classes:
            self._record_classes[qualified_name] = type(
                "ModuleRecord", (ModuleRecord,), {"pickled_name": qualified_name}
            )
        return self._record_classes[qualified_name]

    def persistent_load(self, saved_id):
        if not isinstance(saved_id, tuple) or not saved_id:
            raise pickle.UnpicklingError(f"unknown persistent id {saved_id!r}")
        kind = saved_id[0].decode("ascii") if isinstance(saved_id[0], bytes) else saved_id[0]
        if kind == "module":
            record_class = saved_id[1] if len(saved_id) > 1 else None
            if not (isinstance(record_class, type) and issubclass(record_class, ModuleRecord)):
                raise pickle.UnpicklingError("module source entry without a module class")
            return record_class
        if kind == "storage" and self._storage_reader is not None:
            return self._storage_reader(saved_id[1:])
        raise pickle.UnpicklingError(f"unknown persistent id kind {kind!r}")


def _storage_dtype(storage_type):
    if not isinstance(storage_type, StorageType):
        raise pickle.UnpicklingError("storage entry without a storage type")
    return storage_type.dtype


def _frombuffer(raw, dtype, numel):
    expected = numel * torch.empty((), dtype=dtype).element_size()
    if len(raw) != expected:
        raise pickle.UnpicklingError(f"storage holds {len(raw)} bytes, expected {expected}")
    if not raw:
        return torch.empty(0, dtype=dtype)
    return torch.frombuffer(bytearray(raw), dtype=dtype)


def _load_zip(archive):
    names = archive.namelist()
    pickles = [name for name in names if name.endswith("/data.pkl") and name.count("/") == 1]
    if len(pickles) != 1:
        raise CheckpointError("zip archive without exactly one <name>/data.pkl: not a torch checkpoint")
    prefix = pickles[0][: -len("data.pkl")]
    byteorder_name = prefix + "byteorder"
    if byteorder_name in names and archive.read(byteorder_name).strip() != b"little":
        raise CheckpointError("big-endian checkpoints are not supported")
    storages = {}

    def read_storage(entry):
        storage_type, key, _location, numel = entry[:4]
        key = str(key)
        if key not in storages:
            raw = archive.read(f"{prefix}data/{key}")
            storages[key] = Storage(_frombuffer(raw, _storage_dtype(storage_type), int(numel)))
        return storages[key]

    with archive.open(pickles[0]) as stream:
        return RestrictedUnpickler(io.BytesIO(stream.read()), read_storage).load()


def _load_legacy(stream):
    if RestrictedUnpickler(stream).load() != LEGACY_MAGIC_NUMBER:
        raise CheckpointError("no torch magic number: not a torch checkpoint")
    protocol = RestrictedUnpickler(stream).load()
    if protocol != LEGACY_PROTOCOL_VERSION:
        raise CheckpointError(f"unsupported legacy torch protocol {protocol!r}")
    sys_info = RestrictedUnpickler(stream).load()
    if isinstance(sys_info, dict) and sys_info.get("little_endian") is False:
        raise CheckpointError("big-endian checkpoints are not supported")
    storages = {}

    def read_storage(entry):
        storage_type, root_key, _location, numel, view = entry
        root_key = str(root_key)
        if root_key not in storages:
            storages[root_key] = Storage(torch.empty(int(numel), dtype=_storage_dtype(storage_type)))
        if view is None:
            return storages[root_key]
        _view_key, offset, size = view  # torch <= 0.3: a storage that is a slice of another one
        offset, size, root = int(offset), int(size), storages[root_key].flat
        if offset < 0 or size < 0 or offset + size > root.numel():
            raise pickle.UnpicklingError(
                f"storage view [{offset}, {offset + size}) outside its storage of {root.numel()} elements"
            )
        return Storage(root[offset: offset + size])

    result = RestrictedUnpickler(stream, read_storage).load()
    storage_keys = RestrictedUnpickler(stream).load()
    for key in storage_keys:
        flat = storages[str(key)].flat
        (numel,) = struct.unpack("<q", _read_exact(stream, 8))
        if numel != flat.numel():
            raise CheckpointError(f"storage {key}: {numel} elements on disk, {flat.numel()} declared")
        raw = _read_exact(stream, numel * flat.element_size())
        if raw:
            flat.view(torch.uint8).copy_(torch.frombuffer(bytearray(raw), dtype=torch.uint8))
    return result


def _read_exact(stream, size):
    data = stream.read(size)
    if len(data) != size:
        raise CheckpointError("file ends inside a storage: truncated checkpoint")
    return data


def load_untrusted(path):
    """The object pickled in the torch file at ``path``, modules replaced by ModuleRecords.

    Raises CheckpointError naming ``path`` (and the refused global, if that is the reason).
    """
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                return _load_zip(archive)
        with open(path, "rb") as stream:
            return _load_legacy(stream)
    except RefusedGlobal as refused:
        raise CheckpointError(
            f"{path}: refused to load: the pickle asks for the global '{refused.qualified_name}', "
            "which is not a tensor, storage, container or module class (a checkpoint never needs "
            "it; loading it could run code)"
        ) from None
    except CheckpointError as err:
        raise CheckpointError(f"{path}: {err}") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, KeyError, IndexError,
            AttributeError, RuntimeError, struct.error, zipfile.BadZipFile, UnicodeDecodeError) as err:
        reason = f"{type(err).__name__}: {err}"
        raise CheckpointError(f"{path}: not a readable torch checkpoint ({reason})") from None


def module_record_state_dict(record, prefix=""):
    """Walk a ModuleRecord tree like nn.Module.state_dict: parameters, persistent buffers, children."""
    attributes = record.attributes if hasattr(record, "attributes") else {}
    state = OrderedDict()
    non_persistent = attributes.get("_non_persistent_buffers_set") or set()
    for name, tensor in (attributes.get("_parameters") or {}).items():
        if tensor is not None:
            state[prefix + name] = _as_tensor(tensor, record, name)
    for name, tensor in (attributes.get("_buffers") or {}).items():
        if tensor is not None and name not in non_persistent:
            state[prefix + name] = _as_tensor(tensor, record, name)
    for name, child in (attributes.get("_modules") or {}).items():
        if child is None:
            continue
        if not isinstance(child, ModuleRecord):
            raise CheckpointError(f"{record.pickled_name}.{name} is not a module")
        state.update(module_record_state_dict(child, f"{prefix}{name}."))
    return state


def _as_tensor(value, record, name):
    if not isinstance(value, torch.Tensor):
        raise CheckpointError(f"{record.pickled_name}.{name} is not a tensor")
    return value
