"""The benchmarks: `python -m benchmarks` (the whole suite) and the bench_*.py scripts.

Why this file: the scripts are run as files (`python benchmarks/bench_train.py`) and
import their helpers by bare name (`from timing import timed`), since their folder is
then first on sys.path. Putting the folder on sys.path here too lets the same helpers
and scripts be imported by the package (`python -m benchmarks`, its workers, the
tests) without two ways of spelling every import.
"""

import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))
if _HERE not in sys.path:
    sys.path.append(_HERE)
