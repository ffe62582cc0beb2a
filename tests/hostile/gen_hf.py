"""Crafted Hugging Face directories and single files loaded in place (`load PATH --into REF`):
index files naming paths outside the directory, missing shards, keys the index and the shards
disagree on, huge and deeply nested indexes, shard headers that lie about offsets, overlap or are
cut short, bool bytes other than 0/1; .safetensors and .pt files as CKPT with data outside the
file, views past their storage and code-running pickles. Each directory is named in the error."""
import json
import os
import struct

import torch

from gen_foreign import g, s, safetensors, state_dict, tensor, torch_zip, tup
from run_hostile import Case

ALL = ("load", "inspect", "verify", "convert")
LOAD = ("load", "inspect")
SHARDS = ("model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors")
INDEX = "model.safetensors.index.json"


def header(entries, ensure_ascii=True):
    """The JSON header of a safetensors file: {key: (dtype, shape, begin, end)}."""
    h = json.dumps({k: {"dtype": d, "shape": sh, "data_offsets": [b, e]}
                    for k, (d, sh, b, e) in entries.items()}, ensure_ascii=ensure_ascii)
    return h + " " * ((8 - len(h) % 8) % 8)


def shard_files(good):
    """The good state dict as two shards: (name, header entries, data) per shard."""
    sd = good.state_dict
    first = {"layer.weight": sd["layer.weight"]}
    second = {"layer.bias": sd["layer.bias"], "step": sd["step"]}
    out = []
    for name, part in zip(SHARDS, (first, second)):
        entries, data = {}, b""
        for k, t in part.items():
            raw = t.contiguous().numpy().tobytes()
            code = {torch.float32: "F32", torch.int64: "I64"}[t.dtype]
            entries[k] = (code, list(t.shape), len(data), len(data) + len(raw))
            data += raw
        out.append((name, entries, data))
    return out


def hf_dir(workdir, name, good, weight_map=None, index_text=None, shards=None):
    """A Hugging Face directory of the good state dict; any part replaced by the arguments."""
    path = os.path.join(workdir, name)
    os.makedirs(path)
    files = shards if shards is not None else shard_files(good)
    for fname, entries, data in files:
        safetensors(os.path.join(path, fname), header(entries), data)
    if weight_map is None:
        weight_map = {k: fname for fname, entries, _ in shard_files(good) for k in entries}
    with open(os.path.join(path, INDEX), "w" if isinstance(index_text, (str, type(None))) else
              "wb") as f:
        f.write(index_text if index_text is not None else
                json.dumps({"metadata": {"total_size": 100}, "weight_map": weight_map}))
    return path


def cases(workdir, good):
    out = []

    def add(name, path, ops=LOAD, named=None):
        out.append(Case(name, path, ops, named))

    wm = {k: fname for fname, entries, _ in shard_files(good) for k in entries}

    # File names that leave the directory, or name nothing.
    with open(os.path.join(workdir, "outside.safetensors"), "wb") as f:
        f.write(b"\0" * 16)
    add("hf index naming ../outside.safetensors",
        hf_dir(workdir, "hf_dotdot", good, dict(wm, **{"layer.weight": "../outside.safetensors"})),
        ALL)
    add("hf index naming an absolute path",
        hf_dir(workdir, "hf_absolute", good, dict(wm, **{"step": "/etc/passwd.safetensors"})))
    add("hf index naming a missing shard",
        hf_dir(workdir, "hf_missing_shard", good,
               dict(wm, **{"step": "model-00003-of-00003.safetensors"})), ALL)
    path = hf_dir(workdir, "hf_shard_is_dir", good, dict(wm, **{"step": "sub.safetensors"}))
    os.makedirs(os.path.join(path, "sub.safetensors"))
    add("hf index naming a directory", path)

    # The index and the shards disagree.
    add("hf key in the index that no shard holds",
        hf_dir(workdir, "hf_ghost_key", good, dict(wm, ghost=SHARDS[0])), ALL)
    add("hf key in a shard that the index lacks",
        hf_dir(workdir, "hf_unlisted_key", good, {k: v for k, v in wm.items() if k != "step"}))
    add("hf key in the index under the wrong shard",
        hf_dir(workdir, "hf_wrong_shard", good, dict(wm, **{"layer.bias": SHARDS[0]})))

    # Indexes that are too big, too deep or not an index.
    path = hf_dir(workdir, "hf_huge_index", good)
    os.truncate(os.path.join(path, INDEX), 65 << 20)  # sparse: over the 64 MiB limit
    add("hf index over 64 MiB", path)
    n = 1_000_000
    add("hf index nested a million levels deep",
        hf_dir(workdir, "hf_deep_index", good,
               index_text='{"weight_map": {"x": ' + "[" * n + "]" * n + "}}"))
    add("hf index that is not JSON", hf_dir(workdir, "hf_not_json", good, index_text="{weight"))
    add("hf index naming a key twice",
        hf_dir(workdir, "hf_dup_index_key", good,
               index_text='{"weight_map": {"step": "%s", "step": "%s"}}' % (SHARDS[1], SHARDS[1])))
    add("hf index file name that is a number",
        hf_dir(workdir, "hf_number_file", good, index_text='{"weight_map": {"step": 7}}'))

    # Shard headers that lie.
    files = shard_files(good)
    name, entries, data = files[1]
    lie = dict(entries, step=("I64", [], len(data), len(data) + 8))
    add("hf shard header offsets beyond the file",
        hf_dir(workdir, "hf_offsets_beyond", good, shards=[files[0], (name, lie, data)]), ALL)
    over = dict(entries, step=("I64", [], 0, 8))  # on top of layer.bias's bytes
    add("hf shard with overlapping tensors",
        hf_dir(workdir, "hf_overlap", good, shards=[files[0], (name, over, data)]))
    path = hf_dir(workdir, "hf_header_2e63", good)
    with open(os.path.join(path, SHARDS[0]), "r+b") as f:
        f.write(struct.pack("<Q", 2**63))
    add("hf shard header length 2^63", path)
    path = hf_dir(workdir, "hf_truncated_shard", good)
    shard = os.path.join(path, SHARDS[0])
    os.truncate(shard, os.path.getsize(shard) - 5)
    add("hf shard cut short", path, ALL)
    bad_key = dict(entries)
    bad_key["caf\udce9"] = bad_key.pop("step")
    path = hf_dir(workdir, "hf_latin1_key", good)
    hdr = header(bad_key, ensure_ascii=False).encode("utf-8", "surrogateescape")
    with open(os.path.join(path, SHARDS[1]), "wb") as f:
        f.write(struct.pack("<Q", len(hdr)) + hdr + data)
    add("hf shard key that is not UTF-8", path)

    # A bool byte 2: the header is right, the bytes are not (inspect does not read them, and
    # the model has no bool to load it into: test_hf_and_diff.py loads one).
    path = hf_dir(workdir, "hf_bool_byte_2", good, dict(wm, mask=SHARDS[0]),
                  shards=[(SHARDS[0], dict(files[0][1], mask=("BOOL", [2], len(files[0][2]),
                                                              len(files[0][2]) + 2)),
                           files[0][2] + b"\x01\x02"), files[1]])
    add("hf shard bool tensor holding byte 2", path, ("verify", "convert"))

    # One model.safetensors that is garbage.
    path = os.path.join(workdir, "hf_single_garbage")
    os.makedirs(path)
    with open(os.path.join(path, "model.safetensors"), "wb") as f:
        f.write(b"\xff" * 64)
    add("hf model.safetensors of garbage", path, ALL)

    # Single files as CKPT.
    add("safetensors CKPT with data outside the file",
        safetensors(os.path.join(workdir, "ckpt_outside.safetensors"),
                    '{"layer.weight":{"dtype":"F32","shape":[8,4],"data_offsets":[0,128]}}',
                    b"\0" * 16), ("load",))
    w = s("layer.weight")
    add("pt CKPT with a view past its storage",
        torch_zip(os.path.join(workdir, "ckpt_view_outside.pt"),
                  state_dict((w, tensor("FloatStorage", "0", 32, 8, [8, 4], [4, 1]))),
                  [("0", b"\0" * 128)]), ("load", "inspect"))
    add("pt CKPT storage referenced but missing",
        torch_zip(os.path.join(workdir, "ckpt_storage_missing.pt"),
                  state_dict((w, tensor("FloatStorage", "9", 32, 0, [8, 4], [4, 1]))),
                  [("0", b"\0" * 128)]), ("load", "inspect"))
    add("pt CKPT pickle calling os.system",
        torch_zip(os.path.join(workdir, "ckpt_os_system.pt"),
                  state_dict((w, g("os", "system") + tup(s("touch pwned")) + b"R"))),
        ("load", "inspect"))
    add("pt CKPT bool tensor holding byte 2",
        torch_zip(os.path.join(workdir, "ckpt_bool2.pt"),
                  state_dict((w, tensor("FloatStorage", "0", 32, 0, [8, 4], [4, 1])),
                             (s("layer.bias"), tensor("FloatStorage", "1", 8, 0, [8], [1])),
                             (s("step"), tensor("LongStorage", "2", 1, 0, [], [])),
                             (s("mask"), tensor("BoolStorage", "3", 3, 0, [3], [1]))),
                  [("0", b"\0" * 128), ("1", b"\0" * 32), ("2", b"\0" * 8),
                   ("3", b"\x01\x02\x00")]), ("verify",))
    return out
