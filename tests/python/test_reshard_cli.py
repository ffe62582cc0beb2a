"""Resharding from the command line: a checkpoint saved in one layout is loaded by Q ranks with a
new --split and written out (--out DIR) in the new layout; `inspect` shows the new chunks;
`convert --shards N` rewrites a checkpoint into N files; values stay bit for bit.
Run by CTest with SHARDLOAD_BIN set; python3 with torch.
"""
import json
import os
import subprocess
import sys
import tempfile

import torch

BIN = os.environ.get("SHARDLOAD_BIN", "build/shardload")
ENV = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
           OMPI_MCA_rmaps_base_oversubscribe="1")
RESULTS = {"passed": 0, "failed": 0}


def check(cond, what):
    RESULTS["passed" if cond else "failed"] += 1
    if not cond:
        print(f"FAILED: {what}", file=sys.stderr)


def run(*args, ranks=None):
    cmd = [BIN, *args] if ranks is None else ["mpirun", "-np", str(ranks), "--oversubscribe", BIN, *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=ENV)


def same(a, b):
    return a.dtype == b.dtype and a.shape == b.shape and torch.equal(
        a.contiguous().reshape(-1).view(torch.uint8), b.contiguous().reshape(-1).view(torch.uint8))


def chunks(ckpt):
    r = run("inspect", ckpt, "--json")
    if r.returncode != 0:
        return {}
    return {t["key"]: [(c["offset"], c["shape"]) for c in t["chunks"]]
            for t in json.loads(r.stdout)["tensors"]}


def main():
    tmp = tempfile.mkdtemp(prefix="shardload-reshard-")
    g = torch.Generator().manual_seed(5)
    sd = {"attn.qkv.weight": torch.randn(7, 6, generator=g),
          "mlp.fc1.weight": torch.randn(9, 4, generator=g).to(torch.bfloat16),
          "norm.weight": torch.randn(6, generator=g)}
    src = os.path.join(tmp, "src.pt")
    torch.save(sd, src)

    # Saved by 3 "ranks" (3 shard files), every tensor whole.
    ckpt3 = os.path.join(tmp, "ckpt3")
    r = run("convert", src, ckpt3, "--shards", "3")
    check(r.returncode == 0 and len([f for f in os.listdir(ckpt3) if f.startswith("shard-")]) == 3,
          f"convert --shards 3: {r.stderr}")

    # Loaded by 2 ranks, qkv split on dim 0 and fc1 on dim 1, written out in that layout.
    ckpt2 = os.path.join(tmp, "ckpt2")
    r = run("load", ckpt3, "--into", ckpt3, "--split", r"qkv\.weight$=0", "--split", "fc1=1",
            "--out", ckpt2, "--json", ranks=2)
    j = json.loads(r.stdout) if r.returncode == 0 else {}
    check(r.returncode == 0 and j.get("ok"), f"load --split ... --out DIR: {r.stderr}")
    c = chunks(ckpt2)
    check(c.get("attn.qkv.weight") == [([0, 0], [4, 6]), ([4, 0], [3, 6])],
          f"qkv stored as two dim-0 chunks (7 rows = 4 + 3): {c.get('attn.qkv.weight')}")
    check(c.get("mlp.fc1.weight") == [([0, 0], [9, 2]), ([0, 2], [9, 2])],
          f"fc1 stored as two dim-1 chunks: {c.get('mlp.fc1.weight')}")
    check(c.get("norm.weight") == [([0], [6])], "a replicated tensor is stored once")
    r = run("inspect", ckpt2)
    check(r.returncode == 0 and "chunk [4:7, 0:6]" in r.stdout,
          f"inspect's text lists chunks as slices: {r.stdout}")

    # And back to one rank, whole; values unchanged through both reshardings.
    back = os.path.join(tmp, "back.pt")
    r = run("load", ckpt2, "--into", src, "--out", back, ranks=1)
    check(r.returncode == 0, f"load the resharded checkpoint on 1 rank: {r.stderr}")
    if r.returncode == 0:
        out = torch.load(back, weights_only=True)
        for k, t in sd.items():
            check(k in out and same(out[k], t), f"{k} bit for bit after P=3 -> Q=2 -> Q=1")

    # convert rewrites a checkpoint into N files, any N, keeping values and key order.
    ckpt5 = os.path.join(tmp, "ckpt5")
    r = run("convert", ckpt2, ckpt5, "--shards", "5")
    check(r.returncode == 0 and len([f for f in os.listdir(ckpt5) if f.startswith("shard-")]) == 5,
          f"convert checkpoint -> 5 shards: {r.stderr}")
    r = run("verify", ckpt5)
    check(r.returncode == 0, f"verify the rewritten checkpoint: {r.stderr}")
    out5 = os.path.join(tmp, "out5.safetensors")
    r = run("convert", ckpt5, out5)
    if r.returncode == 0:
        from safetensors.torch import load_file
        got = load_file(out5)
        check(list(got) == sorted(sd) or set(got) == set(sd), "all keys in the safetensors file")
        for k, t in sd.items():
            check(k in got and same(got[k], t), f"{k} bit for bit through 5 shards")
    else:
        check(False, f"convert to safetensors: {r.stderr}")

    # An existing --out is not replaced without --overwrite (exit 2, naming it).
    r = run("load", ckpt3, "--into", src, "--out", ckpt2, ranks=2)
    check(r.returncode == 2 and ckpt2 in r.stderr, f"--out exists: exit 2 naming it: {r.stderr}")
    # A bad --split is a usage error on every rank, not a hang.
    r = run("load", ckpt3, "--into", src, "--split", "qkv=7", ranks=2)
    check(r.returncode == 2 and "qkv" in r.stderr, f"split dim out of range: exit 2: {r.stderr}")

    print(f"{RESULTS['passed']} passed, {RESULTS['failed']} failed")
    return 1 if RESULTS["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
