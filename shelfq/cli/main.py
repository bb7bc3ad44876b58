"""The ``shelfq`` command line: one command, a subcommand per job.

Every subcommand takes the shared connection options (``--bootstrap-servers``,
``--topic-prefix``, ``-X name=value``); the rest of the settings come from ``SHELFQ_*``
environment variables (see ``shelfq settings``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from confluent_kafka import KafkaException

from shelfq.contracts.errors import ConfigError, ShelfqError
from shelfq.contracts.events import DEFAULT_HISTORY_LENGTH, DEFAULT_REWARD_WEIGHTS
from shelfq.contracts.settings import Settings
from shelfq.contracts.topics import topic_specs
from shelfq.cli.signals import stop_on_signals
from shelfq.cli.dataclass_flags import add_fields, overrides

if TYPE_CHECKING:
    from shelfq.learner.config import LearnerConfig
    from shelfq.streams.config import StreamsConfig

#: The width of the MiniLM title vectors that ``--content`` turns on.
CONTENT_DIM = 384

EPILOG = """\
Settings come from SHELFQ_* environment variables (SHELFQ_PARTITIONS=6, SHELFQ_HOME=...);
Kafka client properties from SHELFQ_KAFKA_<NAME> (SHELFQ_KAFKA_SECURITY_PROTOCOL=SASL_SSL,
SHELFQ_KAFKA_SASL_USERNAME=...) or -X name=value. With SHELFQ_BOOTSTRAP_SERVERS set, shelfq
uses that cluster and never starts the embedded broker. `shelfq settings` prints what is in
effect, secrets hidden.
"""


def _kafka_property(text: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"expected name=value, got {text!r}")
    return name.strip(), value


def _common() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    group = common.add_argument_group("connection")
    group.add_argument("--bootstrap-servers", metavar="HOST:PORT", help="use this Kafka cluster (default: the embedded broker on 127.0.0.1:9092)")
    group.add_argument("--topic-prefix", metavar="PREFIX", help="prefix of every topic name (default: shelfq.)")
    group.add_argument("-X", dest="kafka", action="append", type=_kafka_property, default=[], metavar="NAME=VALUE", help="a librdkafka client property, e.g. -X security.protocol=SASL_SSL (repeatable)")
    return common


def build_parser() -> argparse.ArgumentParser:
    common = _common()
    parser = argparse.ArgumentParser(
        prog="shelfq",
        description="shelfq: a streaming reinforcement-learning recommender on Apache Kafka.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    broker = sub.add_parser("broker", help="run the embedded Apache Kafka broker (KRaft, no Docker)",
                            description="Manage the embedded single-node Apache Kafka broker. Its jars are resolved from Maven Central with mvn on first use; data and logs live under $SHELFQ_HOME/broker.")
    bsub = broker.add_subparsers(dest="action", required=True, metavar="ACTION")
    bsub.add_parser("start", parents=[common], help="start the broker in the background and wait until it serves (exit 0 if it already runs)")
    bsub.add_parser("stop", parents=[common], help="stop the broker cleanly (exit 0 if it was not running)")
    bsub.add_parser("status", parents=[common], help="say whether the broker runs and where (exit 0 running, 3 not running)")
    run = bsub.add_parser("run", parents=[common], help="run a command with the broker up, then stop it if this started it",
                          description="Start the broker unless it runs, run COMMAND, and stop the broker afterwards if this command started it, also when COMMAND fails. Exits with COMMAND's status.")
    run.add_argument("cmd", nargs=argparse.REMAINDER, metavar="-- COMMAND", help="the command to run")

    topics = sub.add_parser("topics", help="create or check the topics", description="Topics as code: every topic of the design with its partitions, replication and config.")
    tsub = topics.add_subparsers(dest="action", required=True, metavar="ACTION")
    create = tsub.add_parser("create", parents=[common], help="create missing topics and fix drifted configs",
                             description="Create every shelfq topic that is missing and set drifted configs (cleanup.policy, max.message.bytes). Partition counts and replication factors are reported, never changed. Exits 1 when drift remains.")
    create.add_argument("--check", action="store_true", help="change nothing; list every difference and exit 1 if there is any")

    streams = sub.add_parser("streams", parents=[common], help="run a streams worker: the join into transitions and user-state",
                             description="Run a Faust worker that joins slates, impressions and feedback into reward-labelled transitions and publishes each user's recent history to user-state. Workers sharing a topic prefix share the partitions. Every setting below reads its SHELFQ_JOIN_<NAME> or SHELFQ_STREAMS_<NAME> and the flag overrides it; the reward weights are a variable only: SHELFQ_JOIN_WEIGHTS (default "
                             + ",".join(f"{kind}={weight:g}" for kind, weight in DEFAULT_REWARD_WEIGHTS.items()) + ").")
    _streams_options(streams)
    streams.add_argument("--max-seconds", type=float, help="stop cleanly after this many seconds (default: run until SIGINT/SIGTERM)")
    streams.add_argument("--log-level", default="warning", choices=["debug", "info", "warning", "error"], help="log level (default warning)")

    learner = sub.add_parser("learner", parents=[common], help="run the online DQN learner: transitions in, models out",
                             description="Consume reward-labelled transitions, train a deep Q-network (GRU/LSTM/CNN sequence encoder over the user's recent items, dueling head, target network; by default SlateQ: the value of an item given a click, a choice model of which shown item gets the click, and the value of no click, so that slates are valued as a whole) and publish safetensors model versions to the models topic. Offsets are committed only after a checkpoint covers them, so kill -9 and restart lose nothing. Every hyperparameter reads SHELFQ_LEARNER_<NAME> (e.g. SHELFQ_LEARNER_GAMMA=0.9, SHELFQ_LEARNER_ENCODER=lstm, SHELFQ_LEARNER_REPLAY_CAPACITY=100000); the flags below override. Runs on CUDA when torch sees a GPU, else on the CPU.")
    _learner_options(learner)
    learner.add_argument("--max-seconds", type=float, help="stop cleanly (checkpoint, commit, publish) after this many seconds")
    learner.add_argument("--max-transitions", type=int, help="stop cleanly after consuming this many transitions")
    learner.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"], help="log level (default info)")

    agent = sub.add_parser("agent", parents=[common], help="run a scoring agent: requests in, explored and ranked slates out",
                           description="Answer each request with a slate: candidates from the request or the items cache, scored by the newest model on the models topic (hot-swapped, no restart), explored with epsilon-greedy or Boltzmann draws whose exact probabilities are logged in the slate. Until a model arrives, popularity from recent interactions answers, then random. Replicas with the same topic prefix share the partitions. Settings: SHELFQ_AGENT_<NAME> (POLICY, EXPLORATION, EPSILON, TEMPERATURE, DIVERSITY, MAX_CANDIDATES, DEADLINE_S, BATCH_SIZE, ...); the flags below override.")
    _agent_options(agent.add_argument_group("agent settings (default: SHELFQ_AGENT_*)"))
    agent.add_argument("--replica", type=int, default=0, help="this replica's number: offsets its random seed (default 0)")
    agent.add_argument("--max-seconds", type=float, help="stop cleanly after this many seconds")
    agent.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"], help="log level (default info)")

    bench = sub.add_parser("bench", help="benchmarks that print figures, with a same-run baseline",
                           description="Benchmarks: policy (learning, in the simulator) needs no broker; the others run on the real broker. Each prints its figures and a ratio against a baseline measured in the same run (these machines are noisy); --json prints one JSON object as the last line. With the default bootstrap and no broker running, the embedded broker is started and stopped afterwards.")
    bsub2 = bench.add_subparsers(dest="target", required=True, metavar="TARGET")
    bjoin = bsub2.add_parser("join", parents=[common], help="the streams join: events/s, emit latency, memory, vs. a plain consume-and-produce",
                             description="Load synthetic shoppers into fresh topics, copy them with a plain confluent-kafka consume-and-produce (the baseline), read them with a Faust agent that does nothing (Faust's own ceiling), then join them with a `shelfq streams` worker. Reports input_events_per_s, transitions_per_s, emit_latency_p50_ms, emit_latency_p99_ms, rss_mb, passthrough_events_per_s, ratio, faust_noop_events_per_s, ratio_to_faust_noop, the join's memory for 1,000,000 pending items, and join_core_us_per_event: the pure join's CPU time per input event on the same events, no Kafka (--core-only: just that, no broker).")
    from shelfq.bench.join import FLAG_RENAMES as JOIN_BENCH_RENAMES, JoinBenchConfig

    add_fields(bjoin.add_argument_group("benchmark settings"), JoinBenchConfig, renames=JOIN_BENCH_RENAMES)
    bjoin.add_argument("--json", action="store_true", help="print the figures as one JSON object on the last line")

    blearn = bsub2.add_parser("learner", parents=[common], help="the learner: transitions/s trained from Kafka vs. the in-memory ceiling",
                              description="Load synthetic join-shaped transitions (50 interactions per state) into a fresh topic, time the train step on in-memory batches (the ceiling, no Kafka), then run the real learner on the topic. Reports transitions_per_s (end to end, one batch of 256 per 256 transitions), steps_per_s, device, ceiling_transitions_per_s, ratio and startup_s (the consumer group's join, not in the rate).")
    from shelfq.bench.learner_config import LearnerBenchConfig

    add_fields(blearn.add_argument_group("benchmark settings"), LearnerBenchConfig)
    _learner_options(blearn)
    blearn.add_argument("--json", action="store_true", help="print the figures as one JSON object on the last line")

    bagent = bsub2.add_parser("agent", parents=[common], help="the agent: request-to-slate latency and throughput vs. a Kafka echo",
                              description="Publish 1,000 items and an untrained GRU model (SlateQ unless --objective item), start a `shelfq agent`, offer requests at a fixed rate (each scoring the whole catalog for a slate of 10), then a burst at saturation; time the same round trip through a plain consume-and-produce echo. Reports requests_per_s (answered at the offered rate), offered_requests_per_s, latency_p50_ms and latency_p99_ms (request produced to slate consumed), agent_p50_ms and agent_p99_ms (request time to slate produced, from the agent's own histogram), max_requests_per_s (the burst), kafka_rtt_p50_ms, kafka_rtt_p99_ms, p99_over_kafka_rtt_p99, mean_batch_size, candidates, slate_size, objective. The agent runs with a 3600 s deadline here so that the burst is answered, not skipped.")
    from shelfq.bench.agent_config import AgentBenchConfig
    from shelfq.learner.config import OBJECTIVES

    add_fields(bagent.add_argument_group("benchmark settings"), AgentBenchConfig, choices={"objective": OBJECTIVES})
    bagent.add_argument("--json", action="store_true", help="print the figures as one JSON object on the last line")

    from shelfq.evaluation.bench_config import PolicyBenchConfig

    from shelfq.bench.chaos import ChaosConfig

    bchaos = bsub2.add_parser("chaos", help="faults under steady load (kills, SIGSTOP, replicas, broker restarts, hostile messages): nothing lost?",
                              description="Start a private embedded broker (its own home, ports and topics; a running broker is never touched), a streams worker, a learner and an agent, and steady seeded synthetic load whose transitions and histories are known. Then, in a seeded order after seeded gaps, the faults: SIGKILL of each component (the learner once while it writes a checkpoint), a second worker and a second agent joining while the first is SIGSTOPped past its session timeout and leaving after SIGCONT, the learner SIGSTOPped, the broker restarted after SIGTERM and after SIGKILL, hostile messages on every topic a component reads. When the consumer lag is 0, it counts: transitions_missing (expected, not on the topic), transitions_repeated_differing (a repeat that is not the same transition), hostile_dead_letters_by_reason and _missing (each hostile message dead-lettered by each reader), requests_unanswered, model_versions_increasing (and every one loadable), user_histories_differing, hostile_crashes (a component exiting when not stopped) and each component's recovery time after each fault (restart to its first progress). Exit status 1 unless nothing is missing, nothing crashed and all recovered. See docs/chaos.md.")
    add_fields(bchaos.add_argument_group("chaos settings"), ChaosConfig)
    bchaos.add_argument("--json", action="store_true", help="print the figures as one JSON object on the last line")

    bpolicy = bsub2.add_parser("policy", help="the learning benchmark: long-term vs myopic vs popularity, in the simulator (no Kafka)",
                               description="Log sessions of simulated shoppers under uniform random slates, train a myopic (gamma 0) and a long-term learner of shelfq's own code on them with several training seeds, then let random, popularity, myopic and long-term serve the same shoppers greedily: returning shoppers (logged, with their histories) and new ones. Reports each policy's figures and the paired per-seed ratios long-term / myopic and long-term / popularity in reward per session, with Student-t 95% intervals over training and evaluation seeds together. Needs no broker. The defaults take about 15 minutes on 2 cores.")
    add_fields(bpolicy.add_argument_group("benchmark settings"), PolicyBenchConfig,
               only=("logged_sessions", "returning_users", "training_seeds", "eval_seeds", "eval_sessions", "steps", "gamma"))
    bpolicy.add_argument("--objective", choices=["slateq", "item"], help="the learners' objective (default slateq)")
    bpolicy.add_argument("--quick", action="store_true", help="tiny budgets (seconds): the smoke test's version")
    bpolicy.add_argument("--json", action="store_true", help="print the figures as one JSON object on the last line")

    breplay = bsub2.add_parser("replay", parents=[common], help="a shop's log through the real pipeline, predict then reveal: HR@10 and NDCG@10 vs popularity and a Markov chain",
                               description="Replay the positive events (clicks, add-to-carts, purchases) of a log in the `shelfq replay` formats, in time order, through fresh topics with a streams worker (5 s join window), a learner (its defaults) and an agent: for each event a request for its user (a slate of 10), then the reveal: the true item in the slate gives an impression of the slate and a click on it, otherwise an organic impression of the true item alone (inline state, propensity 1) and a click; each session ends with an exit. A popularity list, popularity without the user's own items and a first-order Markov chain predict the same events, predict then update. Reports HR@10 and NDCG@10 of each, overall and for the second half, and what the agent served. SHELFQ_* settings reach the components. See docs/replay.md.")
    from shelfq.bench.replay import EXPLORATIONS as REPLAY_EXPLORATIONS, ReplayBenchConfig
    from shelfq.frontend.replay import FORMATS

    breplay.add_argument("log", help="the log: *.csv, or *.jsonl / *.ndjson / *.json (docs/replay.md)")
    add_fields(breplay.add_argument_group("benchmark settings"), ReplayBenchConfig,
               choices={"exploration": REPLAY_EXPLORATIONS, "fmt": FORMATS}, renames={"fmt": "format"})
    breplay.add_argument("--json", action="store_true", help="print the figures as one JSON object on the last line")

    simulate = sub.add_parser("simulate", parents=[common], help="drive simulated shoppers through the real topics (a stand-in frontend)",
                              description="Publish the simulated catalog to items, then run shopper sessions against the running agent: each session sends requests, waits for slates (a random slate after --slate-timeout-s, counted), publishes impressions and feedback (click, add_to_cart, purchase, exit) and stops when the shopper exits. Shoppers have category interests and price sensitivity; bait items (high appeal, low quality) win clicks and shorten sessions. Seeded: the same --seed gives the same shoppers. Needs a running broker, the topics, and an agent and a streams worker to be useful.")
    from shelfq.simulator.runner import SimulateConfig

    # --seconds and --no-catalog are older than the fields' names.
    add_fields(simulate.add_argument_group("simulation settings"), SimulateConfig,
               renames={"duration_s": "seconds", "publish_catalog": "catalog"})
    simulate.add_argument("--json", action="store_true", help="print the totals as one JSON object on the last line")

    from shelfq.frontend.replay import CSV_HELP

    replay = sub.add_parser("replay", parents=[common], help="replay a file of logged impressions and feedback (CSV or JSONL) into the topics",
                            description="Send your own logged impressions and feedback through the join and the learner. The file is\nvalidated whole first: a bad line refuses it (up to 10 errors with line and field shown),\nnothing is sent. Then its events go to the impressions, feedback and items topics, keyed\nby user_id (item_id), in ts order. Needs a running broker and the topics.",
                            epilog=CSV_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    replay.add_argument("file", help="the log: *.csv, or *.jsonl / *.ndjson / *.json; - reads stdin (give --format)")
    replay.add_argument("--format", choices=FORMATS, help="the file's format (default: from its suffix)")
    replay.add_argument("--speed", type=float, default=0.0, help="1 keeps the original gaps between event times, 10 is ten times faster, 0 (default) as fast as possible")
    replay.add_argument("--rebase", action="store_true", help="move every ts by one constant, keeping the gaps, so the events are stamped as of now: the first event is now at --speed 1 (or slower); faster, the last is stamped when it is sent, so none lies ahead of the clock")
    replay.add_argument("--history-length", type=int, default=DEFAULT_HISTORY_LENGTH, metavar="N", help="interactions in the state built for an impression without one (default 50, as SHELFQ_JOIN_HISTORY_LENGTH)")
    replay.add_argument("--skip-bad", action="store_true", help="send the valid events of a file with bad lines; report the bad ones and their count")
    replay.add_argument("--dry-run", action="store_true", help="validate and count, send nothing")
    replay.add_argument("--json", action="store_true", help="print the summary as one JSON object on the last line")

    evaluate = sub.add_parser("evaluate", parents=[common], help="figures of the logged traffic, and off-policy estimates of a model's value",
                              description="Read reward-labelled transitions (the transitions topic from the beginning to its end offsets at the start, no consumer group, nothing committed; or a JSON-lines file with --file) and report the logging policy's figures, per policy and overall, each with a 95% interval: impressions (distinct request_id), transitions, CTR (transitions with a click), conversion (transitions with a purchase), reward and purchases per impression (revenue is not derivable: a transition carries no price), repeat rate (items the user's previous slate also showed), intra-list diversity (slate item pairs of different categories; needs the items topic) and catalog coverage. With --model POLICY, also estimate what the newest valid model keyed POLICY on the models topic, explored as the agent explores it, would earn per impression (the expected sum of immediate rewards of its slate): IPS, SNIPS and doubly robust, next to the logged value. The target chooses from the catalog on the items topic, or with --file from the items the log's slates showed. Transitions without a propensity are skipped for these estimates and counted. See docs/evaluation.md.")
    evaluate.add_argument("--file", type=Path, metavar="PATH", help="read transitions from this JSON-lines file (one transition per line) instead of the topic")
    evaluate.add_argument("--skip-bad", action="store_true", help="count bad lines of --file and go on (default: stop at the first, naming its line)")
    evaluate.add_argument("--limit", type=int, metavar="N", help="read at most N transitions")
    evaluate.add_argument("--model", metavar="POLICY", help="also estimate the value of the newest valid model keyed POLICY on the models topic (e.g. dqn)")
    _agent_options(evaluate.add_argument_group("the target's exploration (default: as the agent, SHELFQ_AGENT_*)"),
                   only=("exploration", "epsilon", "temperature", "max_candidates"))
    evaluate.add_argument("--json", action="store_true", help="print the figures as one JSON object on the last line")

    sub.add_parser("settings", parents=[common], help="print the settings in effect (secrets hidden)")

    demo = sub.add_parser("demo", parents=[common], help="the whole pipeline on simulated shoppers, then a report comparing policies",
                          description="Start the embedded broker unless one runs (or use SHELFQ_BOOTSTRAP_SERVERS), create topics under a prefix of this run's own, and run a streams worker, an agent serving an experiment of two arms (users split 50/50 by a stable hash of their id: longterm serves the long-term model, myopic the myopic one, both with epsilon-greedy exploration), two learners each training on its own arm's transitions (long-term: gamma 0.9; myopic: gamma 0), and the shopper simulator, for a bounded time with a progress line every 10 s. Then random, popularity, the myopic and the long-term DQN serve the same simulated shoppers over several seeds, returning shoppers with their live histories and new ones, and a report (markdown, JSON and PNG plots) compares reward per session, CTR, conversion, revenue, session length, diversity, coverage and the share of bait items shown with 95%% confidence intervals, beside each live arm's reward per session, CTR, conversion and revenue per session. Stops what it started; deletes this run's topics unless --keep-topics.")
    from shelfq.demo.run import DemoConfig

    add_fields(demo.add_argument_group("demo settings"), DemoConfig)
    demo.add_argument("--keep-broker", action="store_true", help="leave a broker this command started running")
    demo.add_argument("--json", action="store_true", help="print the comparison as one JSON object on the last line")

    from shelfq.cli.gate import add_parsers as add_gate_parsers

    add_gate_parsers(sub, bsub2, common)  # gate, models, bench gate
    return parser


def _learner_options(p: argparse.ArgumentParser) -> None:
    from shelfq.learner.config import ENCODERS, ENV_PREFIX, OBJECTIVES, LearnerConfig

    g = p.add_argument_group("learner settings (default: SHELFQ_LEARNER_*)")
    add_fields(g, LearnerConfig, choices={"encoder": ENCODERS, "objective": OBJECTIVES}, env_prefix=ENV_PREFIX)
    g.add_argument("--content", action="store_true", help=f"embed item titles with all-MiniLM-L6-v2 (needs the 'content' extra): "
                   f"--content-dim {CONTENT_DIM}")


def _learner_config(args: argparse.Namespace) -> LearnerConfig:
    from shelfq.learner.config import LearnerConfig

    given = overrides(args, LearnerConfig)
    if args.content:
        if "content_dim" in given:
            raise ConfigError(f"--content is --content-dim {CONTENT_DIM}: give one of them")
        given["content_dim"] = CONTENT_DIM
    return LearnerConfig.from_env(**given)


def _agent_options(group: argparse._ArgumentGroup, only: Sequence[str] | None = None) -> None:
    from shelfq.agents.config import ENV_PREFIX, EXCLUDE_SEEN, EXPLORATIONS, AgentConfig

    add_fields(group, AgentConfig, only, choices={"exploration": EXPLORATIONS, "exclude_seen": EXCLUDE_SEEN},
               env_prefix=ENV_PREFIX)


def _streams_options(p: argparse.ArgumentParser) -> None:
    from shelfq.streams.config import ENV_PREFIX, JOIN_ENV_PREFIX, StreamsConfig
    from shelfq.streams.join import JoinConfig

    # The join's weights are a mapping: no flag (add_fields skips it), SHELFQ_JOIN_WEIGHTS only.
    add_fields(p.add_argument_group("join settings (default: SHELFQ_JOIN_*)"), JoinConfig, env_prefix=JOIN_ENV_PREFIX)
    add_fields(p.add_argument_group("worker settings (default: SHELFQ_STREAMS_*)"), StreamsConfig, env_prefix=ENV_PREFIX)


def _streams_config(args: argparse.Namespace) -> StreamsConfig:
    """The worker's settings: each flag over its variable over the default, the join's too."""
    from shelfq.streams.config import StreamsConfig, join_from_env
    from shelfq.streams.join import JoinConfig

    return StreamsConfig.from_env(join=join_from_env(**overrides(args, JoinConfig)), **overrides(args, StreamsConfig))


def settings_from_args(args: argparse.Namespace) -> Settings:
    return Settings.from_env(
        bootstrap_servers=getattr(args, "bootstrap_servers", None),
        topic_prefix=getattr(args, "topic_prefix", None),
        kafka=dict(getattr(args, "kafka", None) or []),
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # Client libraries (librdkafka through "shelfq.kafka") log warnings; say whose they are.
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        settings = settings_from_args(args)
        return COMMANDS[args.command](args, settings)
    except ConfigError as exc:
        print(f"shelfq: bad setting: {exc}", file=sys.stderr)
        return 2
    except ShelfqError as exc:
        print(f"shelfq: error: {exc}", file=sys.stderr)
        return 1
    except KafkaException as exc:
        print(f"shelfq: error: Kafka: {exc.args[0].str() if exc.args else exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader went (`shelfq ... | head`): as a Unix tool does, stop quietly. stdout goes
        # to /dev/null so that the interpreter's own flush at exit does not fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141


def cmd_broker(args: argparse.Namespace, settings: Settings) -> int:
    if settings.external_cluster:
        print(f"using the existing cluster at {settings.bootstrap_servers} (SHELFQ_BOOTSTRAP_SERVERS); no local broker is involved")
        if args.action == "run":
            return _run_command(args.cmd)
        return 0
    from shelfq.ops.broker import EmbeddedBroker

    broker = EmbeddedBroker(settings)
    if args.action == "start":
        started = broker.start()
        print(("started: " if started else "already running: ") + broker.status().describe())
        return 0
    if args.action == "stop":
        print("stopped" if broker.stop() else "not running")
        return 0
    if args.action == "status":
        status = broker.status()
        print(status.describe())
        return 0 if status.running else 3
    started = broker.start()
    # SIGTERM (a CI timeout, a supervisor) must still stop the broker this command started.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    try:
        return _run_command(args.cmd)
    finally:
        if started:
            broker.stop()


def _run_command(cmd: list[str]) -> int:
    if cmd and cmd[0] == "--":
        cmd = cmd[1:]
    if not cmd:
        raise ConfigError("broker run: give the command to run after --")
    return subprocess.call(cmd)


def cmd_topics(args: argparse.Namespace, settings: Settings) -> int:
    from shelfq.ops.topic_admin import check_topics, ensure_topics

    if args.check:
        drift = check_topics(settings)
        for line in drift:
            print(f"drift  {line}")
        if not drift:
            print(f"ok: all {len(topic_specs(settings))} topics match their definitions")
        return 1 if drift else 0
    report = ensure_topics(settings)
    for line in report.lines():
        print(line)
    if report.drift:
        print("drift remains: partition counts and replication factors are never changed in place", file=sys.stderr)
        return 1
    print(f"ok: all {len(topic_specs(settings))} topics exist as defined")
    return 0


def cmd_streams(args: argparse.Namespace, settings: Settings) -> int:
    from shelfq.streams.app import run_worker

    config = _streams_config(args)
    run_worker(settings, config, max_seconds=args.max_seconds, log_level=args.log_level)
    return 0


def cmd_learner(args: argparse.Namespace, settings: Settings) -> int:
    from shelfq.learner.service import Learner

    logging.getLogger("shelfq").setLevel(args.log_level.upper())
    config = _learner_config(args)
    stop = stop_on_signals()
    learner = Learner(settings, config)
    if config.metrics_port:
        learner.metrics.serve(config.metrics_port, config.metrics_addr)
    print(f"learner: policy {config.policy}, gamma {config.gamma}, {config.encoder} encoder on {learner.dqn.device}, "
          f"step {learner.dqn.step}, next model version {learner.version + 1}", file=sys.stderr)
    try:
        stats = learner.run(max_seconds=args.max_seconds, max_transitions=args.max_transitions, stop=stop)
    finally:
        learner.close()
    print(f"learner: consumed {stats.consumed} transitions ({stats.duplicates} repeats), {stats.steps} steps, "
          f"published {stats.published} models, now version {learner.version}", file=sys.stderr)
    return 0


def cmd_agent(args: argparse.Namespace, settings: Settings) -> int:
    from shelfq.agents.config import AgentConfig
    from shelfq.agents.service import Agent

    logging.getLogger("shelfq").setLevel(args.log_level.upper())
    config = AgentConfig.from_env(**overrides(args, AgentConfig))
    stop = stop_on_signals()
    agent = Agent(settings, config, replica=args.replica)
    if config.metrics_port:
        agent.metrics.serve(config.metrics_port, config.metrics_addr)
    print(f"agent: serving policy {config.policy} with {config.exploration} exploration (replica {args.replica})",
          file=sys.stderr)
    try:
        stats = agent.run(max_seconds=args.max_seconds, stop=stop)
    finally:
        agent.close()
    print(f"agent: answered {stats.answered} requests, skipped {stats.skipped} past the deadline", file=sys.stderr)
    return 0


def cmd_bench(args: argparse.Namespace, settings: Settings) -> int:
    log = lambda line: print(line, file=sys.stderr)  # noqa: E731 - progress goes to stderr
    if args.target == "gate":
        from shelfq.cli.gate import cmd_bench_gate

        return cmd_bench_gate(args, settings, log)
    if args.target == "policy":
        return _bench_policy(args, log)
    if args.target == "chaos":  # its own private broker: never the one of the settings
        from shelfq.bench.chaos import ChaosConfig, main as bench_chaos

        try:
            chaos = ChaosConfig(**overrides(args, ChaosConfig))
        except ValueError as exc:
            raise ConfigError(f"bench chaos: {exc}") from None
        return bench_chaos(chaos, args.json, log)
    if args.target == "replay":
        from shelfq.bench.replay import ReplayBenchConfig, lines, run_bench as bench_replay

        config = ReplayBenchConfig(**overrides(args, ReplayBenchConfig))
        with _broker_for(settings):
            figures = bench_replay(settings, args.log, config, report=log)
        print("\n".join(lines(figures)))
        if args.json:
            print(json.dumps(figures))
        return 0
    if args.target == "agent":
        from shelfq.bench.agent import run_bench as bench_agent
        from shelfq.bench.agent_config import AgentBenchConfig

        agent = AgentBenchConfig(**overrides(args, AgentBenchConfig))
        with _broker_for(settings):
            result = bench_agent(settings, agent.rate, agent.seconds, agent.burst, report=log, objective=agent.objective)
    elif args.target == "learner":
        from shelfq.bench.learner import run_bench as bench_learner
        from shelfq.bench.learner_config import LearnerBenchConfig

        learner = LearnerBenchConfig(**overrides(args, LearnerBenchConfig))
        with _broker_for(settings):
            result = bench_learner(settings, learner.transitions, _learner_config(args), report=log)
    else:
        from shelfq.bench.join import JoinBenchConfig, run_bench

        join = JoinBenchConfig(**overrides(args, JoinBenchConfig))
        if join.core_only:
            from shelfq.bench.join import run_core

            result = run_core(join.events, settings.partitions, window_s=join.window_s, report=log)
        else:
            with _broker_for(settings):
                result = run_bench(settings, join.events, window_s=join.window_s, report=log, half_load_s=join.half_load_s,
                                   workers=join.workers)
                if join.light_rate is not None:
                    from shelfq.bench.join import measure_light_load

                    result.update(measure_light_load(settings, join.light_rate, report=log))
    width = max(map(len, result))
    for key, value in result.items():
        print(f"{key:<{width}}  {value}")
    if args.json:
        print(json.dumps(result))
    return 0


def _bench_policy(args: argparse.Namespace, log: Callable[[str], None]) -> int:
    """``bench policy`` needs no broker: the simulator and the learner's code only."""
    import dataclasses

    import torch

    from shelfq.evaluation.bench_config import PolicyBenchConfig
    from shelfq.evaluation.benchmark import run_bench

    base = PolicyBenchConfig.quick() if args.quick else PolicyBenchConfig()
    try:
        learner = base.learner if args.objective is None else dataclasses.replace(base.learner, objective=args.objective)
        config = dataclasses.replace(base, learner=learner, **overrides(args, PolicyBenchConfig))
    except ValueError as exc:
        raise ConfigError(f"bench policy: {exc}") from None
    # As the learner: one torch thread per core but one (the simulator and the encoder passes
    # of evaluation take the other).
    torch.set_num_threads(config.learner.threads or max(1, (os.cpu_count() or 2) - 1))
    result = run_bench(config, report=log)
    for group in ("returning", "new"):
        for name in ("longterm_vs_myopic", "longterm_vs_popularity"):
            figure = result[group][name]
            print(f"{group:<9}  {name:<22}  {figure['ratio']:.3f}  [{figure['ci95'][0]:.3f}, {figure['ci95'][1]:.3f}]")
        for policy, row in result[group]["policies"].items():
            lo, hi = row["ci95"]["reward_per_session"]
            print(f"{group:<9}  {policy:<22}  {row['reward_per_session']:.3f}  [{lo:.3f}, {hi:.3f}] reward/session")
    if args.json:
        print(json.dumps(result))
    return 0


@contextlib.contextmanager
def _broker_for(settings: Settings, keep: bool = False) -> Iterator[None]:
    """The embedded broker for the duration of a command, unless an external cluster is set or
    a broker already runs (then it is left as it is); ``keep`` leaves a started one running."""
    broker = None
    if not settings.external_cluster:
        from shelfq.ops.broker import EmbeddedBroker

        broker = EmbeddedBroker(settings)
        if broker.start():
            print("started the embedded Apache Kafka broker for this command", file=sys.stderr)
        else:
            broker = None
    try:
        yield
    finally:
        if broker is not None and not keep:
            broker.stop()
            print("stopped the embedded broker this command started", file=sys.stderr)


def cmd_simulate(args: argparse.Namespace, settings: Settings) -> int:
    import asyncio

    from shelfq.simulator.runner import SimulateConfig, Simulation

    config = SimulateConfig(**overrides(args, SimulateConfig))
    sim = Simulation(settings, config)
    if config.metrics_port:
        try:
            sim.metrics.serve(config.metrics_port)
        except OSError as exc:
            raise ConfigError(f"simulate: cannot serve /metrics on port {config.metrics_port} ({exc.strerror}); "
                              "pick another with --metrics-port, or 0 for none") from None
    stats = asyncio.run(sim.run())
    summary = stats.summary()
    print(f"simulate: {summary['sessions']} sessions, {summary['requests']} requests ({summary['slate_timeouts']} answered by "
          f"timeout), CTR {summary['ctr']:.3f}, reward per session {summary['reward_per_session']:.2f}, "
          f"{summary['purchases']} purchases", file=sys.stderr)
    if args.json:
        print(json.dumps(summary, sort_keys=True))
    return 0


def cmd_replay(args: argparse.Namespace, settings: Settings) -> int:
    from shelfq.frontend.replay import replay

    summary = replay(settings, args.file, fmt=args.format, speed=args.speed, rebase=args.rebase, history_length=args.history_length,
                     skip_bad=args.skip_bad, dry_run=args.dry_run, report=lambda line: print(line, file=sys.stderr))
    print("\n".join(summary.lines()))
    if args.json:
        print(json.dumps(summary.as_dict()))
    return 0


def cmd_evaluate(args: argparse.Namespace, settings: Settings) -> int:
    from shelfq.agents.config import AgentConfig
    from shelfq.agents.policies import Explorer
    from shelfq.evaluation.report import Options, evaluate, format_report

    if args.limit is not None and args.limit < 1:
        raise ConfigError(f"evaluate: --limit must be >= 1, got {args.limit}")
    target = AgentConfig.from_env(**overrides(args, AgentConfig))
    options = Options(args.file, args.skip_bad, args.limit, args.model,
                      Explorer(target.exploration, target.epsilon, target.temperature), target.max_candidates)
    result = evaluate(settings, options, progress=lambda line: print(line, file=sys.stderr))
    print(format_report(result))
    if args.json:
        print(json.dumps(result))
    return 0


def cmd_settings(args: argparse.Namespace, settings: Settings) -> int:
    print(json.dumps(settings.redacted(), indent=2, sort_keys=True))
    return 0


def cmd_demo(args: argparse.Namespace, settings: Settings) -> int:
    from shelfq.demo.run import DemoConfig, run_demo

    config = DemoConfig(**overrides(args, DemoConfig))
    if not settings.external_cluster:
        print("(the first start of the embedded broker resolves its jars with Maven)", file=sys.stderr)
    with _broker_for(settings, keep=args.keep_broker):
        result = run_demo(settings, config, say=lambda line: print(line, flush=True))
    from shelfq.demo.report import markdown

    print()
    print(markdown(result).split("![")[0].rstrip())
    if args.json:
        print(json.dumps({k: result[k] for k in ("policies", "comparison", "targets", "live", "model_versions", "settings")},
                         sort_keys=True))
    return 0


def cmd_gate(args: argparse.Namespace, settings: Settings) -> int:
    from shelfq.cli.gate import cmd_gate as run

    return run(args, settings)


def cmd_models(args: argparse.Namespace, settings: Settings) -> int:
    from shelfq.cli.gate import cmd_models as run

    return run(args, settings)


COMMANDS = {"gate": cmd_gate, "models": cmd_models, "broker": cmd_broker, "topics": cmd_topics, "streams": cmd_streams, "learner": cmd_learner, "agent": cmd_agent, "bench": cmd_bench,
            "settings": cmd_settings, "evaluate": cmd_evaluate, "simulate": cmd_simulate, "demo": cmd_demo, "replay": cmd_replay}


if __name__ == "__main__":
    sys.exit(main())
