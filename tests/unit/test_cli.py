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
