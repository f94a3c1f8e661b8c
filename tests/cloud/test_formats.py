"""The answer format is chosen from Accept in one place (cloud/formats.py): the first media
range listed that a writer takes, JSON when none is named, 406 for nothing it can write.
(The writers themselves are tested through a real cloud: test_data.py, test_streaming.py.)"""

from __future__ import annotations

import pytest

from pxo.cloud.errors import NotAcceptable
from pxo.cloud.formats import ArrowWriter, CsvWriter, JsonWriter, NdjsonWriter, choose


@pytest.mark.parametrize(("accept", "writer"), [
    ("", JsonWriter),
    ("*/*", JsonWriter),
    ("text/html, application/json;q=0.9", JsonWriter),
    ("application/x-ndjson", NdjsonWriter),
    ("Application/JSONL", NdjsonWriter),
    ("text/*", CsvWriter),
    ("text/csv; charset=utf-8, application/json", CsvWriter),  # listed first wins: q is not weighed
    ("application/vnd.apache.arrow.stream", ArrowWriter),
])
def test_accept_chooses_the_writer(accept: str, writer: type) -> None:
    assert choose(accept) is writer


def test_nothing_writable_is_406_naming_what_is() -> None:
    with pytest.raises(NotAcceptable) as caught:
        choose("image/png, text/html")
    assert caught.value.status == 406
    assert caught.value.message == ("cannot answer in 'image/png, text/html': ask for application/json, "
                                    "application/x-ndjson, text/csv or application/vnd.apache.arrow.stream")


def test_a_follow_stream_answers_clients_of_json_or_ndjson_only() -> None:
    assert [w.__name__ for w in (JsonWriter, NdjsonWriter, CsvWriter, ArrowWriter) if w.follow_ok] == \
        ["JsonWriter", "NdjsonWriter"]
