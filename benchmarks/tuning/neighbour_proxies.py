"""Tuning-half experiment: can synthetic forget-class proxies, labelled with their nearest
retained class, bring the unlearned model's MIA up to the retrained model's?

Every MIA failure of the shipped recipe has the unlearned model *less* member-like than the
retrained one: retraining without class c classifies some c samples confidently as a
neighbouring class (the attack calls low entropy "member"), while the unlearned model, whose
features still separate c, stays unsure about them. These variants add to the impair set
(and optionally the repair set) inputs that the *original* model reads as class c, labelled
with the class the original ranks next, so the unlearned model learns to send c-like inputs
to a neighbour, as retraining does. No forget-class training sample is read: the proxies are
synthesised from the model, as UNSIR's noise is.

- ``inv``: inputs learned from N(0, 1) to *minimise* the original's loss for class c (the sign
  of UNSIR's noise flipped), labelled with the original's best class other than the forget
  classes;
- ``adv``: retain images pushed towards class c by the same optimisation (a targeted attack),
  labelled with their own class.

Runs on the tuning half only; prints one line per run and writes the runs to --out.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import quality  # noqa: E402  (the benchmark's grid, data and pass criteria)

from unsir.measures import evaluate_model  # noqa: E402
from unsir.methods import make_method  # noqa: E402
from unsir.methods.base import UnlearningResult, prepare  # noqa: E402
from unsir.methods.baselines import RetrainConfig  # noqa: E402
from unsir.methods.unsir import UNSIR, reset_head_rows  # noqa: E402
from unsir.recipes import training_for, unsir_config_for  # noqa: E402
from unsir.training import fit  # noqa: E402


def class_proxies(model, forget, start, *, steps, lr, l2, device):
    """Inputs the frozen model reads as each forget class, optimised from ``start``."""
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    try:
        out_x = []
        for c in forget:
            x = start.clone().to(device).requires_grad_(True)
            optimizer = torch.optim.Adam([x], lr=lr)
            target = torch.full((len(x),), c, dtype=torch.long, device=device)
            for _ in range(steps):
                optimizer.zero_grad(set_to_none=True)
                loss = nn.functional.cross_entropy(model(x), target) + l2 * (x - start).pow(2).mean()
                loss.backward()
                optimizer.step()
            out_x.append(x.detach())
        return torch.cat(out_x)
    finally:
        for p in model.parameters():
            p.requires_grad_(True)


def neighbour_labels(model, x, forget):
    with torch.no_grad():
        logits = model.eval()(x).clone()
    logits[:, list(forget)] = float("-inf")
    return logits.argmax(dim=1)


class NeighbourProxies(UNSIR):
    name = "neighbour_proxies"
    uses_noise = False
    source = "inv"
    in_repair = False
    count = 50
    steps = 30

    def _unlearn(self, model, task, *, device, generator):
        working = prepare(model, task, device)
        forget = task.forget_classes
        if self.source == "inv":
            start = torch.randn((self.count, *task.input_shape), generator=generator)
            proxies = class_proxies(working, forget, start, steps=self.steps, lr=0.1, l2=0.0, device=device)
            labels = neighbour_labels(working, proxies, forget)
        else:
            pick = torch.randperm(len(task.retain_images), generator=generator)[: self.count]
            start = task.retain_images[pick]
            proxies = class_proxies(working, forget, start, steps=self.steps, lr=0.05, l2=1.0, device=device)
            labels = task.retain_labels[pick].repeat(len(forget)).to(device)
        reset_head_rows(working, forget, generator=generator)
        config = self.config
        x = torch.cat([task.retain_images.to(device), proxies])
        y = torch.cat([task.retain_labels.to(device), labels])
        fit(working, x, y, config.impair, device=device, generator=generator, description="impair")
        rx, ry = (x, y) if self.in_repair else (task.retain_images, task.retain_labels)
        fit(working, rx, ry, config.repair, device=device, generator=generator, description="repair")
        if config.polish is not None:
            fit(working, rx, ry, config.polish, device=device, generator=generator, description="polish")
        record = {"round": 1}
        verified = self._verify(working, task, record, {}, device=device)
        return UnlearningResult(working.eval(), {}, None, rounds=[record], verified=verified)


def variant(source, in_repair, count):
    return type(
        f"NP_{source}_{in_repair}_{count}",
        (NeighbourProxies,),
        {"source": source, "in_repair": in_repair, "count": count},
    )


VARIANTS = {
    "inv_impair": variant("inv", False, 50),
    "inv_both": variant("inv", True, 50),
    "adv_impair": variant("adv", False, 50),
    "adv_both": variant("adv", True, 50),
    "inv_impair_200": variant("inv", False, 200),
    "inv_impair_500": variant("inv", False, 500),
}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--dataset", default="digits")
    parser.add_argument("--arch", default="small_cnn")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--pairs", type=int, default=0)
    parser.add_argument("--triples", type=int, default=0)
    parser.add_argument("--only", nargs="*")
    parser.add_argument("--sets", nargs="*", help="explicit class sets, e.g. 1 1,9")
    parser.add_argument("--out", default="reports/bench/tuning-neighbour-proxies.json")
    args = parser.parse_args()
    setup = quality.tuning_setup(args, {"shipped": None, **VARIANTS})
    device, data, chosen, eval_cfg = setup.device, setup.data, setup.variants, setup.evaluation
    grid = argparse.Namespace(sets=args.sets, singles=None, pairs=args.pairs, triples=args.triples, part="tuning")
    train_cfg = training_for(args.arch)
    shipped = unsir_config_for(args.arch, retain_per_class=50)
    runs = []
    for setting in quality.grid_settings(data, args.arch, args.seeds, grid, train_cfg, device):
        seed, forget, original = setting.seed, setting.forget, setting.original
        run: dict = {"seed": seed, "forget_classes": list(forget)}
        names = ["retrain", "retrain_again", *chosen]
        for name in names:
            if name.startswith("retrain"):
                method, task_for = make_method("retrain", RetrainConfig(train=train_cfg)), setting.task
            elif name == "shipped":
                method, task_for = make_method("unsir", shipped), setting.zero_glance
            else:
                method, task_for = chosen[name](shipped), setting.zero_glance
            method_seed = seed + 1000 if name == "retrain_again" else seed
            started = time.perf_counter()
            outcome = method.unlearn(
                original, task_for, device=device, generator=torch.Generator().manual_seed(method_seed)
            )
            wall = time.perf_counter() - started
            measured = evaluate_model(outcome.model, setting.evaluation_data, device=device, config=eval_cfg).metrics
            run[name] = {
                "forget_acc": measured["forget_acc"],
                "retain_acc": measured["retain_acc"],
                "mia": measured["mia"],
                "wall_s": wall,
                "verified": outcome.verified,
            }
        for name in names[1:]:
            run[name]["pass"] = quality.passes(run[name], run["retrain"])
        runs.append(run)
        print(
            f"seed {seed} {list(forget)} retrain mia {run['retrain']['mia']:.3f} | "
            + " | ".join(
                f"{n}: f {run[n]['forget_acc']:.3f} r {run[n]['retain_acc'] - run['retrain']['retain_acc']:+.3f} "
                f"m {run[n]['mia']:.3f} {'ok' if all(run[n]['pass'].values()) else 'FAIL'}"
                for n in names[1:]
            ),
            flush=True,
        )
    print()
    for name in names[1:]:
        rows = [r[name] for r in runs]
        fails = quality.bound_failures(rows)
        gaps = [abs(r["mia"] - run_["retrain"]["mia"]) for r, run_ in zip(rows, runs, strict=True)]
        print(
            f"{name:15s} pass {sum(all(r['pass'].values()) for r in rows)}/{len(rows)} fails {fails} "
            f"MIA gap mean {statistics.fmean(gaps):.3f} worst {max(gaps):.3f}"
        )
    Path(args.out).write_text(json.dumps(runs, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
