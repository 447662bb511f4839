"""Verify on a GPU: ResNet-50 and a pruned copy, PyTorch on CUDA (and TensorRT if present).

The pruned copy is the uniform-width baseline (:func:`halp_trt.verify.uniform_prune`:
every prunable group keeps ``--fraction`` of its channels, rounded up to multiples of 8
for tensor cores), so the figure is reproducible without a latency table of the GPU.
``verify`` times both on ``torch`` (CUDA, fp16, channels_last by default), interleaved;
with ``--tensorrt`` and TensorRT installed, both are also exported (fp16 ONNX), built into
engines (``halp-trt engine``'s builder) and verified on ``tensorrt``.

Run on a machine with an NVIDIA GPU::

    flock /tmp/halp-trt-bench.lock .venv/bin/python bench/verify_cuda.py [--tensorrt]

With ``--eager`` the two models are also timed launched eagerly from Python, without the
CUDA graph the torch runner replays on CUDA: what the launches cost (on an H200 at batch
32 they hid the narrower model's speed-up: 1.02x eagerly, 1.12x as graphs).

Writes ``bench/results/verify_resnet50_cuda.json``. ``--device cpu --rounds 3`` runs the
same code on a CPU to check the script; it then writes nothing unless ``--out`` is given.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

OUT = ROOT / "bench" / "results" / "verify_resnet50_cuda.json"


def load(spec: str):
    from halp_trt.specs import load_model

    try:
        return spec, load_model(spec)
    except Exception as exc:  # torchvision missing: the repository's own ResNet-50
        fallback = "halp_trt.models:resnet50_imagenet"
        print(f"{spec} unavailable ({exc}); using {fallback}")
        return fallback, load_model(fallback)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="torchvision:resnet50")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--fraction", type=float, default=0.7)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--precision", default="fp16")
    ap.add_argument("--no-channels-last", action="store_true")
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--block-ms", type=float, default=100.0)
    ap.add_argument(
        "--eager",
        action="store_true",
        help="also time both models launched eagerly (no CUDA graph) on CUDA",
    )
    ap.add_argument("--tensorrt", action="store_true", help="also verify TensorRT engines")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()

    import torch

    from halp_trt.verify import uniform_prune, verify_models

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("no CUDA device here; run on a GPU machine (or --device cpu to check)")
    out = args.out or (OUT if args.device.startswith("cuda") else None)
    spec, original = load(args.model)
    original = original.eval()
    shape = (args.batch, 3, args.size, args.size)
    pruned = uniform_prune(
        original, torch.randn(1, 3, args.size, args.size), args.fraction, multiple=8
    )
    params = [sum(p.numel() for p in m.parameters()) for m in (original, pruned)]
    result: dict = {
        "model": spec,
        "pruned": f"uniform_prune(fraction={args.fraction}, multiple=8)",
        "params": params,
        "input_shape": list(shape),
        "environment": {
            "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
            "torch": torch.__version__,
            "cuda": torch.version.cuda,
            "python": platform.python_version(),
            "load_average_start": list(os.getloadavg()),
        },
        "runs": {},
    }
    torch_opts = {
        "device": args.device,
        "precision": args.precision,
        "channels_last": not args.no_channels_last,
    }
    import copy

    r = verify_models(
        copy.deepcopy(original), copy.deepcopy(pruned), backend="torch", input_shape=shape,
        warmup=args.warmup, rounds=args.rounds, min_block_ms=args.block_ms, **torch_opts,
    )  # fmt: skip
    result["runs"]["torch"] = r.to_dict()
    if args.eager and args.device.startswith("cuda"):
        # The same two models launched eagerly from Python: what the launches cost.
        r = verify_models(
            copy.deepcopy(original), copy.deepcopy(pruned), backend="torch", input_shape=shape,
            warmup=args.warmup, rounds=args.rounds, min_block_ms=args.block_ms,
            cuda_graph=False, **torch_opts,
        )  # fmt: skip
        result["runs"]["torch_eager"] = r.to_dict()
    if args.tensorrt:
        from halp_trt.export import BatchRange, build_engine, export_onnx

        with tempfile.TemporaryDirectory(prefix="verify-cuda-") as d:
            engines = []
            for name, model in (("original", original), ("pruned", pruned)):
                onnx_path = Path(d) / f"{name}.onnx"
                rep = export_onnx(
                    model, (1, *shape[1:]), onnx_path, fp16=True,
                    dynamic_batch=BatchRange(1, args.batch, args.batch),
                )  # fmt: skip
                result.setdefault("parity", {})[name] = rep.parity.to_dict()
                engine = Path(d) / f"{name}.engine"
                sidecar = build_engine(onnx_path, engine, timing_cache=Path(d) / "t.cache")
                result.setdefault("engines", {})[name] = sidecar.to_dict()
                engines.append(str(engine))
            r = verify_models(
                *engines, backend="tensorrt", input_shape=shape, warmup=args.warmup,
                rounds=args.rounds, min_block_ms=args.block_ms,
            )  # fmt: skip
            result["runs"]["tensorrt"] = r.to_dict()
    result["environment"]["load_average_end"] = list(os.getloadavg())
    print(f"{spec}: params {params[1]} / {params[0]}, input {shape}")
    for backend, run in result["runs"].items():
        s = run["speedup"]
        print(
            f"{backend:>9}: original {run['original']['median_ms']:.3f} ms, pruned "
            f"{run['pruned']['median_ms']:.3f} ms, speed-up {s['median']:.3f}x "
            f"(spread {s['spread']:.1%}, 95% CI {s['ci95'][0]:.3f}-{s['ci95'][1]:.3f}), "
            f"{run['pruned']['throughput']:.0f} vs {run['original']['throughput']:.0f} samples/s"
        )
    if out is not None:
        from lut_builder.fileio import atomic_write_json

        atomic_write_json(out, result, indent=2)
        print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
