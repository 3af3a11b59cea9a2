"""The one progress helper: ``tqdm.auto`` bars for long work, nothing at all when ``progress=False``.

Every long-running function takes ``progress: bool`` and makes its bar here, so bars look alike in notebooks and
terminals and turning them off never needs a ``None`` check at the call site.
"""

from __future__ import annotations

from typing import Iterable


def progress_bar(total: int | None = None, desc: str | None = None, enabled: bool = True, unit: str = "it",
                 **tqdm_kwargs):
    """A ``tqdm.auto`` bar (``total`` steps of ``unit``), or a do-nothing stand-in when ``enabled`` is False."""
    if not enabled:
        return _NoBar()
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit=unit, **tqdm_kwargs)


def progress_iter(iterable: Iterable, desc: str | None = None, enabled: bool = True, unit: str = "it",
                  **tqdm_kwargs) -> Iterable:
    """``iterable`` wrapped in a ``tqdm.auto`` bar, or ``iterable`` itself when ``enabled`` is False."""
    if not enabled:
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, desc=desc, unit=unit, **tqdm_kwargs)


class _NoBar:
    """Stands in for a bar when progress is off (the methods the package calls on bars)."""

    n = 0

    def update(self, n=1):
        self.n += n

    def refresh(self):
        pass

    def set_postfix_str(self, s="", refresh=True):
        pass

    def set_postfix(self, *args, **kwargs):
        pass

    def set_description(self, desc=None, refresh=True):
        pass

    def close(self):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
