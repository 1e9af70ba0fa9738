"""A folder of finished runs: `<name>.json` per run, each written atomically when the run ends.

Every file records a digest of the settings that determine its result (base, data, training
configuration). A rerun takes only the files whose digest matches its own settings, so changing
`--epochs` or the data never reuses a stale result; those files are overwritten as the new runs
finish.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

from subtune.atomic import write_text
from subtune.errors import SubtuneError
from subtune.training.profile import RunSpec

RUN_FORMAT = "subtune.run/1"
log = logging.getLogger(__name__)


def settings_digest(settings: dict) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]


class RunLog:
    def __init__(self, folder: str | Path, settings: dict):
        self.folder = Path(folder)
        self.digest = settings_digest(settings)
        self.stale = 0  # files from other settings, ignored by load()
        if self.folder.exists() and not self.folder.is_dir():
            raise SubtuneError(f"runs folder {self.folder} is a file: remove it or choose another folder")
        parent = self.folder.parent
        if not self.folder.exists() and not (parent.is_dir() and os.access(parent, os.W_OK)):
            raise SubtuneError(f"cannot create the runs folder {self.folder}: {parent} is not a writable folder; "
                               "choose another `runs` or `output`")

    def load(self) -> dict[str, dict]:
        """Results of the runs finished with these settings, by RunSpec key."""
        done, self.stale = {}, 0
        if not self.folder.is_dir():
            return done
        for path in sorted(self.folder.glob("*.json")):
            try:
                data = json.loads(path.read_text())
                spec = RunSpec.from_json(data["spec"])
                ok = data.get("format") == RUN_FORMAT and data.get("settings") == self.digest and spec.key == path.stem
            except (OSError, ValueError, KeyError, TypeError) as e:
                log.warning("ignoring %s: not a finished run (%s)", path, e)
                continue
            if ok:
                done[spec.key] = data["result"]
            else:
                self.stale += 1
        return done

    def save(self, spec: RunSpec, result: dict) -> None:
        if not self.folder.is_dir():  # made on the first result, so a failed start leaves nothing
            try:
                self.folder.mkdir()
            except OSError as e:
                raise SubtuneError(f"cannot create the runs folder {self.folder}: {e.strerror}") from None
        record = {"format": RUN_FORMAT, "settings": self.digest, "spec": spec.to_json(), "result": result}
        write_text(self.folder / f"{spec.key}.json", json.dumps(record, indent=1))
