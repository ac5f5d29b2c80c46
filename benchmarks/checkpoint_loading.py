"""Peak host memory per process of importing a llava-hf checkpoint onto an FSDP mesh.

  python -m benchmarks.checkpoint_loading [--dir DIR] [--text_layers 12]
                                          [--text_hidden 1024] [--shard_mb 256]

1. Writes (or, with `--dir` holding one, reuses) a multi-file llava-hf checkpoint in
   bfloat16: LLaVA-1.5's vision tower (CLIP ViT-L/336), its projector and a Vicuna-shaped
   decoder scaled down (`--text_layers` x `--text_hidden`, llava-hf's 32064 vocabulary),
   ~525M params, ~1.05 GB on disk, in files of at most `--shard_mb` MB with a
   model.safetensors.index.json. Random weights, written one file at a time.
2. Loads it into float32 params FSDP-sharded over 4 CPU devices held by 2 processes
   (2 each, a loopback coordinator; the training stage's shardings:
   `mesh.fsdp_shardings` with the default `min_fsdp_size`), twice, each time in 2 fresh
   processes:
   * old: `hf_io.load_hf_llava` (the whole model as f32 host arrays on every process),
     then placed as `MeshParallel` places host params (each device takes its slice);
   * new: `hf_io.load_hf_llava_sharded` into the shardings (each process reads only its
     devices' slices, one device's slice of one param at a time).
3. Prints per process: the peak RSS (VmHWM, which counts file pages a process maps too),
   its RSS before loading (imports, JAX, the coordinator), the goal (its devices' share of
   the params plus the largest tensor, in f32), peak over goal; the CPU model; and checks
   that both ways put the same values on each process's devices.
4. Extrapolates to LLaVA-1.5-7B / 13B with 8 FSDP devices per host on 1, 2 and 4 hosts,
   from the param shapes alone (`footprint`: the accounting the measured run is printed
   against): the old way at the ratio measured here, the new way's share + the largest
   one-device slice of a param + the mapped pages of one tensor.

CPU devices live in host memory, so here the share of the params is part of the RSS; on
accelerators it is not, and the new way's host peak is only the slice in flight. The RSS
before loading (~0.5 GB) is JAX's plus transformers + torch, which `config_from_hf`
imports to parse config.json (~0.27 GB of it).
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import shutil
import socket
import subprocess
import sys
import tempfile
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
NUM_PROCESSES = 2
LOCAL_DEVICES = 2


def _status_kb(*fields: str) -> dict[str, int]:
  """Fields of /proc/self/status in kB (VmHWM: peak RSS; VmRSS; RssFile)."""
  out = {}
  for line in pathlib.Path("/proc/self/status").read_text().splitlines():
    name, _, value = line.partition(":")
    if name in fields:
      out[name] = int(value.split()[0])
  return out


def bench_config(text_layers: int, text_hidden: int):
  """LLaVA-1.5-7B's architecture with the decoder scaled down (Llama-2 ratios)."""
  from rlhfv_jax import model as model_lib
  cfg = model_lib.llava_config("7b")
  cfg.text.update(num_layers=text_layers, hidden_size=text_hidden,
                  intermediate_size=text_hidden * 11 // 4, num_heads=text_hidden // 128,
                  num_kv_heads=text_hidden // 128, head_dim=128)
  cfg.param_dtype = "bfloat16"
  return cfg


def write_checkpoint(directory: pathlib.Path, cfg, shard_bytes: int) -> None:
  """A llava-hf checkpoint of random bf16 weights, one file in memory at a time."""
  import jax.numpy as jnp
  import numpy as np
  import safetensors.numpy

  from rlhfv_jax import model as model_lib
  from rlhfv_jax.model import hf_io
  from rlhfv_jax.model.llava15 import config as config_lib

  # (hub name, Flax leaf, Flax shape of one tensor), grouped into files of <= shard_bytes.
  tensors = []
  for path, shape in hf_io._leaves(model_lib.param_shapes(cfg)):
    names = hf_io._hf_names(path, hf_io._layer_count(cfg, path))
    per_tensor = shape.shape[1:] if "layers" in path else shape.shape
    tensors += [(name, path[-1], per_tensor) for name in names]
  shards, size = [[]], 0
  for tensor in tensors:
    nbytes = 2 * int(np.prod(tensor[2]))
    if shards[-1] and size + nbytes > shard_bytes:
      shards.append([])
      size = 0
    shards[-1].append(tensor)
    size += nbytes
  directory.mkdir(parents=True, exist_ok=True)
  hf_config = config_lib.to_hf_config(cfg)
  hf_config.dtype = "bfloat16"
  hf_config.save_pretrained(directory)
  rng = np.random.default_rng(0)
  weight_map = {}
  for i, shard in enumerate(shards):
    file_name = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
    data = {}
    for name, leaf, shape in shard:
      value = (0.02 * rng.standard_normal(shape, np.float32)).astype(jnp.bfloat16)
      data[name] = np.ascontiguousarray(hf_io._to_hf(leaf, value))
      weight_map[name] = file_name
    safetensors.numpy.save_file(data, directory / file_name, metadata={"format": "pt"})
  (directory / hf_io.SAFETENSORS_INDEX_FILE).write_text(json.dumps(
      {"metadata": {"total_size": 2 * sum(int(np.prod(t[2])) for t in tensors)},
       "weight_map": weight_map}, indent=2))


def footprint(shapes, num_devices: int, local_devices: int,
              min_fsdp_size: int) -> dict[str, int]:
  """Bytes of the new way's host peak, from the param shapes alone (no allocation), for
  f32 params FSDP-sharded over `num_devices`, `local_devices` of them on one host:

    share:  the params on the host's devices (host memory only with CPU devices);
    slice:  the largest one-device slice of one param, built on the host (f32);
    mapped: the largest HF tensor in the file (bf16): the pages a slice across torch's
            rows touches, mapped until that read ends;
    largest: the largest HF tensor in f32 (the goal's "plus the largest tensor").
  """
  import numpy as np

  from rlhfv_jax.model import hf_io
  from rlhfv_jax.train import mesh as mesh_lib
  share = piece = largest = 0
  for path, shape in hf_io._leaves(shapes):
    spec = mesh_lib.fsdp_partition_spec(shape.shape, num_devices, min_fsdp_size)
    split = [num_devices if axis == "fsdp" else 1 for axis in spec]
    split += [1] * (len(shape.shape) - len(split))
    per_device = int(np.prod([n // k for n, k in zip(shape.shape, split)]))
    share += 4 * local_devices * per_device
    piece = max(piece, 4 * per_device)
    largest = max(largest, int(np.prod(shape.shape[1:] if "layers" in path else shape.shape)))
  return dict(share=share, slice=piece, mapped=2 * largest, largest=4 * largest,
              params=4 * sum(int(np.prod(s.shape)) for _, s in hf_io._leaves(shapes)))


def worker(args: argparse.Namespace) -> None:
  """One process of one way of loading; prints a `RESULT {json}` line."""
  flags = [f for f in os.environ.get("XLA_FLAGS", "").split()
           if not f.startswith("--xla_force_host_platform_device_count")]
  os.environ["XLA_FLAGS"] = " ".join(
      flags + [f"--xla_force_host_platform_device_count={LOCAL_DEVICES}"])
  os.environ["JAX_PLATFORMS"] = "cpu"
  import jax
  jax.distributed.initialize(coordinator_address=args.coordinator_address,
                             num_processes=NUM_PROCESSES, process_id=args.process_id)
  import numpy as np

  from rlhfv_jax import model as model_lib
  from rlhfv_jax.model import hf_io
  from rlhfv_jax.train import mesh as mesh_lib

  cfg = model_lib.config_from_hf(args.dir)
  cfg.param_dtype = "float32"
  shapes = model_lib.param_shapes(cfg)
  mesh = mesh_lib.make_mesh(1, len(jax.devices()))
  shardings = mesh_lib.fsdp_shardings(mesh, shapes, mesh_lib.DEFAULT_MIN_FSDP_SIZE)
  jax.block_until_ready(jax.device_put(np.zeros(4), jax.local_devices()[0]))  # runtime up
  before = _status_kb("VmRSS")["VmRSS"]
  start = time.perf_counter()
  loaded = None
  if args.worker == "old":
    _, host = hf_io.load_hf_llava(args.dir, param_dtype="float32")
    loaded = _status_kb("VmHWM")["VmHWM"]  # the host load alone, before the put
    # As `MeshParallel._put` places host params (identical on every process).
    params = jax.tree.map(
        lambda x, s: jax.make_array_from_process_local_data(s, np.asarray(x), np.shape(x)),
        host, shardings)
  else:
    _, params = hf_io.load_hf_llava_sharded(args.dir, shardings, param_dtype="float32")
  jax.block_until_ready(params)
  seconds = time.perf_counter() - start
  leaves = jax.tree.leaves(params)
  print("RESULT " + json.dumps(dict(
      process=jax.process_index(), seconds=seconds, before=1024 * before,
      peak=1024 * _status_kb("VmHWM")["VmHWM"], peak_loaded=loaded and 1024 * loaded,
      share=sum(shard.data.nbytes for x in leaves for shard in x.addressable_shards),
      checksum=sum(float(np.asarray(shard.data, np.float64).sum())
                   for x in leaves for shard in x.addressable_shards),
      model=footprint(shapes, len(jax.devices()), LOCAL_DEVICES,
                      mesh_lib.DEFAULT_MIN_FSDP_SIZE))), flush=True)


def run_way(way: str, directory: pathlib.Path) -> list[dict]:
  """Loads the checkpoint one way in NUM_PROCESSES fresh processes; their results."""
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    address = f"127.0.0.1:{s.getsockname()[1]}"
  procs = [subprocess.Popen(
      [sys.executable, "-m", "benchmarks.checkpoint_loading", "--worker", way,
       "--dir", str(directory), "--coordinator_address", address, "--process_id", str(i)],
      cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
      for i in range(NUM_PROCESSES)]
  results = []
  for proc in procs:
    out = proc.communicate(timeout=900)[0]
    lines = [line for line in out.splitlines() if line.startswith("RESULT ")]
    if proc.returncode or not lines:
      raise SystemExit(f"{way} worker failed:\n{out[-4000:]}")
    results.append(json.loads(lines[-1][len("RESULT "):]))
  return sorted(results, key=lambda r: r["process"])


def gb(n: float) -> str:
  return f"{n / 1e9:.2f} GB"


def print_measured(results: dict[str, list[dict]]) -> float:
  """The per-process table; returns the old way's host-load peak over the f32 params."""
  rows = []

  def row(label, cell):
    rows.append((label, [cell(p) for p in range(NUM_PROCESSES)]))

  old, new = results["old"], results["new"]
  goal = lambda p: new[p]["share"] + new[p]["model"]["largest"]
  row("RSS before loading (old / new run)",
      lambda p: f"{gb(old[p]['before'])} / {gb(new[p]['before'])}")
  row("share of the params (f32)", lambda p: gb(new[p]["share"]))
  row("largest tensor (f32)", lambda p: gb(new[p]["model"]["largest"]))
  row("goal: share + largest tensor", lambda p: gb(goal(p)))
  for way, r in results.items():
    row(f"{way}: peak RSS", lambda p: gb(r[p]["peak"]))
    row(f"{way}: peak - RSS before", lambda p: gb(r[p]["peak"] - r[p]["before"]))
    row(f"{way}: (peak - RSS before) / goal",
        lambda p: f"{(r[p]['peak'] - r[p]['before']) / goal(p):.2f}")
    row(f"{way}: peak / f32 params", lambda p: f"{r[p]['peak'] / r[p]['model']['params']:.2f}")
    row(f"{way}: seconds", lambda p: f"{r[p]['seconds']:.1f}")
  row("old: peak of load_hf_llava alone - before",
      lambda p: gb(old[p]["peak_loaded"] - old[p]["before"]))
  row("new: share + slice + mapped (model)",
      lambda p: gb(sum(new[p]["model"][k] for k in ("share", "slice", "mapped"))))
  print(f"{'':44s}" + "".join(f"{f'process {p}':>22s}" for p in range(NUM_PROCESSES)))
  for label, cells in rows:
    print(f"{label:44s}" + "".join(f"{c:>22s}" for c in cells))
  return max((r["peak_loaded"] - r["before"]) / r["model"]["params"] for r in old)


def print_extrapolation(old_ratio: float, devices_per_host: int = 8) -> None:
  """The same accounting for LLaVA-1.5-7B / 13B, f32 params, FSDP over every device."""
  from rlhfv_jax import model as model_lib
  from rlhfv_jax.train import mesh as mesh_lib
  print(f"\nextrapolation, per host, {devices_per_host} FSDP devices per host, f32 params "
        f"(old: {old_ratio:.2f} x the f32 params, as load_hf_llava measured here):")
  print(f"{'':10s}{'hosts':>6s}{'f32 params':>12s}{'old':>10s}{'share':>10s}"
        f"{'goal':>10s}{'new, CPU':>10s}{'new, accel.':>13s}")
  for size in ("7b", "13b"):
    shapes = model_lib.param_shapes(model_lib.llava_config(size))
    for hosts in (1, 2, 4):
      m = footprint(shapes, hosts * devices_per_host, devices_per_host,
                    mesh_lib.DEFAULT_MIN_FSDP_SIZE)
      print(f"{size:10s}{hosts:>6d}{gb(m['params']):>12s}{gb(old_ratio * m['params']):>10s}"
            f"{gb(m['share']):>10s}{gb(m['share'] + m['largest']):>10s}"
            f"{gb(m['share'] + m['slice'] + m['mapped']):>10s}"
            f"{gb(m['slice'] + m['mapped']):>13s}")
  print("(plus the runtime's own RSS; 'new, accel.': the share is in device memory, the "
        "host holds one slice in flight)")


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--dir", help="checkpoint directory to reuse, or to write and keep "
                      "(default: a temporary one, deleted)")
  parser.add_argument("--text_layers", type=int, default=12)
  parser.add_argument("--text_hidden", type=int, default=1024)
  parser.add_argument("--shard_mb", type=int, default=256)
  parser.add_argument("--worker", choices=("old", "new"), help=argparse.SUPPRESS)
  parser.add_argument("--coordinator_address", help=argparse.SUPPRESS)
  parser.add_argument("--process_id", type=int, help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.worker:
    return worker(args)

  from benchmarks import common
  directory = pathlib.Path(args.dir or tempfile.mkdtemp(prefix="llava_hf_bench_"))
  try:
    if not (directory / "model.safetensors.index.json").is_file():
      print(f"writing the checkpoint to {directory} ...", flush=True)
      start = time.perf_counter()
      write_checkpoint(directory, bench_config(args.text_layers, args.text_hidden),
                       args.shard_mb << 20)
      print(f"  {time.perf_counter() - start:.0f} s", flush=True)
    files = sorted(directory.glob("*.safetensors"))
    on_disk = sum(f.stat().st_size for f in files)
    results = {way: run_way(way, directory) for way in ("old", "new")}
  finally:
    if not args.dir:
      shutil.rmtree(directory, ignore_errors=True)

  params = results["new"][0]["model"]["params"]
  print(f"\ncheckpoint: {len(files)} files, {gb(on_disk)} bf16 on disk, "
        f"{params // 4 / 1e6:.0f}M params ({gb(params)} in f32)")
  print(f"loaded as f32 params, FSDP over {NUM_PROCESSES * LOCAL_DEVICES} CPU devices "
        f"({NUM_PROCESSES} processes x {LOCAL_DEVICES}); CPU: {common.cpu_model()}\n")
  old_ratio = print_measured(results)
  for p in range(NUM_PROCESSES):
    old, new = results["old"][p]["checksum"], results["new"][p]["checksum"]
    if old != new:
      raise SystemExit(f"process {p}: the two ways placed different values ({old} vs {new})")
  print("same values on every process's devices both ways (checksums equal)")
  print_extrapolation(old_ratio)


if __name__ == "__main__":
  main()
