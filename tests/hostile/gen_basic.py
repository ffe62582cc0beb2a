"""Wave 1's broken files: garbage, truncated, missing and zero-byte files, a directory that is
not a checkpoint, and the same for single-file formats."""
import os
import shutil

from run_hostile import Case

CKPT_OPS = ("inspect", "verify", "load", "load_into")


def copy_good(good, workdir, name):
    path = os.path.join(workdir, name)
    shutil.copytree(good.ckpt, path)
    return path


def shard_of(path):
    return os.path.join(path, sorted(f for f in os.listdir(path) if f.startswith("shard-"))[0])


def cases(workdir, good):
    out = []

    p = copy_good(good, workdir, "garbage_manifest")
    with open(os.path.join(p, "manifest.h5"), "wb") as f:
        f.write(os.urandom(4096))
    out.append(Case("garbage manifest", p, CKPT_OPS, "manifest.h5"))

    p = copy_good(good, workdir, "zero_byte_manifest")
    open(os.path.join(p, "manifest.h5"), "wb").close()
    out.append(Case("zero-byte manifest", p, CKPT_OPS, "manifest.h5"))

    p = copy_good(good, workdir, "truncated_shard")
    s = shard_of(p)
    with open(s, "r+b") as f:
        f.truncate(os.path.getsize(s) // 2)
    out.append(Case("truncated shard file", p, CKPT_OPS, os.path.basename(s)))

    p = copy_good(good, workdir, "zero_byte_shard")
    s = shard_of(p)
    open(s, "wb").close()
    out.append(Case("zero-byte shard file", p, CKPT_OPS, os.path.basename(s)))

    p = copy_good(good, workdir, "missing_shard")
    s = shard_of(p)
    os.remove(s)
    out.append(Case("missing shard file", p, CKPT_OPS, os.path.basename(s)))

    p = os.path.join(workdir, "no_manifest")
    os.makedirs(p)
    out.append(Case("directory without a manifest", p, CKPT_OPS))

    p = os.path.join(workdir, "garbage.pt")
    with open(p, "wb") as f:
        f.write(os.urandom(1000))
    out.append(Case("garbage .pt", p, ("convert", "load_into")))

    p = os.path.join(workdir, "zero.safetensors")
    open(p, "wb").close()
    out.append(Case("zero-byte .safetensors", p, ("convert", "load_into")))
    return out
