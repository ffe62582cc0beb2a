#!/usr/bin/env python3
"""Writes the seed corpora of the fuzz targets (tests/fuzz/corpus/<target>/) from files that
Python's torch, numpy and safetensors produce. Run once; the seeds are committed. Crashes found
later are added beside them by hand, named crash-<what>."""
import collections
import io
import os
import pickle
import struct
import zipfile

import numpy as np
import torch
from safetensors.torch import save

HERE = os.path.dirname(os.path.abspath(__file__))


def out(target, name, data):
    d = os.path.join(HERE, "corpus", target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def torch_bytes(obj):
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def data_pkl(pt):
    z = zipfile.ZipFile(io.BytesIO(pt))
    return z.read(next(n for n in z.namelist() if n.endswith("/data.pkl")))


def main():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))
    opt = torch.optim.Adam(net.parameters())
    net(torch.randn(4, 3)).sum().backward()
    opt.step()
    base = torch.arange(12.0).reshape(3, 4)
    files = {
        "state_dict": net.state_dict(),
        "views": {"base": base, "t": base.t(), "row": base[1], "expand": base[0].expand(2, 4)},
        "dtypes": {str(d): torch.ones(2, dtype=d) for d in
                   (torch.float16, torch.bfloat16, torch.int8, torch.bool, torch.int64)},
        "adam": opt.state_dict(),
        "nested": {"model": net.state_dict(), "optimizer": opt.state_dict(), "epoch": 3,
                   "best": np.float64(0.5), "name": "run", "flags": [True, None]},
        "params": dict(net.named_parameters()),
        "empty": {},
    }
    for name, obj in files.items():
        pt = torch_bytes(obj)
        out("fuzz_pickle", name, data_pkl(pt))
        if len(pt) < 8192:
            out("fuzz_zip", name, pt)
    out("fuzz_pickle", "protocol4", pickle.dumps(
        collections.OrderedDict(a=[1, 2.5, None, True], b=(b"x", "y"), c={1: -7}), protocol=4))
    out("fuzz_pickle", "numpy", pickle.dumps(
        {"f": np.float32(1.5), "i": np.int16(-3), "u": np.uint64(7), "b": np.bool_(False),
         "s": torch.Size([2, 3])}, protocol=2))

    # A deflated re-zip and a ZIP64 one of a small state dict.
    pt = torch_bytes({"w": torch.ones(3)})
    src = zipfile.ZipFile(io.BytesIO(pt))
    for name, kwargs in (("deflated", dict(compress_type=zipfile.ZIP_DEFLATED)), ("zip64", {})):
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w", allowZip64=True) as dst:
            for info in src.infolist():
                if name == "zip64":
                    with dst.open(info.filename, "w", force_zip64=True) as f:
                        f.write(src.read(info))
                else:
                    dst.writestr(info.filename, src.read(info), **kwargs)
        out("fuzz_zip", name, buf.getvalue())

    out("fuzz_safetensors", "dtypes", save(
        {k: v.contiguous() for k, v in files["dtypes"].items()}, metadata={"format": "pt"}))
    out("fuzz_safetensors", "shapes", save(
        {"scalar": torch.tensor(1.0), "empty": torch.empty(0, 3), "m": torch.ones(2, 3)}))
    out("fuzz_safetensors", "empty", save({}))
    header = b'{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"__metadata__":{"k":"v"}}'
    out("fuzz_safetensors", "handmade", struct.pack("<Q", len(header)) + header + b"\0" * 4)


if __name__ == "__main__":
    main()
