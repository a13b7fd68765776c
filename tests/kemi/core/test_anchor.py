"""kemi.core.anchor: the job/progress messages between Kamailio and the Asterisk side, and
what the transferor is told for each way Asterisk's Dial can end."""

from __future__ import annotations

import pytest

from kemi.core.anchor import (
    AnchorError,
    MoveJob,
    Progress,
    final_status,
    jobs_key,
    progress_key,
    split_xfer_id,
    xfer_id,
)

JOB = MoveJob("a84b@pc33", "20", "sip:2000@h", "PJSIP/2000", "pbx@h",
              "referee:{anchor:k1}:progress", 1.5)


def test_a_job_round_trips_through_its_stream_fields_even_as_bytes():
    raw = {k.encode(): v.encode() for k, v in JOB.to_fields().items()}
    assert MoveJob.from_fields(raw) == JOB
    assert JOB.xfer_id == "20@a84b@pc33" and split_xfer_id(JOB.xfer_id) == ("a84b@pc33", "20")


@pytest.mark.parametrize("change, why", [
    ({"refer_id": "x"}, "not a CSeq number"),
    ({"on_failure": "voicemail"}, "neither 'reconnect'"),
    ({"dial_timeout_s": "0"}, "must be > 0"),
    ({"dial_timeout_s": "soon"}, "is not a int"),
])
def test_a_bad_job_is_refused_naming_the_field(change, why):
    with pytest.raises(AnchorError, match=why):
        MoveJob.from_fields({**JOB.to_fields(), **change})


def test_a_job_missing_a_field_is_refused():
    fields = JOB.to_fields()
    del fields["target"]
    with pytest.raises(AnchorError, match="'target' missing"):
        MoveJob.from_fields(fields)


def test_progress_finality_must_match_its_status():
    ok = Progress("c", "1", 180, "Ringing", False, 2.0)
    assert Progress.from_fields(ok.to_fields()) == ok and ok.sipfrag() == "SIP/2.0 180 Ringing\r\n"
    with pytest.raises(AnchorError, match="must be final"):
        Progress.from_fields({**ok.to_fields(), "code": "486"})
    with pytest.raises(AnchorError, match="needs a final status"):
        Progress.from_fields({**ok.to_fields(), "final": "1"})
    with pytest.raises(AnchorError, match="not a SIP status"):
        Progress.from_fields({**ok.to_fields(), "code": "99"})


@pytest.mark.parametrize("dialstatus, cause, expected", [
    ("ANSWER", 16, (200, "OK")),
    ("ANSWER", 17, (200, "OK")),  # answered is answered, whatever cause is left over
    ("BUSY", 17, (486, "Busy Here")),
    ("BUSY", None, (486, "Busy Here")),
    ("NOANSWER", 0, (480, "Temporarily Unavailable")),
    ("NOANSWER", 19, (480, "Temporarily Unavailable")),
    ("CHANUNAVAIL", 1, (404, "Not Found")),
    ("CHANUNAVAIL", 20, (503, "Service Unavailable")),
    ("CONGESTION", 34, (503, "Service Unavailable")),
    ("CANCEL", 17, (487, "Request Terminated")),  # P gave up: not the target's busy
    ("DONTCALL", None, (603, "Decline")),
    ("whatever", None, (500, "Server Internal Error")),
])
def test_final_status_for_each_dial_outcome(dialstatus, cause, expected):
    assert final_status(dialstatus, cause) == expected


def test_stream_keys_are_hash_tagged_per_asterisk_and_per_node():
    assert jobs_key("referee", "pbx1") == "referee:{anchor:pbx1}:jobs"
    assert progress_key("referee", "kam1") == "referee:{anchor:kam1}:progress"
    assert xfer_id("c", "3") == "3@c"
    with pytest.raises(AnchorError):
        split_xfer_id("abc123")
