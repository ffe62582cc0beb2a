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
from collections import OrderedDict as _OrderedDict
from collections.abc import Mapping as _Mapping

import torch as _torch

from . import _shardload as _C


def is_training_state(obj):
    """Whether ``obj`` takes the nested path: a module (its ``_metadata`` versions are saved, its
    own loading semantics honoured), a state dict carrying ``_metadata``, or a dict that is not a
    flat dict of plain tensors."""
    if isinstance(obj, _torch.nn.Module):
        return True
    if not isinstance(obj, _Mapping):
        return isinstance(obj, _torch.optim.Optimizer)
    if isinstance(getattr(obj, "_metadata", None), dict):
        return True
    return not all(isinstance(k, str) and isinstance(v, _torch.Tensor) and not _is_dtensor(v)
                   and not _is_composite(v) for k, v in obj.items())


METADATA = "__metadata__"  # a module's state_dict._metadata: an annotation (docs/FORMAT.md)


def _versions(value):
    """``state_dict._metadata`` as it is saved and as PyTorch's loading may see it on load:
    {module path: {"version": int}}; anything else (other types, other fields such as
    ``assign_to_params_buffers``, which would change how the module loads) is dropped."""
    if not isinstance(value, _Mapping):
        return None
    return {path: {"version": entry["version"]} if isinstance(entry.get("version"), int) and
            not isinstance(entry.get("version"), bool) else {}
            for path, entry in value.items()
            if isinstance(path, str) and isinstance(entry, _Mapping)}


def _storable(value):
    """A plain value as stored: a dtype (a quantized module's packed parameters hold one) as its
    name, "torch.qint8"; _dtype_back() turns it back."""
    return str(value) if isinstance(value, _torch.dtype) else value


def _own_loading(m):
    """Why module ``m`` (not its children) loads through its own code, or None: load-state-dict
    pre-hooks (lazy modules, spectral norm, key renames), its class's own ``_load_from_state_dict``
    (BatchNorm's versions, quantized modules), its own ``_save_to_state_dict`` or extra state."""
    base, kind = _torch.nn.Module, type(m)
    if m._load_state_dict_pre_hooks:
        return "load_state_dict pre-hook"
    for name in ("_load_from_state_dict", "_save_to_state_dict", "get_extra_state",
                 "set_extra_state"):
        if getattr(kind, name) is not getattr(base, name):
            return f"{kind.__name__}.{name}"
    return None


def module_plan(module, assign):
    """How a module is loaded: None (in place, shardload's own path), else (roots, post) where
    ``roots`` are [(module path, reason)] of the subtrees with loading of their own (the
    module's ``load_state_dict`` runs after the transfer, and judges their keys), and ``post``
    whether load-state-dict post-hooks exist (then it runs, and judges, for the whole module)."""
    if assign:
        return [("", "assign=True")], False
    roots, post, inside = [], False, []
    for path, m in module.named_modules(remove_duplicate=False):
        post = post or bool(m._load_state_dict_post_hooks)
        if any(path == r or path.startswith(r + ".") or r == "" for r in inside):
            continue
        why = _own_loading(m)
        if why is not None:
            roots.append((path, why))
            inside.append(path)
    if not roots and not post:
        return None
    return roots, post


def _under(key, prefixes):
    return any(key.startswith(p) for p in prefixes)


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

    def __init__(self, for_load, assign=False):
        self.for_load, self.assign = for_load, assign
        self.own = []          # modules loaded by their own load_state_dict (see add_module)
        self.fresh = []        # (key, module tensor): read into a fresh tensor, not in place
        self.fresh_read = {}   # key -> the fresh tensor declared for it
        self.deferred = []     # key prefixes the modules' own loading judges
        self.read = []         # of those, where it may take keys it does not declare (read)
        self.paths = {}        # module key -> which path it took (LoadResult.module_paths)
        self.composites_restored = False
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
            self.add_module(obj, prefix)
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
            self.values.append((prefix, _storable(obj)))
            self.slots[prefix] = slot

    def add_module(self, module, prefix):
        """A module's state_dict: tensors loaded in place, or, for the subtrees with their own
        loading semantics (module_plan), read into fresh tensors that the module's own
        load_state_dict takes after the transfer; its ``_metadata`` versions as an annotation."""
        state = module.state_dict(keep_vars=True)
        plan = module_plan(module, self.assign and self.for_load)
        roots = [] if plan is None else [r for r, _ in plan[0]]
        name = prefix or type(module).__name__
        self.paths[name] = "in place" if plan is None else (
            "in place, then its load_state_dict (post-hooks)" if not roots else "load_state_dict")
        for r, why in (plan[0] if plan else []):
            self.paths[self.key(prefix, r) if r else name] = f"own loading ({why})"
        rel = [r + "." if r else "" for r in roots]
        own_state = {}  # a subtree's entries that are not plain tensors, rebuilt for its loading
        # The module's own parameters and buffers are loaded in place even where its own loading
        # runs (it then copies them onto themselves); a tensor its state_dict computes (its own
        # _save_to_state_dict), a lazy module's uninitialised one, and all with assign=True are
        # read into fresh tensors for it.
        placed = set()  # keys loaded in place
        own_ids = {id(t) for _, t in module.named_parameters(remove_duplicate=False)} | {
            id(t) for _, t in module.named_buffers(remove_duplicate=False)} if rel else set()
        for k, value in state.items():
            key = self.key(prefix, k)
            own = bool(rel) and _under(k, rel)
            plain = isinstance(value, _torch.Tensor) and not _is_composite(value)
            in_place = not self.for_load or not own or (
                id(value) in own_ids and not self.assign and
                not isinstance(value, _torch.nn.parameter.UninitializedTensorMixin))
            if plain and in_place:
                self.tensors.append((key, value.detach(), None))
                placed.add(key)
            elif plain:
                self.fresh.append((key, value))
            elif not own:
                what = type(value).__name__ if not isinstance(value, _torch.Tensor) else (
                    "quantized tensor" if value.is_quantized else f"{value.layout} tensor")
                raise ValueError(f"key '{key}': module {type(module).__name__} holds a {what} "
                                 "in its state_dict but loads in place (no loading of its own "
                                 "to restore it)")
            elif _is_composite(value) or _holds_tensor(value):
                # Quantized weights, torch.ao's packed (weight, bias) tuples: stored as their
                # parts, rebuilt in own_state for the module's own _load_from_state_dict.
                own_state[k] = value
                self.add(value, key, _Slot(own_state, k), 1)
            else:
                # Extra state and other plain values; a dtype as its name.
                self.values.append((key, _storable(value)))
                self.slots[key] = None
        metadata = _versions(getattr(state, "_metadata", None))
        meta_key = self.key(prefix, METADATA)
        if metadata is not None and not self.for_load:
            self.values.append((meta_key, metadata))
            self.slots[meta_key] = None
        if plan is not None and self.for_load:
            # The verdict on these keys is the module's own: its roots' subtrees, or all of it
            # when post-hooks may edit the verdict (its in-place tensors are still read in place).
            read = [self.key(prefix, r) if r else prefix for r in roots]
            read = [s + "." if s else "" for s in read]
            scope = [prefix + "." if prefix else ""] if plan[1] else read
            self.deferred += scope
            self.read += read
            self.own.append((prefix, module, state, placed, scope, own_state))
            self.values.append((meta_key, None))
            self.slots[meta_key] = None

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
        if not self.optimizers:
            return
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
        # A module's own loading: a split or sharded tensor is read into a fresh one like it
        # (this rank's part); any other is not declared, and the load reads the checkpoint's
        # whole, at its shape and dtype (LoadOptions.deferred_prefixes), for the module to judge.
        which = _C.match_rules(rules, [k for k, _ in self.fresh]) if rules else \
            [-1] * len(self.fresh)
        self.fresh_read = {}
        for (key, tensor), r in zip(self.fresh, which):
            if isinstance(tensor, _torch.nn.parameter.UninitializedTensorMixin):
                continue
            if _is_dtensor(tensor):
                from torch.distributed.tensor import DTensor
                fresh = DTensor.from_local(_torch.empty_like(tensor._local_tensor),
                                           tensor.device_mesh, tensor.placements,
                                           run_check=False, shape=tensor.shape,
                                           stride=tensor.stride())
                _add_dtensor(p, key, fresh)
            elif r >= 0:
                fresh = _torch.empty_like(tensor.detach())
                p.add_split(key, fresh, rules[r].dim, rules[r].group)
            else:
                continue
            self.fresh_read[key] = fresh
        return p

    # ------------------------------------------------------------------------------- restore
    def load_modules(self, result, strict):
        """After the transfer: each module with loading of its own takes, through its own
        ``load_state_dict``, a state dict of its tensors loaded in place (copied onto
        themselves), the fresh ones read for it and the checkpoint's ``_metadata``: hooks,
        custom loading, versions and ``assign`` as PyTorch applies them. Returns the verdict's
        (missing, unexpected) keys with the modules' own in place of shardload's."""
        missing, unexpected = list(result.missing_keys), list(result.unexpected_keys)
        if not self.own:
            return missing, unexpected
        read = dict(result.deferred)
        values = dict(result.values)
        absent = set(result.deferred_missing) | set(missing)
        asked = {k for k, _ in self.values}
        self.restore_composites(values, absent)  # quantized weights, into own_state
        self.composites_restored = True
        for prefix, module, state, placed, scope, own_state in self.own:
            def full(k, prefix=prefix):
                return self.key(prefix, k)
            sd = _OrderedDict()
            for k, mine in state.items():
                key = full(k)
                if key in absent:
                    continue
                if key in placed:
                    sd[k] = mine  # loaded in place: copied onto itself
                elif key in self.fresh_read:
                    sd[k] = self.fresh_read[key]
                elif key in read:
                    sd[k] = read.pop(key)
                elif k in own_state:
                    if not any(a.startswith(key + ".") for a in absent):
                        sd[k] = own_state[k]
                elif key in values:
                    sd[k] = _dtype_back(values.pop(key), mine)
            start = len(prefix) + 1 if prefix else 0
            for key in list(read):
                if _under(key, scope):
                    sd[key[start:]] = read.pop(key)
            for key in result.deferred_unexpected:
                # Outside the subtrees with loading of their own: only the name matters (the
                # module reports it unexpected, a post-hook may forgive it); never read.
                if _under(key, scope):
                    sd[key[start:]] = _torch.empty(0)
            for key in list(values):
                if _under(key, scope) and key not in asked:
                    sd[key[start:]] = values.pop(key)
            metadata = _versions(values.get(full(METADATA)))
            if metadata is not None:
                sd._metadata = metadata
            keys = set(map(full, state))
            missing = [k for k in missing if k not in keys]
            # The final key lists, as the module's last post-hook sees them (also when its
            # strict verdict raises), for the VerdictError's missing_keys and unexpected_keys.
            seen = []
            handle = module.register_load_state_dict_post_hook(lambda _m, keys: seen.append(keys))
            try:
                got = module.load_state_dict(sd, strict=strict, assign=self.assign)
            except RuntimeError as e:
                error = _C.VerdictError(str(e))
                error.result = result
                error.missing_keys = missing + [full(k) for k in (
                    seen[-1].missing_keys if seen else [])]
                error.unexpected_keys = unexpected + [full(k) for k in (
                    seen[-1].unexpected_keys if seen else [])]
                raise error from None
            finally:
                handle.remove()
            missing += [full(k) for k in got.missing_keys]
            unexpected += [full(k) for k in got.unexpected_keys]
        return missing, unexpected

    def restore(self, loaded, missing):
        """Puts the loaded plain values in place and hands optimizers and stateful objects
        their state (the tensors are already loaded in place)."""
        got = dict(loaded)
        for key, value in got.items():
            if isinstance(self.slots.get(key), _Slot):  # else read below, not put in place
                slot = self.slots[key]
                self.put(slot, _dtype_back(value, slot.container[slot.index]))
        missing = set(missing)
        for prefix, opt, params in self.optimizers:
            key = self.key(prefix, "param_groups")
            if key in got:
                self.restore_optimizer(prefix, opt, params, got[key], missing)
        if not self.composites_restored:
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


def _dtype_back(value, mine):
    """A dtype saved as its name ("torch.qint8") is a dtype again where the module holds one."""
    if isinstance(mine, _torch.dtype) and isinstance(value, str) and value.startswith("torch."):
        dtype = getattr(_torch, value[len("torch."):], None)
        if isinstance(dtype, _torch.dtype):
            return dtype
    return value


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
                         f"its placements give {tuple(shape)}: it is not this rank's part of "
                         "the tensor")
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


def flatten(obj, for_load, assign=False):
    """The Flat of a training state (a dict, or an optimizer alone)."""
    flat = Flat(for_load, assign)
    if isinstance(obj, _torch.optim.Optimizer):
        raise ValueError("an optimizer's state is keyed by its parameters' names: pass "
                         "{'model': model, 'optim': optimizer}, not the optimizer alone")
    if isinstance(obj, _torch.nn.Module):
        flat.add(obj, "", None)  # its state_dict's own keys, as for a module alone
    else:
        flat.add_mapping(obj, "", 0)
        metadata = _versions(getattr(obj, "_metadata", None))
        if metadata is not None and not for_load:
            flat.values.append((METADATA, metadata))  # a module's state_dict() saved as a dict
    if assign and not flat.modules:
        raise ValueError("assign=True assigns a module's parameters and buffers; the state "
                         "holds no module")
    if assign and flat.optimizers:
        raise ValueError("assign=True replaces the module's parameters, which the optimizer of "
                         "the state would no longer hold; load the module with assign=True first, "
                         "then make the optimizer and load it")
    flat.add_optimizers()
    if not for_load or not flat.composites:
        flat.add_composites(None)
    return flat
