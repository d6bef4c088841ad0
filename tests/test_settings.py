"""Settings come from the environment under the names Label Studio's own deployments use."""
from __future__ import annotations

import base64

import pytest

from backend.app import create_app
from core.settings import Settings, SettingsError
from tests.helpers import predict_body


@pytest.mark.parametrize("prefix", ["", "ML_SERVER_"])
def test_basic_auth_is_read_under_label_studios_compose_and_ml_backend_template_names(tmp_path, prefix):
    settings = Settings.from_env({f"{prefix}BASIC_AUTH_USER": "ls", f"{prefix}BASIC_AUTH_PASS": "s3cret", "MODEL_DIR": str(tmp_path)},
                                 instant_refit_seconds=0.0, reconcile_seconds=0, prepare_wait_seconds=60)
    app = create_app(settings)
    try:
        client = app.test_client()
        good = {"Authorization": "Basic " + base64.b64encode(b"ls:s3cret").decode()}
        assert client.post("/predict", json=predict_body(["小区电梯坏了"])).status_code == 401
        assert client.post("/predict", json=predict_body(["小区电梯坏了"]), headers=good).status_code == 200
    finally:
        app.extensions["service"].stop()


def test_two_names_for_one_setting_must_agree():
    assert Settings.from_env({"BASIC_AUTH_PASS": "same", "ML_SERVER_BASIC_AUTH_PASS": "same", "BASIC_AUTH_USER": "ls"}).basic_auth_pass == "same"
    with pytest.raises(SettingsError, match="BASIC_AUTH_PASS and ML_SERVER_BASIC_AUTH_PASS are the same setting but differ"):
        Settings.from_env({"BASIC_AUTH_PASS": "one", "ML_SERVER_BASIC_AUTH_PASS": "other", "BASIC_AUTH_USER": "ls"})
    with pytest.raises(SettingsError, match="set both BASIC_AUTH_USER and BASIC_AUTH_PASS"):
        Settings.from_env({"ML_SERVER_BASIC_AUTH_USER": "ls"})
