"""Keyword corpora (training.index --corpus, update_store --add) and delete lists: every malformed
row is refused with its file and line, never indexed as something else."""
import pytest

from serving.update_store import build_updated_version, read_ids
from training.index import read_corpus


_LONG = b"id,text\n" + b"".join(b"%d,drill\n" % i for i in range(900)) + b"9999,caf\xe9\n"  # > 8 KB


def _write(tmp_path, name, body: bytes):
    (tmp_path / name).write_bytes(body)
    return tmp_path / name


def test_corpus_reads_csv_and_jsonl_as_written(tmp_path):
    read = lambda name, body: read_corpus(_write(tmp_path, name, body))  # noqa: E731
    assert read("c.csv", b'\xef\xbb\xbfid,text,brand\r\n 7 ,"drill, cordless\n18V",bosch\r\n\r\n8,  saw  ,x\r\n') == (
        ["7", "8"], ["drill, cordless 18V", "saw"])  # BOM, CRLF, quoting, padded id, blank line, extra column
    assert read("c.JSONL", b'{"id": 7, "text": "drill"}\n\n{"id": "x8", "text": "30\xc3\xa5\xc2\xa1 elbow"}\n') == (
        ["7", "x8"], ["drill", "30° elbow"])  # repaired as load_pairs repairs the titles
    assert read("c.txt", b'{"id": 1, "text": "drill"}\n')[0] == ["1"]  # JSON lines whatever the suffix
    assert read("c.dat", b"id,text\n1,drill\n")[0] == ["1"]


@pytest.mark.parametrize("name, body, message", [
    ("c.csv", b"id,text\n1,drill, cordless\n", r"c.csv:2: 3 fields, the header has 2 \(an unquoted comma"),
    ("c.csv", b'id,text\n1,"drill\n2,saw\n', r"c.csv:3: unexpected end of data"),
    ("c.csv", b"id,id,text\n1,2,drill\n", r"header names \['id'\] more than once"),
    ("c.csv", b"id,text\n1,drill\n2,saw\n1,other\n", r"c.csv:4: id '1' again \(first on line 2\)"),
    ("c.csv", b"id,text\n1,drill\n2,   \n", r"c.csv:3: blank text"),
    ("c.csv", b"id,text\n", r"c.csv: no keywords"),
    ("c.csv", _LONG, rf"c.csv:902: not UTF-8 .* at byte {_LONG.index(b'caf') + 3} of the file"),
    ("c.jsonl", b'{"id": 3.0, "text": "drill"}\n', r"c.jsonl:1: \"id\" must be a string or an integer, got 3.0"),
    ("c.jsonl", b'{"id": null, "text": "drill"}\n', r"must be a string or an integer, got None"),
    ("c.jsonl", b'{"id": 1, "text": null}\n', r"c.jsonl:1: \"text\" must be a string, got None"),
    ("c.jsonl", b'{"id": 1, "text": 42}\n', r"\"text\" must be a string, got 42"),
    ("c.jsonl", b'{"id": "1", "text": "a"}\n\n{"id": " 1 ", "text": "b"}\n', r"c.jsonl:3: \"id\" '1' again"),
    ("c.jsonl", b'{"id": 1, "text": "a"}\n"video text"\n', r"c.jsonl:2: each line must be an object"),
    ("c.json", b'[{"id": 1, "text": "a"}]\n', r"c.json:1: .*a JSON array\? write one object per line"),
    ("c.jsonl", b"", r"c.jsonl: no keywords"),
])
def test_corpus_refuses_malformed_rows_by_file_and_line(tmp_path, name, body, message):
    with pytest.raises(ValueError, match=message):
        read_corpus(_write(tmp_path, name, body))


def test_delete_list_and_conflicting_update(tmp_path):
    assert read_ids(_write(tmp_path, "d.txt", b"\xef\xbb\xbf42\r\n\r\n 43 \n")) == {"42", "43"}
    with pytest.raises(ValueError, match=r"d.txt:1: not UTF-8"):
        read_ids(_write(tmp_path, "d.txt", b"caf\xe9\n"))
    with pytest.raises(ValueError, match="no keyword ids"):
        read_ids(_write(tmp_path, "d.txt", b"\n\n"))
    with pytest.raises(ValueError, match=r"1 keyword id\(s\) are both added and deleted, e.g. \['42'\]"):
        build_updated_version(tmp_path / "export", tmp_path / "store", {"42": "drill", "7": "saw"}, {"42"})
