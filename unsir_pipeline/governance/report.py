"""A self-contained HTML evidence report for one deletion batch, built from the audit trail,
and the Markdown summary of one unlearning run.

No script, no external resource: the chart is inline SVG, so the file can be archived and
opened years later. Every string that came from a request (requester, reason, class names
typed by a person) is HTML-escaped.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from html import escape

from unsir_pipeline.governance.audit import AuditRecord, VerifyResult
from unsir_pipeline.governance.deletion_requests import DeletionRequest

STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem auto;max-width:60rem;color:#1b1b1b;line-height:1.45}
h1{font-size:1.5rem} h2{font-size:1.15rem;margin-top:2rem;border-bottom:1px solid #ddd}
table{border-collapse:collapse;width:100%;font-size:.9rem} th,td{border:1px solid #ddd;padding:.3rem .5rem;text-align:left;overflow-wrap:anywhere}
th{background:#f4f4f4} .num{text-align:right;font-variant-numeric:tabular-nums} .ok{color:#1a7f37} .bad{color:#b42318}
code{font-size:.85em;word-break:break-all} .note{background:#fafafa;border-left:4px solid #8da0cb;padding:.5rem 1rem}
"""


def _e(value: object) -> str:
    return escape(str(value), quote=True)


def _pct(value: object) -> str:
    return f"{100 * float(value):.2f}%" if isinstance(value, (int, float)) else "—"


def _figure(name: str, value: object) -> str:
    """A key figure: a count of steps as a whole number, every other one as a percentage."""
    if "steps" in name:
        return f"{float(value):.0f}" if isinstance(value, (int, float)) else "—"
    return _pct(value)


def forget_classes_covered(metrics_payload: dict) -> str:
    """Which classes the forget-class figures measure, as a label's tail: every class forgotten
    so far (evaluation counts the earlier deletions too), and which of them this run was asked
    for when that is fewer. Empty when the record predates the class lists."""
    names = [str(row.get("class")) for row in metrics_payload.get("per_class", [])]
    covered, asked = metrics_payload.get("all_forgotten"), metrics_payload.get("forget_classes")
    if not covered:
        return ""

    def named(labels: list[int]) -> str:
        return ", ".join(names[c] if 0 <= c < len(names) else str(c) for c in labels)

    if not asked or sorted(asked) == sorted(covered):
        return f": {named(covered)}"
    return f": {named(covered)} (every class forgotten so far; asked this time: {named(asked)})"


def per_class_svg(
    per_class: list[dict], after_label: str = "after (unlearned)", retrained_label: str = "retrained from scratch"
) -> str:
    """Grouped bars of test accuracy per class: before, after and, when the run trained it, the
    retrained reference; the labels say which of them was registered. Forgotten classes shaded."""
    width, height, left, bottom, top = 640, 260, 40, 40, 16
    plot_h = height - bottom - top
    slot = (width - left - 10) / max(len(per_class), 1)
    series = [("before", "#8da0cb", "before (parent)"), ("after", "#fc8d62", after_label)]
    if per_class and "retrained" in per_class[0]:
        series.append(("retrained", "#66c2a5", retrained_label))
    bar = slot * 0.76 / len(series)
    parts = [
        f'<svg id="per-class-chart" xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img" aria-label="per-class test accuracy: {", ".join(label for _, _, label in series)}">'
    ]
    for tick in (0, 0.5, 1.0):
        y = top + plot_h * (1 - tick)
        parts.append(
            f'<line x1="{left}" y1="{y:.1f}" x2="{width - 10}" y2="{y:.1f}" stroke="#ddd"/><text x="4" y="{y + 4:.1f}" font-size="11">{int(tick * 100)}%</text>'
        )
    for i, row in enumerate(per_class):
        x0 = left + i * slot
        if row.get("forgotten"):
            parts.append(f'<rect x="{x0:.1f}" y="{top}" width="{slot:.1f}" height="{plot_h}" fill="#eeeeee"/>')
        for j, (key, colour, label) in enumerate(series):
            value = float(row.get(key) or 0.0)
            h = plot_h * value
            parts.append(
                f'<rect class="bar-{key}" x="{x0 + slot * 0.12 + j * bar:.1f}" y="{top + plot_h - h:.1f}" width="{bar:.1f}" height="{h:.1f}" fill="{colour}"><title>{_e(row["class"])} {_e(label)}: {_pct(value)}</title></rect>'
            )
        parts.append(
            f'<text x="{x0 + slot / 2:.1f}" y="{height - bottom + 16}" font-size="11" text-anchor="middle">{_e(row["class"])}</text>'
        )
    x = left
    for _, colour, label in series:
        parts.append(
            f'<rect x="{x}" y="{height - 14}" width="10" height="10" fill="{colour}"/><text x="{x + 14}" y="{height - 5}" font-size="11">{_e(label)}</text>'
        )
        x += 24 + 6 * len(label)
    parts.append(
        f'<text x="{width - 10}" y="{top - 4}" font-size="11" text-anchor="end">forgotten classes shaded</text>'
    )
    parts.append("</svg>")
    return "".join(parts)


def batch_report_html(
    batch_id: str,
    records: list[AuditRecord],
    requests: list[DeletionRequest],
    chain: VerifyResult,
    current_aliases: dict[int, list[str]],
    reviews: Sequence[AuditRecord] = (),
    evidence_ids: dict[int, str] | None = None,
    store_disagreements: Sequence[str] = (),
) -> str:
    """``records``: the batch's own; ``requests``: as the store holds them now; ``reviews``: the
    ``version_promoted``/``version_rejected`` records of the version the batch registered, which
    carry no batch id but decide what became of it (and of its requests); ``evidence_ids``: the
    id whose report holds each version's evidence, for a batch that registered none;
    ``store_disagreements``: where the store's requests differ from their intake records (the
    store has no hash chain: the table shows what it holds, this says what the trail holds)."""
    by_event: dict[str, AuditRecord] = {}
    for rec in records:
        by_event[rec.event] = rec  # the latest of each kind
    metrics_rec = by_event.get("unlearning_metrics")
    registered = by_event.get("model_registered")
    gate = by_event.get("gate_decision")
    m = measured_layout(metrics_rec.payload) if metrics_rec else {}
    version = registered.payload["model_version"] if registered else None
    # A forget run outside a batch (`unsir forget`) has no requests and ends with its decision.
    direct = registered is not None and registered.payload.get("via") == "unsir forget"
    status = (
        "finished"
        if "batch_finished" in by_event or (direct and gate is not None)
        else ("failed" if "batch_failed" in by_event else "in progress or interrupted")
    )

    # The store holds each request as it is now: a request this batch completed may since have
    # gone back to pending (its version rejected) and been completed by a later batch.
    rows = "".join(
        f"<tr><td><code>{_e(r.id)}</code></td><td>{_e(r.requester)}</td><td>{_e(r.reason)}</td>"
        f"<td>{_e(', '.join(r.class_names))}</td><td>{_e(r.created_at)}</td>"
        # A withdrawn request says by whom and why ("withdrawn by bob: filed twice").
        f"<td>{_e(r.error if r.status == 'withdrawn' else r.status)}"
        + (f" (in batch <code>{_e(r.batch_id)}</code>)" if r.batch_id and r.batch_id != batch_id else "")
        + f"</td><td>{_e(r.model_version or '—')}</td></tr>"
        for r in requests
    )
    requests_section = (
        f"<p>No deletion request: run directly with <code>unsir forget</code>, asked by "
        f"<b>{_e(registered.actor)}</b>.</p>"
        if direct and registered is not None and not requests
        else "<table><tr><th>request</th><th>requester</th><th>reason</th><th>classes</th><th>received</th>"
        f"<th>status now</th><th>version now</th></tr>{rows}</table>"
    )
    disagreements = (
        '<p class="bad">The request store disagrees with the requests\' intake records on the trail: '
        + _e("; ".join(store_disagreements))
        + "</p>"
        if store_disagreements
        else ""
    )
    has_ref = "reference_mia" in m
    covers = forget_classes_covered(metrics_rec.payload if metrics_rec else {})
    figures = [
        (
            f"forget-class accuracy (test){covers}",
            m.get("original_forget_acc"),
            m.get("forget_acc"),
            m.get("reference_forget_acc"),
        ),
        (
            "retain-class accuracy (test)",
            m.get("original_retain_acc"),
            m.get("retain_acc"),
            m.get("reference_retain_acc"),
        ),
        (
            f"membership inference on forget-train samples{covers}",
            m.get("original_mia"),
            m.get("mia"),
            m.get("reference_mia"),
        ),
    ]
    # What the gate compared the MIA with when no model was retrained, and the relearn time
    # (anamnesis): both on the record, and the reader's only evidence of either.
    if "mia_forget_holdout" in m:
        figures.append(
            (
                "membership inference on unseen forget-class samples (validation split)",
                m.get("original_mia_forget_holdout"),
                m.get("mia_forget_holdout"),
                m.get("reference_mia_forget_holdout"),
            )
        )
    if "mia_attack_power" in m:
        figures.append(
            (
                "membership attack's balanced accuracy on retain-class members and non-members (0.5: none)",
                m.get("original_mia_attack_power"),
                m.get("mia_attack_power"),
                m.get("reference_mia_attack_power"),
            )
        )
    if "relearn_steps" in m:
        figures.append(
            (
                "fine-tuning steps to relearn the forget classes",
                None,
                m["relearn_steps"],
                m.get("reference_relearn_steps"),
            )
        )
    figure_rows = "".join(
        f'<tr><td>{_e(name)}</td><td class="num">{_figure(name, b)}</td>'
        f'<td class="num" id="fig-{i}">{_figure(name, a)}</td>'
        + (f'<td class="num">{_figure(name, r)}</td>' if has_ref else "")
        + "</tr>"
        for i, (name, b, a, r) in enumerate(figures)
    )
    exact = registered is not None and registered.payload.get("method") == "retrain"
    after_label = "after UNSIR (not registered)" if exact else "after (unlearned)"
    retrained_label = "retrained from scratch (registered)" if exact else "retrained from scratch"
    chart = (
        per_class_svg(metrics_rec.payload["per_class"], after_label, retrained_label)
        if metrics_rec
        else "<p>No evaluation was recorded for this batch.</p>"
    )
    lineage = "<p>No model version was registered by this batch.</p>"
    finished = by_event.get("batch_finished")
    if registered is None and finished is not None and isinstance(finished.payload.get("model_version"), int):
        # Its classes were already forgotten by the champion: the requests completed with that
        # version, whose evidence is another batch's (or forget run's) report.
        done_by = finished.payload["model_version"]
        elsewhere = (evidence_ids or {}).get(done_by)
        lineage = (
            f"<p id='done-by'>No model version was registered by this batch: its requests were completed with "
            f"version <b>{_e(done_by)}</b> ({_e(finished.payload.get('note', 'see the batch_finished record'))})."
            + (
                f" That version's evidence: <code>unsir audit report {_e(elsewhere)}</code>.</p>"
                if elsewhere
                else "</p>"
            )
        )
    if registered:
        p = registered.payload
        aliases = ", ".join(current_aliases.get(int(p["model_version"]), [])) or "none"
        reasons = "".join(f"<li>{_e(x)}</li>" for x in (gate.payload.get("reasons", []) if gate else []))
        lineage = (
            f"<p>Version <b>{_e(p['parent_version'])}</b> &rarr; version <b id='new-version'>{_e(version)}</b>; "
            "classes forgotten so far: "
            f"{_e(_named(p['forgotten_classes'], metrics_rec))}. Aliases now: <b>{_e(aliases)}</b>.</p>"
            f"<p>Promotion gate: <b class='{'ok' if gate and gate.payload.get('promoted') else 'bad'}'>"
            f"{'promoted' if gate and gate.payload.get('promoted') else 'held for review'}</b>"
            + (
                f", replacing champion version <b>{_e(gate.payload['previous_champion'])}</b>"
                if gate and gate.payload.get("promoted") and gate.payload.get("previous_champion")
                else ""
            )
            + f"</p><ul>{reasons}</ul>"
            + "".join(_review_paragraph(rec) for rec in reviews)
            + _fallback_paragraph(p, gate.payload if gate else {})
            + "<table><tr><th>link</th><th>value</th></tr>"
            f"<tr><td>MLflow run</td><td><code>{_e(p.get('mlflow_run_id'))}</code></td></tr>"
            f"<tr><td>Prefect flow run</td><td><code>{_e(p.get('prefect_flow_run_id'))}</code></td></tr>"
            f"<tr><td>git commit</td><td><code>{_e(p.get('git_commit'))}</code></td></tr>"
            f"<tr><td>parameters digest</td><td><code>{_e(p.get('params_digest'))}</code></td></tr>"
            + (
                f"<tr><td>weights sha256</td><td><code>{_e(p['weights_sha256'])}</code></td></tr>"
                if p.get("weights_sha256")
                else ""
            )
            + "".join(
                f"<tr><td>DVC md5 {_e(k)}</td><td><code>{_e(v)}</code></td></tr>"
                for k, v in sorted(p.get("data_digests", {}).items())
            )
            + "</table>"
        )
    events = "".join(
        f"<tr><td class='num'>{rec.seq}</td><td>{_e(rec.ts)}</td><td>{_e(rec.event)}</td><td>{_e(rec.actor)}</td><td><code>{_e(rec.hash[:16])}</code></td></tr>"
        for rec in records
    )
    signed = ", head anchor signed with the audit key" if chain.signed else ", head anchor not signed"
    chain_line = (
        f"<span class='ok'>intact</span> ({chain.records} records verified{signed})"
        if chain.ok
        else f"<span class='bad'>BROKEN at record {chain.first_bad_seq}: {_e(chain.problem)}</span>"
        + "".join(
            f"; <span class='bad'>and at record {seq}: {_e(problem)}</span>" for seq, problem in chain.later_problems
        )
        + _own_records_line(records, chain)
    )
    unlearning_line = (
        f"<p id='rounds'>{_e(describe_rounds(metrics_rec.payload.get('rounds') or [], metrics_rec.payload.get('verified')))}"
        f" (<code>reads_forget_train: {_e(str(metrics_rec.payload.get('reads_forget_train')).lower())}</code>)</p>"
        if metrics_rec
        else ""
    )
    generated = datetime.now(UTC).isoformat(timespec="seconds")
    exact_note = (
        "<p><b>Here the registered version is the retrained model</b>: trained from fresh weights on the retain "
        "classes' training samples only, it never saw the forgotten classes (exact unlearning, as faithful as the "
        "training recipe that produced the parent). The caveats above are about UNSIR's model, which it replaced.</p>"
        if exact
        else ""
    )
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Unlearning evidence: {_e(batch_id)}</title><style>{STYLE}</style></head>
<body>
<h1>Unlearning evidence report — batch <code>{_e(batch_id)}</code></h1>
<p>Status: <b>{_e(status)}</b>. Generated {generated} from the audit trail, whose hash chain is {chain_line}.</p>
<h2>Requests</h2>
{requests_section}{disagreements}
<h2>Accuracy per class, before and after</h2>
{chart}
<h2>Key figures</h2>
{unlearning_line}
<table id="key-figures"><tr><th>measure</th><th>before (parent)</th><th>{after_label}</th>{f"<th>{retrained_label}</th>" if has_ref else ""}</tr>{figure_rows}</table>
<h2>Model lineage</h2>
{lineage}
<h2>Audit records of this batch</h2>
<table><tr><th>#</th><th>time</th><th>event</th><th>actor</th><th>hash</th></tr>{events}</table>
<h2>What this evidence does and does not prove</h2>
<div class="note">
<p><b>It shows</b> that the registered version classifies the test samples of the forgotten classes at the
accuracy above while keeping the retain classes' accuracy, that a membership-inference attack (a logistic
regression on the entropy of the model's outputs) judges the forget-class training samples as members at the
rate above{", next to a model retrained from scratch without those classes" if has_ref else ""}, that the
unlearning read no forget-class sample (UNSIR trains on noise and a retain subset whose DVC digest is listed),
and that this record of it has not been altered since it was written (the hash chain).</p>
<p><b>It does not prove</b> that no information about the forgotten classes remains in the weights: behaviour
can sometimes be recovered by fine-tuning on a few samples or by a probe on internal features, and a stronger
attack than the one measured here may do better. It is evidence of behavioural forgetting measured against the
test split and the retrained reference, not a certificate of exact unlearning. The trail proves integrity of the
records, not the honesty of whoever wrote the first one.</p>{exact_note}
</div>
</body></html>
"""


def _named(classes: list[int], metrics_rec: AuditRecord | None) -> list[str] | list[int]:
    """``classes`` by the names the evaluation recorded (an image folder's "cat"; indices would
    read as the folders named "1", "3"), or as indices where no evaluation was recorded."""
    names = [row["class"] for row in metrics_rec.payload["per_class"]] if metrics_rec else []
    return [names[c] for c in classes] if all(0 <= c < len(names) for c in classes) else classes


def _review_paragraph(rec: AuditRecord) -> str:
    """A reviewer's later decision on the batch's version (``unsir promote`` / ``unsir reject``)."""
    p = rec.payload
    if rec.event == "version_rejected":
        what = "rejected"
        after = f"; its requests went back to pending: {', '.join(p.get('requests_returned') or []) or 'none'}"
    else:
        what = "promoted by hand" + (" with --override" if p.get("override") else "")
        after = "".join(f"; overridden: {x}" for x in p.get("overridden_problems") or [])
    return (
        f"<p class='review'>Review (record {rec.seq}, {_e(rec.ts)}): version {_e(p.get('model_version'))} "
        f"<b>{what}</b> by <b>{_e(rec.actor)}</b>: {_e(p.get('reason', ''))}{_e(after)}.</p>"
    )


def _fallback_paragraph(registered: dict, gate: dict) -> str:
    """What a reviewer must know when the registered version is not UNSIR's, or when a held
    UNSIR model was not replaced by the retrained reference."""
    if gate.get("no_fallback_because"):
        return f"<p id='no-fallback'>No fallback to the retrained model: {_e(gate['no_fallback_because'])}.</p>"
    if registered.get("method") != "retrain":
        return ""
    failed = "".join(f"<li>{_e(x)}</li>" for x in registered.get("unsir_gate_reasons", []))
    return (
        "<p id='method'><b>The registered version is the model retrained from scratch on the retain classes</b> "
        "(exact unlearning; the <i>retrained</i> column above), registered in place of UNSIR's model, which "
        f"failed the gate:</p><ul>{failed}</ul>"
    )


def describe_rounds(rounds: list[dict], verified: bool | None) -> str:
    """How many UNSIR rounds ran, what the validation split said after the last one, and what
    the recovery epochs did (for the CLI's summary and the evidence report)."""
    if not rounds:
        return "UNSIR: no rounds recorded"
    last = rounds[-1]
    if verified is None:
        return f"UNSIR: {len(rounds)} round(s), not verified (no validation split)"
    recovery = ""
    if last.get("recovery_epochs"):
        recovery = (
            f"; {int(last['recovery_epochs'])} recovery epoch(s), validation retain accuracy "
            f"{last['val_retain_acc_before_recovery']:.3f} -> {last['val_retain_acc']:.3f} "
            f"(parent {last['parent_val_retain_acc']:.3f})"
        )
    heads = sum(1 for r in rounds if r.get("head_round"))
    on_the_head = f" ({heads} on the head alone)" if heads else ""
    return (
        f"UNSIR: {len(rounds)} round(s){on_the_head}; validation split: forget accuracy "
        f"{last.get('val_forget_acc', 0):.3f}, "
        f"highest forget-class probability {last.get('val_forget_confidence', 0):.3f} -> "
        + ("verified forgotten" if verified else "NOT verified (round budget ran out)")
        + recovery
        + "; no forget-class training sample read"
    )


def recorded_metrics(metrics: dict[str, float], method: str) -> dict[str, float]:
    """The run's measures as its ``unlearning_metrics`` record holds them: unprefixed, the
    registered model's. The flow measures UNSIR's model unprefixed and the retrained reference
    under ``reference_``; when the reference was registered in UNSIR's place (``method``
    ``retrain``), its figures take the unprefixed names and UNSIR's, not registered, go under
    ``unsir_``, so nobody reading the record takes them for the registered model's."""
    if method != "retrain":
        return dict(metrics)
    parents = {k: v for k, v in metrics.items() if k.startswith("original_")}
    registered = {k.removeprefix("reference_"): v for k, v in metrics.items() if k.startswith("reference_")}
    unsir = {f"unsir_{k}": v for k, v in metrics.items() if not k.startswith(("original_", "reference_"))}
    return {**parents, **registered, **unsir}


def measured_layout(payload: dict) -> dict[str, float]:
    """An ``unlearning_metrics`` record's measures as the flow measured them: UNSIR's model
    unprefixed, the retrained reference under ``reference_``, the parent under ``original_``.
    Reads both layouts: a record that registered the retrained model (``method: retrain``)
    holds its figures unprefixed and UNSIR's under ``unsir_``; an older record, or one that
    registered UNSIR's model, is already in this layout."""
    m = payload.get("metrics") or {}
    if payload.get("method") != "retrain":
        return dict(m)
    parents = {k: v for k, v in m.items() if k.startswith("original_")}
    unsir = {k.removeprefix("unsir_"): v for k, v in m.items() if k.startswith("unsir_")}
    reference = {f"reference_{k}": v for k, v in m.items() if not k.startswith(("original_", "unsir_"))}
    return {**parents, **unsir, **reference}


def summary_markdown(forget_classes: list[int], metrics: dict[str, float]) -> str:
    """The Markdown summary of one unlearning run (the flow's ``unlearning-summary`` artifact)."""
    m = metrics
    rows = [
        ("forget accuracy (test)", m["original_forget_acc"], m["forget_acc"]),
        ("retain accuracy (test)", m["original_retain_acc"], m["retain_acc"]),
        ("forget accuracy (train)", m["original_forget_acc_train"], m["forget_acc_train"]),
        ("retain accuracy (train)", m["original_retain_acc_train"], m["retain_acc_train"]),
        ("membership inference on forget-train", m["original_mia"], m["mia"]),
    ]
    lines = [f"# Unlearning of classes {forget_classes}", "", "| measure | before | after |", "|---|---|---|"]
    lines += [f"| {name} | {before:.4f} | {after:.4f} |" for name, before, after in rows]
    return "\n".join(lines) + "\n"


def _own_records_line(records: list[AuditRecord], chain: VerifyResult) -> str:
    """Whether a broken chain reaches this batch's own records: the walk goes on past a broken
    record, so the batch's evidence is known intact when none of its records is named."""
    own = sorted(rec.seq for rec in records)
    if not own:
        return ""
    touched = sorted(chain.bad_seqs.intersection(own))
    if touched:
        return f". <span class='bad'>This batch's record(s) {', '.join(map(str, touched))} are among them.</span>"
    return f". None of this batch's {len(own)} record(s) ({', '.join(map(str, own))}) is among them"
