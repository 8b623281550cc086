import pytest

from monitor.probe import settings


def test_env_then_cmd_then_cfg_then_default(tmp_path):
    cfg = tmp_path / "airflow.cfg"
    cfg.write_text("[scheduler]\nscheduler_health_check_threshold = 45\n[database]\nsql_alchemy_conn_cmd = echo sqlite:////x.db\n")
    env = {"AIRFLOW_HOME": str(tmp_path)}
    assert settings.heartbeat_threshold("scheduler", env) == 45
    assert settings.sql_alchemy_conn(env) == "sqlite:////x.db"
    env["AIRFLOW__SCHEDULER__SCHEDULER_HEALTH_CHECK_THRESHOLD"] = "12"
    env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN_CMD"] = "echo postgresql://from-cmd/db"
    assert settings.heartbeat_threshold("scheduler", env) == 12
    assert settings.sql_alchemy_conn(env) == "postgresql://from-cmd/db"
    env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] = "postgresql://from-env/db"
    assert settings.sql_alchemy_conn(env) == "postgresql://from-env/db"
    assert settings.heartbeat_threshold("triggerer", {"AIRFLOW_HOME": str(tmp_path / "none")}) == 30


def test_secret_variant_and_failing_cmd_say_what_to_do_without_values(tmp_path):
    env = {"AIRFLOW_HOME": str(tmp_path), "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN_SECRET": "db/conn"}
    with pytest.raises(settings.SettingError, match="_SECRET needs Airflow's secrets backend"):
        settings.sql_alchemy_conn(env)
    env = {"AIRFLOW_HOME": str(tmp_path), "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN_CMD": "echo s3cret; exit 3"}
    with pytest.raises(settings.SettingError) as e:
        settings.sql_alchemy_conn(env)
    assert "exited 3" in str(e.value) and "s3cret" not in str(e.value)


def test_hostname_callable(tmp_path):
    env = {"AIRFLOW_HOME": str(tmp_path), "AIRFLOW__CORE__HOSTNAME_CALLABLE": "socket.gethostname"}
    import socket

    assert settings.hostname(env) == socket.gethostname()
    env["AIRFLOW__CORE__HOSTNAME_CALLABLE"] = "my.module.fn"
    with pytest.raises(settings.SettingError, match="pass --hostname"):
        settings.hostname(env)


def test_the_database_url_is_also_read_where_airflow_2_kept_it(tmp_path):
    """Airflow 3 still reads [core] sql_alchemy_conn (deprecated since 2.3), after [database]: the
    environment first, new then old, then the config file, new then old."""
    cfg = tmp_path / "airflow.cfg"
    cfg.write_text("[core]\nsql_alchemy_conn = sqlite:///old-file\n")
    env = {"AIRFLOW_CONFIG": str(cfg)}
    assert settings.sql_alchemy_conn(env) == "sqlite:///old-file"
    assert settings.sql_alchemy_conn({**env, "AIRFLOW__CORE__SQL_ALCHEMY_CONN": "sqlite:///old-env"}) == \
        "sqlite:///old-env"
    cfg.write_text("[core]\nsql_alchemy_conn = sqlite:///old-file\n[database]\nsql_alchemy_conn = sqlite:///new\n")
    assert settings.sql_alchemy_conn({**env, "AIRFLOW__CORE__SQL_ALCHEMY_CONN": "sqlite:///old-env"}) == \
        "sqlite:///old-env"  # an environment variable wins over the file, as in Airflow
    assert settings.sql_alchemy_conn({**env, "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": "sqlite:///new-env",
                                      "AIRFLOW__CORE__SQL_ALCHEMY_CONN": "sqlite:///old-env"}) == "sqlite:///new-env"
