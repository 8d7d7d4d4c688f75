"""Admission settings (router/core/admission/settings.py): tiers by name, alias or index."""

from __future__ import annotations

from ctxroute.router.core.admission.settings import AdmissionSettings


def test_tiers_are_named_aliased_or_defaulted() -> None:
    s = AdmissionSettings(aliases={"0": 0, "batch": 2})
    assert [s.tier_of(v) for v in ("high", " Normal ", "LOW", "0", "batch")] == [0, 1, 2, 0, 2]
    assert s.tier_of(None) == s.tier_of("urgent!") == s.tier_of("7") == 1
