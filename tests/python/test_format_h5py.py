"""The format is h5py's too: a checkpoint written with h5py alone, following docs/FORMAT.md, is
read, verified and converted by shardload; a checkpoint shardload wrote is read back with h5py
alone, checksums included. Run by CTest with SHARDLOAD_BIN set; python3 with torch, h5py, xxhash.
"""
import json
import os
import subprocess
import sys
import tempfile

import h5py
import numpy as np
import torch
import xxhash

BIN = os.environ.get("SHARDLOAD_BIN", "build/shardload")
RESULTS = {"passed": 0, "failed": 0}


def check(cond, what):
    if cond:
        RESULTS["passed"] += 1
    else:
        RESULTS["failed"] += 1
        print(f"FAILED: {what}", file=sys.stderr)


def run(*args):
    return subprocess.run([BIN, *args], capture_output=True, text=True, timeout=300)


def to_numpy(t):
    t = t.contiguous()
    return (t.view(torch.uint16) if t.dtype == torch.bfloat16 else t).numpy()


def dtype_name(t):
    return str(t.dtype).removeprefix("torch.")


def write_with_h5py(path, shards):
    """shards: list of lists of (key, global_shape, offset, chunk_tensor)."""
    os.makedirs(path)
    names = []
    for s, rows in enumerate(shards):
        name = f"shard-{s:05d}-of-{len(shards):05d}.h5"
        names.append(name)
        cols = {c: [] for c in ("key", "dtype", "ndim", "global_shape", "offset", "shape",
                                "dataset", "nbytes", "checksum")}
        with h5py.File(os.path.join(path, name), "w") as f:
            f.attrs["format"] = "shardload"
            f.attrs["format_version"] = np.int64(1)
            for i, (key, gshape, offset, t) in enumerate(rows):
                a = to_numpy(t)
                f.create_dataset(f"data/{i}", data=a)
                cols["key"].append(key)
                cols["dtype"].append(dtype_name(t))
                cols["ndim"].append(len(gshape))
                cols["global_shape"] += list(gshape)
                cols["offset"] += list(offset)
                cols["shape"] += list(t.shape)
                cols["dataset"].append(f"/data/{i}")
                cols["nbytes"].append(a.nbytes)
                cols["checksum"].append(xxhash.xxh3_64_intdigest(a.tobytes()))
            s_t = h5py.string_dtype()
            g = f.create_group("index")
            for c in ("key", "dtype", "dataset"):
                g[c] = np.array(cols[c], dtype=object).astype(s_t)
            for c in ("ndim", "global_shape", "offset", "shape"):
                g[c] = np.array(cols[c], dtype=np.int64)
            for c in ("nbytes", "checksum"):
                g[c] = np.array(cols[c], dtype=np.uint64)
    with h5py.File(os.path.join(path, "manifest.h5"), "w") as m:
        m.attrs["format"] = "shardload"
        m.attrs["format_version"] = np.int64(1)
        m["shards"] = np.array(names, dtype=object).astype(h5py.string_dtype())


def read_with_h5py(path):
    """Assembles every tensor of a checkpoint with h5py and numpy alone, checking checksums."""
    out = {}
    with h5py.File(os.path.join(path, "manifest.h5"), "r") as m:
        assert m.attrs["format"] == "shardload" and int(m.attrs["format_version"]) == 1
        shards = [s.decode() if isinstance(s, bytes) else s for s in m["shards"][()]]
    np_dtype = {"float64": np.float64, "float32": np.float32, "float16": np.float16,
                "bfloat16": np.uint16, "int64": np.int64, "int32": np.int32, "int16": np.int16,
                "int8": np.int8, "uint8": np.uint8, "bool": np.bool_}
    bad_sums = 0
    for name in shards:
        with h5py.File(os.path.join(path, name), "r") as f:
            g = f["index"]
            keys = [k.decode() for k in g["key"][()]]
            dtypes = [d.decode() for d in g["dtype"][()]]
            ndim, gs, off, sh = (g[c][()] for c in ("ndim", "global_shape", "offset", "shape"))
            datasets = [d.decode() for d in g["dataset"][()]]
            sums = g["checksum"][()]
            pos = 0
            for i, key in enumerate(keys):
                d = int(ndim[i])
                gshape, offset, shape = (tuple(int(x) for x in c[pos:pos + d]) for c in (gs, off, sh))
                pos += d
                a = np.asarray(f[datasets[i]][()], dtype=np_dtype[dtypes[i]]).reshape(shape)
                if xxhash.xxh3_64_intdigest(np.ascontiguousarray(a).tobytes()) != int(sums[i]):
                    bad_sums += 1
                if key not in out:
                    out[key] = (dtypes[i], np.zeros(gshape, dtype=np_dtype[dtypes[i]]))
                region = tuple(slice(o, o + s) for o, s in zip(offset, shape))
                out[key][1][region] = a
    tensors = {}
    for key, (dt, a) in out.items():
        t = torch.from_numpy(np.array(a, copy=True, order="C"))  # keeps 0-d shapes
        tensors[key] = t.view(torch.bfloat16) if dt == "bfloat16" else t
    return tensors, bad_sums


def same(a, b):
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    a, b = a.contiguous(), b.contiguous()
    return a.numel() == 0 or torch.equal(a.view(torch.uint8) if a.dim() else a.reshape(1).view(torch.uint8),
                                         b.view(torch.uint8) if b.dim() else b.reshape(1).view(torch.uint8))


def tensors_for_test():
    g = torch.Generator().manual_seed(3)
    base = torch.randn(4, 6, generator=g, dtype=torch.float64) * 50
    out = {}
    for dt in (torch.float64, torch.float32, torch.float16, torch.bfloat16, torch.int64,
               torch.int32, torch.int16, torch.int8, torch.uint8, torch.bool):
        name = str(dt).removeprefix("torch.")
        if dt == torch.bool:
            t = base > 0
        elif dt == torch.uint8:
            t = base.abs().remainder(256).to(dt)
        else:
            t = base.to(dt)
        out[f"t.{name}"] = t
        out[f"scalar.{name}"] = t[1, 2].clone()
        out[f"empty.{name}"] = t[:0].clone()
    out["key/with slash"] = torch.arange(5, dtype=torch.float32)
    out["ключ ünïcode.weight"] = torch.ones(2, 2)
    return out


def main():
    tmp = tempfile.mkdtemp(prefix="shardload-h5py-")
    tensors = tensors_for_test()

    # 1. h5py writes (tensor "split" across two files in two chunks), shardload reads.
    split = torch.arange(30, dtype=torch.float32).reshape(5, 6)
    rows0 = [(k, tuple(t.shape), (0,) * t.dim(), t) for k, t in list(tensors.items())[::2]]
    rows1 = [(k, tuple(t.shape), (0,) * t.dim(), t) for k, t in list(tensors.items())[1::2]]
    rows0.append(("split", (5, 6), (0, 0), split[:2]))
    rows1.append(("split", (5, 6), (2, 0), split[2:]))
    ckpt = os.path.join(tmp, "from_h5py")
    write_with_h5py(ckpt, [rows0, rows1])
    r = run("verify", ckpt)
    check(r.returncode == 0, f"verify of an h5py-written checkpoint: {r.stderr}")
    r = run("inspect", ckpt, "--json")
    info = json.loads(r.stdout) if r.returncode == 0 else {"tensors": []}
    shapes = {t["key"]: t["shape"] for t in info["tensors"]}
    check(shapes.get("split") == [5, 6], "inspect shows the split tensor's global shape")
    check(len(shapes) == len(tensors) + 1, "inspect lists every key")
    splits = [t for t in info["tensors"] if t["key"] == "split"]
    check(bool(splits) and [c["offset"] for c in splits[0]["chunks"]] == [[0, 0], [2, 0]],
          "inspect shows each chunk's offset")
    out = os.path.join(tmp, "from_h5py.pt")
    r = run("convert", ckpt, out)
    check(r.returncode == 0, f"convert h5py checkpoint to .pt: {r.stderr}")
    if r.returncode == 0:
        back = torch.load(out, weights_only=True)
        expect = dict(tensors, split=split)
        check(set(back) == set(expect), "all keys come back")
        for k, t in expect.items():
            check(k in back and same(back[k], t), f"value of {k!r} read from an h5py checkpoint")

    # 2. shardload writes (3 shards), h5py reads with checksums.
    src = os.path.join(tmp, "src.pt")
    torch.save(tensors, src)
    ours = os.path.join(tmp, "ours")
    r = run("convert", src, ours, "--shards", "3")
    check(r.returncode == 0, f"convert .pt to a 3-shard checkpoint: {r.stderr}")
    if r.returncode == 0:
        read, bad = read_with_h5py(ours)
        check(bad == 0, "every checksum matches xxh3_64 computed in Python")
        for k, t in tensors.items():
            check(k in read and same(read[k], t), f"h5py reads {k!r} bit for bit")
        with h5py.File(os.path.join(ours, "shard-00000-of-00003.h5"), "r") as f:
            ds = f[f["index"]["dataset"][0].decode()]
            check(ds.compression is None and ds.chunks is None, "data is contiguous, unfiltered")

    # 3. Bad inputs: a wrong checksum names file and key; a directory without manifest is no
    #    checkpoint; a manifest of another format version is refused.
    bad = os.path.join(tmp, "bad_sum")
    write_with_h5py(bad, [[("w", (3,), (0,), torch.ones(3))]])
    with h5py.File(os.path.join(bad, "shard-00000-of-00001.h5"), "r+") as f:
        f["index"]["checksum"][0] = np.uint64(12345)
    r = run("verify", bad)
    check(r.returncode == 3 and "key 'w'" in r.stderr and "shard-00000-of-00001.h5" in r.stderr,
          f"verify names file and key of a bad checksum (rc {r.returncode}): {r.stderr}")
    os.remove(os.path.join(bad, "manifest.h5"))
    r = run("inspect", bad)
    check(r.returncode == 3 and bad in r.stderr, f"no manifest: exit 3 naming the path: {r.stderr}")
    v2 = os.path.join(tmp, "v2")
    write_with_h5py(v2, [[("w", (3,), (0,), torch.ones(3))]])
    with h5py.File(os.path.join(v2, "manifest.h5"), "r+") as m:
        m.attrs["format_version"] = np.int64(2)
    r = run("inspect", v2)
    check(r.returncode == 3 and "version 2" in r.stderr, f"unknown version refused: {r.stderr}")

    print(f"{RESULTS['passed']} passed, {RESULTS['failed']} failed")
    return 1 if RESULTS["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
