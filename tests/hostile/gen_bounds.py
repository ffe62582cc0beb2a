"""Foreign files bounded like our own: memory, time and bytes (issue 20). Zip bombs and every
other compression method in .pt files, pickles of millions of tiny values or memo entries,
safetensors and index JSON shapes that are slow or large to parse, views whose element count is
absurd for the bytes that hold them, bool bytes that only a strided copy would hide, FIFOs,
sockets, devices and directories where a file is read, nested archives and symlinked members.
Every case must be refused within 2 s (one process; mpirun gets more to start its ranks) and
1 GiB of resident memory, measured per command."""
import json
import os
import shutil
import socket
import struct
import zlib

from gen_foreign import g, i, s, safetensors, state_dict, tensor, tup
from gen_hf import INDEX, SHARDS, hf_dir
from run_hostile import Case

MAX_S = 2.0
MAX_RSS_MB = 1024
C, LI, L, D, I, V = "convert", "load_into", "load", "diff", "inspect", "verify"

MiB = 1 << 20


def raw_zip(path, members):
    """A zip written by hand, so that any member can lie: each member a dict of name, data (the
    bytes in the file) and optionally method, size (extracted), crc, flags and external (the
    central directory's external attributes: unix mode << 16)."""
    out, central = bytearray(), bytearray()
    for m in members:
        name, data = m["name"].encode(), m["data"]
        method, flags = m.get("method", 0), m.get("flags", 0)
        size = m.get("size", len(data))
        crc = m.get("crc", zlib.crc32(data))
        offset = len(out)
        out += struct.pack("<IHHHHHIIIHH", 0x04034B50, 20, flags, method, 0, 0x21, crc,
                           len(data), size, len(name), 0) + name + data
        central += struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, 0x031E, 20, flags, method, 0,
                               0x21, crc, len(data), size, len(name), 0, 0, 0, 0,
                               m.get("external", 0o100644 << 16), offset) + name
    start = len(out)
    out += central
    out += struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, len(members), len(members), len(central),
                       start, 0)
    with open(path, "wb") as f:
        f.write(out)
    return path


_BOMBS = {}


def deflate_bomb(mib):
    """Raw deflate of `mib` MiB of zeros (about 1 KiB per MiB) and its CRC-32: one segment,
    flushed so that every MiB compresses to the same bytes, repeated."""
    if mib not in _BOMBS:
        zeros = bytes(MiB)
        c = zlib.compressobj(9, zlib.DEFLATED, -15)
        c.compress(zeros)
        c.flush(zlib.Z_FULL_FLUSH)
        segment = c.compress(zeros) + c.flush(zlib.Z_FULL_FLUSH)
        crc = 0
        for _ in range(mib):
            crc = zlib.crc32(zeros, crc)
        _BOMBS[mib] = (segment * mib + c.flush(), crc)
    return _BOMBS[mib]


def pt_members(pkl, records=(), pkl_member=None, byteorder=None):
    """The members of a torch.save zip: data.pkl (or `pkl_member`), byteorder, data/<key>."""
    ms = [pkl_member or {"name": "archive/data.pkl", "data": pkl}]
    ms.append(byteorder or {"name": "archive/byteorder", "data": b"little"})
    for m in records:
        ms.append(m if isinstance(m, dict) else {"name": "archive/data/" + m[0], "data": m[1]})
    ms.append({"name": "archive/version", "data": b"3\n"})
    return ms


def one_tensor(cls="FloatStorage", key="w", numel=1, offset=0, size=(1,), stride=(1,)):
    return state_dict((s(key), tensor(cls, "0", numel, offset, list(size), list(stride))))


def cases(workdir, good):
    def p(name):
        return os.path.join(workdir, name)

    out = []

    def add(name, path, ops, named=None):
        out.append(Case(name, path, ops, named, MAX_S, MAX_RSS_MB))

    w1 = one_tensor()
    # ----- compressed zip records: refused in every .pt path, never inflated
    bomb, crc = deflate_bomb(1280)
    add("zip bomb: storage record deflated from 1.3 MiB to 1.25 GiB",
        raw_zip(p("bomb_storage.pt"), pt_members(
            one_tensor("ByteStorage", numel=1280 * MiB, size=(1280 * MiB,)),
            [{"name": "archive/data/0", "data": bomb, "method": 8, "size": 1280 * MiB,
              "crc": crc}])), (C, L))
    head, tail = b"\x80\x02", state_dict()[2:]
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    nops = b"N0" * (MiB // 2)  # None, POP: a valid pickle however long
    first = c.compress(head) + c.compress(nops) + c.flush(zlib.Z_FULL_FLUSH)
    segment = c.compress(nops) + c.flush(zlib.Z_FULL_FLUSH)
    deflated = first + segment * 511 + c.compress(tail) + c.flush()
    crc = zlib.crc32(head)
    for _ in range(512):
        crc = zlib.crc32(nops, crc)
    size = len(head) + 512 * MiB + len(tail)
    add("zip bomb: data.pkl deflated from 1 MiB to 512 MiB",
        raw_zip(p("bomb_pickle.pt"), pt_members(None, [("0", b"\0" * 4)], pkl_member={
            "name": "archive/data.pkl", "data": deflated, "method": 8, "size": size,
            "crc": zlib.crc32(tail, crc)})), (C, LI))
    add("zip: byteorder record deflated",
        raw_zip(p("deflated_byteorder.pt"), pt_members(w1, [("0", b"\0" * 4)], byteorder={
            "name": "archive/byteorder", "data": zlib.compress(b"little")[2:-4], "method": 8,
            "size": 6, "crc": zlib.crc32(b"little")})), (C,))
    empty = zlib.compressobj(9, zlib.DEFLATED, -15).flush()
    add("zip: an empty storage record deflated",
        raw_zip(p("deflated_empty.pt"), pt_members(one_tensor(numel=0, size=(0,)), [
            {"name": "archive/data/0", "data": empty, "method": 8, "size": 0, "crc": 0}])),
        (C,))
    for method, what in ((1, "shrunk"), (9, "deflate64"), (12, "bzip2"), (14, "lzma"),
                         (93, "zstd")):
        add(f"zip: storage record compressed with method {method} ({what})",
            raw_zip(p(f"method{method}.pt"), pt_members(w1, [
                {"name": "archive/data/0", "data": b"\0" * 4, "method": method}])), (C,))
    add("zip: storage record encrypted",
        raw_zip(p("encrypted.pt"), pt_members(w1, [
            {"name": "archive/data/0", "data": b"\0" * 4, "flags": 1}])), (C,))

    # ----- nested archives and symlinked members
    add("zip: data.pkl a symlink member naming /etc/passwd",
        raw_zip(p("symlink_member.pt"), pt_members(None, [("0", b"\0" * 4)], pkl_member={
            "name": "archive/data.pkl", "data": b"/etc/passwd", "external": 0o120777 << 16})),
        (C,))
    inner = open(good.ref, "rb").read()
    add("nested archive: a torch.save file stored inside another zip",
        raw_zip(p("nested_pt.pt"), [{"name": "outer/good_ref.pt", "data": inner}]), (C,))
    add("nested archive: data.pkl holding a torch.save zip",
        raw_zip(p("nested_pickle.pt"), pt_members(inner, [("0", b"\0" * 4)])), (C,))
    add("nested archive: a deflated torch.save file inside a stored zip",
        raw_zip(p("nested_deflated.pt"), pt_members(w1, [("0", b"\0" * 4)]) + [{
            "name": "archive/inner.pt", "data": zlib.compress(inner)[2:-4], "method": 8,
            "size": len(inner), "crc": zlib.crc32(inner)}]), (C,))

    # ----- pickles of millions of tiny values: one budget of bytes of parsed state
    n = 16 * MiB
    add("pickle: 16 MiB of None values in one tuple",
        raw_zip(p("values.pt"), pt_members(b"\x80\x02(" + b"N" * n + b"t.")), (C, LI))
    add("pickle: 16 MiB of memo entries",
        raw_zip(p("memo.pt"), pt_members(b"\x80\x02N" + b"\x94" * n + b".")), (C,))
    add("pickle: values and memo entries interleaved (one budget for both)",
        raw_zip(p("values_memo.pt"), pt_members(b"\x80\x02(" + b"N\x94" * (n // 2) + b"t.")),
        (C,))
    add("pickle: 16 MiB of DUP", raw_zip(p("dup.pt"), pt_members(b"\x80\x02N" + b"2" * n + b".")),
        (C,))
    enc = (g("_codecs", "encode") + b"q\x01X" + struct.pack("<I", MiB) + b"a" * MiB +
           b"q\x00" + s("latin1") + b"q\x02000" + b"h\x01h\x00h\x02\x86R0" * 2000 + b"N.")
    add("pickle: _codecs.encode copying a memoized 1 MiB string 2000 times",
        raw_zip(p("encode_copies.pt"), pt_members(b"\x80\x02" + enc)), (C,))
    od = g("collections", "OrderedDict") + b"q\x010]q\x00(" + b"NN\x86" * 1000 + b"e0"
    add("pickle: an OrderedDict built 100k times from one memoized list of 1000 pairs",
        raw_zip(p("dict_copies.pt"), pt_members(
            b"\x80\x02" + od + b"h\x01h\x00\x85R0" * 100_000 + b"N.")), (C,))
    add("pickle: a GLOBAL line of 8 MiB",
        raw_zip(p("long_global.pt"), pt_members(b"\x80\x02c" + b"m" * (8 * MiB) + b"\nx\n.")),
        (C,))
    add("pickle: SETITEMS of 4M pairs into one dict",
        raw_zip(p("setitems.pt"), pt_members(b"\x80\x02}(" + b"NN" * (4 * MiB) + b"u.")), (C,))

    # ----- JSON headers: linear parse, limits while parsing
    def st(name, text, data=b""):
        return safetensors(p(name), text, data)

    meta = ",".join(f'"m{k}":"v"' for k in range(500_000))
    add("safetensors: 500k __metadata__ entries, the last not a string",
        st("meta500k.safetensors", '{"__metadata__":{' + meta + ',"bad":3}}'), (C,))
    zero = ",".join(f'"t{k}":{{"dtype":"F32","shape":[0],"data_offsets":[0,0]}}'
                    for k in range(300_000))
    add("safetensors: 300k tensors, the last key repeated",
        st("tensors300k.safetensors",
           "{" + zero + ',"t0":{"dtype":"F32","shape":[0],"data_offsets":[0,0]}}'), (C, L))
    bytes1 = ",".join(f'"b{k}":{{"dtype":"U8","shape":[1],"data_offsets":[{k},{k + 1}]}}'
                      for k in range(300_000))
    add("safetensors: 300k tensors, the last overlapping another",
        st("overlap300k.safetensors",
           "{" + bytes1 + ',"x":{"dtype":"U8","shape":[2],"data_offsets":[7,9]}}',
           b"\0" * 300_000), (C,))
    add("safetensors: a shape array of 10M entries",
        st("shape10m.safetensors",
           '{"w":{"dtype":"F32","shape":[' + "1," * 10_000_000 + '1],"data_offsets":[0,4]}}',
           b"\0" * 4), (C,))
    add("safetensors: an ignored field holding 10M numbers",
        st("ignored10m.safetensors", '{"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4],'
           '"x":[' + "0," * 10_000_000 + "0]}}", b"\0" * 4), (C,))
    add("safetensors: data_offsets of three entries",
        st("offsets3.safetensors", '{"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4,8]}}',
           b"\0" * 8), (C,))
    add("safetensors: a header that is a JSON array",
        st("array_header.safetensors", "[" + "0," * 1_000_000 + "0]"), (C,))
    add("safetensors: a header that is one string of 50 MB",
        st("string_header.safetensors", '"' + "a" * 50_000_000 + '"'), (C,))
    add("safetensors: two __metadata__ objects",
        st("meta_twice.safetensors", '{"__metadata__":{},"__metadata__":{}}'), (C,))
    add("safetensors: a __metadata__ value that is an object",
        st("meta_object.safetensors", '{"__metadata__":{"a":{}}}'), (C,))
    add("safetensors: a shape entry of 1e400",
        st("shape_float.safetensors",
           '{"w":{"dtype":"F32","shape":[1e400],"data_offsets":[0,4]}}', b"\0" * 4), (C,))
    add("safetensors: 1M entries that are empty objects",
        st("empty_entries.safetensors",
           "{" + ",".join(f'"e{k}":{{}}' for k in range(1_000_000)) + "}"), (C,))
    big_key = "k" * (8 * MiB)
    add("safetensors: a key of 8 MiB, twice",
        st("big_key.safetensors",
           '{"%s":{"dtype":"F32","shape":[0],"data_offsets":[0,0]},"%s":{}}' % (big_key,
                                                                                big_key)), (C,))
    weight_map = {f"k{k}": SHARDS[0] for k in range(500_000)}
    text = json.dumps({"weight_map": weight_map})[:-2] + ', "last": "model.bin"}}'
    add("HF index: 500k weight_map keys, the last naming a .bin file",
        hf_dir(workdir, "hf_index500k", good, index_text=text), (L,))
    add("HF index: a top-level member holding an array of 10M numbers",
        hf_dir(workdir, "hf_index_array", good,
               index_text='{"x":[' + "0," * 10_000_000 + '0],"weight_map":{}}'), (I,))

    # ----- views: element counts absurd for the bytes that hold them; bool bytes in views
    add("stride-0 view of 2^40 elements (diff)",
        raw_zip(p("stride0_diff.pt"), pt_members(one_tensor(size=(2**40,), stride=(0,)),
                                                 [("0", b"\0" * 4)])), (D, C))
    add("stride-0 view of shape [2^31, 2^21] (diff)",
        raw_zip(p("stride0_2d.pt"), pt_members(one_tensor(size=(2**31, 2**21), stride=(0, 0)),
                                               [("0", b"\0" * 4)])), (D, C))
    add("stride-0 view of 512 MiB from 4 bytes",
        raw_zip(p("stride0_512m.pt"), pt_members(one_tensor(size=(2**27,), stride=(0,)),
                                                 [("0", b"\0" * 4)])), (C, D))
    add("view with strides 3 and 2 overlapping 2^40 times",
        raw_zip(p("overlap_strides.pt"), pt_members(
            one_tensor("ByteStorage", numel=5 * MiB, size=(2**20, 2**20), stride=(3, 2)),
            [("0", b"\0" * (5 * MiB))])), (C, D))
    add("bool transposed view covering a byte 2",
        raw_zip(p("bool_transposed.pt"), pt_members(
            one_tensor("BoolStorage", numel=4, size=(2, 2), stride=(1, 2)),
            [("0", b"\x01\x00\x02\x01")])), (C, LI, D))
    add("bool stride-0 expansion of a byte 2",
        raw_zip(p("bool_stride0.pt"), pt_members(
            one_tensor("BoolStorage", numel=1, size=(3, 5), stride=(0, 0)),
            [("0", b"\x02")])), (C, D))
    add("bool view stepping over storage, covering a byte 5",
        raw_zip(p("bool_step.pt"), pt_members(
            one_tensor("BoolStorage", numel=6, size=(3,), stride=(2,)),
            [("0", b"\x00\x07\x01\x07\x05\x07")])), (C, D))
    add("one storage used as float and as int",
        raw_zip(p("two_dtypes.pt"), pt_members(state_dict(
            (s("a"), tensor("FloatStorage", "0", 1, 0, [1], [1])),
            (s("b"), tensor("IntStorage", "0", 1, 0, [1], [1]))), [("0", b"\0" * 4)])), (C,))

    # ----- what is not a regular file: refused at once, naming it
    def fifo(path):
        os.mkfifo(path)
        return path

    add("FIFO as the .pt source of convert", fifo(p("fifo.pt")), (C,))
    add("FIFO as the .safetensors source of convert", fifo(p("fifo.safetensors")), (C,))
    add("FIFO as --into REF", fifo(p("fifo_ref.pt")), (LI,))
    add("FIFO as a .pt CKPT", fifo(p("fifo_ckpt.pt")), (L, I, D))
    hf = hf_dir(workdir, "hf_fifo_index", good)
    os.remove(os.path.join(hf, INDEX))
    add("FIFO as the Hugging Face index", hf, (I,), named=fifo(os.path.join(hf, INDEX)))
    hf = hf_dir(workdir, "hf_fifo_shard", good)
    os.remove(os.path.join(hf, SHARDS[1]))
    add("FIFO as a Hugging Face shard", hf, (L,), named=fifo(os.path.join(hf, SHARDS[1])))
    single = p("hf_fifo_single")
    os.makedirs(single)
    add("FIFO as model.safetensors of a Hugging Face directory", single, (L,),
        named=fifo(os.path.join(single, "model.safetensors")))
    ck = p("ckpt_fifo_manifest")
    shutil.copytree(good.ckpt, ck)
    os.remove(os.path.join(ck, "manifest.h5"))
    add("FIFO as manifest.h5", ck, (I, V), named=fifo(os.path.join(ck, "manifest.h5")))
    ck = p("ckpt_fifo_shard")
    shutil.copytree(good.ckpt, ck)
    shard = sorted(f for f in os.listdir(ck) if f != "manifest.h5" and f.endswith(".h5"))[0]
    os.remove(os.path.join(ck, shard))
    add("FIFO as a shard file of a checkpoint", ck, (V,), named=fifo(os.path.join(ck, shard)))
    sock_path = p("socket.pt")
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(sock_path)
    sock.close()
    add("socket as the .pt source of convert", sock_path, (C,))
    os.symlink("/dev/zero", p("devzero.pt"))
    add("symlink to /dev/zero as a .pt file", p("devzero.pt"), (C,))
    hf = hf_dir(workdir, "hf_devzero_shard", good)
    os.remove(os.path.join(hf, SHARDS[0]))
    os.symlink("/dev/zero", os.path.join(hf, SHARDS[0]))
    add("symlink to /dev/zero as a Hugging Face shard", hf, (L,), named=SHARDS[0])
    os.makedirs(p("directory.safetensors"))
    add("directory named .safetensors as the source of convert", p("directory.safetensors"), (C,))
    return out
