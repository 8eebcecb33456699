"""Daily online backups of the SQLite database into ``BACKUP_DIR`` (SPEC §7).

``sqlite3.Connection.backup`` copies the database page by page while the bot keeps
writing (WAL): the copy is a consistent snapshot, unlike copying the file, which can
catch a half-applied transaction or miss the ``-wal`` file. It is blocking I/O, so it
runs in a thread. A copy is written under a temporary name and renamed when complete,
so a crash mid-backup never leaves a truncated file that looks like a backup.
PostgreSQL is backed up with ``pg_dump`` instead (README, "Running for real").
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from datetime import datetime, timedelta
from pathlib import Path

from sqlalchemy.engine import make_url

from core.clock import utcnow

log = logging.getLogger(__name__)

PREFIX = "bot-"
SUFFIX = ".sqlite3"
DAY = timedelta(days=1)


def sqlite_path(database_url: str) -> Path | None:
    """The file of a SQLite database URL; None for other databases and ``:memory:``."""
    url = make_url(database_url)
    if url.get_backend_name() != "sqlite" or not url.database or url.database == ":memory:":
        return None
    return Path(url.database)


class SqliteBackup:
    def __init__(self, database: Path, directory: Path, keep: int) -> None:
        self.database = database
        self.directory = directory
        self.keep = keep

    def backups(self) -> list[Path]:
        """Completed backups, oldest first (the UTC timestamp in the name sorts)."""
        return sorted(self.directory.glob(f"{PREFIX}*{SUFFIX}"))

    def next_run(self) -> datetime:
        """Now when the newest backup is a day old (or none exists), else a day after it.

        So restarts neither skip a day nor take a backup at every start.
        """
        now = utcnow()
        done = self.backups()
        if not done:
            return now
        newest = datetime.fromtimestamp(done[-1].stat().st_mtime, tz=now.tzinfo)
        return max(now, newest + DAY)

    async def run(self) -> Path:
        path = await asyncio.to_thread(self._backup)
        log.info("backup_written path=%s kept=%s", path, self.keep)
        return path

    def _backup(self) -> Path:
        self.directory.mkdir(parents=True, exist_ok=True)
        target = self.directory / f"{PREFIX}{utcnow():%Y%m%dT%H%M%S%fZ}{SUFFIX}"
        partial = target.with_name(target.name + ".partial")
        source = sqlite3.connect(self.database, timeout=30)
        try:
            copy = sqlite3.connect(partial)
            try:
                source.backup(copy)
            finally:
                copy.close()
        finally:
            source.close()
        partial.replace(target)
        for old in self.backups()[: -self.keep]:
            old.unlink(missing_ok=True)
        return target
