"""Downloads one URL into a cache folder with :func:`v2s_nb.weights.fetch`, in a process of its own: test_weights.py
kills it mid-download. Usage: ``python tests/fetch_url.py URL CACHE_DIR``."""

import sys

from v2s_nb.weights import fetch

if __name__ == "__main__":
    fetch(sys.argv[1], cache=sys.argv[2], progress=False)
