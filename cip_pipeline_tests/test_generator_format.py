"""The generated files are byte-for-byte the real format, and deterministic per seed."""

from __future__ import annotations

import dataclasses
import gzip
import re
from pathlib import Path

import polars as pl
import pytest

from cip_pipeline.cli import main as cip
from cip_pipeline.generator import calibration as cal
from cip_pipeline.generator import generate

HEADER = (
    "event_time,event_type,product_id,category_id,category_code,brand,price,user_id,user_session"
)
ROW = re.compile(
    r"\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2} UTC,(view|cart|purchase|remove_from_cart),\d+,\d{19},"
    r"([a-z_]+(\.[a-z_]+)*)?,[^,]*,\d+\.\d{2},\d+,"
    r"([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})?"
)


def _lines(path: Path) -> list[str]:
    return path.read_bytes().decode().replace("\r\n", "\n").rstrip("\n").split("\n")


def near_copies(month: pl.DataFrame) -> pl.DataFrame:
    """Rows equal to the row before them in all but price or session: copies of a row made
    before its price or session was drawn. A duplicate sits next to its original."""
    others = [c for c in month.columns if c not in ("price", "user_session")]
    before = month.shift(1)
    return month.filter(
        pl.all_horizontal([pl.col(c).eq_missing(before[c]) for c in others])
        & ~(
            pl.col("price").eq_missing(before["price"])
            & pl.col("user_session").eq_missing(before["user_session"])
        )
    )


def test_every_generated_line_has_the_real_format(tmp_path: Path) -> None:
    generate(50_000, seed=3, out=tmp_path)
    for name in ("2019-Oct.csv", "2019-Nov.csv"):
        raw = (tmp_path / name).read_bytes()
        assert raw.endswith(b"\n") and b"\r" not in raw
        lines = _lines(tmp_path / name)
        assert lines[0] == HEADER
        bad = [line for line in lines[1:] if not ROW.fullmatch(line)]
        assert bad == []
        times = [line[:19] for line in lines[1:]]
        assert times == sorted(times), "rows are in event_time order, as in the real files"
        month = "2019-10" if name.startswith("2019-Oct") else "2019-11"
        assert all(t.startswith(month) for t in times)


def test_months_with_a_gap_keep_their_rows_to_their_month(tmp_path: Path) -> None:
    """What spills out of October (follow-ups, late sessions) belongs to November, which is
    not generated: none of it may land in December's file."""
    report = generate(40_000, seed=7, months=("2019-10", "2019-12"), out=tmp_path)
    for name, month in (("2019-Oct.csv", "2019-10"), ("2019-Dec.csv", "2019-12")):
        times = pl.read_csv(tmp_path / name, schema_overrides={"event_time": pl.String})[
            "event_time"
        ]
        assert times.len() == report.rows[month] > 10_000
        assert times.str.starts_with(month).all(), times.filter(~times.str.starts_with(month))


def test_duplicates_are_exact_copies(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With zero prices on half the rows, many null sessions and duplicates, a copy that got
    its own draws would differ from its original about half the time."""
    real = cal.profile_for

    def profile_for(index: int) -> cal.MonthProfile:
        return dataclasses.replace(
            real(index), zero_price_share=0.5, null_sessions=2_000_000, duplicate_share=0.02
        )

    monkeypatch.setattr(cal, "profile_for", profile_for)
    generate(50_000, seed=3, out=tmp_path)
    for name in ("2019-Oct.csv", "2019-Nov.csv"):
        month = pl.read_csv(tmp_path / name)
        assert month["price"].eq(0).mean() == pytest.approx(0.5, abs=0.02)
        assert month["user_session"].null_count() > 500
        assert month.height - month.unique().height > 100  # the duplicates are there
        assert near_copies(month).height == 0


def test_real_head_matches_the_same_row_format(real_head: Path) -> None:
    lines = _lines(real_head)
    assert lines[0] == HEADER
    # All but the last line, which the published file cut off mid-row.
    assert [line for line in lines[1:-1] if not ROW.fullmatch(line)] == []
    assert lines[-1].count(",") < HEADER.count(",")


def test_real_and_generated_parse_to_the_same_types(tmp_path: Path, real_head: Path) -> None:
    generate(20_000, seed=5, out=tmp_path)
    settings = {"infer_schema_length": 20_000, "try_parse_dates": False}
    real = pl.read_csv(real_head, **settings)
    for name in ("2019-Oct.csv", "2019-Nov.csv"):
        generated = pl.read_csv(tmp_path / name, **settings)
        assert generated.schema == real.schema
    assert real.schema["category_id"] == pl.Int64 and real.schema["price"] == pl.Float64


@pytest.mark.parametrize("compress", [False, True], ids=["csv", "gzip"])
def test_same_seed_same_bytes(tmp_path: Path, compress: bool) -> None:
    suffix = ".csv.gz" if compress else ".csv"
    digests = []
    for run in ("a", "b", "c"):
        seed = 11 if run != "c" else 12
        out = tmp_path / run
        generate(30_000, seed=seed, out=out, compress=compress)
        digests.append([(out / f"2019-{m}{suffix}").read_bytes() for m in ("Oct", "Nov")])
    assert digests[0] == digests[1]
    assert digests[0] != digests[2]
    if compress:
        text = gzip.decompress(digests[0][0]).decode()
        assert text.startswith(HEADER + "\n")


def test_cli_writes_kaggle_names_under_cip_data_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CIP_DATA_DIR", str(tmp_path))
    assert cip(["generate", "--events", "3000", "--months", "2019-12,2020-01", "--gzip"]) == 0
    names = sorted(p.name for p in (tmp_path / "raw").iterdir())
    assert names == ["2019-Dec.csv.gz", "2020-Jan.csv.gz"]
    jan = pl.read_csv(tmp_path / "raw" / "2020-Jan.csv.gz")
    assert jan["event_time"].str.starts_with("2020-01").all()


def test_cli_rejects_bad_arguments(capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (
        ["generate", "--events", "0"],
        ["generate", "--events", "10", "--months", "2019-13"],
    ):
        with pytest.raises(SystemExit) as exc:
            cip(argv)
        assert exc.value.code == 2
    assert "not a month" in capsys.readouterr().err
