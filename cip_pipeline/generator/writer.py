"""Writes blocks of events as REES46 CSV in a background thread, so that formatting and
disk writes overlap with the generation of the next block."""

from __future__ import annotations

import gzip
import io
import os
import queue
import threading
from pathlib import Path
from typing import IO

import polars as pl

DATETIME_FORMAT = "%Y-%m-%d %H:%M:%S UTC"


class MonthFileWriter:
    """Appends blocks to month files; each file is written under a temporary name and
    renamed when complete, so a crashed run never leaves a file that looks whole."""

    def __init__(self, compress: bool) -> None:
        self.compress = compress
        self._files: dict[Path, tuple[IO[bytes], IO[bytes] | None]] = {}
        self._queue: queue.Queue[tuple[Path, pl.DataFrame] | None] = queue.Queue(maxsize=2)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _tmp(self, path: Path) -> Path:
        return path.with_name(path.name + ".partial")

    def _open(self, path: Path) -> tuple[IO[bytes], IO[bytes] | None]:
        raw = open(self._tmp(path), "wb")  # noqa: SIM115 - closed in close()
        if self.compress:
            # mtime=0 and no file name in the header: same seed, same bytes.
            return gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0), raw
        return raw, None

    def _run(self) -> None:
        while (item := self._queue.get()) is not None:
            if self._error is not None:
                continue
            path, frame = item
            try:
                first = path not in self._files
                if first:
                    self._files[path] = self._open(path)
                out = self._files[path][0]
                if self.compress:
                    buf = io.BytesIO()
                    frame.write_csv(
                        buf,
                        include_header=first,
                        datetime_format=DATETIME_FORMAT,
                        float_precision=2,
                    )
                    out.write(buf.getvalue())
                else:
                    frame.write_csv(
                        out,
                        include_header=first,
                        datetime_format=DATETIME_FORMAT,
                        float_precision=2,
                    )
            except BaseException as exc:  # surfaced to the caller in put() / close()
                self._error = exc

    def put(self, path: Path, frame: pl.DataFrame) -> None:
        if self._error is not None:
            raise self._error
        self._queue.put((path, frame))

    def _finish(self) -> None:
        self._queue.put(None)
        self._thread.join()
        for f, raw in self._files.values():
            f.close()
            if raw is not None:
                raw.close()

    def close(self) -> list[Path]:
        """Flush everything and publish the files under their final names."""
        self._finish()
        if self._error is not None:
            self.abort()
            raise self._error
        for path in self._files:
            os.replace(self._tmp(path), path)
        return list(self._files)

    def abort(self) -> None:
        """Stop and remove the partial files."""
        if self._thread.is_alive():
            self._finish()
        for path in self._files:
            self._tmp(path).unlink(missing_ok=True)
