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


def write_with_h5py(path, shards, version=1, packed=False, block_bytes=None, big_endian=False):
    """shards: list of lists of (key, global_shape, offset, chunk_tensor). Follows FORMAT.md:
    version 2 with `packed` puts every chunk into /packed/0; `block_bytes` adds block checksums;
    `big_endian` stores datasets of their own big-endian (h5py's `>f4` etc.)."""
    os.makedirs(path)
    names = []
    for s, rows in enumerate(shards):
        name = f"shard-{s:05d}-of-{len(shards):05d}.h5"
        names.append(name)
        cols = {c: [] for c in ("key", "dtype", "ndim", "global_shape", "offset", "shape",
                                "dataset", "nbytes", "checksum", "data_offset", "blocks")}
        with h5py.File(os.path.join(path, name), "w") as f:
            f.attrs["format"] = "shardload"
            f.attrs["format_version"] = np.int64(version)
            pack = bytearray()
            for i, (key, gshape, offset, t) in enumerate(rows):
                a = to_numpy(t)
                b = a.tobytes()
                if packed:
                    cols["dataset"].append("/packed/0")
                    cols["data_offset"].append(len(pack))
                    pack += b
                else:
                    stored = a.astype(a.dtype.newbyteorder(">")) if big_endian else a
                    f.create_dataset(f"data/{i}", data=stored)
                    cols["dataset"].append(f"/data/{i}")
                    cols["data_offset"].append(0)
                cols["key"].append(key)
                cols["dtype"].append(dtype_name(t))
                cols["ndim"].append(len(gshape))
                cols["global_shape"] += list(gshape)
                cols["offset"] += list(offset)
                cols["shape"] += list(t.shape)
                cols["nbytes"].append(a.nbytes)
                cols["checksum"].append(xxhash.xxh3_64_intdigest(b))
                if block_bytes:
                    cols["blocks"] += [xxhash.xxh3_64_intdigest(b[j:j + block_bytes])
                                       for j in range(0, len(b), block_bytes)]
            if packed:
                f.create_dataset("packed/0", data=np.frombuffer(bytes(pack), np.uint8))
            g = f.create_group("index")
            for c in ("key", "dtype", "dataset"):
                g.create_dataset(c, data=cols[c], dtype=h5py.string_dtype())
            for c in ("ndim", "global_shape", "offset", "shape"):
                g[c] = np.array(cols[c], dtype=np.int64)
            for c in ("nbytes", "checksum"):
                g[c] = np.array(cols[c], dtype=np.uint64)
            if version >= 2:
                g["data_offset"] = np.array(cols["data_offset"], dtype=np.uint64)
            if block_bytes:
                g.attrs["block_bytes"] = np.int64(block_bytes)
                g["block_checksums"] = np.array(cols["blocks"], dtype=np.uint64)
    with h5py.File(os.path.join(path, "manifest.h5"), "w") as m:
        m.attrs["format"] = "shardload"
        m.attrs["format_version"] = np.int64(version)
        m.create_dataset("shards", data=names, dtype=h5py.string_dtype())


NP_DTYPE = {"float64": np.float64, "float32": np.float32, "float16": np.float16,
            "bfloat16": np.uint16, "int64": np.int64, "int32": np.int32, "int16": np.int16,
            "int8": np.int8, "uint8": np.uint8, "bool": np.bool_}


def read_with_h5py(path):
    """Assembles every tensor of a checkpoint (version 1 or 2) with h5py and numpy alone, following
    FORMAT.md's recipe, checking chunk checksums and block checksums. Returns (tensors, number of
    bad checksums, number of block checksums checked)."""
    out = {}
    with h5py.File(os.path.join(path, "manifest.h5"), "r") as m:
        assert m.attrs["format"] == "shardload" and int(m.attrs["format_version"]) in (1, 2)
        shards = [s.decode() if isinstance(s, bytes) else s for s in m["shards"][()]]
    bad_sums = blocks_checked = 0
    for name in shards:
        with h5py.File(os.path.join(path, name), "r") as f:
            g = f["index"]
            keys = [k.decode() for k in g["key"][()]]
            dtypes = [d.decode() for d in g["dtype"][()]]
            ndim, gs, off, sh = (g[c][()] for c in ("ndim", "global_shape", "offset", "shape"))
            datasets = [d.decode() for d in g["dataset"][()]]
            sums, nbytes = g["checksum"][()], g["nbytes"][()]
            data_offset = g["data_offset"][()] if "data_offset" in g else np.zeros(len(keys), int)
            bb = int(g.attrs["block_bytes"]) if "block_bytes" in g.attrs else 0
            blocks = list(g["block_checksums"][()]) if bb else []
            pos = 0
            for i, key in enumerate(keys):
                d = int(ndim[i])
                gshape, offset, shape = (tuple(int(x) for x in c[pos:pos + d]) for c in (gs, off, sh))
                pos += d
                ds, do, n, dt = f[datasets[i]], int(data_offset[i]), int(nbytes[i]), NP_DTYPE[dtypes[i]]
                if ds.dtype == np.uint8 and ds.ndim == 1 and (ds.shape != shape or do):
                    a = np.frombuffer(ds[do:do + n].tobytes(), dt).reshape(shape)
                else:
                    a = np.asarray(ds[()], dtype=dt).reshape(shape)
                raw = np.ascontiguousarray(a).astype(a.dtype.newbyteorder("<")).tobytes()
                if xxhash.xxh3_64_intdigest(raw) != int(sums[i]):
                    bad_sums += 1
                for j in range(0, len(raw), bb or 1) if bb else ():
                    if xxhash.xxh3_64_intdigest(raw[j:j + bb]) != int(blocks.pop(0)):
                        bad_sums += 1
                    blocks_checked += 1
                if key not in out:
                    out[key] = (dtypes[i], np.zeros(gshape, dtype=dt))
                region = tuple(slice(o, o + s) for o, s in zip(offset, shape))
                out[key][1][region] = a
    tensors = {}
    for key, (dt, a) in out.items():
        t = torch.from_numpy(np.array(a, copy=True, order="C"))  # keeps 0-d shapes
        tensors[key] = t.view(torch.bfloat16) if dt == "bfloat16" else t
    return tensors, bad_sums, blocks_checked


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

    # 1. h5py writes (tensor "split" across two files in two chunks), shardload reads: format
    #    version 1 as before, with block checksums, big-endian; version 2 packed.
    split = torch.arange(30, dtype=torch.float32).reshape(5, 6)
    rows0 = [(k, tuple(t.shape), (0,) * t.dim(), t) for k, t in list(tensors.items())[::2]]
    rows1 = [(k, tuple(t.shape), (0,) * t.dim(), t) for k, t in list(tensors.items())[1::2]]
    rows0.append(("split", (5, 6), (0, 0), split[:2]))
    rows1.append(("split", (5, 6), (2, 0), split[2:]))
    expect = dict(tensors, split=split)
    variants = {"v1": {}, "v1_blocks": {"block_bytes": 64}, "v1_big_endian": {"big_endian": True},
                "v2_packed": {"version": 2, "packed": True},
                "v2_packed_blocks": {"version": 2, "packed": True, "block_bytes": 64}}
    for variant, kw in variants.items():
        ckpt = os.path.join(tmp, "from_h5py_" + variant)
        write_with_h5py(ckpt, [rows0, rows1], **kw)
        r = run("verify", ckpt)
        check(r.returncode == 0, f"{variant}: verify of an h5py-written checkpoint: {r.stderr}")
        r = run("inspect", ckpt, "--json")
        info = json.loads(r.stdout) if r.returncode == 0 else {"tensors": []}
        shapes = {t["key"]: t["shape"] for t in info["tensors"]}
        check(shapes.get("split") == [5, 6], f"{variant}: inspect shows the split tensor's shape")
        check(len(shapes) == len(tensors) + 1, f"{variant}: inspect lists every key")
        splits = [t for t in info["tensors"] if t["key"] == "split"]
        check(bool(splits) and [c["offset"] for c in splits[0]["chunks"]] == [[0, 0], [2, 0]],
              f"{variant}: inspect shows each chunk's offset")
        out = os.path.join(tmp, f"from_h5py_{variant}.pt")
        r = run("convert", ckpt, out)
        check(r.returncode == 0, f"{variant}: convert h5py checkpoint to .pt: {r.stderr}")
        if r.returncode == 0:
            back = torch.load(out, weights_only=True)
            check(set(back) == set(expect), f"{variant}: all keys come back")
            for k, t in expect.items():
                check(k in back and same(back[k], t), f"{variant}: value of {k!r}")
        read, bad, _ = read_with_h5py(ckpt)
        check(bad == 0 and all(same(read[k], t) for k, t in expect.items()),
              f"{variant}: the FORMAT.md recipe reads the h5py-written checkpoint back")
        if variant in ("v1_big_endian", "v2_packed"):
            # A load at 2 ranks with resharding: hyperslabs of h5py-written chunks, verified.
            src = os.path.join(tmp, "expect.pt")
            torch.save(expect, src)
            out = os.path.join(tmp, f"loaded_{variant}.pt")
            r = subprocess.run([os.environ.get("MPIRUN", "mpirun"), "-np", "2", "--oversubscribe",
                                BIN, "load", ckpt, "--into", src, "--split", "split|t\\.=1",
                                "--out", out], capture_output=True, text=True, timeout=300,
                               env=dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1",
                                        OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1"))
            check(r.returncode == 0, f"{variant}: 2-rank load with --split: {r.stderr[-800:]}")
            if r.returncode == 0:
                back = torch.load(out, weights_only=True)
                for k, t in expect.items():
                    check(k in back and same(back[k], t), f"{variant}: 2-rank load of {k!r}")

    # 2. shardload writes (3 shards, format v2: packed small chunks, block checksums), h5py
    #    reads with FORMAT.md's recipe, checksums and block checksums included.
    big = {"big.weight": torch.randn(600, 700, generator=torch.Generator().manual_seed(5))}
    src = os.path.join(tmp, "src.pt")
    torch.save(dict(tensors, **big), src)
    ours = os.path.join(tmp, "ours")
    r = run("convert", src, ours, "--shards", "3")
    check(r.returncode == 0, f"convert .pt to a 3-shard checkpoint: {r.stderr}")
    if r.returncode == 0:
        read, bad, blocks = read_with_h5py(ours)
        check(bad == 0, "every checksum and block checksum matches xxh3_64 computed in Python")
        expect_blocks = sum(-(-t.nbytes // (1 << 20)) for t in dict(tensors, **big).values())
        check(blocks == expect_blocks, f"block checksums checked: {blocks} of {expect_blocks}")
        for k, t in dict(tensors, **big).items():
            check(k in read and same(read[k], t), f"h5py reads {k!r} bit for bit")
        packed = own = 0
        for name in sorted(os.listdir(ours)):
            if not name.startswith("shard-"):
                continue
            with h5py.File(os.path.join(ours, name), "r") as f:
                check(int(f.attrs["format_version"]) == 2, f"{name} is format version 2")
                for d in f["index"]["dataset"][()]:
                    ds = f[d.decode()]
                    check(ds.compression is None and ds.chunks is None,
                          "data is contiguous, unfiltered")
                    packed += d.decode().startswith("/packed/")
                    own += d.decode().startswith("/data/")
        check(packed >= len(tensors) and own == 1,
              f"small chunks are packed, the large one has its own dataset ({packed}, {own})")

    # 3. Bad inputs: a wrong checksum names file and key; a block that lies names its byte
    #    range; a directory without manifest is no checkpoint; an unknown version is refused.
    bad = os.path.join(tmp, "bad_sum")
    write_with_h5py(bad, [[("w", (3,), (0,), torch.ones(3))]])
    with h5py.File(os.path.join(bad, "shard-00000-of-00001.h5"), "r+") as f:
        f["index"]["checksum"][0] = np.uint64(12345)
    r = run("verify", bad)
    check(r.returncode == 3 and "key 'w'" in r.stderr and "shard-00000-of-00001.h5" in r.stderr,
          f"verify names file and key of a bad checksum (rc {r.returncode}): {r.stderr}")
    blocks = os.path.join(tmp, "bad_block")
    write_with_h5py(blocks, [[("w", (64,), (0,), torch.arange(64.0))]], block_bytes=64)
    with h5py.File(os.path.join(blocks, "shard-00000-of-00001.h5"), "r+") as f:
        f["data/0"][20] = 7.5  # bytes 80..84: block 1
    r = run("verify", blocks)
    check(r.returncode == 3 and "bytes [64, 128)" in r.stderr and "key 'w'" in r.stderr,
          f"verify names the byte range of a corrupt block: {r.stderr}")
    os.remove(os.path.join(bad, "manifest.h5"))
    r = run("inspect", bad)
    check(r.returncode == 3 and bad in r.stderr, f"no manifest: exit 3 naming the path: {r.stderr}")
    v3 = os.path.join(tmp, "v3")
    write_with_h5py(v3, [[("w", (3,), (0,), torch.ones(3))]])
    with h5py.File(os.path.join(v3, "manifest.h5"), "r+") as m:
        m.attrs["format_version"] = np.int64(3)
    r = run("inspect", v3)
    check(r.returncode == 3 and "version 3" in r.stderr, f"unknown version refused: {r.stderr}")

    print(f"{RESULTS['passed']} passed, {RESULTS['failed']} failed")
    return 1 if RESULTS["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
