#!/usr/bin/env python3
"""The checkpoints people have, loaded in place, and `shardload diff`.

Hugging Face directories are made with the `safetensors` package (several shards and
model.safetensors.index.json, each key in one shard as HF writes them; bf16, f16, f32, i64, bool),
a single model.safetensors and a lone .safetensors file; torch.save files flat, with views
(transposes, shared and offset storages, stride-0 expansions) and nested training checkpoints.
Each is loaded by `shardload load` at 1, 2 and 4 ranks with --split and compared with PyTorch's
`load_state_dict` (verdict and values); `--select` picks the sub-dictionary of a nested CKPT and
of a nested REF; `import shardload` loads an HF directory and a nested .pt (select=) when the
module is importable. `diff` is run on equal, different, shape- and dtype-mismatched and
one-sided inputs of every kind, with and without --atol and --json.

Run by CTest with SHARDLOAD_BIN set. Prints failed checks on stderr, "N passed, M failed" last;
exits 1 on a failure.
"""
import copy
import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap

import torch
from safetensors.torch import save_file
from torch import nn

BIN = os.environ.get("SHARDLOAD_BIN", "build/shardload")
MPIRUN = os.environ.get("MPIRUN", "mpirun")
ENV = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
           OMPI_MCA_rmaps_base_oversubscribe="1")
RESULTS = {"passed": 0, "failed": 0}


def check(cond, what):
    RESULTS["passed" if cond else "failed"] += 1
    if not cond:
        print(f"FAILED: {what}", file=sys.stderr, flush=True)
    return bool(cond)


def run(*args, ranks=None, timeout=300):
    cmd = [BIN, *args] if ranks is None else [MPIRUN, "-np", str(ranks), "--oversubscribe", BIN,
                                              *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=ENV)


def same(a, b):
    return a.dtype == b.dtype and a.shape == b.shape and torch.equal(
        a.contiguous().reshape(-1).view(torch.uint8), b.contiguous().reshape(-1).view(torch.uint8))


def same_state(got, want, what):
    if not check(set(got) == set(want), f"{what}: keys {sorted(got)} != {sorted(want)}"):
        return
    bad = [k for k in want if not same(got[k], want[k])]
    check(not bad, f"{what}: tensors differ: {bad}")


# ----- the model and the files


class Model(nn.Module):
    """Every dtype a Hugging Face checkpoint holds: bf16 embedding, f32 linear, f16 norm, a
    BatchNorm's int64 counter, a bool mask buffer."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(12, 8).to(torch.bfloat16)
        self.fc = nn.Linear(8, 6)
        self.norm = nn.LayerNorm(6).to(torch.float16)
        self.bn = nn.BatchNorm1d(6)
        self.register_buffer("mask", torch.tensor([True, False, True, True]))


def fresh_model(seed):
    torch.manual_seed(seed)
    m = Model()
    m.bn.num_batches_tracked.fill_(seed)
    return m


def write_hf(directory, sd, shards):
    """`sd` as Hugging Face writes it: round-robin over `shards` files and the index json."""
    os.makedirs(directory, exist_ok=True)
    names = [f"model-{i + 1:05d}-of-{shards:05d}.safetensors" for i in range(shards)]
    parts = [dict() for _ in range(shards)]
    weight_map = {}
    for i, (k, v) in enumerate(sd.items()):
        parts[i % shards][k] = v.detach().clone().contiguous()
        weight_map[k] = names[i % shards]
    for name, part in zip(names, parts):
        save_file(part, os.path.join(directory, name), metadata={"format": "pt"})
    total = sum(v.numel() * v.element_size() for v in sd.values())
    with open(os.path.join(directory, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f)
    return directory


def oracle(model, sd, strict):
    """PyTorch's verdict and the state it leaves: (ok, missing, unexpected, state dict)."""
    m = copy.deepcopy(model)
    try:
        keys = m.load_state_dict(sd, strict=strict)
    except RuntimeError:
        return False, None, None, None
    return True, list(keys.missing_keys), list(keys.unexpected_keys), m.state_dict()


def load_json(r, what):
    try:
        return json.loads(r.stdout)
    except ValueError:
        check(False, f"{what}: no JSON (exit {r.returncode}): {r.stdout!r} {r.stderr[-800:]}")
        return {}


# ----- loads


def test_hf_loads(tmp):
    source = fresh_model(1)
    sd = source.state_dict()
    target = fresh_model(2)
    ref = os.path.join(tmp, "ref.pt")
    torch.save(target.state_dict(), ref)
    hf = write_hf(os.path.join(tmp, "hf3"), sd, 3)
    total = sum(v.numel() * v.element_size() for v in sd.values())
    ok, _, _, want = oracle(target, sd, True)
    splits = ["--split", r"embed\.weight=0", "--split", r"fc\.weight=1", "--split", "mask=0"]
    for n in (1, 2, 4):
        out = os.path.join(tmp, f"hf_np{n}.pt")
        r = run("load", hf, "--into", ref, *splits, "--out", out, "--json", "--quiet", ranks=n)
        j = load_json(r, f"HF load at {n} ranks")
        check(r.returncode == 0 and j.get("ok") and ok, f"HF load at {n} ranks: {r.stderr[-800:]}")
        check(j.get("format") == "safetensors" and j.get("checksums_verified") is False and
              "no checksums" in j.get("checksums_reason", ""),
              f"HF load at {n} ranks says safetensors carry no checksums: {j}")
        check(j.get("bytes_read") == total, f"read once at {n} ranks: {j.get('bytes_read')} "
                                            f"!= {total}")
        if r.returncode == 0:
            same_state(torch.load(out, weights_only=True), want, f"HF load at {n} ranks")

    # The verdict: one key missing from the checkpoint, one it has that the model lacks.
    partial = {k: v for k, v in sd.items() if k != "fc.bias"}
    partial["extra.weight"] = torch.ones(3)
    hf_partial = write_hf(os.path.join(tmp, "hf_partial"), partial, 2)
    for strict in (True, False):
        ok, missing, unexpected, want = oracle(target, partial, strict)
        out = os.path.join(tmp, f"partial_{strict}.pt")
        args = ["load", hf_partial, "--into", ref, "--split", r"fc\.weight=0", "--out", out,
                "--json", "--quiet"] + ([] if strict else ["--no-strict"])
        r = run(*args, ranks=2)
        j = load_json(r, f"partial strict={strict}")
        check(bool(j.get("ok")) == ok and r.returncode == (0 if ok else 1),
              f"partial strict={strict}: ok {j.get('ok')} vs PyTorch {ok}, exit {r.returncode}")
        check(j.get("missing_keys") == ["fc.bias"] and j.get("unexpected_keys") == ["extra.weight"],
              f"partial strict={strict}: verdict {j.get('missing_keys')} "
              f"{j.get('unexpected_keys')}")
        if ok:
            check(j.get("missing_keys") == missing and j.get("unexpected_keys") == unexpected,
                  f"partial: PyTorch says {missing} {unexpected}")
            same_state(torch.load(out, weights_only=True), want, "partial non-strict load")
        else:
            check(not os.path.exists(out), "a failed strict load writes nothing")

    # A bool byte that is neither 0 nor 1, in the shard holding "mask": exit 3 naming it, on
    # every rank, and nothing written.
    bad = write_hf(os.path.join(tmp, "hf_bool2"), sd, 2)
    shard = [f for f in sorted(os.listdir(bad)) if f.endswith(".safetensors")][
        list(sd).index("mask") % 2]
    with open(os.path.join(bad, shard), "r+b") as f:
        raw = f.read()
        n = int.from_bytes(raw[:8], "little")
        entry = json.loads(raw[8:8 + n])["mask"]
        f.seek(8 + n + entry["data_offsets"][0] + 1)
        f.write(b"\x02")
    out = os.path.join(tmp, "bool2.pt")
    r = run("load", bad, "--into", ref, "--split", "mask=0", "--out", out, "--quiet", ranks=2)
    check(r.returncode == 3 and shard in r.stderr and "mask" in r.stderr and "bool" in r.stderr
          and not os.path.exists(out), f"bool byte 2: exit 3 naming {shard}: {r.stderr[-800:]}")

    # One model.safetensors in a directory, and a lone .safetensors file.
    single = os.path.join(tmp, "hf_single")
    os.makedirs(single)
    save_file({k: v.contiguous() for k, v in sd.items()}, os.path.join(single, "model.safetensors"))
    _, _, _, want = oracle(target, sd, True)
    for what, path in (("model.safetensors directory", single),
                       ("a .safetensors file", os.path.join(single, "model.safetensors"))):
        out = os.path.join(tmp, "single.pt")
        r = run("load", path, "--into", ref, "--split", r"fc\.weight=0", "--out", out, "--quiet",
                "--overwrite", ranks=2)
        if check(r.returncode == 0, f"{what}: {r.stderr[-800:]}"):
            same_state(torch.load(out, weights_only=True), want, what)
            check("checksums not verified: safetensors files carry no checksums" in r.stdout,
                  f"{what}: the summary says no checksums: {r.stdout}")


def test_pt_loads(tmp):
    g = torch.Generator().manual_seed(3)
    base = torch.randn(6, 4, generator=g)
    big = torch.randn(20, generator=g)
    sd = {
        "w": base,
        "w_t": base.t(),                  # a transpose: not contiguous in its storage
        "tied": base,                     # the same storage under a second key
        "slice": big[5:11].view(2, 3),    # an offset into a larger storage
        "ones": torch.ones(1).expand(5),  # a stride-0 expansion
        "half": torch.randn(3, 5, generator=g).half(),
        "flags": torch.tensor([True, False, False]),
    }
    ckpt = os.path.join(tmp, "views.pt")
    torch.save(sd, ckpt)
    ref = os.path.join(tmp, "views_ref.pt")
    torch.save({k: torch.zeros(v.shape, dtype=v.dtype) for k, v in sd.items()}, ref)
    want = {k: v.contiguous() for k, v in sd.items()}
    for n, splits in ((1, []), (2, ["--split", "w_t=0", "--split", "^w$=1", "--split", "slice=1"]),
                      (4, ["--split", "w_t=1", "--split", "ones=0", "--split", "half=1"])):
        out = os.path.join(tmp, f"views_np{n}.pt")
        r = run("load", ckpt, "--into", ref, *splits, "--out", out, "--json", "--quiet", ranks=n)
        j = load_json(r, f".pt with views at {n} ranks")
        if check(r.returncode == 0 and j.get("format") == "torch",
                 f".pt CKPT with views at {n} ranks: {r.stderr[-800:]}"):
            same_state(torch.load(out, weights_only=True), want, f".pt CKPT at {n} ranks")
            check(j.get("checksums_verified") is False and "torch.save" in j["checksums_reason"],
                  f".pt CKPT: checksums_reason {j.get('checksums_reason')}")

    # A nested training checkpoint: --select picks "model"; the scalar leaves are reported.
    model = fresh_model(4)
    nested = os.path.join(tmp, "nested.pt")
    opt = torch.optim.SGD(model.fc.parameters(), lr=0.1, momentum=0.9)
    model.fc(torch.randn(2, 8)).sum().backward()
    opt.step()
    torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "epoch": 7,
                "note": None}, nested)
    target = fresh_model(5)
    ref = os.path.join(tmp, "model_ref.pt")
    torch.save(target.state_dict(), ref)
    _, _, _, want = oracle(target, model.state_dict(), True)
    out = os.path.join(tmp, "nested_out.pt")
    r = run("load", nested, "--into", ref, "--select", "model", "--split", r"embed\.weight=1",
            "--out", out, "--json", "--quiet", ranks=2)
    j = load_json(r, "--select model")
    if check(r.returncode == 0, f"load nested.pt --select model: {r.stderr[-800:]}"):
        same_state(torch.load(out, weights_only=True), want, "nested CKPT --select model")
        notes = " | ".join(j.get("notes", []))
        check("epoch = 7" in notes and "note (None)" in notes and "optimizer" in notes,
              f"--select reports scalar leaves, what it skipped and left: {notes}")
        check("shardload: note:" in r.stderr and "epoch = 7" in r.stderr,
              f"the notes go to stderr: {r.stderr[-800:]}")
    r = run("load", nested, "--into", ref, "--quiet", ranks=2)
    check(r.returncode == 3 and "--select" in r.stderr and "nested.pt" in r.stderr,
          f"a nested CKPT without --select: exit 3 suggesting --select: {r.stderr[-800:]}")
    r = run("load", nested, "--into", ref, "--select", "nothing", "--quiet", ranks=2)
    check(r.returncode == 2 and "nothing" in r.stderr,
          f"--select naming nothing: exit 2: {r.returncode} {r.stderr[-400:]}")

    # A nested REF: the model the nested file holds, loaded from a checkpoint directory.
    ckpt_dir = os.path.join(tmp, "model_ckpt")
    r = run("convert", os.path.join(tmp, "model_ref.pt"), ckpt_dir)
    check(r.returncode == 0, f"convert: {r.stderr}")
    r = run("load", ckpt_dir, "--into", nested, "--select", "model", "--split", "fc.weight=0",
            "--json", "--quiet", ranks=2)
    j = load_json(r, "--into nested.pt --select model")
    check(r.returncode == 0 and j.get("ok"), f"nested REF with --select: {r.stderr[-800:]}")
    check("shardload: note: In " + nested in r.stderr and "epoch = 7" in r.stderr,
          f"REF's scalar leaves are reported: {r.stderr[-800:]}")
    r = run("load", ckpt_dir, "--into", nested, "--quiet", ranks=2)
    check(r.returncode == 3 and "--select" in r.stderr,
          f"nested REF without --select suggests it: {r.stderr[-600:]}")
    # Both .pt: --select is CKPT's; --select-ckpt and --select-into name the side.
    r = run("load", nested, "--into", nested, "--select-ckpt", "model", "--select-into", "model",
            "--quiet", ranks=1)
    check(r.returncode == 0, f"--select-ckpt with --select-into: {r.stderr[-600:]}")
    r = run("load", nested, "--into", nested, "--select", "model", "--quiet", ranks=1)
    check(r.returncode == 3 and "--select" in r.stderr,
          f"--select is CKPT's: REF nested too needs --select-into: {r.stderr[-600:]}")
    # --select on a format without sub-dictionaries is a usage error naming it.
    r = run("load", ckpt_dir, "--into", ref, "--select-ckpt", "model", "--quiet", ranks=2)
    check(r.returncode == 2 and "model_ckpt" in r.stderr,
          f"--select on a checkpoint directory: exit 2: {r.returncode} {r.stderr[-400:]}")


def test_python_api(tmp):
    try:
        import shardload  # noqa: F401
    except ImportError as e:
        print(f"note: `import shardload` unavailable ({e}); Python API part skipped",
              file=sys.stderr)
        return
    source = fresh_model(6)
    hf = write_hf(os.path.join(tmp, "hf_api"), source.state_dict(), 2)
    nested = os.path.join(tmp, "lightning.ckpt")  # Lightning names them .ckpt
    torch.save({"state_dict": source.state_dict(), "global_step": 11}, nested)
    script = os.path.join(tmp, "api.py")
    with open(script, "w") as f:
        f.write(textwrap.dedent(f"""
            import sys, torch
            sys.path.insert(0, {os.path.dirname(os.path.abspath(__file__))!r})
            from test_hf_and_diff import fresh_model, same
            import shardload
            want = fresh_model(6).state_dict()
            bad = []
            for path, kw in (({hf!r}, {{}}), ({nested!r}, {{"select": "state_dict"}})):
                m = fresh_model(7)
                keys = shardload.load(m, path, **kw)
                full = m.state_dict()
                if keys.missing_keys or keys.unexpected_keys:
                    bad.append(f"{{path}}: {{keys}}")
                if keys.result.checksums_verified or not keys.result.checksums_reason:
                    bad.append(f"{{path}}: checksums_verified {{keys.result.checksums_verified}}")
                for k, v in want.items():
                    if not same(full[k], v):
                        bad.append(f"{{path}}: {{k}} differs")
                if kw and not any("global_step = 11" in n for n in keys.result.notes):
                    bad.append(f"{{path}}: notes {{keys.result.notes}}")
            print("API-OK" if not bad else "API-BAD " + "; ".join(bad))
        """))
    r = subprocess.run([MPIRUN, "-np", "2", "--oversubscribe", sys.executable, script],
                       capture_output=True, text=True, timeout=300, env=ENV)
    check(r.returncode == 0 and r.stdout.count("API-OK") == 2,
          f"shardload.load of an HF directory and of a nested .pt with select=: {r.stdout} "
          f"{r.stderr[-1500:]}")


# ----- diff


def diff(*args):
    r = run("diff", *args)
    j = None
    if "--json" in args and r.returncode in (0, 1):
        j = load_json(r, "diff --json")
    return r, j


def test_diff(tmp):
    sd = fresh_model(8).state_dict()
    pt = os.path.join(tmp, "diff_a.pt")
    torch.save(sd, pt)
    hf = write_hf(os.path.join(tmp, "diff_hf"), sd, 3)
    ckpt = os.path.join(tmp, "diff_ckpt")
    check(run("convert", pt, ckpt, "--shards", "2").returncode == 0, "convert for diff")
    # A resharded checkpoint: chunks split along dim 0 and 1, compared chunk against chunk.
    resharded = os.path.join(tmp, "diff_resharded")
    r = run("load", ckpt, "--into", pt, "--split", r"embed\.weight=0", "--split", r"fc\.weight=1",
            "--out", resharded, "--quiet", ranks=2)
    check(r.returncode == 0, f"reshard for diff: {r.stderr[-400:]}")

    for a, b in ((hf, pt), (pt, hf), (ckpt, hf), (resharded, hf), (resharded, ckpt)):
        r, j = diff(a, b, "--json")
        check(r.returncode == 0 and j and j["equal"] and j["differing"] == 0 and
              all(t["identical"] and t["max_abs_diff"] == 0 for t in j["tensors"]),
              f"diff {os.path.basename(a)} {os.path.basename(b)}: equal: {r.stdout[-600:]} "
              f"{r.stderr[-400:]}")
    r, _ = diff(hf, resharded)
    check(r.returncode == 0 and r.stdout.strip().endswith("equal"),
          f"human diff of equal sources: {r.stdout}")

    # Values that differ: one element by 0.5, another tensor by 2**-10.
    other = {k: v.clone() for k, v in sd.items()}
    other["fc.weight"][2, 3] += 0.5
    other["bn.running_mean"][1] -= 2 ** -10
    other_hf = write_hf(os.path.join(tmp, "diff_other"), other, 2)
    r, j = diff(resharded, other_hf, "--json")
    if check(r.returncode == 1 and j and not j["equal"], f"values differ: exit 1: {r.stdout}"):
        t = {x["key"]: x for x in j["tensors"]}

        def want(k):  # PyTorch's max |a - b| in float64
            return (other[k].double() - sd[k].double()).abs().max().item()
        check(t["fc.weight"]["max_abs_diff"] == want("fc.weight") and
              not t["fc.weight"]["identical"], f"max |a-b| of fc.weight: {t['fc.weight']}")
        check(t["bn.running_mean"]["max_abs_diff"] == want("bn.running_mean"),
              f"{t['bn.running_mean']} vs {want('bn.running_mean')}")
        check(j["differing"] == 2 and t["embed.weight"]["identical"], f"{j['differing']}")
    r, _ = diff(resharded, other_hf, "--atol", "0.6")
    check(r.returncode == 0, f"within --atol 0.6: exit 0: {r.stdout}")
    r, _ = diff(resharded, other_hf, "--atol", "0.1")
    check(r.returncode == 1 and "fc.weight" in r.stdout and "0.5" in r.stdout,
          f"beyond --atol 0.1: exit 1, fc.weight in the table: {r.stdout}")

    # Shapes, dtypes and keys on one side only.
    mixed = {k: v.clone() for k, v in sd.items() if k != "bn.running_var"}
    mixed["fc.bias"] = torch.zeros(7)
    mixed["norm.weight"] = sd["norm.weight"].float()
    mixed["new.key"] = torch.ones(2)
    mixed_pt = os.path.join(tmp, "diff_mixed.safetensors")
    save_file({k: v.contiguous() for k, v in mixed.items()}, mixed_pt)
    r, j = diff(hf, mixed_pt, "--json")
    if check(r.returncode == 1 and j, f"mismatches: exit 1: {r.stdout} {r.stderr}"):
        check(j["only_in_a"] == ["bn.running_var"] and j["only_in_b"] == ["new.key"],
              f"one-sided keys: {j['only_in_a']} {j['only_in_b']}")
        check(j["shape_mismatches"] == [{"key": "fc.bias", "a_shape": [6], "b_shape": [7]}],
              f"shape mismatches: {j['shape_mismatches']}")
        check(j["dtype_mismatches"] == [{"key": "norm.weight", "a_dtype": "float16",
                                         "b_dtype": "float32"}],
              f"dtype mismatches: {j['dtype_mismatches']}")
        t = {x["key"]: x for x in j["tensors"]}
        check(t["norm.weight"]["max_abs_diff"] == 0 and not t["norm.weight"]["identical"],
              f"float16 vs its float32 copy: no difference in value: {t['norm.weight']}")
    r, _ = diff(hf, mixed_pt)
    check(r.returncode == 1 and "only in A (1): bn.running_var" in r.stdout and
          "shape differs: fc.bias" in r.stdout and "differ" in r.stdout,
          f"human output of mismatches: {r.stdout}")

    # NaN where both have it is no difference; against a number it is an infinite one.
    nan_a = os.path.join(tmp, "nan_a.safetensors")
    nan_b = os.path.join(tmp, "nan_b.safetensors")
    save_file({"x": torch.tensor([1.0, float("nan"), float("inf")])}, nan_a)
    save_file({"x": torch.tensor([1.0, float("nan"), float("inf")])}, nan_b)
    r, _ = diff(nan_a, nan_b)
    check(r.returncode == 0, f"NaN against NaN: equal: {r.stdout}")
    save_file({"x": torch.tensor([1.0, 2.0, float("inf")])}, nan_b)
    r, j = diff(nan_a, nan_b, "--json", "--atol", "1e9")
    check(r.returncode == 1 and j and j["tensors"][0]["max_abs_diff"] is None,
          f"NaN against a number: infinite difference (null): {r.stdout}")

    # A nested .pt: --select for A where it is a .pt file.
    nested = os.path.join(tmp, "diff_nested.pt")
    torch.save({"model": sd, "step": 3}, nested)
    r, _ = diff(nested, hf, "--select", "model")
    check(r.returncode == 0, f"diff nested.pt --select model against HF: {r.stderr}")
    r, _ = diff(nested, nested, "--select-a", "model", "--select-b", "model", "--json")
    check(r.returncode == 0, f"--select-a/--select-b: {r.stderr}")

    # A bad file is exit 3 naming it; a usage error is exit 2.
    broken = os.path.join(tmp, "broken.safetensors")
    with open(broken, "wb") as f:
        f.write(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}")
    r, _ = diff(hf, broken)
    check(r.returncode == 3 and "broken.safetensors" in r.stderr, f"bad file: exit 3: {r.stderr}")
    r, _ = diff(hf, os.path.join(tmp, "missing_dir"))
    check(r.returncode == 3 and "missing_dir" in r.stderr, f"missing: exit 3: {r.stderr}")
    r, _ = diff(hf)
    check(r.returncode == 2, f"one operand: exit 2: {r.returncode}")
    r, _ = diff(hf, pt, "--atol", "-1")
    check(r.returncode == 2, f"negative --atol: exit 2: {r.returncode}")


def test_tools(tmp):
    sd = fresh_model(9).state_dict()
    hf = write_hf(os.path.join(tmp, "tools_hf"), sd, 2)
    r = run("inspect", hf, "--json")
    j = load_json(r, "inspect --json")
    check(r.returncode == 0 and j.get("format") == "safetensors" and
          len(j.get("tensors", [])) == len(sd) and len(j.get("shards", [])) == 2,
          f"inspect --json of an HF directory: {r.stdout[-400:]} {r.stderr}")
    r = run("inspect", hf)
    check(r.returncode == 0 and "Hugging Face directory" in r.stdout and "at byte" in r.stdout,
          f"inspect of an HF directory: {r.stdout[-400:]}")
    r = run("verify", hf)
    check(r.returncode == 0 and "no checksums" in r.stdout, f"verify of an HF dir: {r.stdout}")
    ckpt = os.path.join(tmp, "tools_ckpt")
    r = run("convert", hf, ckpt, "--shards", "3")
    check(r.returncode == 0, f"convert HF -> checkpoint: {r.stderr}")
    check(run("verify", ckpt).returncode == 0, "verify the converted checkpoint")
    check(run("diff", ckpt, hf).returncode == 0, "the converted checkpoint equals the HF dir")
    out = os.path.join(tmp, "tools.safetensors")
    r = run("convert", hf, out)
    from safetensors.torch import load_file
    if check(r.returncode == 0, f"convert HF -> .safetensors: {r.stderr}"):
        same_state(load_file(out), sd, "HF -> .safetensors")


def main():
    tmp = tempfile.mkdtemp(prefix="shardload-hf-")
    try:
        for test in (test_hf_loads, test_pt_loads, test_python_api, test_diff, test_tools):
            try:
                test(tmp)
            except Exception as e:  # noqa: BLE001
                import traceback
                traceback.print_exc()
                check(False, f"{test.__name__} raised {e!r}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"{RESULTS['passed']} passed, {RESULTS['failed']} failed")
    return 1 if RESULTS["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
