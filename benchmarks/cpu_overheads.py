"""Two CPU costs outside the optimiser steps, measured with getrusage (user, system, wall).

1. **BLAS threads spinning into the next timing.** The MIA's logistic regression runs on
   OpenBLAS, whose idle workers keep spinning after each call. A digits unlearning is timed
   right after an evaluation, then twice more, with NumPy's BLAS at its default thread count and
   then limited to one (``quality.limit_threads``), each in a fresh process.
2. **Inference batch size on the CPU.** ``predict_logits`` over 750 MNIST-sized images through
   the compact CNN and 512 3x32x32 images through the deep networks, in batches of 1024 and of
   ``unsir.training.inference_batch_size`` (64 on the CPU).

    python benchmarks/cpu_overheads.py            # both; one torch thread
"""

from __future__ import annotations

import argparse
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import quality  # noqa: E402  (the benchmark's grid and thread limit)

from unsir.measures import EvaluationConfig, evaluate_model  # noqa: E402
from unsir.methods import make_method  # noqa: E402
from unsir.methods.baselines import RetrainConfig  # noqa: E402
from unsir.models import ModelSpec, build_model  # noqa: E402
from unsir.recipes import training_for, unsir_config_for  # noqa: E402
from unsir.training import inference_batch_size, predict_logits  # noqa: E402

CPU = torch.device("cpu")


def measured(job) -> str:
    before, started = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    job()
    after = resource.getrusage(resource.RUSAGE_SELF)
    return (
        f"user {after.ru_utime - before.ru_utime:.3f} s, system {after.ru_stime - before.ru_stime:.3f} s, "
        f"wall {time.perf_counter() - started:.3f} s"
    )


def spin(limit_blas: bool) -> None:
    if limit_blas:
        quality.limit_threads(1)
    else:
        torch.set_num_threads(1)
    data = quality.load_dataset("digits", None)
    grid = argparse.Namespace(sets=["0"], singles=None, pairs=0, triples=0, part="heldout")
    (setting,) = quality.grid_settings(data, "small_cnn", [3], grid, training_for("small_cnn"), CPU)
    retrained = make_method("retrain", RetrainConfig(train=training_for("small_cnn"))).unlearn(
        setting.original, setting.task, device=CPU, generator=torch.Generator().manual_seed(3)
    )
    evaluate_model(retrained.model, setting.evaluation_data, device=CPU, config=EvaluationConfig(relearn=False))
    shipped = make_method("unsir", unsir_config_for("small_cnn", retain_per_class=50))
    label = "BLAS limited to 1" if limit_blas else "BLAS at its default"
    for call in ("right after an evaluation", "repeated", "repeated"):

        def job():
            shipped.unlearn(
                setting.original, setting.zero_glance, device=CPU, generator=torch.Generator().manual_seed(3)
            )

        print(f"{label}: digits seed 3 class 0, unlearning {call}: {measured(job)}", flush=True)


def inference(repeats: int = 3) -> None:
    quality.limit_threads(1)
    deep = [(arch, (3, 32, 32), 512) for arch in ("resnet18_cifar", "mobilenet_v2", "allcnn")]
    for arch, shape, count in [("small_cnn", (1, 28, 28), 750), *deep]:
        model = build_model(ModelSpec(arch, 10, shape[0]))
        images = torch.randn(count, *shape, generator=torch.Generator().manual_seed(0))
        predict_logits(model, images[:64], device=CPU)  # warm-up
        batches = (1024, inference_batch_size(CPU))
        walls: dict[int, list[float]] = {batch: [] for batch in batches}
        for _ in range(repeats):  # alternated, so that neither batch size gets the warmer machine
            for batch in batches:
                started = time.perf_counter()
                timing = measured(lambda: predict_logits(model, images, device=CPU, batch_size=batch))  # noqa: B023
                walls[batch].append(time.perf_counter() - started)
                print(f"inference {arch} {count} x {shape}, batch {batch}: {timing}", flush=True)
        medians = {batch: statistics.median(values) for batch, values in walls.items()}
        print(
            f"inference {arch}: median wall {medians[1024]:.3f} s at batch 1024, {medians[batches[1]]:.3f} s at "
            f"{batches[1]}; ratio {medians[batches[1]] / medians[1024]:.2f}",
            flush=True,
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", choices=["spin-default", "spin-limited", "inference"], default=None)
    args = parser.parse_args()
    if args.part is None:  # each part in a fresh process: a thread pool, once started, stays
        for part in ("spin-default", "spin-limited", "inference"):
            subprocess.run([sys.executable, __file__, "--part", part], check=True)
    elif args.part == "inference":
        inference()
    else:
        spin(limit_blas=args.part == "spin-limited")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
