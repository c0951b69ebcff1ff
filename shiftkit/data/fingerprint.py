"""A content fingerprint of image tables: what a resumed run must find unchanged.

A path says where the data is, not what it is: a manifest whose labels were edited, or images re-exported under
the same names, are other data at the same path. The fingerprint hashes each record (path, labels, site,
spacing) in order, and each file's content key (SHA-1 of its bytes, as the disk cache keys images), so any of
those edits gives another fingerprint. The cost is one more read of every file (about 1 s per GB).
"""

from __future__ import annotations

import hashlib
import json

from shiftkit.data.cache import content_key
from shiftkit.data.table import ImageTable


def table_fingerprint(*tables: ImageTable | None) -> str:
    """SHA-1 (16 hex digits) over the tables' records and file contents, in order; ``None`` tables count as
    absent (so a run without a test set and one with an empty slot differ from one with it)."""
    digest = hashlib.sha1()
    for table in tables:
        if table is None:
            digest.update(b"<none>\n")
            continue
        digest.update(json.dumps({"classes": list(table.classes), "multilabel": table.multilabel}).encode())
        for record in table.records:
            row = [str(record.path), list(record.labels), record.site,
                   list(record.spacing) if record.spacing is not None else None, content_key(record.path)]
            digest.update(json.dumps(row).encode() + b"\n")
        digest.update(b"<end>\n")
    return digest.hexdigest()[:16]
