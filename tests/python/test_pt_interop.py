#!/usr/bin/env python3
"""PyTorch and safetensors interop of `shardload convert`, with Python's torch as the oracle.

State dicts made and saved by Python's torch (torch.save, safetensors.torch.save_file) go
through `shardload convert SRC CKPT` and `shardload convert CKPT OUT`; what comes back must load
with `torch.load(OUT, weights_only=True)` and equal the source bit for bit: keys (and their order
for .pt sources), dtypes, shapes, bytes. Bad inputs must exit 3 naming the file, and a pickle
with a non-state-dict global must be rejected without running it.

Environment: SHARDLOAD_BIN, the `shardload` binary. Prints "N passed, M failed" last; exits
non-zero on any failure.
"""
import collections
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
import zipfile

import numpy
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

BIN = os.environ.get("SHARDLOAD_BIN", "shardload")
FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "fixtures")
TMP = tempfile.mkdtemp(prefix="shardload-pt-interop-")
DEBIAN_PYTHON = "/usr/bin/python3"  # torch 1.x from Debian's python3-torch, when installed

ALL_DTYPES = [torch.float64, torch.float32, torch.float16, torch.bfloat16, torch.int64,
              torch.int32, torch.int16, torch.int8, torch.uint8, torch.bool]


def path(name):
    return os.path.join(TMP, name)


def run(*args, expect=0):
    proc = subprocess.run([BIN, *args], capture_output=True, text=True, timeout=120)
    if expect is not None and proc.returncode != expect:
        raise AssertionError(f"`shardload {' '.join(args)}` exited {proc.returncode}, expected "
                             f"{expect}\nstdout: {proc.stdout}\nstderr: {proc.stderr}")
    return proc


def raw_bytes(t):
    return t.detach().contiguous().reshape(-1).view(torch.uint8)


def assert_same(expected, actual, ordered=True):
    """Same keys (in the same order when `ordered`), dtypes, shapes and bytes."""
    if ordered:
        assert list(actual) == list(expected), f"keys {list(actual)} != {list(expected)}"
    else:
        assert sorted(actual) == sorted(expected), f"keys {sorted(actual)} != {sorted(expected)}"
    for key, want in expected.items():
        got = actual[key]
        assert isinstance(got, torch.Tensor), f"{key!r}: {type(got)}"
        assert got.dtype == want.dtype, f"{key!r}: dtype {got.dtype} != {want.dtype}"
        assert got.shape == want.shape, f"{key!r}: shape {tuple(got.shape)} != {tuple(want.shape)}"
        assert torch.equal(raw_bytes(got), raw_bytes(want)), f"{key!r}: values differ"


def load_pt(p):
    sd = torch.load(p, weights_only=True)
    assert_same(sd, torch.load(p, weights_only=False))
    return sd


# ----- state dicts, deterministic


def every_dtype():
    base = torch.arange(-6, 6, dtype=torch.float64).reshape(3, 4) * 0.75
    sd = {f"t.{str(d)[6:]}": base.to(d) for d in ALL_DTYPES if d not in (torch.uint8, torch.bool)}
    sd["t.uint8"] = torch.arange(0, 250, 21).to(torch.uint8)
    sd["t.bool"] = torch.arange(7) % 3 == 0
    sd["t.specials"] = torch.tensor([0.0, -0.0, float("inf"), float("-inf"), float("nan"), 1e-40])
    sd["t.bf16_specials"] = torch.tensor([float("nan"), -0.0, 3.0e38, 1e-40]).to(torch.bfloat16)
    sd["t.int64_extremes"] = torch.tensor([-(2**63), 2**63 - 1, -1])
    return sd


def scalars_and_empty():
    sd = {f"scalar.{str(d)[6:]}": torch.tensor(3, dtype=d) for d in ALL_DTYPES}
    sd["empty"] = torch.empty(0)
    sd["empty_2x0x3"] = torch.empty(2, 0, 3, dtype=torch.float16)
    sd["empty_bf16"] = torch.empty(0, 5, dtype=torch.bfloat16)
    sd["after_empty"] = torch.arange(3, dtype=torch.int32)
    return sd


def non_contiguous():
    base = torch.arange(48, dtype=torch.float32).reshape(6, 8)
    return {
        "transposed": base.t(),
        "sliced": base[1:5:2, ::3],
        "row_with_offset": base[3],
        "expanded": torch.arange(4, dtype=torch.int16).unsqueeze(0).expand(3, 4),
        "bf16_transposed": base.to(torch.bfloat16).t()[2:],
        "base": base,  # shares its storage with the views above
    }


class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv1d(2, 3, 3)
        self.bn = torch.nn.BatchNorm1d(3)
        self.fc = torch.nn.Linear(3, 2)
        self.register_buffer("steps", torch.tensor(11))
        self.register_buffer("mask", torch.tensor([True, False]))


def module_state_dict():
    net = Net()
    net.train()
    net.bn(net.conv(torch.randn(4, 2, 5, generator=torch.Generator().manual_seed(1))))
    sd = net.state_dict()
    assert isinstance(sd, collections.OrderedDict) and hasattr(sd, "_metadata")
    assert sd["bn.num_batches_tracked"].item() == 1
    return sd


def parameters():
    # nn.Parameter values pickle through torch._utils._rebuild_parameter.
    return dict(Net().named_parameters())


def unusual_keys():
    return {
        "z.first": torch.ones(1),
        "größe.γ": torch.ones(2),
        "a/b//c": torch.ones(3),
        "with space": torch.ones(4),
        "quote'\"\\": torch.ones(5),
        "emoji 😀": torch.ones(6),
    }


# ----- checks


def roundtrip(name, sd, shards=(None, 3), to_safetensors=True):
    src = path(f"{name}.pt")
    torch.save(sd, src)
    expected = torch.load(src, weights_only=True)
    for n in shards:
        tag = f"{name}-{n or 'default'}"
        ckpt, out = path(f"{tag}.ckpt"), path(f"{tag}.pt")
        run("convert", src, ckpt, *(["--shards", str(n)] if n else []))
        run("convert", ckpt, out)
        assert_same(expected, load_pt(out))
    if to_safetensors:
        out = path(f"{name}-direct.safetensors")
        run("convert", src, out)
        assert_same(expected, load_file(out), ordered=False)


def test_every_dtype():
    roundtrip("dtypes", every_dtype())


def test_scalars_and_empty():
    roundtrip("scalars", scalars_and_empty(), shards=(None,))


def test_non_contiguous():
    roundtrip("views", non_contiguous(), shards=(None,))


def test_module_state_dict():
    roundtrip("module", module_state_dict())


def test_parameters():
    roundtrip("params", parameters(), shards=(None,), to_safetensors=False)


def test_unusual_keys():
    roundtrip("keys", unusual_keys(), shards=(3,), to_safetensors=False)


def test_safetensors_source():
    sd = {k: v.contiguous() for k, v in every_dtype().items()}
    src = path("st.safetensors")
    save_file(sd, src)
    ckpt = path("st.ckpt")
    run("convert", src, ckpt, "--shards", "2")
    run("convert", ckpt, path("st.pt"))
    assert_same(sd, load_pt(path("st.pt")), ordered=False)
    run("convert", ckpt, path("st-back.safetensors"))
    assert_same(sd, load_file(path("st-back.safetensors")), ordered=False)


def test_torch1_fixture():
    src = os.path.join(FIXTURES, "torch1_state_dict.pt")
    expected = torch.load(src, weights_only=True)
    ckpt, out = path("torch1.ckpt"), path("torch1.pt")
    run("convert", src, ckpt)
    run("convert", ckpt, out)
    assert_same(expected, load_pt(out))


def test_output_loads_in_torch1():
    """The .pt we write loads in Debian's torch 1.x too (skipped where it is not installed)."""
    probe = subprocess.run([DEBIAN_PYTHON, "-c", "import torch"], capture_output=True)
    if probe.returncode != 0:
        print("  (skipped: no torch for /usr/bin/python3)")
        return
    sd = every_dtype()
    src, out = path("for-torch1.safetensors"), path("for-torch1.pt")
    save_file({k: v.contiguous() for k, v in sd.items()}, src)
    run("convert", src, out)
    script = (
        "import sys, torch\n"
        "sd = torch.load(sys.argv[1])\n"
        "print(';'.join(f'{k}={v.dtype}{tuple(v.shape)}{v.contiguous().reshape(-1).view(torch.uint8).tolist()}'"
        " for k, v in sorted(sd.items())))\n")
    got = subprocess.run([DEBIAN_PYTHON, "-c", script, out], capture_output=True, text=True)
    assert got.returncode == 0, got.stderr
    want = ";".join(f"{k}={v.dtype}{tuple(v.shape)}{raw_bytes(v).tolist()}"
                    for k, v in sorted(sd.items()))
    assert got.stdout.strip() == want, f"torch 1.x read\n{got.stdout}\nexpected\n{want}"


def test_missing_source():
    missing = path("no-such-model.pt")
    proc = run("convert", missing, path("never.ckpt"), expect=3)
    assert missing in proc.stderr, proc.stderr


class Evil:
    """Unpickling this creates the marker file: a loader that runs pickled code is caught."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_rejects_code_in_pickle():
    marker = path("pwned")
    src = path("evil.pt")
    torch.save({"w": torch.ones(2), "evil": Evil(marker)}, src)
    assert not os.path.exists(marker)
    proc = run("convert", src, path("evil.ckpt"), expect=3)
    assert src in proc.stderr, proc.stderr
    assert "open" in proc.stderr and "not allowed" in proc.stderr, proc.stderr  # io.open
    assert not os.path.exists(marker), "the pickled call was executed"
    assert not os.path.exists(path("evil.ckpt")), "a checkpoint was written"


def test_rejects_other_globals():
    src = path("counter.pt")
    torch.save({"w": torch.ones(2), "counts": collections.Counter(a=1)}, src)
    proc = run("convert", src, path("counter.ckpt"), expect=3)
    assert src in proc.stderr and "collections.Counter" in proc.stderr, proc.stderr


def test_rejects_non_tensor_values():
    src = path("epoch.pt")
    torch.save({"w": torch.ones(2), "epoch": 3}, src)
    proc = run("convert", src, path("epoch.ckpt"), expect=3)
    assert src in proc.stderr and "'epoch'" in proc.stderr, proc.stderr


def test_rejects_corrupt_files():
    good = path("good.pt")
    torch.save({"w": torch.arange(100.0)}, good)
    data = open(good, "rb").read()
    for name, content in [("truncated.pt", data[: len(data) // 2]),
                          ("garbage.safetensors", b"\xff" * 64)]:
        bad = path(name)
        with open(bad, "wb") as f:
            f.write(content)
        proc = run("convert", bad, path(name + ".ckpt"), expect=3)
        assert bad in proc.stderr, proc.stderr


# ----- nested training checkpoints (--select)


def trained_model_and_adam():
    torch.manual_seed(0)
    net = Net()
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    for _ in range(2):
        opt.zero_grad()
        net.fc(net.bn(net.conv(torch.randn(4, 2, 5))).mean(-1)).sum().backward()
        opt.step()
    return net, opt


def flatten(tree, prefix=""):
    """Tensors of nested dicts/lists keyed by their dotted path, as --select flattens them."""
    out = {}
    items = tree.items() if isinstance(tree, dict) else enumerate(tree)
    for k, v in items:
        path = f"{prefix}{k}"
        if isinstance(v, torch.Tensor):
            out[path] = v
        elif isinstance(v, (dict, list, tuple)):
            out.update(flatten(v, path + "."))
    return out


def test_nested_checkpoint_select():
    net, opt = trained_model_and_adam()
    src = path("train.pt")
    torch.save({"model": net.state_dict(), "optimizer": opt.state_dict(), "epoch": 3,
                "best_loss": numpy.float64(0.25), "run": "exp-1", "scaler": None}, src)
    proc = run("convert", src, path("train-flat.ckpt"), expect=3)
    assert src in proc.stderr and "--select" in proc.stderr and "'model'" in proc.stderr, \
        proc.stderr

    out = path("model.pt")
    proc = run("convert", src, out, "--select", "model")
    assert "skipped scaler: None" in proc.stdout, proc.stdout
    assert_same(net.state_dict(), load_pt(out))

    ckpt = path("optim.ckpt")
    run("convert", src, ckpt, "--select", "optimizer")
    meta = json.loads(run("inspect", ckpt, "--json").stdout)["metadata"]
    assert meta["epoch"] == "3" and meta["best_loss"] == "0.25" and meta["run"] == "exp-1", meta
    assert meta["optimizer.param_groups.0.lr"] == "0.001", meta
    assert meta["optimizer.param_groups.0.betas"] == "(0.9, 0.999)", meta
    back = path("optim.pt")
    run("convert", ckpt, back)
    expected = flatten(opt.state_dict())
    assert any(k.endswith(".exp_avg_sq") for k in expected), expected.keys()
    assert_same(expected, load_pt(back))

    proc = run("convert", src, path("nope.pt"), "--select", "optimiser", expect=2)
    assert "no key 'optimiser'" in proc.stderr and "'optimizer'" in proc.stderr, proc.stderr


def test_lightning_like_checkpoint():
    net, opt = trained_model_and_adam()
    sd = {f"model.{k}": v for k, v in net.state_dict().items()}
    src = path("lightning.pt")
    torch.save({"epoch": 7, "global_step": 140, "pytorch-lightning_version": "2.4.0",
                "state_dict": sd, "optimizer_states": [opt.state_dict()], "lr_schedulers": [],
                "loops": {"fit_loop": {"epoch_progress": {"total": {"ready": 7}}}},
                "hyper_parameters": {"lr": 0.001, "layers": [2, 3, 2], "name": "net"}}, src)
    out = path("lightning.safetensors")
    run("convert", src, out, "--select", "state_dict")
    assert_same(sd, load_file(out), ordered=False)
    with safe_open(out, "pt") as f:
        meta = f.metadata()
    assert meta["epoch"] == "7" and meta["global_step"] == "140", meta
    assert meta["hyper_parameters.layers"] == "[2, 3, 2]", meta
    assert meta["loops.fit_loop.epoch_progress.total.ready"] == "7", meta
    # Several levels down, by a dotted path; an int key in decimal.
    run("convert", src, path("state0.pt"), "--select", "optimizer_states.0.state.0")
    assert_same(opt.state_dict()["state"][0], load_pt(path("state0.pt")), ordered=False)


def test_select_never_runs_code():
    marker = path("pwned-nested")
    src = path("evil-nested.pt")
    torch.save({"model": {"w": torch.ones(2)}, "extra": Evil(marker)}, src)
    proc = run("convert", src, path("evil-nested-out.pt"), "--select", "model", expect=3)
    assert src in proc.stderr and "not allowed" in proc.stderr, proc.stderr
    assert not os.path.exists(marker), "the pickled call was executed"


def test_deflated_archive():
    """A torch.save file re-zipped with compression is refused, never inflated: torch.save
    stores every record, and a deflated record can declare sizes far beyond the file (a zip
    bomb, tests/hostile/gen_bounds.py)."""
    sd = every_dtype()
    src = path("plain.pt")
    torch.save(sd, src)
    deflated = path("deflated.pt")
    with zipfile.ZipFile(src) as a, zipfile.ZipFile(deflated, "w", zipfile.ZIP_DEFLATED) as b:
        for info in a.infolist():
            b.writestr(info.filename, a.read(info))
    proc = run("convert", deflated, path("deflated-out.pt"), expect=3)
    assert deflated in proc.stderr and "compressed" in proc.stderr, proc.stderr
    assert not os.path.exists(path("deflated-out.pt"))


def test_kill_during_overwrite_leaves_old_or_new():
    """SIGKILL of `convert --overwrite` at random moments: the target always loads, old or new."""
    rng = random.Random(7)
    big = {f"w{i}": torch.full((1 << 22,), float(i)) for i in range(6)}  # 96 MiB
    src = path("big.safetensors")
    save_file(big, src)
    for ext, loader in ((".pt", lambda p: torch.load(p, weights_only=True)), (".safetensors",
                                                                              load_file)):
        target = path("target" + ext)
        old = {"old": torch.arange(5.0)}
        torch.save(old, target) if ext == ".pt" else save_file(old, target)
        t0 = time.monotonic()
        run("convert", src, path("timing" + ext), "--overwrite")
        full = time.monotonic() - t0
        outcomes = []
        # Spread over the run, more of them near its end where the file is renamed into place.
        for frac in (0.2, 0.5, 0.8, 0.9, 0.95, 1.0, 1.05):
            proc = subprocess.Popen([BIN, "convert", src, target, "--overwrite"],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(full * frac * rng.uniform(0.95, 1.05))
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            got = loader(target)
            if list(got) == ["old"]:
                assert torch.equal(got["old"], old["old"])
                outcomes.append("old")
            else:
                assert sorted(got) == sorted(big), sorted(got)
                assert all(torch.equal(got[k], v) for k, v in big.items())
                outcomes.append("new")
            for f in os.listdir(TMP):  # orphaned temporaries of killed runs
                if f.startswith(".target" + ext + ".tmp-"):
                    os.remove(os.path.join(TMP, f))
            assert not os.path.exists(target + ".tmp"), "a fixed-name temporary"
        print(f"  {ext}: full run {full:.2f} s, after kills: {' '.join(outcomes)}")


def main():
    tests = [(n, f) for n, f in globals().items() if n.startswith("test_") and callable(f)]
    passed = failed = 0
    try:
        for name, fn in tests:
            try:
                fn()
                passed += 1
                print(f"PASS {name}", flush=True)
            except Exception:  # noqa: BLE001 - report every failure, keep going
                failed += 1
                print(f"FAIL {name}\n{traceback.format_exc()}", flush=True)
    finally:
        shutil.rmtree(TMP, ignore_errors=True)
    print(f"{passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
