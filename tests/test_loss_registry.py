"""The loss registry against what lists the losses outside it: the config schema, config.yaml, the
config dataclass, LossSettings and the tests' float64 references."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml

from loss_references import REFERENCES
from sedsft.config import SCHEMA_RELPATH, SFTConfig
from sedsft.loss_registry import CE, GEM, check_settings, config_parameters, loss_named, loss_names, register
from sedsft.losses import LOSSES, LossSettings

REPO = Path(__file__).resolve().parents[1]


def schema_sft() -> dict:
    with open(REPO / SCHEMA_RELPATH) as fh:
        return yaml.safe_load(fh)["$defs"]["experiment"]["properties"]["sft"]["properties"]


def test_the_schema_offers_exactly_the_registered_losses():
    assert schema_sft()["loss"]["enum"] == list(loss_names()) == list(LOSSES)


def test_the_schema_offers_exactly_gems_weightings():
    assert schema_sft()["gem_weighting"]["enum"] == list(GEM.WEIGHTINGS)


def test_every_loss_has_a_float64_reference_with_cases():
    assert set(REFERENCES) == set(loss_names())
    assert all(ref.cases for ref in REFERENCES.values())


def test_every_loss_parameter_is_a_setting_a_config_key_and_a_default():
    with open(REPO / "config.yaml") as fh:
        defaults = yaml.safe_load(fh)["defaults"]["sft"]
    settings_fields = {f.name for f in dataclasses.fields(LossSettings)}
    config_fields = {f.name for f in dataclasses.fields(SFTConfig)}
    for name in loss_names():
        for key in loss_named(name).parameters:
            assert key in settings_fields and key in config_fields, (name, key)
            assert key in schema_sft() and key in defaults, (name, key)
    # sft.loss_settings copies exactly these: no LossSettings field is left at its default
    assert set(config_parameters()) == settings_fields - {"loss", "tau"}


def test_only_sed_reads_tau():
    # cli's sft stage reads the threshold artifact for these losses only
    assert [name for name in loss_names() if loss_named(name).needs_tau] == ["sed"]


def test_an_unknown_loss_is_refused_naming_the_registered_ones():
    with pytest.raises(ValueError, match="unknown loss 'kl'; choose one of " + ", ".join(loss_names())):
        check_settings(LossSettings("kl"))


def test_check_settings_returns_the_named_loss():
    assert check_settings(LossSettings("sed", tau=0.5)) is loss_named("sed")


def test_a_name_cannot_be_registered_twice():
    with pytest.raises(ValueError, match="twice"):
        register(type("AnotherCE", (CE,), {}))
    assert type(loss_named("ce")) is CE
