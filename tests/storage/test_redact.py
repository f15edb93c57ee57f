"""terraloom.storage.redact: credentials never survive, ordinary settings do."""

from __future__ import annotations

import json

import pytest

from terraloom.storage.redact import REDACTED, is_secret_key, redact, redact_url


@pytest.mark.parametrize(
    "key",
    [
        "AWS_SECRET_ACCESS_KEY",
        "AWS_ACCESS_KEY_ID",
        "AWS_SESSION_TOKEN",
        "GDAL_HTTP_HEADERS",
        "GDAL_HTTP_USERPWD",
        "GDAL_HTTP_PROXYUSERPWD",
        "AZURE_STORAGE_ACCESS_KEY",
        "AZURE_STORAGE_SAS_TOKEN",
        "AZURE_STORAGE_CONNECTION_STRING",
        "GS_OAUTH2_CLIENT_SECRET",
        "OSS_SECRET_ACCESS_KEY",
        "SWIFT_KEY",
        "api_key",
        "password",
        "Authorization",
    ],
)
def test_credential_keys(key: str) -> None:
    assert is_secret_key(key)


@pytest.mark.parametrize(
    "key",
    [
        "GDAL_HTTP_TIMEOUT",
        "AWS_REGION",
        "AWS_S3_ENDPOINT",
        "GDAL_CACHEMAX",
        "max_cloud_fraction",
        "modalities",
        "GDAL_HTTP_AUTH",
    ],
)
def test_ordinary_keys(key: str) -> None:
    assert not is_secret_key(key)


def test_redact_config_keeps_structure_drops_secrets() -> None:
    cfg = {
        "max_cloud_fraction": 0.2,
        "modalities": ["S2L2A", "DEM"],
        "band_subset": [["S2L2A", ["B02", "B03"]]],
        "gdal_options": [
            ["GDAL_HTTP_HEADERS", "Authorization: Bearer sekrit-bearer-1"],
            ["AWS_SECRET_ACCESS_KEY", "sekrit-aws-2"],
            ["GDAL_HTTP_PROXY", "http://bob:sekrit-pw-3@proxy:3128"],
            ["X_CUSTOM", "authorization: Basic c2VrcmV0"],
            ["GDAL_HTTP_TIMEOUT", "30"],
        ],
    }
    got = redact(cfg)
    text = json.dumps(got)
    for secret in ("sekrit", "c2VrcmV0", "bob"):
        assert secret not in text
    assert got["gdal_options"][0] == ["GDAL_HTTP_HEADERS", REDACTED]
    assert got["gdal_options"][1] == ["AWS_SECRET_ACCESS_KEY", REDACTED]
    assert got["gdal_options"][2] == ["GDAL_HTTP_PROXY", f"http://{REDACTED}@proxy:3128"]
    assert got["gdal_options"][4] == ["GDAL_HTTP_TIMEOUT", "30"]
    assert got["band_subset"] == cfg["band_subset"] and got["modalities"] == cfg["modalities"]
    assert redact(got) == got  # idempotent: a stored config redacts to itself
    assert redact_url("https://example.com/a?b=1") == "https://example.com/a?b=1"
