"""Every shipped config variant loads, and passes the start-up checks on the devices it is meant for."""

import importlib.util
import os

import pytest

from r1jax.config_check import ConfigError, check_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _r1_zero():
    spec = importlib.util.spec_from_file_location("r1_zero", os.path.join(ROOT, "configs", "r1_zero.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("variant, n_devices", [("tiny", 1), ("tiny", 8), ("smollm2", 1), ("dsv3_pod", 1024)])
def test_variants_pass_start_up_checks(variant, n_devices):
    check_config(_r1_zero().get_config(variant), n_devices=n_devices)


def test_pod_config_does_not_fit_a_smaller_slice_and_says_why():
    with pytest.raises(ConfigError, match="config.mesh"):
        check_config(_r1_zero().get_config("dsv3_pod"), n_devices=256)


def test_unknown_variant():
    with pytest.raises(ValueError, match="unknown variant 'huge'"):
        _r1_zero().get_config("huge")
