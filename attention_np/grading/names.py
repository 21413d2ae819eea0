"""Who a submission belongs to: plain folders and file names, and the download layouts of two LMSs.

* Canvas ("Download Submissions"): ``smithalice_12345_67890_02_scaled_dot_product.ipynb`` is
  ``<name>_<user id>_<submission id>_<the student's file name>``; a late submission has
  ``_LATE`` after the name (``smithalice_LATE_12345_67890_...``); a resubmission's file name may
  end in ``-1``.
* Moodle ("Download all submissions"): a folder per student and submission,
  ``Alice Smith_123456_assignsubmission_file_/02_scaled_dot_product.ipynb``, where 123456 is
  the participant id the grading worksheet calls ``Participant 123456``.
* Otherwise: the extra text in the file name (``alice_02_scaled_dot_product.ipynb``), with
  ``-Copy1``/`` (1)``-style suffixes removed, else the folder's name (``alice/02_....ipynb``).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

CANVAS = re.compile(r"^(?P<name>[^_\s]+?)(?P<late>_LATE)?_(?P<uid>\d+)_(?P<sid>\d+)_(?P<rest>.+)$")
MOODLE = re.compile(r"^(?P<name>.+?)_(?P<pid>\d+)_assignsubmission_[a-z]+_?$")
COPY_SUFFIX = re.compile(r"(?:[ _-]*(?:copy\d*|\(\d+\)|v\d+|-\d+))+$", re.IGNORECASE)


@dataclass
class Identity:
    student: str
    lms: str = ""          # "canvas", "moodle" or ""
    lms_id: str = ""       # Canvas user id, Moodle participant id
    late: bool = False
    file_name: str = ""    # the student's own file name (the LMS prefix removed)


def clean_stem(stem: str) -> str:
    """The file name without ``-Copy1``, `` (1)``, ``-1`` suffixes."""
    return COPY_SUFFIX.sub("", stem).strip(" _-.")


def identify(path, notebook: str | None = None) -> Identity:
    path = Path(path)
    m = CANVAS.match(path.name)
    if m:
        return Identity(m["name"], "canvas", m["uid"], bool(m["late"]), m["rest"])
    for folder in list(path.parents)[:3]:
        m = MOODLE.match(folder.name)
        if m:
            return Identity(m["name"].strip(), "moodle", m["pid"], False, path.name)
    stem = clean_stem(path.stem)
    if notebook and notebook in stem and stem != notebook:
        rest = clean_stem(stem.replace(notebook, " ").strip(" _-.()"))
        if rest:
            return Identity(rest, file_name=path.name)
    parent = path.resolve().parent.name
    return Identity(parent or stem, file_name=path.name)


def student_name(path, notebook: str | None) -> str:
    return identify(path, notebook).student
