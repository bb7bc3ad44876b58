"""``shelfq evaluate``: read the log, compute the logging policy's figures and, for a model,
the off-policy estimates of its value; render them as a table or one JSON object."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

from shelfq.agents.policies import Explorer
from shelfq.evaluation.logs import distinct_items, logging_figures, newest_model, read_catalog, read_file, read_topic
from shelfq.evaluation.offpolicy import evaluate_model


class Options(NamedTuple):
    file: Path | None = None
    skip_bad: bool = False
    limit: int | None = None
    model: str | None = None          # the policy key of the target model on the models topic
    explorer: Explorer = Explorer()
    max_candidates: int = 1000


def evaluate(settings: Any, options: Options, progress: Callable[[str], None] = lambda _: None) -> dict[str, Any]:
    """Everything ``shelfq evaluate`` reports, as one JSON-ready dict."""
    if options.file is not None:
        log = read_file(options.file, options.limit, options.skip_bad)
        catalog = None
    else:
        log = read_topic(settings, options.limit)
        catalog, bad_items = read_catalog(settings)
        if bad_items:
            progress(f"skipped {bad_items} invalid items on {settings.topic('items')}")
    progress(f"read {log.read} transitions from {log.source}")
    result: dict[str, Any] = {"log": log.summary(), "catalog_items": len(catalog) if catalog is not None else None,
                              "logging": logging_figures(log, catalog or None), "target": None}
    if options.model is not None:
        model, rejected = newest_model(settings, options.model)
        progress(f"target: {options.model} model version {model.headers.version}")
        if catalog:
            candidates, source = list(catalog), "the catalog on the items topic"
        else:
            candidates, source = distinct_items(log), "the items shown in the log's slates"
        if not candidates:
            result["target"] = {"policy": options.model, "model_version": model.headers.version,
                                "notes": ["the log has no impressions, so there is nothing to evaluate"]}
            return result
        target = evaluate_model(list(log.impressions.values()), model, options.explorer, candidates,
                                options.max_candidates)
        target["candidate_source"] = source
        if catalog is not None and not catalog:
            target["notes"].append("the items topic is empty: the candidates are the items shown in the log")
        if rejected:
            target["notes"].append(f"{rejected} newer model versions failed the loader's checks and were passed over")
        result["target"] = target
    return result


# -- the table ---------------------------------------------------------------------------------

FIGURES = (("ctr", "CTR (transitions with a click)"), ("conversion", "conversion (transitions with a purchase)"),
           ("reward_per_impression", "reward per impression"), ("purchases_per_impression", "purchases per impression"),
           ("reward_per_session", "reward per session (as far as the log holds it)"),
           ("repeat_rate", "repeat rate (items also in the user's previous slate)"),
           ("intra_list_diversity", "intra-list diversity (category pairs that differ)"))


def _ci(e: dict[str, Any] | None) -> str:
    if e is None:
        return "-"
    if e["low"] is None:
        return f"{e['value']:.4f}  (one unit: no interval)"
    return f"{e['value']:.4f}  [{e['low']:.4f}, {e['high']:.4f}]"


def format_report(result: dict[str, Any]) -> str:
    log = result["log"]
    lines = [f"{log['source']}: {log['read']} records read, {log['invalid']} invalid, {log['duplicates']} repeats "
             f"dropped; {log['transitions']} transitions in {log['impressions']} impressions"]
    lines += [f"  invalid: {e}" for e in log["errors"]]
    lines.append("logging policy (values with 95% intervals; revenue is not in transitions: no price)")
    width = max(len(label) for _, label in FIGURES)
    logging = result["logging"]
    groups = ([("overall", logging["overall"])] + list(logging["by_policy"].items())
              + [(f"arm {arm}", fig) for arm, fig in logging.get("by_arm", {}).items()])
    for name, fig in groups:
        lines.append(f"  {name}: {fig['impressions']} impressions in {fig['sessions']} sessions, {fig['transitions']} transitions, "
                     f"{fig['distinct_items']} distinct items shown"
                     + (f" ({fig['coverage']:.1%} of the catalog)" if fig["coverage"] is not None else ""))
        lines += [f"    {label:<{width}}  {_ci(fig[key])}" for key, label in FIGURES if fig[key] is not None]
    target = result["target"]
    if target is not None:
        how = {"epsilon": f"epsilon-greedy (epsilon {target.get('epsilon')})", "greedy": "greedy",
               "boltzmann": f"Boltzmann (temperature {target.get('temperature')})"}.get(target.get("exploration"), "")
        lines.append(f"target: {target['policy']} model version {target['model_version']}, {how}, over "
                     f"{target.get('candidates', 0)} candidates ({target.get('candidate_source', '-')})")
        if "ips" in target:
            lines.append(f"  expected reward per impression over {target['impressions']} impressions "
                         f"({target['transitions']} transitions), mean importance weight {target['mean_weight']:.3g}:")
            for key, label in (("logged_value", "logged (the logging policy, on-policy)"), ("ips", "IPS"),
                               ("snips", "SNIPS"), ("dr", "doubly robust")):
                est = target[key]
                ess = (f"  effective sample size {est['ess']:.1f} of {target['transitions']} positions"
                       if est is not None and key != "logged_value" else "")
                lines.append(f"    {label:<40}  {_ci(est)}{ess}")
        lines += [f"  note: {note}" for note in target["notes"]]
    return "\n".join(lines)
