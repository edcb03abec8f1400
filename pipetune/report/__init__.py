"""The HTML report of a sweep: ``model`` computes every number, ``html`` renders one file."""

from __future__ import annotations

from pipetune.report.html import REPORT_NAME, render_report, write_report
from pipetune.report.model import Report, build_report

__all__ = ["REPORT_NAME", "Report", "build_report", "render_report", "write_report"]
