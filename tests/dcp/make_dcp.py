#!/usr/bin/env python3
"""Write tiny torch.distributed.checkpoint (DCP) fixtures with the installed torch.

Usage:
    python3 make_dcp.py OUTDIR [--case NAME ...] [--no-verify]
    OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 \
        mpirun -np 4 --oversubscribe python3 make_dcp.py OUTDIR
    torchrun --nproc-per-node 2 make_dcp.py OUTDIR

Every case is written with torch's own dcp.save / FileSystemWriter into
OUTDIR/<case>/ and rank 0 writes OUTDIR/<case>.expected.pt: the full,
unsharded (nested) state dict that was saved, as plain CPU tensors and plain
Python values (torch.save, loadable with weights_only=True), so a reader test
can compare bit-exactly.  OUTDIR/manifest.json lists the cases, the world
size, the torch version and skipped dtypes.

Rank / world come from OMPI_COMM_WORLD_RANK/SIZE (mpirun) or RANK/WORLD_SIZE
(torchrun); with neither, the script runs as world size 1 over an in-process
gloo group.  Multi-rank runs use gloo over MASTER_ADDR:MASTER_PORT (default
127.0.0.1:29517) and the loopback interface.

Cases:
  replicated       plain tensors (f32/bf16/i64, 0-d, empty, nested keys, a list
                   of tensors) + non-tensor items (int, str, float, tuple,
                   list) which DCP stores as torch.save'd bytes.
  dtensor          DTensors Shard(0)/Shard(1)/Replicate() on a 1-D CPU mesh
                   with uneven dims (world > 1); plain tensors when world == 1.
  optim            {"model": ..., "optim": ...} from
                   torch.distributed.checkpoint.state_dict.get_state_dict
                   after one AdamW step.
  single_file_off  FileSystemWriter(single_file_per_rank=False).
  threads          FileSystemWriter(thread_count=4).
  safetensors_ser  FileSystemWriter(serialization_format=SerializationFormat.SAFETENSORS)
                   (only when the installed torch has it).
  dtypes           one small tensor of every dtype DCP can save.
  mcore_like       emulates Megatron-Core v0.15 "torch_dist": flat keys, no
                   planner_data, .metadata top object is
                   megatron.core.dist_checkpointing.strategies.torch.MCoreMetadata
                   (Metadata + mcore_data field) carrying an extra
                   `all_local_plans` attribute (list of MCoreSavePlan with
                   WriteItems), a "common_state/shard_0_1" bytes item and
                   metadata.json.  The megatron classes are stand-ins registered
                   in sys.modules, so only a restricted/foreign unpickler (or
                   this script) can read that .metadata.
  zstd             FileSystemWriter(_extensions=[ZStandard()]) -- only when
                   the zstandard or pyzstd module is installed; not in the
                   default case list unless available.
"""

import argparse
import io
import json
import os
import shutil
import sys
import time
import warnings

warnings.filterwarnings("ignore")
os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
import torch.distributed.checkpoint as dcp  # noqa: E402
from torch.distributed.checkpoint import FileSystemReader, FileSystemWriter  # noqa: E402
from torch.distributed.checkpoint.format_utils import _EmptyStateDictLoadPlanner  # noqa: E402
from torch.distributed.checkpoint.state_dict_loader import _load_state_dict  # noqa: E402

torch.set_num_threads(1)

ALL_CASES = [
    "replicated",
    "dtensor",
    "optim",
    "single_file_off",
    "threads",
    "safetensors_ser",
    "dtypes",
    "mcore_like",
    "zstd",
]

# dtypes the brief asks for, then extras that the installed torch also has.
REQUIRED_DTYPES = [
    "float8_e4m3fn", "float8_e5m2", "float8_e4m3fnuz", "float8_e5m2fnuz",
    "float8_e8m0fnu", "complex64", "complex128", "uint16", "uint32", "uint64",
    "bool", "int8", "int16", "int32", "int64", "uint8", "float16", "bfloat16",
    "float32", "float64",
]
EXTRA_DTYPES = ["complex32", "bcomplex32", "float4_e2m1fn_x2"]
# Known not to work with DCP in torch 2.15 (reported in the manifest):
#   bits8/bits16/bits1x8/bits2x4/bits4x2, int1..int7, uint1..uint7:
#     torch._utils._element_size() raises in the dedup planner (torch.iinfo).
#   qint8/quint8/qint32/quint4x2/quint2x4: quantized tensors fail to save/load.
KNOWN_BAD_DTYPES = [
    "bits8", "bits16", "bits1x8", "bits2x4", "bits4x2",
    *[f"int{i}" for i in range(1, 8)], *[f"uint{i}" for i in range(1, 8)],
    "qint8", "quint8", "qint32", "quint4x2", "quint2x4",
]


# --------------------------------------------------------------------------
# process group
# --------------------------------------------------------------------------
def dist_env():
    env = os.environ
    if "OMPI_COMM_WORLD_RANK" in env:
        return int(env["OMPI_COMM_WORLD_RANK"]), int(env["OMPI_COMM_WORLD_SIZE"])
    if "RANK" in env and "WORLD_SIZE" in env:
        return int(env["RANK"]), int(env["WORLD_SIZE"])
    if "PMI_RANK" in env:
        return int(env["PMI_RANK"]), int(env["PMI_SIZE"])
    return 0, 1


def init_pg(rank, world):
    if world == 1:
        dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
        return
    addr = os.environ.get("MASTER_ADDR", "127.0.0.1")
    port = os.environ.get("MASTER_PORT", "29517")
    dist.init_process_group(
        "gloo", init_method=f"tcp://{addr}:{port}", rank=rank, world_size=world
    )


# --------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------
def gen(seed):
    g = torch.Generator()
    g.manual_seed(seed)
    return g


def randn(g, *shape, dtype=torch.float32):
    return torch.randn(*shape, generator=g).to(dtype)


def random_bits(g, shape, dtype):
    """Deterministic tensor of `dtype` made from random bytes (bit-exact)."""
    if dtype == torch.bool:
        return torch.randint(0, 2, shape, generator=g).bool()
    n = 1
    for s in shape:
        n *= s
    isz = dtype.itemsize
    raw = torch.randint(0, 256, (n * isz,), generator=g, dtype=torch.int32).to(torch.uint8)
    if dtype.is_floating_point and isz <= 2 and dtype != torch.float4_e2m1fn_x2:
        # keep float8/16 values finite-ish and avoid NaN so the data is sane
        raw = raw.view(-1, isz)
        raw[:, -1] &= 0x3F
        raw = raw.reshape(-1)
    return raw.view(dtype).reshape(shape)


def to_plain(obj):
    """Deep copy a state dict into plain CPU tensors / plain values."""
    from torch.distributed.tensor import DTensor

    if isinstance(obj, DTensor):
        return obj.full_tensor().detach().cpu().clone()
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu().clone()
    if isinstance(obj, dict):
        return {k: to_plain(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [to_plain(v) for v in obj]
    if isinstance(obj, tuple):
        return tuple(to_plain(v) for v in obj)
    return obj


def tensor_bytes(t):
    t = t.detach().cpu().contiguous()
    if t.numel() == 0:
        return b""
    return bytes(t.reshape(-1).view(torch.uint8).numpy())


def compare(exp, got, path="", errs=None):
    """Bit-exact recursive comparison; returns list of error strings."""
    if errs is None:
        errs = []
    if isinstance(exp, torch.Tensor):
        if not isinstance(got, torch.Tensor):
            errs.append(f"{path}: expected tensor, got {type(got).__name__}")
        elif exp.dtype != got.dtype or tuple(exp.shape) != tuple(got.shape):
            errs.append(f"{path}: {exp.dtype}{tuple(exp.shape)} vs {got.dtype}{tuple(got.shape)}")
        elif tensor_bytes(exp) != tensor_bytes(got):
            errs.append(f"{path}: bytes differ")
    elif isinstance(exp, dict):
        if not isinstance(got, dict) or set(exp) != set(got):
            errs.append(f"{path}: keys {sorted(map(str, exp))} vs "
                        f"{sorted(map(str, got)) if isinstance(got, dict) else type(got).__name__}")
        else:
            for k in exp:
                compare(exp[k], got[k], f"{path}.{k}" if path else str(k), errs)
    elif isinstance(exp, (list, tuple)):
        if type(exp) is not type(got) or len(exp) != len(got):
            errs.append(f"{path}: {type(exp).__name__}[{len(exp)}] vs {type(got).__name__}"
                        f"[{len(got) if hasattr(got, '__len__') else '?'}]")
        else:
            for i, (a, b) in enumerate(zip(exp, got)):
                compare(a, b, f"{path}.{i}", errs)
    else:
        if type(exp) is not type(got) or exp != got:
            errs.append(f"{path}: {exp!r} vs {got!r}")
    return errs


def load_full_no_dist(path):
    """Load a whole DCP checkpoint (nested, as saved) on this rank only."""
    sd = {}
    _load_state_dict(
        sd,
        storage_reader=FileSystemReader(path),
        planner=_EmptyStateDictLoadPlanner(),
        no_dist=True,
    )
    return sd


# --------------------------------------------------------------------------
# state dicts
# --------------------------------------------------------------------------
def replicated_sd(seed=1):
    g = gen(seed)
    return {
        "model": {
            "layer": {
                "weight": randn(g, 4, 3),
                "bias": randn(g, 4, dtype=torch.bfloat16),
            },
            "embed.weight": randn(g, 5, 2),          # key that already has a dot
            "counter": torch.tensor(7, dtype=torch.int64),   # 0-d
            "scale": torch.tensor(0.5, dtype=torch.float32),  # 0-d float
            "empty": torch.empty(0, 3, dtype=torch.float32),  # empty
            "ids": torch.arange(6, dtype=torch.int64).reshape(2, 3),
            "blocks": [randn(g, 2, 2), randn(g, 3)],  # list of tensors -> blocks.0/1
            "noncontig": randn(g, 3, 4).t(),          # transposed view (strides)
        },
        "step": 42,
        "extra": {
            "lr": 0.001,
            "name": "shardload",
            "betas": (0.9, 0.95),
            "flags": [True, False, None],
            "nested": {"epoch": 3},
        },
    }


def dtensor_sd(world, seed=2):
    g = gen(seed)
    full = {
        "row7": randn(g, 7, 3),                        # Shard(0), 7 rows
        "row5": randn(g, 5, 2, dtype=torch.bfloat16),  # Shard(0), 5 rows
        "col3": randn(g, 2, 3),                        # Shard(1), 3 cols
        "col6": torch.arange(12, dtype=torch.int64).reshape(2, 6),  # Shard(1)
        "rep": randn(g, 4),                            # Replicate()
        "vec1": randn(g, 1),                           # Shard(0) of 1 elt
        "plain": randn(g, 3, 3),                       # plain tensor on every rank
        "count": 5,                                    # bytes item
    }
    if world == 1:
        sd = {"model": dict(full)}
        return sd, sd
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Replicate, Shard, distribute_tensor

    mesh = init_device_mesh("cpu", (world,))
    place = {
        "row7": [Shard(0)], "row5": [Shard(0)], "col3": [Shard(1)],
        "col6": [Shard(1)], "rep": [Replicate()], "vec1": [Shard(0)],
    }
    sd = {"model": {}}
    for k, v in full.items():
        if k in place:
            sd["model"][k] = distribute_tensor(v, mesh, place[k])
        else:
            sd["model"][k] = v
    return sd, {"model": full}


def optim_sd(seed=3):
    from torch.distributed.checkpoint.state_dict import get_state_dict

    torch.manual_seed(seed)
    model = torch.nn.Sequential(
        torch.nn.Linear(4, 3), torch.nn.ReLU(), torch.nn.Linear(3, 2, bias=False)
    )
    model.register_buffer("running", torch.zeros(2))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    x = torch.randn(5, 4, generator=gen(seed + 100))
    model(x).pow(2).sum().backward()
    opt.step()
    model_sd, optim_state = get_state_dict(model, opt)
    return {"model": model_sd, "optim": optim_state}


def dtypes_sd(seed=4):
    g = gen(seed)
    sd, skipped = {}, []
    for name in REQUIRED_DTYPES + EXTRA_DTYPES:
        dt = getattr(torch, name, None)
        if dt is None:
            skipped.append(f"{name} (not in this torch)")
            continue
        try:
            t = random_bits(g, (2, 3), dt)
            buf = io.BytesIO()
            torch.save(t, buf)
            buf.seek(0)
            back = torch.load(buf, weights_only=True)
            torch._utils._element_size(dt)
            if tensor_bytes(back) != tensor_bytes(t):
                raise RuntimeError("torch.save round trip not bit-exact")
        except Exception as e:  # noqa: BLE001
            skipped.append(f"{name} ({type(e).__name__}: {e})")
            continue
        sd[name] = t
    sd["scalar_f64"] = torch.tensor(3.25, dtype=torch.float64)
    return {"dtypes": sd}, skipped


def safetensors_sd(world, seed=5):
    g = gen(seed)
    full = {
        "w": randn(g, 4, 3),
        "b": randn(g, 4, dtype=torch.bfloat16),
        "i": torch.arange(5, dtype=torch.int64),
        "s": torch.tensor(1.5),
    }
    sd = {"model": dict(full)}
    if world > 1:
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.tensor import Shard, distribute_tensor

        mesh = init_device_mesh("cpu", (world,))
        row = randn(g, 5, 2)
        full["row5"] = row
        sd["model"]["row5"] = distribute_tensor(row, mesh, [Shard(0)])
    return sd, {"model": full}


# --------------------------------------------------------------------------
# safetensors-serialized DCP reader (FileSystemReader cannot read these)
# --------------------------------------------------------------------------
def load_safetensors_dcp(path):
    """Reassemble full tensors from a DCP dir written with SAFETENSORS.

    Each __R_N.distcp is [raw bytes items...] + one safetensors blob holding all
    tensors of that file, keyed by flattened fqn; the blob starts at the offset
    recorded in _StorageInfo for its tensors (all tensors of a file share it).
    """
    import pickle

    from safetensors.torch import load as st_load

    with open(os.path.join(path, ".metadata"), "rb") as f:
        md = pickle.load(f)
    flat = {}
    blobs = {}
    for idx, info in md.storage_data.items():
        smd = md.state_dict_metadata[idx.fqn]
        if not hasattr(smd, "chunks"):
            with open(os.path.join(path, info.relative_path), "rb") as f:
                f.seek(info.offset)
                flat[idx.fqn] = torch.load(io.BytesIO(f.read(info.length)), weights_only=False)
            continue
        key = (info.relative_path, info.offset)
        if key not in blobs:
            with open(os.path.join(path, info.relative_path), "rb") as f:
                f.seek(info.offset)
                data = f.read()
            blobs[key] = st_load(data)
        chunk = blobs[key][idx.fqn]
        if idx.fqn not in flat:
            flat[idx.fqn] = torch.zeros(tuple(smd.size), dtype=smd.properties.dtype)
        dst = flat[idx.fqn]
        for d, (o, n) in enumerate(zip(idx.offset, chunk.shape)):
            dst = dst.narrow(d, o, n)
        dst.copy_(chunk)
    # unflatten with the planner_data mapping
    from torch.distributed.checkpoint._nested_dict import unflatten_state_dict

    return unflatten_state_dict(flat, md.planner_data)


# --------------------------------------------------------------------------
# Megatron-Core torch_dist emulation
# --------------------------------------------------------------------------
MCORE_MOD = "megatron.core.dist_checkpointing.strategies.torch"


def mcore_classes():
    """Stand-ins for megatron's MCoreMetadata / MCoreSavePlan (pickle names match)."""
    import dataclasses
    import types
    from typing import Any, Optional

    from torch.distributed.checkpoint.metadata import Metadata
    from torch.distributed.checkpoint.planner import SavePlan

    mod = sys.modules.get(MCORE_MOD)
    if mod is not None and hasattr(mod, "MCoreMetadata"):
        return mod.MCoreMetadata, mod.MCoreSavePlan
    parts = MCORE_MOD.split(".")
    for i in range(1, len(parts) + 1):
        name = ".".join(parts[:i])
        if name not in sys.modules:
            sys.modules[name] = types.ModuleType(name)
    mod = sys.modules[MCORE_MOD]

    @dataclasses.dataclass
    class MCoreMetadata(Metadata):
        mcore_data: Optional[dict[str, dict[str, Any]]] = None

    @dataclasses.dataclass(frozen=True)
    class MCoreSavePlan(SavePlan):
        mcore_data: Optional[dict[str, dict[str, Any]]] = None

    for c in (MCoreMetadata, MCoreSavePlan):
        c.__module__ = MCORE_MOD
        c.__qualname__ = c.__name__
        setattr(mod, c.__name__, c)
    return MCoreMetadata, MCoreSavePlan


def mcore_planner():
    import dataclasses

    from torch.distributed.checkpoint.default_planner import DefaultSavePlanner
    from torch.distributed.checkpoint.filesystem import _StoragePrefix

    MCoreMetadata, MCoreSavePlan = mcore_classes()

    class MCoreLikeSavePlanner(DefaultSavePlanner):
        def __init__(self):
            super().__init__(flatten_state_dict=False)

        def create_global_plan(self, all_plans):
            global_plan, md = super().create_global_plan(all_plans)
            mcore_data = {
                "decoder.layers.linear_fc1.weight": {
                    "nd_reformulated_orig_global_shape": (4, 6)
                }
            }
            md = MCoreMetadata(mcore_data=mcore_data, **vars(md))
            md.all_local_plans = [
                MCoreSavePlan(items=p.items, storage_data=_StoragePrefix(f"__{i}_"),
                              planner_data=p.planner_data, usable=p.usable,
                              mcore_data={})
                for i, p in enumerate(all_plans)
            ]
            self.metadata = md
            return global_plan, md

        def transform_object(self, write_item, object):
            # like MCoreSavePlanner: ShardedObjects arrive pre-serialized and
            # are written as-is (no second torch.save around them)
            if isinstance(object, (bytes, bytearray)):
                return io.BytesIO(bytes(object))
            return super().transform_object(write_item, object)

    return MCoreLikeSavePlanner()


def mcore_like_sd(world, seed=10):
    g = gen(seed)
    # prepend_axis_num=1 style: a stacked-layers tensor [L, out, in]
    full = {
        "decoder.layers.linear_fc1.weight": randn(g, 2, 4, 6),
        "embedding.word_embeddings.weight": randn(g, 8, 4, dtype=torch.bfloat16),
        "optimizer.state.exp_avg.decoder.final_layernorm.weight": randn(g, 4),
    }
    common = {"iteration": 10, "checkpoint_version": 3.0, "args": {"tp": 1}}
    sd = dict(full)
    if world > 1:
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.tensor import Shard, distribute_tensor

        mesh = init_device_mesh("cpu", (world,))
        sd["decoder.layers.linear_fc1.weight"] = distribute_tensor(
            full["decoder.layers.linear_fc1.weight"], mesh, [Shard(2)])
        sd["embedding.word_embeddings.weight"] = distribute_tensor(
            full["embedding.word_embeddings.weight"], mesh, [Shard(0)])
    # ShardedObject-style bytes item: torch.save([obj]) like megatron's
    # _mcore_to_torch_sharded_object; stored by DCP as torch.save(BytesIO)
    buf = io.BytesIO()
    torch.save([common], buf)
    sd["common_state/shard_0_1"] = buf.getvalue()
    expected = dict(full)
    expected["common_state/shard_0_1"] = [common]  # what torch.load of the item gives
    return sd, expected


# --------------------------------------------------------------------------
# main
# --------------------------------------------------------------------------
def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("outdir")
    ap.add_argument("--case", action="append", choices=ALL_CASES,
                    help="case to write (repeatable); default: all available")
    ap.add_argument("--no-verify", action="store_true")
    args = ap.parse_args()

    t0 = time.time()
    rank, world = dist_env()
    init_pg(rank, world)
    try:
        from torch.distributed.checkpoint.filesystem import SerializationFormat
        has_st = True
    except ImportError:
        has_st = False
    try:
        from torch.distributed.checkpoint._extension import ZStandard
        has_zstd = ZStandard.is_available()
    except Exception:  # noqa: BLE001
        has_zstd = False

    cases = args.case or [c for c in ALL_CASES if c != "zstd" or has_zstd]
    outdir = os.path.abspath(args.outdir)
    if rank == 0:
        os.makedirs(outdir, exist_ok=True)
    dist.barrier()

    manifest = {"torch": torch.__version__, "world_size": world, "cases": {}}
    results = {}
    for case in cases:
        path = os.path.join(outdir, case)
        if rank == 0:
            shutil.rmtree(path, ignore_errors=True)
        dist.barrier()
        writer_kw = {"sync_files": False}
        info = {}
        if case == "replicated":
            sd = replicated_sd()
            expected = to_plain(sd)
        elif case == "dtensor":
            sd, full = dtensor_sd(world)
            expected = to_plain(full)
        elif case == "optim":
            sd = optim_sd()
            expected = to_plain(sd)
        elif case == "single_file_off":
            sd, full = dtensor_sd(world, seed=6)
            expected = to_plain(full)
            writer_kw["single_file_per_rank"] = False
        elif case == "threads":
            sd, full = dtensor_sd(world, seed=7)
            sd["extra"] = replicated_sd(seed=8)["model"]
            full["extra"] = sd["extra"]
            expected = to_plain(full)
            writer_kw["thread_count"] = 4
        elif case == "safetensors_ser":
            if not has_st:
                results[case] = "SKIP (no SerializationFormat in this torch)"
                continue
            sd, full = safetensors_sd(world)
            expected = to_plain(full)
            writer_kw["serialization_format"] = SerializationFormat.SAFETENSORS
        elif case == "dtypes":
            sd, skipped = dtypes_sd()
            expected = to_plain(sd)
            info["skipped_dtypes"] = skipped + [f"{n} (known DCP failure)" for n in KNOWN_BAD_DTYPES]
        elif case == "mcore_like":
            sd, full = mcore_like_sd(world)
            expected = to_plain(full)
        elif case == "zstd":
            if not has_zstd:
                results[case] = "SKIP (zstandard/pyzstd not installed)"
                continue
            sd = replicated_sd(seed=9)
            expected = to_plain(sd)
            writer_kw["_extensions"] = [ZStandard()]
        else:
            raise AssertionError(case)

        planner = mcore_planner() if case == "mcore_like" else None
        dcp.save(sd, storage_writer=FileSystemWriter(path, **writer_kw), planner=planner)
        if rank == 0 and case == "mcore_like":
            with open(os.path.join(path, "metadata.json"), "w") as f:
                json.dump({"sharded_backend": "torch_dist", "sharded_backend_version": 1,
                           "common_backend": "torch", "common_backend_version": 1}, f)
        if rank == 0:
            torch.save(expected, path + ".expected.pt")
            info["writer"] = {k: str(v) for k, v in writer_kw.items()}
            info["files"] = sorted(os.listdir(path))
            manifest["cases"][case] = info
        dist.barrier()

        if args.no_verify:
            results[case] = "written"
            continue
        # verify on rank 0 by reading everything back (no collectives)
        if rank == 0:
            exp = torch.load(path + ".expected.pt", weights_only=True)
            if case == "safetensors_ser":
                got = load_safetensors_dcp(path)
            else:
                got = load_full_no_dist(path)
            errs = compare(exp, got)
            results[case] = "OK" if not errs else "FAIL " + "; ".join(errs[:5])
        # distributed re-load into the original (possibly sharded) layout
        if case in ("dtensor", "single_file_off") and world > 1:
            from torch.distributed.tensor import DTensor

            target = {"model": {}}
            for k, v in sd["model"].items():
                if isinstance(v, torch.Tensor):
                    z = torch.zeros_like(v.to_local() if isinstance(v, DTensor) else v)
                    if isinstance(v, DTensor):
                        z = DTensor.from_local(z, v.device_mesh, v.placements,
                                               shape=v.shape, stride=v.stride())
                    target["model"][k] = z
                else:
                    target["model"][k] = None
            dcp.load(target, storage_reader=FileSystemReader(path))
            ok = all(
                tensor_bytes(target["model"][k].to_local() if isinstance(v, DTensor) else target["model"][k])
                == tensor_bytes(v.to_local() if isinstance(v, DTensor) else v)
                for k, v in sd["model"].items() if isinstance(v, torch.Tensor)
            )
            ok_t = torch.tensor([1 if ok else 0])
            dist.all_reduce(ok_t, op=dist.ReduceOp.MIN)
            if rank == 0 and results[case] == "OK" and ok_t.item() != 1:
                results[case] = "FAIL distributed dcp.load mismatch"
        dist.barrier()

    if rank == 0:
        manifest["elapsed_s"] = round(time.time() - t0, 2)
        with open(os.path.join(outdir, "manifest.json"), "w") as f:
            json.dump(manifest, f, indent=1)
        for case in cases:
            print(f"{case:16s} world={world} {results.get(case, '?')}", flush=True)
        skipped = manifest["cases"].get("dtypes", {}).get("skipped_dtypes", [])
        if skipped:
            print("  dtypes skipped: " + ", ".join(s.split(" ")[0] for s in skipped))
        print(f"total {time.time() - t0:.2f}s", flush=True)
    ok = all(r.startswith(("OK", "SKIP", "written")) for r in results.values())
    dist.barrier()
    dist.destroy_process_group()
    return 0 if (rank != 0 or ok) else 1


if __name__ == "__main__":
    sys.exit(main())
