"""Every subcommand has a --help that explains it; usage errors are precise."""

from __future__ import annotations

import pytest

from shelfq.cli.main import build_parser, main

COMMANDS = [
    ["broker", "start"], ["broker", "stop"], ["broker", "status"], ["broker", "run"],
    ["topics", "create"], ["streams"], ["learner"], ["agent"], ["bench", "join"], ["bench", "learner"],
    ["bench", "agent"], ["bench", "policy"], ["bench"], ["settings"], ["demo"], ["simulate"], ["replay"], ["evaluate"], ["broker"], ["topics"], [],
]


@pytest.mark.parametrize("argv", COMMANDS, ids=lambda a: " ".join(a) or "shelfq")
def test_help_exits_zero_and_explains(argv: list[str], capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as info:
        main([*argv, "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: shelfq")
    if (len(argv) == 2 and argv != ["bench", "policy"]) or argv in (["settings"], ["demo"], ["simulate"], ["replay"], ["evaluate"], ["streams"], ["learner"], ["agent"]):
        assert "--bootstrap-servers" in out and "-X NAME=VALUE" in out


def test_help_lists_every_command() -> None:
    text = build_parser().format_help()
    for command in ("broker", "topics", "streams", "learner", "agent", "bench", "settings", "demo", "simulate", "replay",
                    "evaluate"):
        assert command in text


def test_malformed_kafka_property_is_a_usage_error(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as info:
        main(["settings", "-X", "no-equals-sign"])
    assert info.value.code == 2
    assert "expected name=value" in capsys.readouterr().err


def test_bad_setting_exits_2_with_the_reason(capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SHELFQ_PARTITIONS", "lots")
    assert main(["settings"]) == 2
    assert "SHELFQ_PARTITIONS: expected int" in capsys.readouterr().err


def test_broker_run_without_a_command_is_refused(capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SHELFQ_BOOTSTRAP_SERVERS", "127.0.0.1:1")
    assert main(["broker", "run"]) == 2
    assert "give the command" in capsys.readouterr().err


def test_an_impossible_learner_setting_exits_2_with_the_reason(capsys: pytest.CaptureFixture,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SHELFQ_LEARNER_GAMMA", "1.5")
    assert main(["learner"]) == 2
    assert "gamma must be in [0, 1)" in capsys.readouterr().err


def test_an_impossible_agent_setting_exits_2_with_the_reason(capsys: pytest.CaptureFixture,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SHELFQ_AGENT_EPSILON", "2")
    assert main(["agent"]) == 2
    assert "epsilon must be in [0, 1]" in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["demo", "--seeds", "1"], "seeds must be >= 2"),
    (["demo", "--minutes", "0.1"], "minutes must be >= 0.5"),
    (["simulate", "--sessions", "0", "--seconds", "0"], "would never stop"),
])
def test_impossible_demo_and_simulate_settings_are_refused(argv: list[str], message: str, capsys: pytest.CaptureFixture) -> None:
    assert main(argv) == 2
    assert message in capsys.readouterr().err


# -- flags generated from the settings dataclasses (shelfq.cli.dataclass_flags) ----------------

def _settings_commands() -> list[tuple[list[str], type, str | None, tuple[str, ...] | None]]:
    """(command, its settings, their environment prefix, the fields it has flags for: None = all)."""
    from shelfq.agents.config import AgentConfig
    from shelfq.bench.agent_config import AgentBenchConfig
    from shelfq.bench.join import JoinBenchConfig
    from shelfq.bench.learner_config import LearnerBenchConfig
    from shelfq.bench.replay import ReplayBenchConfig
    from shelfq.demo.run import DemoConfig
    from shelfq.evaluation.gate.config import GateConfig
    from shelfq.learner.config import LearnerConfig
    from shelfq.simulator.runner import SimulateConfig
    from shelfq.streams.config import StreamsConfig
    from shelfq.streams.join import JoinConfig

    return [(["simulate"], SimulateConfig, None, None), (["demo"], DemoConfig, None, None),(["learner"], LearnerConfig, "SHELFQ_LEARNER_", None), (["bench", "learner"], LearnerConfig, "SHELFQ_LEARNER_", None),
            (["agent"], AgentConfig, "SHELFQ_AGENT_", None), (["streams"], StreamsConfig, "SHELFQ_STREAMS_", None),
            (["streams"], JoinConfig, "SHELFQ_JOIN_", None), (["bench", "join"], JoinBenchConfig, None, None),
            (["bench", "learner"], LearnerBenchConfig, None, None), (["bench", "agent"], AgentBenchConfig, None, None),
            (["gate"], GateConfig, "SHELFQ_GATE_", None), (["bench", "replay"], ReplayBenchConfig, None, None),
            (["evaluate"], AgentConfig, "SHELFQ_AGENT_", ("exploration", "epsilon", "temperature", "max_candidates"))]


#: Flags older than the fields they set, by settings class (as main.py passes them to add_fields).
RENAMES = {"ReplayBenchConfig": {"fmt": "format"}, "SimulateConfig": {"duration_s": "seconds", "publish_catalog": "catalog"},
           "JoinBenchConfig": {"window_s": "window"}}


@pytest.mark.parametrize("argv, cls, env_prefix, only", _settings_commands(),
                         ids=lambda v: " ".join(v) if isinstance(v, list) else v.__name__ if isinstance(v, type) else "")
def test_every_settings_field_has_a_flag_whose_help_is_its_docstring_default_and_variable(
        argv: list[str], cls: type, env_prefix: str | None, only: tuple[str, ...] | None,
        capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    from shelfq.cli.dataclass_flags import field_docs, flag_fields, flag_help, flag_name

    monkeypatch.setenv("COLUMNS", "10000")  # one line per flag: the help as written, unwrapped
    with pytest.raises(SystemExit):
        main([*argv, "--help"])
    lines = capsys.readouterr().out.splitlines()
    fields = flag_fields(cls) if only is None else only
    assert fields and all(name in field_docs(cls) for name in fields)  # every field documented
    for name in fields:
        flag = flag_name(name, RENAMES.get(cls.__name__))
        at = next((i for i, line in enumerate(lines) if line.strip().split(" ")[0] in (flag, flag + ",")), None)
        assert at is not None, f"{' '.join(argv)}: no {flag}"
        # A long flag's help starts on the line below it (argparse's help column).
        block = lines[at] + (lines[at + 1] if at + 1 < len(lines) and lines[at + 1].startswith(" " * 10) else "")
        text = flag_help(cls, name, env_prefix)
        assert block.rstrip().endswith(text), block
        assert field_docs(cls)[name] in text and "(default " in text
        assert env_prefix is None or f"; {env_prefix}{name.upper()})" in text


def test_generated_help_says_the_default_and_the_variable() -> None:
    from shelfq.cli.dataclass_flags import flag_help
    from shelfq.learner.config import LearnerConfig

    assert flag_help(LearnerConfig, "gamma", "SHELFQ_LEARNER_") == (
        "Discount; 0 gives the myopic click-greedy baseline with the same code. (default 0.9; SHELFQ_LEARNER_GAMMA)")


@pytest.mark.parametrize("argv", [
    # The flags each command had before they were generated: same names, same meaning.
    ["learner", "--gamma", "0", "--objective", "item", "--encoder", "lstm", "--policy", "p", "--batch-size", "8",
     "--device", "cpu", "--checkpoint-dir", "/tmp/x", "--content", "--metrics-port", "0", "--max-seconds", "1",
     "--max-transitions", "1", "--log-level", "debug"],
    ["bench", "learner", "--transitions", "1000", "--gamma", "0", "--objective", "item", "--encoder", "cnn", "--policy", "p",
     "--batch-size", "8", "--device", "cpu", "--checkpoint-dir", "/tmp/x", "--content", "--json"],
    ["bench", "join", "--events", "1000", "--window", "2", "--light-rate", "10", "--half-load-s", "0", "--workers", "2",
     "--core-only", "--json"],
    ["bench", "agent", "--rate", "10", "--seconds", "1", "--burst", "100", "--objective", "item", "--json"],
    ["agent", "--policy", "p", "--exploration", "boltzmann", "--epsilon", "0.2", "--temperature", "2", "--diversity", "0.1",
     "--replica", "1", "--metrics-port", "0", "--max-seconds", "1", "--log-level", "warning"],
    ["streams", "--metrics-port", "0", "--max-seconds", "1", "--log-level", "error"],
    ["gate", "--policies", "a,b", "--window", "10", "--min-impressions", "5", "--positions", "0", "--margin", "0.1",
     "--rollback-after-s", "5", "--interval-s", "1", "--metrics-port", "0", "--max-seconds", "1", "--log-level", "info"],
    ["bench", "replay", "log.csv", "--format", "csv", "--limit", "5", "--rate", "2", "--exploration", "epsilon",
     "--user-gap-s", "0", "--session-gap-s", "60", "--skip-bad", "--json"],
    ["evaluate", "--exploration", "greedy", "--epsilon", "0.3", "--temperature", "0.5", "--max-candidates", "10"],
    ["simulate", "--sessions", "1", "--seconds", "1", "--concurrency", "2", "--think-s", "0", "--slate-timeout-s", "1",
     "--slate-size", "3", "--seed", "1", "--no-catalog", "--metrics-port", "0", "--json"],
    ["demo", "--minutes", "1", "--seeds", "2", "--sessions-per-seed", "10", "--new-users", "10", "--gamma", "0.5",
     "--epsilon", "0.1", "--report-dir", "/tmp/r", "--keep-topics", "--metrics-port", "0", "--prometheus", "--keep-broker",
     "--json"],
], ids=lambda a: " ".join(a[:2]))
def test_the_flags_of_before_still_parse(argv: list[str]) -> None:
    build_parser().parse_args(argv)


@pytest.mark.parametrize("command, cls_path, field, default, env, env_value, from_env, flag, from_flag", [
    (["learner"], "shelfq.learner.config:LearnerConfig", "gamma", 0.9, "SHELFQ_LEARNER_GAMMA", "0.5", 0.5, ["--gamma", "0.3"], 0.3),
    (["learner"], "shelfq.learner.config:LearnerConfig", "item_features", True, "SHELFQ_LEARNER_ITEM_FEATURES", "0", False,
     ["--item-features"], True),
    (["agent"], "shelfq.agents.config:AgentConfig", "epsilon", 0.1, "SHELFQ_AGENT_EPSILON", "0.5", 0.5, ["--epsilon", "0.3"], 0.3),
    (["streams"], "shelfq.streams.config:StreamsConfig", "metrics_port", 9101, "SHELFQ_STREAMS_METRICS_PORT", "9999", 9999,
     ["--metrics-port", "0"], 0),
    (["gate"], "shelfq.evaluation.gate.config:GateConfig", "margin", 0.05, "SHELFQ_GATE_MARGIN", "0.2", 0.2,
     ["--margin", "0.1"], 0.1),
], ids=lambda v: v if isinstance(v, str) and v.startswith("SHELFQ_") else "")
def test_a_flag_overrides_the_variable_which_overrides_the_default(
        command: list[str], cls_path: str, field: str, default: object, env: str, env_value: str, from_env: object,
        flag: list[str], from_flag: object, monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib

    from shelfq.cli.dataclass_flags import overrides

    module, name = cls_path.split(":")
    cls = getattr(importlib.import_module(module), name)

    def built(argv: list[str]) -> object:  # as each command builds its settings
        return getattr(cls.from_env(**overrides(build_parser().parse_args(argv), cls)), field)

    monkeypatch.delenv(env, raising=False)
    assert built(command) == default
    monkeypatch.setenv(env, env_value)
    assert built(command) == from_env
    assert built([*command, *flag]) == from_flag


def test_the_learner_flags_reach_its_config(monkeypatch: pytest.MonkeyPatch) -> None:
    from shelfq.cli.main import _learner_config

    monkeypatch.setenv("SHELFQ_LEARNER_ENCODER", "cnn")
    config = _learner_config(build_parser().parse_args(["learner", "--gamma", "0", "--content", "--n-step", "2"]))
    assert (config.gamma, config.content_dim, config.n_step, config.encoder) == (0.0, 384, 2, "cnn")
    assert _learner_config(build_parser().parse_args(["learner"])).content_dim == 0


def test_content_and_content_dim_together_are_refused(capsys: pytest.CaptureFixture) -> None:
    assert main(["learner", "--content", "--content-dim", "16"]) == 2
    assert "--content is --content-dim 384" in capsys.readouterr().err


def test_a_choice_outside_the_settings_own_is_a_usage_error(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as info:
        main(["learner", "--encoder", "transformer"])
    assert info.value.code == 2
    assert "invalid choice: 'transformer'" in capsys.readouterr().err


def test_renamed_flags_set_their_fields() -> None:
    from shelfq.cli.dataclass_flags import overrides
    from shelfq.simulator.runner import SimulateConfig

    args = build_parser().parse_args(["simulate", "--seconds", "5", "--no-catalog"])
    config = SimulateConfig(**overrides(args, SimulateConfig))
    assert (config.duration_s, config.publish_catalog) == (5.0, False)
    assert SimulateConfig(**overrides(build_parser().parse_args(["simulate"]), SimulateConfig)) == SimulateConfig()


@pytest.mark.parametrize("command, cls_path, defaults, argv, given", [
    (["bench", "join"], "shelfq.bench.join:JoinBenchConfig",
     {"events": 300_000, "window_s": 5.0, "light_rate": None, "half_load_s": 30.0, "workers": 1, "core_only": False},
     ["--events", "2000", "--window", "2", "--light-rate", "50", "--half-load-s", "0", "--workers", "2"],
     {"events": 2000, "window_s": 2.0, "light_rate": 50.0, "half_load_s": 0.0, "workers": 2}),
    (["bench", "learner"], "shelfq.bench.learner_config:LearnerBenchConfig", {"transitions": 100_000},
     ["--transitions", "5000"], {"transitions": 5000}),
    (["bench", "agent"], "shelfq.bench.agent_config:AgentBenchConfig",
     {"rate": 1000.0, "seconds": 10.0, "burst": 20_000, "objective": "slateq"},
     ["--rate", "5", "--seconds", "2", "--burst", "100", "--objective", "item"],
     {"rate": 5.0, "seconds": 2.0, "burst": 100, "objective": "item"}),
], ids=lambda v: " ".join(v) if isinstance(v, list) and v[0] == "bench" else "")
def test_the_benchmark_flags_reach_their_settings_with_the_defaults_of_before(
        command: list[str], cls_path: str, defaults: dict, argv: list[str], given: dict) -> None:
    import dataclasses
    import importlib

    from shelfq.cli.dataclass_flags import overrides

    module, name = cls_path.split(":")
    cls = getattr(importlib.import_module(module), name)

    def built(extra: list[str]) -> dict:  # as cmd_bench builds them
        return dataclasses.asdict(cls(**overrides(build_parser().parse_args([*command, *extra]), cls)))

    assert built([]) == defaults
    assert built(argv) == {**defaults, **given}


@pytest.mark.parametrize("argv, message", [
    (["bench", "join", "--events", "999"], "bench join: --events must be at least 1000"),
    (["bench", "join", "--light-rate", "0"], "bench join: --light-rate must be within 0 and 10000 events/s"),
    (["bench", "join", "--light-rate", "10001"], "bench join: --light-rate must be within 0 and 10000 events/s"),
    (["bench", "join", "--workers", "65"], "bench join: --workers must be within 1 and 64"),
    (["bench", "join", "--workers", "0"], "bench join: --workers must be within 1 and 64"),
    (["bench", "join", "--half-load-s", "-1"], "bench join: --half-load-s must be within 0 and 600 seconds"),
    (["bench", "join", "--half-load-s", "601"], "bench join: --half-load-s must be within 0 and 600 seconds"),
    (["bench", "join", "--core-only", "--light-rate", "50"], "--light-rate needs the broker; it does not go with --core-only"),
    (["bench", "learner", "--transitions", "999"], "bench learner: --transitions must be at least 1000"),
    (["bench", "agent", "--rate", "0"], "bench agent: --rate and --seconds must be > 0, --burst at least 100"),
    (["bench", "agent", "--seconds", "-1"], "bench agent: --rate and --seconds must be > 0, --burst at least 100"),
    (["bench", "agent", "--burst", "99"], "bench agent: --rate and --seconds must be > 0, --burst at least 100"),
], ids=lambda v: " ".join(v[1:]) if isinstance(v, list) else "")
def test_impossible_benchmark_settings_exit_2_before_any_broker(argv: list[str], message: str,
                                                                 capsys: pytest.CaptureFixture) -> None:
    # Nothing listens on port 9: a run that got as far as the broker would fail otherwise.
    assert main([*argv, "--bootstrap-servers", "127.0.0.1:9"]) == 2
    assert message in capsys.readouterr().err


def test_the_settings_refuse_what_the_flags_refused() -> None:
    from shelfq.bench.agent_config import AgentBenchConfig
    from shelfq.contracts.errors import ConfigError

    with pytest.raises(ConfigError, match="objective must be one of item, slateq"):
        AgentBenchConfig(objective="pairwise")
    with pytest.raises(SystemExit):  # and the flag lists the choices
        build_parser().parse_args(["bench", "agent", "--objective", "pairwise"])


@pytest.mark.parametrize("field, env, env_value, from_env, flag, from_flag", [
    ("window_s", "SHELFQ_JOIN_WINDOW_S", "60", 60.0, ["--window-s", "30"], 30.0),
    ("history_length", "SHELFQ_JOIN_HISTORY_LENGTH", "20", 20, ["--history-length", "10"], 10),
    ("max_future_skew_s", "SHELFQ_JOIN_MAX_FUTURE_SKEW_S", "60", 60.0, ["--max-future-skew-s", "5"], 5.0),
])
def test_a_join_flag_on_streams_overrides_the_variable_which_overrides_the_default(
        field: str, env: str, env_value: str, from_env: object, flag: list[str], from_flag: object,
        monkeypatch: pytest.MonkeyPatch) -> None:
    import dataclasses

    from shelfq.cli.main import _streams_config
    from shelfq.streams.join import JoinConfig

    def built(argv: list[str]) -> object:  # as cmd_streams builds its settings
        return getattr(_streams_config(build_parser().parse_args(["streams", *argv])).join, field)

    monkeypatch.delenv(env, raising=False)
    assert built([]) == next(f.default for f in dataclasses.fields(JoinConfig) if f.name == field)
    monkeypatch.setenv(env, env_value)
    assert built([]) == from_env
    assert built(flag) == from_flag


def test_the_join_weights_stay_a_variable_beside_the_join_flags(monkeypatch: pytest.MonkeyPatch) -> None:
    from shelfq.cli.main import _streams_config

    monkeypatch.setenv("SHELFQ_JOIN_WEIGHTS", "click=1,purchase=10")
    monkeypatch.setenv("SHELFQ_STREAMS_TICK_S", "0.25")
    config = _streams_config(build_parser().parse_args(["streams", "--window-s", "30", "--batch-size", "10"]))
    assert (dict(config.join.weights), config.join.window_s, config.tick_s, config.batch_size) == (
        {"click": 1.0, "purchase": 10.0}, 30.0, 0.25, 10)
    with pytest.raises(SystemExit):
        build_parser().parse_args(["streams", "--weights", "click=1"])


def test_an_impossible_join_flag_exits_2_with_the_reason(capsys: pytest.CaptureFixture) -> None:
    assert main(["streams", "--window-s", "0", "--bootstrap-servers", "127.0.0.1:9"]) == 2
    assert "join: window_s and idle_advance_s must be > 0" in capsys.readouterr().err


def test_a_reader_that_goes_away_ends_a_command_quietly(tmp_path) -> None:
    """`shelfq broker status | head -0`: the pipe's reader is gone before the command writes; it
    exits with 141 (128 + SIGPIPE, as a shell reports it) and no traceback."""
    import os
    import subprocess
    import sys

    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader went first: the command's first write fails with EPIPE
    try:
        done = subprocess.run([sys.executable, "-m", "shelfq", "broker", "status"], stdout=write_end,
                              stderr=subprocess.PIPE, text=True, timeout=120, check=False,
                              env={**os.environ, "SHELFQ_HOME": str(tmp_path)})
    finally:
        os.close(write_end)
    assert done.returncode == 141, done.stderr
    assert "Traceback" not in done.stderr, done.stderr
