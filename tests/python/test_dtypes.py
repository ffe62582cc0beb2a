#!/usr/bin/env python3
"""Every dtype torch and safetensors define, through every format that can hold it, against
PyTorch's own files: torch.save (legacy typed storages and _rebuild_tensor_v3), safetensors
(written by the safetensors package, F8_*, F4, U16-64, C64), a shardload checkpoint, and back to
.pt and .safetensors, bit for bit; a Hugging Face FP8 directory (weights plus weight_scale_inv)
loads into its model; a dtype nobody can read is refused with a clear error naming file and key.

Environment: SHARDLOAD_BIN, the `shardload` binary. One process (no mpirun): the formats are the
subject here, the ranks are elsewhere. Prints "N passed, M failed" last; exits 1 on a failure.
"""
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile

import torch
from safetensors.torch import load_file, save_file

try:  # the Python API part runs when `import shardload` was built (PYTHONPATH)
    import shardload
    API = True
except ImportError:
    API = False

BIN = os.environ.get("SHARDLOAD_BIN", "shardload")
ENV = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
passed = failed = 0

# Every dtype shardload knows; which of them safetensors holds.
DTYPES = [torch.float64, torch.float32, torch.float16, torch.bfloat16, torch.int64, torch.int32,
          torch.int16, torch.int8, torch.uint8, torch.bool, torch.uint16, torch.uint32,
          torch.uint64, torch.complex32, torch.complex64, torch.complex128, torch.float8_e4m3fn,
          torch.float8_e5m2, torch.float8_e4m3fnuz, torch.float8_e5m2fnuz, torch.float8_e8m0fnu,
          torch.float4_e2m1fn_x2]
NOT_SAFETENSORS = {torch.complex32, torch.complex128}


def check(ok, what):
    global passed, failed
    if ok:
        passed += 1
    else:
        failed += 1
        print(f"FAIL {what}", file=sys.stderr)
    return ok


def run(*args, expect=0):
    p = subprocess.run([BIN, *args], env=ENV, capture_output=True, text=True, timeout=120)
    p.ok = check(p.returncode == expect, f"shardload {' '.join(args)}: exit {p.returncode}, "
                                         f"expected {expect}\n{p.stderr[-800:]}")
    return p


def random_bits(dtype, shape, gen):
    """Random bytes (NaNs, infinities and all) viewed as `dtype`."""
    size = torch.empty((), dtype=dtype).element_size()
    if dtype == torch.bool:
        return torch.randint(0, 2, shape, generator=gen).bool()
    n = 1
    for d in shape:
        n *= d
    raw = torch.randint(0, 256, (max(n, 1) * size,), dtype=torch.uint8, generator=gen)
    return raw.view(dtype)[:n].reshape(shape).clone()


def bits(t):
    return t.contiguous().view(torch.uint8) if t.dim() else t.reshape(1).view(torch.uint8)


def same(a, b):
    return a.dtype == b.dtype and a.shape == b.shape and torch.equal(bits(a), bits(b))


def compare(got, want, what):
    check(sorted(got) == sorted(want), f"{what}: keys {sorted(got)} != {sorted(want)}")
    for k, v in want.items():
        if k in got:
            check(same(got[k], v), f"{what}: {k!r} differs ({got[k].dtype} {tuple(got[k].shape)}"
                                   f" vs {v.dtype} {tuple(v.shape)})")


def main():
    work = tempfile.mkdtemp(prefix="shardload-dtypes-")
    try:
        gen = torch.Generator().manual_seed(5)
        sd = {}
        for dt in DTYPES:
            name = str(dt).removeprefix("torch.")
            sd[f"{name}.m"] = random_bits(dt, (3, 4), gen)
            sd[f"{name}.s"] = random_bits(dt, (), gen)
        # A strided view of a v3 dtype: torch.save keeps the storage, the reader follows strides.
        sd["float8_e4m3fn.t"] = random_bits(torch.float8_e4m3fn, (4, 6), gen).t()
        sd["uint16.slice"] = random_bits(torch.uint16, (10,), gen)[3:7]
        pt = os.path.join(work, "all.pt")
        torch.save(sd, pt)

        # torch.save -> shardload -> torch.save and safetensors, bit for bit.
        ckpt = os.path.join(work, "ckpt")
        run("convert", pt, ckpt)
        run("verify", ckpt)
        back = os.path.join(work, "back.pt")
        if run("convert", ckpt, back).ok:
            compare(torch.load(back, weights_only=True), sd, ".pt -> shardload -> .pt")
        inspect = run("inspect", ckpt).stdout
        check("float8_e4m3fn" in inspect and "complex128" in inspect and "uint64" in inspect,
              f"inspect does not name the dtypes:\n{inspect[:600]}")

        # Loading in place into a model of the same dtypes (the reference file is the model).
        ref = os.path.join(work, "ref.pt")
        torch.save({k: torch.zeros_like(v) for k, v in sd.items()}, ref)
        out = os.path.join(work, "loaded.pt")
        if run("load", ckpt, "--into", ref, "--out", out).ok:
            compare(torch.load(out, weights_only=True), sd, "load into the model")
        # Under two ranks (the declarations of every dtype go between them), split along dim 0.
        out = os.path.join(work, "loaded-np2.pt")
        p = subprocess.run([os.environ.get("MPIRUN", "mpirun"), "-np", "2", BIN, "load", ckpt,
                            "--into", ref, "--out", out, "--split", r"\.m$=0"], env=ENV,
                           capture_output=True, text=True, timeout=120)
        if check(p.returncode == 0, f"load at 2 ranks: exit {p.returncode}\n{p.stderr[-800:]}"):
            compare(torch.load(out, weights_only=True), sd, "load at 2 ranks, split")
        # And from the .pt file itself, read in place.
        out = os.path.join(work, "loaded-pt.pt")
        if run("load", pt, "--into", ref, "--out", out).ok:
            compare(torch.load(out, weights_only=True), sd, "load from .pt in place")

        # safetensors written by the safetensors package: every dtype it holds.
        # (A 0-d float4_e2m1fn_x2 has no F4 shape: its two values lie along the last dimension.)
        st_sd = {k: v.contiguous() for k, v in sd.items()
                 if v.dtype not in NOT_SAFETENSORS
                 and not (v.dtype == torch.float4_e2m1fn_x2 and v.dim() == 0)}
        st = os.path.join(work, "all.safetensors")
        save_file(st_sd, st)
        ckpt2 = os.path.join(work, "ckpt2")
        run("convert", st, ckpt2)
        back_st = os.path.join(work, "back.safetensors")
        if run("convert", ckpt2, back_st).ok:
            compare(load_file(back_st), st_sd, "safetensors -> shardload -> safetensors")
        # A dtype safetensors lacks is refused when writing one, naming the key.
        p = run("convert", ckpt, os.path.join(work, "no.safetensors"), expect=2)
        check("complex" in p.stderr, f"converting complex to safetensors: {p.stderr[-400:]}")

        # A Hugging Face FP8 directory: F8_E4M3 weights, float32 weight_scale_inv per block.
        hf = os.path.join(work, "hf")
        os.makedirs(hf)
        fp8 = {"model.layers.0.mlp.up_proj.weight": random_bits(torch.float8_e4m3fn, (256, 128),
                                                                  gen),
               "model.layers.0.mlp.up_proj.weight_scale_inv": torch.rand(2, 1, generator=gen),
               "model.norm.weight": torch.randn(128, generator=gen).bfloat16()}
        save_file({k: v for k, v in fp8.items() if "norm" not in k},
                  os.path.join(hf, "model-00001-of-00002.safetensors"), metadata={"format": "pt"})
        save_file({"model.norm.weight": fp8["model.norm.weight"]},
                  os.path.join(hf, "model-00002-of-00002.safetensors"), metadata={"format": "pt"})
        with open(os.path.join(hf, "model.safetensors.index.json"), "w") as f:
            json.dump({"metadata": {}, "weight_map": {
                k: ("model-00002-of-00002.safetensors" if "norm" in k
                    else "model-00001-of-00002.safetensors") for k in fp8}}, f)
        hf_ref = os.path.join(work, "hf_ref.pt")
        torch.save({k: torch.zeros_like(v) for k, v in fp8.items()}, hf_ref)
        out = os.path.join(work, "loaded-hf.pt")
        if run("load", hf, "--into", hf_ref, "--out", out).ok:
            compare(torch.load(out, weights_only=True), fp8, "Hugging Face FP8 directory")

        # The Python API: save and load every dtype in place, and a float8 checkpoint into a
        # float32 model converts like copy_.
        if API:
            api = os.path.join(work, "api")
            shardload.save(sd, api)
            target = {k: torch.zeros_like(v) for k, v in sd.items()}
            shardload.load(target, api)
            compare(target, sd, "shardload.save/load")
            wide = {"float8_e4m3fn.m": torch.zeros(3, 4)}
            keys = shardload.load(wide, api, strict=False)
            check(torch.equal(wide["float8_e4m3fn.m"], sd["float8_e4m3fn.m"].float()),
                  "float8 into float32 is not copy_'s conversion")
            check([c.from_dtype for c in keys.result.dtype_conversions] == ["float8_e4m3fn"],
                  f"dtype_conversions {keys.result.dtype_conversions}")

        # Unknown dtypes: refused, naming the file and the key, never read as another dtype.
        bad = os.path.join(work, "f6.safetensors")
        header = json.dumps({"w": {"dtype": "F6_E2M3", "shape": [4], "data_offsets": [0, 3]}})
        with open(bad, "wb") as f:
            f.write(struct.pack("<Q", len(header)) + header.encode() + b"\0\0\0")
        p = run("inspect", bad, expect=3)
        check("f6.safetensors" in p.stderr and "'w'" in p.stderr and "F6_E2M3" in p.stderr,
              f"F6_E2M3: {p.stderr[-400:]}")
        bits8 = os.path.join(work, "bits8.pt")
        torch.save({"b": torch.zeros(4, dtype=torch.uint8).view(torch.bits8)}, bits8)
        p = run("inspect", bits8, expect=3)
        check("bits8.pt" in p.stderr and "bits8" in p.stderr, f"bits8: {p.stderr[-400:]}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"{passed} passed, {failed} failed" + ("" if API else " (Python API not built: not run)"))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
