"""The Downloader's memory of signed URLs, without a server."""

from __future__ import annotations

from typing import cast

import pytest

from stowfs import errors
from stowfs.remote.base import RemoteFile
from stowfs.remote.download import URLS_KEPT, Downloader
from stowfs.remote.transport import Transport
from stowfs.remote.tuning import Tuning


class StillClock:
    def wall_clock(self) -> float:
        return 0.0


def listed(key: str, url: str, expires: float = 1000.0) -> RemoteFile:
    return RemoteFile(key, "", key, 1, "text/plain", None, 0.0, 0.0, url=url, url_expires=expires)


async def test_the_urls_kept_are_those_of_the_files_used_last() -> None:
    """A renewed URL (it outlives the one a listing gives) is kept for the keys used
    most recently only: keys seen once and never again do not pile up."""
    downloads = Downloader(cast(Transport, StillClock()), None, Tuning())
    for key in ("a", "b"):
        downloads.remember(listed(key, f"https://x/{key}/renewed", expires=9000.0))
    for i in range(URLS_KEPT - 2):
        downloads.remember(listed(f"k{i}", f"https://x/k{i}"))
    url, _ = await downloads.fresh_url(listed("a", "https://x/a/listed"), 0)  # a read of a
    assert url == "https://x/a/renewed"
    downloads.remember(listed("new", "https://x/new"))  # one key too many: b goes, not a
    assert (await downloads.fresh_url(listed("a", "https://x/a/listed"), 0))[0].endswith("renewed")
    assert (await downloads.fresh_url(listed("b", "https://x/b/listed"), 0))[0].endswith("listed")


async def test_a_file_given_no_url_by_a_dialect_that_cannot_renew_says_so() -> None:
    """The presign dialect's uploads give a key, no download URL: a read is refused for
    that, not for a URL that "has expired"."""
    downloads = Downloader(cast(Transport, StillClock()), None, Tuning())
    unread = RemoteFile("k", "", "k", 1, "text/plain", None, 0.0, 0.0)
    with pytest.raises(errors.Forbidden, match="gave no download URL for 'k'"):
        await downloads.fresh_url(unread, 0)
    downloads.remember(listed("old", "https://x/old", expires=-1.0))
    with pytest.raises(errors.Forbidden, match="has expired"):
        await downloads.fresh_url(listed("old", "https://x/old", expires=-1.0), 0)
