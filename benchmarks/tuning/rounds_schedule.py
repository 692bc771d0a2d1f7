"""Tuning-half experiment (seeds 0-2): per-round validation and test figures of UNSIR rounds,
plain repetition (`plain`) against noise copies x round (`esc`). Writes reports/bench/tuning-rounds-<variant>.json;
`stopping_rule.py` reads it and compares stopping rules. Kept as run, for the record."""
import sys, json, torch, itertools, random
torch.set_num_threads(1)
from unsir.data import load_digits
from unsir.splits import make_split_manifest, draw_retain_subset, SplitFractions, select
from unsir.problem import prepare_splits, build_task
from unsir.models import ModelSpec, build_model
from unsir.training import fit, seed_everything, OptimConfig, predict_logits
from unsir.methods.unsir import UNSIRConfig, impair, repair
from unsir.noise import learn_error_maximizing_noise
from unsir.methods.base import prepare
from dataclasses import replace
variant = sys.argv[1]
data = load_digits(); dev = torch.device("cpu")
fr = SplitFractions(0.55, 0.15, 0.30)
def stats(model, x, y, fc):
    p = predict_logits(model, x, device=dev).softmax(1)
    fm = torch.isin(y, torch.tensor(fc))
    pred = p.argmax(1)
    pc = p[fm][:, list(fc)].sum(1)
    return dict(f=float((pred[fm]==y[fm]).float().mean()), r=float((pred[~fm]==y[~fm]).float().mean()),
                fin=float(torch.isin(pred[fm], torch.tensor(fc)).float().mean()),
                pm=float(pc.mean()), px=float(pc.max()))
rng = random.Random(0)
pairs = rng.sample(list(itertools.combinations(range(10),2)), 6)
sets = [(c,) for c in range(10)] + pairs + [(1,7),(0,4,9)]
out = []
for seed in [0,1,2]:
    man = make_split_manifest(data, seed=seed, fractions=fr)
    splits = prepare_splits(data, man)
    vx, vy = select(data, man[man.split=="val"]); vx = splits.normalization.apply(vx)
    g = seed_everything(seed); orig = build_model(ModelSpec("small_cnn", 10, 1, {}))
    fit(orig, splits.train_images, splits.train_labels, OptimConfig(1e-3, 30, 32), device=dev, generator=g)
    for fc in sets:
        rows = draw_retain_subset(man, forget_classes=fc, per_class=50, seed=seed, num_classes=10)
        task = build_task(splits, data, rows, fc)
        cfg = UNSIRConfig()
        m = prepare(orig, task, dev)
        rec = dict(seed=seed, fc=fc, v0=stats(m, vx, vy, fc), t0=stats(m, splits.test_images, splits.test_labels, fc), rounds=[])
        for r in range(5):
            gen = torch.Generator().manual_seed(seed*100+r)
            c = cfg
            if variant == "esc":
                c = replace(cfg, noise_copies=cfg.noise_copies * (r + 1))
            noise = learn_error_maximizing_noise(m, fc, task.input_shape, c.noise, device=dev, generator=gen)
            impair(m, noise, task.retain_images, task.retain_labels, c, device=dev, generator=gen)
            repair(m, task.retain_images, task.retain_labels, c, device=dev, generator=gen)
            rec["rounds"].append(dict(v=stats(m, vx, vy, fc), t=stats(m, splits.test_images, splits.test_labels, fc)))
        out.append(rec)
        print(seed, fc, [ (round(x['v']['f'],2), round(x['v']['px'],2), round(x['t']['f'],3)) for x in rec['rounds']], flush=True)
json.dump(out, open(f"reports/bench/tuning-rounds-{variant}.json","w"))
