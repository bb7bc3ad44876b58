"""The demo's report: ``report.md``, ``report.json`` and two PNG plots in one directory.

>>> fmt({"mean": 2.5, "ci95": [2.25, 2.75]})
'2.500 [2.250, 2.750]'
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from shelfq.evaluation.offline import METRICS

LABELS = {"reward_per_session": "reward / session", "ctr": "CTR", "conversion": "conversion",
          "revenue_per_session": "revenue / session", "session_length": "session length (slates)",
          "intra_list_diversity": "intra-list diversity", "catalog_coverage": "catalog coverage",
          "bait_share": "bait share of shown items"}
ORDER = ("random", "popularity", "myopic_dqn", "longterm_dqn")
GROUPS = {"returning": "returning shoppers (with their live histories)", "new": "new shoppers (never in the live traffic)"}
LIVE_METRICS = ("reward_per_session", "ctr", "conversion", "revenue_per_session")
Z95 = 1.959964  # two-sided 95% normal quantile: thousands of sessions per arm


def _cell(mean: float, half: float) -> dict[str, Any]:
    return {"mean": round(mean, 4), "ci95": [round(mean - half, 4), round(mean + half, 4)]}


def session_figures(sessions: Sequence[Any]) -> dict[str, Any]:
    """Reward per session, CTR (clicks per slate), conversion (share of sessions with a
    purchase) and revenue per session of finished sessions (``simulator.runner.SessionRecord``),
    each with a 95% interval over sessions: normal for the per-session means, and for CTR, a
    ratio of sums, the delta method over sessions (a session's slates are not independent).

    >>> from shelfq.simulator.runner import SessionRecord
    >>> log = [SessionRecord(0, "a", 0.0, 4, 2, 1, 7.0, 20.0), SessionRecord(1, "a", 1.0, 2, 0, 0, 0.0, 0.0),
    ...        SessionRecord(2, "a", 2.0, 2, 1, 0, 1.0, 0.0)]
    >>> f = session_figures(log)
    >>> f["sessions"], f["reward_per_session"], f["ctr"]["mean"], f["conversion"]["mean"]
    (3, {'mean': 2.6667, 'ci95': [-1.6174, 6.9508]}, 0.375, 0.3333)
    """
    n = len(sessions)
    out: dict[str, Any] = {"sessions": n, "slates": sum(r.slates for r in sessions)}
    if n == 0:
        return out

    def mean_cell(values: list[float]) -> dict[str, Any]:
        m = sum(values) / n
        sd = math.sqrt(sum((v - m) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
        return _cell(m, Z95 * sd / math.sqrt(n))

    out["reward_per_session"] = mean_cell([r.reward for r in sessions])
    slates = out["slates"]
    ctr = sum(r.clicks for r in sessions) / max(1, slates)
    residual = [r.clicks - ctr * r.slates for r in sessions]
    var = sum(e * e for e in residual) / (n - 1) if n > 1 else 0.0
    out["ctr"] = _cell(ctr, Z95 * math.sqrt(var / n) / max(1e-12, slates / n))
    out["conversion"] = mean_cell([float(r.purchases > 0) for r in sessions])
    out["revenue_per_session"] = mean_cell([r.revenue for r in sessions])
    return out


def ratio_cell(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any] | None:
    """a / b of two independent figures with normal 95% intervals (the delta method on the log),
    and whether their intervals are apart; None when b is not positive.

    >>> ratio_cell({"mean": 6.0, "ci95": [5.0, 7.0]}, {"mean": 4.0, "ci95": [3.5, 4.5]})
    {'ratio': 1.5, 'ci95': [1.2179, 1.8474], 'intervals_separate': True}
    """
    if b["mean"] <= 0 or a["mean"] <= 0:
        return None
    se_a, se_b = ((c["ci95"][1] - c["mean"]) / Z95 for c in (a, b))
    r = a["mean"] / b["mean"]
    half = Z95 * math.sqrt((se_a / a["mean"]) ** 2 + (se_b / b["mean"]) ** 2)
    return {"ratio": round(r, 4), "ci95": [round(r * math.exp(-half), 4), round(r * math.exp(half), 4)],
            "intervals_separate": a["ci95"][0] > b["ci95"][1] or b["ci95"][0] > a["ci95"][1]}


def live_arms(sessions: Sequence[Any], started: float, ended: float) -> dict[str, Any]:
    """Each arm's live figures over the whole run and over its second half (sessions that
    ended after the midpoint: the arms' models have had time to learn), with the long-term
    arm against the myopic one. Sessions whose slates named no arm are left out (counted)."""
    arms = sorted({r.arm for r in sessions if r.arm is not None})
    middle = started + (ended - started) / 2
    out: dict[str, Any] = {"unassigned_sessions": sum(r.arm is None for r in sessions), "arms": {}}
    for arm in arms:
        mine = [r for r in sessions if r.arm == arm]
        out["arms"][arm] = {"all": session_figures(mine), "second_half": session_figures([r for r in mine if r.ended > middle])}
    if {"longterm", "myopic"} <= set(arms):
        out["longterm_vs_myopic"] = {
            part: ratio_cell(out["arms"]["longterm"][part]["reward_per_session"], out["arms"]["myopic"][part]["reward_per_session"])
            for part in ("all", "second_half")
            if "reward_per_session" in out["arms"]["longterm"][part] and "reward_per_session" in out["arms"]["myopic"][part]}
    return out


def fmt(cell: dict[str, Any]) -> str:
    lo, hi = cell["ci95"]
    return f"{cell['mean']:.3f} [{lo:.3f}, {hi:.3f}]"


def targets(policies: dict[str, Any]) -> dict[str, Any]:
    """The targets: long-term >= 1.2x myopic, ahead of popularity and >= 2x random in reward
    per session, each with 95% intervals that do not overlap."""
    out: dict[str, Any] = {}
    long = policies.get("longterm_dqn", {}).get("reward_per_session")
    for other, factor in (("myopic_dqn", 1.2), ("popularity", 1.0), ("random", 2.0)):
        base = policies.get(other, {}).get("reward_per_session")
        if long is None or base is None or base["mean"] <= 0:
            continue
        ratio = long["mean"] / base["mean"]
        separate = long["ci95"][0] > base["ci95"][1]
        out[f"longterm_vs_{other.removesuffix('_dqn')}"] = {"ratio": round(ratio, 3), "target": factor,
                                                           "intervals_separate": separate,
                                                           "met": ratio >= factor and separate}
    return out


def live_target(experiment: dict[str, Any]) -> dict[str, Any] | None:
    """The live arms: the long-term arm ahead of the myopic arm in reward per session over the
    second half of the run, intervals apart."""
    cell = experiment.get("longterm_vs_myopic", {}).get("second_half")
    if not cell:
        return None
    return {"ratio": round(cell["ratio"], 3), "target": 1.0, "intervals_separate": cell["intervals_separate"],
            "met": cell["ratio"] > 1 and cell["intervals_separate"]}


def write_report(result: dict[str, Any], timeline: list[dict[str, float]], directory: Path) -> tuple[Path, Path]:
    """Write the report files; returns (report.md, report.json)."""
    directory.mkdir(parents=True, exist_ok=True)
    for group in result.get("comparison", {}).values():
        group["targets"] = targets(group["policies"])
    result["targets"] = targets(result["policies"])
    live = live_target(result["live"].get("experiment", {}))
    if live is not None:
        result["targets"]["live_longterm_arm_vs_myopic_arm"] = live
    _plot_comparison(result.get("comparison") or {"returning": {"policies": result["policies"]}}, directory / "comparison.png")
    _plot_live(timeline, directory / "live.png")
    md, js = directory / "report.md", directory / "report.json"
    md.write_text(markdown(result))
    js.write_text(json.dumps({**result, "timeline": timeline}, indent=2, sort_keys=True) + "\n")
    return md, js


def _live_table(experiment: dict[str, Any]) -> list[str]:
    arms = experiment.get("arms", {})
    if not arms:
        return []
    lines = ["| arm | part | sessions | " + " | ".join(LABELS[m] for m in LIVE_METRICS) + " |",
             "|---|---|---|" + "---|" * len(LIVE_METRICS)]
    for arm, parts in arms.items():
        for part, label in (("all", "whole run"), ("second_half", "second half")):
            f = parts[part]
            if f["sessions"] == 0:
                continue
            lines.append(f"| {arm} | {label} | {f['sessions']} | " + " | ".join(fmt(f[m]) for m in LIVE_METRICS) + " |")
    ratios = experiment.get("longterm_vs_myopic", {})
    if ratios:
        lines += ["", "Long-term arm / myopic arm, reward per session: " + "; ".join(
            f"{'whole run' if part == 'all' else 'second half'} {c['ratio']:.2f}x [{c['ci95'][0]:.2f}, {c['ci95'][1]:.2f}]"
            f" (intervals {'separate' if c['intervals_separate'] else 'overlap'})" for part, c in ratios.items() if c)
            + "."]
    if experiment.get("unassigned_sessions"):
        lines += ["", f"{experiment['unassigned_sessions']} sessions saw no slate of the agent in time (random "
                      "slates shown by the simulator) and are left out of the arms."]
    return lines


def _policy_table(policies: dict[str, Any]) -> list[str]:
    names = [n for n in ORDER if n in policies]
    lines = ["| metric | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for metric in METRICS:
        lines.append(f"| {LABELS[metric]} | " + " | ".join(fmt(policies[n][metric]) for n in names) + " |")
    return lines


def _target_lines(found: dict[str, Any]) -> list[str]:
    return [f"- {name.replace('_', ' ')}: {t['ratio']:.2f}x (target {t['target']}x), intervals "
            f"{'separate' if t['intervals_separate'] else 'overlap'}: **{'met' if t['met'] else 'not met'}**"
            for name, t in found.items()]


def markdown(result: dict[str, Any]) -> str:
    s, live = result["settings"], result["live"]
    experiment = live.get("experiment", {})
    lines = [
        f"# shelfq demo report ({s['run']})",
        "",
        f"Live pipeline: {live['seconds']:.0f} s of simulated traffic through Kafka (streams, two learners, agent): "
        f"{live.get('sessions', 0)} sessions, {live.get('requests', 0)} requests ({live.get('slate_timeouts', 0)} answered by "
        f"timeout), {live['transitions']} transitions, CTR {live.get('ctr', 0):.3f}, reward per session "
        f"{live.get('reward_per_session', 0):.2f}. Final model versions: "
        + ", ".join(f"{k} v{v}" for k, v in sorted(live.get("model_versions", {}).items())) + ".",
        "",
    ]
    if experiment.get("arms"):
        lines += [
            "## Live arms",
            "",
            f"The agent serves two arms of one experiment, users split 50/50 by a stable hash of their id: "
            f"longterm (the gamma {s['gamma']} learner's model) and myopic (gamma 0), each explored with epsilon "
            f"{s['epsilon']} and each learner training on its own arm's transitions only. Figures per arm over "
            "sessions (95% normal interval over sessions; CTR by the delta method), for the whole run and for the "
            "sessions that ended in its second half.",
            "",
            *_live_table(experiment),
            "",
        ]
    lines += [
        "## Offline comparison",
        "",
        f"Each policy serves the same simulated shoppers, {s['seeds']} seeds x {s['sessions_per_seed']} sessions per "
        "group, greedy slates (no exploration), in a copy of the world as the live run left it; mean over seeds with "
        "a Student-t 95% interval. Popularity ranks by the live run's reward-weighted interactions (what the agent's "
        "fallback knew at the end). The DQN models are the newest each learner published, each trained on its own "
        "arm's live traffic.",
        "",
    ]
    comparison = result.get("comparison") or {"returning": {"policies": result["policies"],
                                                             "targets": result.get("targets", {})}}
    for group, group_result in comparison.items():
        users = f" ({group_result['users']} shoppers)" if "users" in group_result else ""
        lines += [f"### {GROUPS.get(group, group).capitalize()}{users}", "", *_policy_table(group_result["policies"]), "",
                  "Targets (reward per session):", "", *_target_lines(group_result.get("targets", {})), ""]
    if "live_longterm_arm_vs_myopic_arm" in result.get("targets", {}):
        lines += ["Live target (reward per session, second half):", "",
                  *_target_lines({"live_longterm_arm_vs_myopic_arm": result["targets"]["live_longterm_arm_vs_myopic_arm"]}), ""]
    lines += ["![policy comparison](comparison.png)", "", "![live run](live.png)", ""]
    return "\n".join(lines)


def _plot_comparison(comparison: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    shown = ("reward_per_session", "ctr", "session_length", "revenue_per_session", "conversion", "intra_list_diversity")
    groups = list(comparison)
    fig, axes = plt.subplots(len(groups), len(shown), figsize=(18, 3.3 * len(groups)), squeeze=False)
    colors = {"random": "#9e9e9e", "popularity": "#8d6e63", "myopic_dqn": "#42a5f5", "longterm_dqn": "#2e7d32"}
    for row, group in zip(axes, groups):
        policies = comparison[group]["policies"]
        names = [n for n in ORDER if n in policies]
        for ax, metric in zip(row, shown):
            means = [policies[n][metric]["mean"] for n in names]
            errs = [[m - policies[n][metric]["ci95"][0] for n, m in zip(names, means)],
                    [policies[n][metric]["ci95"][1] - m for n, m in zip(names, means)]]
            ax.bar(range(len(names)), means, yerr=errs, capsize=4, color=[colors[n] for n in names])
            ax.set_xticks(range(len(names)), [n.replace("_", "\n") for n in names], fontsize=8)
            ax.set_title(f"{LABELS[metric]} ({group})", fontsize=9)
    fig.suptitle("Policies on the same simulated shoppers (mean, 95% CI over seeds)")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def _plot_live(timeline: list[dict[str, float]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(12, 3.5))
    t = [p["t"] for p in timeline]
    arms = sorted({k.removeprefix("arm_reward_per_session_interval_") for p in timeline for k in p
                   if k.startswith("arm_reward_per_session_interval_")})
    a.plot(t, [p["reward_per_session"] for p in timeline], label="reward / session (cumulative)")
    if arms:  # each arm's sessions that ended in each interval
        for arm in arms:
            a.plot(t, [p.get(f"arm_reward_per_session_interval_{arm}", float("nan")) for p in timeline],
                   label=f"{arm} arm: reward / session (each interval)", alpha=0.7)
    else:
        a.plot(t, [p.get("reward_per_session_interval", 0.0) for p in timeline], label="reward / session (each interval)", alpha=0.6)
    a.plot(t, [p["ctr"] for p in timeline], label="CTR (cumulative)")
    a.set_xlabel("seconds")
    a.legend(fontsize=7)
    b.plot(t, [p["events_per_s"] for p in timeline], label="events/s sent", color="#616161")
    b2 = b.twinx()
    b2.step(t, [p.get("longterm_version", 0) for p in timeline], where="post", label="long-term model version", color="#2e7d32")
    b2.step(t, [p.get("myopic_version", 0) for p in timeline], where="post", label="myopic model version", color="#42a5f5")
    b.set_xlabel("seconds")
    b.legend(loc="upper left", fontsize=8)
    b2.legend(loc="lower right", fontsize=8)
    fig.suptitle("Live run through Kafka")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
