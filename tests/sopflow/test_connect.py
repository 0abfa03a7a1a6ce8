"""Connecting through `temporalio.envconfig`: the same variables and profiles as the `temporal` CLI, Cloud included."""

from __future__ import annotations

import datetime
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from temporalio.service import TLSConfig

from sopflow.connect import ConnectionFailed, connect, connect_config
from sopflow.mailsink import free_port

CLOUD = "sopflow-prod.a1b2c.tmprl.cloud:7233"


def client_certificate(folder: Path) -> tuple[Path, Path]:
    """A throwaway self-signed client certificate and key, as Temporal Cloud's mTLS uses."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "sopflow-worker")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = folder / "client.pem", folder / "client.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_path, key_path


def test_without_settings_the_local_dev_server_is_the_default():
    assert connect_config(env={}) == {"target_host": "localhost:7233"}


def test_temporal_cloud_with_an_api_key_gets_namespace_key_and_tls():
    config = connect_config(
        env={"TEMPORAL_ADDRESS": CLOUD, "TEMPORAL_NAMESPACE": "sopflow-prod.a1b2c", "TEMPORAL_API_KEY": "key-123"}
    )
    assert config["target_host"] == CLOUD
    assert config["namespace"] == "sopflow-prod.a1b2c"
    assert config["api_key"] == "key-123"
    assert config["tls"] is True  # an API key turns TLS on


def test_temporal_cloud_with_a_client_certificate_gets_mtls(tmp_path: Path):
    cert, key = client_certificate(tmp_path)
    config = connect_config(
        env={
            "TEMPORAL_ADDRESS": CLOUD,
            "TEMPORAL_NAMESPACE": "sopflow-prod.a1b2c",
            "TEMPORAL_TLS_CLIENT_CERT_PATH": str(cert),
            "TEMPORAL_TLS_CLIENT_KEY_PATH": str(key),
        }
    )
    tls = config["tls"]
    assert isinstance(tls, TLSConfig)
    assert tls.client_cert == cert.read_bytes() and tls.client_private_key == key.read_bytes()
    assert "api_key" not in config


def test_a_profile_in_temporal_toml_is_chosen_by_temporal_profile(tmp_path: Path):
    toml = tmp_path / "temporal.toml"
    toml.write_text(
        '[profile.default]\naddress = "localhost:7233"\n\n'
        f'[profile.cloud]\naddress = "{CLOUD}"\nnamespace = "sopflow-prod.a1b2c"\napi_key = "key-456"\n'
    )
    config = connect_config(env={"TEMPORAL_CONFIG_FILE": str(toml), "TEMPORAL_PROFILE": "cloud"})
    assert config["target_host"] == CLOUD and config["api_key"] == "key-456"
    # Environment variables override the profile, as with the CLI.
    config = connect_config(
        env={"TEMPORAL_CONFIG_FILE": str(toml), "TEMPORAL_PROFILE": "cloud", "TEMPORAL_NAMESPACE": "staging.a1b2c"}
    )
    assert config["namespace"] == "staging.a1b2c"


def test_a_missing_certificate_file_is_one_line_naming_it(tmp_path: Path):
    with pytest.raises(ConnectionFailed, match=r"missing-client\.pem") as failed:
        connect_config(
            env={
                "TEMPORAL_TLS_CLIENT_CERT_PATH": str(tmp_path / "missing-client.pem"),
                "TEMPORAL_TLS_CLIENT_KEY_PATH": str(tmp_path / "missing-client.key"),
            }
        )
    assert "\n" not in str(failed.value)


def test_an_unknown_profile_is_a_connection_failure(tmp_path: Path):
    toml = tmp_path / "temporal.toml"
    toml.write_text('[profile.default]\naddress = "localhost:7233"\n')
    with pytest.raises(ConnectionFailed, match="nope"):
        connect_config(env={"TEMPORAL_CONFIG_FILE": str(toml), "TEMPORAL_PROFILE": "nope"})


async def test_an_unreachable_server_is_reported_without_the_api_key(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("TEMPORAL_ADDRESS", f"127.0.0.1:{free_port()}")
    monkeypatch.setenv("TEMPORAL_NAMESPACE", "sopflow-prod.a1b2c")
    monkeypatch.setenv("TEMPORAL_API_KEY", "very-secret-api-key")
    monkeypatch.delenv("SOPFLOW_ENCRYPTION_KEYS", raising=False)
    with pytest.raises(ConnectionFailed) as failed:
        await connect()
    assert "sopflow-prod.a1b2c" in str(failed.value)
    assert "very-secret-api-key" not in str(failed.value)


async def test_an_invalid_encryption_key_fails_the_connection_in_one_line(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("SOPFLOW_ENCRYPTION_KEYS", "k1:bm90LWEta2V5")
    with pytest.raises(ConnectionFailed, match=r"invalid configuration: .*entry 1 \(k1\)") as failed:
        await connect()
    assert "bm90LWEta2V5" not in str(failed.value)
