"""shardload: save and load PyTorch models across the ranks of an MPI job as one sharded HDF5
checkpoint, with the missing/unexpected-key verdict of ``torch.nn.Module.load_state_dict``.

Run under ``mpirun -np N python3 train.py``; every rank calls the same functions in the same order:

    import shardload
    shardload.save(model, "ckpt/step-1000", metadata={"step": 1000})
    keys = shardload.load(model, "ckpt/step-1000", strict=False)
    keys.missing_keys, keys.unexpected_keys      # as load_state_dict returns them
    keys.result.bytes_read_total                 # the full LoadResult

A module's tensors are its ``state_dict()`` (PyTorch's names, parameters and persistent buffers),
loaded in place; a dict of tensors works the same, and so does a ``Partition`` built by hand. A
training state, ``{"model": model, "optim": opt, "sched": sched, "step": n, ...}``, is saved and
restored whole: optimizer state by parameter name (resharded with the model), schedulers through
their own ``load_state_dict``, plain values typed (no pickle unless ``allow_pickle=True``).
``split={regex: dim}`` declares the tensors whose key matches (``re.search``; the first matching
pattern wins) as this rank's slab of a tensor split along ``dim`` across the ranks of ``comm``.
``comm`` is an mpi4py communicator (default: the world); shardload starts MPI itself when mpi4py
has not (and then finalises it at exit). Errors are the same on every rank: ``shardload.Error``
(a ``RuntimeError``) and its subclasses; a failed verdict raises ``VerdictError`` whose text is
PyTorch's, exactly. See docs/PYTHON.md.
"""
import atexit as _atexit
import operator as _operator
import os as _os
from collections.abc import Mapping as _Mapping

import torch as _torch  # first: the extension uses torch's own Tensor conversions
from torch.nn.modules.module import _IncompatibleKeys as _TorchIncompatibleKeys

from . import _shardload as _C
from . import _state
from ._shardload import (  # noqa: F401  (re-exported)
    CommError,
    Conversion,
    Error,
    FormatError,
    LoadOptions,
    LoadResult,
    Partition,
    PhaseSeconds,
    Progress,
    SaveHandle,
    SaveOptions,
    SaveResult,
    SizeMismatch,
    SplitRule,
    StallReport,
    Uncovered,
    UsageError,
    VerdictError,
)

__version__ = _C.__version__
__all__ = [
    "save", "save_async", "wait_for_saves", "release_snapshot_memory", "SaveHandle",
    "load", "IncompatibleKeys", "Partition", "SplitRule", "Progress", "LoadOptions",
    "SaveOptions", "LoadResult", "SaveResult", "PhaseSeconds", "SizeMismatch", "Conversion",
    "Uncovered", "Error", "FormatError", "VerdictError", "UsageError", "CommError", "StallReport",
]


class IncompatibleKeys(_TorchIncompatibleKeys):
    """What ``load`` returns: PyTorch's ``(missing_keys, unexpected_keys)`` named tuple (an
    instance of torch's own class, same fields, order and repr), plus ``result``: the full
    ``LoadResult`` (size mismatches, dtype conversions, bytes, seconds per phase, hints,
    transport, checksums_verified)."""

    result = None  # also for copies made by the named tuple's own _make/_replace

    def __new__(cls, missing_keys, unexpected_keys, result=None):
        self = super().__new__(cls, missing_keys, unexpected_keys)
        self.result = result
        return self

    def __repr__(self):
        return repr(_TorchIncompatibleKeys(*self))

    __str__ = __repr__


_finalize_registered = False
_waits_registered = False  # the atexit wait for asynchronous saves in flight


def _start_mpi(timeout):
    # MPI_Init waits for every rank: under the caller's timeout like every later step (None:
    # the library's default, 600 s). Registered whoever starts MPI: after a shardload timeout,
    # finalize_mpi ends the job with MPI_Abort (otherwise it finalises MPI only when shardload
    # started it). An atexit function registered after mpi4py's import runs before mpi4py
    # finalises.
    global _finalize_registered
    try:
        seconds = 600.0 if timeout is None else float(timeout)
    except (TypeError, ValueError):
        seconds = 600.0  # the bad value is reported by the collective
    _C.ensure_mpi(seconds)
    if not _finalize_registered:
        _atexit.register(_C.finalize_mpi)
        _finalize_registered = True


def _comm_handle(comm):
    if comm is None:
        return _C.WORLD
    py2f = getattr(comm, "py2f", None)
    if py2f is None:
        raise TypeError(f"comm= must be an mpi4py communicator, not {type(comm).__name__}")
    return int(py2f())


def _source_of(obj):
    """(what the extension takes, the model's name for messages)."""
    if isinstance(obj, Partition):
        return obj, "Module"
    if isinstance(obj, _Mapping):  # a module goes through shardload/_state.py
        state, name = obj, "Module"
    else:
        raise TypeError("expected a torch.nn.Module, a dict of tensors or a shardload.Partition, "
                        f"not {type(obj).__name__}")
    items = []
    for key, value in state.items():
        if not isinstance(key, str):
            raise TypeError(f"key {key!r}: state dict keys must be str")
        if not isinstance(value, _torch.Tensor):
            raise TypeError(f"key '{key}': expected a torch.Tensor, got {type(value).__name__}")
        items.append((key, value))
    return items, name


def _split_rules(split):
    if split is None:
        return []
    if not isinstance(split, _Mapping):
        raise TypeError(f"split= must be a dict of regular expression to dim, not "
                        f"{type(split).__name__}")
    rules = []
    for pattern, dim in split.items():
        if not isinstance(pattern, str):
            raise TypeError(f"split= key {pattern!r}: must be a regular expression (str)")
        if isinstance(dim, SplitRule):
            rules.append(SplitRule(pattern, dim.dim, dim.group))
        elif isinstance(dim, bool):
            raise TypeError(f"split= '{pattern}': the dim must be an int, not bool")
        else:
            try:
                rules.append(SplitRule(pattern, _operator.index(dim)))
            except TypeError:
                raise TypeError(f"split= '{pattern}': the dim must be an int, not "
                                f"{type(dim).__name__}") from None
    return rules


def _set_options(options, fields):
    """Options by field name: the keyword arguments and any other field of the C++ struct."""
    for field, value in fields.items():
        if field.startswith("_") or not hasattr(options, field):
            raise TypeError(f"unknown option {field}= for {type(options).__name__}")
        setattr(options, field, value)
    return options


class _Prepared:
    """This rank's arguments for the extension. ``error``: a failure met here, not raised alone
    but handed to the collective, which raises it on every rank. ``flat``: a training state's
    flattened form (shardload/_state.py), else None."""

    def __init__(self):
        self.source, self.path, self.rules, self.options, self.error = [], "", [], None, ""
        self.flat, self.flat_rules = None, []


def _prepare(obj, path, split, make_options, for_load, assign=False):
    p = _Prepared()
    try:
        p.path = _os.fsdecode(_os.fspath(path))
        p.rules = _split_rules(split)
        if assign is not False and not isinstance(assign, bool):
            raise TypeError(f"assign= must be a bool, not {type(assign).__name__}")
        if _state.is_training_state(obj):
            p.flat = _state.flatten(obj, for_load, assign)
            p.flat_rules = p.rules
            p.source = p.flat.partition(p.rules)
            name = type(obj).__name__ if isinstance(obj, _torch.nn.Module) else "state"
            p.rules = []  # applied by flat.partition, key by key
        else:
            if assign:
                raise ValueError("assign=True assigns a module's parameters and buffers; "
                                 f"a {type(obj).__name__} has none")
            p.source, name = _source_of(obj)
        p.options = make_options(name)
    except Exception as e:  # noqa: BLE001  (reported on every rank by the collective)
        p.error = f"{type(e).__name__}: {e}"
    return p


def _stall_seconds(value, error):
    """(the stall threshold for the extension: -1 for the default, error text)."""
    if value is None:
        return -1.0, error
    try:
        v = float(value)
        if not v >= 0:
            raise ValueError("must be >= 0")
        return v, error
    except (TypeError, ValueError) as e:
        return -1.0, error or f"TypeError: stall_report_seconds={value!r}: {e}"


def _read_composites(p, handle, on_stall, stall):
    """Before a load with sparse tensors: their parts' shapes in the checkpoint, from its
    verified index (a non-strict load of the parts alone into copies, whose size mismatches
    name the stored shapes; a description in the file is never trusted for an allocation);
    then this rank's partition with parts of those shapes."""
    parts = p.flat.sparse_parts()
    shapes = {}
    if parts:
        o = LoadOptions()
        for field in ("checkpoint_prefix", "model_prefix", "key_filter", "timeout_seconds",
                      "select", "verify_checksums"):
            setattr(o, field, getattr(p.options, field))
        o.strict, o.skip_size_mismatch = False, True
        r = _C.load(parts, p.path, [], o, None, handle, "", on_stall, stall)
        shapes = {m.key: list(m.checkpoint_shape) for m in r.size_mismatches}
    p.flat.add_composites(shapes)
    p.source = p.flat.partition(p.flat_rules)


def save(module_or_state_dict, path, *, split=None, overwrite=False, metadata=None, comm=None,
         timeout=None, progress=None, on_stall=None, stall_report_seconds=None,
         allow_pickle=False, async_=False, **options):
    """Saves every rank's tensors as one checkpoint directory at ``path``. Collective: every rank
    of ``comm`` calls it with the same path and options.

    ``split``: {regex: dim}, tensors this rank holds a slab of (the rest are replicated and written
    once). ``overwrite``: replace an existing checkpoint (only by a complete new one).
    ``metadata``: {str: value}, stored as strings in the manifest. ``step=N``: ``path`` is a run
    directory, saved as ``path/step-N`` and named by ``path/latest`` once complete
    (``keep_last=K`` keeps the K highest). ``allow_pickle``: store values of a training state that
    are not plain (None, bool, int, float, str, bytes, lists, tuples, dicts) pickled, instead of
    refusing them. ``timeout``: seconds a rank
    waits for the others before the save fails naming them (None: the library's default, 600;
    0: forever); it bounds every collective step of the call, the first agreement included.
    ``progress``: True (rank 0 shows progress on stderr) or a callable receiving a ``Progress``.
    ``on_stall``: a callable receiving a ``StallReport`` when a collective step has waited
    longer than ``stall_report_seconds`` (None: min(30, timeout / 4); 0: never) for other ranks
    (which ranks and hosts, which phase); the same line goes to stderr either way. Other
    keywords set ``SaveOptions`` fields. Returns a ``SaveResult``.

    ``async_=True``: ``save_async``; returns a ``SaveHandle`` instead.
    """
    handle = _comm_handle(comm)
    _start_mpi(timeout)

    def make_options(_name):
        o = SaveOptions()
        o.overwrite = bool(overwrite)
        if metadata is not None:
            if not isinstance(metadata, _Mapping):
                raise TypeError(f"metadata= must be a dict, not {type(metadata).__name__}")
            for k in metadata:
                if not isinstance(k, str):
                    raise TypeError(f"metadata= key {k!r}: must be str")
            o.metadata = [(k, str(v)) for k, v in metadata.items()]
        if timeout is not None:
            o.timeout_seconds = float(timeout)
        return _set_options(o, options)

    p = _prepare(module_or_state_dict, path, split, make_options, for_load=False)
    stall, error = _stall_seconds(stall_report_seconds, p.error)
    global _waits_registered
    if async_ and not _waits_registered:
        _atexit.register(_C.wait_for_saves)  # runs before MPI is finalised (registered later)
        _waits_registered = True
    return _C.save(p.source, p.path, p.rules, p.options or SaveOptions(), progress, handle, error,
                   on_stall, stall, p.flat.values if p.flat and not error else None,
                   bool(allow_pickle), bool(async_))


def save_async(module_or_state_dict, path, **kwargs):
    """``save`` in the background: returns a ``SaveHandle`` as soon as every tensor of the state
    (a training state's optimizer state included) is copied into host memory that the save owns,
    and every plain value taken; training may change the tensors at once. Writing, fsyncs, the
    commit and ``latest`` run on a background thread with ``save``'s guarantees (the previous
    checkpoint survives a crash at any moment; a failure leaves nothing). Collective, with
    ``save``'s arguments (not ``progress``) and these ``SaveOptions`` fields:
    ``snapshot_limit_bytes`` (the most host memory this rank's snapshots hold; 0: half of RAM)
    and ``sync_fallback`` (save synchronously when a snapshot does not fit, instead of raising).

    ``handle.wait()`` returns the ``SaveResult`` or raises the save's error, the same on every
    rank; ``handle.done()`` polls. A later save to the same path waits for this one first; the
    interpreter's exit waits for saves in flight. The background thread uses its own duplicate of
    ``comm`` (made at the first async save), never ``comm`` itself, and needs MPI started with
    MPI_THREAD_MULTIPLE (as mpi4py and shardload start it). ``release_snapshot_memory()`` frees
    the host memory kept for the next snapshot.
    """
    return save(module_or_state_dict, path, async_=True, **kwargs)


def wait_for_saves():
    """Waits for every asynchronous save of this process (errors are their handles')."""
    _C.wait_for_saves()


def release_snapshot_memory():
    """Frees the host memory kept for asynchronous saves' snapshots (after waiting for the saves
    in flight). Returns the bytes freed."""
    return _C.release_snapshot_memory()


def load(module_or_state_dict, path, *, strict=True, split=None, strip_prefix=None,
         add_prefix=None, skip_size_mismatch=False, comm=None, timeout=None, progress=None,
         select=None, on_stall=None, stall_report_seconds=None, allow_pickle=False,
         assign=False, **options):
    """Loads the checkpoint at ``path`` into every rank's tensors, in place. Collective: every
    rank of ``comm`` calls it with the same path and options.

    Returns ``IncompatibleKeys(missing_keys, unexpected_keys)`` exactly as
    ``module.load_state_dict(..., strict=strict)`` would (identical on every rank), with the full
    ``LoadResult`` as ``.result``. On a failed verdict (strict and keys differ, or a size mismatch
    unless ``skip_size_mismatch``) every rank raises ``VerdictError`` (a ``RuntimeError``) with
    PyTorch's message, and no tensor has changed.

    ``split``: {regex: dim}, tensors this rank holds a slab of. ``strip_prefix``: a prefix of the
    checkpoint's keys to drop (``"module."`` from DDP); ``add_prefix``: one to put in front of
    them. ``timeout``: seconds a rank waits for the others (None: the library's default, 600;
    0: forever), in every collective step of the call, the first agreement included.
    ``progress``: True or a callable receiving a ``Progress``. ``on_stall`` and
    ``stall_report_seconds``: as for ``save``. ``select``: for a
    ``torch.save`` file as ``path``, the sub-dictionary of a nested training checkpoint to load
    (``"model"``, ``"state_dict"``; keys joined by ``"."``); scalar leaves are listed in
    ``result.notes``, never loaded. Other keywords set ``LoadOptions`` fields
    (``verify_checksums``, ``direct_io``, ``read_in_place``, ``key_filter``, ``name``, ...).

    A training state (a dict holding modules, optimizers, schedulers, tensors and plain values)
    is restored in place: tensors loaded into, optimizers and schedulers through their own
    ``load_state_dict``, plain values replaced in their dicts. ``allow_pickle``: a pickled value
    of the checkpoint may be unpickled (else asking for one is a ``UsageError``).

    A module whose loading is its own (load-state-dict pre- or post-hooks, a class's own
    ``_load_from_state_dict`` such as BatchNorm's, extra state, lazy modules) or ``assign=True``:
    those subtrees are read into fresh tensors and handed, with the checkpoint's ``_metadata``
    versions, to the module's own ``load_state_dict``; the rest is loaded in place.
    ``result.module_paths`` says which path each module took (docs/PYTHON.md).

    ``path`` may be a shardload checkpoint, a run directory, a Hugging Face directory
    (``model.safetensors.index.json`` and its shards, or ``model.safetensors``), a
    ``.safetensors`` or a ``.pt`` file, read in place (``result.checksums_verified`` is False for
    the formats without checksums, ``result.checksums_reason`` says why).
    """
    handle = _comm_handle(comm)
    _start_mpi(timeout)

    def make_options(name):
        o = LoadOptions()
        o.strict = bool(strict)
        o.skip_size_mismatch = bool(skip_size_mismatch)
        o.checkpoint_prefix = strip_prefix or ""
        o.model_prefix = add_prefix or ""
        o.name = name
        if timeout is not None:
            o.timeout_seconds = float(timeout)
        if select is not None:
            if not isinstance(select, str):
                raise TypeError(f"select= must be a str, not {type(select).__name__}")
            o.select = select
        return _set_options(o, options)

    p = _prepare(module_or_state_dict, path, split, make_options, for_load=True, assign=assign)
    stall, error = _stall_seconds(stall_report_seconds, p.error)
    if p.flat is not None and p.flat.composites and not error:
        _read_composites(p, handle, on_stall, stall)
    if p.options is not None:
        p.options.allow_pickle = bool(allow_pickle)
        if p.flat is not None:
            p.options.value_keys = [key for key, _ in p.flat.values]
            p.options.deferred_prefixes = p.flat.deferred
            p.options.read_prefixes = p.flat.read
    try:
        result = _C.load(p.source, p.path, p.rules, p.options or LoadOptions(), progress, handle,
                         error, on_stall, stall)
        missing, unexpected = result.missing_keys, result.unexpected_keys
        if p.flat is not None:
            result.module_paths = p.flat.paths
            missing, unexpected = p.flat.load_modules(result, bool(strict))
    except BaseException:
        if p.flat is not None:
            p.flat.undo()  # a failed load changes nothing, a fresh optimizer's state included
        raise
    if p.flat is not None:
        p.flat.restore(result.values, missing)
    return IncompatibleKeys(missing, unexpected, result)

