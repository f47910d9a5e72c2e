"""The history checker catches each violation it exists for (synthetic histories)."""

from __future__ import annotations

import json

from chttp_examples.multihost.history import Attempt, check, read_attempts


def _answer(message_id: str, nonce: str, t: float, *, replayed: bool = False) -> Attempt:
    body = json.dumps({"message_id": message_id, "nonce": nonce})
    return Attempt(message_id, t, t + 0.01, status=200, body=body, replayed=replayed)


def _stored(*answers: Attempt) -> dict[str, tuple[int | None, bytes | None]]:
    return {a.message_id: (200, (a.body or "").encode()) for a in answers}


def test_a_clean_history_passes():
    a, b = _answer("a", "n1", 1.0), _answer("b", "n2", 2.0)
    lost_try = Attempt("b", 1.5, 1.6, error="ReadTimeout")
    report = check([a, lost_try, b], {"a": ["n1"], "b": ["n2"]}, _stored(a, b))
    assert report.ok, report.summary()
    assert (report.messages, report.answered, report.attempts, report.failed_attempts) == (2, 2, 3, 1)
    assert "PASSED" in report.summary()


def test_two_effects_for_one_id_is_a_duplicate():
    a = _answer("a", "n1", 1.0)
    report = check([a], {"a": ["n1", "n9"]}, _stored(a))
    assert report.duplicates == ["a"] and not report.ok
    assert "FAILED" in report.summary()


def test_an_answer_whose_effect_is_missing_is_lost():
    a, b = _answer("a", "n1", 1.0), _answer("b", "n2", 2.0)
    report = check([a, b], {"a": ["n1"], "b": ["other"]}, _stored(a))
    assert sorted(report.lost) == ["b"]
    assert report.stored_mismatch == ["b"]      # no stored response for it either


def test_a_replay_that_differs_from_the_first_answer_is_caught():
    first, again = _answer("a", "n1", 1.0), _answer("a", "n2", 5.0, replayed=True)
    report = check([first, again], {"a": ["n1"]}, _stored(first))
    assert report.replay_mismatch == ["a"]
    assert report.replays == 1


def test_unanswered_ids_and_effects_nobody_sent_are_reported():
    pending = Attempt("a", 1.0, 4.0, error="ConnectError")
    busy = Attempt("b", 1.0, 1.1, status=409)
    report = check([pending, busy], {"a": ["n1"], "zzz": ["n3"]}, {}, gave_up=["a"])
    assert report.unresolved == ["a", "b"]
    assert report.orphans == ["zzz"]


def test_load_figures():
    answers = [_answer(f"m{i}", f"n{i}", float(t)) for i, t in enumerate([0, 1, 2, 6, 7])]
    report = check(answers, {a.message_id: [f"n{i}"] for i, a in enumerate(answers)}, _stored(*answers))
    assert report.longest_gap(2.5) == 6.01 - 2.5
    assert report.rate(0, 3) == 1.0
    assert report.recovered_after(5.0) == 6.01 - 5.0
    assert report.recovered_after(100.0) is None


def test_read_attempts_skips_a_line_cut_short(tmp_path):
    path = tmp_path / "h.jsonl"
    path.write_text(
        json.dumps({"id": "a", "attempt": 0, "t0": 1, "t1": 2, "status": 200, "body": "{}",
                    "request": "{\"n\": 1}"}) + "\n"
        + json.dumps({"id": "b", "gave_up": True, "t1": 3}) + "\n"
        + '{"id": "c", "attempt": 0, "t0"'
    )
    attempts, gave_up = read_attempts([path])
    assert [a.message_id for a in attempts] == ["a"] and attempts[0].request == '{"n": 1}'
    assert gave_up == {"b"}
