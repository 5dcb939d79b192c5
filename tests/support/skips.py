"""The reasons a test may skip, worded as README's Testing section names them, and the marks
that apply them."""

from __future__ import annotations

import os

import pytest

from tests.support.postfix import missing_binaries

NEEDS_ROOT_AND_POSTFIX = "needs root and Postfix (see README: Testing)"
NEEDS_PYMILTER = "needs pymilter, built against libmilter-dev (see README: Testing)"
NEEDS_MILTERTEST = "needs Debian's miltertest (see README: Testing)"

needs_root_and_postfix = pytest.mark.skipif(
    os.geteuid() != 0 or bool(missing_binaries()), reason=NEEDS_ROOT_AND_POSTFIX
)
