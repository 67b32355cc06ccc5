"""SHA-256 of a root's model files, remembered between commands by file identity.

``status`` and the plan of ``run`` verify every finished run's ``model.pt`` against the SHA-256
its result recorded (issue 12: a bit-flipped model of the right size must not show ``done``).
Hashing runs at about 1.2 GB/s from the page cache on the development machine (a 200 MB file in
0.17 s), far slower from a cold network filesystem, and a ResNet-50 / VGG-19 model with its masks
is 100-200 MB: a status of a 60-run grid would read gigabytes each time. So a digest is kept in
``ROOT/.digests.json`` under the file's identity, (device, inode, size, mtime, ctime), and reused
while that identity holds. Any write to the file changes its ctime, which no user-level tool can
set back, so a file changed in place or replaced is hashed again; what the cache cannot see is
decay of the storage itself, which the full check where a model is loaded
(``bench.run.load_final_model``, ``bench.store.usable_result``, both uncached) still catches.

The cache is only a cache: a missing, unreadable or damaged one is ignored and rewritten, and a
root that cannot be written (a colleague's, read-only) just goes without.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from bench import store

CACHE = ".digests.json"


def _identity(stat: os.stat_result) -> list[int]:
    return [stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns]


class Digests:
    """SHA-256 hex digests of files under `root`, cached in ``root/.digests.json`` (read on
    creation, written by ``save``). `hashed` counts the files actually read (for tests and
    measurements)."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.hashed = 0
        self._changed = False
        self._entries: dict[str, list] = {}
        try:
            loaded = json.loads((self.root / CACHE).read_text())
            if isinstance(loaded, dict):
                self._entries = {k: v for k, v in loaded.items()
                                 if isinstance(v, list) and len(v) == 6}
        except (OSError, UnicodeDecodeError, ValueError):
            pass

    def _key(self, path: Path) -> str:
        try:
            return str(Path(path).relative_to(self.root))
        except ValueError:
            return str(Path(path).absolute())

    def sha256(self, path: Path) -> str:
        """The file's SHA-256, from the cache when its identity is unchanged. Raises OSError
        when it cannot be read."""
        key = self._key(path)
        identity = _identity(os.stat(path))
        cached = self._entries.get(key)
        if cached is not None and cached[:5] == identity:
            return cached[5]
        _, digest = store.file_digest(path)
        self.hashed += 1
        # Stat again: a file that changed while it was read is not remembered.
        if _identity(os.stat(path)) == identity:
            self._entries[key] = [*identity, digest]
            self._changed = True
        return digest

    def save(self) -> None:
        """Write the cache when a digest was added; silently not when the root is not
        writable (only the next command's speed depends on it)."""
        if not self._changed or not self.root.is_dir():
            return
        live = {k: v for k, v in self._entries.items() if (self.root / k).exists()}
        try:
            store.atomic_write_text(self.root / CACHE, json.dumps(live, sort_keys=True))
        except OSError:
            return
        self._changed = False
