"""Crafted .pt and .safetensors files: deep nesting (pickle and JSON), huge declared lengths,
zip members that lie about their size, data outside the file or overlapping, overflowing
shapes, stride-0 expansions, bool bytes other than 0/1, NUL and non-UTF-8 keys, unknown dtypes,
code-running pickles, huge memo indices. Each goes through `convert` and `load --into`."""
import os
import struct
import zipfile

import torch

from run_hostile import Case

OPS = ("convert", "load_into")


# ----- pickle opcodes, by hand (protocol 2, as torch.save writes)

def s(text):
    b = text if isinstance(text, bytes) else text.encode("utf-8")
    return b"X" + struct.pack("<I", len(b)) + b


def g(module, name):
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


def i(n):
    if -(2**31) <= n < 2**31:
        return b"J" + struct.pack("<i", n)
    return b"\x8a\x08" + struct.pack("<q", n)


def tup(*items):
    return b"(" + b"".join(items) + b"t"


def tensor(cls, key, numel, offset, size, stride):
    storage = tup(s("storage"), g("torch", cls), s(key), s("cpu"), i(numel)) + b"Q"
    return (g("torch._utils", "_rebuild_tensor_v2") +
            tup(storage, i(offset), tup(*map(i, size)), tup(*map(i, stride)), b"\x89",
                g("collections", "OrderedDict") + b")R") + b"R")


def state_dict(*pairs):
    """OrderedDict of (key opcodes, value opcodes) pairs."""
    return (b"\x80\x02" + g("collections", "OrderedDict") + b")R(" +
            b"".join(k + v for k, v in pairs) + b"u.")


def torch_zip(path, pkl, records=(), compress=zipfile.ZIP_STORED):
    """A zip in torch.save's layout: archive/data.pkl, byteorder, data/<key>..., version."""
    with zipfile.ZipFile(path, "w", compress) as z:
        z.writestr("archive/data.pkl", pkl)
        z.writestr("archive/byteorder", "little")
        for name, data in records:
            z.writestr("archive/data/" + name, data)
        z.writestr("archive/version", "3\n")
    return path


def patch_central(path, member, **fields):
    """Overwrites fields of `member`'s central directory entry: compressed, size (uint32)."""
    data = bytearray(open(path, "rb").read())
    pos = data.find(b"PK\x01\x02")
    while pos >= 0:
        name_len, extra_len, comment_len = struct.unpack_from("<HHH", data, pos + 28)
        if data[pos + 46:pos + 46 + name_len] == member.encode():
            for field, value in fields.items():
                struct.pack_into("<I", data, pos + {"compressed": 20, "size": 24}[field], value)
            open(path, "wb").write(data)
            return path
        pos = data.find(b"PK\x01\x02", pos + 46 + name_len + extra_len + comment_len)
    raise KeyError(member)


def safetensors(path, header, data=b"", declared_len=None):
    h = header.encode() if isinstance(header, str) else header
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h) if declared_len is None else declared_len) + h + data)
    return path


def cases(workdir, good):
    def p(name):
        return os.path.join(workdir, name)

    out = []

    def add(name, path):
        out.append(Case(name, path, OPS))

    one_float = [("0", b"\0" * 4)]
    w = s("w")

    # Nesting: a million levels; recursion in the reader or a destructor overflows the stack.
    n = 1_000_000
    add("pickle nested a million tuples deep",
        torch_zip(p("deep_tuples.pt"), b"\x80\x02" + b"(" * n + b")" + b"t" * n + b".")
    )
    add("pickle nested a million lists deep",
        torch_zip(p("deep_lists.pt"), b"\x80\x02" + b"]" * n + b"a" * (n - 1) + b"."))
    add("pickle list changed after nesting (cycle builder)",
        torch_zip(p("cycle.pt"), b"\x80\x02]q\x00h\x00a."))
    add("safetensors header nested a million arrays deep",
        safetensors(p("deep_json.safetensors"), "[" * n + "]" * n))
    add("safetensors shape nested a million arrays deep",
        safetensors(p("deep_shape.safetensors"), '{"w":{"dtype":"F32","shape":[' + "[" * n +
                    "]" * n + '],"data_offsets":[0,4]}}', b"\0" * 4))

    # Declared lengths far beyond the file.
    add("safetensors header length 2^63",
        safetensors(p("huge_header.safetensors"), "{}", declared_len=2**63))
    big = safetensors(p("header_over_limit.safetensors"), "{}", declared_len=150_000_000)
    os.truncate(big, 160_000_000)  # sparse: the length fits the file, but not the 100 MB limit
    add("safetensors header length over 100 MB", big)
    add("pickle string of 2^62 bytes",
        torch_zip(p("huge_string.pt"), b"\x80\x02\x8d" + struct.pack("<Q", 2**62) + b"ab."))

    # Zip members that lie about their size.
    path = torch_zip(p("storage_size_lie.pt"), state_dict((w, tensor("FloatStorage", "0", 1, 0,
                                                                     [1], [1]))), one_float)
    add("zip storage member declaring 2 GiB",
        patch_central(path, "archive/data/0", compressed=2**31, size=2**31))
    path = torch_zip(p("datapkl_size_lie.pt"), state_dict(), compress=zipfile.ZIP_DEFLATED)
    add("zip deflated data.pkl declaring 4 GiB",
        patch_central(path, "archive/data.pkl", size=2**32 - 2))
    path = torch_zip(p("member_count_lie.pt"), state_dict())
    data = bytearray(open(path, "rb").read())
    eocd = data.rfind(b"PK\x05\x06")
    struct.pack_into("<HH", data, eocd + 8, 65000, 65000)
    open(path, "wb").write(data)
    add("zip declaring 65000 members", path)
    add("storage record shorter than its tensor",
        torch_zip(p("storage_short.pt"), state_dict((w, tensor("FloatStorage", "0", 6, 0, [2, 3],
                                                               [3, 1]))), one_float))
    add("storage referenced but missing",
        torch_zip(p("storage_missing.pt"), state_dict((w, tensor("FloatStorage", "9", 1, 0, [1],
                                                                 [1]))), one_float))

    # Views and shapes.
    add("tensor view reaching past its storage",
        torch_zip(p("view_outside.pt"), state_dict((w, tensor("FloatStorage", "0", 4, 2, [2, 2],
                                                              [2, 1]))), [("0", b"\0" * 16)]))
    add("stride-0 expansion to 4 TiB",
        torch_zip(p("stride0.pt"), state_dict((w, tensor("FloatStorage", "0", 1, 0,
                                                         [2**20, 2**20], [0, 0]))), one_float))
    add("pt shape whose element count overflows int64",
        torch_zip(p("overflow_shape.pt"), state_dict((w, tensor("FloatStorage", "0", 1, 0,
                                                                [2**32] * 3, [0] * 3))), one_float))
    add("safetensors shape whose element count overflows",
        safetensors(p("overflow_shape.safetensors"),
                    '{"w":{"dtype":"F32","shape":[4294967296,4294967296,4294967296],'
                    '"data_offsets":[0,4]}}', b"\0" * 4))
    add("safetensors data offsets outside the file",
        safetensors(p("out_of_file.safetensors"),
                    '{"w":{"dtype":"F32","shape":[1024],"data_offsets":[0,4096]}}', b"\0" * 8))
    add("safetensors overlapping data",
        safetensors(p("overlap.safetensors"),
                    '{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},'
                    '"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}}', b"\0" * 12))

    # Values and keys.
    add("pt bool tensor holding byte 2",
        torch_zip(p("bool2.pt"), state_dict((s("mask"), tensor("BoolStorage", "0", 3, 0, [3],
                                                               [1]))), [("0", b"\x01\x02\x00")]))
    add("safetensors bool tensor holding byte 2",
        safetensors(p("bool2.safetensors"),
                    '{"mask":{"dtype":"BOOL","shape":[2],"data_offsets":[0,2]}}', b"\x00\x02"))
    add("pt key with a NUL character",
        torch_zip(p("nul_key.pt"), state_dict((s("a\0b"), tensor("FloatStorage", "0", 1, 0, [1],
                                                                  [1]))), one_float))
    add("safetensors key with a NUL character",
        safetensors(p("nul_key.safetensors"),
                    '{"a\\u0000b":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}', b"\0" * 4))
    add("pt key that is not UTF-8",
        torch_zip(p("latin1_key.pt"), state_dict((s(b"caf\xe9"), tensor("FloatStorage", "0", 1, 0,
                                                                         [1], [1]))), one_float))
    add("safetensors key that is not UTF-8",
        safetensors(p("latin1_key.safetensors"),
                    b'{"caf\xe9":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}', b"\0" * 4))
    # C128 is no safetensors dtype; F6_E2M3 is one PyTorch has no dtype for.
    add("safetensors unknown dtype",
        safetensors(p("unknown_dtype.safetensors"),
                    '{"w":{"dtype":"C128","shape":[1],"data_offsets":[0,16]}}', b"\0" * 16))
    add("safetensors F6 dtype",
        safetensors(p("f6_dtype.safetensors"),
                    '{"w":{"dtype":"F6_E2M3","shape":[4],"data_offsets":[0,3]}}', b"\0" * 3))
    # A quantized storage: a real torch class, not a plain tensor's.
    add("pt unknown storage class",
        torch_zip(p("unknown_storage.pt"), state_dict((w, tensor("QInt8Storage", "0", 1, 0,
                                                                 [1], [1]))), [("0", b"\0" * 8)]))
    add("safetensors duplicate key",
        safetensors(p("dup_key.safetensors"),
                    '{"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},'
                    '"w":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}', b"\0" * 8))

    # Code and the memo.
    add("pickle calling os.system through REDUCE",
        torch_zip(p("os_system.pt"), state_dict((w, g("os", "system") + tup(s("touch pwned")) +
                                                 b"R"))))
    evil = p("reduce_object.pt")
    torch.save({"w": torch.ones(1), "x": _Evil()}, evil)
    add("pickle of an object whose __reduce__ runs eval", evil)
    add("pickle getting memo index 2^32-1",
        torch_zip(p("huge_memo.pt"), b"\x80\x02j\xff\xff\xff\xff."))
    return out


class _Evil:
    def __reduce__(self):
        return (eval, ("__import__('os').system('touch pwned')",))
