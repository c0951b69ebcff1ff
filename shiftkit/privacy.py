"""Keeping patient identifiers out of reports.

Two sources of identifiers exist:

- **image headers** (DICOM PatientName, PatientID, ...): shiftkit never reads them. Pixels come through
  SimpleITK/Pillow, and the acquisition metadata in reports comes from a fixed whitelist of technical tags
  (``shiftkit.data.metadata.DICOM_TAGS``); ``PATIENT_TAGS`` below lists what must never appear, for tests;
- **paths**: file and folder names often carry a patient name or ID. Reports name images by their path as the
  user gave it; ``--anonymize-paths`` replaces every input path in reports, logs and checkpoints by
  :func:`anonymize_path`: ``"path-"`` plus the first 12 hex digits of the SHA-256 of the path string.

The hash is stable (unsalted): the same path gives the same identifier in every run and on every machine, so
reports can be joined. It is **pseudonymisation, not anonymisation**: whoever holds the list of paths (or can
guess them: ``/data/DOE^JOHN/1.dcm``) can hash each one and find it in a report. Share reports made with
``--anonymize-paths`` only with people who should not see the paths, and keep the path list away from them;
pass a secret ``salt`` (Python API) when even guessed paths must not match.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

HASH_DIGITS = 12

# DICOM attributes that identify a patient (PS3.15 Annex E basic profile, the usual suspects); never read.
PATIENT_TAGS = {
    "0010|0010": "PatientName",
    "0010|0020": "PatientID",
    "0010|0030": "PatientBirthDate",
    "0010|1000": "OtherPatientIDs",
    "0010|1040": "PatientAddress",
    "0008|0050": "AccessionNumber",
    "0008|0080": "InstitutionName",
    "0008|0081": "InstitutionAddress",
    "0008|0090": "ReferringPhysicianName",
    "0008|1050": "PerformingPhysicianName",
    "0008|1070": "OperatorsName",
    "0020|0010": "StudyID",
}


def anonymize_path(path: str | Path, salt: str = "") -> str:
    """A stable pseudonym for a path: ``path-`` + 12 hex digits of SHA-256(salt + path string)."""
    digest = hashlib.sha256(f"{salt}{path}".encode("utf-8", "surrogatepass")).hexdigest()
    return f"path-{digest[:HASH_DIGITS]}"


def shown_path(path: str | Path | None, anonymize: bool) -> str | None:
    """How a path appears in a report: as given, or its pseudonym under ``--anonymize-paths``."""
    if path is None:
        return None
    return anonymize_path(path) if anonymize else str(path)


def scrub_path(text: str, path: str | Path) -> str:
    """Replace a path (and its file name, which decoders quote on their own) in a message by its pseudonym."""
    path = str(path)
    pseudonym = anonymize_path(path)
    text = text.replace(path, pseudonym)
    name = Path(path).name
    return text.replace(name, pseudonym) if name else text


def scrub_text(text: str, identifiers: list[str]) -> str:
    """Blank out known identifier strings (e.g. values read from a header) from free text."""
    for identifier in sorted((i for i in identifiers if i), key=len, reverse=True):
        text = text.replace(identifier, "[removed]")
    return text
