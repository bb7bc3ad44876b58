"""The command line of the model lifecycle: ``shelfq gate``, ``shelfq models`` and ``shelfq bench
gate`` (their parsers and commands; ``shelfq.cli.main`` hooks them in)."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable
from typing import Any

from shelfq.contracts.errors import ConfigError
from shelfq.contracts.settings import Settings
from shelfq.cli.signals import stop_on_signals


def add_parsers(sub: Any, bench: Any, common: argparse.ArgumentParser) -> None:
    from shelfq.evaluation.gate.config import ENV_PREFIX, EXPLORATIONS, GateConfig
    from shelfq.bench.gate_config import GateBenchConfig
    from shelfq.cli.dataclass_flags import add_fields

    gate = sub.add_parser("gate", parents=[common], help="the model gate: judge new model versions in shadow, promote, hold, roll back",
                          description="Judge every new model version of the policies before it serves: estimate its value off-policy (SNIPS and DR with 95%% intervals) on the most recent logged transitions, next to the serving version's on the same window; promote it when its lower bound clears the serving estimate minus the margin, hold it back otherwise; roll a serving version back to the last good one when its live reward stays below its estimate's interval. Every decision goes to the compacted model-decisions topic, which every agent follows. Settings: SHELFQ_GATE_<NAME>; see docs/agents.md.")
    add_fields(gate.add_argument_group("gate settings (default: SHELFQ_GATE_*)"), GateConfig,
               choices={"exploration": EXPLORATIONS}, env_prefix=ENV_PREFIX)
    gate.add_argument("--max-seconds", type=float, help="stop after this many seconds")
    gate.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"], help="log level (default info)")

    models = sub.add_parser("models", help="a policy's model versions: list them, promote or roll back by hand",
                            description="list: every version of the policy on the models topic, whether it loads, its status (serving, retired, held, rolled_back, shadow, skipped) and the gate's estimates. promote VERSION: serve that version (refused unless it is on the topic and loads; a version the gate held or rolled back needs --force). rollback: the serving version is rolled back to the last good one. Written to model-decisions, which every agent follows.")
    msub = models.add_subparsers(dest="action", required=True, metavar="ACTION")
    for name, text in (("list", "the versions with their status and estimates"), ("promote", "serve VERSION"),
                       ("rollback", "roll the serving version back to the last good one")):
        p = msub.add_parser(name, parents=[common], help=text)
        p.add_argument("--policy", default="dqn", help="the policy key on the models topic (default dqn)")
        if name == "promote":
            p.add_argument("version", type=int, help="the version to serve")
            p.add_argument("--force", action="store_true", help="promote a version the gate held or rolled back (the loader's checks still apply)")
        p.add_argument("--json", action="store_true", help="print the result as one JSON object on the last line")

    bgate = bench.add_parser("gate", help="the model gate in the simulator: a bad model never promoted, a good one promoted how soon",
                             description="In-process (no Kafka): simulated shoppers served by the agent's policy code, the gate's own judgement. A first model serves; a deliberately bad one (trained on negated rewards) is published mid-run, then a good one. Reports bad_model_promoted, good_model_promoted_after_s and _after_impressions, each decision with its figures, and each version's true reward per impression and per session. About three minutes on 2 cores.")
    add_fields(bgate.add_argument_group("benchmark settings"), GateBenchConfig,
               only=("logged_sessions", "first_steps", "good_steps", "temperature", "bad_after_sessions", "max_sessions", "seed"))
    bgate.add_argument("--json", action="store_true", help="print the figures as one JSON object on the last line")


def cmd_gate(args: argparse.Namespace, settings: Settings) -> int:
    from shelfq.evaluation.gate.config import GateConfig
    from shelfq.evaluation.gate.service import Gate
    from shelfq.cli.dataclass_flags import overrides

    logging.getLogger("shelfq").setLevel(args.log_level.upper())
    config = GateConfig.from_env(**overrides(args, GateConfig))  # --metrics-port among them
    stop = stop_on_signals()
    gate = Gate(settings, config)
    if config.metrics_port:
        gate.metrics.serve(config.metrics_port, config.metrics_addr)
    print(f"gate: judging {', '.join(config.policy_keys())} every {config.interval_s:g} s on {config.window} impressions "
          f"(margin {config.margin:.0%}, {config.positions or 'all'} positions)", file=sys.stderr)
    try:
        written = gate.run(max_seconds=args.max_seconds, stop=stop)
    finally:
        gate.close()
    print(f"gate: wrote {written} decisions", file=sys.stderr)
    return 0


def cmd_models(args: argparse.Namespace, settings: Settings) -> int:
    from shelfq.cli import models as models_cli

    say: Callable[[str], None] = lambda line: print(line, file=sys.stderr if args.json else sys.stdout)  # noqa: E731
    if args.action == "list":
        result = models_cli.listing(settings, args.policy)
        print(models_cli.format_listing(result), file=sys.stderr if args.json else sys.stdout)
    elif args.action == "promote":
        result = _decision(models_cli.promote(settings, args.policy, args.version, args.force, say=say))
    else:
        result = _decision(models_cli.rollback(settings, args.policy, say=say))
    if args.json:
        print(json.dumps(result))
    return 0


def _decision(decision: Any) -> dict[str, Any]:
    import msgspec

    return msgspec.to_builtins(decision)


def cmd_bench_gate(args: argparse.Namespace, settings: Settings, log: Callable[[str], None]) -> int:
    import dataclasses

    import torch

    from shelfq.bench.gate import GateBenchConfig, run_bench
    from shelfq.cli.dataclass_flags import overrides

    try:
        config = dataclasses.replace(GateBenchConfig(), **overrides(args, GateBenchConfig))
    except ValueError as exc:
        raise ConfigError(f"bench gate: {exc}") from None
    torch.set_num_threads(1)
    result = run_bench(config, report=log)
    for key in ("bad_model_promoted", "good_model_promoted_after_s", "good_model_promoted_after_impressions",
                "bad_model_decision", "live_sessions", "seconds"):
        print(f"{key:<40}  {result[key]}")
    for version, figures in result["true"].items():
        print(f"{'true ' + version:<40}  {figures['reward_per_impression']:.3f} per impression, "
              f"{figures['reward_per_session']:.2f} per session")
    if args.json:
        print(json.dumps(result))
    return 0
