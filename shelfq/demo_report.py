"""The demo's report: ``report.md``, ``report.json`` and two PNG plots in one directory.

>>> fmt({"mean": 2.5, "ci95": [2.25, 2.75]})
'2.500 [2.250, 2.750]'
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from evaluation.offline import METRICS

LABELS = {"reward_per_session": "reward / session", "ctr": "CTR", "conversion": "conversion",
          "revenue_per_session": "revenue / session", "session_length": "session length (slates)",
          "intra_list_diversity": "intra-list diversity", "catalog_coverage": "catalog coverage",
          "bait_share": "bait share of shown items"}
ORDER = ("random", "popularity", "myopic_dqn", "longterm_dqn")


def fmt(cell: dict[str, Any]) -> str:
    lo, hi = cell["ci95"]
    return f"{cell['mean']:.3f} [{lo:.3f}, {hi:.3f}]"


def targets(policies: dict[str, Any]) -> dict[str, Any]:
    """The issue's targets: long-term >= 1.2x myopic and >= 2x random in reward per session,
    with 95% intervals that do not overlap."""
    out: dict[str, Any] = {}
    long = policies.get("longterm_dqn", {}).get("reward_per_session")
    for other, factor in (("myopic_dqn", 1.2), ("random", 2.0)):
        base = policies.get(other, {}).get("reward_per_session")
        if long is None or base is None or base["mean"] <= 0:
            continue
        ratio = long["mean"] / base["mean"]
        separate = long["ci95"][0] > base["ci95"][1]
        out[f"longterm_vs_{other.removesuffix('_dqn')}"] = {"ratio": round(ratio, 3), "target": factor,
                                                           "intervals_separate": separate,
                                                           "met": ratio >= factor and separate}
    return out


def write_report(result: dict[str, Any], timeline: list[dict[str, float]], directory: Path) -> tuple[Path, Path]:
    """Write the report files; returns (report.md, report.json)."""
    directory.mkdir(parents=True, exist_ok=True)
    result["targets"] = targets(result["policies"])
    _plot_comparison(result["policies"], directory / "comparison.png")
    _plot_live(timeline, directory / "live.png")
    md, js = directory / "report.md", directory / "report.json"
    md.write_text(markdown(result))
    js.write_text(json.dumps({**result, "timeline": timeline}, indent=2, sort_keys=True) + "\n")
    return md, js


def markdown(result: dict[str, Any]) -> str:
    s, live, policies = result["settings"], result["live"], result["policies"]
    names = [n for n in ORDER if n in policies]
    lines = [
        f"# shelfq demo report ({s['run']})",
        "",
        f"Live pipeline: {live['seconds']:.0f} s of simulated traffic through Kafka (streams, two learners, agent): "
        f"{live.get('sessions', 0)} sessions, {live.get('requests', 0)} requests ({live.get('slate_timeouts', 0)} answered by "
        f"timeout), {live['transitions']} transitions, CTR {live.get('ctr', 0):.3f}, reward per session "
        f"{live.get('reward_per_session', 0):.2f}. Final model versions: "
        + ", ".join(f"{k} v{v}" for k, v in sorted(live.get("model_versions", {}).items())) + ".",
        "",
        f"Comparison: each policy serves the same simulated shoppers, {s['seeds']} seeds x {s['sessions_per_seed']} "
        "sessions, greedy slates (no exploration); mean over seeds with a Student-t 95% interval. Popularity ranks by "
        "the live run's reward-weighted interactions (what the agent's fallback knew at the end). The DQN models are "
        f"the newest each learner published (gamma {s['gamma']} and 0), trained side by side on the same transitions "
        f"logged by the agent (epsilon {s['epsilon']}).",
        "",
        "| metric | " + " | ".join(names) + " |",
        "|---|" + "---|" * len(names),
    ]
    for metric in METRICS:
        lines.append(f"| {LABELS[metric]} | " + " | ".join(fmt(policies[n][metric]) for n in names) + " |")
    lines += ["", "Targets (reward per session):", ""]
    for name, t in result.get("targets", {}).items():
        lines.append(f"- {name.replace('_', ' ')}: {t['ratio']:.2f}x (target {t['target']}x), intervals "
                     f"{'separate' if t['intervals_separate'] else 'overlap'}: **{'met' if t['met'] else 'not met'}**")
    lines += ["", "![policy comparison](comparison.png)", "", "![live run](live.png)", ""]
    return "\n".join(lines)


def _plot_comparison(policies: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    names = [n for n in ORDER if n in policies]
    shown = ("reward_per_session", "ctr", "session_length", "revenue_per_session", "conversion", "intra_list_diversity")
    fig, axes = plt.subplots(2, 3, figsize=(12, 6.5))
    for ax, metric in zip(axes.flat, shown):
        means = [policies[n][metric]["mean"] for n in names]
        errs = [[m - policies[n][metric]["ci95"][0] for n, m in zip(names, means)],
                [policies[n][metric]["ci95"][1] - m for n, m in zip(names, means)]]
        ax.bar(range(len(names)), means, yerr=errs, capsize=4, color=["#9e9e9e", "#8d6e63", "#42a5f5", "#2e7d32"][: len(names)])
        ax.set_xticks(range(len(names)), [n.replace("_", "\n") for n in names], fontsize=8)
        ax.set_title(LABELS[metric], fontsize=10)
    fig.suptitle("Policies on the same simulated shoppers (mean, 95% CI over seeds)")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _plot_live(timeline: list[dict[str, float]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(12, 3.5))
    t = [p["t"] for p in timeline]
    a.plot(t, [p["reward_per_session"] for p in timeline], label="reward / session (cumulative)")
    a.plot(t, [p.get("reward_per_session_interval", 0.0) for p in timeline], label="reward / session (each interval)", alpha=0.6)
    a.plot(t, [p["ctr"] for p in timeline], label="CTR (cumulative)")
    a.set_xlabel("seconds")
    a.legend(fontsize=8)
    b.plot(t, [p["events_per_s"] for p in timeline], label="events/s sent", color="#616161")
    b2 = b.twinx()
    b2.step(t, [p.get("longterm_version", 0) for p in timeline], where="post", label="long-term model version", color="#2e7d32")
    b.set_xlabel("seconds")
    b.legend(loc="upper left", fontsize=8)
    b2.legend(loc="lower right", fontsize=8)
    fig.suptitle("Live run through Kafka")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
