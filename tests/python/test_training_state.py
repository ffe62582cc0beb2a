#!/usr/bin/env python3
"""A training state, not only a model: `shardload.save(state, ...)` / `shardload.load(state, ...)`
of {"model": module, "optim": optimizer, "sched": scheduler, "step": int, "rng": {...},
"data": {...}}, with PyTorch itself as the oracle.

Three launches, so that nothing of the saving process survives into the loading one:
  * `--role save` at 2 ranks trains a small model with AdamW and a warm-up + cosine LR schedule
    (dropout and data drawn from torch's RNG) for K steps and saves the whole state into a run
    directory (ROOT/step-K, `latest`); it also saves five optimizers (SGD with momentum, Adam,
    AdamW with amsgrad, Adagrad, RMSprop) over models split Megatron-style across its 2 ranks,
    each rank's optimizer state the slab of a global state; and tries the refusals (a value that
    is not plain, pickles, values that differ between ranks, an optimizer without its module);
    and sparse (COO, CSR, CSC, BSR) and quantized (per tensor, per channel) tensors round trip.
  * C++ (`mpi_tests`, TrainingStateInterop) loads a Python AdamW state into torch::optim::AdamW
    and saves it back; the resume launch loads that and finds the Python state bit for bit.
  * `--role resume` at 4 ranks loads, in fresh objects, at 4 ranks, at 1 and 3 ranks at once
    (two sub-communicators), and at 2 + 2: the resumed run's next K losses and final parameters
    equal an uninterrupted run's bit for bit, the step, RNG, plain values and schedule come back
    with their types, and each rank's optimizer state is bit for bit its slab of the global state.
    Then DTensors without split rules: FSDP2 at 4 ranks to a plain model at 1 and back, and a
    tensor-parallel model (parallelize_module) to a plain one.

Run as a test without arguments (it launches both with mpirun). Prints "N passed, M failed".
"""
import copy
import fractions
import os
import shutil
import subprocess
import sys
import tempfile

ROLE = sys.argv[sys.argv.index("--role") + 1] if "--role" in sys.argv else None

if ROLE is None:  # the driver
    ENV = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
               OMPI_MCA_rmaps_base_oversubscribe="1")
    tmp = tempfile.mkdtemp(prefix="shardload_training_")
    failed = 0
    try:
        mpi_tests = os.environ.get("SHARDLOAD_MPI_TESTS", "build/tests/mpi_tests")
        for role, ranks in (("save", 2), ("cpp", 2), ("resume", 4)):
            cmd = ["mpirun", "-np", str(ranks), "--oversubscribe", sys.executable, __file__,
                   "--role", role, "--dir", tmp]
            env = ENV
            if role == "cpp":  # C++'s TrainingState loads the Python state and saves it back
                cmd = ["mpirun", "-np", str(ranks), "--oversubscribe", mpi_tests,
                       "--gtest_filter=TrainingStateInterop.*", "--gtest_brief=1"]
                env = dict(ENV, SHARDLOAD_INTEROP_DIR=os.path.join(tmp, "interop"))
            run = subprocess.run(cmd, env=env, timeout=400, capture_output=True, text=True)
            sys.stdout.write(run.stdout)
            sys.stderr.write(run.stderr[-6000:])
            if run.returncode != 0:
                print(f"FAILED: {role} at {ranks} ranks exited {run.returncode}", flush=True)
                failed += 1
                break
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    sys.exit(1 if failed else 0)

from mpi4py import MPI  # noqa: E402  (before shardload: shardload takes MPI as mpi4py started it)

import torch  # noqa: E402
from torch import nn  # noqa: E402

import shardload  # noqa: E402

torch.set_num_threads(1)  # the same arithmetic in every process, whatever the rank count
DIR = sys.argv[sys.argv.index("--dir") + 1]
WORLD = MPI.COMM_WORLD
RANK = WORLD.rank
PASSED, FAILED = [0], [0]
K = 4  # steps before the save, and after the resume
SPLIT = {r"fc1\.(weight|bias)$": 0, r"fc2\.weight$": 1}


def check(cond, what):
    if cond:
        PASSED[0] += 1
    else:
        FAILED[0] += 1
        print(f"FAIL [rank {RANK}] {what}", file=sys.stderr, flush=True)
    return bool(cond)


def same(a, b):
    """Same dtype, shape and bytes."""
    return (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.dtype == b.dtype
            and a.shape == b.shape and torch.equal(
                a.detach().contiguous().reshape(-1).view(torch.uint8),
                b.detach().contiguous().reshape(-1).view(torch.uint8)))


# ---- the resumed run -------------------------------------------------------------------------
class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(8, 16)
        self.norm = nn.LayerNorm(16)
        self.drop = nn.Dropout(0.2)
        self.fc2 = nn.Linear(16, 4)

    def forward(self, x):
        return self.fc2(self.drop(torch.relu(self.norm(self.fc1(x)))))


def make_run(seed):
    torch.manual_seed(seed)
    model = Net()
    opt = torch.optim.AdamW(model.parameters(), lr=2e-2, weight_decay=0.1)
    sched = torch.optim.lr_scheduler.SequentialLR(opt, [
        torch.optim.lr_scheduler.LinearLR(opt, start_factor=0.1, total_iters=3),
        torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=10)], milestones=[3])
    return model, opt, sched


def train_step(model, opt, sched):
    x, y = torch.randn(16, 8), torch.randn(16, 4)
    loss = nn.functional.mse_loss(model(x), y)
    opt.zero_grad()
    loss.backward()
    opt.step()
    sched.step()
    return loss.item()


def state_of(model, opt, sched, step):
    return {"model": model, "optim": opt, "sched": sched, "step": step,
            "rng": {"torch": torch.get_rng_state()},
            "data": {"epoch": 3, "offset": 81920, "name": "shard-\u03b1", "seen": (1, 2.5, None),
                     "weights": [0.25, -0.0]}}


# ---- optimizers over split models ------------------------------------------------------------
OPTIMIZERS = {
    "sgd": (torch.optim.SGD, {"lr": 0.1, "momentum": 0.9, "weight_decay": 1e-2}),
    "adam": (torch.optim.Adam, {"lr": 1e-2}),
    "adamw": (torch.optim.AdamW, {"lr": 1e-2, "amsgrad": True, "weight_decay": 0.1}),
    "adagrad": (torch.optim.Adagrad, {"lr": 0.1}),
    # Not one whose state shardload makes directly: created by a step at learning rate 0.
    "rmsprop": (torch.optim.RMSprop, {"lr": 1e-2, "momentum": 0.5}),
}


class Mlp(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(8, 12)
        self.fc2 = nn.Linear(12, 8)

    def forward(self, x):
        return self.fc2(torch.tanh(self.fc1(x)))


def global_trained(name):
    """The global model and optimizer after 3 steps (the same in every process)."""
    torch.manual_seed(11)
    model = Mlp()
    cls, kwargs = OPTIMIZERS[name]
    opt = cls(model.parameters(), **kwargs)
    for _ in range(3):
        loss = model(torch.randn(5, 8)).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model, opt


def slab(tensor, key, rank, size):
    """This rank's slab of a global tensor under SPLIT (the rest whole)."""
    for dim, pattern in ((0, "fc1."), (1, "fc2.weight")):
        if key.startswith(pattern) and (pattern != "fc1." or key in ("fc1.weight", "fc1.bias")):
            return torch.tensor_split(tensor, size, dim=dim)[rank].clone()
    return tensor.clone()


def local_model(global_model, rank, size, fill=None):
    model = copy.deepcopy(global_model)
    for key, p in model.named_parameters():
        p.data = slab(p.data, key, rank, size)
        if fill is not None:
            p.data.fill_(fill)
    return model


def split_state(rank, size, trained):
    """{"m_<opt>": slab model, "<opt>": its optimizer}; with `trained`, the optimizer state is
    the slab of the global one, else the optimizer is fresh and the model's values are 0."""
    state = {}
    for name, (cls, kwargs) in OPTIMIZERS.items():
        g_model, g_opt = global_trained(name)
        model = local_model(g_model, rank, size, fill=None if trained else 0.0)
        opt = cls(model.parameters(), **kwargs)
        if trained:
            names = [k for k, _ in g_model.named_parameters()]
            sd = g_opt.state_dict()
            sd["state"] = {i: {f: slab(v, names[i], rank, size)
                               if isinstance(v, torch.Tensor) and v.dim() > 0 else v
                               for f, v in s.items()} for i, s in sd["state"].items()}
            opt.load_state_dict(sd)
        state["m_" + name], state[name] = model, opt
    state["step"] = 3
    return state


def check_split_state(state, rank, size, what):
    for name in OPTIMIZERS:
        g_model, g_opt = global_trained(name)
        model, opt = state["m_" + name], state[name]
        params = dict(model.named_parameters())
        g_params = dict(g_model.named_parameters())
        for key, p in params.items():
            check(same(p, slab(g_params[key], key, rank, size)),
                  f"{what}: {name} model {key} is not its slab")
            want = g_opt.state[g_params[key]]
            got = opt.state.get(p, {})
            check(sorted(got) == sorted(want), f"{what}: {name} {key} state {sorted(got)} != "
                  f"{sorted(want)}")
            for field, value in want.items():
                expect = slab(value, key, rank, size) if value.dim() > 0 else value
                check(same(got.get(field), expect),
                      f"{what}: {name} {key}.{field} is not the slab of the global state")
        for got, want in zip(opt.param_groups, g_opt.param_groups):
            check({k: v for k, v in got.items() if k != "params"} ==
                  {k: v for k, v in want.items() if k != "params"},
                  f"{what}: {name} param group hyper-parameters differ")


def expect_error(cls, needles, what, fn):
    try:
        fn()
        check(False, f"{what}: did not raise")
    except cls as e:
        text = str(e)
        check(all(n in text for n in needles), f"{what}: {text[:600]!r}")


# ---- the roles -------------------------------------------------------------------------------
def role_save():
    model, opt, sched = make_run(0)
    for _ in range(K):
        train_step(model, opt, sched)
    root = os.path.join(DIR, "run")
    result = shardload.save(state_of(model, opt, sched, K), root, step=K)
    check(result.path.endswith(f"step-{K}"), f"saved into {result.path}")

    split = split_state(RANK, WORLD.size, trained=True)
    shardload.save(split, os.path.join(DIR, "split"), split=SPLIT)

    # Refusals: collective, the same UsageError on every rank, nothing written.
    never = os.path.join(DIR, "never")
    expect_error(shardload.UsageError, ["'data.blob'", "allow_pickle", "object"],
                 "a value that is not plain",
                 lambda: shardload.save({"model": model, "data": {"blob": object()}}, never))
    expect_error(shardload.UsageError, ["'step'", "rank 0"], "values that differ",
                 lambda: shardload.save({"model": model, "step": RANK}, never))
    expect_error(shardload.UsageError, ["'optim'", "no module"], "an optimizer without its module",
                 lambda: shardload.save({"optim": opt}, never))
    check(not os.path.exists(never), "nothing written after the refusals")
    # A pickled value: only with allow_pickle, on save and on load.
    pickled = os.path.join(DIR, "pickled")
    shardload.save({"model": model, "ratio": fractions.Fraction(1, 3)}, pickled,
                   allow_pickle=True)
    state = {"model": model, "ratio": None}
    expect_error(shardload.UsageError, ["'ratio'", "allow_pickle"], "loading a pickle",
                 lambda: shardload.load(state, pickled))
    check(state["ratio"] is None, "nothing restored after the refusal")
    shardload.load(state, pickled, allow_pickle=True)
    check(state["ratio"] == fractions.Fraction(1, 3), f"pickled value back: {state['ratio']!r}")

    # Sparse (every layout) and quantized tensors: stored as their parts, rebuilt on load in
    # their dict's place, equal; a sparse placeholder of another nnz takes the checkpoint's.
    # In a module's state_dict they are refused at save with the key.
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # sparse CSR beta, quantized tensors deprecated
        torch.manual_seed(2)
        coo = torch.sparse_coo_tensor(torch.tensor([[0, 2, 0], [1, 1, 1]]),
                                      torch.tensor([1., 2., 3.]), (3, 4))  # not coalesced
        odd = {"coo": coo, "csr": torch.randn(4, 5).relu().to_sparse_csr(),
               "csc": torch.randn(4, 5).relu().to_sparse_csc(),
               "bsr": torch.randn(4, 6).relu().to_sparse_bsr((2, 2)),
               "q": torch.quantize_per_tensor(torch.randn(3, 4), 0.1, 3, torch.qint8),
               "qc": torch.quantize_per_channel(torch.randn(3, 4), torch.tensor(
                   [0.1, 0.2, 0.3], dtype=torch.float64), torch.tensor([0, 1, 2]), 0,
                   torch.quint8)}
        shardload.save({"model": model, "odd": odd}, os.path.join(DIR, "odd"))
        back = {"coo": torch.zeros(3, 4).to_sparse(), "csr": torch.zeros(4, 5).to_sparse_csr(),
                "csc": torch.zeros(4, 5).to_sparse_csc(),
                "bsr": torch.zeros(4, 6).to_sparse_bsr((2, 2)),
                "q": torch.quantize_per_tensor(torch.zeros(3, 4), 1.0, 0, torch.qint8),
                "qc": torch.quantize_per_channel(torch.zeros(3, 4), torch.ones(
                    3, dtype=torch.float64), torch.zeros(3, dtype=torch.long), 0, torch.quint8)}
        keys = shardload.load({"model": model, "odd": back}, os.path.join(DIR, "odd"))
        check(tuple(keys) == ([], []), f"sparse/quantized verdict {keys!r}")
        for key, want in odd.items():
            got = back[key]
            if want.is_quantized:
                ok = (got.qscheme() == want.qscheme() and got.dtype == want.dtype
                      and same(got.int_repr(), want.int_repr())
                      and same(got.dequantize(), want.dequantize()))
            else:
                ok = got.layout == want.layout and same(got.to_dense(), want.to_dense())
                if want.layout == torch.sparse_coo:
                    ok = ok and same(got._indices(), want._indices()) and \
                        got.is_coalesced() == want.is_coalesced()
            check(ok, f"{key}: {want!r} came back as {got!r}")
        sparse_module = nn.Linear(2, 2)
        sparse_module.register_buffer("sp", torch.eye(2).to_sparse())
        expect_error(shardload.UsageError, ["'sp'", "sparse", "phase 'prepare'"],
                     "a sparse tensor in a module",
                     lambda: shardload.save(sparse_module, os.path.join(DIR, "never")))

    # For C++ (the "cpp" launch): a state its TrainingState loads and saves back.
    net, opt = interop_run()
    os.makedirs(os.path.join(DIR, "interop"), exist_ok=True)
    shardload.save({"model": net, "optim": opt, "step": 3}, os.path.join(DIR, "interop", "py"))


def interop_run():
    """The state the C++ interop test expects: fc1/fc2 as its Net, AdamW after 3 steps."""
    torch.manual_seed(5)
    net = nn.Sequential()
    net.fc1, net.fc2 = nn.Linear(6, 8), nn.Linear(8, 4)
    opt = torch.optim.AdamW(net.parameters(), lr=0.03, weight_decay=0.2, amsgrad=True)
    for _ in range(3):
        loss = net.fc2(torch.tanh(net.fc1(torch.randn(5, 6)))).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return net, opt


def role_resume():
    groups = [("4 ranks", WORLD)]
    for what, color in (("1 + 3 ranks", 0 if RANK == 0 else 1), ("2 + 2 ranks", RANK // 2)):
        groups.append((what, WORLD.Split(color, RANK)))
    for what, comm in groups:
        what = f"{what} (rank {comm.rank} of {comm.size})"
        # The uninterrupted run.
        model, opt, sched = make_run(0)
        want_losses = [train_step(model, opt, sched) for _ in range(2 * K)]
        want_params = {k: v.detach().clone() for k, v in model.state_dict().items()}
        # The resumed one: other initial values, a fresh optimizer and schedule.
        model, opt, sched = make_run(1)
        state = state_of(model, opt, sched, 0)
        state["data"] = {"epoch": 0, "offset": 0, "name": "", "seen": (), "weights": []}
        keys = shardload.load(state, os.path.join(DIR, "run"), comm=comm)
        check(tuple(keys) == ([], []), f"{what}: verdict {keys!r}")
        check(type(state["step"]) is int and state["step"] == K, f"{what}: step {state['step']!r}")
        check(state["data"] == {"epoch": 3, "offset": 81920, "name": "shard-\u03b1",
                                "seen": (1, 2.5, None), "weights": [0.25, -0.0]}
              and str(state["data"]["weights"][1]) == "-0.0", f"{what}: data {state['data']!r}")
        check(sched.last_epoch == K, f"{what}: scheduler at {sched.last_epoch}")
        torch.set_rng_state(state["rng"]["torch"])
        got_losses = [train_step(model, opt, sched) for _ in range(K)]
        check(got_losses == want_losses[K:],
              f"{what}: losses {got_losses} != uninterrupted {want_losses[K:]}")
        for key, value in model.state_dict().items():
            check(same(value, want_params[key]), f"{what}: {key} differs from the uninterrupted run")

        # Optimizer state resharded: saved at 2 ranks, loaded at comm.size.
        state = split_state(comm.rank, comm.size, trained=False)
        keys = shardload.load(state, os.path.join(DIR, "split"), split=SPLIT, comm=comm)
        check(tuple(keys) == ([], []), f"{what}: split verdict {keys!r}")
        check_split_state(state, comm.rank, comm.size, what)

    # Python -> C++ -> Python: the state C++'s TrainingState loaded and saved back is the one
    # saved here, bit for bit (its steps come back as float64, converted to float32).
    want_net, want_opt = interop_run()
    torch.manual_seed(6)
    net = nn.Sequential()
    net.fc1, net.fc2 = nn.Linear(6, 8), nn.Linear(8, 4)
    opt = torch.optim.AdamW(net.parameters(), lr=1.0, amsgrad=True)
    state = {"model": net, "optim": opt, "step": 0}
    keys = shardload.load(state, os.path.join(DIR, "interop", "cpp"))
    check(tuple(keys) == ([], []) and state["step"] == 3, f"from C++: {keys!r} {state['step']}")
    check(opt.param_groups[0]["lr"] == 0.03 and opt.param_groups[0]["weight_decay"] == 0.2
          and opt.param_groups[0]["decoupled_weight_decay"], f"from C++: {opt.param_groups}")
    for (key, p), q in zip(net.named_parameters(), want_net.parameters()):
        check(same(p, q), f"from C++: {key}")
        for field, value in want_opt.state[q].items():
            check(same(opt.state[p][field], value), f"from C++: {key}.{field}")

    # The verdict covers values: a value the checkpoint lacks is missing (strict: nothing
    # changes), one it has that the state lacks is unexpected.
    model, opt, sched = make_run(1)
    state = state_of(model, opt, sched, 0)
    state["extra"] = {"lr_scale": 1.5}
    del state["data"]
    expect_error(shardload.VerdictError, ["Missing key(s)", '"extra.lr_scale"', '"data.epoch"'],
                 "strict with other values", lambda: shardload.load(state, os.path.join(DIR, "run")))
    check(state["step"] == 0, "strict failure restored nothing")
    keys = shardload.load(state, os.path.join(DIR, "run"), strict=False)
    check(keys.missing_keys == ["extra.lr_scale"] and "data.epoch" in keys.unexpected_keys,
          f"non-strict verdict {keys!r}")
    check(state["extra"] == {"lr_scale": 1.5} and state["step"] == K, "non-strict restore")


def dtensor_checks():
    """DTensor parameters without split rules: declared from their placements. A model trained
    with FSDP2 (fully_shard) at 4 ranks is saved and loaded into a plain model at 1 rank (each
    rank alone, COMM_SELF), and a plain one the other way; a tensor-parallel one
    (parallelize_module: Shard(0), Shard(1), Replicate) into a plain one. Bit for bit against
    the DTensors' full tensors, optimizer state included."""
    import socket

    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor import DTensor
    from torch.distributed.tensor.parallel import (ColwiseParallel, RowwiseParallel,
                                                   parallelize_module)
    port = None
    if RANK == 0:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
    os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = "127.0.0.1", str(WORLD.bcast(port))
    dist.init_process_group("gloo", rank=RANK, world_size=WORLD.size)
    mesh = init_device_mesh("cpu", (WORLD.size,))

    def net(seed, hidden=9):  # 9 rows over 4 ranks: FSDP2's uneven shards (3, 3, 3, 0)
        torch.manual_seed(seed)
        m = nn.Sequential()
        m.fc1, m.act, m.fc2 = nn.Linear(6, hidden), nn.Tanh(), nn.Linear(hidden, 4)
        return m

    def fsdp(m):
        fully_shard(m.fc1, mesh=mesh)
        fully_shard(m.fc2, mesh=mesh)
        return fully_shard(m, mesh=mesh)

    def full(t):
        return t.full_tensor() if isinstance(t, DTensor) else t

    def compare(what, got_model, got_opt, want_model, want_opt):
        for (key, p), q in zip(got_model.named_parameters(), want_model.parameters()):
            check(same(full(p.detach()), full(q.detach())), f"{what}: {key}")
            for field, value in want_opt.state[q].items():
                check(same(full(got_opt.state[p][field]), full(value)), f"{what}: {key}.{field}")

    for kind in ("fsdp2", "tp"):
        if kind == "fsdp2":
            model = fsdp(net(0))
        else:
            hidden = 2 * WORLD.size  # tensor parallel shards evenly
            model = parallelize_module(net(0, hidden), mesh, {"fc1": ColwiseParallel(),
                                                              "fc2": RowwiseParallel()})
        opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
        torch.manual_seed(9)
        for _ in range(2):
            loss = model(torch.randn(3, 6)).square().mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
        path = os.path.join(DIR, kind)
        shardload.save({"model": model, "optim": opt}, path)
        plain = net(1, 9 if kind == "fsdp2" else hidden)
        plain_opt = torch.optim.AdamW(plain.parameters(), lr=1.0)
        keys = shardload.load({"model": plain, "optim": plain_opt}, path, comm=MPI.COMM_SELF)
        check(tuple(keys) == ([], []), f"{kind} -> plain: {keys!r}")
        compare(f"{kind} at {WORLD.size} ranks -> plain at 1", plain, plain_opt, model, opt)
        if kind == "fsdp2":
            plain_fsdp, plain_fsdp_opt = plain, plain_opt
    plain, plain_opt = plain_fsdp, plain_fsdp_opt
    # A module alone (not in a state dict) with DTensor parameters takes the same path; a
    # DTensor in a hand-built Partition is refused, not read as bytes it does not have.
    shardload.save(model, os.path.join(DIR, "tp-module"))
    alone = net(3, hidden)
    keys = shardload.load(alone, os.path.join(DIR, "tp-module"), comm=MPI.COMM_SELF)
    check(tuple(keys) == ([], []) and all(same(a, full(b.detach())) for a, b in zip(
        alone.state_dict().values(), model.state_dict().values())), f"tp module alone: {keys!r}")
    part = shardload.Partition()
    expect_error(shardload.UsageError, ["'w'", "DTensor"], "a DTensor in a Partition",
                 lambda: (part.add("w", model.fc1.weight.detach()),
                          shardload.save(part, os.path.join(DIR, "never"))))
    # The other way: a plain model at 1 rank into FSDP2 at 4.
    if RANK == 0:
        shardload.save({"model": plain, "optim": plain_opt}, os.path.join(DIR, "plain"),
                       comm=MPI.COMM_SELF)
    WORLD.Barrier()
    sharded = fsdp(net(2))
    sharded_opt = torch.optim.AdamW(sharded.parameters(), lr=1.0)
    keys = shardload.load({"model": sharded, "optim": sharded_opt}, os.path.join(DIR, "plain"))
    check(tuple(keys) == ([], []), f"plain -> fsdp2: {keys!r}")
    compare(f"plain at 1 rank -> fsdp2 at {WORLD.size}", sharded, sharded_opt, plain, plain_opt)
    # FSDP2's load-state-dict hooks (post-hooks from the start, a pre-hook after the first
    # forward) run through the module's own load_state_dict, its DTensors still loaded in place.
    paths = keys.result.module_paths
    check(paths.get("model", "").startswith("in place, then"), f"fresh fsdp2 paths {paths}")
    sharded(torch.randn(3, 6)).square().mean().backward()
    sharded_opt.zero_grad()
    keys = shardload.load({"model": sharded, "optim": sharded_opt}, os.path.join(DIR, "plain"))
    paths = keys.result.module_paths
    check(tuple(keys) == ([], []) and paths.get("model.fc1", "").startswith("own loading"),
          f"trained fsdp2: {keys!r} {paths}")
    compare(f"plain at 1 rank -> trained fsdp2 at {WORLD.size}", sharded, sharded_opt, plain,
            plain_opt)
    dist.destroy_process_group()


if __name__ == "__main__":
    try:
        {"save": role_save, "resume": lambda: (role_resume(), dtensor_checks())}[ROLE]()
    except Exception:  # noqa: BLE001
        import traceback
        traceback.print_exc()
        FAILED[0] += 1
    passed = WORLD.allreduce(PASSED[0])
    failed = WORLD.allreduce(FAILED[0])
    if RANK == 0:
        print(f"{ROLE}: {passed} passed, {failed} failed", flush=True)
    sys.exit(1 if failed else 0)
