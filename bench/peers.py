"""Peer loaders for bench/compare.py, run under `mpirun -np N python3 bench/peers.py ...`:
PyTorch's distributed checkpoint (DCP) and Megatron-LM's classic per-rank checkpoint, on the same state
dict and the same two scenarios as shardload (every rank needs every tensor: `replicated`; the
large tensors split along dim 0 across the ranks: `split`). Prints one JSON line from rank 0:
{"peer", "op", "seconds"} where seconds is the collective operation's wall time (max over ranks),
without process start-up or building the state dict.
"""
import argparse
import json
import os
import sys
import time

import torch
import torch.distributed as dist


def init():
    rank = int(os.environ.get("OMPI_COMM_WORLD_RANK", "0"))
    world = int(os.environ.get("OMPI_COMM_WORLD_SIZE", "1"))
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "29517")
    dist.init_process_group("gloo", rank=rank, world_size=world)
    return rank, world


def is_big(key):
    return key.startswith("big.")


def local_part(t, rank, world):
    """numpy.array_split's part `rank` of dim 0 — the same split shardload's --split uses."""
    n = t.shape[0]
    base, extra = divmod(n, world)
    start = rank * base + min(rank, extra)
    size = base + (1 if rank < extra else 0)
    return t.narrow(0, start, size), start


def dcp_state(ref, scenario, rank, world, zeros):
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import DTensor, Shard
    mesh = init_device_mesh("cpu", (world,)) if scenario == "split" else None
    sd = {}
    for k, t in ref.items():
        t = torch.zeros_like(t) if zeros else t
        if scenario == "split" and is_big(k):
            part, _ = local_part(t, rank, world)
            sd[k] = DTensor.from_local(part.contiguous(), mesh, [Shard(0)], run_check=False,
                                       shape=t.shape, stride=t.stride())
        else:
            sd[k] = t
    return sd


def megatron_state(ref, scenario, rank, world, zeros):
    """This rank's tensors in Megatron's tensor-parallel layout (big.* split along dim 0)."""
    sd = {}
    for k, t in ref.items():
        t = torch.zeros_like(t) if zeros else t
        if scenario == "split" and is_big(k):
            t = local_part(t, rank, world)[0].clone()
        sd[k] = t
    return sd


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("peer", choices=["dcp", "megatron", "torchload"])
    ap.add_argument("op", choices=["save", "load"])
    ap.add_argument("--ref", required=True, help=".pt state dict")
    ap.add_argument("--dir", required=True)
    ap.add_argument("--scenario", choices=["replicated", "split"], default="replicated")
    args = ap.parse_args()
    torch.set_num_threads(1)
    rank, world = init()
    ref = torch.load(args.ref, mmap=True, weights_only=True)
    ref = {k: v.clone() for k, v in ref.items()}
    if args.peer == "torchload":
        # Plain PyTorch: every rank torch.loads the one .pt file (mmap off) and copies its part.
        sd = megatron_state(ref, args.scenario, rank, world, zeros=args.op == "load")
        dist.barrier()
        t0 = time.perf_counter()
        if args.op == "load":
            loaded = torch.load(args.ref, map_location="cpu", weights_only=True)
            with torch.no_grad():
                for k, v in sd.items():
                    src = loaded[k]
                    if args.scenario == "split" and is_big(k):
                        src = local_part(src, rank, world)[0]
                    v.copy_(src)
    elif args.peer == "dcp":
        import torch.distributed.checkpoint as dcp
        sd = dcp_state(ref, args.scenario, rank, world, zeros=args.op == "load")
        dist.barrier()
        t0 = time.perf_counter()
        if args.op == "save":
            dcp.save(sd, checkpoint_id=args.dir)
        else:
            dcp.load(sd, checkpoint_id=args.dir)
    else:
        # Megatron-LM's classic checkpoint: one torch.save file per tensor-parallel rank
        # (mp_rank_XX/model_optim_rng.pt holding {"model": state_dict}); at load every rank
        # torch.loads its own file and copies it into the model (load_state_dict).
        sd = megatron_state(ref, args.scenario, rank, world, zeros=args.op == "load")
        tp_rank = rank if args.scenario == "split" else 0
        name = os.path.join(args.dir, f"mp_rank_{tp_rank:02d}", "model_optim_rng.pt")
        dist.barrier()
        t0 = time.perf_counter()
        if args.op == "save":
            # Every tensor-parallel rank writes its file (split) or rank 0 writes the one file.
            for tp in range(world):
                local = megatron_state(ref, "split", tp, world, zeros=False)
                path = os.path.join(args.dir, f"mp_rank_{tp:02d}", "model_optim_rng.pt")
                if tp == rank:
                    os.makedirs(os.path.dirname(path), exist_ok=True)
                    torch.save({"model": local}, path)
            if rank == 0:
                os.makedirs(os.path.join(args.dir, "replicated", "mp_rank_00"), exist_ok=True)
                torch.save({"model": ref}, os.path.join(args.dir, "replicated", "mp_rank_00",
                                                        "model_optim_rng.pt"))
        else:
            if args.scenario == "replicated":
                name = os.path.join(args.dir, "replicated", "mp_rank_00", "model_optim_rng.pt")
            loaded = torch.load(name, map_location="cpu", weights_only=True)["model"]
            with torch.no_grad():
                for k, v in sd.items():
                    v.copy_(loaded[k])
    dist.barrier()
    secs = torch.tensor([time.perf_counter() - t0], dtype=torch.float64)
    dist.all_reduce(secs, op=dist.ReduceOp.MAX)
    if args.op == "load":
        # Correctness is part of the benchmark: the loaded values must be the reference's.
        wrong = 0
        for k, t in ref.items():
            v = sd[k]
            if hasattr(v, "to_local"):
                v = v.to_local()
            if args.scenario == "split" and is_big(k):
                t, _ = local_part(t, rank, world)
            if not torch.equal(v, t):
                wrong += 1
        w = torch.tensor([wrong])
        dist.all_reduce(w)
        wrong = int(w.item())
    else:
        wrong = 0
    if rank == 0:
        print(json.dumps({"peer": args.peer, "op": args.op, "seconds": secs.item(),
                          "wrong_tensors": wrong}))
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
