"""Configuration: YAML < environment < CLI flags; wrong keys and values name themselves."""

from __future__ import annotations

import subprocess
import sys

import pytest

from worklist_mpps.config import Config, ConfigError, load_config


def test_defaults_follow_the_orthanc_deployment():
    cfg = load_config(env={})
    assert (cfg.ae_title, cfg.port) == ("WORKLISTS", 5243)
    assert cfg.database_url.startswith("sqlite:///data/")
    assert cfg.migrate_on_start and cfg.load_sample_data
    assert cfg.worklist_default_statuses == ["SCHEDULED", "IN PROGRESS"]


def test_dicom_listens_on_loopback_unless_devices_are_named(tmp_path):
    """Secure by default: the DICOM ports bind loopback; another address needs the
    device list, since an A-ASSOCIATE-RQ carries no credentials (PS3.8 7.1.1)."""
    assert load_config(env={}).bind == "127.0.0.1"
    for bind in ("0.0.0.0", "::", "192.0.2.7"):
        with pytest.raises(ConfigError, match=f"bind: '{bind}' is not a loopback.*devices"):
            load_config(env={"WORKLIST_MPPS_BIND": bind})
    devices = '[{"ae_title": "CT01", "hosts": ["192.0.2.0/24"]}]'
    cfg = load_config(env={"WORKLIST_MPPS_BIND": "0.0.0.0", "WORKLIST_MPPS_DEVICES": devices})
    assert cfg.bind == "0.0.0.0" and cfg.checks_called_ae_title
    for loopback in ("127.0.0.1", "::1", "localhost"):
        assert load_config(env={"WORKLIST_MPPS_BIND": loopback}).bind == loopback
    proc = subprocess.run(
        [sys.executable, "-m", "worklist_mpps", "serve", "--bind", "0.0.0.0"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert proc.returncode == 2 and "devices" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr


def test_precedence_yaml_env_cli(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("port: 1111\nae_title: FROMYAML\nlog_level: DEBUG\n")
    cfg = load_config(path, env={"WORKLIST_MPPS_PORT": "2222"}, overrides={"ae_title": "CLI"})
    assert (cfg.port, cfg.ae_title, cfg.log_level) == (2222, "CLI", "DEBUG")


def test_types_are_parsed_from_strings():
    cfg = load_config(
        env={
            "WORKLIST_MPPS_WORKLIST_FILTER_BY_CALLING_AE": "yes",
            "WORKLIST_MPPS_WORKLIST_DEFAULT_STATUSES": "SCHEDULED, IN PROGRESS, COMPLETED",
            "WORKLIST_MPPS_AUTO_MIGRATE": "false",
            "WORKLIST_MPPS_NETWORK_TIMEOUT": "5.5",
        }
    )
    assert cfg.worklist_filter_by_calling_ae is True
    assert cfg.worklist_default_statuses == ["SCHEDULED", "IN PROGRESS", "COMPLETED"]
    assert cfg.auto_migrate is False and not cfg.migrate_on_start
    assert cfg.network_timeout == 5.5


@pytest.mark.parametrize(
    "yaml_text,names",
    [
        ("prot: 1\n", "'prot'"),
        ("port: eleven\n", "port"),
        ("port: 70000\n", "port"),
        ("ae_title: THIS_TITLE_IS_TOO_LONG\n", "ae_title"),
        ("load_sample_data: maybe\n", "load_sample_data"),
        ("worklist_default_statuses: [SCHEDULED, DONE]\n", "'DONE'"),
        ("log_level: LOUD\n", "log_level"),
        ("- a list\n", "mapping"),
    ],
)
def test_wrong_key_or_value_is_named(tmp_path, yaml_text, names):
    path = tmp_path / "c.yaml"
    path.write_text(yaml_text)
    with pytest.raises(ConfigError) as exc:
        load_config(path, env={})
    assert names in str(exc.value)


def test_unknown_environment_variable_is_named():
    with pytest.raises(ConfigError, match="WORKLIST_MPPS_PORTT"):
        load_config(env={"WORKLIST_MPPS_PORTT": "1"})


def test_serve_fails_at_start_naming_the_key(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("port: 5243\nmax_associatons: 3\n")
    proc = subprocess.run(
        [sys.executable, "-m", "worklist_mpps", "serve", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert proc.returncode == 2
    assert "max_associatons" in proc.stderr


def test_every_key_has_help_text():
    import dataclasses

    assert all(f.metadata.get("help") for f in dataclasses.fields(Config))


def test_forward_peers_from_yaml_and_environment(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(
        "forward_peers:\n  - {name: ris, host: ris.example, port: 104, ae_title: RIS}\n"
        "  - {name: old, host: h, port: 11112, enabled: false}\n"
    )
    cfg = load_config(path, env={})
    assert [(p.name, p.port, p.ae_title, p.enabled) for p in cfg.forward_peers] == [
        ("ris", 104, "RIS", True),
        ("old", 11112, "ANY-SCP", False),
    ]
    cfg = load_config(
        env={"WORKLIST_MPPS_FORWARD_PEERS": '[{"name": "x", "host": "127.0.0.1", "port": "4242"}]'}
    )
    assert cfg.forward_peers[0].port == 4242


@pytest.mark.parametrize(
    "value,names",
    [
        ('[{"name": "x", "host": "h"}]', "'port'"),
        ('[{"name": "x", "host": "h", "port": 1, "colour": 1}]', "'colour'"),
        (
            '[{"name": "x", "host": "h", "port": 1}, {"name": "x", "host": "h", "port": 2}]',
            "unique",
        ),
        ("not json", "JSON"),
    ],
)
def test_bad_forward_peers_are_named(value, names):
    with pytest.raises(ConfigError) as exc:
        load_config(env={"WORKLIST_MPPS_FORWARD_PEERS": value})
    assert "forward_peers" in str(exc.value) and names in str(exc.value)


def test_orthanc_url_and_password_handling():
    with pytest.raises(ConfigError, match="orthanc_url"):
        load_config(env={"WORKLIST_MPPS_ORTHANC_URL": "orthanc:8042"})
    proc = subprocess.run(
        [sys.executable, "-m", "worklist_mpps", "config"],
        capture_output=True,
        text=True,
        timeout=60,
        env={"WORKLIST_MPPS_ORTHANC_PASSWORD": "s3cret-value", "PATH": "/usr/bin:/bin"},
    )
    assert proc.returncode == 0 and "s3cret-value" not in proc.stdout
    assert "orthanc_password" in proc.stdout and "********" in proc.stdout


def test_every_secret_can_come_from_a_file_and_is_masked():
    """Issue 12 item 13: each secret field has a *_file companion (the database password
    goes into database_url), and `config` masks secrets and URL passwords alike."""
    import dataclasses

    from worklist_mpps.config import shown_value

    fields = {f.name: f for f in dataclasses.fields(Config)}
    secrets = {name for name, f in fields.items() if f.metadata.get("secret")}
    by_file = {
        f.metadata["secret_file"]: name
        for name, f in fields.items()
        if f.metadata.get("secret_file")
    }
    assert secrets | {"database_url"} == set(by_file)
    assert all(by_file[name] == name + "_file" for name in secrets)
    assert shown_value("http_token", "abc") == "'********'"
    assert shown_value("database_url", "postgresql://u:p@h/db") == "'postgresql://u:********@h/db'"
    assert shown_value("orthanc_url", "http://orthanc:8042") == "'http://orthanc:8042'"
