"""Shared setup for the state resolution tests."""

from __future__ import annotations

import os
import sys

from hypothesis import Phase, settings

# The tests import their helpers (state_res_testlib) as a sibling module, whatever
# pytest's import mode.
sys.path.insert(0, os.path.dirname(__file__))

# `pytest --hypothesis-profile=state-quick` reports the first failure unshrunk: handy
# when checking that a deliberate bug in the resolver is caught.
settings.register_profile("state-quick", phases=[Phase.explicit, Phase.generate])
