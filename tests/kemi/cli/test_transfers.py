"""`referee transfer show`: a record and its event ladder as an operator reads them."""

from __future__ import annotations

from kemi.cli.transfers import format_record
from kemi.storage.transfers import SEP


def test_show_lists_fields_and_the_ladder_with_times_from_the_refer():
    record = {"call_id": "c1@h", "refer_id": "2", "state": "succeeded",
              "tie_field": f"c1@h{SEP}2"}
    log = [
        "100.000|refer|new|refer-seen|applied|",
        "100.250|notify-success|refer-seen|succeeded|applied|200 OK",
        "100.500|bye-transferor|succeeded|succeeded|ignored|",
        "100.600|note|succeeded|succeeded|noted|ami: A released",
    ]
    text = format_record(record, log).splitlines()
    assert text[0] == "transfer c1@h / 2: succeeded"
    assert "  tie_field        c1@h / 2" in text  # the separator shown, not swallowed
    assert any("+  0.250s  notify-success" in line and "refer-seen -> succeeded" in line
               and line.endswith("200 OK") for line in text)
    assert any("bye-transferor" in line and "succeeded (ignored)" in line for line in text)
    assert any("note" in line and "succeeded (noted)" in line and "A released" in line
               for line in text)
