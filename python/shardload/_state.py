"""A training state as one checkpoint: modules, optimizers, LR schedulers, tensors and plain
values, nested in dicts, lists and tuples, flattened into keys that shardload saves and loads in
one collective call, then put back in place.

Keys are joined with ".": ``model.fc1.weight`` for a module at ``state["model"]``,
``optim.state.fc1.weight.exp_avg`` for an optimizer's state by the name of its parameter,
``optim.param_groups`` for its hyper-parameters (parameters by name), ``sched.last_epoch`` for a
scheduler's state, ``data.epoch`` for a plain value in a nested dict. Tensors are loaded in place;
plain values (None, bool, int, float, str, bytes and lists, tuples and dicts of them) are typed
values of the format, never pickled unless ``allow_pickle=True``. An optimizer's state tensors of
its parameter's shape are declared like the parameter (split by the parameter's rule), so they
reshard with the model; the rest of its state (``step``) is replicated.
"""
from collections.abc import Mapping as _Mapping

import torch as _torch

from . import _shardload as _C


def is_training_state(obj):
    """Whether ``obj`` needs the nested path: a dict that is not a flat dict of plain tensors, or
    a module with DTensor parameters."""
    if isinstance(obj, _torch.nn.Module):
        return any(_is_dtensor(t) or _is_composite(t) for t in obj.state_dict().values())
    if not isinstance(obj, _Mapping):
        return isinstance(obj, _torch.optim.Optimizer)
    return not all(isinstance(k, str) and isinstance(v, _torch.Tensor) and not _is_dtensor(v)
                   and not _is_composite(v) for k, v in obj.items())


def _stateful(obj):
    return callable(getattr(obj, "state_dict", None)) and callable(
        getattr(obj, "load_state_dict", None))


def _holds_tensor(obj, depth=0):
    if isinstance(obj, _torch.Tensor):
        return True
    if depth > 64:
        return False
    if isinstance(obj, (list, tuple)):
        return any(_holds_tensor(x, depth + 1) for x in obj)
    if isinstance(obj, _Mapping):
        return any(_holds_tensor(x, depth + 1) for x in obj.values())
    return False


class _Slot:
    """Where a loaded plain value goes: ``container[index]`` (a tuple is rebuilt in its parent)."""

    def __init__(self, container, index, parent=None):
        self.container, self.index, self.parent = container, index, parent


class Flat:
    """A state flattened: tensors (key, tensor, key of the tensor whose split rule it follows),
    plain values (key, object) and where each goes back, and the optimizers and stateful objects
    to restore after a load."""

    def __init__(self, for_load):
        self.for_load = for_load
        self.initialized = []  # optimizers whose state load() created (undone if it fails)
        self.tensors = []      # (key, tensor, follows: a key or None)
        self.values = []       # (key, object)
        self.slots = {}        # value key -> _Slot
        self.optimizers = []   # (key, optimizer, [(param, name)] in param_groups order, state)
        self.statefuls = []    # (key, object, its state_dict() copy whose leaves are restored)
        self.modules = []      # (key, module)
        self.composites = []   # (kind, key, slot, {part: tensor}, meta): sparse, quantized

    def key(self, prefix, name):
        return f"{prefix}.{name}" if prefix else str(name)

    # ------------------------------------------------------------------------------- flatten
    def add(self, obj, prefix, slot, depth=0):
        if depth > 64:
            raise ValueError(f"key '{prefix}': the state nests deeper than 64 levels")
        if isinstance(obj, _torch.nn.Module):
            self.modules.append((prefix, obj))
            for key, tensor in obj.state_dict(prefix=self.key(prefix, "")).items():
                if not isinstance(tensor, _torch.Tensor):
                    raise ValueError(f"key '{key}': module {type(obj).__name__} returns extra "
                                     f"state ({type(tensor).__name__}) in its state_dict, which "
                                     "shardload does not restore; save it as a value of the state")
                if _is_composite(tensor):
                    what = "quantized" if tensor.is_quantized else str(tensor.layout)
                    raise ValueError(f"key '{key}': a {what} tensor in a module's state_dict "
                                     "is not loaded in place (keep it in a dict of the state, "
                                     "where it is stored as its parts and rebuilt)")
                self.tensors.append((key, tensor, None))
        elif isinstance(obj, _torch.optim.Optimizer):
            if self.for_load and init_optimizer_state(obj):
                self.initialized.append(obj)
            self.optimizers.append((prefix, obj))
        elif _stateful(obj):
            state = obj.state_dict()
            if not isinstance(state, dict):
                raise ValueError(f"key '{prefix}': {type(obj).__name__}.state_dict() returned "
                                 f"a {type(state).__name__}, not a dict")
            state = dict(state)
            self.statefuls.append((prefix, obj, state))
            self.add_mapping(state, prefix, depth)
        elif isinstance(obj, _torch.Tensor) and obj.layout != _torch.strided:
            self.add_sparse(obj, prefix, slot)
        elif isinstance(obj, _torch.Tensor) and obj.is_quantized:
            self.add_quantized(obj, prefix, slot)
        elif isinstance(obj, _torch.Tensor):
            self.tensors.append((prefix, obj, None))
        elif isinstance(obj, _Mapping) and obj and all(isinstance(k, str) for k in obj):
            self.add_mapping(obj, prefix, depth)
        elif isinstance(obj, (list, tuple)) and _holds_tensor(obj):
            items = list(obj) if isinstance(obj, tuple) else obj
            for i, item in enumerate(items):
                self.add(item, self.key(prefix, i), _Slot(items, i, (slot, obj)), depth + 1)
        else:
            if _holds_tensor(obj):
                hint = ""
                if prefix.split(".")[-1] == "state" and isinstance(obj, _Mapping) and all(
                        isinstance(k, int) for k in obj):
                    hint = (" (an optimizer's state_dict() keys its state by parameter index: "
                            "put the optimizer itself in the state beside its module, "
                            "{'model': model, 'optim': optimizer}, to key it by parameter name)")
                raise ValueError(f"key '{prefix}': a dict with keys that are not str holds "
                                 f"tensors; use str keys{hint}")
            self.values.append((prefix, obj))
            self.slots[prefix] = slot

    # A sparse or quantized tensor is stored as its component tensors and a plain value that
    # says how to put them together (docs/PYTHON.md); on load the components are read into
    # fresh tensors and the tensor is rebuilt and put in its container's place.
    def add_sparse(self, t, prefix, slot):
        if slot is None:
            raise ValueError(f"key '{prefix}': a {t.layout} tensor in a module's state_dict "
                             "cannot be restored in place; keep it in the state dict itself")
        layout = str(t.layout).replace("torch.", "")
        if t.layout == _torch.sparse_coo:
            parts = {"indices": t._indices(), "values": t._values()}
            extra = {"coalesced": t.is_coalesced()}
        elif t.layout in (_torch.sparse_csr, _torch.sparse_bsr):
            parts = {"compressed_indices": t.crow_indices(), "plain_indices": t.col_indices(),
                     "values": t.values()}
            extra = {}
        elif t.layout in (_torch.sparse_csc, _torch.sparse_bsc):
            parts = {"compressed_indices": t.ccol_indices(), "plain_indices": t.row_indices(),
                     "values": t.values()}
            extra = {}
        else:
            raise ValueError(f"key '{prefix}': a tensor of layout {t.layout} cannot be stored")
        meta = dict(layout=layout, size=list(t.shape), **extra)
        self.composites.append(("sparse", prefix, slot, parts, meta))

    def add_quantized(self, t, prefix, slot):
        if slot is None:
            raise ValueError(f"key '{prefix}': a quantized tensor in a module's state_dict "
                             "is restored by the module's own loading, which shardload does not "
                             "run; keep it in the state dict itself")
        scheme = t.qscheme()
        parts = {"int_repr": t.int_repr()}
        meta = {"dtype": str(t.dtype).replace("torch.", "")}
        if scheme == _torch.per_tensor_affine:
            meta.update(scheme="per_tensor_affine", scale=float(t.q_scale()),
                        zero_point=int(t.q_zero_point()))
        elif scheme in (_torch.per_channel_affine, _torch.per_channel_affine_float_qparams):
            meta.update(scheme=str(scheme).replace("torch.", ""), axis=int(t.q_per_channel_axis()))
            parts["scales"] = t.q_per_channel_scales()
            parts["zero_points"] = t.q_per_channel_zero_points()
        else:
            raise ValueError(f"key '{prefix}': a quantized tensor of scheme {scheme} cannot be "
                             "stored")
        self.composites.append(("quantized", prefix, slot, parts, meta))

    def sparse_parts(self):
        """(key, a copy of the part) of every sparse tensor's parts: what load() asks the
        checkpoint for first, to learn the stored parts' shapes from its verified index."""
        return [(f"{prefix}.__{name}__", t.clone()) for kind, prefix, _s, parts, _m in
                self.composites if kind == "sparse" for name, t in parts.items()]

    def add_composites(self, shapes):
        """The composites' tensors and values. `shapes`, on load: the checkpoint's shapes of
        parts that differ from the state's (a sparse tensor's parts are read into fresh tensors
        of those shapes)."""
        for kind, prefix, _slot, parts, meta in self.composites:
            key = f"{prefix}.__{kind}__"
            if shapes is not None:
                fresh = {n: _torch.empty(shapes.get(f"{prefix}.__{n}__", t.shape), dtype=t.dtype)
                         for n, t in parts.items()}
                parts.clear()
                parts.update(fresh)
            for name, t in parts.items():
                self.tensors.append((f"{prefix}.__{name}__", t, None))
            self.values.append((key, meta))
            self.slots[key] = None  # read by restore_composites()

    def restore_composites(self, got, missing):
        for kind, prefix, slot, parts, _meta in self.composites:
            key = f"{prefix}.__{kind}__"
            meta = got.get(key)
            if not isinstance(meta, dict) or any(f"{prefix}.__{n}__" in missing for n in parts):
                continue  # missing (strict=False): the state keeps its tensor
            try:
                self.put(slot, _rebuild(kind, parts, meta))
            except Exception as e:  # noqa: BLE001
                raise ValueError(f"key '{prefix}': the checkpoint's {kind} tensor cannot be "
                                 f"rebuilt: {e}") from None

    def add_mapping(self, mapping, prefix, depth):
        for name, value in mapping.items():
            self.add(value, self.key(prefix, name), _Slot(mapping, name), depth + 1)

    def add_optimizers(self):
        """The optimizers' state by parameter name (after every module of the state is known)."""
        names, tensor_key = {}, {}
        single = len(self.modules) == 1
        for prefix, module in self.modules:
            for name, param in module.named_parameters():
                full = self.key(prefix, name)
                names.setdefault(id(param), name if single else full)
                tensor_key.setdefault(id(param), full)
        added = []
        for prefix, opt in self.optimizers:
            params = []
            for group in opt.param_groups:
                for p in group["params"]:
                    if id(p) not in names:
                        raise ValueError(
                            f"key '{prefix}': the optimizer holds a parameter of shape "
                            f"{tuple(p.shape)} that no module of the state has; put the module "
                            "in the same state so its parameters have names")
                    params.append((p, names[id(p)]))
            for p, name in params:
                for field, value in opt.state.get(p, {}).items():
                    key = f"{self.key(prefix, 'state')}.{name}.{field}"
                    if isinstance(value, _torch.Tensor):
                        follows = tensor_key[id(p)] if value.shape == p.shape else None
                        self.tensors.append((key, value, follows))
                    else:
                        self.values.append((key, value))
                        self.slots[key] = _Slot(opt.state[p], field)
            groups = []
            for group in opt.param_groups:
                g = {k: v for k, v in group.items() if k != "params"}
                g["params"] = [names[id(p)] for p in group["params"]]
                groups.append(g)
            key = self.key(prefix, "param_groups")
            self.values.append((key, groups))
            self.slots[key] = None  # read by restore(), not put in place
            added.append((prefix, opt, params))
        self.optimizers = added

    def partition(self, rules):
        """This rank's Partition: a tensor split by the first rule its key matches, an optimizer
        state tensor by its parameter's."""
        keys = [follows or key for key, _, follows in self.tensors]
        which = _C.match_rules(rules, keys) if rules else [-1] * len(keys)
        p = _C.Partition()
        for (key, tensor, _), r in zip(self.tensors, which):
            if _is_dtensor(tensor):
                _add_dtensor(p, key, tensor)
            elif r < 0:
                p.add(key, tensor)
            else:
                p.add_split(key, tensor, rules[r].dim, rules[r].group)
        return p

    # ------------------------------------------------------------------------------- restore
    def restore(self, loaded, missing):
        """Puts the loaded plain values in place and hands optimizers and stateful objects
        their state (the tensors are already loaded in place)."""
        got = dict(loaded)
        for key, value in got.items():
            if isinstance(self.slots.get(key), _Slot):  # else read below, not put in place
                self.put(self.slots[key], value)
        missing = set(missing)
        for prefix, opt, params in self.optimizers:
            key = self.key(prefix, "param_groups")
            if key in got:
                self.restore_optimizer(prefix, opt, params, got[key], missing)
        self.restore_composites(got, missing)
        for _prefix, obj, state in self.statefuls:
            obj.load_state_dict(state)

    def undo(self):
        """After a failed load: the optimizers' state that load() created is dropped again."""
        for opt in self.initialized:
            opt.state.clear()

    def put(self, slot, value):
        slot.container[slot.index] = value
        if slot.parent is not None:
            parent_slot, original = slot.parent
            if isinstance(original, tuple):
                rebuilt = type(original)(slot.container) if type(original) is tuple else \
                    type(original)(*slot.container)
                if parent_slot is not None:
                    self.put(parent_slot, rebuilt)

    def restore_optimizer(self, prefix, opt, params, saved_groups, missing):
        index = {id(p): i for i, (p, _) in enumerate(params)}
        if not isinstance(saved_groups, list) or len(saved_groups) != len(opt.param_groups):
            raise ValueError(f"key '{prefix}.param_groups': the checkpoint's optimizer has "
                             f"{len(saved_groups) if isinstance(saved_groups, list) else '?'} "
                             f"param groups, this one {len(opt.param_groups)}")
        groups = []
        for g, (saved, group) in enumerate(zip(saved_groups, opt.param_groups)):
            mine = [index[id(p)] for p in group["params"]]
            theirs = saved.get("params") if isinstance(saved, dict) else None
            if not isinstance(theirs, list) or sorted(theirs, key=str) != sorted(
                    (params[i][1] for i in mine), key=str):
                raise ValueError(f"key '{prefix}.param_groups': group {g} holds other parameters "
                                 "in the checkpoint than in this optimizer")
            groups.append(dict(saved, params=mine))
        state = {}
        for i, (p, name) in enumerate(params):
            fields = dict(opt.state.get(p, {}))
            base = f"{self.key(prefix, 'state')}.{name}."
            # None in the checkpoint for this parameter (strict=False): it keeps none.
            if fields and not all(base + f in missing for f in fields):
                state[i] = fields
        opt.load_state_dict({"state": state, "param_groups": groups})


def _zero_state(opt):
    """The state a first step creates, made directly for the optimizers whose state we know
    (SGD, Adam, AdamW, as their `_init_group` makes it); None for any other (or a fused or
    capturable group). The load overwrites it; only its shapes and dtypes matter."""
    kind = type(opt)
    if kind not in (_torch.optim.SGD, _torch.optim.Adam, _torch.optim.AdamW):
        return None
    made = {}
    for g in opt.param_groups:
        if g.get("fused") or g.get("capturable") or g.get("differentiable"):
            return None
        for p in g["params"]:
            if not p.requires_grad:
                continue
            if kind is _torch.optim.SGD:
                if g.get("momentum", 0) != 0:
                    made[p] = {"momentum_buffer": _torch.zeros_like(p)}
                continue
            state = {"step": _torch.tensor(0.0, dtype=_torch.float64 if _torch.get_default_dtype()
                                           == _torch.float64 else _torch.float32),
                     "exp_avg": _torch.zeros_like(p, memory_format=_torch.preserve_format),
                     "exp_avg_sq": _torch.zeros_like(p, memory_format=_torch.preserve_format)}
            if g.get("amsgrad"):
                state["max_exp_avg_sq"] = _torch.zeros_like(p,
                                                            memory_format=_torch.preserve_format)
            made[p] = state
    return made


def _rebuild(kind, parts, meta):
    if kind == "quantized":
        if meta.get("scheme") == "per_tensor_affine":
            return _torch._make_per_tensor_quantized_tensor(
                parts["int_repr"], float(meta["scale"]), int(meta["zero_point"]))
        return _torch._make_per_channel_quantized_tensor(
            parts["int_repr"], parts["scales"], parts["zero_points"], int(meta["axis"]))
    layout = getattr(_torch, str(meta.get("layout")))
    size = [int(n) for n in meta["size"]]
    if layout == _torch.sparse_coo:
        return _torch.sparse_coo_tensor(parts["indices"], parts["values"], size,
                                        is_coalesced=bool(meta.get("coalesced")))
    if layout not in (_torch.sparse_csr, _torch.sparse_csc, _torch.sparse_bsr,
                      _torch.sparse_bsc):
        raise ValueError(f"layout {layout}")
    return _torch.sparse_compressed_tensor(parts["compressed_indices"], parts["plain_indices"],
                                           parts["values"], size, layout=layout)


def _is_composite(t):
    """A tensor stored as its parts: sparse (any layout) or quantized."""
    return isinstance(t, _torch.Tensor) and (t.layout != _torch.strided or t.is_quantized)


def _is_dtensor(t):
    # Without importing torch.distributed.tensor unless the tensor is one.
    return type(t).__name__ == "DTensor" and hasattr(t, "placements")


def _add_dtensor(partition, key, t):
    """A DTensor (FSDP2's fully_shard, tensor parallel): its local tensor is the box its
    placements give this rank (Shard(d) on any mesh dimension, Replicate); no split rule needed."""
    from torch.distributed.tensor import Replicate, Shard
    from torch.distributed.tensor._utils import compute_local_shape_and_global_offset
    for placement in t.placements:
        if not isinstance(placement, (Shard, Replicate)):
            raise ValueError(f"key '{key}': a DTensor placed {placement} (only Shard(dim) and "
                             "Replicate hold a part of the tensor itself; redistribute first)")
    local = t._local_tensor
    if all(isinstance(pl, Replicate) for pl in t.placements):
        partition.add(key, local)
        return
    shape, offset = compute_local_shape_and_global_offset(t.shape, t.device_mesh, t.placements)
    if tuple(local.shape) != tuple(shape):
        raise ValueError(f"key '{key}': the DTensor's local tensor has shape {tuple(local.shape)}, "
                         f"its placements give {tuple(shape)} (padded shards are not supported)")
    partition.add_shard(key, local, list(t.shape), list(offset))


def init_optimizer_state(opt):
    """Creates an optimizer's state the way its first step would, without moving a parameter,
    so that a fresh optimizer has the tensors a checkpoint's state is loaded into: directly for
    SGD, Adam and AdamW; for any other, zero gradients and a step at learning rate 0 (as
    torch.distributed.checkpoint does), the parameters put back exactly."""
    if opt.state:
        return False
    params = [p for g in opt.param_groups for p in g["params"]]
    if any(p.grad is not None for p in params):
        return False
    made = _zero_state(opt)
    if made is not None:
        for p, state in made.items():
            opt.state[p] = state
        return bool(made)
    for p in params:
        if p.requires_grad:
            p.grad = _torch.zeros_like(p)
    lrs = []
    for g in opt.param_groups:
        if "lr" in g:
            lrs.append(g["lr"])
            g["lr"] = _torch.tensor(0.0) if isinstance(g["lr"], _torch.Tensor) else 0.0
    with _torch.no_grad():
        before = [p.detach().clone() for p in params]
        opt.step()
        for p, b in zip(params, before):
            p.copy_(b)  # lr 0 leaves them as they were; exactly so, whatever the optimizer
    for g in opt.param_groups:
        if "lr" in g:
            g["lr"] = lrs.pop(0)
    opt.zero_grad(set_to_none=True)
    return True


def flatten(obj, for_load):
    """The Flat of a training state (a dict, or an optimizer alone)."""
    flat = Flat(for_load)
    if isinstance(obj, _torch.optim.Optimizer):
        raise ValueError("an optimizer's state is keyed by its parameters' names: pass "
                         "{'model': model, 'optim': optimizer}, not the optimizer alone")
    if isinstance(obj, _torch.nn.Module):
        flat.add(obj, "", None)  # its state_dict's own keys, as for a module alone
    else:
        flat.add_mapping(obj, "", 0)
    flat.add_optimizers()
    if not for_load or not flat.composites:
        flat.add_composites(None)
    return flat
