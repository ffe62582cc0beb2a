"""Writes the seed corpus of fuzz_shard_file (tests/fuzz/corpus/fuzz_shard_file/): small shard
files and a manifest as docs/FORMAT.md describes them — version 1 with datasets of their own,
version 2 packed with block checksums, a big-endian and a bool chunk. Usage: python3 make_shard_seeds.py"""
import os

import h5py
import numpy as np
import xxhash

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus", "fuzz_shard_file")


def shard(path, rows, version, packed, block_bytes):
    cols = {c: [] for c in ("key", "dtype", "ndim", "global_shape", "offset", "shape", "dataset",
                            "nbytes", "checksum", "data_offset")}
    blocks, pack = [], bytearray()
    with h5py.File(path, "w") as f:
        f.attrs["format"] = "shardload"
        f.attrs["format_version"] = np.int64(version)
        for i, (key, dtype, a, stored) in enumerate(rows):
            raw = a.tobytes()
            if packed:
                cols["dataset"].append("/packed/0")
                cols["data_offset"].append(len(pack))
                pack += raw
            else:
                f.create_dataset(f"data/{i}", data=stored)
                cols["dataset"].append(f"/data/{i}")
                cols["data_offset"].append(0)
            cols["key"].append(key)
            cols["dtype"].append(dtype)
            cols["ndim"].append(a.ndim)
            cols["global_shape"] += list(a.shape)
            cols["offset"] += [0] * a.ndim
            cols["shape"] += list(a.shape)
            cols["nbytes"].append(len(raw))
            cols["checksum"].append(xxhash.xxh3_64_intdigest(raw))
            if block_bytes:
                blocks += [xxhash.xxh3_64_intdigest(raw[j:j + block_bytes])
                           for j in range(0, len(raw), block_bytes)]
        if packed:
            f.create_dataset("packed/0", data=np.frombuffer(bytes(pack), np.uint8))
        g = f.create_group("index")
        for c in ("key", "dtype", "dataset"):
            g.create_dataset(c, data=cols[c], dtype=h5py.string_dtype())
        for c in ("ndim", "global_shape", "offset", "shape"):
            g[c] = np.array(cols[c], np.int64)
        for c in ("nbytes", "checksum"):
            g[c] = np.array(cols[c], np.uint64)
        if version >= 2:
            g["data_offset"] = np.array(cols["data_offset"], np.uint64)
        if block_bytes:
            g.attrs["block_bytes"] = np.int64(block_bytes)
            g["block_checksums"] = np.array(blocks, np.uint64)


def main():
    os.makedirs(OUT, exist_ok=True)
    w = np.arange(24, dtype=np.float32).reshape(6, 4)
    b = np.array([True, False, True])
    s = np.array(7, dtype=np.int64)
    rows = [("w", "float32", w, w), ("flags", "bool", b, b), ("step", "int64", s, s)]
    shard(os.path.join(OUT, "v1_datasets.h5"), rows, 1, False, 0)
    shard(os.path.join(OUT, "v2_packed_blocks.h5"), rows, 2, True, 64)
    big_endian = [("w", "float32", w, w.astype(">f4")), ("step", "int64", s, s.astype(">i8"))]
    shard(os.path.join(OUT, "v1_big_endian_blocks.h5"), big_endian, 1, False, 64)
    with h5py.File(os.path.join(OUT, "manifest.h5"), "w") as m:
        m.attrs["format"] = "shardload"
        m.attrs["format_version"] = np.int64(2)
        m.attrs["num_ranks"] = np.int64(2)
        m.create_dataset("shards", data=["shard-00000-of-00002.h5", "shard-00001-of-00002.h5"],
                         dtype=h5py.string_dtype())
        m["shard_chunks"] = np.array([3, 2], np.int64)
        meta = m.create_group("metadata")
        meta.create_dataset("keys", data=["step"], dtype=h5py.string_dtype())
        meta.create_dataset("values", data=["100"], dtype=h5py.string_dtype())


if __name__ == "__main__":
    main()
