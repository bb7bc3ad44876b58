"""shelfq replay without Kafka: parsing CSV and JSONL, inline state, bad lines with their line
numbers, the timing schedule and rebasing, and the send loop against a fake client."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from shelfq.contracts.events import Feedback, Impression, Interaction, Item, Request, State, encode
from shelfq.contracts.settings import Settings
from shelfq.frontend.replay import (
    BadLine,
    ReplayError,
    parse_csv,
    parse_jsonl,
    rebase_shift,
    replay,
    schedule,
    shifted,
    with_inline_state,
)
from shelfq.cli.main import main

HEADER = "kind,ts,request_id,user_id,session_id,items,propensities,policy,item_id,value\n"
GOOD = HEADER + (
    "impression,100,r1,u1,s1,a|b|c,0.5|0.25|0.25,logged,,\n"
    "click,101,r1,u1,s1,,,,b,\n"
    "purchase,102.5,r1,u1,s1,,,,b,19.9\n"
    "impression,103,r2,u1,s1,d|a,,,,\n"
    "exit,104,r2,u1,s1,,,,,\n"
)


def test_csv_rows_become_contract_events() -> None:
    parsed = parse_csv(GOOD)
    assert parsed.bad == []
    imp, click, purchase, imp2, exit_ = parsed.events
    assert imp == Impression(request_id="r1", user_id="u1", session_id="s1", ts=100.0, items=["a", "b", "c"],
                             propensities=[0.5, 0.25, 0.25], policy="logged")
    assert click == Feedback(request_id="r1", user_id="u1", session_id="s1", ts=101.0, event="click", item_id="b")
    assert purchase.value == 19.9 and purchase.event == "purchase"
    assert imp2.propensities is None and imp2.policy is None and imp2.state is None
    assert exit_.event == "exit" and exit_.item_id is None


def test_csv_accepts_iso_times_any_column_order_and_extra_columns() -> None:
    text = ("user_id,kind,note,ts,session_id,request_id,item_id\n"
            "u1,click,hello,2026-01-01T00:00:00Z,s1,r1,a\n"
            "u1,click,,2026-01-01T01:00:00+01:00,s1,r1,b\n"
            "u1,click,,2026-01-01T00:00:05,s1,r1,c\n")
    parsed = parse_csv(text)
    assert parsed.bad == []
    assert [e.ts for e in parsed.events] == [1767225600.0, 1767225600.0, 1767225605.0]  # naive = UTC


@pytest.mark.parametrize("row, field, words", [
    ("impression,abc,r1,u1,s1,a,,,,", "ts", "expected epoch seconds or an ISO 8601 time, got 'abc'"),
    ("impression,nan,r1,u1,s1,a,,,,", "ts", "finite"),
    ("impression,-5,r1,u1,s1,a,,,,", "ts", "out of range"),
    ("impression,1,,u1,s1,a,,,,", "request_id", "is empty"),
    ("impression,1,r1,u1,s1,,,,,", "items", "lists the items"),
    ("impression,1,r1,u1,s1,a|a,,,,", "items", "appears twice"),
    ("impression,1,r1,u1,s1,a|b,0.5,,,", "propensities", "has 1 entries but items has 2"),
    ("impression,1,r1,u1,s1,a|b,0.5|x,,,", "propensities[1]", "expected a number, got 'x'"),
    ("impression,1,r1,u1,s1,a|b,0.5|1.5,,,", "propensities[1]", "out of range"),
    ("impression,1,r1,u1,s1,a,,,a,", "item_id", "impression rows leave item_id empty"),
    ("click,1,r1,u1,s1,,,,,", "item_id", "required for event 'click'"),
    ("exit,1,r1,u1,s1,,,,a,", "item_id", "an exit event names no item"),
    ("click,1,r1,u1,s1,a,,,a,", "items", "click rows leave items empty"),
    ("purchase,1,r1,u1,s1,,,,a,-3", "value", "out of range"),
    ("purchase,1,r1,u1,s1,,,,a,cheap", "value", "expected a number, got 'cheap'"),
    ("view,1,r1,u1,s1,,,,a,", "kind", "got 'view'"),
    ("click,1,r1,u1,s1,,,,a,,surplus", "", "1 more values than the header has columns"),
])
def test_a_bad_csv_row_names_its_line_and_field(row: str, field: str, words: str) -> None:
    parsed = parse_csv(HEADER + "click,1,r0,u1,s1,,,,z,\n" + row + "\n")
    assert len(parsed.events) == 1 and len(parsed.bad) == 1
    bad = parsed.bad[0]
    assert bad.line == 3
    assert str(bad).startswith(f"line 3: {field}: " if field else "line 3: "), str(bad)
    assert words in bad.problem


def test_a_csv_without_a_required_column_is_refused_once() -> None:
    parsed = parse_csv("kind,ts,user_id\nclick,1,u1\nclick,2,u1\n")
    assert parsed.events == []
    assert parsed.bad == [BadLine(1, "request_id", "column missing from the header"),
                          BadLine(1, "session_id", "column missing from the header")]


def test_jsonl_lines_decode_as_on_the_topics() -> None:
    imp = Impression(request_id="r1", user_id="u1", session_id="s1", ts=1.0, items=["a"],
                     state=State(history=[Interaction(item_id="z", event="click", ts=0.5)]))
    fb = Feedback(request_id="r1", user_id="u1", session_id="s1", ts=2.0, event="click", item_id="a")
    item = Item(item_id="a", ts=0.0, title="A thing", price=3.0)
    data = b"\n".join([encode(imp), b"", encode(fb), encode(item)]) + b"\n"
    parsed = parse_jsonl(data)
    assert parsed.bad == [] and parsed.events == [imp, fb, item]


def test_bad_jsonl_lines_name_line_and_field() -> None:
    good = encode(Feedback(request_id="r1", user_id="u1", session_id="s1", ts=2.0, event="exit"))
    request = encode(Request(request_id="r1", user_id="u1", ts=1.0))
    lines = [good, b'{"schema": "shelfq.feedback.v1", "request_id": "r1"', b"",
             b'{"schema": "shelfq.feedback.v1", "request_id": "r1", "user_id": "u1", "session_id": "s", "ts": 1, "event": "click"}',
             request, b'{"schema": "shelfq.impression.v1", "request_id": "r", "user_id": "u", "session_id": "s", "ts": 1, "items": [1]}']
    parsed = parse_jsonl(b"\n".join(lines))
    assert len(parsed.events) == 1
    assert [(b.line, b.field) for b in parsed.bad] == [(2, ""), (4, "item_id"), (5, "schema"), (6, "items[0]")]
    assert "malformed JSON" in parsed.bad[0].problem
    assert "not 'shelfq.request.v1'" in parsed.bad[2].problem


def test_inline_state_is_the_users_earlier_feedback_capped_at_n() -> None:
    events = parse_csv(HEADER + (
        "impression,1,r1,u1,s1,a|b|c,,,,\n"
        "click,2,r1,u1,s1,,,,a,\n"
        "click,3,r1,u2,s9,,,,x,\n"          # another user's feedback stays out of u1's state
        "add_to_cart,4,r1,u1,s1,,,,b,\n"
        "purchase,5,r1,u1,s1,,,,c,\n"
        "exit,6,r1,u1,s1,,,,,\n"             # an exit is no interaction
        "impression,7,r2,u1,s2,d,,,,\n"
    )).events
    out = list(with_inline_state(events, history_length=2))
    first, last = out[0], out[-1]
    assert first.state == State()  # present (so the join accepts it without a slate), empty
    assert last.state == State(history=[Interaction(item_id="b", event="add_to_cart", ts=4.0),
                                        Interaction(item_id="c", event="purchase", ts=5.0)])
    assert out[1:-1] == events[1:-1]


def test_an_impression_with_its_own_state_keeps_it() -> None:
    state = State(history=[Interaction(item_id="z", event="purchase", ts=0.5)], context={"device": "ios"})
    fb = Feedback(request_id="r0", user_id="u1", session_id="s1", ts=0.7, event="click", item_id="q")
    imp = Impression(request_id="r1", user_id="u1", session_id="s1", ts=1.0, items=["a"], state=state)
    assert list(with_inline_state([fb, imp], 50))[1].state == state


def test_schedule_divides_the_gaps_by_the_speed() -> None:
    ts = [100.0, 100.0, 101.0, 110.0]
    assert schedule(ts, 1.0) == [0.0, 0.0, 1.0, 10.0]
    assert schedule(ts, 10.0) == [0.0, 0.0, 0.1, 1.0]
    assert schedule(ts, 0.5) == [0.0, 0.0, 2.0, 20.0]
    assert schedule(ts, 0.0) == [0.0] * 4
    assert schedule([], 1.0) == []


def test_rebase_keeps_gaps_and_never_stamps_ahead_of_the_send_time() -> None:
    now, first, last = 1_800_000_000.0, 1_000.0, 4_600.0  # an hour of log
    for speed in (0.0, 0.5, 1.0, 10.0):
        shift = rebase_shift(first, last, speed, now)
        for ts, due in zip([first, 2_000.0, last], schedule([first, 2_000.0, last], speed)):
            assert ts + shift <= now + due + 1e-6, (speed, ts)
    assert rebase_shift(first, last, 1.0, now) + first == now  # real time: the first event is now
    assert rebase_shift(first, last, 0.5, now) + first == now
    assert rebase_shift(first, last, 0.0, now) + last == now  # all at once: the last event is now
    assert rebase_shift(first, last, 10.0, now) + last == pytest.approx(now + 360.0)  # sent 360 s in


def test_shifted_moves_ts_and_inline_history() -> None:
    imp = Impression(request_id="r1", user_id="u1", session_id="s1", ts=10.0, items=["a"],
                     state=State(history=[Interaction(item_id="z", event="click", ts=5.0)]))
    moved = shifted(imp, 100.0)
    assert moved.ts == 110.0 and moved.state.history[0].ts == 105.0
    assert shifted(imp, 0.0) is imp


class FakeClient:
    def __init__(self, settings: Settings) -> None:
        self.sent: list = []
        self.flushed = False
        self.producer = self

    def poll(self, timeout: float) -> int:
        return 0

    def send(self, event) -> None:
        self.sent.append(event)

    def flush(self, timeout: float = 30.0) -> None:
        self.flushed = True


def run(tmp_path: Path, text: str, suffix: str = ".csv", **kw):
    path = tmp_path / f"log{suffix}"
    path.write_text(text)
    clients: list[FakeClient] = []

    def factory(settings: Settings) -> FakeClient:
        clients.append(FakeClient(settings))
        return clients[-1]

    summary = replay(Settings(), path, client_factory=factory, report=lambda _line: None, **kw)
    return summary, clients


def test_replay_sends_in_ts_order_with_state_and_counts_by_kind(tmp_path: Path) -> None:
    unsorted = HEADER + GOOD[len(HEADER):].splitlines()[3] + "\n" + "".join(GOOD[len(HEADER):].splitlines(True)[:3]) + \
        "exit,104,r2,u1,s1,,,,,\n"
    summary, [client] = run(tmp_path, unsorted)
    assert [e.ts for e in client.sent] == [100.0, 101.0, 102.5, 103.0, 104.0]
    assert client.flushed
    assert [i.item_id for i in client.sent[3].state.history] == ["b", "b"]
    d = summary.as_dict()
    assert (d["events"], d["impression"], d["click"], d["purchase"], d["exit"], d["skipped"]) == (5, 2, 1, 1, 1, 0)


def test_a_file_with_bad_lines_is_refused_before_anything_is_sent(tmp_path: Path) -> None:
    bad = GOOD + "".join(f"click,{i},r1,u1,s1,,,,,\n" for i in range(12))  # 12 clicks without item_id
    with pytest.raises(ReplayError) as info:
        run(tmp_path, bad)
    text = str(info.value)
    assert "12 bad lines; nothing was sent" in text and "--skip-bad" in text
    assert "line 7: item_id: required for event 'click'" in text
    assert "... and 2 more" in text
    summary, [client] = run(tmp_path, bad, skip_bad=True)
    assert summary.skipped == 12 and len(client.sent) == 5


def test_dry_run_sends_nothing(tmp_path: Path) -> None:
    summary, clients = run(tmp_path, GOOD, dry_run=True)
    assert clients == [] and summary.dry_run and summary.as_dict()["events"] == 5


def test_feedback_without_an_impression_is_reported(tmp_path: Path) -> None:
    summary, _ = run(tmp_path, GOOD + "click,105,r-unknown,u1,s1,,,,a,\n")
    assert summary.feedback_without_impression == 1


def test_rebase_with_speed_zero_stamps_the_file_just_before_now(tmp_path: Path) -> None:
    import time

    summary, [client] = run(tmp_path, GOOD, rebase=True)
    assert client.sent[-1].ts == pytest.approx(time.time(), abs=5)
    assert client.sent[-1].ts - client.sent[0].ts == pytest.approx(4.0)
    assert client.sent[3].state.history[0].ts == pytest.approx(client.sent[1].ts)  # history moved too


def test_speed_paces_the_sends(tmp_path: Path) -> None:
    import time

    t0 = time.monotonic()
    run(tmp_path, GOOD, speed=10.0)  # 4 s of log at 10x
    assert 0.35 <= time.monotonic() - t0 < 2.0


def test_cli_replay_dry_run_json_and_errors(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    path = tmp_path / "log.csv"
    path.write_text(GOOD)
    assert main(["replay", str(path), "--dry-run", "--json"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert json.loads(out[-1])["events"] == 5 and out[0].startswith("would send (dry run) 5 events")
    path.write_text(GOOD + "click,1,r1,u1,s1,,,,,\n")
    assert main(["replay", str(path)]) == 1
    assert "line 7: item_id" in capsys.readouterr().err
    assert main(["replay", str(tmp_path / "log.txt")]) == 2
    assert "--format" in capsys.readouterr().err
    assert main(["replay", str(path), "--speed", "-1"]) == 2


def test_help_documents_the_csv_columns(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as info:
        main(["replay", "--help"])
    out = capsys.readouterr().out
    assert info.value.code == 0 and out.startswith("usage: shelfq replay")
    for column in ("kind", "ts", "request_id", "user_id", "session_id", "items", "propensities", "policy", "item_id", "value"):
        assert f"\n  {column} " in out
    assert "--speed" in out and "--rebase" in out and "--skip-bad" in out and "--bootstrap-servers" in out


def test_the_documented_example_is_valid() -> None:
    doc = (Path(__file__).resolve().parents[2] / "docs" / "replay.md").read_text()
    example = doc.split("```csv\n", 1)[1].split("```", 1)[0]
    parsed = parse_csv(example)
    assert parsed.bad == [] and len(parsed.events) == 4
