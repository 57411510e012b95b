"""Coverage-guided fuzzing entry point: ``python -m tests.reliability.fuzz_main NAME [flags]``.

The product packages are imported under atheris' instrumentation (only ``pki`` and
``cps_login``: instrumenting cryptography or SQLAlchemy would cost minutes and find nothing of
ours), then libFuzzer drives ``fuzz_targets.TARGETS[NAME]``.
"""

from __future__ import annotations

import sys

import atheris

with atheris.instrument_imports(include=["pki", "cps_login"]):
    from tests.reliability import fuzz_targets

if __name__ == "__main__":
    sys.exit(fuzz_targets.main(sys.argv))
