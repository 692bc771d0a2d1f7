"""Compare stopping rules (validation accuracy and highest forget-class probability) and round
budgets on the output of `rounds_schedule.py`: test failures, budget exhaustion, retain drop."""
import json, sys
d = json.load(open(sys.argv[1]))
for tau in [0.1, 0.2, 0.3, 0.5, 1.0]:
  for R in [3,4,5]:
    fails = []; budget = 0; rounds=[]; rets=[]
    for rec in d:
        stop = None
        for i, r in enumerate(rec['rounds'][:R]):
            if r['v']['f'] == 0 and r['v']['px'] <= tau:
                stop = i; break
        if stop is None: budget += 1; stop = R-1
        rounds.append(stop+1)
        t = rec['rounds'][stop]['t']
        rets.append(rec['t0']['r'] - t['r'])
        if t['f'] > 0.01: fails.append((rec['seed'], tuple(rec['fc']), round(t['f'],3)))
    print(f"tau {tau} R {R}: n={len(d)} test-fail {len(fails)} budget-out {budget} mean rounds {sum(rounds)/len(rounds):.2f} max retain drop {max(rets):.3f} mean {sum(rets)/len(rets):.3f}", fails[:6])
