"""Training throughput of UNSIR's impair and repair loops against a bare PyTorch loop.

    python benchmarks/throughput.py                          # make bench-throughput (CPU-sized)
    python benchmarks/throughput.py --device cuda --samples 8192 --batch-size 256

The claim under test: the library adds no overhead in the hot loop, so that UNSIR's speed is
the model's speed. "Ours" is the public library path, ``unsir.methods.unsir.impair`` then
``repair`` (building the impair set, creating the optimiser, ``fit`` / ``train_one_epoch``),
timed call by call. "Bare" is the loop anyone would write by hand: a fresh Adam at the same
learning rate, ``model.train()``, then per batch zero_grad, forward, cross-entropy, backward,
step, indexing pre-made tensors by a ``randperm`` drawn on the device. Both train the same
architecture from the same seeded weights on the same samples with the same batch size:
D_r_sub plus noise copies for impair, D_r_sub alone for repair, one epoch each.

The inputs are random tensors in the normalised input space with random labels: throughput
does not depend on what the pixels show, and nothing needs to be downloaded. Noise tensors are
random too, of the shape ``learn_error_maximizing_noise`` returns; learning them is a separate
step and not part of the loops measured here.

Each side is warmed up on a few batches first (allocator, oneDNN/cuDNN kernel choice), then
measured ``--repeats`` times on fresh models; within a repeat the two sides run back to back,
phase by phase, alternating which goes first, so drift and bursts of other load hit both. The
report holds medians over repeats, and the ratio of every back-to-back pair to show the spread.
The target is ours >= 90% of bare. The optimiser is created inside the timed region on both
sides: ``fit`` creates one per call, and so must any one-epoch loop.

The defaults fit a 2-core CPU (ResNet18 on 3x32x32 runs at about 90 samples/s there, so the
default run takes about 80 s on an idle machine). On a GPU, raise ``--samples`` (thousands) so
that each timed epoch lasts long enough to swamp timer and launch jitter. On a small shared
CPU, ``--threads 1`` keeps other processes from stalling torch's thread pool, which otherwise
slows a measurement several-fold at random.

Writes ``reports/bench/throughput.json`` with ``ours_samples_per_s``, ``bare_samples_per_s``,
``ratio``, per-phase figures, every raw timing and the machine it ran on.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from unsir.configs import OptimConfig, UNSIRConfig
from unsir.methods.unsir import impair, repair
from unsir.models import ModelSpec, build_model
from unsir.noise import build_impair_set

TARGET_RATIO = 0.9
NUM_CLASSES = 10
# Natural input shape per architecture; anything not listed is a CIFAR-sized model.
INPUT_SHAPES: dict[str, tuple[int, int, int]] = {"small_cnn": (1, 8, 8)}
DEFAULT_INPUT_SHAPE = (3, 32, 32)
# One forget class, 32 noise samples copied twice: the impair set is D_r_sub plus 64 samples.
NOISE_CLASSES = (0,)
NOISE_BATCH = 32
NOISE_COPIES = 2
IMPAIR_LR, REPAIR_LR = 2e-3, 1e-3  # UNSIRConfig's defaults; the rate does not change the cost
WARMUP_BATCHES = 2
PHASES = ("impair", "repair")


@dataclass(frozen=True)
class Workload:
    """The tensors both sides train on, already on the device so neither side pays a copy."""

    retain_images: torch.Tensor
    retain_labels: torch.Tensor
    noise: dict[int, torch.Tensor]
    # The impair set, built once for the bare loop; ours builds its own inside the timed call.
    impair_images: torch.Tensor
    impair_labels: torch.Tensor

    def samples(self, phase: str) -> int:
        return len(self.impair_images) if phase == "impair" else len(self.retain_images)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument(
        "--samples",
        type=int,
        default=512,
        help="retain samples (D_r_sub); impair adds the noise copies",
    )
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--arch", default="resnet18_cifar")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch CPU threads (default: torch's choice); 1 resists other load on a small machine",
    )
    parser.add_argument("--out", default="reports/bench/throughput.json")
    args = parser.parse_args(argv)
    if args.samples <= 0 or args.batch_size <= 0 or args.repeats <= 0:
        parser.error(
            f"--samples, --batch-size and --repeats must be positive; got {args.samples}, {args.batch_size}, "
            f"{args.repeats}"
        )
    return args


def make_workload(arch: str, samples: int, *, device: torch.device, seed: int) -> Workload:
    """Seeded standard-normal images (the normalised input space), uniform random labels."""
    shape = INPUT_SHAPES.get(arch, DEFAULT_INPUT_SHAPE)
    generator = torch.Generator().manual_seed(seed)
    images = torch.randn((samples, *shape), generator=generator).to(device)
    labels = torch.randint(0, NUM_CLASSES, (samples,), generator=generator).to(device)
    noise = {c: torch.randn((NOISE_BATCH, *shape), generator=generator).to(device) for c in NOISE_CLASSES}
    impair_images, impair_labels = build_impair_set(noise, images, labels, copies=NOISE_COPIES)
    return Workload(images, labels, noise, impair_images, impair_labels)


def fresh_model(arch: str, *, device: torch.device, seed: int) -> nn.Module:
    """The same initial weights for every measurement, so both sides do identical work."""
    torch.manual_seed(seed)
    return build_model(ModelSpec(arch, NUM_CLASSES, INPUT_SHAPES.get(arch, DEFAULT_INPUT_SHAPE)[0])).to(device)


def synchronize(device: torch.device) -> None:
    # CUDA runs asynchronously: without this the clock would stop before the GPU does.
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device: torch.device) -> float:
    synchronize(device)
    started = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - started


def bare_epoch(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    lr: float,
    batch_size: int,
    generator: torch.Generator,
) -> None:
    """The reference: one epoch of the plainest correct PyTorch loop, with its own optimiser."""
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    order = torch.randperm(len(images), device=images.device, generator=generator)
    for start in range(0, len(images), batch_size):
        index = order[start : start + batch_size]
        optimizer.zero_grad(set_to_none=True)
        loss = nn.functional.cross_entropy(model(images[index]), labels[index])
        loss.backward()
        optimizer.step()


def unsir_config(batch_size: int) -> UNSIRConfig:
    return UNSIRConfig(
        noise_copies=NOISE_COPIES,
        impair=OptimConfig(lr=IMPAIR_LR, epochs=1, batch_size=batch_size),
        repair=OptimConfig(lr=REPAIR_LR, epochs=1, batch_size=batch_size),
    )


Phases = dict[str, Callable[[], object]]


def ours_phases(model: nn.Module, work: Workload, config: UNSIRConfig, *, device: torch.device, seed: int) -> Phases:
    """The library's impair and repair calls on ``model``, to be run in that order."""
    generator = torch.Generator().manual_seed(seed)
    return {
        "impair": lambda: impair(
            model,
            work.noise,
            work.retain_images,
            work.retain_labels,
            config,
            device=device,
            generator=generator,
        ),
        "repair": lambda: repair(
            model,
            work.retain_images,
            work.retain_labels,
            config,
            device=device,
            generator=generator,
        ),
    }


def bare_phases(model: nn.Module, work: Workload, batch_size: int, *, device: torch.device, seed: int) -> Phases:
    """The hand-written loop over the same impair set, then over the same retain set."""
    generator = torch.Generator(device=device).manual_seed(seed)
    return {
        "impair": lambda: bare_epoch(
            model,
            work.impair_images,
            work.impair_labels,
            lr=IMPAIR_LR,
            batch_size=batch_size,
            generator=generator,
        ),
        "repair": lambda: bare_epoch(
            model,
            work.retain_images,
            work.retain_labels,
            lr=REPAIR_LR,
            batch_size=batch_size,
            generator=generator,
        ),
    }


def make_phases(
    args: argparse.Namespace, work: Workload, config: UNSIRConfig, device: torch.device
) -> dict[str, Phases]:
    """Both sides, each on its own freshly built model with the same seeded weights."""
    return {
        "ours": ours_phases(
            fresh_model(args.arch, device=device, seed=args.seed),
            work,
            config,
            device=device,
            seed=args.seed,
        ),
        "bare": bare_phases(
            fresh_model(args.arch, device=device, seed=args.seed),
            work,
            args.batch_size,
            device=device,
            seed=args.seed,
        ),
    }


def warm_up(args: argparse.Namespace, work: Workload, config: UNSIRConfig, device: torch.device) -> None:
    """A few untimed batches through each side on throwaway models: first-call costs land here."""
    n = min(len(work.retain_images), WARMUP_BATCHES * args.batch_size)
    x, y = work.retain_images[:n], work.retain_labels[:n]
    for phases in make_phases(args, Workload(x, y, {}, x, y), config, device).values():
        for step in phases.values():
            step()


def rate(samples: int, seconds: float) -> float:
    return samples / seconds if seconds > 0 else float("inf")


def summarize(timings: dict[str, list[dict[str, float]]], work: Workload) -> dict:
    """Median samples/s over repeats, per phase and for impair + repair together."""
    total_samples = sum(work.samples(p) for p in PHASES)
    rates = {
        side: {
            **{p: [rate(work.samples(p), t[p]) for t in runs] for p in PHASES},
            "total": [rate(total_samples, sum(t[p] for p in PHASES)) for t in runs],
        }
        for side, runs in timings.items()
    }
    medians = {side: {k: statistics.median(v) for k, v in r.items()} for side, r in rates.items()}
    phases = {
        p: {
            "samples": work.samples(p),
            "ours_samples_per_s": medians["ours"][p],
            "bare_samples_per_s": medians["bare"][p],
            "ratio": medians["ours"][p] / medians["bare"][p],
        }
        for p in PHASES
    }
    ours, bare = medians["ours"]["total"], medians["bare"]["total"]
    return {
        "ours_samples_per_s": ours,
        "bare_samples_per_s": bare,
        "ratio": ours / bare,
        # The spread of back-to-back pairs: wide means other load disturbed the measurement.
        "ratio_per_repeat": [o / b for o, b in zip(rates["ours"]["total"], rates["bare"]["total"], strict=True)],
        "target_ratio": TARGET_RATIO,
        "meets_target": ours / bare >= TARGET_RATIO,
        "phases": phases,
    }


def run(args: argparse.Namespace) -> dict:
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    work = make_workload(args.arch, args.samples, device=device, seed=args.seed)
    config = unsir_config(args.batch_size)
    warm_up(args, work, config, device)

    timings: dict[str, list[dict[str, float]]] = {"ours": [], "bare": []}
    for repeat in range(args.repeats):
        sides = make_phases(args, work, config, device)
        seconds: dict[str, dict[str, float]] = {"ours": {}, "bare": {}}
        for i, phase in enumerate(PHASES):
            # Alternate who goes first, phase by phase, so that drift and bursts of other load
            # on the machine fall on both sides alike.
            order = ("ours", "bare") if (repeat + i) % 2 == 0 else ("bare", "ours")
            for side in order:
                seconds[side][phase] = timed(sides[side][phase], device)
        for side in ("ours", "bare"):
            timings[side].append(seconds[side])
            print(
                f"repeat {repeat + 1}/{args.repeats} {side}: "
                + ", ".join(f"{p} {seconds[side][p]:.2f}s" for p in PHASES),
                file=sys.stderr,
                flush=True,
            )

    return {
        **summarize(timings, work),
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else platform.processor() or platform.machine(),
        "torch_version": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "arch": args.arch,
        "input_shape": list(INPUT_SHAPES.get(args.arch, DEFAULT_INPUT_SHAPE)),
        "batch_size": args.batch_size,
        "samples": args.samples,
        "noise": {
            "classes": list(NOISE_CLASSES),
            "batch_size": NOISE_BATCH,
            "copies": NOISE_COPIES,
        },
        "lr": {"impair": IMPAIR_LR, "repair": REPAIR_LR},
        "optimizer": "adam",
        "repeats": args.repeats,
        "seed": args.seed,
        "timings_s": timings,
    }


def print_report(report: dict) -> None:
    print(
        f"\n{report['arch']} on {report['device']} ({report['device_name']}, {report['torch_threads']} threads, "
        f"torch {report['torch_version']}), batch {report['batch_size']}, median of {report['repeats']}"
    )
    header = f"{'phase':<8}{'samples':>9}{'ours/s':>12}{'bare/s':>12}{'ours/bare':>11}"
    print(header)
    print("-" * len(header))
    rows = [
        (p, v["samples"], v["ours_samples_per_s"], v["bare_samples_per_s"], v["ratio"])
        for p, v in report["phases"].items()
    ]
    rows.append(
        (
            "total",
            sum(r[1] for r in rows),
            report["ours_samples_per_s"],
            report["bare_samples_per_s"],
            report["ratio"],
        )
    )
    for name, samples, ours, bare, ratio in rows:
        print(f"{name:<8}{samples:>9}{ours:>12.1f}{bare:>12.1f}{ratio:>11.3f}")
    verdict = "meets" if report["meets_target"] else "BELOW"
    spread = report["ratio_per_repeat"]
    print(
        f"ratio ours/bare = {report['ratio']:.3f} ({verdict} the target of "
        f"{report['target_ratio']:.2f}); per repeat {min(spread):.3f} to {max(spread):.3f}"
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    report = run(args)
    print_report(report)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
