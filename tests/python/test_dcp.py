#!/usr/bin/env python3
"""torch.distributed.checkpoint (DCP) and Megatron-Core torch_dist directories, loaded in place.

The checkpoints are written here, by the pinned torch's own dcp.save (tests/dcp/make_dcp.py):
every case at 1 rank, DTensor shards, AdamW state and replicated values at 2 and 4 ranks with
gloo (uneven and empty shards), one file per item, 4 writer threads, the safetensors
serialization, a Megatron-Core-like .metadata. Each one must

- `inspect` and `verify` (exit 0, checksums reported absent);
- load bit for bit into a model of its keys at 1 rank and at 2 ranks split along dim 0
  (resharded: DCP's chunks are not ours);
- load into a training state through the Python API (model, AdamW, values: the step, the
  param groups) at 2 ranks, as `dcp.load` would have restored it;
- convert to a shardload checkpoint and back to a DCP directory that `dcp.load` reads, bit for
  bit, collectively;
- every dtype DCP can save round-trips; one shardload does not know is refused naming the key.

Environment: SHARDLOAD_BIN; PYTHONPATH with the built `shardload` package for the API part.
Prints "N passed, M failed" last; exits 1 on a failure.
"""
import os
import shutil
import subprocess
import sys
import tempfile

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
MAKE_DCP = os.path.join(HERE, "..", "dcp", "make_dcp.py")
BIN = os.environ.get("SHARDLOAD_BIN", "shardload")
ENV = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
MPIRUN = ["mpirun", "--oversubscribe", "--bind-to", "none"]
passed = failed = 0


def check(ok, what):
    global passed, failed
    if ok:
        passed += 1
    else:
        failed += 1
        print(f"FAIL {what}", file=sys.stderr)
    return ok


def run(args, expect=0, ranks=0, timeout=180):
    cmd = ([*MPIRUN, "-np", str(ranks)] if ranks else []) + [BIN, *args]
    p = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=timeout)
    p.ok = check(p.returncode == expect, f"{' '.join(cmd)}: exit {p.returncode}, expected "
                                         f"{expect}\n{p.stdout[-600:]}{p.stderr[-1200:]}")
    return p


def free_port():
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def flatten(obj, prefix, tensors, values):
    """DCP's flattening of a nested state dict: dict keys joined by '.', lists only where they
    hold tensors or dicts."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            flatten(v, f"{prefix}.{k}" if prefix else str(k), tensors, values)
    elif isinstance(obj, (list, tuple)) and any(isinstance(x, (torch.Tensor, dict)) for x in obj):
        for i, v in enumerate(obj):
            flatten(v, f"{prefix}.{i}", tensors, values)
    elif isinstance(obj, torch.Tensor):
        tensors[prefix] = obj
    else:
        values[prefix] = obj


def same_bits(a, b):
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    if a.numel() == 0:
        return True
    return torch.equal(a.reshape(-1).contiguous().view(torch.uint8),
                       b.reshape(-1).contiguous().view(torch.uint8))


def compare(got, want, what):
    check(sorted(got) == sorted(want), f"{what}: keys {sorted(got)} != {sorted(want)}")
    bad = [k for k in want if k in got and not same_bits(got[k], want[k])]
    check(not bad, f"{what}: not bit-exact: {bad}")


def split_rule(tensors):
    keys = [k for k, t in tensors.items() if t.dim() >= 1]
    import re
    return "^(" + "|".join(re.escape(k) for k in keys) + ")$=0"


def load_case(work, ckpt, expected, label, ranks_list=(1, 2)):
    tensors, values = {}, {}
    flatten(torch.load(expected, weights_only=True), "", tensors, values)
    ref = os.path.join(work, f"{label}.ref.pt")
    torch.save({k: torch.zeros_like(v) for k, v in tensors.items()}, ref)
    p = run(["inspect", ckpt])
    check(p.ok and "no checksums" in p.stdout, f"{label}: inspect says checksums are absent")
    p = run(["verify", ckpt])
    check("OK" in p.stdout, f"{label}: verify OK\n{p.stdout}")
    for ranks in ranks_list:
        out = os.path.join(work, f"{label}.np{ranks}.pt")
        args = ["load", ckpt, "--into", ref, "--out", out, "--no-strict", "--quiet"]
        if ranks > 1:
            args += ["--split", split_rule(tensors)]
        p = run(args, ranks=ranks if ranks > 1 else 0)
        if p.ok:
            compare(torch.load(out, weights_only=True), tensors, f"{label} at {ranks} rank(s)")
            # The values are the checkpoint's keys too (PyTorch's verdict: unexpected here).
            if values:
                check(f"unexpected {len(values_keys(values))} key(s)" in p.stdout,
                      f"{label}: the values are unexpected keys: {p.stdout}")
    return tensors, values


def values_keys(values):
    """The keys our values take: a DCP key up to its first list index."""
    out = set()
    for k in values:
        parts = k.split(".")
        cut = next((i for i, s in enumerate(parts) if s.isdigit() and i > 0), len(parts))
        out.add(".".join(parts[:cut]) if cut < len(parts) else k)
    return out


API_SCRIPT = r"""
import sys, torch, shardload
ckpt, expected = sys.argv[1], sys.argv[2]
torch.manual_seed(0)
model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU(),
                            torch.nn.Linear(3, 2, bias=False))
model.register_buffer("running", torch.ones(2))
opt = torch.optim.AdamW(model.parameters(), lr=0.5, weight_decay=0.0)
state = {"model": model, "optim": opt}
r = shardload.load(state, ckpt)
want = torch.load(expected, weights_only=True)
ok = True
for k, v in want["model"].items():
    ok &= torch.equal(model.state_dict()[k], v)
names = {p: n for n, p in model.named_parameters()}
for p, st in opt.state.items():
    for f, v in st.items():
        w = want["optim"]["state"][names[p]][f]
        ok &= torch.equal(torch.as_tensor(v).to(w.dtype), w)
g, wg = opt.param_groups[0], want["optim"]["param_groups"][0]
ok &= g["lr"] == wg["lr"] and tuple(g["betas"]) == tuple(wg["betas"]) and \
    g["weight_decay"] == wg["weight_decay"]
# One write per rank, whole lines: two ranks' prints interleave word by word otherwise.
sys.stdout.write(f"API {'OK' if ok else 'MISMATCH'} {len(opt.state)} {g['lr']} "
                 f"{g['weight_decay']}\n")
sys.stdout.flush()
"""


def dtypes_case(work):
    """Every dtype shardload knows, saved by dcp.save in this process, loaded bit for bit; a
    dtype shardload does not know (bcomplex32) refused naming the key."""
    import torch.distributed.checkpoint as dcp
    dtypes = [torch.float64, torch.float32, torch.float16, torch.bfloat16, torch.int64,
              torch.int32, torch.int16, torch.int8, torch.uint8, torch.bool, torch.uint16,
              torch.uint32, torch.uint64, torch.complex32, torch.complex64, torch.complex128,
              torch.float8_e4m3fn, torch.float8_e5m2, torch.float8_e4m3fnuz,
              torch.float8_e5m2fnuz, torch.float8_e8m0fnu, torch.float4_e2m1fn_x2]
    g = torch.Generator().manual_seed(7)
    sd = {}
    for dt in dtypes:
        size = torch.empty((), dtype=dt).element_size()
        raw = torch.randint(0, 256, (3, 4 * size), dtype=torch.uint8, generator=g)
        if dt == torch.bool:
            raw = raw % 2
        sd["t." + str(dt).split(".")[1]] = raw.view(dt)
    ckpt = os.path.join(work, "dtypes")
    dcp.save(sd, checkpoint_id=ckpt, no_dist=True)
    expected = os.path.join(work, "dtypes.expected.pt")
    torch.save(sd, expected)
    load_case(work, ckpt, expected, "dtypes", ranks_list=(1, 2))
    bad = os.path.join(work, "bcomplex")
    dcp.save({"w": torch.zeros(2, dtype=torch.float32), "z": torch.zeros(2, dtype=torch.bcomplex32)},
             checkpoint_id=bad, no_dist=True)
    p = run(["inspect", bad], expect=3)
    check("'z'" in p.stderr and "bcomplex32" in p.stderr and ".metadata" in p.stderr,
          f"bcomplex32 refused naming the key and the file: {p.stderr}")


def convert_case(work, w4):
    """DCP (4 ranks' AdamW save) -> shardload at 2 ranks -> DCP at 3 ranks, read back by
    torch's own dcp.load into get_state_dict's structure (set_state_dict then restores a fresh
    model and optimizer): bit for bit, the param groups equal."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict
    src = os.path.join(w4, "optim")
    ours, back = os.path.join(work, "conv.shardload"), os.path.join(work, "conv.dcp")
    if not run(["convert", src, ours, "--quiet"], ranks=2).ok:
        return
    p = run(["verify", ours])
    check("OK" in p.stdout, f"the converted checkpoint verifies: {p.stdout}")
    if not run(["convert", ours, back, "--format", "dcp", "--quiet"], ranks=3).ok:
        return
    run(["diff", src, back])
    torch.manual_seed(1)
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU(),
                                torch.nn.Linear(3, 2, bias=False))
    model.register_buffer("running", torch.ones(2))
    opt = torch.optim.AdamW(model.parameters(), lr=0.5)
    model(torch.zeros(1, 4)).sum().backward()
    opt.step()  # a state to overwrite
    msd, osd = get_state_dict(model, opt)
    state = {"model": msd, "optim": osd}
    dcp.load(state, checkpoint_id=back, no_dist=True)
    set_state_dict(model, opt, model_state_dict=state["model"], optim_state_dict=state["optim"])
    want = torch.load(os.path.join(w4, "optim.expected.pt"), weights_only=True)
    got_m, got_o = get_state_dict(model, opt)
    check(all(same_bits(got_m[k], v) for k, v in want["model"].items()),
          "dcp.load of our DCP directory: the model, bit for bit")
    check(all(same_bits(got_o["state"][n][f], v) for n, st in want["optim"]["state"].items()
              for f, v in st.items()), "dcp.load of our DCP directory: the AdamW state")
    check(got_o["param_groups"] == want["optim"]["param_groups"],
          f"dcp.load of our DCP directory: the param groups {got_o['param_groups']}")


def main():
    work = tempfile.mkdtemp(prefix="shardload-dcp-")
    try:
        # The multi-rank fixtures start first (each rank imports torch: slow), in the background.
        multi = {}
        for ranks, cases in ((2, ["dtensor", "optim", "replicated"]),
                             (4, ["dtensor", "optim", "single_file_off"])):
            out = os.path.join(work, f"w{ranks}")
            args = [*MPIRUN, "-np", str(ranks), sys.executable, MAKE_DCP, out, "--no-verify"]
            for c in cases:
                args += ["--case", c]
            env = dict(ENV, MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()))
            multi[ranks] = (out, cases, subprocess.Popen(args, env=env, stdout=subprocess.PIPE,
                                                         stderr=subprocess.STDOUT, text=True))
        w1 = os.path.join(work, "w1")
        p = subprocess.run([sys.executable, MAKE_DCP, w1, "--no-verify"], env=ENV,
                           capture_output=True, text=True, timeout=300)
        check(p.returncode == 0, f"make_dcp at 1 rank: {p.stdout}{p.stderr}")
        # At 1 rank every case; resharded at 2 ranks those whose layout differs most.
        for case in ["replicated", "dtensor", "optim", "single_file_off", "threads",
                     "safetensors_ser", "mcore_like"]:
            load_case(work, os.path.join(w1, case), os.path.join(w1, f"{case}.expected.pt"),
                      f"w1.{case}", ranks_list=(1, 2) if case in ("threads", "safetensors_ser",
                                                                  "mcore_like") else (1,))
        p = run(["inspect", os.path.join(w1, "mcore_like")])
        check("Megatron-Core torch_dist" in p.stdout, f"mcore_like is named Megatron: {p.stdout}")
        # A torch_dist directory whose .metadata is missing: incomplete, never read.
        torn = os.path.join(work, "torn")
        shutil.copytree(os.path.join(w1, "mcore_like"), torn)
        os.remove(os.path.join(torn, ".metadata"))
        p = run(["inspect", torn], expect=3)
        check("incomplete" in p.stderr, f"a torch_dist dir without .metadata: {p.stderr}")
        dtypes_case(work)

        for ranks, (out, cases, proc) in multi.items():
            text, _ = proc.communicate(timeout=300)
            if not check(proc.returncode == 0, f"make_dcp at {ranks} ranks: {text}"):
                continue
            for case in cases:
                load_case(work, os.path.join(out, case), os.path.join(out, f"{case}.expected.pt"),
                          f"w{ranks}.{case}",
                          ranks_list=(2,) if ranks == 2 else (3,) if case != "single_file_off"
                          else (1,))

        # --select: the model of a {"model": ..., "optim": ...} save, strict, keys without the
        # prefix; a prefix that selects nothing is a usage error.
        w4 = multi[4][0]
        want = torch.load(os.path.join(w4, "optim.expected.pt"), weights_only=True)["model"]
        ref, out = os.path.join(work, "model.ref.pt"), os.path.join(work, "model.out.pt")
        torch.save({k: torch.zeros_like(v) for k, v in want.items()}, ref)
        if run(["load", os.path.join(w4, "optim"), "--into", ref, "--select-ckpt", "model",
                "--out", out, "--quiet"]).ok:
            compare(torch.load(out, weights_only=True), want, "--select-ckpt model")
        p = run(["inspect", os.path.join(w4, "optim"), "--select", "nothing"], expect=2)
        check("names no sub-dictionary" in p.stderr, f"--select of nothing: {p.stderr}")
        convert_case(work, multi[4][0])

        # The training state through the Python API, at 2 ranks, from the 4-rank AdamW save.
        script = os.path.join(work, "api.py")
        with open(script, "w") as f:
            f.write(API_SCRIPT)
        w4 = multi[4][0]
        p = subprocess.run([*MPIRUN, "-np", "2", sys.executable, script, os.path.join(w4, "optim"),
                            os.path.join(w4, "optim.expected.pt")], env=ENV, capture_output=True,
                           text=True, timeout=180)
        check(p.returncode == 0 and p.stdout.split().count("OK") == 2 and
              "MISMATCH" not in p.stdout,
              f"training state from DCP via the Python API: {p.stdout}{p.stderr[-1500:]}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"{passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
