"""Crafted torch.distributed.checkpoint (DCP) directories, each derived from a small valid one
that this module writes first with torch's own `dcp.save(..., no_dist=True)`: `.metadata`
pickles that call code, are cut short, empty or not a Metadata; storage entries whose offsets
and lengths overflow, lie or reach past the `__R_N.distcp` file; paths that leave the directory
or name the metadata itself; FIFOs and directories for files; overlapping, missing and outside
chunks; duplicate keys and colliding planner_data paths; huge and overflowing sizes, too many
dims, unknown dtypes; items that are not zips, zip bombs, tensors of another dtype or shape,
code-running data.pkl; zstd transforms; lying safetensors blobs; a Megatron-Core directory
without `.metadata`. Most meet `inspect` (what needs only .metadata) or `verify` (what needs the
items' bytes); a few `load` (singleton and mpirun), `convert` and `diff`.

Besides the Cases (each refused with exit 3), `cases()` runs a few checks of its own with the
built binary, because the harness only checks refusals: the unmodified base directories (and the
base `.metadata` re-pickled by this module's pickler, which writes every crafted one) must be
accepted (exit 0), the code-running payloads must not have run (they would create a marker
file), and a non-tensor (bytes) item whose pickle names a forbidden global must be accepted as
an opaque value (exit 0 for `inspect` and `verify`: beyond plain data such an item is kept as
its pickle's bytes and never run). A failed check becomes a Case that fails, named after the problem."""
import concurrent.futures
import copy
import dataclasses
import io
import json
import os
import pickle
import shutil
import struct
import subprocess
import warnings
import zipfile

import torch

from gen_foreign import g, patch_central, s, torch_zip, tup
from run_hostile import ENV, Case

I = ("inspect",)
IV = ("inspect", "verify")
V = ("verify",)
META = ".metadata"
DATA = "__0_0.distcp"


# ----- a pickler that writes what DCP's writer writes, plus what it never would

class Fake:
    """A global (module, name) that need not exist here; pickled as STACK_GLOBAL."""

    def __init__(self, module, name):
        self.module, self.name = module, name

    def __call__(self, *args):
        raise RuntimeError("never called")


class Reduce:
    """REDUCE(func, args): func a class, a Fake or any global."""

    def __init__(self, func, args):
        self.func, self.args = func, args


class NewObj:
    """NEWOBJ(cls, ()) then BUILD(state), as pickle writes a dataclass; the state unchecked."""

    def __init__(self, cls, state):
        self.cls, self.state = cls, state


class Dup:
    """A dict that may hold a key twice: EMPTY_DICT then SETITEMS of the pairs as given."""

    def __init__(self, pairs):
        self.pairs = list(pairs)


class Raw:
    """Opcodes written as they are (they must push exactly one value)."""

    def __init__(self, data):
        self.data = data


class _Pickler(pickle._Pickler):
    dispatch = dict(pickle._Pickler.dispatch)

    def _fake(self, obj):
        self.save(obj.module)
        self.save(obj.name)
        self.write(pickle.STACK_GLOBAL)
        self.memoize(obj)

    def _reduce(self, obj):
        self.save(obj.func)
        self.save(obj.args)
        self.write(pickle.REDUCE)
        self.memoize(obj)

    def _newobj(self, obj):
        self.save(obj.cls)
        self.save(())
        self.write(pickle.NEWOBJ)
        self.memoize(obj)
        self.save(obj.state)
        self.write(pickle.BUILD)

    def _dup(self, obj):
        self.write(pickle.EMPTY_DICT)
        self.memoize(obj)
        self._batch_setitems(iter(obj.pairs))

    def _raw(self, obj):
        self.write(obj.data)

    dispatch[Fake] = _fake
    dispatch[Reduce] = _reduce
    dispatch[NewObj] = _newobj
    dispatch[Dup] = _dup
    dispatch[Raw] = _raw


def dumps(obj):
    """The pickle of `obj` as DCP writes `.metadata` (protocol 4; byte for byte what the C
    pickler writes for the real classes)."""
    buf = io.BytesIO()
    _Pickler(buf, protocol=4).dump(obj)
    return buf.getvalue()


def size(*dims):
    """torch.Size(dims) as pickled, whatever the dims: REDUCE(torch.Size, (dims,))."""
    return Reduce(torch.Size, (tuple(dims),))


# ----- the base checkpoints and their crafted copies

def dcp_classes():
    from torch.distributed.checkpoint.filesystem import _StorageInfo
    from torch.distributed.checkpoint.metadata import ChunkStorageMetadata, MetadataIndex
    return MetadataIndex, ChunkStorageMetadata, _StorageInfo


def save_dcp(path, state_dict, safetensors=False):
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint import FileSystemWriter
    kw = {"sync_files": False}
    if safetensors:
        from torch.distributed.checkpoint.filesystem import SerializationFormat
        kw["serialization_format"] = SerializationFormat.SAFETENSORS
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dcp.save(state_dict, storage_writer=FileSystemWriter(path, **kw), no_dist=True)
    return path


def torch_bytes(obj):
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


class Dcp:
    """A DCP directory in memory: its Metadata (the real classes, as pickle.load gives them,
    then edited) and its files' bytes."""

    def __init__(self, path):
        with open(os.path.join(path, META), "rb") as f:
            self.md = pickle.load(f)
        self.files = {}
        for name in sorted(os.listdir(path)):
            if name != META:
                with open(os.path.join(path, name), "rb") as f:
                    self.files[name] = bytearray(f.read())

    def copy(self):
        other = Dcp.__new__(Dcp)
        other.md = copy.deepcopy(self.md)
        other.files = {k: bytearray(v) for k, v in self.files.items()}
        return other

    def key(self, fqn):
        return next(k for k in self.md.storage_data if k.fqn == fqn)

    def info(self, fqn):
        return self.md.storage_data[self.key(fqn)]

    def set_info(self, fqn, **changes):
        k = self.key(fqn)
        self.md.storage_data[k] = dataclasses.replace(self.md.storage_data[k], **changes)

    def item(self, fqn):
        i = self.info(fqn)
        return bytes(self.files[i.relative_path][i.offset:i.offset + i.length])

    def append(self, data, name=DATA):
        """Appends `data` to file `name`: (offset, length)."""
        f = self.files[name]
        offset = len(f)
        f += data
        return offset, len(data)

    def replace_item(self, fqn, data):
        """Stores `data` as the item of `fqn` (at the end of its file)."""
        offset, length = self.append(data, self.info(fqn).relative_path)
        self.set_info(fqn, offset=offset, length=length)

    def set_chunks(self, fqn, chunks, full=None):
        """Replaces the chunks of `fqn` by `chunks` [(offsets, sizes)], each stored as a
        torch.save of that slice of `full` (zeros where it is outside)."""
        MetadataIndex, ChunkStorageMetadata, _StorageInfo = dcp_classes()
        tmd = self.md.state_dict_metadata[fqn]
        tmd.chunks = [ChunkStorageMetadata(torch.Size(o), torch.Size(sz)) for o, sz in chunks]
        data = {k: v for k, v in self.md.storage_data.items() if k.fqn != fqn}
        for index, (o, sz) in enumerate(chunks):
            t = torch.zeros(sz, dtype=tmd.properties.dtype)
            if full is not None:
                part = full[tuple(slice(a, a + b) for a, b in zip(o, sz))]
                t[tuple(slice(0, n) for n in part.shape)] = part
            offset, length = self.append(torch_bytes(t.clone()))
            data[MetadataIndex(fqn, o, index)] = _StorageInfo(DATA, offset, length)
        self.md.storage_data = data

    def write(self, path, metadata=None):
        """Writes the directory; `metadata`: the bytes of .metadata instead of the pickle of
        self.md (None: pickled here; False: no .metadata)."""
        os.makedirs(path)
        for name, data in self.files.items():
            with open(os.path.join(path, name), "wb") as f:
                f.write(data)
        if metadata is not False:
            with open(os.path.join(path, META), "wb") as f:
                f.write(dumps(self.md) if metadata is None else metadata)
        return path


def blob_parts(data, offset):
    """The safetensors blob at `offset`: (header dict, tensor bytes after the header)."""
    n = struct.unpack_from("<Q", data, offset)[0]
    return json.loads(bytes(data[offset + 8:offset + 8 + n])), bytes(data[offset + 8 + n:])


def blob(header, data, declared_len=None):
    h = json.dumps(header).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    return struct.pack("<Q", len(h) if declared_len is None else declared_len) + h + data


def evil_pkl(callable_global, arg):
    """A protocol-2 pickle calling module.name(arg) through REDUCE."""
    return b"\x80\x02" + g(*callable_global) + tup(s(arg)) + b"R."


# ----- checks of this module's own, run with the binary while the cases are made

def own_checks(checks):
    """Runs each (description, command, expected exit, marker that must not exist) and returns
    the problems as (description, text)."""
    def one(check):
        desc, cmd, want, marker = check
        try:
            p = subprocess.run(cmd, env=ENV, capture_output=True, timeout=30)
            rc, err = p.returncode, p.stderr.decode(errors="replace").strip()
        except subprocess.TimeoutExpired:
            rc, err = None, "no answer within 30 s"
        problems = []
        if rc != want:
            last = err.splitlines()[-1][-200:] if err else ""
            problems.append(f"exit {rc}, expected {want} ({last})")
        if marker and os.path.lexists(marker):
            problems.append(f"the payload ran ({marker} exists)")
        return [(desc, p) for p in problems]

    with concurrent.futures.ThreadPoolExecutor(max_workers=4) as pool:
        return [p for ps in pool.map(one, checks) for p in ps]


def cases(workdir, good):
    def p(name):
        return os.path.join(workdir, name)

    out = []

    def add(name, path, ops=IV, named=None, **bounds):
        out.append(Case(name, path, ops, named, bounds.get("max_s"), bounds.get("max_rss_mb")))

    MetadataIndex, ChunkStorageMetadata, _StorageInfo = dcp_classes()
    sd = {k: v.clone() for k, v in good.state_dict.items()}
    # The base checkpoints: the good state dict (so `load --into good.ref` fits it), the same
    # with non-tensor items, and the same written as safetensors blobs.
    base_t = Dcp(save_dcp(p("_base_tensors"), dict(sd)))
    base_b = Dcp(save_dcp(p("_base_bytes"), dict(sd, epoch=7, name="shardload")))
    base_s = Dcp(save_dcp(p("_base_safetensors"), dict(sd), safetensors=True))
    checks = []

    def check(desc, ops, path, want=0, marker=None):
        for op in ops:
            if op == "load":
                cmd = [good.bin, "load", path, "--into", good.ref, "--out",
                       p(f"_check_out_{len(checks)}.safetensors")]
            else:
                cmd = [good.bin, op, path]
            checks.append((f"{desc} [{op}]", cmd, want, marker))

    check("control: the base DCP directory is accepted", ("verify", "load"),
          p("_base_tensors"))
    check("control: the base DCP directory with bytes items is accepted", V, p("_base_bytes"))
    check("control: the base safetensors-serialized DCP directory is accepted", V,
          p("_base_safetensors"))
    check("control: the base .metadata re-pickled by gen_dcp is accepted", I,
          base_b.copy().write(p("_base_repickled")))
    with open(p("_base_tensors/" + META), "rb") as f:
        if dumps(base_t.md) != f.read():
            out.append(Case("dcp check failed: gen_dcp's pickler does not reproduce DCP's "
                            ".metadata", p("no-such-file"), I, "(see the case name)"))

    def derive(name, base=base_t):
        return name, base.copy()

    # ---------------------------------------------------------------- .metadata: the pickle
    marker = p("pwned_metadata_os_system")
    name, d = derive("dcp_meta_os_system")
    d.md.version = Reduce(Fake("os", "system"), (f"touch {marker}",))
    path = d.write(p(name))
    add("dcp .metadata calling os.system through REDUCE", path, IV + ("load",), META)
    check("dcp .metadata calling os.system ran nothing", I, path, 3, marker)

    marker = p("pwned_metadata_eval")
    name, d = derive("dcp_meta_eval")
    d.md.planner_data["layer.weight"] = Reduce(
        Fake("builtins", "eval"), (f"__import__('os').system('touch {marker}')",))
    path = d.write(p(name))
    add("dcp .metadata calling builtins.eval through REDUCE", path, I, META)

    name, d = derive("dcp_meta_torch_load")
    d.md.storage_meta = Reduce(Fake("torch.serialization", "load"), ("/etc/passwd",))
    add("dcp .metadata calling torch.serialization.load (a torch global not allowed)",
        d.write(p(name)), I, META)

    name, d = derive("dcp_meta_subclass_global")
    d.md.planner_data = Reduce(Fake("torch.distributed.checkpoint.metadata", "os"), ())
    add("dcp .metadata naming torch.distributed.checkpoint.metadata.os",
        d.write(p(name)), I, META)

    name, d = derive("dcp_meta_not_pickle")
    add("dcp .metadata that is not a pickle",
        d.write(p(name), b"this is not a pickle, just text\n" * 8), IV, META)

    good_meta = dumps(base_t.md)
    name, d = derive("dcp_meta_truncated")
    add("dcp .metadata cut in half", d.write(p(name), good_meta[:len(good_meta) // 2]), I, META)

    name, d = derive("dcp_meta_empty")
    add("dcp .metadata of zero bytes", d.write(p(name), b""), IV, META)

    name, d = derive("dcp_meta_top_dict")
    add("dcp .metadata whose top object is a dict, not Metadata",
        d.write(p(name), dumps(dict(vars(d.md)))), I, META)

    name, d = derive("dcp_meta_top_index")
    add("dcp .metadata whose top object is a MetadataIndex",
        d.write(p(name), dumps(base_t.key("layer.weight"))), I, META)

    name, d = derive("dcp_meta_deep")
    n = 1_000_000
    d.md.planner_data["layer.weight"] = Raw(b"]" * n + b"a" * (n - 1))
    add("dcp .metadata nested a million lists deep", d.write(p(name)), I, META, max_s=5,
        max_rss_mb=1024)

    name, d = derive("dcp_meta_huge_memo")
    d.md.version = Raw(b"j\xff\xff\xff\xff")
    add("dcp .metadata getting memo index 2^32-1", d.write(p(name)), I, META)

    name, d = derive("dcp_meta_over_1gib")
    path = d.write(p(name))
    os.truncate(os.path.join(path, META), (1 << 30) + 1)  # sparse
    add("dcp .metadata over 1 GiB", path, I, META, max_s=5, max_rss_mb=768)

    name, d = derive("dcp_meta_fifo")
    path = d.write(p(name), False)
    os.mkfifo(os.path.join(path, META))
    add("dcp .metadata that is a FIFO", path, I, META, max_s=5)

    # ---------------------------------------------------------------- .metadata: the content
    name, d = derive("dcp_offset_overflow")
    d.set_info("layer.weight", offset=2**63 - 1, length=2**63 - 1)
    add("dcp storage offset + length overflowing int64", d.write(p(name)), V, DATA)

    name, d = derive("dcp_offset_2e64_minus_8")
    d.set_info("layer.weight", offset=2**64 - 8)
    add("dcp storage offset of 2^64 - 8 (offset + length overflowing 64 bits)", d.write(p(name)),
        I, META)

    name, d = derive("dcp_offset_2e64")
    d.set_info("layer.bias", offset=2**64 + 7)
    add("dcp storage offset of 2^64 + 7", d.write(p(name)), I, META)

    name, d = derive("dcp_length_negative")
    d.set_info("layer.bias", length=-1)
    add("dcp storage length -1", d.write(p(name)), I, META)

    name, d = derive("dcp_size_overflow")
    t = d.md.state_dict_metadata["layer.weight"]
    t.size = size(2**40, 2**40, 2**40)
    t.chunks = [ChunkStorageMetadata(size(0, 0, 0), size(2**40, 2**40, 2**40))]
    d.md.storage_data = {(NewObj(MetadataIndex, {"fqn": "layer.weight", "index": 0,
                                                 "offset": size(0, 0, 0)})
                          if k.fqn == "layer.weight" else k): v
                         for k, v in d.md.storage_data.items()}
    add("dcp tensor size whose element count overflows int64", d.write(p(name)), IV, META)

    name, d = derive("dcp_dim_2e63")
    t = d.md.state_dict_metadata["layer.bias"]
    t.size = size(2**63)
    t.chunks = [ChunkStorageMetadata(size(0), size(2**63))]
    add("dcp tensor dim of 2^63", d.write(p(name)), I, META)

    name, d = derive("dcp_dim_negative")
    t = d.md.state_dict_metadata["layer.bias"]
    t.size = size(-8)
    t.chunks = [ChunkStorageMetadata(size(0), size(-8))]
    add("dcp tensor dim of -8", d.write(p(name)), I, META)

    name, d = derive("dcp_65_dims")
    t = d.md.state_dict_metadata["step"]
    t.size = size(*[1] * 65)
    t.chunks = [ChunkStorageMetadata(size(*[0] * 65), size(*[1] * 65))]
    d.md.storage_data = {(NewObj(MetadataIndex, {"fqn": "step", "index": 0,
                                                 "offset": size(*[0] * 65)})
                          if k.fqn == "step" else k): v for k, v in d.md.storage_data.items()}
    add("dcp tensor of 65 dims", d.write(p(name)), I, META)

    name, d = derive("dcp_dtype_qint8")
    d.md.state_dict_metadata["layer.weight"].properties.dtype = torch.qint8
    add("dcp tensor of dtype torch.qint8", d.write(p(name)), I, META)

    name, d = derive("dcp_dtype_foo")
    d.md.state_dict_metadata["layer.weight"].properties.dtype = Fake("torch", "foo")
    add("dcp tensor of dtype torch.foo", d.write(p(name)), I, META)

    name, d = derive("dcp_dtype_is_size")
    d.md.state_dict_metadata["layer.weight"].properties.dtype = torch.Size
    add("dcp tensor whose dtype is torch.Size", d.write(p(name)), I, META)

    full = sd["layer.weight"]
    name, d = derive("dcp_chunks_overlap")
    d.set_chunks("layer.weight", [((0, 0), (5, 4)), ((3, 0), (5, 4))], full)
    add("dcp overlapping chunks of one tensor", d.write(p(name)), IV, META)

    name, d = derive("dcp_chunks_overlap_same_count")
    d.set_chunks("layer.weight", [((0, 0), (4, 4)), ((2, 0), (4, 4))], full)
    # Found where the index is checked (sharding/index_check.h): the message names the key and
    # the data files of both chunks.
    add("dcp overlapping chunks holding as many elements as the tensor", d.write(p(name)), IV,
        DATA)

    name, d = derive("dcp_chunk_twice")
    d.set_chunks("layer.weight", [((0, 0), (8, 4)), ((0, 0), (8, 4))], full)
    add("dcp one chunk listed twice", d.write(p(name)), I, META)

    name, d = derive("dcp_chunk_missing")
    d.set_chunks("layer.weight", [((0, 0), (4, 4))], full)
    add("dcp chunks not covering the tensor", d.write(p(name)), I + ("load",), META)

    name, d = derive("dcp_chunk_outside")
    d.set_chunks("layer.weight", [((0, 0), (6, 4)), ((6, 0), (4, 4))], full)
    add("dcp chunk reaching outside the tensor", d.write(p(name)), I, META)

    name, d = derive("dcp_chunk_rank")
    d.set_chunks("layer.bias", [((0, 0), (8, 1))], sd["layer.bias"].reshape(8, 1))
    add("dcp chunk of 2 dims in a tensor of 1", d.write(p(name)), I, META)

    name, d = derive("dcp_dup_storage_key")
    k, length = d.key("layer.bias"), d.info("layer.bias").length
    d.md.storage_data = Dup(list(d.md.storage_data.items()) +
                            [(copy.deepcopy(k), _StorageInfo(DATA, 0, length))])
    add("dcp two storage entries for one chunk", d.write(p(name)), I, META)

    name, d = derive("dcp_dup_fqn")
    items = list(d.md.state_dict_metadata.items())
    d.md.state_dict_metadata = Dup(items + [items[0]])
    add("dcp state_dict_metadata naming a key twice", d.write(p(name)), I, META)

    name, d = derive("dcp_chunk_no_storage")
    del d.md.storage_data[d.key("layer.bias")]
    add("dcp chunk without a storage entry", d.write(p(name)), I, META)

    name, d = derive("dcp_bytes_no_storage", base_b)
    del d.md.storage_data[d.key("epoch")]
    add("dcp bytes item without a storage entry", d.write(p(name)), I, META)

    name, d = derive("dcp_planner_same_path", base_b)
    d.md.planner_data.update(epoch=("extra", 0), name=("extra", 0))
    add("dcp planner_data giving two keys one path", d.write(p(name)), I, META)

    name, d = derive("dcp_planner_value_and_holds", base_b)
    d.md.planner_data.update(epoch=("extra", 0), name=("extra", 0, "name"))
    add("dcp planner_data nesting a key inside another's value", d.write(p(name)), I, META)

    # ---------------------------------------------------------------- file names
    shutil.copy(os.path.join(p("_base_tensors"), DATA), p("outside.distcp"))
    name, d = derive("dcp_path_dotdot")
    d.set_info("layer.weight", relative_path="../outside.distcp")
    add("dcp relative_path ../outside.distcp", d.write(p(name)), I + ("convert",), META)

    name, d = derive("dcp_path_absolute")
    d.set_info("layer.bias", relative_path=p("outside.distcp"))
    add("dcp relative_path that is absolute", d.write(p(name)), I, META)

    name, d = derive("dcp_path_nul")
    d.set_info("layer.bias", relative_path=DATA + "\0.txt")
    add("dcp relative_path with a NUL", d.write(p(name)), I, META)

    name, d = derive("dcp_path_subdir")
    d.set_info("layer.bias", relative_path="sub/" + DATA)
    path = d.write(p(name))
    os.makedirs(os.path.join(path, "sub"))
    shutil.copy(os.path.join(path, DATA), os.path.join(path, "sub", DATA))
    add("dcp relative_path in a subdirectory", path, I, META)

    name, d = derive("dcp_path_metadata")
    d.set_info("step", relative_path=META, offset=0, length=16)
    add("dcp relative_path naming .metadata", d.write(p(name)), I, META)

    name, d = derive("dcp_path_empty")
    d.set_info("step", relative_path="")
    add("dcp relative_path that is empty", d.write(p(name)), I, META)

    name, d = derive("dcp_path_dot")
    d.set_info("step", relative_path=".")
    add("dcp relative_path '.'", d.write(p(name)), I, META)

    name, d = derive("dcp_missing_file")
    d.set_info("layer.bias", relative_path="__3_0.distcp")
    add("dcp item in a missing .distcp file", d.write(p(name)), I, "__3_0.distcp")

    name, d = derive("dcp_file_is_dir")
    d.set_info("layer.bias", relative_path="__5_0.distcp")
    path = d.write(p(name))
    os.makedirs(os.path.join(path, "__5_0.distcp"))
    add("dcp .distcp file that is a directory", path, I, "__5_0.distcp")

    name, d = derive("dcp_file_fifo")
    data = d.files.pop(DATA)
    path = d.write(p(name))
    os.mkfifo(os.path.join(path, DATA))
    add("dcp .distcp file that is a FIFO", path, V, DATA, max_s=5)
    d.files[DATA] = data

    # ---------------------------------------------------------------- byte ranges
    end = len(base_t.files[DATA])
    name, d = derive("dcp_offset_past_end")
    d.set_info("layer.bias", offset=end + 100)
    add("dcp storage offset past the end of the .distcp", d.write(p(name)), IV + ("load",), DATA)

    name, d = derive("dcp_length_past_end")
    d.set_info("step", length=d.info("step").length + 10)
    add("dcp storage length reaching past the end of the .distcp", d.write(p(name)), V, DATA)

    name, d = derive("dcp_length_short")
    d.set_info("layer.weight", length=d.info("layer.weight").length - 100)
    add("dcp storage length shorter than the item's archive", d.write(p(name)), V, DATA)

    name, d = derive("dcp_length_long")
    d.set_info("layer.weight", length=d.info("layer.weight").length + 50)
    add("dcp storage length longer than the archive (into the next item)", d.write(p(name)),
        V, DATA)

    name, d = derive("dcp_empty_file")
    d.files[DATA] = bytearray()
    add("dcp .distcp file of zero bytes", d.write(p(name)), IV, DATA)

    # ---------------------------------------------------------------- the items' archives
    name, d = derive("dcp_item_not_zip")
    i = d.info("layer.weight")
    d.files[DATA][i.offset:i.offset + i.length] = b"\xab" * i.length
    add("dcp item whose bytes are not a zip", d.write(p(name)), V, DATA)

    zbomb = p("_zip_bomb.pt")
    torch_zip(zbomb, b"\x80\x02" + g("torch._utils", "_rebuild_tensor_v2") +
              tup(tup(s("storage"), g("torch", "FloatStorage"), s("0"), s("cpu"),
                      b"J" + struct.pack("<i", 32)) + b"Q",
                  b"J\0\0\0\0", tup(b"J\x08\0\0\0", b"J\x04\0\0\0"),
                  tup(b"J\x04\0\0\0", b"J\x01\0\0\0"), b"\x89",
                  g("collections", "OrderedDict") + b")R") + b"R.",
              [("0", b"\0" * (1 << 20))], compress=zipfile.ZIP_DEFLATED)
    patch_central(zbomb, "archive/data/0", size=2**32 - 2)
    name, d = derive("dcp_item_zip_bomb")
    d.replace_item("layer.weight", open(zbomb, "rb").read())
    add("dcp item zip member deflated, declaring 4 GiB", d.write(p(name)), V + ("convert",), DATA,
        max_s=5, max_rss_mb=1024)

    name, d = derive("dcp_item_dtype")
    d.replace_item("layer.weight", torch_bytes(torch.zeros(8, 4, dtype=torch.float64)))
    add("dcp item holding a float64 tensor where .metadata says float32", d.write(p(name)),
        V + ("diff",), DATA)

    name, d = derive("dcp_item_shape")
    d.replace_item("layer.weight", torch_bytes(torch.zeros(4, 8)))
    add("dcp item holding a [4, 8] tensor where .metadata says [8, 4]", d.write(p(name)),
        V + ("load",), DATA)

    name, d = derive("dcp_item_small")
    d.replace_item("layer.weight", torch_bytes(torch.zeros(2, 2)))
    add("dcp item holding fewer elements than its chunk", d.write(p(name)), V, DATA)

    name, d = derive("dcp_item_dict")
    d.replace_item("layer.weight", torch_bytes({"layer.weight": full}))
    add("dcp item holding a dict, not a tensor", d.write(p(name)), V, DATA)

    marker = p("pwned_item_os_system")
    item = p("_item_os_system.pt")
    torch_zip(item, evil_pkl(("os", "system"), f"touch {marker}"))
    name, d = derive("dcp_item_os_system")
    d.replace_item("layer.weight", open(item, "rb").read())
    path = d.write(p(name))
    add("dcp item whose data.pkl calls os.system", path, V, DATA)
    check("dcp item whose data.pkl calls os.system ran nothing", V, path, 3, marker)

    item = p("_item_storage_short.pt")
    torch_zip(item, b"\x80\x02" + g("torch._utils", "_rebuild_tensor_v2") +
              tup(tup(s("storage"), g("torch", "FloatStorage"), s("0"), s("cpu"),
                      b"J" + struct.pack("<i", 32)) + b"Q",
                  b"J\0\0\0\0", tup(b"J\x08\0\0\0", b"J\x04\0\0\0"),
                  tup(b"J\x04\0\0\0", b"J\x01\0\0\0"), b"\x89",
                  g("collections", "OrderedDict") + b")R") + b"R.", [("0", b"\0" * 16)])
    name, d = derive("dcp_item_storage_short")
    d.replace_item("layer.weight", open(item, "rb").read())
    add("dcp item whose storage record is shorter than its tensor", d.write(p(name)), V, DATA)

    name, d = derive("dcp_transform_zstd")
    d.set_info("layer.weight", transform_descriptors=["stream.zstd/1"])
    add("dcp item with transform_descriptors stream.zstd/1", d.write(p(name)), I, META)

    name, d = derive("dcp_transform_unknown")
    d.set_info("layer.weight", transform_descriptors=["rot13/1"])
    add("dcp item with an unknown transform descriptor", d.write(p(name)), I, META)

    # ---------------------------------------------------------------- safetensors blobs
    start = base_s.info("layer.weight").offset
    header, tensors = blob_parts(base_s.files[DATA], start)

    def st_case(dirname, title, new_blob, named=DATA, **bounds):
        d = base_s.copy()
        d.files[DATA] = d.files[DATA][:start] + new_blob
        add(title, d.write(p(dirname)), V, named, **bounds)

    st_case("dcp_st_header_2e63", "dcp safetensors blob header length 2^63",
            blob(header, tensors, declared_len=2**63))
    h = copy.deepcopy(header)
    h["layer.weight"]["data_offsets"][1] += 1 << 20
    st_case("dcp_st_offsets_beyond", "dcp safetensors blob data offsets past the blob",
            blob(h, tensors))
    h = copy.deepcopy(header)
    h["layer.weight"]["shape"] = [4, 8]
    st_case("dcp_st_shape_lie", "dcp safetensors blob shape other than .metadata's",
            blob(h, tensors))
    h = copy.deepcopy(header)
    h["layer.weight"]["dtype"] = "I32"
    st_case("dcp_st_dtype_lie", "dcp safetensors blob dtype other than .metadata's",
            blob(h, tensors))
    h = copy.deepcopy(header)
    h["layer.weightX"] = h.pop("layer.weight")
    st_case("dcp_st_key_missing", "dcp safetensors blob without a key .metadata names",
            blob(h, tensors))

    # ---------------------------------------------------------------- Megatron-Core
    name, d = derive("dcp_megatron_no_metadata")
    path = d.write(p(name), False)
    with open(os.path.join(path, "metadata.json"), "w") as f:
        json.dump({"sharded_backend": "torch_dist", "sharded_backend_version": 1}, f)
    add("dcp Megatron-Core metadata.json without .metadata (says incomplete)", path, I,
        "incomplete")

    # ---------------------------------------------------------------- opaque bytes items
    # A non-tensor item's pickle is kept as opaque bytes and never run: accepted, nothing ran.
    for fn, arg in ((("os", "system"), "touch {m}"),
                    (("builtins", "eval"), "__import__('os').system('touch {m}')")):
        marker = p(f"pwned_bytes_{fn[1]}")
        item = p(f"_bytes_{fn[1]}.pt")
        torch_zip(item, evil_pkl(fn, arg.format(m=marker)))
        d = base_b.copy()
        d.replace_item("epoch", open(item, "rb").read())
        check(f"dcp bytes item whose pickle calls {'.'.join(fn)} is accepted as opaque and "
              "runs nothing", IV if fn[1] == "system" else V, d.write(p(f"dcp_bytes_{fn[1]}")),
              0, marker)

    for desc, problem in own_checks(checks):
        out.append(Case(f"dcp check failed: {desc}: {problem}", p("no-such-file"), I,
                        "(see the case name)"))
    return out
