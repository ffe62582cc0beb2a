#!/usr/bin/env python3
"""`shardload load` against PyTorch's own `load_state_dict(strict=...)`, the oracle.

Each case is a model (an nn.Module, or a state dict made into one) and a checkpoint state dict,
both made here with Python's torch. The oracle is
`copy.deepcopy(model).load_state_dict(ckpt_sd, strict=S)` for S in (True, False): whether it
succeeds, its missing and unexpected keys (taken from a load_state_dict post-hook, which sees them
in both modes, and checked against the return value), the keys whose sizes mismatch (parsed from
its RuntimeError), and the state dict it leaves behind after a successful load.

shardload gets the same pair as files: `torch.save(model.state_dict(), model.pt)` is REF (the
target keys, shapes, dtypes and initial values) and `torch.save(ckpt_sd, ckpt.pt)` is turned into
a checkpoint directory with `shardload convert`. Then, under `mpirun -np N` (one process without
mpirun when N is 1),

    shardload load CKPT --into model.pt --json --out result.pt [--no-strict] [--split REGEX=DIM]

must print exactly one JSON object whose verdict equals PyTorch's, exit 0 (loaded) or 1 (verdict
failure), write result.pt equal to the oracle's state dict bit for bit when it loaded, write
nothing when it did not, and read every needed checkpoint byte exactly once (`bytes_read`).
Without --json a failing load prints PyTorch's message format on stderr.

Usage: python3 test_oracle.py [--ranks N] [--only SUBSTRING] [--keep]
Environment: SHARDLOAD_BIN (default /work/main/build/shardload), MPIRUN (default mpirun).
Prints one line per failed check on stderr and "N passed, M failed" last; exits 1 on a failure.
"""
import argparse
import collections
import copy
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import traceback

import torch
from torch import nn
from torch.nn.modules.utils import consume_prefix_in_state_dict_if_present

BIN = os.environ.get("SHARDLOAD_BIN", "/work/main/build/shardload")
MPIRUN = os.environ.get("MPIRUN", "mpirun")
ENV = dict(os.environ,
           OMPI_ALLOW_RUN_AS_ROOT="1",
           OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
           OMPI_MCA_rmaps_base_oversubscribe="1")

HEADER_RE = re.compile(r"^Error\(s\) in loading state_dict for .+:$")
MISSING = "Missing key(s) in state_dict: "
UNEXPECTED = "Unexpected key(s) in state_dict: "
MISMATCH_RE = re.compile(
    r"^size mismatch for (.+): copying a param with shape torch\.Size\(\[(.*?)\]\) from "
    r"checkpoint, the shape in current model is torch\.Size\(\[(.*?)\]\)\.$")


# ----- bookkeeping


class Checks:
    def __init__(self):
        self.passed = 0
        self.failed = 0

    def check(self, tag, cond, what):
        """One check: counts, and names the case/run and what was wrong when it fails."""
        if cond:
            self.passed += 1
        else:
            self.failed += 1
            print(f"FAIL [{tag}] {what}", file=sys.stderr, flush=True)
        return bool(cond)


CHK = Checks()


def raw_bytes(t):
    return t.detach().contiguous().reshape(-1).view(torch.uint8)


def same_tensor(a, b):
    """None when a and b have the same dtype, shape and bytes, else what differs."""
    if not isinstance(b, torch.Tensor):
        return f"not a tensor: {type(b)}"
    if a.dtype != b.dtype:
        return f"dtype {b.dtype}, expected {a.dtype}"
    if a.shape != b.shape:
        return f"shape {tuple(b.shape)}, expected {tuple(a.shape)}"
    if not torch.equal(raw_bytes(a), raw_bytes(b)):
        diff = (raw_bytes(a) != raw_bytes(b)).nonzero().reshape(-1)[:4].tolist()
        return f"bytes differ (first differing byte offsets {diff})"
    return None


def shape_of(text):
    return [int(x) for x in text.split(",") if x.strip()]


# ----- models made from plain state dicts


class StateModule(nn.Module):
    """A module whose state_dict() has exactly the keys of `sd`: a dotted key's leading parts
    become submodules; floating-point tensors become parameters, the rest persistent buffers."""

    def __init__(self, sd):
        super().__init__()
        for key, value in sd.items():
            *path, leaf = key.split(".")
            mod = self
            for part in path:
                if part not in mod._modules:
                    mod.add_module(part, nn.Module())
                mod = mod._modules[part]
            value = value.detach().clone()
            if value.is_floating_point():
                mod.register_parameter(leaf, nn.Parameter(value))
            else:
                mod.register_buffer(leaf, value)


class SimpleModel(nn.Module):  # the seed note's Example 1
    def __init__(self):
        super().__init__()
        self.linear1 = nn.Linear(10, 5)
        self.linear2 = nn.Linear(5, 2)


class ExtendedModel(nn.Module):  # the seed note's Example 2
    def __init__(self):
        super().__init__()
        self.linear1 = nn.Linear(10, 5)
        self.linear2 = nn.Linear(5, 2)
        self.linear3 = nn.Linear(2, 1)


class ConvNet(nn.Module):
    # No BatchNorm here: for a checkpoint without version metadata (a DDP one loaded into the
    # bare model is one), BatchNorm's own _load_from_state_dict fills in a missing
    # num_batches_tracked, a per-class rule that a state-dict-level loader cannot know.
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv1d(2, 3, 3)
        self.norm = nn.LayerNorm(3)
        self.fc = nn.Linear(3, 2)
        self.register_buffer("steps", torch.tensor(0))


def trained_bn(seed, steps):
    """Linear + BatchNorm1d whose running stats and num_batches_tracked moved off their start."""
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3))
    model.train()
    for _ in range(steps):
        model(torch.randn(8, 4))
    model.eval()
    return model


def randn_like_sd(sd, seed, dtype=None):
    g = torch.Generator().manual_seed(seed)
    out = collections.OrderedDict()
    for k, v in sd.items():
        if v.is_floating_point():
            out[k] = torch.randn(v.shape, generator=g, dtype=torch.float64).to(dtype or v.dtype)
        else:
            out[k] = v.clone()
    return out


# ----- the oracle


class Verdict:
    def __init__(self, ok, missing, unexpected, mismatches, error, state):
        self.ok = ok
        self.missing = missing            # list, PyTorch's order
        self.unexpected = unexpected      # list, PyTorch's order
        self.mismatches = mismatches      # {key: (checkpoint_shape, model_shape)}
        self.error = error                # PyTorch's RuntimeError text or None
        self.state = state                # state dict after a successful load, else None


def oracle(model, ckpt, strict):
    m = copy.deepcopy(model)
    seen = {}

    def hook(module, incompatible):
        seen["missing"] = list(incompatible.missing_keys)
        seen["unexpected"] = list(incompatible.unexpected_keys)

    m.register_load_state_dict_post_hook(hook)
    ckpt = collections.OrderedDict(ckpt)  # PyTorch gets a plain dict: no _metadata versions
    try:
        ret = m.load_state_dict(ckpt, strict=strict)
        ok, error = True, None
        assert list(ret.missing_keys) == seen["missing"], "oracle: hook/return disagree"
        assert list(ret.unexpected_keys) == seen["unexpected"], "oracle: hook/return disagree"
    except RuntimeError as e:
        ok, error = False, str(e)
    mismatches = {}
    if error is not None:
        lines = error.split("\n\t")
        assert HEADER_RE.match(lines[0]), f"oracle: unexpected error text {error!r}"
        for line in lines[1:]:
            match = MISMATCH_RE.match(line)
            if match:
                mismatches[match.group(1)] = (shape_of(match.group(2)), shape_of(match.group(3)))
            else:
                assert line.startswith(MISSING) or line.startswith(UNEXPECTED), \
                    f"oracle: unexpected error line {line!r}"
    state = None
    if ok:
        state = collections.OrderedDict((k, v.detach().clone()) for k, v in m.state_dict().items())
    return Verdict(ok, seen["missing"], seen["unexpected"], mismatches, error, state)


# ----- cases


class Case:
    def __init__(self, name, model, ckpt, shards=None, splits=(), text=False, hint=None,
                 extra=None):
        self.name = name
        self.model = model
        self.ckpt = ckpt
        self.shards = shards        # --shards for convert, None for its default
        self.splits = splits        # tuples of --split specs, each one extra run when ranks > 1
        self.text = text            # also run without --json and check stderr's message
        self.hint = hint            # a string that the failure message must mention
        self.extra = extra          # extra (label, cli args, oracle-ckpt transform) runs


def case_seed_missing_bias():
    torch.manual_seed(1)
    model = SimpleModel()
    ckpt = {"linear1.weight": torch.randn(5, 10), "linear2.weight": torch.randn(2, 5)}
    return Case("seed_missing_bias", model, ckpt, text=True, splits=(("weight=0",),))


def case_seed_correct():
    torch.manual_seed(2)
    model = SimpleModel()
    ckpt = {"linear1.weight": torch.randn(5, 10), "linear1.bias": torch.randn(5),
            "linear2.weight": torch.randn(2, 5), "linear2.bias": torch.randn(2)}
    return Case("seed_correct", model, ckpt, shards=2)


def case_seed_extended():
    torch.manual_seed(3)
    model = ExtendedModel()
    ckpt = {"linear1.weight": torch.randn(5, 10), "linear2.weight": torch.randn(2, 5)}
    return Case("seed_extended_linear3", model, ckpt, splits=(("weight=1", "bias=0"),))


def case_seed_only_linear1():
    torch.manual_seed(4)
    model = SimpleModel()
    ckpt = {"linear1.weight": torch.randn(5, 10)}
    return Case("seed_only_linear1_weight", model, ckpt)


def case_batchnorm_buffers():
    model = trained_bn(5, steps=1)
    ckpt = trained_bn(6, steps=3).state_dict()
    assert int(ckpt["1.num_batches_tracked"]) == 3
    return Case("batchnorm_buffers", model, dict(ckpt), shards=2, splits=(("running=0",),))


def case_ddp_prefix():
    torch.manual_seed(7)
    model = ConvNet()
    torch.manual_seed(8)
    other = ConvNet()
    other.steps.fill_(1234)
    ckpt = {"module." + k: v for k, v in other.state_dict().items()}

    def strip(sd):
        sd = collections.OrderedDict(sd)
        consume_prefix_in_state_dict_if_present(sd, "module.")
        return sd

    return Case("ddp_module_prefix", model, ckpt, text=True, hint="module.",
                extra=[("strip-prefix", ["--strip-prefix", "module."], strip)])


def case_size_mismatch():
    torch.manual_seed(9)
    model = SimpleModel()
    ckpt = {"linear1.weight": torch.randn(6, 10), "linear1.bias": torch.randn(6),
            "linear2.weight": torch.randn(2, 5), "linear2.bias": torch.randn(2)}
    return Case("size_mismatch", model, ckpt, splits=(("weight=0",),))


def case_missing_unexpected_mismatch():
    torch.manual_seed(10)
    model = ExtendedModel()
    ckpt = {"linear1.weight": torch.randn(5, 11),       # size mismatch
            "linear1.bias": torch.randn(5),
            "linear2.weight": torch.randn(2, 5),          # linear2.bias, linear3.* missing
            "linear4.weight": torch.randn(1, 2),          # unexpected
            "linear2.scale": torch.randn(2)}              # unexpected, under a real submodule
    return Case("missing_unexpected_mismatch", model, ckpt, shards=3, text=True,
                splits=(("linear1=0", "weight=1"),))


def case_missing_unexpected():
    torch.manual_seed(11)
    model = SimpleModel()
    ckpt = {"linear1.weight": torch.randn(5, 10), "linear1.bias": torch.randn(5),
            "head.weight": torch.randn(2, 5), "head.bias": torch.randn(2)}
    return Case("missing_and_unexpected", model, ckpt)


def case_f64_into_f32():
    torch.manual_seed(12)
    model = SimpleModel()
    ckpt = randn_like_sd(model.state_dict(), 13, torch.float64)
    ckpt["linear2.bias"] = torch.tensor([1.0 + 2.0**-30, 3.4e38 * 1.5], dtype=torch.float64)
    return Case("dtype_f64_into_f32", model, ckpt, splits=(("weight=0",),))


def case_bf16_into_f32():
    torch.manual_seed(14)
    model = SimpleModel()
    ckpt = randn_like_sd(model.state_dict(), 15, torch.bfloat16)
    return Case("dtype_bf16_into_f32", model, ckpt)


def case_bf16_model():
    torch.manual_seed(16)
    model = SimpleModel().to(torch.bfloat16)
    ckpt = randn_like_sd(model.state_dict(), 17, torch.float32)  # rounded to bf16 on load
    ckpt["linear2.bias"] = torch.randn(2).to(torch.bfloat16)      # same dtype, copied as is
    return Case("bf16_model", model, ckpt, splits=(("weight=0",),))


def case_fp16_model():
    torch.manual_seed(18)
    model = SimpleModel().half()
    ckpt = randn_like_sd(model.state_dict(), 19, torch.float32)
    # overflow to inf, a subnormal, a tie, negative zero
    ckpt["linear1.bias"] = torch.tensor([1e5, 1e-6, 65520.0, -0.0, 2049.0], dtype=torch.float32)
    return Case("fp16_model", model, ckpt)


def case_cross_kind_conversion():
    model = StateModule({
        "f32_from_i64": torch.zeros(4),
        "i64_from_f32": torch.zeros(5, dtype=torch.int64),
        "bool_from_f32": torch.zeros(4, dtype=torch.bool),
        "f32_from_bool": torch.zeros(3),
        "i32_from_i64": torch.zeros(3, dtype=torch.int32),
        "f64_from_f16": torch.zeros(2, dtype=torch.float64),
    })
    ckpt = {
        "f32_from_i64": torch.tensor([-3, 0, 7, 2**40 + 1]),
        "i64_from_f32": torch.tensor([-2.7, 2.5, 1e3, -0.0, 0.9]),
        "bool_from_f32": torch.tensor([0.0, -0.0, 0.5, -2.0]),
        "f32_from_bool": torch.tensor([True, False, True]),
        "i32_from_i64": torch.tensor([-(2**31), 2**31 - 1, 5]),
        "f64_from_f16": torch.tensor([1.0 / 3, -65504.0], dtype=torch.float16),
    }
    return Case("dtype_cross_kind", model, ckpt)


def case_scalars_empty_bool_int():
    model = StateModule(collections.OrderedDict([
        ("scalar.f32", torch.tensor(1.5)),
        ("scalar.i64", torch.tensor(-4)),
        ("scalar.bool", torch.tensor(False)),
        ("scalar.bf16", torch.tensor(0.25, dtype=torch.bfloat16)),
        ("empty.f32", torch.empty(0)),
        ("empty.f16_2x0x3", torch.empty(2, 0, 3, dtype=torch.float16)),
        ("empty.bf16_0x5", torch.empty(0, 5, dtype=torch.bfloat16)),
        ("ints.bool", torch.zeros(7, dtype=torch.bool)),
        ("ints.u8", torch.zeros(6, dtype=torch.uint8)),
        ("ints.i8", torch.zeros(6, dtype=torch.int8)),
        ("ints.i16", torch.zeros(2, 3, dtype=torch.int16)),
        ("ints.i32", torch.zeros(3, dtype=torch.int32)),
        ("ints.i64", torch.zeros(3, dtype=torch.int64)),
        ("after", torch.zeros(3)),
    ]))
    ckpt = collections.OrderedDict([
        ("scalar.f32", torch.tensor(-7.25)),
        ("scalar.i64", torch.tensor(2**62 + 3)),
        ("scalar.bool", torch.tensor(True)),
        ("scalar.bf16", torch.tensor(-3.0, dtype=torch.bfloat16)),
        ("empty.f32", torch.empty(0)),
        ("empty.f16_2x0x3", torch.empty(2, 0, 3, dtype=torch.float16)),
        ("empty.bf16_0x5", torch.empty(0, 5, dtype=torch.bfloat16)),
        ("ints.bool", torch.arange(7) % 3 == 0),
        ("ints.u8", torch.tensor([0, 1, 127, 128, 200, 255], dtype=torch.uint8)),
        ("ints.i8", torch.tensor([-128, -1, 0, 1, 100, 127], dtype=torch.int8)),
        ("ints.i16", torch.tensor([[-32768, 0, 5], [7, -9, 32767]], dtype=torch.int16)),
        ("ints.i32", torch.tensor([-(2**31), 0, 2**31 - 1], dtype=torch.int32)),
        ("ints.i64", torch.tensor([-(2**63), -1, 2**63 - 1])),
        ("after", torch.tensor([1.0, float("nan"), float("-inf")])),
    ])
    return Case("scalars_empty_bool_int", model, ckpt, shards=2,
                splits=(("^empty\\.bf16=1", "^ints\\.i16=1"),))


def case_zero_d_and_empty_mismatch():
    model = StateModule({"s": torch.tensor(1.0), "v1": torch.zeros(1),
                         "e": torch.empty(0, 4), "ok": torch.zeros(2)})
    ckpt = {"s": torch.randn(3), "v1": torch.tensor(2.0), "e": torch.empty(0, 5),
            "ok": torch.tensor([4.0, 5.0])}
    return Case("zero_d_and_empty_mismatch", model, ckpt)


def case_legacy_1d_into_0d():
    # PyTorch's backward compatibility: a [1] checkpoint tensor loads into a 0-d parameter.
    model = StateModule({"temperature": torch.tensor(1.0), "w": torch.zeros(2)})
    ckpt = {"temperature": torch.tensor([0.125]), "w": torch.tensor([1.0, 2.0])}
    return Case("legacy_1d_into_0d", model, ckpt)


def case_non_contiguous():
    base = torch.arange(48, dtype=torch.float32).reshape(6, 8) * 0.5
    ckpt = collections.OrderedDict([
        ("transposed", base.t()),
        ("sliced", base[1:5:2, ::3]),
        ("row_with_offset", base[3]),
        ("expanded", torch.arange(4, dtype=torch.int16).unsqueeze(0).expand(3, 4)),
        ("bf16_transposed", base.to(torch.bfloat16).t()[2:]),
        ("permuted3d", torch.arange(24.0).reshape(2, 3, 4).permute(2, 0, 1)),
        ("base", base),
    ])
    model = StateModule({k: torch.zeros_like(v.contiguous()) for k, v in ckpt.items()})
    assert not ckpt["transposed"].is_contiguous()
    return Case("non_contiguous_views", model, ckpt, splits=(("transposed=0", "permuted=2"),))


def case_many_small():
    g = torch.Generator().manual_seed(20)
    dtypes = [torch.float32, torch.float16, torch.bfloat16, torch.float64]
    model_sd, ckpt = collections.OrderedDict(), collections.OrderedDict()
    for i in range(300):
        key = f"blocks.{i // 10}.w{i % 10}"
        shape = (1 + i % 4, 1 + i % 3)
        dtype = dtypes[i % len(dtypes)]
        model_sd[key] = torch.zeros(shape, dtype=dtype)
        ckpt[key] = torch.randn(shape, generator=g).to(dtype)
    for i in (3, 77, 150, 299):                      # missing
        del ckpt[f"blocks.{i // 10}.w{i % 10}"]
    ckpt["blocks.5.extra"] = torch.ones(2)           # unexpected
    ckpt["blocks.30.w0"] = torch.ones(3)             # unexpected (no block 30)
    return Case("many_small_300", StateModule(model_sd), ckpt, shards=2,
                splits=(("w=0",),))


def case_big_tensor():
    g = torch.Generator().manual_seed(21)
    model = StateModule(collections.OrderedDict([
        ("proj.weight", torch.zeros(4096, 2048)), ("proj.bias", torch.zeros(4096))]))
    ckpt = collections.OrderedDict([
        ("proj.weight", torch.randn(4096, 2048, generator=g)),
        ("proj.bias", torch.randn(4096, generator=g))])
    return Case("big_tensor_32MiB", model, ckpt, shards=2,
                splits=(("weight=0",), ("weight=1", "bias=0")))


def case_unusual_keys():
    model = StateModule(collections.OrderedDict([
        ("a/b//c", torch.zeros(3)),
        ("größe.γ", torch.zeros(2, 2)),
        ("emoji 😀", torch.zeros(4)),
        ("with space.x/y", torch.zeros(2, dtype=torch.int32)),
        ("日本語.重み", torch.zeros(5)),
        ("quote'q", torch.zeros(1)),
    ]))
    ckpt = collections.OrderedDict([
        ("a/b//c", torch.tensor([1.0, 2.0, 3.0])),
        ("größe.γ", torch.tensor([[1.0, 2.0], [3.0, 4.0]])),
        ("emoji 😀", torch.arange(4.0)),
        ("with space.x/y", torch.tensor([7, -7], dtype=torch.int32)),
        ("quote'q", torch.tensor([9.0])),
        ("日本語.偏り", torch.ones(5)),             # unexpected; 日本語.重み is missing
        ("/leading/slash", torch.ones(1)),          # unexpected
    ])
    return Case("unusual_keys", model, ckpt, shards=3,
                splits=(("/=0", "γ=1"),))


CASES = [
    case_seed_missing_bias, case_seed_correct, case_seed_extended, case_seed_only_linear1,
    case_batchnorm_buffers, case_ddp_prefix, case_size_mismatch, case_missing_unexpected_mismatch,
    case_missing_unexpected, case_f64_into_f32, case_bf16_into_f32, case_bf16_model,
    case_fp16_model, case_cross_kind_conversion, case_scalars_empty_bool_int,
    case_zero_d_and_empty_mismatch, case_legacy_1d_into_0d, case_non_contiguous, case_many_small,
    case_big_tensor, case_unusual_keys,
]


# ----- running shardload


def run(cmd, timeout=300):
    start = time.monotonic()
    proc = subprocess.run(cmd, capture_output=True, env=ENV, timeout=timeout)
    proc.seconds = time.monotonic() - start
    proc.out = proc.stdout.decode("utf-8", "replace")
    proc.err = proc.stderr.decode("utf-8", "replace")
    return proc


def show(proc, limit=3000):
    return (f"\n    command: {' '.join(proc.args)}\n    exit {proc.returncode}"
            f"\n    stdout: {proc.out[-limit:]!r}\n    stderr: {proc.err[-limit:]!r}")


def load_cmd(ranks, ckpt_dir, ref, strict, json_mode, out, extra_args):
    # One rank: a singleton (the same load without mpirun's start and teardown).
    launcher = [MPIRUN, "-np", str(ranks), "--oversubscribe"] if ranks > 1 else []
    cmd = launcher + [BIN, "load", ckpt_dir, "--into", ref]
    if json_mode:
        cmd.append("--json")
    if out:
        cmd += ["--out", out]
    if not strict:
        cmd.append("--no-strict")
    return cmd + list(extra_args)


def parse_key_list(line, prefix):
    """'PREFIX "a", "b". ' -> ['a', 'b'] (keys here never contain '", "'), or None."""
    body = line[len(prefix):].rstrip()
    if not (body.endswith('".') and body.startswith('"')):
        return None
    return body[1:-2].split('", "')


def check_message(tag, text, orc, hint):
    """`text` holds PyTorch's message format with the oracle's verdict in it."""
    lines = text.split("\n")
    heads = [i for i, line in enumerate(lines) if HEADER_RE.match(line)]
    if not CHK.check(tag, len(heads) == 1,
                     f"expected one 'Error(s) in loading state_dict for <name>:' line in "
                     f"{text!r}"):
        return
    body = []
    for line in lines[heads[0] + 1:]:
        if not line.startswith("\t"):
            break
        body.append(line[1:])
    want = orc.error.split("\n\t")[1:]
    for prefix, keys in ((MISSING, orc.missing), (UNEXPECTED, orc.unexpected)):
        expected_here = any(w.startswith(prefix) for w in want)
        got = [b for b in body if b.startswith(prefix)]
        if not expected_here:
            CHK.check(tag, not got, f"message has {prefix!r} lines that PyTorch has not: {got}")
            continue
        if not CHK.check(tag, len(got) == 1, f"message needs one {prefix!r} line: {body}"):
            continue
        parsed = parse_key_list(got[0], prefix)
        CHK.check(tag, parsed is not None and sorted(parsed) == sorted(keys),
                  f"{got[0]!r}: keys {parsed}, PyTorch {keys} (format: "
                  f"'{prefix}\"a\", \"b\". ')")
    for w in want:
        if MISMATCH_RE.match(w):
            CHK.check(tag, w in [b.rstrip() for b in body],
                      f"message lacks PyTorch's line {w!r}; has {body}")
    extra_mismatch = [b for b in body if b.startswith("size mismatch for ")
                      and b.rstrip() not in want]
    CHK.check(tag, not extra_mismatch, f"size-mismatch lines PyTorch has not: {extra_mismatch}")
    if hint:
        CHK.check(tag, hint in "\n".join(body), f"message does not mention {hint!r}: {body}")


def check_json_run(tag, proc, orc, strict, out, ckpt, hint):
    ok_rc = 0 if orc.ok else 1
    CHK.check(tag, proc.returncode == ok_rc,
              f"exit code {proc.returncode}, expected {ok_rc} (PyTorch "
              f"{'loads' if orc.ok else 'fails'})" + show(proc))
    try:
        res = json.loads(proc.out)
        is_obj = isinstance(res, dict)
    except ValueError as e:
        res, is_obj = None, False
        err = str(e)
    if not CHK.check(tag, is_obj, "stdout is not exactly one JSON object"
                     + ("" if res is not None else f" ({err})") + show(proc)):
        return None
    CHK.check(tag, res.get("ok") is orc.ok,
              f"ok={res.get('ok')!r}, PyTorch {orc.ok}; error={res.get('error')!r}")
    CHK.check(tag, res.get("strict") is strict, f"strict={res.get('strict')!r}, expected {strict}")

    for field, want in (("missing_keys", orc.missing), ("unexpected_keys", orc.unexpected)):
        got = res.get(field)
        if CHK.check(tag, isinstance(got, list), f"{field} is not a list: {got!r}"):
            CHK.check(tag, set(got) == set(want) and len(got) == len(set(got)),
                      f"{field} {sorted(got)}, PyTorch {sorted(want)}")
    sm = res.get("size_mismatches")
    if CHK.check(tag, isinstance(sm, list), f"size_mismatches is not a list: {sm!r}"):
        got = {}
        for m in sm:
            got[m.get("key")] = (m.get("checkpoint_shape"), m.get("model_shape"))
        CHK.check(tag, set(got) == set(orc.mismatches) and len(got) == len(sm),
                  f"size-mismatch keys {sorted(map(str, got))}, PyTorch "
                  f"{sorted(orc.mismatches)}")
        for key in set(got) & set(orc.mismatches):
            CHK.check(tag, list(got[key]) == list(orc.mismatches[key]),
                      f"size mismatch {key!r}: (checkpoint, model) shapes {got[key]}, "
                      f"PyTorch {orc.mismatches[key]}")

    error = res.get("error")
    if orc.ok:
        CHK.check(tag, error is None, f"error is {error!r} on a successful load")
    elif CHK.check(tag, isinstance(error, str) and error, f"error is {error!r} on a failure"):
        check_message(tag + " json.error", error, orc, hint)

    CHK.check(tag, isinstance(res.get("seconds"), (int, float)) and res["seconds"] >= 0,
              f"seconds={res.get('seconds')!r}")

    # Every needed checkpoint byte is read exactly once; nothing is read for a failed load.
    bytes_read = res.get("bytes_read")
    if orc.ok:
        used = [k for k in ckpt if k not in orc.unexpected and k not in orc.mismatches]
        want = sum(ckpt[k].numel() * ckpt[k].element_size() for k in used)
        what = "the checkpoint tensors' nbytes" if len(used) == len(ckpt) else \
            f"the nbytes of the {len(used)} checkpoint tensors the model takes"
    else:
        want, what = 0, "0 for a load that fails its verdict"
    CHK.check(tag, bytes_read == want, f"bytes_read={bytes_read!r}, expected {want} ({what})")

    # The result file: written, and equal to the oracle's state bit for bit, only on success.
    if orc.ok:
        if CHK.check(tag, os.path.isfile(out), f"{out} was not written on a successful load"):
            try:
                got = torch.load(out, weights_only=True)
            except Exception as e:  # noqa: BLE001
                CHK.check(tag, False, f"torch.load({out}) failed: {e}")
                return res
            CHK.check(tag, list(got) == list(orc.state),
                      f"result keys {list(got)[:8]}..., expected the model's "
                      f"{list(orc.state)[:8]}... (same set: {set(got) == set(orc.state)})")
            bad = []
            for key, want_t in orc.state.items():
                problem = same_tensor(want_t, got.get(key)) if key in got else "absent"
                if problem:
                    bad.append(f"{key!r}: {problem}")
            CHK.check(tag, not bad, f"result differs from PyTorch's loaded state: "
                      f"{'; '.join(bad[:6])}{' ...' if len(bad) > 6 else ''}")
    else:
        CHK.check(tag, not os.path.exists(out), f"{out} was written although the load failed")
    return res


# ----- main


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--ranks", type=int, default=1)
    parser.add_argument("--only", default="", help="run only cases whose name contains this")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    parser.add_argument("--every", type=int, default=1,
                        help="run every Nth case only (the one-rank run takes every other: the "
                             "2- and 4-rank runs take every case, unsplit as well as split)")
    args = parser.parse_args()
    ranks = args.ranks

    if not os.path.isfile(BIN):
        print(f"FAIL [setup] SHARDLOAD_BIN={BIN} does not exist", file=sys.stderr)
        print("0 passed, 1 failed")
        return 1

    tmp = tempfile.mkdtemp(prefix=f"shardload-oracle-np{ranks}-")
    started = time.monotonic()
    runs = 0
    try:
        for i, make in enumerate(CASES):
            if i % max(1, args.every):
                continue
            case = make()
            if args.only and args.only not in case.name:
                continue
            t0 = time.monotonic()
            try:
                runs += run_case(case, ranks, os.path.join(tmp, case.name))
            except Exception:  # noqa: BLE001 - a broken case fails, the others still run
                CHK.check(case.name, False, "raised\n" + traceback.format_exc())
            print(f"  {case.name}: {time.monotonic() - t0:.1f} s", flush=True)
    finally:
        if args.keep:
            print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    print(f"{runs} shardload runs at --ranks {ranks} in {time.monotonic() - started:.0f} s",
          flush=True)
    print(f"{CHK.passed} passed, {CHK.failed} failed", flush=True)
    return 1 if CHK.failed else 0


def run_case(case, ranks, d):
    os.makedirs(d)
    ref, src, ckpt_dir = (os.path.join(d, n) for n in ("model.pt", "ckpt.pt", "ckpt"))
    torch.save(case.model.state_dict(), ref)
    torch.save(case.ckpt, src)
    conv = run([BIN, "convert", src, ckpt_dir]
               + (["--shards", str(case.shards)] if case.shards else []))
    if not CHK.check(case.name, conv.returncode == 0, "convert failed" + show(conv)):
        return 1
    runs = 1
    verdicts = {s: oracle(case.model, case.ckpt, s) for s in (True, False)}
    # (strict, --split args): both modes unsplit; with several ranks, split runs as well.
    plan = [(True, []), (False, [])]
    same = verdicts[True].ok == verdicts[False].ok and not verdicts[True].missing \
        and not verdicts[True].unexpected  # both modes give one verdict
    for n, specs in enumerate(case.splits if ranks > 1 else ()):
        split_args = [x for spec in specs for x in ("--split", spec)]
        if same and n == 0:
            plan[1] = (False, split_args)  # the non-strict run is the split one
        elif same:
            plan.append((True, split_args))
        else:
            plan.append((False, split_args))  # lists and, where it loads, values
    plan = [(f"{'strict' if s else 'non-strict'} np{ranks} {' '.join(a)}".rstrip(), s, a)
            for s, a in plan]
    for i, (label, strict, extra_args) in enumerate(plan):
        out = os.path.join(d, f"result{i}.pt")
        proc = run(load_cmd(ranks, ckpt_dir, ref, strict, True, out, extra_args))
        runs += 1
        check_json_run(f"{case.name} {label}", proc, verdicts[strict], strict, out,
                       case.ckpt, case.hint)
    if case.text:  # PyTorch's message on stderr; the JSON runs check the same text in "error"
        for strict in (True,):
            orc = verdicts[strict]
            if orc.ok:
                continue
            tag = f"{case.name} {'strict' if strict else 'non-strict'} np{ranks} (no --json)"
            out = os.path.join(d, f"text-{strict}.pt")
            proc = run(load_cmd(ranks, ckpt_dir, ref, strict, False, out, ()))
            runs += 1
            CHK.check(tag, proc.returncode == 1, f"exit {proc.returncode}, expected 1" + show(proc))
            CHK.check(tag, not os.path.exists(out), f"{out} written although the load failed")
            check_message(tag + " stderr", proc.err, orc, case.hint)
    for label, extra_args, transform in case.extra or ():
        ckpt = transform(case.ckpt)
        orc = oracle(case.model, ckpt, True)
        out = os.path.join(d, f"extra-{label}.pt")
        proc = run(load_cmd(ranks, ckpt_dir, ref, True, True, out, extra_args))
        runs += 1
        check_json_run(f"{case.name} strict np{ranks} {' '.join(extra_args)}", proc, orc, True,
                       out, ckpt, None)
    return runs


if __name__ == "__main__":
    sys.exit(main())
