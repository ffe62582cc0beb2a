#!/usr/bin/env python3
"""`import shardload` under `mpirun -np N python3 test_python_api.py`, PyTorch as the oracle.

Every rank builds the same real nn.Modules (a small language model whose embedding is tied to its
LM head, with nn.TransformerEncoderLayer blocks; a conv net with BatchNorm buffers; a
DistributedDataParallel wrapper over a gloo process group started from the OMPI environment) and
checks shardload.save/load against `copy.deepcopy(model).load_state_dict(...)`: the returned
(missing_keys, unexpected_keys) tuple and its repr, the exact RuntimeError text of a failed
verdict, and the loaded values bit for bit; strict and non-strict, replicated and split (Megatron's
column/row-parallel slabs, resharded between save and load), and the same error on every rank for
bad input.

Prints failed checks on stderr with the rank, and "N passed, M failed" (summed over ranks) on rank
0; exits 1 when any rank failed a check.
"""
import collections
import copy
import os
import shutil
import sys
import tempfile
import threading
import time
import traceback
import warnings

from mpi4py import MPI  # before shardload: mpi4py starts MPI, shardload must take it as it is

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.modules.utils import consume_prefix_in_state_dict_if_present

import shardload

COMM = MPI.COMM_WORLD
RANK, SIZE = COMM.rank, COMM.size
PASSED, FAILED = [0], [0]


def check(cond, what):
    if cond:
        PASSED[0] += 1
    else:
        FAILED[0] += 1
        print(f"FAIL [rank {RANK}] {what}", file=sys.stderr, flush=True)
    return bool(cond)


def same(a, b):
    """Same dtype, shape and bytes."""
    return (a.dtype == b.dtype and a.shape == b.shape and torch.equal(
        a.detach().contiguous().reshape(-1).view(torch.uint8),
        b.detach().contiguous().reshape(-1).view(torch.uint8)))


def same_state(got, want, what):
    """Two state dicts: same keys in the same order, every tensor the same bit for bit."""
    if not check(list(got) == list(want), f"{what}: keys {list(got)} != {list(want)}"):
        return
    bad = [k for k in want if not same(got[k], want[k])]
    check(not bad, f"{what}: tensors differ from PyTorch's: {bad}")


def torch_error(model, state, strict=True):
    """PyTorch's RuntimeError text for load_state_dict, or None when it loads."""
    try:
        copy.deepcopy(model).load_state_dict(state, strict=strict)
        return None
    except RuntimeError as e:
        return str(e)


# ----- models


class Block(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.attn = nn.TransformerEncoderLayer(d, nhead=2, dim_feedforward=2 * d, dropout=0.0,
                                               batch_first=True)


class TinyLM(nn.Module):
    """Embedding tied to the LM head (one tensor under two state_dict keys), transformer blocks."""

    def __init__(self, vocab=40, d=16, layers=2, adapter=False):
        super().__init__()
        self.embed = nn.Embedding(vocab, d)
        self.blocks = nn.ModuleList(Block(d) for _ in range(layers))
        self.norm = nn.LayerNorm(d)
        self.head = nn.Linear(d, vocab, bias=False)
        self.head.weight = self.embed.weight
        if adapter:
            self.adapter = nn.Linear(d, d)

    def forward(self, tokens):
        x = self.embed(tokens)
        for b in self.blocks:
            x = b.attn(x)
        return self.head(self.norm(x))


class ConvBN(nn.Module):
    def __init__(self, channels=3):
        super().__init__()
        self.conv = nn.Conv2d(2, channels, 3)
        self.bn = nn.BatchNorm2d(channels)
        self.fc = nn.Linear(channels, 2)

    def forward(self, x):
        return self.fc(self.bn(self.conv(x)).mean((2, 3)))


def model(cls, seed, **kw):
    torch.manual_seed(seed)
    return cls(**kw)


def trained_bn(seed, steps):
    m = model(ConvBN, seed)
    m.train()
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        m(torch.randn(4, 2, 6, 6, generator=g))
    m.eval()
    return m


class TPMlp(nn.Module):
    """Megatron's MLP on one rank: fc1 column parallel (this rank's rows), fc2 row parallel (this
    rank's columns; its bias replicated)."""

    def __init__(self, d, hidden_local):
        super().__init__()
        self.norm = nn.LayerNorm(d)
        self.fc1 = nn.Linear(d, hidden_local)
        self.fc2 = nn.Linear(hidden_local, d)


TP_SPLIT = {r"fc1\.(weight|bias)$": 0, r"fc2\.weight$": 1}


def slab(t, dim, rank=RANK, ranks=SIZE):
    return torch.tensor_split(t, ranks, dim)[rank]


def tp_from_global(full):
    """This rank's TPMlp holding its slabs of a full-size TPMlp's tensors."""
    d = full.norm.weight.shape[0]
    hidden_local = slab(full.fc1.weight, 0).shape[0]
    tp = TPMlp(d, hidden_local)
    with torch.no_grad():
        tp.norm.load_state_dict(full.norm.state_dict())
        tp.fc1.weight.copy_(slab(full.fc1.weight, 0))
        tp.fc1.bias.copy_(slab(full.fc1.bias, 0))
        tp.fc2.weight.copy_(slab(full.fc2.weight, 1))
        tp.fc2.bias.copy_(full.fc2.bias)
    return tp


# ----- cases


def case_round_trip_tied(tmp):
    src = model(TinyLM, 1)
    ckpt = os.path.join(tmp, "lm")
    saved = shardload.save(src, ckpt, metadata={"step": 5})
    check(saved.num_shards == SIZE, f"save wrote {saved.num_shards} shards on {SIZE} ranks")
    dst = model(TinyLM, 2)
    oracle = copy.deepcopy(dst)
    want = oracle.load_state_dict(src.state_dict())
    got = shardload.load(dst, ckpt)
    check(isinstance(got, type(want)), f"load returns {type(got)}, a subclass of {type(want)}")
    check(got == want and tuple(got._fields) == ("missing_keys", "unexpected_keys"),
          f"load returned {got!r}, PyTorch {want!r}")
    check(repr(got) == repr(want) == "<All keys matched successfully>", f"repr {got!r}")
    same_state(dst.state_dict(), oracle.state_dict(), "tied LM")
    check(dst.head.weight is dst.embed.weight, "the tied weights are still one parameter")
    r = got.result
    check(r.ok and r.checksums_verified and r.transport in ("mpi", "nccl"),
          f"result: ok {r.ok}, checksums {r.checksums_verified}, transport {r.transport}")
    check(r.bytes_read_total == r.bytes_needed_total > 0 and r.seconds.total() >= 0,
          f"bytes read {r.bytes_read_total}, needed {r.bytes_needed_total}")
    # A dict of tensors works the same, in place.
    state = {k: torch.zeros_like(v) for k, v in src.state_dict().items()}
    got = shardload.load(state, ckpt)
    same_state(state, src.state_dict(), "dict of tensors")
    return ckpt


def case_strict_failure_changes_nothing(tmp, ckpt):
    dst = model(TinyLM, 3, adapter=True)
    before = copy.deepcopy(dst.state_dict())
    text = torch_error(dst, model(TinyLM, 1).state_dict())
    try:
        shardload.load(dst, ckpt)
        check(False, "strict load into a model with an extra layer did not raise")
    except shardload.VerdictError as e:
        check(isinstance(e, RuntimeError) and isinstance(e, shardload.Error),
              "VerdictError is a RuntimeError and a shardload.Error")
        check(str(e) == text, f"message {str(e)!r}\n  PyTorch's {text!r}")
        check(e.exit_code == 1 and e.missing_keys == ["adapter.weight", "adapter.bias"]
              and e.unexpected_keys == [] and not e.result.ok,
              f"exit_code {e.exit_code}, missing {e.missing_keys}")
    same_state(dst.state_dict(), before, "after a failed strict load")


def case_non_strict(tmp, ckpt):
    # One block fewer and an extra adapter: missing and unexpected keys both.
    dst = model(TinyLM, 4, layers=1, adapter=True)
    oracle = copy.deepcopy(dst)
    want = oracle.load_state_dict(model(TinyLM, 1).state_dict(), strict=False)
    got = shardload.load(dst, ckpt, strict=False)
    check(list(got.missing_keys) == list(want.missing_keys),
          f"missing {got.missing_keys}, PyTorch {want.missing_keys}")
    check(list(got.unexpected_keys) == list(want.unexpected_keys),
          f"unexpected {got.unexpected_keys}, PyTorch {want.unexpected_keys}")
    check(repr(got) == repr(want), f"repr {got!r}, PyTorch {want!r}")
    same_state(dst.state_dict(), oracle.state_dict(), "non-strict")
    # Strict: PyTorch's text with both lists.
    text = torch_error(dst, model(TinyLM, 1).state_dict())
    try:
        shardload.load(dst, ckpt)
        check(False, "strict load with missing and unexpected keys did not raise")
    except RuntimeError as e:
        check(str(e) == text, f"message {str(e)!r}\n  PyTorch's {text!r}")


def case_batchnorm(tmp):
    src = trained_bn(5, steps=3)
    check(int(src.bn.num_batches_tracked) == 3, "BatchNorm tracked 3 batches")
    ckpt = os.path.join(tmp, "bn")
    shardload.save(src, ckpt)
    dst = trained_bn(6, steps=1)
    oracle = copy.deepcopy(dst)
    want = oracle.load_state_dict(src.state_dict())
    got = shardload.load(dst, ckpt)
    check(got == want, f"{got!r} vs {want!r}")
    same_state(dst.state_dict(), oracle.state_dict(), "BatchNorm buffers")
    check(int(dst.bn.num_batches_tracked) == 3, "num_batches_tracked loaded")
    # A state dict without num_batches_tracked, saved with its version metadata (_metadata,
    # kept by shardload): PyTorch's BatchNorm reports it missing, and so does shardload. Saved as
    # a plain dict (no metadata), BatchNorm's own loading fills it in, in both.
    partial = src.state_dict()
    del partial["bn.num_batches_tracked"]
    ckpt2 = os.path.join(tmp, "bn-partial")
    shardload.save(partial, ckpt2)
    ckpt3 = os.path.join(tmp, "bn-partial-no-metadata")
    shardload.save(dict(partial), ckpt3)
    oracle = copy.deepcopy(dst)
    want = oracle.load_state_dict(dict(partial))
    got = shardload.load(dst, ckpt3)
    check(got == want and got.result.module_paths.get("bn", "").startswith("own loading"),
          f"{got!r} vs PyTorch {want!r}, paths {got.result.module_paths}")
    same_state(dst.state_dict(), oracle.state_dict(), "BatchNorm without metadata")
    text = torch_error(dst, partial)
    try:
        shardload.load(dst, ckpt2)
        check(False, "strict load without num_batches_tracked did not raise")
    except shardload.VerdictError as e:
        check(text is not None and str(e) == text, f"message {str(e)!r}\n  PyTorch's {text!r}")
    oracle = copy.deepcopy(dst)
    want = oracle.load_state_dict(partial, strict=False)
    got = shardload.load(dst, ckpt2, strict=False)
    check(got == want, f"{got!r} vs PyTorch {want!r}")
    same_state(dst.state_dict(), oracle.state_dict(), "BatchNorm non-strict")


def case_size_mismatch(tmp, ckpt):
    dst = model(TinyLM, 7, d=8)
    before = copy.deepcopy(dst.state_dict())
    src_state = model(TinyLM, 1).state_dict()
    for strict in (True, False):
        text = torch_error(dst, src_state, strict=strict)
        try:
            shardload.load(dst, ckpt, strict=strict)
            check(False, f"size mismatch (strict={strict}) did not raise")
        except shardload.VerdictError as e:
            check(str(e) == text, f"strict={strict}: {str(e)!r}\n  PyTorch's {text!r}")
            check(len(e.result.size_mismatches) > 0, "size mismatches listed")
    got = shardload.load(dst, ckpt, strict=False, skip_size_mismatch=True)
    keys = [m.key for m in got.result.size_mismatches]
    check("embed.weight" in keys and got.result.size_mismatches[0].checkpoint_shape == [40, 16],
          f"size mismatches {got.result.size_mismatches}")
    same_state(dst.state_dict(), before, "skipped size mismatches keep their values")


def case_dtype_conversion(tmp):
    src = {k: v.double() for k, v in model(TinyLM, 8).state_dict().items()}
    ckpt = os.path.join(tmp, "f64")
    shardload.save(src, ckpt)
    dst = model(TinyLM, 9).to(torch.bfloat16)
    oracle = copy.deepcopy(dst)
    oracle.load_state_dict(src)
    got = shardload.load(dst, ckpt)
    conv = {c.key: (c.from_dtype, c.to_dtype) for c in got.result.dtype_conversions}
    check(conv.get("norm.weight") == ("float64", "bfloat16"), f"conversions {conv}")
    same_state(dst.state_dict(), oracle.state_dict(), "float64 into bfloat16")


def init_gloo():
    if dist.is_initialized():
        return
    port = COMM.bcast(free_port() if RANK == 0 else None, root=0)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}",
                            rank=int(os.environ.get("OMPI_COMM_WORLD_RANK", RANK)),
                            world_size=int(os.environ.get("OMPI_COMM_WORLD_SIZE", SIZE)))


def free_port():
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def case_ddp(tmp, ckpt):
    # TinyLM, not ConvBN: for a state dict whose version metadata does not match the module's
    # prefixes (DDP's into the bare model and back), BatchNorm's own _load_from_state_dict fills
    # in a missing num_batches_tracked, a per-class rule of PyTorch's that a checkpoint loader
    # does not apply (docs/PYTHON.md).
    init_gloo()
    ddp = nn.parallel.DistributedDataParallel(model(TinyLM, 10))
    check(all(k.startswith("module.") for k in ddp.state_dict()), "DDP's keys start with module.")
    ddp_ckpt = os.path.join(tmp, "ddp")
    shardload.save(ddp, ddp_ckpt)
    plain = model(TinyLM, 11)
    text = torch_error(plain, ddp.state_dict())
    try:
        shardload.load(plain, ddp_ckpt)
        check(False, "a DDP checkpoint into the bare model did not raise")
    except shardload.VerdictError as e:
        check(str(e) == text, f"message {str(e)!r}\n  PyTorch's {text!r}")
        notes = "\n".join(getattr(e, "__notes__", []))
        check("module." in notes and "module." in " ".join(e.result.hints),
              f"the hint names the prefix: notes {notes!r}")
    stripped = ddp.state_dict()
    consume_prefix_in_state_dict_if_present(stripped, "module.")
    oracle = copy.deepcopy(plain)
    want = oracle.load_state_dict(stripped)
    got = shardload.load(plain, ddp_ckpt, strip_prefix="module.")
    check(got == want, f"strip_prefix: {got!r}, PyTorch {want!r}")
    same_state(plain.state_dict(), oracle.state_dict(), "DDP checkpoint, prefix stripped")
    # A plain checkpoint into the DDP-wrapped model: add the prefix.
    src = model(TinyLM, 1)
    want = copy.deepcopy(ddp.module)
    want.load_state_dict(src.state_dict())
    try:  # no key matches, so PyTorch copies nothing before it raises
        ddp.load_state_dict(src.state_dict())
        text = None
    except RuntimeError as e:
        text = str(e)
    try:
        shardload.load(ddp, ckpt)
        check(False, "a plain checkpoint into the DDP model did not raise")
    except shardload.VerdictError as e:
        check(str(e).startswith("Error(s) in loading state_dict for DistributedDataParallel:"),
              f"names DistributedDataParallel: {str(e)!r}")
        check(str(e) == text, f"message {str(e)!r}\n  PyTorch's {text!r}")
    got = shardload.load(ddp, ckpt, add_prefix="module.")
    check(tuple(got) == ([], []), f"add_prefix: {got!r}")
    same_state(ddp.module.state_dict(), want.state_dict(), "plain checkpoint into DDP")
    check(ddp.module.head.weight is ddp.module.embed.weight, "still tied under DDP")


def case_split_tp(tmp):
    full = model(TPMlp, 12, d=6, hidden_local=10)
    tp = tp_from_global(full)
    ckpt = os.path.join(tmp, "tp")
    shardload.save(tp, ckpt, split=TP_SPLIT)
    # Into a full-size model on every rank (replicated): the global tensors.
    dst = model(TPMlp, 13, d=6, hidden_local=10)
    oracle = copy.deepcopy(dst)
    want = oracle.load_state_dict(full.state_dict())
    got = shardload.load(dst, ckpt)
    check(got == want, f"{got!r}")
    same_state(dst.state_dict(), oracle.state_dict(), "TP checkpoint into the full model")
    # Into a fresh TP model: each rank's slabs.
    fresh = tp_from_global(model(TPMlp, 14, d=6, hidden_local=10))
    rules = {p: shardload.SplitRule("", d) for p, d in TP_SPLIT.items()}  # the same, as SplitRules
    got = shardload.load(fresh, ckpt, split=rules)
    check(got == want, f"{got!r}")
    same_state(fresh.state_dict(), tp.state_dict(), "TP checkpoint into TP slabs")
    # A replicated checkpoint resharded into slabs, strict=False with an extra key.
    rep = os.path.join(tmp, "tp-replicated")
    extra = dict(full.state_dict(), **{"fc3.weight": torch.ones(2)})
    shardload.save(extra, rep)
    fresh = tp_from_global(model(TPMlp, 15, d=6, hidden_local=10))
    got = shardload.load(fresh, rep, split=TP_SPLIT, strict=False)
    check(got.missing_keys == [] and got.unexpected_keys == ["fc3.weight"], f"{got!r}")
    same_state(fresh.state_dict(), tp.state_dict(), "replicated checkpoint into TP slabs")


def case_split_lm_and_sub_comm(tmp):
    """Rank 0 alone saves (comm of one rank); every rank loads its slabs of the LM's split
    tensors, whose sizes differ between ranks when they do not divide evenly."""
    src = model(TinyLM, 16, vocab=43)
    sub = COMM.Split(0 if RANK == 0 else 1, RANK)
    ckpt = os.path.join(tmp, "lm-rank0")
    if RANK == 0:
        saved = shardload.save(src, ckpt, comm=sub)
        check(saved.num_shards == 1, f"saved by one rank: {saved.num_shards} shards")
    sub.Free()
    split = {r"^embed\.weight$": 0, r"^head\.weight$": 0, r"linear1\.weight$": 0,
             r"linear2\.weight$": 1}
    full = src.state_dict()
    state = {}
    for k, v in model(TinyLM, 17, vocab=43).state_dict().items():
        dim = next((d for p, d in split.items() if __import__("re").search(p, k)), None)
        state[k] = v if dim is None else slab(v, dim).clone()
    got = shardload.load(state, ckpt, split=split)
    check(tuple(got) == ([], []), f"{got!r}")
    for k, v in full.items():
        dim = next((d for p, d in split.items() if __import__("re").search(p, k)), None)
        want = v if dim is None else slab(v, dim)
        check(same(state[k], want), f"{k}: rank {RANK}'s part differs")


def case_partition(tmp):
    """A hand-built Partition: each rank declares its block of rows as an explicit box."""
    g = torch.Generator().manual_seed(18)
    full = torch.randn(2 * SIZE + 1, 3, generator=g)
    rows = torch.tensor_split(torch.arange(full.shape[0]), SIZE)[RANK]
    part = shardload.Partition()
    first = int(rows[0]) if len(rows) else 0
    part.add_shard("table", full[rows].clone(), list(full.shape), [first, 0])
    part.add("scale", torch.tensor(2.5))
    check(part.keys() == ["table", "scale"] and len(part) == 2, f"keys {part.keys()}")
    ckpt = os.path.join(tmp, "partition")
    shardload.save(part, ckpt)
    state = {"table": torch.zeros_like(full), "scale": torch.tensor(0.0)}
    got = shardload.load(state, ckpt)
    check(tuple(got) == ([], []) and same(state["table"], full)
          and float(state["scale"]) == 2.5, f"{got!r}: the whole table on every rank")
    try:
        shardload.load(part, ckpt, split={"table": 0})
        check(False, "a Partition with split= did not raise")
    except shardload.UsageError as e:
        check("Partition" in str(e), f"{e}")


def case_errors_on_every_rank(tmp):
    missing = os.path.join(tmp, "no-such-checkpoint")
    try:
        shardload.load(model(ConvBN, 1), missing)
        check(False, "loading a missing checkpoint did not raise")
    except shardload.FormatError as e:
        check(e.exit_code == 3 and missing in str(e) and isinstance(e, RuntimeError),
              f"missing checkpoint: {e!r}")
    # A bad value on the last rank only (not a tensor, nor a plain value of a training state):
    # every rank raises the same UsageError naming the key.
    state = {"w": torch.zeros(3)}
    if RANK == SIZE - 1:
        state["bad key"] = object()
    try:
        shardload.save(state, os.path.join(tmp, "never"))
        check(False, "a non-tensor value did not raise")
    except shardload.UsageError as e:
        check("'bad key'" in str(e) and f"rank {SIZE - 1}" in str(e) and e.exit_code == 2,
              f"bad value: {str(e)!r}")
    check(not os.path.exists(os.path.join(tmp, "never")), "nothing written after the error")
    # Tensors without data of their own: refused before anything is written, in one line naming
    # the key and the reason (not LibTorch's stack trace from phase 'write').
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "the nested tensor API is in prototype stage"
        nested = torch.nested.nested_tensor([torch.ones(2), torch.ones(3)])
    for key, value, reason in (("m", torch.empty(2, 3, device="meta"), "meta tensor"),
                               ("n", nested, "nested tensor")):
        try:
            shardload.save({"w": torch.zeros(3), key: value}, os.path.join(tmp, "never"))
            check(False, f"a {reason} did not raise")
        except shardload.UsageError as e:
            text = str(e)
            check(f"key '{key}'" in text and reason in text and "phase 'prepare'" in text
                  and len(text) < 400 and "Exception raised from" not in text,
                  f"{reason}: {text!r}")
    check(not os.path.exists(os.path.join(tmp, "never")), "nothing written after the refusals")
    # A bad split regex and an unknown option: the same on every rank.
    for kwargs, needle in (({"split": {"(": 0}}, "("), ({"no_such_option": 1}, "no_such_option"),
                           ({"split": {"w": "x"}}, "dim")):
        try:
            shardload.load({"w": torch.zeros(3)}, os.path.join(tmp, "bn"), **kwargs)
            check(False, f"{kwargs} did not raise")
        except shardload.UsageError as e:
            check(needle in str(e), f"{kwargs}: {str(e)!r}")
    try:
        shardload.load({"w": torch.zeros(3)}, os.path.join(tmp, "bn"), comm=object())
        check(False, "comm=object() did not raise")
    except TypeError as e:
        check("mpi4py" in str(e), f"comm=object(): {e}")


def case_progress_and_gil(tmp, ckpt):
    reports = []
    got = shardload.load(model(TinyLM, 2), ckpt, progress=reports.append)
    check(tuple(got) == ([], []), f"{got!r}")
    check(all(isinstance(p, shardload.Progress) and p.operation == "load" for p in reports),
          f"progress reports {reports}")
    check(not reports or reports[-1].finished, f"the last report is finished: {reports[-1:]}")
    check(all(p.bytes_done <= p.bytes_total for p in reports if p.bytes_total),
          f"bytes_done <= bytes_total: {reports}")
    # A progress callable that raises does not break the collective.
    def broken(_p):
        raise ValueError("progress callback failed on purpose")
    got = shardload.load(model(TinyLM, 2), ckpt, progress=broken)
    check(tuple(got) == ([], []), "a raising progress callback leaves the load intact")
    if SIZE < 2:
        return
    # The GIL is released while the collective waits: rank 1 arrives late, and meanwhile a
    # thread of rank 0 keeps running Python code.
    ticks = [0]
    stop = threading.Event()

    def spin():
        while not stop.is_set():
            ticks[0] += 1
            time.sleep(0.001)

    t = threading.Thread(target=spin)
    if RANK == 0:
        t.start()
    COMM.Barrier()
    if RANK == 1:
        time.sleep(1.0)
    before = ticks[0]
    shardload.load(model(TinyLM, 2), ckpt)
    during = ticks[0] - before
    stop.set()
    if RANK == 0:
        t.join()
        check(during >= 10, f"another thread ran only {during} times during the load: GIL held?")


def main():
    tmp = COMM.bcast(tempfile.mkdtemp(prefix="shardload-py-") if RANK == 0 else None, root=0)
    torch.set_num_threads(1)
    cases = [
        ("round_trip_tied", lambda: STATE.update(ckpt=case_round_trip_tied(tmp))),
        ("strict_failure", lambda: case_strict_failure_changes_nothing(tmp, STATE["ckpt"])),
        ("non_strict", lambda: case_non_strict(tmp, STATE["ckpt"])),
        ("batchnorm", lambda: case_batchnorm(tmp)),
        ("size_mismatch", lambda: case_size_mismatch(tmp, STATE["ckpt"])),
        ("dtype_conversion", lambda: case_dtype_conversion(tmp)),
        ("ddp", lambda: case_ddp(tmp, STATE["ckpt"])),
        ("split_tp", lambda: case_split_tp(tmp)),
        ("split_lm_sub_comm", lambda: case_split_lm_and_sub_comm(tmp)),
        ("partition", lambda: case_partition(tmp)),
        ("errors", lambda: case_errors_on_every_rank(tmp)),
        ("progress_gil", lambda: case_progress_and_gil(tmp, STATE["ckpt"])),
    ]
    only = os.environ.get("ONLY")
    for name, run in cases:
        if only and only not in name and name != "round_trip_tied":
            continue
        try:
            run()
        except Exception:  # a case that raises counts as failed on this rank, the rest go on
            check(False, f"{name} raised:\n{traceback.format_exc()}")
        COMM.Barrier()
    if dist.is_initialized():
        dist.destroy_process_group()
    passed = COMM.allreduce(PASSED[0])
    failed = COMM.allreduce(FAILED[0])
    if RANK == 0:
        shutil.rmtree(tmp, ignore_errors=True)
        print(f"python_api on {SIZE} rank(s)", flush=True)
        print(f"python_api: {passed} passed, {failed} failed", flush=True)
    return 1 if failed else 0


STATE = {}

if __name__ == "__main__":
    sys.exit(main())
