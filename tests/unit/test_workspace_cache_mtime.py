"""The cache's eviction order reads each repository's mtime; a repository another process on the volume
evicted between the listing and the read must sort first, not fail the eviction."""

from __future__ import annotations

import os
from pathlib import Path

from codeforge.workspace.cache import _mtime


def test_a_repository_gone_since_the_listing_sorts_first(tmp_path: Path) -> None:
    old, new = tmp_path / "old.git", tmp_path / "new.git"
    old.mkdir()
    new.mkdir()
    os.utime(old, (1_000, 1_000))
    os.utime(new, (2_000, 2_000))
    listed = [new, tmp_path / "gone.git", old]
    assert sorted(listed, key=_mtime) == [tmp_path / "gone.git", old, new]
    assert _mtime(old) == 1_000.0
