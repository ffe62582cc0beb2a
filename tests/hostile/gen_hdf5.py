"""Crafted checkpoints against docs/FORMAT.md, written with h5py and plain Python: attributes of
the wrong kind or size, columns that declare more rows than they store, shapes and byte counts that
overflow or lie, packed chunks out of bounds, overlapping chunks, huge indexes, chunk data that
lives elsewhere (external storage, external and soft links, virtual datasets) or is not plain
(compact, chunked+gzip, odd precision), bool bytes that are not 0/1, checksums that lie, shard
lists that leave the directory. Each must be refused with exit 3 naming the file.

The checkpoints hold the runner's good state dict (layer.weight, layer.bias, step) so that a load
into the good model gets past the verdict and meets the crafted part."""
import os

import h5py
import numpy as np
import xxhash

from run_hostile import Case

SHARD = "shard-00000-of-00001.h5"
# What meets the crafted part: the manifest or an index is read by every command (inspect here);
# a chunk's bytes only by reads (verify). A representative set also goes through a load at 1 and
# 2 ranks (LOAD: the error on every rank, nothing hanging) and `load --into CKPT` (INTO:
# read_checkpoint, as `convert` reads). Every run costs a process start (about 2 s with mpirun),
# so each case runs what reaches its crafted part, not every command.
ALL = ("inspect",)
DATA = ("verify",)
LOAD = ("load",)
INTO = ("load_into",)


def good_rows(good):
    """(key, global_shape, offset, array) of the runner's good state dict, whole tensors."""
    return [(k, tuple(t.shape), (0,) * t.dim(), t.contiguous().numpy()) for k, t in
            good.state_dict.items()]


def put(g, name, value):
    """Replaces (or adds) dataset `name` of group `g`."""
    if name in g:
        del g[name]
    g[name] = value


def strings(values):
    """A 1-D array of variable-length UTF-8 strings, as h5py's string_dtype() writes them."""
    return np.array(values, dtype=h5py.string_dtype())


def set_attr(obj, name, value):
    if name in obj.attrs:
        del obj.attrs[name]
    obj.attrs[name] = value


def write(path, good, *, version=2, layout="typed", block_bytes=64, rows=None, data_hook=None,
          index_hook=None, shard_hook=None, manifest_hook=None):
    """Writes a one-shard checkpoint per FORMAT.md: `layout` "typed" gives every chunk a dataset of
    its own (/data/i), "packed" puts them back to back into /packed/0 (format v2). Hooks change
    it before it is closed: data_hook(f, name, array, i) creates a chunk's dataset;
    index_hook(f, g), shard_hook(f), manifest_hook(m)."""
    os.makedirs(path)
    rows = rows if rows is not None else good_rows(good)
    cols = {c: [] for c in ("key", "dtype", "ndim", "global_shape", "offset", "shape", "dataset",
                            "nbytes", "checksum", "order", "data_offset")}
    blocks = []
    with h5py.File(os.path.join(path, SHARD), "w", libver=("v110", "v110")) as f:
        f.attrs["format"] = "shardload"
        f.attrs["format_version"] = np.int64(version)
        pack = bytearray()
        for i, (key, gshape, offset, a) in enumerate(rows):
            raw = np.ascontiguousarray(a).astype(a.dtype.newbyteorder("<")).tobytes()
            if layout == "packed":
                name = "/packed/0"
                cols["data_offset"].append(len(pack))
                pack += raw
            else:
                name = f"/data/{i}"
                cols["data_offset"].append(0)
                (data_hook or (lambda f, n, a, i: f.create_dataset(n, data=a)))(f, name, a, i)
            cols["key"].append(key)
            cols["dtype"].append("bool" if a.dtype == np.bool_ else str(a.dtype))
            cols["ndim"].append(len(gshape))
            cols["global_shape"] += list(gshape)
            cols["offset"] += list(offset)
            cols["shape"] += list(a.shape)
            cols["dataset"].append(name)
            cols["nbytes"].append(len(raw))
            cols["checksum"].append(xxhash.xxh3_64_intdigest(raw))
            cols["order"].append(i)
            if block_bytes:
                blocks += [xxhash.xxh3_64_intdigest(raw[j:j + block_bytes])
                           for j in range(0, len(raw), block_bytes)]
        if layout == "packed":
            f.create_dataset("packed/0", data=np.frombuffer(bytes(pack), np.uint8))
        g = f.create_group("index")
        for c in ("key", "dtype", "dataset"):
            g.create_dataset(c, data=cols[c], dtype=h5py.string_dtype())
        for c in ("ndim", "global_shape", "offset", "shape", "order"):
            g[c] = np.array(cols[c], dtype=np.int64)
        for c in ("nbytes", "checksum"):
            g[c] = np.array(cols[c], dtype=np.uint64)
        if version >= 2:
            g["data_offset"] = np.array(cols["data_offset"], dtype=np.uint64)
        if block_bytes:
            g.attrs["block_bytes"] = np.int64(block_bytes)
            g["block_checksums"] = np.array(blocks, dtype=np.uint64)
        if index_hook:
            index_hook(f, g)
        if shard_hook:
            shard_hook(f)
    with h5py.File(os.path.join(path, "manifest.h5"), "w", libver=("v110", "v110")) as m:
        m.attrs["format"] = "shardload"
        m.attrs["format_version"] = np.int64(version)
        m["shards"] = strings([SHARD])
        m["shard_chunks"] = np.array([len(rows)], dtype=np.int64)
        if manifest_hook:
            manifest_hook(m)
    return path


def flip_data_byte(path, key_index, byte, good):
    """Flips one byte of a chunk's data in the shard file, found with h5py (dataset offset)."""
    shard = os.path.join(path, SHARD)
    with h5py.File(shard, "r") as f:
        g = f["index"]
        ds = f[g["dataset"][key_index].decode()]
        pos = ds.id.get_offset() + (int(g["data_offset"][key_index]) if "data_offset" in g else 0)
    with open(shard, "r+b") as fh:
        fh.seek(pos + byte)
        b = fh.read(1)
        fh.seek(pos + byte)
        fh.write(bytes([b[0] ^ 0x20]))


def low_level_dataset(f, name, array, *, layout=None, precision=None):
    """A dataset made with h5py's low-level API: a chosen layout or integer precision."""
    tid = h5py.h5t.py_create(array.dtype).copy()
    if precision:
        tid.set_precision(precision)
    space = h5py.h5s.create_simple(array.shape) if array.shape else h5py.h5s.create(h5py.h5s.SCALAR)
    dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
    if layout is not None:
        dcpl.set_layout(layout)
    parent = f.require_group(os.path.dirname(name))
    dsid = h5py.h5d.create(parent.id, os.path.basename(name).encode(), tid, space, dcpl=dcpl)
    dsid.write(h5py.h5s.ALL, h5py.h5s.ALL, np.ascontiguousarray(array), mtype=tid)


def cases(workdir, good):
    out = []

    def case(name, ops, named, **kw):
        path = os.path.join(workdir, name)
        write(path, good, **kw)
        out.append(Case("hdf5 " + name.replace("_", " "), path, ops, named))
        return path

    # ---- manifest.h5: attributes and lists ---------------------------------------------------
    case("manifest_format_array", ALL + LOAD, "manifest.h5", manifest_hook=lambda m: set_attr(
        m, "format", np.array(["shardload"] * 50, dtype=h5py.string_dtype())))
    case("manifest_version_many_values", ALL + INTO + LOAD, "manifest.h5",
         manifest_hook=lambda m: set_attr(m, "format_version", np.arange(500, dtype=np.int64)))
    case("manifest_version_float", ALL, "manifest.h5",
         manifest_hook=lambda m: set_attr(m, "format_version", np.float64(2.0)))
    case("manifest_version_99", ALL, "manifest.h5",
         manifest_hook=lambda m: set_attr(m, "format_version", np.int64(99)))
    case("manifest_format_huge_string", ALL, "manifest.h5",
         manifest_hook=lambda m: set_attr(m, "format", "shardload" + "x" * (1 << 20)))
    case("manifest_shard_dotdot", ALL + LOAD, "manifest.h5", manifest_hook=lambda m: put(
        m, "shards", strings(["../" + SHARD])))
    case("manifest_shard_twice", ALL, "manifest.h5", manifest_hook=lambda m: (
        put(m, "shards", strings([SHARD, SHARD])),
        put(m, "shard_chunks", np.array([3, 3], np.int64))))

    def huge_shard_list(m):
        del m["shards"]
        m.create_dataset("shards", shape=(10 ** 12,), dtype=h5py.string_dtype())
    case("manifest_shards_declares_1e12_rows", ALL, "manifest.h5", manifest_hook=huge_shard_list)

    def unstored_shard_list(m):
        del m["shards"]
        m.create_dataset("shards", shape=(1_000_000,), dtype=h5py.string_dtype())
    case("manifest_shards_not_stored", ALL + LOAD, "manifest.h5", manifest_hook=unstored_shard_list)
    case("manifest_shards_are_ints", ALL, "manifest.h5",
         manifest_hook=lambda m: put(m, "shards", np.arange(3, dtype=np.int64)))
    case("manifest_shards_2d", ALL, "manifest.h5", manifest_hook=lambda m: put(
        m, "shards", strings([[SHARD]])))
    case("manifest_shard_chunks_wrong_length", ALL, "manifest.h5",
         manifest_hook=lambda m: put(m, "shard_chunks", np.array([3, 4, 5], np.int64)))

    # HDF5 1.10 trusts its global heap (found by fuzz_shard_file): a collection whose first object
    # is free space of size 0 makes it loop forever; a string whose heap object is larger than
    # the string makes it copy out of bounds (SIGSEGV). Both must be refused before HDF5 reads.
    def patch_heap(path, name, index, size):
        with open(os.path.join(path, name), "r+b") as fh:
            data = bytearray(fh.read())
            at = data.find(b"GCOL")
            data[at + 16:at + 18] = index.to_bytes(2, "little")
            data[at + 24:at + 32] = size.to_bytes(8, "little")
            fh.seek(0)
            fh.write(data)
    p = case("manifest_global_heap_loops_hdf5", ALL + LOAD, "manifest.h5")
    patch_heap(p, "manifest.h5", 0, 0)
    p = case("manifest_heap_object_past_its_collection", ALL, "manifest.h5")
    patch_heap(p, "manifest.h5", 1, 1 << 40)
    p = case("shard_heap_object_longer_than_its_string", ALL, SHARD)
    patch_heap(p, SHARD, 1, 4000)

    # The index's key strings each in a collection of its own, the collections 64 bytes apart
    # and each reaching to the end of 1 MiB of padding: every string is well formed, but the
    # collections overlap, and a reader that kept each one would hold rows x 1 MiB.
    def overlapping_heaps(path):
        name = os.path.join(path, SHARD)
        with h5py.File(name, "r") as f:
            at = f["index/key"].id.get_offset()
            keys = list(f["index/key"][()])  # bytes
        with open(name, "r+b") as fh:
            data = bytearray(fh.read())
            base = (len(data) + 7) // 8 * 8
            end = base + 64 * len(keys) + (1 << 20)
            data += bytes(end - len(data))
            for i, key in enumerate(keys):
                addr = base + 64 * i
                size = end - addr
                obj = (1).to_bytes(2, "little") + bytes(6) + len(key).to_bytes(8, "little") + \
                    key.ljust((len(key) + 7) // 8 * 8, b"\0")
                free = bytes(8) + (size - 16 - len(obj)).to_bytes(8, "little")
                head = b"GCOL\x01\0\0\0" + size.to_bytes(8, "little") + obj + free
                assert len(head) <= 64
                data[addr:addr + len(head)] = head
                data[at + 16 * i:at + 16 * i + 16] = len(key).to_bytes(4, "little") + \
                    addr.to_bytes(8, "little") + (1).to_bytes(4, "little")
            fh.seek(0)
            fh.write(data)
    p = case("shard_heap_collections_overlap", ALL + LOAD, SHARD)
    overlapping_heaps(p)

    def huge_metadata(m):
        meta = m.create_group("metadata")
        meta.create_dataset("keys", shape=(10 ** 9,), dtype=h5py.string_dtype())
        meta.create_dataset("values", shape=(10 ** 9,), dtype=h5py.string_dtype())
    case("manifest_metadata_declares_1e9_rows", ALL, "manifest.h5", manifest_hook=huge_metadata)

    # ---- shard file: attributes ---------------------------------------------------------------
    case("shard_format_array", ALL + INTO + LOAD, SHARD, shard_hook=lambda f: set_attr(
        f, "format", np.array(["shardload"] * 50, dtype=h5py.string_dtype())))
    case("shard_version_many_values", ALL, SHARD,
         shard_hook=lambda f: set_attr(f, "format_version", np.arange(500, dtype=np.int64)))
    case("shard_version_is_a_string", ALL, SHARD,
         shard_hook=lambda f: set_attr(f, "format_version", "2"))

    # ---- the index ------------------------------------------------------------------------------
    def unstored_keys(f, g):
        del g["key"]
        g.create_dataset("key", shape=(4_000_000,), dtype=h5py.string_dtype())
    case("index_key_column_not_stored", ALL + LOAD, SHARD, index_hook=unstored_keys)

    def huge_keys(f, g):
        del g["key"]
        g.create_dataset("key", shape=(10 ** 12,), dtype=h5py.string_dtype())
    case("index_key_column_declares_1e12_rows", ALL, SHARD, index_hook=huge_keys)

    def partly_stored_nbytes(f, g):
        values = g["nbytes"][()]
        del g["nbytes"]
        d = g.create_dataset("nbytes", shape=(2_000_000,), maxshape=(None,), dtype=np.uint64,
                             chunks=(1024,))
        d[:len(values)] = values
    case("index_nbytes_declares_more_rows_than_stored", ALL, SHARD,
         index_hook=partly_stored_nbytes)
    case("index_column_wrong_length", ALL, SHARD, index_hook=lambda f, g: put(
        g, "dtype", strings(["float32", "float32"])))
    case("index_ndim_huge", ALL, SHARD,
         index_hook=lambda f, g: put(g, "ndim", np.array([10 ** 6, 1, 0], np.int64)))
    case("index_ndim_negative", ALL, SHARD,
         index_hook=lambda f, g: put(g, "ndim", np.array([2, -1, 0], np.int64)))
    case("index_shape_negative", ALL, SHARD,
         index_hook=lambda f, g: put(g, "shape", np.array([8, -4, 8], np.int64)))

    def overflowing_shape(f, g):
        big = 1 << 40
        put(g, "global_shape", np.array([big, big, 8], np.int64))
        put(g, "shape", np.array([big, big, 8], np.int64))
    case("index_shape_overflows_int64", ALL + INTO + LOAD, SHARD, index_hook=overflowing_shape)
    case("index_nbytes_lies", ALL, SHARD,
         index_hook=lambda f, g: put(g, "nbytes", np.array([129, 32, 8], np.uint64)))
    case("index_offset_outside_tensor", ALL, SHARD,
         index_hook=lambda f, g: put(g, "offset", np.array([1, 0, 0], np.int64)))
    case("index_dtype_unknown", ALL, SHARD, index_hook=lambda f, g: put(
        g, "dtype", strings(["float32", "complex64", "int64"])))

    def huge_key_string(f, g):
        keys = [k.decode() for k in g["key"][()]]
        keys[1] = "k" * (1 << 20)
        put(g, "key", strings(keys))
    case("index_key_of_a_megabyte", ALL, SHARD, index_hook=huge_key_string)
    case("index_block_bytes_7", ALL, SHARD,
         index_hook=lambda f, g: set_attr(g, "block_bytes", np.int64(7)))
    case("index_block_checksums_without_block_bytes", ALL, SHARD,
         index_hook=lambda f, g: g.attrs.__delitem__("block_bytes"))
    case("index_block_checksums_wrong_count", ALL, SHARD, index_hook=lambda f, g: put(
        g, "block_checksums", np.array(g["block_checksums"][()][:-1], np.uint64)))
    case("index_data_offset_past_the_file", ALL, SHARD, layout="packed",
         index_hook=lambda f, g: put(g, "data_offset", np.array([0, 128, 1 << 40], np.uint64)))

    def index_as_external_link(f, g):
        with h5py.File(os.path.join(os.path.dirname(f.filename), "elsewhere.h5"), "w") as e:
            f.copy(g, e, "index")
        del f["index"]
        f["index"] = h5py.ExternalLink("elsewhere.h5", "/index")
    case("index_is_an_external_link", ALL, SHARD, index_hook=index_as_external_link)

    # Overlaps: two chunks of layer.bias, then 10^5 chunks of one key with the last overlapping.
    rows = good_rows(good)
    bias = rows[1][3]
    case("index_chunks_overlap", ALL + INTO + LOAD, SHARD,
         rows=rows + [("layer.bias", (8,), (4,), bias[4:])])
    n = 100_000
    many = [("layer.weight", (n,), (i,), np.array([float(i)], np.float32)) for i in range(n)]
    many.append(("layer.weight", (n,), (n - 2,), np.zeros(2, np.float32)))
    case("index_1e5_chunks_of_one_key_overlap", ALL + LOAD, SHARD, layout="packed", block_bytes=0,
         rows=many + rows[1:])

    # ---- chunk data: where it lives and what it is ----------------------------------------------
    def external_storage(f, name, a, i):
        if i != 0:
            return f.create_dataset(name, data=a)
        raw = os.path.join(os.path.dirname(f.filename), "outside.bin")
        with open(raw, "wb") as fh:
            fh.write(a.tobytes())
        f.create_dataset(name, shape=a.shape, dtype=a.dtype, external=[(raw, 0, a.nbytes)])
    case("data_external_storage", DATA + INTO + LOAD, SHARD, data_hook=external_storage)

    def external_link(f, name, a, i):
        if i != 0:
            return f.create_dataset(name, data=a)
        with h5py.File(os.path.join(os.path.dirname(f.filename), "other.h5"), "w") as o:
            o.create_dataset("w", data=a)
        f[name] = h5py.ExternalLink("other.h5", "/w")
    case("data_external_link", DATA + LOAD, SHARD, data_hook=external_link)

    def soft_link(f, name, a, i):
        if i != 0:
            return f.create_dataset(name, data=a)
        f.create_dataset("hidden/w", data=a)
        f[name] = h5py.SoftLink("/hidden/w")
    case("data_soft_link", DATA, SHARD, data_hook=soft_link)

    def virtual(f, name, a, i):
        if i != 0:
            return f.create_dataset(name, data=a)
        f.create_dataset("source/w", data=a)
        layout = h5py.VirtualLayout(shape=a.shape, dtype=a.dtype)
        layout[...] = h5py.VirtualSource(f["source/w"])
        f.create_virtual_dataset(name, layout)
    case("data_virtual_dataset", DATA + INTO + LOAD, SHARD, data_hook=virtual)
    case("data_compact_layout", DATA, SHARD, data_hook=lambda f, name, a, i: low_level_dataset(
        f, name, a, layout=h5py.h5d.COMPACT if i == 0 else None))
    case("data_chunked_gzip", DATA, SHARD, data_hook=lambda f, name, a, i: f.create_dataset(
        name, data=a, chunks=True, compression="gzip") if i == 0 else f.create_dataset(
        name, data=a))
    case("data_never_written", DATA, SHARD, data_hook=lambda f, name, a, i: f.create_dataset(
        name, shape=a.shape, dtype=a.dtype) if i == 0 else f.create_dataset(name, data=a))
    case("data_shape_differs", DATA, SHARD, data_hook=lambda f, name, a, i: f.create_dataset(
        name, data=a.reshape(4, 8) if i == 0 else a))
    case("data_float_where_index_says_int32", DATA, SHARD, rows=[
        (k, s, o, a.view(np.int32) if k == "layer.weight" else a) for k, s, o, a in rows],
        data_hook=lambda f, name, a, i: f.create_dataset(
            name, data=a.view(np.float32) if i == 0 else a))
    int_rows = [(k, s, o, (a * 100).astype(np.int32) if k == "layer.weight" else a)
                for k, s, o, a in rows]
    case("data_int32_with_24_bit_precision", DATA, SHARD, rows=int_rows,
         data_hook=lambda f, name, a, i: low_level_dataset(
             f, name, a, precision=24 if i == 0 else None))
    bools = [(k, s, o, np.array(True) if k == "step" else a) for k, s, o, a in rows]

    def bool_two(f, name, a, i):
        if a.dtype != np.bool_:
            return f.create_dataset(name, data=a)
        f.create_dataset(name, data=np.array(2, np.uint8))
    p = case("data_bool_byte_2", DATA + INTO + LOAD, SHARD, rows=bools, block_bytes=0, data_hook=bool_two)
    with h5py.File(os.path.join(p, SHARD), "r+") as f:  # the checksum of the bytes stored
        f["index"]["checksum"][2] = np.uint64(xxhash.xxh3_64_intdigest(b"\x02"))
    case("data_dataset_path_dotdot", DATA, SHARD, index_hook=lambda f, g: put(
        g, "dataset", strings(["/data/../data/0", "/data/1", "/data/2"])))
    case("data_dataset_path_is_a_group", DATA, SHARD, index_hook=lambda f, g: put(
        g, "dataset", strings(["/data", "/data/1", "/data/2"])))
    case("data_dataset_missing", DATA, SHARD, index_hook=lambda f, g: put(
        g, "dataset", strings(["/nowhere", "/data/1", "/data/2"])))
    case("data_packed_offset_past_the_pack", DATA, SHARD, layout="packed",
         index_hook=lambda f, g: put(g, "data_offset", np.array([0, 128, 200], np.uint64)))
    case("data_packed_in_a_version_1_file", DATA, SHARD, layout="packed", version=1,
         index_hook=lambda f, g: put(g, "data_offset", np.array([0, 128, 160], np.uint64)))

    # ---- checksums that lie -------------------------------------------------------------------
    p = case("data_block_checksum_lies", DATA + INTO + LOAD, SHARD)
    flip_data_byte(p, 0, 70, good)
    p = case("data_corrupt_chunk_without_blocks", DATA + INTO + LOAD, SHARD, block_bytes=0)
    flip_data_byte(p, 0, 127, good)
    p = case("data_corrupt_packed_chunk", DATA + LOAD, SHARD, layout="packed")
    flip_data_byte(p, 1, 3, good)
    case("index_block_checksum_differs_from_chunk_checksum", ALL, SHARD, index_hook=lambda f, g:
         put(g, "block_checksums", np.array(g["block_checksums"][()] ^ np.uint64(1), np.uint64)))
    return out
