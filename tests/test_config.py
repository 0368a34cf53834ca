import subprocess
import sys
from pathlib import Path

import pytest

from sync_server.config import ConfigError, Settings

EXE = str(Path(sys.executable).parent / "webhost-sync")


def test_defaults_are_development_with_embedded_database():
    s = Settings.from_env({})
    assert (s.host, s.port, s.database_url, s.redis_url) == ("127.0.0.1", 8080, None, None)
    assert s.effective_log_format == "console"
    production = {"WEBHOST_ENV": "production", "SECRET_KEY": "k" * 32, "ENCRYPTION_KEY": "A" * 43}
    assert Settings.from_env(production).effective_log_format == "json"


@pytest.mark.parametrize(
    "env, variable",
    [
        ({"PORT": "eighty"}, "PORT"),
        ({"PORT": "70000"}, "PORT"),
        ({"DATABASE_URL": "mysql://x/y"}, "DATABASE_URL"),
        ({"REDIS_URL": "http://x"}, "REDIS_URL"),
        ({"LOG_FORMAT": "xml"}, "LOG_FORMAT"),
        ({"LOG_LEVEL": "loud"}, "LOG_LEVEL"),
        ({"MIGRATE_ON_START": "maybe"}, "MIGRATE_ON_START"),
        ({"SECRET_KEY": "short"}, "SECRET_KEY"),
        ({"WEBHOST_ENV": "production"}, "SECRET_KEY"),
        ({"WEBHOST_ENV": "production", "SECRET_KEY": "k" * 32}, "ENCRYPTION_KEY"),  # production needs its key
        ({"ENCRYPTION_KEY": "too-short"}, "ENCRYPTION_KEY"),
        ({"ENCRYPTION_KEY": "A" * 43, "ENCRYPTION_OLD_KEYS": "A" * 43 + ",nope"}, "ENCRYPTION_OLD_KEYS"),
        ({"DB_POOL_MIN": "9", "DB_POOL_MAX": "3"}, "DB_POOL_MIN"),
        ({"SYNC_SEND_QUEUE_BYTES": "1000"}, "SYNC_SEND_QUEUE_BYTES"),
        ({"SYNC_SEND_QUEUE_BYTES": "lots"}, "SYNC_SEND_QUEUE_BYTES"),
        ({"SYNC_MAX_MESSAGE_BYTES": str(128 * 1024 * 1024)}, "SYNC_SEND_QUEUE_BYTES"),  # a relayed update must fit
        ({"CLUSTER_PAUSE_ACK_SECONDS": "10", "CLUSTER_PAUSE_LEASE_SECONDS": "10"}, "CLUSTER_PAUSE_LEASE_SECONDS"),
    ],
)
def test_bad_value_names_the_variable(env, variable):
    with pytest.raises(ConfigError) as info:
        Settings.from_env(env)
    assert variable in str(info.value)


def test_unix_socket_database_url_is_accepted():
    url = "postgresql://app@/webhost?host=/run/postgresql"
    assert Settings.from_env({"DATABASE_URL": url}).database_url == url


def test_dev_secret_key_is_generated_once_and_kept(tmp_path):
    s = Settings.from_env({"DATA_DIR": str(tmp_path)})
    first = s.resolved_secret_key()
    assert len(first) >= 32
    assert s.resolved_secret_key() == first
    assert (tmp_path / "secret_key").stat().st_mode & 0o077 == 0


def test_dev_encryption_key_is_generated_once_and_kept(tmp_path):
    s = Settings.from_env({"DATA_DIR": str(tmp_path)})
    first = s.keyring()
    assert s.keyring().primary_id == first.primary_id
    assert (tmp_path / "encryption_key").stat().st_mode & 0o077 == 0
    assert Settings.from_env({"DATA_DIR": str(tmp_path), "ENCRYPTION_KEY": "A" * 43}).keyring().primary == bytes(32)


@pytest.mark.parametrize(
    "env, message",
    [
        ({"PORT": "not-a-port"}, "PORT must be an integer"),
        # production without its encryption key stops start-up (stored credentials could not be sealed)
        (
            {"WEBHOST_ENV": "production", "SECRET_KEY": "k" * 32},
            "ENCRYPTION_KEY must be set when WEBHOST_ENV=production",
        ),
    ],
)
def test_serve_refuses_a_bad_value_with_a_clear_message(tmp_path, env, message):
    result = subprocess.run(
        [EXE, "serve"],
        env={**env, "DATA_DIR": str(tmp_path), "PATH": ""},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def _env_command(env: dict[str, str]) -> str:
    result = subprocess.run([EXE, "env"], env={"PATH": "", **env}, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_env_shows_the_value_in_effect_marks_the_ones_set_and_describes_every_variable():
    out = _env_command({"PORT": "18100", "LOG_LEVEL": "debug"})
    lines = out.splitlines()
    assert "* PORT = 18100  (default 8080)" in lines
    assert "* LOG_LEVEL = debug  (default info)" in lines
    assert "  HOST = 127.0.0.1" in lines  # unset: the default is the value in effect, no mark
    listed = [line.split()[0] if not line.startswith("*") else line.split()[1] for line in lines[1::2]]
    assert listed == [name for name, _default, _doc in Settings.documented()]
    descriptions = lines[2::2]
    assert all(line.startswith("      ") and len(line.strip()) > 10 for line in descriptions), descriptions


def test_env_never_prints_a_secret():
    secret, password = "s3cret-" + "k" * 30, "db-pass-word"
    out = _env_command(
        {
            "SECRET_KEY": secret,
            "DATABASE_URL": f"postgresql://owner:{password}@db.example/x",
            "HCLOUD_TOKEN": "hc-tok",
            "STRIPE_SECRET_KEY": "sk_live_stripe-key",
            "STRIPE_WEBHOOK_SECRET": "whsec_stripe-signing",
        }
    )
    assert secret not in out and password not in out and "hc-tok" not in out
    assert "stripe-key" not in out and "stripe-signing" not in out and "* STRIPE_SECRET_KEY = (set, hidden)" in out
    assert "* SECRET_KEY = (set, hidden)" in out
    assert "* DATABASE_URL = postgresql://owner:***@db.example/x" in out


def test_env_refuses_a_bad_value_like_serve():
    result = subprocess.run([EXE, "env"], env={"PORT": "x"}, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "PORT must be an integer" in result.stderr


def test_every_credential_setting_is_secret():
    """`webhost-sync env` prints no value of a setting marked secret: every key, token or password
    added later must be marked too."""
    from dataclasses import fields

    credentials = [f for f in fields(Settings) if f.metadata["env"].endswith(("KEY", "KEYS", "TOKEN", "PASSWORD"))]
    assert len(credentials) >= 6
    assert [f.metadata["env"] for f in credentials if not f.metadata["secret"]] == []
