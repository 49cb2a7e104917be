"""A long job split into small tasks that several workers share (R42); routed to low by glob."""

from __future__ import annotations

from typing import Annotated, Any

from celery import chord
from pydantic import Field

from {{ cookiecutter.package_name }}.celery_app import reliable_app
from {{ cookiecutter.package_name }}.settings import get_settings
from {{ cookiecutter.package_name }}.tasks.base import ReliableTask

Size = Annotated[int, Field(ge=1, le=10_000_000)]
ChunkSize = Annotated[int, Field(ge=1, le=1_000_000)]
MAX_CHUNKS = get_settings().report_max_chunks


class ReportTask(ReliableTask):
    def check_arguments(self, arguments: dict[str, Any]) -> None:
        chunks = -(-arguments["size"] // arguments["chunk_size"])
        if chunks > MAX_CHUNKS:
            raise ValueError(
                f"size {arguments['size']} in chunks of {arguments['chunk_size']} makes"
                f" {chunks} subtasks; at most {MAX_CHUNKS} (raise chunk_size; REPORT_MAX_CHUNKS)"
            )


@reliable_app.task(name="demo.reports.sum_chunk", bind=True)
def sum_chunk(self: ReliableTask, start: int, stop: int) -> int:
    """One slice of the work: the sum of squares in [start, stop)."""
    return sum(n * n for n in range(start, stop))


@reliable_app.task(name="demo.reports.combine", bind=True)
def combine(self: ReliableTask, parts: list[int]) -> dict[str, int]:
    """Chord callback: runs once every slice has finished."""
    return {"total": sum(parts), "chunks": len(parts)}


def report_chord(size: int, chunk_size: int) -> chord:
    """The whole report as a chord: one sum_chunk per slice, then combine."""
    slices = [
        sum_chunk.si(start, min(start + chunk_size, size)) for start in range(0, size, chunk_size)
    ]
    return chord(slices, combine.s())


@reliable_app.task(name="demo.reports.build_report", base=ReportTask, bind=True)
def build_report(self: ReportTask, size: Size, chunk_size: ChunkSize) -> Any:
    """Replace itself with the chord: the slices run in parallel on every low worker.

    Too many slices is a final failure (ValueError is not retried), whoever sent it.
    """
    self.check_arguments({"size": size, "chunk_size": chunk_size})
    return self.replace(report_chord(size, chunk_size))
