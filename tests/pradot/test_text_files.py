"""Text files written by other tools (pradot.data.text): every encoding, byte-order mark, line ending and
stray whitespace a spreadsheet or another operating system produces reads like a clean UTF-8 file, in the
reader itself and in every file the project reads (VisA split csv, defects_config.json, calibration.json)."""

from __future__ import annotations

import codecs
import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pradot.calibration import Calibration
from pradot.data import DatasetError, load_dataset
from pradot.data.text import TextFileError, decode_text, read_csv_rows, read_json, read_text

TEXT = "object,split,label\nBäder,train,normal\nœuvre – café,test,anomaly\n"

#: (name, encoder): how other tools save TEXT
ENCODINGS = [
    ("utf-8", lambda t: t.encode("utf-8")),
    ("utf-8 with BOM (Excel 'CSV UTF-8')", lambda t: codecs.BOM_UTF8 + t.encode("utf-8")),
    ("utf-16 LE with BOM (Excel 'Unicode Text', Notepad)", lambda t: t.encode("utf-16")),
    ("utf-16 BE with BOM", lambda t: codecs.BOM_UTF16_BE + t.encode("utf-16-be")),
    ("utf-16 LE without BOM", lambda t: t.encode("utf-16-le")),
    ("utf-32 with BOM", lambda t: t.encode("utf-32")),
    ("cp1252 (Excel 'CSV' on western Windows)", lambda t: t.encode("cp1252")),
]
LINE_ENDINGS = [("LF", "\n"), ("CRLF (Windows)", "\r\n"), ("CR (classic Mac OS)", "\r")]


@pytest.mark.parametrize("name, encode", ENCODINGS, ids=[e[0] for e in ENCODINGS])
@pytest.mark.parametrize("eol_name, eol", LINE_ENDINGS, ids=[e[0] for e in LINE_ENDINGS])
def test_every_encoding_and_line_ending_reads_as_the_same_text(tmp_path, name, encode, eol_name, eol):
    path = tmp_path / "f.csv"
    path.write_bytes(encode(TEXT.replace("\n", eol)))
    assert read_text(path) == TEXT


def test_latin1_bytes_that_cp1252_leaves_undefined_still_read():
    data = "a,b\nx\x81y,\xe9\n".encode("latin-1")  # 0x81 is undefined in cp1252
    text, encoding = decode_text(data)
    assert text == "a,b\nx\x81y,é\n" and encoding == "cp1252"


def test_valid_utf8_is_never_read_as_cp1252():
    # "Ã©" is what é in UTF-8 looks like when misread as cp1252: the reader must not produce it
    assert decode_text("é".encode()) == ("é", "utf-8")


def test_csv_rows_strip_whitespace_and_skip_blank_lines_for_any_delimiter(tmp_path):
    expected = [
        {"object": "candle", "split": "train", "image": "candle/a b.JPG"},
        {"object": "pcb1", "split": "test", "image": "pcb1/x,y.JPG"},
    ]
    for delim in (",", ";", "\t"):
        buf = io.StringIO()
        w = csv.writer(buf, delimiter=delim, lineterminator="\r\n")
        w.writerow([" object ", "split  ", " image"])
        w.writerow(["candle ", " train", "candle/a b.JPG "])
        buf.write("\r\n \r\n")  # blank lines (one with a space), as spreadsheets leave at the end
        w.writerow(["pcb1", "test", "pcb1/x,y.JPG"])
        path = tmp_path / f"rows{ord(delim)}.csv"
        path.write_bytes(codecs.BOM_UTF8 + buf.getvalue().encode("utf-8"))
        assert read_csv_rows(path, required=("object", "split", "image")) == expected, repr(delim)


def test_csv_and_json_errors_name_the_file(tmp_path):
    path = tmp_path / "x.csv"
    path.write_text("object,split\nc,train\n")
    with pytest.raises(TextFileError, match=r"x\.csv lacks columns \['label'\]; found \['object', 'split'\]"):
        read_csv_rows(path, required=("object", "label"))
    path.write_text("\n\n")
    with pytest.raises(TextFileError, match="is empty"):
        read_csv_rows(path)
    bad = tmp_path / "bad.json"
    bad.write_text('{"a": 1,,}')
    with pytest.raises(TextFileError, match=r"bad\.json is not valid JSON: .*line 1"):
        read_json(bad)
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "nope.json")):
        read_json(tmp_path / "nope.json")


# ---------------------------------------------------------------- the files the project reads
def _rgb(seed, h=8, w=10):
    return np.random.default_rng(seed).integers(0, 256, size=(h, w, 3), dtype=np.uint8)


def _visa(root: Path, encode, eol: str, header: str = "object,split,label,image,mask") -> Path:
    rows = [header]
    for i in range(2):
        rel = f"candle/Data/Images/Normal/{i:04d}.JPG"
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(_rgb(i)).save(root / rel)
        rows.append(f"candle ,train, normal,{rel},")
    rel, mrel = "candle/Data/Images/Anomaly/000.JPG", "candle/Data/Masks/Anomaly/000.png"
    (root / rel).parent.mkdir(parents=True, exist_ok=True)
    (root / mrel).parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(_rgb(5)).save(root / rel)
    m = np.zeros((8, 10), np.uint8)
    m[1:3, 1:4] = 1
    Image.fromarray(m).save(root / mrel)
    rows.append(f"candle,test,anomaly,{rel.replace('/', chr(92))},{mrel}")  # a Windows path in the csv
    (root / "split_csv").mkdir(exist_ok=True)
    (root / "split_csv" / "1cls.csv").write_bytes(encode(eol.join(rows) + eol))
    return root


@pytest.mark.parametrize("name, encode", ENCODINGS, ids=[e[0] for e in ENCODINGS])
def test_visa_split_csv_from_a_spreadsheet(tmp_path, name, encode):
    clean = load_dataset("visa", _visa(tmp_path / "clean", ENCODINGS[0][1], "\n"), "candle")
    messy = load_dataset(
        "visa", _visa(tmp_path / "messy", encode, "\r\n", " object , split,label ,image, mask "), "candle"
    )
    for split in ("train", "test"):
        a, b = clean.samples(split), messy.samples(split)
        assert [(s.relative_id, s.label, s.image_path.relative_to(tmp_path / "clean")) for s in a] == [
            (s.relative_id, s.label, s.image_path.relative_to(tmp_path / "messy")) for s in b
        ]
    assert messy.load_channels(messy.samples("test")[0]).sum() == 6


def test_visa_csv_with_a_missing_column_is_a_dataset_error(tmp_path):
    _visa(tmp_path, ENCODINGS[0][1], "\n", header="object,split,label,image,maks")
    with pytest.raises(DatasetError, match=r"1cls\.csv lacks columns \['mask'\]"):
        load_dataset("visa", tmp_path, "candle")


@pytest.mark.parametrize("name, encode", ENCODINGS, ids=[e[0] for e in ENCODINGS])
def test_defects_config_and_calibration_json_from_any_editor(tmp_path, name, encode):
    from tests.pradot.test_data_loaders import LOCO_CONFIG, make_loco

    root = make_loco(tmp_path)
    config = root / "screw_bag" / "defects_config.json"
    config.write_bytes(encode(json.dumps(LOCO_CONFIG, indent=2).replace("\n", "\r\n")))
    ds = load_dataset("mvtec_loco", root, "screw_bag")
    assert sorted(ds.defects_config()) == [50, 120, 255]
    assert [d.defect_name for s in ds.samples("test") for d in s.defects] == [
        "missing_nut",
        "additional_screw",
        "scratch",
    ]
    cal = Calibration.calibrate(np.arange(200.0), 0.99)
    path = tmp_path / "calibration.json"
    path.write_bytes(encode(json.dumps(cal.to_dict()).replace(",", ",\r\n")))
    assert Calibration.load(path) == cal
